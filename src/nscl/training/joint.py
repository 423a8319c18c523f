"""Joint fine-tuning (``--training-target all``): one step trains perception and concepts with the QA loss of the
parser's greedy programs, and the parser with REINFORCE on sampled programs rewarded by the current perception."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..domain import Domain
from ..inference.dataset import QADataset
from ..inference.examples import ParserExample
from ..inference.execute import answer_targets, run_programs
from ..losses import Targets, qa_loss
from ..models.executor import Compiler
from ..models.nscl import NSCL
from ..models.parser import Parser
from ..run_config import ParserTrainConfig
from .reinforce import MovingAverage, policy_loss


@dataclass
class JointBatch:
    """Images of a batch and their questions (``rows``: each question's image in ``images``)."""

    images: Tensor  # (B, 3, H, W)
    boxes: Tensor  # (B, N, 4)
    mask: Tensor  # (B, N)
    questions: list[str]
    rows: list[int]
    targets: Targets


def joint_step(
    model: NSCL,
    parser: Parser,
    batch: JointBatch,
    opt: torch.optim.Optimizer,
    cfg: ParserTrainConfig,
    baseline: MovingAverage,
    compiler: Compiler | None = None,
) -> dict[str, float]:
    """One combined step: QA loss through the executor on the parser's greedy programs trains perception and
    concepts; REINFORCE on sampled programs, rewarded by the current perception's quantised answers, trains
    the parser. One optimiser holds both parameter sets."""
    domain = parser.domain
    compiler = compiler or Compiler(domain)
    model.train()
    parser.eval()  # dropout off: greedy and sampled programs come from the policy being trained
    device = batch.images.device
    scene = model.perceive(batch.images, batch.boxes, batch.mask)
    enc_q, errs = parser.encode_questions(batch.questions, "error")
    with torch.no_grad():
        greedy = parser.decode(enc_q, "greedy", strict=False, errors=errs)  # its best executable program
    out, valid = run_programs(greedy.programs, batch.rows, scene, domain, False, compiler)
    loss_qa, correct_g, _ = qa_loss(out, batch.targets)
    loss_qa = (loss_qa * valid).sum() / valid.sum().clamp(min=1)
    S = cfg.samples
    dec = parser.decode(enc_q.repeat(S), "sample", errors=[e for e in errs for _ in range(S)])
    rows = [r for r in batch.rows for _ in range(S)]
    tgt = Targets(batch.targets.kind.repeat_interleave(S), batch.targets.value.repeat_interleave(S))
    detached = scene.detach()
    with torch.no_grad():
        out_s, valid_s = run_programs(dec.programs, rows, detached, domain, True, compiler)
        _, correct_s, _ = qa_loss(out_s, tgt)
        qa = None
        if cfg.reward == "release":
            out_soft, _ = run_programs(dec.programs, rows, detached, domain, False, compiler)
            qa, _, _ = qa_loss(out_soft, tgt)
    loss_pg, mean_r = policy_loss(
        dec.log_prob, dec.entropy, correct_s.to(device), valid_s.to(device), qa, S, cfg, baseline
    )
    loss = loss_qa + loss_pg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return {
        "loss": float(loss_qa.detach()),
        "acc": float((correct_g & valid).float().mean()),
        "reward": mean_r,
        "n": len(batch.questions),
    }


def make_joint_batch(
    batch: Sequence[ParserExample], ds: QADataset, domain: Domain, device: torch.device | str
) -> JointBatch:
    """Images, boxes and answer targets of a batch of examples from a QADataset's decoded images."""
    imgs = sorted({e.image_index for e in batch})
    row_of = {im: r for r, im in enumerate(imgs)}
    images, boxes, mask = ds.scene_batch(np.array([ds.image_of_index[i] for i in imgs]))
    return JointBatch(
        images.to(device),
        boxes.to(device),
        mask.to(device),
        [e.question for e in batch],
        [row_of[e.image_index] for e in batch],
        answer_targets([e.answer for e in batch], domain, device),  # type: ignore[misc]
    )
