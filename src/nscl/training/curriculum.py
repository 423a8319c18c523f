"""The release's curriculum (NSCL-REFERENCE section 7) as a pure schedule: epoch -> (max objects, max length).

The table is given for a 100-epoch run; a run of E epochs maps its epoch e to the reference epoch
ceil(e * 100 / E). Questions are eligible when their scene has at most S objects and their raw CLEVR program at
most L nodes; longer programs than 25 are never trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# (last reference epoch of the stage, max objects S, max raw program length L)
RELEASE_TABLE: tuple[tuple[int, int, int], ...] = (
    (5, 3, 4),
    (10, 3, 6),
    (15, 3, 8),
    (25, 4, 8),
    (35, 4, 12),
    (45, 5, 12),
    (55, 6, 12),
    (65, 7, 16),
    (75, 8, 20),
    (90, 9, 22),
    (100, 10, 25),
)
MAX_TRAIN_LENGTH = 25


@dataclass(frozen=True)
class Stage:
    index: int
    max_objects: int
    max_length: int


def stage_at(
    epoch: int,
    total_epochs: int,
    table: tuple[tuple[int, int, int], ...] = RELEASE_TABLE,
    enabled: bool = True,
) -> Stage:
    """The curriculum stage of 1-based ``epoch`` in a run of ``total_epochs`` epochs."""
    if not enabled:
        return Stage(len(table) - 1, 10**6, MAX_TRAIN_LENGTH)
    ref_total = table[-1][0]
    ref = math.ceil(epoch * ref_total / max(total_epochs, 1))
    for i, (last, s, l) in enumerate(table):
        if ref <= last:
            return Stage(i, s, l)
    _, s, l = table[-1]
    return Stage(len(table) - 1, s, l)
