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


def plot_answers_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """A run from answers alone, by epoch, with its lessons shaded: training loss and the share of questions whose
    most probable candidate answers right; held-out QA (given programs, own parses) and program exact match; and
    concept classification per attribute and relations (held-out, the paper's Table 2 columns)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("train/loss", "train/acc/qa_best_candidate"),
        (
            "validationextra/acc/qa",
            "validationextra/acc/qa_parsed",
            "validationextra/acc/program_exact",
            "validation/acc/qa_parsed",
        ),
        tuple(
            sorted(
                {k for r in records for k in r if "/acc/concept/" in k or k == "validationextra/acc/relation"}
            )
        ),
    )
    for ax, keys in zip(axes, panels):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in records if key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o" if key.startswith("validation") else None, label=key)
        ax.set_xlabel("epoch")
        # Lessons: alternate shading over the epochs of each.
        stages = [(r["epoch"], r.get("stage")) for r in records]
        for k, stage in enumerate(dict.fromkeys(s for _, s in stages)):
            eps = [e for e, s in stages if s == stage]
            if k % 2 == 0:
                ax.axvspan(min(eps) - 0.5, max(eps) + 0.5, color="0.92", zorder=0)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_title("training")
    axes[1].set_title("held-out: QA and parsing")
    axes[1].set_ylim(0, 1.02)
    axes[2].set_title("held-out: concepts")
    axes[2].set_ylim(0, 1.02)
    save_figure(fig, path)
