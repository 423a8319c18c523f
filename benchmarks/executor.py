"""Batched executor vs the per-question reference executor (the release's design), identical inputs.

Usage: python benchmarks/executor.py [--data-dir DIR] [--batch 64] [--repeats 20]

Without --data-dir it generates a small dataset (60 images, scene and questions only matter) in a temp dir.
Both start from the same random object and pair features (requires_grad, so training mode times forward and
backward): the batched path computes every concept logit of the batch once (NSCL.scene_logits) and runs the
step-vectorised executor; the reference computes similarities inside each op of each question, as the
release does. Prints questions per second for both and their ratio, in training and test (quantised) mode;
each figure is the fastest of --rounds alternating rounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from nscl.data import SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.models.executor import Compiler, ProgramBatch
from nscl.models.nscl import NSCL, ModelConfig
from nscl.models.perception import SceneFeatures
from nscl.models.reference_executor import run_one
from nscl.program import translate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds; the fastest round counts")
    args = ap.parse_args()
    torch.set_num_threads(1)
    domain = builtin_domain()
    if args.data_dir is None:
        from nscl.generate.pipeline import GenerateConfig, generate_dataset

        tmp = tempfile.mkdtemp()
        generate_dataset(
            GenerateConfig(out=tmp, seed=3, train_images=60, width=96, height=64, supersample=1),
            domain,
            progress=False,
        )
        data_dir = Path(tmp) / "train"
    else:
        data_dir = Path(args.data_dir)
    split = load_split(SplitPaths.resolve(data_dir), domain, box_source="none")
    qs = split.questions[: args.batch]
    imgs = sorted({q.image_index for q in qs})
    local = {ii: k for k, ii in enumerate(imgs)}
    B, N = len(imgs), max(len(split.scenes[i].objects) for i in imgs)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for k, ii in enumerate(imgs):
        mask[k, : len(split.scenes[ii].objects)] = True
    torch.manual_seed(0)
    model = NSCL(domain, ModelConfig())
    D, P = model.cfg.perception.feature_dim, model.cfg.perception.pair_dim
    feats = SceneFeatures(
        torch.nn.functional.normalize(torch.randn(B, N, D), dim=-1).requires_grad_(),
        torch.randn(B, N, N, P).requires_grad_(),
        mask,
    )
    progs = [translate(q.program, domain) for q in qs]
    comp = Compiler(domain)
    batch = ProgramBatch.collate([comp(p) for p in progs], [local[q.image_index] for q in qs])

    def batched(quantize: bool) -> None:
        with torch.set_grad_enabled(not quantize):
            out = model.executor(batch, model.scene_logits(feats), quantize)
        if not quantize:
            total = out.scalar.nan_to_num().sum() + sum(v.sum() for _, v in out.query.values())
            total.backward()

    def reference(quantize: bool) -> None:
        with torch.set_grad_enabled(not quantize):
            outs = [
                run_one(p, feats, local[q.image_index], model.concepts, domain, quantize)
                for p, q in zip(progs, qs)
            ]
        if not quantize:
            torch.stack([o.sum() for o in outs]).sum().backward()

    print(f"{len(qs)} questions on {B} images (max {N} objects), torch threads 1")
    # Rounds alternate between the two executors and each keeps its fastest round, so a busy machine slows
    # neither side more than the other.
    for quantize in (False, True):
        best = {"batched": float("inf"), "reference": float("inf")}
        for fn in (batched, reference):
            fn(quantize)  # warm-up
        for _ in range(args.rounds):
            for name, fn in (("batched", batched), ("reference", reference)):
                t = time.perf_counter()
                for _ in range(args.repeats):
                    fn(quantize)
                best[name] = min(best[name], (time.perf_counter() - t) / args.repeats)
        res = {name: len(qs) / dt for name, dt in best.items()}
        mode = "test (quantised)" if quantize else "training (forward+backward)"
        print(
            f"{mode:<30} batched {res['batched']:9.0f} q/s   reference {res['reference']:8.0f} q/s   "
            f"ratio {res['batched'] / res['reference']:.1f}x"
        )


if __name__ == "__main__":
    main()
