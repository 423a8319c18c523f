"""Where a trained parser misreads: program exact match of a checkpoint's parser on a split with programs, by
question length and by question type, and a sample of its misreadings (true and parsed program side by side).

    .venv/bin/python benchmarks/parse_lengths.py --load RUN/checkpoint_last.pth --data-dir data/demo/val-set/val
        [--misses 12] [--threads 1]

Exact match is canonical (``Program.canonical``), as ``nscl evaluate`` and the trainer's reports count it; length is
in words, in bands of four. Prints the CPU model and the wall time of parsing.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter, defaultdict

import torch

from nscl.data import SplitPaths, load_split
from nscl.inference.examples import examples_from_questions
from nscl.inference.load import load
from nscl.vocab import tokenize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="a checkpoint with a parser")
    ap.add_argument("--data-dir", required=True, help="a split whose questions carry programs")
    ap.add_argument("--misses", type=int, default=12, help="misreadings to print (a seeded sample)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    from machine import machine_line

    torch.set_num_threads(args.threads)
    ck = load(args.load, "cpu", need_model=False, need_parser=True)
    assert ck.parser is not None
    split = load_split(SplitPaths.resolve(args.data_dir), ck.domain)
    examples = [e for e in examples_from_questions(split.questions, ck.domain) if e.program is not None]
    t0 = time.time()
    programs, _ = ck.parser.parse_many([e.question for e in examples], 1, "unk", 256)
    seconds = time.time() - t0
    by_length: dict[int, Counter] = defaultdict(Counter)
    by_type: dict[str, Counter] = defaultdict(Counter)
    misses = []
    for e, p in zip(examples, programs):
        assert e.program is not None
        right = p is not None and p.canonical() == e.program.canonical()
        band = len(tokenize(e.question)) // 4 * 4
        for counter in (by_length[band], by_type[e.program.final_op]):
            counter["questions"] += 1
            counter["right"] += right
        if not right:
            misses.append((e.question, e.program.canonical(), None if p is None else p.canonical()))
    print(machine_line())
    print(f"{args.data_dir}: {len(examples)} questions parsed in {seconds:.0f} s")
    print("\n| words | questions | exact match |\n| --- | --- | --- |")
    for band in sorted(by_length):
        c = by_length[band]
        print(f"| {band}-{band + 3} | {c['questions']} | {c['right'] / c['questions']:.3f} |")
    print("\n| type | questions | exact match |\n| --- | --- | --- |")
    for t, c in sorted(by_type.items()):
        print(f"| {t} | {c['questions']} | {c['right'] / c['questions']:.3f} |")
    right = sum(c["right"] for c in by_type.values())
    print(f"| all | {len(examples)} | {right / max(len(examples), 1):.4f} |")
    random.Random(0).shuffle(misses)
    for question, true, parsed in misses[: args.misses]:
        print(f"\n{question}\n  true:   {true}\n  parsed: {parsed}")


if __name__ == "__main__":
    main()
