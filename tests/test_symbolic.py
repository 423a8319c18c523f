"""Symbolic execution: every CLEVR function on the tiny hand-made scenes (answers computed by hand), the
NS-CL executor, and a property test that raw programs and their translations agree on random scenes.

Tiny scene 0: 0 large red metal cube, 1 small blue rubber sphere, 2 large red rubber cylinder.
  left  [[], [0], [0, 1]]      right  [[1, 2], [2], []]
  front [[1], [], [0, 1]]      behind [[2], [0, 2], []]
Tiny scene 1: 0 small gray metal sphere, 1 small gray metal cube, 2 large yellow rubber cube,
              3 small green metal cylinder.
  left  [[3], [0, 2, 3], [0, 3], []]      right  [[1, 2], [], [1], [0, 1, 2]]
  front [[1, 2, 3], [2], [], [1, 2]]      behind [[], [0, 3], [0, 1, 3], [0]]
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nscl.errors import ProgramError
from nscl.program import ClevrProgram, Node, Program, translate
from nscl.symbolic import (
    Invalid,
    SceneFacts,
    execute_clevr,
    execute_clevr_outputs,
    execute_nscl,
    run_clevr_function,
)

SCENE = ("scene",)


def f(attr: str, x: tuple, value: str) -> tuple:
    return (f"filter_{attr}", x, value)


def u(x: tuple) -> tuple:
    return ("unique", x)


def out(domain, build, facts, expr):
    """The output of the last node of a raw program."""
    return execute_clevr_outputs(build(expr), facts, domain)[-1]


# --------------------------------------------------------------------------------------------- CLEVR, by hand
# (image, expression, expected output of the last node)
SET_CASES = [
    (0, SCENE, (0, 1, 2)),
    (1, SCENE, (0, 1, 2, 3)),
    # filter_* (all four), on both scenes
    (0, f("color", SCENE, "red"), (0, 2)),
    (1, f("color", SCENE, "gray"), (0, 1)),
    (1, f("color", SCENE, "red"), ()),
    (0, f("material", SCENE, "rubber"), (1, 2)),
    (1, f("material", SCENE, "metal"), (0, 1, 3)),
    (0, f("shape", SCENE, "cylinder"), (2,)),
    (1, f("shape", SCENE, "cube"), (1, 2)),
    (0, f("size", SCENE, "large"), (0, 2)),
    (1, f("size", SCENE, "small"), (0, 1, 3)),
    (1, f("shape", f("color", SCENE, "gray"), "cube"), (1,)),
    # relate, all four relations, from the yellow cube (2) of scene 1 and the blue sphere (1) of scene 0
    (1, ("relate", u(f("color", SCENE, "yellow")), "left"), (0, 3)),
    (1, ("relate", u(f("color", SCENE, "yellow")), "right"), (1,)),
    (1, ("relate", u(f("color", SCENE, "yellow")), "front"), ()),
    (1, ("relate", u(f("color", SCENE, "yellow")), "behind"), (0, 1, 3)),
    (0, ("relate", u(f("color", SCENE, "blue")), "left"), (0,)),
    (0, ("relate", u(f("color", SCENE, "blue")), "right"), (2,)),
    (0, ("relate", u(f("color", SCENE, "blue")), "behind"), (0, 2)),
    (1, ("relate", u(f("color", SCENE, "green")), "front"), (1, 2)),
    # union / intersect
    (1, ("union", f("color", SCENE, "gray"), f("shape", SCENE, "cube")), (0, 1, 2)),
    (1, ("intersect", f("color", SCENE, "gray"), f("shape", SCENE, "cube")), (1,)),
    (1, ("intersect", f("color", SCENE, "green"), f("shape", SCENE, "cube")), ()),
    (0, ("union", f("color", SCENE, "blue"), f("color", SCENE, "blue")), (1,)),
    # same_* (all four), never including the object itself
    (1, ("same_color", u(f("shape", SCENE, "sphere"))), (1,)),
    (1, ("same_material", u(f("shape", SCENE, "sphere"))), (1, 3)),
    (1, ("same_shape", u(f("color", SCENE, "yellow"))), (1,)),
    (1, ("same_size", u(f("shape", SCENE, "cylinder"))), (0, 1)),
    (1, ("same_size", u(f("color", SCENE, "yellow"))), ()),
    (0, ("same_color", u(f("shape", SCENE, "cube"))), (2,)),
    (0, ("same_shape", u(f("color", SCENE, "blue"))), ()),
    (0, ("same_material", u(f("shape", SCENE, "cylinder"))), (1,)),
    (0, ("same_size", u(f("shape", SCENE, "cube"))), (2,)),
]


@pytest.mark.parametrize(("image", "expr", "expected"), SET_CASES)
def test_clevr_set_functions(domain, build, tiny_facts, image, expr, expected):
    assert out(domain, build, tiny_facts[image], expr) == expected


@pytest.mark.parametrize(
    ("image", "expr", "expected"),
    [
        (1, u(f("color", SCENE, "yellow")), 2),
        (1, u(f("shape", f("size", SCENE, "small"), "cube")), 1),
        (0, u(f("color", SCENE, "blue")), 1),
    ],
)
def test_unique_valid(domain, build, tiny_facts, image, expr, expected):
    assert out(domain, build, tiny_facts[image], expr) == expected


@pytest.mark.parametrize(
    ("image", "expr"),
    [
        (1, ("query_shape", u(f("color", SCENE, "gray")))),  # two objects
        (1, ("query_shape", u(f("color", SCENE, "red")))),  # none
        (0, ("count", ("relate", u(SCENE), "left"))),  # three
        (0, ("exist", ("same_color", u(f("size", SCENE, "large"))))),
    ],
)
def test_unique_invalid(domain, build, tiny_facts, image, expr):
    with pytest.raises(Invalid):
        execute_clevr(build(expr), tiny_facts[image], domain)
    with pytest.raises(Invalid):
        execute_nscl(translate(build(expr), domain), tiny_facts[image], domain)


CYL = u(f("shape", SCENE, "cylinder"))  # scene 1: the small green metal cylinder (3)
SPHERE = u(f("shape", SCENE, "sphere"))  # scene 1: the small gray metal sphere (0)
YELLOW = u(f("color", SCENE, "yellow"))  # scene 1: the large yellow rubber cube (2)
GRAY_CUBE = u(f("shape", f("color", SCENE, "gray"), "cube"))  # scene 1: the small gray metal cube (1)
METAL = ("count", f("material", SCENE, "metal"))  # scene 1: 3
RUBBER = ("count", f("material", SCENE, "rubber"))  # scene 1: 1
SMALL = ("count", f("size", SCENE, "small"))  # scene 1: 3

ANSWER_CASES = [
    # count / exist
    (1, METAL, 3, "3"),
    (1, RUBBER, 1, "1"),
    (0, ("count", f("color", SCENE, "red")), 2, "2"),
    (1, ("count", f("color", SCENE, "red")), 0, "0"),
    (1, ("exist", f("color", SCENE, "green")), True, "yes"),
    (1, ("exist", f("color", SCENE, "red")), False, "no"),
    (0, ("exist", ("relate", u(f("shape", SCENE, "cylinder")), "right")), False, "no"),
    # query_* (all four)
    (1, ("query_color", CYL), "green", "green"),
    (1, ("query_material", CYL), "metal", "metal"),
    (1, ("query_shape", CYL), "cylinder", "cylinder"),
    (1, ("query_size", CYL), "small", "small"),
    (1, ("query_size", YELLOW), "large", "large"),
    (0, ("query_material", u(("same_color", u(f("shape", SCENE, "cube"))))), "rubber", "rubber"),
    # equal_* (all four)
    (1, ("equal_color", ("query_color", SPHERE), ("query_color", GRAY_CUBE)), True, "yes"),
    (1, ("equal_color", ("query_color", SPHERE), ("query_color", CYL)), False, "no"),
    (1, ("equal_material", ("query_material", SPHERE), ("query_material", YELLOW)), False, "no"),
    (1, ("equal_material", ("query_material", SPHERE), ("query_material", CYL)), True, "yes"),
    (1, ("equal_shape", ("query_shape", GRAY_CUBE), ("query_shape", YELLOW)), True, "yes"),
    (1, ("equal_shape", ("query_shape", SPHERE), ("query_shape", YELLOW)), False, "no"),
    (1, ("equal_size", ("query_size", SPHERE), ("query_size", YELLOW)), False, "no"),
    (1, ("equal_size", ("query_size", SPHERE), ("query_size", CYL)), True, "yes"),
    # integer comparisons
    (1, ("equal_integer", METAL, SMALL), True, "yes"),
    (1, ("equal_integer", METAL, RUBBER), False, "no"),
    (1, ("less_than", RUBBER, METAL), True, "yes"),
    (1, ("less_than", METAL, SMALL), False, "no"),
    (1, ("greater_than", METAL, RUBBER), True, "yes"),
    (1, ("greater_than", RUBBER, METAL), False, "no"),
    (1, ("greater_than", METAL, SMALL), False, "no"),
]


@pytest.mark.parametrize(("image", "expr", "value", "answer"), ANSWER_CASES)
def test_clevr_answer_functions(domain, build, tiny_facts, image, expr, value, answer):
    v = out(domain, build, tiny_facts[image], expr)
    assert v == value and type(v) is type(value)
    assert execute_clevr(build(expr), tiny_facts[image], domain) == answer
    # the NS-CL translation answers the same
    assert execute_nscl(translate(build(expr), domain), tiny_facts[image], domain) == answer


def test_equal_object(domain, build, tiny_facts):
    facts = tiny_facts[1]
    large = u(f("size", SCENE, "large"))  # the yellow cube again
    assert out(domain, build, facts, ("equal_object", YELLOW, large)) is True
    assert execute_clevr(build(("equal_object", YELLOW, large)), facts, domain) == "yes"
    assert execute_clevr(build(("equal_object", YELLOW, CYL)), facts, domain) == "no"
    with pytest.raises(Invalid):
        execute_clevr(build(("equal_object", YELLOW, u(f("color", SCENE, "gray")))), facts, domain)


def test_all_outputs(domain, build, tiny_facts):
    outs = execute_clevr_outputs(
        build(("query_material", u(("same_color", u(f("shape", SCENE, "cube")))))), tiny_facts[0], domain
    )
    assert outs == [(0, 1, 2), (0,), 0, (2,), 2, "rubber"]


def test_run_clevr_function_directly(domain, tiny_facts):
    facts = tiny_facts[0]
    assert run_clevr_function(domain, "filter_shape", [(0, 1, 2)], ["sphere"], facts) == (1,)
    assert run_clevr_function(domain, "relate", [2], ["front"], facts) == (0, 1)
    assert run_clevr_function(domain, "same_material", [1], [], facts) == (2,)
    assert run_clevr_function(domain, "less_than", [2, 2], [], facts) is False


def test_every_clevr_function_is_covered(domain):
    """The hand-computed cases above exercise every non-template function of the domain."""
    used = set()

    def walk(e):
        if isinstance(e, tuple):
            used.add(e[0])
            for a in e[1:]:
                walk(a)

    for _, e, _ in SET_CASES:
        walk(e)
    for _, e, _, _ in ANSWER_CASES:
        walk(e)
    used |= {"unique", "equal_object"}
    assert used == {n for n, s in domain.clevr_functions.items() if not s.template_only}


def test_fixture_questions_reproduce(domain, tiny_facts, tiny_dir):
    from nscl.data import read_questions

    questions = read_questions(tiny_dir / "questions.json", domain)
    assert [q.answer for q in questions] == ["2", "sphere", "no", "rubber", "yes", "yes", "3", "2"]
    for q in questions:
        facts = tiny_facts[q.image_index]
        assert execute_clevr(q.program, facts, domain) == q.answer, q.index
        assert execute_nscl(translate(q.program, domain), facts, domain) == q.answer, q.index


def test_program_without_answer_is_a_program_error(domain, build, tiny_facts):
    for expr in (f("color", SCENE, "red"), u(f("color", SCENE, "blue"))):
        with pytest.raises(ProgramError, match="gives no answer"):
            execute_clevr(build(expr), tiny_facts[0], domain)


# --------------------------------------------------------------------------------------------- NS-CL
def test_nscl_executor(domain, tiny_facts):
    facts = tiny_facts[1]
    scene, metal, cube = Node("scene"), Node("filter", (0,), ("metal",)), Node("filter", (0,), ("cube",))
    base = (scene, metal, cube)

    def run(*tail: Node) -> str:
        return execute_nscl(Program(base + tail), facts, domain)

    assert run(Node("count", (1,))) == "3"
    assert run(Node("count", (2,))) == "2"
    assert run(Node("intersect", (1, 2)), Node("count", (3,))) == "1"
    assert run(Node("union", (1, 2)), Node("count", (3,))) == "4"
    assert run(Node("exist", (2,))) == "yes"
    assert run(Node("count_greater", (1, 2))) == "yes"
    assert run(Node("count_less", (1, 2))) == "no"
    assert run(Node("count_equal", (1, 2))) == "no"
    assert run(Node("filter", (0,), ("gray", "cube")), Node("query", (3,), (), "material")) == "metal"
    assert (
        run(Node("filter", (0,), ("yellow",)), Node("relate", (3,), ("behind",)), Node("count", (4,))) == "3"
    )
    assert (
        run(
            Node("filter", (0,), ("cylinder",)),
            Node("relate_attribute_equal", (3,), (), "size"),
            Node("count", (4,)),
        )
        == "2"
    )
    assert (
        run(
            Node("filter", (0,), ("sphere",)),
            Node("filter", (0,), ("yellow",)),
            Node("query_attribute_equal", (3, 4), (), "shape"),
        )
        == "no"
    )
    with pytest.raises(Invalid):
        run(Node("query", (2,), (), "color"))  # two cubes
    with pytest.raises(Invalid):
        run(Node("relate", (1,), ("left",)), Node("count", (3,)))  # three metal things


def test_scene_facts(tiny_facts):
    facts = tiny_facts[0]
    assert facts.n == 3
    assert facts.attributes[1] == {"color": "blue", "material": "rubber", "shape": "sphere", "size": "small"}
    assert facts.relations["left"] == [[], [0], [0, 1]]


# --------------------------------------------------------------------------------------------- property
ATTRS = ("color", "material", "shape", "size")


def _set_expr(draw, domain, depth: int) -> tuple:
    """A random expression of type ObjectSet."""
    if depth <= 0:
        return SCENE
    kind = draw(
        st.sampled_from(["scene", "filter", "filter", "filter", "relate", "same", "union", "intersect"])
    )
    if kind == "scene":
        return SCENE
    if kind == "filter":
        a = draw(st.sampled_from(ATTRS))
        return f(a, _set_expr(draw, domain, depth - 1), draw(st.sampled_from(domain.attribute(a).concepts)))
    if kind == "relate":
        return (
            "relate",
            u(_set_expr(draw, domain, depth - 1)),
            draw(st.sampled_from(domain.relation_concepts)),
        )
    if kind == "same":
        return (f"same_{draw(st.sampled_from(ATTRS))}", u(_set_expr(draw, domain, depth - 1)))
    return (kind, _set_expr(draw, domain, depth - 1), _set_expr(draw, domain, depth - 1))


def _answer_expr(draw, domain) -> tuple:
    def s() -> tuple:
        return _set_expr(draw, domain, draw(st.integers(0, 4)))

    kind = draw(st.sampled_from(["count", "exist", "query", "equal", "compare"]))
    if kind in ("count", "exist"):
        return (kind, s())
    a = draw(st.sampled_from(ATTRS))
    if kind == "query":
        return (f"query_{a}", u(s()))
    if kind == "equal":
        return (f"equal_{a}", (f"query_{a}", u(s())), (f"query_{a}", u(s())))
    op = draw(st.sampled_from(["equal_integer", "less_than", "greater_than"]))
    return (op, ("count", s()), ("count", s()))


@st.composite
def scenes_and_programs(draw, domain, make_facts, build):
    n = draw(st.integers(1, 6))
    # A few values per attribute so that filters often pick one object.
    attrs = [{a: draw(st.sampled_from(domain.attribute(a).concepts[:3])) for a in ATTRS} for _ in range(n)]
    coords = [
        (draw(st.floats(-3, 3, allow_nan=False)), draw(st.floats(-3, 3, allow_nan=False)), 0.0)
        for _ in range(n)
    ]
    expr = _answer_expr(draw, domain)
    return make_facts(domain, attrs, coords), build(expr)


def _answer(fn, *args) -> str:
    try:
        return fn(*args)
    except Invalid:
        return "<invalid>"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_translation_preserves_answers(domain, make_facts, build, data):
    facts, raw = data.draw(scenes_and_programs(domain, make_facts, build))
    assert isinstance(facts, SceneFacts) and isinstance(raw, ClevrProgram)
    raw.validate(domain)
    prog = translate(raw, domain)
    prog.validate(domain)
    expected = _answer(execute_clevr, raw, facts, domain)
    event("invalid" if expected == "<invalid>" else f"valid {prog.final_op}")
    assert _answer(execute_nscl, prog, facts, domain) == expected
    # canonical form and JSON round trip answer the same
    assert _answer(execute_nscl, prog.canonical(), facts, domain) == expected
    assert Program.from_json(prog.to_json()) == prog
    assert ClevrProgram.from_json(raw.to_json()) == raw
    assert len(prog) <= len(raw)


def test_random_scene_relationships(domain, random_scene):
    import random

    from nscl.data import parse_scene

    rng = random.Random(7)
    for k in range(20):
        d = random_scene(domain, rng, image_index=k)
        scene = parse_scene(d, domain)
        rel = scene.relations
        n = len(scene.objects)
        for i in range(n):
            for j in range(n):
                assert (j in rel["left"][i]) == (i in rel["right"][j])
                assert (j in rel["front"][i]) == (i in rel["behind"][j])
                assert not (j in rel["left"][i] and j in rel["right"][i])
                x = d["objects"][j]["3d_coords"][0] - d["objects"][i]["3d_coords"][0]
                y = d["objects"][j]["3d_coords"][1] - d["objects"][i]["3d_coords"][1]
                assert (j in rel["right"][i]) == (x * 0.6563 + y * 0.7545 > 0.2)
