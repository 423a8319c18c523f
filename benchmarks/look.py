"""Our renderer against Blender on the same scenes: the real CLEVR scenes of ``../shared/clevr/real-dev`` re-rendered by
``nscl.generate.render`` from their annotations (camera fitted by ``nscl masks``, CLEVR's base lamps, the objects'
own shapes, sizes, rotations, colours and materials), compared object by object inside the same masks.

Per material it prints the mean over objects of the 99th percentile and the median brightness (mean of R, G, B,
0-255), and the floor's; ``--figure`` writes the first real image beside our render of it.

    .venv/bin/python benchmarks/look.py [--figure docs/look.png] [--real ../shared/clevr/real-dev]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from machine import machine_line
from nscl.domain import builtin_domain
from nscl.generate.blender import BlenderImage, render_blender
from nscl.generate.camera import Camera, clevr_lamps
from nscl.generate.geometry import RenderObject
from nscl.generate.render import render
from nscl.generate.scene_masks import MaskConfig, annotate_scenes_file, decode_mask

REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"


def scene_objects(scene: dict) -> list[RenderObject]:
    app = builtin_domain().appearance
    return [
        RenderObject(
            shape=str(app["shape"][o["shape"]]),
            center=tuple(o["3d_coords"]),
            size=float(app["size"][o["size"]]),
            rotation=float(o["rotation"]),
            color=tuple(c / 255.0 for c in app["color"][o["color"]]),
            material=str(app["material"][o["material"]]),
        )
        for o in scene["objects"]
    ]


def rerender(scene: dict, supersample: int, seed: int) -> np.ndarray:
    """(320, 480, 3) uint8: our render of an annotated CLEVR scene."""
    camera = Camera(position=tuple(scene["camera_fit"]["position"]))
    return render(
        scene_objects(scene), camera, clevr_lamps(None), 480, 320, supersample=supersample, seed=seed
    ).image


def rerender_blender(scenes: list[dict], samples: int, tmp: Path) -> list[np.ndarray]:
    """(320, 480, 3) uint8 each: the scenes rendered by ``nscl generate --renderer blender``'s back-end."""
    images = [
        BlenderImage(
            tmp / f"{i}.png",
            scene_objects(s),
            Camera(position=tuple(s["camera_fit"]["position"])),
            clevr_lamps(None),
            480,
            320,
            samples,
            i,
        )
        for i, s in enumerate(scenes)
    ]
    render_blender(images)
    return [np.asarray(Image.open(im.output).convert("RGB")) for im in images]


def stats(image: np.ndarray, scene: dict) -> dict[str, list[tuple[float, float]]]:
    lum = image.astype(np.float32).mean(-1)
    out: dict[str, list[tuple[float, float]]] = {}
    any_obj = np.zeros(lum.shape, dtype=bool)
    for o in scene["objects"]:
        m = decode_mask(o["mask"])
        any_obj |= m
        if m.sum() >= 200:
            out.setdefault(o["material"], []).append((np.percentile(lum[m], 99), np.median(lum[m])))
    out.setdefault("floor", []).append((np.percentile(lum[~any_obj], 99), np.median(lum[~any_obj])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument(
        "--renderer",
        choices=["numpy", "blender"],
        default="numpy",
        help="whose render to compare with the real one",
    )
    ap.add_argument("--blender-samples", type=int, default=64)
    args = ap.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scenes.json"
        annotate_scenes_file(
            args.real / "CLEVR_train_scenes.json", out, builtin_domain(), MaskConfig(workers=1)
        )
        scenes = json.loads(out.read_text())["scenes"]
        blender_images: list[np.ndarray] = []
        if args.renderer == "blender":
            blender_images = rerender_blender(scenes, args.blender_samples, Path(tmp))
    real_stats: dict[str, list] = {}
    our_stats: dict[str, list] = {}
    pictures = []
    for i, s in enumerate(scenes):
        real = np.asarray(Image.open(args.real / "images" / "train" / s["image_filename"]).convert("RGB"))
        ours = blender_images[i] if blender_images else rerender(s, args.supersample, i)
        pictures.append((real, ours))
        for acc, img in ((real_stats, real), (our_stats, ours)):
            for k, v in stats(img, s).items():
                acc.setdefault(k, []).extend(v)
    print(
        f"\n| brightness inside the same masks | real CLEVR (Blender) 99th pct / median | {args.renderer} 99th pct / median | objects |"
    )
    print("| --- | --- | --- | --- |")
    for k in ("metal", "rubber", "floor"):
        r, o = np.array(real_stats.get(k, [])), np.array(our_stats.get(k, []))
        if len(r):
            print(
                f"| {k} | {r[:, 0].mean():.0f} / {r[:, 1].mean():.0f} | {o[:, 0].mean():.0f} / {o[:, 1].mean():.0f} | {len(r)} |"
            )
    if args.figure is not None:
        real, ours = pictures[0]
        Image.fromarray(np.concatenate([real, np.full((320, 8, 3), 255, np.uint8), ours], axis=1)).save(
            args.figure
        )
        print(
            f"\nfigure: {args.figure} (left: real CLEVR {scenes[0]['image_filename']}; right: ours, same scene)"
        )


if __name__ == "__main__":
    main()
