"""Self-training on answers: every answered question is labelled with the parser's most probable program that
earns the REINFORCE reward (:func:`pseudo_label`), and the parser fits those labels (:func:`self_train`), as
maximum marginal likelihood with beam search does. A later round relabels with the sharper parser."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..inference.examples import ParserExample
from ..inference.execute import answer_targets, run_chunks
from ..inference.guided import WordingCheck, beam_fallback
from ..inference.scenes import SceneSource
from ..models.executor import Compiler
from ..models.parser import Parser
from ..program import Program
from ..run_config import ParserTrainConfig
from .parser_supervised import train_supervised
from .reinforce import rewarded

log = logging.getLogger(__name__)


@dataclass
class PseudoLabels:
    """Programs found for unannotated questions from their answers: ``examples`` carry the found program;
    ``greedy`` of them came from the greedy parse, ``beam`` from a beam candidate; ``missed`` questions had
    no rewarded candidate."""

    examples: list[ParserExample]
    greedy: int
    beam: int
    missed: int


def pseudo_label(
    parser: Parser,
    examples: Sequence[ParserExample],
    scenes: SceneSource,
    beam_size: int = 8,
    min_referent_p: float = 0.05,
    batch_size: int = 256,
    wording: bool = True,
) -> PseudoLabels:
    """Label each answered question with the parser's most probable program that earns the REINFORCE
    reward (:func:`rewarded`: the right answer, unambiguous references): the greedy parse, else the first
    such candidate of a beam of ``beam_size``. With ``wording``, a program must also fit the question's wording
    (:class:`~nscl.inference.guided.WordingCheck`). Supervised training on these labels (``parser.self_train_epochs``)
    turns the answers into sharp targets, as maximum marginal likelihood with beam search does."""
    domain = parser.domain
    compiler = Compiler(domain)
    usable = [e for e in examples if e.answer is not None]
    fits = WordingCheck(parser.lexicon) if wording else None

    def reward(progs: Sequence[Program | None], exs: Sequence[ParserExample]) -> list[bool]:
        ok = [False] * len(progs)
        images = [e.image_index for e in exs]
        for idx, out, scene in run_chunks(progs, images, scenes, domain, batch_size, compiler):
            tgt = answer_targets([exs[i].answer for i in idx], domain, scene.mask.device)  # type: ignore[misc]
            for i, g in zip(idx, rewarded(out, tgt, min_referent_p).cpu().tolist()):
                ok[i] = bool(g) and (fits is None or fits(exs[i].question, progs[i]))
        return ok

    # image-grouped order, so each scene batch covers few images
    order = sorted(range(len(usable)), key=lambda i: usable[i].image_index)
    usable = [usable[i] for i in order]
    programs, _ = parser.parse_many([e.question for e in usable], 1, "error", batch_size)
    ok = reward(programs, usable)
    labels: dict[int, Program] = {i: p for i, (p, g) in enumerate(zip(programs, ok)) if g and p is not None}
    n_greedy = len(labels)
    retry = [i for i in range(len(usable)) if i not in labels]
    chosen = beam_fallback(
        parser,
        [e.question for e in usable],
        retry,
        beam_size,
        lambda idx, cands: reward(cands, [usable[i] for i in idx]),
    )
    labels.update({i: p for i, (_, p) in chosen.items()})
    out = [replace(usable[i], program=p) for i, p in sorted(labels.items())]
    return PseudoLabels(out, n_greedy, len(labels) - n_greedy, len(usable) - len(labels))


def self_train(
    parser: Parser,
    examples: Sequence[ParserExample],
    scenes: SceneSource,
    annotated: Sequence[ParserExample],
    cfg: ParserTrainConfig,
    seed: int = 0,
    on_round: Callable[[int, PseudoLabels], None] | None = None,
    on_epoch: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> None:
    """``cfg.self_train_rounds`` rounds: pseudo-label ``examples`` (beam ``max(cfg.guided_beam, 1)``, the reference
    bar ``cfg.min_referent_p``), then fit the labels plus the ``annotated`` programs for
    ``cfg.self_train_epochs`` epochs at ``cfg.self_train_lr`` (seed ``seed + round``). ``on_round(round,
    labels)`` and ``on_epoch(round, epoch, record)`` report."""
    st_cfg = replace(cfg, epochs=cfg.self_train_epochs, min_steps=0, lr=cfg.self_train_lr)
    for rnd in range(1, cfg.self_train_rounds + 1):
        t0 = time.time()
        pl = pseudo_label(
            parser, examples, scenes, max(cfg.guided_beam, 1), cfg.min_referent_p, wording=cfg.wording_reward
        )
        log.info(
            "parser self-training round %d: %d programs from greedy parses, %d from the beam, %d questions "
            "without a rewarded program (%.0fs)",
            rnd,
            pl.greedy,
            pl.beam,
            pl.missed,
            time.time() - t0,
        )
        if on_round is not None:
            on_round(rnd, pl)

        def epoch_done(epoch: int, rec: dict[str, Any], rnd: int = rnd) -> None:
            if on_epoch is not None:
                on_epoch(rnd, epoch, rec)

        train_supervised(parser, pl.examples + list(annotated), st_cfg, seed + rnd, epoch_done)
