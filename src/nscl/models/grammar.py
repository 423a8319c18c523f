"""The NS-CL program language as seen by the semantic parser: lexicon, prefix grammar, decoding states
(NSCL-REFERENCE section 7, "Parser"). Pure Python and NumPy, no torch: testable without the network.

Dimension key: T question tokens, F fixed actions (one per NS-CL op, plus ``<end>`` of a filter's concept
list), F + T actions per step (fixed actions, then one pointer action per token), L decoder steps.

A program is emitted in prefix order, e.g.::

    query(color, filter(relate(filter(scene(), [red, cube]), left), [sphere]))
    ->  query  @color  filter  @sphere <end>  relate  @left  filter  @red @cube <end>  scene

Arguments (object concepts, relation concepts, attribute names) are always pointers to question tokens
(``@word``): the pointed word is mapped to its concept or attribute by a :class:`Lexicon` built from the
domain and the generator's synonyms (``ball`` -> sphere, ``shiny`` -> metal, ``left of`` -> left, ``colour``
-> color).

:class:`Grammar` derives the constraints from the domain's op signatures: a stack of pending slots (an
``ObjectSet`` input, an ``Object`` input, the answer, a concept list, a relation, an attribute) decides at
every step which actions are well typed; pointers are allowed only at tokens whose word maps to something of
the slot's kind; a length budget forces the program to close within ``max_length`` steps. Decoding under
these masks therefore only produces programs that pass :meth:`Program.validate`. It also builds the
teacher-forcing targets of a program (:meth:`Grammar.target`) and reads a finished action sequence back into
a :class:`Program` (:meth:`Grammar.to_program`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ..domain import OBJECT, OBJECT_SET, P_ATTRIBUTE, P_CONCEPTS, P_RELATION, Domain
from ..errors import NSCLError, ProgramError
from ..program import Node, Program
from ..vocab import tokenize

# Words naming an attribute (the queried or compared one), beyond the attribute's own name.
ATTRIBUTE_WORDS: Mapping[str, tuple[str, ...]] = {
    "color": ("colour", "colors", "colours", "colored", "coloured"),
    "shape": ("shapes", "shaped"),
    "material": ("materials", "made"),
    "size": ("sizes", "sized", "big"),
}
# Words dropped from multi-word synonyms to find the one word a pointer reads: "to the left of" -> "left",
# "in back of" -> "back", "on the left side of" -> "left", "nearer the camera than" -> "nearer".
_FUNCTION_WORDS = frozenset({"of", "to", "the", "on", "in", "at", "a", "an", "side", "than", "camera"})


class ParseError(NSCLError):
    """A question the parser cannot turn into a program (unknown word, nothing to point at)."""


# --------------------------------------------------------------------------------------------- lexicon
@dataclass(frozen=True)
class Lexicon:
    """Which question words can be pointed at, and what they mean: word -> object concept, relation concept,
    attribute name. A word may have several meanings of different kinds ("big": the concept large and the
    attribute size); the decoder's slot decides which one is read."""

    concepts: Mapping[str, str]
    relations: Mapping[str, str]
    attributes: Mapping[str, str]
    plural: frozenset[str] = frozenset()

    @classmethod
    def build(cls, domain: Domain, synonyms: Mapping[str, Sequence[str]] | None = None) -> Lexicon:
        """The lexicon of ``domain``: every concept and attribute name, the surface forms of
        ``synonyms`` (default: the generator's ``synonyms.json``), plurals of object-concept words, and
        :data:`ATTRIBUTE_WORDS`."""
        if synonyms is None:
            text = resources.files("nscl").joinpath("generate", "synonyms.json").read_text(encoding="utf-8")
            synonyms = json.loads(text)
        concepts: dict[str, str] = {}
        relations: dict[str, str] = {}
        attributes: dict[str, str] = {}
        plural: set[str] = set()

        def key_word(form: str) -> str | None:
            words = [w for w in tokenize(form) if w not in _FUNCTION_WORDS]
            return words[0] if len(words) == 1 else None

        for c in domain.object_concepts + domain.relation_concepts:
            table = concepts if domain.is_object_concept(c) else relations
            forms = [c, *synonyms.get(c, ())]
            for f in forms:
                w = key_word(f)
                if w is not None:
                    table.setdefault(w, c)
        for w, c in list(concepts.items()):
            if w + "s" not in concepts:
                concepts[w + "s"] = c
                plural.add(w + "s")
        for a in domain.attributes:
            for w in (a.name, a.name + "s", *ATTRIBUTE_WORDS.get(a.name, ())):
                attributes.setdefault(w, a.name)
        return cls(dict(concepts), dict(relations), dict(attributes), frozenset(plural))

    @property
    def words(self) -> frozenset[str]:
        return frozenset(self.concepts) | frozenset(self.relations) | frozenset(self.attributes)

    def classes(self, domain: Domain) -> dict[str, str]:
        """word -> class name: the kinds of its meanings (object concepts by attribute), plus plural."""
        out: dict[str, str] = {}
        for w in sorted(self.words):
            parts = []
            if w in self.concepts:
                a = domain.attribute_of_concept(self.concepts[w])
                parts.append(f"concept:{a.name if a is not None else '?'}")
            if w in self.relations:
                a = domain.attribute_of_concept(self.relations[w])
                parts.append(f"relation:{a.name if a is not None else '?'}")
            if w in self.attributes:
                parts.append(f"attribute:{self.attributes[w]}")
            name = "+".join(parts) + ("/pl" if w in self.plural else "")
            out[w] = name
        return out

    def to_json(self) -> dict:
        return {
            "concepts": dict(self.concepts),
            "relations": dict(self.relations),
            "attributes": dict(self.attributes),
            "plural": sorted(self.plural),
        }

    @classmethod
    def from_json(cls, d: Mapping) -> Lexicon:
        return cls(dict(d["concepts"]), dict(d["relations"]), dict(d["attributes"]), frozenset(d["plural"]))


# --------------------------------------------------------------------------------------------- grammar
@dataclass(frozen=True)
class QuestionInfo:
    """What each token of one question can be pointed at as: index into ``domain.object_concepts`` /
    ``relation_concepts`` / ``attribute_names`` or -1, and which ops have all their pointer slots fillable."""

    tokens: tuple[str, ...]
    concept: np.ndarray  # (T,) int
    concept_attr: np.ndarray  # (T,) attribute index of the concept, -1
    relation: np.ndarray  # (T,) int
    attribute: np.ndarray  # (T,) int
    available: np.ndarray  # (F,) bool: op's pointer slots all have a candidate token
    text: str = ""  # the question as given (for messages)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class DecodeState:
    """One partial program: the stack of pending slots (top last; each with the attributes already used by
    the filter being filled), their summed minimal completion cost, and the actions so far."""

    stack: list[tuple[int, frozenset[int]]]
    pending: int
    actions: list[int] = field(default_factory=list)
    score: float = 0.0
    failed: bool = False  # the last action is an op whose argument the question has no word for

    @property
    def done(self) -> bool:
        return not self.stack

    def copy(self) -> DecodeState:
        return DecodeState(list(self.stack), self.pending, list(self.actions), self.score, self.failed)


class Grammar:
    """The NS-CL language as a prefix grammar over slots, derived from ``domain.nscl_ops``.

    Slots: ``answer`` (the root), one per input value type (``ObjectSet``, ``Object``), and the pointer slots
    ``concepts`` (first concept of a filter), ``concepts+`` (a further concept or ``<end>``), ``relation``,
    ``attribute``. Emitting an op pushes its parameter slots, then its input slots (read in that order)."""

    ANSWER = "answer"
    CONCEPTS = "concepts"
    CONCEPTS_MORE = "concepts+"
    RELATION = "relation"
    ATTRIBUTE = "attribute"

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.ops: tuple[str, ...] = tuple(domain.nscl_ops)
        self.op_index = {o: i for i, o in enumerate(self.ops)}
        self.end = len(self.ops)  # action: end of a filter's concept list
        self.num_fixed = len(self.ops) + 1  # F
        value_types = sorted({t for s in domain.nscl_ops.values() for t in s.inputs})
        self.slots: tuple[str, ...] = (
            self.ANSWER,
            *value_types,
            self.CONCEPTS,
            self.CONCEPTS_MORE,
            self.RELATION,
            self.ATTRIBUTE,
        )
        self.slot_index = {s: i for i, s in enumerate(self.slots)}
        si = self.slot_index
        self.pointer_kind = {
            si[self.CONCEPTS]: P_CONCEPTS,
            si[self.CONCEPTS_MORE]: P_CONCEPTS,
            si[self.RELATION]: P_RELATION,
            si[self.ATTRIBUTE]: P_ATTRIBUTE,
        }
        param_slot = {
            P_CONCEPTS: si[self.CONCEPTS],
            P_RELATION: si[self.RELATION],
            P_ATTRIBUTE: si[self.ATTRIBUTE],
        }
        # Children of each op in reading order: parameters first, then inputs.
        self.children: list[tuple[int, ...]] = []
        for o in self.ops:
            sig = domain.nscl_ops[o]
            self.children.append(tuple(param_slot[p] for p in sig.params) + tuple(si[t] for t in sig.inputs))
        # Which ops may fill which slot.
        S = len(self.slots)
        self.slot_ops = np.zeros((S, self.num_fixed), dtype=bool)
        for k, o in enumerate(self.ops):
            out = domain.nscl_ops[o].output
            for t in value_types:
                if out == t or (t == OBJECT and out == OBJECT_SET):
                    self.slot_ops[si[t], k] = True
            if out not in (OBJECT, OBJECT_SET):
                self.slot_ops[si[self.ANSWER], k] = True
        # Minimal number of actions that complete each slot (fixed point), and each op's children.
        INF = 10**6
        cost = [INF] * S
        cost[si[self.CONCEPTS_MORE]] = 1  # <end>
        cost[si[self.CONCEPTS]] = 2  # a concept, then <end>
        cost[si[self.RELATION]] = cost[si[self.ATTRIBUTE]] = 1
        changed = True
        while changed:
            changed = False
            for s in range(S):
                if s in self.pointer_kind:
                    continue
                for k in np.nonzero(self.slot_ops[s])[0]:
                    c = 1 + sum(cost[ch] for ch in self.children[k])
                    if c < cost[s]:
                        cost[s], changed = c, True
        if any(c >= INF for c in cost):
            bad = [self.slots[s] for s in range(S) if cost[s] >= INF]
            raise ValueError(f"domain {domain.name}: no finite program fills slot(s) {bad}")
        self.cost = np.array(cost)
        self.child_cost = np.array([sum(cost[c] for c in ch) for ch in self.children] + [0])  # (F,)
        self.pointer_ops = [
            {self.pointer_kind[c] for c in ch if c in self.pointer_kind} for ch in self.children
        ]

    # ------------------------------------------------------------------------------------ questions
    def question_info(self, tokens: Sequence[str], lexicon: Lexicon, text: str = "") -> QuestionInfo:
        d = self.domain
        cidx = {c: i for i, c in enumerate(d.object_concepts)}
        ridx = {c: i for i, c in enumerate(d.relation_concepts)}
        aidx = {a: i for i, a in enumerate(d.attribute_names)}
        T = len(tokens)
        concept = np.full(T, -1)
        concept_attr = np.full(T, -1)
        relation = np.full(T, -1)
        attribute = np.full(T, -1)
        for p, w in enumerate(tokens):
            c = lexicon.concepts.get(w)
            if c is not None and c in cidx:
                concept[p] = cidx[c]
                concept_attr[p] = aidx[d.attribute_of_concept(c).name]
            r = lexicon.relations.get(w)
            if r is not None and r in ridx:
                relation[p] = ridx[r]
            a = lexicon.attributes.get(w)
            if a is not None and a in aidx:
                attribute[p] = aidx[a]
        has = {
            P_CONCEPTS: bool((concept >= 0).any()),
            P_RELATION: bool((relation >= 0).any()),
            P_ATTRIBUTE: bool((attribute >= 0).any()),
        }
        available = np.array([all(has[k] for k in kinds) for kinds in self.pointer_ops] + [True])
        return QuestionInfo(
            tuple(tokens), concept, concept_attr, relation, attribute, available, text or " ".join(tokens)
        )

    # ------------------------------------------------------------------------------------ decoding
    def start(self) -> DecodeState:
        s = self.slot_index[self.ANSWER]
        return DecodeState([(s, frozenset())], int(self.cost[s]))

    def allowed(
        self, st: DecodeState, step: int, max_length: int, q: QuestionInfo, check_available: bool = True
    ) -> np.ndarray:
        """(F + T,) bool: the well-typed actions at ``step`` that still let the program close in time."""
        T = len(q)
        mask = np.zeros(self.num_fixed + T, dtype=bool)
        if st.done:
            return mask
        slot, used = st.stack[-1]
        rest = st.pending - self.cost[slot]
        budget = max_length - step - 1  # steps left after this one
        kind = self.pointer_kind.get(slot)
        if kind is None:
            ok = self.slot_ops[slot] & (rest + self.child_cost <= budget)
            if check_available:
                ok &= q.available
            mask[: self.num_fixed] = ok
        elif kind == P_CONCEPTS:
            more = self.slot_index[self.CONCEPTS_MORE]
            if rest + self.cost[more] <= budget:
                ptr = q.concept >= 0
                for a in used:  # a filter names each attribute once
                    ptr &= q.concept_attr != a
                mask[self.num_fixed :] = ptr
            if slot == more:
                mask[self.end] = True
        elif kind == P_RELATION:
            mask[self.num_fixed :] = q.relation >= 0
        else:
            mask[self.num_fixed :] = q.attribute >= 0
        return mask

    def allowed_key(self, st: DecodeState, step: int, max_length: int) -> tuple[int, frozenset[int], int]:
        """What :meth:`allowed` reads of a live ``st`` at ``step``: top slot, its used attributes, and the
        steps left beyond the rest of the stack's minimal cost. Equal keys give equal masks (per question),
        which lets a beam memoise them."""
        slot, used = st.stack[-1]
        return slot, used, max_length - step - 1 - (st.pending - int(self.cost[slot]))

    def advance(self, st: DecodeState, action: int, q: QuestionInfo) -> None:
        """Apply ``action`` (an op, ``<end>`` or ``F + position``) to ``st`` in place."""
        slot, used = st.stack.pop()
        st.pending -= int(self.cost[slot])
        st.actions.append(action)
        if action < len(self.ops):
            for ch in reversed(self.children[action]):
                st.stack.append((ch, frozenset()))
                st.pending += int(self.cost[ch])
        elif action == self.end:
            pass
        elif self.pointer_kind.get(slot) == P_CONCEPTS:
            a = int(q.concept_attr[action - self.num_fixed])
            more = self.slot_index[self.CONCEPTS_MORE]
            st.stack.append((more, used | {a}))
            st.pending += int(self.cost[more])

    def to_program(self, actions: Sequence[int], q: QuestionInfo) -> Program:
        """The NS-CL program of a complete action sequence (post-order nodes, shared subtrees merged)."""
        d = self.domain
        pos = 0
        nodes: list[Node] = []

        def read() -> int:
            nonlocal pos
            op = self.ops[actions[pos]]
            pos += 1
            concepts: list[str] = []
            attribute = None
            inputs: list[int] = []
            for ch in self.children[self.op_index[op]]:
                kind = self.pointer_kind.get(ch)
                if kind == P_CONCEPTS:
                    while actions[pos] != self.end:
                        concepts.append(d.object_concepts[q.concept[actions[pos] - self.num_fixed]])
                        pos += 1
                    pos += 1
                elif kind == P_RELATION:
                    concepts.append(d.relation_concepts[q.relation[actions[pos] - self.num_fixed]])
                    pos += 1
                elif kind == P_ATTRIBUTE:
                    attribute = d.attribute_names[q.attribute[actions[pos] - self.num_fixed]]
                    pos += 1
                else:
                    inputs.append(read())
            nodes.append(Node(op, tuple(inputs), tuple(concepts), attribute))
            return len(nodes) - 1

        read()
        if pos != len(actions):
            raise ProgramError(f"action sequence has {len(actions) - pos} trailing action(s)")
        return Program.from_tree(Program(tuple(nodes)))

    def target(
        self, program: Program, q: QuestionInfo, max_length: int, order_by_text: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Teacher-forcing targets of ``program`` for question ``q``: per step the slot (L,), the allowed
        actions (L, F + T) and the target actions (L, F + T); a concept argument's targets are all tokens
        that name it. Raises ProgramError when the question cannot express the program (a concept it does
        not mention, a filter naming one attribute twice, too long)."""
        d = self.domain
        cidx = {c: i for i, c in enumerate(d.object_concepts)}
        ridx = {c: i for i, c in enumerate(d.relation_concepts)}
        aidx = {a: i for i, a in enumerate(d.attribute_names)}
        F_ = self.num_fixed

        def cand(kind: str, value: str) -> np.ndarray:
            if kind == "concept":
                return np.nonzero(q.concept == cidx[value])[0]
            if kind == "relation":
                return np.nonzero(q.relation == ridx[value])[0]
            return np.nonzero(q.attribute == aidx[value])[0]

        def emit(i: int, flips: Mapping[int, bool], out: list[tuple[str, str | None]]) -> None:
            n = program.nodes[i]
            out.append(("op", n.op))
            for ch in self.children[self.op_index[n.op]]:
                kind = self.pointer_kind.get(ch)
                if kind == P_CONCEPTS:
                    for c in n.concepts:
                        out.append(("concept", c))
                    out.append(("end", None))
                elif kind == P_RELATION:
                    out.append(("relation", n.concepts[0]))
                elif kind == P_ATTRIBUTE:
                    out.append(("attribute", n.attribute))
            inputs = list(n.inputs)
            if flips.get(i, False):
                inputs.reverse()
            for j in inputs:
                emit(j, flips, out)

        def backtrack(seq: list[tuple[str, str | None]]) -> float:
            """How far the pointers must jump back when the sequence reads the question as early as possible
            (each argument at one of its words; dynamic programming over the choices)."""
            best: dict[int, float] = {-1: 0.0}
            for kind, value in seq:
                if kind in ("op", "end"):
                    continue
                positions = cand(kind, value).tolist()  # type: ignore[arg-type]
                if not positions:
                    return math.inf
                best = {p: min(c + max(0, prev - p) for prev, c in best.items()) for p in positions}
            return min(best.values())

        # Commutative operands (intersect, union, count_equal, query_attribute_equal) are read in the order
        # that follows the question best; ties keep the program's order.
        commutative = [i for i, n in enumerate(program.nodes) if n.op in _COMMUTATIVE and len(n.inputs) == 2]
        root = len(program.nodes) - 1
        symbolic: list[tuple[str, str | None]] = []
        emit(root, {}, symbolic)
        if order_by_text and commutative:
            cost = backtrack(symbolic)
            for bits in itertools.product((False, True), repeat=len(commutative)):
                if not any(bits):
                    continue
                seq: list[tuple[str, str | None]] = []
                emit(root, dict(zip(commutative, bits)), seq)
                c = backtrack(seq)
                if c < cost:
                    symbolic, cost = seq, c
        L = len(symbolic)
        if max_length < L:
            raise ProgramError(f"program needs {L} decoder steps, more than max_length {max_length}")
        slots = np.zeros(L, dtype=np.int64)
        masks = np.zeros((L, F_ + len(q)), dtype=bool)
        targets = np.zeros((L, F_ + len(q)), dtype=bool)
        st = self.start()
        for t, (kind, value) in enumerate(symbolic):
            slots[t] = st.stack[-1][0]
            # Type and length constraints only: the model learns to give ops whose arguments the question
            # lacks a low probability (decoding also masks them, and strict parsing reports them).
            masks[t] = self.allowed(st, t, max_length, q, check_available=False)
            if kind == "op":
                targets[t, self.op_index[value]] = True
            elif kind == "end":
                targets[t, self.end] = True
            else:
                c = cand(kind, value)  # type: ignore[arg-type]
                if len(c) == 0:
                    raise ProgramError(f"the question does not mention {kind} {value!r}")
                targets[t, F_ + c] = True
            targets[t] &= masks[t]
            if not targets[t].any():
                what = value if value is not None else "<end>"
                raise ProgramError(f"step {t}: {kind} {what!r} is not allowed there by the grammar")
            self.advance(st, int(np.nonzero(targets[t])[0][0]), q)
        if not st.done:
            raise ProgramError("program does not close")  # pragma: no cover - symbolic is a full tree
        return slots, masks, targets


_COMMUTATIVE = frozenset({"intersect", "union", "count_equal", "query_attribute_equal"})
