"""Batched quasi-symbolic executor (NSCL-REFERENCE section 4).

This is the authoritative executor of the model: training, evaluation, the parser's rewards and ``nscl ask``'s
answers all run here. The others are for checking it: ``models/reference_executor.py`` (a naive per-question
executor, the reference of tests and benchmarks), ``inference/trace.py`` (``ask``'s node-by-node trace, built from
this module's primitives) and ``symbolic.py`` (exact execution on scene annotations, which verifies datasets).

Dimension key: Q questions, B images, N objects (padded), L program steps, K concepts per filter, C concepts,
C_a concepts of attribute a, A attributes, R relation concepts.

Object sets are logit vectors over the N objects. A batch of questions with different programs runs with a
loop over program *steps* only: at step t, the questions whose t-th node is op ``o`` are gathered and ``o`` runs
once, vectorised over them. Primitives are pure functions in the ``OPS`` table.

Modes: training (soft; differentiable) and test (``quantize=True``: unique is a one-hot argmax, counts are hard,
and answers are argmax / sign decisions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.nn.functional as F
from torch import Tensor

from ..domain import BOOL, INTEGER, Domain
from ..program import Program

ALL_OBJECTS = 10.0  # logit of scene()
PAD = -100.0  # logit of padding objects, in every set
COUNT_TAU = 0.25  # count comparison temperature


# --------------------------------------------------------------------------------------------- compiled programs
@dataclass(frozen=True)
class CompiledProgram:
    """A program as integer codes: per node the op id, two input indices, concept ids and one parameter id
    (relation concept or attribute index, -1 when unused)."""

    ops: tuple[int, ...]
    inputs: tuple[tuple[int, int], ...]
    concepts: tuple[tuple[int, ...], ...]
    params: tuple[int, ...]
    output_kind: int  # answer kind the program produces (see AnswerKinds)
    levels: tuple[int, ...]  # 0 for scene(), else 1 + the largest level of the node's inputs


class AnswerKind(IntEnum):
    """What a program answers: a yes/no, a count, or a concept of an attribute. The kind of attribute ``a``
    (``domain.attribute_names[a]``) is ``ATTRIBUTE + a``, so kinds are plain integers in tensors."""

    BOOL = 0
    INTEGER = 1
    ATTRIBUTE = 2
    NONE = -1  # an object set, not an answer


class AnswerKinds:
    """Answer kinds of one domain: :class:`AnswerKind` ``BOOL``, ``INTEGER``, then ``ATTRIBUTE + a`` for
    attribute a."""

    def __init__(self, domain: Domain) -> None:
        self.names = (BOOL, INTEGER) + tuple(a.name for a in domain.attributes)
        self.attributes = domain.attribute_names

    def of_attribute(self, name: str) -> int:
        return AnswerKind.ATTRIBUTE + self.attributes.index(name)

    def attribute_of(self, kind: int) -> str:
        """The attribute a kind >= ``AnswerKind.ATTRIBUTE`` asks for."""
        return self.attributes[kind - AnswerKind.ATTRIBUTE]

    def of_answer(self, domain: Domain, answer: str) -> tuple[int, int]:
        """(kind, value) of a normalised answer: yes -> (BOOL, 1), "3" -> (INTEGER, 3), "red" -> (ATTRIBUTE +
        color, index of red)."""
        t = domain.answer_type(answer)
        if t == BOOL:
            return AnswerKind.BOOL, int(answer == "yes")
        if t == INTEGER:
            return AnswerKind.INTEGER, int(answer)
        attr = domain.attribute_of_concept(answer)
        return self.of_attribute(attr.name), attr.concepts.index(answer)

    def decode(self, domain: Domain, kind: int, value: int) -> str:
        if kind == AnswerKind.BOOL:
            return "yes" if value else "no"
        if kind == AnswerKind.INTEGER:
            return str(value)
        return domain.attribute(self.attribute_of(kind)).concepts[value]


class Compiler:
    """Turns NS-CL programs into :class:`CompiledProgram` for one domain."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        unknown = set(domain.nscl_ops) - set(OP_NAMES)
        if unknown:
            raise ValueError(f"the executor has no implementation for {sorted(unknown)}")
        self.concepts = {c: i for i, c in enumerate(domain.object_concepts)}
        self.relations = {c: i for i, c in enumerate(domain.relation_concepts)}
        self.attributes = {a: i for i, a in enumerate(domain.attribute_names)}

    def __call__(self, prog: Program) -> CompiledProgram:
        ops, inputs, concepts, params, levels = [], [], [], [], []
        for n in prog.nodes:
            levels.append(1 + max((levels[j] for j in n.inputs), default=-1))
            ops.append(OP_NAMES.index(n.op))
            ins = tuple(n.inputs) + (-1,) * (2 - len(n.inputs))
            inputs.append((ins[0], ins[1]))
            if n.op == "relate":
                concepts.append(())
                params.append(self.relations[n.concepts[0]])
            else:
                concepts.append(tuple(self.concepts[c] for c in n.concepts))
                params.append(self.attributes[n.attribute] if n.attribute is not None else -1)
        last = prog.nodes[-1]
        if last.op in ("exist", "query_attribute_equal", "count_equal", "count_less", "count_greater"):
            kind = AnswerKind.BOOL
        elif last.op == "count":
            kind = AnswerKind.INTEGER
        elif last.op == "query":
            kind = AnswerKind.ATTRIBUTE + self.attributes[last.attribute]
        else:
            kind = AnswerKind.NONE
        return CompiledProgram(
            tuple(ops), tuple(inputs), tuple(concepts), tuple(params), int(kind), tuple(levels)
        )


@dataclass
class OpGroup:
    """All nodes of one op (and, for query, one attribute) at one level of the batch's programs.

    ``x``/``y`` are positions of the input sets in the executor's bank: the concatenation, in group order, of
    the outputs of every earlier set-producing group. Tensors are (k,) except concepts (k, K)."""

    op: int
    level: int
    attribute: int  # query groups: the attribute index; else -1
    questions: Tensor
    images: Tensor
    x: Tensor
    y: Tensor
    concepts: Tensor
    param: Tensor

    def to(self, device: torch.device | str) -> OpGroup:
        t = [getattr(self, f).to(device) for f in ("questions", "images", "x", "y", "concepts", "param")]
        return OpGroup(self.op, self.level, self.attribute, *t)


@dataclass
class ProgramBatch:
    """A batch of Q compiled programs scheduled by level: nodes of the same op and level across all programs
    form one :class:`OpGroup` and run as one vectorised call. ``image`` (Q,) is each question's image in the
    batch; ``output_kind`` (Q,) the answer kind each program produces. Built once on the CPU, so execution
    needs no device synchronisation."""

    groups: list[OpGroup]
    image: Tensor
    output_kind: Tensor

    @property
    def num_questions(self) -> int:
        return int(self.image.shape[0])

    @classmethod
    def collate(cls, programs: Sequence[CompiledProgram], images: Sequence[int]) -> ProgramBatch:
        set_codes = {OP_NAMES.index(n) for n in SET_OPS}
        query_code = OP_NAMES.index("query")
        buckets: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
        for q, p in enumerate(programs):
            for t, (op, lvl) in enumerate(zip(p.ops, p.levels)):
                key = (lvl, op, p.params[t] if op == query_code else -1)
                buckets.setdefault(key, []).append((q, t))
        K = max([len(c) for p in programs for c in p.concepts] + [1])
        position: dict[tuple[int, int], int] = {}
        offset = 0
        groups = []
        for (lvl, op, attr), members in sorted(buckets.items()):
            k = len(members)
            qs = [q for q, _ in members]
            xs, ys, cs, ps = [], [], torch.full((k, K), -1, dtype=torch.long), []
            for r, (q, t) in enumerate(members):
                prog = programs[q]
                i0, i1 = prog.inputs[t]
                xs.append(position[(q, i0)] if i0 >= 0 else 0)
                ys.append(position[(q, i1)] if i1 >= 0 else 0)
                if prog.concepts[t]:
                    cs[r, : len(prog.concepts[t])] = torch.tensor(prog.concepts[t])
                ps.append(prog.params[t])
            if op in set_codes:
                for r, (q, t) in enumerate(members):
                    position[(q, t)] = offset + r
                offset += k
            groups.append(
                OpGroup(
                    op,
                    lvl,
                    attr,
                    torch.tensor(qs),
                    torch.tensor([images[q] for q in qs], dtype=torch.long),
                    torch.tensor(xs),
                    torch.tensor(ys),
                    cs,
                    torch.tensor(ps),
                )
            )
        kinds = torch.tensor([p.output_kind for p in programs])
        return cls(groups, torch.as_tensor(images, dtype=torch.long), kinds)

    def to(self, device: torch.device | str) -> ProgramBatch:
        return ProgramBatch(
            [g.to(device) for g in self.groups], self.image.to(device), self.output_kind.to(device)
        )


# --------------------------------------------------------------------------------------------- scene tensors
@dataclass
class SceneLogits:
    """Everything the executor reads about the batch's images.

    concept (B, N, C); query[a] (B, N, C_a); same (B, A, N, N); relation (B, R, N, N) where [b, r, i, j] is
    "j is r of i"; mask (B, N).
    """

    concept: Tensor
    query: dict[str, Tensor]
    same: Tensor
    relation: Tensor
    mask: Tensor

    def _map(self, fn: Callable[[Tensor], Tensor], mask: bool = True) -> SceneLogits:
        return SceneLogits(
            fn(self.concept),
            {a: fn(v) for a, v in self.query.items()},
            fn(self.same),
            fn(self.relation),
            fn(self.mask) if mask else self.mask,
        )

    def to(self, device: torch.device | str) -> SceneLogits:
        return self._map(lambda t: t.to(device))

    def detach(self) -> SceneLogits:
        """The same logits cut from the graph (the mask is not differentiable and stays as is)."""
        return self._map(Tensor.detach, mask=False)

    def image(self, b: int, n: int | None = None) -> SceneLogits:
        """Image ``b`` alone (B = 1), keeping its first ``n`` objects (default: all N)."""
        n = self.mask.shape[1] if n is None else n
        return SceneLogits(
            self.concept[b : b + 1, :n],
            {a: v[b : b + 1, :n] for a, v in self.query.items()},
            self.same[b : b + 1, :, :n, :n],
            self.relation[b : b + 1, :, :n, :n],
            self.mask[b : b + 1, :n],
        )

    @staticmethod
    def cat(parts: Sequence[SceneLogits]) -> SceneLogits:
        """Concatenate batches of images, padding objects to the largest N (padding is masked out)."""
        N = max(p.mask.shape[1] for p in parts)

        def pad(t: Tensor, dims: Sequence[int]) -> Tensor:
            spec: list[int] = []
            for d in reversed(range(1, t.dim())):
                spec += [0, N - t.shape[d]] if d in dims else [0, 0]
            return F.pad(t, spec)

        return SceneLogits(
            torch.cat([pad(p.concept, [1]) for p in parts]),
            {a: torch.cat([pad(p.query[a], [1]) for p in parts]) for a in parts[0].query},
            torch.cat([pad(p.same, [2, 3]) for p in parts]),
            torch.cat([pad(p.relation, [2, 3]) for p in parts]),
            torch.cat([pad(p.mask, [1]) for p in parts]),
        )


@dataclass
class Output:
    """Answers of a batch. ``scalar`` (Q,) holds the bool logit or the count; ``query[kind]`` holds
    (question indices, logits (k, C_a)); ``kind`` (Q,) is the answer kind each program produced.

    ``referent_logp`` (Q,), only when asked for (else None; detached): the log-probability that every
    set the program reads as one object (the input of relate, relate_attribute_equal, query and
    query_attribute_equal) holds exactly one object, each object in a set independently with probability
    sigmoid(logit). CLEVR's question engine only asks
    questions whose references are unambiguous, so a low value marks a program that is unlikely to be the
    question's; the parser's execution-guided decoding and the answers-only learner's posterior read it, the
    model's losses never do."""

    kind: Tensor
    scalar: Tensor
    query: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    referent_logp: Tensor | None = None


# --------------------------------------------------------------------------------------------- primitives
@dataclass
class Args:
    """The gathered inputs of one op group: k questions."""

    scene: SceneLogits
    img: Tensor  # (k,) image of each question
    x: Tensor | None  # (k, N) first input set
    y: Tensor | None  # (k, N) second input set
    concepts: Tensor  # (k, K) concept ids, -1 padding
    param: Tensor  # (k,) relation concept or attribute index
    quantize: bool
    mask: Tensor | None = None  # (k, N) real objects of each question's image (gathered once per group)


def unique(x: Tensor, mask: Tensor, quantize: bool) -> Tensor:
    """(k, N) logits -> (k, N) distribution over the objects: softmax, or one-hot argmax when quantised.
    Padding objects get PAD (-100), so they never take probability mass."""
    x = x.masked_fill(~mask, PAD)
    if quantize:
        return F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
    return torch.softmax(x, dim=-1)


def count(x: Tensor, mask: Tensor, quantize: bool) -> Tensor:
    if quantize:
        return ((x > 0) & mask).sum(-1).to(x.dtype)
    return (torch.sigmoid(x) * mask).sum(-1)


def _mask(a: Args) -> Tensor:
    return a.mask if a.mask is not None else a.scene.mask[a.img]  # (k, N)


def op_scene(a: Args) -> Tensor:
    m = _mask(a)
    return torch.full(m.shape, ALL_OBJECTS, device=m.device).masked_fill(~m, PAD)


def op_filter(a: Args) -> Tensor:
    logits = a.scene.concept[a.img]  # (k, N, C)
    ids = a.concepts.clamp_min(0)  # (k, K)
    picked = torch.gather(logits, 2, ids[:, None, :].expand(-1, logits.shape[1], -1))  # (k, N, K)
    picked = picked.masked_fill((a.concepts < 0)[:, None, :], float("inf"))
    return torch.minimum(a.x, picked.min(-1).values).masked_fill(~_mask(a), PAD)


def attend(
    x: Tensor, mask: Tensor, table: Tensor, img: Tensor, param: Tensor | None, quantize: bool
) -> Tensor:
    """Row of ``table`` read at the unique object of ``x``: sum_i unique(x)[k, i] * T[k, i, :].

    x (k, N) logits; table (B, [R,] N, M) indexed by img (k,) and, when given, param (k,) -> (k, M). In test
    mode unique is one-hot, so this is a direct row lookup that never materialises the (k, N, M) slices."""
    if quantize:
        i = x.masked_fill(~mask, PAD).argmax(-1)  # (k,)
        return table[img, param, i] if param is not None else table[img, i]
    p = unique(x, mask, quantize)  # (k, N)
    rows = table[img, param] if param is not None else table[img]  # (k, N, M)
    return torch.bmm(p[:, None, :], rows).squeeze(1)


def op_relate(a: Args) -> Tensor:
    m = _mask(a)
    return attend(a.x, m, a.scene.relation, a.img, a.param, a.quantize).masked_fill(~m, PAD)


def op_relate_attribute_equal(a: Args) -> Tensor:
    m = _mask(a)
    return attend(a.x, m, a.scene.same, a.img, a.param, a.quantize).masked_fill(~m, PAD)


def op_intersect(a: Args) -> Tensor:
    return torch.minimum(a.x, a.y)


def op_union(a: Args) -> Tensor:
    return torch.maximum(a.x, a.y)


def op_exist(a: Args) -> Tensor:
    return a.x.masked_fill(~_mask(a), PAD).max(-1).values


def op_count(a: Args) -> Tensor:
    return count(a.x, _mask(a), a.quantize)


def _counts(a: Args) -> tuple[Tensor, Tensor]:
    m = _mask(a)
    return count(a.x, m, a.quantize), count(a.y, m, a.quantize)


def op_count_greater(a: Args) -> Tensor:
    A, B = _counts(a)
    if a.quantize:
        return torch.where(A > B, 10.0, -10.0)
    return (A - B - 1 + 2 * COUNT_TAU) / COUNT_TAU


def op_count_less(a: Args) -> Tensor:
    A, B = _counts(a)
    if a.quantize:
        return torch.where(A < B, 10.0, -10.0)
    return (B - A - 1 + 2 * COUNT_TAU) / COUNT_TAU


def op_count_equal(a: Args) -> Tensor:
    A, B = _counts(a)
    if a.quantize:
        return torch.where(A == B, 10.0, -10.0)
    return (2 * COUNT_TAU - (A - B).abs()) / (2 * COUNT_TAU) / COUNT_TAU


def op_query_attribute_equal(a: Args) -> Tensor:
    m = _mask(a)
    row = attend(a.x, m, a.scene.same, a.img, a.param, a.quantize)  # (k, N): same-ness to x's object
    q = unique(a.y, m, a.quantize)  # (k, N)
    return (row * q).sum(-1)


SET_OPS: dict[str, Callable[[Args], Tensor]] = {
    "scene": op_scene,
    "filter": op_filter,
    "relate": op_relate,
    "relate_attribute_equal": op_relate_attribute_equal,
    "intersect": op_intersect,
    "union": op_union,
}
SCALAR_OPS: dict[str, Callable[[Args], Tensor]] = {
    "exist": op_exist,
    "count": op_count,
    "count_equal": op_count_equal,
    "count_less": op_count_less,
    "count_greater": op_count_greater,
    "query_attribute_equal": op_query_attribute_equal,
}
# Op codes used by compiled programs; query is special: its output size depends on the attribute.
OP_NAMES: tuple[str, ...] = (*SET_OPS, *SCALAR_OPS, "query")
# Ops that read their first input (and, for query_attribute_equal, their second) as one object.
UNIQUE_X = frozenset({"relate", "relate_attribute_equal", "query", "query_attribute_equal"})
UNIQUE_Y = frozenset({"query_attribute_equal"})


def log_p_single(x: Tensor, mask: Tensor) -> Tensor:
    """(k, N) logits -> (k,) log P(exactly one real object is in the set), objects independent with
    p_i = sigmoid(x_i): P = sum_i p_i prod_{j != i} (1 - p_j), so log P = sum_j log(1 - p_j) + logsumexp_i x_i
    (as p_i / (1 - p_i) = exp x_i)."""
    none = F.logsigmoid(-x).masked_fill(~mask, 0.0).sum(-1)  # (k,) log P(empty)
    return none + torch.logsumexp(x.masked_fill(~mask, -math.inf), -1)


# --------------------------------------------------------------------------------------------- executor
class Executor:
    """Runs a :class:`ProgramBatch` on :class:`SceneLogits`; stateless apart from the domain's op table."""

    def __init__(self, domain: Domain) -> None:
        self.attributes = domain.attribute_names
        missing = set(domain.nscl_ops) - set(OP_NAMES)
        if missing:
            raise ValueError(f"the executor has no implementation for {sorted(missing)}")

    def __call__(
        self, batch: ProgramBatch, scene: SceneLogits, quantize: bool = False, referents: bool = False
    ) -> Output:
        """Answers of ``batch`` on ``scene``; with ``referents`` also ``Output.referent_logp``, which the
        parser's checks read and the model's evaluation never needs."""
        Q = batch.num_questions
        device = scene.mask.device
        parts: list[Tensor] = []  # outputs of set groups, in order; their concatenation is the bank
        bank: Tensor | None = None
        level = -1
        scalar_rows: list[Tensor] = []
        scalar_vals: list[Tensor] = []
        query_parts: dict[int, list[tuple[Tensor, Tensor]]] = {}
        check = referents
        ref_logp = torch.zeros(Q, device=device)  # (Q,) see Output.referent_logp
        for g in batch.groups:
            if g.level != level:  # inputs of this level are all in earlier levels
                bank = torch.cat(parts) if parts else None
                level = g.level
            name = OP_NAMES[g.op]
            x = bank[g.x] if bank is not None else None  # (k, N)
            y = bank[g.y] if bank is not None else None
            args = Args(scene, g.images, x, y, g.concepts, g.param, quantize, scene.mask[g.images])
            if check and name in UNIQUE_X:
                with torch.no_grad():
                    lp = log_p_single(x, args.mask)  # type: ignore[arg-type]
                    if name in UNIQUE_Y:
                        lp = lp + log_p_single(y, args.mask)  # type: ignore[arg-type]
                    ref_logp.index_add_(0, g.questions, lp.to(ref_logp.dtype))  # a question may repeat in g
            if name in SET_OPS:
                parts.append(SET_OPS[name](args))
            elif name in SCALAR_OPS:
                scalar_rows.append(g.questions)
                scalar_vals.append(SCALAR_OPS[name](args))
            else:  # query: one attribute per group
                a_id = g.attribute
                table = scene.query[self.attributes[a_id]]  # (B, N, C_a)
                logits = attend(x, args.mask, table, g.images, None, quantize)  # (k, C_a)
                query_parts.setdefault(AnswerKind.ATTRIBUTE + a_id, []).append((g.questions, logits))
        scalar = torch.full((Q,), float("nan"), device=device)
        if scalar_vals:
            scalar = scalar.index_put((torch.cat(scalar_rows),), torch.cat(scalar_vals).to(scalar.dtype))
        query = {
            k: (torch.cat([i for i, _ in v]), torch.cat([l for _, l in v])) for k, v in query_parts.items()
        }
        return Output(batch.output_kind, scalar, query, ref_logp if check else None)
