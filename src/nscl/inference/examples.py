"""Questions as the parser sees them: text, image, answer and, where annotated, the NS-CL program."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..data import Question
from ..domain import Domain
from ..errors import ProgramError
from ..program import Program, translate
from .dataset import train_images


@dataclass(frozen=True)
class ParserExample:
    """One question for the parser: text, image, answer, and the NS-CL program where annotated."""

    question: str
    image_index: int
    answer: str | None
    program: Program | None
    family: int | None = None
    index: int = 0  # position in questions.json

    @property
    def qtype(self) -> str | None:
        """Question type by the final op of the ground-truth program (the release's per-type naming)."""
        return self.program.final_op if self.program is not None else None


def examples_from_questions(questions: Sequence[Question], domain: Domain) -> list[ParserExample]:
    """Parser examples; raw programs NS-CL cannot express (``equal_object``) count as unannotated."""
    out = []
    for q in questions:
        prog = None
        if q.program is not None:
            try:
                prog = translate(q.program, domain)
            except ProgramError:
                prog = None
        out.append(ParserExample(q.question, q.image_index, q.answer, prog, q.family, q.index))
    return out


def split_by_image(
    examples: Sequence[ParserExample], image_indices: Sequence[int], fraction: float, seed: int
) -> tuple[list[ParserExample], list[ParserExample]]:
    """Train and dev examples, split by image with the trainer's ``--data-split`` (:func:`train_images`)."""
    keep = train_images(image_indices, fraction, seed)
    return [e for e in examples if e.image_index in keep], [e for e in examples if e.image_index not in keep]


def image_batches(
    examples: Sequence[ParserExample], batch_size: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Example indices grouped by image into batches of about ``batch_size`` questions (images in a seeded
    random order when ``rng`` is given, else in order of first appearance)."""
    by_img: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_img[e.image_index].append(i)
    groups = list(by_img.values())
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    out, cur = [], []
    for g in groups:
        cur += g
        if len(cur) >= batch_size:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out
