"""A straightforward per-question executor in the release's design: one question at a time, one node at a
time, an if/elif chain over ops, and concept similarities computed from the object features inside each op
(the release queries its embedding modules per op). Same formulas as :mod:`executor`; it is the naive
reference in tests and in ``benchmarks/executor.py``. Do not use it for training: the authoritative executor is
``models/executor.py``."""

from __future__ import annotations

import torch
from torch import Tensor

from ..domain import Domain
from ..program import Program
from .concepts import ConceptEmbedding
from .executor import ALL_OBJECTS, COUNT_TAU
from .perception import SceneFeatures


def _unique(x: Tensor, quantize: bool) -> Tensor:
    if quantize:
        return torch.nn.functional.one_hot(x.argmax(), x.shape[0]).to(x.dtype)
    return torch.softmax(x, 0)


def _count(x: Tensor, quantize: bool) -> Tensor:
    return (x > 0).sum().to(x.dtype) if quantize else torch.sigmoid(x).sum()


def run_one(
    prog: Program, feats: SceneFeatures, b: int, cm: ConceptEmbedding, domain: Domain, quantize: bool = False
) -> Tensor:
    """Answer of one program on image ``b``: a bool logit, a count, or query logits (C_a,)."""
    n = int(feats.mask[b].sum())
    f = feats.objects[b, :n]  # (n, D)
    pairs = feats.pairs[b, :n, :n]  # (n, n, P)
    mask = feats.mask[b : b + 1, :n]
    vals: list[Tensor] = []
    for node in prog.nodes:
        xs = [vals[i] for i in node.inputs]
        op = node.op
        if op == "scene":
            v = torch.full((n,), ALL_OBJECTS)
        elif op == "filter":
            v = xs[0]
            for c in node.concepts:
                logit = cm.concept_logits(cm.project(f))[:, domain.object_concepts.index(c)]
                v = torch.minimum(v, logit)
        elif op == "relate":
            rel = cm.relation_logits(pairs[None])[0, domain.relation_concepts.index(node.concepts[0])]
            v = _unique(xs[0], quantize) @ rel
        elif op == "relate_attribute_equal":
            same = cm.same_logits(cm.project(f)[None], mask)[0, domain.attribute_names.index(node.attribute)]
            v = _unique(xs[0], quantize) @ same
        elif op == "intersect":
            v = torch.minimum(xs[0], xs[1])
        elif op == "union":
            v = torch.maximum(xs[0], xs[1])
        elif op == "query":
            v = _unique(xs[0], quantize) @ cm.query_logits(cm.project(f), node.attribute)
        elif op == "exist":
            v = xs[0].max()
        elif op == "count":
            v = _count(xs[0], quantize)
        elif op == "query_attribute_equal":
            same = cm.same_logits(cm.project(f)[None], mask)[0, domain.attribute_names.index(node.attribute)]
            v = _unique(xs[0], quantize) @ same @ _unique(xs[1], quantize)
        elif op in ("count_equal", "count_less", "count_greater"):
            a, c = _count(xs[0], quantize), _count(xs[1], quantize)
            if quantize:
                hit = {"count_equal": a == c, "count_less": a < c, "count_greater": a > c}[op]
                v = torch.tensor(10.0 if hit else -10.0)
            elif op == "count_equal":
                v = (2 * COUNT_TAU - (a - c).abs()) / (2 * COUNT_TAU) / COUNT_TAU
            elif op == "count_less":
                v = (c - a - 1 + 2 * COUNT_TAU) / COUNT_TAU
            else:
                v = (a - c - 1 + 2 * COUNT_TAU) / COUNT_TAU
        else:
            raise ValueError(f"unknown op {op!r}")
        vals.append(v)
    return vals[-1]
