"""Training curves as PNG (matplotlib, written atomically)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    plt = _pyplot()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Training loss and QA accuracies of an NS-CL run, by epoch."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in records]
    ax1.plot(ep, [r["train/loss"] for r in records], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(ep, [r["train/acc/qa"] for r in records], label="train acc")
    for key in ("validation/acc/qa", "validationextra/acc/qa"):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    save_figure(fig, path)


def plot_parser_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Training loss / reward and validation accuracies of a parser or joint run, by epoch."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("train/parser_loss", ax1), ("train/loss", ax1), ("train/parser_reward", ax2)):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    for key in (
        "validation/acc/program_exact",
        "validation/acc/qa_parsed",
        "validation/acc/qa",
        "validationextra/acc/qa_parsed",
        "validationextra/acc/qa_guided",
    ):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=7)
    save_figure(fig, path)
