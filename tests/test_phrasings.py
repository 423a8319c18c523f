"""Property: every phrasing of every template, instantiated on random scenes, expresses its family's program in
the parser's terms -- the teacher-forcing target built from the question text decodes back to the program
(``Grammar.target`` then ``Grammar.to_program``), so a parser that reads the wording right can output it.
Also CLEVR's own templates (when ``../shared/clevr`` is there), read with our lexicon."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from nscl.data import Scene, SceneObject
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


def test_demo_asks_in_a_wording_no_template_uses():
    """``make demo`` asks :data:`nscl.demo.OWN_WORDING`; no phrasing of ours (any synonym, optional part kept
    or dropped) reads the same once normalised."""
    import itertools
    import re

    from nscl.demo import OWN_WORDING, own_wording
    from nscl.language import question_tokens

    def key(text: str) -> tuple[str, ...]:
        text = re.sub(r"<[A-Z]\d*>s?", " ", text)  # slots and the words that fill them drop out
        return tuple(t for t in question_tokens(text) if t.isalnum())

    filled = OWN_WORDING.format(size="<Z>", material="<M>", shape="<S>")
    ours = set()
    for t in load_templates():
        for text in t.text:
            parts = re.split(r"(\[[^\]]*\])", text)
            options = [[p[1:-1], ""] if p.startswith("[") else [p] for p in parts]
            ours |= {key("".join(c)) for c in itertools.product(*options)}
    assert key(filled) not in ours
    assert key("Give the colour of the <Z> <C> <M> <S>.") in ours  # the check sees template phrasings

    def obj(size: str, color: str, material: str, shape: str) -> SceneObject:
        return SceneObject({"size": size, "color": color, "material": material, "shape": shape})

    objects = [obj("large", "red", "metal", "cube"), obj("large", "blue", "metal", "cube")]
    scene = Scene(0, "x.png", [*objects, obj("small", "green", "rubber", "sphere")], {})
    assert own_wording(scene) == [("What's the colour of the tiny matte ball?", "green")]
    assert own_wording(Scene(0, "x.png", objects, {})) == []
