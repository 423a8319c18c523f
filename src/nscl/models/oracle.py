"""Oracle perception: scene logits taken from ground-truth annotations (+/- ``strength``).

With it, the executor must reproduce every answer of a consistent dataset; tests and the executor benchmark
use it to exercise the executor without a trained network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data import Scene
from ..domain import Domain
from .concepts import SELF_MASK
from .executor import SceneLogits


def oracle_scene_logits(scenes: Sequence[Scene], domain: Domain, strength: float = 10.0) -> SceneLogits:
    """SceneLogits for a batch of annotated scenes (objects padded to the largest scene)."""
    B, N = len(scenes), max(len(s.objects) for s in scenes)
    C, A, R = len(domain.object_concepts), len(domain.attributes), len(domain.relation_concepts)
    concept = torch.full((B, N, C), -strength)
    query = {a.name: torch.full((B, N, len(a.concepts)), -strength) for a in domain.attributes}
    same = torch.full((B, A, N, N), -strength)
    relation = torch.full((B, R, N, N), -strength)
    mask = torch.zeros(B, N, dtype=torch.bool)
    cid = {c: i for i, c in enumerate(domain.object_concepts)}
    for b, s in enumerate(scenes):
        n = len(s.objects)
        mask[b, :n] = True
        for i, o in enumerate(s.objects):
            for ai, a in enumerate(domain.attributes):
                v = o.attributes[a.name]
                concept[b, i, cid[v]] = strength
                query[a.name][b, i, a.concepts.index(v)] = strength
                for j, o2 in enumerate(s.objects):
                    if j != i and o2.attributes[a.name] == v:
                        same[b, ai, i, j] = strength
        for ri, r in enumerate(domain.relation_concepts):
            for i, row in enumerate(s.relations[r]):
                relation[b, ri, i, row] = strength
    eye = torch.eye(N, dtype=torch.bool)
    same = same.masked_fill(eye, SELF_MASK)
    relation = relation.masked_fill(eye, SELF_MASK)
    return SceneLogits(concept, query, same, relation, mask)
