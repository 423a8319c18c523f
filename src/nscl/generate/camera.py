"""Camera and lamps of the CLEVR-like renderer: presets with CLEVR's jitter, projection, primary-ray grid.

Owns the public :class:`Camera` and :class:`Lamp` descriptions, CLEVR's base camera and key / fill / back
lamps (``clevr_camera`` / ``clevr_lamps``, jittered per scene when given a generator), the projection of
world points to pixels (``project``, CLEVR's ``pixel_coords``), CLEVR's ground-plane ``directions``, and the
screen-space helpers the ray caster (:mod:`nscl.generate.render`) builds on: the camera basis, the unit
directions of the supersampled primary rays, and subsample-grid rectangles covering projected points.
Underscored names are internal to the renderer's modules (camera, geometry, render).

Dimension key: H, W image size in pixels; S supersampling factor; h, w a band of the (H*S, W*S)
subsample grid; K points. Vectors are stored component-first: an array of shape (3, ...) holds x, y, z in
rows 0, 1, 2.

Conventions (CLEVR / Blender): z-up world, camera aimed at ``look_at`` with world z as up, horizontal
focal length ``max(W, H) * lens_mm / sensor_mm`` pixels (Blender's auto sensor fit), pixel (i, j) covers
x in [i, i+1) from the left and y in [j, j+1) from the top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]

__all__ = [
    "BASE_CAMERA_POSITION",
    "Camera",
    "Lamp",
    "Vec3",
    "clevr_camera",
    "clevr_lamps",
    "ground_directions",
    "project",
]

BASE_CAMERA_POSITION: Vec3 = (7.4811, -6.5076, 5.3437)

# CLEVR base-scene lamps: (position, radius, intensity (Blender 3.4 watts), colour); key, fill, back.
_BASE_LAMPS: tuple[tuple[Vec3, float, float, Vec3], ...] = (
    ((6.4467, -2.9052, 4.2584), 0.5, 100.0, (1.0, 0.932, 0.817)),
    ((-4.6711, -4.0136, 3.0112), 0.5, 30.0, (0.762, 0.818, 1.0)),
    ((-1.1685, 2.646, 5.8157), 1.0, 50.0, (1.0, 1.0, 1.0)),
)
_CAMERA_JITTER = 0.5
_LAMP_JITTER = 1.0


# ---- public dataclasses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at ``position`` aimed at ``look_at``; world z is up.

    ``lens_mm`` / ``sensor_mm`` set the field of view; the sensor spans the larger image side
    (Blender's auto fit), so for landscape images the focal length is ``W * lens_mm / sensor_mm`` px.
    """

    position: Vec3
    look_at: Vec3 = (0.0, 0.0, 0.0)
    lens_mm: float = 35.0
    sensor_mm: float = 32.0


@dataclass(frozen=True)
class Lamp:
    """Disk area lamp facing the world origin.

    ``radius`` is the disk radius (world units), ``intensity`` a relative power (CLEVR: key 100, fill 30,
    back 50) and ``color`` a linear RGB tint.
    """

    position: Vec3
    radius: float
    intensity: float
    color: Vec3


# ---- scene presets -------------------------------------------------------------------------------------


def clevr_lamps(rng: np.random.Generator | None = None) -> tuple[Lamp, ...]:
    """CLEVR's key, fill and back lamps; each coordinate jittered by U(-1, 1) when ``rng`` is given."""
    lamps = []
    for pos, radius, intensity, color in _BASE_LAMPS:
        p = np.asarray(pos, dtype=np.float64)
        if rng is not None:
            p = p + rng.uniform(-_LAMP_JITTER, _LAMP_JITTER, size=3)
        lamps.append(Lamp(_vec3(p), radius, intensity, color))
    return tuple(lamps)


def clevr_camera(rng: np.random.Generator | None = None) -> Camera:
    """CLEVR's camera aimed at the origin; position jittered by U(-0.5, 0.5) per axis when ``rng`` given."""
    p = np.asarray(BASE_CAMERA_POSITION, dtype=np.float64)
    if rng is not None:
        p = p + rng.uniform(-_CAMERA_JITTER, _CAMERA_JITTER, size=3)
    return Camera(position=_vec3(p))


def _vec3(a: np.ndarray) -> Vec3:
    return (float(a[0]), float(a[1]), float(a[2]))


# ---- camera --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Basis:
    pos: np.ndarray  # (3,) float64
    right: np.ndarray  # (3,) camera +X
    up: np.ndarray  # (3,) camera +Y
    fwd: np.ndarray  # (3,) view direction (camera -Z)


def _basis(camera: Camera) -> _Basis:
    pos = np.asarray(camera.position, dtype=np.float64)
    fwd = np.asarray(camera.look_at, dtype=np.float64) - pos
    norm = np.linalg.norm(fwd)
    if norm < 1e-12:
        raise ValueError("camera position and look_at coincide")
    fwd = fwd / norm
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    if np.linalg.norm(right) < 1e-9:  # looking straight up or down: pick world +x as right
        right = np.array([1.0, 0.0, 0.0])
    right = right / np.linalg.norm(right)
    up = np.cross(right, fwd)
    return _Basis(pos, right, up, fwd)


def _focal_px(camera: Camera, width: int, height: int) -> float:
    return max(width, height) * camera.lens_mm / camera.sensor_mm


def _project_continuous(
    camera: Camera, points: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, 3) world points -> continuous pixel x, y (from the top) and view-axis depth, each (K,)."""
    b = _basis(camera)
    rel = np.asarray(points, dtype=np.float64).reshape(-1, 3) - b.pos  # (K, 3)
    xc, yc, depth = rel @ b.right, rel @ b.up, rel @ b.fwd
    f = _focal_px(camera, width, height)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = width / 2 + f * xc / depth
        y = height / 2 - f * yc / depth
    return x, y, depth


def project(
    camera: Camera, points: np.ndarray, width: int, height: int, *, round_pixels: bool = True
) -> np.ndarray:
    """Project world points to CLEVR ``pixel_coords``.

    Args:
        points: (np.ndarray[K, 3]) world coordinates.
        round_pixels: round x, y like CLEVR (``round(u*W)``, ``round(H - v*H)``); False keeps the
            continuous coordinates (pixel (i, j) spans [i, i+1) x [j, j+1)).

    Returns:
        (np.ndarray[K, 3], float64) columns x_px, y_px (from the top) and depth along the view axis.
    """
    x, y, depth = _project_continuous(camera, points, width, height)
    if round_pixels:
        x, y = np.round(x), np.round(y)
    return np.stack([x, y, depth], axis=-1)


def ground_directions(camera: Camera) -> dict[str, list[float]]:
    """CLEVR ``directions``: unit ground-plane vectors for the camera's view.

    behind = ground projection of the view direction (camera -Z), left = of camera -X, right and front
    their negations, above = +z, below = -z. For CLEVR's constants pass the un-jittered camera
    (``clevr_camera(None)``): the original generator reads the base orientation for every scene.
    """
    b = _basis(camera)

    def ground(v: np.ndarray) -> np.ndarray:
        g = np.array([v[0], v[1], 0.0])
        n = np.linalg.norm(g)
        return g / n if n > 1e-12 else g

    behind = ground(b.fwd)
    left = ground(-b.right)
    dirs = {
        "behind": behind,
        "front": -behind,
        "left": left,
        "right": -left,
        "above": np.array([0.0, 0.0, 1.0]),
        "below": np.array([0.0, 0.0, -1.0]),
    }
    return {k: [float(c) for c in v] for k, v in dirs.items()}


# ---- primary-ray grid ----------------------------------------------------------------------------------


def _ray_dirs(camera: Camera, width: int, height: int, ss: int, rows: tuple[int, int]) -> np.ndarray:
    """(np.ndarray[3, h, W*S], float32) unit directions through subsample centres of grid rows [r0, r1)."""
    b = _basis(camera)
    f = _focal_px(camera, width, height)
    xs = (np.arange(width * ss, dtype=np.float64) + 0.5) / ss
    ys = (np.arange(rows[0], rows[1], dtype=np.float64) + 0.5) / ss
    cx = ((xs - width / 2) / f)[None, :]  # (1, w)
    cy = ((height / 2 - ys) / f)[:, None]  # (h, 1)
    d = b.fwd[:, None, None] + b.right[:, None, None] * cx + b.up[:, None, None] * cy  # (3, h, w)
    d /= np.sqrt((d * d).sum(0))
    return d.astype(np.float32)


def _grid_rect(
    camera: Camera, pts: np.ndarray, width: int, height: int, ss: int
) -> tuple[int, int, int, int]:
    """Subsample-grid rectangle (y0, y1, x0, x1), end-exclusive, that covers the convex hull of ``pts``
    (K, 3) on screen; the whole grid if any point is not in front of the camera."""
    gw, gh = width * ss, height * ss
    x, y, depth = _project_continuous(camera, pts, width, height)
    if not np.all(depth > 1e-3) or not np.all(np.isfinite(x) & np.isfinite(y)):
        return 0, gh, 0, gw
    # subsample i has its centre at (i + 0.5) / ss pixels
    x0 = max(0, math.floor(x.min() * ss - 0.5) - 1)
    x1 = min(gw, math.ceil(x.max() * ss - 0.5) + 2)
    y0 = max(0, math.floor(y.min() * ss - 0.5) - 1)
    y1 = min(gh, math.ceil(y.max() * ss - 0.5) + 2)
    return y0, max(y0, y1), x0, max(x0, x1)


def _clip_rows(rect: tuple[int, int, int, int], r0: int, r1: int) -> tuple[int, int, int, int] | None:
    """Rect clipped to grid rows [r0, r1) and shifted to band coordinates; None if empty."""
    y0, y1, x0, x1 = rect
    y0, y1 = max(y0, r0) - r0, min(y1, r1) - r0
    if y1 <= y0 or x1 <= x0:
        return None
    return y0, y1, x0, x1
