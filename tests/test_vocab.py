"""Tokenisation and vocab.json (release-compatible word -> index map)."""

from __future__ import annotations

import json

import pytest

from nscl.errors import DataError
from nscl.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab, tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Is it red?", ["is", "it", "red", "?"]),
        (
            "What is the shape of the small sphere-like blue thing?",
            ["what", "is", "the", "shape", "of", "the", "small", "sphere", "-", "like", "blue", "thing", "?"],
        ),
        ("  How many   things; are there?  ", ["how", "many", "things", ";", "are", "there", "?"]),
        ("Are there 3 cubes, or 10?", ["are", "there", "3", "cubes", ",", "or", "10", "?"]),
        ("the cube's size", ["the", "cube", "'", "s", "size"]),
        ("", []),
    ],
)
def test_tokenize(text, tokens):
    assert tokenize(text) == tokens


def test_build_specials_first_and_sorted():
    v = Vocab.build(["Is it red?", "Is the cube big?"], extra_words=["metal", "red"])
    assert v.words[:4] == (PAD, UNK, BOS, EOS) == SPECIALS
    assert v.index[PAD] == 0 and v.index[UNK] == 1 and v.index[BOS] == 2 and v.index[EOS] == 3
    assert v.words[4:] == ("?", "big", "cube", "is", "it", "metal", "red", "the")
    assert len(v) == 12
    assert "cube" in v and "sphere" not in v
    assert v.to_json() == {w: i for i, w in enumerate(v.words)}


def test_build_deterministic():
    texts = ["How many red cubes?", "Is there a sphere?", "What color is it?"]
    a = Vocab.build(texts, ["left", "right"])
    b = Vocab.build(list(reversed(texts)) + texts, ["right", "left", "left"])
    assert a == b
    assert json.dumps(a.to_json()) == json.dumps(b.to_json())


def test_specials_in_text_not_duplicated():
    v = Vocab.build(["a b"], extra_words=[PAD, UNK, "c"])
    assert v.words == SPECIALS + ("a", "b", "c")


def test_encode_and_unknown():
    v = Vocab.build(["is it red ?"])
    ids = v.encode(tokenize("Is it blue?"))
    assert ids == [v.index["is"], v.index["it"], 1, v.index["?"]]
    assert v.encode(["red"], add_bos_eos=True) == [2, v.index["red"], 3]
    assert v.unknown(["is", "blue", "green"]) == ["blue", "green"]


def test_save_load_round_trip(tmp_path, domain):
    v = Vocab.build(["Is it red?"], domain.object_concepts + domain.relation_concepts)
    p = tmp_path / "vocab.json"
    v.save(p)
    assert Vocab.load(p) == v
    data = json.loads(p.read_text(encoding="utf-8"))
    assert data["<PAD>"] == 0 and data["<UNK>"] == 1 and data["<BOS>"] == 2 and data["<EOS>"] == 3
    assert sorted(data.values()) == list(range(len(v)))
    assert sorted(q.name for q in tmp_path.iterdir()) == ["vocab.json"]


def test_load_release_style_unsorted_file(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text('{"red": 5, "<EOS>": 3, "<PAD>": 0, "cube": 4, "<UNK>": 1, "<BOS>": 2}', encoding="utf-8")
    assert Vocab.load(p).words == SPECIALS + ("cube", "red")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["<PAD>", "<UNK>"], "must map words to integer indices"),
        ({"<PAD>": 0, "<UNK>": "1", "<BOS>": 2, "<EOS>": 3}, "must map words to integer indices"),
        ({"<PAD>": 0, "<UNK>": 1.0, "<BOS>": 2, "<EOS>": 3}, "must map words to integer indices"),
        ({"<PAD>": 0, "<UNK>": True, "<BOS>": 2, "<EOS>": 3}, "must map words to integer indices"),
        ({"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3, "red": 5}, "indices must be 0..4 without gaps"),
        ({"<PAD>": 0, "<UNK>": 1, "<BOS>": 2, "<EOS>": 3, "red": 3}, "without gaps"),
        ({"<PAD>": 1, "<UNK>": 0, "<BOS>": 2, "<EOS>": 3}, "must start with <PAD>=0"),
        ({"red": 0, "cube": 1, "sphere": 2, "big": 3}, "must start with <PAD>=0"),
        ({}, "must start with <PAD>=0"),
    ],
)
def test_bad_vocab_rejected(tmp_path, data, message):
    p = tmp_path / "vocab.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError, match=message) as e:
        Vocab.load(p)
    assert str(e.value).startswith(f"{p}: ")


def test_malformed_vocab_file(tmp_path):
    p = tmp_path / "vocab.json"
    p.write_text('{"<PAD>": 0,\n"<UNK>" 1}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{p}:2:9: malformed JSON"):
        Vocab.load(p)


def test_constructor_requires_specials():
    with pytest.raises(ValueError):
        Vocab(("a", "b"))
