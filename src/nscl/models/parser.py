"""Semantic parser: question -> NS-CL program (NSCL-REFERENCE section 7, "Parser").

Dimension key: B questions (times samples or beams), T question tokens (padded), E embedding size, H encoder
GRU size per direction, D = 2H decoder size, F fixed actions (one per NS-CL op, plus ``<end>`` of a filter's
concept list), A = F + T actions per step (fixed actions, then one pointer action per token), L decoder steps.

A bidirectional GRU encodes the question; an attention GRU decoder emits the program in prefix order, e.g.::

    query(color, filter(relate(filter(scene(), [red, cube]), left), [sphere]))
    ->  query  @color  filter  @sphere <end>  relate  @left  filter  @red @cube <end>  scene

Each step chooses, with one softmax over A actions, either an op (or ``<end>``) or a *pointer* to a question
token (``@word``). Arguments (object concepts, relation concepts, attribute names) are always pointers: the
pointed word is mapped to its concept or attribute by a :class:`Lexicon` built from the domain and the
generator's synonyms (``ball`` -> sphere, ``shiny`` -> metal, ``left of`` -> left, ``colour`` -> color), so a
known concept in an unseen combination or position still parses. With ``delexicalize`` (default) the encoder
sees lexicon words only through their class (``<concept:shape>``, ``<relation>``, ``<attribute:color>`` ...),
never their identity, which makes that generalisation structural.

Decoding is constrained by the domain's op signatures: a stack of pending slots (an ``ObjectSet`` input, an
``Object`` input, the answer, a concept list, a relation, an attribute) decides at every step which actions are
well typed; pointers are allowed only at tokens whose word maps to something of the slot's kind; a length
budget forces the program to close within ``max_length`` steps. Greedy, sampled and beam decoding therefore
only produce programs that pass :meth:`Program.validate`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..domain import OBJECT, OBJECT_SET, P_ATTRIBUTE, P_CONCEPTS, P_RELATION, Domain
from ..errors import NSCLError, ProgramError
from ..program import Node, Program
from ..vocab import UNK, Vocab, tokenize

# Words naming an attribute (the queried or compared one), beyond the attribute's own name.
ATTRIBUTE_WORDS: Mapping[str, tuple[str, ...]] = {
    "color": ("colour", "colors", "colours", "colored", "coloured"),
    "shape": ("shapes", "shaped"),
    "material": ("materials", "made"),
    "size": ("sizes", "sized", "big"),
}
# Function words dropped from multi-word synonyms: "to the left of" -> "left", "in back of" -> "back".
_FUNCTION_WORDS = frozenset({"of", "to", "the", "on", "in", "at", "a", "an"})
NEG = -1e9  # logit of a masked action (finite, so that fully masked rows stay NaN-free)


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
                if used:
                    ptr &= ~np.isin(q.concept_attr, list(used))
                mask[self.num_fixed :] = ptr
            if slot == more:
                mask[self.end] = True
        elif kind == P_RELATION:
            mask[self.num_fixed :] = q.relation >= 0
        else:
            mask[self.num_fixed :] = q.attribute >= 0
        return mask

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


# --------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class ParserConfig:
    embedding_dim: int = 32  # E
    hidden_dim: int = 64  # H per direction; the decoder has D = 2H
    dropout: float = 0.1
    max_length: int = 64  # decoder steps (actions) per program
    delexicalize: bool = True  # the encoder sees lexicon words only through their class


@dataclass
class EncodedQuestions:
    """A padded batch of questions: encoder input ids (Tensor[B, T]), lengths (Tensor[B]), and per question
    its :class:`QuestionInfo`."""

    ids: Tensor
    lengths: Tensor
    info: list[QuestionInfo]

    def repeat(self, n: int) -> EncodedQuestions:
        if n == 1:
            return self
        return EncodedQuestions(
            self.ids.repeat_interleave(n, 0),
            self.lengths.repeat_interleave(n, 0),
            [q for q in self.info for _ in range(n)],
        )


@dataclass
class Decoded:
    """Decoder output for B sequences: programs (None where parsing failed, with the reason in ``errors``),
    their summed log-probabilities (Tensor[B], differentiable when sampled with grad) and entropies."""

    programs: list[Program | None]
    log_prob: Tensor
    entropy: Tensor
    errors: list[str | None]
    actions: list[list[int]]


class Parser(nn.Module):
    """Bidirectional GRU encoder + attention GRU decoder with a pointer over question tokens."""

    def __init__(
        self, domain: Domain, vocab: Vocab, cfg: ParserConfig | None = None, lexicon: Lexicon | None = None
    ) -> None:
        super().__init__()
        self.domain = domain
        self.vocab = vocab
        self.cfg = cfg = cfg or ParserConfig()
        self.lexicon = lexicon or Lexicon.build(domain)
        self.grammar = g = Grammar(domain)
        self.word_classes = self.lexicon.classes(domain)
        self.class_names = tuple(sorted(set(self.word_classes.values())))
        class_id = {c: len(vocab) + i for i, c in enumerate(self.class_names)}
        self._class_id = {w: class_id[c] for w, c in self.word_classes.items()}
        E, H = cfg.embedding_dim, cfg.hidden_dim
        D = 2 * H
        self.embed = nn.Embedding(len(vocab) + len(self.class_names), E, padding_idx=0)
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.init = nn.Linear(D, D)
        self.action_embed = nn.Embedding(g.num_fixed + 1, E)  # ops, <end>, <start>
        self.pointer_embed = nn.Linear(D, E)  # feedback of a pointer action: the pointed token's encoding
        self.slot_embed = nn.Embedding(len(g.slots), E)
        self.cell = nn.GRUCell(2 * E + D, D)
        self.att_query = nn.Linear(D, D)
        self.out = nn.Linear(2 * D, D)
        self.op_head = nn.Linear(D, g.num_fixed)
        self.ptr_query = nn.Linear(D, D)
        self.ptr_key = nn.Linear(D, D)
        # Coverage: tokens already pointed at get these key offsets (attention, pointer), so the decoder can
        # tell the phrase it has read from the one it has not.
        self.cov_att = nn.Parameter(torch.zeros(D))
        self.cov_ptr = nn.Parameter(torch.zeros(D))
        self.drop = nn.Dropout(cfg.dropout)

    # ------------------------------------------------------------------------------------ inputs
    def encode_questions(
        self,
        questions: Sequence[str | Sequence[str]],
        unknown: str = "error",
    ) -> tuple[EncodedQuestions, list[str | None]]:
        """Tokenise and map to encoder ids. ``unknown="error"`` reports a question with a word outside the
        vocabulary and the lexicon (its entry in the returned errors is set and its ids are all UNK);
        ``unknown="unk"`` reads such words as ``<UNK>``."""
        rows: list[list[int]] = []
        infos: list[QuestionInfo] = []
        errors: list[str | None] = []
        for q in questions:
            tokens = tokenize(q) if isinstance(q, str) else list(q)
            text = q if isinstance(q, str) else " ".join(q)
            err = None
            if not tokens:
                err = f"cannot parse {text!r}: the question is empty"
                tokens = [UNK]
            ids = []
            for w in tokens:
                if self.cfg.delexicalize and w in self._class_id:
                    ids.append(self._class_id[w])
                elif w in self.vocab:
                    ids.append(self.vocab.index[w])
                elif w in self._class_id:
                    ids.append(self.vocab.index[UNK])
                else:
                    if unknown == "error" and err is None:
                        err = f"cannot parse {text!r}: unknown word {w!r} (not in the parser's vocabulary)"
                    ids.append(self.vocab.index[UNK])
            rows.append(ids)
            infos.append(self.grammar.question_info(tokens, self.lexicon, text))
            errors.append(err)
        T = max(len(r) for r in rows) if rows else 1
        ids_t = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return EncodedQuestions(ids_t, lengths, infos), errors

    # ------------------------------------------------------------------------------------ network
    def encode(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids (Tensor[B, T]), lengths (Tensor[B]) -> token encodings (Tensor[B, T, D]), pad mask
        (Tensor[B, T], True at real tokens) and the initial decoder state (Tensor[B, D])."""
        x = self.drop(self.embed(ids))  # (B, T, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.encoder(packed)  # h: (2, B, H)
        enc, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=ids.shape[1]
        )  # (B, T, D)
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        h0 = torch.tanh(self.init(torch.cat([h[0], h[1]], dim=-1)))  # (B, D)
        return enc, mask, h0

    def step(
        self,
        h: Tensor,
        ctx: Tensor,
        prev: Tensor,
        slot: Tensor,
        enc: Tensor,
        keys: Tensor,
        pad: Tensor,
        covered: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step. h, ctx (Tensor[B, D]); prev (Tensor[B, E]) feedback of the last action; slot
        (Tensor[B]); enc, keys (Tensor[B, T, D]); pad (Tensor[B, T]); covered (Tensor[B, T]) 1 at tokens
        already pointed at. Returns the new h, ctx and the action logits (Tensor[B, F + T])."""
        D = h.shape[-1]
        x = torch.cat([prev, self.slot_embed(slot), ctx], dim=-1)  # (B, 2E + D)
        h = self.cell(self.drop(x), h)
        q = self.att_query(h)  # (B, D)
        att = (q[:, None, :] * enc).sum(-1)  # (B, T)
        if covered is not None:
            att = att + covered * (q @ self.cov_att)[:, None]
        att = torch.softmax((att / math.sqrt(D)).masked_fill(~pad, NEG), dim=-1)
        ctx = (att[:, :, None] * enc).sum(1)  # (B, D)
        o = torch.tanh(self.out(self.drop(torch.cat([h, ctx], dim=-1))))  # (B, D)
        op_logits = self.op_head(o)  # (B, F)
        pq = self.ptr_query(o)  # (B, D)
        ptr_logits = (pq[:, None, :] * keys).sum(-1)  # (B, T)
        if covered is not None:
            ptr_logits = ptr_logits + covered * (pq @ self.cov_ptr)[:, None]
        return h, ctx, torch.cat([op_logits, ptr_logits / math.sqrt(D)], dim=-1)

    def cover(self, covered: Tensor, actions: Tensor) -> Tensor:
        """covered (Tensor[B, T]) with the tokens pointed at by ``actions`` (Tensor[B]) marked."""
        F_ = self.grammar.num_fixed
        hit = F.one_hot((actions - F_).clamp(min=0), covered.shape[1] + 1)[:, : covered.shape[1]]
        return torch.maximum(covered, hit.to(covered.dtype) * (actions >= F_)[:, None])

    def feedback(self, actions: Tensor, enc: Tensor) -> Tensor:
        """Embedding (Tensor[B, E]) of the chosen actions (Tensor[B]): op embeddings, or the pointed token's
        encoding."""
        F_ = self.grammar.num_fixed
        is_ptr = actions >= F_
        fixed = self.action_embed(actions.clamp(max=F_ - 1))
        pos = (actions - F_).clamp(min=0, max=enc.shape[1] - 1)
        pointed = enc[torch.arange(enc.shape[0], device=enc.device), pos]  # (B, D)
        return torch.where(is_ptr[:, None], self.pointer_embed(pointed), fixed)

    def _start(self, B: int, device: torch.device) -> Tensor:
        return self.action_embed(torch.full((B,), self.grammar.num_fixed, dtype=torch.long, device=device))

    # ------------------------------------------------------------------------------------ training
    def teacher_forcing_loss(
        self, ids: Tensor, lengths: Tensor, slots: Tensor, masks: Tensor, targets: Tensor, steps: Tensor
    ) -> Tensor:
        """Negative log-likelihood (Tensor[B]) of the target programs.

        slots (Tensor[B, L]); masks, targets (Tensor[B, L, F + T]); steps (Tensor[B]) program lengths. A step
        with several target pointers (the concept named twice) scores their total probability; the decoder
        is fed back the one it currently prefers."""
        enc, pad, h = self.encode(ids, lengths)
        keys = self.ptr_key(enc)
        B, L = slots.shape
        ctx = enc.new_zeros(B, enc.shape[-1])
        prev = self._start(B, ids.device)
        covered = enc.new_zeros(B, ids.shape[1])
        nll = enc.new_zeros(B)
        for t in range(L):
            active = t < steps  # (B,)
            h, ctx, logits = self.step(h, ctx, prev, slots[:, t], enc, keys, pad, covered)
            m = masks[:, t] | ~active[:, None]
            tg = targets[:, t] | (~active[:, None] & m)
            lm = logits.masked_fill(~m, NEG)
            lt = logits.masked_fill(~tg, NEG)
            nll = nll + (torch.logsumexp(lm, -1) - torch.logsumexp(lt, -1)) * active
            chosen = lt.detach().argmax(-1)
            prev = self.feedback(chosen, enc)
            covered = self.cover(covered, chosen * active)
        return nll

    # ------------------------------------------------------------------------------------ decoding
    def decode(
        self,
        enc_q: EncodedQuestions,
        mode: str = "greedy",
        strict: bool = True,
        errors: Sequence[str | None] | None = None,
    ) -> Decoded:
        """Greedy (``mode="greedy"``) or sampled (``"sample"``) decoding of a batch, constrained to
        well-typed programs. Gradients flow into ``log_prob`` unless called under ``torch.no_grad``.

        ``strict`` (default): the decoder chooses among every well-typed action, as in training; choosing an
        op whose argument the question has no word for (``query`` without an attribute word) fails the
        question with a message, instead of silently taking the next best op. Its log-probability still
        counts, so REINFORCE learns to avoid it. ``strict=False`` masks such ops out."""
        g = self.grammar
        device = self.embed.weight.device
        ids, lengths = enc_q.ids.to(device), enc_q.lengths.to(device)
        enc, pad, h = self.encode(ids, lengths)
        keys = self.ptr_key(enc)
        B, T = ids.shape
        A = g.num_fixed + T
        n_ops = len(g.ops)
        states = [g.start() for _ in range(B)]
        errs: list[str | None] = list(errors) if errors is not None else [None] * B
        for b, e in enumerate(errs):
            if e is not None:
                states[b].stack.clear()
        ctx = enc.new_zeros(B, enc.shape[-1])
        prev = self._start(B, device)
        covered = enc.new_zeros(B, T)
        log_prob = enc.new_zeros(B)
        entropy = enc.new_zeros(B)
        L = self.cfg.max_length
        for t in range(L):
            live = [b for b in range(B) if not states[b].done]
            if not live:
                break
            mask_np = np.zeros((B, A), dtype=bool)
            slot_np = np.zeros(B, dtype=np.int64)
            for b in live:
                st, q = states[b], enc_q.info[b]
                slot_np[b] = st.stack[-1][0]
                mask_np[b, : g.num_fixed + len(q)] = g.allowed(st, t, L, q, check_available=not strict)
            mask = torch.from_numpy(mask_np).to(device)
            active = mask.any(-1)
            mask[~active, 0] = True  # finished rows: a dummy action, ignored
            h, ctx, logits = self.step(
                h, ctx, prev, torch.from_numpy(slot_np).to(device), enc, keys, pad, covered
            )
            lm = logits.masked_fill(~mask, NEG)
            logp = torch.log_softmax(lm, -1)
            if mode == "sample":
                a = torch.distributions.Categorical(logits=lm).sample()
            elif mode == "greedy":
                a = lm.argmax(-1)
            else:
                raise ValueError(f"unknown decoding mode {mode!r} (greedy, sample)")
            log_prob = log_prob + logp.gather(1, a[:, None])[:, 0] * active
            p = logp.exp()
            entropy = entropy - (p * logp.masked_fill(~mask, 0.0)).sum(-1) * active
            a_cpu = a.tolist()
            for b in live:
                q = enc_q.info[b]
                if a_cpu[b] < n_ops and not q.available[a_cpu[b]]:
                    errs[b] = self._missing_argument(q, a_cpu[b])
                    states[b].actions.append(a_cpu[b])
                    states[b].stack.clear()
                else:
                    g.advance(states[b], a_cpu[b], q)
            prev = self.feedback(a, enc)
            covered = self.cover(covered, a)
        programs: list[Program | None] = []
        for b in range(B):
            if errs[b] is not None:
                programs.append(None)
            else:
                programs.append(g.to_program(states[b].actions, enc_q.info[b]))
        return Decoded(programs, log_prob, entropy, errs, [s.actions for s in states])

    def _missing_argument(self, q: QuestionInfo, action: int) -> str:
        op = self.grammar.ops[action]
        kinds = self.grammar.pointer_ops[action]
        has = {
            P_CONCEPTS: (q.concept >= 0).any(),
            P_RELATION: (q.relation >= 0).any(),
            P_ATTRIBUTE: (q.attribute >= 0).any(),
        }
        missing = next(k for k in (P_CONCEPTS, P_RELATION, P_ATTRIBUTE) if k in kinds and not has[k])
        d = self.domain
        examples = {
            P_CONCEPTS: "an object concept such as " + ", ".join(d.object_concepts[:4]),
            P_RELATION: "a relation such as " + ", ".join(d.relation_concepts),
            P_ATTRIBUTE: "an attribute such as " + ", ".join(d.attribute_names),
        }[missing]
        return (
            f"cannot parse {q.text!r}: the parse needs {op!r}, but no word of the question names {examples}"
        )

    @torch.no_grad()
    def beam_search(
        self, enc_q: EncodedQuestions, beam_size: int, skip: Sequence[bool] | None = None
    ) -> list[DecodeState | None]:
        """Best complete action sequence per question (highest total log-probability; ``failed`` when that
        is an op whose argument the question lacks), or None when skipped or nothing completes."""
        best = self.beam_candidates(enc_q, beam_size, 1, skip)
        return [c[0] if c else None for c in best]

    @torch.no_grad()
    def beam_candidates(
        self, enc_q: EncodedQuestions, beam_size: int, n_best: int, skip: Sequence[bool] | None = None
    ) -> list[list[DecodeState]]:
        """Up to ``n_best`` complete action sequences per question, best first, from a beam of
        ``beam_size`` (empty when skipped or nothing completes)."""
        g = self.grammar
        device = self.embed.weight.device
        out: list[list[DecodeState]] = []
        L = self.cfg.max_length
        for b, q in enumerate(enc_q.info):
            if skip is not None and skip[b]:
                out.append([])
                continue
            ids = enc_q.ids[b : b + 1, : len(q)].to(device)
            enc, pad, h = self.encode(ids, enc_q.lengths[b : b + 1].to(device))
            keys = self.ptr_key(enc)
            beams = [g.start()]
            hs, ctxs = h, enc.new_zeros(1, enc.shape[-1])
            covs = enc.new_zeros(1, enc.shape[1])
            prev = self._start(1, device)
            finished: list[DecodeState] = []
            for t in range(L):
                if not beams:
                    break
                k = len(beams)
                slot = torch.tensor([s.stack[-1][0] for s in beams], device=device)
                hs, ctxs, logits = self.step(
                    hs,
                    ctxs,
                    prev,
                    slot,
                    enc.expand(k, -1, -1),
                    keys.expand(k, -1, -1),
                    pad.expand(k, -1),
                    covs,
                )
                mask = torch.from_numpy(
                    np.stack([g.allowed(s, t, L, q, check_available=False) for s in beams])
                ).to(device)
                logp = torch.log_softmax(logits.masked_fill(~mask, NEG), -1).masked_fill(~mask, -math.inf)
                scores = torch.tensor([s.score for s in beams], device=device)[:, None] + logp  # (k, A)
                flat = scores.flatten()
                n = min(beam_size, int(torch.isfinite(flat).sum()))
                if n == 0:
                    break
                top = flat.topk(n)
                new_beams, rows, acts = [], [], []
                for sc, idx in zip(top.values.tolist(), top.indices.tolist()):
                    r, a = divmod(idx, logits.shape[1])
                    st = beams[r].copy()
                    st.score = sc
                    if a < len(g.ops) and not q.available[a]:
                        # An op whose argument the question lacks: a failed parse, competing on its score.
                        st.actions.append(a)
                        st.stack.clear()
                        st.failed = True
                        finished.append(st)
                        continue
                    g.advance(st, a, q)
                    if st.done:
                        finished.append(st)
                    else:
                        new_beams.append(st)
                        rows.append(r)
                        acts.append(a)
                done = sorted((s.score for s in finished), reverse=True)
                bar = done[n_best - 1] if len(done) >= n_best else -math.inf
                # Scores only decrease, so a live beam below the n-th best finished one can never place.
                keep = [i for i, s in enumerate(new_beams) if s.score > bar]
                beams = [new_beams[i] for i in keep]
                if beams:
                    sel = torch.tensor([rows[i] for i in keep], device=device)
                    hs, ctxs = hs[sel], ctxs[sel]
                    chosen = torch.tensor([acts[i] for i in keep], device=device)
                    prev = self.feedback(chosen, enc.expand(len(keep), -1, -1))
                    covs = self.cover(covs[sel], chosen)
            out.append(sorted(finished, key=lambda s: -s.score)[:n_best])
        return out

    # ------------------------------------------------------------------------------------ public API
    @torch.no_grad()
    def parse_many(
        self, questions: Sequence[str], beam_size: int = 1, unknown: str = "error", batch_size: int = 256
    ) -> tuple[list[Program | None], list[str | None]]:
        """Programs (None where a question cannot be parsed) and the error message of each question."""
        was = self.training
        self.eval()
        programs: list[Program | None] = []
        errors: list[str | None] = []
        try:
            for i in range(0, len(questions), batch_size):
                chunk = list(questions[i : i + batch_size])
                enc_q, errs = self.encode_questions(chunk, unknown)
                if beam_size <= 1:
                    res = self.decode(enc_q, "greedy", strict=True, errors=errs)
                    programs += res.programs
                    errors += res.errors
                    continue
                best = self.beam_search(enc_q, beam_size, skip=[e is not None for e in errs])
                for j, (e, st) in enumerate(zip(errs, best)):
                    if e is None and st is not None and st.failed:
                        e = self._missing_argument(enc_q.info[j], st.actions[-1])
                    if e is None and st is None:
                        e = f"cannot parse {chunk[j]!r}: no well-typed program fits in the length budget"
                    if e is not None:
                        programs.append(None)
                        errors.append(e)
                    else:
                        programs.append(self.grammar.to_program(st.actions, enc_q.info[j]))  # type: ignore[union-attr]
                        errors.append(None)
        finally:
            self.train(was)
        return programs, errors

    @torch.no_grad()
    def parse_candidates(self, questions: Sequence[str], beam_size: int, n_best: int) -> list[list[Program]]:
        """Up to ``n_best`` well-typed programs per question from a beam of ``beam_size``, most probable
        first; questions with unknown words, and candidates that fail for a missing argument, are left out."""
        was = self.training
        self.eval()
        try:
            enc_q, errs = self.encode_questions(list(questions), "error")
            cands = self.beam_candidates(enc_q, beam_size, n_best, skip=[e is not None for e in errs])
            return [
                [self.grammar.to_program(st.actions, enc_q.info[j]) for st in c if not st.failed]
                for j, c in enumerate(cands)
            ]
        finally:
            self.train(was)

    def parse(self, questions: Sequence[str], beam_size: int = 1) -> list[Program]:
        """The program of every question; raises :class:`ParseError` (an NSCLError) naming the first
        question that cannot be parsed and why (e.g. the unknown word)."""
        programs, errors = self.parse_many(questions, beam_size)
        for e in errors:
            if e is not None:
                raise ParseError(e)
        return programs  # type: ignore[return-value]

    def sample(self, questions: Sequence[str] | EncodedQuestions, samples: int = 1) -> Decoded:
        """``samples`` programs per question (question-major: rows b * samples + k) drawn from the
        constrained decoder, with differentiable log-probabilities for REINFORCE. Questions with unknown
        words come back as None (their log_prob is 0)."""
        if isinstance(questions, EncodedQuestions):
            enc_q, errs = questions, None
        else:
            enc_q, errs = self.encode_questions(list(questions), "error")
        enc_q = enc_q.repeat(samples)
        errs_rep = [e for e in errs for _ in range(samples)] if errs is not None else None
        return self.decode(enc_q, "sample", errors=errs_rep)


# --------------------------------------------------------------------------------------------- checkpoints
def parser_state(parser: Parser) -> dict:
    """Everything needed to rebuild the parser, in types ``torch.load(weights_only=True)`` accepts."""
    return {
        "config": asdict(parser.cfg),
        "vocab": list(parser.vocab.words),
        "lexicon": parser.lexicon.to_json(),
        "domain": parser.domain.to_dict(),
        "state": parser.state_dict(),
    }


def parser_from_state(state: Mapping, domain: Domain | None = None, source: str = "checkpoint") -> Parser:
    from ..config import from_dict
    from ..training.checkpoint import CheckpointError

    try:
        dom = domain or Domain.from_dict(state["domain"], source)
        parser = Parser(
            dom,
            Vocab(tuple(state["vocab"])),
            from_dict(ParserConfig, state["config"]),
            Lexicon.from_json(state["lexicon"]),
        )
        parser.load_state_dict(state["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: invalid parser state ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    parser.eval()
    return parser


# --------------------------------------------------------------------------------------------- readable form
_STR_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|[()\[\],])")


def program_from_str(text: str, domain: Domain) -> Program:
    """Read the readable form of :meth:`Program.to_str`, e.g.
    ``query(color, filter(relate(filter(scene(), [red]), left), [cube]))``; raises ProgramError."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _STR_TOKEN.match(text, pos)
        if m is None:
            raise ProgramError(f"{text!r}: unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    nodes: list[Node] = []
    i = 0

    def expect(tok: str) -> None:
        nonlocal i
        if i >= len(tokens) or tokens[i] != tok:
            raise ProgramError(f"{text!r}: expected {tok!r} at token {i}")
        i += 1

    def call() -> int:
        nonlocal i
        op = tokens[i]
        if op not in domain.nscl_ops:
            raise ProgramError(f"{text!r}: unknown operation {op!r}")
        i += 1
        expect("(")
        inputs: list[int] = []
        concepts: list[str] = []
        attribute = None
        while tokens[i] != ")":
            if tokens[i] == "[":
                i += 1
                while tokens[i] != "]":
                    if tokens[i] != ",":
                        concepts.append(tokens[i])
                    i += 1
                i += 1
            elif i + 1 < len(tokens) and tokens[i + 1] == "(":
                inputs.append(call())
            elif tokens[i] in domain.attribute_names:
                attribute = tokens[i]
                i += 1
            else:
                concepts.append(tokens[i])
                i += 1
            if tokens[i] == ",":
                i += 1
        expect(")")
        nodes.append(Node(op, tuple(inputs), tuple(concepts), attribute))
        return len(nodes) - 1

    try:
        call()
    except IndexError:
        raise ProgramError(f"{text!r}: unexpected end") from None
    if i != len(tokens):
        raise ProgramError(f"{text!r}: trailing text after the program")
    prog = Program.from_tree(Program(tuple(nodes)))
    prog.validate(domain, text)
    return prog
