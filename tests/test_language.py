"""Reading questions as people type them (``nscl.language``): normalisation, suggestions, near-miss corrections."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nscl.language import (
    Correction,
    correct,
    near_miss,
    normalize,
    question_tokens,
    suggest,
    unknown_word_message,
)

KNOWN = frozenset(
    {"cube", "cubes", "cylinder", "sphere", "red", "rubber", "metal", "color", "what", "is", "the"}
)


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("What's the color of the cube?", "what is the color of the cube ?"),
        ("Isn't there a red ball?", "is not there a red ball ?"),
        ("There\u2019s a big cube; what\u2019s its size?", "there is a big cube ; what is its size ?"),
        ("What color is the cube's neighbour?", "what color is the cube neighbour ?"),
        ("Are the cubes' colors equal?", "are the cubes colors equal ?"),
        ("aren't THERE any spheres", "are not there any spheres"),
        ("Don't they're", "do not they are"),
        ("Is it rock 'n' roll?", "is it rock ' n ' roll ?"),  # not a contraction: left to the tokeniser
    ],
)
def test_normalize_contractions_possessives_quotes(text, tokens):
    assert " ".join(question_tokens(text)) == tokens


@given(st.text(alphabet=st.characters(blacklist_characters="'\u2019\u2018\u02bc\u201c\u201d")))
def test_normalize_is_identity_without_apostrophes(text):
    """Parsers trained before normalisation read exactly the same tokens (templates have no apostrophes)."""
    assert normalize(text) == text


def test_template_phrasings_have_no_apostrophes():
    root = resources.files("nscl").joinpath("generate", "templates")
    for f in root.iterdir():
        if f.name.endswith(".json"):
            for t in json.loads(f.read_text(encoding="utf-8")):
                for text in t["text"]:
                    assert normalize(text) == text, (f.name, text)


def test_near_miss_one_edit_unique_and_long_enough():
    assert near_miss("cilinder", KNOWN) == "cylinder"
    assert near_miss("cyllinder", KNOWN) == "cylinder"
    assert near_miss("spere", KNOWN) == "sphere"
    assert near_miss("rubbr", KNOWN) == "rubber"
    assert near_miss("cyl1nder", KNOWN) is None  # not a word
    assert near_miss("rad", KNOWN) is None  # too short to guess
    assert near_miss("cubez", KNOWN) is None  # one edit from both "cube" and "cubes"
    assert near_miss("zebra", KNOWN) is None


def test_correct_reports_what_it_changed():
    text, fixes = correct("What's the colour of the cilinder?", KNOWN | {"of", "colour", "?"})
    assert text == "what is the colour of the cylinder ?"
    assert fixes == [Correction("cilinder", "cylinder")]
    assert correct("What is the color?", KNOWN | {"?"})[1] == []


def test_suggestions_and_refusal_message():
    assert suggest("cylindr", KNOWN)[0] == "cylinder"
    assert suggest("qqqq", KNOWN) == []
    msg = unknown_word_message("What color is the spehre?", "spehre", KNOWN)
    assert msg == (
        "cannot parse 'What color is the spehre?': unknown word 'spehre' (not in the parser's vocabulary); "
        "did you mean 'sphere'?"
    )
    assert unknown_word_message("Is it a zebra?", "zzzzqq", KNOWN).endswith(
        "(not in the parser's vocabulary)"
    )
