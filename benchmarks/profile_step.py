"""Where a training step's time goes: the demo configuration's step on real batches of the demo data, split into
batch assembly, perception (trunk, RoI pooling, crop branch, heads), program execution, loss, backward and the
optimiser, plus torch.profiler's most expensive operators.

Batches come from the full curriculum stage (every question), in the trainer's order; the first ``--warmup`` steps
are not counted. Times are wall-clock medians over ``--steps`` steps on ``--threads`` torch threads; the shares
only hold for this machine and thread count, so the CPU model is printed with them.

    .venv/bin/python benchmarks/profile_step.py [--data-dir data/demo/train-set/train] [--config demo]
        [--steps 60] [--threads 1] [--ops 15] [--set model.precision=bfloat16] [--set batch_size=64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from machine import machine_line
from nscl.config import override, parse_settings
from nscl.data import SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.inference.dataset import QADataset
from nscl.losses import Targets, qa_loss
from nscl.models.nscl import NSCL
from nscl.run_config import load_config
from nscl.training.trainer import build_optimizer

PHASES = ("batch", "perception", "execution", "loss", "backward", "optimizer")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def profile(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = override(load_config(args.config), parse_settings(args.set))
    domain = builtin_domain()
    ds = QADataset(load_split(SplitPaths.resolve(args.data_dir), domain), domain, cfg.image_height)
    model = NSCL(domain, cfg.model).to(device)
    model.train()
    opt, _ = build_optimizer(model, cfg)
    batches = list(ds.batches(np.arange(len(ds)), cfg.batch_size, np.random.default_rng(0)))
    times: dict[str, list[float]] = defaultdict(list)
    for step, qids in enumerate(batches[: args.warmup + args.steps]):
        marks = [time.perf_counter()]
        batch = ds.make_batch(qids).to(device)
        marks.append(time.perf_counter())
        scene = model.perceive(batch.images, batch.boxes, batch.mask)
        _sync(device)
        marks.append(time.perf_counter())
        out = model.executor(batch.programs, scene, False)
        _sync(device)
        marks.append(time.perf_counter())
        loss, _, _ = qa_loss(out, Targets(batch.kind, batch.value))
        marks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        _sync(device)
        marks.append(time.perf_counter())
        opt.step()
        _sync(device)
        marks.append(time.perf_counter())
        if step >= args.warmup:
            for name, t0, t1 in zip(PHASES, marks, marks[1:]):
                times[name].append(t1 - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    print(machine_line() + f"; torch {torch.__version__}, {args.threads} thread(s), device {device}")
    print(
        f"config {args.config} {' '.join(args.set)}: batch {cfg.batch_size} questions, images {ds.height}x{ds.width}, "
        f"{args.steps} steps after {args.warmup} warm-up\n"
    )
    print("| phase | median ms per step | share |")
    print("| --- | --- | --- |")
    for name in PHASES:
        print(f"| {name} | {1000 * med[name]:.1f} | {med[name] / total:.1%} |")
    print(f"| **step** | **{1000 * total:.1f}** | {1 / total:.1f} steps/s |")

    if args.ops:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for qids in batches[args.warmup : args.warmup + min(args.steps, 20)]:
                batch = ds.make_batch(qids).to(device)
                out, _ = model(batch.images, batch.boxes, batch.mask, batch.programs)
                loss, _, _ = qa_loss(out, Targets(batch.kind, batch.value))
                opt.zero_grad(set_to_none=True)
                loss.mean().backward()
                opt.step()
        print(f"\ntorch.profiler, {min(args.steps, 20)} steps, by self CPU time:\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("data/demo/train-set/train"))
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ops", type=int, default=15, help="operators to list from torch.profiler (0: none)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value as nscl train does, e.g. --set model.precision=bfloat16 (repeatable)",
    )
    profile(ap.parse_args())


if __name__ == "__main__":
    main()
