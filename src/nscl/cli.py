"""Command line: a thin argparse layer over importable functions.

This is the only module that parses arguments, configures logging, seeds and picks devices. Each command's
heavy imports happen inside its handler so that ``nscl --help`` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import NSCLError

log = logging.getLogger("nscl")

EXIT_USER_ERROR = 2


# --------------------------------------------------------------------------------------------- shared flags
def add_domain_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", default=None, help="built-in domain name or domain JSON file (default: clevr)")


def add_data_flags(p: argparse.ArgumentParser, prefix: str = "data", required: bool = False) -> None:
    p.add_argument(f"--{prefix}-dir", default=None, help="split folder: scenes.json, questions.json, images/")
    p.add_argument(f"--{prefix}-scenes-json", default=None, help="scenes file (overrides the folder's)")
    p.add_argument(f"--{prefix}-questions-json", default=None, help="questions file (overrides the folder's)")
    p.add_argument(
        f"--{prefix}-image-root", default=None, help="image folder (overrides the folder's images/)"
    )
    p.add_argument(f"--{prefix}-vocab-json", default=None, help="vocab file (overrides the folder's)")


def split_paths(args: argparse.Namespace, prefix: str = "data"):  # noqa: ANN201
    from .data import SplitPaths

    g = vars(args)
    pre = prefix.replace("-", "_")
    return SplitPaths.resolve(
        g[f"{pre}_dir"],
        g[f"{pre}_scenes_json"],
        g[f"{pre}_questions_json"],
        g[f"{pre}_image_root"],
        g[f"{pre}_vocab_json"],
    )


# --------------------------------------------------------------------------------------------- commands
def cmd_vocab(args: argparse.Namespace) -> int:
    from .data import read_questions
    from .domain import load_domain
    from .vocab import Vocab

    domain = load_domain(args.domain)
    paths = split_paths(args)
    questions = read_questions(paths.questions, domain)
    vocab = Vocab.build((q.question for q in questions), domain.object_concepts + domain.relation_concepts)
    out = args.output or paths.vocab
    vocab.save(out)
    log.info("wrote %s (%d words from %d questions)", out, len(vocab), len(questions))
    return 0


def cmd_execute(args: argparse.Namespace) -> int:
    from .data import load_split
    from .domain import load_domain
    from .verify import verify_questions

    domain = load_domain(args.domain)
    split = load_split(split_paths(args), domain, box_source="none")
    report = verify_questions(split.questions, split.scenes, domain)
    print(report.format(args.max_mismatches))
    return 0 if not report.mismatches else 1


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {}


def _register(name: str, help_: str, add: Callable[[argparse.ArgumentParser], None], handler: str) -> None:
    COMMANDS[name] = (help_, add, handler)


def _vocab_flags(p: argparse.ArgumentParser) -> None:
    add_data_flags(p)
    add_domain_flag(p)
    p.add_argument("--output", "-o", default=None, help="where to write (default: <data-dir>/vocab.json)")


def _execute_flags(p: argparse.ArgumentParser) -> None:
    add_data_flags(p)
    add_domain_flag(p)
    p.add_argument("--max-mismatches", type=int, default=20, help="how many mismatches to list")


_register("vocab", "build vocab.json from a questions file", _vocab_flags, "cmd_vocab")
_register(
    "execute", "run every program symbolically and check the stored answers", _execute_flags, "cmd_execute"
)


# --------------------------------------------------------------------------------------------- generate
def _generate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output root: <out>/{train,val,test}/")
    p.add_argument("--seed", type=int, default=0, help="base seed; val and test use their own streams")
    p.add_argument("--train-images", type=int, default=0)
    p.add_argument("--val-images", type=int, default=0)
    p.add_argument("--test-images", type=int, default=0)
    p.add_argument("--questions-per-image", type=int, default=10)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--min-objects", type=int, default=3)
    p.add_argument("--max-objects", type=int, default=10)
    p.add_argument("--cogent", choices=["A", "B"], default=None, help="CLEVR-CoGenT colour/shape condition")
    p.add_argument("--templates", default=None, help="folder of CLEVR-format template files (default: ours)")
    p.add_argument(
        "--synonyms", default=None, help="CLEVR-format synonyms.json for --templates (default: ours)"
    )
    p.add_argument("--supersample", type=int, default=2, help="antialiasing rays per pixel side")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores; 1 for blender)")
    renderers = "numpy: our ray caster; blender: Cycles, as CLEVR was made (needs Blender; slow)"
    p.add_argument("--renderer", choices=["numpy", "blender"], default="numpy", help=renderers)
    p.add_argument("--blender-samples", type=int, default=64, help="Cycles samples per pixel [64]")
    p.add_argument("--blender", default="blender", help="the Blender executable [blender]")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="make only every N-th chunk from I (one of N machines); the same command without --shard, where "
        "all shards' <split>/.parts/ were gathered, writes the dataset",
    )
    p.add_argument("--no-progress", action="store_true")
    add_domain_flag(p)


def cmd_generate(args: argparse.Namespace) -> int:
    from .domain import load_domain
    from .generate.pipeline import GenerateConfig, generate_dataset

    try:
        cfg = GenerateConfig(
            out=args.out,
            seed=args.seed,
            train_images=args.train_images,
            val_images=args.val_images,
            test_images=args.test_images,
            questions_per_image=args.questions_per_image,
            width=args.width,
            height=args.height,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            cogent=args.cogent,
            templates=args.templates,
            synonyms=args.synonyms,
            supersample=args.supersample,
            workers=args.workers,
            shard=args.shard,
            renderer=args.renderer,
            blender_samples=args.blender_samples,
            blender=args.blender,
        )
    except ValueError as e:
        raise NSCLError(str(e)) from None
    summary = generate_dataset(cfg, load_domain(args.domain), progress=not args.no_progress)
    for split, counts in summary.items():
        log.info(
            "%s: %d images, %d questions -> %s",
            split,
            counts["images"],
            counts["questions"],
            f"{args.out}/{split}",
        )
    return 0


# --------------------------------------------------------------------------------------------- train
def _train_flags(p: argparse.ArgumentParser) -> None:
    add_data_flags(p)
    add_data_flags(p, "extra-data")
    add_domain_flag(p)
    # Flags left unset keep the value of --config (or TrainConfig's default, given in brackets).
    p.add_argument(
        "--training-target",
        choices=["derender", "parser", "all"],
        help="what to train [derender: perception and concepts from QA with given programs; parser: the semantic "
        "parser (supervised, then REINFORCE with the frozen --load model when --parser-annotations K > 0); all: "
        "joint fine-tuning of the --load model and its parser; without --load, perception, concepts and parser "
        "from answers alone, no program annotation read (--config full)]",
    )
    p.add_argument(
        "--parser-annotations",
        type=int,
        default=None,
        metavar="K",
        help="parser: train on K program annotations, stratified by question family, then REINFORCE on answers "
        "[0: every annotation, no REINFORCE]",
    )
    p.add_argument("--curriculum", choices=["all", "off"], help="[all]")
    p.add_argument("--dataset", default="clevr", choices=["clevr"])
    p.add_argument("--batch-size", type=int, help="questions per batch, grouped by image [32]")
    p.add_argument("--epochs", "--epoch", type=int, help="[100]")
    p.add_argument("--validation-interval", type=int, help="[5]")
    p.add_argument("--save-interval", type=int, help="[5]")
    p.add_argument(
        "--data-split", type=float, help="fraction of training images kept; the rest is dev [0.95]"
    )
    p.add_argument(
        "--data-trim", type=float, help="keep this fraction (<1) or number (>=1) of questions [0: all]"
    )
    p.add_argument("--lr", type=float, help="[0.001]")
    p.add_argument("--image-height", type=int, default=None, help="resize images to this height [128]")
    p.add_argument("--backbone", choices=["small", "resnet34"], default=None)
    p.add_argument("--pretrained", default=None, help="local ResNet-34 ImageNet state dict file")
    p.add_argument(
        "--config",
        default=None,
        help="TrainConfig JSON file, or a shipped config by name: demo, long (flags override it)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.perception.width=32 (repeatable)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--run-dir", default=None, help="where logs, metrics, curves and checkpoints go")
    p.add_argument("--evaluate", action="store_true", help="only evaluate the --load checkpoint")
    p.add_argument(
        "--load",
        default=None,
        help="checkpoint to evaluate; with --training-target parser|all, the NSCL checkpoint to start from",
    )
    p.add_argument("--resume", default=None, help="checkpoint to continue training from")
    p.add_argument("--use-tb", action="store_true", help="also write TensorBoard events")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch [0: torch's default]")
    p.add_argument("--no-progress", action="store_true")


def train_config_from_args(args: argparse.Namespace):  # noqa: ANN201
    from .config import override, parse_settings
    from .run_config import TrainConfig, load_config

    cfg = load_config(args.config) if args.config else TrainConfig()
    updates: dict = {}
    for flag, key in (
        ("curriculum", "curriculum"),
        ("batch_size", "batch_size"),
        ("epochs", "epochs"),
        ("validation_interval", "validation_interval"),
        ("save_interval", "save_interval"),
        ("data_split", "data_split"),
        ("data_trim", "data_trim"),
        ("lr", "lr"),
        ("training_target", "training_target"),
        ("threads", "threads"),
        ("image_height", "image_height"),
        ("seed", "seed"),
        ("backbone", "model.perception.backbone"),
        ("pretrained", "model.perception.pretrained"),
        ("parser_annotations", "parser.annotations"),
    ):
        if getattr(args, flag) is not None:
            updates[key] = getattr(args, flag)
    updates.update(parse_settings(args.set))
    return override(cfg, updates)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .device import resolve_device
    from .domain import load_domain
    from .metrics import format_table

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = split_paths(args)
    extra = (
        split_paths(args, "extra-data") if (args.extra_data_dir or args.extra_data_questions_json) else None
    )
    if args.evaluate:
        from .inference.evaluate import evaluate_checkpoint

        if not args.load:
            raise NSCLError("--evaluate needs --load CKPT")
        metrics = evaluate_checkpoint(
            args.load, paths, extra, device, progress=not args.no_progress, data_split=args.data_split
        )
        print(format_table(metrics, "validation"))
        if extra is not None:
            print(format_table(metrics, "validationextra"))
        return 0
    cfg = train_config_from_args(args)
    domain = load_domain(args.domain)
    run_dir = args.run_dir or f"runs/{cfg.training_target}-{paths.scenes.parent.name or 'data'}"
    progress = not args.no_progress
    from .training.distributed import world_from_env

    world = world_from_env()
    # The fit of the training target: fit_nscl (derender), fit_parser, fit_joint (all, from --load) or
    # fit_from_answers (all without --load: everything from answers alone).
    if cfg.training_target == "derender":
        from .training.trainer import fit_nscl

        res = fit_nscl(cfg, domain, paths, run_dir, device, extra, args.resume, progress, args.use_tb)
    else:
        from .training.fit_parser import fit_joint, fit_parser

        if world.active:
            raise NSCLError(
                f"--training-target {cfg.training_target} runs in one process; "
                "torchrun with several processes trains --training-target derender"
            )
        if cfg.training_target == "all" and not args.load:
            if cfg.parser.annotations:
                raise NSCLError(
                    f"--training-target all without --load learns from answers alone and reads no program: "
                    f"--parser-annotations must be 0, not {cfg.parser.annotations} (or give --load)"
                )
            from .training.answers_only import fit_from_answers

            res = fit_from_answers(cfg, domain, paths, run_dir, device, extra, progress, args.resume)
        else:
            if args.resume:
                raise NSCLError(
                    "--resume is supported with --training-target derender, and all without --load"
                )
            fit = fit_parser if cfg.training_target == "parser" else fit_joint
            res = fit(cfg, domain, paths, run_dir, device, extra, args.load, progress)
    if not world.main:
        return 0
    print(format_table(res.metrics, "validation"))
    if extra is not None:
        print(format_table(res.metrics, "validationextra"))
    log.info("checkpoint: %s\nlog: %s\ncurves: %s", res.checkpoint, res.run.log, res.run.curves)
    return 0


_register(
    "generate",
    "generate a CLEVR-format dataset (scenes, images, masks, questions)",
    _generate_flags,
    "cmd_generate",
)
_register(
    "train", "train NS-CL (or --evaluate a checkpoint); release-compatible flags", _train_flags, "cmd_train"
)


def _visualize_flags(p: argparse.ArgumentParser) -> None:
    add_data_flags(p)
    add_domain_flag(p)
    p.add_argument("-n", type=int, default=10, help="how many images to show (default: 10)")
    p.add_argument("--random", action="store_true", help="pick the images at random (default: the first N)")
    p.add_argument("--seed", type=int, default=None, help="seed for --random (default: a fresh one, printed)")
    p.add_argument(
        "--output", "-o", default=None, help="HTML page to write (default: <data-dir>/visualize.html)"
    )


def cmd_visualize(args: argparse.Namespace) -> int:
    from .domain import load_domain
    from .visualize import visualize

    res = visualize(
        split_paths(args),
        load_domain(args.domain),
        n=args.n,
        random=args.random,
        seed=args.seed,
        output=args.output,
    )
    seed = f", seed {res.seed}" if res.seed is not None else ""
    log.info(
        "wrote %s (%d images, %d questions%s; overlays in %s)",
        res.page,
        len(res.image_indices),
        res.questions,
        seed,
        res.overlays[0].parent,
    )
    return 0


_register(
    "visualize",
    "write a static HTML page showing images, objects, questions and programs",
    _visualize_flags,
    "cmd_visualize",
)


# --------------------------------------------------------------------------------------------- demo
def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", default="data/demo", help="where the demo dataset is generated (reused if there)"
    )
    p.add_argument("--run-dir", default="runs/demo", help="where logs, curves and checkpoints go")
    p.add_argument(
        "--config", default="demo", help="TrainConfig JSON file, or a shipped config by name (default: demo)"
    )
    p.add_argument("--train-images", type=int, default=3000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument(
        "--questions-per-image", type=int, default=20, help="questions per training image (default: 20)"
    )
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="train data seed; val uses seed + 1")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            data_dir=args.data_dir,
            run_dir=args.run_dir,
            config=args.config,
            train_images=args.train_images,
            val_images=args.val_images,
            questions_per_image=args.questions_per_image,
            width=args.width,
            height=args.height,
            seed=args.seed,
            device=args.device,
            progress=not args.no_progress,
        )
    )


_register("demo", "the main job: generate data, train, evaluate, print the tables", _demo_flags, "cmd_demo")


def _parse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("questions", nargs="*", help="questions to parse (printed as programs)")
    p.add_argument("--load", required=True, help="checkpoint holding a parser")
    p.add_argument("--questions-json", default=None, help="parse every question of this questions.json")
    p.add_argument(
        "--output",
        "-o",
        default=None,
        help="questions.json to write: every field kept, the parser's program under 'program' (CLEVR "
        "form) and 'program_nscl' (the original program moves to 'program_original')",
    )
    p.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help="with --questions-json: mark unparsable questions with 'parse_error' instead of stopping",
    )
    p.add_argument(
        "--unknown-as-unk",
        action="store_true",
        help="read words outside the parser's vocabulary as <UNK> instead of refusing the question",
    )
    p.add_argument(
        "--check-beam",
        type=int,
        default=8,
        help="hold each parse to its wording (the kind of answer asked, every concept named), taking a candidate "
        "of a beam of this size where the greedy parse fails; 0: plain decoding with --beam",
    )


def cmd_parse(args: argparse.Namespace) -> int:
    from .inference.guided import checked_parse
    from .inference.load import load_parser
    from .inference.questions_file import parse_questions_file

    if not args.questions and not args.questions_json:
        raise NSCLError("give questions to parse, or --questions-json FILE --output FILE")
    if args.questions_json and not args.output:
        raise NSCLError("--questions-json needs --output")
    parser = load_parser(args.load)
    unknown = "unk" if args.unknown_as_unk else "error"
    if args.questions:
        if args.check_beam > 0:
            programs, errors = checked_parse(parser, args.questions, args.check_beam, unknown)
        else:
            programs, errors = parser.parse_many(args.questions, args.beam, unknown)
        for q, prog, err in zip(args.questions, programs, errors):
            print(f"{q}\n  {prog.to_str() if prog is not None else 'error: ' + str(err)}")
        if any(e is not None for e in errors) and not args.questions_json:
            return 1
    if args.questions_json:
        counts = parse_questions_file(
            parser, args.questions_json, args.output, args.beam, args.skip_errors, unknown, args.check_beam
        )
        log.info(
            "wrote %s (%d questions, %d parsed, %d errors)",
            args.output,
            counts["questions"],
            counts["parsed"],
            counts["errors"],
        )
    return 0


def _ask_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help='the question, e.g. "Which color is the large sphere?"')
    p.add_argument("--load", required=True, help="NSCL checkpoint with a parser (--training-target parser)")
    p.add_argument("--image", required=True, help="the image file")
    p.add_argument(
        "--scene-json",
        default=None,
        help="scene file with the objects' boxes ('box' xyxy pixels or RLE 'mask')",
    )
    p.add_argument("--index", type=int, default=None, help="image_index of the scene in --scene-json")
    p.add_argument("--boxes-json", default=None, help="JSON list of object boxes [x0, y0, x1, y1] in pixels")
    p.add_argument(
        "--detector", default=None, help="find the objects with this detector (nscl train-detector)"
    )
    p.add_argument("--beam", type=int, default=1, help="parser beam size without guidance (1: greedy)")
    p.add_argument(
        "--guided-beam",
        type=int,
        default=8,
        help="execution-guided parsing: when the greedy parse refers ambiguously to the image's objects, try "
        "this many beam candidates (0: off, use --beam)",
    )
    p.add_argument(
        "--no-correct",
        action="store_true",
        help="refuse words the parser does not know instead of reading a near miss ('cilinder') as the known word",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def cmd_ask(args: argparse.Namespace) -> int:
    import json

    from .device import resolve_device
    from .inference.ask import ask

    res = ask(
        args.load,
        args.image,
        args.question,
        scene_json=args.scene_json,
        index=args.index,
        boxes_json=args.boxes_json,
        beam_size=args.beam,
        device=resolve_device(args.device),
        guided_beam=args.guided_beam,
        correct_spelling=not args.no_correct,
        detector=args.detector,
    )
    print(json.dumps(res.to_json(), indent=1) if args.json else res.format_trace())
    return 0


_register("parse", "parse questions into NS-CL programs with a trained parser", _parse_flags, "cmd_parse")
_register(
    "ask", "answer a question about an image, showing the program and every step", _ask_flags, "cmd_ask"
)


def _all_commands() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]]:
    from .cli_images import COMMANDS as IMAGE_COMMANDS
    from .cli_serve import COMMANDS as SERVE_COMMANDS

    return {**COMMANDS, **IMAGE_COMMANDS, **SERVE_COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nscl", description="Neuro-Symbolic Concept Learner on modern PyTorch.")
    p.add_argument("--version", action="version", version=f"nscl {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, handler) in _all_commands().items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add(sp)
        sp.set_defaults(handler=handler)
    return p


def _resolve(handler: str) -> Callable[[argparse.Namespace], int]:
    """``"cmd_x"`` names a function here; ``"package.module:function"`` one imported on demand."""
    if ":" not in handler:
        return globals()[handler]
    import importlib

    mod, fn = handler.split(":")
    return getattr(importlib.import_module(mod), fn)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s" if not args.debug else "%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(_resolve(args.handler)(args) or 0)
    except NSCLError as e:
        if args.debug:
            raise
        print(f"nscl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
