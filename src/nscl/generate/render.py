"""Vectorised NumPy ray caster for CLEVR-like scenes: shading and the image / object-id entry points.

Renders the objects of :mod:`nscl.generate.geometry` (spheres, cylinders, z-rotated cubes on a studio floor
that curves up into a backdrop) seen by a :mod:`nscl.generate.camera` camera, lit by three area lamps (key,
fill, back) with soft stochastic shadows plus an ambient term. Rubber is matte Lambertian with a faint
Fresnel sheen; metal is a tinted, slightly blurred one-bounce mirror with GGX highlights. This module owns
the look parameters, the lamp precomputation, shadows, ambient occlusion, reflections, the sRGB output,
and the two entry points: ``render`` (supersampled image plus object ids) and ``render_ids`` (ids only).

Everything is vectorised over rays. Vectors are stored component-first: an array of shape (3, ...)
holds x, y, z in rows 0, 1, 2, which keeps NumPy's element-wise work contiguous. The image is traced in
bands of rows (at most ``_MAX_RAYS_PER_BAND`` rays each); each object is only intersected with the rays
inside its projected screen rectangle, and shadow rays are only cast for shading points inside a
conservative screen-space bound of each (lamp, object) shadow volume.

Dimension key: H, W image size in pixels; S supersampling factor; h, w a band of the (H*S, W*S)
subsample grid; N, M flat ray counts; K shadow samples per lamp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .camera import Camera, Lamp, _basis, _clip_rows, _grid_rect, _ray_dirs
from .geometry import (
    _CUBE,
    RenderObject,
    _aabb_corners,
    _Backdrop,
    _Geom,
    _geoms,
    _intersect,
    _normal,
    _object_rects,
    _trace_primary,
)

__all__ = ["RenderResult", "render", "render_ids"]

# ---- look parameters (tuned against the real CLEVR samples) -------------------------------------------
_GROUND_ALBEDO = 0.8  # Blender's default grey diffuse
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
_METAL_SPECULAR = (
    6.0  # scale of the lamps' GGX highlights on metal: benchmarks/look.py matches real CLEVR's metal
)
_METAL_DIFFUSE = 0.08  # small diffuse share of metal (Blender's blurred glossy is never pure mirror)
_ESCAPE_RADIANCE = 0.4  # radiance seen by reflection rays that leave the scene (near-black world)
_AO_STRENGTH = 0.9  # how much of the ambient an object resting on the floor removes right under it
_AO_SCALE_CUBE = 1.15  # occluding-sphere radius of a cube relative to its half-side
_SHADOW_EPS = 1e-4  # shadow rays ignore hits at parameter t < eps (segment from point to lamp is t=0..1)
_MAX_RAYS_PER_BAND = 1 << 20


# ---- public dataclasses --------------------------------------------------------------------------------


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


# ---- object-id buffer ----------------------------------------------------------------------------------


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
        rad[:, metal] = albedo[:, metal] * (
            (1 - _METAL_DIFFUSE) * (mirror + _METAL_SPECULAR * spec) + _METAL_DIFFUSE * diffuse
        )

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
