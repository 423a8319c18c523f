"""``nscl.ask``: one question about one image, with the parsed program and a step-by-step trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.checkpoint import save_checkpoint
from nscl.domain import Domain, builtin_domain
from nscl.errors import NSCLError
from nscl.inference.ask import AskResult, ask, prepare_image, read_boxes
from nscl.inference.execute import run_programs
from nscl.program import program_from_str

# ask's bar for unambiguous references (the checkpoint's parser.min_referent_p): on the untrained perception
# below, a reference is a coin toss, so a strict bar makes guidance visible
REFERENT_P = 0.15
HEIGHT = 48  # the generated fixture's image height (conftest.GEN_HEIGHT): no resizing
PAIRS = [
    ("How many things are there?", "count(scene())"),
    ("How many red things are there?", "count(filter(scene(), [red]))"),
    ("What color is the large cylinder?", "query(color, filter(scene(), [large, cylinder]))"),
    ("What shape is the small metal thing?", "query(shape, filter(scene(), [small, metal]))"),
    ("Is there a blue sphere?", "exist(filter(scene(), [blue, sphere]))"),
    (
        "What color is the sphere left of the cube?",
        "query(color, filter(relate(filter(scene(), [cube]), left), [sphere]))",
    ),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(domain: Domain, gen_root: Path, tmp_path_factory: pytest.TempPathFactory, ask_state) -> dict:
    """A checkpoint with a small randomly initialised NSCL model and a parser trained on PAIRS."""
    model, state_with_parser, state = ask_state(domain, PAIRS, 50, min_referent_p=REFERENT_P)
    root = tmp_path_factory.mktemp("ask")
    save_checkpoint(root / "model.pth", state_with_parser)
    save_checkpoint(root / "no_parser.pth", state)
    scenes = json.loads((gen_root / "train" / "scenes.json").read_text())["scenes"]
    scene = scenes[3]
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps([o["box"] for o in scene["objects"]]))
    return {
        "ckpt": root / "model.pth",
        "no_parser": root / "no_parser.pth",
        "image": gen_root / "train" / "images" / scene["image_filename"],
        "scenes": gen_root / "train" / "scenes.json",
        "index": scene["image_index"],
        "scene": scene,
        "boxes": boxes,
        "model": model,
    }


def test_count_everything_gives_the_number_of_objects(setup: dict) -> None:
    n = len(setup["scene"]["objects"])
    r = ask(
        setup["ckpt"],
        setup["image"],
        "How many things are there?",
        scene_json=setup["scenes"],
        index=setup["index"],
    )
    assert isinstance(r, AskResult)
    assert r.program == "count(scene())"
    assert r.answer == str(n) and r.confidence > 0.99
    assert [s.op for s in r.steps] == ["scene", "count"]
    objs = r.steps[0].objects
    assert [o.index for o in objs] == list(range(n)) and all(o.prob > 0.99 for o in objs)
    assert [o.box for o in objs] == [[float(v) for v in o["box"]] for o in setup["scene"]["objects"]]
    assert r.steps[1].value == str(n)


def test_answer_and_trace_match_the_batched_executor(setup: dict, domain: Domain, gen_dataset) -> None:
    q = "What color is the large cylinder?"
    r = ask(setup["ckpt"], setup["image"], q, scene_json=setup["scenes"], index=setup["index"])
    prog = program_from_str(PAIRS[2][1], domain)
    assert r.program == prog.to_str() and r.program_nscl == prog.to_json()
    # The same image through the training data path (QADataset at the same height) and the executor.
    row = gen_dataset.image_of_index[setup["index"]]
    images, boxes, mask = gen_dataset.scene_batch(np.array([row]))
    model = setup["model"].eval()
    with torch.no_grad():
        scene = model.perceive(images, boxes, mask)
        out, _ = run_programs([prog], [0], scene, domain, True)
    _, logits = out.query[2 + domain.attribute_names.index("color")]
    expected = domain.attribute("color").concepts[int(logits[0].argmax())]
    assert r.answer == expected
    # A complete trace: one step per node, every object with its box, the query's distribution.
    n = len(setup["scene"]["objects"])
    assert [s.op for s in r.steps] == ["scene", "filter", "query"]
    assert r.steps[1].concepts == ["large", "cylinder"]
    assert len(r.steps[1].objects) == n and all(0 <= o.prob <= 1 for o in r.steps[1].objects)
    query = r.steps[2]
    assert query.attribute == "color" and len(query.input_objects) == 1
    assert abs(sum(o.prob for o in query.input_objects[0]) - 1) < 1e-4
    assert set(query.distribution) == set(domain.attribute("color").concepts)
    assert abs(sum(query.distribution.values()) - 1) < 1e-4
    assert r.confidence == pytest.approx(query.distribution[r.answer], abs=1e-6)
    text = r.format_trace()
    assert "Program:  query(color, filter(scene(), [large, cylinder]))" in text
    assert f"Answer: {r.answer}" in text and "#0" in text
    assert json.loads(json.dumps(r.to_json()))["answer"] == r.answer


def test_boxes_file_gives_the_same_result(setup: dict) -> None:
    q = "Is there a blue sphere?"
    a = ask(setup["ckpt"], setup["image"], q, scene_json=setup["scenes"], index=setup["index"])
    b = ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"])
    assert a.answer == b.answer in ("yes", "no")
    assert a.confidence == pytest.approx(b.confidence) and 0.5 <= a.confidence <= 1


def test_relation_steps_show_the_chosen_object(setup: dict) -> None:
    q = "What color is the ball left of the block?"
    # The fixture's perception is untrained, so execution guidance (next test) is off here.
    r = ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"], guided_beam=0)
    assert r.program == "query(color, filter(relate(filter(scene(), [cube]), left), [sphere]))"
    assert r.parse_rank == 0
    relate = next(s for s in r.steps if s.op == "relate")
    assert relate.concepts == ["left"] and len(relate.input_objects) == 1
    assert "input 0 is object #" in r.format_trace()


def test_guided_parse_is_reported(setup: dict, domain: Domain) -> None:
    """On the untrained perception "the cube" is ambiguous, so guidance takes a beam candidate whose
    references are unambiguous on this image, and the trace says so."""
    q = "What color is the ball left of the block?"
    # (check_kind off: this is about references alone; the beam's unambiguous candidate drops a concept)
    r = ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"], guided_beam=8, check_kind=False)
    assert r.parse_rank > 0
    assert r.program != "query(color, filter(relate(filter(scene(), [cube]), left), [sphere]))"
    assert f"beam candidate {r.parse_rank}" in r.format_trace()
    prog = program_from_str(r.program, domain)
    images, scaled = prepare_image(
        setup["image"], read_boxes(setup["image"], domain, boxes_json=setup["boxes"]), HEIGHT
    )
    with torch.no_grad():
        scene = (
            setup["model"].eval().perceive(images, scaled, torch.ones(1, scaled.shape[1], dtype=torch.bool))
        )
        out, _ = run_programs([prog], [0], scene, domain, True, referents=True)
    assert float(out.referent_logp[0]) >= math.log(REFERENT_P)


def test_near_miss_is_read_as_the_known_word_and_said(setup: dict) -> None:
    q = "What color is the large cilinder?"
    r = ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"])
    right = ask(setup["ckpt"], setup["image"], "What color is the large cylinder?", boxes_json=setup["boxes"])
    assert r.corrections == [{"typed": "cilinder", "read_as": "cylinder"}] and r.question == q
    assert (r.program, r.answer) == (right.program, right.answer) and right.corrections == []
    assert "(read 'cilinder' as 'cylinder')" in r.format_trace()
    assert json.loads(json.dumps(r.to_json()))["corrections"] == r.corrections
    with pytest.raises(NSCLError, match="unknown word 'cilinder'.*did you mean 'cylinder'"):
        ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"], correct_spelling=False)


def test_parse_confidence_is_the_programs_probability(setup: dict, domain: Domain) -> None:
    """A trained phrasing is read with high probability; the reported value is exp(log P(program | question))
    and appears in the trace and the JSON."""
    from nscl.inference.confidence import parse_logps
    from nscl.inference.load import load_parser

    r = ask(setup["ckpt"], setup["image"], "How many red things are there?", boxes_json=setup["boxes"])
    assert 0.9 < r.parse_confidence <= 1.0
    assert "parse confidence" in r.format_trace() and r.to_json()["parse_confidence"] == r.parse_confidence
    parser = load_parser(setup["ckpt"])
    progs = [program_from_str(p, domain) for _, p in PAIRS]
    lp = parse_logps(parser, [q for q, _ in PAIRS], progs)
    assert all(-0.2 < v <= 0 for v in lp)
    # the wrong program for a question is improbable; one the question cannot express has probability 0
    swapped = parse_logps(parser, [PAIRS[1][0], PAIRS[0][0]], [progs[0], progs[1]])
    assert swapped[0] < math.log(0.05) and swapped[1] == -math.inf
    assert r.parse_confidence == pytest.approx(math.exp(lp[1]), rel=1e-5)


def test_wrong_kind_of_answer_is_replaced_or_refused(setup: dict) -> None:
    """ "What color ..." read as a count is the parser not knowing the phrasing: a beam candidate that answers a
    color is taken (and said), or the question is refused; never a count for a color question."""
    q = "What color is the large cylinder?"
    right = ask(setup["ckpt"], setup["image"], q, boxes_json=setup["boxes"])
    assert right.program.startswith("query(color") and right.parse_note == ""
    # "How many things are there?" is a count in the parser's eyes; asking for a yes/no there is refused
    with pytest.raises(
        NSCLError,
        match=r"reads it as count\(scene\(\)\), which answers a count, but the question asks for a yes/no.*"
        r"try one like 'Are there any red cubes\?'",
    ):
        ask(setup["ckpt"], setup["image"], "Are many things there?", boxes_json=setup["boxes"], guided_beam=0)


def test_loading_a_parser_does_not_build_the_model(setup: dict) -> None:
    from nscl.inference.load import load

    only_parser = load(setup["ckpt"], need_model=False, need_parser=True)
    assert only_parser.model is None and only_parser.parser is not None
    both = load(setup["ckpt"])
    assert both.model is not None and both.parser is not None and not both.model.training


def test_unknown_words_that_only_shape_the_sentence_are_read_as_unk(setup: dict) -> None:
    """ "currently" names nothing: read as <UNK> and said; "wooden" may name a property: refused."""
    plain = ask(setup["ckpt"], setup["image"], "How many red things are there?", boxes_json=setup["boxes"])
    r = ask(
        setup["ckpt"], setup["image"], "How many red things are currently there?", boxes_json=setup["boxes"]
    )
    assert r.ignored == ["currently"] and plain.ignored == []
    assert (r.program, r.answer) == (plain.program, plain.answer)
    assert "read as unknown words: 'currently'" in r.format_trace()
    with pytest.raises(NSCLError, match="unknown word 'wooden'"):
        ask(setup["ckpt"], setup["image"], "How many wooden things are there?", boxes_json=setup["boxes"])


def test_errors_are_clear(setup: dict, domain: Domain) -> None:
    with pytest.raises(NSCLError, match="unknown word 'dog'"):
        ask(setup["ckpt"], setup["image"], "What color is the dog?", boxes_json=setup["boxes"])
    with pytest.raises(NSCLError, match="no parser"):
        ask(setup["no_parser"], setup["image"], "How many things are there?", boxes_json=setup["boxes"])
    with pytest.raises(NSCLError, match="exactly one"):
        ask(setup["ckpt"], setup["image"], "How many things are there?")
    with pytest.raises(NSCLError, match="image_index 99999"):
        read_boxes(setup["image"], domain, scene_json=setup["scenes"], index=99999)


def test_refusal_examples_ask_what_they_stand_for() -> None:
    """Each wording the wrong-kind refusal suggests is read as the kind it is suggested for."""
    from nscl.inference.ask import _KNOWN_WORDING
    from nscl.language import asked_answer, question_tokens
    from nscl.models.grammar import Lexicon

    lex = Lexicon.build(builtin_domain())
    examples = {
        **_KNOWN_WORDING,
        **{a: f"What is the {a} of the red cube?" for a in ("color", "size", "shape")},
    }
    for kind, text in examples.items():
        assert asked_answer(question_tokens(text), lex.attributes, lex.concepts) == kind, text


def test_a_parse_must_use_every_concept_the_question_names(domain: Domain) -> None:
    from nscl.inference.guided import covers, uncovered
    from nscl.language import question_tokens
    from nscl.models.grammar import Lexicon

    lex = Lexicon.build(domain)

    def left_out(text: str, program: str) -> list[str]:
        return uncovered(program_from_str(program, domain), question_tokens(text), lex)

    assert left_out("Either cubes or blue things: how many?", "count(filter(scene(), [cube]))") == ["blue"]
    both = "count(union(filter(scene(), [cube]), filter(scene(), [blue])))"
    assert left_out("Either cubes or blue things: how many?", both) == []
    assert left_out("How big is the cube?", "query(size, filter(scene(), [cube]))") == []  # "big" as size
    assert left_out("How many balls are left of it?", "count(filter(scene(), [sphere]))") == ["left"]
    assert covers(program_from_str("count(filter(scene(), [sphere]))", domain), ["how", "many", "balls"], lex)
