"""Object detector for images without annotations: a small centre-point network (CenterNet-style).

Dimension key: B images, H x W working image size (H = ``DetectorConfig.height``, W keeps the aspect ratio),
h x w = H/4 x W/4 the output grid (stride 4), K detections kept per image.

The trunk is a four-level CNN (strides 2, 4, 8, 16) whose two deepest levels are merged back into the
stride-4 level (an FPN-like top-down path), so that each output cell sees the whole of the largest object.
Three 1 x 1-topped heads read the stride-4 map:

* ``heat``: the logit that an object's box centre falls in the cell, ``(B, 1, h, w)``;
* ``size``: log of the box width and height in grid cells, ``(B, 2, h, w)``;
* ``offset``: the sub-cell position of the centre, in cells, ``(B, 2, h, w)``.

Decoding keeps the cells that are the maximum of their 3 x 3 neighbourhood and score above a threshold, and a
final non-maximum suppression removes the rare duplicate peak. Boxes are xyxy in working-image pixels with an
exclusive maximum, like the scene files' ``box`` field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from ..config import ConfigError, from_dict

STRIDE = 4
HEAT_PRIOR = 0.01  # initial probability of a centre in any cell (focal-loss initialisation)


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture and decoding settings, stored in the checkpoint."""

    height: int = 192  # working image height in pixels; images are resized to it (aspect kept); 128 misses
    # more objects hidden behind others (QA with detected boxes 0.9798 against 0.9856, benchmarks/detector.py)
    width: int = 24  # channels of the first trunk level (levels have 1, 2, 4, 4 times this)
    head_channels: int = 48  # channels of the merged stride-4 map and of each head's hidden layer
    max_detections: int = 40  # K: at most this many boxes per image
    threshold: float = 0.4  # default score threshold of decoding (chosen on the demo's held-out split)
    nms_iou: float = 0.7  # boxes overlapping a better one by more than this IoU are dropped

    def __post_init__(self) -> None:
        if self.height < 16 or self.height % 16:
            raise ConfigError(f"detector height must be a positive multiple of 16, got {self.height}")
        for name in ("width", "head_channels", "max_detections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector {name} must be positive, got {getattr(self, name)}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ConfigError(f"detector nms_iou must be in (0, 1], got {self.nms_iou}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DetectorConfig:
        """Build from a plain dict; unknown keys or wrong types raise ConfigError."""
        return from_dict(cls, data, "detector")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectorOutput:
    """Raw head outputs on the stride-4 grid."""

    heat: Tensor  # (B, 1, h, w) logits
    size: Tensor  # (B, 2, h, w) log(width / STRIDE), log(height / STRIDE)
    offset: Tensor  # (B, 2, h, w) centre offset within the cell, in cells (x, y)


@dataclass
class Detections:
    """Decoded boxes of one image."""

    boxes: Tensor  # (K, 4) xyxy, pixels of the image the network saw
    scores: Tensor  # (K,) in [0, 1], descending


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3 x 3 convolution -> BatchNorm -> ReLU."""
    conv = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1)
    )


class CenterDetector(nn.Module):
    """Image batch ``(B, 3, H, W)`` float in [0, 1] -> :class:`DetectorOutput` on the stride-4 grid."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DetectorConfig()
        c, m = config.width, config.head_channels
        self.level1 = nn.Sequential(_block(3, c, 2), _block(c, c))  # (B, c, H/2, W/2)
        self.level2 = nn.Sequential(_block(c, 2 * c, 2), _block(2 * c, 2 * c))  # (B, 2c, H/4, W/4)
        self.level3 = nn.Sequential(_block(2 * c, 4 * c, 2), _block(4 * c, 4 * c))  # (B, 4c, H/8, W/8)
        self.level4 = nn.Sequential(  # (B, 4c, H/16, W/16), receptive field > 100 pixels
            _block(4 * c, 4 * c, 2), _block(4 * c, 4 * c), _block(4 * c, 4 * c, dilation=2)
        )
        self.lateral2 = nn.Conv2d(2 * c, m, 1)
        self.lateral3 = nn.Conv2d(4 * c, m, 1)
        self.lateral4 = nn.Conv2d(4 * c, m, 1)
        self.smooth3 = _block(m, m)
        self.smooth2 = _block(m, m)
        self.heat = _head(m, m, 1)
        self.size = _head(m, m, 2)
        self.offset = _head(m, m, 2)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        nn.init.constant_(self.heat[-1].bias, math.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))

    def forward(self, images: Tensor) -> DetectorOutput:
        x = (images - self.mean) * 4.0  # (B, 3, H, W), roughly unit scale
        f1 = self.level1(x)
        f2 = self.level2(f1)  # (B, 2c, h, w)
        f3 = self.level3(f2)  # (B, 4c, h/2, w/2)
        f4 = self.level4(f3)  # (B, 4c, h/4, w/4)
        p3 = self.lateral3(f3) + F.interpolate(self.lateral4(f4), size=f3.shape[-2:], mode="nearest")
        p3 = self.smooth3(p3)  # (B, m, h/2, w/2)
        p2 = self.lateral2(f2) + F.interpolate(p3, size=f2.shape[-2:], mode="nearest")
        p2 = self.smooth2(p2)  # (B, m, h, w)
        return DetectorOutput(self.heat(p2), self.size(p2), self.offset(p2))


def working_size(height: int, width: int, work_height: int) -> tuple[int, int]:
    """(H, W) an image of ``height`` x ``width`` is resized to: height ``work_height``, aspect kept, width a
    multiple of 16 (so that every trunk level has a whole number of cells)."""
    w = max(16, round(width * work_height / height / 16) * 16)
    return work_height, w


def decode(
    out: DetectorOutput, threshold: float, max_detections: int, nms_iou: float = 1.0
) -> list[Detections]:
    """Boxes of each image of the batch: 3 x 3 local maxima of the centre heatmap scoring >= ``threshold``, at
    most ``max_detections``, then NMS at ``nms_iou`` (1.0: none). Boxes are in input-image pixels."""
    heat = torch.sigmoid(out.heat)  # (B, 1, h, w)
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    scores = (heat * peaks).flatten(1)  # (B, h*w)
    k = min(max_detections, scores.shape[1])
    top, idx = scores.topk(k, dim=1)  # (B, k)
    w = out.heat.shape[-1]
    ys, xs = (idx // w).float(), (idx % w).float()  # (B, k) cells
    size = out.size.flatten(2).gather(2, idx[:, None].expand(-1, 2, -1)).exp() * STRIDE  # (B, 2, k) pixels
    off = out.offset.flatten(2).gather(2, idx[:, None].expand(-1, 2, -1))  # (B, 2, k) cells
    cx = (xs + off[:, 0]) * STRIDE  # (B, k) pixels
    cy = (ys + off[:, 1]) * STRIDE
    boxes = torch.stack(
        [cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], dim=-1
    )  # (B, k, 4)
    result = []
    for b in range(boxes.shape[0]):
        keep = top[b] >= threshold
        bx, sc = boxes[b][keep], top[b][keep]
        if nms_iou < 1.0 and len(sc) > 1:
            kept = nms(bx, sc, nms_iou)  # indices, descending score
            bx, sc = bx[kept], sc[kept]
        result.append(Detections(bx, sc))
    return result


# --------------------------------------------------------------------------------------------- targets, loss
@dataclass
class DetectorTargets:
    """Training targets on the stride-4 grid."""

    heat: Tensor  # (B, 1, h, w) Gaussian peaks in [0, 1], exactly 1 at each object's centre cell
    size: Tensor  # (B, 2, h, w) log box size in cells, at centre cells
    offset: Tensor  # (B, 2, h, w) centre offset in cells, at centre cells
    centre: Tensor  # (B, 1, h, w) 1.0 at the centre cell of each object, else 0
    n_objects: int


def make_targets(boxes: list[Tensor], grid: tuple[int, int], device: torch.device | str) -> DetectorTargets:
    """Targets for a batch. ``boxes``: one (N_b, 4) xyxy pixel tensor per image; ``grid`` = (h, w).

    Each object draws an axis-aligned Gaussian on the heatmap with standard deviations proportional to its
    box's width and height (an elliptical peak: thin objects get thin peaks); where peaks overlap, the
    maximum wins. Where two centres share a cell the larger box (drawn last) owns the regression targets.
    """
    h, w = grid
    B = len(boxes)
    heat = torch.zeros(B, 1, h, w)
    size = torch.zeros(B, 2, h, w)
    offset = torch.zeros(B, 2, h, w)
    centre = torch.zeros(B, 1, h, w)
    yy = torch.arange(h, dtype=torch.float32)[:, None]  # (h, 1)
    xx = torch.arange(w, dtype=torch.float32)[None, :]  # (1, w)
    n = 0
    for b, bx in enumerate(boxes):
        if len(bx) == 0:
            continue
        areas = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
        for x0, y0, x1, y1 in bx[areas.argsort()].tolist():  # small first: large boxes win shared cells
            bw, bh = max(x1 - x0, 1.0) / STRIDE, max(y1 - y0, 1.0) / STRIDE  # cells
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            ix, iy = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
            sx, sy = max(bw / 6, 0.5), max(bh / 6, 0.5)
            g = torch.exp(-((xx - ix) ** 2) / (2 * sx * sx) - ((yy - iy) ** 2) / (2 * sy * sy))  # (h, w)
            heat[b, 0] = torch.maximum(heat[b, 0], g)
            size[b, :, iy, ix] = torch.tensor([math.log(bw), math.log(bh)])
            offset[b, :, iy, ix] = torch.tensor([cx - ix, cy - iy])
            centre[b, 0, iy, ix] = 1.0
            n += 1
    return DetectorTargets(heat.to(device), size.to(device), offset.to(device), centre.to(device), n)


@dataclass
class DetectorLoss:
    total: Tensor  # () the weighted sum that is minimised
    heat: Tensor  # () focal loss per object
    size: Tensor  # () L1 of log size per object
    offset: Tensor  # () L1 of offset per object


def detector_loss(out: DetectorOutput, t: DetectorTargets, size_weight: float = 1.0) -> DetectorLoss:
    """CenterNet's penalty-reduced focal loss on the heatmap (negatives near a centre are down-weighted by
    ``(1 - target)^4``) plus L1 losses of log size and offset at centre cells, each per object."""
    n = max(t.n_objects, 1)
    logit = out.heat
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    log_p, log_not_p = F.logsigmoid(logit), F.logsigmoid(-logit)
    pos = t.centre
    pos_loss = -(((1 - p) ** 2) * log_p * pos).sum()
    neg_loss = -(((1 - t.heat) ** 4) * (p**2) * log_not_p * (1 - pos)).sum()
    heat = (pos_loss + neg_loss) / n
    size = (F.l1_loss(out.size, t.size, reduction="none") * pos).sum() / n
    offset = (F.l1_loss(out.offset, t.offset, reduction="none") * pos).sum() / n
    return DetectorLoss(heat + size_weight * size + offset, heat, size, offset)
