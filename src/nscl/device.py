"""Picking the torch device: the CLI's ``--device`` flag, never hard-coded."""

from __future__ import annotations

import torch

from .errors import NSCLError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NSCLError(f"--device {name!r}: not a device (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NSCLError(f"--device {name}: CUDA is not available on this machine")
    return dev
