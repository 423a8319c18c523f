"""Scene sources: image indices -> :class:`SceneLogits`, from a frozen model or from the annotations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..data import Scene
from ..domain import Domain
from ..models.executor import SceneLogits
from ..models.nscl import NSCL
from ..models.oracle import oracle_scene_logits
from .dataset import QADataset

SceneSource = Callable[[Sequence[int]], SceneLogits]
"""image indices (the scenes' ``image_index``) -> their SceneLogits, batched in that order."""


class OracleScenes:
    """Scene logits from ground-truth annotations (``models/oracle.py``): a perfect, frozen perception."""

    def __init__(
        self,
        scenes: Mapping[int, Scene],
        domain: Domain,
        strength: float = 10.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.scenes, self.domain, self.strength, self.device = scenes, domain, strength, device

    def __call__(self, image_indices: Sequence[int]) -> SceneLogits:
        sl = oracle_scene_logits([self.scenes[i] for i in image_indices], self.domain, self.strength)
        return sl.to(self.device)


class ModelScenes:
    """Scene logits of a frozen NSCL model on a QADataset's images, computed once per image and cached on
    the CPU."""

    def __init__(
        self, model: NSCL, ds: QADataset, device: torch.device | str = "cpu", batch_images: int = 32
    ) -> None:
        self.model, self.ds, self.device, self.batch_images = model, ds, device, batch_images
        self.cache: dict[int, SceneLogits] = {}

    @torch.no_grad()
    def __call__(self, image_indices: Sequence[int]) -> SceneLogits:
        rows = [self.ds.image_of_index[i] for i in image_indices]
        missing = sorted(set(rows) - set(self.cache))
        if missing:
            was = self.model.training
            self.model.eval()
            for s in range(0, len(missing), self.batch_images):
                chunk = np.array(missing[s : s + self.batch_images])
                images, boxes, mask = self.ds.scene_batch(chunk)
                sl = self.model.perceive(images.to(self.device), boxes.to(self.device), mask.to(self.device))
                for b, r in enumerate(chunk.tolist()):
                    self.cache[r] = sl.image(b, int(mask[b].sum())).to("cpu")
            self.model.train(was)
        return SceneLogits.cat([self.cache[r] for r in rows]).to(self.device)
