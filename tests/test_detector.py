"""The object detector: box decoding, targets and loss, training (overfitting, determinism), checkpoints,
detection on image files of any size, and the detection metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nscl.checkpoint import CheckpointError, save_checkpoint
from nscl.config import ConfigError
from nscl.data import Box, Scene, SceneObject
from nscl.errors import DataError
from nscl.inference.detect import (
    DetectionMetrics,
    detect_images,
    detection_metrics,
    load_detector,
    match_detections,
)
from nscl.models.detector import (
    STRIDE,
    CenterDetector,
    DetectorConfig,
    DetectorOutput,
    decode,
    dense_boxes,
    detector_loss,
    make_targets,
    working_size,
)
from nscl.training.detector import DetectorTrainConfig, train_detector

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = {"height": 48, "width": 8, "head_channels": 16, "threshold": 0.3}
RELATIONS = ("left", "right", "front", "behind")


# --------------------------------------------------------------------------------------------- helpers
def _write_split(
    root: Path, n_images: int, seed: int, size: tuple[int, int] = (64, 48), sides: tuple[int, int] = (8, 17)
) -> Path:
    """A split of grey images with 1-3 coloured rectangles each (sides in [sides[0], sides[1]) pixels), their
    boxes in scenes.json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    W, H = size
    scenes = []
    for i in range(n_images):
        img = np.full((H, W, 3), 120, dtype=np.uint8)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            for _attempt in range(20):
                w, h = int(rng.integers(*sides)), int(rng.integers(*sides))
                x0, y0 = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
                if all(x0 >= b[2] + 2 or x0 + w + 2 <= b[0] or y0 >= b[3] + 2 or y0 + h + 2 <= b[1] for b in
                       (o["box"] for o in objects)):  # fmt: skip
                    break
            else:
                continue
            img[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
            objects.append(
                {
                    "color": "red",
                    "material": "metal",
                    "shape": "cube",
                    "size": "large",
                    "box": [x0, y0, x0 + w, y0 + h],
                }
            )
        name = f"IMG_{i:03d}.png"
        Image.fromarray(img).save(root / "images" / name)
        rel = {r: [[] for _ in objects] for r in RELATIONS}
        scenes.append({"image_index": i, "image_filename": name, "objects": objects, "relationships": rel})
    (root / "scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))
    return root


def _tiny_cfg(**kw: object) -> DetectorTrainConfig:
    base = {
        "model": TINY_MODEL,
        "epochs": 40,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_steps": 5,
        "augment": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "channel_gain": 0.0, "blur_p": 0.0,
                    "noise": 0.0},
    }  # fmt: skip
    base.update(kw)
    return DetectorTrainConfig.from_dict(base)


@pytest.fixture(scope="module")
def overfit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A tiny detector trained to overfit four images (shared by several tests)."""
    root = tmp_path_factory.mktemp("det")
    data = _write_split(root / "data", 4, seed=1)
    torch.set_num_threads(1)
    metrics = train_detector(_tiny_cfg(), data, data, root / "run", "cpu")
    return data, root / "run", metrics


def _scene(boxes: list[list[float]], image: str = "a.png") -> Scene:
    return Scene(0, image, [SceneObject({}, Box(*b)) for b in boxes], {})


# --------------------------------------------------------------------------------------------- model
def test_decode_hand_made_heatmap() -> None:
    h, w = 8, 12
    heat = torch.full((1, 1, h, w), -10.0)
    heat[0, 0, 2, 3] = 4.0  # a peak: sigmoid 0.982
    heat[0, 0, 2, 4] = 3.0  # its neighbour, not a local maximum
    heat[0, 0, 6, 9] = 1.0  # a second peak: sigmoid 0.731
    heat[0, 0, 0, 0] = -2.0  # a peak below the threshold
    size = torch.zeros(1, 2, h, w)
    size[0, :, 2, 3] = torch.tensor([math.log(4.0), math.log(2.0)])  # 16 x 8 pixels
    size[0, :, 6, 9] = torch.tensor([math.log(2.0), math.log(3.0)])  # 8 x 12 pixels
    offset = torch.full((1, 2, h, w), 0.5)
    (det,) = decode(DetectorOutput(heat, size, offset), threshold=0.5, max_detections=10)
    cx, cy = 3.5 * STRIDE, 2.5 * STRIDE
    cx2, cy2 = 9.5 * STRIDE, 6.5 * STRIDE
    expected = torch.tensor([[cx - 8, cy - 4, cx + 8, cy + 4], [cx2 - 4, cy2 - 6, cx2 + 4, cy2 + 6]])
    assert torch.allclose(det.boxes, expected, atol=1e-4)
    assert torch.allclose(det.scores, torch.sigmoid(torch.tensor([4.0, 1.0])))


def test_targets_peak_at_centres_and_loss_is_finite() -> None:
    boxes = [torch.tensor([[8.0, 4.0, 24.0, 20.0]]), torch.zeros(0, 4)]
    t = make_targets(boxes, (8, 12), "cpu")
    assert t.n_objects == 1 and t.centre.sum() == 1 and t.centre[0, 0, 3, 4] == 1 and t.heat[0, 0, 3, 4] == 1
    assert torch.allclose(t.size[0, :, 3, 4], torch.tensor([math.log(4.0), math.log(4.0)]))
    assert torch.allclose(t.offset[0, :, 3, 4], torch.tensor([0.0, 0.0]))
    out = CenterDetector(DetectorConfig(**TINY_MODEL))(torch.rand(2, 3, 32, 48))
    assert out.heat.shape == (2, 1, 8, 12) and out.size.shape == (2, 2, 8, 12)
    assert torch.isfinite(detector_loss(out, t).total)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="colour"):
        DetectorConfig.from_dict({"colour": 1})
    with pytest.raises(ConfigError, match="nope"):
        DetectorTrainConfig.from_dict({"nope": 1})
    with pytest.raises(ConfigError, match="multiple of 16"):
        DetectorConfig(height=50)
    assert working_size(320, 480, 128) == (128, 192)
    with pytest.raises(ConfigError, match="box_vote needs dense_boxes"):
        DetectorTrainConfig.from_dict({"model": {"box_vote": True}})


# --------------------------------------------------------------------------------------------- training
def test_training_overfits_tiny_split(overfit: tuple[Path, Path, dict]) -> None:
    _, run, metrics = overfit
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert metrics["val/recall"] == 1.0 and metrics["val/precision"] == 1.0
    assert len(lines) == 40  # one line per epoch, the last one with the calibrated threshold
    assert (
        lines[-1]["threshold"]
        == metrics["threshold"]
        == load_detector(run / "checkpoint_last.pth").config.threshold
    )


def test_dense_training_overfits_and_decodes_by_vote(tmp_path: Path) -> None:
    # rectangles of 20-32 pixels: 5-8 cells, so that each core covers more than its centre cell
    data = _write_split(tmp_path / "data", 4, seed=1, size=(96, 64), sides=(20, 33))
    cfg = _tiny_cfg(dense_boxes=True, model={**TINY_MODEL, "height": 64, "box_vote": True})
    metrics = train_detector(cfg, data, data, tmp_path / "run", "cpu")
    assert metrics["val/recall"] == 1.0 and metrics["val/precision"] == 1.0
    assert metrics["val/mean_iou"] > 0.7
    det = load_detector(tmp_path / "run" / "checkpoint_last.pth")
    assert det.config.box_vote


def test_threshold_calibration_takes_the_best_balance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recall falls and precision rises with the threshold: the calibrated threshold is where the smaller of
    the two is largest; when every threshold is perfect, the model's own one is kept."""
    import nscl.training.detector as td

    det = CenterDetector(DetectorConfig(height=48, width=8, head_channels=16, threshold=0.6))
    data = type("Data", (), {"scenes": []})()
    curve = {"recall": lambda t: 1.0 - 0.1 * t, "precision": lambda t: 0.9 + 0.05 * t}
    monkeypatch.setattr(td, "detect_split", lambda m, d, dev, t: [])

    def fake(records: list, scenes: list, threshold: float) -> DetectionMetrics:
        """The made-up scores of ``threshold``."""
        return DetectionMetrics(curve["recall"](threshold), curve["precision"](threshold), 0, 0, 0, 0, 0, 0.0)

    monkeypatch.setattr(td, "detection_metrics", fake)
    # 1 - 0.1 t = 0.9 + 0.05 t at t = 2/3; on the grid min() peaks at 0.65 (0.9325 against 0.93 at 0.70)
    assert td.calibrate_threshold(det, data, "cpu")[0] == 0.65
    monkeypatch.setattr(
        td, "detection_metrics", lambda records, scenes, threshold: DetectionMetrics(1, 1, 0, 0, 0, 0, 0, 0.0)
    )
    assert td.calibrate_threshold(det, data, "cpu")[0] == 0.6


def test_training_is_deterministic(tmp_path: Path) -> None:
    data = _write_split(tmp_path / "data", 3, seed=2)
    cfg = _tiny_cfg(epochs=2, augment={})  # with the default (random) augmentation
    m1 = train_detector(cfg, data, None, tmp_path / "a", "cpu")
    m2 = train_detector(cfg, data, None, tmp_path / "b", "cpu")
    assert m1["loss"] == m2["loss"]
    a, b = (
        load_detector(tmp_path / "a" / "checkpoint_last.pth"),
        load_detector(tmp_path / "b" / "checkpoint_last.pth"),
    )
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


# --------------------------------------------------------------------------------------------- inference
def test_checkpoint_round_trip(overfit: tuple[Path, Path, dict], tmp_path: Path) -> None:
    data, run, _ = overfit
    det = load_detector(run / "checkpoint_last.pth")
    paths = sorted((data / "images").glob("*.png"))
    first = detect_images(det, paths, "cpu")
    state = torch.load(run / "checkpoint_last.pth", weights_only=True)
    save_checkpoint(tmp_path / "copy.pth", {k: v for k, v in state.items() if k != "format"})
    again = detect_images(load_detector(tmp_path / "copy.pth"), paths, "cpu")
    assert first == again
    assert (
        first[0]["objects"] == []
        and first[0]["image_filename"] == "IMG_000.png"
        and first[0]["objects_detection"]
    )


def test_non_detector_checkpoint_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "nscl.pth", {"model": {}, "config": {}, "domain": {}})
    with pytest.raises(CheckpointError, match=r"nscl\.pth: not a detector checkpoint"):
        load_detector(tmp_path / "nscl.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_detector(tmp_path / "missing.pth")


def test_boxes_are_scaled_back_to_the_original_image(
    overfit: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    data, run, _ = overfit
    det = load_detector(run / "checkpoint_last.pth")
    src = data / "images" / "IMG_000.png"
    big = tmp_path / "big.png"
    Image.open(src).resize((192, 144), Image.NEAREST).save(big)  # 3x the working size
    (small,) = detect_images(det, [src], "cpu")
    (large,) = detect_images(det, [big], "cpu")
    a = torch.tensor([d["box"] for d in small["objects_detection"]])
    b = torch.tensor([d["box"] for d in large["objects_detection"]])
    assert a.shape == b.shape and len(a) > 0
    assert torch.allclose(a * 3, b, atol=1.0)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="bad.png"):
        detect_images(det, [bad], "cpu")


# --------------------------------------------------------------------------------------------- metric
def test_detection_metrics_by_hand() -> None:
    from pycocotools import mask as mask_utils

    gt = _scene([[0, 0, 20, 20], [30, 0, 50, 20], [60, 0, 65, 5]])
    tiny = np.zeros((40, 80), dtype=np.uint8, order="F")
    tiny[0:5, 60:65] = 1  # 25 visible pixels: not counted in recall
    gt.objects[2].mask = {k: v.decode() if k == "counts" else v for k, v in mask_utils.encode(tiny).items()}
    dets = [
        {"box": [0, 0, 20, 20], "score": 0.9},  # TP (object 0)
        {"box": [1, 1, 20, 20], "score": 0.8},  # duplicate: object 0 taken -> FP
        {"box": [60, 0, 65, 5], "score": 0.7},  # TP on the small object
        {"box": [100, 0, 120, 20], "score": 0.6},  # FP
        {"box": [30, 0, 50, 20], "score": 0.1},  # below the threshold: ignored
    ]
    m = detection_metrics([{"image_filename": "a.png", "objects_detection": dets}], [gt], threshold=0.5)
    assert (m.found, m.large, m.true_positives, m.detections, m.objects) == (1, 2, 2, 4, 3)
    assert m.recall == 0.5 and m.precision == 0.5
    m0 = detection_metrics([{"image_filename": "a.png", "objects_detection": dets}], [gt])
    assert m0.recall == 1.0 and m0.precision == 3 / 5


def test_greedy_matching_takes_best_score_first() -> None:
    gtb = torch.tensor([[0.0, 0, 10, 10]])
    db = torch.tensor([[0.0, 0, 10, 9], [0.0, 0, 10, 10]])
    assert match_detections(db, torch.tensor([0.9, 0.5]), gtb, 0.5).tolist() == [0, -1]
    assert match_detections(db, torch.tensor([0.5, 0.9]), gtb, 0.5).tolist() == [-1, 0]


def test_mean_iou_of_matched_detections_by_hand() -> None:
    gt = _scene([[0, 0, 20, 20], [30, 0, 50, 20]])
    dets = [
        {"box": [0, 0, 20, 10], "score": 0.9},  # IoU 0.5 with object 0
        {"box": [30, 0, 50, 20], "score": 0.8},  # IoU 1 with object 1
        {"box": [100, 0, 120, 20], "score": 0.7},  # unmatched: not in the mean
    ]
    m = detection_metrics([{"image_filename": "a.png", "objects_detection": dets}], [gt])
    assert m.true_positives == 2 and m.mean_iou == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------- dense boxes
def _boxes_from_targets(t: object, b: int = 0) -> torch.Tensor:
    """The box every cell's size and offset targets describe, (h, w, 4) pixels."""
    out = DetectorOutput(torch.zeros_like(t.heat), t.size, t.offset)
    return dense_boxes(out)[b].permute(1, 2, 0)


def test_dense_targets_give_every_core_cell_the_objects_box() -> None:
    boxes = [torch.tensor([[8.0, 8.0, 48.0, 40.0], [44.0, 12.0, 60.0, 22.0], [70.0, 30.0, 73.0, 34.0]])]
    t = make_targets(boxes, (16, 20), "cpu", dense=True)
    cells = _boxes_from_targets(t)  # (h, w, 4)
    per_object = []
    for box in boxes[0]:
        mine = (t.box_weight[0, 0] > 0) & torch.isclose(cells, box, atol=1e-4).all(-1)  # (h, w)
        per_object.append(float(t.box_weight[0, 0][mine].sum()))
    assert per_object == pytest.approx([1.0, 1.0, 1.0])  # each object's weights sum to 1, on its own box
    assert int((t.box_weight > 0).sum()) > 3  # more than the centre cells
    w = t.box_weight[0, 0]
    assert w[6, 7] == w[2:10, 2:12].max()  # the large object's weight peaks at its centre cell (7, 6)
    sparse = make_targets(boxes, (16, 20), "cpu")
    assert torch.equal(sparse.box_weight, sparse.centre)  # without dense: the centre cells only
    assert torch.equal(sparse.heat, t.heat) and torch.equal(sparse.centre, t.centre)


def test_dense_loss_is_zero_at_the_targets_and_reaches_every_cell() -> None:
    t = make_targets([torch.tensor([[8.0, 8.0, 48.0, 40.0]])], (16, 20), "cpu", dense=True)
    size = (t.size + 0.1).requires_grad_(True)  # off by 0.1 everywhere: L1's gradient is nonzero
    loss = detector_loss(DetectorOutput(torch.zeros_like(t.heat), size, t.offset + 0.5), t)
    assert float(detector_loss(DetectorOutput(torch.zeros_like(t.heat), t.size, t.offset), t).size) == 0.0
    # |0.5| on x and on y, the weights summing to 1 per object
    assert float(loss.offset) == pytest.approx(1.0, abs=1e-5)
    assert float(loss.size) == pytest.approx(0.2, abs=1e-5)
    loss.total.backward()
    assert torch.equal(size.grad.abs().sum(1, keepdim=True) > 0, t.box_weight > 0)


def test_vote_averages_the_neighbours_that_agree() -> None:
    h, w = 8, 12
    heat = torch.full((1, 1, h, w), -10.0)
    heat[0, 0, 3, 4] = 2.0  # the peak
    heat[0, 0, 3, 5] = 0.0  # a neighbour predicting a box 2 pixels wider: weight sigmoid(0) = 0.5
    heat[0, 0, 2, 4] = 0.0  # a neighbour predicting a disjoint box: left out
    size = torch.zeros(1, 2, h, w)
    size[0, :, 3, 4] = math.log(4.0)  # 16 x 16 pixels
    size[0, 0, 3, 5], size[0, 1, 3, 5] = math.log(4.5), math.log(4.0)  # 18 x 16, same centre
    offset = torch.zeros(1, 2, h, w)
    offset[0, 0, 3, 5] = -1.0  # the cell to the right pointing back at the peak's centre
    offset[0, 1, 2, 4] = -5.0  # far above
    out = DetectorOutput(heat, size, offset)
    (plain,) = decode(out, 0.5, 10)
    (voted,) = decode(out, 0.5, 10, vote=True)
    p = float(torch.sigmoid(torch.tensor(2.0)))
    half_w = (8.0 * p + 9.0 * 0.5) / (p + 0.5)
    assert torch.allclose(plain.boxes, torch.tensor([[8.0, 4.0, 24.0, 20.0]]))
    assert torch.allclose(voted.boxes, torch.tensor([[16 - half_w, 4.0, 16 + half_w, 20.0]]), atol=1e-5)
    assert torch.equal(plain.scores, voted.scores)
