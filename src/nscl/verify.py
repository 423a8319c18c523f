"""Check a dataset with the symbolic executor: does every stored answer follow from its program and scene?"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .data import Question, Scene
from .domain import Domain
from .errors import ProgramError
from .program import clevr_answer_op, translate
from .symbolic import Invalid, SceneFacts, execute_clevr, execute_nscl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mismatch:
    index: int
    qtype: str
    expected: str | None
    raw: str  # answer of the raw CLEVR program, or the reason it has none
    nscl: str  # answer of the NS-CL translation, or the reason it has none


@dataclass
class ExecutionReport:
    total: Counter = field(default_factory=Counter)  # question type -> number of questions checked
    raw_ok: Counter = field(default_factory=Counter)
    nscl_ok: Counter = field(default_factory=Counter)
    skipped: int = 0  # questions without program or answer
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def n(self) -> int:
        return sum(self.total.values())

    def accuracy(self, which: str = "raw", qtype: str | None = None) -> float:
        ok = self.raw_ok if which == "raw" else self.nscl_ok
        if qtype is None:
            return sum(ok.values()) / max(self.n, 1)
        return ok[qtype] / max(self.total[qtype], 1)

    def format(self, max_mismatches: int = 20) -> str:
        lines = [f"{'question type':<24}{'questions':>10}{'raw CLEVR':>12}{'NS-CL':>12}"]
        for t in sorted(self.total):
            lines.append(
                f"{t:<24}{self.total[t]:>10}{self.accuracy('raw', t):>12.6f}{self.accuracy('nscl', t):>12.6f}"
            )
        lines.append(
            f"{'overall':<24}{self.n:>10}{self.accuracy('raw'):>12.6f}{self.accuracy('nscl'):>12.6f}"
        )
        if self.skipped:
            lines.append(f"skipped {self.skipped} question(s) without program or answer")
        if self.mismatches:
            lines.append(f"{len(self.mismatches)} mismatch(es):")
            for m in self.mismatches[:max_mismatches]:
                lines.append(
                    f"  question {m.index} ({m.qtype}): stored {m.expected!r}, raw {m.raw!r}, NS-CL {m.nscl!r}"
                )
            if len(self.mismatches) > max_mismatches:
                lines.append(f"  ... and {len(self.mismatches) - max_mismatches} more")
        return "\n".join(lines)


def _answer(fn, *args) -> str:  # noqa: ANN001 - internal helper
    try:
        return fn(*args)
    except Invalid as e:
        return f"<invalid: {e}>"
    except ProgramError as e:
        return f"<untranslatable: {e}>"


def _run_translated(raw, facts: SceneFacts, domain: Domain) -> str:  # noqa: ANN001
    return execute_nscl(translate(raw, domain), facts, domain)


def verify_questions(
    questions: Sequence[Question], scenes: dict[int, Scene], domain: Domain
) -> ExecutionReport:
    """Execute every question's raw program and its NS-CL translation on the annotated scene."""
    rep = ExecutionReport()
    facts_cache: dict[int, SceneFacts] = {}
    for q in questions:
        if q.program is None or q.answer is None:
            rep.skipped += 1
            continue
        facts = facts_cache.get(q.image_index)
        if facts is None:
            facts = facts_cache[q.image_index] = SceneFacts.of(scenes[q.image_index])
        qtype = clevr_answer_op(q.program)
        raw = _answer(execute_clevr, q.program, facts, domain)
        nscl = _answer(_run_translated, q.program, facts, domain)
        rep.total[qtype] += 1
        rep.raw_ok[qtype] += raw == q.answer
        rep.nscl_ok[qtype] += nscl == q.answer
        if raw != q.answer or nscl != q.answer:
            rep.mismatches.append(Mismatch(q.index, qtype, q.answer, raw, nscl))
    return rep
