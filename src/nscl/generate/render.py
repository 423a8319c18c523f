"""Analytic, vectorised NumPy ray caster for CLEVR-like scenes.

Renders spheres, cylinders (flat caps) and z-rotated cubes resting on a grey studio floor that curves
up into a backdrop behind the objects, lit by three area lamps (key, fill, back) with soft stochastic
shadows plus an ambient term. Rubber is matte Lambertian with a faint Fresnel sheen; metal is a tinted,
slightly blurred one-bounce mirror with GGX highlights. Cube and cylinder edges get a cheap normal
bevel (the silhouette stays the exact box / cylinder, so the object-id buffer matches the image).

Everything is vectorised over rays. Vectors are stored component-first: an array of shape (3, ...)
holds x, y, z in rows 0, 1, 2, which keeps NumPy's element-wise work contiguous. Each object is only
intersected with the rays inside its projected screen rectangle, and shadow rays are only cast for
shading points inside a conservative screen-space bound of each (lamp, object) shadow volume.

Dimension key: H, W image size in pixels; S supersampling factor; h, w a band of the (H*S, W*S)
subsample grid; N, M flat ray counts; K shadow samples per lamp.

Conventions (CLEVR / Blender): z-up world, camera aimed at ``look_at`` with world z as up, horizontal
focal length ``max(W, H) * lens_mm / sensor_mm`` pixels (Blender's auto sensor fit), pixel (i, j) covers
x in [i, i+1) from the left and y in [j, j+1) from the top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]

__all__ = [
    "BASE_CAMERA_POSITION",
    "Camera",
    "Lamp",
    "RenderObject",
    "RenderResult",
    "clevr_camera",
    "clevr_lamps",
    "ground_directions",
    "project",
    "render",
    "render_ids",
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

_SHAPES = ("sphere", "cube", "cylinder")
_MATERIALS = ("rubber", "metal")

# ---- look parameters (tuned against the real CLEVR samples) -------------------------------------------
_GROUND_ALBEDO = 0.8  # Blender's default grey diffuse
_BACKDROP_START = 7.0  # distance behind the origin (along the camera's ground view direction) where
_BACKDROP_RADIUS = 8.0  # the floor starts curving up (quarter cylinder of this radius) into a wall
_EXPOSURE = 0.07  # linear radiance scale applied before the sRGB transfer curve
_AMBIENT = 2.3  # ambient irradiance on an up-facing surface (multi-bounce studio light), lamp units
_AMBIENT_TILT = 0.3  # object ambient falls by this fraction from up- to side-facing, twice that facing down
_ENV_RADIANCE = 2.6  # typical radiance of the surroundings, seen by the rubber sheen
_RUBBER_F0 = 0.04  # Fresnel reflectance of the rubber sheen at normal incidence
_RUBBER_GLOSS_ALPHA = 0.35  # GGX alpha of the rubber sheen highlight
_RUBBER_SHEEN = 0.3  # scales the Fresnel weight of the sheen (keeps silhouettes from glowing)
_METAL_ALPHAS = ((0.6, 0.04), (0.4, 0.2))  # (weight, GGX alpha) lobes of the metal highlight
_METAL_BLUR = 0.04  # std-dev of the jitter of the metal reflection direction (blurred mirror)
_METAL_RAYS = 4  # jittered reflection rays per metal shading point
_METAL_DIFFUSE = 0.08  # small diffuse share of metal (Blender's blurred glossy is never pure mirror)
_ESCAPE_RADIANCE = 0.4  # radiance seen by reflection rays that leave the scene (near-black world)
_AO_STRENGTH = 0.9  # how much of the ambient an object resting on the floor removes right under it
_AO_SCALE_CUBE = 1.15  # occluding-sphere radius of a cube relative to its half-side
_BEVEL = 0.12  # cube / cylinder edge bevel radius as a fraction of the object size
_SHADOW_EPS = 1e-4  # shadow rays ignore hits at parameter t < eps (segment from point to lamp is t=0..1)
_MAX_RAYS_PER_BAND = 1 << 20


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


@dataclass(frozen=True)
class RenderObject:
    """One CLEVR object.

    ``shape`` is "cube", "sphere" or "cylinder"; ``center`` is (x, y, z) with z = size (resting on the
    floor); ``size`` is the half extent (cube half-side, sphere radius, cylinder radius and half-height);
    ``rotation`` is in radians about +z; ``color`` is linear RGB in [0, 1]; ``material`` is "rubber" or
    "metal".
    """

    shape: str
    center: Vec3
    size: float
    rotation: float
    color: Vec3
    material: str


@dataclass(frozen=True)
class RenderResult:
    """Rendered image and per-pixel object ids.

    Attributes:
        image: (np.ndarray[H, W, 3], uint8) sRGB image.
        object_ids: (np.ndarray[H, W], int16) index into the object list of the object hit by the
            pixel-centre primary ray, -1 for floor / backdrop / background. Not antialiased; uses the
            same geometry as the image.
    """

    image: np.ndarray
    object_ids: np.ndarray


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


# ---- geometry ------------------------------------------------------------------------------------------

_SPHERE, _CUBE, _CYLINDER = 0, 1, 2


@dataclass(frozen=True, eq=False)
class _Geom:
    kind: int
    cx: float
    cy: float
    cz: float
    size: float
    cos: float
    sin: float
    bevel: float
    bound: float  # bounding-sphere radius about the centre
    color: np.ndarray  # (3,) float32
    metal: bool


def _geoms(objects: Sequence[RenderObject]) -> list[_Geom]:
    out = []
    for o in objects:
        if o.shape not in _SHAPES:
            raise ValueError(f"unknown shape {o.shape!r}; expected one of {_SHAPES}")
        if o.material not in _MATERIALS:
            raise ValueError(f"unknown material {o.material!r}; expected one of {_MATERIALS}")
        if not o.size > 0:
            raise ValueError(f"object size must be positive, got {o.size}")
        kind = _SHAPES.index(o.shape)
        s = float(o.size)
        bound = {_SPHERE: s, _CUBE: s * math.sqrt(3.0), _CYLINDER: s * math.sqrt(2.0)}[kind]
        out.append(
            _Geom(
                kind=kind,
                cx=float(o.center[0]),
                cy=float(o.center[1]),
                cz=float(o.center[2]),
                size=s,
                cos=math.cos(o.rotation),
                sin=math.sin(o.rotation),
                bevel=_BEVEL * s,
                bound=bound * 1.001,
                color=np.asarray(o.color, dtype=np.float32),
                metal=o.material == "metal",
            )
        )
    return out


def _aabb_corners(g: _Geom) -> np.ndarray:
    """(8, 3) corners of the object's axis-aligned bounding box."""
    ext = g.size * (abs(g.cos) + abs(g.sin)) if g.kind == _CUBE else g.size
    sx = np.array([-ext, ext])
    sz = np.array([-g.size, g.size])
    c = np.array(np.meshgrid(sx, sx, sz, indexing="ij")).reshape(3, -1).T
    return c + np.array([g.cx, g.cy, g.cz])


def _intersect(g: _Geom, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
    """Ray parameter of the first hit with t > tmin (rays starting outside the object), else inf.

    Args:
        o: (np.ndarray[3, ...]) ray origins (broadcastable against ``d``).
        d: (np.ndarray[3, ...]) ray directions (need not be unit length).

    Returns:
        (np.ndarray[...], float32) t.
    """
    qx, qy, qz = o[0] - g.cx, o[1] - g.cy, o[2] - g.cz
    dx, dy, dz = d[0], d[1], d[2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if g.kind == _SPHERE:
            a = dx * dx + dy * dy + dz * dz
            b = qx * dx + qy * dy + qz * dz
            c = qx * qx + qy * qy + qz * qz - g.size * g.size
            disc = b * b - a * c
            t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
            ok = (disc >= 0) & (t > tmin)
        elif g.kind == _CUBE:
            h = g.size
            # rotate into the cube frame (by -rotation about z)
            lx, ly = g.cos * qx + g.sin * qy, -g.sin * qx + g.cos * qy
            ex, ey = g.cos * dx + g.sin * dy, -g.sin * dx + g.cos * dy
            tnear = tfar = None
            for oc, dc in ((lx, ex), (ly, ey), (qz, dz)):
                inv = 1.0 / np.where(np.abs(dc) < 1e-12, 1e-12, dc)
                t1, t2 = (-h - oc) * inv, (h - oc) * inv
                lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
                tnear = lo if tnear is None else np.maximum(tnear, lo)
                tfar = hi if tfar is None else np.minimum(tfar, hi)
            t = tnear
            ok = (tnear <= tfar) & (tnear > tmin)
        else:  # cylinder, axis z
            r, h = g.size, g.size
            a = dx * dx + dy * dy
            b = qx * dx + qy * dy
            c = qx * qx + qy * qy - r * r
            disc = b * b - a * c
            sq = np.sqrt(np.maximum(disc, 0.0))
            vertical = a < 1e-12
            a_safe = np.where(vertical, 1.0, a)
            ts0 = np.where(vertical, -np.inf, (-b - sq) / a_safe)
            ts1 = np.where(vertical, np.inf, (-b + sq) / a_safe)
            inv = 1.0 / np.where(np.abs(dz) < 1e-12, 1e-12, dz)
            t1, t2 = (-h - qz) * inv, (h - qz) * inv
            tnear = np.maximum(ts0, np.minimum(t1, t2))
            tfar = np.minimum(ts1, np.maximum(t1, t2))
            side_ok = np.where(vertical, c <= 0, disc >= 0)
            t = tnear
            ok = side_ok & (tnear <= tfar) & (tnear > tmin)
    return np.where(ok, t, np.float32(np.inf)).astype(np.float32, copy=False)


def _normal(g: _Geom, p: np.ndarray) -> np.ndarray:
    """(np.ndarray[3, M]) unit outward normals at surface points ``p`` (3, M), with edge bevels."""
    px, py, pz = p[0] - g.cx, p[1] - g.cy, p[2] - g.cz
    if g.kind == _SPHERE:
        n = np.stack([px, py, pz])
    elif g.kind == _CUBE:
        inner = g.size - g.bevel
        lx, ly = g.cos * px + g.sin * py, -g.sin * px + g.cos * py
        qx = np.sign(lx) * np.maximum(np.abs(lx) - inner, 0.0)
        qy = np.sign(ly) * np.maximum(np.abs(ly) - inner, 0.0)
        qz = np.sign(pz) * np.maximum(np.abs(pz) - inner, 0.0)
        n = np.stack([g.cos * qx - g.sin * qy, g.sin * qx + g.cos * qy, qz])
    else:
        inner = g.size - g.bevel
        rad = np.sqrt(px * px + py * py)
        qr = np.maximum(rad - inner, 0.0) / np.maximum(rad, 1e-12)
        qz = np.sign(pz) * np.maximum(np.abs(pz) - inner, 0.0)
        n = np.stack([px * qr, py * qr, qz])
    return n / np.maximum(np.sqrt((n * n).sum(0)), 1e-12)


@dataclass(frozen=True, eq=False)
class _Backdrop:
    """Floor z=0 for s < s0, quarter cylinder (axis horizontal, radius R) for s0 <= s <= s0+R, then a
    vertical wall at s = s0+R, where s is the coordinate along the horizontal unit vector (bx, by)."""

    bx: float
    by: float
    s0: float
    radius: float

    @staticmethod
    def for_camera(camera: Camera) -> _Backdrop:
        behind = ground_directions(camera)["behind"]
        if abs(behind[0]) + abs(behind[1]) < 1e-9:
            behind = [0.0, 1.0, 0.0]
        return _Backdrop(behind[0], behind[1], _BACKDROP_START, _BACKDROP_RADIUS)

    def intersect(self, o: np.ndarray, d: np.ndarray, tmin: float) -> np.ndarray:
        """(np.ndarray[...], float32) first hit t > tmin of rays (3, ...) from inside the room, else inf."""
        s0, rr = self.s0, self.radius
        so = o[0] * self.bx + o[1] * self.by
        ds = d[0] * self.bx + d[1] * self.by
        oz, dz = o[2], d[2]
        inf = np.float32(np.inf)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            tf = -oz / dz
            tf = np.where((dz < 0) & (tf > tmin) & (so + tf * ds <= s0), tf, inf)
            qs, qz = so - s0, oz - rr
            a = ds * ds + dz * dz
            b = qs * ds + qz * dz
            c = qs * qs + qz * qz - rr * rr
            disc = b * b - a * c
            ta = (-b + np.sqrt(np.maximum(disc, 0.0))) / a  # exit of the circle = the concave arc
            sa, za = so + ta * ds, oz + ta * dz
            ta = np.where((disc >= 0) & (ta > tmin) & (sa >= s0) & (sa <= s0 + rr) & (za <= rr), ta, inf)
            tw = (s0 + rr - so) / ds
            tw = np.where((ds > 0) & (tw > tmin) & (oz + tw * dz >= rr), tw, inf)
        return np.minimum(np.minimum(tf, ta), tw).astype(np.float32, copy=False)

    def normal(self, p: np.ndarray) -> np.ndarray:
        """(np.ndarray[3, ...]) unit normals (into the room) at surface points ``p`` (3, ...)."""
        s = p[0] * self.bx + p[1] * self.by
        sc = np.clip(s, self.s0, self.s0 + self.radius)
        zc = np.minimum(p[2], self.radius)
        ns = (self.s0 - sc) / self.radius
        nz = (self.radius - zc) / self.radius
        n = np.stack([ns * self.bx, ns * self.by, nz])
        return n / np.maximum(np.sqrt((n * n).sum(0)), 1e-12)


# ---- primary rays --------------------------------------------------------------------------------------


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


def _trace_primary(
    geoms: list[_Geom],
    rects: list[tuple[int, int, int, int]],
    origin: np.ndarray,
    d: np.ndarray,
    rows: tuple[int, int],
    backdrop: _Backdrop | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hits of camera rays ``d`` (3, h, w).

    Returns:
        t (np.ndarray[h, w], float32; inf for no hit) and ids (np.ndarray[h, w], int16; -1 = no object).
    """
    o = origin.reshape(3, 1, 1)
    if backdrop is None:
        t = np.full(d.shape[1:], np.inf, dtype=np.float32)
    else:
        t = backdrop.intersect(o, d, 0.0)
    ids = np.full(d.shape[1:], -1, dtype=np.int16)
    for k, (g, rect) in enumerate(zip(geoms, rects)):
        r = _clip_rows(rect, *rows)
        if r is None:
            continue
        y0, y1, x0, x1 = r
        tk = _intersect(g, o, d[:, y0:y1, x0:x1], 0.0)
        t_view, id_view = t[y0:y1, x0:x1], ids[y0:y1, x0:x1]
        closer = tk < t_view
        np.copyto(t_view, tk, where=closer)
        id_view[closer] = k
    return t, ids


def _object_rects(
    geoms: list[_Geom], camera: Camera, width: int, height: int, ss: int
) -> list[tuple[int, int, int, int]]:
    return [_grid_rect(camera, _aabb_corners(g), width, height, ss) for g in geoms]


def render_ids(objects: Sequence[RenderObject], camera: Camera, width: int, height: int) -> np.ndarray:
    """Object-id buffer only (cheap; for visibility checks before full rendering).

    Returns:
        (np.ndarray[H, W], int16) index of the object hit by each pixel-centre ray, -1 elsewhere;
        identical to ``render(...).object_ids``.
    """
    geoms = _geoms(objects)
    ids = np.full((height, width), -1, dtype=np.int16)
    if not geoms:
        return ids
    origin = _basis(camera).pos.astype(np.float32)
    rects = _object_rects(geoms, camera, width, height, 1)
    y_lo = min(r[0] for r in rects)
    y_hi = max(r[1] for r in rects)
    step = max(1, _MAX_RAYS_PER_BAND // max(width, 1))
    for r0 in range(y_lo, y_hi, step):
        r1 = min(y_hi, r0 + step)
        d = _ray_dirs(camera, width, height, 1, (r0, r1))
        _, ids[r0:r1] = _trace_primary(geoms, rects, origin, d, (r0, r1), None)
    return ids


# ---- shading -------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _LampData:
    pos: np.ndarray  # (3,) float32
    normal: np.ndarray  # (3,) unit, lamp -> origin
    e1: np.ndarray  # (3,) disk tangent
    e2: np.ndarray  # (3,) disk tangent
    radius: float
    intensity: float
    color: np.ndarray  # (3,) float32


def _lamp_data(lamp: Lamp) -> _LampData:
    pos = np.asarray(lamp.position, dtype=np.float64)
    nrm = -pos / max(np.linalg.norm(pos), 1e-12)
    helper = np.array([0.0, 0.0, 1.0]) if abs(nrm[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(nrm, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(nrm, e1)
    f32 = np.float32
    return _LampData(
        pos.astype(f32),
        nrm.astype(f32),
        e1.astype(f32),
        e2.astype(f32),
        float(lamp.radius),
        float(lamp.intensity),
        np.asarray(lamp.color, dtype=f32),
    )


def _lamp_geometry(ld: _LampData, p: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    """Unit direction l (3, ...) to the lamp centre, n.l, and unshadowed irradiance without the n.l term."""
    lx, ly, lz = ld.pos[0] - p[0], ld.pos[1] - p[1], ld.pos[2] - p[2]
    d2 = lx * lx + ly * ly + lz * lz
    inv = 1.0 / np.sqrt(d2)
    lx, ly, lz = lx * inv, ly * inv, lz * inv
    cos_lamp = np.maximum(-(ld.normal[0] * lx + ld.normal[1] * ly + ld.normal[2] * lz), 0.0)
    ndl = n[0] * lx + n[1] * ly + n[2] * lz
    return np.stack([lx, ly, lz]), ndl, ld.intensity * cos_lamp / d2


def _highlight(
    n: np.ndarray,
    v: np.ndarray,
    l: np.ndarray,
    lobes: tuple[tuple[float, float], ...],
    spread: np.ndarray | None,
) -> np.ndarray:
    """GGX highlight factor (M,) for unit normals, view and light directions (3, M): sum over
    (weight, alpha) lobes of w * D(n.h) * n.l / (4 (l.h)^2) (Kelemen's visibility approximation).
    ``spread`` (M,) widens alpha by the lamp's angular size."""
    h = l + v
    h /= np.maximum(np.sqrt((h * h).sum(0)), 1e-6)
    ndh = np.clip((n * h).sum(0), 0.0, 1.0)
    ndl = np.maximum((n * l).sum(0), 0.0)
    ldh = (l * h).sum(0)
    out = np.zeros_like(ndh)
    for w, alpha in lobes:
        a2 = alpha * alpha if spread is None else alpha * alpha + spread * spread
        den = ndh * ndh * (a2 - 1.0) + 1.0
        out += w * a2 / (math.pi * den * den)
    return out * ndl / (4.0 * np.maximum(ldh * ldh, 0.1))


def _floor_rects(
    geoms: list[_Geom], camera: Camera, width: int, height: int, ss: int
) -> list[tuple[int, int, int, int]]:
    """Per object, a grid rect covering the floor disk where its ambient occlusion is noticeable."""
    out = []
    for g in geoms:
        rad = _ao_reach(g)
        sq = np.array([[g.cx + sx * rad, g.cy + sy * rad, 0.0] for sx in (-1, 1) for sy in (-1, 1)])
        out.append(_grid_rect(camera, np.concatenate([sq, _aabb_corners(g)]), width, height, ss))
    return out


def _ao_radius(g: _Geom) -> float:
    return g.size * (_AO_SCALE_CUBE if g.kind == _CUBE else 1.0)


def _ao_reach(g: _Geom) -> float:
    """Horizontal distance beyond which the floor occlusion cz r^2 / d^3 drops below 1 %."""
    r = _ao_radius(g)
    return (g.cz * r * r / 0.01) ** (1.0 / 3.0)


def _floor_occlusion(
    geoms: list[_Geom],
    rects: list[tuple[int, int, int, int]],
    rows: tuple[int, int],
    p: np.ndarray,
    n: np.ndarray,
    ids: np.ndarray,
) -> np.ndarray:
    """(np.ndarray[h, w]) ambient visibility of floor / backdrop points: each object acts as a sphere
    occluding cos * r^2 / d^2 of the cosine-weighted hemisphere (contact darkening)."""
    vis = np.ones(ids.shape, dtype=np.float32)
    for g, rect in zip(geoms, rects):
        r = _clip_rows(rect, *rows)
        if r is None:
            continue
        y0, y1, x0, x1 = r
        pr, nr = p[:, y0:y1, x0:x1], n[:, y0:y1, x0:x1]
        qx, qy, qz = g.cx - pr[0], g.cy - pr[1], g.cz - pr[2]
        d2 = qx * qx + qy * qy + qz * qz
        cos = np.maximum(nr[0] * qx + nr[1] * qy + nr[2] * qz, 0.0) / np.sqrt(d2)
        ao = np.minimum(cos * (_ao_radius(g) ** 2) / d2, 1.0) * _AO_STRENGTH
        occ = np.where(ids[y0:y1, x0:x1] < 0, 1.0 - ao, 1.0)
        vis[y0:y1, x0:x1] *= occ
    return vis


def _ambient(n: np.ndarray) -> np.ndarray:
    """(np.ndarray[...]) ambient irradiance on objects for unit normals (3, ...): full facing up, less
    facing sideways and least facing down (the floor around an object is partly in its shadow)."""
    return _AMBIENT * ((1.0 - _AMBIENT_TILT) + _AMBIENT_TILT * n[2])


def _shadow_rects(
    geoms: list[_Geom], lamps: list[_LampData], camera: Camera, width: int, height: int, ss: int
) -> list[list[tuple[int, int, int, int]]]:
    """Per lamp, per object: a grid rect containing every point that the object can shadow from the lamp.

    The shadow volume above the floor lies in the convex hull of the object's box corners and their
    central projections onto z = 0 from the corners of the lamp's bounding box.
    """
    gh, gw = height * ss, width * ss
    out = []
    for ld in lamps:
        lc = ld.pos.astype(np.float64)
        lamp_corners = (
            lc + ld.radius * np.array(np.meshgrid(*([[-1.0, 1.0]] * 3), indexing="ij")).reshape(3, -1).T
        )
        per_obj = []
        for g in geoms:
            corners = _aabb_corners(g)  # (8, 3)
            if lamp_corners[:, 2].min() <= corners[:, 2].max() + 1e-3:
                per_obj.append((0, gh, 0, gw))
                continue
            lz = lamp_corners[:, None, :]  # (8, 1, 3)
            oc = corners[None, :, :]  # (1, 8, 3)
            s = oc[..., 2:3] / (lz[..., 2:3] - oc[..., 2:3])
            proj = (oc + s * (oc - lz)).reshape(-1, 3)
            proj[:, 2] = 0.0
            per_obj.append(_grid_rect(camera, np.concatenate([corners, proj]), width, height, ss))
        out.append(per_obj)
    return out


def _disk_pattern(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified unit-disk pattern (golden-angle spiral): radii and angles, each (K,)."""
    i = np.arange(k, dtype=np.float64)
    return np.sqrt((i + 0.5) / k).astype(np.float32), (i * math.pi * (3.0 - math.sqrt(5.0))).astype(
        np.float32
    )


def _shadow_visibility(
    geoms: list[_Geom],
    ld: _LampData,
    rects: list[tuple[int, int, int, int]],
    rows: tuple[int, int],
    p: np.ndarray,
    ids: np.ndarray,
    lit: np.ndarray,
    theta: np.ndarray,
    n_samples: int,
) -> np.ndarray | None:
    """Fraction of the lamp disk visible from each shading point, (h, w) float32; None if fully visible.

    Args:
        p: (np.ndarray[3, h, w]) shading points; ids: (h, w) object ids there;
        lit: (h, w) bool, points facing the lamp (others need no shadow test);
        theta: (h, w) per-point random rotation of the stratified disk pattern.
    """
    blocked = None
    rho, phi = _disk_pattern(n_samples)
    for k, (g, rect) in enumerate(zip(geoms, rects)):
        r = _clip_rows(rect, *rows)
        if r is None:
            continue
        y0, y1, x0, x1 = r
        pr = p[:, y0:y1, x0:x1]
        # cone test against the bounding sphere: distance from the centre to the segment point -> lamp
        wx, wy, wz = ld.pos[0] - pr[0], ld.pos[1] - pr[1], ld.pos[2] - pr[2]
        qx, qy, qz = g.cx - pr[0], g.cy - pr[1], g.cz - pr[2]
        s = np.clip((qx * wx + qy * wy + qz * wz) / (wx * wx + wy * wy + wz * wz), 0.0, 1.0)
        ex, ey, ez = qx - s * wx, qy - s * wy, qz - s * wz
        lim = g.bound + ld.radius
        cand = (ex * ex + ey * ey + ez * ez < lim * lim) & lit[y0:y1, x0:x1] & (ids[y0:y1, x0:x1] != k)
        if not cand.any():
            continue
        pc = pr[:, cand]  # (3, M)
        ang = theta[y0:y1, x0:x1][cand][:, None] + phi[None, :]  # (M, K)
        cx, sx = np.cos(ang) * rho, np.sin(ang) * rho
        tgt = ld.pos[:, None, None] + ld.radius * (ld.e1[:, None, None] * cx + ld.e2[:, None, None] * sx)
        hit = _intersect(g, pc[:, :, None], tgt - pc[:, :, None], _SHADOW_EPS) < 1.0  # (M, K)
        if blocked is None:
            blocked = np.zeros((n_samples,) + p.shape[1:], dtype=bool)  # (K, h, w)
        view = blocked[:, y0:y1, x0:x1]
        view[:, cand] |= hit.T
    if blocked is None:
        return None
    return 1.0 - blocked.sum(0, dtype=np.float32) * np.float32(1.0 / n_samples)


def _surface(
    geoms: list[_Geom], backdrop: _Backdrop, p: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normals (3, ...), albedo (3, ...) and metal mask (...) at hit points ``p`` (3, ...) with ids (...)."""
    n = backdrop.normal(p)
    albedo = np.full(p.shape, _GROUND_ALBEDO, dtype=np.float32)
    metal = np.zeros(p.shape[1:], dtype=bool)
    for k, g in enumerate(geoms):
        m = ids == k
        if not m.any():
            continue
        n[:, m] = _normal(g, p[:, m])
        albedo[:, m] = g.color[:, None]
        metal[m] = g.metal
    return n.astype(np.float32, copy=False), albedo, metal


def _reflection_radiance(
    geoms: list[_Geom],
    lamps: list[_LampData],
    backdrop: _Backdrop,
    o: np.ndarray,
    r: np.ndarray,
    self_ids: np.ndarray,
) -> np.ndarray:
    """(np.ndarray[3, M]) radiance seen along reflection rays ``r`` (3, M) from ``o`` (3, M); one bounce,
    unshadowed direct light plus ambient at the hit; metal hits use an ambient-only estimate."""
    t = backdrop.intersect(o, r, 1e-4)
    ids = np.full(t.shape, -1, dtype=np.int16)
    for k, g in enumerate(geoms):
        # bounding-sphere prefilter
        qx, qy, qz = g.cx - o[0], g.cy - o[1], g.cz - o[2]
        b = qx * r[0] + qy * r[1] + qz * r[2]
        dist2 = qx * qx + qy * qy + qz * qz - b * b
        cand = (dist2 < g.bound * g.bound) & (b > -g.bound) & (self_ids != k)
        if not cand.any():
            continue
        tk = _intersect(g, o[:, cand], r[:, cand], 1e-4)
        closer = tk < t[cand]
        idx = np.flatnonzero(cand)[closer]
        t[idx] = tk[closer]
        ids[idx] = k
    rad = np.zeros(r.shape, dtype=np.float32)
    hit = np.isfinite(t)
    rad[:, ~hit] = _ESCAPE_RADIANCE
    if not hit.any():
        return rad
    hp = o[:, hit] + t[hit] * r[:, hit]
    hid = ids[hit]
    n, albedo, metal = _surface(geoms, backdrop, hp, hid)
    irr = np.zeros(hp.shape, dtype=np.float32)
    for ld in lamps:
        _, ndl, e = _lamp_geometry(ld, hp, n)
        irr += ld.color[:, None] * (e * np.maximum(ndl, 0.0))
    irr = np.where(metal, 0.8 * _ambient(n) + 0.3 * irr, irr + _ambient(n))
    rad[:, hit] = albedo * irr
    return rad


def _blurred_mirror(
    geoms: list[_Geom],
    lamps: list[_LampData],
    backdrop: _Backdrop,
    p: np.ndarray,
    n: np.ndarray,
    d: np.ndarray,
    self_ids: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(np.ndarray[3, M]) mean radiance of ``_METAL_RAYS`` jittered mirror reflections of the view rays
    ``d`` (3, M) at metal points ``p`` with normals ``n`` (3, M)."""
    m, k = d.shape[1], _METAL_RAYS
    refl = d - 2 * (d * n).sum(0) * n  # (3, M)
    refl = refl[:, :, None] + _METAL_BLUR * rng.standard_normal((3, m, k), dtype=np.float32)  # (3, M, R)
    nk = n[:, :, None]
    below = (refl * nk).sum(0)
    refl = np.where(below < 0.02, refl - (2 * below - 0.02) * nk, refl)  # keep above the surface
    refl /= np.sqrt((refl * refl).sum(0))
    o = np.broadcast_to((p + 2e-4 * n)[:, :, None], refl.shape).reshape(3, -1)
    ids = np.broadcast_to(self_ids[:, None], (m, k)).reshape(-1)
    rad = _reflection_radiance(geoms, lamps, backdrop, o, refl.reshape(3, -1), ids)
    return rad.reshape(3, m, k).mean(-1)


def _shade_band(
    geoms: list[_Geom],
    lamps: list[_LampData],
    backdrop: _Backdrop,
    origin: np.ndarray,
    d: np.ndarray,
    t: np.ndarray,
    ids: np.ndarray,
    shadow_rects: list[list[tuple[int, int, int, int]]],
    ao_rects: list[tuple[int, int, int, int]],
    rows: tuple[int, int],
    n_samples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(np.ndarray[3, h, w], float32) linear radiance of the primary hits of one band."""
    hit = np.isfinite(t)
    t0 = np.where(hit, t, 0.0)
    p = origin.reshape(3, 1, 1) + t0 * d  # (3, h, w)
    n, albedo, metal = _surface(geoms, backdrop, p, ids)  # (3, h, w), (3, h, w), (h, w)
    theta = rng.random(t.shape, dtype=np.float32) * np.float32(2 * math.pi)

    # direct light (diffuse irradiance) and per-lamp data kept for the highlights
    irr = np.zeros(p.shape, dtype=np.float32)
    per_lamp = []
    for li, ld in enumerate(lamps):
        ldir, ndl, e = _lamp_geometry(ld, p, n)
        lit = (ndl > -0.05) & hit
        vis = None
        if n_samples > 0:
            rot = theta + np.float32(li * 2.399963)
            vis = _shadow_visibility(geoms, ld, shadow_rects[li], rows, p, ids, lit, rot, n_samples)
        if vis is not None:
            e = e * vis
        per_lamp.append((ld, ldir, e))
        irr += ld.color[:, None, None] * (e * np.maximum(ndl, 0.0))

    amb = np.where(ids >= 0, _ambient(n), np.float32(_AMBIENT))
    amb = amb * _floor_occlusion(geoms, ao_rects, rows, p, n, ids)
    view = -d
    # rubber / floor: Lambert, plus a faint Fresnel-weighted grey sheen on objects
    rad = albedo * (irr + amb)
    obj = (ids >= 0) & ~metal
    if obj.any():
        nn, vv = n[:, obj], view[:, obj]
        ndv = np.clip((nn * vv).sum(0), 0.0, 1.0)
        fres = _RUBBER_F0 + (1 - _RUBBER_F0) * (1 - ndv) ** 5
        gloss = np.full(nn.shape, 0.8 * _ENV_RADIANCE, dtype=np.float32)
        for ld, ldir, e in per_lamp:
            lobe = _highlight(nn, vv, ldir[:, obj], ((1.0, _RUBBER_GLOSS_ALPHA),), None)
            gloss += 0.8 * ld.color[:, None] * (e[obj] * lobe)
        fres = fres * _RUBBER_SHEEN
        rad[:, obj] = (1 - fres) * rad[:, obj] + fres * gloss

    # metal: tinted, slightly blurred one-bounce mirror plus GGX highlights
    if metal.any():
        nm, vm, dm, pm = n[:, metal], view[:, metal], d[:, metal], p[:, metal]
        mirror = _blurred_mirror(geoms, lamps, backdrop, pm, nm, dm, ids[metal], rng)
        spec = np.zeros(nm.shape, dtype=np.float32)
        for ld, ldir, e in per_lamp:
            spread = 0.5 * ld.radius / np.sqrt(((ld.pos[:, None] - pm) ** 2).sum(0))  # lamp's angular size
            spec += ld.color[:, None] * (e[metal] * _highlight(nm, vm, ldir[:, metal], _METAL_ALPHAS, spread))
        diffuse = irr[:, metal] + amb[metal]
        rad[:, metal] = albedo[:, metal] * ((1 - _METAL_DIFFUSE) * (mirror + spec) + _METAL_DIFFUSE * diffuse)

    rad[:, ~hit] = 0.0
    return rad


def _to_srgb8(lin: np.ndarray) -> np.ndarray:
    """Linear radiance (..., 3) -> uint8 sRGB."""
    x = np.clip(lin * np.float32(_EXPOSURE), 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, np.float32(1 / 2.4)) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def render(
    objects: Sequence[RenderObject],
    camera: Camera,
    lamps: Sequence[Lamp],
    width: int,
    height: int,
    *,
    supersample: int = 2,
    shadow_samples: int = 8,
    seed: int = 0,
) -> RenderResult:
    """Render a CLEVR-like scene.

    Args:
        objects: scene objects; their order defines the ids in ``object_ids``.
        lamps: area lamps (``clevr_lamps(rng)`` for CLEVR's three).
        supersample: S; S x S rays per pixel, box-filtered (antialiasing).
        shadow_samples: K; lamp-disk samples per shading point and lamp (0 disables shadows).
        seed: seeds the stochastic shadow / reflection samples; same inputs + seed -> same image.

    Returns:
        RenderResult with image (np.ndarray[H, W, 3], uint8) and object_ids (np.ndarray[H, W], int16).
    """
    if width <= 0 or height <= 0 or supersample <= 0 or shadow_samples < 0:
        raise ValueError("width, height and supersample must be positive and shadow_samples >= 0")
    geoms = _geoms(objects)
    lamp_data = [_lamp_data(lamp) for lamp in lamps]
    backdrop = _Backdrop.for_camera(camera)
    ss = supersample
    origin = _basis(camera).pos.astype(np.float32)
    rects = _object_rects(geoms, camera, width, height, ss)
    shadow_rects = _shadow_rects(geoms, lamp_data, camera, width, height, ss)
    ao_rects = _floor_rects(geoms, camera, width, height, ss)

    image = np.empty((height, width, 3), dtype=np.uint8)
    band_px = max(1, _MAX_RAYS_PER_BAND // (width * ss * ss))  # pixel rows per band
    for band, py0 in enumerate(range(0, height, band_px)):
        py1 = min(height, py0 + band_px)
        rows = (py0 * ss, py1 * ss)
        rng = np.random.default_rng([seed, band])
        d = _ray_dirs(camera, width, height, ss, rows)  # (3, h, w)
        t, ids = _trace_primary(geoms, rects, origin, d, rows, backdrop)
        rad = _shade_band(
            geoms, lamp_data, backdrop, origin, d, t, ids, shadow_rects, ao_rects, rows, shadow_samples, rng
        )
        h = py1 - py0
        lin = rad.reshape(3, h, ss, width, ss).mean(axis=(2, 4))  # (3, h, W)
        image[py0:py1] = _to_srgb8(np.moveaxis(lin, 0, -1))
    return RenderResult(image=image, object_ids=render_ids(objects, camera, width, height))
