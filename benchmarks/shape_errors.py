"""Where a trained model's attribute errors come from: confusions, and the visible size of the objects it misses.

    .venv/bin/python benchmarks/shape_errors.py --load RUN/checkpoint_last.pth --data-dir VAL [--attribute shape]

For every object of the split, the model's query answer for the attribute (argmax over its concepts) is compared
with the scene annotation. Prints the confusion pairs, errors per (size, material), and the visible area of the
missed objects (pixels of their RLE mask in the stored image) against the split's distribution.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from nscl.checkpoint import load_checkpoint
from nscl.data import SplitPaths, load_split
from nscl.inference.dataset import QADataset
from nscl.inference.load import model_from_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", required=True, help="NSCL checkpoint")
    ap.add_argument("--data-dir", required=True, help="split folder with masks in scenes.json")
    ap.add_argument("--attribute", default="shape")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg, domain = model_from_state(load_checkpoint(args.load), args.load)
    model.eval()
    split = load_split(SplitPaths.resolve(Path(args.data_dir)), domain)
    ds = QADataset(split, domain, cfg.image_height)
    concepts = domain.attribute(args.attribute).concepts
    confusion: Counter = Counter()
    total: Counter = Counter()
    wrong: Counter = Counter()
    area_all, area_err = [], []
    with torch.no_grad():
        for start in range(0, len(ds.scenes), 64):
            ids = np.arange(start, min(start + 64, len(ds.scenes)))
            pred = model.perceive(*ds.scene_batch(ids)).query[args.attribute].argmax(-1)  # (B, N)
            for b, i in enumerate(ids):
                for k, obj in enumerate(ds.scenes[i].objects):
                    truth, guess = obj.attributes[args.attribute], concepts[int(pred[b, k])]
                    key = (obj.attributes.get("size"), obj.attributes.get("material"))
                    area = float(mask_utils.area(obj.mask)) if obj.mask else float("nan")
                    total[key] += 1
                    area_all.append(area)
                    if truth != guess:
                        confusion[(truth, guess)] += 1
                        wrong[key] += 1
                        area_err.append(area)
    n, e = sum(total.values()), sum(confusion.values())
    print(f"{args.attribute}: {e} errors in {n} objects (accuracy {1 - e / n:.4f})")
    print(
        "confusions (truth -> answer): " + ", ".join(f"{t}->{g} {c}" for (t, g), c in confusion.most_common())
    )
    print(
        "errors by size/material: " + ", ".join(f"{s}/{m} {wrong[(s, m)]}/{total[(s, m)]}" for s, m in total)
    )
    a_all, a_err = np.array(area_all), np.array(area_err)
    for cut in (50, 100, 200):
        print(
            f"visible area < {cut} px: {np.mean(a_all < cut):6.1%} of objects, "
            f"{np.mean(a_err < cut) if e else 0:6.1%} of errors"
        )


if __name__ == "__main__":
    main()
