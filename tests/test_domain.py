"""The domain: built-in CLEVR, derived functions, custom domains, serialisation, and CLEVR's metadata."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from nscl.data import parse_question, parse_scene, read_scenes
from nscl.domain import (
    BOOL,
    INTEGER,
    OBJECT,
    OBJECT_SET,
    Domain,
    builtin_domain,
    load_domain,
)
from nscl.errors import DataError, ProgramError
from nscl.program import translate
from nscl.symbolic import SceneFacts, execute_clevr, execute_nscl

METADATA = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "metadata.json"


# --------------------------------------------------------------------------------------------- built-in
def test_builtin_clevr_attributes(domain):
    assert domain.name == "clevr"
    assert domain.attribute_names == ("color", "material", "shape", "size")
    assert domain.attribute("color").concepts == (
        "gray",
        "red",
        "blue",
        "green",
        "brown",
        "purple",
        "cyan",
        "yellow",
    )
    assert domain.attribute("material").concepts == ("rubber", "metal")
    assert domain.attribute("shape").concepts == ("cube", "sphere", "cylinder")
    assert domain.attribute("size").concepts == ("small", "large")
    assert domain.relation_concepts == ("left", "right", "front", "behind")
    assert len(domain.object_concepts) == 15
    assert domain.max_count == 10
    assert domain.relation_field == "relationships"
    assert load_domain(None) == domain
    assert load_domain("clevr") == domain


def test_concept_lookups(domain):
    assert domain.attribute_of_concept("red").name == "color"
    assert domain.attribute_of_concept("left").name == "spatial_relation"
    assert domain.attribute_of_concept("pink") is None
    assert domain.is_object_concept("metal") and not domain.is_object_concept("left")
    assert domain.is_relation_concept("behind") and not domain.is_relation_concept("cube")
    assert domain.attribute_of_type("Shape").name == "shape"
    with pytest.raises(ValueError, match="texture"):
        domain.attribute("texture")
    with pytest.raises(ValueError, match="Texture"):
        domain.attribute_of_type("Texture")


def test_answers(domain):
    assert domain.answer_words[:2] == ("yes", "no")
    assert domain.answer_words[2:13] == tuple(str(i) for i in range(11))
    assert domain.answer_words[13:] == domain.object_concepts
    assert domain.answer_type("yes") == BOOL
    assert domain.answer_type("7") == INTEGER
    assert domain.answer_type("cyan") == "Color"
    assert domain.answer_type("rubber") == "Material"
    for bad in ("left", "pink", "maybe"):
        with pytest.raises(ValueError):
            domain.answer_type(bad)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("yes", "yes"), ("no", "no"), (True, "yes"), (False, "no"), ("3", "3"), (3, "3"), (0, "0")]
    + [(" Yes ", "yes"), ("true", "yes"), ("False", "no"), ("Red", "red")],
)
def test_normalize_answer(domain, raw, expected):
    assert domain.normalize_answer(raw) == expected


def test_normalize_answer_rejects_other_types(domain):
    for bad in (None, 1.5, ["yes"]):
        with pytest.raises(ValueError):
            domain.normalize_answer(bad)


def test_derived_clevr_functions(domain):
    f = domain.clevr_functions
    for a, t in (("color", "Color"), ("material", "Material"), ("shape", "Shape"), ("size", "Size")):
        assert f[f"filter_{a}"].inputs == (OBJECT_SET,)
        assert f[f"filter_{a}"].params == (t,)
        assert f[f"filter_{a}"].output == OBJECT_SET
        assert f[f"filter_{a}"].attribute == a
        assert f[f"query_{a}"].inputs == (OBJECT,) and f[f"query_{a}"].output == t
        assert f[f"same_{a}"].inputs == (OBJECT,) and f[f"same_{a}"].output == OBJECT_SET
        assert f[f"equal_{a}"].inputs == (t, t) and f[f"equal_{a}"].output == BOOL
        for kind in ("filter", "query", "same", "equal"):
            assert not f[f"{kind}_{a}"].template_only
    assert f["equal_material"].attribute == "material"
    assert f["same_shape"].params == ()
    assert f["relate"].inputs == (OBJECT,) and f["relate"].params == ("Relation",)
    assert f["unique"].inputs == (OBJECT_SET,) and f["unique"].output == OBJECT
    assert f["equal_object"].inputs == (OBJECT, OBJECT)
    for name in ("equal_integer", "less_than", "greater_than"):
        assert f[name].inputs == (INTEGER, INTEGER) and f[name].output == BOOL
    assert f["count"].output == INTEGER and f["exist"].output == BOOL
    assert "filter_texture" not in f


def test_template_only_composites(domain):
    f = domain.clevr_functions
    composites = {
        "filter": OBJECT_SET,
        "filter_unique": OBJECT,
        "filter_count": INTEGER,
        "filter_exist": BOOL,
    }
    for name, out in composites.items():
        assert f[name].template_only and f[name].output == out
        assert set(f[name].params) == {"Color", "Material", "Shape", "Size"}
        rel = f["relate_" + name]
        assert rel.template_only and rel.output == out and rel.inputs == (OBJECT,)
        assert set(rel.params) == {"Relation", "Color", "Material", "Shape", "Size"}
    assert sum(s.template_only for s in f.values()) == 8


def test_nscl_ops(domain):
    ops = domain.nscl_ops
    assert set(ops) == {
        "scene",
        "filter",
        "relate",
        "relate_attribute_equal",
        "intersect",
        "union",
        "query",
        "exist",
        "count",
        "query_attribute_equal",
        "count_equal",
        "count_less",
        "count_greater",
    }
    assert ops["count_less"].inputs == (OBJECT_SET, OBJECT_SET)
    assert ops["query_attribute_equal"].inputs == (OBJECT, OBJECT)


# --------------------------------------------------------------------------------------------- serialisation
def test_to_dict_from_dict_round_trip(domain):
    d = domain.to_dict()
    assert d["attributes"]["shape"]["wildcard"] == "thing"
    assert "wildcard" not in d["attributes"]["color"]
    again = Domain.from_dict(json.loads(json.dumps(d)))
    assert again == domain
    assert again.clevr_functions.keys() == domain.clevr_functions.keys()
    assert again.attribute("shape").wildcard == "thing"


def test_load_from_file(tmp_path, domain):
    p = tmp_path / "dom.json"
    p.write_text(json.dumps(domain.to_dict()), encoding="utf-8")
    assert Domain.load(p) == domain
    assert load_domain(str(p)) == domain


def test_unknown_builtin_domain_is_a_data_error():
    with pytest.raises(DataError, match="nosuch"):
        load_domain("nosuch")
    with pytest.raises(DataError, match="nosuch"):
        builtin_domain("nosuch")


def test_duplicate_concept_across_attributes_rejected(domain):
    d = domain.to_dict()
    d["attributes"]["material"]["concepts"].append("red")
    with pytest.raises(DataError, match=r"red.*color.*material"):
        Domain.from_dict(d, "dup.json")
    d = domain.to_dict()
    d["relations"]["spatial_relation"]["concepts"].append("cube")
    with pytest.raises(DataError, match="cube"):
        Domain.from_dict(d, "dup.json")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("attributes"),
        lambda d: d.pop("name"),
        lambda d: d["attributes"]["color"].pop("concepts"),
        lambda d: d["attributes"]["color"].update(concepts=[]),
        lambda d: d["attributes"]["color"].update(concepts="red"),
        lambda d: d["attributes"]["size"].update(type="Color"),
        lambda d: d.update(attributes=["color"]),
        lambda d: d["attributes"].update(integer={"type": "Integer2", "concepts": ["one"]}),
    ],
)
def test_bad_domain_definitions_rejected(domain, mutate):
    d = domain.to_dict()
    mutate(d)
    with pytest.raises(DataError, match="bad.json"):
        Domain.from_dict(d, "bad.json")


def test_malformed_domain_file(tmp_path):
    p = tmp_path / "dom.json"
    p.write_text('{"name": "x",\n "attributes": }', encoding="utf-8")
    with pytest.raises(DataError, match=r"dom\.json:2:\d+"):
        Domain.load(p)


# --------------------------------------------------------------------------------------------- custom domain
@pytest.fixture(scope="module")
def textured(domain) -> Domain:
    """CLEVR plus a ninth colour and a new attribute, defined only by data."""
    d = copy.deepcopy(domain.to_dict())
    d["name"] = "textured"
    d["attributes"]["color"]["concepts"].append("pink")
    d["attributes"]["texture"] = {"type": "Texture", "concepts": ["striped", "plain"]}
    return Domain.from_dict(d, "textured.json")


TEXTURED_SCENE = {
    "image_index": 5,
    "image_filename": "T_5.png",
    "objects": [
        {"color": "pink", "material": "metal", "shape": "cube", "size": "large", "texture": "striped"},
        {"color": "red", "material": "rubber", "shape": "sphere", "size": "small", "texture": "plain"},
        {"color": "pink", "material": "rubber", "shape": "cylinder", "size": "small", "texture": "striped"},
    ],
    "relationships": {
        "left": [[], [0], [0, 1]],
        "right": [[1, 2], [2], []],
        "front": [[], [], []],
        "behind": [[], [], []],
    },
}


def test_custom_domain_derives_functions(textured):
    f = textured.clevr_functions
    assert f["filter_texture"].params == ("Texture",)
    assert f["filter_texture"].attribute == "texture"
    assert f["query_texture"].output == "Texture"
    assert f["same_texture"].output == OBJECT_SET
    assert f["equal_texture"].inputs == ("Texture", "Texture")
    assert "Texture" in f["filter_unique"].params and f["filter_unique"].template_only
    assert "pink" in textured.attribute("color").concepts
    assert textured.answer_type("striped") == "Texture"
    assert textured.answer_type("pink") == "Color"
    assert "plain" in textured.answer_words
    assert Domain.from_dict(textured.to_dict()) == textured


@pytest.mark.parametrize(
    ("expr", "answer"),
    [
        (("count", ("filter_texture", ("scene",), "striped")), "2"),
        (("count", ("filter_color", ("filter_texture", ("scene",), "striped"), "pink")), "2"),
        (("query_texture", ("unique", ("filter_shape", ("scene",), "sphere"))), "plain"),
        (("query_color", ("unique", ("filter_texture", ("scene",), "plain"))), "red"),
        (("count", ("same_texture", ("unique", ("filter_shape", ("scene",), "cube")))), "1"),
        (("exist", ("same_texture", ("unique", ("filter_shape", ("scene",), "sphere")))), "no"),
        (
            (
                "equal_texture",
                ("query_texture", ("unique", ("filter_shape", ("scene",), "cube"))),
                ("query_texture", ("unique", ("filter_shape", ("scene",), "cylinder"))),
            ),
            "yes",
        ),
    ],
)
def test_custom_domain_end_to_end(textured, build, expr, answer):
    scene = parse_scene(TEXTURED_SCENE, textured, "t.json")
    facts = SceneFacts.of(scene)
    raw = build(expr)
    raw.validate(textured)
    assert execute_clevr(raw, facts, textured) == answer
    prog = translate(raw, textured)
    prog.validate(textured)
    assert execute_nscl(prog, facts, textured) == answer


def test_custom_domain_translation_and_parsing(textured, build):
    raw = build(("query_texture", ("unique", ("filter_color", ("filter_size", ("scene",), "large"), "pink"))))
    assert translate(raw, textured).to_str() == "query(texture, filter(scene(), [large, pink]))"
    q = parse_question(
        {"image_index": 5, "question": "?", "answer": "striped", "program": raw.to_json()}, textured
    )
    assert q.answer == "striped"


def test_custom_concepts_unknown_to_clevr(domain, textured, build):
    raw = build(("count", ("filter_texture", ("scene",), "striped")))
    with pytest.raises(ProgramError, match="filter_texture"):
        raw.validate(domain)
    with pytest.raises(ProgramError, match="pink"):
        build(("count", ("filter_color", ("scene",), "pink"))).validate(domain)
    untextured = [{k: v for k, v in o.items() if k != "texture"} for o in TEXTURED_SCENE["objects"]]
    with pytest.raises(DataError, match=r"t\.json: scene 0 .*object 0: missing required key 'texture'"):
        parse_scene({**TEXTURED_SCENE, "objects": untextured}, textured, "t.json")


def test_custom_domain_reads_scene_file(tmp_path, textured):
    p = tmp_path / "scenes.json"
    p.write_text(json.dumps({"scenes": [TEXTURED_SCENE]}), encoding="utf-8")
    (scene,) = read_scenes(p, textured)
    assert scene.objects[0].attributes["texture"] == "striped"
    with pytest.raises(DataError, match="pink"):
        read_scenes(p, builtin_domain())


# --------------------------------------------------------------------------------------------- metadata
def test_functions_match_clevr_metadata(domain):
    if not METADATA.is_file():
        pytest.skip(f"{METADATA} not present")
    meta = json.loads(METADATA.read_text(encoding="utf-8"))
    fns = domain.clevr_functions
    checked = 0
    for m in meta["functions"]:
        name = m["name"]
        assert name in fns, name
        sig = fns[name]
        if m.get("template_only"):
            assert sig.template_only, name
            assert sig.inputs == tuple(m["inputs"]), name
            assert sig.output == m["output"], name
            assert set(sig.params) == set(m.get("side_inputs", [])), name
            continue
        assert not sig.template_only, name
        assert len(sig.inputs) == len(m["inputs"]), name
        assert sig.inputs == tuple(m["inputs"]), name
        assert sig.params == tuple(m.get("side_inputs", [])), name
        assert sig.output == m["output"], name
        checked += 1
    assert checked == 27
    # and nothing extra beyond CLEVR's functions
    assert set(fns) == {m["name"] for m in meta["functions"]}
    # the concept vocabularies match CLEVR's types
    for t, values in meta["types"].items():
        if values is not None:
            assert set(domain.attribute_of_type(t).concepts) == set(values), t
