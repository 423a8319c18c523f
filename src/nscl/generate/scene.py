"""Scene sampling with CLEVR's placement rules (CLEVR-FACTS section 1).

A scene is sampled object by object: size, ground position, shape and colour (independent, or per a CoGenT
condition), rotation, material. A new object must keep ``min_dist`` from every other object's rim and at least
``margin`` along the camera's left/right and front/behind axes; after ``max_retries`` failed draws for one
object, placement restarts from an empty scene. Finally every object must keep ``min_pixels`` visible pixels
in the renderer's object-ID buffer, or the whole scene is drawn again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..domain import Domain
from .camera import Camera, Lamp, clevr_camera, clevr_lamps, ground_directions, project
from .geometry import RenderObject
from .render import render_ids

# CLEVR-CoGenT (CLEVR-FACTS section 5): allowed colours per shape; sphere takes every colour.
COGENT = {
    "A": {"cube": ("gray", "blue", "brown", "yellow"), "cylinder": ("red", "green", "purple", "cyan")},
    "B": {"cube": ("red", "green", "purple", "cyan"), "cylinder": ("gray", "blue", "brown", "yellow")},
}
RELATION_EPS = 0.2  # CLEVR's threshold for left/right/front/behind


@dataclass(frozen=True)
class SceneConfig:
    min_objects: int = 3
    max_objects: int = 10
    min_dist: float = 0.25
    margin: float = 0.4
    max_retries: int = 50
    min_pixels_at_480x320: int = 200  # scaled to the render resolution
    width: int = 480
    height: int = 320
    cogent: str | None = None  # "A" | "B" | None
    max_attempts: int = 200  # whole-scene restarts before giving up

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"object count range {self.min_objects}-{self.max_objects} is empty")
        if self.cogent not in (None, "A", "B"):
            raise ValueError(f"CoGenT condition must be A or B, got {self.cogent!r}")
        if self.width < 16 or self.height < 16:
            raise ValueError("images must be at least 16x16")

    @property
    def min_pixels(self) -> int:
        return max(6, round(self.min_pixels_at_480x320 * self.width * self.height / (480 * 320)))


@dataclass(frozen=True)
class SampledScene:
    """A placed, visible scene: its CLEVR scene record (without masks) and what the renderer needs."""

    record: dict
    objects: tuple[RenderObject, ...]
    camera: Camera
    lamps: tuple[Lamp, ...]
    object_ids: np.ndarray  # (H, W) int16 from the visibility pass, -1 = background


def _directions() -> dict[str, list[float]]:
    # CLEVR's directions come from the un-jittered camera, so they are the same in every scene.
    return ground_directions(clevr_camera(None))


def compute_relationships(
    coords: np.ndarray, directions: Mapping[str, Sequence[float]]
) -> dict[str, list[list[int]]]:
    """``rel[r][i]`` = sorted j != i with (coords_j - coords_i) . direction_r > 0.2.  coords (N, 3)."""
    out = {}
    n = len(coords)
    for r in ("left", "right", "front", "behind"):
        d = np.asarray(directions[r], dtype=np.float64)
        proj = (coords[None, :, :] - coords[:, None, :]) @ d  # (N, N): [i, j] = (c_j - c_i) . d
        out[r] = [[j for j in range(n) if j != i and proj[i, j] > RELATION_EPS] for i in range(n)]
    return out


def _place(domain: Domain, cfg: SceneConfig, rng: np.random.Generator, dirs: Mapping) -> list[dict] | None:
    """One placement attempt: object dicts with attributes and coordinates, or None after too many retries."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    sizes = domain.appearance["size"]
    size_names = list(sizes)
    shapes = list(domain.attribute("shape").concepts)
    colors = list(domain.attribute("color").concepts)
    materials = list(domain.attribute("material").concepts)
    right = np.asarray(dirs["right"])
    behind = np.asarray(dirs["behind"])
    placed: list[dict] = []
    for _ in range(n):
        for _retry in range(cfg.max_retries):
            size_name = size_names[int(rng.integers(len(size_names)))]
            r = float(sizes[size_name])
            x, y = rng.uniform(-3.0, 3.0, size=2)
            ok = True
            for o in placed:
                dx, dy = x - o["3d_coords"][0], y - o["3d_coords"][1]
                if np.hypot(dx, dy) - r - o["_r"] < cfg.min_dist:
                    ok = False
                    break
                off = np.array([dx, dy, 0.0])
                if abs(off @ right) < cfg.margin or abs(off @ behind) < cfg.margin:
                    ok = False
                    break
            if ok:
                break
        else:
            return None
        if cfg.cogent:
            shape = shapes[int(rng.integers(len(shapes)))]
            allowed = COGENT[cfg.cogent].get(shape, tuple(colors))
            color = allowed[int(rng.integers(len(allowed)))]
        else:
            shape = shapes[int(rng.integers(len(shapes)))]
            color = colors[int(rng.integers(len(colors)))]
        theta = float(rng.uniform(0.0, 360.0))
        material = materials[int(rng.integers(len(materials)))]
        placed.append(
            {
                "shape": shape,
                "size": size_name,
                "material": material,
                "color": color,
                "3d_coords": [float(x), float(y), r],
                "rotation": theta,
                "_r": r,
            }
        )
    return placed


def sample_scene(
    domain: Domain, cfg: SceneConfig, rng: np.random.Generator, image_index: int, split: str, filename: str
) -> SampledScene:
    """Sample a valid scene (placement + visibility) and its CLEVR record (masks and boxes added later)."""
    dirs = _directions()
    app = domain.appearance
    for _attempt in range(cfg.max_attempts):
        camera = clevr_camera(rng)
        lamps = tuple(clevr_lamps(rng))
        placed = _place(domain, cfg, rng, dirs)
        if placed is None:
            continue
        # The stored "rotation" is in degrees but, as in CLEVR's renders, applied as radians.
        objs = tuple(
            RenderObject(
                shape=str(app["shape"][o["shape"]]),
                center=tuple(o["3d_coords"]),
                size=o["_r"],
                rotation=o["rotation"],
                color=tuple(c / 255.0 for c in app["color"][o["color"]]),
                material=str(app["material"][o["material"]]),
            )
            for o in placed
        )
        ids = render_ids(objs, camera, cfg.width, cfg.height)
        counts = np.bincount(ids[ids >= 0].ravel(), minlength=len(objs))
        if len(counts) != len(objs) or counts.min() < cfg.min_pixels:
            continue
        coords = np.array([o["3d_coords"] for o in placed])
        pix = project(camera, coords, cfg.width, cfg.height)
        objects = []
        for o, p in zip(placed, pix):
            d = {k: v for k, v in o.items() if k != "_r"}
            d["pixel_coords"] = [int(p[0]), int(p[1]), float(p[2])]
            objects.append(d)
        record = {
            "image_index": image_index,
            "image_filename": filename,
            "split": split,
            "objects": objects,
            "relationships": compute_relationships(coords, dirs),
            "directions": dirs,
        }
        return SampledScene(record, objs, camera, lamps, ids)
    raise RuntimeError(
        f"could not place a visible scene in {cfg.max_attempts} attempts; relax the object count"
    )
