"""The NS-CL model: perception -> concept logits -> batched executor. Returns typed outputs, no losses."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..domain import Domain
from .concepts import ConceptConfig, ConceptEmbedding
from .executor import Executor, Output, ProgramBatch, SceneLogits
from .perception import Perception, PerceptionConfig, SceneFeatures


@dataclass(frozen=True)
class ModelConfig:
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)


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
        return self.scene_logits(self.perception(images, boxes, mask))

    def forward(
        self, images: Tensor, boxes: Tensor, mask: Tensor, programs: ProgramBatch, quantize: bool = False
    ) -> tuple[Output, SceneLogits]:
        """images (Tensor[B, 3, H, W]), boxes (Tensor[B, N, 4]), mask (Tensor[B, N]); programs index images."""
        scene = self.perceive(images, boxes, mask)
        return self.executor(programs, scene, quantize), scene
