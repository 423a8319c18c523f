"""The columnar questions table (nscl.question_table): the same questions, batches and errors as the eager reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.data import SplitPaths, read_questions
from nscl.errors import DataError
from nscl.inference.dataset import QADataset
from nscl.question_table import load_split_compact, read_question_table


def test_rows_equal_the_eager_reader(gen_root: Path, domain):
    path = gen_root / "train" / "questions.json"
    eager = read_questions(path, domain)
    table = read_question_table(path, domain)
    assert len(table) == len(eager) == 500
    for i in (0, 1, 137, 499, -1):
        a, b = eager[i], table[i]
        assert (a.index, a.image_index, a.question, a.answer, a.program, a.family) == (
            b.index,
            b.image_index,
            b.question,
            b.answer,
            b.program,
            b.family,
        )
    assert [q.question for q in table[10:13]] == [q.question for q in eager[10:13]]
    assert len(table.program_json) < len(table)  # distinct programs are stored once
    lengths = [len(q.program) for q in eager]
    assert table.program_length[table.program_id].tolist() == lengths
    with pytest.raises(IndexError):
        table[500]


def test_dataset_from_the_table_builds_the_same_batches(gen_root: Path, gen_dataset, domain):
    split = load_split_compact(SplitPaths.resolve(gen_root / "train"), domain)
    ds = QADataset(split, domain, 48)
    ref = gen_dataset
    assert len(ds) == len(ref)
    for name in ("q_image", "q_length", "q_index"):
        assert np.array_equal(getattr(ds, name), getattr(ref, name)), name
    assert torch.equal(ds.q_kind, ref.q_kind) and torch.equal(ds.q_value, ref.q_value)
    assert ds.qtypes == ref.qtypes
    ids = np.array([5, 0, 321, 44, 45, 46])
    a, b = ref.make_batch(ids), ds.make_batch(ids)
    assert torch.equal(a.kind, b.kind) and torch.equal(a.question_ids, b.question_ids)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes)
    assert [ds.compiled(i) for i in range(len(ds))] == ref.programs
    assert len(ds._cache) == len(ds._table.program_json)  # each distinct program compiled once


def _split(tmp_path: Path, gen_root: Path, questions: list) -> SplitPaths:
    d = tmp_path / "split"
    d.mkdir()
    (d / "scenes.json").write_text((gen_root / "train" / "scenes.json").read_text())
    (d / "images").symlink_to(gen_root / "train" / "images")
    (d / "questions.json").write_text(json.dumps({"info": {}, "questions": questions}))
    return SplitPaths.resolve(d)


def _good(gen_root: Path, n: int = 3) -> list[dict]:
    return json.loads((gen_root / "train" / "questions.json").read_text())["questions"][:n]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_index": "0"}, "question 1: 'image_index': expected `int`, got `str`"),
        ({"answer": 2.5}, "got `float`"),
        ({"answer": ["red"]}, "question 1: 'answer'"),
        ({"program": {"function": "scene"}}, "question 1: 'program':"),
        ({"program": []}, "question 1: 'program': an empty program"),
        ({"program": [{"inputs": []}]}, "question 1: 'program': the last node has no 'function'"),
        ({"image_index": 99999}, "question 1: image_index 99999 has no scene"),
    ],
)
def test_bad_questions_are_named_when_read(tmp_path, gen_root, domain, change, message):
    qs = _good(gen_root)
    qs[1] = {**qs[1], **change}
    paths = _split(tmp_path, gen_root, qs)
    with pytest.raises(DataError) as e:
        load_split_compact(paths, domain)
    assert str(e.value).startswith(f"{paths.questions}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_bad_program_is_named_when_first_compiled(tmp_path, gen_root, domain):
    qs = _good(gen_root, 4)
    bad = [dict(n) for n in qs[2]["program"]]
    bad[-1] = {**bad[-1], "function": "fly_to_the_moon"}
    qs[2]["program"] = bad
    split = load_split_compact(_split(tmp_path, gen_root, qs), domain)
    ds = QADataset(split, domain, 48)
    ds.make_batch(np.array([0, 1]))  # the good ones compile
    with pytest.raises(DataError, match=r"questions\.json: question 2: .*unknown function 'fly_to_the_moon'"):
        ds.make_batch(np.array([2, 3]))
    with pytest.raises(DataError, match="question 2: "):
        split.questions[2]


def test_unreadable_files(tmp_path, domain):
    with pytest.raises(DataError, match="no such file"):
        read_question_table(tmp_path / "nope.json", domain)
    bad = tmp_path / "q.json"
    bad.write_text('{"questions": [')
    with pytest.raises(DataError, match=rf"^{bad}: not valid JSON"):
        read_question_table(bad, domain)
    bad.write_text('{"info": {}}')
    with pytest.raises(DataError, match=rf"^{bad}: .*questions"):
        read_question_table(bad, domain)


def test_answers_are_normalised_once(tmp_path, gen_root, domain):
    qs = _good(gen_root, 4)
    qs[0]["answer"], qs[1]["answer"], qs[2]["answer"], qs[3]["answer"] = True, "yes", " Yes", 3
    p = tmp_path / "q.json"
    p.write_text(json.dumps({"questions": qs}))
    t = read_question_table(p, domain)
    assert [q.answer for q in t] == ["yes", "yes", "yes", "3"]
    assert t.answers == ["yes", "3"]
