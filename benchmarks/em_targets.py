"""What an answers-only run learns from: on its own training questions, how often the candidate search holds the true
program, how often the EM step's choice is the true program, and how often the parser's own parse is. The true
programs are read only to score this.

    .venv/bin/python benchmarks/em_targets.py --load RUN/checkpoint_last.pth --data-dir data/demo/train-set/train
        [--questions 2000] [--wrong-answer-cost NATS] [--referent-free NATS] [--wording-roots 0|1] [--anaphora 0|1]

The choice is each question's candidate of highest posterior (the checkpoint's parser times the evidence of
``training/answers_only.Evidence``, perceived by the checkpoint's model), once with the checkpoint's settings and once
with the answer's soft likelihood and the length prior alone (``wrong_answer_cost`` and ``referent_weight`` 0), so
that the two weighings are compared on the same parser and perception (``--wrong-answer-cost``, ``--referent-free`` and
``--wording-roots`` override the checkpoint's settings, to weigh a change before a run). Prints, per question type: questions, share
with candidates, share whose candidates hold the true program ("held"), the true program's answer right ("true
right"), the choice under both weighings and the parser's free parse equal to the true program; with the CPU model.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import torch

from nscl.data import SplitPaths, load_split
from nscl.inference.dataset import QADataset
from nscl.inference.examples import examples_from_questions
from nscl.inference.execute import answer_targets, run_programs
from nscl.inference.load import load
from nscl.losses import qa_loss
from nscl.models.executor import Compiler
from nscl.models.parser_targets import collate, program_nll, targets_of
from nscl.training.answers_only import Candidates, Evidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="an answers-only run's checkpoint")
    ap.add_argument(
        "--data-dir", required=True, help="its training split (with programs, read only to score)"
    )
    ap.add_argument("--questions", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wrong-answer-cost", type=float, default=None, help="override parser.wrong_answer_cost")
    ap.add_argument("--referent-free", type=float, default=None, help="override parser.referent_free")
    ap.add_argument(
        "--wording-roots", type=int, choices=(0, 1), default=None, help="override parser.wording_roots"
    )
    ap.add_argument(
        "--anaphora", type=int, choices=(0, 1), default=None, help="override parser.search_anaphora"
    )
    args = ap.parse_args()
    from machine import machine_line

    torch.set_num_threads(args.threads)
    ck = load(args.load, "cpu", need_model=True, need_parser=True)
    model, parser, domain, pcfg = ck.model, ck.parser, ck.domain, ck.config.parser
    if args.wrong_answer_cost is not None:
        pcfg = replace(pcfg, wrong_answer_cost=args.wrong_answer_cost)
    if args.referent_free is not None:
        pcfg = replace(pcfg, referent_free=args.referent_free)
    if args.wording_roots is not None:
        pcfg = replace(pcfg, wording_roots=bool(args.wording_roots))
    if args.anaphora is not None:
        pcfg = replace(pcfg, search_anaphora=bool(args.anaphora))
    assert model is not None and parser is not None
    split = load_split(SplitPaths.resolve(args.data_dir), domain)
    ds = QADataset(split, domain, ck.config.image_height, False)
    examples = [e for e in examples_from_questions(split.questions, domain) if e.answer is not None]
    examples = examples[: args.questions]
    weighings = {
        "settings": Evidence.from_config(pcfg),
        "soft": Evidence(pcfg.length_prior),
    }
    cands = Candidates.from_config(parser, pcfg)
    compiler = Compiler(domain)
    stats: dict[str, Counter] = defaultdict(Counter)
    by_image: dict[int, list] = defaultdict(list)
    for e in examples:
        by_image[e.image_index].append(e)
    images = sorted(by_image)
    t0 = time.time()
    with torch.no_grad():
        for b in range(0, len(images), 32):
            chunk = images[b : b + 32]
            row_of = {im: r for r, im in enumerate(chunk)}
            imgs, boxes, mask = ds.scene_batch(np.array([ds.image_of_index[i] for i in chunk]))
            scene = model.perceive(imgs, boxes, mask)
            batch = [e for im in chunk for e in by_image[im]]
            free, _ = parser.parse_many([e.question for e in batch], 1, "unk")
            for e, parsed in zip(batch, free):
                true = e.program.canonical()
                s = stats[e.program.final_op]
                s["questions"] += 1
                s["free parse"] += parsed is not None and parsed.canonical() == true
                found = cands(e)
                items = targets_of(parser, e.question, found) if found else []
                ok = [i for i, item in enumerate(items) if item is not None]
                if not ok:
                    continue
                found = [found[i] for i in ok]
                s["with candidates"] += 1
                s["held"] += true in found
                out, _ = run_programs(
                    found, [row_of[e.image_index]] * len(found), scene, domain, False, compiler, True
                )
                tgt = answer_targets([e.answer] * len(found), domain, scene.mask.device)
                loss, correct, _ = qa_loss(out, tgt)
                nll = program_nll(parser, collate([items[i] for i in ok], parser.grammar.num_fixed))
                nodes = torch.tensor([float(len(c)) for c in found])
                if true in found:
                    s["true right"] += bool(correct[found.index(true)])
                for name, ev in weighings.items():
                    score = -nll + ev.log_weight(loss, correct, nodes, out.referent_logp)
                    s[f"choice ({name})"] += found[int(score.argmax())] == true
    seconds = time.time() - t0
    cols = ["with candidates", "held", "true right", "choice (soft)", "choice (settings)", "free parse"]
    print(f"# {machine_line()}; {len(examples)} questions of {args.data_dir}, {seconds:.0f} s")
    print(
        f"# settings: {weighings['settings']}, wording_roots={pcfg.wording_roots}, anaphora={pcfg.search_anaphora}"
    )
    print("| type | questions | " + " | ".join(cols) + " |")
    print("| --- " * (len(cols) + 2) + "|")
    total: Counter = Counter()
    for t in sorted(stats):
        total.update(stats[t])
    for t, s in [*sorted(stats.items()), ("all", total)]:
        n = max(s["questions"], 1)
        print(f"| {t} | {s['questions']} | " + " | ".join(f"{s[c] / n:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
