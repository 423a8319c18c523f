"""Perception: image + object boxes -> object features and ordered-pair features (NSCL-REFERENCE section 2).

Dimension key: B images, H x W image size, N objects per image (padded), K valid boxes in the batch, C backbone
channels, D object feature size, P pair feature size, G box geometry size.

Two trunks: ``resnet34`` (torchvision ResNet-34 through layer3, stride 16, 256 channels; ImageNet weights from
a local file when given) for full-size images, and ``small``, a five-layer stride-8 CNN that trains in
minutes on a CPU. Object features pool the trunk map with ``torchvision.ops.roi_align`` over every box of the
batch in a single call, add a whole-image context vector and the box geometry, and are L2-normalised. Pair
features combine both objects' features with their relative geometry (see docs/deviations in the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import ConfigError, check_options

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GEOMETRY_DIM = 7


@dataclass(frozen=True)
class PerceptionConfig:
    backbone: Literal["small", "resnet34"] = "small"
    pretrained: str | None = None  # path to a torchvision ResNet-34 state dict (ImageNet); never downloaded
    width: int = 32  # channels of the first stage of the small trunk
    norm: Literal["group", "batch", "none"] = (
        "group"  # small trunk normalisation (group: batch-size independent)
    )
    feature_dim: int = 256  # D
    pair_dim: int = 128  # P
    pool_size: int = 7
    use_geometry: bool = True  # add box geometry to object and pair features
    fine_roi: bool = True  # small trunk: also pool the stride-4 map (finer shape detail)
    pixel_roi: int = 16  # > 0: also crop each box from the image at this size and encode it with a small CNN
    # Training-time augmentation of appearance only (box geometry always comes from the true boxes, so
    # relations and positions stay correct): mirror each image with probability 1/2, and move each edge of a
    # pooled box by up to this fraction of the box's width or height.
    flip: bool = False
    box_jitter: float = 0.0
    # Photometric jitter of each training image (see photometric_jitter): exposure, contrast, gamma and
    # saturation drawn within +-this fraction; hue is never changed, so colours keep their names. 0: off.
    photometric: float = 0.0

    def __post_init__(self) -> None:
        check_options(self, "model.perception.")
        if not 0.0 <= self.photometric < 1.0:
            raise ConfigError(f"model.perception.photometric must be in [0, 1), got {self.photometric}")


@dataclass
class SceneFeatures:
    """Output of perception for a batch of images."""

    objects: Tensor  # (B, N, D) L2-normalised, zero at padding
    pairs: Tensor  # (B, N, N, P); [b, i, j] describes the ordered pair (subject i, object j)
    mask: Tensor  # (B, N) bool, True for real objects


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "group":
        return nn.GroupNorm(8, c)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (batch, group, none)")


def _conv(cin: int, cout: int, stride: int, norm: str, k: int = 3) -> nn.Sequential:
    """k x k convolution (k = 3: padded; otherwise a non-overlapping patch stem) -> norm -> ReLU."""
    conv = nn.Conv2d(cin, cout, k, stride, 1 if k == 3 else 0, bias=norm == "none")
    return nn.Sequential(conv, _norm(norm, cout), nn.ReLU(inplace=True))


class SmallTrunk(nn.Module):
    """(B, 3, H, W) -> (B, 4w, H/8, W/8). A 4x4 stride-4 "patchify" stem keeps every pixel's information while
    the 3x3 layers run at 1/4 and 1/8 resolution, which makes CPU training about 2x faster than full-resolution
    early layers at the same accuracy (benchmarks/train.py)."""

    def __init__(self, width: int, norm: str = "group") -> None:
        super().__init__()
        w = width
        self.fine = nn.Sequential(_conv(3, w, 4, norm, k=4), _conv(w, 2 * w, 1, norm))  # stride 4
        self.body = nn.Sequential(
            self.fine, _conv(2 * w, 4 * w, 2, norm), _conv(4 * w, 4 * w, 1, norm)
        )  # stride 8
        self.channels = 4 * w
        self.stride = 8
        self.fine_channels = 2 * w
        self.fine_stride = 4

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward_pyramid(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both the stride-4 map (B, 2w, H/4, W/4) and the stride-8 map (B, 4w, H/8, W/8)."""
        fine = self.fine(x)
        return fine, self.body[1:](fine)


class ResNet34Trunk(nn.Module):
    """torchvision ResNet-34 cut after layer3: (B, 3, H, W) -> (B, 256, H/16, W/16)."""

    def __init__(self, pretrained: str | None) -> None:
        super().__init__()
        from torchvision.models import resnet34

        net = resnet34(weights=None)
        if pretrained:
            state = torch.load(Path(pretrained), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
        )
        self.channels = 256
        self.stride = 16

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def photometric_jitter(images: Tensor, strength: float) -> Tensor:
    """Random per-image exposure, contrast, gamma and saturation, hue unchanged.

    images (Tensor[B, 3, H, W]) float in [0, 1] -> same shape, clamped to [0, 1]. Each factor is drawn per
    image: gamma exp(U(-s, s)); contrast about the image's mean grey 1 + U(-s, s); saturation (distance from
    each pixel's grey) 1 + U(-s/2, s/2); exposure (gain) 1 + U(-s, s). A renderer's look differs from another's
    mostly in these (how bright metal highlights are, how hard the light is), not in hue.
    """
    B = images.shape[0]

    def draw(scale: float) -> Tensor:
        return (torch.rand(B, 1, 1, 1, device=images.device) * 2 - 1) * scale  # (B, 1, 1, 1)

    x = images.clamp(1e-6, 1.0) ** torch.exp(draw(strength))
    grey = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    x = grey + (x - grey) * (1 + draw(strength / 2))
    mean = grey.mean(dim=(2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = mean + (x - mean) * (1 + draw(strength))
    return (x * (1 + draw(strength))).clamp(0.0, 1.0)


def box_geometry(boxes: Tensor, height: int, width: int) -> Tensor:
    """boxes (Tensor[..., 4]) xyxy pixels -> (Tensor[..., G]): centre x, y, bottom y, width, height, area,
    each relative to the image size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    w, h = (x1 - x0) / width, (y1 - y0) / height
    cx, cy = (x0 + x1) / (2 * width), (y0 + y1) / (2 * height)
    return torch.stack([cx, cy, y1 / height, w, h, w * h * 4, torch.sqrt(w * h)], -1)


class Perception(nn.Module):
    def __init__(self, cfg: PerceptionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.backbone == "small":
            self.trunk: nn.Module = SmallTrunk(cfg.width, cfg.norm)
        elif cfg.backbone == "resnet34":
            self.trunk = ResNet34Trunk(cfg.pretrained)
        else:
            raise ValueError(f"unknown backbone {cfg.backbone!r} (small, resnet34)")
        C, D, k = self.trunk.channels, cfg.feature_dim, cfg.pool_size
        G = GEOMETRY_DIM if cfg.use_geometry else 0
        self.roi_reduce = nn.Conv2d(C, C // 2, 1)
        self.context = nn.Conv2d(C, C // 2, 1)
        # Optional second RoI pooling from the stride-4 map of the small trunk (finer shape detail).
        F4 = getattr(self.trunk, "fine_channels", 0) if cfg.fine_roi else 0
        self.fine_reduce = nn.Conv2d(F4, F4 // 2, 1) if F4 else None
        # Optional crop branch: each box resampled from the image itself (RoI Align at stride 1), so small
        # objects keep their silhouette at full resolution.
        P = cfg.pixel_roi
        self.crop_net = None
        crop_dim = 0
        if P:
            self.crop_net = nn.Sequential(
                nn.Conv2d(3, 32, 3, 1, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, 64, 3, 2, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 3, 2, 1),
                nn.ReLU(inplace=True),
                nn.Flatten(),
            )
            crop_dim = 64 * ((P + 3) // 4) ** 2
        self.object_fc = nn.Linear((C // 2) * k * k + (F4 // 2) * k * k + crop_dim + C // 2 + G, D)
        self.pair_in = nn.Linear(D, cfg.pair_dim)
        self.pair_fc = nn.Sequential(
            nn.Linear(2 * cfg.pair_dim + 3 * G, cfg.pair_dim),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.pair_dim, cfg.pair_dim),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Kaiming-normal weights and zero biases, except a (possibly pretrained) ResNet trunk.
        keep = set(self.trunk.modules()) if isinstance(self.trunk, ResNet34Trunk) else set()
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in keep:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _augment(self, x: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """x (Tensor[B, 3, H, W]), boxes (Tensor[B, N, 4]) -> augmented images and the boxes to pool them at."""
        B, _, _, W = x.shape
        pool = boxes
        if self.cfg.box_jitter > 0:
            size = (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 2)  # (B, N, 4): w, h, w, h
            noise = torch.rand(boxes.shape, device=boxes.device) * 2 - 1  # (B, N, 4) in [-1, 1)
            pool = boxes + noise * self.cfg.box_jitter * size
        if self.cfg.flip:
            f = torch.rand(B, device=x.device) < 0.5  # (B,)
            x = torch.where(f[:, None, None, None], x.flip(-1), x)
            mirrored = torch.stack([W - pool[..., 2], pool[..., 1], W - pool[..., 0], pool[..., 3]], -1)
            pool = torch.where(f[:, None, None], mirrored, pool)
        return x, pool

    def forward(self, images: Tensor, boxes: Tensor, mask: Tensor) -> SceneFeatures:
        """images (Tensor[B, 3, H, W]) uint8 or float in [0, 1]; boxes (Tensor[B, N, 4]) xyxy pixels of these
        images; mask (Tensor[B, N] bool)."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        B, _, H, W = images.shape
        N = boxes.shape[1]
        if self.training and self.cfg.photometric > 0:
            images = photometric_jitter(images, self.cfg.photometric)
        x = (images - self.mean) / self.std
        pool_boxes = boxes  # (B, N, 4) where features are pooled; geometry always uses `boxes`
        if self.training and (self.cfg.flip or self.cfg.box_jitter > 0):
            x, pool_boxes = self._augment(x, boxes)
        if self.fine_reduce is not None:
            fine, fmap = self.trunk.forward_pyramid(x)  # (B, C4, H/4, W/4), (B, C, H/8, W/8)
        else:
            fine, fmap = None, self.trunk(x)  # (B, C, H/s, W/s)
        # RoI Align over every valid box of the batch in one call.
        b_idx, n_idx = mask.nonzero(as_tuple=True)  # (K,), (K,)
        rois = torch.cat([b_idx[:, None].to(boxes.dtype), pool_boxes[b_idx, n_idx]], dim=1)  # (K, 5)
        pooled = roi_align(
            fmap,
            rois,
            self.cfg.pool_size,
            spatial_scale=1.0 / self.trunk.stride,
            sampling_ratio=2,
            aligned=True,
        )  # (K, C, k, k)
        pooled = F.relu(self.roi_reduce(pooled)).flatten(1)  # (K, C/2 * k * k)
        if fine is not None:
            fp = roi_align(
                fine, rois, self.cfg.pool_size, 1.0 / self.trunk.fine_stride, sampling_ratio=2, aligned=True
            )
            pooled = torch.cat(
                [pooled, F.relu(self.fine_reduce(fp)).flatten(1)], dim=1
            )  # (K, (C + C4)/2 * k * k)
        if self.crop_net is not None:
            crops = roi_align(
                x, rois, self.cfg.pixel_roi, 1.0, sampling_ratio=2, aligned=True
            )  # (K, 3, P, P)
            pooled = torch.cat([pooled, self.crop_net(crops)], dim=1)
        ctx = F.relu(self.context(fmap)).mean(dim=(2, 3))  # (B, C/2)
        parts = [pooled, ctx[b_idx]]
        geom = box_geometry(boxes, H, W)  # (B, N, G)
        if self.cfg.use_geometry:
            parts.append(geom[b_idx, n_idx])
        obj = F.normalize(self.object_fc(torch.cat(parts, dim=1)), dim=-1)  # (K, D)
        objects = obj.new_zeros(B, N, obj.shape[1])
        objects[b_idx, n_idx] = obj  # (B, N, D)
        # Ordered pairs (i, j): both objects' features plus geometry of i, j and j - i.
        q = self.pair_in(objects)  # (B, N, P)
        pi = q[:, :, None, :].expand(B, N, N, -1)
        pj = q[:, None, :, :].expand(B, N, N, -1)
        pair_parts = [pi, pj]
        if self.cfg.use_geometry:
            gi = geom[:, :, None, :].expand(B, N, N, -1)
            gj = geom[:, None, :, :].expand(B, N, N, -1)
            pair_parts += [gi, gj, gj - gi]
        pairs = self.pair_fc(torch.cat(pair_parts, dim=-1))  # (B, N, N, P)
        return SceneFeatures(objects, pairs, mask)
