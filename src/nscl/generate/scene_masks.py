"""Object masks and boxes for annotated CLEVR scenes that have none (``nscl masks``).

Real CLEVR scenes give every object's shape, size, rotation, ``3d_coords`` and ``pixel_coords``, but no mask
or box, and NS-CL needs boxes. This module fits each scene's camera to its annotations
(:mod:`nscl.generate.camera_fit`), renders the object-id buffer of the same objects with the generator's
geometry (:func:`nscl.generate.render.render_ids`: CLEVR's sizes, half-side = size cubes at z = size,
``rotation`` applied as radians like CLEVR's renders) and writes each object's COCO RLE ``mask`` and xyxy
``box`` (exclusive maximum), plus a ``camera_fit`` record per scene (fitted position and reprojection
error). Objects that no pixel shows get an empty mask and the box of their projected bounding volume.

The camera fit is one batched solve; rendering runs in worker processes, chunk by chunk, in input order.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..domain import Domain
from ..errors import DataError
from ..io import atomic_write_json, read_json
from ..progress import progress_bar
from .camera import Camera, project
from .camera_fit import CameraFit, fit_cameras
from .geometry import RenderObject
from .render import render_ids

__all__ = [
    "MaskConfig",
    "MaskReport",
    "annotate_scenes",
    "annotate_scenes_file",
    "decode_mask",
    "encode_masks",
]

log = logging.getLogger(__name__)

_CHUNK = 128  # scenes per worker task
_SHOWN_WARNINGS = 10


@dataclass(frozen=True)
class MaskConfig:
    """How ``nscl masks`` renders: the annotations' image size (CLEVR v1.0: 480x320), the lens, the mean
    reprojection error above which a scene is reported, and worker processes (0: one per CPU)."""

    width: int = 480
    height: int = 320
    lens_mm: float = 35.0
    sensor_mm: float = 32.0
    max_error_px: float = 1.0
    workers: int = 0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class MaskReport:
    """What :func:`annotate_scenes` did."""

    scenes: int
    objects: int
    hidden_objects: int  # objects no pixel shows (empty mask, box of the projected bounding volume)
    mean_error_px: float  # mean over scenes of the per-scene mean reprojection error
    worst_error_px: float  # largest per-object reprojection error of any scene
    flagged_scenes: tuple[int, ...]  # image_index of scenes whose mean error exceeds max_error_px
    seconds: float


@dataclass(frozen=True)
class _SceneJob:
    objects: tuple[RenderObject, ...]
    camera: Camera


# ---- masks ---------------------------------------------------------------------------------------------


def encode_masks(ids: np.ndarray, count: int) -> list[tuple[dict, list[int] | None, int]]:
    """COCO RLE, xyxy box (exclusive maximum; None when empty) and pixel area of objects 0..count-1.

    Args:
        ids: (np.ndarray[H, W], int) object-id buffer, -1 for background.
    """
    from pycocotools import mask as mask_utils

    if count == 0:
        return []
    stack = np.asfortranarray(
        (ids[:, :, None] == np.arange(count)[None, None, :]).astype(np.uint8)
    )  # (H, W, N)
    rles = mask_utils.encode(stack)
    areas = mask_utils.area(rles)
    bboxes = mask_utils.toBbox(rles)  # (N, 4) x, y, w, h
    out = []
    for rle, area, (x, y, w, h) in zip(rles, areas, bboxes):
        box = [int(x), int(y), int(x + w), int(y + h)] if area > 0 else None
        out.append(
            ({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}, box, int(area))
        )
    return out


def decode_mask(rle: Mapping) -> np.ndarray:
    """(np.ndarray[H, W], bool) pixels of a COCO RLE mask as written by :func:`encode_masks` (string counts)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return mask_utils.decode(
        {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    ).astype(bool)


def _bounding_box(obj: RenderObject, camera: Camera, width: int, height: int) -> list[int]:
    """Box of the projected corners of an object's upright bounding box, clipped to the image."""
    ext = obj.size * math.sqrt(2.0) if obj.shape == "cube" else obj.size
    cx, cy, cz = obj.center
    corners = np.array(
        [
            [cx + sx * ext, cy + sy * ext, cz + sz * obj.size]
            for sx in (-1, 1)
            for sy in (-1, 1)
            for sz in (-1, 1)
        ]
    )
    px = project(camera, corners, width, height, round_pixels=False)
    x0, y0 = np.clip(np.floor(px[:, :2].min(axis=0)), 0, [width - 1, height - 1])
    x1, y1 = np.clip(np.ceil(px[:, :2].max(axis=0)), [x0 + 1, y0 + 1], [width, height])
    return [int(x0), int(y0), int(x1), int(y1)]


def _render_chunk(
    jobs: Sequence[_SceneJob], width: int, height: int
) -> list[list[tuple[dict, list[int], int]]]:
    """Masks, boxes and visible areas of every object of every scene in a chunk."""
    out = []
    for job in jobs:
        ids = render_ids(job.objects, job.camera, width, height)
        enc = encode_masks(ids, len(job.objects))
        out.append(
            [
                (rle, box if box is not None else _bounding_box(o, job.camera, width, height), area)
                for (rle, box, area), o in zip(enc, job.objects)
            ]
        )
    return out


# ---- reading the annotations ---------------------------------------------------------------------------


def _number_list(value: Any, n: int, where: str, key: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) < n:
        raise DataError(f"{where}: '{key}' must be a list of {n} numbers, got {value!r}")
    try:
        out = [float(v) for v in value[:n]]
    except (TypeError, ValueError):
        raise DataError(f"{where}: '{key}' must be a list of {n} numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise DataError(f"{where}: '{key}' has a non-finite value {value!r}")
    return out


def _render_objects(
    scene: Mapping, domain: Domain, where: str
) -> tuple[list[RenderObject], np.ndarray, np.ndarray]:
    """A scene's objects as renderer objects, their (K, 3) ``3d_coords`` and (K, 3) ``pixel_coords``."""
    shapes, sizes = domain.appearance["shape"], domain.appearance["size"]
    objects = scene.get("objects")
    if not isinstance(objects, list):
        raise DataError(f"{where}: no 'objects' list")
    objs, coords, pixels = [], [], []
    for i, o in enumerate(objects):
        w = f"{where}: object {i}"
        if not isinstance(o, Mapping):
            raise DataError(f"{w}: not an object record")
        for key in ("3d_coords", "pixel_coords", "shape", "size"):
            if key not in o:
                raise DataError(f"{w}: no '{key}' (masks are recovered from CLEVR's full scene annotations)")
        if o["shape"] not in shapes:
            raise DataError(f"{w}: unknown shape {o['shape']!r}; expected one of {sorted(shapes)}")
        if o["size"] not in sizes:
            raise DataError(f"{w}: unknown size {o['size']!r}; expected one of {sorted(sizes)}")
        c = _number_list(o["3d_coords"], 3, w, "3d_coords")
        p = _number_list(o["pixel_coords"], 3, w, "pixel_coords")
        rot = o.get("rotation", 0.0)
        if not isinstance(rot, (int, float)) or not math.isfinite(rot):
            raise DataError(f"{w}: 'rotation' must be a number, got {rot!r}")
        size = float(sizes[o["size"]])
        # Geometry and ids only: colour and material do not change the id buffer.
        objs.append(
            RenderObject(
                str(shapes[o["shape"]]), (c[0], c[1], c[2]), size, float(rot), (0.5, 0.5, 0.5), "rubber"
            )
        )
        coords.append(c)
        pixels.append(p)
    return (
        objs,
        np.array(coords, dtype=np.float64).reshape(-1, 3),
        np.array(pixels, dtype=np.float64).reshape(-1, 3),
    )


def _fit(per_scene: Sequence[tuple[np.ndarray, np.ndarray]], cfg: MaskConfig) -> CameraFit:
    n = len(per_scene)
    k = max((len(c) for c, _ in per_scene), default=0)
    coords, pixels = np.zeros((n, k, 3)), np.zeros((n, k, 3))
    valid = np.zeros((n, k), dtype=bool)
    for s, (c, p) in enumerate(per_scene):
        coords[s, : len(c)], pixels[s, : len(p)], valid[s, : len(c)] = c, p, True
    return fit_cameras(coords, pixels, valid, cfg.width, cfg.height, cfg.lens_mm, cfg.sensor_mm)


def _chunks(items: Sequence[_SceneJob], size: int) -> Iterator[Sequence[_SceneJob]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---- the job -------------------------------------------------------------------------------------------


def annotate_scenes(
    scenes: Sequence[Mapping], domain: Domain, cfg: MaskConfig, source: str = "scenes", progress: bool = False
) -> tuple[list[dict], MaskReport]:
    """Scenes with every object's ``mask`` and ``box`` and a per-scene ``camera_fit`` added (new dicts).

    Raises DataError naming ``source``, the scene and the object when an annotation is missing or malformed.
    """
    t0 = time.perf_counter()
    parsed = []
    for s, scene in enumerate(scenes):
        if not isinstance(scene, Mapping):
            raise DataError(f"{source}: scene {s}: not a scene record")
        where = f"{source}: scene {s} ({scene.get('image_filename', '?')})"
        parsed.append(_render_objects(scene, domain, where))
    fit = _fit([(c, p) for _, c, p in parsed], cfg)
    jobs = [
        _SceneJob(tuple(objs), fit.camera(s, cfg.lens_mm, cfg.sensor_mm))
        for s, (objs, _, _) in enumerate(parsed)
    ]
    workers = min(cfg.workers or os.cpu_count() or 1, max(1, math.ceil(len(jobs) / _CHUNK)))
    rendered: list[list[tuple[dict, list[int], int]]] = []
    with progress_bar(None, progress, total=len(jobs), unit="scene", desc="masks") as bar:
        if workers <= 1:
            for chunk in _chunks(jobs, _CHUNK):
                rendered.extend(_render_chunk(chunk, cfg.width, cfg.height))
                bar.update(len(chunk))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunks = list(_chunks(jobs, _CHUNK))
                results = pool.map(
                    _render_chunk, chunks, [cfg.width] * len(chunks), [cfg.height] * len(chunks)
                )
                for chunk, res in zip(chunks, results):
                    rendered.extend(res)
                    bar.update(len(chunk))
    out, hidden, flagged = [], 0, []
    for s, (scene, objs) in enumerate(zip(scenes, rendered)):
        new_objects = []
        for o, (rle, box, area) in zip(scene["objects"], objs):
            hidden += area == 0
            new_objects.append({**o, "mask": rle, "box": box})
        err = float(fit.mean_error_px[s])
        record = {**scene, "objects": new_objects}
        record["camera_fit"] = {
            "position": [round(float(v), 5) for v in fit.positions[s]],
            "mean_error_px": round(err, 4),
            "max_error_px": round(float(fit.max_error_px[s]), 4),
        }
        if err > cfg.max_error_px:
            flagged.append(int(scene.get("image_index", s)))
        out.append(record)
    report = MaskReport(
        scenes=len(out),
        objects=sum(len(o) for o in rendered),
        hidden_objects=int(hidden),
        mean_error_px=float(fit.mean_error_px.mean()) if len(out) else 0.0,
        worst_error_px=float(fit.max_error_px.max()) if len(out) else 0.0,
        flagged_scenes=tuple(flagged),
        seconds=time.perf_counter() - t0,
    )
    return out, report


def annotate_scenes_file(
    src: str | Path, dst: str | Path, domain: Domain, cfg: MaskConfig, progress: bool = False
) -> MaskReport:
    """Read a CLEVR scenes file, add masks and boxes, write ``dst`` atomically (the ``info`` block is kept)."""
    data = read_json(src)
    if isinstance(data, Mapping) and isinstance(data.get("scenes"), list):
        scenes, info = data["scenes"], data.get("info")
    elif isinstance(data, list):
        scenes, info = data, None
    else:
        raise DataError(f"{src}: not a CLEVR scenes file (expected {{'scenes': [...]}})")
    records, report = annotate_scenes(scenes, domain, cfg, str(src), progress)
    for index in report.flagged_scenes[:_SHOWN_WARNINGS]:
        log.warning(
            "%s: scene %d: camera fit is off by more than %.1f px on average; its masks may be wrong",
            src,
            index,
            cfg.max_error_px,
        )
    if len(report.flagged_scenes) > _SHOWN_WARNINGS:
        log.warning(
            "%s: %d of %d scenes exceed %.1f px",
            src,
            len(report.flagged_scenes),
            report.scenes,
            cfg.max_error_px,
        )
    if len(report.flagged_scenes) > report.scenes / 2:
        log.warning(
            "%s: most scenes fit badly: do its pixel_coords refer to %dx%d images? (set the size with --width, --height)",
            src,
            cfg.width,
            cfg.height,
        )
    payload: dict[str, Any] = {"scenes": records}
    if info is not None:
        payload = {"info": info, **payload}
    atomic_write_json(dst, payload)
    return report
