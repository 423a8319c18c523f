"""Questions as people type them: the hand-written set ``benchmarks/data/typed_questions.json`` (120 questions,
about the first ten held-out images of ``nscl demo``, our own words, with their programs) asked through
``nscl ask`` with a trained checkpoint; each is answered right, answered wrong, or refused.

    .venv/bin/python benchmarks/typed_questions.py --load runs/demo/parser/checkpoint_last.pth \\
        [--data-dir data/demo/val-set/val] [--questions benchmarks/data/typed_questions.json] [--show-wrong]

Two ways of asking, side by side:

* ``plain``: the greedy parse, no spelling correction, no check of the kind of answer (as ``ask`` was);
* ``ask``: ``nscl ask``'s defaults: near-miss spelling corrections, execution-guided parsing, and a parse held to
  the kind of answer the wording asks for (a beam candidate that answers as asked, or a refusal).

The truth is the hand-written program executed on the scene annotation (``symbolic.py``); a program that is not
valid on its scene stops the benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from nscl.data import SplitPaths, read_scenes
from nscl.errors import NSCLError
from nscl.inference.ask import ask
from nscl.inference.load import load_parser
from nscl.program import program_from_str
from nscl.symbolic import Invalid, SceneFacts, execute_nscl

MODES = {
    "plain": {"guided_beam": 0, "correct_spelling": False, "check_kind": False},
    "ask": {},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="checkpoint with a model and a parser")
    ap.add_argument("--data-dir", default="data/demo/val-set/val", help="the demo's held-out val split")
    ap.add_argument("--questions", default=str(Path(__file__).parent / "data" / "typed_questions.json"))
    ap.add_argument("--show-wrong", action="store_true", help="list the wrong and refused questions")
    ap.add_argument("--out", default=None, help="write per-question results as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = SplitPaths.resolve(args.data_dir)
    parser = load_parser(args.load)
    domain = parser.domain
    scenes = {s.image_index: s for s in read_scenes(paths.scenes, domain)}
    items = json.loads(Path(args.questions).read_text())["questions"]
    truth = []
    for k, q in enumerate(items):
        prog = program_from_str(q["program"], domain)
        try:
            truth.append(execute_nscl(prog, SceneFacts.of(scenes[q["image_index"]]), domain))
        except Invalid as e:
            sys.exit(
                f"{args.questions}: question {k} ({q['question']!r}): program not valid on its scene: {e}"
            )
    print(
        f"{len(items)} questions on {len({q['image_index'] for q in items})} images; checkpoint {args.load}"
    )
    results: dict[str, list[dict]] = {}
    for mode, kw in MODES.items():
        t0 = time.time()
        rows = []
        for q, want in zip(items, truth):
            image = paths.images / scenes[q["image_index"]].image_filename
            try:
                r = ask(
                    args.load, image, q["question"], scene_json=paths.scenes, index=q["image_index"], **kw
                )
            except NSCLError as e:
                rows.append({**q, "outcome": "refused", "truth": want, "message": str(e)})
                continue
            exact = (
                program_from_str(r.program, domain).canonical()
                == program_from_str(q["program"], domain).canonical()
            )
            rows.append(
                {
                    **q,
                    "outcome": "right" if r.answer == want else "wrong",
                    "truth": want,
                    "answer": r.answer,
                    "parsed": r.program,
                    "exact": exact,
                    "parse_confidence": r.parse_confidence,
                }
            )
        c = Counter(r["outcome"] for r in rows)
        n = len(rows)
        exact = sum(r.get("exact", False) for r in rows)
        print(
            f"{mode:6s} right {c['right'] / n:.2f}  wrong {c['wrong'] / n:.2f}  refused {c['refused'] / n:.2f}  "
            f"(exact program {exact}/{n}; {time.time() - t0:.0f}s)"
        )
        results[mode] = rows
        if args.show_wrong:
            for r in rows:
                if r["outcome"] != "right":
                    said = r.get("message") or f"{r['parsed']} -> {r['answer']} (truth {r['truth']})"
                    print(f"    {r['outcome']:7s} {r['question']!r}: {said}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
