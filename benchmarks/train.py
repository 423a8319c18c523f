"""Training throughput of NS-CL (images/s and questions/s, forward + backward + AdamW step) and, given a finished
run, its time to reach an accuracy; or, with --compare, time to a held-out accuracy of two configurations trained one
after the other in the same run on the same data (a ratio that holds on any machine).

    .venv/bin/python benchmarks/train.py [--data-dir DIR] [--batches 40] [--threads N] [--run-dir RUN]
    .venv/bin/python benchmarks/train.py --compare benchmarks/data/demo-previous.json demo \
        --compare-data data/demo-10q/train-set/train data/demo/train-set/train \
        --heldout-dir data/demo/val-set/val --out runs/bench-train

In --compare mode each configuration trains exactly as ``nscl train --config`` would (its own thread count), with the
held-out split evaluated after every epoch; evaluation time is not counted, only the epochs' training seconds.

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
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="train both configurations (file or shipped name) and report their time to --target held-out QA",
    )
    ap.add_argument(
        "--compare-data",
        nargs=2,
        metavar=("BEFORE_DIR", "AFTER_DIR"),
        help="--compare: each configuration's training split (default: --data-dir for both)",
    )
    ap.add_argument("--heldout-dir", default=None, help="--compare: the held-out split (another seed)")
    ap.add_argument("--out", default="runs/bench-train", help="--compare: run directories go here")
    args = ap.parse_args()
    if args.compare:
        compare(args)
        return
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


def time_to(records: list[dict], metric: str, target: float) -> tuple[int, float] | None:
    """(epoch, training seconds so far) at the first epoch whose ``metric`` reaches ``target``; None if none."""
    elapsed = 0.0
    for r in records:
        elapsed += r.get("seconds", 0.0)
        if r.get(metric, 0.0) >= target:
            return int(r["epoch"]), elapsed
    return None


def compare(args: argparse.Namespace) -> None:
    from machine import machine_line
    from nscl.config import override
    from nscl.run_config import load_config
    from nscl.training.trainer import fit_nscl

    data_dirs = args.compare_data or [args.data_dir, args.data_dir]
    if not (all(data_dirs) and args.heldout_dir):
        raise SystemExit("--compare needs --data-dir or --compare-data (training splits) and --heldout-dir")
    domain = builtin_domain()
    heldout = SplitPaths.resolve(Path(args.heldout_dir))
    metric = "validationextra/acc/qa"
    rows = []
    for i, (name, data_dir) in enumerate(zip(args.compare, data_dirs)):
        train = SplitPaths.resolve(Path(data_dir))
        cfg = override(load_config(name), {"validation_interval": 1, "save_interval": 10**6})
        run_dir = Path(args.out) / f"{i}-{Path(name).stem}"
        res = fit_nscl(cfg, domain, train, run_dir, torch.device("cpu"), extra_paths=heldout, progress=False)
        recs = [json.loads(x) for x in res.run.metrics.read_text().splitlines() if x.strip()]
        hit = time_to(recs, metric, args.target)
        total = sum(r.get("seconds", 0.0) for r in recs)
        last = recs[-1]
        types = {k.rsplit("/", 1)[1]: v for k, v in last.items() if k.startswith(metric + "/")}
        low = min(types, key=types.get) if types else None
        lowest = f"{low} {types[low]:.4f}" if low else "-"
        rows.append((f"{name} on {data_dir}", cfg, hit, total, last.get(metric, 0.0), lowest))
    print(machine_line() + f"; torch {torch.__version__}")
    print(f"time to {args.target:.1%} held-out QA ({args.heldout_dir}), training seconds only:\n")
    print(
        "| configuration | threads | batch | epochs | reaches target at | training to target | full training "
        "| final held-out QA | its lowest type |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, cfg, hit, total, final, lowest in rows:
        at = f"epoch {hit[0]}" if hit else "never"
        to = f"{hit[1] / 60:.1f} min" if hit else "-"
        print(
            f"| {name} | {cfg.threads} | {cfg.batch_size} | {cfg.epochs} | {at} | {to} | {total / 60:.1f} min | {final:.4f} | {lowest} |"
        )
    h0, h1 = rows[0][2], rows[1][2]
    if h0 and h1:
        print(
            f"\n{args.compare[1]} reaches {args.target:.1%} {h0[1] / h1[1]:.2f}x sooner than {args.compare[0]}"
        )


if __name__ == "__main__":
    main()
