"""Benchmark of reading wordings the parser was never trained on (``nscl.models.parser`` and ``nscl ask``'s
decoding).

    .venv/bin/python benchmarks/phrasing.py [--out DIR] [--train-images 1500] [--val-images 300] [--seed 0]
        [--epochs 15] [--word-dropout 0.1] [--runs heldout,cross,clevr] [--clevr ../shared/clevr]
        [--threads 1] [--reuse]

Runs (each on held-out scenes generated with another seed; the parser never looks at images):

1. ``heldout``: every family's phrasings are split, a quarter held out (the 4th, 8th, 12th ... phrasing);
   the parser is trained on questions written with the other three quarters and tested on questions written
   only with the held-out ones.
2. ``cross``: the parser is trained on every phrasing of our templates and tested on questions that CLEVR's
   own templates and synonyms write (``nscl generate --templates <clevr>/templates --synonyms
   <clevr>/synonyms.json``): a different author's wording of the same 90 program families. Needs ``--clevr``.
3. ``clevr``: the parser is trained on CLEVR-template questions and tested on held-out ones (the in-domain
   check for users with real CLEVR question files). Needs ``--clevr``.

Every run reports, over the test questions:

* ``greedy``: program exact match of the greedy parse, words never seen in training refused and read as
  ``<UNK>``;
* ``ask``: what ``nscl ask`` does (``nscl.inference.guided.read_as_ask``: corrections, a refusal for an unseen
  word that may name a thing, ``<UNK>`` for other unseen words, execution-guided beam on the scene, parses held
  to the kind of answer asked and to every concept named): exact match, and the answers of the chosen programs
  executed on the scene annotations, right / wrong / refused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from importlib import resources
from pathlib import Path

import torch

from nscl.checkpoint import load_checkpoint, save_checkpoint
from nscl.data import SplitPaths, load_split, read_questions
from nscl.domain import Domain, load_domain
from nscl.generate.pipeline import GenerateConfig, generate_dataset
from nscl.inference.evaluate import evaluate_parser, qa_meters
from nscl.inference.examples import ParserExample, examples_from_questions
from nscl.inference.guided import read_as_ask
from nscl.inference.scenes import OracleScenes
from nscl.models.parser import Parser, ParserConfig, parser_from_state, parser_state
from nscl.run_config import GUIDED_BEAM, ParserTrainConfig
from nscl.training.parser_supervised import build_vocab, train_supervised
from nscl.vocab import tokenize


def generate(
    out: Path,
    seed: int,
    split: str,
    images: int,
    templates: Path | None,
    synonyms: Path | None,
    domain: Domain,
) -> Path:
    if (out / split / "questions.json").exists():
        print(f"  reusing {out / split}", flush=True)
        return out / split
    kw = {"train_images": images} if split == "train" else {"val_images": images}
    cfg = GenerateConfig(
        out=str(out),
        seed=seed,
        width=32,
        height=24,
        supersample=1,
        workers=1,
        templates=str(templates) if templates else None,
        synonyms=str(synonyms) if synonyms else None,
        **kw,
    )
    t = time.time()
    generate_dataset(cfg, domain, progress=False)
    print(f"  generated {out / split} ({images} images, seed {seed}) in {time.time() - t:.0f}s", flush=True)
    return out / split


def split_templates(out: Path, every: int = 4) -> tuple[Path, Path]:
    """Two template folders from ours: every phrasing but each ``every``-th (train), and only those (held
    out); a family with fewer than ``every`` phrasings holds out its last one."""
    src = resources.files("nscl").joinpath("generate", "templates")
    train_dir, held_dir = out / "templates_train", out / "templates_heldout"
    for d in (train_dir, held_dir):
        d.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not f.name.endswith(".json"):
            continue
        train, held = [], []
        for t in json.loads(f.read_text(encoding="utf-8")):
            texts = t["text"]
            if len(texts) < 2:
                raise SystemExit(f"{f.name}: a template with a single phrasing cannot be held out")
            out_idx = set(range(every - 1, len(texts), every)) or {len(texts) - 1}
            train.append({**t, "text": [x for i, x in enumerate(texts) if i not in out_idx]})
            held.append({**t, "text": [x for i, x in enumerate(texts) if i in out_idx]})
        (train_dir / f.name).write_text(json.dumps(train, indent=1), encoding="utf-8")
        (held_dir / f.name).write_text(json.dumps(held, indent=1), encoding="utf-8")
    return train_dir, held_dir


def examples_of(split_dir: Path, domain: Domain) -> list[ParserExample]:
    return examples_from_questions(read_questions(split_dir / "questions.json", domain), domain)


def train_parser(domain: Domain, train_dir: Path, cfg: ParserTrainConfig, seed: int) -> tuple[Parser, float]:
    examples = examples_of(train_dir, domain)
    torch.manual_seed(seed)
    parser = Parser(domain, build_vocab(examples), cfg.model)
    t = time.time()
    train_supervised(parser, examples, cfg, seed)
    return parser, time.time() - t


def read_rate(
    parser: Parser, examples: list[ParserExample], scenes: OracleScenes, beam: int
) -> dict[str, float]:
    """Greedy exact match (unknown words refused / <UNK>), and ``nscl ask``'s decoding: exact match and the
    answers right / wrong / refused."""
    n = len(examples)
    m = evaluate_parser(parser, examples, "t")
    m_unk = evaluate_parser(parser, examples, "t", unknown="unk")
    chosen = read_as_ask(
        parser, [e.question for e in examples], [e.image_index for e in examples], scenes, beam
    )
    _, qa = qa_meters(parser, examples, chosen, scenes, 256, with_gt=False)
    exact = sum(p is not None and p.canonical() == e.program.canonical() for p, e in zip(chosen, examples))
    refused = sum(p is None for p in chosen)
    right = qa.metrics("t")["t/acc/qa"] * n
    return {
        "questions": n,
        "greedy_exact": m["t/acc/program_exact"],
        "greedy_refused": m["t/parse_errors"] / n,
        "greedy_exact_unk": m_unk["t/acc/program_exact"],
        "ask_exact": exact / n,
        "ask_right": right / n,
        "ask_wrong": (n - right - refused) / n,
        "ask_refused": refused / n,
    }


def report(
    title: str, r: dict[str, float], seconds: float, parser: Parser, examples: list[ParserExample]
) -> None:
    print(f"\n{title}  (training {seconds:.0f}s, {r['questions']} test questions)")
    print(
        f"  greedy: exact {r['greedy_exact']:.4f} (refused {r['greedy_refused']:.4f}); "
        f"unseen words as <UNK>: exact {r['greedy_exact_unk']:.4f}"
    )
    print(
        f"  ask:    exact {r['ask_exact']:.4f}; answers right {r['ask_right']:.4f}, "
        f"wrong {r['ask_wrong']:.4f}, refused {r['ask_refused']:.4f}"
    )
    new = sorted({w for e in examples for w in tokenize(e.question)} - set(parser.vocab.index))
    print(f"  words never seen in training ({len(new)}): {', '.join(new[:60]) or 'none'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/nscl-phrasing-bench"))
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--word-dropout", type=float, default=0.1)
    ap.add_argument("--hidden-dim", type=int, default=64)
    ap.add_argument("--embedding-dim", type=int, default=32)
    ap.add_argument("--guided-beam", type=int, default=GUIDED_BEAM)
    ap.add_argument("--runs", default="heldout,cross,clevr")
    ap.add_argument("--clevr", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "clevr")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reuse", action="store_true", help="reuse the parsers a previous run saved under --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = set(args.runs.split(","))
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]), flush=True)
    domain = load_domain(None)
    cfg = ParserTrainConfig(
        epochs=args.epochs,
        word_dropout=args.word_dropout,
        model=ParserConfig(embedding_dim=args.embedding_dim, hidden_dim=args.hidden_dim),
    )
    clevr_t, clevr_s = args.clevr / "templates", args.clevr / "synonyms.json"
    if runs & {"cross", "clevr"} and not clevr_t.is_dir():
        raise SystemExit(f"CLEVR's templates not found at {clevr_t} (--clevr); run with --runs heldout")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}

    def run(name: str, title: str, train_dir: Path, test_dir: Path) -> None:
        saved = args.out / f"{name}_parser.pth"
        if args.reuse and saved.exists():
            parser, secs = (
                parser_from_state(load_checkpoint(saved, require=("parser",))["parser"], domain),
                0.0,
            )
        else:
            parser, secs = train_parser(domain, train_dir, cfg, args.seed)
            save_checkpoint(saved, {"parser": parser_state(parser)})
        test = examples_of(test_dir, domain)
        scenes = OracleScenes(load_split(SplitPaths.resolve(test_dir), domain).scenes, domain)
        r = read_rate(parser, test, scenes, args.guided_beam)
        report(title, r, secs, parser, test)
        results[name] = {**r, "train_seconds": secs}

    tr, va = args.seed, args.seed + 1000
    if "heldout" in runs:
        tdir, hdir = split_templates(args.out)
        train_dir = generate(args.out / "heldout", tr, "train", args.train_images, tdir, None, domain)
        test_dir = generate(args.out / "heldout", va, "val", args.val_images, hdir, None, domain)
        run("heldout", "held-out phrasings (a quarter of every family's)", train_dir, test_dir)
    if runs & {"cross", "clevr"}:
        clevr_val = generate(args.out / "clevr", va, "val", args.val_images, clevr_t, clevr_s, domain)
        if "cross" in runs:
            ours_dir = generate(args.out / "ours", tr, "train", args.train_images, None, None, domain)
            run("cross", "cross-template: trained on ours, tested on CLEVR's wording", ours_dir, clevr_val)
        if "clevr" in runs:
            clevr_train = generate(
                args.out / "clevr", tr, "train", args.train_images, clevr_t, clevr_s, domain
            )
            run(
                "clevr",
                "CLEVR's templates: trained and tested on CLEVR-template questions",
                clevr_train,
                clevr_val,
            )
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
