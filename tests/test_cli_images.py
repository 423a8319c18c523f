"""The commands for images without boxes, end to end on the small generated dataset: ``nscl train-detector``,
``nscl detect`` (a scenes file NS-CL reads as ``objects_detection``) and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nscl.cli import main
from nscl.data import read_scenes
from nscl.domain import Domain

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "model": {"height": 48, "width": 8, "head_channels": 16},
    "epochs": 2,
    "batch_size": 8,
    "warmup_steps": 2,
}


@pytest.fixture(scope="module")
def detector(gen_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detector")
    (root / "config.json").write_text(json.dumps(TINY))
    rc = main(
        [
            "train-detector",
            "--data-dir",
            str(gen_root / "val"),
            "--val-dir",
            str(gen_root / "val"),
            "--run-dir",
            str(root / "run"),
            "--config",
            str(root / "config.json"),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert rc == 0
    return root / "run" / "checkpoint_last.pth"


def test_detect_writes_a_scenes_file_ns_cl_reads(
    detector: Path, gen_root: Path, domain: Domain, tmp_path: Path
) -> None:
    out = tmp_path / "detected.json"
    args = [
        "detect",
        "--load",
        str(detector),
        "--images",
        str(gen_root / "val" / "images"),
        "--out",
        str(out),
    ]
    assert main([*args, "--threshold", "0.0", "--device", "cpu"]) == 0
    records = json.loads(out.read_text())["scenes"]
    truth = json.loads((gen_root / "val" / "scenes.json").read_text())["scenes"]
    # CLEVR's file names carry the image index, so questions files keep matching the scenes
    assert [(r["image_index"], r["image_filename"]) for r in records] == [
        (s["image_index"], s["image_filename"]) for s in truth
    ]
    scenes = read_scenes(out, domain, box_source="detection", detection_threshold=0.0)
    assert len(scenes) == len(truth) and all(s.objects and s.boxes for s in scenes)
    for r in records:
        scores = [d["score"] for d in r["objects_detection"]]
        assert scores == sorted(scores, reverse=True)


def test_detect_errors_are_one_line(detector: Path, gen_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.json"
    assert (
        main(["detect", "--load", str(detector), "--images", str(tmp_path / "missing"), "--out", str(out)])
        == 2
    )
    assert "missing: no such image file or folder" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["detect", "--load", str(detector), "--images", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.png" in err[0]
    assert not out.exists()
    not_a_detector = gen_root / "val" / "scenes.json"
    assert main(["detect", "--load", str(not_a_detector), "--images", str(bad)]) == 2
    assert str(not_a_detector) in capsys.readouterr().err


def test_a_detector_is_not_an_nscl_model(detector: Path, gen_root: Path, capsys) -> None:
    image = next((gen_root / "val" / "images").iterdir())
    assert (
        main(
            ["ask", "--load", str(detector), "--image", str(image), "--detector", str(detector), "How many?"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a detector checkpoint, not an NSCL model" in err[0]
