"""The NS-CL model: perception -> concept logits -> batched executor. Returns typed outputs, no losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from ..config import check_options
from ..domain import Domain
from .concepts import ConceptConfig, ConceptEmbedding
from .executor import Executor, Output, ProgramBatch, SceneLogits
from .perception import Perception, PerceptionConfig, SceneFeatures


@dataclass(frozen=True)
class ModelConfig:
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)
    # "bfloat16": perception (trunk, RoI pooling, crop branch, heads) runs under torch.autocast in bfloat16 on the
    # inputs' device; concept similarities and the executor stay in float32. Opt-in, meant for GPUs: on the
    # project's AVX512-BF16 CPU it gave no steady gain at the demo's sizes (benchmarks/profile_step.py
    # --set model.precision=bfloat16, README "Training speed").
    precision: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        check_options(self, "model.")


class NSCL(nn.Module):
    def __init__(self, domain: Domain, cfg: ModelConfig) -> None:
        super().__init__()
        self.domain = domain
        self.cfg = cfg
        self.perception = Perception(cfg.perception)
        p = cfg.perception
        self.concepts = ConceptEmbedding(domain, p.feature_dim, p.pair_dim, cfg.concepts)
        self.executor = Executor(domain)

    def scene_logits(self, feats: SceneFeatures) -> SceneLogits:
        """Concept, query, same-attribute and relation logits of every object (pair) in the batch."""
        proj = self.concepts.project(feats.objects)  # (B, N, A, E)
        sim = self.concepts.similarity(proj)  # (B, N, C, A), shared by concept and query logits
        return SceneLogits(
            concept=self.concepts.concept_logits(proj, sim),  # (B, N, C)
            query={a: self.concepts.query_logits(proj, a, sim) for a in self.domain.attribute_names},
            same=self.concepts.same_logits(proj, feats.mask),  # (B, A, N, N)
            relation=self.concepts.relation_logits(feats.pairs),  # (B, R, N, N)
            mask=feats.mask,
        )

    def perceive(self, images: Tensor, boxes: Tensor, mask: Tensor) -> SceneLogits:
        if self.cfg.precision == "float32":
            return self.scene_logits(self.perception(images, boxes, mask))
        with torch.autocast(images.device.type, dtype=torch.bfloat16):
            feats = self.perception(images, boxes, mask)
        feats = SceneFeatures(feats.objects.float(), feats.pairs.float(), feats.mask)
        return self.scene_logits(feats)

    def forward(
        self, images: Tensor, boxes: Tensor, mask: Tensor, programs: ProgramBatch, quantize: bool = False
    ) -> tuple[Output, SceneLogits]:
        """images (Tensor[B, 3, H, W]), boxes (Tensor[B, N, 4]), mask (Tensor[B, N]); programs index images."""
        scene = self.perceive(images, boxes, mask)
        return self.executor(programs, scene, quantize), scene
