"""Time the NumPy ray caster (nscl.generate.render) on random CLEVR-like scenes of 6-8 objects.

Usage: python benchmarks/render.py [--scenes 5] [--save out.png]

Prints median / mean seconds per image for render() at 480x320 and 160x120 (supersample 2, 8 shadow
samples) and for render_ids() at both sizes. One process, whatever cores NumPy uses.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    from nscl.generate.camera import clevr_camera, clevr_lamps
    from nscl.generate.geometry import RenderObject
    from nscl.generate.render import render, render_ids
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from nscl.generate.camera import clevr_camera, clevr_lamps
    from nscl.generate.geometry import RenderObject
    from nscl.generate.render import render, render_ids


def random_objects(rng: np.random.Generator, n: int) -> list[RenderObject]:
    """n non-overlapping objects in [-3, 3]^2 (CLEVR sizes, shapes, materials; random colours)."""
    objs: list[RenderObject] = []
    while len(objs) < n:
        size = float(rng.choice([0.7, 0.35]))
        x, y = rng.uniform(-3.0, 3.0, size=2)
        if any(math.hypot(x - o.center[0], y - o.center[1]) - size - o.size < 0.25 for o in objs):
            continue
        objs.append(
            RenderObject(
                shape=str(rng.choice(["cube", "sphere", "cylinder"])),
                center=(float(x), float(y), size),
                size=size,
                rotation=float(rng.uniform(0.0, 2.0 * math.pi)),
                color=tuple(float(c) for c in rng.uniform(0.1, 0.9, size=3)),
                material=str(rng.choice(["rubber", "metal"])),
            )
        )
    return objs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="save the first 480x320 render here")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    scenes = []
    for _ in range(args.scenes):
        objs = random_objects(rng, int(rng.integers(6, 9)))
        scenes.append((objs, clevr_camera(rng), clevr_lamps(rng)))

    render(*scenes[0], 64, 48)  # warm-up (imports, allocator)
    for width, height in ((480, 320), (160, 120)):
        times, id_times = [], []
        for i, (objs, cam, lamps) in enumerate(scenes):
            t0 = time.perf_counter()
            result = render(objs, cam, lamps, width, height, supersample=2, shadow_samples=8, seed=i)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            render_ids(objs, cam, width, height)
            id_times.append(time.perf_counter() - t0)
            if i == 0 and width == 480 and args.save is not None:
                from PIL import Image

                Image.fromarray(result.image).save(args.save)
        print(
            f"render     {width}x{height} ss2: median {statistics.median(times):.3f} s, "
            f"mean {statistics.fmean(times):.3f} s per image ({len(times)} scenes of 6-8 objects)"
        )
        print(
            f"render_ids {width}x{height}:     median {statistics.median(id_times):.4f} s, "
            f"mean {statistics.fmean(id_times):.4f} s per image"
        )


if __name__ == "__main__":
    main()
