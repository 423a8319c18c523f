"""Object detection on image files, and its metrics.

``load_detector`` reads a detector checkpoint (``nscl train-detector``), ``detect_images`` turns image files of
any size into CLEVR scene records whose ``objects_detection`` holds ``{"box": [x0, y0, x1, y1], "score": s}``
in the original image's pixels (the NS-CL release's detection format, read by :func:`nscl.data.parse_scene`),
and ``detection_metrics`` scores detections against ground-truth scenes: recall of the objects with at least
``min_pixels`` visible pixels, and precision against every object, at an IoU threshold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError
from ..data import Scene
from ..errors import DataError
from ..models.detector import CenterDetector, DetectorConfig, decode, working_size

DETECTOR_KIND = "detector"


# --------------------------------------------------------------------------------------------- loading
def detector_from_state(state: Mapping[str, Any], source: str = "checkpoint") -> CenterDetector:
    """The detector of a checkpoint state; CheckpointError naming ``source`` when it is not one."""
    if state.get("kind") != DETECTOR_KIND:
        what = "an NSCL model checkpoint" if "domain" in state else f"kind {state.get('kind')!r}"
        raise CheckpointError(
            f"{source}: not a detector checkpoint ({what}); train one with nscl train-detector"
        )
    try:
        config = DetectorConfig.from_dict(state.get("config", {}).get("model"))
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored detector config is not valid here ({e})") from None
    model = CenterDetector(config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{source}: weights do not match the detector in its config ({e!s:.120})"
        ) from None
    return model


def load_detector(path: str | Path, device: torch.device | str = "cpu") -> CenterDetector:
    """The detector stored at ``path``, in eval mode on ``device``."""
    state = load_checkpoint(path, require=("model", "config"))
    return detector_from_state(state, str(path)).to(device).eval()


# --------------------------------------------------------------------------------------------- images
@dataclass
class PreparedImage:
    pixels: Tensor  # (3, H, W) float in [0, 1] at the working size
    scale_x: float  # original pixels per working pixel, horizontally
    scale_y: float  # original pixels per working pixel, vertically
    width: int  # original size
    height: int


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 at the file's own size; DataError naming the file when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: missing image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def prepare_image(image: np.ndarray, work_height: int) -> PreparedImage:
    """Resize an (H, W, 3) uint8 image to the detector's working size (antialiased bilinear)."""
    from PIL import Image

    h, w = image.shape[:2]
    wh, ww = working_size(h, w, work_height)
    im = Image.fromarray(image)
    if (w, h) != (ww, wh):
        im = im.resize((ww, wh), Image.BILINEAR, reducing_gap=None)
    px = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    return PreparedImage(px, w / ww, h / wh, w, h)


# --------------------------------------------------------------------------------------------- detection
@torch.no_grad()
def detect_prepared(
    detector: CenterDetector,
    images: Sequence[PreparedImage],
    device: torch.device | str,
    threshold: float | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """(boxes (K, 4) in original pixels clipped to the image, scores (K,)) per image; images of one working
    size run as one batch."""
    cfg = detector.config
    thr = cfg.threshold if threshold is None else threshold
    results: list[tuple[Tensor, Tensor]] = [(torch.zeros(0, 4), torch.zeros(0))] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(tuple(im.pixels.shape), []).append(i)
    for idx in by_size.values():
        batch = torch.stack([images[i].pixels for i in idx]).to(device)  # (B, 3, H, W)
        dets = decode(detector(batch), thr, cfg.max_detections, cfg.nms_iou, cfg.box_vote)
        for i, d in zip(idx, dets):
            im = images[i]
            scale = torch.tensor([im.scale_x, im.scale_y, im.scale_x, im.scale_y])
            boxes = d.boxes.cpu() * scale  # (K, 4) original pixels
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, im.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, im.height)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            results[i] = (boxes[keep], d.scores.cpu()[keep])
    return results


def detect_images(
    detector: CenterDetector,
    image_paths: Sequence[str | Path],
    device: torch.device | str = "cpu",
    threshold: float | None = None,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """One CLEVR scene record per image: ``{"image_index": i, "image_filename": name, "objects": [],
    "objects_detection": [{"box": [x0, y0, x1, y1], "score": s}, ...]}``, boxes in the original image's pixels
    (rounded to 0.01), best first. ``threshold`` None: the detector's configured one. ``image_index`` is the
    number a CLEVR file name ends with (``CLEVR_val_000123.png``: 123) when every name has a distinct one, so
    questions files keep matching; otherwise the image's position in ``image_paths``."""
    detector.eval()
    indices = image_indices(image_paths)
    records: list[dict[str, Any]] = []
    for start in range(0, len(image_paths), batch_size):
        paths = image_paths[start : start + batch_size]
        prepared = [prepare_image(read_image(p), detector.config.height) for p in paths]
        for j, (boxes, scores) in enumerate(detect_prepared(detector, prepared, device, threshold)):
            dets = [
                {"box": [round(v, 2) for v in b], "score": round(float(s), 4)}
                for b, s in zip(boxes.tolist(), scores.tolist())
            ]
            records.append(
                {
                    "image_index": indices[start + j],
                    "image_filename": Path(paths[j]).name,
                    "objects": [],
                    "objects_detection": dets,
                }
            )
    return records


def image_indices(image_paths: Sequence[str | Path]) -> list[int]:
    """CLEVR's image index of each file (the number its name ends with) when all are distinct, else positions."""
    numbers = [re.search(r"(\d+)$", Path(p).stem) for p in image_paths]
    found = [int(m.group(1)) for m in numbers if m]
    if len(found) == len(image_paths) and len(set(found)) == len(found):
        return found
    return list(range(len(image_paths)))


# --------------------------------------------------------------------------------------------- metrics
@dataclass
class DetectionMetrics:
    """Recall of the objects with >= ``min_pixels`` visible pixels and precision of all detections."""

    recall: float
    precision: float
    found: int  # large objects matched by a detection
    large: int  # objects with >= min_pixels visible pixels
    true_positives: int  # detections matched to any object
    detections: int
    objects: int  # all ground-truth objects
    mean_iou: float  # mean IoU of the matched detections with their objects' boxes (box precision)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


def visible_pixels(obj: Any) -> float:
    """Area of an object's RLE mask (its box's area when it has no mask)."""
    if obj.mask is not None:
        from pycocotools import mask as mask_utils

        rle = dict(obj.mask)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
        return float(mask_utils.area(rle))
    b = obj.box
    return float((b.x1 - b.x0) * (b.y1 - b.y0)) if b is not None else 0.0


def match_detections(det_boxes: Tensor, det_scores: Tensor, gt_boxes: Tensor, iou: float) -> Tensor:
    """Greedy matching by descending score: each detection takes the free ground-truth box it overlaps most,
    if that IoU >= ``iou``. Returns (D,) the matched ground-truth index per detection, -1 for none."""
    matched = torch.full((len(det_boxes),), -1, dtype=torch.long)
    if len(det_boxes) == 0 or len(gt_boxes) == 0:
        return matched
    ious = box_iou(det_boxes.float(), gt_boxes.float())  # (D, G)
    free = torch.ones(len(gt_boxes), dtype=torch.bool)
    for d in det_scores.argsort(descending=True, stable=True).tolist():
        cand = torch.where(free, ious[d], torch.full_like(ious[d], -1.0))
        best = int(cand.argmax())
        if cand[best] >= iou:
            matched[d] = best
            free[best] = False
    return matched


def detection_metrics(
    detections: Sequence[Mapping[str, Any]],
    scenes: Sequence[Scene],
    min_pixels: float = 100.0,
    iou: float = 0.5,
    threshold: float = 0.0,
) -> DetectionMetrics:
    """Score detection records (``detect_images`` output, matched to ``scenes`` by ``image_filename``) against
    ground-truth scenes whose objects have boxes. Detections scoring below ``threshold`` are ignored."""
    by_name = {str(r["image_filename"]): r for r in detections}
    found = large = tp = n_det = n_obj = 0
    iou_sum = 0.0
    for s in scenes:
        rec = by_name.get(s.image_filename)
        if rec is None:
            raise DataError(f"scene image_index {s.image_index}: no detections for {s.image_filename!r}")
        dets = [d for d in rec.get("objects_detection", []) if d.get("score", 1.0) >= threshold]
        db = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)
        ds = torch.tensor([float(d.get("score", 1.0)) for d in dets], dtype=torch.float32)
        gb = torch.tensor([b.as_list() for b in s.boxes], dtype=torch.float32).reshape(-1, 4)
        is_large = torch.tensor([visible_pixels(o) >= min_pixels for o in s.objects], dtype=torch.bool)
        matched = match_detections(db, ds, gb, iou)
        hit = torch.zeros(len(gb), dtype=torch.bool)
        hit[matched[matched >= 0]] = True
        found += int((hit & is_large).sum())
        large += int(is_large.sum())
        tp += int((matched >= 0).sum())
        if (matched >= 0).any():
            pairs = (matched >= 0).nonzero()[:, 0]
            iou_sum += float(box_iou(db[pairs], gb[matched[pairs]]).diagonal().sum())
        n_det += len(dets)
        n_obj += len(gb)
    return DetectionMetrics(
        recall=found / large if large else 1.0,
        precision=tp / n_det if n_det else 1.0,
        found=found,
        large=large,
        true_positives=tp,
        detections=n_det,
        objects=n_obj,
        mean_iou=iou_sum / tp if tp else 0.0,
    )
