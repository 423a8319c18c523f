"""A program's execution node by node on one image, for people: each step's objects with their probabilities,
each object input's distribution, the answer and its confidence (``nscl ask``).

It runs the batched executor's own primitives (``models/executor.py``, the authoritative executor) one node at a
time in test mode (quantised, as in evaluation): set-valued steps list each object's probability (sigmoid of its
logit), object-typed inputs the softmax over objects that ``unique`` applies (its argmax is the object used),
scalar steps their value. The confidence is the model's probability of the answer: sigmoid of the yes/no logit,
the softmax probability of the queried concept, or for counts and count comparisons the exact probability under
independent per-object probabilities (Poisson binomial).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..data import Box
from ..domain import OBJECT, Domain
from ..models.executor import SCALAR_OPS, SET_OPS, Args, Compiler, SceneLogits, unique
from ..program import Program


@dataclass
class TraceObject:
    """One object of a step: its index in the scene, its box (xyxy pixels of the given image) and its
    probability in the step's set (or, for an object input, under the softmax)."""

    index: int
    box: list[float]
    prob: float


@dataclass
class TraceStep:
    """One program node: ``objects`` (set-valued steps, every object, by index), ``inputs_objects`` (the
    softmax distribution of each object-typed input), ``value`` (scalar steps: yes/no, a count, a concept)
    and ``distribution`` (query: concept -> probability)."""

    node: int
    op: str
    inputs: list[int]
    concepts: list[str] = field(default_factory=list)
    attribute: str | None = None
    objects: list[TraceObject] | None = None
    input_objects: list[list[TraceObject]] = field(default_factory=list)
    value: str | None = None
    distribution: dict[str, float] | None = None

    def describe(self) -> str:
        args = [f"[{j}]" for j in self.inputs]
        if self.attribute is not None:
            args.insert(0, self.attribute)
        if self.op == "filter":
            args.append("[" + ", ".join(self.concepts) + "]")
        elif self.concepts:
            args.append(", ".join(self.concepts))
        return f"{self.op}({', '.join(args)})"


def poisson_binomial(p: Tensor) -> Tensor:
    """Distribution (Tensor[n + 1]) of the number of successes of independent events with probabilities p."""
    dist = torch.ones(1, dtype=torch.float64)
    for q in p.double().tolist():
        dist = torch.cat([dist * (1 - q), torch.zeros(1, dtype=torch.float64)]) + torch.cat(
            [torch.zeros(1, dtype=torch.float64), dist * q]
        )
    return dist


def trace_program(
    program: Program, scene: SceneLogits, domain: Domain, boxes: Sequence[Box], quantize: bool = True
) -> tuple[list[TraceStep], str, float]:
    """Run ``program`` node by node on a one-image ``scene``; returns the steps, the answer and its
    confidence."""
    compiler = Compiler(domain)
    code = compiler(program)
    mask = scene.mask[0]  # (N,)
    n = int(mask.sum())
    box_list = [b.as_list() for b in boxes]
    img = torch.zeros(1, dtype=torch.long, device=mask.device)
    outs: dict[int, Tensor] = {}  # node -> set logits (N,)
    steps: list[TraceStep] = []
    answer, confidence = "", 0.0

    def objects(probs: Tensor) -> list[TraceObject]:
        return [TraceObject(i, box_list[i], float(probs[i])) for i in range(n)]

    for t, node in enumerate(program.nodes):
        sig = domain.nscl_ops[node.op]
        x = outs[node.inputs[0]][None] if len(node.inputs) > 0 else None
        y = outs[node.inputs[1]][None] if len(node.inputs) > 1 else None
        K = max(1, len(code.concepts[t]))
        concepts = torch.full((1, K), -1, dtype=torch.long, device=mask.device)
        if code.concepts[t]:
            concepts[0, : len(code.concepts[t])] = torch.tensor(code.concepts[t])
        param = torch.tensor([code.params[t]], device=mask.device)
        args = Args(scene, img, x, y, concepts, param, quantize)
        step = TraceStep(t, node.op, list(node.inputs), list(node.concepts), node.attribute)
        for k, t_in in enumerate(sig.inputs):
            if t_in == OBJECT:
                xin = outs[node.inputs[k]][None]
                soft = unique(xin, mask[None], False)[0]
                step.input_objects.append(objects(soft))
        if node.op in SET_OPS:
            out = SET_OPS[node.op](args)[0]  # (N,)
            outs[t] = out
            step.objects = objects(torch.sigmoid(out))
        elif node.op in SCALAR_OPS:
            v = SCALAR_OPS[node.op](args)[0]
            if node.op == "count":
                counts = poisson_binomial(torch.sigmoid(x[0, :n]))  # type: ignore[index]
                c = int(round(float(v)))
                answer, confidence = str(c), float(counts[c]) if c < len(counts) else 0.0
            elif node.op in ("count_equal", "count_less", "count_greater"):
                a = poisson_binomial(torch.sigmoid(x[0, :n]))  # type: ignore[index]
                b = poisson_binomial(torch.sigmoid(y[0, :n]))  # type: ignore[index]
                joint = a[:, None] * b[None, :]
                i, j = torch.meshgrid(torch.arange(len(a)), torch.arange(len(b)), indexing="ij")
                rel = {"count_equal": i == j, "count_less": i < j, "count_greater": i > j}[node.op]
                p_yes = float(joint[rel].sum())
                yes = bool(v > 0)
                answer, confidence = ("yes" if yes else "no"), (p_yes if yes else 1 - p_yes)
            else:  # exist, query_attribute_equal: a yes/no logit
                p_yes = float(torch.sigmoid(v))
                yes = bool(v > 0)
                answer, confidence = ("yes" if yes else "no"), (p_yes if yes else 1 - p_yes)
            step.value = answer
        else:  # query
            p = unique(x, mask[None], quantize)  # type: ignore[arg-type]
            logits = torch.einsum("kn,knc->kc", p, scene.query[node.attribute][img])[0]  # type: ignore[index]
            probs = torch.softmax(logits, -1)
            concepts_a = domain.attribute(node.attribute).concepts  # type: ignore[arg-type]
            k = int(probs.argmax())
            answer, confidence = concepts_a[k], float(probs[k])
            step.value = answer
            step.distribution = {c: float(q) for c, q in zip(concepts_a, probs)}
        steps.append(step)
    return steps, answer, confidence
