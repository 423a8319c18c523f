"""Checkpoints: one atomic file holding weights, optimiser and schedule state, epoch, RNG, config, domain and
vocabulary, so that ``--evaluate --load`` and ``--resume`` need nothing else. Loads with
``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import NSCLError
from .io import atomic_write

FORMAT = "nscl-checkpoint-1"


class CheckpointError(NSCLError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(
    path: str | Path, require: Sequence[str] = ("model", "config", "domain")
) -> dict[str, Any]:
    """The state stored at ``path``; CheckpointError when it is missing, unreadable, not ours, or lacks one of
    the ``require`` keys."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(
            f"{p}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{p}: not an nscl checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})"
        )
    for key in require:
        if key not in state:
            raise CheckpointError(f"{p}: checkpoint lacks {key!r}")
    return state
