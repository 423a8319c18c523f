"""REINFORCE on answers with a frozen perception (NSCL-REFERENCE section 7): sampled programs run on the batched
executor; reward 1 for a right (quantised) answer whose references are unambiguous, minus a leave-one-out or
moving-average baseline; or the release's variant (reward 10 - QA loss, weights softmax-normalised over each
question's sampled candidates)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import NSCLError
from ..inference.examples import ParserExample, image_batches
from ..inference.execute import answer_targets, run_programs
from ..inference.guided import WordingCheck
from ..inference.scenes import SceneSource
from ..losses import Targets, qa_loss
from ..models.executor import Compiler, Output
from ..models.parser import Parser
from ..run_config import ParserTrainConfig
from .parser_supervised import build_targets, end_epoch, make_optimizer, supervised_loss

log = logging.getLogger(__name__)


@dataclass
class MovingAverage:
    momentum: float = 0.9
    value: float | None = None

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.momentum * self.value + (1 - self.momentum) * x
        return self.value


def policy_loss(
    dec_log_prob: Tensor,
    dec_entropy: Tensor,
    correct: Tensor,
    valid: Tensor,
    qa: Tensor | None,
    samples: int,
    cfg: ParserTrainConfig,
    baseline: MovingAverage,
) -> tuple[Tensor, float]:
    """REINFORCE loss over B x samples sampled programs (question-major rows) and the mean reward.

    ``answer``: reward 1 for a right answer, advantage against a moving-average baseline or, with
    ``cfg.baseline == "loo"``, the mean reward of the same question's other samples. ``release``: the
    release's variant, reward 10 - QA loss (``qa``, soft execution), weights softmax-normalised over each
    question's candidates."""
    reward = correct.float() * valid
    mean_r = float(reward.mean()) if reward.numel() else 0.0
    if cfg.reward == "answer" and cfg.baseline == "loo" and samples > 1:
        r = reward.view(-1, samples)  # (B, S)
        b = (r.sum(1, keepdim=True) - r) / (samples - 1)  # (B, S): mean of the other samples
        loss = -((r - b).flatten() * dec_log_prob * valid).mean()
    elif cfg.reward == "answer":
        b = baseline.value if baseline.value is not None else mean_r
        loss = -((reward - b) * dec_log_prob * valid).mean()
        baseline.update(mean_r)
    elif cfg.reward == "release":
        assert qa is not None
        r = (10.0 - qa.detach()).masked_fill(~valid, -1e4).view(-1, samples)  # (B, S)
        w = torch.softmax(r, dim=-1).flatten()
        loss = -(w * dec_log_prob * valid).sum() / max(1, r.shape[0])
    else:
        raise NSCLError(f"unknown parser reward {cfg.reward!r} (answer, release)")
    if cfg.entropy_weight:
        loss = loss - cfg.entropy_weight * dec_entropy.mean()
    return loss, mean_r


def rewarded(out: Output, tgt: Targets, min_referent_p: float = 0.0) -> Tensor:
    """(Q,) bool: the test-mode answer is right and, with ``min_referent_p`` > 0, the program's references
    are unambiguous with at least that probability (``Output.referent_logp``): a program that reaches the
    right yes/no through the wrong objects earns nothing."""
    _, correct, _ = qa_loss(out, tgt)
    if min_referent_p > 0 and out.referent_logp is not None:
        correct = correct & (out.referent_logp >= math.log(min_referent_p))
    return correct


def train_reinforce(
    parser: Parser,
    examples: Sequence[ParserExample],
    scenes: SceneSource,
    cfg: ParserTrainConfig,
    annotated: Sequence[ParserExample] = (),
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """REINFORCE on the answers of ``examples`` with a frozen perception ``scenes``; each step also fits a
    batch of the ``annotated`` programs (weight ``cfg.supervised_weight``) so that the K annotations keep
    anchoring the parser."""
    domain = parser.domain
    usable = [e for e in examples if e.answer is not None]
    items, _ = build_targets(parser, annotated) if annotated and cfg.supervised_weight > 0 else ([], [])
    opt = make_optimizer(parser.parameters(), cfg.reinforce_lr, cfg.weight_decay)
    baseline = MovingAverage(cfg.baseline_momentum)
    compiler = Compiler(domain)
    fits = WordingCheck(parser.lexicon) if cfg.wording_reward else None
    rng = np.random.default_rng([seed, 19])
    history = []
    for epoch in range(1, cfg.reinforce_epochs + 1):
        parser.eval()  # no dropout: the sampled policy is the one being scored
        t0 = time.time()
        tot_r, tot_n = 0.0, 0
        for idx in image_batches(usable, cfg.reinforce_batch_size, rng):
            batch = [usable[i] for i in idx]
            imgs = sorted({e.image_index for e in batch})
            row_of = {im: r for r, im in enumerate(imgs)}
            with torch.no_grad():
                scene = scenes(imgs)
            dec = parser.sample([e.question for e in batch], cfg.samples)
            rows = [row_of[e.image_index] for e in batch for _ in range(cfg.samples)]
            tgt = answer_targets(
                [e.answer for e in batch for _ in range(cfg.samples)],
                domain,  # type: ignore[misc]
                scene.mask.device,
            )
            with torch.no_grad():
                out, valid = run_programs(
                    dec.programs, rows, scene, domain, True, compiler, referents=cfg.min_referent_p > 0
                )
                correct = rewarded(out, tgt, cfg.min_referent_p)
                if fits is not None:
                    questions = [e.question for e in batch for _ in range(cfg.samples)]
                    fit = [fits(q, p) for q, p in zip(questions, dec.programs)]
                    correct = correct & torch.tensor(fit, dtype=torch.bool, device=correct.device)
                qa = None
                if cfg.reward == "release":
                    out_soft, _ = run_programs(dec.programs, rows, scene, domain, False, compiler)
                    qa, _, _ = qa_loss(out_soft, tgt)
            device = dec.log_prob.device
            loss, mean_r = policy_loss(
                dec.log_prob,
                dec.entropy,
                correct.to(device),
                valid.to(device),
                None if qa is None else qa.to(device),
                cfg.samples,
                cfg,
                baseline,
            )
            if items:
                pick = rng.choice(len(items), size=min(cfg.batch_size, len(items)), replace=False)
                parser.train()
                loss = loss + cfg.supervised_weight * supervised_loss(
                    parser, [items[i] for i in pick], cfg.word_dropout
                )
                parser.eval()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parser.parameters(), cfg.grad_clip)
            opt.step()
            tot_r += mean_r * len(batch)
            tot_n += len(batch)
        rec = {"epoch": epoch, "train/parser_reward": tot_r / max(tot_n, 1), "seconds": time.time() - t0}
        msg = f"parser REINFORCE epoch {epoch}: mean reward {rec['train/parser_reward']:.4f}"
        end_epoch(rec, epoch, on_epoch, history, msg)
    parser.eval()
    return history
