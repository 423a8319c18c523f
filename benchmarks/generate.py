"""End-to-end generator benchmark: images per second (scene sampling + visibility + rendering + masks +
questions + PNG writing) at CLEVR's 480x320 and at the demo resolution, with all cores, and question-engine
throughput in one process.

    .venv/bin/python benchmarks/generate.py [--images 40] [--demo-images 200]

The demo figure extrapolates to the dataset `make demo` generates (3000 train + 500 val images at 192x128).
The question engine is compared with CLEVR's original engine, measured at 0.41 s per image (10 questions)
on this machine (CLEVR-FACTS section 4).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from nscl.domain import builtin_domain
from nscl.generate.pipeline import GenerateConfig, generate_dataset

CLEVR_ENGINE_SECONDS_PER_IMAGE = 0.41
DEMO_IMAGES = 3500


def timed(cfg: GenerateConfig) -> tuple[float, int]:
    t = time.perf_counter()
    summary = generate_dataset(cfg, builtin_domain(), progress=False)
    dt = time.perf_counter() - t
    return dt, sum(s["questions"] for s in summary.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=40, help="images at 480x320")
    ap.add_argument("--demo-images", type=int, default=200, help="images at the demo resolution")
    args = ap.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{cores} cores, all used")
        for label, n, w, h in (
            ("480x320", args.images, 480, 320),
            ("192x128 (demo)", args.demo_images, 192, 128),
        ):
            cfg = GenerateConfig(
                out=f"{tmp}/{w}", seed=1, train_images=n, width=w, height=h, chunk_size=max(1, n // cores)
            )
            dt, nq = timed(cfg)
            print(f"{label:<16} {n / dt:6.2f} images/s  ({dt / n:.3f} s/image, {nq} questions)")
            if w == 192:
                print(
                    f"{'':<16} demo dataset ({DEMO_IMAGES} images) extrapolated: {DEMO_IMAGES * dt / n / 60:.1f} min"
                )
        # Question engine alone, one process, on the scenes just generated.
        import numpy as np

        from nscl.generate.questions import QuestionEngine
        from nscl.generate.template_files import load_synonyms, load_templates
        from nscl.symbolic import SceneFacts

        domain = builtin_domain()
        scenes = json.loads(Path(f"{tmp}/192/train/scenes.json").read_text())["scenes"]
        engine = QuestionEngine(domain, load_templates(), load_synonyms())
        rng = np.random.default_rng(0)
        facts = [
            SceneFacts(
                tuple({a: o[a] for a in domain.attribute_names} for o in s["objects"]), s["relationships"]
            )
            for s in scenes
        ]
        t = time.perf_counter()
        nq = sum(len(engine.generate(f, rng)) for f in facts)
        dt = time.perf_counter() - t
        per = dt / len(facts)
        print(
            f"question engine  {nq / dt:7.0f} questions/s, {per:.4f} s/image for 10 questions, "
            f"{CLEVR_ENGINE_SECONDS_PER_IMAGE / per:.0f}x CLEVR's engine (0.41 s/image), one process"
        )


if __name__ == "__main__":
    main()
