"""The questions of a CLEVR-size file as columns, for loading 700,000 questions in seconds in bounded memory.

:func:`~nscl.data.read_questions` turns every record into a :class:`~nscl.data.Question` with a parsed, validated
:class:`~nscl.program.ClevrProgram`: exact and convenient, but a CLEVR training file (700K questions) then takes
minutes and gigabytes. :class:`QuestionTable` instead keeps

* per question: its image index, text, answer code and program id (NumPy arrays and one list of strings);
* per distinct program: its JSON text, once (a file repeats programs: one per template and value choice), with its
  length and final function, which the curriculum and the per-type reports need.

A program is parsed and validated only when it is asked for (:meth:`QuestionTable.program`), for example when a
training batch is compiled; a bad one then raises the usual one-line :class:`~nscl.errors.DataError` naming the file
and the first question that uses it. Indexing the table gives ordinary :class:`~nscl.data.Question` records, so
code written for a list of questions works unchanged (slowly, if it walks all of them).

The file is decoded by msgspec against a typed schema, so a wrong field type is caught while reading and named with
its question. Keys the schema does not name (``question_index``, ``split``, ...) are not kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import msgspec
import numpy as np

from .data import Question, Split, SplitPaths, read_scenes
from .domain import Domain
from .errors import DataError, NSCLError
from .io import read_bytes
from .program import ClevrNode, ClevrProgram, clevr_answer_op


class _Record(msgspec.Struct):
    image_index: int
    question: str
    answer: str | int | bool | None = None
    program: msgspec.Raw = msgspec.Raw()  # empty: absent (b"null" too)
    image_filename: str | None = None
    question_family_index: int | None = None
    template_filename: str | None = None


class _File(msgspec.Struct):
    questions: list[_Record]
    info: dict[str, Any] = {}


class _Node(msgspec.Struct):
    """Just enough of a raw node for the curriculum keys; the full parse comes later."""

    function: str | None = None
    type: str | None = None


_WHERE = re.compile(r"^(?P<msg>.*?) - at `\$\.questions\[(?P<i>\d+)\](?:\.(?P<key>\w+))?")


def _decode_error(path: Path, e: msgspec.MsgspecError) -> DataError:
    m = _WHERE.match(str(e))
    if m is None:
        return DataError(f"{path}: {e}")
    key = f" {m['key']!r}:" if m["key"] else ""
    return DataError(f"{path}: question {m['i']}:{key} {m['msg'][0].lower()}{m['msg'][1:]}")


@dataclass
class QuestionTable(Sequence[Question]):
    """Questions as columns (see the module docstring); ``len(table)`` questions, ``P`` distinct programs."""

    source: Path
    image_index: np.ndarray  # (Q,) int64
    text: list[str]  # (Q,)
    answer_code: np.ndarray  # (Q,) int32 into ``answers``; -1: no answer (test questions)
    answers: list[str]  # distinct normalised answers
    program_id: np.ndarray  # (Q,) int32 into ``program_json``; -1: no program
    program_json: list[bytes]  # (P,) distinct programs, as they are in the file
    program_length: np.ndarray  # (P,) int64, raw node count (the curriculum's length)
    program_type: list[str]  # (P,) question type by NS-CL final op (``count``, ``query``, ...)
    family: np.ndarray  # (Q,) int32 question_family_index; -1: absent
    domain: Domain

    def __len__(self) -> int:
        return len(self.text)

    @overload
    def __getitem__(self, i: int) -> Question: ...

    @overload
    def __getitem__(self, i: slice) -> list[Question]: ...

    def __getitem__(self, i: int | slice) -> Question | list[Question]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        code, pid, fam = int(self.answer_code[i]), int(self.program_id[i]), int(self.family[i])
        return Question(
            index=i,
            image_index=int(self.image_index[i]),
            question=self.text[i],
            answer=self.answers[code] if code >= 0 else None,
            program=self.program(pid) if pid >= 0 else None,
            family=fam if fam >= 0 else None,
        )

    def __iter__(self) -> Iterator[Question]:
        return (self[i] for i in range(len(self)))

    def program(self, pid: int) -> ClevrProgram:
        """Distinct program ``pid``, parsed and validated; DataError names the first question using it."""
        try:
            data = msgspec.json.decode(self.program_json[pid])
            prog = ClevrProgram.from_json(data, where="program")
            prog.validate(self.domain, where="program")
        except (NSCLError, msgspec.MsgspecError) as e:
            raise DataError(f"{self.source}: question {_first_use(self.program_id, pid)}: {e}") from None
        return prog


def read_question_table(path: str | Path, domain: Domain) -> QuestionTable:
    """A questions file (``{"questions": [...]}``) as a :class:`QuestionTable`; answers are normalised and checked
    here, programs when they are used."""
    p = Path(path)
    raw = read_bytes(p)
    try:
        records = msgspec.json.decode(raw, type=_File).questions
    except msgspec.ValidationError as e:
        raise _decode_error(p, e) from None
    except msgspec.DecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    n = len(records)
    image_index = np.fromiter((r.image_index for r in records), np.int64, n)
    family = np.fromiter(
        (-1 if r.question_family_index is None else r.question_family_index for r in records), np.int32, n
    )
    text = [r.question for r in records]
    # Answers: each distinct value normalised and checked once.
    answer_of: dict[Any, int] = {}  # (type, value) as in the file -> code
    answer_index: dict[str, int] = {}  # normalised -> code
    answers: list[str] = []
    answer_code = np.full(n, -1, np.int32)
    program_of: dict[bytes, int] = {}
    program_json: list[bytes] = []
    program_id = np.full(n, -1, np.int32)
    for i, r in enumerate(records):
        a = r.answer
        if a is not None:
            key = (type(a), a)
            code = answer_of.get(key)
            if code is None:
                try:
                    norm = domain.normalize_answer(a)
                    domain.answer_type(norm)
                except ValueError as e:
                    raise DataError(f"{p}: question {i}: {e}") from None
                if norm not in answer_index:
                    answer_index[norm] = len(answers)
                    answers.append(norm)
                code = answer_of[key] = answer_index[norm]
            answer_code[i] = code
        b = bytes(r.program)
        if b and b != b"null":
            pid = program_of.get(b)
            if pid is None:
                pid = program_of[b] = len(program_json)
                program_json.append(b)
            program_id[i] = pid
    del records, raw, program_of
    # Curriculum keys of every distinct program, from typed decodes of a few thousand programs at a time.
    length = np.empty(len(program_json), np.int64)
    types: list[str] = []
    type_of: dict[str, str] = {}  # final function -> question type
    chunk = 8192
    for lo in range(0, len(program_json), chunk):
        part = program_json[lo : lo + chunk]
        try:
            nodes = msgspec.json.decode(b"[" + b",".join(part) + b"]", type=list[list[_Node]])
        except msgspec.MsgspecError:
            nodes = []
            for pid, b in enumerate(part, lo):  # find the bad one and name its question
                try:
                    nodes.append(msgspec.json.decode(b, type=list[_Node]))
                except msgspec.MsgspecError as e:
                    raise DataError(f"{p}: question {_first_use(program_id, pid)}: 'program': {e}") from None
        for pid, x in enumerate(nodes, lo):
            fn = (x[-1].function or x[-1].type) if x else None
            if fn is None:
                what = "an empty program" if not x else "the last node has no 'function' (or 'type')"
                raise DataError(f"{p}: question {_first_use(program_id, pid)}: 'program': {what}")
            length[pid] = len(x)
            t = type_of.get(fn)
            if t is None:
                t = type_of[fn] = clevr_answer_op(ClevrProgram((ClevrNode(fn),)))
            types.append(t)
    return QuestionTable(
        p, image_index, text, answer_code, answers, program_id, program_json, length, types, family, domain
    )


def _first_use(program_id: np.ndarray, pid: int) -> int:
    return int(np.flatnonzero(program_id == pid)[0])


def load_split_compact(paths: SplitPaths, domain: Domain) -> Split:
    """:func:`~nscl.data.load_split` with the questions as a :class:`QuestionTable` (scenes as usual)."""
    scenes = {s.image_index: s for s in read_scenes(paths.scenes, domain)}
    table = read_question_table(paths.questions, domain)
    known = np.fromiter(scenes, np.int64, len(scenes))
    missing = np.flatnonzero(~np.isin(table.image_index, known))
    if len(missing):
        i = int(missing[0])
        raise DataError(
            f"{paths.questions}: question {i}: image_index {int(table.image_index[i])} has no scene in {paths.scenes}"
        )
    return Split(paths, scenes, table)
