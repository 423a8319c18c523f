"""Sim-to-real check: a model trained only on our renders, asked about real CLEVR images.

``../shared/clevr/real-dev`` holds four real CLEVR v1.0 training images with their scene annotations and 40 real
questions. Their masks and boxes come from ``nscl masks`` (camera fitted to ``pixel_coords``); our question engine
adds up to ``--questions-per-image`` more questions per image (our templates, at most one per family). The
checkpoint answers with the given programs; concept accuracy is per attribute over the real objects, relation
accuracy over ordered pairs. With ``--heldout-dir`` the same numbers on our own held-out split are printed beside.
With ``--detector`` the real images are also answered with detected boxes instead of the recovered masks.

How our renders look beside the real images is ``benchmarks/look.py``. Four images and about thirty objects are a
smoke test, not a result.

    .venv/bin/python benchmarks/real_images.py --load runs/demo/checkpoint_last.pth --heldout-dir data/demo/val-set/val
        [--detector runs/detector/checkpoint_last.pth] [--real ../shared/clevr/real-dev]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from machine import machine_line
from nscl.data import SplitPaths
from nscl.domain import builtin_domain
from nscl.generate.questions import QuestionEngine
from nscl.generate.scene_masks import MaskConfig, annotate_scenes_file
from nscl.generate.template_files import load_synonyms, load_templates
from nscl.inference.evaluate import evaluate_checkpoint
from nscl.symbolic import SceneFacts

REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"
COLUMNS = ("qa", "concept/color", "concept/material", "concept/shape", "concept/size", "relation")


def engine_questions(scenes: list[dict], per_image: int, seed: int) -> list[dict]:
    """Our engine's questions (CLEVR format) about annotated scenes."""
    domain = builtin_domain()
    engine = QuestionEngine(
        domain, load_templates(None), load_synonyms(None), questions_per_image=per_image, wording_seed=seed
    )
    rng = np.random.default_rng(seed)
    out = []
    for s in scenes:
        facts = SceneFacts(
            tuple({a.name: o[a.name] for a in domain.attributes} for o in s["objects"]), s["relationships"]
        )
        for q in engine.generate(facts, rng):
            out.append(
                {
                    "question_index": len(out),
                    "image_index": s["image_index"],
                    "image_filename": s["image_filename"],
                    "split": s.get("split", "train"),
                    "question": q.text,
                    "answer": q.answer,
                    "program": q.program.to_json(),
                    "question_family_index": q.family,
                }
            )
    return out


def row(name: str, metrics: dict[str, float], n_questions: int) -> str:
    cells = [
        f"{metrics[f'validation/acc/{c}']:.4f}" if f"validation/acc/{c}" in metrics else "-" for c in COLUMNS
    ]
    return f"| {name} | {n_questions} | " + " | ".join(cells) + " |"


def object_errors(ckpt: Path, paths: SplitPaths) -> list[str]:
    """Every real object whose predicted attribute differs from its annotation: 'image #k: truth -> predicted'."""
    import torch

    from nscl.data import load_split
    from nscl.inference.dataset import QADataset
    from nscl.inference.load import load

    ck = load(ckpt, "cpu")
    assert ck.model is not None
    split = load_split(paths, ck.domain)
    ds = QADataset(split, ck.domain, ck.config.image_height)
    out = []
    with torch.no_grad():
        ck.model.eval()
        for i, sc in enumerate(ds.scenes):
            scene = ck.model.perceive(*ds.scene_batch(np.array([i])))
            for k, o in enumerate(sc.objects):
                for a in ck.domain.attributes:
                    pred = a.concepts[int(scene.query[a.name][0, k].argmax())]
                    if pred != o.attributes[a.name]:
                        described = " ".join(o.attributes[x.name] for x in ck.domain.attributes)
                        out.append(f"{sc.image_filename} #{k} ({described}): {a.name} read as {pred}")
    return out


def detected_scenes(detector: Path, real_scenes: list[dict], image_root: Path, out: Path) -> None:
    """A scenes file whose boxes come from the detector (``objects_detection``), for the same images."""
    import torch

    from nscl.inference.detect import detect_images, load_detector

    det = load_detector(detector, torch.device("cpu"))
    records = detect_images(det, [image_root / s["image_filename"] for s in real_scenes], torch.device("cpu"))
    scenes = []
    for s, r in zip(real_scenes, records):
        scenes.append(
            {
                **{k: v for k, v in s.items() if k != "objects"},
                "objects": [],
                **r,
                "image_index": s["image_index"],
            }
        )
    out.write_text(json.dumps({"scenes": scenes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=Path, required=True, help="perception checkpoint (nscl train / nscl demo)")
    ap.add_argument("--real", type=Path, default=REAL)
    ap.add_argument(
        "--heldout-dir", type=Path, default=None, help="our held-out split folder, for comparison"
    )
    ap.add_argument("--detector", type=Path, default=None, help="also answer with this detector's boxes")
    ap.add_argument("--questions-per-image", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(machine_line())
    images = args.real / "images" / "train"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        annotate_scenes_file(
            args.real / "CLEVR_train_scenes.json", t / "scenes.json", builtin_domain(), MaskConfig(workers=1)
        )
        scenes = json.loads((t / "scenes.json").read_text())["scenes"]
        ours = engine_questions(scenes, args.questions_per_image, args.seed)
        (t / "ours.json").write_text(json.dumps({"questions": ours}))
        real_q = args.real / "CLEVR_train_questions.json"
        print(f"\ncheckpoint: {args.load}\n")
        print("| data | questions | QA (given programs) | color | material | shape | size | relation |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        rows = [
            (
                "real CLEVR, CLEVR's questions",
                SplitPaths(t / "scenes.json", real_q, images, t / "vocab.json"),
            ),
            (
                "real CLEVR, our engine's questions",
                SplitPaths(t / "scenes.json", t / "ours.json", images, t / "vocab.json"),
            ),
        ]
        if args.detector is not None:
            detected_scenes(args.detector, scenes, images, t / "detected.json")
            rows += [
                (f"{name}, detected boxes", dataclasses.replace(p, scenes=t / "detected.json"))
                for name, p in rows
            ]
        if args.heldout_dir is not None:
            rows.append(
                (f"our held-out split ({args.heldout_dir.name})", SplitPaths.resolve(args.heldout_dir))
            )
        for name, paths in rows:
            n = len(json.loads(paths.questions.read_text())["questions"])
            metrics = evaluate_checkpoint(args.load, paths, None, "cpu", progress=False, data_split=0.0)
            print(row(name, metrics, n), flush=True)
        errors = object_errors(args.load, rows[0][1])
        print("\nreal objects read wrong: " + ("; ".join(errors) if errors else "none"))


if __name__ == "__main__":
    main()
