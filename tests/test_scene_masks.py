"""``nscl masks``: cameras fitted to CLEVR annotations, masks and boxes recovered from them.

Generated scenes know their true camera and object-id buffer, so recovery is checked against the truth; the real
CLEVR scenes of ``../shared/clevr/real-dev`` (when present) must fit to within pixel rounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from nscl.cli import main
from nscl.domain import builtin_domain
from nscl.errors import DataError
from nscl.generate.camera import clevr_camera, project
from nscl.generate.camera_fit import fit_cameras
from nscl.generate.scene import SceneConfig, sample_scene
from nscl.generate.scene_masks import MaskConfig, annotate_scenes, encode_masks

REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


@pytest.fixture(scope="module")
def sampled():
    domain = builtin_domain()
    rng = np.random.default_rng(11)
    cfg = SceneConfig(width=480, height=320)
    return domain, [sample_scene(domain, cfg, rng, i, "val", f"img{i}.png") for i in range(12)]


def test_encode_masks_by_hand() -> None:
    ids = np.full((4, 5), -1, dtype=np.int16)
    ids[1:3, 0:2] = 0  # object 0: rows 1-2, columns 0-1
    ids[3, 4] = 1  # object 1: one pixel
    out = encode_masks(ids, 3)  # object 2 is not visible
    assert [(box, area) for _, box, area in out] == [([0, 1, 2, 3], 4), ([4, 3, 5, 4], 1), (None, 0)]
    assert _decode(out[0][0]).tolist() == (ids == 0).tolist()


def test_fit_recovers_the_true_camera(sampled) -> None:
    _, scenes = sampled
    k = max(len(s.record["objects"]) for s in scenes)
    coords, pixels = np.zeros((len(scenes), k, 3)), np.zeros((len(scenes), k, 3))
    valid = np.zeros((len(scenes), k), dtype=bool)
    for i, s in enumerate(scenes):
        for j, o in enumerate(s.record["objects"]):
            coords[i, j], pixels[i, j], valid[i, j] = o["3d_coords"], o["pixel_coords"], True
    fit = fit_cameras(coords, pixels, valid, 480, 320)
    truth = np.array([s.camera.position for s in scenes])
    assert np.abs(fit.positions - truth).max() < 0.15
    assert np.linalg.norm(fit.positions - truth, axis=1).mean() < 0.06
    assert fit.max_error_px.max() < 0.75  # rounding of pixel_coords alone: at most 0.71
    base = np.array(clevr_camera(None).position)
    assert np.abs(truth - base).max() > 0.1  # the jitter was real: the base camera alone would not do


def test_recovered_masks_match_the_rendered_ones(sampled) -> None:
    domain, scenes = sampled
    records = [{**s.record, "objects": [dict(o) for o in s.record["objects"]]} for s in scenes]
    out, report = annotate_scenes(records, domain, MaskConfig(workers=1))
    ious = []
    for s, rec in zip(scenes, out):
        for k, obj in enumerate(rec["objects"]):
            truth, got = s.object_ids == k, _decode(obj["mask"])
            ious.append((truth & got).sum() / (truth | got).sum())
            ys, xs = np.nonzero(got)
            assert obj["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert rec["camera_fit"]["mean_error_px"] < 0.6
    assert np.mean(ious) >= 0.97 and min(ious) > 0.8
    assert report.scenes == len(scenes) and report.hidden_objects == 0 and not report.flagged_scenes
    assert "mask" not in scenes[0].record["objects"][0]  # the input records are left alone


def test_a_hidden_object_gets_its_projected_box(sampled) -> None:
    domain, scenes = sampled
    rec = scenes[0].record
    cam = scenes[0].camera
    front = dict(rec["objects"][0], size="large", shape="cube", rotation=0.0)
    # A small sphere right behind a large cube, on the line from the camera through the cube's centre.
    c = np.array(front["3d_coords"])
    away = c - np.array(cam.position)
    away[2] = 0.0
    behind = c + 0.9 * away / np.linalg.norm(away)
    hidden = dict(
        front, size="small", shape="sphere", **{"3d_coords": [float(behind[0]), float(behind[1]), 0.35]}
    )
    objs = [front, hidden, *rec["objects"][1:]]
    for o in objs:
        p = project(cam, np.array([o["3d_coords"]]), 480, 320)[0]
        o["pixel_coords"] = [int(p[0]), int(p[1]), float(p[2])]
    out, report = annotate_scenes([{**rec, "objects": objs}], domain, MaskConfig(workers=1))
    got = out[0]["objects"][1]
    assert report.hidden_objects == 1 and not _decode(got["mask"]).any()
    x0, y0, x1, y1 = got["box"]
    px, py, _ = hidden["pixel_coords"]
    assert x0 < px < x1 and y0 < py < y1 and 0 < x1 - x0 < 60


def test_real_clevr_scenes_fit_within_rounding(tmp_path) -> None:
    if not (REAL / "CLEVR_train_scenes.json").is_file():
        pytest.skip(f"real CLEVR files not found at {REAL}")
    out = tmp_path / "scenes.json"
    assert (
        main(
            [
                "masks",
                "--scenes-json",
                str(REAL / "CLEVR_train_scenes.json"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    scenes = json.loads(out.read_text())["scenes"]
    assert len(scenes) == 4
    for s in scenes:
        assert s["camera_fit"]["max_error_px"] < 0.75
        for o in s["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert x0 <= o["pixel_coords"][0] <= x1 and y0 <= o["pixel_coords"][1] <= y1
            assert _decode(o["mask"]).sum() > 0


def test_missing_pixel_coords_is_a_clear_error_and_writes_nothing(tmp_path, capsys) -> None:
    src = tmp_path / "scenes.json"
    obj = {"shape": "cube", "size": "large", "3d_coords": [0, 0, 0.7], "rotation": 0.0}
    src.write_text(json.dumps({"scenes": [{"image_index": 0, "image_filename": "a.png", "objects": [obj]}]}))
    out = tmp_path / "out.json"
    assert main(["masks", "--scenes-json", str(src), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scenes.json: scene 0 (a.png): object 0: no 'pixel_coords'" in err[0]
    assert not out.exists()
    with pytest.raises(DataError, match="unknown size 'huge'"):
        annotate_scenes(
            [{"objects": [dict(obj, size="huge", pixel_coords=[1, 2, 3])]}], builtin_domain(), MaskConfig()
        )
