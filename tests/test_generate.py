"""Tests of ``nscl generate`` (nscl.generate.pipeline / scene): CLEVR's scene rules, masks, answers, CoGenT,
determinism, resuming after a kill, the output layout and the command line.

Everything runs on tiny images (64x48, one ray per pixel). ``gen_root`` (conftest: seed 5, 50 train + 10 val
images) is shared with other test files and only read here; the ``reference`` dataset (15 train + 5 val
images in chunks of 5) is the baseline that reruns, interrupted runs and other worker counts must reproduce
byte for byte.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import FAMILY_RANGES
from nscl.cli import main
from nscl.data import SplitPaths, load_split
from nscl.domain import Domain
from nscl.generate import pipeline
from nscl.generate.camera import project
from nscl.generate.geometry import RenderObject
from nscl.generate.pipeline import GenerateConfig, generate_dataset
from nscl.generate.render import render_ids
from nscl.generate.scene import COGENT, SceneConfig, sample_scene
from nscl.verify import verify_questions

W, H = 64, 48
SIZE_RADIUS = {"large": 0.7, "small": 0.35}
CLEVR_RIGHT = (0.6563112735748291, 0.7544902563095093, 0.0)
CLEVR_BEHIND = (-0.754490315914154, 0.6563112735748291, 0.0)
GROUP_1 = {"gray", "blue", "brown", "yellow"}  # CoGenT A cubes / B cylinders
GROUP_2 = {"red", "green", "purple", "cyan"}  # CoGenT A cylinders / B cubes
ALL_COLORS = GROUP_1 | GROUP_2
SPLITS = ("train", "val")
# pycocotools' decode under NumPy 2 (not ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"
)
FILES = ("scenes.json", "questions.json", "vocab.json")


# --------------------------------------------------------------------------------------------- helpers
def small_cfg(out: Path | str, **kw) -> GenerateConfig:
    """The reference settings: 15 train + 5 val images in chunks of 5 (3 + 1 chunks), 64x48, 1 ray/pixel."""
    args = dict(
        out=str(out),
        seed=11,
        train_images=15,
        val_images=5,
        width=W,
        height=H,
        supersample=1,
        workers=1,
        chunk_size=5,
    )
    args.update(kw)
    return GenerateConfig(**args)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def decode(rle: dict) -> np.ndarray:
    """A stored COCO RLE (counts as str) -> (H, W) bool mask."""
    assert isinstance(rle["counts"], str)
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_output(a: Path, b: Path) -> None:
    """Two generated roots hold byte-identical files (JSON and images) and nothing else."""
    ta, tb = tree_bytes(a), tree_bytes(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name] == tb[name], name


def tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.tmp"))


def check_scene_rules(scene: dict, min_objects: int, max_objects: int) -> None:
    """CLEVR-FACTS section 1: placement, coordinates, directions and relationships of one scene record."""
    dirs = scene["directions"]
    assert dirs["right"] == pytest.approx(CLEVR_RIGHT, abs=1e-4)
    assert dirs["behind"] == pytest.approx(CLEVR_BEHIND, abs=1e-4)
    assert dirs["left"] == pytest.approx([-v for v in CLEVR_RIGHT], abs=1e-4)
    assert dirs["front"] == pytest.approx([-v for v in CLEVR_BEHIND], abs=1e-4)
    assert dirs["above"] == pytest.approx([0, 0, 1]) and dirs["below"] == pytest.approx([0, 0, -1])
    objs = scene["objects"]
    assert min_objects <= len(objs) <= max_objects
    right, behind = np.array(dirs["right"]), np.array(dirs["behind"])
    coords = np.array([o["3d_coords"] for o in objs], dtype=np.float64)
    for o, c in zip(objs, coords):
        assert abs(c[0]) <= 3.0 and abs(c[1]) <= 3.0
        assert c[2] == SIZE_RADIUS[o["size"]]
        assert 0.0 <= o["rotation"] <= 360.0
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            off = coords[j] - coords[i]
            off[2] = 0.0
            gap = math.hypot(off[0], off[1]) - SIZE_RADIUS[objs[i]["size"]] - SIZE_RADIUS[objs[j]["size"]]
            assert gap >= 0.25, (i, j, gap)
            assert abs(off @ right) >= 0.4, (i, j)
            assert abs(off @ behind) >= 0.4, (i, j)
    rel = scene["relationships"]
    assert set(rel) == {"left", "right", "front", "behind"}
    for r in ("left", "right", "front", "behind"):
        d = np.array(dirs[r])
        expected = [
            [j for j in range(len(objs)) if j != i and float((coords[j] - coords[i]) @ d) > 0.2]
            for i in range(len(objs))
        ]
        assert rel[r] == expected, r


def render_objects(scene: dict, domain: Domain) -> tuple[RenderObject, ...]:
    """Rebuild the renderer's objects from a stored scene record, as nscl.generate.scene does."""
    app = domain.appearance
    return tuple(
        RenderObject(
            shape=str(app["shape"][o["shape"]]),
            center=tuple(o["3d_coords"]),
            size=float(app["size"][o["size"]]),
            rotation=o["rotation"],
            color=tuple(c / 255.0 for c in app["color"][o["color"]]),
            material=str(app["material"][o["material"]]),
        )
        for o in scene["objects"]
    )


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def gen_json(gen_root: Path) -> dict[str, dict[str, dict]]:
    """gen_root's JSON files: split -> file name -> content."""
    return {s: {f: read(gen_root / s / f) for f in FILES} for s in SPLITS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, domain: Domain) -> tuple[Path, dict]:
    """An uninterrupted single-process run of small_cfg: (root, summary). Treat as read-only."""
    root = tmp_path_factory.mktemp("reference")
    return root, generate_dataset(small_cfg(root), domain, progress=False)


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory, domain: Domain) -> tuple[Path, list]:
    """A run whose sampled scenes (camera included) are captured in-process: (root, [SampledScene])."""
    root = tmp_path_factory.mktemp("captured")
    seen = []
    real = pipeline.sample_scene

    def spy(*args, **kwargs):
        s = real(*args, **kwargs)
        seen.append(s)
        return s

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "sample_scene", spy)
        generate_dataset(small_cfg(root, seed=3, train_images=12, val_images=0), domain, progress=False)
    return root, seen


class Interrupt(Exception):
    pass


def interrupted_run(
    cfg: GenerateConfig, domain: Domain, monkeypatch: pytest.MonkeyPatch, chunks: int
) -> None:
    """Run cfg, failing on the chunk after the first ``chunks`` ones, as a crash would."""
    real = pipeline.run_chunk
    calls = []

    def flaky(job):
        calls.append(job)
        if len(calls) > chunks:
            raise Interrupt
        return real(job)

    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "run_chunk", flaky)
        with pytest.raises(Interrupt):
            generate_dataset(cfg, domain, progress=False)


def counted_run(
    cfg: GenerateConfig, domain: Domain, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict, list[tuple[str, int]]]:
    """Run cfg in-process; returns the summary and the (split, chunk) of every chunk actually computed."""
    real = pipeline.run_chunk
    calls = []

    def counting(job):
        calls.append((job.split, job.chunk))
        return real(job)

    with monkeypatch.context() as mp:
        mp.setattr(pipeline, "run_chunk", counting)
        summary = generate_dataset(cfg, domain, progress=False)
    return summary, calls


# --------------------------------------------------------------------------------------------- 1. scene rules
@pytest.mark.parametrize("split", SPLITS)
def test_generated_scenes_follow_clevr_placement_rules(gen_json, split):
    scenes = gen_json[split]["scenes.json"]["scenes"]
    assert len(scenes) == {"train": 50, "val": 10}[split]
    for s in scenes:
        check_scene_rules(s, 3, 10)
    counts = {len(s["objects"]) for s in scenes}
    assert len(counts) > 2  # the object count varies


def test_sampled_scenes_follow_rules_with_custom_object_range(domain):
    cfg = SceneConfig(min_objects=3, max_objects=4, width=W, height=H)
    rng = np.random.default_rng(0)
    counts = set()
    for i in range(25):
        s = sample_scene(domain, cfg, rng, i, "train", f"x_{i:06d}.png")
        check_scene_rules(s.record, 3, 4)
        counts.add(len(s.record["objects"]))
        assert s.object_ids.shape == (H, W)
        visible = np.bincount(s.object_ids[s.object_ids >= 0], minlength=len(s.objects))
        assert len(visible) == len(s.objects) and visible.min() >= cfg.min_pixels
    assert counts == {3, 4}


def test_pipeline_passes_object_range_and_cogent(tmp_path, domain):
    cfg = small_cfg(tmp_path, train_images=8, val_images=0, min_objects=3, max_objects=4, cogent="A")
    generate_dataset(cfg, domain, progress=False)
    for s in read(tmp_path / "train" / "scenes.json")["scenes"]:
        check_scene_rules(s, 3, 4)
        for o in s["objects"]:
            if o["shape"] == "cube":
                assert o["color"] in GROUP_1
            elif o["shape"] == "cylinder":
                assert o["color"] in GROUP_2


# --------------------------------------------------------------------------------------------- 2. masks, boxes
@pytest.mark.parametrize("split", SPLITS)
def test_masks_and_boxes(gen_json, split):
    min_pixels = SceneConfig(width=W, height=H).min_pixels
    for s in gen_json[split]["scenes.json"]["scenes"]:
        union = np.zeros((H, W), dtype=np.int32)
        for o in s["objects"]:
            assert o["mask"]["size"] == [H, W]
            m = decode(o["mask"])
            assert m.shape == (H, W)
            assert m.sum() >= min_pixels
            ys, xs = np.nonzero(m)
            x0, y0, x1, y1 = o["box"]
            assert all(isinstance(v, int) for v in o["box"])
            assert [x0, y0, x1, y1] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            assert not m[:y0].any() and not m[y1:].any() and not m[:, :x0].any() and not m[:, x1:].any()
            union += m
        assert union.max() <= 1, f"masks overlap in scene {s['image_index']}"


def test_masks_match_rerendered_ids_and_pixel_coords(captured, domain):
    root, sampled = captured
    scenes = read(root / "train" / "scenes.json")["scenes"]
    assert len(sampled) == len(scenes) == 12
    for s, smp in zip(scenes, sampled):
        objs = render_objects(s, domain)
        assert objs == smp.objects  # the record holds everything the renderer needed, but the camera
        ids = render_ids(objs, smp.camera, W, H)
        assert np.array_equal(ids, smp.object_ids)
        stored = np.full((H, W), -1, dtype=np.int16)
        for k, o in enumerate(s["objects"]):
            stored[decode(o["mask"])] = k
        assert np.array_equal(stored, ids)
        pix = project(smp.camera, np.array([o["3d_coords"] for o in s["objects"]]), W, H)
        for o, p in zip(s["objects"], pix):
            assert o["pixel_coords"][:2] == [int(p[0]), int(p[1])]
            assert o["pixel_coords"][2] == pytest.approx(p[2])


# --------------------------------------------------------------------------------------------- 3. answers
@pytest.mark.parametrize("split", SPLITS)
def test_every_question_executes_to_its_answer(gen_root, domain, split):
    data = load_split(SplitPaths.resolve(gen_root / split), domain, box_source="none")
    report = verify_questions(data.questions, data.scenes, domain)
    assert report.n == len(data.questions) > 0 and report.skipped == 0
    assert report.accuracy("raw") == 1.0 and report.accuracy("nscl") == 1.0, report.format()
    assert not report.mismatches


@pytest.mark.parametrize("split", SPLITS)
def test_cli_execute_accepts_generated_split(gen_root, split, capsys):
    assert main(["--quiet", "execute", "--data-dir", str(gen_root / split)]) == 0
    assert "overall" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- 4. CoGenT
def test_cogent_table_matches_clevr():
    assert set(COGENT["A"]["cube"]) == GROUP_1 and set(COGENT["A"]["cylinder"]) == GROUP_2
    assert set(COGENT["B"]["cube"]) == GROUP_2 and set(COGENT["B"]["cylinder"]) == GROUP_1
    assert "sphere" not in COGENT["A"] and "sphere" not in COGENT["B"]


@pytest.mark.parametrize("condition", ["A", "B"])
def test_cogent_colours(domain, condition):
    cfg = SceneConfig(width=W, height=H, cogent=condition, min_objects=5, max_objects=8)
    rng = np.random.default_rng(1)
    seen: dict[str, set[str]] = {"cube": set(), "cylinder": set(), "sphere": set()}
    for i in range(20):
        for o in sample_scene(domain, cfg, rng, i, "train", f"x_{i}.png").record["objects"]:
            seen[o["shape"]].add(o["color"])
    cube, cylinder = (GROUP_1, GROUP_2) if condition == "A" else (GROUP_2, GROUP_1)
    assert seen["cube"] == cube
    assert seen["cylinder"] == cylinder
    assert seen["sphere"] == ALL_COLORS


def test_without_cogent_every_shape_takes_every_colour(gen_json):
    seen: dict[str, set[str]] = {}
    for s in gen_json["train"]["scenes.json"]["scenes"]:
        for o in s["objects"]:
            seen.setdefault(o["shape"], set()).add(o["color"])
    assert seen == {"cube": ALL_COLORS, "cylinder": ALL_COLORS, "sphere": ALL_COLORS}


# --------------------------------------------------------------------------------------------- 5. determinism
@pytest.mark.parametrize("workers", [1, 2])
def test_same_config_gives_identical_output(reference, tmp_path, domain, workers):
    ref_root, ref_summary = reference
    assert ref_summary == {"train": {"images": 15, "questions": 150}, "val": {"images": 5, "questions": 50}}
    summary = generate_dataset(small_cfg(tmp_path, workers=workers), domain, progress=False)
    assert summary == ref_summary
    assert_same_output(ref_root, tmp_path)


def test_shards_made_apart_merge_into_the_bytes_of_one_run(reference, tmp_path, domain, monkeypatch):
    """--shard I/N on two "machines" (two folders), their .parts gathered in one, then the same command without
    --shard: the very bytes of the uninterrupted run, and no chunk is made twice."""
    ref_root, ref_summary = reference
    machines = [tmp_path / "m0", tmp_path / "m1"]
    made = []
    for i, m in enumerate(machines):
        counts = generate_dataset(small_cfg(m, shard=f"{i}/2"), domain, progress=False)
        made.append(counts)
        assert not (m / "train" / "scenes.json").exists()  # a shard writes only parts
    # train has chunks 0, 1, 2 (shard 0: 0 and 2; shard 1: 1); val has chunk 0 (shard 0)
    assert made == [
        {"train": {"images": 10, "questions": 100}, "val": {"images": 5, "questions": 50}},
        {"train": {"images": 5, "questions": 50}},
    ]
    for split in ("train", "val"):
        for part in (machines[1] / split / ".parts").glob("*.json"):
            shutil.copy(part, machines[0] / split / ".parts" / part.name)
        for img in (machines[1] / split / "images").glob("*.png"):
            shutil.copy(img, machines[0] / split / "images" / img.name)

    def must_not_run(job):  # noqa: ANN001, ANN202
        raise AssertionError(f"chunk {job.split}/{job.chunk} made again")

    monkeypatch.setattr(pipeline, "run_chunk", must_not_run)
    assert generate_dataset(small_cfg(machines[0]), domain, progress=False) == ref_summary
    assert_same_output(ref_root, machines[0])


@pytest.mark.parametrize("bad", ["1", "2/2", "a/b", "-1/3"])
def test_bad_shard_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="shard"):
        small_cfg(tmp_path, shard=bad)


def test_fingerprint_ignores_only_out_and_workers(tmp_path):
    base = small_cfg(tmp_path)
    assert replace(base, out="elsewhere", workers=7, shard="1/3").fingerprint() == base.fingerprint()
    for change in (
        {"seed": 12},
        {"train_images": 16},
        {"chunk_size": 4},
        {"width": 80},
        {"cogent": "A"},
        {"questions_per_image": 5},
        {"supersample": 2},
        {"max_objects": 9},
    ):
        assert replace(base, **change).fingerprint() != base.fingerprint(), change


def test_other_seed_and_other_split_give_other_data(reference, tmp_path, domain):
    ref_root, _ = reference
    generate_dataset(small_cfg(tmp_path, seed=12, train_images=5, val_images=0), domain, progress=False)

    def objects(root: Path, split: str) -> list:
        return [s["objects"] for s in read(root / split / "scenes.json")["scenes"][:5]]

    ref_train = objects(ref_root, "train")
    assert objects(tmp_path, "train") != ref_train
    assert objects(ref_root, "val") != ref_train
    assert all(a != b for a, b in zip(objects(ref_root, "val"), ref_train))
    assert (ref_root / "val" / "images" / "CLEVR_val_000000.png").read_bytes() != (
        ref_root / "train" / "images" / "CLEVR_train_000000.png"
    ).read_bytes()


# --------------------------------------------------------------------------------------------- 6. kill, resume
def test_resume_after_crash_reuses_finished_chunks(reference, tmp_path, domain, monkeypatch, caplog):
    ref_root, ref_summary = reference
    cfg = small_cfg(tmp_path)
    interrupted_run(cfg, domain, monkeypatch, chunks=2)
    parts = tmp_path / "train" / ".parts"
    assert sorted(p.name for p in parts.iterdir()) == ["chunk_00000.json", "chunk_00001.json"]
    assert not (tmp_path / "train" / "scenes.json").exists()
    assert len(list((tmp_path / "train" / "images").iterdir())) == 10
    caplog.set_level(logging.INFO, logger="nscl.generate.pipeline")
    summary, calls = counted_run(cfg, domain, monkeypatch)
    assert calls == [("train", 2), ("val", 0)]
    assert "resuming: 2 of 4 chunks already done" in caplog.text
    assert summary == ref_summary
    assert not parts.exists()
    assert tmp_files(tmp_path) == []
    assert_same_output(ref_root, tmp_path)


_CHILD = """
import sys, time
from nscl.domain import builtin_domain
from nscl.generate import pipeline
from nscl.generate.pipeline import GenerateConfig, generate_dataset

real, calls = pipeline.run_chunk, []

def stall_after_first(job):
    calls.append(job)
    if len(calls) > 1:
        time.sleep(120)  # killed here
    return real(job)

pipeline.run_chunk = stall_after_first
generate_dataset(GenerateConfig(**eval(sys.argv[1])), builtin_domain(), progress=False)
"""


def test_rerun_after_sigkill_completes_identically(reference, tmp_path, domain, monkeypatch):
    ref_root, ref_summary = reference
    cfg = small_cfg(tmp_path)
    child_args = repr({k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, child_args], stderr=subprocess.PIPE)
    first = tmp_path / "train" / ".parts" / "chunk_00000.json"
    try:
        deadline = time.monotonic() + 30
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.exists(), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9
    assert not (tmp_path / "train" / "scenes.json").exists()
    summary, calls = counted_run(cfg, domain, monkeypatch)
    assert ("train", 0) not in calls and len(calls) == 3
    assert summary == ref_summary
    assert tmp_files(tmp_path) == []
    assert_same_output(ref_root, tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "other_settings",
        "missing_image",
        "json_not_a_part",
    ],
)
def test_damaged_part_is_regenerated(reference, tmp_path, domain, monkeypatch, damage):
    ref_root, ref_summary = reference
    cfg = small_cfg(tmp_path)
    interrupted_run(cfg, domain, monkeypatch, chunks=2)
    part = tmp_path / "train" / ".parts" / "chunk_00000.json"
    good = part.read_bytes()
    if damage == "garbage":
        part.write_bytes(b"\x00\xffnot json at all")
    elif damage == "truncated":
        part.write_bytes(good[: len(good) // 2])
    elif damage == "other_settings":
        d = json.loads(good)
        d["fingerprint"] = small_cfg(tmp_path, seed=99).fingerprint()
        part.write_text(json.dumps(d))
    elif damage == "missing_image":
        (tmp_path / "train" / "images" / "CLEVR_train_000003.png").unlink()
    elif damage == "json_not_a_part":
        part.write_text("[1, 2]")
    summary, calls = counted_run(cfg, domain, monkeypatch)
    assert calls == [("train", 0), ("train", 2), ("val", 0)]
    assert summary == ref_summary
    assert_same_output(ref_root, tmp_path)


def test_rerun_removes_temporary_files_left_by_a_kill(tmp_path, domain, monkeypatch):
    cfg = small_cfg(tmp_path, train_images=10, val_images=0)
    interrupted_run(cfg, domain, monkeypatch, chunks=1)
    # what SIGKILL during atomic_write leaves behind (mkstemp names: .<name>.<random>.tmp)
    (tmp_path / "train" / "images" / ".CLEVR_train_000005.png.k3j2x9.tmp").write_bytes(b"\x89PNG partial")
    (tmp_path / "train" / ".scenes.json.a8d7q1.tmp").write_bytes(b'{"info": {')
    generate_dataset(cfg, domain, progress=False)
    assert tmp_files(tmp_path) == []


# --------------------------------------------------------------------------------------------- 7. no-op rerun
def test_rerun_of_finished_generation_is_a_no_op(reference, domain, monkeypatch, caplog):
    ref_root, ref_summary = reference
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ref_root.rglob("*") if p.is_file()}
    caplog.set_level(logging.INFO, logger="nscl.generate.pipeline")
    for workers in (1, 2):  # the worker count is not part of the settings
        summary, calls = counted_run(small_cfg(ref_root, workers=workers), domain, monkeypatch)
        assert summary == ref_summary
        assert calls == []
    assert "nothing to do" in caplog.text
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in ref_root.rglob("*") if p.is_file()}
    assert after == before


# --------------------------------------------------------------------------------------------- 8. layout
def test_output_layout(gen_root, gen_json):
    assert sorted(p.name for p in gen_root.iterdir()) == ["train", "val"]
    for split, n in (("train", 50), ("val", 10)):
        d = gen_root / split
        assert sorted(p.name for p in d.iterdir()) == sorted(["images", *FILES])  # .parts is gone
        scenes = gen_json[split]["scenes.json"]
        info = scenes["info"]
        assert info["split"] == split and info["version"] == "1.0"
        assert info["license"] == "Creative Commons Attribution (CC BY 4.0)"
        assert gen_json[split]["questions.json"]["info"] == info
        names = [f"CLEVR_{split}_{i:06d}.png" for i in range(n)]
        assert [s["image_filename"] for s in scenes["scenes"]] == names
        assert [s["image_index"] for s in scenes["scenes"]] == list(range(n))
        assert all(s["split"] == split for s in scenes["scenes"])
        assert sorted(p.name for p in (d / "images").iterdir()) == names
        for name in names[:10]:
            with Image.open(d / "images" / name) as im:
                assert im.format == "PNG" and im.size == (W, H) and im.mode == "RGB"


@pytest.mark.parametrize("split", SPLITS)
def test_question_records(gen_json, domain, split):
    scenes = gen_json[split]["scenes.json"]["scenes"]
    questions = gen_json[split]["questions.json"]["questions"]
    assert len(questions) > 0
    per_image: dict[int, int] = {}
    for i, q in enumerate(questions):
        assert q["question_index"] == i
        assert q["split"] == split
        assert q["image_filename"] == scenes[q["image_index"]]["image_filename"]
        per_image[q["image_index"]] = per_image.get(q["image_index"], 0) + 1
        assert isinstance(q["question"], str) and q["question"].endswith(("?", "."))
        assert isinstance(q["answer"], str)
        assert isinstance(q["question_family_index"], int) and 0 <= q["question_family_index"] <= 89
        assert q["question_family_index"] in FAMILY_RANGES[q["template_filename"]]
        assert q["program"] and all(
            set(node) == {"inputs", "function", "value_inputs"} for node in q["program"]
        )
        assert all(all(j < k for j in node["inputs"]) for k, node in enumerate(q["program"]))
    assert all(v <= 10 for v in per_image.values())
    assert sum(per_image.values()) == len(questions)
    answers = {q["answer"] for q in questions}
    assert {"yes", "no"} <= answers and answers & {str(k) for k in range(11)}


def test_vocab_is_shared_and_well_formed(gen_json, domain):
    vocab = gen_json["train"]["vocab.json"]
    assert gen_json["val"]["vocab.json"] == vocab
    assert [vocab[w] for w in ("<PAD>", "<UNK>", "<BOS>", "<EOS>")] == [0, 1, 2, 3]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    for concept in domain.object_concepts + domain.relation_concepts:
        assert concept in vocab


# --------------------------------------------------------------------------------------------- 9. bad flags
def test_cli_generate_without_images_is_a_user_error(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to generate" in err


@pytest.mark.parametrize(
    "flags",
    [["--min-objects", "5", "--max-objects", "3"], ["--min-objects", "0"], ["--width", "8"]],
)
def test_cli_generate_rejects_bad_settings_in_one_line(tmp_path, capsys, flags):
    out = tmp_path / "x"
    argv = ["generate", "--out", str(out), "--train-images", "1", "--workers", "1", "--no-progress", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("nscl generate: error:")
    assert not out.exists()


def test_cli_generate_rejects_unknown_cogent_condition(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--out", str(tmp_path / "x"), "--train-images", "1", "--cogent", "C"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_generate_small_dataset(reference, tmp_path, capsys):
    """The command line reaches the same generator: default chunking (one chunk) and the given flags."""
    out = tmp_path / "cli"
    argv = ["generate", "--out", str(out), "--seed", "11", "--train-images", "3", "--width", str(W)]
    argv += ["--height", str(H), "--supersample", "1", "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    scenes = read(out / "train" / "scenes.json")
    assert len(scenes["scenes"]) == 3 and not (out / "val").exists()
    assert (
        scenes["info"]["fingerprint"]
        == replace(small_cfg(out, train_images=3, val_images=0), chunk_size=250).fingerprint()
    )
    # chunk 0 is seeded from (seed, split, chunk) only: the first images equal the reference's
    ref = read(reference[0] / "train" / "scenes.json")["scenes"][:3]
    assert [s["objects"] for s in scenes["scenes"]] == [s["objects"] for s in ref]
