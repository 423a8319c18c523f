"""``nscl demo`` (``make demo``): the main job on the embedded default data. Generate a training split and a
held-out val split with another seed, train NS-CL (the shipped ``demo`` config, ``nscl/configs/demo.json``), evaluate, train the semantic parser,
and ask English questions about a held-out image, printing every table and where the files are."""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path

from .data import Scene, SplitPaths, read_questions, read_scenes
from .device import resolve_device
from .domain import builtin_domain
from .errors import NSCLError
from .generate.pipeline import GenerateConfig, generate_dataset
from .inference.ask import ask
from .inference.evaluate import evaluate_checkpoint
from .metrics import format_table
from .run_config import load_config
from .training.fit_parser import fit_parser
from .training.trainer import fit_nscl

log = logging.getLogger("nscl")


@dataclass(frozen=True)
class DemoConfig:
    data_dir: str = "data/demo"
    run_dir: str = "runs/demo"
    config: str = "demo"  # a TrainConfig JSON file or a shipped config's name
    train_images: int = 3000
    val_images: int = 500
    # Twenty questions per training image: one perception pass of an image serves all of its questions, so a
    # training step on twice the questions costs little more, and the demo reaches its accuracy in fewer steps
    # (benchmarks/train.py --compare). The held-out split keeps CLEVR's ten.
    questions_per_image: int = 20
    width: int = 192
    height: int = 128
    seed: int = 0  # train data seed; val uses seed + 1
    device: str = "auto"
    progress: bool = True


# Words a person might use for the demo's own-wording question (synonyms the templates also know).
_SAY = {
    "metal": "shiny",
    "rubber": "matte",
    "sphere": "ball",
    "cube": "block",
    "large": "big",
    "small": "tiny",
}
OWN_WORDING = "What's the colour of the {size} {material} {shape}?"


def own_wording(scene: Scene) -> list[tuple[str, str]]:
    """[(question, answer)]: :data:`OWN_WORDING` about the first object that its size, material and shape pick
    out alone in ``scene``; empty when none does."""
    keys = [tuple(o.attributes.get(a, "") for a in ("size", "material", "shape")) for o in scene.objects]
    for o, key in zip(scene.objects, keys):
        if keys.count(key) == 1 and all(key):
            size, material, shape = (_SAY.get(v, v) for v in key)
            text = OWN_WORDING.format(size=size, material=material, shape=shape)
            return [(text, str(o.attributes.get("color")))]
    return []


def run_demo(args: DemoConfig) -> int:
    """Generate (train, and val with another seed), train, evaluate, print the tables and where things are."""

    t0 = time.time()
    domain = builtin_domain()
    root = Path(args.data_dir)
    common = dict(width=args.width, height=args.height, workers=0)
    log.info(
        "[1/5] generating %d train images (seed %d) and %d held-out val images (seed %d) in %s",
        args.train_images,
        args.seed,
        args.val_images,
        args.seed + 1,
        root,
    )
    generate_dataset(
        GenerateConfig(
            out=str(root / "train-set"),
            seed=args.seed,
            train_images=args.train_images,
            questions_per_image=args.questions_per_image,
            **common,
        ),
        domain,
        progress=args.progress,
    )
    generate_dataset(
        GenerateConfig(out=str(root / "val-set"), seed=args.seed + 1, val_images=args.val_images, **common),
        domain,
        progress=args.progress,
    )
    t_gen = time.time() - t0
    cfg = load_config(args.config)
    device = resolve_device(args.device)
    train_paths = SplitPaths.resolve(root / "train-set" / "train")
    val_paths = SplitPaths.resolve(root / "val-set" / "val")
    log.info(
        "[2/5] training (%s, %d epochs) on %s",
        args.config,
        cfg.epochs,
        device,
    )
    res = fit_nscl(cfg, domain, train_paths, args.run_dir, device, progress=args.progress)
    log.info("[3/5] evaluating on the held-out val split")
    metrics = evaluate_checkpoint(res.checkpoint, val_paths, None, device, progress=False, data_split=0.0)
    print()
    print("QA accuracy on the held-out val split (test mode):")
    print(format_table({k: v for k, v in metrics.items() if "/acc/qa" in k}, "validation"))
    print()
    print("Concept classification (paper's Table 2), held-out val split:")
    print(format_table({k: v for k, v in metrics.items() if "/acc/qa" not in k}, "validation"))
    print()
    # Parser: supervised on the training programs, starting from the trained model; then ask in English.

    log.info("[4/5] training the semantic parser (%d epochs) on the training questions", cfg.parser.epochs)
    pcfg = dataclasses.replace(cfg, training_target="parser")
    pres = fit_parser(
        pcfg,
        domain,
        train_paths,
        Path(args.run_dir) / "parser",
        device,
        val_paths,
        init=str(res.checkpoint),
        progress=args.progress,
    )
    print()
    print(
        "Semantic parser on the held-out val split (exact program match; QA with parsed vs given programs):"
    )
    keys = ("validationextra/acc/program_exact", "validationextra/acc/qa_parsed", "validationextra/acc/qa")
    print(format_table({k: v for k, v in pres.metrics.items() if k in keys}, "validationextra"))
    log.info("[5/5] asking questions about a held-out image")
    scene = read_scenes(val_paths.scenes, domain)[0]
    stored = [q for q in read_questions(val_paths.questions, domain) if q.image_index == scene.image_index][
        :3
    ]
    image = val_paths.images / scene.image_filename
    # Questions of our own, answered from the scene annotation: a count, and a wording no template uses
    # (a contraction, British spelling and synonyms), as a person would type it.
    n_spheres = sum(o.attributes.get("shape") == "sphere" for o in scene.objects)
    for text, truth in [
        *((q.question, q.answer) for q in stored),
        ("How many spheres are there?", str(n_spheres)),
        *own_wording(scene),
    ]:
        print()
        try:
            result = ask(
                pres.checkpoint,
                image,
                text,
                scene_json=val_paths.scenes,
                index=scene.image_index,
                device=device,
            )
        except NSCLError as e:  # an unparsable question is reported, not fatal
            print(f"Question: {text}\n{e}")
            continue
        print(result.format_trace())
        print(f"(ground truth: {truth})")

    peak = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    print()
    print(
        f"generation {t_gen:.0f}s, training {res.seconds:.0f}s, parser {pres.seconds:.0f}s, "
        f"total {time.time() - t0:.0f}s, peak memory {peak / 2**20:.2f} GiB (largest process)"
    )
    print(
        f"checkpoint: {pres.checkpoint} (model and parser)\nlog:        {res.run.log}\n"
        f"metrics:    {res.run.metrics}\ncurves:     {res.run.curves}"
    )
    print(
        f"ask your own: nscl ask --load {pres.checkpoint} --image {image} --scene-json {val_paths.scenes} "
        f'--index {scene.image_index} "How many large cubes are there?"'
    )
    print(
        f"or on a web page: nscl serve --load {pres.checkpoint} --data-dir {val_paths.images.parent} "
        "(then open http://127.0.0.1:8000/)"
    )
    return 0
