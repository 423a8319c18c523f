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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nscl", description="Neuro-Symbolic Concept Learner on modern PyTorch.")
    p.add_argument("--version", action="version", version=f"nscl {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, handler) in COMMANDS.items():
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
