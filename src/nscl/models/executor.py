"""Batched quasi-symbolic executor (NSCL-REFERENCE section 4).

Dimension key: Q questions, B images, N objects (padded), L program steps, K concepts per filter, C concepts,
C_a concepts of attribute a, A attributes, R relation concepts.

Object sets are logit vectors over the N objects. A batch of questions with different programs runs with a
loop over program *steps* only: at step t, the questions whose t-th node is op ``o`` are gathered and ``o`` runs
once, vectorised over them. Primitives are pure functions in the ``OPS`` table.

Modes: training (soft; differentiable) and test (``quantize=True``: unique is a one-hot argmax, counts are hard,
and answers are argmax / sign decisions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


class AnswerKinds:
    """Answer kinds as integers: 0 Bool, 1 Integer, 2 + a for attribute a."""

    def __init__(self, domain: Domain) -> None:
        self.names = (BOOL, INTEGER) + tuple(a.name for a in domain.attributes)
        self.attributes = domain.attribute_names

    def of_answer(self, domain: Domain, answer: str) -> tuple[int, int]:
        """(kind, value) of a normalised answer: yes -> (0, 1), "3" -> (1, 3), "red" -> (2 + color, index)."""
        t = domain.answer_type(answer)
        if t == BOOL:
            return 0, int(answer == "yes")
        if t == INTEGER:
            return 1, int(answer)
        attr = domain.attribute_of_concept(answer)
        return 2 + self.attributes.index(attr.name), attr.concepts.index(answer)

    def decode(self, domain: Domain, kind: int, value: int) -> str:
        if kind == 0:
            return "yes" if value else "no"
        if kind == 1:
            return str(value)
        return domain.attribute(self.attributes[kind - 2]).concepts[value]


class Compiler:
    """Turns NS-CL programs into :class:`CompiledProgram` for one domain."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.op_names = tuple(domain.nscl_ops)
        self.concepts = {c: i for i, c in enumerate(domain.object_concepts)}
        self.relations = {c: i for i, c in enumerate(domain.relation_concepts)}
        self.attributes = {a: i for i, a in enumerate(domain.attribute_names)}

    def __call__(self, prog: Program) -> CompiledProgram:
        ops, inputs, concepts, params = [], [], [], []
        for n in prog.nodes:
            ops.append(self.op_names.index(n.op))
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
            kind = 0
        elif last.op == "count":
            kind = 1
        elif last.op == "query":
            kind = 2 + self.attributes[last.attribute]
        else:
            kind = -1  # an object set is not an answer
        return CompiledProgram(tuple(ops), tuple(inputs), tuple(concepts), tuple(params), kind)


@dataclass
class ProgramBatch:
    """Padded programs of Q questions. Tensors: op (Q, L), in0/in1 (Q, L), concepts (Q, L, K) with -1
    padding, param (Q, L), length (Q,), image (Q,) = index of each question's image in the batch.

    ``schedule[t]`` lists, for program step t, each op code present with the (k,) indices of the questions
    whose step t is that op; it is built once on the CPU so that execution needs no device synchronisation.
    """

    op: Tensor
    in0: Tensor
    in1: Tensor
    concepts: Tensor
    param: Tensor
    length: Tensor
    image: Tensor
    output_kind: Tensor
    schedule: list[list[tuple[int, Tensor]]]

    @classmethod
    def collate(cls, programs: Sequence[CompiledProgram], images: Sequence[int]) -> ProgramBatch:
        Q = len(programs)
        L = max(len(p.ops) for p in programs)
        K = max([len(c) for p in programs for c in p.concepts] + [1])
        op = torch.full((Q, L), -1, dtype=torch.long)
        in0 = torch.zeros((Q, L), dtype=torch.long)
        in1 = torch.zeros((Q, L), dtype=torch.long)
        concepts = torch.full((Q, L, K), -1, dtype=torch.long)
        param = torch.full((Q, L), -1, dtype=torch.long)
        for q, p in enumerate(programs):
            n = len(p.ops)
            op[q, :n] = torch.tensor(p.ops)
            ins = torch.tensor(p.inputs).clamp_min(0)
            in0[q, :n], in1[q, :n] = ins[:, 0], ins[:, 1]
            param[q, :n] = torch.tensor(p.params)
            for t, c in enumerate(p.concepts):
                if c:
                    concepts[q, t, : len(c)] = torch.tensor(c)
        length = torch.tensor([len(p.ops) for p in programs])
        kinds = torch.tensor([p.output_kind for p in programs])
        schedule = []
        for t in range(L):
            col = op[:, t]
            schedule.append([(c, (col == c).nonzero(as_tuple=True)[0]) for c in sorted(set(col.tolist())) if c >= 0])
        return cls(op, in0, in1, concepts, param, length, torch.as_tensor(images, dtype=torch.long), kinds, schedule)

    def to(self, device: torch.device | str) -> ProgramBatch:
        fields = [getattr(self, f) for f in self.__dataclass_fields__ if f != "schedule"]
        schedule = [[(c, idx.to(device)) for c, idx in step] for step in self.schedule]
        return ProgramBatch(*(t.to(device) for t in fields), schedule)


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


@dataclass
class Output:
    """Answers of a batch. ``scalar`` (Q,) holds the bool logit or the count; ``query[kind]`` holds
    (question indices, logits (k, C_a)); ``kind`` (Q,) is the answer kind each program produced."""

    kind: Tensor
    scalar: Tensor
    query: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


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


def unique(x: Tensor, mask: Tensor, quantize: bool) -> Tensor:
    """(k, N) logits -> (k, N) distribution over the objects: softmax, or one-hot argmax when quantised."""
    x = x.masked_fill(~mask, PAD)
    if quantize:
        return F.one_hot(x.argmax(-1), x.shape[-1]).to(x.dtype)
    return torch.softmax(x, dim=-1)


def count(x: Tensor, mask: Tensor, quantize: bool) -> Tensor:
    if quantize:
        return ((x > 0) & mask).sum(-1).to(x.dtype)
    return (torch.sigmoid(x) * mask).sum(-1)


def _mask(a: Args) -> Tensor:
    return a.scene.mask[a.img]  # (k, N)


def op_scene(a: Args) -> Tensor:
    m = _mask(a)
    return torch.full(m.shape, ALL_OBJECTS, device=m.device).masked_fill(~m, PAD)


def op_filter(a: Args) -> Tensor:
    logits = a.scene.concept[a.img]  # (k, N, C)
    ids = a.concepts.clamp_min(0)  # (k, K)
    picked = torch.gather(logits, 2, ids[:, None, :].expand(-1, logits.shape[1], -1))  # (k, N, K)
    picked = picked.masked_fill((a.concepts < 0)[:, None, :], float("inf"))
    return torch.minimum(a.x, picked.min(-1).values).masked_fill(~_mask(a), PAD)


def op_relate(a: Args) -> Tensor:
    p = unique(a.x, _mask(a), a.quantize)  # (k, N)
    rel = a.scene.relation[a.img, a.param]  # (k, N, N)
    return torch.einsum("ki,kij->kj", p, rel).masked_fill(~_mask(a), PAD)


def op_relate_attribute_equal(a: Args) -> Tensor:
    p = unique(a.x, _mask(a), a.quantize)
    same = a.scene.same[a.img, a.param]  # (k, N, N)
    return torch.einsum("ki,kij->kj", p, same).masked_fill(~_mask(a), PAD)


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
    p, q = unique(a.x, m, a.quantize), unique(a.y, m, a.quantize)
    same = a.scene.same[a.img, a.param]  # (k, N, N)
    return torch.einsum("ki,kij,kj->k", p, same, q)


# query is special: its output size depends on the attribute; handled by the executor.
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
SCALAR_KIND = {"count": 1}  # every other scalar op answers yes/no (kind 0)


# --------------------------------------------------------------------------------------------- executor
class Executor:
    """Runs a :class:`ProgramBatch` on :class:`SceneLogits`; stateless apart from the domain's op table."""

    def __init__(self, domain: Domain) -> None:
        self.op_names = tuple(domain.nscl_ops)
        self.attributes = domain.attribute_names
        missing = set(self.op_names) - set(SET_OPS) - set(SCALAR_OPS) - {"query"}
        if missing:
            raise ValueError(f"the executor has no implementation for {sorted(missing)}")

    def __call__(self, batch: ProgramBatch, scene: SceneLogits, quantize: bool = False) -> Output:
        Q = batch.op.shape[0]
        N = scene.mask.shape[1]
        device = scene.mask.device
        steps: list[Tensor] = []  # per step: (Q, N) set logits (zeros where the step has no set)
        scalar = torch.full((Q,), float("nan"), device=device)
        kind = torch.full((Q,), -1, dtype=torch.long, device=device)
        query: dict[int, tuple[Tensor, Tensor]] = {}
        scalar_rows: list[Tensor] = []
        scalar_vals: list[Tensor] = []
        for t, groups in enumerate(batch.schedule):
            hist = torch.stack(steps, 1) if steps else None  # (Q, t, N)
            set_rows: list[Tensor] = []
            set_vals: list[Tensor] = []
            for code, idx in groups:
                name = self.op_names[code]
                x = hist[idx, batch.in0[idx, t]] if hist is not None else None
                y = hist[idx, batch.in1[idx, t]] if hist is not None else None
                args = Args(scene, batch.image[idx], x, y, batch.concepts[idx, t], batch.param[idx, t], quantize)
                if name in SET_OPS:
                    set_rows.append(idx)
                    set_vals.append(SET_OPS[name](args))
                elif name in SCALAR_OPS:
                    scalar_rows.append(idx)
                    scalar_vals.append(SCALAR_OPS[name](args))
                    kind[idx] = SCALAR_KIND.get(name, 0)
                else:  # query: answer sizes differ per attribute, so each attribute runs separately
                    p = unique(args.x, _mask(args), quantize)  # (k, N)
                    for a_id, attr in enumerate(self.attributes):
                        sel = (args.param == a_id).nonzero(as_tuple=True)[0]
                        if len(sel) == 0:
                            continue
                        logits = torch.einsum("kn,knc->kc", p[sel], scene.query[attr][args.img[sel]])
                        k_id, qi = 2 + a_id, idx[sel]
                        if k_id in query:  # the same attribute at another step: concatenate
                            qi = torch.cat([query[k_id][0], qi])
                            logits = torch.cat([query[k_id][1], logits])
                        query[k_id] = (qi, logits)
                        kind[qi] = k_id
            # One scatter per step: rows of questions without a set at this step stay zero.
            step = torch.zeros(Q, N, device=device)
            if set_vals:
                step = step.index_put((torch.cat(set_rows),), torch.cat(set_vals))
            steps.append(step)
        if scalar_vals:
            scalar = scalar.index_put((torch.cat(scalar_rows),), torch.cat(scalar_vals).to(scalar.dtype))
        return Output(kind, scalar, query)
