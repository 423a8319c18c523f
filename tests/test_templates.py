"""Checks on the question-template and synonym data files of ``nscl.generate``.

Always: 90 templates in the 9 CLEVR-1.0 family files, every phrasing uses each
parameter slot exactly once, brackets balance, the synonym table is well formed.

When the reference CLEVR templates are present beside the project
(``<root>/../shared/clevr/templates``; skipped otherwise): program structure
(nodes, params, constraints) equals CLEVR's template by template, and no phrasing
of ours equals or shares a long word run with any CLEVR phrasing.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_DIR = ROOT / "src" / "nscl" / "generate" / "templates"
SYNONYMS = ROOT / "src" / "nscl" / "generate" / "synonyms.json"
CLEVR_DIR = Path(__file__).resolve().parents[2] / "shared" / "clevr" / "templates"

# File order defines the global family numbering (question_family_index 0-89).
FILES = [
    ("compare_integer", 9),
    ("comparison", 16),
    ("three_hop", 6),
    ("single_and", 5),
    ("same_relate", 28),
    ("single_or", 8),
    ("one_hop", 6),
    ("two_hop", 6),
    ("zero_hop", 6),
]

PARAM_TYPES = {"Size": "Z", "Color": "C", "Material": "M", "Shape": "S", "Relation": "R"}
SLOT_RE = re.compile(r"<[A-Z][0-9]*>")
ATTR_WORDS = {
    "size": ("size",),
    "color": ("color", "colour"),
    "material": ("material",),
    "shape": ("shape",),
}
# Templates whose params are exactly these get CLEVR's "other" heuristic at generation time.
OTHER_PARAMS = {"<Z>", "<C>", "<M>", "<S>", "<Z2>", "<C2>", "<M2>", "<S2>"}

# Minimum run of consecutive shared words (after normalisation) that counts as copying.
NGRAM = 6
ARTICLES = {"the", "a", "an"}


def load(directory: Path) -> dict[str, list[dict]]:
    return {name: json.loads((directory / f"{name}.json").read_text()) for name, _ in FILES}


def all_templates(data: dict[str, list[dict]]):
    family = 0
    for name, _ in FILES:
        for index, template in enumerate(data[name]):
            yield family, name, index, template
            family += 1


@pytest.fixture(scope="module")
def ours() -> dict[str, list[dict]]:
    return load(TEMPLATE_DIR)


@pytest.fixture(scope="module")
def clevr() -> dict[str, list[dict]]:
    if not CLEVR_DIR.is_dir():
        pytest.skip(f"reference CLEVR templates not found at {CLEVR_DIR}")
    return load(CLEVR_DIR)


# --------------------------------------------------------------------------- text helpers


def expansions(text: str) -> list[str]:
    """Every way of keeping or dropping the ``[optional]`` groups of a phrasing."""
    parts = re.split(r"(\[[^\[\]]*\])", text)
    choices = [[p[1:-1], ""] if p.startswith("[") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """Lower-cased words; punctuation dropped; each run of consecutive slot tokens
    (an object description such as ``<Z2> <C2> <M2> <S2>s``, possibly followed by a
    relation slot) counts as one word."""
    tokens = re.sub(r"[?.,;:!]", " ", text.lower()).split()
    out: list[str] = []
    for tok in tokens:
        is_slot = re.fullmatch(r"<[a-z][0-9]*>s?", tok) is not None
        if is_slot and out and out[-1] == "<slots>":
            continue
        out.append("<slots>" if is_slot else tok)
    return out


def ngrams(seq: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)}


def exempt(gram: tuple[str, ...]) -> bool:
    # Runs made only of slots and articles ("<R> the <Z> <C> <M> <S>") are unavoidable.
    return all(w == "<slots>" or w in ARTICLES for w in gram)


def answer_kind(template: dict) -> str:
    last = template["nodes"][-1]["type"]
    if last.startswith("query_"):
        return last[len("query_") :]
    if last.startswith("equal_") and last != "equal_integer":
        return last[len("equal_") :]
    if last.endswith("count") or last == "count":
        return "count"
    return "bool"


# --------------------------------------------------------------------------- always


def test_file_layout(ours):
    assert sorted(p.stem for p in TEMPLATE_DIR.glob("*.json")) == sorted(n for n, _ in FILES)
    for name, count in FILES:
        assert len(ours[name]) == count, name
    assert sum(1 for _ in all_templates(ours)) == 90


def test_template_keys(ours):
    for family, name, index, t in all_templates(ours):
        assert set(t) == {"text", "nodes", "params", "constraints"}, (family, name, index)
        assert 12 <= len(t["text"]) <= 20, (family, name, index)  # structurally different phrasings
        assert len(set(map(normalise, t["text"]))) == len(t["text"]), ("duplicate phrasing", family)
        for p in t["params"]:
            assert p["type"] in PARAM_TYPES and p["name"].startswith("<" + PARAM_TYPES[p["type"]])


def test_slots_used_exactly_once(ours):
    for family, _, _, t in all_templates(ours):
        names = [p["name"] for p in t["params"]]
        assert len(set(names)) == len(names)
        for text in t["text"]:
            used = Counter(SLOT_RE.findall(text))
            assert set(used) == set(names), (family, text, set(used) ^ set(names))
            assert all(c == 1 for c in used.values()), (family, text)
            # no stray angle brackets around malformed slots
            assert text.count("<") == text.count(">") == sum(used.values()), (family, text)


def test_brackets_and_whitespace(ours):
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            depth = 0
            for ch in text:
                depth += {"[": 1, "]": -1}.get(ch, 0)
                assert depth in (0, 1), (family, text)
            assert depth == 0, (family, text)
            assert "[]" not in text
            assert text == text.strip() and "  " not in text, (family, text)
            assert text[0].isupper(), (family, text)
            assert text[-1] in "?.", (family, text)


def test_shape_slots_pluralised_only_by_s(ours):
    # The generator pluralises a shape by appending "s"; nothing else may follow a slot.
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            for m in re.finditer(r"<[A-Z][0-9]*>(\S*)", text):
                tail = m.group(1)
                assert re.fullmatch(r"s?[?.,;:]?\]?", tail), (family, text, tail)
                if tail.startswith("s"):
                    assert m.group(0).startswith("<S"), (family, text)


def test_no_indefinite_article_before_slot(ours):
    # "a <Z> ..." would give "a object" / "a item"; the phrasings avoid it.
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            assert not re.search(r"\ban? \[?<", text, re.I), (family, text)


def test_queried_attribute_named(ours):
    for family, _, _, t in all_templates(ours):
        kind = answer_kind(t)
        if kind not in ATTR_WORDS:
            continue
        for text in t["text"]:
            for variant in expansions(text):
                low = variant.lower()
                assert any(w in low for w in ATTR_WORDS[kind]), (family, text)


def test_same_relate_attribute_named(ours):
    for family, _, _, t in all_templates(ours):
        same = [n["type"][5:] for n in t["nodes"] if n["type"].startswith("same_")]
        for attr in same:
            for text in t["text"]:
                assert any(w in text.lower() for w in ATTR_WORDS[attr]), (family, text)


def test_other_word_kept_where_heuristic_applies(ours):
    # Two-object same_* templates describe the second object as "other"; the generator
    # drops " other " when the two descriptions differ, so it must be a spaced word.
    for family, name, _, t in all_templates(ours):
        names = {p["name"] for p in t["params"]}
        for text in t["text"]:
            has_other = " other " in text or " another " in text
            if name == "same_relate" and names == OTHER_PARAMS:
                assert has_other, (family, text)
            elif names == OTHER_PARAMS:
                # elsewhere the heuristic would silently rewrite the text
                assert not has_other, (family, text)


def test_phrasings_distinct_across_families(ours):
    # With slot numbers abstracted away (types kept), no phrasing may belong to two
    # families (a parser matching phrasings must be able to recover the family).
    seen: dict[str, int] = {}
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            for variant in expansions(text):
                key = normalise(re.sub(r"<([A-Z])[0-9]*>", r"<\1>", variant))
                other = seen.setdefault(key, family)
                assert other == family, (family, other, text)


def test_synonyms_well_formed():
    table = json.loads(SYNONYMS.read_text())
    assert isinstance(table, dict) and table
    for word, forms in table.items():
        assert isinstance(forms, list) and forms and all(isinstance(f, str) and f for f in forms)
        assert len(set(forms)) == len(forms), word
        assert all(f == " ".join(f.split()) for f in forms), word
    for word in ["thing", "sphere", "cube", "cylinder", "large", "small", "metal", "rubber"]:
        assert table[word][0] == word
    # Relations are relation phrases that can stand before "the <object>" / "it".
    for rel in ["left", "right", "behind", "front"]:
        assert table[rel], rel
        for phrase in table[rel]:
            assert phrase.split()[-1] in {"of", "behind", "than"}, phrase
    # A surface form must not be claimed by two different words.
    owners: dict[str, str] = {}
    for word, forms in table.items():
        for f in forms:
            assert owners.setdefault(f, word) == word, f


# --------------------------------------------------------------------------- against CLEVR


def test_structure_matches_clevr(ours, clevr):
    for name, count in FILES:
        assert len(clevr[name]) == count
        for index, (mine, ref) in enumerate(zip(ours[name], clevr[name])):
            for key in ("nodes", "params", "constraints"):
                assert mine[key] == ref[key], (name, index, key)


def test_no_clevr_sentence(ours, clevr):
    theirs = {normalise(v) for _, _, _, t in all_templates(clevr) for s in t["text"] for v in expansions(s)}
    theirs |= {normalise(s) for _, _, _, t in all_templates(clevr) for s in t["text"]}
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            assert normalise(text) not in theirs, (family, text)
            for variant in expansions(text):
                assert normalise(variant) not in theirs, (family, text)


def test_no_long_run_shared_with_clevr(ours, clevr):
    theirs: set[tuple[str, ...]] = set()
    for _, _, _, t in all_templates(clevr):
        for text in t["text"]:
            for variant in expansions(text):
                theirs |= ngrams(words(variant), NGRAM)
    problems = []
    for family, _, _, t in all_templates(ours):
        for text in t["text"]:
            for variant in expansions(text):
                shared = {g for g in ngrams(words(variant), NGRAM) & theirs if not exempt(g)}
                if shared:
                    problems.append((family, text, sorted(shared)[0]))
                    break
    assert not problems, "\n".join(map(str, problems))
