"""``nscl generate --renderer blender``: the same scenes, masks and questions as the NumPy renderer, images from Blender.

Tests that render need Blender (``apt-get install blender``; ``.ci/run`` installs it) and skip without it; the error
paths run everywhere, with a stand-in ``blender`` script.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nscl.cli import main
from nscl.domain import Domain
from nscl.errors import NSCLError
from nscl.generate.blender import BlenderImage, find_blender, render_blender
from nscl.generate.camera import clevr_camera, clevr_lamps
from nscl.generate.geometry import RenderObject
from nscl.generate.pipeline import GenerateConfig, generate_dataset

W, H = 96, 64


def _blender_3() -> bool:
    """Blender 3.x is installed (the back-end is written for 3.x; 4 renamed shaders it uses)."""
    path = shutil.which("blender")
    if path is None:
        return False
    said = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120).stdout
    return said.startswith("Blender 3.")


needs_blender = pytest.mark.skipif(not _blender_3(), reason="Blender 3.x is not installed")


def cfg(out: Path, **kw) -> GenerateConfig:
    args = dict(out=str(out), seed=5, val_images=3, width=W, height=H, workers=1, questions_per_image=4)
    args.update(kw)
    return GenerateConfig(**args)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def fake_blender(tmp_path: Path, body: str) -> str:
    """A stand-in Blender executable: a shell script with ``body``."""
    exe = tmp_path / "fake-blender"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


FAKE_RENDERER = """
import json, sys
from PIL import Image
args = sys.argv[sys.argv.index("--") + 1:]
job = json.load(open(args[0]))
with open(LOG, "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "threads": job["threads"], "n": len(job["images"])}) + "\\n")
for img in job["images"]:
    Image.new("RGB", (img["width"], img["height"]), (len(img["objects"]) * 20, 90, 90)).save(img["output"])
"""


def fake_renderer(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in Blender that writes a flat image per job entry (its colour counts the objects) and logs its calls."""
    log = tmp_path / "calls.jsonl"
    exe = tmp_path / "fake-cycles"
    exe.write_text(f"#!{sys.executable}\nLOG = {str(log)!r}\n" + FAKE_RENDERER)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe), log


# ------------------------------------------------------------------------------------------------ settings
def test_numpy_fingerprint_is_unchanged_by_blender_settings(tmp_path):
    """Datasets made before the back-end existed stay complete: a NumPy config's fingerprint is the hash of the
    settings without the Blender ones; a Blender config's depends on its samples, not on the ray caster's
    supersampling."""
    import hashlib

    from nscl import __version__

    base = cfg(tmp_path)
    d = asdict(base)
    for k in ("out", "workers", "shard", "renderer", "blender_samples", "blender"):
        d.pop(k)
    d["version"] = __version__
    before = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert base.fingerprint() == before
    assert replace(base, blender_samples=7, blender="/opt/b").fingerprint() == base.fingerprint()
    bl = replace(base, renderer="blender")
    assert bl.fingerprint() != base.fingerprint()
    assert replace(bl, blender_samples=7).fingerprint() != bl.fingerprint()
    assert replace(bl, blender="/opt/b", supersample=3).fingerprint() == bl.fingerprint()


@pytest.mark.parametrize("bad", [{"renderer": "mitsuba"}, {"blender_samples": 0}])
def test_bad_renderer_settings_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="renderer|blender_samples"):
        cfg(tmp_path, **bad)


def test_missing_blender_is_one_clear_error_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "x"
    argv = ["generate", "--out", str(out), "--val-images", "1", "--renderer", "blender"]
    argv += ["--blender", str(tmp_path / "no-such-blender"), "--no-progress", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and "apt-get install blender" in err
    assert not (out / "val" / "scenes.json").exists()
    with pytest.raises(NSCLError, match="no-such-blender"):
        find_blender(str(tmp_path / "no-such-blender"))


def one_image(out: Path, samples: int = 4) -> BlenderImage:
    obj = RenderObject("sphere", (0.0, 0.0, 0.7), 0.7, 0.0, (0.68, 0.08, 0.08), "rubber")
    return BlenderImage(out, [obj], clevr_camera(None), clevr_lamps(None), W, H, samples, 1)


def test_a_failing_blender_is_quoted_and_leaves_no_image(tmp_path):
    exe = fake_blender(tmp_path, 'echo "starting"; echo "Error: no Cycles in this build" >&2; exit 3')
    out = tmp_path / "img" / "a.png"
    with pytest.raises(NSCLError, match=r"exit 3.*no Cycles in this build"):
        render_blender([one_image(out)], exe)
    assert not (tmp_path / "img").exists()


def test_the_failing_image_is_named(tmp_path):
    exe = fake_blender(
        tmp_path, 'echo "nscl-blender: error: image 1: RuntimeError: no such node" >&2; exit 1'
    )
    with pytest.raises(NSCLError, match=r"exit 1\): b.png: RuntimeError: no such node"):
        render_blender([one_image(tmp_path / "a.png"), one_image(tmp_path / "b.png")], exe)
    assert not list(tmp_path.glob("*.png"))


def test_a_blender_that_writes_nothing_is_an_error(tmp_path):
    exe = fake_blender(tmp_path, "exit 0")
    out = tmp_path / "a.png"
    with pytest.raises(NSCLError, match="a.png was not written"):
        render_blender([one_image(out)], exe)
    assert not out.exists()


def test_generate_with_a_stand_in_blender(tmp_path, domain: Domain):
    """The pipeline around Blender, with a stand-in: each image lands where the scene says, one Blender call per
    chunk with the cores shared among the workers, no work folder left, scenes as the ray caster's; a rerun after
    a kill removes the work folder it left."""
    exe, log = fake_renderer(tmp_path)
    np_root, bl_root = tmp_path / "np", tmp_path / "bl"
    generate_dataset(cfg(np_root), domain, progress=False)
    leftover = bl_root / "val" / ".blender-killed.tmp"
    leftover.mkdir(parents=True)
    (leftover / "000000.png").write_bytes(b"half")
    settings = cfg(bl_root, renderer="blender", blender=exe, val_images=4, chunk_size=2, workers=2)
    generate_dataset(settings, domain, progress=False)
    generate_dataset(cfg(np_root, val_images=4, chunk_size=2), domain, progress=False)
    scenes = read(bl_root / "val" / "scenes.json")["scenes"]
    assert scenes == read(np_root / "val" / "scenes.json")["scenes"]
    for s in scenes:
        image = np.asarray(Image.open(bl_root / "val" / "images" / s["image_filename"]))
        assert image.shape == (H, W, 3) and image[0, 0, 0] == len(s["objects"]) * 20
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    cores = len(os.sched_getaffinity(0))
    assert [c["n"] for c in calls] == [2, 2] and {c["threads"] for c in calls} == {max(1, cores // 2)}
    assert "--python-exit-code" in calls[0]["argv"]
    assert not list((bl_root / "val").glob(".*.tmp")) and not list((bl_root / "val" / "images").glob(".*"))


# --------------------------------------------------------------------------------------------- rendering
@needs_blender
def test_blender_images_of_the_same_scenes_questions_and_masks(tmp_path, domain: Domain):
    """Both renderers give the same scenes (masks and boxes included) and questions; each Blender image is closer to
    the NumPy image of its own scene than to those of the other scenes."""
    np_root, bl_root = tmp_path / "np", tmp_path / "bl"
    generate_dataset(cfg(np_root), domain, progress=False)
    generate_dataset(cfg(bl_root, renderer="blender", blender_samples=8), domain, progress=False)
    a, b = read(np_root / "val" / "scenes.json"), read(bl_root / "val" / "scenes.json")
    assert a["scenes"] == b["scenes"]
    qa, qb = read(np_root / "val" / "questions.json"), read(bl_root / "val" / "questions.json")
    assert qa["questions"] == qb["questions"]
    assert a["info"]["fingerprint"] != b["info"]["fingerprint"]
    assert not list((bl_root / "val" / "images").glob(".*.tmp"))

    def load(root: Path, s: dict) -> np.ndarray:
        return np.asarray(Image.open(root / "val" / "images" / s["image_filename"]), dtype=np.float32)

    ours = [load(np_root, s) for s in a["scenes"]]
    theirs = [load(bl_root, s) for s in b["scenes"]]
    assert all(t.shape == (H, W, 3) for t in theirs)
    dist = np.array([[np.abs(t - o).mean() for o in ours] for t in theirs])
    assert (dist.argmin(axis=1) == np.arange(len(theirs))).all(), dist


@needs_blender
def test_blender_render_is_seeded_and_matches_the_numpy_geometry(tmp_path):
    """The same image twice gives the same bytes; the pixels of the NumPy renderer's object-id buffer are the ones
    that differ from the empty scene (with the sphere moved by 0.1, 0.965 of them do: the margin is this test's)."""
    from nscl.generate.render import render_ids

    a, b, e = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "e.png"
    img = one_image(a, samples=8)
    render_blender([img, replace(img, output=b), replace(img, output=e, objects=[])])
    pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    assert np.array_equal(pa, pb)
    diff = np.abs(pa.astype(np.float32) - np.asarray(Image.open(e), dtype=np.float32)).mean(-1) > 20
    ids = render_ids(img.objects, img.camera, W, H) == 0
    covered = (diff & ids).sum() / ids.sum()  # the difference also holds the shadow: recall, not IoU
    assert covered > 0.98, covered
