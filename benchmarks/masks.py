"""``nscl masks`` benchmark: how well masks come back from CLEVR annotations, and how fast.

1. Recovery on our own scenes, where the truth is known: N scenes sampled at 480x320 and at 192x128 (CLEVR's
   distribution, jittered cameras), their annotations stripped to what CLEVR stores, masks recovered; reports the
   mean / 1st-percentile / minimum mask IoU against the true object-id buffer, the camera position error and the
   reprojection error.
2. The real CLEVR scenes of ``../shared/clevr/real-dev``: reprojection error per scene, and (``--figure``) a
   picture of the recovered masks and boxes drawn on the first real image.
3. Throughput at CLEVR's size: the real scenes repeated to ``--scale`` scenes (70,000 = CLEVR's training split)
   through ``annotate_scenes_file`` (read, fit, render, encode, write), with ``--workers`` processes.

    .venv/bin/python benchmarks/masks.py [--scenes 300] [--scale 70000] [--workers 0] [--figure docs/real_masks.png]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import machine_line
from nscl.domain import builtin_domain
from nscl.generate.scene import SceneConfig, sample_scene
from nscl.generate.scene_masks import MaskConfig, annotate_scenes, annotate_scenes_file, decode_mask

REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"
_CLEVR_KEYS = ("shape", "size", "material", "color", "3d_coords", "pixel_coords", "rotation")


def recovery(n: int, width: int, height: int, seed: int) -> str:
    domain = builtin_domain()
    rng = np.random.default_rng(seed)
    sampled = [
        sample_scene(domain, SceneConfig(width=width, height=height), rng, i, "val", "x.png")
        for i in range(n)
    ]
    stripped = [
        {**s.record, "objects": [{k: o[k] for k in _CLEVR_KEYS} for o in s.record["objects"]]}
        for s in sampled
    ]
    out, report = annotate_scenes(stripped, domain, MaskConfig(width=width, height=height, workers=1))
    ious = []
    for s, rec in zip(sampled, out):
        for k, obj in enumerate(rec["objects"]):
            truth, got = s.object_ids == k, decode_mask(obj["mask"])
            ious.append((truth & got).sum() / max((truth | got).sum(), 1))
    iou = np.array(ious)
    pos_err = np.linalg.norm(
        np.array([r["camera_fit"]["position"] for r in out]) - np.array([s.camera.position for s in sampled]),
        axis=1,
    )
    return (
        f"| {width}x{height} | {n} | {len(iou)} | {iou.mean():.4f} | {np.percentile(iou, 1):.4f} | {iou.min():.4f} | "
        f"{pos_err.mean():.4f} / {pos_err.max():.4f} | {report.mean_error_px:.3f} / {report.worst_error_px:.3f} |"
    )


def figure(scenes_file: Path, image: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    scene = json.loads(scenes_file.read_text())["scenes"][0]
    img = np.asarray(Image.open(image).convert("RGB"))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].imshow(img)
    axes[0].set_title(f"real CLEVR: {image.name}")
    overlay = img.astype(np.float32) / 255
    cmap = plt.get_cmap("tab10")
    for k, o in enumerate(scene["objects"]):
        m = decode_mask(o["mask"])
        overlay[m] = 0.45 * overlay[m] + 0.55 * np.array(cmap(k % 10)[:3])
    axes[1].imshow(overlay)
    for k, o in enumerate(scene["objects"]):
        x0, y0, x1, y1 = o["box"]
        axes[1].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=cmap(k % 10), lw=1.5))
        axes[1].text(
            x0, y0 - 2, f"{k} {o['size']} {o['color']} {o['material']} {o['shape']}", fontsize=6, color="w"
        )
    axes[1].set_title(f"nscl masks: camera fit {scene['camera_fit']['mean_error_px']:.2f} px")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300, help="generated scenes per resolution")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--scale", type=int, default=70000, help="scenes in the throughput run (0: skip)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument(
        "--figure", type=Path, default=None, help="write the recovered masks of a real image here"
    )
    args = ap.parse_args()
    print(machine_line() + "\n")
    print(
        "| size | scenes | objects | mean IoU | 1st pct IoU | min IoU | camera error mean / max | reproj. px mean / max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for w, h in ((480, 320), (192, 128)):
        print(recovery(args.scenes, w, h, args.seed))
    real_scenes = args.real / "CLEVR_train_scenes.json"
    if not real_scenes.is_file():
        print(f"\n(no real CLEVR scenes at {real_scenes}; skipping the real part)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "real.json"
        annotate_scenes_file(real_scenes, out, builtin_domain(), MaskConfig(workers=1))
        fitted = json.loads(out.read_text())["scenes"]
        print(
            "\nreal CLEVR scenes (camera fit): "
            + ", ".join(
                f"{s['image_filename']} {s['camera_fit']['mean_error_px']:.2f} px (max {s['camera_fit']['max_error_px']:.2f})"
                for s in fitted
            )
        )
        if args.figure is not None:
            figure(out, args.real / "images" / "train" / fitted[0]["image_filename"], args.figure)
            print(f"figure: {args.figure}")
        if args.scale:
            base = json.loads(real_scenes.read_text())["scenes"]
            big = [dict(base[i % len(base)], image_index=i) for i in range(args.scale)]
            src = Path(tmp) / "big.json"
            src.write_text(json.dumps({"scenes": big}))
            t0 = time.perf_counter()
            report = annotate_scenes_file(
                src, Path(tmp) / "big_out.json", builtin_domain(), MaskConfig(workers=args.workers)
            )
            dt = time.perf_counter() - t0
            print(
                f"\nthroughput: {report.scenes} scenes ({report.objects} objects) in {dt:.0f} s = "
                f"{report.scenes / dt:.0f} scenes/s with {args.workers or os.cpu_count()} workers "
                f"(read, fit, render 480x320 ids, encode, write)"
            )


if __name__ == "__main__":
    main()
