"""Tests for the NumPy ray caster (nscl.generate.camera / geometry / render) on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nscl.generate import render as rmod
from nscl.generate.camera import (
    BASE_CAMERA_POSITION,
    Camera,
    clevr_camera,
    clevr_lamps,
    ground_directions,
    project,
)
from nscl.generate.geometry import RenderObject
from nscl.generate.render import render, render_ids

W, H = 64, 48
RED = (173 / 255, 35 / 255, 35 / 255)
BLUE = (42 / 255, 75 / 255, 215 / 255)


def obj(shape="sphere", center=(0.0, 0.0, 0.7), size=0.7, rotation=0.0, color=RED, material="rubber"):
    return RenderObject(shape, center, size, rotation, color, material)


@pytest.fixture
def camera() -> Camera:
    return clevr_camera(None)


@pytest.fixture
def lamps():
    return clevr_lamps(None)


def pixel_of(camera: Camera, point, width=W, height=H) -> tuple[int, int]:
    """(row, col) of the pixel containing the projection of ``point``."""
    x, y, _ = project(camera, np.array([point]), width, height, round_pixels=False)[0]
    return int(math.floor(y)), int(math.floor(x))


def test_sphere_at_origin_hits_projected_centre(camera):
    ids = render_ids([obj()], camera, W, H)
    assert ids.shape == (H, W) and ids.dtype == np.int16
    row, col = pixel_of(camera, (0.0, 0.0, 0.7))
    assert ids[row, col] == 0
    # the origin is the image centre for a camera aimed at it
    x, y, depth = project(camera, np.array([[0.0, 0.0, 0.0]]), W, H)[0]
    assert (x, y) == (W / 2, H / 2)
    assert depth == pytest.approx(np.linalg.norm(BASE_CAMERA_POSITION))
    assert set(np.unique(ids)) == {-1, 0}
    assert ids[0, 0] == -1 and ids[-1, -1] == -1


def test_occlusion_ids(camera):
    far_c = np.array([0.0, 0.0, 0.7])
    near_c = far_c + 0.5 * (np.array(camera.position) - far_c)  # on the ray to the far centre
    far, near = obj(center=tuple(far_c)), obj(center=tuple(near_c), size=0.3, color=BLUE)
    row, col = pixel_of(camera, far_c)
    assert render_ids([far], camera, W, H)[row, col] == 0
    assert render_ids([far, near], camera, W, H)[row, col] == 1
    assert render_ids([near, far], camera, W, H)[row, col] == 0
    # the far sphere's rim stays visible around the small near one
    ids = render_ids([far, near], camera, W, H)
    assert (ids == 0).sum() > 0 and (ids == 1).sum() > 0


@pytest.mark.parametrize("shape", ["cube", "sphere", "cylinder"])
def test_project_agrees_with_ids(camera, shape):
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = rng.uniform(-2.5, 2.5, size=2)
        size = float(rng.choice([0.35, 0.7]))
        o = obj(shape, (float(x), float(y), size), size, float(rng.uniform(0, 6.28)))
        ids = render_ids([o], camera, W, H)
        row, col = pixel_of(camera, o.center)
        assert ids[row, col] == 0
        # CLEVR rounding of the same point
        px, py, _ = project(camera, np.array([o.center]), W, H)[0]
        assert px == round(px) and abs(px - (col + 0.5)) <= 1.0 and abs(py - (row + 0.5)) <= 1.0


def test_ground_directions_base_camera(camera):
    d = ground_directions(camera)
    np.testing.assert_allclose(d["right"], [0.6563, 0.7545, 0.0], atol=2e-4)
    np.testing.assert_allclose(d["behind"], [-0.7545, 0.6563, 0.0], atol=2e-4)
    np.testing.assert_allclose(d["left"], -np.array(d["right"]))
    np.testing.assert_allclose(d["front"], -np.array(d["behind"]))
    assert d["above"] == [0.0, 0.0, 1.0] and d["below"] == [0.0, 0.0, -1.0]


def test_image_dtype_shape_and_ids_match_render_ids(camera, lamps):
    objs = [obj(), obj("cube", (1.5, 1.0, 0.35), 0.35, 0.4, BLUE, "metal")]
    res = render(objs, camera, lamps, W, H, supersample=2, shadow_samples=4)
    assert res.image.shape == (H, W, 3) and res.image.dtype == np.uint8
    assert res.object_ids.shape == (H, W) and res.object_ids.dtype == np.int16
    np.testing.assert_array_equal(res.object_ids, render_ids(objs, camera, W, H))


def test_ids_consistent_with_image(camera, lamps):
    # at supersample 1 the image rays are the id rays: id pixels are red, the rest grey floor
    res = render([obj()], camera, lamps, W, H, supersample=1, shadow_samples=4)
    img = res.image.astype(int)
    on = res.object_ids == 0
    assert on.sum() > 20
    redness = img[on][:, 0] - img[on][:, 1]
    assert np.all(redness > 5) and np.median(redness) > 40  # silhouettes pick up a grey sheen
    off = img[~on]
    assert np.all(np.abs(off[:, 0] - off[:, 1]) < 12)


def test_determinism(camera, lamps):
    objs = [obj(material="metal"), obj("cylinder", (1.2, -1.0, 0.35), 0.35, 0.0, BLUE)]
    a = render(objs, camera, lamps, W, H, seed=7)
    b = render(objs, camera, lamps, W, H, seed=7)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.object_ids, b.object_ids)


def test_metal_differs_from_rubber(camera, lamps):
    rubber = render([obj(material="rubber")], camera, lamps, W, H)
    metal = render([obj(material="metal")], camera, lamps, W, H)
    mask = rubber.object_ids == 0
    diff = np.abs(rubber.image.astype(int) - metal.image.astype(int))[mask].mean()
    assert diff > 5


def test_empty_scene(camera, lamps):
    res = render([], camera, lamps, W, H)
    assert np.all(res.object_ids == -1)
    img = res.image.astype(float)
    assert 95 < img.mean() < 140
    # lit wall at the top, brighter floor at the bottom; the key lamp is on the right
    assert img[:2].mean() < img[-2:].mean()
    assert img[-2:, : W // 4].mean() < img[-2:, -W // 4 :].mean()


def test_shadows_only_darken(camera, lamps):
    objs = [obj("cube", (0.0, 0.0, 0.7), 0.7, 0.3)]
    lit = render(objs, camera, lamps, W, H, supersample=1, shadow_samples=0).image.astype(int)
    shad = render(objs, camera, lamps, W, H, supersample=1, shadow_samples=8).image.astype(int)
    assert np.all(shad <= lit + 1)
    assert (shad < lit - 3).sum() > 10


def test_banding_matches_single_band(camera, lamps, monkeypatch):
    objs = [obj(), obj("cylinder", (1.5, 1.0, 0.35), 0.35), obj("cube", (-1.5, 1.0, 0.7), 0.7, 1.0, BLUE)]
    full = render(objs, camera, lamps, W, H, shadow_samples=0)
    monkeypatch.setattr(rmod, "_MAX_RAYS_PER_BAND", W * 4 * 5)  # 5-row bands
    banded = render(objs, camera, lamps, W, H, shadow_samples=0)
    np.testing.assert_array_equal(full.image, banded.image)
    np.testing.assert_array_equal(full.object_ids, banded.object_ids)


def test_presets_jitter(camera):
    rng = np.random.default_rng(0)
    cam = clevr_camera(rng)
    assert np.all(np.abs(np.subtract(cam.position, BASE_CAMERA_POSITION)) <= 0.5)
    base, jit = clevr_lamps(None), clevr_lamps(rng)
    assert len(jit) == 3
    for b, j in zip(base, jit):
        assert np.all(np.abs(np.subtract(b.position, j.position)) <= 1.0)
        assert b.position != j.position and b.intensity == j.intensity


def test_invalid_inputs(camera, lamps):
    with pytest.raises(ValueError):
        render_ids([obj("cone")], camera, W, H)
    with pytest.raises(ValueError):
        render([obj(material="glass")], camera, lamps, W, H)
