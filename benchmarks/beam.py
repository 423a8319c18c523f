"""Benchmark of the parser's beam search: batched over questions (``Parser.beam_candidates``) against the
former per-question loop (the reference kept in ``tests/test_beam_batched.py``).

    .venv/bin/python benchmarks/beam.py [--questions 500] [--beam 8] [--n-best 8] [--rounds 3]
        [--train-steps 30] [--threads 1] [--seed 0]

Questions come from the question engine on random symbolic scenes (no images); the parser (default
``ParserConfig``) is trained ``--train-steps`` full-batch teacher-forcing steps on up to 128 of them (0: an
untrained parser). Both implementations decode the same encoded batch; rounds alternate (reference, then
batched) and the ratio of the per-round medians is printed, with the CPU model. The candidates of both are
compared (actions and ``failed`` flags; largest score difference).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_model
from nscl.domain import Domain, load_domain
from nscl.errors import ProgramError
from nscl.generate.questions import QuestionEngine
from nscl.generate.template_files import load_synonyms, load_templates
from nscl.models.parser import Parser, ParserConfig
from nscl.program import Program, translate
from nscl.vocab import Vocab

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from questions import random_facts  # noqa: E402  (benchmarks/questions.py: random symbolic scenes)
from test_beam_batched import reference_beam_candidates, teacher_forcing_steps  # noqa: E402


def questions(domain: Domain, n: int, seed: int) -> list[tuple[str, Program]]:
    rng = np.random.default_rng(seed)
    engine = QuestionEngine(domain, load_templates(), load_synonyms())
    out: list[tuple[str, Program]] = []
    while len(out) < n:
        for q in engine.generate(random_facts(domain, rng, int(rng.integers(3, 11))), rng):
            try:
                out.append((q.text, translate(q.program, domain)))
            except ProgramError:  # equal_object: no NS-CL op
                continue
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=500)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--n-best", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default=None)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    domain = load_domain(args.domain)
    pairs = questions(domain, args.questions, args.seed)
    torch.manual_seed(args.seed)
    parser = Parser(domain, Vocab.build(q for q, _ in pairs), ParserConfig())
    if args.train_steps > 0:
        t = time.perf_counter()
        teacher_forcing_steps(parser, pairs[:128], args.train_steps)
        print(
            f"trained {args.train_steps} teacher-forcing steps on 128 questions in {time.perf_counter() - t:.1f} s"
        )
    parser.eval()
    enc_q, errs = parser.encode_questions([q for q, _ in pairs], "error")
    assert all(e is None for e in errs), [e for e in errs if e]
    lengths = [len(q) for q in enc_q.info]

    old_s, new_s = [], []
    old = new = None
    for _ in range(args.rounds):
        t = time.perf_counter()
        old = reference_beam_candidates(parser, enc_q, args.beam, args.n_best)
        old_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = parser.beam_candidates(enc_q, args.beam, args.n_best)
        new_s.append(time.perf_counter() - t)
    assert old is not None and new is not None
    same = reordered = 0
    gap = 0.0  # largest score difference between the two at a position where they differ
    for a, b in zip(old, new):
        ka = [(tuple(s.actions), s.failed) for s in a]
        kb = [(tuple(s.actions), s.failed) for s in b]
        if ka == kb:
            same += 1
            continue
        reordered += sorted(ka) == sorted(kb)
        gap = max([gap] + [abs(x.score - y.score) for x, y, u, v in zip(a, b, ka, kb) if u != v])
    diff = max((abs(x.score - y.score) for a, b in zip(old, new) for x, y in zip(a, b)), default=0.0)
    n_cand = sum(len(c) for c in new)
    n_failed = sum(s.failed for c in new for s in c)

    print(f"cpu: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(
        f"questions: {len(pairs)} ({min(lengths)}-{max(lengths)} tokens, mean {np.mean(lengths):.1f}), "
        f"beam {args.beam}, n_best {args.n_best}, max_length {parser.cfg.max_length}"
    )
    print(f"candidates: {n_cand} ({n_failed} failed); identical per question: {same}/{len(pairs)}")
    if same < len(pairs):
        print(
            f"  differing: {len(pairs) - same} ({reordered} the same candidates in another order); largest "
            f"score gap where they differ: {gap:.2e} (near-ties: float rounding of batched vs single GEMMs)"
        )
    print(f"largest score difference (same position): {diff:.2e}")
    print("per-question (s): " + ", ".join(f"{s:.2f}" for s in old_s))
    print("batched      (s): " + ", ".join(f"{s:.2f}" for s in new_s))
    m_old, m_new = statistics.median(old_s), statistics.median(new_s)
    print(
        f"median: per-question {m_old:.2f} s ({1000 * m_old / len(pairs):.2f} ms/question), "
        f"batched {m_new:.2f} s ({1000 * m_new / len(pairs):.2f} ms/question), speed-up {m_old / m_new:.1f}x"
    )


if __name__ == "__main__":
    main()
