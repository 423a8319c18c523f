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
    # Decode each box as the heat-weighted mean of the boxes its peak's 3 x 3 neighbourhood predicts (those
    # overlapping the peak's own box by IoU >= 0.5). Only for detectors trained with dense box targets
    # (``DetectorTrainConfig.dense_boxes``): elsewhere the neighbours' regressions are untrained.
    box_vote: bool = False

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


def dense_boxes(out: DetectorOutput) -> Tensor:
    """The box every cell predicts, ``(B, 4, h, w)`` xyxy in input-image pixels."""
    h, w = out.heat.shape[-2:]
    xs = torch.arange(w, dtype=out.offset.dtype, device=out.offset.device)[None, :]  # (1, w)
    ys = torch.arange(h, dtype=out.offset.dtype, device=out.offset.device)[:, None]  # (h, 1)
    cx = (xs + out.offset[:, 0]) * STRIDE  # (B, h, w) pixels
    cy = (ys + out.offset[:, 1]) * STRIDE
    half = out.size.exp() * (STRIDE / 2)  # (B, 2, h, w) half width, half height in pixels
    return torch.stack([cx - half[:, 0], cy - half[:, 1], cx + half[:, 0], cy + half[:, 1]], dim=1)


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a`` (..., 4) with ``b`` (..., 4), elementwise (broadcast) over the leading dimensions."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1) + (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area - inter).clamp(min=1e-6)


def decode(
    out: DetectorOutput, threshold: float, max_detections: int, nms_iou: float = 1.0, vote: bool = False
) -> list[Detections]:
    """Boxes of each image of the batch: 3 x 3 local maxima of the centre heatmap scoring >= ``threshold``, at
    most ``max_detections``, then NMS at ``nms_iou`` (1.0: none). Boxes are in input-image pixels.

    ``vote``: each box is the heat-weighted mean of the boxes of the peak's 3 x 3 neighbourhood that overlap
    the peak's own box by IoU >= 0.5 (the peak's own always does), instead of the peak's box alone."""
    heat = torch.sigmoid(out.heat)  # (B, 1, h, w)
    peaks = heat == F.max_pool2d(heat, 3, stride=1, padding=1)
    scores = (heat * peaks).flatten(1)  # (B, h*w)
    k = min(max_detections, scores.shape[1])
    top, idx = scores.topk(k, dim=1)  # (B, k)
    B, _, h, w = out.heat.shape
    cells = dense_boxes(out)  # (B, 4, h, w)
    boxes = cells.flatten(2).gather(2, idx[:, None].expand(-1, 4, -1)).transpose(1, 2)  # (B, k, 4)
    if vote:
        near = F.unfold(cells, 3, padding=1).view(B, 4, 9, h * w)  # (B, 4, 9, h*w); outside: zero boxes
        near = near.gather(3, idx[:, None, None].expand(-1, 4, 9, -1)).permute(0, 3, 2, 1)  # (B, k, 9, 4)
        weight = F.unfold(heat, 3, padding=1).gather(2, idx[:, None].expand(-1, 9, -1)).transpose(1, 2)
        weight = weight * (_pairwise_iou(near, boxes[:, :, None]) >= 0.5)  # (B, k, 9)
        boxes = (near * weight[..., None]).sum(2) / weight.sum(2, keepdim=True).clamp(min=1e-12)
    result = []
    for b in range(B):
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
    size: Tensor  # (B, 2, h, w) log box size in cells, where box_weight > 0
    offset: Tensor  # (B, 2, h, w) the centre's position relative to the cell, in cells, where box_weight > 0
    centre: Tensor  # (B, 1, h, w) 1.0 at the centre cell of each object, else 0
    box_weight: Tensor  # (B, 1, h, w) weight of each cell's size and offset loss; each object's sum to 1
    n_objects: int


DENSE_CORE = 0.5  # dense box targets cover the cells where an object's Gaussian is at least this


def make_targets(
    boxes: list[Tensor], grid: tuple[int, int], device: torch.device | str, dense: bool = False
) -> DetectorTargets:
    """Targets for a batch. ``boxes``: one (N_b, 4) xyxy pixel tensor per image; ``grid`` = (h, w).

    Each object draws an axis-aligned Gaussian on the heatmap with standard deviations proportional to its
    box's width and height (an elliptical peak: thin objects get thin peaks); where peaks overlap, the
    maximum wins. Box targets (size and offset) sit at each object's centre cell, where two centres sharing a
    cell go to the larger box (drawn last). ``dense``: at every cell of the object's core (Gaussian >=
    DENSE_CORE) as well, so that every cell near a peak predicts the box (see ``decode``'s ``vote``); half
    of each object's weight stays on its centre cell (the peak that decoding reads), the other half is spread
    over its core in proportion to the Gaussian. A cell shared by two cores goes to the object whose Gaussian
    is higher there (ties: the larger).
    """
    h, w = grid
    B = len(boxes)
    heat = torch.zeros(B, 1, h, w)
    size = torch.zeros(B, 2, h, w)
    offset = torch.zeros(B, 2, h, w)
    centre = torch.zeros(B, 1, h, w)
    weight = torch.zeros(B, 1, h, w)
    yy = torch.arange(h, dtype=torch.float32)[:, None]  # (h, 1)
    xx = torch.arange(w, dtype=torch.float32)[None, :]  # (1, w)
    n = 0
    for b, bx in enumerate(boxes):
        if len(bx) == 0:
            continue
        areas = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1])
        cores = []  # dense: (core Gaussian, size target, centre, centre cell) of each object, small first
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
            if dense:
                cores.append((g * (g >= DENSE_CORE), (math.log(bw), math.log(bh)), (cx, cy), (iy, ix)))
            n += 1
        if not dense:
            continue
        stack = torch.stack([c[0] for c in cores])  # (N, h, w), small first
        owner = len(cores) - 1 - stack.flip(0).argmax(0)  # (h, w): highest Gaussian, ties to the larger
        for k, (g, (lw, lh), (cx, cy), (iy, ix)) in enumerate(cores):
            mine = (owner == k) & (g > 0)  # (h, w)
            if not mine.any():
                continue
            wk = 0.5 * g * mine / (g * mine).sum()
            wk[iy, ix] += 0.5 * float(mine[iy, ix])
            weight[b, 0] = torch.where(mine, wk, weight[b, 0])
            size[b, 0] = torch.where(mine, lw, size[b, 0])
            size[b, 1] = torch.where(mine, lh, size[b, 1])
            offset[b, 0] = torch.where(mine, cx - xx, offset[b, 0])
            offset[b, 1] = torch.where(mine, cy - yy, offset[b, 1])
    if not dense:
        weight = centre
    return DetectorTargets(
        heat.to(device), size.to(device), offset.to(device), centre.to(device), weight.to(device), n
    )


@dataclass
class DetectorLoss:
    total: Tensor  # () the weighted sum that is minimised
    heat: Tensor  # () focal loss per object
    size: Tensor  # () L1 of log size per object
    offset: Tensor  # () L1 of offset per object


def detector_loss(out: DetectorOutput, t: DetectorTargets, size_weight: float = 1.0) -> DetectorLoss:
    """CenterNet's penalty-reduced focal loss on the heatmap (negatives near a centre are down-weighted by
    ``(1 - target)^4``) plus L1 losses of log size and offset weighted by ``t.box_weight`` (centre cells, or
    each object's Gaussian core), each per object."""
    n = max(t.n_objects, 1)
    logit = out.heat
    p = torch.sigmoid(logit).clamp(1e-4, 1 - 1e-4)
    log_p, log_not_p = F.logsigmoid(logit), F.logsigmoid(-logit)
    pos = t.centre
    pos_loss = -(((1 - p) ** 2) * log_p * pos).sum()
    neg_loss = -(((1 - t.heat) ** 4) * (p**2) * log_not_p * (1 - pos)).sum()
    heat = (pos_loss + neg_loss) / n
    size = (F.l1_loss(out.size, t.size, reduction="none") * t.box_weight).sum() / n
    offset = (F.l1_loss(out.offset, t.offset, reduction="none") * t.box_weight).sum() / n
    return DetectorLoss(heat + size_weight * size + offset, heat, size, offset)
