"""Where an answers-only training step's time goes: the EM step of a lesson (``training/answers_only.em_step``) on
batches of a training split, with a trained run's model and parser, split into batch assembly, perception, the
candidates' execution, the parser's scoring without gradients, the parser's teacher-forced pass, backward and the
optimiser (each phase timed by wrapping the functions em_step calls).

    .venv/bin/python benchmarks/profile_em_step.py --load RUN/checkpoint_last.pth
        --data-dir data/demo/train-set/train [--lesson 4] [--steps 30] [--threads 2] [--set parser.candidates_kept=2]

Wall-clock medians over ``--steps`` steps after ``--warmup``; the shares hold for this machine and thread count, so
the CPU model is printed with them. Candidates are searched for the batches' questions only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

import nscl.training.answers_only as ao
from machine import machine_line
from nscl.config import override, parse_settings
from nscl.data import SplitPaths, load_split
from nscl.inference.dataset import QADataset
from nscl.inference.examples import ParserExample, image_batches
from nscl.inference.load import load
from nscl.models.executor import Compiler
from nscl.training.parser_supervised import make_optimizer

PHASES = (
    "batch",
    "perception",
    "execution",
    "teacher-forcing targets",
    "parser scoring",
    "parser pass",
    "backward",
    "optimizer",
    "rest of em_step",
)


class Clock:
    """Accumulates wall time per phase of the current step."""

    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn):  # noqa: ANN001, ANN201
        def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] += time.perf_counter() - t0

        return timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="an answers-only run's checkpoint")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--lesson", type=int, default=4, help="1-based row of parser.lessons")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ck = load(args.load, "cpu", need_model=True, need_parser=True)
    cfg = override(ck.config, parse_settings(args.set)) if args.set else ck.config
    model, parser, domain, pcfg = ck.model, ck.parser, ck.domain, cfg.parser
    lesson = ao.Lesson.from_row(pcfg.lessons[args.lesson - 1])
    split = load_split(SplitPaths.resolve(args.data_dir), domain, programs=False)
    ds = QADataset(split, domain, cfg.image_height, progress=False)
    n_objects = {s.image_index: len(s.objects) for s in split.scenes.values()}
    examples = [
        ParserExample(q.question, q.image_index, q.answer, None, None, q.index)
        for q in split.questions
        if q.answer is not None and lesson.takes(n_objects[q.image_index], q.question)
    ]
    opt = make_optimizer(list(model.parameters()) + list(parser.parameters()), cfg.lr, cfg.weight_decay)
    cands = ao.Candidates.from_config(parser, pcfg)
    compiler, evidence = Compiler(domain), ao.Evidence.from_config(pcfg)
    clock = Clock()
    ao.run_programs = clock.wrap("execution", ao.run_programs)
    ao.targets_of = clock.wrap("teacher-forcing targets", ao.targets_of)
    opt.step = clock.wrap("optimizer", opt.step)
    torch.Tensor.backward = clock.wrap("backward", torch.Tensor.backward)
    nll = ao.program_nll
    ao.program_nll = lambda p, b: clock.wrap(
        "parser pass" if torch.is_grad_enabled() else "parser scoring", nll
    )(p, b)
    times: dict[str, list[float]] = defaultdict(list)
    n_cands = []
    batches = image_batches(examples, cfg.batch_size, np.random.default_rng(0))[: args.warmup + args.steps]
    scores, table = None, ""
    if lesson.scores_once:  # as fit_from_answers does
        used = [examples[i] for idx in batches for i in idx]
        for e in used:
            cands(e)  # searched outside the clock
        t0 = time.perf_counter()
        scores = ao.ParserScores.compute(parser, used, cands)
        per_q = 1000 * (time.perf_counter() - t0) / len(used)
        table = f"; the fixed parser's table: {per_q:.2f} ms per question, once per lesson"
    for step, idx in enumerate(batches):
        batch = [examples[i] for i in idx]
        found = cands.with_proposals(batch, lesson.proposals)  # searched outside the clock
        clock.t.clear()
        t0 = time.perf_counter()
        imgs = sorted({e.image_index for e in batch})
        row_of = {im: r for r, im in enumerate(imgs)}
        images, boxes, mask = ds.scene_batch(np.array([ds.image_of_index[i] for i in imgs]))
        t1 = time.perf_counter()
        scene = ao.perceive(model, images, boxes, mask, lesson)
        t2 = time.perf_counter()
        s = ao.em_step(
            parser, scene, batch, [row_of[e.image_index] for e in batch], found, opt, lesson, compiler,
            evidence, pcfg.grad_clip, pcfg.candidates_kept, scores,
        )  # fmt: skip
        t3 = time.perf_counter()
        if step < args.warmup:
            continue
        known = sum(clock.t.values())
        times["batch"].append(t1 - t0)
        times["perception"].append(t2 - t1)
        for k in PHASES[2:-1]:
            times[k].append(clock.t.get(k, 0.0))
        times["rest of em_step"].append(t3 - t2 - known)
        n_cands.append(s["candidates"])
    print(machine_line() + f"; torch {torch.__version__}, {args.threads} thread(s)")
    print(
        f"lesson {args.lesson} {lesson}, batch {cfg.batch_size}, {args.steps} steps after {args.warmup} warm-up, "
        f"{statistics.mean(n_cands):.1f} candidates per question{table}\n"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    total = sum(med.values())
    print("| phase | median ms per step | share |")
    print("| --- | --- | --- |")
    for name, v in med.items():
        print(f"| {name} | {1000 * v:.1f} | {v / total:.1%} |")
    print(f"| **step** | **{1000 * total:.1f}** | {1 / total:.2f} steps/s |")


if __name__ == "__main__":
    main()
