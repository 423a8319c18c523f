"""Scale: training throughput in one process and across processes (torchrun, gloo on the CPU; NCCL on GPUs), and
how long a CLEVR-size questions file takes to load and how much memory it needs.

    .venv/bin/python benchmarks/scale.py throughput --data-dir data/demo/train-set/train [--procs 1 2] [--batches 60]
        [--set loader_workers=1]
    .venv/bin/python benchmarks/scale.py load --scenes 70000 --questions-per-scene 10 [--distinct-programs]
        [--modes compact eager]

``throughput`` trains the demo configuration on the full curriculum stage for ``--batches`` batches per process after
a warm-up, once per entry of ``--procs`` (1: one process with the config's threads; N: ``torchrun --nproc-per-node N``,
the cores shared out), and prints questions/s and images/s for each, with the CPU model. ``load`` writes a synthetic
split (the scenes and questions of ``--data-dir`` repeated, image files shared) and, in a fresh process per reader,
times reading it (``compact``: ``nscl.question_table.load_split_compact``, what ``lazy_programs`` uses; ``eager``:
``nscl.data.load_split``) and building the training dataset from it with lazy images, with the peak memory.
Repeating the questions repeats their programs, which the compact reader stores once; ``--distinct-programs`` adds a
key no reader looks at to each program so that every program's text differs, the worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _worker(args: argparse.Namespace) -> None:
    """``nscl``'s own training epoch (``train_one_epoch``: this rank's shard of the batches, DDP when several
    processes) over ``--batches`` batches per process after a warm-up; rank 0 prints a JSON line."""
    import numpy as np
    import torch

    from nscl.config import override, parse_settings
    from nscl.data import SplitPaths, load_split
    from nscl.domain import builtin_domain
    from nscl.inference.dataset import QADataset
    from nscl.models.nscl import NSCL
    from nscl.run_config import load_config
    from nscl.training.distributed import barrier, init_world, shutdown, training_step_module
    from nscl.training.trainer import build_optimizer, train_one_epoch

    cfg = override(load_config(args.config), {"min_questions_per_epoch": 0, **parse_settings(args.set)})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world, device = init_world(torch.device(args.device), cfg.threads)
    domain = builtin_domain()
    ds = QADataset(load_split(SplitPaths.resolve(args.data_dir), domain), domain, cfg.image_height)
    torch.manual_seed(0)
    model = NSCL(domain, cfg.model).to(device)
    step = training_step_module(model, world, device)
    opt, _ = build_optimizer(model, cfg)
    batches = list(ds.batches(np.arange(len(ds)), cfg.batch_size, np.random.default_rng(0)))
    warm, timed = args.warmup * world.size, args.batches * world.size
    warm_ids, ids = np.concatenate(batches[:warm]), np.concatenate(batches[warm : warm + timed])
    train_one_epoch(model, ds, warm_ids, opt, device, cfg, 1, False, step, world)
    barrier(world)
    t = time.perf_counter()
    nq = train_one_epoch(model, ds, ids, opt, device, cfg, 2, False, step, world)["train/questions"]
    barrier(world)
    dt = time.perf_counter() - t
    images = nq * len(np.unique(ds.q_image[ids])) / len(ids)  # the timed questions' images per question
    if world.main:
        print(json.dumps({"procs": world.size, "questions": nq, "images": images, "seconds": dt}))
    shutdown(world)


def throughput(args: argparse.Namespace) -> None:
    from machine import machine_line

    rows = []
    for n in args.procs:
        worker = [str(HERE / "scale.py"), "worker", "--data-dir", args.data_dir, "--config", args.config]
        worker += ["--batches", str(args.batches), "--warmup", str(args.warmup), "--device", args.device]
        worker += [x for kv in args.set for x in ("--set", kv)]
        if n == 1:
            cmd = [sys.executable, *worker]
        else:
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={n}",
                *worker,
            ]
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"{n} process(es) failed:\n{res.stderr[-3000:]}")
        rec = json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])
        rows.append(rec)
    print(
        machine_line() + f"; config {args.config}; device {args.device}; {args.batches} batches per process\n"
    )
    print("| processes | questions/s | images/s | vs 1 process |")
    print("| --- | --- | --- | --- |")
    base = rows[0]["questions"] / rows[0]["seconds"]
    for r in rows:
        qps = r["questions"] / r["seconds"]
        print(f"| {r['procs']} | {qps:.0f} | {r['images'] / r['seconds']:.1f} | {qps / base:.2f}x |")


def _load_child(split: str, mode: str) -> None:
    """Read the split (``eager``: load_split; ``compact``: load_split_compact) and build the training dataset from
    it with lazy images, as ``nscl train`` does (``lazy_images``, and ``lazy_programs`` for compact)."""
    from nscl.data import SplitPaths, load_split
    from nscl.domain import builtin_domain
    from nscl.inference.dataset import QADataset
    from nscl.question_table import load_split_compact

    domain = builtin_domain()
    t = time.perf_counter()
    read = load_split_compact if mode == "compact" else load_split
    s = read(SplitPaths.resolve(split), domain)
    t_read = time.perf_counter() - t
    ds = QADataset(s, domain, 128, lazy_images=True)
    t_all = time.perf_counter() - t
    batch = ds.make_batch(np.arange(64))  # the first batch compiles its programs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    distinct = len(s.questions.program_json) if mode == "compact" else None
    print(
        json.dumps(
            {
                "scenes": len(s.scenes),
                "questions": len(ds),
                "read": t_read,
                "seconds": t_all,
                "peak_gib": peak,
                "distinct_programs": distinct,
                "batch_questions": batch.programs.num_questions,
            }
        )
    )


def load(args: argparse.Namespace) -> None:
    from machine import machine_line

    src = Path(args.data_dir)
    scenes = json.loads((src / "scenes.json").read_text())["scenes"]
    questions = json.loads((src / "questions.json").read_text())["questions"]
    by_image: dict[int, list] = {}
    for q in questions:
        by_image.setdefault(q["image_index"], []).append(q)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "big"
        (out / "images").mkdir(parents=True)
        big_s, big_q = [], []
        for i in range(args.scenes):
            s = dict(scenes[i % len(scenes)])
            qs = by_image.get(s["image_index"], [])[: args.questions_per_scene]
            link = out / "images" / s["image_filename"]
            if not link.exists():
                link.symlink_to((src / "images" / s["image_filename"]).resolve())
            s["image_index"] = i
            big_s.append(s)
            for q in qs:
                q = {**q, "image_index": i}
                if args.distinct_programs:  # a key no reader looks at makes every program's text unique
                    q["program"] = [{**q["program"][0], "copy": len(big_q)}] + q["program"][1:]
                big_q.append(q)
        (out / "scenes.json").write_text(json.dumps({"info": {}, "scenes": big_s}))
        (out / "questions.json").write_text(json.dumps({"info": {}, "questions": big_q}))
        mb = sum((out / f).stat().st_size for f in ("scenes.json", "questions.json")) / 2**20
        del big_s, big_q, scenes, questions, by_image
        for mode in args.modes:
            res = subprocess.run(
                [sys.executable, str(HERE / "scale.py"), "load-child", str(out), "--mode", mode],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(HERE)},
            )
            if res.returncode != 0:
                raise SystemExit(res.stderr[-3000:])
            rows.append((mode, json.loads(res.stdout.splitlines()[-1])))
    print(machine_line())
    r0 = rows[0][1]
    print(
        f"{r0['scenes']} scenes, {r0['questions']} questions ({mb:.0f} MB of JSON"
        + (", every program distinct)" if args.distinct_programs else ")")
        + "; read the split, then build the training dataset with lazy images:\n"
    )
    print("| reader | read split | + dataset | peak memory | distinct programs |")
    print("| --- | --- | --- | --- | --- |")
    for mode, r in rows:
        d = r["distinct_programs"]
        print(
            f"| {mode} | {r['read']:.1f} s | {r['seconds']:.1f} s | {r['peak_gib']:.2f} GiB | "
            + (f"{d:,} |" if d is not None else "- |")
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("throughput", "worker"):
        p = sub.add_parser(name)
        p.add_argument("--data-dir", default="data/demo/train-set/train")
        p.add_argument("--config", default="demo")
        p.add_argument("--batches", type=int, default=60)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--device", default="cpu")
        p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value (repeatable)",
        )
    p = sub.add_parser("load")
    p.add_argument("--data-dir", default="data/demo/train-set/train")
    p.add_argument("--scenes", type=int, default=70000)
    p.add_argument("--questions-per-scene", type=int, default=10)
    p.add_argument("--modes", nargs="+", choices=("eager", "compact"), default=["compact", "eager"])
    p.add_argument(
        "--distinct-programs",
        action="store_true",
        help="make every program's JSON text unique (the worst case)",
    )
    p = sub.add_parser("load-child")
    p.add_argument("split")
    p.add_argument("--mode", choices=("eager", "compact"), default="compact")
    args = ap.parse_args()
    if args.what == "throughput":
        throughput(args)
    elif args.what == "worker":
        _worker(args)
    elif args.what == "load":
        load(args)
    else:
        _load_child(args.split, args.mode)


if __name__ == "__main__":
    main()
