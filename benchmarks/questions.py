"""Benchmark of the question engine (``nscl.generate.questions``) on random scenes, one process.

    .venv/bin/python benchmarks/questions.py [--scenes 200] [--seed 0] [--templates DIR] [--exact]

Scenes are random symbolic scenes (3-10 objects, attributes uniform over the domain, positions uniform in
[-3, 3]^2, CLEVR's relations); only ``QuestionEngine.generate`` is timed. The reference is CLEVR's own
engine, measured at 0.41 s per scene (10 questions) on this machine (CLEVR-FACTS section 4).
"""

from __future__ import annotations

import argparse
import collections
import resource
import time
from pathlib import Path

import numpy as np

from nscl.domain import Domain, load_domain
from nscl.generate.questions import QuestionEngine
from nscl.generate.template_files import load_synonyms, load_templates
from nscl.symbolic import SceneFacts

CLEVR_SECONDS_PER_SCENE = 0.41
RIGHT = np.array([0.6563, 0.7545])
BEHIND = np.array([-0.7545, 0.6563])
DIRECTIONS = {"right": RIGHT, "left": -RIGHT, "behind": BEHIND, "front": -BEHIND}


def random_facts(domain: Domain, rng: np.random.Generator, n: int) -> SceneFacts:
    attributes = tuple(
        {a.name: a.concepts[int(rng.integers(len(a.concepts)))] for a in domain.attributes} for _ in range(n)
    )
    pos = rng.uniform(-3.0, 3.0, size=(n, 2))
    relations = {
        rel: [[j for j in range(n) if j != i and float((pos[j] - pos[i]) @ d) > 0.2] for i in range(n)]
        for rel, d in DIRECTIONS.items()
    }
    return SceneFacts(attributes, relations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-objects", type=int, default=3)
    ap.add_argument("--max-objects", type=int, default=10)
    ap.add_argument("--templates", type=Path, default=None, help="template directory (default: ours)")
    ap.add_argument("--synonyms", type=Path, default=None, help="synonyms file (default: ours)")
    ap.add_argument("--domain", default=None)
    ap.add_argument("--exact", action="store_true", help="no memo of failed sub-searches (CLEVR's search)")
    args = ap.parse_args()

    domain = load_domain(args.domain)
    rng = np.random.default_rng(args.seed)
    scenes = [
        random_facts(domain, rng, int(rng.integers(args.min_objects, args.max_objects + 1)))
        for _ in range(args.scenes)
    ]
    t0 = time.perf_counter()
    engine = QuestionEngine(
        domain, load_templates(args.templates), load_synonyms(args.synonyms), memoize=not args.exact
    )
    setup = time.perf_counter() - t0

    n_questions = 0
    families: collections.Counter[int] = collections.Counter()
    per_scene = []
    for facts in scenes:
        t = time.perf_counter()
        qs = engine.generate(facts, rng)
        per_scene.append(time.perf_counter() - t)
        n_questions += len(qs)
        families.update(q.family for q in qs)
    total = sum(per_scene)
    s_per_scene = total / len(scenes)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"scenes: {len(scenes)} ({args.min_objects}-{args.max_objects} objects), search: {'exact' if args.exact else 'memo'}"
    )
    print(f"engine setup: {setup * 1000:.1f} ms")
    print(
        f"questions: {n_questions} ({n_questions / len(scenes):.2f} per scene), families used: {len(families)}"
    )
    print(f"scenes/s: {len(scenes) / total:.1f}   questions/s: {n_questions / total:.1f}")
    print(
        f"seconds per scene: mean {s_per_scene:.4f}, median {float(np.median(per_scene)):.4f}, "
        f"max {max(per_scene):.4f}"
    )
    print(
        f"speed-up vs CLEVR's engine ({CLEVR_SECONDS_PER_SCENE} s/scene): {CLEVR_SECONDS_PER_SCENE / s_per_scene:.1f}x"
    )
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
