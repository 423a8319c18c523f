"""Training of the object detector (``nscl train-detector``) on CLEVR-format splits with object boxes.

Boxes come from each object's ``box`` field, else its RLE ``mask`` (:func:`nscl.data.read_scenes`). Every image
is decoded once, at the detector's working size, into one uint8 tensor. Each step augments a batch with
horizontal flips and photometric changes (brightness, contrast, saturation, per-channel gain, blur, noise),
so that the network transfers from our renders to other renderers (Blender's CLEVR). After every epoch the
held-out split is detected and scored (:func:`nscl.inference.detect.detection_metrics`), one log line is
written, a line is appended to ``metrics.jsonl`` and ``checkpoint_last.pth`` is saved atomically. After the last
epoch the score threshold stored with the model is calibrated on the held-out split (:func:`calibrate_threshold`).

On a CPU with a fixed seed two runs give identical weights (``minutes`` unset: the schedule is counted in
steps; a wall-time budget makes the number of steps depend on the machine).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checkpoint import save_checkpoint
from ..config import ConfigError, from_dict
from ..data import Scene, SplitPaths, read_scenes
from ..domain import Domain, load_domain
from ..inference.dataset import load_image
from ..inference.detect import (
    DETECTOR_KIND,
    PreparedImage,
    detect_prepared,
    detection_metrics,
)
from ..models.detector import (
    CenterDetector,
    DetectorConfig,
    detector_loss,
    make_targets,
    working_size,
)
from ..progress import progress_bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; each strength is the half-width of a uniform factor around 1."""

    flip: bool = True  # mirror half of the images
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.4
    channel_gain: float = 0.08  # independent gain per colour channel
    blur_p: float = 0.3  # probability of a 3 x 3 Gaussian blur (sigma 0.4 to 1.0 pixels)
    noise: float = 0.03  # maximum standard deviation of additive Gaussian pixel noise


@dataclass(frozen=True)
class DetectorTrainConfig:
    """Everything a detector training run needs besides the data paths (stored in the checkpoint)."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: int = 16
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    size_weight: float = 1.0
    # Size and offset targets at every cell of each object's Gaussian core, not only its centre cell
    # (``make_targets``'s ``dense``); decode such a model with ``model.box_vote``.
    dense_boxes: bool = False
    seed: int = 0
    train_images: int = 0  # use the first N scenes of the training split (0: all)
    val_images: int = 0  # score the first N scenes of the held-out split (0: all)
    minutes: float | None = None  # wall-time budget: stop and anneal by elapsed time (not deterministic)
    # With a held-out split: after training, set the model's score threshold to the one of THRESHOLDS that
    # maximises min(recall, precision) there (a longer-trained detector is more confident than the default
    # threshold assumes).
    calibrate_threshold: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"detector training {name} must be positive, got {getattr(self, name)}")
        if self.model.box_vote and not self.dense_boxes:
            raise ConfigError(
                "detector model.box_vote needs dense_boxes: only dense targets train the neighbours"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DetectorTrainConfig:
        """Build from a plain (nested) dict; unknown keys or wrong types raise ConfigError."""
        return from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- data
@dataclass
class BoxData:
    """A split's images at one working size and their boxes in working pixels."""

    images: Tensor  # (I, 3, H, W) uint8
    boxes: list[Tensor]  # I tensors (N_i, 4) xyxy float, working pixels
    scenes: list[Scene]  # the ground truth, in stored-image pixels
    sizes: list[tuple[int, int]]  # (width, height) of each stored image

    def prepared(self, i: int) -> PreparedImage:
        """Image ``i`` as detection input, with the factors back to its file's pixels."""
        (w, h), (H, W) = self.sizes[i], self.images.shape[2:]
        return PreparedImage(self.images[i].float() / 255.0, w / W, h / H, w, h)


def load_box_data(
    split_dir: str | Path, height: int, limit: int = 0, domain: Domain | None = None, progress: bool = False
) -> BoxData:
    """Read ``<split_dir>/scenes.json`` and its images (all resized to the first image's working size)."""
    from PIL import Image

    paths = SplitPaths.resolve(split_dir)
    scenes = read_scenes(paths.scenes, domain or load_domain(None))
    scenes = sorted(scenes, key=lambda s: s.image_index)[: limit or None]
    first = paths.images / scenes[0].image_filename
    with Image.open(first) as im:
        w0, h0 = im.size
    H, W = working_size(h0, w0, height)
    images = torch.empty(len(scenes), 3, H, W, dtype=torch.uint8)
    boxes, sizes = [], []
    for i, s in enumerate(progress_bar(scenes, progress, desc=f"decode {paths.images}", unit="img")):
        path = paths.images / s.image_filename
        with Image.open(path) as im:
            w, h = im.size
        images[i] = torch.from_numpy(load_image(path, H, W).copy()).permute(2, 0, 1)
        scale = torch.tensor([W / w, H / h, W / w, H / h])
        b = torch.tensor([o.as_list() for o in s.boxes], dtype=torch.float32).reshape(-1, 4)
        boxes.append(b * scale)
        sizes.append((w, h))
    return BoxData(images, boxes, scenes, sizes)


# --------------------------------------------------------------------------------------------- augmentation
def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Per-image 3 x 3 Gaussian blur. x: (B, 3, H, W); sigma: (B,)."""
    t = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2))  # (B, 3)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = k1[:, :, None] * k1[:, None, :]  # (B, 3, 3)
    B, C, H, W = x.shape
    weight = k2.repeat_interleave(C, 0)[:, None]  # (B*C, 1, 3, 3)
    out = F.conv2d(F.pad(x.reshape(1, B * C, H, W), (1, 1, 1, 1), mode="replicate"), weight, groups=B * C)
    return out.reshape(B, C, H, W)


def augment(
    images: Tensor, boxes: list[Tensor], cfg: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, list[Tensor]]:
    """Augmented float images (B, 3, H, W) in [0, 1] and their boxes. ``images``: (B, 3, H, W) uint8."""
    x = images.float() / 255.0
    B, _, _, W = x.shape

    def uniform(strength: float, *shape: int) -> Tensor:
        return 1.0 + (torch.rand(*shape, generator=gen) * 2 - 1) * strength

    boxes = list(boxes)
    if cfg.flip:
        flip = torch.rand(B, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for b in torch.nonzero(flip).flatten().tolist():
            bx = boxes[b].clone()
            bx[:, [0, 2]] = W - boxes[b][:, [2, 0]]
            boxes[b] = bx
    x = x * uniform(cfg.brightness, B, 1, 1, 1) * uniform(cfg.channel_gain, B, 3, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(cfg.contrast, B, 1, 1, 1) + mean
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * uniform(cfg.saturation, B, 1, 1, 1) + grey
    blur = torch.rand(B, generator=gen) < cfg.blur_p
    if blur.any():
        sigma = 0.4 + 0.6 * torch.rand(int(blur.sum()), generator=gen)
        x[blur] = _blur(x[blur], sigma)
    if cfg.noise > 0:
        std = torch.rand(B, 1, 1, 1, generator=gen) * cfg.noise
        x = x + torch.randn(x.shape, generator=gen) * std
    return x.clamp(0.0, 1.0), boxes


# --------------------------------------------------------------------------------------------- training
@dataclass
class Schedule:
    """Linear warm-up, then cosine decay to 1% over the run (counted in steps, or in time with a budget)."""

    base_lr: float
    warmup: int
    total_steps: int
    seconds: float | None  # wall-time budget

    def progress(self, step: int, elapsed: float) -> float:
        p = step / max(self.total_steps, 1)
        return min(1.0, elapsed / self.seconds) if self.seconds else p

    def lr(self, step: int, elapsed: float) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        return self.base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed))))


def detect_split(
    model: CenterDetector, data: BoxData, device: torch.device | str, threshold: float | None = None
) -> list[dict[str, Any]]:
    """Detection records of ``data``'s images, built as ``nscl detect`` builds them."""
    model.eval()
    records = []
    for start in range(0, len(data.scenes), 64):
        chunk = [data.prepared(i) for i in range(start, min(start + 64, len(data.scenes)))]
        for s, (boxes, scores) in zip(
            data.scenes[start : start + 64], detect_prepared(model, chunk, device, threshold)
        ):
            dets = [{"box": b, "score": float(sc)} for b, sc in zip(boxes.tolist(), scores.tolist())]
            records.append({"image_filename": s.image_filename, "objects_detection": dets})
    return records


def evaluate_detector(
    model: CenterDetector, data: BoxData, device: torch.device | str, threshold: float | None = None
) -> dict[str, float]:
    """Recall / precision on ``data``."""
    return detection_metrics(detect_split(model, data, device, threshold), data.scenes).as_dict()


THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10, 0.15 ... 0.90


def calibrate_threshold(
    model: CenterDetector, data: BoxData, device: torch.device | str
) -> tuple[float, dict]:
    """The threshold of THRESHOLDS with the largest min(recall, precision) on ``data`` (ties: the larger sum,
    then the one nearest the model's own threshold), and its metrics."""
    records = detect_split(model, data, device, THRESHOLDS[0])  # one pass; higher thresholds filter it
    scored = {t: detection_metrics(records, data.scenes, threshold=t).as_dict() for t in THRESHOLDS}
    own = model.config.threshold
    best = max(
        scored,
        key=lambda t: (
            min(scored[t]["recall"], scored[t]["precision"]),
            scored[t]["recall"] + scored[t]["precision"],
            -abs(t - own),
        ),
    )
    return best, scored[best]


def train_detector(
    cfg: DetectorTrainConfig,
    train_dir: str | Path,
    val_dir: str | Path | None,
    run_dir: str | Path,
    device: torch.device | str = "cpu",
    progress: bool = False,
    domain: Domain | None = None,
) -> dict[str, float]:
    """Train a detector; returns the last epoch's metrics (``loss``, ``val/recall``, ``val/precision`` ...).
    Writes ``run_dir/checkpoint_last.pth`` and ``run_dir/metrics.jsonl``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = load_box_data(train_dir, cfg.model.height, cfg.train_images, domain, progress)
    val = load_box_data(val_dir, cfg.model.height, cfg.val_images, domain, progress) if val_dir else None
    log.info(
        "detector: %d training images %s, %d held-out",
        len(train.scenes),
        tuple(train.images.shape[2:]),
        len(val.scenes) if val else 0,
    )
    (run / "metrics.jsonl").write_text("")
    model = CenterDetector(cfg.model).to(device)
    opt = _optimizer(model, cfg)
    per_epoch = math.ceil(len(train.scenes) / cfg.batch_size)
    budget = cfg.minutes * 60 if cfg.minutes is not None else None
    sched = Schedule(cfg.lr, cfg.warmup_steps, per_epoch * cfg.epochs, budget)
    clock = Clock(time.perf_counter(), budget)
    step, metrics, last = 0, {}, cfg.epochs if budget is None else 10**6
    for epoch in range(1, last + 1):
        totals, step = _train_epoch(model, opt, sched, clock, train, cfg, gen, step, device, progress, epoch)
        metrics = {"epoch": float(epoch), **totals, "seconds": clock.elapsed()}
        if val is not None:
            metrics.update({f"val/{k}": v for k, v in evaluate_detector(model, val, device).items()})
        log.info(
            "detector epoch %d: loss %.4f (heat %.4f size %.4f offset %.4f)%s, %.0f s",
            epoch, totals["loss"], totals["loss/heat"], totals["loss/size"], totals["loss/offset"],
            f", val recall {metrics['val/recall']:.4f} precision {metrics['val/precision']:.4f}"
            f" box IoU {metrics['val/mean_iou']:.3f}" if val else "",
            clock.elapsed(),
        )  # fmt: skip
        if clock.over() or epoch == last:
            break
        _save(run, model, cfg, epoch, metrics)  # every epoch's checkpoint but the last, saved below
    if val is not None and cfg.calibrate_threshold:
        threshold, at = calibrate_threshold(model, val, device)
        log.info(
            "detector threshold %.2f (was %.2f): val recall %.4f precision %.4f box IoU %.3f",
            threshold, cfg.model.threshold, at["recall"], at["precision"], at["mean_iou"],
        )  # fmt: skip
        cfg = replace(cfg, model=replace(cfg.model, threshold=threshold))
        model.config = cfg.model
        metrics.update({"threshold": threshold, **{f"val/{k}": v for k, v in at.items()}})
    _save(run, model, cfg, epoch, metrics)
    return metrics


@dataclass
class Clock:
    """Wall time since the start of training, against an optional budget in seconds."""

    start: float
    budget: float | None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.budget is not None and self.elapsed() >= self.budget


def _optimizer(model: CenterDetector, cfg: DetectorTrainConfig) -> torch.optim.Optimizer:
    """AdamW, without weight decay on biases and BatchNorm parameters."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _train_epoch(
    model: CenterDetector,
    opt: torch.optim.Optimizer,
    sched: Schedule,
    clock: Clock,
    data: BoxData,
    cfg: DetectorTrainConfig,
    gen: torch.Generator,
    step: int,
    device: torch.device | str,
    progress: bool,
    epoch: int,
) -> tuple[dict[str, float], int]:
    """One pass over ``data`` in a seeded order (stopping early when the time budget is spent); the mean
    losses and the global step after it."""
    model.train()
    grid = (data.images.shape[2] // 4, data.images.shape[3] // 4)  # (h, w) output cells
    order = torch.randperm(len(data.scenes), generator=gen)
    batches = order.split(cfg.batch_size)
    totals, done = np.zeros(4), 0
    for idx in progress_bar(batches, progress, desc=f"epoch {epoch}", unit="batch"):
        if clock.over():
            break
        x, boxes = augment(data.images[idx], [data.boxes[j] for j in idx.tolist()], cfg.augment, gen)
        loss = detector_loss(
            model(x.to(device)), make_targets(boxes, grid, device, cfg.dense_boxes), cfg.size_weight
        )
        for g in opt.param_groups:
            g["lr"] = sched.lr(step, clock.elapsed())
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        step, done = step + 1, done + 1
        totals += [float(v.detach()) for v in (loss.total, loss.heat, loss.size, loss.offset)]
    totals /= max(done, 1)
    names = ("loss", "loss/heat", "loss/size", "loss/offset")
    return {k: float(v) for k, v in zip(names, totals)}, step


def _save(run: Path, model: CenterDetector, cfg: DetectorTrainConfig, epoch: int, metrics: dict) -> None:
    state = {
        "kind": DETECTOR_KIND,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": {"model": cfg.model.to_dict(), "train": cfg.to_dict()},
        "epoch": epoch,
        "metrics": metrics,
    }
    save_checkpoint(run / "checkpoint_last.pth", state)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
