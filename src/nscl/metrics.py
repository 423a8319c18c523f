"""Metrics: QA accuracy per question type (weighted by question count) and concept accuracies (Table 2)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .domain import Domain
from .models.executor import SceneLogits


@dataclass
class QAMeter:
    """Counts correct answers per question type; accuracy is weighted by questions, never by batches."""

    total: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)

    def update(self, qtypes: list[str], correct: list[bool]) -> None:
        for t, c in zip(qtypes, correct):
            self.total[t] += 1
            self.correct[t] += bool(c)

    def metrics(self, prefix: str) -> dict[str, float]:
        n = sum(self.total.values())
        out = {f"{prefix}/acc/qa": sum(self.correct.values()) / max(n, 1)}
        for t in sorted(self.total):
            out[f"{prefix}/acc/qa/{t}"] = self.correct[t] / self.total[t]
        return out


@dataclass
class ConceptMeter:
    """Concept classification from scene annotations: per attribute (argmax query), same-attribute
    (logit > 0 vs equal values, over ordered pairs i != j) and relation (logit > 0 vs annotation)."""

    domain: Domain
    total: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)

    def update(self, scene: SceneLogits, annotations: list[dict]) -> None:
        """annotations[b] = {"attributes": {attr: (n,) concept indices}, "relations": {rel: (n, n) bool}}."""
        for b, ann in enumerate(annotations):
            n = len(next(iter(ann["attributes"].values())))
            off = ~np.eye(n, dtype=bool)
            for ai, a in enumerate(self.domain.attribute_names):
                gt = ann["attributes"][a]
                pred = scene.query[a][b, :n].argmax(-1).cpu().numpy()
                self._add(f"concept/{a}", pred == gt)
                same_pred = (scene.same[b, ai, :n, :n] > 0).cpu().numpy()
                same_gt = gt[:, None] == gt[None, :]
                self._add(f"same/{a}", (same_pred == same_gt)[off])
            for ri, r in enumerate(self.domain.relation_concepts):
                rel_pred = (scene.relation[b, ri, :n, :n] > 0).cpu().numpy()
                self._add(f"relation/{r}", (rel_pred == ann["relations"][r])[off])

    def _add(self, key: str, ok: np.ndarray) -> None:
        self.total[key] += int(ok.size)
        self.correct[key] += int(ok.sum())

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc/{k}": self.correct[k] / max(self.total[k], 1) for k in sorted(self.total)}
        rel = [k for k in self.total if k.startswith("relation/")]
        if rel:
            out[f"{prefix}/acc/relation"] = sum(self.correct[k] for k in rel) / max(
                sum(self.total[k] for k in rel), 1
            )
        return out


def scene_annotations(scenes: list, domain: Domain) -> list[dict]:
    """Ground-truth attribute indices and relation matrices of scenes (for ConceptMeter)."""
    out = []
    for s in scenes:
        n = len(s.objects)
        attrs = {
            a.name: np.array([a.concepts.index(o.attributes[a.name]) for o in s.objects])
            for a in domain.attributes
        }
        rels = {}
        for r in domain.relation_concepts:
            m = np.zeros((n, n), dtype=bool)
            for i, row in enumerate(s.relations[r]):
                m[i, row] = True  # [i, j]: j is r of i
            rels[r] = m
        out.append({"attributes": attrs, "relations": rels})
    return out


def format_table(metrics: dict[str, float], prefix: str) -> str:
    """The release's metric lines: ``validation/acc/qa = 0.994886``."""
    return "\n".join(f"{k} = {v:.6f}" for k, v in sorted(metrics.items()) if k.startswith(prefix + "/"))
