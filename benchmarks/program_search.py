"""How often the candidate search of learning-from-answers (``nscl.models.program_search``) contains a question's true
program, and how many candidates it gives, by question length; the true programs are read only to score this.

    .venv/bin/python benchmarks/program_search.py --data-dir data/demo/val-set/val [--questions 1000]
        [--max-words 40] [--expansions 5000] [--slack 2] [--anaphora 0|1] [--wording-roots 0|1]

Prints, per band of question length (words), the number of questions, the share whose canonical true program is
among the candidates, the mean number of candidates, and the milliseconds per question (one search per question, no
reuse between questions phrased alike, as the trainer's cache would give), with the CPU model. ``--expansions``,
``--slack``, ``--anaphora`` and ``--wording-roots`` are ``parser.search_expansions``, ``search_slack``,
``search_anaphora`` and ``wording_roots``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from nscl.data import SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.inference.examples import examples_from_questions
from nscl.models.grammar import Grammar, Lexicon
from nscl.models.program_search import AnswerShape, SearchLimits, search_programs
from nscl.vocab import tokenize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="data/demo/val-set/val")
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--max-words", type=int, default=40)
    ap.add_argument("--expansions", type=int, default=5000)
    ap.add_argument("--slack", type=int, default=2, help="as parser.search_slack [2]")
    ap.add_argument("--anaphora", type=int, choices=(0, 1), default=1, help="as parser.search_anaphora [1]")
    ap.add_argument(
        "--wording-roots", type=int, choices=(0, 1), default=1, help="as parser.wording_roots [1]"
    )
    args = ap.parse_args()
    from machine import machine_line

    domain = builtin_domain()
    grammar, lexicon = Grammar(domain), Lexicon.build(domain)
    split = load_split(SplitPaths.resolve(args.data_dir), domain)
    examples = [e for e in examples_from_questions(split.questions, domain) if e.program and e.answer]
    bands: dict[int, list[float]] = defaultdict(lambda: [0, 0, 0, 0.0])
    for e in examples[: args.questions]:
        tokens = tokenize(e.question)
        if len(tokens) > args.max_words:
            continue
        q = grammar.question_info(tokens, lexicon, e.question)
        shape = AnswerShape.of_wording(
            domain, e.answer, tokens, lexicon.attributes, lexicon.concepts, bool(args.wording_roots)
        )
        t = time.perf_counter()
        limits = SearchLimits(max_expansions=args.expansions)
        res = search_programs(grammar, q, shape, limits, args.slack, bool(args.anaphora))
        b = bands[len(tokens) // 4 * 4]
        b[0] += 1
        b[1] += e.program.canonical() in res.programs
        b[2] += len(res.programs)
        b[3] += time.perf_counter() - t
    print(machine_line())
    print(
        f"{args.data_dir}: first {args.questions} questions, up to {args.max_words} words, "
        f"anaphora={args.anaphora}, wording_roots={args.wording_roots}\n"
    )
    print("| words | questions | true program among candidates | candidates | ms per question |")
    print("| --- | --- | --- | --- | --- |")
    for w in sorted(bands):
        n, hit, c, sec = bands[w]
        print(f"| {w}-{w + 3} | {n:.0f} | {hit / n:.3f} | {c / n:.1f} | {1000 * sec / n:.0f} |")


if __name__ == "__main__":
    main()
