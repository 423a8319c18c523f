"""Candidate programs built from a question's words, for learning the parser from answers alone (no program
annotations): a chart search over the parser's grammar (:class:`~nscl.models.grammar.Grammar`).

A candidate must

* answer the kind of answer given (a yes/no answer: an op giving ``Bool``; a number: ``Integer``; a concept such as
  ``red``: ``query`` of that concept's attribute);
* point at each question token at most once, and at every token that names a concept, relation or attribute (CLEVR's
  questions name each concept of their program; a word such as "big" is covered in either of its roles);
* give each filter one maximal run of adjacent concept words, in their order ("the large red cube" is one
  filter, found once); nor does a filter take a filter, an intersection a filter, or a query, relation or
  comparison a bare ``scene()`` (but a comparison of counts that the wording names: "are the balls outnumbered by
  the objects").

The question's meaningful words fall into *chunks*: a maximal run of concept words (one filter's list), a relation
word, an attribute word (a lone concept word that also names an attribute or relation, such as "big", may be
either). A candidate is a typed tree whose nodes take chunks as their arguments and that uses every chunk once, so
the search is a dynamic programme over (slot, set of chunks, what the parent forbids): each entry holds the smallest
subtrees that fill the slot with exactly those chunks. Two refinements:

* when the words name one attribute twice ("is the size of the X the same as the size of the Y"), and no candidate
  uses both, one of them may go unused;
* when the sets of chunks are too many to visit (``max_expansions`` combinations, many chunks), the search falls
  back to *projective* programs, whose subtrees each take a contiguous run of chunks (phrases nest), which is
  polynomial in the number of chunks. Most questions are projective; a few phrasings are not ("excluding the cube
  itself, how many spheres share its size": the sphere's filter sits between the cube and its attribute).

Candidates come back canonical (:meth:`Program.canonical`) and distinct, shortest first, those within ``slack``
actions of the shortest. Each entry keeps at most ``max_programs`` subtrees; the result says whether any limit
cut the search. Pure NumPy, like the grammar.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..domain import ATTRIBUTE_VALUE, BOOL, INTEGER, P_ATTRIBUTE, P_CONCEPTS, P_RELATION, Domain
from ..language import AS_MANY, FEWER, MORE, asked_answer, existence_wording
from ..program import Program
from .anaphora import pronoun_at, reading_order
from .grammar import Grammar, QuestionInfo


@dataclass(frozen=True)
class SearchLimits:
    max_length: int = 48  # decoder actions of one program
    max_programs: int = 32  # candidates, and subtrees kept per chart entry
    # Combinations of chunk sets visited before falling back to projective programs.
    max_expansions: int = 20_000
    # In actions: a chunk inside a subtree's span that is not its own; an attribute word left unused where the
    # words name that attribute twice ("the material of A matches the material of B"): less than the two actions of
    # reading it as one more op (relate_attribute_equal), so the plain reading is the cheaper one
    gap_cost: int = 2
    drop_cost: int = 1


@dataclass(frozen=True)
class AnswerShape:
    """What the answer says about the program: the root's output type and, for ``query``, its attribute index."""

    output: str
    attribute: int = -1
    # the wording names the root ("more ... than": count_greater; "is there": exist), or rules some out (a yes/no
    # question that compares no counts)
    root_op: str | None = None
    not_roots: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        domain: Domain,
        answer: str,
        asked: str | None = None,
        exists: bool | None = None,
        strict: bool = False,
    ) -> AnswerShape:
        """From a normalised answer and, optionally, what the wording asks (:func:`nscl.language.asked_answer`;
        only a named comparison of counts is used) and whether it asks if something exists: True where the wording
        says so (:func:`nscl.language.asks_existence`: the root is ``exist``), False where it plainly does not
        (:func:`nscl.language.may_ask_existence`: the root is not ``exist``), None where it cannot tell.
        ``strict``: a yes/no question whose wording names no comparison of counts compares none (``asked_answer``
        names the comparison of every comparison phrasing of our templates and CLEVR's)."""
        t = domain.answer_type(answer)
        if t == BOOL:
            if asked in (MORE, FEWER, AS_MANY):
                return cls(t, root_op=asked)
            ruled_out = ((MORE, FEWER, AS_MANY) if strict else ()) + (("exist",) if exists is False else ())
            not_roots = tuple(o for o in ruled_out if o in domain.nscl_ops)
            return cls(
                t, root_op="exist" if exists and "exist" in domain.nscl_ops else None, not_roots=not_roots
            )
        if t == INTEGER:
            return cls(t)
        attr = domain.attribute_of_concept(answer)
        return cls(ATTRIBUTE_VALUE, domain.attribute_names.index(attr.name))

    @classmethod
    def of_wording(
        cls,
        domain: Domain,
        answer: str,
        tokens: Sequence[str],
        attribute_words: Mapping[str, str],
        concept_words: Collection[str],
        wording_roots: bool,
    ) -> AnswerShape:
        """:meth:`of` with what the question's words say: the comparison of counts they name and, with
        ``wording_roots`` (``parser.wording_roots``), what they say of existence, strictly."""
        words = attribute_words, concept_words
        exists = existence_wording(tokens, *words) if wording_roots else None
        return cls.of(domain, answer, asked_answer(tokens, *words), exists, wording_roots)

    def allows_root(self, op: str, domain: Domain) -> bool:
        """Whether a program whose last op is ``op`` can give this answer (its output type; the root the wording
        names or rules out)."""
        return (
            domain.nscl_ops[op].output == self.output
            and self.root_op in (None, op)
            and op not in self.not_roots
        )

    def admits(self, program: Program, domain: Domain) -> bool:
        """Whether ``program``'s answer has this shape's kind (and, for a query, its attribute)."""
        last = program.nodes[-1]
        if not self.allows_root(last.op, domain):
            return False
        return self.attribute < 0 or last.attribute == domain.attribute_names[self.attribute]


@dataclass
class SearchResult:
    programs: list[Program]
    complete: bool  # the whole space was searched (not cut by a limit)
    expansions: int  # combinations of chunk sets visited
    actions: list[tuple[int, ...]]  # each program's decoder actions (pointers by token position)


def _meaningful(q: QuestionInfo) -> np.ndarray:
    return np.flatnonzero((q.concept >= 0) | (q.relation >= 0) | (q.attribute >= 0))


def signature(q: QuestionInfo, shape: AnswerShape) -> tuple:
    """What the search reads of a question: the sequence of its words that name a concept, relation or attribute
    (by kind, the attribute named, and which concept words are next to each other), where pronouns stand among
    them, and the answer's shape. Other words do not matter, so questions phrased alike share a signature and
    their candidates' actions (:func:`abstract_actions`, :func:`programs_from_actions`)."""
    m = _meaningful(q)
    concept = q.concept[m] >= 0
    pronouns = tuple(
        (int(np.searchsorted(m, i)), kind)
        for i in range(len(q))
        if (kind := pronoun_at(q.tokens, i)) is not None
    )
    return (
        pronouns,  # where the pronouns stand among those words (they move referents: .anaphora)
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
_NO_FILTER_UNDER = frozenset({"filter", "intersect"})
# Ops whose two inputs may be swapped (one order is searched).
_SYMMETRIC = frozenset({"intersect", "union", "count_equal", "query_attribute_equal"})


@dataclass(frozen=True)
class _Chunk:
    """Meaningful words that one argument takes: a run of concept words, or one relation or attribute word."""

    positions: tuple[int, ...]
    kinds: frozenset[str]  # the argument kinds it can fill (P_CONCEPTS, P_RELATION, P_ATTRIBUTE)
    attribute: int  # the attribute it names as an attribute word, -1


def _chunks(q: QuestionInfo) -> list[_Chunk]:
    """The question's chunks in word order: each maximal run of concept words (a lone one may also be a relation or
    attribute word, "big"), each other relation or attribute word."""
    out: list[_Chunk] = []
    T, p = len(q), 0
    while p < T:
        if q.concept[p] >= 0:
            end = p
            while end + 1 < T and q.concept[end + 1] >= 0:
                end += 1
            run = tuple(range(p, end + 1))
            kinds: set[str] = set()
            if len({int(q.concept_attr[i]) for i in run}) == len(run):  # one filter names each attribute once
                kinds.add(P_CONCEPTS)
            if len(run) == 1:
                kinds |= {P_RELATION} if q.relation[p] >= 0 else set()
                kinds |= {P_ATTRIBUTE} if q.attribute[p] >= 0 else set()
            out.append(_Chunk(run, frozenset(kinds), int(q.attribute[p]) if len(run) == 1 else -1))
            p = end + 1
            continue
        if q.relation[p] >= 0 or q.attribute[p] >= 0:
            kinds = ({P_RELATION} if q.relation[p] >= 0 else set()) | (
                {P_ATTRIBUTE} if q.attribute[p] >= 0 else set()
            )
            out.append(_Chunk((p,), frozenset(kinds), int(q.attribute[p])))
        p += 1
    return out


class _Cut(Exception):
    """The chart visited ``max_expansions`` combinations."""


class _Chart:
    """The dynamic programme of one question (module docstring). A subtree is its tuple of decoder actions in
    prefix order (pointers as ``F + position``), so its length is its size in actions."""

    def __init__(
        self,
        grammar: Grammar,
        q: QuestionInfo,
        shape: AnswerShape,
        chunks: list[_Chunk],
        limits: SearchLimits,
        projective: bool,
    ) -> None:
        self.g, self.q, self.shape, self.chunks = grammar, q, shape, chunks
        self.limits, self.projective = limits, projective
        self.expansions, self.truncated = 0, False
        # (slot, chunk set, no scene, no filter) -> the cheapest subtrees, as (cost, actions)
        self.memo: dict[tuple[int, int, bool, bool], list[tuple[int, tuple[int, ...]]]] = {}
        g = grammar
        F = g.num_fixed
        ops = g.ops
        self.end = g.end
        self.answer_slot = g.slot_index[Grammar.ANSWER]
        self.kind_of_slot = g.pointer_kind
        avail = q.available[: len(ops)]
        self.ops_for = {
            s: [o for o in range(len(ops)) if g.slot_ops[s, o] and avail[o]] for s in range(len(g.slots))
        }
        self.scene = g.op_index.get("scene", -1)
        self.filter = g.op_index.get("filter", -1)
        self.query = g.op_index.get("query", -1)
        # a comparison of counts that the wording names may compare with the bare scene (AnswerShape.root_op)
        self.no_scene = [o in _NO_SCENE_UNDER and o != shape.root_op for o in ops]
        self.no_filter = [o in _NO_FILTER_UNDER for o in ops]
        self.symmetric = [o in _SYMMETRIC for o in ops]
        self.root_ok = [shape.allows_root(o, g.domain) for o in ops]
        # Pointer actions of each chunk in each role.
        self.pointers = [
            (tuple(F + i for i in c.positions) + (self.end,), (F + c.positions[0],)) for c in chunks
        ]

    def run(self) -> list[tuple[int, tuple[int, ...]]]:
        full = (1 << len(self.chunks)) - 1
        return self.fill(self.answer_slot, full, False, False)

    def fill(
        self, slot: int, mask: int, no_scene: bool, no_filter: bool
    ) -> list[tuple[int, tuple[int, ...]]]:
        """The cheapest subtrees (at most ``max_programs``) that fill ``slot`` using exactly the chunks of ``mask``,
        as (cost, actions): cost is the size in actions plus ``gap_cost`` for each chunk that sits inside a
        subtree's span without belonging to it (0 for a projective subtree)."""
        key = (slot, mask, no_scene, no_filter)
        got = self.memo.get(key)
        if got is not None:
            return got
        self.memo[key] = []  # no subtree uses its own slot and chunks again (every op below takes a chunk)
        out: list[tuple[int, tuple[int, ...]]] = []
        gaps = self._gaps(mask)
        if not (self.projective and gaps):
            for o in self.ops_for[slot]:
                if (no_scene and o == self.scene) or (no_filter and o == self.filter):
                    continue
                if slot == self.answer_slot and not self.root_ok[o]:
                    continue
                out.extend(self._op(o, slot, mask, gaps * self.limits.gap_cost))
        out.sort(key=lambda t: t[0])
        cap = self.limits.max_programs
        if len(out) > cap:
            self.truncated = True
            out = out[:cap]
        self.memo[key] = out
        return out

    @staticmethod
    def _gaps(mask: int) -> int:
        """Chunks between the first and the last of ``mask`` that are not in it."""
        if mask == 0:
            return 0
        low = mask & -mask
        span = (1 << mask.bit_length()) - low
        return (span & ~mask).bit_count()

    @staticmethod
    def _splits(rest: int, no_scene: bool) -> list[int]:
        """The chunk sets the first of two inputs may take from ``rest`` (the second takes the others): both
        non-empty, or with ``no_scene`` off also all or none."""
        out, sub = [], (rest - 1) & rest
        while sub:
            out.append(sub)
            sub = (sub - 1) & rest
        return out if no_scene else [rest, *out, 0]

    def _op(self, o: int, slot: int, mask: int, penalty: int) -> list[tuple[int, tuple[int, ...]]]:
        g, chunks = self.g, self.chunks
        children = g.children[o]
        params = [c for c in children if c in self.kind_of_slot]
        inputs = [c for c in children if c not in self.kind_of_slot]
        # Arguments: one chunk per parameter (ops have at most one).
        # (actions, chunks left, extra cost): a concept word read as an attribute ("big" as size) costs one more,
        # as much as its filter would (op, pointer, end: "the big things that are balls" is no equality of sizes)
        heads: list[tuple[tuple[int, ...], int, int]] = []
        if not params:
            heads.append(((o,), mask, 0))
        else:
            kind = self.kind_of_slot[params[0]]
            for k, c in enumerate(chunks):
                if not mask >> k & 1 or kind not in c.kinds:
                    continue
                root_query = kind == P_ATTRIBUTE and o == self.query and slot == self.answer_slot
                if root_query and c.attribute != self.shape.attribute:
                    continue  # the root query asks for the answer's attribute
                ptr = self.pointers[k][0 if kind == P_CONCEPTS else 1]
                extra = int(kind == P_ATTRIBUTE and P_CONCEPTS in c.kinds)
                heads.append(((o, *ptr), mask & ~(1 << k), extra))
        ns, nf = self.no_scene[o], self.no_filter[o]
        max_len = self.limits.max_length
        out: list[tuple[int, tuple[int, ...]]] = []
        for head, rest, extra in heads:
            base = len(head) + penalty + extra
            if not inputs:
                if rest == 0:
                    out.append((base, head))
                continue
            if len(inputs) == 1:
                for c, sub in self.fill(inputs[0], rest, ns, nf):
                    if len(head) + len(sub) <= max_len:
                        out.append((base + c, head + sub))
                continue
            # Two inputs: every split of the remaining chunks (both non-empty, unless the op may take the bare
            # scene).
            low = rest & -rest
            for a in self._splits(rest, ns):
                b = rest ^ a
                if self.symmetric[o] and not a & low:
                    continue
                self.expansions += 1
                if self.expansions > self.limits.max_expansions:
                    raise _Cut
                left = self.fill(inputs[0], a, ns, nf)
                if not left:
                    continue
                right = self.fill(inputs[1], b, ns, nf)
                for cx, x in left:
                    for cy, y in right:
                        if len(head) + len(x) + len(y) <= max_len:
                            out.append((base + cx + cy, head + x + y))
        return out


def search_programs(
    grammar: Grammar,
    q: QuestionInfo,
    shape: AnswerShape,
    limits: SearchLimits = SearchLimits(),
    slack: int = 4,
    anaphora: bool = True,
) -> SearchResult:
    """Candidate programs for question ``q`` with an answer of ``shape`` (module docstring): those within
    ``slack`` of the cheapest (cost: actions, plus ``gap_cost`` per chunk inside a subtree's span that is not its
    own, plus ``drop_cost`` per unused word), cheapest first. ``anaphora``: spans are measured with each pronoun's
    referent read where the pronoun stands (:mod:`.anaphora`), else in word order."""
    chunks = _chunks(q)
    total, complete = 0, True
    found: list[tuple[int, tuple[int, ...]]] = []
    for drop in _drops(chunks):
        kept = [c for k, c in enumerate(chunks) if k not in drop]
        if anaphora:
            kept = [kept[k] for k in _reading_order(q, kept)]
        for projective in (False, True):
            chart = _Chart(grammar, q, shape, kept, limits, projective)
            try:
                got = chart.run()
            except _Cut:
                total += chart.expansions
                complete = False
                continue  # too many chunk sets: projective programs only
            total += chart.expansions
            complete &= not chart.truncated
            found += [(c + limits.drop_cost * len(drop), acts) for c, acts in got]
            break
    found.sort(key=lambda t: t[0])
    programs: dict[Program, tuple[int, ...]] = {}
    for c, acts in found:
        if c > found[0][0] + slack or len(programs) >= limits.max_programs:
            break
        programs.setdefault(grammar.to_program(acts, q).canonical(), acts)
    return SearchResult(list(programs), complete, total, list(programs.values()))


def _reading_order(q: QuestionInfo, chunks: list[_Chunk]) -> list[int]:
    """The chunks' order with pronouns resolved (:func:`.anaphora.reading_order`)."""
    return reading_order(
        q.tokens,
        [c.positions[0] for c in chunks],
        [bool(q.concept[c.positions[0]] >= 0) for c in chunks],
        [P_RELATION in c.kinds for c in chunks],
    )


def _drops(chunks: list[_Chunk]) -> list[frozenset[int]]:
    """Sets of chunks that may go unused: none, or one of two words naming the same attribute (only attribute
    words; the first and the last of each such group)."""
    out = [frozenset()]
    by_attr: dict[int, list[int]] = {}
    for k, c in enumerate(chunks):
        if c.kinds == {P_ATTRIBUTE}:
            by_attr.setdefault(c.attribute, []).append(k)
    for ks in by_attr.values():
        if len(ks) > 1:
            out += [frozenset({ks[-1]}), frozenset({ks[0]})]
    return out
