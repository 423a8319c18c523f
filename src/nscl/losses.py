"""QA loss and answer decisions (NSCL-REFERENCE section 5).

yes/no: binary cross-entropy on the logit; counts: |predicted - true|; attribute words: cross-entropy over the
attribute's concepts. A program whose answer kind differs from the question's gets loss 10 and is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models.executor import AnswerKind, Output

MISMATCH_LOSS = 10.0


@dataclass
class Targets:
    kind: Tensor  # (Q,) AnswerKind: BOOL, INTEGER, or ATTRIBUTE + a for attribute a
    value: Tensor  # (Q,) 1/0, the count, or the concept index within the attribute


def qa_loss(out: Output, tgt: Targets) -> tuple[Tensor, Tensor, Tensor]:
    """Per-question loss (Q,), correctness (Q,) bool, and the predicted value (Q,) (argmax / sign / rounded
    count; -1 where the kind is wrong). Use ``quantize=True`` outputs for test-time correctness."""
    Q = tgt.kind.shape[0]
    device = tgt.kind.device
    loss = torch.full((Q,), MISMATCH_LOSS, device=device)
    pred = torch.full((Q,), -1, dtype=torch.long, device=device)
    ok = out.kind == tgt.kind
    b = ok & (tgt.kind == AnswerKind.BOOL)
    if b.any():
        logit = out.scalar[b]
        loss = loss.index_put(
            (b.nonzero(as_tuple=True)[0],),
            F.binary_cross_entropy_with_logits(logit, tgt.value[b].to(logit.dtype), reduction="none"),
        )
        pred[b] = (logit > 0).long()
    c = ok & (tgt.kind == AnswerKind.INTEGER)
    if c.any():
        n = out.scalar[c]
        loss = loss.index_put((c.nonzero(as_tuple=True)[0],), (n - tgt.value[c].to(n.dtype)).abs())
        pred[c] = n.round().long()
    for k, (idx, logits) in out.query.items():
        sel = tgt.kind[idx] == k
        if sel.any():
            i = idx[sel]
            loss = loss.index_put((i,), F.cross_entropy(logits[sel], tgt.value[i], reduction="none"))
            pred[i] = logits[sel].argmax(-1)
    correct = ok & (pred == tgt.value)
    return loss, correct, pred
