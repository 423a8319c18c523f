"""Property: every phrasing of every template, instantiated on random scenes, expresses its family's program in
the parser's terms -- the teacher-forcing target built from the question text decodes back to the program
(``Grammar.target`` then ``Grammar.to_program``), so a parser that reads the wording right can output it.
Also CLEVR's own templates (when ``../shared/clevr`` is there), read with our lexicon."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nscl.domain import builtin_domain
from nscl.generate.questions import QuestionEngine
from nscl.generate.template_files import load_synonyms, load_templates
from nscl.models.parser import Parser
from nscl.program import translate
from nscl.vocab import Vocab
from test_questions import random_facts

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLEVR = Path(__file__).resolve().parents[2] / "shared" / "clevr"


def questions_per_phrasing(templates, synonyms, domain, seed: int):
    """(family, phrasing index, question) covering every phrasing of every template that instantiates on
    random scenes within a bounded number of scenes: engine k writes every family with its k-th phrasing."""
    rng = np.random.default_rng(seed)
    most = max(len(t.text) for t in templates)
    out = []
    for k in range(most):
        only_k = [dataclasses.replace(t, text=(t.text[k],)) for t in templates if k < len(t.text)]
        engine = QuestionEngine(domain, only_k, synonyms, questions_per_image=len(only_k))
        missing = {t.family for t in only_k}
        for _ in range(60):
            facts = random_facts(domain, rng, int(rng.integers(4, 11)))
            for q in engine.generate(facts, rng):
                if q.family in missing:
                    missing.discard(q.family)
                    out.append((q.family, k, q))
            if not missing:
                break
        assert not missing, f"phrasing {k} of families {sorted(missing)} never instantiated"
    return out


def check_round_trip(generated, domain) -> None:
    parser = Parser(domain, Vocab.build(q.text for _, _, q in generated))
    failures = []
    for family, k, q in generated:
        program = translate(q.program, domain)
        enc, errs = parser.encode_questions([q.text], "error")
        info = enc.info[0]
        try:
            slots, masks, targets = parser.grammar.target(program, info, parser.cfg.max_length)
            actions = [int(np.flatnonzero(row)[0]) for row in targets[: len(slots)] if row.any()]
            back = parser.grammar.to_program(actions, info)
            ok = back.canonical() == program.canonical()
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            ok, back = False, e
        if not ok:
            failures.append(f"family {family} phrasing {k}: {q.text!r} -> {back}")
    assert not failures, f"{len(failures)} phrasings do not express their program:\n" + "\n".join(
        failures[:10]
    )


def test_every_phrasing_expresses_its_program():
    domain = builtin_domain()
    generated = questions_per_phrasing(load_templates(), load_synonyms(), domain, seed=11)
    assert len(generated) == sum(len(t.text) for t in load_templates())
    check_round_trip(generated, domain)


def test_every_clevr_phrasing_expresses_its_program_with_our_lexicon():
    if not (CLEVR / "templates").is_dir():
        pytest.skip(f"CLEVR's templates not found at {CLEVR}")
    domain = builtin_domain()
    templates = load_templates(CLEVR / "templates")
    generated = questions_per_phrasing(templates, load_synonyms(CLEVR / "synonyms.json"), domain, seed=12)
    check_round_trip(generated, domain)
