"""One loader for checkpoints: the NSCL model, its settings and domain, and the parser when it holds one.

A checkpoint (``nscl/checkpoint.py``) stores the run's :class:`TrainConfig`, the domain, the model's weights and,
after ``--training-target parser|all``, a ``parser`` entry (``models/parser.py: parser_state``). A parser-only
checkpoint (a parser trained without ``--load``) has no ``model``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import ConfigError, from_dict
from ..domain import Domain
from ..models.nscl import NSCL
from ..models.parser import Parser, parser_from_state
from ..run_config import TrainConfig


@dataclass
class Loaded:
    """What a checkpoint holds, built: ``model`` (None when not asked for), the run's settings, the domain, the
    parser (None when it has none) and the raw state (for training that continues from it)."""

    config: TrainConfig
    domain: Domain
    model: NSCL | None
    parser: Parser | None
    state: dict[str, Any] = field(repr=False)
    source: str = "checkpoint"


def config_from_state(state: Mapping[str, Any], source: str) -> TrainConfig:
    try:
        return from_dict(TrainConfig, state.get("config") or {})
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored config is not valid here ({e})") from None


def model_from_state(
    state: Mapping[str, Any], source: str = "checkpoint"
) -> tuple[NSCL, TrainConfig, Domain]:
    """The NSCL model of a checkpoint state, with the run's settings and domain."""
    cfg = config_from_state(state, source)
    domain = Domain.from_dict(state["domain"], source)
    model = NSCL(domain, cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{source}: weights do not match the model in its config ({str(e).splitlines()[0]})"
        ) from None
    return model, cfg, domain


def load(
    path: str | Path,
    device: torch.device | str = "cpu",
    need_model: bool = True,
    need_parser: bool = False,
) -> Loaded:
    """Read and build a checkpoint, in eval mode on ``device``. ``need_model``: build the NSCL model (a
    checkpoint without one raises CheckpointError); otherwise it is not built (``nscl parse`` needs only the
    parser). ``need_parser``: a checkpoint without a parser raises CheckpointError saying how to make one."""
    source = str(path)
    state = load_checkpoint(path, require=())
    if state.get("kind") == "detector":
        raise CheckpointError(
            f"{source}: a detector checkpoint, not an NSCL model (use it with nscl detect or --detector)"
        )
    if "domain" not in state:
        raise CheckpointError(f"{source}: checkpoint lacks 'domain'")
    if need_model and state.get("model") is None:
        raise CheckpointError(f"{source}: the checkpoint holds no trained NSCL model")
    if need_parser and not state.get("parser"):
        raise CheckpointError(
            f"{source}: the checkpoint holds no parser (train one with "
            "nscl train --training-target parser --load NSCL_CHECKPOINT)"
        )
    model = None
    if need_model:
        model, cfg, domain = model_from_state(state, source)
        model.to(device).eval()
    else:
        cfg = config_from_state(state, source)
        domain = Domain.from_dict(state["domain"], source)
    parser = parser_from_state(state["parser"], domain, source).to(device) if state.get("parser") else None
    return Loaded(cfg, domain, model, parser, state, source)


def load_parser(path: str | Path, device: torch.device | str = "cpu") -> Parser:
    """The parser stored in a checkpoint (an NSCL checkpoint with a parser, or a parser-only one)."""
    return load(path, device, need_model=False, need_parser=True).parser  # type: ignore[return-value]
