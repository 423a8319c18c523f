"""A fixed parser's scores of every question's candidates, computed once per lesson (a lesson in which perception
learns and the parser does not: ``parser.lessons`` rows ``[.., 1, 0]``).

While the parser does not learn, its probability of a candidate program given the question does not change
(eval mode: no dropout), so the EM step need not re-score the candidates at every step: it reads their
negative log-likelihoods from this table and pays only for perception and the candidates' execution. The table
is computed over the lesson's questions in their given order, in windows sorted by program length (a stable sort),
so a run resumed in the middle of the lesson computes the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..inference.examples import ParserExample
from ..models.parser import Parser
from ..models.parser_targets import Target, collate, program_nll, targets_of
from ..program import Program


@dataclass
class ParserScores:
    """``nll[(question, program)]``: the parser's negative log-likelihood of the program given the question's
    text; inf where the parser cannot express the program for that question."""

    nll: dict[tuple[str, Program], float] = field(default_factory=dict)

    @classmethod
    def compute(
        cls,
        parser: Parser,
        examples: Sequence[ParserExample],
        candidates: Callable[[ParserExample], Sequence[Program]],
        chunk: int = 256,
        window: int = 16,
    ) -> ParserScores:
        """Score each example's candidates (questions asked twice are scored once) without gradients, with the
        parser in eval mode. Targets are gathered ``window x chunk`` at a time and sorted by program length, so
        that each batch of ``chunk`` pads little."""
        parser.eval()
        scores = cls()
        items: list[tuple[tuple[str, Program], Target]] = []
        pending: set[tuple[str, Program]] = set()

        def flush() -> None:
            items.sort(key=lambda kv: (len(kv[1].slots), len(kv[1].ids)))
            for s in range(0, len(items), chunk):
                part = items[s : s + chunk]
                with torch.no_grad():
                    got = program_nll(parser, collate([t for _, t in part], parser.grammar.num_fixed))
                scores.nll.update(zip((k for k, _ in part), got.tolist()))
            items.clear()
            pending.clear()

        for e in examples:
            progs = [
                p
                for p in dict.fromkeys(candidates(e))
                if (e.question, p) not in scores.nll and (e.question, p) not in pending
            ]
            for p, item in zip(progs, targets_of(parser, e.question, progs)):
                if item is None:
                    scores.nll[(e.question, p)] = math.inf
                else:
                    items.append(((e.question, p), item))
                    pending.add((e.question, p))
            if len(items) >= window * chunk:
                flush()
        flush()
        return scores

    def __call__(self, question: str, program: Program) -> float:
        """The stored score; KeyError names the question for a candidate that was never scored."""
        try:
            return self.nll[(question, program)]
        except KeyError:
            raise KeyError(f"no parser score for {program.to_str()!r} given {question!r}") from None

    def __len__(self) -> int:
        return len(self.nll)
