"""The fixed parser's table of candidate scores (training/parser_scores.py) and the EM step that reads it."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from nscl.inference.examples import ParserExample
from nscl.models.executor import Compiler
from nscl.models.nscl import NSCL
from nscl.models.parser import Parser
from nscl.models.parser_targets import collate, program_nll, target_of
from nscl.models.program_search import SearchLimits
from nscl.program import program_from_str
from nscl.run_config import TrainConfig
from nscl.training.answers_only import Candidates, Lesson, em_step, perceive
from nscl.training.parser_scores import ParserScores
from nscl.training.parser_supervised import build_vocab, make_optimizer
from nscl.vocab import tokenize


@pytest.fixture(scope="module")
def setting(gen_split, domain):
    torch.manual_seed(0)
    cfg = TrainConfig()
    qs = [q for q in gen_split.questions if len(tokenize(q.question)) <= 16][:24]
    ex = [ParserExample(q.question, q.image_index, q.answer, None, None, q.index) for q in qs]
    parser = Parser(domain, build_vocab(ex), cfg.parser.model)
    cands = Candidates(parser, SearchLimits(max_expansions=2000), 2)
    ex = [e for e in ex if cands(e)]
    assert len(ex) >= 10 and sum(len(cands(e)) > 1 for e in ex) >= 3
    return parser, cands, ex


def test_the_table_holds_what_scoring_each_candidate_alone_gives(setting, domain):
    parser, cands, ex = setting
    # A question asked twice is scored once; small chunks and windows.
    table = ParserScores.compute(parser, [*ex, ex[0]], cands, chunk=3, window=2)
    pairs = {(e.question, p) for e in ex for p in cands(e)}
    assert len(table) == len(pairs)
    parser.eval()
    with torch.no_grad():
        for q, p in sorted(pairs, key=str)[:12]:
            alone = program_nll(parser, collate([target_of(parser, q, p)], parser.grammar.num_fixed))
            assert table(q, p) == pytest.approx(float(alone), abs=1e-4)
    # Chunks change how the work is batched, not the numbers.
    other = ParserScores.compute(parser, ex, cands, chunk=1000, window=1)
    assert other.nll.keys() == table.nll.keys()
    assert all(other.nll[k] == pytest.approx(v, abs=1e-4) for k, v in table.nll.items())


def test_a_candidate_the_question_cannot_express_scores_inf_and_an_unscored_one_is_named(setting, domain):
    parser, _, _ = setting
    q = "What color is the large cube?"
    alien = program_from_str("query(color, filter(scene(), [sphere]))", domain)
    own = program_from_str("query(color, filter(scene(), [cube, large]))", domain)
    table = ParserScores.compute(parser, [ParserExample(q, 0, "red", None)], lambda e: [own, alien])
    assert math.isinf(table(q, alien)) and math.isfinite(table(q, own)) and table(q, own) > 0
    with pytest.raises(KeyError, match="no parser score for 'query"):
        table("What shape is it?", own)


def test_an_em_step_with_the_parser_fixed_reads_the_table_and_learns_as_without_it(
    setting, gen_dataset, domain, monkeypatch
):
    """The naive reference: the same step scoring the candidates afresh. Same loss, same perception update, and
    the parser does not move; with the table, the step builds no teacher-forcing target and runs no parser."""
    import nscl.training.answers_only as ao

    parser, cands, ex = setting
    cfg = TrainConfig()
    torch.manual_seed(1)
    small = {"perception": {"width": 8, "feature_dim": 64, "pair_dim": 32}}
    from nscl.config import override

    model = NSCL(domain, override(cfg, {"model": small}).model)
    imgs = sorted({e.image_index for e in ex})
    images, boxes, mask = gen_dataset.scene_batch(np.array([gen_dataset.image_of_index[i] for i in imgs]))
    rows = [imgs.index(e.image_index) for e in ex]
    lesson = Lesson(1, 10, 16, True, False)
    table = ParserScores.compute(parser, ex, cands)
    results, models = [], []
    for scores in (None, table):
        m, p = copy.deepcopy(model), copy.deepcopy(parser)
        opt = make_optimizer(list(m.parameters()) + list(p.parameters()), 1e-3, 0.0)
        p0 = [x.detach().clone() for x in p.parameters()]
        scene = perceive(m, images, boxes, mask, lesson)
        found = [cands(e) for e in ex]
        if scores is not None:
            for name in ("targets_of", "program_nll"):
                monkeypatch.setattr(ao, name, lambda *a, **k: pytest.fail("the parser was scored again"))
        results.append(em_step(p, scene, ex, rows, found, opt, lesson, Compiler(domain), scores=scores))
        assert all(torch.equal(a, b) for a, b in zip(p0, p.parameters()))
        models.append(m)
    a, b = results
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["loss"] > 0
    assert a["acc"] == b["acc"] and a["candidates"] == b["candidates"] > 1
    moved = [not torch.equal(x, y) for x, y in zip(model.parameters(), models[1].parameters())]
    assert any(moved)
    for x, y in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-4)
