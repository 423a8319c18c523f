"""Supervised parser training: teacher forcing on annotated NS-CL programs (NSCL-REFERENCE section 7).

Cross-entropy over ops and pointer positions (``Parser.teacher_forcing_loss``); with few annotations, K programs
stratified over question families (:func:`stratified_subset`). Self-training fits pseudo-labels with the same
:func:`train_supervised`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..domain import Domain
from ..errors import NSCLError, ProgramError
from ..inference.examples import ParserExample
from ..language import normalize
from ..models.parser import Parser
from ..models.parser_targets import Target, collate, program_nll, target_of
from ..program import Program
from ..run_config import ParserTrainConfig
from ..vocab import SPECIALS as SPECIAL_WORDS
from ..vocab import UNK, Vocab

log = logging.getLogger(__name__)


def stratified_subset(examples: Sequence[ParserExample], k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` annotated examples spread evenly over question families (three per family for
    K = 270 and CLEVR's 90 families): families are visited round-robin, each in a seeded random order."""
    rng = np.random.default_rng([seed, 13])
    by_family: dict[Any, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if e.program is not None:
            by_family[e.family].append(i)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_family.items(), key=lambda kv: str(kv[0]))]
    chosen: list[int] = []
    while len(chosen) < k and any(queues):
        for qu in queues:
            if qu and len(chosen) < k:
                chosen.append(int(qu.pop()))
    return sorted(chosen)


def build_vocab(examples: Sequence[ParserExample]) -> Vocab:
    """The parser's vocabulary: every token of the questions as the parser reads them (normalised)."""
    return Vocab.build(normalize(e.question) for e in examples)


def build_targets(parser: Parser, examples: Sequence[ParserExample]) -> tuple[list[Target], list[int]]:
    """Teacher-forcing targets of every annotated example, and the indices of those it skipped (unknown
    words, programs the question cannot express)."""
    items, skipped = [], []
    for i, e in enumerate(examples):
        if e.program is None:
            skipped.append(i)
            continue
        try:
            items.append(target_of(parser, e.question, e.program))
        except ProgramError as err:
            log.debug("question %d (%s): not a parser target: %s", e.index, e.question, err)
            skipped.append(i)
    return items, skipped


def supervised_loss(parser: Parser, items: Sequence[Target], word_dropout: float = 0.0) -> Tensor:
    """Mean per-program negative log-likelihood of a batch of targets. ``word_dropout``: each ordinary word
    (not a lexicon class) is read as ``<UNK>`` with this probability, so that the parser copes with words it
    never saw (``parse_many(..., unknown="unk")``)."""
    batch = collate(items, parser.grammar.num_fixed)
    if word_dropout > 0:
        ids = batch["ids"]
        words = (ids >= len(SPECIAL_WORDS)) & (ids < len(parser.vocab))
        ids[words & (torch.rand(ids.shape) < word_dropout)] = parser.vocab.index[UNK]
    return program_nll(parser, batch).mean()


def end_epoch(
    rec: dict[str, Any],
    epoch: int,
    on_epoch: Callable[[int, dict[str, Any]], None] | None,
    history: list[dict[str, Any]],
    message: str,
) -> None:
    """The end of a parser epoch: ``on_epoch(epoch, rec)`` may add validation metrics to the record; one log
    line (``message`` and the record's accuracies); the record joins ``history``."""
    if on_epoch is not None:
        on_epoch(epoch, rec)
    log.info("%s%s", message, "".join(f", {k} {v:.4f}" for k, v in rec.items() if "/acc/" in k))
    history.append(rec)


def make_optimizer(
    params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


def train_supervised(
    parser: Parser,
    examples: Sequence[ParserExample],
    cfg: ParserTrainConfig,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Teacher forcing on the annotated ``examples`` for ``cfg.epochs`` epochs, or more to make at least
    ``cfg.min_steps`` steps; returns per-epoch records (``train/parser_loss``). ``on_epoch(epoch, record)``
    may add validation metrics to the record."""
    items, skipped = build_targets(parser, examples)
    if not items:
        raise NSCLError("no annotated question can be used to train the parser")
    if skipped:
        log.info("parser: %d of %d questions are not usable targets", len(skipped), len(examples))
    opt = make_optimizer(parser.parameters(), cfg.lr, cfg.weight_decay)
    rng = np.random.default_rng([seed, 17])
    history = []
    steps_per_epoch = max(1, math.ceil(len(items) / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch)) if cfg.epochs > 0 else 0
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.1
        )
        if epochs > 0
        else None
    )
    for epoch in range(1, epochs + 1):
        parser.train()
        order = rng.permutation(len(items))
        tot, n = 0.0, 0
        t0 = time.time()
        for s in range(0, len(order), cfg.batch_size):
            batch = [items[i] for i in order[s : s + cfg.batch_size]]
            loss = supervised_loss(parser, batch, cfg.word_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parser.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            tot += float(loss.detach()) * len(batch)
            n += len(batch)
        rec = {"epoch": epoch, "train/parser_loss": tot / max(n, 1), "seconds": time.time() - t0}
        end_epoch(rec, epoch, on_epoch, history, f"parser epoch {epoch}: loss {rec['train/parser_loss']:.4f}")
    parser.eval()
    return history


def train_parser_on_pairs(
    domain: Domain,
    questions: Sequence[str],
    programs: Sequence[Program],
    cfg: ParserTrainConfig | None = None,
    seed: int = 0,
    extra_questions: Sequence[str] = (),
) -> Parser:
    """A new parser trained supervised on (question, program) pairs; its vocabulary also covers
    ``extra_questions`` (e.g. the unannotated questions REINFORCE will see)."""
    cfg = cfg or ParserTrainConfig()
    examples = [ParserExample(q, 0, None, p) for q, p in zip(questions, programs)]
    torch.manual_seed(seed)
    parser = Parser(domain, Vocab.build(normalize(q) for q in [*questions, *extra_questions]), cfg.model)
    train_supervised(parser, examples, cfg, seed)
    return parser
