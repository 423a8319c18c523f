"""Teacher-forcing targets of (question, program) pairs for the parser, batched: what supervised training fits
and what a parse's probability is computed from.

Dimension key: B pairs, T question tokens (padded), L decoder steps (padded), F fixed actions (``Grammar``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ProgramError
from ..program import Program
from .parser import Parser


@dataclass
class Target:
    """One pair: encoder ids of the question, and per decoder step the slot, the allowed actions and the target
    actions (``Grammar.target``)."""

    ids: list[int]
    slots: np.ndarray  # (L,)
    masks: np.ndarray  # (L, F + T)
    targets: np.ndarray  # (L, F + T)


def target_of(parser: Parser, question: str, program: Program, unknown: str = "unk") -> Target:
    """The target of ``program`` read from ``question``; raises ProgramError when the question cannot express
    it (a concept it does not mention, too long). Unknown words are read as ``<UNK>``."""
    enc, _ = parser.encode_questions([question], unknown)
    q = enc.info[0]
    slots, masks, targets = parser.grammar.target(program, q, parser.cfg.max_length)
    return Target(enc.ids[0, : len(q)].tolist(), slots, masks, targets)


def targets_of(
    parser: Parser, question: str, programs: Sequence[Program], unknown: str = "unk"
) -> list[Target | None]:
    """:func:`target_of` for several programs of one question (encoded once); None where the question cannot
    express a program."""
    enc, _ = parser.encode_questions([question], unknown)
    q = enc.info[0]
    ids = enc.ids[0, : len(q)].tolist()
    out: list[Target | None] = []
    for program in programs:
        try:
            slots, masks, targets = parser.grammar.target(program, q, parser.cfg.max_length)
        except ProgramError:
            out.append(None)
            continue
        out.append(Target(ids, slots, masks, targets))
    return out


def collate(items: Sequence[Target], F_: int) -> dict[str, Tensor]:
    """Padded tensors: ids (B, T), lengths (B,), slots (B, L), masks and targets (B, L, F + T), steps (B,)."""
    B = len(items)
    T = max(len(it.ids) for it in items)
    L = max(len(it.slots) for it in items)
    ids = torch.zeros(B, T, dtype=torch.long)
    slots = torch.zeros(B, L, dtype=torch.long)
    masks = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    targets = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    for b, it in enumerate(items):
        t, l = len(it.ids), len(it.slots)
        ids[b, :t] = torch.tensor(it.ids)
        slots[b, :l] = torch.from_numpy(it.slots)
        masks[b, :l, : F_ + t] = torch.from_numpy(it.masks)
        targets[b, :l, : F_ + t] = torch.from_numpy(it.targets)
    return {
        "ids": ids,
        "lengths": torch.tensor([len(it.ids) for it in items]),
        "slots": slots,
        "masks": masks,
        "targets": targets,
        "steps": torch.tensor([len(it.slots) for it in items]),
    }


def program_nll(parser: Parser, batch: dict[str, Tensor]) -> Tensor:
    """Negative log-likelihood (Tensor[B]) of a collated batch of targets under ``parser``."""
    b = {k: v.to(parser.embed.weight.device) for k, v in batch.items()}
    return parser.teacher_forcing_loss(
        b["ids"], b["lengths"], b["slots"], b["masks"], b["targets"], b["steps"]
    )
