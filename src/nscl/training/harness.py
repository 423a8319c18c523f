"""The run harness every fit uses (``fit_nscl``, ``fit_parser``, ``fit_joint``): a run directory with its log,
``metrics.jsonl``, curves and checkpoints, seeding, and the result a fit returns.

A run directory holds ``train.log`` (INFO and above, whatever the console shows: one line per epoch),
``metrics.jsonl`` (one JSON record per epoch), ``curves.png`` and ``checkpoint_last.pth`` (plus
``checkpoint_epoch_N.pth`` where a fit keeps them).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ..checkpoint import save_checkpoint
from ..io import atomic_write_text
from ..models.nscl import NSCL
from ..run_config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """What a run directory holds."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def checkpoint(self, epoch: int | None = None) -> Path:
        return self.root / ("checkpoint_last.pth" if epoch is None else f"checkpoint_epoch_{epoch}.pth")


@dataclass
class FitResult:
    metrics: dict[str, float]
    checkpoint: Path
    run: RunFiles
    seconds: float
    model: NSCL | None = field(repr=False)


class Run:
    """A training run in a directory; use as a context manager (``with Run(dir, cfg, plot) as run:``).

    On entry: the directory exists, the ``nscl`` logger also writes INFO to ``train.log``, torch is seeded with
    ``cfg.seed`` and uses ``cfg.threads`` CPU threads (when set). ``plot(records, path)`` draws the curves.
    ``write=False`` (the ranks other than 0 of a distributed run): the same run, but nothing touches the disk."""

    def __init__(
        self,
        run_dir: str | Path,
        cfg: TrainConfig,
        plot: Callable[[list[dict], Path], None] | None = None,
        write: bool = True,
    ) -> None:
        self.files = RunFiles(Path(run_dir))
        self.writes = write
        self.cfg = cfg
        self._plot = plot
        self.records: list[dict[str, Any]] = []
        self.t0 = time.time()
        self._handler: logging.Handler | None = None
        self._old_level = logging.NOTSET

    def __enter__(self) -> Run:
        torch.manual_seed(self.cfg.seed)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.t0 = time.time()
        if not self.writes:
            return self
        self.files.root.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.files.log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handler.setLevel(logging.INFO)
        nscl_log = logging.getLogger("nscl")
        self._old_level = nscl_log.level
        if nscl_log.getEffectiveLevel() > logging.INFO:  # the run log always gets INFO
            nscl_log.setLevel(logging.INFO)
        nscl_log.addHandler(handler)
        self._handler = handler
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        nscl_log = logging.getLogger("nscl")
        if self._handler is not None:
            nscl_log.removeHandler(self._handler)
            self._handler.close()
            nscl_log.setLevel(self._old_level)

    @property
    def seconds(self) -> float:
        return time.time() - self.t0

    def write(self, rec: dict[str, Any]) -> None:
        """Keep an epoch's record and append it to ``metrics.jsonl``."""
        self.records.append(rec)
        if not self.writes:
            return
        with self.files.metrics.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    def resume_records(self, start_epoch: int) -> None:
        """Resuming at ``start_epoch``: keep the records of earlier epochs, in memory and on disk."""
        if not self.files.metrics.exists():
            return
        lines = self.files.metrics.read_text().splitlines()
        self.records = [r for r in (json.loads(x) for x in lines if x.strip()) if r["epoch"] < start_epoch]
        if self.writes:
            atomic_write_text(self.files.metrics, "".join(json.dumps(r) + "\n" for r in self.records))

    def plot(self) -> None:
        if self._plot is not None and self.records and self.writes:
            self._plot(self.records, self.files.curves)

    def save(self, state: dict[str, Any], epoch: int | None = None) -> Path:
        """Write a checkpoint atomically: ``checkpoint_last.pth``, or ``checkpoint_epoch_N.pth`` for an epoch."""
        path = self.files.checkpoint(epoch)
        if self.writes:
            save_checkpoint(path, state)
        return path

    def result(self, metrics: dict[str, float], model: NSCL | None) -> FitResult:
        return FitResult(metrics, self.files.checkpoint(), self.files, self.seconds, model)
