"""Learning from answers alone: candidate programs from a question's words, the EM step, the lessons, and the
guarantee that no program annotation is read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.config import override
from nscl.data import SplitPaths
from nscl.errors import NSCLError
from nscl.language import BOOL_ANSWER, asked_answer
from nscl.models.grammar import Grammar, Lexicon
from nscl.models.program_search import AnswerShape, SearchLimits, search_programs
from nscl.program import ClevrProgram, program_from_str
from nscl.run_config import TrainConfig
from nscl.training.answers_only import Lesson, fit_from_answers
from nscl.vocab import tokenize


@pytest.fixture(scope="module")
def grammar(domain):
    return Grammar(domain), Lexicon.build(domain)


def candidates(domain, grammar, question: str, answer: str, **kw) -> list[str]:
    g, lex = grammar
    tokens = tokenize(question)
    q = g.question_info(tokens, lex, question)
    shape = AnswerShape.of(domain, answer, asked_answer(tokens, lex.attributes, lex.concepts))
    res = search_programs(g, q, shape, SearchLimits(**kw))
    assert res.complete
    return [p.to_str() for p in res.programs]


def test_search_finds_the_program_of_a_short_question(domain, grammar):
    got = candidates(domain, grammar, "What color is the large cube?", "red")
    assert got == ["query(color, filter(scene(), [cube, large]))"]
    got = candidates(domain, grammar, "How many red spheres are there?", "2")
    assert got == ["count(filter(scene(), [red, sphere]))"]


def test_search_keeps_the_alternatives_the_answer_must_decide(domain, grammar):
    got = candidates(domain, grammar, "What shape is the red thing left of the cube?", "sphere")
    want = program_from_str("query(shape, filter(relate(filter(scene(), [cube]), left), [red]))", domain)
    assert want.canonical().to_str() in got
    swapped = "query(shape, filter(relate(filter(scene(), [red]), left), [cube]))"
    assert swapped in got  # which noun is the anchor is the answers' to decide
    for p in got:
        assert p.startswith("query(shape,") and "cube" in p and "red" in p and "left" in p


def test_a_named_comparison_may_count_the_whole_scene(domain, grammar):
    got = candidates(domain, grammar, "Are the balls outnumbered by the objects?", "yes")
    assert "count_less(filter(scene(), [sphere]), scene())" in got
    # unnamed, no comparison takes it: the next test's "is there a cube" has one candidate


def test_search_reads_a_named_comparison_and_the_answer_kind(domain, grammar):
    got = candidates(domain, grammar, "Are there more cubes than spheres?", "yes")
    assert got and all(p.startswith("count_greater(") for p in got)
    assert "count_greater(filter(scene(), [cube]), filter(scene(), [sphere]))" in got
    assert set(candidates(domain, grammar, "Is there a cube?", "no")) == {"exist(filter(scene(), [cube]))"}


def test_search_limits_are_reported(domain, grammar):
    g, lex = grammar
    question = "Are there more large metal cubes left of the red sphere than small rubber cylinders?"
    q = g.question_info(tokenize(question), lex, question)
    res = search_programs(g, q, AnswerShape.of(domain, "yes"), SearchLimits(max_expansions=50))
    # Both passes (any programs, then projective ones) stop at the limit.
    assert not res.complete and res.programs == [] and res.expansions <= 2 * 51


def test_lessons_rows_are_checked():
    assert Lesson.from_row([2, 3, 10, 1, 0]) == Lesson(2, 3, 10, True, False)
    # Words are the tokenizer's, the question mark included: "Is there a cube?" is 5.
    assert Lesson(2, 3, 5, True, False).takes(3, "Is there a cube?")
    assert not Lesson(2, 3, 5, True, False).takes(4, "Is there a cube?")
    assert not Lesson(2, 3, 4, True, False).takes(3, "Is there a cube?")
    # The fixed parser's table: perception learns, the parser does not, no proposals.
    assert [Lesson.from_row(r).scores_once for r in ([1, 3, 9, 1, 0], [1, 3, 9, 1, 1], [1, 3, 9, 0, 0])] == [
        True,
        False,
        False,
    ]
    assert not Lesson.from_row([1, 3, 9, 1, 0, 2]).scores_once
    with pytest.raises(NSCLError, match="each row is"):
        Lesson.from_row([2, 3, 10])


def _no_program_split(tmp_path: Path, gen_root: Path) -> SplitPaths:
    d = tmp_path / "answers"
    d.mkdir()
    (d / "scenes.json").write_text((gen_root / "train" / "scenes.json").read_text())
    (d / "images").symlink_to(gen_root / "train" / "images")
    qs = json.loads((gen_root / "train" / "questions.json").read_text())["questions"]
    for q in qs:
        del q["program"]
    (d / "questions.json").write_text(json.dumps({"info": {}, "questions": qs}))
    return SplitPaths.resolve(d)


def _cfg(**kw) -> TrainConfig:
    small = {"perception": {"width": 8, "feature_dim": 64, "pair_dim": 32}}
    base = {
        "training_target": "all",
        "batch_size": 32,
        "image_height": 48,
        "validation_interval": 1,
        "parser": {"lessons": [[1, 10, 9, 1, 1], [1, 10, 12, 0, 1]], "search_expansions": 2000},
        "model": small,
    }
    return override(TrainConfig(), {**base, **kw})


def test_trains_from_a_file_without_programs_and_never_parses_one(tmp_path, gen_root, domain, monkeypatch):
    """The guarantee: a questions file with every program removed trains, and no program is parsed meanwhile."""

    def refuse(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a program was read")

    monkeypatch.setattr(ClevrProgram, "from_json", classmethod(refuse))
    torch.manual_seed(0)
    cfg = _cfg(lr_decay_at=0.5)
    res = fit_from_answers(
        cfg,
        domain,
        _no_program_split(tmp_path, gen_root),
        tmp_path / "run",
        torch.device("cpu"),
        progress=False,
    )
    records = [json.loads(x) for x in res.run.metrics.read_text().splitlines()]
    assert [r["stage"] for r in records] == ["lesson 1", "lesson 2"]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == pytest.approx([cfg.lr, cfg.lr * 0.1])  # the step over all lessons
    assert all(r["train/candidates"] >= 1 for r in records)
    assert "validation/acc/qa_parsed" in records[-1]
    state = torch.load(res.checkpoint, weights_only=False)
    assert {"model", "parser", "domain", "config"} <= set(state)


def test_a_step_moves_perception_and_parser_and_a_frozen_part_stays(gen_dataset, gen_split, domain):
    from nscl.inference.examples import ParserExample
    from nscl.models.executor import Compiler
    from nscl.models.nscl import NSCL
    from nscl.models.parser import Parser
    from nscl.training.answers_only import Candidates, em_step, perceive
    from nscl.training.parser_supervised import build_vocab, make_optimizer

    cfg = _cfg()
    torch.manual_seed(0)
    model = NSCL(domain, cfg.model)
    qs = [q for q in gen_split.questions if len(tokenize(q.question)) <= 12][:20]
    ex = [ParserExample(q.question, q.image_index, q.answer, None) for q in qs]
    parser = Parser(domain, build_vocab(ex), cfg.parser.model)
    cands = Candidates(parser, SearchLimits(max_expansions=2000), 4)
    ex = [e for e in ex if cands(e)]
    assert len(ex) >= 5
    imgs = sorted({e.image_index for e in ex})
    images, boxes, mask = gen_dataset.scene_batch(np.array([gen_dataset.image_of_index[i] for i in imgs]))
    rows = [imgs.index(e.image_index) for e in ex]
    opt = make_optimizer(list(model.parameters()) + list(parser.parameters()), 1e-3, 0.0)

    def snapshot():  # noqa: ANN202
        return [p.detach().clone() for p in model.parameters()], [
            p.detach().clone() for p in parser.parameters()
        ]

    for lesson, moves in (
        (Lesson(1, 10, 12, True, True), (True, True)),
        (Lesson(1, 10, 12, False, True), (False, True)),
    ):
        m0, p0 = snapshot()
        scene = perceive(model, images, boxes, mask, lesson)
        s = em_step(parser, scene, ex, rows, [cands(e) for e in ex], opt, lesson, Compiler(domain))
        assert s["n"] == len(ex) and s["candidates"] >= 1
        m1, p1 = snapshot()
        assert any(not torch.equal(a, b) for a, b in zip(m0, m1)) == moves[0]
        assert any(not torch.equal(a, b) for a, b in zip(p0, p1)) == moves[1]


def test_a_search_is_reused_for_questions_phrased_alike(domain, grammar):
    from nscl.models.program_search import abstract_actions, programs_from_actions, signature

    g, lex = grammar

    def info(text: str):  # noqa: ANN202
        return g.question_info(tokenize(text), lex, text)

    a = info("What color is the large cube left of the sphere?")
    b = info("Tell me the color of that small cylinder, left of the red ball.")
    c = info("What color is the large cube?")
    shape = AnswerShape.of(domain, "red")
    assert signature(a, shape) != signature(b, shape)  # "red ball" is two concept words
    b = info("Which color is the small cylinder to the left of the ball?")
    assert signature(a, shape) == signature(b, shape) != signature(c, shape)
    found = search_programs(g, a, shape)
    reused = programs_from_actions(g, b, [abstract_actions(g, a, x) for x in found.actions])
    assert reused == search_programs(g, b, shape).programs
    assert "query(color, filter(relate(filter(scene(), [sphere]), left), [cylinder, small]))" in [
        p.to_str() for p in reused
    ]


def test_questions_the_search_misses_get_fitting_parser_proposals(domain, monkeypatch):
    from nscl.inference.examples import ParserExample
    from nscl.models.parser import Parser
    from nscl.training.answers_only import Candidates
    from nscl.training.parser_supervised import build_vocab

    e = ParserExample("How many red cubes are there?", 0, "2", None, None, 7)
    parser = Parser(domain, build_vocab([e]))
    proposed = [
        program_from_str(t, domain)
        for t in (
            "count(filter(scene(), [cube]))",  # leaves "red" out
            "exist(filter(scene(), [red, cube]))",  # a yes/no for a number
            "count(filter(scene(), [cube, red]))",  # fits
        )
    ]
    monkeypatch.setattr(parser, "parse_candidates", lambda qs, beam, n, unknown: [proposed for _ in qs])
    cands = Candidates(parser, SearchLimits(max_length=3), 4)  # a search that finds nothing (too short)
    assert cands(e) == []
    assert [p.to_str() for p in cands.with_proposals([e], 4)[0]] == ["count(filter(scene(), [cube, red]))"]
    assert cands.with_proposals([e], 0) == [[]]
    remembered = program_from_str("count(filter(scene(), [red]))", domain)
    cands.remember(e, remembered)
    assert cands.with_proposals([e], 4)[0][0] == remembered  # the off-policy memory comes first


@pytest.mark.parametrize("name", ["full", "full-quick"])
def test_the_shipped_answers_only_configs_read_no_programs_and_their_lessons_parse(name):
    from nscl.run_config import load_config

    cfg = load_config(name)
    assert cfg.training_target == "all"
    lessons = [Lesson.from_row(r) for r in cfg.parser.lessons]
    # The paper's four lessons: short questions on small scenes, then longer ones, then every question with
    # perception fixed, then all of it jointly; then perception alone under the fixed parser (read from its
    # table of scores), and in full.json one last joint epoch.
    assert [(x.perception, x.parser) for x in lessons[:5]] == [
        (True, True),
        (True, True),
        (False, True),
        (True, True),
        (True, False),
    ]
    assert lessons[0].max_words < lessons[1].max_words < lessons[2].max_words >= 99
    assert all(x.max_words >= 99 for x in lessons[2:])
    assert lessons[0].max_objects < lessons[-1].max_objects
    assert not any(x.proposals for x in lessons)


@pytest.mark.parametrize("parser_learns", [1, 0])
def test_resume_in_the_middle_of_a_lesson_is_exact(tmp_path, gen_root, domain, parser_learns):
    """Three epochs straight, against two, then the third resumed from the second's checkpoint (lesson 2 has
    two epochs, so the resume falls inside it): the same weights, optimiser steps and records; also where
    lesson 2 keeps the parser fixed and reads its table of scores (recomputed on resuming)."""
    parser = {"lessons": [[1, 10, 9, 1, 1], [2, 10, 9, 1, parser_learns]], "search_expansions": 2000}
    cfg = _cfg(save_interval=1, parser=parser)
    paths = _no_program_split(tmp_path, gen_root)
    torch.manual_seed(0)
    straight = fit_from_answers(cfg, domain, paths, tmp_path / "a", torch.device("cpu"), progress=False)
    mid = tmp_path / "a" / "checkpoint_epoch_2.pth"
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG
    resumed = fit_from_answers(
        cfg, domain, paths, tmp_path / "b", torch.device("cpu"), progress=False, resume=str(mid)
    )
    a = torch.load(straight.checkpoint, weights_only=False)
    b = torch.load(resumed.checkpoint, weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "optimizer"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)
    pa, pb = a["parser"]["state"], b["parser"]["state"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ra = json.loads(straight.run.metrics.read_text().splitlines()[-1])
    rb = json.loads(resumed.run.metrics.read_text().splitlines()[-1])
    assert {k: v for k, v in ra.items() if k != "seconds"} == {k: v for k, v in rb.items() if k != "seconds"}
    with pytest.raises(NSCLError, match="config differs"):
        other = _cfg(save_interval=1, lr=0.5, parser=parser)
        fit_from_answers(
            other, domain, paths, tmp_path / "c", torch.device("cpu"), progress=False, resume=str(mid)
        )


def _tensors(tree, prefix: str = "") -> dict:
    out = {}
    if isinstance(tree, torch.Tensor):
        out[prefix] = tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(tree, list | tuple):
        for i, v in enumerate(tree):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


@pytest.mark.parametrize("evidence", ["soft", "shipped"])
def test_em_from_answers_teaches_a_random_parser_with_a_perfect_perception(gen_split, domain, evidence):
    """The parser half alone, on a toy: a random parser, perfect (oracle) scenes, and only answers. Each question's
    candidates include wrong readings (which noun is the anchor, swapped comparisons); EM on the answers must
    raise the parser's exact match well above where it starts, and further with the shipped evidence."""
    from nscl.inference.evaluate import evaluate_parser
    from nscl.inference.examples import examples_from_questions
    from nscl.inference.scenes import OracleScenes
    from nscl.models.executor import Compiler
    from nscl.models.parser import Parser, ParserConfig
    from nscl.run_config import ParserTrainConfig
    from nscl.training.answers_only import Candidates, Evidence, em_step
    from nscl.training.parser_supervised import build_vocab, make_optimizer

    ex = [e for e in examples_from_questions(gen_split.questions, domain) if len(tokenize(e.question)) <= 14]
    torch.manual_seed(0)
    parser = Parser(domain, build_vocab(ex), ParserConfig(embedding_dim=16, hidden_dim=32, dropout=0.0))
    cands = Candidates(parser, SearchLimits(), 2)
    ex = [e for e in ex if cands(e)]
    assert len(ex) >= 30 and sum(len(cands(e)) > 1 for e in ex) >= 10  # there is something to decide
    scenes = OracleScenes(gen_split.scenes, domain)
    before = evaluate_parser(parser, ex, "v", scenes, unknown="unk")
    opt = make_optimizer(list(parser.parameters()), 1e-2, 0.0)
    lesson, compiler = Lesson(1, 10, 14, False, True), Compiler(domain)
    pcfg = ParserTrainConfig()
    weigh = (
        Evidence(1.0) if evidence == "soft" else Evidence(1.0, pcfg.wrong_answer_cost, pcfg.referent_weight)
    )
    for _ in range(15):
        for k in range(0, len(ex), 16):
            batch = ex[k : k + 16]
            imgs = sorted({e.image_index for e in batch})
            scene = scenes(imgs)
            rows = [imgs.index(e.image_index) for e in batch]
            em_step(
                parser,
                scene,
                batch,
                rows,
                [cands(e) for e in batch],
                opt,
                lesson,
                compiler,
                weigh,
                keep=4,
            )
    after = evaluate_parser(parser, ex, "v", scenes, unknown="unk")
    print(
        "EM", evidence, before["v/acc/program_exact"], after["v/acc/program_exact"], after["v/acc/qa_parsed"]
    )
    assert before["v/acc/program_exact"] < 0.3
    assert after["v/acc/program_exact"] >= 0.8 and after["v/acc/qa_parsed"] >= 0.9
    if (
        evidence == "shipped"
    ):  # judging answers right or wrong and references unique helps (0.88 -> 0.96 here)
        assert after["v/acc/program_exact"] >= 0.93 and after["v/acc/qa_parsed"] >= 0.99


def test_answers_only_refuses_program_annotations(gen_root, tmp_path, capsys):
    from nscl.cli import main

    run = tmp_path / "r"
    argv = ["train", "--training-target", "all", "--config", "full", "--data-dir", str(gen_root / "train")]
    rc = main([*argv, "--parser-annotations", "5", "--run-dir", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--parser-annotations must be 0, not 5" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_evidence_weighs_the_answer_the_length_and_the_references():
    """Hand-computed log-weights: a wrong answer costs wrong_answer_cost nats however small its soft loss, each
    node length_prior, and a reference that is not one object its log-probability times referent_weight."""
    from nscl.training.answers_only import Evidence

    loss = torch.tensor([0.1, 0.3, 0.2])
    correct = torch.tensor([True, False, True])
    nodes = torch.tensor([5.0, 4.0, 7.0])
    ref = torch.tensor([-0.1, -0.2, -2.0])
    got = Evidence(1.0, 20.0, 1.0).log_weight(loss, correct, nodes, ref)
    assert torch.allclose(got, torch.tensor([-5.2, -24.5, -9.2]))
    # Without the referent term (or without referents computed) it is the answer and the length only.
    assert torch.allclose(
        Evidence(1.0, 20.0, 0.0).log_weight(loss, correct, nodes, ref), torch.tensor([-5.1, -24.3, -7.2])
    )
    assert torch.allclose(
        Evidence(0.5).log_weight(loss, correct, nodes, None), torch.tensor([-2.6, -2.3, -3.7])
    )
    # referent_free forgives that many nats of the references' log-probability: -0.1 and -0.2 cost nothing.
    forgiving = Evidence(1.0, 20.0, 1.0, 0.5).log_weight(loss, correct, nodes, ref)
    assert torch.allclose(forgiving, torch.tensor([-5.1, -24.3, -8.7]))


def _searched(
    domain, grammar, text: str, answer: str, exists: bool | None = None, strict: bool = False
) -> list:
    """The candidates (slack 2) for ``text`` answered ``answer``, the comparison its wording names read as the
    trainer reads it, with ``exists`` and ``strict`` as given (AnswerShape.of)."""
    g, lex = grammar
    tokens = tokenize(text)
    shape = AnswerShape.of(domain, answer, asked_answer(tokens, lex.attributes, lex.concepts), exists, strict)
    return search_programs(g, g.question_info(tokens, lex, text), shape, SearchLimits(), 2).programs


def test_wording_that_asks_existence_gives_only_existence_candidates(domain, grammar):
    from nscl.language import asks_existence

    _, lex = grammar
    text = "Does any other cube match the ball in size?"
    assert asks_existence(tokenize(text), lex.attributes, lex.concepts)
    free = _searched(domain, grammar, text, "yes")
    held = _searched(domain, grammar, text, "yes", exists=True)
    finals = {p.final_op for p in free}
    assert "exist" in finals and len(finals) > 1  # without the rule, other readings (an equality) compete
    assert held and {p.final_op for p in held} == {"exist"}
    assert set(held) <= set(free)


def test_a_yes_no_question_that_names_no_comparison_gets_no_comparison_candidates(domain, grammar):
    text = "Find the block left of the red ball; does the gray thing match it in size?"
    free = _searched(domain, grammar, text, "no")
    strict = _searched(domain, grammar, text, "no", strict=True)
    comparisons = {"count_greater", "count_less", "count_equal"}
    assert comparisons & {p.final_op for p in free}  # counts compared: answers alone allow it
    assert strict and not comparisons & {p.final_op for p in strict}
    assert "query_attribute_equal" in {p.final_op for p in strict}


def test_a_yes_no_question_without_existence_words_gets_no_existence_candidates(domain, grammar):
    from nscl.language import may_ask_existence

    _, lex = grammar
    text = "Does the cube match the ball in size?"
    assert not may_ask_existence(tokenize(text), lex.attributes, lex.concepts)
    free = _searched(domain, grammar, text, "yes", strict=True)
    held = _searched(domain, grammar, text, "yes", exists=False, strict=True)
    assert "exist" in {p.final_op for p in free}  # "is there another ball of the cube's size"
    assert held and {p.final_op for p in held} == {"query_attribute_equal"}


def test_a_repeated_attribute_word_is_read_once(domain, grammar):
    """ "The material of A ... matches the material of B": the plain equality, not one more relate_attribute_equal
    for the second "material" (both readings used to cost the same, and the many variants of the second crowded
    the first out of the kept candidates)."""
    g, lex = grammar
    text = (
        "Say whether the material of the yellow thing positioned on the left of the giant matte cylinder matches "
        "the material of the little thing positioned at the back of the red matt thing."
    )
    tokens = tokenize(text)
    q = g.question_info(tokens, lex, text)
    words = lex.attributes, lex.concepts
    shape = AnswerShape.of(domain, "yes", asked_answer(tokens, *words), False, strict=True)
    want = program_from_str(
        "query_attribute_equal(material, filter(relate(filter(scene(), [cylinder, large, rubber]), left), [yellow]), "
        "filter(relate(filter(scene(), [red, rubber]), behind), [small]))",
        domain,
    ).canonical()
    got = search_programs(g, q, shape, SearchLimits(max_expansions=5000), 2).programs
    assert want in got
    old = search_programs(g, q, shape, SearchLimits(max_expansions=5000, drop_cost=2), 2).programs
    assert want not in old


def test_a_size_word_is_read_as_a_concept_as_readily_as_as_an_attribute(domain, grammar):
    """ "Count the big things that are balls or matte cylinders": "big" is a filter here, and a concept word read as
    an attribute costs what its filter would, so that reading stays among the candidates; "is the cube as big as the
    ball" still compares sizes."""
    g, lex = grammar
    text = "Count the big things that are balls or matte cylinders or both."
    q = g.question_info(tokenize(text), lex, text)
    got = search_programs(g, q, AnswerShape.of(domain, "3"), SearchLimits(max_expansions=5000), 2).programs
    union = "count(filter(union(filter(scene(), [cylinder, rubber]), filter(scene(), [sphere])), [large]))"
    assert union in [p.to_str() for p in got]
    text = "Is the cube as big as the ball?"
    q = g.question_info(tokenize(text), lex, text)
    shape = AnswerShape.of(domain, "yes", BOOL_ANSWER, False, strict=True)  # as parser.wording_roots reads it
    got = search_programs(g, q, shape, SearchLimits(max_expansions=5000), 2).programs
    assert [p.to_str() for p in got] == [
        "query_attribute_equal(size, filter(scene(), [cube]), filter(scene(), [sphere]))"
    ]
