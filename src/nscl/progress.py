"""Progress bars for a person at a terminal only: a log file or a pipe gets no carriage-return frames (the run
logs write one line per epoch instead)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable | None = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal; otherwise a silent one."""
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when its stream (stderr) is not a TTY
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
