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


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "masks": (
        "add object masks and boxes to annotated CLEVR scenes (camera fitted to pixel_coords)",
        _masks_flags,
        "nscl.cli_images:cmd_masks",
    ),
}
