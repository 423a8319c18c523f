"""Tests of ``nscl.generate.questions``: CLEVR's question engine on random scenes.

Scenes are random :class:`SceneFacts`: attributes drawn from the domain, ground positions in [-3, 3]^2 and
relations computed as CLEVR does (CLEVR-FACTS section 1). The reference CLEVR templates, when present at
``<root>/../shared/clevr/templates``, are used for the ``--templates DIR`` path (skipped otherwise).
"""

from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FAMILY_RANGES
from nscl.domain import Domain, builtin_domain
from nscl.errors import DataError
from nscl.generate.questions import GeneratedQuestion, QuestionEngine
from nscl.generate.template_files import CLEVR_FILE_ORDER, Template, load_synonyms, load_templates
from nscl.program import ClevrNode, ClevrProgram, translate
from nscl.symbolic import Invalid, SceneFacts, execute_clevr, execute_clevr_outputs, execute_nscl

CLEVR_DIR = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "templates"

COMPOSITES = {p + "filter" + s for p in ("", "relate_") for s in ("", "_unique", "_count", "_exist")}

# CLEVR's constant ground-plane directions and relation threshold.
RIGHT = np.array([0.6563, 0.7545])
BEHIND = np.array([-0.7545, 0.6563])
DIRECTIONS = {"right": RIGHT, "left": -RIGHT, "behind": BEHIND, "front": -BEHIND}
EPS = 0.2


def random_facts(domain: Domain, rng: np.random.Generator, n: int) -> SceneFacts:
    """A random scene: attributes uniform over the domain, positions uniform in [-3, 3]^2, CLEVR relations."""
    attributes = tuple(
        {a.name: a.concepts[int(rng.integers(len(a.concepts)))] for a in domain.attributes} for _ in range(n)
    )
    pos = rng.uniform(-3.0, 3.0, size=(n, 2))
    relations = {
        rel: [[j for j in range(n) if j != i and float((pos[j] - pos[i]) @ d) > EPS] for i in range(n)]
        for rel, d in DIRECTIONS.items()
    }
    return SceneFacts(attributes, relations)


def run(
    engine: QuestionEngine, domain: Domain, n_scenes: int, seed: int, sizes: tuple[int, int] = (3, 10)
) -> list[tuple[SceneFacts, list[GeneratedQuestion]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_scenes):
        facts = random_facts(domain, rng, int(rng.integers(sizes[0], sizes[1] + 1)))
        out.append((facts, engine.generate(facts, rng)))
    return out


@pytest.fixture(scope="module")
def domain() -> Domain:
    return builtin_domain()


@pytest.fixture(scope="module")
def templates() -> list[Template]:
    return load_templates()


@pytest.fixture(scope="module")
def synonyms() -> dict[str, list[str]]:
    return load_synonyms()


@pytest.fixture(scope="module")
def generated(domain, templates, synonyms):
    """300 scenes of 3-10 objects with our templates; counts never reset (for the balance checks)."""
    engine = QuestionEngine(domain, templates, synonyms, reset_every=10_000)
    return engine, run(engine, domain, 300, seed=2024)


def all_questions(generated):
    return [(facts, q) for facts, qs in generated[1] for q in qs]


# --------------------------------------------------------------------------------------------- loading
def test_packaged_templates_numbered_like_clevr(templates):
    assert len(templates) == 90
    assert [t.family for t in templates] == list(range(90))
    for t in templates:
        assert t.family in FAMILY_RANGES[t.filename]
        assert t.index_in_file == t.family - FAMILY_RANGES[t.filename].start
        assert t.text and t.nodes and t.params is not None


def test_packaged_synonyms(synonyms):
    assert synonyms and all(isinstance(v, list) and v for v in synonyms.values())
    assert "thing" in synonyms


def _template(text: str = "How many <Z> <C> <M> <S>s are there?") -> dict:
    return {
        "text": [text],
        "nodes": [
            {"inputs": [], "type": "scene"},
            {"inputs": [0], "type": "filter_count", "side_inputs": ["<Z>", "<C>", "<M>", "<S>"]},
        ],
        "params": [
            {"type": "Size", "name": "<Z>"},
            {"type": "Color", "name": "<C>"},
            {"type": "Material", "name": "<M>"},
            {"type": "Shape", "name": "<S>"},
        ],
        "constraints": [],
    }


def test_load_order_and_numbering(tmp_path):
    for name in ("zz", "zero_hop", "aa", "compare_integer"):
        (tmp_path / f"{name}.json").write_text(json.dumps([_template(), _template()]))
    (tmp_path / "notes.txt").write_text("not a template")
    ts = load_templates(tmp_path)
    assert [(t.filename, t.index_in_file) for t in ts] == [
        (f, i) for f in ("compare_integer.json", "zero_hop.json", "aa.json", "zz.json") for i in (0, 1)
    ]
    assert [t.family for t in ts] == list(range(8))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text": [], "nodes": [], "params": [], "constraints": []}, "text"),
        ({**_template(), "nodes": [{"inputs": [3], "type": "scene"}]}, "inputs"),
        ({**_template(), "constraints": [{"type": "NULL", "params": ["<X>"]}]}, "constraint 0"),
        ({**_template(), "constraints": [{"type": "SAME", "params": []}]}, "constraint 0"),
        (
            {**_template(), "nodes": [{"inputs": [], "type": "scene", "side_inputs": ["<Q>"]}]},
            "side_inputs",
        ),
    ],
)
def test_malformed_template_names_file_and_index(tmp_path, bad, message):
    (tmp_path / "zero_hop.json").write_text(json.dumps([_template(), bad]))
    with pytest.raises(DataError, match=rf"zero_hop\.json: template 1: .*{message}"):
        load_templates(tmp_path)


def test_unreadable_template_file(tmp_path):
    (tmp_path / "one_hop.json").write_text("[{")
    with pytest.raises(DataError, match=r"one_hop\.json"):
        load_templates(tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_templates(tmp_path / "missing")


def test_template_incompatible_with_domain(tmp_path, domain, synonyms):
    t = _template()
    t["nodes"].append({"inputs": [1], "type": "query_weight"})
    (tmp_path / "x.json").write_text(json.dumps([t]))
    with pytest.raises(DataError, match=r"x\.json: template 0: node 2: unknown function 'query_weight'"):
        QuestionEngine(domain, load_templates(tmp_path), synonyms)
    t = _template()
    t["params"][0]["type"] = "Weight"
    (tmp_path / "x.json").write_text(json.dumps([t]))
    with pytest.raises(DataError, match=r"x\.json: template 0: parameter <Z>"):
        QuestionEngine(domain, load_templates(tmp_path), synonyms)


def test_bad_synonyms(tmp_path):
    p = tmp_path / "syn.json"
    p.write_text(json.dumps({"cube": "block"}))
    with pytest.raises(DataError, match="syn.json"):
        load_synonyms(p)


# --------------------------------------------------------------------------------------------- questions
def test_programs_execute_to_their_answers(generated, domain):
    qs = all_questions(generated)
    assert len(qs) == 3000
    for facts, q in qs:
        q.program.validate(domain)  # plain CLEVR functions only, known concepts, well typed
        assert all(not domain.clevr_functions[n.function].template_only for n in q.program.nodes)
        assert execute_clevr(q.program, facts, domain) == q.answer, (q.family, q.text)
        assert execute_nscl(translate(q.program, domain), facts, domain) == q.answer, (q.family, q.text)
        assert q.answer in domain.answer_words
        assert ClevrProgram.from_json(q.program.to_json()) == q.program


def test_ten_questions_per_scene(generated):
    assert [len(qs) for _, qs in generated[1]] == [10] * len(generated[1])
    for _, qs in generated[1]:
        assert len({q.family for q in qs}) == len(qs)  # one instance per template


def test_every_family_reachable(generated):
    families = collections.Counter(q.family for _, q in all_questions(generated))
    assert set(families) == set(range(90))
    # template ordering by usage keeps the families flat (family 0's answer is always "no", so balancing
    # lets it through only once until the counts are reset)
    assert min(c for f, c in families.items() if f != 0) >= 15


def test_answer_balance(generated, domain):
    by_family: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for _, q in all_questions(generated):
        by_family[q.family][q.answer] += 1
    for family, counts in by_family.items():
        total = sum(counts.values())
        if total < 20:
            continue
        top = counts.most_common(1)[0][1] / total
        if set(counts) <= {"yes", "no"}:
            assert top <= 0.65, (family, counts)
        else:
            assert top <= 0.6, (family, counts)
            assert len(counts) >= 2, (family, counts)
    assert by_family[0] == {"no": 1}  # OUT_NEQ forces "no"; balancing then rejects every later instance


def test_balancing_rule_holds_on_counts(generated):
    engine = generated[0]
    for k in range(len(engine.templates)):
        counts = sorted(engine.answer_counts(k).values())
        # an answer is taken only while its count is <= 1.1 x second largest and <= 5 x max(median, 5)
        assert counts[-1] <= 1.1 * counts[-2] + 1
        assert counts[-1] <= 5 * max(counts[len(counts) // 2], 5) + 1


def test_text_is_clean(generated):
    for _, q in all_questions(generated):
        t = q.text
        assert not any(c in t for c in "<>[]"), t
        assert t == " ".join(t.split())
        assert t[0].isupper(), t


def _unset(domain: Domain, type_name: str) -> str:
    a = domain.attribute_of_type(type_name)
    return (a.wildcard or "") if a in domain.attributes else ""


def _template_node_outputs(t: Template, q: GeneratedQuestion, domain: Domain, facts: SceneFacts) -> list:
    """Map each template node to its last program node (checking the program follows the template) and
    return the template nodes' outputs."""
    params = dict(q.params)
    types = {p["name"]: p["type"] for p in t.params}
    fns = [n.function for n in q.program.nodes]
    last: list[int] = []
    pos = 0
    for node in t.nodes:
        kind = node["type"]
        side = node.get("side_inputs", [])
        if kind in COMPOSITES:
            expected = []
            if kind.startswith("relate_"):
                expected.append("relate")
                side = side[1:]
            for p in side:
                if params[p] != _unset(domain, types[p]):
                    expected.append("filter_" + domain.attribute_of_type(types[p]).name)
            suffix = kind.rsplit("filter", 1)[1].lstrip("_")
            if suffix:
                expected.append(suffix)
            assert fns[pos : pos + len(expected)] == expected, (q.family, fns)
            pos += len(expected)
            last.append(pos - 1 if expected else last[node["inputs"][0]])
        else:
            assert fns[pos] == kind, (q.family, fns)
            last.append(pos)
            pos += 1
    assert pos == len(fns)
    outputs = execute_clevr_outputs(q.program, facts, domain)
    return [outputs[i] for i in last]


def test_constraints_hold(generated, domain, templates):
    for facts, q in all_questions(generated):
        t = templates[q.family]
        params = dict(q.params)
        assert set(params) == {p["name"] for p in t.params}
        types = {p["name"]: p["type"] for p in t.params}
        outs = _template_node_outputs(t, q, domain, facts)
        for c in t.constraints:
            if c["type"] == "NULL":
                p = c["params"][0]
                assert params[p] == _unset(domain, types[p]), (q.family, p, params[p])
            elif c["type"] == "OUT_NEQ":
                i, j = c["params"]
                assert outs[i] != outs[j], (q.family, q.text)


def test_single_and_questions_are_not_degenerate(generated, domain):
    """Templates with a raw relate node: replacing any relate by scene must change the answer."""
    checked = 0
    for facts, q in all_questions(generated):
        if q.template_filename != "single_and.json":
            continue
        nodes = q.program.nodes
        for i, n in enumerate(nodes):
            if n.function != "relate":
                continue
            changed = ClevrProgram(nodes[:i] + (ClevrNode("scene"),) + nodes[i + 1 :])
            with contextlib.suppress(Invalid):  # an invalid program has no answer: not degenerate either
                assert execute_clevr(changed, facts, domain) != q.answer, q.text
            checked += 1
    assert checked > 100


def test_other_heuristic(generated, domain, templates):
    """In the two-description families, " other " survives only when no attribute is set to two values."""
    seen = collections.Counter()
    for _, q in all_questions(generated):
        names = {p["name"] for p in templates[q.family].params}
        if names != {"<Z>", "<C>", "<M>", "<S>", "<Z2>", "<C2>", "<M2>", "<S2>"}:
            continue
        params = dict(q.params)
        types = {p["name"]: p["type"] for p in templates[q.family].params}
        differ = any(
            params[f"<{x}>"] != _unset(domain, types[f"<{x}>"])
            and params[f"<{x}2>"] != _unset(domain, types[f"<{x}2>"])
            and params[f"<{x}>"] != params[f"<{x}2>"]
            for x in "ZCMS"
        )
        padded = f" {q.text} "
        if differ:
            assert " other " not in padded and " another " not in padded, q.text
        seen[differ] += 1
    assert seen[True] > 0 and seen[False] > 0


def test_seeded_determinism(domain, templates, synonyms):
    def make(seed: int):
        return run(QuestionEngine(domain, templates, synonyms), domain, 20, seed)

    a, b, c = make(5), make(5), make(6)
    assert [qs for _, qs in a] == [qs for _, qs in b]
    assert [qs for _, qs in a] != [qs for _, qs in c]


def test_wording_does_not_change_which_questions_are_asked(domain, templates, synonyms):
    """Other phrasings and synonyms change only the text: the same seed asks the same programs with the same
    answers (the wording draws from its own random stream)."""
    import dataclasses

    one = [dataclasses.replace(t, text=t.text[:1]) for t in templates]
    plain = {k: [k] for k in synonyms}

    def asked(ts, syn):
        out = run(QuestionEngine(domain, ts, syn), domain, 30, seed=9)
        return [(q.family, q.program, q.answer) for _, qs in out for q in qs], [
            q.text for _, qs in out for q in qs
        ]

    full, full_text = asked(templates, synonyms)
    reduced, reduced_text = asked(one, plain)
    assert full == reduced and len(full) > 200
    assert full_text != reduced_text


def test_counts_reset(domain, templates, synonyms):
    engine = QuestionEngine(domain, templates, synonyms, reset_every=2)
    rng = np.random.default_rng(0)
    totals = []
    for _ in range(5):
        engine.generate(random_facts(domain, rng, 6), rng)
        totals.append(sum(engine.template_counts))
    assert totals == [10, 20, 10, 20, 10]


def test_template_order_follows_usage(domain, templates, synonyms):
    engine = QuestionEngine(domain, templates, synonyms)
    rng = np.random.default_rng(1)
    first = engine.generate(random_facts(domain, rng, 8), rng)
    second = engine.generate(random_facts(domain, rng, 8), rng)
    # fresh counts: the first scene tries templates in file order; the second skips the ten already used
    # (they sort last) unless they failed
    assert [q.family for q in first] == sorted(q.family for q in first)
    assert not {q.family for q in first} & {q.family for q in second}


def test_optionals_plurals_and_synonyms(tmp_path, domain):
    text = "how many <Z> <C> <M> <S>s [are there] in the scene?"
    (tmp_path / "zero_hop.json").write_text(json.dumps([_template(text)]))
    synonyms = {"thing": ["thing", "object"], "cube": ["block"]}
    engine = QuestionEngine(domain, load_templates(tmp_path), synonyms, reset_every=1, questions_per_image=1)
    texts = [q.text for _, qs in run(engine, domain, 150, seed=3) for q in qs]
    assert texts and all(t.startswith("How many ") and t.endswith("?") for t in texts)
    assert any(t.endswith("s are there in the scene?") for t in texts)
    assert any(t.endswith("s in the scene?") for t in texts)
    assert any(" things" in t for t in texts) and any(" objects" in t for t in texts)
    assert not any("cube" in t for t in texts) and any(" blocks" in t for t in texts)


def test_state_limit_and_exact_search_still_valid(domain, templates, synonyms):
    for engine in (
        QuestionEngine(domain, templates, synonyms, max_states=30),
        QuestionEngine(domain, templates, synonyms, memoize=False),
    ):
        for facts, qs in run(engine, domain, 15, seed=9):
            assert qs
            for q in qs:
                assert execute_clevr(q.program, facts, domain) == q.answer


def test_other_domain(domain, tmp_path):
    """Attribute-specific work comes from the domain: a ninth colour appears in programs and answers."""
    spec = domain.to_dict()
    spec["attributes"]["color"]["concepts"].append("orange")
    dom = Domain.from_dict(spec)
    engine = QuestionEngine(dom, load_templates(), load_synonyms())
    seen_orange = False
    for facts, qs in run(engine, dom, 60, seed=4):
        for q in qs:
            q.program.validate(dom)
            assert execute_clevr(q.program, facts, dom) == q.answer
            seen_orange |= q.answer == "orange" or any("orange" in n.values for n in q.program.nodes)
    assert seen_orange
    assert "orange" in engine.answer_counts(88)  # a query_color family counts the new colour


# --------------------------------------------------------------------------------------------- CLEVR's files
@pytest.fixture(scope="module")
def clevr_templates() -> list[Template]:
    if not CLEVR_DIR.is_dir():
        pytest.skip(f"reference CLEVR templates not found at {CLEVR_DIR}")
    return load_templates(CLEVR_DIR)


def test_clevr_template_directory(clevr_templates, domain):
    assert [t.family for t in clevr_templates] == list(range(90))
    assert [t.filename for t in clevr_templates] == [
        f"{name}.json" for name in CLEVR_FILE_ORDER for _ in FAMILY_RANGES[f"{name}.json"]
    ]
    synonyms_path = CLEVR_DIR.parent / "synonyms.json"
    synonyms = load_synonyms(synonyms_path) if synonyms_path.is_file() else {}
    engine = QuestionEngine(domain, clevr_templates, synonyms)
    families = set()
    for facts, qs in run(engine, domain, 120, seed=77):
        assert len(qs) == 10
        for q in qs:
            families.add(q.family)
            assert execute_clevr(q.program, facts, domain) == q.answer
            assert not any(c in q.text for c in "<>[]")
    assert len(families) >= 85
