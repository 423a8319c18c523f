"""Candidate programs built from a question's words, for learning the parser from answers alone (no program
annotations): a bounded depth-first search over the parser's grammar (:class:`~nscl.models.grammar.Grammar`).

A candidate must

* answer the kind of answer given (a yes/no answer: an op giving ``Bool``; a number: ``Integer``; a concept such as
  ``red``: ``query`` of that concept's attribute);
* point at each question token at most once, and at every token that names a concept, relation or attribute (CLEVR's
  questions name each concept of their program; a word such as "big" is covered in either of its roles);
* give each filter one maximal run of adjacent concept words, in their order ("the large red cube" is one
  filter, found once); nor does a filter take a filter, an intersection a filter, or a query, relation or
  comparison a bare ``scene()``.

Candidates come back canonical (:meth:`Program.canonical`) and distinct. The search stops after ``max_programs``
candidates or ``max_expansions`` grammar states and says whether it was complete. Pure NumPy, like the grammar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..domain import ATTRIBUTE_VALUE, BOOL, INTEGER, P_CONCEPTS, Domain
from ..language import AS_MANY, FEWER, MORE
from ..program import Program
from .grammar import DecodeState, Grammar, QuestionInfo


@dataclass(frozen=True)
class SearchLimits:
    max_length: int = 48  # decoder actions of one program
    max_programs: int = 32
    max_expansions: int = 20_000


@dataclass(frozen=True)
class AnswerShape:
    """What the answer says about the program: the root's output type and, for ``query``, its attribute index."""

    output: str
    attribute: int = -1
    root_op: str | None = None  # the wording names the comparison ("more ... than": count_greater)

    @classmethod
    def of(cls, domain: Domain, answer: str, asked: str | None = None) -> AnswerShape:
        """From a normalised answer and, optionally, what the wording asks (:func:`nscl.language.asked_answer`;
        only a named comparison of counts is used)."""
        t = domain.answer_type(answer)
        if t == BOOL:
            return cls(t, root_op=asked if asked in (MORE, FEWER, AS_MANY) else None)
        if t == INTEGER:
            return cls(t)
        attr = domain.attribute_of_concept(answer)
        return cls(ATTRIBUTE_VALUE, domain.attribute_names.index(attr.name))

    def admits(self, program: Program, domain: Domain) -> bool:
        """Whether ``program``'s answer has this shape's kind (and, for a query, its attribute)."""
        last = program.nodes[-1]
        if domain.nscl_ops[last.op].output != self.output or (self.root_op and last.op != self.root_op):
            return False
        return self.attribute < 0 or last.attribute == domain.attribute_names[self.attribute]


@dataclass
class SearchResult:
    programs: list[Program]
    complete: bool  # the whole space was searched (not cut by a limit)
    expansions: int
    actions: list[tuple[int, ...]]  # each program's decoder actions (pointers by token position)


def _meaningful(q: QuestionInfo) -> np.ndarray:
    return np.flatnonzero((q.concept >= 0) | (q.relation >= 0) | (q.attribute >= 0))


def signature(q: QuestionInfo, shape: AnswerShape) -> tuple:
    """What the search reads of a question: the sequence of its words that name a concept, relation or attribute
    (by kind, the attribute named, and which concept words are next to each other), and the answer's shape. Other
    words do not matter, so questions phrased alike share a signature and their candidates' actions
    (:func:`abstract_actions`, :func:`programs_from_actions`)."""
    m = _meaningful(q)
    concept = q.concept[m] >= 0
    return (
        tuple(concept.tolist()),
        tuple((q.relation[m] >= 0).tolist()),
        tuple(q.attribute[m].tolist()),
        tuple(((np.diff(m) == 1) & concept[:-1] & concept[1:]).tolist()),  # adjacent concept words: one run
        shape,
    )


def abstract_actions(grammar: Grammar, q: QuestionInfo, actions: tuple[int, ...]) -> tuple[int, ...]:
    """``actions`` with each pointer read as the rank of its word among the question's meaningful words."""
    F, rank = grammar.num_fixed, {int(p): k for k, p in enumerate(_meaningful(q))}
    return tuple(a if a < F else F + rank[a - F] for a in actions)


def programs_from_actions(grammar: Grammar, q: QuestionInfo, actions: list[tuple[int, ...]]) -> list[Program]:
    """The distinct canonical programs that abstract ``actions`` (of a question with the same signature) read on
    ``q``."""
    F, m = grammar.num_fixed, _meaningful(q)
    out = (grammar.to_program([a if a < F else F + int(m[a - F]) for a in acts], q) for acts in actions)
    return list(dict.fromkeys(p.canonical() for p in out))


# Ops that never take a bare ``scene()`` input in a well-formed question (they need a referent). Nor does a filter
# take a filter (consecutive filters are one filter), nor intersect a filter (that is one filter of both phrases).
_NO_SCENE_UNDER = frozenset(
    {
        "relate",
        "relate_attribute_equal",
        "query",
        "query_attribute_equal",
        "intersect",
        "union",
        "count_equal",
        "count_less",
        "count_greater",
    }
)


def search_programs(
    grammar: Grammar,
    q: QuestionInfo,
    shape: AnswerShape,
    limits: SearchLimits = SearchLimits(),
    slack: int = 4,
) -> SearchResult:
    """Candidate programs for question ``q`` with an answer of ``shape`` (module docstring), shortest first: the
    search runs with growing length limits and keeps, from the shortest length ``L`` that has a candidate, those up
    to ``L + slack`` actions."""
    found: dict[Program, tuple[int, ...]] = {}
    total, first = 0, None
    for length in range(2, limits.max_length + 1):
        if first is not None and length > first + slack:
            return SearchResult(list(found), True, total, list(found.values()))
        r = _search(
            grammar, q, shape, length, limits.max_programs - len(found), limits.max_expansions - total
        )
        total += r.expansions
        for p, a in zip(r.programs, r.actions):
            found.setdefault(p, a)
        if found and first is None:
            first = length
        if not r.complete:
            return SearchResult(list(found), False, total, list(found.values()))
    return SearchResult(list(found), True, total, list(found.values()))


def _search(
    grammar: Grammar, q: QuestionInfo, shape: AnswerShape, max_length: int, max_programs: int, budget: int
) -> SearchResult:
    F = grammar.num_fixed
    ops = grammar.ops
    outputs = [grammar.domain.nscl_ops[o].output for o in ops]
    root_ok = np.array(
        [out == shape.output and shape.root_op in (None, o) for o, out in zip(ops, outputs)] + [False]
    )
    no_scene = np.array([o in _NO_SCENE_UNDER for o in ops] + [False])
    filter_op = grammar.op_index.get("filter", -1)
    no_filter = {grammar.op_index[o] for o in ("filter", "intersect") if o in grammar.op_index}
    scene_op = grammar.op_index.get("scene", -1)
    meaningful = (q.concept >= 0) | (q.relation >= 0) | (q.attribute >= 0)
    must = frozenset(np.flatnonzero(meaningful).tolist())
    attr_slot = grammar.slot_index[Grammar.ATTRIBUTE]
    found: dict[Program, tuple[int, ...]] = {}
    expansions = 0
    cut = False

    def visit(
        st: DecodeState, parents: list[int], step: int, used: frozenset[int], last: int, root: int
    ) -> None:
        nonlocal expansions, cut
        if cut:
            return
        expansions += 1
        if expansions > budget:
            cut = True
            return
        if st.done:
            if must <= used:
                found.setdefault(grammar.to_program(st.actions, q).canonical(), tuple(st.actions))
                if len(found) >= max_programs:
                    cut = True
            return
        if len(must - used) > max_length - step:  # each word still to cover takes one action
            return
        mask = grammar.allowed(st, step, max_length, q)
        if step == 0:
            mask[:F] &= root_ok
        slot, parent = st.stack[-1][0], parents[-1]
        if parent in no_filter and filter_op >= 0:
            mask[filter_op] = False
        if parent >= 0 and no_scene[parent] and scene_op >= 0:
            mask[scene_op] = False
        for a in np.flatnonzero(mask).tolist():
            nxt_used, nxt_last = used, last
            if a >= F:
                pos = a - F
                if pos in used:
                    continue
                if (
                    slot == attr_slot
                    and step == 1
                    and ops[root] == "query"
                    and q.attribute[pos] != shape.attribute
                ):
                    continue  # the root query asks for the answer's attribute
                if grammar.pointer_kind[slot] == P_CONCEPTS:
                    # A filter's concepts are one maximal run of adjacent concept words, in order.
                    if last >= 0 and pos != last + 1:
                        continue
                    if last < 0 and pos > 0 and q.concept[pos - 1] >= 0:
                        continue
                    nxt_last = pos
                nxt_used = used | {pos}
            elif a == grammar.end:
                if last + 1 < len(q) and q.concept[last + 1] >= 0:
                    continue  # the run goes on
                nxt_last = -1
            nxt = st.copy()
            grammar.advance(nxt, a, q)
            # The slots pushed by this action belong to it (an op) or to the same parent (a filter's next concept).
            owner = a if a < len(ops) else parent
            nxt_parents = parents[:-1] + [owner] * (len(nxt.stack) - len(parents) + 1)
            visit(nxt, nxt_parents, step + 1, nxt_used, nxt_last, a if step == 0 else root)

    visit(grammar.start(), [-1], 0, frozenset(), -1, -1)
    return SearchResult(list(found), not cut, expansions, list(found.values()))
