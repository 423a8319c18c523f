"""The semantic parser: lexicon, typed decoding, pointer generalisation, training, evaluation, file parsing."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nscl.checkpoint import save_checkpoint
from nscl.data import read_questions
from nscl.domain import Domain
from nscl.errors import NSCLError
from nscl.inference.evaluate import evaluate_parser
from nscl.inference.examples import ParserExample, examples_from_questions
from nscl.inference.execute import answer_targets, run_programs
from nscl.inference.guided import checked_parse, guided_parse
from nscl.inference.load import load_parser
from nscl.inference.questions_file import nscl_to_clevr, parse_questions_file
from nscl.inference.scenes import OracleScenes
from nscl.models.executor import Compiler
from nscl.models.grammar import Lexicon, ParseError
from nscl.models.parser import Parser, ParserConfig, parser_from_state, parser_state
from nscl.program import Program, program_from_str, translate
from nscl.run_config import ParserTrainConfig
from nscl.training.joint import joint_step, make_joint_batch
from nscl.training.parser_supervised import stratified_subset, train_parser_on_pairs
from nscl.training.reinforce import MovingAverage, policy_loss, rewarded, train_reinforce
from nscl.training.self_training import pseudo_label
from nscl.vocab import Vocab, tokenize

TINY = ParserConfig(embedding_dim=16, hidden_dim=32, dropout=0.0, max_length=40)
TINY_TRAIN = ParserTrainConfig(epochs=60, min_steps=0, batch_size=16, lr=1e-2, model=TINY)

# A small hand-written language. "cube" only ever names the *reference* object of a relation here.
TRAIN_PAIRS = [
    ("How many red spheres are there?", "count(filter(scene(), [red, sphere]))"),
    ("How many blue cylinders are there?", "count(filter(scene(), [blue, cylinder]))"),
    ("How many green things are there?", "count(filter(scene(), [green]))"),
    ("How many things are there?", "count(scene())"),
    ("Is there a small sphere?", "exist(filter(scene(), [small, sphere]))"),
    ("Is there a large red cylinder?", "exist(filter(scene(), [large, red, cylinder]))"),
    ("Is there a metal thing?", "exist(filter(scene(), [metal]))"),
    (
        "What color is the sphere left of the cube?",
        "query(color, filter(relate(filter(scene(), [cube]), left), [sphere]))",
    ),
    (
        "What shape is the red thing behind the cube?",
        "query(shape, filter(relate(filter(scene(), [cube]), behind), [red]))",
    ),
    (
        "What size is the cylinder right of the blue cube?",
        "query(size, filter(relate(filter(scene(), [blue, cube]), right), [cylinder]))",
    ),
    (
        "What material is the green sphere in front of the cube?",
        "query(material, filter(relate(filter(scene(), [cube]), front), [green, sphere]))",
    ),
    ("What color is the large cylinder?", "query(color, filter(scene(), [large, cylinder]))"),
    ("What shape is the small metal thing?", "query(shape, filter(scene(), [small, metal]))"),
    (
        "Are there more spheres than cylinders?",
        "count_greater(filter(scene(), [sphere]), filter(scene(), [cylinder]))",
    ),
    (
        "Are there fewer red things than blue things?",
        "count_less(filter(scene(), [red]), filter(scene(), [blue]))",
    ),
    (
        "Is the sphere the same color as the cylinder?",
        "query_attribute_equal(color, filter(scene(), [sphere]), filter(scene(), [cylinder]))",
    ),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_parser(domain: Domain) -> Parser:
    progs = [program_from_str(p, domain) for _, p in TRAIN_PAIRS]
    return train_parser_on_pairs(domain, [q for q, _ in TRAIN_PAIRS], progs, TINY_TRAIN, seed=0)


# --------------------------------------------------------------------------------------------- lexicon
def test_lexicon_maps_synonyms_and_attribute_words(domain: Domain) -> None:
    lex = Lexicon.build(domain)
    assert lex.concepts["ball"] == "sphere" and lex.concepts["balls"] == "sphere"
    assert lex.concepts["shiny"] == "metal" and lex.concepts["block"] == "cube"
    assert lex.concepts["big"] == "large" and lex.attributes["big"] == "size"
    assert lex.relations["left"] == "left" and lex.relations["back"] == "behind"
    assert lex.attributes["colour"] == "color" and lex.attributes["made"] == "material"
    assert Lexicon.from_json(json.loads(json.dumps(lex.to_json()))) == lex


def test_program_from_str_round_trips(domain: Domain) -> None:
    for _, text in TRAIN_PAIRS:
        assert program_from_str(text, domain).to_str() == text
    with pytest.raises(NSCLError):
        program_from_str("count(filter(scene(), [dog]))", domain)


# --------------------------------------------------------------------------------------------- shapes
def test_encoder_decoder_shapes(domain: Domain) -> None:
    vocab = Vocab.build(q for q, _ in TRAIN_PAIRS)
    parser = Parser(domain, vocab, TINY)
    enc_q, errors = parser.encode_questions(["How many red spheres are there?", "Is there a cube?"])
    assert errors == [None, None]
    B, T = enc_q.ids.shape
    assert (B, T) == (2, 7)
    enc, pad, h = parser.encode(enc_q.ids, enc_q.lengths)
    D = 2 * TINY.hidden_dim
    assert enc.shape == (B, T, D) and pad.shape == (B, T) and h.shape == (B, D)
    assert pad.sum(1).tolist() == [7, 5]
    F = parser.grammar.num_fixed
    assert len(domain.nscl_ops) + 1 == F
    ctx = torch.zeros(B, D)
    h2, ctx2, logits = parser.step(
        h, ctx, parser._start(B, h.device), torch.zeros(B, dtype=torch.long), enc, parser.ptr_key(enc), pad
    )
    assert h2.shape == (B, D) and ctx2.shape == (B, D) and logits.shape == (B, F + T)


def test_teacher_forcing_targets_decode_to_the_program(domain: Domain, gen_split) -> None:
    """Every generated question's target sequence is well typed and reads back as its program."""
    parser = Parser(domain, Vocab.build(q.question for q in gen_split.questions), TINY)
    g = parser.grammar
    longest = 0
    for q in gen_split.questions:
        prog = translate(q.program, domain)
        info = g.question_info(tokenize(q.question), parser.lexicon)
        slots, masks, targets = g.target(prog, info, 64)
        assert (targets <= masks).all() and targets.any(1).all()
        actions = [int(np.nonzero(t)[0][0]) for t in targets]
        assert g.to_program(actions, info).canonical() == prog.canonical()
        longest = max(longest, len(actions))
    assert longest <= 40


# --------------------------------------------------------------------------------------------- typing
WORDS = sorted({w for q, _ in TRAIN_PAIRS for w in tokenize(q)} | {"ball", "shiny", "colour", "left", "big"})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12))
def test_decoding_only_emits_well_typed_programs(domain: Domain, seed: int, words: list[str]) -> None:
    """Random weights, random questions: greedy, sampled and beam programs all validate (or the question
    is refused with a message)."""
    torch.manual_seed(seed)
    parser = Parser(domain, Vocab.build(WORDS), ParserConfig(embedding_dim=8, hidden_dim=8, max_length=30))
    parser.eval()
    question = " ".join(words)
    enc_q, errors = parser.encode_questions([question])
    with torch.no_grad():
        runs = [parser.decode(enc_q, "greedy", errors=errors), parser.decode(enc_q.repeat(3), "sample")]
        lenient = parser.decode(enc_q.repeat(3), "sample", strict=False)
    runs.append(lenient)
    beam = parser.parse_many([question], beam_size=3)
    for programs, errs in [(r.programs, r.errors) for r in runs] + [beam]:
        for p, e in zip(programs, errs):
            assert (p is None) == (e is not None)
            if p is not None:
                p.validate(domain)
                Compiler(domain)(p)  # the executor accepts it too
                assert len(p) <= 30
    # Without the strict check, masking alone always yields a program.
    assert all(p is not None for p in lenient.programs)


def test_contractions_and_typos_get_help(tiny_parser: Parser) -> None:
    """A contraction reads as its expansion, a possessive 's is dropped; an unknown word is refused with the
    closest known words."""
    expanded = tiny_parser.parse(["Is there a metal thing?"])[0]
    assert tiny_parser.parse(["Is there a metal thing's?"])[0] == expanded
    _, errors = tiny_parser.encode_questions(["Isn\u2019t there a metal thing?"])
    assert errors == [
        "cannot parse 'Isn\u2019t there a metal thing?': unknown word 'not' (not in the parser's vocabulary)"
    ]  # read as "is not": the tiny parser never saw "not", and nothing known is spelled like it
    with pytest.raises(NSCLError, match=r"unknown word 'spehres'.*did you mean 'spheres'"):
        tiny_parser.parse(["How many red spehres are there?"])
    assert "spheres" in tiny_parser.known_words and "ball" in tiny_parser.known_words


def test_unknown_word_names_the_word(tiny_parser: Parser) -> None:
    with pytest.raises(NSCLError, match="unknown word 'dog'"):
        tiny_parser.parse(["What color is the dog?"])
    programs, errors = tiny_parser.parse_many(["What color is the dog?", "How many red spheres are there?"])
    assert programs[0] is None and "dog" in errors[0] and programs[1] is not None
    # Lexicon words never seen in training are known: "ball" is a sphere.
    assert (
        tiny_parser.parse(["How many red balls are there?"])[0].to_str()
        == "count(filter(scene(), [red, sphere]))"
    )


def test_missing_pointer_target_is_an_error(tiny_parser: Parser) -> None:
    """The parser wants query(<attribute>, ...) but the question names no attribute: a clear error, not a
    silently different program."""
    with pytest.raises(ParseError, match="attribute"):
        tiny_parser.parse(["What is the sphere left of the cube?"])


# --------------------------------------------------------------------------------------------- learning
def test_tiny_supervised_run_fits_its_training_set(tiny_parser: Parser, domain: Domain) -> None:
    predicted = tiny_parser.parse([q for q, _ in TRAIN_PAIRS])
    for (q, text), p in zip(TRAIN_PAIRS, predicted):
        assert p.canonical() == program_from_str(text, domain).canonical(), q
    beam = tiny_parser.parse([q for q, _ in TRAIN_PAIRS], beam_size=3)
    assert [p.canonical() for p in beam] == [p.canonical() for p in predicted]


def test_pointer_copies_a_concept_into_an_unseen_role(tiny_parser: Parser, domain: Domain) -> None:
    """ "cube" was only ever the reference object of a relation; here it is the queried one (and a synonym
    never seen at all, "ball", is the reference)."""
    cases = {
        "What color is the cube left of the sphere?": "query(color, filter(relate(filter(scene(), [sphere]), left), [cube]))",
        "What size is the cube behind the red ball?": "query(size, filter(relate(filter(scene(), [red, sphere]), behind), [cube]))",
        "How many blue cubes are there?": "count(filter(scene(), [blue, cube]))",
    }
    got = tiny_parser.parse(list(cases))
    for (q, text), p in zip(cases.items(), got):
        assert p.to_str() == text, q


def test_checkpoint_round_trip(tiny_parser: Parser, domain: Domain, tmp_path: Path) -> None:
    again = parser_from_state(parser_state(tiny_parser))
    qs = [q for q, _ in TRAIN_PAIRS]
    assert [p.to_str() for p in again.parse(qs)] == [p.to_str() for p in tiny_parser.parse(qs)]
    path = tmp_path / "parser.pth"
    save_checkpoint(path, {"domain": domain.to_dict(), "parser": parser_state(tiny_parser)})
    assert load_parser(path).parse(qs[:1])[0].to_str() == TRAIN_PAIRS[0][1]
    save_checkpoint(tmp_path / "none.pth", {"domain": domain.to_dict()})
    with pytest.raises(NSCLError, match="no parser"):
        load_parser(tmp_path / "none.pth")


def test_policy_loss_variants() -> None:
    log_prob = torch.tensor([-1.0, -2.0, -0.5, -0.1], requires_grad=True)
    correct = torch.tensor([True, False, False, True])
    valid = torch.tensor([True, True, True, False])
    baseline = MovingAverage(0.5, value=0.25)
    loss, mean_r = policy_loss(
        log_prob, torch.zeros(4), correct, valid, None, 2, ParserTrainConfig(baseline="moving"), baseline
    )
    assert mean_r == 0.25 and baseline.value == 0.25
    loss.backward()
    # advantage (reward - 0.25) on valid rows, zero on the invalid one
    assert torch.allclose(log_prob.grad, -torch.tensor([0.75, -0.25, -0.25, 0.0]) / 4)
    log_prob.grad = None
    qa = torch.tensor([0.0, 10.0, 2.0, 2.0])
    loss, _ = policy_loss(
        log_prob, torch.zeros(4), correct, valid, qa, 2, ParserTrainConfig(reward="release"), MovingAverage()
    )
    loss.backward()
    w = torch.cat([torch.softmax(torch.tensor([10.0, 0.0]), 0), torch.tensor([1.0, 0.0])])
    assert torch.allclose(log_prob.grad, -w / 2, atol=1e-6)
    # leave-one-out baseline: question 1 (right, wrong) -> advantages +1, -1; question 2 (wrong, invalid) -> 0
    log_prob.grad = None
    loss, _ = policy_loss(
        log_prob, torch.zeros(4), correct, valid, None, 2, ParserTrainConfig(baseline="loo"), MovingAverage()
    )
    loss.backward()
    assert torch.allclose(log_prob.grad, -torch.tensor([1.0, -1.0, 0.0, 0.0]) / 4)


def test_stratified_subset_spreads_over_families(domain: Domain) -> None:
    prog = program_from_str("count(scene())", domain)
    examples = [ParserExample(f"q{i}", 0, "1", prog, family=i % 5) for i in range(100)]
    chosen = stratified_subset(examples, 15, seed=1)
    assert len(chosen) == 15
    fams = [examples[i].family for i in chosen]
    assert all(fams.count(f) == 3 for f in range(5))


def _toy_questions(gen_split, domain: Domain) -> tuple[list[ParserExample], list[ParserExample]]:
    """Annotated "How many <color> things" and unannotated "Are there any <color> things" on the generated
    scenes, answers from the scene annotations."""
    count_q, exist_q = [], []
    colors = domain.attribute("color").concepts
    for s in list(gen_split.scenes.values())[:16]:
        present = [o.attributes["color"] for o in s.objects]
        for k, c in enumerate(colors[:4]):
            n = present.count(c)
            count_q.append(
                ParserExample(
                    f"How many {c} things are there?",
                    s.image_index,
                    str(n),
                    program_from_str(f"count(filter(scene(), [{c}]))", domain),
                )
            )
            exist_q.append(
                ParserExample(
                    f"Are there any {colors[(k + 4) % 8]} things?",
                    s.image_index,
                    "yes" if colors[(k + 4) % 8] in present else "no",
                    program_from_str(f"exist(filter(scene(), [{colors[(k + 4) % 8]}]))", domain),
                )
            )
    return count_q, exist_q


def test_reinforce_raises_accuracy_with_oracle_perception(domain: Domain, gen_split) -> None:
    count_q, exist_q = _toy_questions(gen_split, domain)
    scenes = OracleScenes(gen_split.scenes, domain)
    # One annotated example per family, trained a little: a weak parser.
    cfg = ParserTrainConfig(
        epochs=3,
        min_steps=0,
        batch_size=2,
        lr=3e-3,
        model=TINY,
        reinforce_epochs=3,
        reinforce_lr=3e-3,
        reinforce_batch_size=16,
        samples=4,
        supervised_weight=0.0,
    )
    pairs = [count_q[0], exist_q[0]]
    torch.manual_seed(0)
    parser = train_parser_on_pairs(
        domain,
        [e.question for e in pairs],
        [e.program for e in pairs],
        cfg,
        extra_questions=[e.question for e in count_q + exist_q],
    )
    data = count_q + exist_q
    before = evaluate_parser(parser, data, "v", scenes)["v/acc/qa_parsed"]
    train_reinforce(parser, data, scenes, cfg, seed=0)
    after = evaluate_parser(parser, data, "v", scenes)
    assert after["v/acc/qa"] == 1.0  # oracle perception with ground-truth programs
    print("REINFORCE", before, after["v/acc/qa_parsed"])
    assert after["v/acc/qa_parsed"] >= before + 0.15, (before, after["v/acc/qa_parsed"])


# --------------------------------------------------------------------------------------------- evaluation
def test_evaluate_parser_metric_names(tiny_parser: Parser, domain: Domain, gen_split) -> None:
    s = next(iter(gen_split.scenes.values()))
    n = len(s.objects)
    examples = [
        ParserExample(
            "How many things are there?", s.image_index, str(n), program_from_str("count(scene())", domain)
        ),
        ParserExample("How many dogs are there?", s.image_index, "0", None),
    ]
    m = evaluate_parser(tiny_parser, examples, "validation", OracleScenes(gen_split.scenes, domain))
    assert m["validation/acc/program_exact"] == 1.0
    assert m["validation/acc/program_exact/count"] == 1.0
    assert m["validation/acc/qa"] == 1.0
    assert m["validation/acc/qa_parsed"] == 0.5  # the refused question counts as wrong
    assert m["validation/parse_errors"] == 1.0
    g = evaluate_parser(
        tiny_parser, examples, "validation", OracleScenes(gen_split.scenes, domain), guided_beam=4
    )
    assert g["validation/acc/qa_guided"] == 0.5 and g["validation/guided_changed"] == 0.0
    with pytest.raises(NSCLError, match="min_referent_p"):
        ParserTrainConfig(min_referent_p=1.5)


def test_nscl_to_clevr_inverts_translate(domain: Domain, gen_split) -> None:
    for q in gen_split.questions:
        prog = translate(q.program, domain)
        back = nscl_to_clevr(prog, domain)
        back.validate(domain)
        assert translate(back, domain).canonical() == prog.canonical()


def test_parse_questions_file(tiny_parser: Parser, domain: Domain, tmp_path: Path) -> None:
    src = tmp_path / "questions.json"
    recs = [
        {"image_index": 0, "question": q, "answer": "1", "question_family_index": 7, "split": "x"}
        for q, _ in TRAIN_PAIRS[:5]
    ]
    src.write_text(json.dumps({"info": {"split": "x"}, "questions": recs}))
    out = tmp_path / "parsed.json"
    counts = parse_questions_file(tiny_parser, src, out)
    assert counts == {"questions": 5, "parsed": 5, "errors": 0}
    data = json.loads(out.read_text())
    assert data["questions"][0]["split"] == "x" and data["questions"][0]["question_family_index"] == 7
    for r, (_, text) in zip(data["questions"], TRAIN_PAIRS):
        assert Program.from_json(r["program_nscl"]).to_str() == text
    for q, (_, text) in zip(read_questions(out, domain), TRAIN_PAIRS):
        assert translate(q.program, domain).canonical() == program_from_str(text, domain).canonical()
    recs.append({"image_index": 0, "question": "Where is the dog?"})
    src.write_text(json.dumps({"questions": recs}))
    with pytest.raises(NSCLError, match="question 5.*dog"):
        parse_questions_file(tiny_parser, src, out)
    assert parse_questions_file(tiny_parser, src, out, skip_errors=True)["errors"] == 1


# --------------------------------------------------------------------------------------------- joint
def test_joint_step_updates_perception_and_parser(domain: Domain, gen_split, gen_dataset) -> None:
    from nscl.models.nscl import NSCL, ModelConfig
    from nscl.models.perception import PerceptionConfig

    torch.manual_seed(0)
    model = NSCL(domain, ModelConfig(perception=PerceptionConfig(width=8, feature_dim=32, pair_dim=16)))
    examples = examples_from_questions(gen_split.questions, domain)[:20]
    # A parser that has seen these programs, so that its programs depend on the perception.
    parser = train_parser_on_pairs(
        domain,
        [e.question for e in examples],
        [e.program for e in examples],
        ParserTrainConfig(epochs=15, min_steps=0, batch_size=10, lr=1e-2, model=TINY),
    )
    batch = make_joint_batch(examples, gen_dataset, domain, "cpu")
    params = list(model.parameters()) + list(parser.parameters())
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-3)
    stats = joint_step(model, parser, batch, opt, ParserTrainConfig(samples=2), MovingAverage())
    assert set(stats) == {"loss", "acc", "reward", "n"} and stats["n"] == 20
    changed_model = any(
        not torch.equal(a, b) for a, b in zip(before[: len(list(model.parameters()))], model.parameters())
    )
    changed_parser = any(
        not torch.equal(a, b) for a, b in zip(before[len(list(model.parameters())) :], parser.parameters())
    )
    assert changed_model and changed_parser


# --------------------------------------------------------------------------------------------- nscl train
def test_fit_parser_parser_then_all(domain: Domain, gen_root: Path, tmp_path: Path) -> None:
    from nscl.data import SplitPaths
    from nscl.models.nscl import NSCL, ModelConfig
    from nscl.models.perception import PerceptionConfig
    from nscl.run_config import TrainConfig
    from nscl.training.fit_parser import fit_joint, fit_parser
    from nscl.training.trainer import checkpoint_state

    train, val = SplitPaths.resolve(gen_root / "train"), SplitPaths.resolve(gen_root / "val")
    mcfg = ModelConfig(perception=PerceptionConfig(width=8, feature_dim=32, pair_dim=16))
    cfg = TrainConfig(
        training_target="parser", data_split=0.8, validation_interval=1, epochs=1, image_height=48, model=mcfg
    )
    pcfg = ParserTrainConfig(epochs=2, min_steps=0, annotations=0, model=TINY)
    res = fit_parser(
        replace(cfg, parser=pcfg), domain, train, tmp_path / "p", torch.device("cpu"), val, progress=False
    )
    assert 0 <= res.metrics["validation/acc/program_exact"] <= 1
    assert "validationextra/acc/program_exact" in res.metrics
    assert len((tmp_path / "p" / "metrics.jsonl").read_text().splitlines()) == 3  # 2 epochs + final
    assert (tmp_path / "p" / "curves.png").stat().st_size > 0
    parser = load_parser(res.checkpoint)
    # Few annotations, then self-training on answers (oracle perception): its epochs are logged as a stage.
    st = ParserTrainConfig(
        epochs=2,
        min_steps=0,
        annotations=20,
        reinforce_epochs=0,
        self_train_epochs=1,
        self_train_rounds=2,
        perception="oracle",
        model=TINY,
    )
    fit_parser(
        replace(cfg, parser=st), domain, train, tmp_path / "st", torch.device("cpu"), val, progress=False
    )
    stages = [
        json.loads(line)["stage"] for line in (tmp_path / "st" / "metrics.jsonl").read_text().splitlines()
    ]
    assert stages == ["supervised", "supervised", "self-training 1", "self-training 2", "final"]
    # Few annotations need a perception for REINFORCE.
    with pytest.raises(NSCLError, match="--load"):
        fit_parser(
            replace(cfg, parser=ParserTrainConfig(epochs=1, min_steps=0, annotations=20, model=TINY)),
            domain,
            train,
            tmp_path / "q",
            torch.device("cpu"),
            progress=False,
        )
    # Joint fine-tuning from a checkpoint holding a (here untrained) NSCL model and the parser.
    torch.manual_seed(0)
    model = NSCL(domain, mcfg)
    init = tmp_path / "init.pth"
    save_checkpoint(
        init,
        {**checkpoint_state(model, cfg, domain, None, None, 0, {}, None), "parser": parser_state(parser)},
    )
    cfg_all = TrainConfig(
        training_target="all",
        data_split=0.8,
        validation_interval=1,
        epochs=1,
        batch_size=64,
        image_height=48,
        model=mcfg,
    )
    res = fit_joint(
        replace(cfg_all, parser=ParserTrainConfig(samples=1)),
        domain,
        train,
        tmp_path / "all",
        torch.device("cpu"),
        None,
        str(init),
        progress=False,
    )
    for key in ("validation/acc/qa", "validation/acc/qa_parsed", "validation/acc/program_exact"):
        assert 0 <= res.metrics[key] <= 1
    from nscl.checkpoint import load_checkpoint
    from nscl.inference.load import model_from_state

    state = load_checkpoint(res.checkpoint)
    tuned, _, _ = model_from_state(state)
    assert any(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), tuned.state_dict().values())
    )
    assert state["parser"] and load_parser(res.checkpoint) is not None
    # Continuing a parser (parser.init=load): with no training steps the loaded parser comes back unchanged.
    keep = ParserTrainConfig(
        init="load",
        epochs=0,
        min_steps=0,
        annotations=20,
        reinforce_epochs=0,
        self_train_epochs=0,
        model=TINY,
    )
    res = fit_parser(
        replace(cfg, parser=keep),
        domain,
        train,
        tmp_path / "cont",
        torch.device("cpu"),
        None,
        str(init),
        progress=False,
    )
    again = load_parser(res.checkpoint)
    assert all(torch.equal(a, b) for a, b in zip(parser.state_dict().values(), again.state_dict().values()))
    bare = tmp_path / "bare.pth"
    save_checkpoint(bare, checkpoint_state(model, cfg, domain, None, None, 0, {}, None))
    with pytest.raises(NSCLError, match="parser.init=load"):
        fit_parser(
            replace(cfg, parser=keep),
            domain,
            train,
            tmp_path / "bad",
            torch.device("cpu"),
            None,
            str(bare),
            progress=False,
        )


# --------------------------------------------------------------------------------------------- guidance
def _two_cube_scene(gen_split):
    """A generated scene with exactly two cubes, of different colors."""
    for s in gen_split.scenes.values():
        cubes = [o for o in s.objects if o.attributes["shape"] == "cube"]
        if len(cubes) == 2 and cubes[0].attributes["color"] != cubes[1].attributes["color"]:
            return s, cubes
    pytest.skip("no scene with two differently coloured cubes")


class _ScriptedParser:
    """The two calls guided_parse makes, answered from a script: greedy parses and beam candidates."""

    def __init__(self, domain: Domain, greedy: dict, candidates: dict) -> None:
        self.domain, self.greedy, self.candidates = domain, greedy, candidates
        self.lexicon = Lexicon.build(domain)

    def parse_many(self, questions, beam_size=1, unknown="error", batch_size=256):
        return [self.greedy[q] for q in questions], [None] * len(questions)

    def parse_candidates(self, questions, beam_size, n_best, unknown="error"):
        return [self.candidates[q][:n_best] for q in questions]


def test_guided_parse_replaces_only_ambiguous_parses(domain: Domain, gen_split) -> None:
    s, cubes = _two_cube_scene(gen_split)
    one = cubes[0].attributes["color"]
    ambiguous = program_from_str("query(color, filter(scene(), [cube]))", domain)
    unique = program_from_str(f"query(color, filter(scene(), [{one}, cube]))", domain)
    other_kind = program_from_str("count(filter(scene(), [cube]))", domain)  # unambiguous, but not a query
    greedy = {"a": unique, "b": ambiguous, "c": ambiguous}
    cands = {"a": [ambiguous], "b": [ambiguous, other_kind, unique], "c": [ambiguous, other_kind]}
    scenes = OracleScenes(gen_split.scenes, domain)
    g = guided_parse(_ScriptedParser(domain, greedy, cands), ["a", "b", "c"], [s.image_index] * 3, scenes)  # type: ignore[arg-type]
    # kept; the beam's third candidate (the second asks for a count); nothing passed, greedy kept
    assert g.rank == [0, 3, -1]
    assert g.programs == [unique, unique, ambiguous]
    off = guided_parse(_ScriptedParser(domain, greedy, cands), ["b"], [s.image_index], scenes, beam_size=1)  # type: ignore[arg-type]
    assert off.programs == [ambiguous] and off.rank == [-1]


def test_guided_parse_holds_parses_to_the_asked_answer(domain: Domain, gen_split) -> None:
    """With ``asked``, a greedy parse answering another kind than the wording asks for is replaced by the first
    candidate that answers as asked (and passes the reference check); without a kind in the wording, the
    usual rule (same kind as the greedy parse) applies."""
    s, cubes = _two_cube_scene(gen_split)
    one = cubes[0].attributes["color"]
    count_cubes = program_from_str("count(filter(scene(), [cube]))", domain)
    unique = program_from_str(f"query(color, filter(scene(), [{one}, cube]))", domain)
    ambiguous = program_from_str("query(color, filter(scene(), [cube]))", domain)
    shape = program_from_str(f"query(shape, filter(scene(), [{one}, cube]))", domain)
    greedy = {"a": count_cubes, "b": count_cubes, "c": count_cubes}
    cands = {
        "a": [count_cubes, shape, ambiguous, unique],
        "b": [count_cubes, unique],
        "c": [count_cubes, shape],
    }
    scenes = OracleScenes(gen_split.scenes, domain)
    parser = _ScriptedParser(domain, greedy, cands)
    g = guided_parse(parser, ["a", "b", "c"], [s.image_index] * 3, scenes, asked=["color", None, "color"])  # type: ignore[arg-type]
    # a: the shape query and the ambiguous one are passed over; b: the count is kept (nothing asked);
    # c: no candidate answers a color, the greedy parse comes back marked -1
    assert g.rank == [4, 0, -1] and g.programs == [unique, count_cubes, count_cubes]


def test_checked_parse_holds_parses_to_the_wording_without_an_image(domain: Domain) -> None:
    """``nscl parse``'s check: the kind of answer asked and every concept named, from the beam, or the greedy
    parse when no candidate passes."""
    P = functools.partial(program_from_str, domain=domain)
    q_color, q_or, q_free, q_miss = (
        "What color is the red cube?",
        "Either cubes or blue things: how many?",
        "Tell me about the cube.",
        "How many purple spheres are there?",
    )
    union = P("count(union(filter(scene(), [cube]), filter(scene(), [blue])))")
    greedy = {
        q_color: P("count(filter(scene(), [red, cube]))"),
        q_or: P("count(filter(scene(), [cube]))"),
        q_free: P("query(shape, filter(scene(), [cube]))"),
        q_miss: P("count(filter(scene(), [purple]))"),
    }
    cands = {
        q_color: [greedy[q_color], P("query(color, filter(scene(), [red, cube]))")],
        q_or: [greedy[q_or], union],
        q_free: [],
        q_miss: [greedy[q_miss], P("count(filter(scene(), [sphere]))")],
    }
    qs = [q_color, q_or, q_free, q_miss]
    programs, errors = checked_parse(_ScriptedParser(domain, greedy, cands), qs)  # type: ignore[arg-type]
    assert programs == [cands[q_color][1], union, greedy[q_free], greedy[q_miss]] and errors == [None] * 4


def test_reward_needs_unambiguous_references(domain: Domain, gen_split) -> None:
    """A program that reads two cubes as "the cube" earns nothing even where its answer happens to be right."""
    s, cubes = _two_cube_scene(gen_split)
    ambiguous = program_from_str("query(color, filter(scene(), [cube]))", domain)
    scene = OracleScenes(gen_split.scenes, domain)([s.image_index])
    out, _ = run_programs([ambiguous, ambiguous], [0, 0], scene, domain, True, referents=True)
    said = out.query[2 + domain.attribute_names.index("color")][1].argmax(-1)
    colors = domain.attribute("color").concepts
    tgt = answer_targets([colors[int(said[0])], colors[int(said[0])]], domain)
    assert rewarded(out, tgt, 0.0).tolist() == [True, True]  # the check off: right answer, reward
    assert rewarded(out, tgt, 0.05).tolist() == [False, False]


def test_pseudo_label_takes_the_first_rewarded_program(domain: Domain, gen_split) -> None:
    s, cubes = _two_cube_scene(gen_split)
    c0, c1 = cubes[0].attributes["color"], cubes[1].attributes["color"]
    n = len(s.objects)
    count_all = program_from_str("count(scene())", domain)
    count_cubes = program_from_str("count(filter(scene(), [cube]))", domain)
    query_c0 = program_from_str(f"query(color, filter(scene(), [{c0}, cube]))", domain)
    ambiguous = program_from_str("query(color, filter(scene(), [cube]))", domain)
    examples = [
        ParserExample("a", s.image_index, str(n), None),  # greedy right
        ParserExample("b", s.image_index, "2", None),  # greedy wrong (n != 2), the beam's 2nd candidate right
        ParserExample("c", s.image_index, c0, None),  # only an ambiguous program, unrewarded: missed
        ParserExample("d", s.image_index, None, None),  # no answer: not labelled
    ]
    assert n != 2
    greedy = {"a": count_all, "b": count_all, "c": ambiguous}
    cands = {"a": [count_all], "b": [count_all, count_cubes], "c": [ambiguous, ambiguous]}
    assert c0 != c1
    pl = pseudo_label(
        _ScriptedParser(domain, greedy, cands), examples, OracleScenes(gen_split.scenes, domain)
    )  # type: ignore[arg-type]
    assert [(e.question, e.program) for e in pl.examples] == [("a", count_all), ("b", count_cubes)]
    assert (pl.greedy, pl.beam, pl.missed) == (1, 1, 1)
    # an unambiguous candidate with the right answer is taken
    cands["c"] = [query_c0]
    pl = pseudo_label(
        _ScriptedParser(domain, greedy, cands), examples, OracleScenes(gen_split.scenes, domain)
    )  # type: ignore[arg-type]
    assert pl.examples[-1].question == "c" and pl.examples[-1].program == query_c0
