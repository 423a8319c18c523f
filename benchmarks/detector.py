"""Object detector benchmark: recall / precision / images per second on a held-out split, the comparison with
torchvision's Faster R-CNN trained for the same wall time, QA accuracy with detected boxes against true boxes,
and a smoke count on real CLEVR images. Everything runs on one CPU thread.

Recall counts the objects with >= 100 visible pixels (ground-truth RLE mask area at the stored resolution)
matched at IoU >= 0.5; precision counts a detection as right when it matches any object (small or hidden ones
too); matching is greedy by score (:func:`nscl.inference.detect.detection_metrics`). Images per second are
end to end (PNG decode, resize, network, decoding), one image at a time and in batches of 32. QA with detected
boxes is split in two steps: true boxes -> each found object's box replaced by its detection (box precision
alone) -> only the detections (misses and false detections too).

    # a trained detector (nscl train-detector, or --train below) on the held-out split, QA with its boxes,
    # and the real-image smoke check
    .venv/bin/python benchmarks/detector.py --load runs/detector/checkpoint_last.pth \\
        --qa-load runs/demo/checkpoint_last.pth --real ../shared/clevr/real-dev

    # train the default detector first (24 minutes on two threads, 46 on one shared thread), then the same report
    .venv/bin/python benchmarks/detector.py --train runs/detector

    # the centre-point detector against Faster R-CNN (small custom backbone), M minutes of training each
    .venv/bin/python benchmarks/detector.py --compare-fasterrcnn --minutes 4 --run-dir runs/detector-compare

Data defaults: ``data/demo/{train-set/train, val-set/val}`` (what ``make demo`` generates) (``--train-dir``, ``--val-dir``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from nscl.data import SplitPaths, load_split, read_scenes
from nscl.domain import load_domain
from nscl.inference.dataset import QADataset
from nscl.inference.detect import detect_images, detection_metrics, load_detector, match_detections
from nscl.inference.evaluate import evaluate
from nscl.inference.load import load
from nscl.training.detector import BoxData, DetectorTrainConfig, augment, load_box_data, train_detector

TRAIN = Path("data/demo/train-set/train")
VAL = Path("data/demo/val-set/val")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
Records = list[dict[str, Any]]


# --------------------------------------------------------------------------------------------- scoring
def sweep(records: Records, scenes: Sequence[Any], default: float) -> dict[str, Any]:
    """Metrics at the model's default threshold and at the threshold that maximises min(recall, precision)."""
    at = {t: detection_metrics(records, scenes, threshold=t) for t in sorted({*THRESHOLDS, default})}
    best = max(at, key=lambda t: (min(at[t].recall, at[t].precision), -abs(t - default)))
    return {"default": (default, at[default]), "best": (best, at[best])}


def images_per_second(run: Callable[[Sequence[Path]], Any], paths: Sequence[Path], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        run(paths[i : i + batch])
    return len(paths) / (time.perf_counter() - start)


def row(name: str, train_s: float, sw: dict[str, Any], ips1: float, ips32: float) -> str:
    (t, m), (tb, mb) = sw["default"], sw["best"]
    return (
        f"| {name} | {train_s / 60:.1f} | {t:.2f} | {100 * m.recall:.2f} | {100 * m.precision:.2f} "
        f"| {m.mean_iou:.3f} "
        f"| {tb:.2f} | {100 * mb.recall:.2f} | {100 * mb.precision:.2f} | {ips1:.1f} | {ips32:.1f} |"
    )


HEADER = (
    "| model | train min | thr | recall % | precision % | box IoU | best thr | recall % | precision % "
    "| img/s (1) | img/s (32) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def centre_report(
    det_path: Path, scenes: Sequence[Any], paths: Sequence[Path], train_s: float, vote: bool | None = None
) -> str:
    det = _load(det_path, vote)
    records = detect_images(det, paths, "cpu", threshold=0.05)
    sw = sweep(records, scenes, det.config.threshold)
    n = min(len(paths), 200)
    ips1 = images_per_second(lambda p: detect_images(det, p, "cpu"), paths[:n], 1)
    ips32 = images_per_second(lambda p: detect_images(det, p, "cpu"), paths[:n], 32)
    params = sum(p.numel() for p in det.parameters())
    return row(f"centre-point ({params / 1e6:.2f} M params)", train_s, sw, ips1, ips32)


# --------------------------------------------------------------------------------------------- Faster R-CNN
def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_fasterrcnn(width: int = 24) -> nn.Module:
    """torchvision Faster R-CNN, no downloaded weights: a stride-8 trunk like the centre-point detector's first
    three levels, one feature map, anchors of 8 to 64 pixels, a 256-wide box head; images kept at 128 high."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    c = width
    trunk = nn.Sequential(
        _block(3, c, 2), _block(c, c), _block(c, 2 * c, 2), _block(2 * c, 2 * c),
        _block(2 * c, 4 * c, 2), _block(4 * c, 4 * c), _block(4 * c, 4 * c, dilation=2),
        _block(4 * c, 4 * c, dilation=4),
    )  # fmt: skip
    trunk.out_channels = 4 * c
    return FasterRCNN(
        trunk,
        num_classes=None,
        min_size=128,
        max_size=1024,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.25, 0.25, 0.25],
        rpn_anchor_generator=AnchorGenerator(((8, 16, 32, 64),), ((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(4 * c * 49, 256),
        box_predictor=FastRCNNPredictor(256, 2),
        box_batch_size_per_image=128,
        box_score_thresh=0.05,
        box_detections_per_img=40,
    )


def train_fasterrcnn(model: nn.Module, data: BoxData, minutes: float, seed: int = 0, batch: int = 8) -> int:
    """AdamW with warm-up and cosine decay over the wall-time budget; returns the number of steps."""
    cfg = DetectorTrainConfig()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    budget, start, step = minutes * 60, time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < budget:
        for idx in torch.randperm(len(data.scenes), generator=gen).split(batch):
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
            x, boxes = augment(data.images[idx], [data.boxes[j] for j in idx.tolist()], cfg.augment, gen)
            targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
            lr = (
                1e-3
                * min(1.0, (step + 1) / 100)
                * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
            )
            for g in opt.param_groups:
                g["lr"] = lr
            losses = model(list(x), targets)
            opt.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            opt.step()
            step += 1
    return step


@torch.no_grad()
def fasterrcnn_detect(model: nn.Module, paths: Sequence[Path]) -> Records:
    from nscl.inference.detect import read_image

    model.eval()
    ims = [torch.from_numpy(read_image(p).copy()).permute(2, 0, 1).float() / 255.0 for p in paths]
    out = model(ims)
    return [
        {
            "image_filename": p.name,
            "objects_detection": [
                {"box": b, "score": s} for b, s in zip(o["boxes"].tolist(), o["scores"].tolist())
            ],
        }
        for p, o in zip(paths, out)
    ]


def compare(args: argparse.Namespace, scenes: Sequence[Any], paths: Sequence[Path]) -> None:
    run = Path(args.run_dir)
    cfg = DetectorTrainConfig(minutes=args.minutes)
    start = time.perf_counter()
    train_detector(cfg, args.train_dir, None, run / "centre", "cpu")
    centre_s = time.perf_counter() - start
    lines = [HEADER, centre_report(run / "centre" / "checkpoint_last.pth", scenes, paths, centre_s)]
    data = load_box_data(args.train_dir, 128)
    frcnn = build_fasterrcnn()
    start = time.perf_counter()
    steps = train_fasterrcnn(frcnn, data, args.minutes)
    frcnn_s = time.perf_counter() - start
    records: Records = []
    for i in range(0, len(paths), 32):
        records += fasterrcnn_detect(frcnn, paths[i : i + 32])
    sw = sweep(records, scenes, 0.5)
    n = min(len(paths), 200)
    ips1 = images_per_second(lambda p: fasterrcnn_detect(frcnn, p), paths[:n], 1)
    ips32 = images_per_second(lambda p: fasterrcnn_detect(frcnn, p), paths[:n], 32)
    params = sum(p.numel() for p in frcnn.parameters())
    lines.append(
        row(f"Faster R-CNN ({params / 1e6:.2f} M params, {steps} steps of 8)", frcnn_s, sw, ips1, ips32)
    )
    print("\n".join(lines))


# --------------------------------------------------------------------------------------------- QA, real images
def matched_boxes(
    record: dict[str, Any], scene: Any, true: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``true`` (N, 4), a scene's boxes in the dataset's pixels, with each object matched by a detection of
    ``record`` (IoU >= 0.5, greedy by score) moved to that detection's box; ``scale`` (4,) takes the image
    file's pixels to the dataset's."""
    dets = record["objects_detection"]
    db = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)
    ds = torch.tensor([float(d["score"]) for d in dets], dtype=torch.float32)
    gb = torch.tensor([b.as_list() for b in scene.boxes], dtype=torch.float32).reshape(-1, 4)
    matched = match_detections(db, ds, gb, 0.5)
    out = true.clone()
    for d in (matched >= 0).nonzero()[:, 0].tolist():
        out[int(matched[d])] = db[d] * scale
    return out


def qa_with_detections(
    det_path: Path, qa_path: Path, val_dir: Path, vote: bool | None = None
) -> dict[str, float]:
    """QA accuracy of an NSCL checkpoint on ``val_dir`` with true boxes and with detected boxes."""
    ck = load(qa_path, "cpu")
    model, cfg, domain = ck.model, ck.config, ck.domain
    assert model is not None
    paths = SplitPaths.resolve(val_dir)
    split = load_split(paths, domain)
    ds = QADataset(split, domain, cfg.image_height)
    result = {"questions": float(len(ds))}
    result["true boxes"] = evaluate(model, ds, np.arange(len(ds)), "cpu", "v", cfg.eval_batch_size, False)[
        "v/acc/qa"
    ]
    scenes = sorted(split.scenes.values(), key=lambda s: s.image_index)
    det = _load(det_path, vote)
    records = detect_images(det, [paths.images / s.image_filename for s in scenes], "cpu")
    for s, r in zip(scenes, records):
        r["image_index"] = s.image_index
    result["images without detections"] = float(sum(not r["objects_detection"] for r in records))
    # Box precision alone: each found object gets its detection's box, a missed one keeps its true box.
    true_boxes = ds.boxes
    ds.boxes = []
    for r, s, b in zip(records, scenes, true_boxes):
        with Image.open(paths.images / s.image_filename) as im:
            w, h = im.size
        scale = torch.tensor([ds.width / w, ds.height / h, ds.width / w, ds.height / h])
        ds.boxes.append(matched_boxes(r, s, b, scale))
    result["found objects' detected boxes"] = evaluate(
        model, ds, np.arange(len(ds)), "cpu", "v", cfg.eval_batch_size, False
    )["v/acc/qa"]
    ds.boxes = true_boxes
    with tempfile.TemporaryDirectory() as tmp:
        scenes_json = Path(tmp) / "scenes.json"
        scenes_json.write_text(json.dumps({"info": {}, "scenes": records}))
        dpaths = SplitPaths(scenes_json, paths.questions, paths.images, paths.vocab)
        dsplit = load_split(dpaths, domain, box_source="detection", detection_threshold=0.0)
        dds = QADataset(dsplit, domain, cfg.image_height)
        m = evaluate(model, dds, np.arange(len(dds)), "cpu", "v", cfg.eval_batch_size, False)
    result["detected boxes"] = m["v/acc/qa"]
    return result


def _load(det_path: Path, vote: bool | None) -> Any:
    """The detector, its ``box_vote`` replaced when ``vote`` is not None."""
    det = load_detector(det_path)
    if vote is not None:
        det.config = dataclasses.replace(det.config, box_vote=vote)
    return det


def real_smoke(det_path: Path, real: Path) -> list[str]:
    det = load_detector(det_path)
    scenes = {
        s.image_filename: s for s in read_scenes(real / "CLEVR_train_scenes.json", load_domain(None), "none")
    }
    paths = sorted((real / "images").rglob("*.png"))
    out = []
    for p, r in zip(paths, detect_images(det, paths, "cpu")):
        truth = len(scenes[p.name].objects) if p.name in scenes else "?"
        scores = ", ".join(f"{d['score']:.2f}" for d in r["objects_detection"])
        out.append(f"| {p.name} | {len(r['objects_detection'])} | {truth} | {scores} |")
    return ["| real image | detected | objects | scores |", "|---|---|---|---|", *out]


# --------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=Path, help="a detector checkpoint to benchmark")
    ap.add_argument("--train", type=Path, help="train the default detector into this run directory first")
    ap.add_argument("--train-dir", type=Path, default=TRAIN)
    ap.add_argument("--val-dir", type=Path, default=VAL)
    ap.add_argument("--compare-fasterrcnn", action="store_true")
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall time of each compared model")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/detector-compare"))
    ap.add_argument(
        "--qa-load", type=Path, help="an NSCL checkpoint: QA accuracy with detected vs true boxes"
    )
    ap.add_argument(
        "--real", type=Path, help="real CLEVR dir (images/, CLEVR_train_scenes.json): smoke counts"
    )
    ap.add_argument(
        "--box-vote",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode with (or without) box voting [the detector's own setting]",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scenes = sorted(
        read_scenes(SplitPaths.resolve(args.val_dir).scenes, load_domain(None)), key=lambda s: s.image_index
    )
    paths = [args.val_dir / "images" / s.image_filename for s in scenes]
    if args.compare_fasterrcnn:
        compare(args, scenes, paths)
    det_path = args.load
    if args.train is not None:
        start = time.perf_counter()
        train_detector(DetectorTrainConfig(), args.train_dir, args.val_dir, args.train, "cpu")
        print(f"trained in {(time.perf_counter() - start) / 60:.1f} min")
        det_path = args.train / "checkpoint_last.pth"
    if det_path is None:
        return
    print(HEADER)
    print(centre_report(det_path, scenes, paths, float("nan"), args.box_vote))
    if args.qa_load is not None:
        qa = qa_with_detections(det_path, args.qa_load, args.val_dir, args.box_vote)
        print("\n| boxes | QA accuracy % |\n|---|---|")
        for k in ("true boxes", "found objects' detected boxes", "detected boxes"):
            print(f"| {k} | {100 * qa[k]:.2f} |")
        print(
            f"({qa['questions']:.0f} questions, {qa['images without detections']:.0f} images without detections)"
        )
    if args.real is not None:
        print("\n" + "\n".join(real_smoke(det_path, args.real)))


if __name__ == "__main__":
    main()
