"""Execution-guided parsing: a parse whose references are ambiguous on the question's own image is replaced by
the most probable beam candidate whose references are not. The answer is never consulted.

CLEVR's engine only asks questions whose every reference ("the cube left of the sphere") picks exactly one
object, so a program reading an empty or crowded set as one object is unlikely to be the question's.
``Output.referent_logp`` measures it. :func:`beam_fallback` is shared with self-training
(``training/self_training.py``), which uses the answer as its check instead.

Two checks need only the wording: the parse answers the kind of answer the question asks for
(:func:`answers_as_asked`) and uses every concept it names (:func:`covers`). ``nscl ask`` adds them to the
reference check (:func:`guided_parse` with ``asked`` and ``cover``); ``nscl parse`` applies them alone
(:func:`checked_parse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..language import (
    AS_MANY,
    BOOL_ANSWER,
    COUNT_ANSWER,
    FEWER,
    MORE,
    asked_answer,
    correct,
    question_tokens,
    unknown_thing,
)
from ..models.executor import Compiler
from ..models.grammar import Lexicon
from ..models.parser import Parser
from ..program import Program, iter_concepts
from ..run_config import GUIDED_BEAM, MIN_REFERENT_P
from .execute import referent_logps
from .scenes import SceneSource


@dataclass
class GuidedParse:
    """Execution-guided parses: ``programs[i]`` is the most probable program (greedy, then the beam's
    candidates in order) whose references are unambiguous enough on question i's image; ``rank[i]`` is 0
    for the greedy parse, k for the beam's k-th candidate (1-based), -1 where no candidate passed and the
    greedy parse was kept."""

    programs: list[Program | None]
    errors: list[str | None]
    rank: list[int]


def answer_kind(program: Program) -> str:
    """What a program answers, in :func:`nscl.language.asked_answer`'s terms: ``"count"``, ``"yes/no"``, or the
    queried attribute's name."""
    last = program.nodes[-1]
    if last.op == "count":
        return COUNT_ANSWER
    if last.op == "query":
        return str(last.attribute)
    return BOOL_ANSWER


def answers_as_asked(asked: str | None, program: Program) -> bool:
    """Whether ``program`` answers what the wording asks for (:func:`nscl.language.asked_answer`; None: anything
    does): the same kind, and for a comparison of counts the same comparison."""
    if asked is None:
        return True
    if asked in (MORE, FEWER, AS_MANY):
        return program.nodes[-1].op == asked
    return answer_kind(program) == asked


def uncovered(program: Program, tokens: Sequence[str], lexicon: Lexicon) -> list[str]:
    """The words of ``tokens`` that name a concept or relation ``program`` does not use. CLEVR's questions name
    each concept of their program, so a parse that leaves a named one out ("either cubes or blue things: how
    many?" read as a count of cubes) misreads the question. A word that also names an attribute ("big": size)
    is covered when the program asks about that attribute."""
    used = set(iter_concepts(program))
    attributes = {n.attribute for n in program.nodes if n.attribute}
    out = []
    for w in tokens:
        c = lexicon.concepts.get(w) or lexicon.relations.get(w)
        if c is not None and c not in used and lexicon.attributes.get(w) not in attributes:
            out.append(w)
    return out


def covers(program: Program, tokens: Sequence[str], lexicon: Lexicon) -> bool:
    """Whether ``program`` uses every concept and relation the question names (:func:`uncovered`)."""
    return not uncovered(program, tokens, lexicon)


def asked_kind(parser: Parser, question: str) -> str | None:
    """The kind of answer ``question``'s wording asks for, read with ``parser``'s lexicon
    (:func:`nscl.language.asked_answer`)."""
    return asked_answer(question_tokens(question), parser.lexicon.attributes, parser.lexicon.concepts)


class WordingCheck:
    """Whether a program fits its question's wording: it answers the kind of answer asked
    (:func:`answers_as_asked`) and uses every concept named (:func:`covers`). Each question's reading is
    computed once."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self._read: dict[str, tuple[list[str], str | None]] = {}

    def __call__(self, question: str, program: Program | None) -> bool:
        if program is None:
            return False
        if question not in self._read:
            tokens = question_tokens(question)
            self._read[question] = (
                tokens,
                asked_answer(tokens, self.lexicon.attributes, self.lexicon.concepts),
            )
        tokens, asked = self._read[question]
        return answers_as_asked(asked, program) and covers(program, tokens, self.lexicon)


def same_answer(greedy: Program | None, cand: Program) -> bool:
    """A candidate may replace the greedy parse only if it asks for the same kind of answer (final op and
    attribute): guidance fixes what a question refers to, never what it asks."""
    if greedy is None:
        return True
    a, b = greedy.nodes[-1], cand.nodes[-1]
    return a.op == b.op and a.attribute == b.attribute


def beam_fallback(
    parser: Parser,
    questions: Sequence[str],
    retry: Sequence[int],
    beam_size: int,
    passes: Callable[[list[int], list[Program]], list[bool]],
    unknown: str = "error",
) -> dict[int, tuple[int, Program]]:
    """For each question index in ``retry``: (1-based rank, program) of the first of the beam's
    ``beam_size`` candidates that ``passes(question indices, candidates)`` accepts; absent when none does."""
    if not retry or beam_size <= 1:
        return {}
    cands = parser.parse_candidates([questions[i] for i in retry], beam_size, beam_size, unknown)
    flat = [(i, k, p) for i, c in zip(retry, cands) for k, p in enumerate(c, start=1)]
    ok = passes([i for i, _, _ in flat], [p for _, _, p in flat])
    chosen: dict[int, tuple[int, Program]] = {}
    for (i, k, p), good in zip(flat, ok):
        if good and i not in chosen:
            chosen[i] = (k, p)
    return chosen


def guided_parse(
    parser: Parser,
    questions: Sequence[str],
    image_indices: Sequence[int],
    scenes: SceneSource,
    beam_size: int = GUIDED_BEAM,
    min_referent_p: float = MIN_REFERENT_P,
    batch_size: int = 256,
    greedy: tuple[list[Program | None], list[str | None]] | None = None,
    asked: Sequence[str | None] | None = None,
    unknown: str = "error",
    cover: bool = False,
) -> GuidedParse:
    """Execution-guided decoding. The greedy parse is kept when its references pass (``Output.referent_logp``
    at least log ``min_referent_p`` on the question's image); otherwise the beam's ``beam_size`` best
    candidates that ask for the same kind of answer (final op and attribute) are tried in order.
    ``min_referent_p`` 0 turns the check off; ``greedy``: the questions' greedy ``parse_many`` result, when
    the caller has it. ``asked``: per question, the kind of answer its wording asks for
    (:func:`nscl.language.asked_answer`, None where it does not say); a parse must also answer that kind, and
    candidates are then held to it instead of to the greedy parse's kind. ``unknown``: ``"unk"`` reads words
    the parser never saw as ``<UNK>`` (the greedy parse and the candidates), ``"error"`` refuses them. ``cover``:
    a parse must also use every concept the question names (:func:`covers`)."""
    domain = parser.domain
    compiler = Compiler(domain)
    bar = math.log(min_referent_p) if min_referent_p > 0 else -math.inf
    programs, errors = greedy if greedy is not None else parser.parse_many(questions, 1, unknown, batch_size)
    programs, errors = list(programs), list(errors)
    want = list(asked) if asked is not None else [None] * len(questions)

    tokens = [question_tokens(q) for q in questions] if cover else []

    def as_asked(i: int, p: Program | None) -> bool:
        return (
            p is not None
            and answers_as_asked(want[i], p)
            and (not cover or covers(p, tokens[i], parser.lexicon))
        )

    lp = referent_logps(programs, image_indices, scenes, domain, batch_size, compiler)
    # unknown words get no candidates and stay errors
    checked = [w is not None or cover for w in want]
    retry = [
        i
        for i, v in enumerate(lp)
        if v < bar or (errors[i] is None and checked[i] and not as_asked(i, programs[i]))
    ]

    def passes(idx: list[int], cands: list[Program]) -> list[bool]:
        lps = referent_logps(cands, [image_indices[i] for i in idx], scenes, domain, batch_size, compiler)
        return [
            v >= bar
            and (not checked[i] or as_asked(i, p))
            and (want[i] is not None or same_answer(programs[i], p))
            for i, p, v in zip(idx, cands, lps)
        ]

    chosen = beam_fallback(parser, questions, retry, beam_size, passes, unknown)
    failed = set(retry)
    rank = [-1 if i in failed else 0 for i in range(len(questions))]
    for i, (k, p) in chosen.items():
        rank[i], programs[i], errors[i] = k, p, None
    return GuidedParse(programs, errors, rank)


def checked_parse(
    parser: Parser,
    questions: Sequence[str],
    beam_size: int = GUIDED_BEAM,
    unknown: str = "error",
    batch_size: int = 256,
) -> tuple[list[Program | None], list[str | None]]:
    """Parses held to the wording without an image: the greedy parse where it answers the kind of answer the
    wording asks for (:func:`nscl.language.asked_answer`) and uses every concept it names (:func:`covers`),
    else the first of the beam's ``beam_size`` candidates that does, else the greedy parse. Returns programs
    and errors as :meth:`Parser.parse_many`."""
    programs, errors = parser.parse_many(questions, 1, unknown, batch_size)
    programs, errors = list(programs), list(errors)
    fits = WordingCheck(parser.lexicon)
    retry = [i for i, p in enumerate(programs) if errors[i] is None and not fits(questions[i], p)]
    chosen = beam_fallback(
        parser,
        questions,
        retry,
        beam_size,
        lambda idx, cands: [fits(questions[i], p) for i, p in zip(idx, cands)],
        unknown,
    )
    for i, (_, p) in chosen.items():
        programs[i] = p
    return programs, errors


def read_as_ask(
    parser: Parser,
    questions: Sequence[str],
    image_indices: Sequence[int],
    scenes: SceneSource,
    beam_size: int = GUIDED_BEAM,
    min_referent_p: float = MIN_REFERENT_P,
) -> list[Program | None]:
    """Many questions read as ``nscl ask`` reads one (``inference/ask.py``), for benchmarks: spelling and
    verb-form corrections, a refusal (None) for an unknown word that may name a thing
    (:func:`nscl.language.unknown_thing`), other unknown words as ``<UNK>``, then :func:`guided_parse` held to
    the wording; a question no candidate passes for is refused too."""
    texts = [correct(q, parser.known_words)[0] for q in questions]
    refused = [
        unknown_thing(question_tokens(t), parser.known_words, parser.lexicon.concepts) is not None
        for t in texts
    ]
    gp = guided_parse(
        parser,
        texts,
        image_indices,
        scenes,
        beam_size,
        min_referent_p,
        asked=[asked_kind(parser, t) for t in texts],
        unknown="unk",
        cover=True,
    )
    return [p if r >= 0 and not no else None for p, r, no in zip(gp.programs, gp.rank, refused)]
