"""Scene geometry of the CLEVR-like renderer: objects, the studio backdrop, ray intersections.

Owns the public :class:`RenderObject` (one CLEVR object: shape, centre, size, rotation, colour, material),
its validated internal form ``_Geom``, the analytic ray intersections and outward normals of spheres,
cylinders (flat caps) and z-rotated cubes (with a cheap normal bevel on cube and cylinder edges; the
silhouette stays the exact box / cylinder, so the object-id buffer matches the image), the grey studio
floor that curves up into a backdrop behind the objects, and the nearest-hit trace of primary rays, each
object intersected only with the rays inside its projected screen rectangle. Underscored names are
internal to the renderer's modules (camera, geometry, render).

Dimension key: h, w a band of the subsample grid; M flat ray counts. Vectors are stored component-first:
an array of shape (3, ...) holds x, y, z in rows 0, 1, 2, which keeps NumPy's element-wise work contiguous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .camera import Camera, Vec3, _clip_rows, _grid_rect, ground_directions

__all__ = ["RenderObject"]

_SHAPES = ("sphere", "cube", "cylinder")
_MATERIALS = ("rubber", "metal")

_BACKDROP_START = 7.0  # distance behind the origin (along the camera's ground view direction) where
_BACKDROP_RADIUS = 8.0  # the floor starts curving up (quarter cylinder of this radius) into a wall
_BEVEL = 0.12  # cube / cylinder edge bevel radius as a fraction of the object size


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
