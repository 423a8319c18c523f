"""The hand-written benchmark questions (``benchmarks/data/typed_questions.json``) still fit the demo's held-out
images: the first ten val images of ``nscl demo`` are regenerated with the demo's settings and every question's
program must pick its objects unambiguously there (a generator change that moves the scenes fails here, not in a
benchmark run much later)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from nscl.data import read_scenes
from nscl.demo import DemoConfig
from nscl.domain import builtin_domain
from nscl.generate.pipeline import GenerateConfig, generate_dataset
from nscl.program import program_from_str
from nscl.symbolic import SceneFacts, execute_nscl

TYPED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "typed_questions.json"


def test_typed_questions_fit_the_demo_images(tmp_path: Path) -> None:
    domain = builtin_domain()
    demo = DemoConfig()
    items = json.loads(TYPED.read_text(encoding="utf-8"))["questions"]
    n_images = max(q["image_index"] for q in items) + 1
    cfg = GenerateConfig(
        out=str(tmp_path),
        seed=demo.seed + 1,
        val_images=n_images,
        width=demo.width,
        height=demo.height,
        workers=1,
    )
    generate_dataset(cfg, domain, progress=False)
    scenes = {s.image_index: s for s in read_scenes(tmp_path / "val" / "scenes.json", domain)}
    answers = Counter()
    for q in items:
        prog = program_from_str(q["program"], domain)
        answers[execute_nscl(prog, SceneFacts.of(scenes[q["image_index"]]), domain)] += (
            1  # raises if ambiguous
        )
    assert len(items) >= 100 and len({q["question"] for q in items}) == len(items)
    assert answers["yes"] and answers["no"]  # not a one-answer set
