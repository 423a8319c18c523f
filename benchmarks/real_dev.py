"""Smoke check on real CLEVR questions: ``../shared/clevr/real-dev`` (4 real CLEVR v1.0 training images, their
scene annotations and their 40 questions in CLEVR's own wording). A parser checkpoint reads every question as
``nscl ask`` does (spelling and verb-form corrections, unknown words that may name a thing refused, others read
as ``<UNK>``, execution-guided beam held to the kind of answer the wording asks for); the chosen program is
executed on the real scene annotations (a perfect perception, so this measures the parser alone;
``benchmarks/real_images.py`` perceives the real images). Forty questions are a smoke test, not a result.

    .venv/bin/python benchmarks/real_dev.py --load runs/demo/parser/checkpoint_last.pth [--real ../shared/clevr/real-dev]
        [--show]
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from nscl.data import read_questions, read_scenes
from nscl.errors import ProgramError
from nscl.inference.guided import read_as_ask
from nscl.inference.load import load_parser
from nscl.inference.scenes import OracleScenes
from nscl.program import translate
from nscl.run_config import GUIDED_BEAM
from nscl.symbolic import Invalid, SceneFacts, execute_nscl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=Path, required=True, help="a checkpoint with a parser")
    ap.add_argument(
        "--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"
    )
    ap.add_argument("--guided-beam", type=int, default=GUIDED_BEAM)
    ap.add_argument("--show", action="store_true", help="print every question and what became of it")
    args = ap.parse_args()
    parser = load_parser(args.load)
    domain = parser.domain
    questions = read_questions(args.real / "CLEVR_train_questions.json", domain)
    scenes = {s.image_index: s for s in read_scenes(args.real / "CLEVR_train_scenes.json", domain)}
    chosen = read_as_ask(
        parser,
        [q.question for q in questions],
        [q.image_index for q in questions],
        OracleScenes(scenes, domain),
        args.guided_beam,
    )
    right = wrong = refused = exact = 0
    for q, p in zip(questions, chosen):
        if p is None:
            refused += 1
            verdict = "refused"
        else:
            try:
                got = execute_nscl(p, SceneFacts.of(scenes[q.image_index]), domain)
            except Invalid:
                got = "(invalid)"
            with contextlib.suppress(ProgramError):
                exact += p.canonical() == translate(q.program, domain).canonical()
            ok = got == q.answer
            right += ok
            wrong += not ok
            verdict = f"{'right' if ok else 'WRONG'}: {got} (truth {q.answer})"
        if args.show:
            print(f"{q.question}\n    {p.to_str() if p is not None else '-'}\n    {verdict}")
    n = len(questions)
    print(
        f"{n} real CLEVR questions ({args.real}), parser {args.load}: exact program {exact}/{n}; "
        f"answers right {right}, wrong {wrong}, refused {refused}"
    )


if __name__ == "__main__":
    main()
