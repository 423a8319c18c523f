"""Symbolic executor: runs raw CLEVR programs and NS-CL programs on annotated scenes (pure Python).

Values: an object set is a sorted tuple of object indices, an object is an int, counts are ints, booleans are
bools, attribute values are concept strings. A program that needs a unique object where there is none, or
several, is *invalid* (:class:`Invalid`), as in CLEVR's engine.

It is authoritative for data: ``nscl execute`` (``verify.py``) checks every stored answer with it, and the
generator's question engine reads scenes through its :class:`SceneFacts`. The model's
executor (soft, batched, on logits) is ``models/executor.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .data import Scene
from .domain import OBJECT, OBJECT_SET, Domain
from .errors import ProgramError
from .program import ClevrProgram, Program


class Invalid(Exception):
    """Raised when a program cannot be executed on a scene (e.g. unique of a set that is not a singleton)."""


@dataclass(frozen=True)
class SceneFacts:
    """The symbolic view of a scene: per-object attributes and relation lists."""

    attributes: tuple[Mapping[str, str], ...]
    relations: Mapping[str, Sequence[Sequence[int]]]

    @classmethod
    def of(cls, scene: Scene) -> SceneFacts:
        return cls(tuple(o.attributes for o in scene.objects), scene.relations)

    @property
    def n(self) -> int:
        return len(self.attributes)


def _unique(xs: tuple[int, ...]) -> int:
    if len(xs) != 1:
        raise Invalid(f"unique of a set of {len(xs)} objects")
    return xs[0]


def _same(facts: SceneFacts, attr: str, o: int) -> tuple[int, ...]:
    v = facts.attributes[o][attr]
    return tuple(j for j in range(facts.n) if j != o and facts.attributes[j][attr] == v)


def run_clevr_function(
    domain: Domain, fn: str, args: Sequence[Any], values: Sequence[str], facts: SceneFacts
) -> Any:
    """Run one CLEVR DSL function on already computed inputs."""
    sig = domain.clevr_functions[fn]
    a = sig.attribute
    if fn == "scene":
        return tuple(range(facts.n))
    if fn == "unique":
        return _unique(args[0])
    if fn == "relate":
        return tuple(facts.relations[values[0]][args[0]])
    if fn == "union":
        return tuple(sorted(set(args[0]) | set(args[1])))
    if fn == "intersect":
        return tuple(sorted(set(args[0]) & set(args[1])))
    if fn == "count":
        return len(args[0])
    if fn == "exist":
        return len(args[0]) > 0
    if fn == "equal_integer":
        return args[0] == args[1]
    if fn == "less_than":
        return args[0] < args[1]
    if fn == "greater_than":
        return args[0] > args[1]
    if fn == "equal_object":
        return args[0] == args[1]
    if a is not None:
        kind = fn[: -len(a) - 1]
        if kind == "filter":
            return tuple(i for i in args[0] if facts.attributes[i][a] == values[0])
        if kind == "query":
            return facts.attributes[args[0]][a]
        if kind == "same":
            return _same(facts, a, args[0])
        if kind == "equal":
            return args[0] == args[1]
    raise ValueError(f"unknown CLEVR function {fn!r}")


def execute_clevr_outputs(prog: ClevrProgram, facts: SceneFacts, domain: Domain) -> list[Any]:
    """Every node's output; raises Invalid as soon as one node is invalid."""
    outs: list[Any] = []
    for n in prog.nodes:
        outs.append(run_clevr_function(domain, n.function, [outs[j] for j in n.inputs], n.values, facts))
    return outs


def execute_clevr(prog: ClevrProgram, facts: SceneFacts, domain: Domain) -> str:
    """The normalised answer of a raw CLEVR program (``yes``/``no``, ``"3"``, ``"red"``).

    A program whose last node gives an object or an object set has no answer: ProgramError (without this an
    object index would pass for a count)."""
    sig = domain.clevr_functions.get(prog.nodes[-1].function) if prog.nodes else None
    if sig is not None and sig.output in (OBJECT, OBJECT_SET):
        raise ProgramError(f"program: the last node ({sig.name}) gives no answer")
    return domain.normalize_answer(execute_clevr_outputs(prog, facts, domain)[-1])


# --------------------------------------------------------------------------------------------- NS-CL
def _as_object(x: tuple[int, ...]) -> int:
    return _unique(x)


_NSCL: dict[str, Callable[..., Any]] = {
    "scene": lambda f, n, _: tuple(range(f.n)),
    "filter": lambda f, n, x: tuple(
        i for i in x[0] if all(c in f.attributes[i].values() for c in n.concepts)
    ),
    "relate": lambda f, n, x: tuple(f.relations[n.concepts[0]][_as_object(x[0])]),
    "relate_attribute_equal": lambda f, n, x: _same(f, n.attribute, _as_object(x[0])),
    "intersect": lambda f, n, x: tuple(sorted(set(x[0]) & set(x[1]))),
    "union": lambda f, n, x: tuple(sorted(set(x[0]) | set(x[1]))),
    "query": lambda f, n, x: f.attributes[_as_object(x[0])][n.attribute],
    "exist": lambda f, n, x: len(x[0]) > 0,
    "count": lambda f, n, x: len(x[0]),
    "query_attribute_equal": lambda f, n, x: (
        f.attributes[_as_object(x[0])][n.attribute] == f.attributes[_as_object(x[1])][n.attribute]
    ),
    "count_equal": lambda f, n, x: len(x[0]) == len(x[1]),
    "count_less": lambda f, n, x: len(x[0]) < len(x[1]),
    "count_greater": lambda f, n, x: len(x[0]) > len(x[1]),
}


def execute_nscl(prog: Program, facts: SceneFacts, domain: Domain) -> str:
    """The normalised answer of an NS-CL program; object-typed inputs must be singletons (else Invalid)."""
    outs: list[Any] = []
    for n in prog.nodes:
        outs.append(_NSCL[n.op](facts, n, [outs[j] for j in n.inputs]))
    return domain.normalize_answer(outs[-1])
