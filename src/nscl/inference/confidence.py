"""How sure the parser is of a reading: the probability of a program given its question, under the parser's
own model (teacher forcing through ``models/parser_targets.py``). ``nscl ask`` reports it beside the answer's
confidence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ProgramError
from ..models.parser import Parser
from ..models.parser_targets import Target, collate, program_nll, target_of
from ..program import Program


@torch.no_grad()
def parse_logps(parser: Parser, questions: Sequence[str], programs: Sequence[Program | None]) -> list[float]:
    """log P(program | question) for each pair (a concept named by several words counts each of them); -inf
    where the program is None or the question cannot express it."""
    items: list[Target] = []
    where: list[int] = []
    for i, (q, p) in enumerate(zip(questions, programs)):
        if p is None:
            continue
        try:
            items.append(target_of(parser, q, p))
            where.append(i)
        except ProgramError:
            continue
    out = [-math.inf] * len(questions)
    if not items:
        return out
    was = parser.training
    parser.eval()
    try:
        nll = program_nll(parser, collate(items, parser.grammar.num_fixed))
    finally:
        parser.train(was)
    for i, v in zip(where, nll.cpu().tolist()):
        out[i] = -float(v)
    return out
