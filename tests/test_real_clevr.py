"""Real CLEVR files (``../shared/clevr/real-dev``: 4 training images with scenes and 40 questions, one test image
with questions and no scenes or programs), when present: read as they are, their programs round-trip through
NS-CL form and answer themselves on the real scenes, and their wording is expressible and kind-consistent
under our parser's lexicon. Skipped when the files are not beside the project."""

from __future__ import annotations

from pathlib import Path

import pytest

from nscl.data import read_questions, read_scenes
from nscl.domain import builtin_domain
from nscl.errors import ProgramError
from nscl.inference.guided import answers_as_asked
from nscl.inference.questions_file import nscl_to_clevr
from nscl.language import asked_answer, question_tokens
from nscl.models.parser import Parser
from nscl.program import translate
from nscl.symbolic import SceneFacts, execute_clevr, execute_nscl
from nscl.vocab import Vocab

REAL = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "real-dev"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real():
    if not (REAL / "CLEVR_train_questions.json").is_file():
        pytest.skip(f"real CLEVR files not found at {REAL}")
    domain = builtin_domain()
    questions = read_questions(REAL / "CLEVR_train_questions.json", domain)
    scenes = {s.image_index: s for s in read_scenes(REAL / "CLEVR_train_scenes.json", domain)}
    return domain, questions, scenes


def test_real_questions_round_trip_and_answer_themselves(real) -> None:
    domain, questions, scenes = real
    assert len(questions) == 40
    translated = 0
    for q in questions:
        facts = SceneFacts.of(scenes[q.image_index])
        assert execute_clevr(q.program, facts, domain) == q.answer, q.index
        try:
            prog = translate(q.program, domain)
        except ProgramError:  # equal_object: no NS-CL form
            continue
        translated += 1
        assert execute_nscl(prog, facts, domain) == q.answer, q.index
        back = nscl_to_clevr(prog, domain)
        back.validate(domain)
        assert translate(back, domain).canonical() == prog.canonical()
        assert execute_clevr(back, facts, domain) == q.answer, q.index
    assert translated >= 35


def test_real_wording_is_expressible_and_asks_its_kind(real) -> None:
    """Every concept of a real question's program is named by a word our lexicon knows, so the parser can
    point at it; and where the wording says what kind of answer it asks for, the program answers that."""
    domain, questions, _ = real
    parser = Parser(domain, Vocab.build(q.question for q in questions))
    for q in questions:
        try:
            prog = translate(q.program, domain)
        except ProgramError:
            continue
        enc, _ = parser.encode_questions([q.question], "error")
        parser.grammar.target(prog, enc.info[0], parser.cfg.max_length)  # raises if it cannot express it
        asked = asked_answer(question_tokens(q.question), parser.lexicon.attributes, parser.lexicon.concepts)
        assert answers_as_asked(asked, prog), (q.index, q.question, asked)


def test_real_test_split_reads_without_programs() -> None:
    path = REAL / "CLEVR_test_questions.json"
    if not path.is_file():
        pytest.skip(f"real CLEVR files not found at {REAL}")
    questions = read_questions(path, builtin_domain())
    assert questions and all(q.program is None and q.answer is None for q in questions)
