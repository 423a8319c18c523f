"""Checkpoints: one atomic file holding weights, optimiser and schedule state, epoch, RNG, config, domain and
vocabulary, so that ``--evaluate --load`` and ``--resume`` need nothing else. Loads with
``torch.load(weights_only=True)``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import NSCLError
from ..io import atomic_write

FORMAT = "nscl-checkpoint-1"


class CheckpointError(NSCLError):
    pass


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    data = buf.getvalue()
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
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
    for key in ("model", "config", "domain"):
        if key not in state:
            raise CheckpointError(f"{p}: checkpoint lacks {key!r}")
    return state
