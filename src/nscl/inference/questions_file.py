"""Questions files with the parser's programs (``nscl parse --questions-json``), and the CLEVR form of NS-CL
programs that such a file carries under ``program``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..domain import Domain
from ..errors import DataError, ProgramError
from ..io import atomic_write_json, read_json
from ..models.grammar import ParseError
from ..models.parser import Parser
from ..program import ClevrNode, ClevrProgram, Program
from .guided import checked_parse
from .load import load_parser


def nscl_to_clevr(program: Program, domain: Domain) -> ClevrProgram:
    """The CLEVR-DSL form of an NS-CL program (the inverse of ``translate`` up to ``canonical``): filters
    become chains of ``filter_<attribute>``, object inputs get ``unique``, ``query_attribute_equal`` and the
    count comparisons get their intermediate ``query_*``/``count`` nodes."""
    nodes: list[ClevrNode] = []

    def add(fn: str, inputs: Sequence[int] = (), values: Sequence[str] = ()) -> int:
        nodes.append(ClevrNode(fn, tuple(inputs), tuple(values)))
        return len(nodes) - 1

    memo: dict[int, int] = {}

    def visit(i: int) -> int:
        if i in memo:
            return memo[i]
        n = program.nodes[i]
        ins = [visit(j) for j in n.inputs]
        op = n.op
        if op == "scene":
            r = add("scene")
        elif op == "filter":
            r = ins[0]
            for c in n.concepts:
                a = domain.attribute_of_concept(c)
                if a is None:
                    raise ProgramError(f"unknown concept {c!r}")
                r = add(f"filter_{a.name}", [r], [c])
        elif op == "relate":
            r = add("relate", [add("unique", [ins[0]])], n.concepts)
        elif op == "relate_attribute_equal":
            r = add(f"same_{n.attribute}", [add("unique", [ins[0]])])
        elif op in ("intersect", "union") or op in ("exist", "count"):
            r = add(op, ins)
        elif op == "query":
            r = add(f"query_{n.attribute}", [add("unique", [ins[0]])])
        elif op == "query_attribute_equal":
            qa = add(f"query_{n.attribute}", [add("unique", [ins[0]])])
            qb = add(f"query_{n.attribute}", [add("unique", [ins[1]])])
            r = add(f"equal_{n.attribute}", [qa, qb])
        elif op in _COUNT_COMPARE:
            ca, cb = add("count", [ins[0]]), add("count", [ins[1]])
            r = add(_COUNT_COMPARE[op], [ca, cb])
        else:
            raise ProgramError(f"no CLEVR form for NS-CL op {op!r}")
        memo[i] = r
        return r

    visit(len(program.nodes) - 1)
    return ClevrProgram(tuple(nodes))


_COUNT_COMPARE = {"count_equal": "equal_integer", "count_less": "less_than", "count_greater": "greater_than"}


def parse_questions_file(
    parser: Parser | str | Path,
    questions_json: str | Path,
    output: str | Path,
    beam_size: int = 1,
    skip_errors: bool = False,
    unknown: str = "error",
    check: int = 0,
) -> dict[str, int]:
    """Write ``output``: the questions of ``questions_json`` (every field kept) with the parser's program,
    NS-CL form under ``program_nscl`` and CLEVR form under ``program`` (replacing the original one, which
    is kept under ``program_original``). A question that cannot be parsed raises ParseError naming it, or
    with ``skip_errors`` gets ``parse_error`` (and no program). ``check`` > 0 holds each parse to its wording
    with a beam of that size (:func:`nscl.inference.guided.checked_parse`) instead of decoding with
    ``beam_size``. Returns counts."""
    if not isinstance(parser, Parser):
        parser = load_parser(parser)
    data = read_json(questions_json)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise DataError(f"{questions_json}: missing required key 'questions' (a list) at the top level")
    records = data["questions"]
    texts = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str):
            raise DataError(f"{questions_json}: question {i}: missing required key 'question'")
        texts.append(r["question"])
    if check > 0:
        programs, errors = checked_parse(parser, texts, check, unknown)
    else:
        programs, errors = parser.parse_many(texts, beam_size, unknown)
    out = []
    n_err = 0
    for i, (r, p, e) in enumerate(zip(records, programs, errors)):
        r = dict(r)
        if "program" in r:
            r["program_original"] = r.pop("program")
        r.pop("program_nscl", None)
        if p is None:
            if not skip_errors:
                raise ParseError(f"{questions_json}: question {i}: {e}")
            r["parse_error"] = e
            n_err += 1
        else:
            r["program_nscl"] = p.to_json()
            r["program"] = nscl_to_clevr(p, parser.domain).to_json()
        out.append(r)
    info = dict(data.get("info", {})) if isinstance(data.get("info"), dict) else {}
    info["programs"] = "parsed by nscl's semantic parser"
    atomic_write_json(output, {"info": info, "questions": out})
    return {"questions": len(records), "parsed": len(records) - n_err, "errors": n_err}
