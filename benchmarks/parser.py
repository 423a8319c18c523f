"""Benchmark of the semantic parser (``nscl.models.parser``): program recovery on held-out questions.

    .venv/bin/python benchmarks/parser.py [--out DIR] [--train-images 1000] [--val-images 1000] [--seed 0]
        [--epochs 15] [--annotations 270] [--reinforce-epochs 3] [--oracle | --perception CKPT]
        [--threads 1]

Runs, each reported with its wall time:

1. full supervision: the parser trained on every annotated training question, program exact match
   (``Program.canonical``) on a held-out split generated with another seed (target: >= 99.9%, the paper's
   "above 99.9%" program recovery);
2. few annotations: K stratified programs (three per family for K = 270), exact match, then REINFORCE on the
   training answers with a frozen perception (``--perception`` NSCL checkpoint, or ``--oracle`` scene logits
   from the annotations) and exact match / QA with parsed programs again.

Reading wordings the parser never saw (held-out phrasings, CLEVR's own templates) is ``benchmarks/phrasing.py``.

Datasets are generated under ``--out`` (small images: the parser never looks at them) unless ``--train-dir``
and ``--val-dir`` point at existing splits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from nscl.data import SplitPaths, load_split, read_questions
from nscl.domain import Domain, load_domain
from nscl.generate.pipeline import GenerateConfig, generate_dataset
from nscl.inference.evaluate import evaluate_parser
from nscl.inference.examples import examples_from_questions
from nscl.inference.scenes import ModelScenes, OracleScenes
from nscl.models.parser import Parser, ParserConfig
from nscl.run_config import ParserTrainConfig
from nscl.training.parser_supervised import build_vocab, stratified_subset, train_supervised
from nscl.training.reinforce import train_reinforce
from nscl.training.self_training import PseudoLabels, self_train


def generate(
    out: Path, seed: int, split: str, images: int, domain: Domain, templates: Path | None = None
) -> Path:
    kw = {"train_images": images} if split == "train" else {"val_images": images}
    cfg = GenerateConfig(
        out=str(out),
        seed=seed,
        width=64,
        height=48,
        supersample=1,
        workers=1,
        templates=str(templates) if templates else None,
        **kw,
    )
    t = time.time()
    generate_dataset(cfg, domain, progress=False)
    print(f"  generated {out / split} ({images} images, seed {seed}) in {time.time() - t:.0f}s", flush=True)
    return out / split


def report(title: str, metrics: dict[str, float], seconds: float) -> None:
    keys = sorted(k for k in metrics if "/acc/" in k or k.endswith("parse_errors"))
    print(f"\n== {title} ({seconds:.0f}s)")
    for k in keys:
        v = metrics[k]
        print(f"  {k} = {v:.6f}" if "/acc/" in k else f"  {k} = {v:.0f}")
    sys.stdout.flush()


def train_full(domain: Domain, train_dir: Path, cfg: ParserTrainConfig, seed: int) -> tuple[Parser, float]:
    examples = examples_from_questions(read_questions(train_dir / "questions.json", domain), domain)
    torch.manual_seed(seed)
    parser = Parser(domain, build_vocab(examples), cfg.model)
    t = time.time()
    train_supervised(parser, examples, cfg, seed)
    return parser, time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/nscl-parser-bench"))
    ap.add_argument(
        "--train-dir", type=Path, default=None, help="existing training split (default: generate)"
    )
    ap.add_argument("--val-dir", type=Path, default=None, help="existing held-out split (default: generate)")
    ap.add_argument("--train-images", type=int, default=1000)
    ap.add_argument("--val-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--annotations", type=int, default=270, help="K for the few-annotation run (0: skip)")
    ap.add_argument("--few-epochs", type=int, default=60, help="supervised epochs on the K annotations")
    ap.add_argument("--reinforce-epochs", type=int, default=3)
    ap.add_argument("--reward", choices=["answer", "release"], default="answer")
    ap.add_argument("--baseline", choices=["moving", "loo"], default="loo", help="answer reward baseline")
    ap.add_argument("--samples", type=int, default=4, help="sampled programs per question (REINFORCE)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument(
        "--oracle", action="store_true", help="REINFORCE with oracle perception (scene annotations)"
    )
    g.add_argument(
        "--perception", default=None, help="REINFORCE with this NSCL checkpoint's perception (frozen)"
    )
    ap.add_argument("--skip-full", action="store_true", help="skip the every-annotation run")
    ap.add_argument("--hidden-dim", type=int, default=64)
    ap.add_argument("--embedding-dim", type=int, default=32)
    ap.add_argument(
        "--min-referent-p",
        type=float,
        default=0.05,
        help="REINFORCE: no reward below this probability of unambiguous references (0: off)",
    )
    ap.add_argument("--self-train-rounds", type=int, default=4, help="self-training rounds after REINFORCE")
    ap.add_argument(
        "--self-train-epochs", type=int, default=3, help="supervised epochs per self-training round"
    )
    ap.add_argument("--guided-beam", type=int, default=8, help="execution-guided decoding beam (0: off)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--domain", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    domain = load_domain(args.domain)
    print("command: .venv/bin/python benchmarks/parser.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    model_cfg = ParserConfig(embedding_dim=args.embedding_dim, hidden_dim=args.hidden_dim)
    cfg = ParserTrainConfig(
        epochs=args.epochs,
        lr=2e-3,
        model=model_cfg,
        reward=args.reward,
        baseline=args.baseline,
        samples=args.samples,
        reinforce_epochs=args.reinforce_epochs,
        min_referent_p=args.min_referent_p,
        guided_beam=args.guided_beam,
    )
    guided = {"guided_beam": args.guided_beam, "min_referent_p": args.min_referent_p, "check_kind": True}
    results: dict[str, dict] = {}
    args.out.mkdir(parents=True, exist_ok=True)

    print("data:")
    train_dir = args.train_dir or generate(args.out / "data", args.seed, "train", args.train_images, domain)
    val_dir = args.val_dir or generate(args.out / "heldout", args.seed + 1000, "val", args.val_images, domain)
    val = examples_from_questions(read_questions(val_dir / "questions.json", domain), domain)
    train = examples_from_questions(read_questions(train_dir / "questions.json", domain), domain)
    print(f"  train: {len(train)} questions ({train_dir}); held-out: {len(val)} questions ({val_dir})")

    # 1. every annotation
    if not args.skip_full:
        parser, secs = train_full(domain, train_dir, cfg, args.seed)
        m = evaluate_parser(parser, val, "heldout")
        report(f"full supervision: {len(train)} programs, {args.epochs} epochs", m, secs)
        results["full"] = {**m, "seconds": secs}

    # 2. K annotations (+ REINFORCE)
    if args.annotations > 0:
        picked = [train[i] for i in stratified_subset(train, args.annotations, args.seed)]
        few_cfg = dataclasses.replace(cfg, epochs=args.few_epochs, batch_size=32)
        torch.manual_seed(args.seed)
        parser = Parser(domain, build_vocab(train), model_cfg)
        t = time.time()
        train_supervised(parser, picked, few_cfg, args.seed)
        secs = time.time() - t
        scenes_train = scenes_val = None
        if args.oracle:
            scenes_train = OracleScenes(load_split(SplitPaths.resolve(train_dir), domain).scenes, domain)
            scenes_val = OracleScenes(load_split(SplitPaths.resolve(val_dir), domain).scenes, domain)
        elif args.perception:
            from nscl.checkpoint import load_checkpoint
            from nscl.inference.dataset import QADataset
            from nscl.inference.load import model_from_state

            model, tcfg, _ = model_from_state(load_checkpoint(args.perception), args.perception)
            model.eval()
            ds_t = QADataset(load_split(SplitPaths.resolve(train_dir), domain), domain, tcfg.image_height)
            ds_v = QADataset(load_split(SplitPaths.resolve(val_dir), domain), domain, tcfg.image_height)
            scenes_train, scenes_val = ModelScenes(model, ds_t), ModelScenes(model, ds_v)
        m = evaluate_parser(parser, val, "heldout", scenes_val, **guided)
        report(f"{len(picked)} stratified annotations, {args.few_epochs} epochs", m, secs)
        results["few"] = {**m, "seconds": secs, "annotations": len(picked)}
        if scenes_train is not None and args.reinforce_epochs > 0:
            t = time.time()

            def show(epoch: int, rec: dict) -> None:
                print(
                    f"  REINFORCE epoch {epoch}: mean reward {rec['train/parser_reward']:.4f} "
                    f"({rec['seconds']:.0f}s)",
                    flush=True,
                )

            train_reinforce(parser, train, scenes_train, few_cfg, picked, args.seed, show)
            secs = time.time() - t
            m = evaluate_parser(parser, val, "heldout", scenes_val, **guided)
            source = "oracle perception" if args.oracle else f"perception {args.perception}"
            report(
                f"+ REINFORCE on {len(train)} answers, {args.reinforce_epochs} epochs, {source}, "
                f"reward {args.reward}",
                m,
                secs,
            )
            results["few+reinforce"] = {**m, "seconds": secs}
            # The library's self-training rounds (what `nscl train --parser-annotations K` runs), with the
            # few-annotation batch size; each round is evaluated after its last epoch.
            st_cfg = dataclasses.replace(
                few_cfg, self_train_rounds=args.self_train_rounds, self_train_epochs=args.self_train_epochs
            )
            t_round = [time.time()]
            labels: dict[int, PseudoLabels] = {}

            def round_labels(rnd: int, pl: PseudoLabels) -> None:
                labels[rnd] = pl

            def round_epoch(rnd: int, epoch: int, rec: dict) -> None:
                if epoch < args.self_train_epochs:
                    return
                secs = time.time() - t_round[0]
                m = evaluate_parser(parser, val, "heldout", scenes_val, **guided)
                pl = labels[rnd]
                report(
                    f"+ self-training round {rnd}: {pl.greedy} greedy and {pl.beam} beam labels, "
                    f"{pl.missed} questions unlabelled, {args.self_train_epochs} epochs",
                    m,
                    secs,
                )
                results[f"few+reinforce+self{rnd}"] = {**m, "seconds": secs}
                t_round[0] = time.time()

            self_train(parser, train, scenes_train, picked, st_cfg, args.seed, round_labels, round_epoch)

    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
