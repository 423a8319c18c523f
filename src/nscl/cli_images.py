"""Command line for images that come without boxes: ``nscl masks`` (masks and boxes for annotated CLEVR
scenes), ``nscl train-detector`` and ``nscl detect`` (a detector for any image).

Flags and thin handlers only, registered by :mod:`nscl.cli` (which owns logging, errors and exit codes);
heavy imports happen inside each handler.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

from .errors import NSCLError

log = logging.getLogger("nscl")

__all__ = ["COMMANDS"]


def _domain_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default=None, help="built-in domain name or domain JSON file (default: clevr)")


# --------------------------------------------------------------------------------------------- masks
def _masks_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenes-json", required=True, help="CLEVR scenes file with 3d_coords and pixel_coords")
    p.add_argument("--out", required=True, help="scenes file to write, with every object's mask and box")
    p.add_argument("--width", type=int, default=480, help="image width the pixel_coords refer to [480]")
    p.add_argument("--height", type=int, default=320, help="image height the pixel_coords refer to [320]")
    p.add_argument(
        "--max-error",
        type=float,
        default=1.0,
        help="warn about scenes whose camera fit is off by more px [1.0]",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    _domain_flag(p)


def cmd_masks(args: argparse.Namespace) -> int:
    from .domain import load_domain
    from .generate.scene_masks import MaskConfig, annotate_scenes_file

    try:
        cfg = MaskConfig(
            width=args.width, height=args.height, max_error_px=args.max_error, workers=args.workers
        )
    except ValueError as e:
        raise NSCLError(str(e)) from None
    report = annotate_scenes_file(
        args.scenes_json, args.out, load_domain(args.domain), cfg, progress=not args.no_progress
    )
    log.info(
        "%d scenes, %d objects (%d hidden) in %.1f s; camera fit: mean %.2f px, worst object %.2f px, "
        "%d scenes above %.1f px -> %s",
        report.scenes,
        report.objects,
        report.hidden_objects,
        report.seconds,
        report.mean_error_px,
        report.worst_error_px,
        len(report.flagged_scenes),
        args.max_error,
        args.out,
    )
    return 0


# --------------------------------------------------------------------------------------------- detector
def _train_detector_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", required=True, help="training split folder (scenes.json with boxes or masks, images/)"
    )
    p.add_argument("--val-dir", default=None, help="held-out split folder, scored every epoch")
    p.add_argument("--run-dir", default="runs/detector", help="where the log, metrics and checkpoint go")
    p.add_argument(
        "--config", default=None, help="detector training config JSON (DetectorTrainConfig fields)"
    )
    p.add_argument("--epochs", type=int, default=None, help="[16]")
    p.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--seed", type=int, default=None, help="[0]")
    p.add_argument(
        "--dense-boxes",
        action="store_true",
        help="box targets at every cell of each object's core, decoded by box voting (dense_boxes, box_vote)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    _domain_flag(p)


def cmd_train_detector(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from .device import resolve_device
    from .domain import load_domain
    from .io import read_json
    from .training.detector import DetectorTrainConfig, train_detector

    cfg = DetectorTrainConfig.from_dict(read_json(args.config) if args.config else None)
    overrides = {k: getattr(args, k) for k in ("epochs", "minutes", "seed") if getattr(args, k) is not None}
    if args.dense_boxes:
        overrides.update(dense_boxes=True, model=dataclasses.replace(cfg.model, box_vote=True))
    try:
        cfg = dataclasses.replace(cfg, **overrides)
    except ValueError as e:
        raise NSCLError(str(e)) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    metrics = train_detector(
        cfg,
        args.data_dir,
        args.val_dir,
        args.run_dir,
        resolve_device(args.device),
        progress=not args.no_progress,
        domain=load_domain(args.domain),
    )
    for k, v in sorted(metrics.items()):
        print(f"{k} = {v:.6f}")
    log.info("checkpoint: %s/checkpoint_last.pth", args.run_dir)
    return 0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _detect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load", required=True, help="detector checkpoint (nscl train-detector)")
    p.add_argument("--images", required=True, nargs="+", help="image files, or folders of .png/.jpg images")
    p.add_argument(
        "--out", default=None, help="scenes file to write (objects_detection); default: print a summary"
    )
    p.add_argument("--threshold", type=float, default=None, help="score threshold [the detector's own]")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


def cmd_detect(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from .device import resolve_device
    from .errors import DataError
    from .inference.detect import detect_images, load_detector
    from .io import atomic_write_json

    paths: list[Path] = []
    for item in map(Path, args.images):
        if item.is_dir():
            found = sorted(f for f in item.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{item}: no .png or .jpg images in this folder")
            paths.extend(found)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item}: no such image file or folder")
    device = resolve_device(args.device)
    detector = load_detector(args.load, device)
    t0 = time.perf_counter()
    records = detect_images(detector, paths, device, args.threshold)
    dt = time.perf_counter() - t0
    if args.out:
        threshold = args.threshold if args.threshold is not None else detector.config.threshold
        info = {"detector": str(args.load), "detection_threshold": threshold}
        atomic_write_json(args.out, {"info": info, "scenes": records})
    else:
        for r in records:
            print(f"{r['image_filename']}: {len(r['objects_detection'])} objects")
    log.info(
        "%d images, %d objects in %.1f s (%.1f images/s)%s",
        len(records),
        sum(len(r["objects_detection"]) for r in records),
        dt,
        len(records) / max(dt, 1e-9),
        f" -> {args.out}" if args.out else "",
    )
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "masks": (
        "add object masks and boxes to annotated CLEVR scenes (camera fitted to pixel_coords)",
        _masks_flags,
        "nscl.cli_images:cmd_masks",
    ),
    "train-detector": (
        "train the object detector for images without boxes on a generated split",
        _train_detector_flags,
        "nscl.cli_images:cmd_train_detector",
    ),
    "detect": (
        "find the objects of images with a trained detector; writes a scenes file (objects_detection)",
        _detect_flags,
        "nscl.cli_images:cmd_detect",
    ),
}
