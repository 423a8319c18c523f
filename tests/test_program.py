"""Programs: parsing every published CLEVR form, validation errors, NS-CL programs, and the translation
table of NSCL-REFERENCE section 6 row by row."""

from __future__ import annotations

import json

import pytest

from nscl.errors import ProgramError
from nscl.program import ClevrNode, ClevrProgram, Node, Program, clevr_answer_op, iter_concepts, translate

SCENE = ("scene",)


def f(attr: str, x: tuple, value: str) -> tuple:
    return (f"filter_{attr}", x, value)


def u(x: tuple) -> tuple:
    return ("unique", x)


LARGE_METAL_SPHERE = u(f("shape", f("material", f("size", SCENE, "large"), "metal"), "sphere"))


# --------------------------------------------------------------------------------------------- parsing
RELEASE_FORM = [
    {"inputs": [], "function": "scene", "value_inputs": []},
    {"inputs": [0], "function": "filter_size", "value_inputs": ["large"]},
    {"inputs": [1], "function": "filter_material", "value_inputs": ["metal"]},
    {"inputs": [2], "function": "filter_shape", "value_inputs": ["sphere"]},
    {"inputs": [3], "function": "unique", "value_inputs": []},
    {"inputs": [4], "function": "query_color", "value_inputs": []},
]
GENERATOR_FORM = [
    {"inputs": [], "type": "scene", "_output": [0, 1, 2]},
    {"inputs": [0], "type": "filter_size", "side_inputs": ["large"], "_output": [0]},
    {"inputs": [1], "type": "filter_material", "side_inputs": ["metal"]},
    {"inputs": [2], "type": "filter_shape", "side_inputs": ["sphere"]},
    {"inputs": [3], "type": "unique"},
    {"inputs": [4], "type": "query_color"},
]
MIXED_FORM = [
    {"function": "scene"},
    {"inputs": [0], "type": "filter_size", "value_inputs": ["large"]},
    {"inputs": [1], "function": "filter_material", "side_inputs": ["metal"]},
    {"inputs": [2], "type": "filter_shape", "value_inputs": ["sphere"]},
    {"inputs": [3], "function": "unique", "side_inputs": []},
    {"inputs": [4], "type": "query_color", "value_inputs": []},
]


@pytest.mark.parametrize("form", [RELEASE_FORM, GENERATOR_FORM, MIXED_FORM])
def test_parse_all_forms(domain, build, form):
    p = ClevrProgram.from_json(form)
    assert p == build(("query_color", LARGE_METAL_SPHERE))
    assert p.nodes[1] == ClevrNode("filter_size", (0,), ("large",))
    assert p.nodes[0] == ClevrNode("scene", (), ())
    assert p.validate(domain) == ["ObjectSet"] * 4 + ["Object", "Color"]


def test_raw_json_round_trip_and_length():
    p = ClevrProgram.from_json(GENERATOR_FORM)
    assert p.to_json() == RELEASE_FORM
    assert ClevrProgram.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert len(p) == 6


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"function": "scene"}, "must be a list of nodes"),
        ([["scene"]], "node 0: a node must be an object"),
        ([{"inputs": []}], "node 0: missing 'function'"),
        ([{"function": 3}], "node 0: missing 'function'"),
        ([{"function": "scene"}, {"function": "count", "inputs": "0"}], r"node 1 \(count\): 'inputs'"),
        ([{"function": "scene"}, {"function": "count", "inputs": [True]}], r"node 1 \(count\): 'inputs'"),
        ([{"function": "scene"}, {"function": "count", "inputs": [0.0]}], r"node 1 \(count\): 'inputs'"),
        (
            [{"function": "scene"}, {"function": "filter_color", "inputs": [0], "value_inputs": "red"}],
            r"node 1 \(filter_color\): 'value_inputs'",
        ),
        (
            [{"function": "scene"}, {"function": "filter_color", "inputs": [0], "value_inputs": [1]}],
            r"node 1 \(filter_color\): 'value_inputs'",
        ),
    ],
)
def test_parse_errors(data, message):
    with pytest.raises(ProgramError, match=message):
        ClevrProgram.from_json(data, where="q.json: question 4")
    with pytest.raises(ProgramError, match=r"^q\.json: question 4: "):
        ClevrProgram.from_json(data, where="q.json: question 4")


# --------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([], "empty program"),
        (
            [{"function": "scene"}, {"function": "filter_colour", "inputs": [0], "value_inputs": ["red"]}],
            "node 1: unknown function 'filter_colour'",
        ),
        (
            [{"function": "scene"}, {"function": "filter_unique", "inputs": [0], "value_inputs": ["red"]}],
            "node 1: unknown function 'filter_unique'",
        ),
        (
            [{"function": "scene"}, {"function": "count", "inputs": [5]}],
            r"node 1 \(count\): input 0 refers to node 5, which is out of range",
        ),
        (
            [{"function": "scene"}, {"function": "count", "inputs": [-1]}],
            r"node 1 \(count\): input 0 refers to node -1",
        ),
        (
            [{"function": "scene"}, {"function": "count", "inputs": [1]}],
            r"node 1 \(count\): input 0 refers to node 1, .*not earlier",
        ),
        (
            [{"function": "scene"}, {"function": "query_color", "inputs": [0]}],
            r"node 1 \(query_color\): input 0 must be Object, but node 0 gives ObjectSet",
        ),
        (
            [{"function": "scene"}, {"function": "relate", "inputs": [0], "value_inputs": ["left"]}],
            r"node 1 \(relate\): input 0 must be Object, but node 0 gives ObjectSet",
        ),
        (
            [{"function": "scene"}, {"function": "same_color", "inputs": [0]}],
            r"node 1 \(same_color\): input 0 must be Object",
        ),
        (
            [
                {"function": "scene"},
                {"function": "unique", "inputs": [0]},
                {"function": "count", "inputs": [1]},
            ],
            r"node 2 \(count\): input 0 must be ObjectSet, but node 1 gives Object",
        ),
        (
            [
                {"function": "scene"},
                {"function": "unique", "inputs": [0]},
                {"function": "query_color", "inputs": [1]},
                {"function": "query_shape", "inputs": [1]},
                {"function": "equal_color", "inputs": [2, 3]},
            ],
            r"node 4 \(equal_color\): input 1 must be Color, but node 3 gives Shape",
        ),
        (
            [{"function": "scene"}, {"function": "union", "inputs": [0]}],
            r"node 1 \(union\): expects 2 input\(s\), got 1",
        ),
        (
            [{"function": "scene"}, {"function": "filter_color", "inputs": [0], "value_inputs": ["pink"]}],
            r"node 1 \(filter_color\): unknown concept 'pink' for type Color",
        ),
        (
            [{"function": "scene"}, {"function": "filter_color", "inputs": [0], "value_inputs": ["cube"]}],
            r"node 1 \(filter_color\): unknown concept 'cube'",
        ),
        (
            [
                {"function": "scene"},
                {"function": "unique", "inputs": [0]},
                {"function": "relate", "inputs": [1], "value_inputs": ["above"]},
            ],
            r"node 2 \(relate\): unknown concept 'above' for type Relation",
        ),
        (
            [{"function": "scene"}, {"function": "filter_color", "inputs": [0]}],
            r"node 1 \(filter_color\): expects 1 value input\(s\), got 0",
        ),
        (
            [
                {"function": "scene"},
                {"function": "filter_color", "inputs": [0], "value_inputs": ["red", "blue"]},
            ],
            r"node 1 \(filter_color\): expects 1 value input\(s\), got 2",
        ),
        (
            [{"function": "scene", "value_inputs": ["red"]}],
            r"node 0 \(scene\): expects 0 value input\(s\), got 1",
        ),
    ],
)
def test_validation_errors(domain, nodes, message):
    p = ClevrProgram.from_json(nodes)
    with pytest.raises(ProgramError, match=message):
        p.validate(domain, where="questions.json: question 3: program")
    with pytest.raises(ProgramError, match=r"^questions\.json: question 3: program: "):
        p.validate(domain, where="questions.json: question 3: program")
    if nodes:
        with pytest.raises(ProgramError, match=message):
            translate(p, domain)


# --------------------------------------------------------------------------------------------- translation
def tr(domain, build, expr) -> Program:
    prog = translate(build(expr), domain)
    prog.validate(domain)
    return prog


def test_consecutive_filters_merge_unique_dropped(domain, build):
    raw = build(("query_color", LARGE_METAL_SPHERE))
    prog = tr(domain, build, ("query_color", LARGE_METAL_SPHERE))
    assert str(prog) == "query(color, filter(scene(), [large, metal, sphere]))"
    assert prog.to_str() == "query(color, filter(scene(), [large, metal, sphere]))"
    assert prog.nodes == (
        Node("scene"),
        Node("filter", (0,), ("large", "metal", "sphere")),
        Node("query", (1,), (), "color"),
    )
    assert "unique" not in [n.op for n in prog.nodes]
    assert len(raw) == 6 and len(prog) == 3
    assert prog.final_op == "query"
    assert prog.output_type(domain) == "Color"
    assert list(iter_concepts(prog)) == ["large", "metal", "sphere"]


def test_filter_not_merged_across_relate_or_shared_input(domain, build):
    blue = u(f("color", SCENE, "blue"))
    prog = tr(domain, build, ("exist", f("material", f("size", ("relate", blue, "right"), "small"), "metal")))
    assert str(prog) == "exist(filter(relate(filter(scene(), [blue]), right), [small, metal]))"
    # A filter consumed twice is not merged into either consumer.
    raw = ClevrProgram.from_json(
        [
            {"function": "scene"},
            {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]},
            {"function": "filter_shape", "inputs": [1], "value_inputs": ["cube"]},
            {"function": "filter_shape", "inputs": [1], "value_inputs": ["sphere"]},
            {"function": "union", "inputs": [2, 3]},
            {"function": "count", "inputs": [4]},
        ]
    )
    prog = translate(raw, domain)
    assert str(prog) == (
        "count(union(filter(filter(scene(), [red]), [cube]), filter(filter(scene(), [red]), [sphere])))"
    )
    assert [n.op for n in prog.nodes].count("filter") == 3


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (("count", f("color", SCENE, "red")), "count(filter(scene(), [red]))"),
        (("count", SCENE), "count(scene())"),
        (("exist", f("shape", SCENE, "cube")), "exist(filter(scene(), [cube]))"),
        (
            ("exist", ("relate", u(f("color", SCENE, "blue")), "left")),
            "exist(relate(filter(scene(), [blue]), left))",
        ),
        (
            ("count", ("relate", u(f("shape", SCENE, "cube")), "front")),
            "count(relate(filter(scene(), [cube]), front))",
        ),
        (
            ("query_size", u(("relate", u(f("color", SCENE, "red")), "behind"))),
            "query(size, relate(filter(scene(), [red]), behind))",
        ),
        (
            ("query_material", u(("same_color", u(f("shape", SCENE, "cube"))))),
            "query(material, relate_attribute_equal(color, filter(scene(), [cube])))",
        ),
        (
            ("count", ("same_shape", u(f("color", SCENE, "red")))),
            "count(relate_attribute_equal(shape, filter(scene(), [red])))",
        ),
        (
            ("exist", ("same_size", u(f("color", SCENE, "red")))),
            "exist(relate_attribute_equal(size, filter(scene(), [red])))",
        ),
        (
            ("count", f("color", ("same_material", u(f("color", SCENE, "red"))), "blue")),
            "count(filter(relate_attribute_equal(material, filter(scene(), [red])), [blue]))",
        ),
        (
            ("count", ("union", f("shape", SCENE, "cube"), f("shape", SCENE, "cylinder"))),
            "count(union(filter(scene(), [cube]), filter(scene(), [cylinder])))",
        ),
        (
            ("exist", ("intersect", f("color", SCENE, "red"), f("size", SCENE, "small"))),
            "exist(intersect(filter(scene(), [red]), filter(scene(), [small])))",
        ),
        (
            ("query_shape", u(f("material", f("color", SCENE, "blue"), "rubber"))),
            "query(shape, filter(scene(), [blue, rubber]))",
        ),
        (
            (
                "equal_color",
                ("query_color", u(f("shape", f("size", SCENE, "small"), "sphere"))),
                ("query_color", u(f("shape", f("size", SCENE, "small"), "cube"))),
            ),
            "query_attribute_equal(color, filter(scene(), [small, sphere]), filter(scene(), [small, cube]))",
        ),
        (
            (
                "equal_shape",
                ("query_shape", u(f("color", SCENE, "red"))),
                ("query_shape", u(("relate", u(f("color", SCENE, "red")), "left"))),
            ),
            "query_attribute_equal(shape, filter(scene(), [red]), relate(filter(scene(), [red]), left))",
        ),
        (
            (
                "equal_size",
                ("query_size", u(f("color", SCENE, "red"))),
                ("query_size", u(f("color", SCENE, "blue"))),
            ),
            "query_attribute_equal(size, filter(scene(), [red]), filter(scene(), [blue]))",
        ),
        (
            (
                "equal_material",
                ("query_material", u(f("color", SCENE, "red"))),
                ("query_material", u(f("color", SCENE, "blue"))),
            ),
            "query_attribute_equal(material, filter(scene(), [red]), filter(scene(), [blue]))",
        ),
        (
            ("equal_integer", ("count", f("color", SCENE, "red")), ("count", f("shape", SCENE, "cube"))),
            "count_equal(filter(scene(), [red]), filter(scene(), [cube]))",
        ),
        (
            ("less_than", ("count", f("color", SCENE, "red")), ("count", f("shape", SCENE, "cube"))),
            "count_less(filter(scene(), [red]), filter(scene(), [cube]))",
        ),
        (
            (
                "greater_than",
                ("count", f("material", SCENE, "metal")),
                ("count", f("material", SCENE, "rubber")),
            ),
            "count_greater(filter(scene(), [metal]), filter(scene(), [rubber]))",
        ),
    ],
)
def test_translation_table(domain, build, expr, expected):
    prog = tr(domain, build, expr)
    assert str(prog) == expected
    # the answer node is last and every node is used
    used = {j for n in prog.nodes for j in n.inputs}
    assert used == set(range(len(prog) - 1))
    assert all(j < i for i, n in enumerate(prog.nodes) for j in n.inputs)


def test_translation_node_fields(domain, build):
    prog = tr(domain, build, ("query_material", u(("same_color", u(f("shape", SCENE, "cube"))))))
    assert prog.nodes[-2] == Node("relate_attribute_equal", (1,), (), "color")
    assert prog.nodes[-1] == Node("query", (2,), (), "material")
    prog = tr(domain, build, ("exist", ("relate", u(f("color", SCENE, "blue")), "left")))
    assert prog.nodes[-2] == Node("relate", (1,), ("left",), None)
    prog = tr(
        domain,
        build,
        ("less_than", ("count", f("color", SCENE, "red")), ("count", f("shape", SCENE, "cube"))),
    )
    assert prog.nodes[-1].op == "count_less"
    a, b = prog.nodes[-1].inputs
    assert prog.nodes[a].concepts == ("red",) and prog.nodes[b].concepts == ("cube",)


def test_two_scene_nodes_become_one(domain, build):
    prog = tr(domain, build, ("count", ("union", f("shape", SCENE, "cube"), f("shape", SCENE, "cylinder"))))
    assert [n.op for n in prog.nodes].count("scene") == 1
    assert len(prog) == 5


def test_equal_object_is_untranslatable(domain, build):
    raw = build(("equal_object", u(f("color", SCENE, "red")), u(f("shape", SCENE, "cube"))))
    raw.validate(domain)
    with pytest.raises(ProgramError, match="equal_object"):
        translate(raw, domain)


@pytest.mark.parametrize(
    "expr",
    [SCENE, f("color", SCENE, "red"), u(f("color", SCENE, "red")), ("relate", u(SCENE), "left")],
)
def test_program_without_answer_is_untranslatable(domain, build, expr):
    with pytest.raises(ProgramError, match="gives no answer"):
        translate(build(expr), domain, where="q.json: question 1")


@pytest.mark.parametrize(
    ("expr", "op"),
    [
        (("count", SCENE), "count"),
        (("exist", SCENE), "exist"),
        (("query_color", u(SCENE)), "query"),
        (("equal_color", ("query_color", u(SCENE)), ("query_color", u(SCENE))), "query_attribute_equal"),
        (("equal_integer", ("count", SCENE), ("count", SCENE)), "count_equal"),
        (("less_than", ("count", SCENE), ("count", SCENE)), "count_less"),
        (("greater_than", ("count", SCENE), ("count", SCENE)), "count_greater"),
        (("equal_object", u(SCENE), u(SCENE)), "equal_object"),
    ],
)
def test_clevr_answer_op(domain, build, expr, op):
    raw = build(expr)
    assert clevr_answer_op(raw) == op
    if op != "equal_object":
        assert translate(raw, domain).final_op == op


# --------------------------------------------------------------------------------------------- NS-CL programs
def test_nscl_json_round_trip(domain, build):
    prog = tr(
        domain,
        build,
        (
            "equal_color",
            ("query_color", u(("relate", u(f("shape", SCENE, "cube")), "left"))),
            ("query_color", u(("same_size", u(f("color", f("shape", SCENE, "sphere"), "red"))))),
        ),
    )
    data = json.loads(json.dumps(prog.to_json()))
    assert Program.from_json(data) == prog
    assert data[0] == {"op": "scene", "inputs": []}
    assert {"op": "relate", "inputs": [1], "concepts": ["left"]} in data
    assert data[-1]["attribute"] == "color"
    assert "attribute" not in data[0] and "concepts" not in data[0]
    # a single concept may be given as a string
    assert Program.from_json(
        [{"op": "scene"}, {"op": "filter", "inputs": [0], "concepts": "red"}]
    ) == Program((Node("scene"), Node("filter", (0,), ("red",))))


@pytest.mark.parametrize(
    "data",
    [
        {"op": "scene"},
        [{"inputs": []}],
        [{"op": "scene"}, {"op": "count", "inputs": 0}],
        [{"op": "scene"}, {"op": "count", "inputs": ["0"]}],
        [{"op": "scene"}, {"op": "filter", "inputs": [0], "concepts": [1]}],
        [{"op": "scene"}, {"op": "query", "inputs": [0], "attribute": ["color"]}],
    ],
)
def test_nscl_parse_errors(data):
    with pytest.raises(ProgramError, match="prog.json"):
        Program.from_json(data, where="prog.json")


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ((), "empty program"),
        ((Node("scene"), Node("filterr", (0,), ("red",))), "node 1: unknown operation 'filterr'"),
        ((Node("scene"), Node("filter", (0,))), r"node 1 \(filter\): needs at least one concept"),
        ((Node("scene"), Node("filter", (0,), ("pink",))), r"node 1 \(filter\): unknown concept 'pink'"),
        ((Node("scene"), Node("filter", (0,), ("left",))), r"node 1 \(filter\): unknown concept 'left'"),
        ((Node("scene"), Node("relate", (0,), ("red",))), r"node 1 \(relate\): unknown relation concept"),
        ((Node("scene"), Node("relate", (0,))), r"node 1 \(relate\): unknown relation concept"),
        ((Node("scene"), Node("count", (0,), ("red",))), r"node 1 \(count\): takes no concepts"),
        ((Node("scene"), Node("query", (0,), (), "colour")), r"node 1 \(query\): unknown attribute 'colour'"),
        ((Node("scene"), Node("query", (0,))), r"node 1 \(query\): unknown attribute None"),
        ((Node("scene"), Node("count", (0,), (), "color")), r"node 1 \(count\): takes no attribute"),
        ((Node("scene"), Node("count", (3,))), r"node 1 \(count\): input 0 refers to node 3"),
        ((Node("scene"), Node("union", (0,))), r"node 1 \(union\): expects 2 input"),
        (
            (Node("scene"), Node("count", (0,)), Node("exist", (1,))),
            r"node 2 \(exist\): input 0 must be ObjectSet, but node 1 gives Integer",
        ),
    ],
)
def test_nscl_validation_errors(domain, nodes, message):
    with pytest.raises(ProgramError, match=message):
        Program(nodes).validate(domain)


def test_nscl_object_slots_take_sets(domain):
    p = Program((Node("scene"), Node("relate", (0,), ("left",)), Node("query", (1,), (), "shape")))
    assert p.validate(domain) == ["ObjectSet", "ObjectSet", "Shape"]


# --------------------------------------------------------------------------------------------- canonical
def _filters(*concept_lists: tuple[str, ...], op: str = "union") -> Program:
    nodes = [Node("scene")]
    for cs in concept_lists:
        nodes.append(Node("filter", (0,), cs))
    nodes.append(Node(op, tuple(range(1, len(concept_lists) + 1))))
    nodes.append(Node("count", (len(nodes) - 1,)))
    return Program(tuple(nodes))


def test_canonical_commutative_inputs_and_sorted_concepts():
    a = _filters(("red",), ("cube",))
    b = _filters(("cube",), ("red",))
    assert a != b
    assert a.canonical() == b.canonical()
    assert str(a.canonical()) == "count(union(filter(scene(), [cube]), filter(scene(), [red])))"
    c = _filters(("red", "large"), ("metal",), op="intersect")
    d = _filters(("metal",), ("large", "red"), op="intersect")
    assert c.canonical() == d.canonical()
    assert str(c.canonical()) == "count(intersect(filter(scene(), [large, red]), filter(scene(), [metal])))"
    # The order inside each input is irrelevant to the order of the inputs.
    e = _filters(("red", "cube"), ("metal",))
    g = _filters(("cube", "red"), ("metal",))
    assert e.canonical() == g.canonical()
    # union and intersect are different ops; count_less is not commutative
    assert (
        _filters(("red",), ("cube",)).canonical() != _filters(("red",), ("cube",), op="intersect").canonical()
    )
    lt = Program((Node("scene"), Node("filter", (0,), ("red",)), Node("filter", (0,), ("cube",))))
    less_ab = Program(lt.nodes + (Node("count_less", (1, 2)),))
    less_ba = Program(lt.nodes + (Node("count_less", (2, 1)),))
    assert less_ab.canonical() != less_ba.canonical()
    eq_ab = Program(lt.nodes + (Node("count_equal", (1, 2)),))
    eq_ba = Program(lt.nodes + (Node("count_equal", (2, 1)),))
    assert eq_ab.canonical() == eq_ba.canonical()


def test_canonical_is_idempotent_and_drops_unused_nodes():
    padded = Program(
        (
            Node("scene"),
            Node("filter", (0,), ("red",)),  # unused
            Node("filter", (0,), ("sphere", "metal", "large")),
            Node("query", (2,), (), "color"),
        )
    )
    canon = padded.canonical()
    assert str(canon) == "query(color, filter(scene(), [large, metal, sphere]))"
    assert len(canon) == 3
    assert canon.canonical() == canon
