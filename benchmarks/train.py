"""Training throughput of NS-CL (images/s and questions/s, forward + backward + AdamW step) and, given a finished
run, its time to reach an accuracy.

    .venv/bin/python benchmarks/train.py [--data-dir DIR] [--batches 40] [--threads N] [--run-dir RUN]

Without --data-dir it generates 300 images at the demo resolution (192x128) in a temp dir. The anchor is the
release itself measured on this machine (ResNet-34 from scratch, RoI Align in place of its CUDA op, batch 32,
320x240 images): about 4 questions/s training, 12 questions/s evaluating.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nscl.data import SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.inference.dataset import QADataset
from nscl.inference.evaluate import evaluate
from nscl.training.trainer import build_optimizer, train_one_epoch

RELEASE_TRAIN_QPS = 4.0
RELEASE_EVAL_QPS = 12.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--config", default="demo", help="TrainConfig JSON file or a shipped config's name")
    ap.add_argument(
        "--run-dir", default=None, help="also report time-to-accuracy from this run's metrics.jsonl"
    )
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument(
        "--metric",
        default="validation/acc/qa",
        help="metrics.jsonl key for --run-dir (validationextra/acc/qa: the held-out split given as extra data)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    domain = builtin_domain()
    if args.data_dir is None:
        from nscl.generate.pipeline import GenerateConfig, generate_dataset

        tmp = tempfile.mkdtemp()
        generate_dataset(
            GenerateConfig(out=tmp, seed=5, train_images=300, width=192, height=128), domain, progress=False
        )
        data_dir = Path(tmp) / "train"
    else:
        data_dir = Path(args.data_dir)
    from nscl.run_config import load_config

    cfg = load_config(args.config)
    cfg = dataclasses.replace(cfg, min_questions_per_epoch=0)  # time exactly the batches below
    ds = QADataset(load_split(SplitPaths.resolve(data_dir), domain), domain, cfg.image_height)
    torch.manual_seed(0)
    from nscl.models.nscl import NSCL

    model = NSCL(domain, cfg.model)
    opt, _ = build_optimizer(model, cfg)
    ids = np.arange(len(ds))
    batches = list(ds.batches(ids, cfg.batch_size, np.random.default_rng(0)))[: args.batches]
    sub = np.concatenate(batches)
    n_img = len(np.unique(ds.q_image[sub]))
    train_one_epoch(model, ds, batches[0], opt, torch.device("cpu"), cfg, 1, progress=False)  # warm-up
    t = time.perf_counter()
    train_one_epoch(model, ds, sub, opt, torch.device("cpu"), cfg, 2, progress=False)
    dt = time.perf_counter() - t
    qps = len(sub) / dt
    t = time.perf_counter()
    evaluate(model, ds, sub, torch.device("cpu"), "bench", cfg.eval_batch_size, concepts=False)
    eval_qps = len(sub) / (time.perf_counter() - t)
    print(
        f"config {args.config}: image height {cfg.image_height}, batch {cfg.batch_size} questions, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(
        f"train: {qps:7.0f} questions/s, {n_img / dt:6.1f} images/s  ({qps / RELEASE_TRAIN_QPS:.0f}x the release's "
        f"{RELEASE_TRAIN_QPS:.0f} q/s)"
    )
    print(
        f"eval:  {eval_qps:7.0f} questions/s  ({eval_qps / RELEASE_EVAL_QPS:.0f}x the release's {RELEASE_EVAL_QPS:.0f} q/s)"
    )
    if args.run_dir:
        recs = [
            json.loads(x)
            for x in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()
            if x.strip()
        ]
        elapsed = 0.0
        hit = None
        for r in recs:
            elapsed += r.get("seconds", 0.0)
            acc = r.get(args.metric)
            if acc is not None and acc >= args.target and hit is None:
                hit = (r["epoch"], elapsed, acc)
        best = max((r.get(args.metric, 0.0) for r in recs), default=0.0)
        if hit:
            print(
                f"{args.run_dir}: {args.metric} {hit[2]:.4f} >= {args.target} at epoch {hit[0]}, "
                f"{hit[1] / 60:.1f} min of training"
            )
        else:
            print(
                f"{args.run_dir}: {args.metric} never reached {args.target} (best {best:.4f}, "
                f"{elapsed / 60:.1f} min)"
            )


if __name__ == "__main__":
    main()
