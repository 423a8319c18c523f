"""Templates prepared for the question engine's search: node kinds, constraints per node, memo keys.

``_compile_template`` checks a loaded :class:`~nscl.generate.template_files.Template` against the domain
(function signatures, input and parameter types, the answer type) and turns it into a ``_CTemplate``: one
``_CNode`` per template node (a plain function with at most one parameter, or a composite ``filter*`` /
``relate_filter*`` node with its masked attributes), each constraint attached to the node at which it can
first be decided, the answer domain, the pairs of CLEVR's "other" heuristic and, per node, the earlier nodes
whose outputs key the memo of failed sub-searches. Underscored names are internal to the question engine's
modules (scene_index, template_compiler, questions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..domain import BOOL, INTEGER, OBJECT, Domain
from ..errors import DataError
from .scene_index import Op
from .template_files import Template

_FILTER_COMPOSITES = ("filter", "filter_unique", "filter_count", "filter_exist")
_RELATE_COMPOSITES = tuple("relate_" + c for c in _FILTER_COMPOSITES)

_PLAIN, _FILTER, _RELATE = 0, 1, 2


@dataclass(frozen=True)
class _CNode:
    """A template node prepared for the search."""

    kind: int
    function: str
    inputs: tuple[int, ...]
    op: Op | None = None  # plain nodes
    side_param: str | None = None  # plain nodes with one parameter
    side_values: tuple[str, ...] = ()
    suffix: str = ""  # composites: "", "unique", "count", "exist"
    rel_param: str | None = None  # relate_filter*
    filter_params: tuple[str, ...] = ()
    filter_attrs: tuple[str, ...] = ()
    filter_values: tuple[tuple[str, ...], ...] = ()  # concepts per filter attribute
    unset: tuple[str, ...] = ()  # value of each filter parameter when left unset ("" or the wildcard)
    null_params: tuple[str, ...] = ()  # parameters of this node that must stay unset
    out_neq: tuple[int, ...] = ()  # template nodes whose output must differ from this node's
    neq: tuple[tuple[str, str], ...] = ()  # NEQ pairs decided once this node is expanded


@dataclass(frozen=True)
class _CTemplate:
    template: Template
    nodes: tuple[_CNode, ...]
    answers: tuple[str, ...]  # the whole answer domain, normalised
    has_relate: bool
    other_pairs: tuple[tuple[str, str], ...]  # "other" heuristic pairs, empty when it does not apply
    unset_values: Mapping[str, str]
    # memo_keys[t]: the template nodes before t whose outputs determine the search below t, or None where
    # sub-problems at t are not memoised
    memo_keys: tuple[tuple[int, ...] | None, ...]


def _compile_template(t: Template, domain: Domain, ops: Mapping[str, Op]) -> _CTemplate:
    """Check a template against the domain and prepare it for the search; raises :class:`DataError`
    naming the template on a mismatch (unknown function, wrong input or parameter type, no answer)."""
    dom = domain

    def bad(msg: str) -> DataError:
        return DataError(f"{t.where}: {msg}")

    ptype: dict[str, str] = {p["name"]: p["type"] for p in t.params}
    pattr: dict[str, Any] = {}
    for name, ty in ptype.items():
        try:
            pattr[name] = dom.attribute_of_type(ty)
        except ValueError:
            raise bad(f"parameter {name}: the domain has no value type {ty!r}") from None
    unset = {name: (a.wildcard or "") if a in dom.attributes else "" for name, a in pattr.items()}
    null_of: dict[int, list[str]] = {}
    neq_of: dict[int, list[tuple[str, str]]] = {}
    out_neq_of: dict[int, list[int]] = {}
    setter: dict[str, int] = {}
    for k, n in enumerate(t.nodes):
        for p in n.get("side_inputs", []):
            setter.setdefault(p, k)
    for c in t.constraints:
        ps = c["params"]
        if c["type"] == "NULL":
            if ps[0] in setter:
                null_of.setdefault(setter[ps[0]], []).append(ps[0])
        elif c["type"] == "NEQ":
            if ps[0] in setter and ps[1] in setter:
                neq_of.setdefault(max(setter[ps[0]], setter[ps[1]]), []).append((ps[0], ps[1]))
        else:
            i, j = ps
            if i != j:
                out_neq_of.setdefault(max(i, j), []).append(min(i, j))
            else:  # a node always equals itself: CLEVR's check always fails
                out_neq_of.setdefault(i, []).append(i)

    types: list[str] = []
    cnodes: list[_CNode] = []
    for k, n in enumerate(t.nodes):
        fn = n["type"]
        sig = dom.clevr_functions.get(fn)
        if sig is None:
            raise bad(f"node {k}: unknown function {fn!r}")
        inputs = tuple(n.get("inputs", []))
        side = tuple(n.get("side_inputs", []))
        if len(inputs) != len(sig.inputs):
            raise bad(f"node {k} ({fn}): expects {len(sig.inputs)} input(s), got {len(inputs)}")
        for j, want in zip(inputs, sig.inputs):
            if types[j] != want:
                raise bad(f"node {k} ({fn}): input node {j} gives {types[j]}, not {want}")
        common = {
            "function": fn,
            "inputs": inputs,
            "null_params": tuple(null_of.get(k, ())),
            "out_neq": tuple(out_neq_of.get(k, ())),
            "neq": tuple(neq_of.get(k, ())),
        }
        if fn in _FILTER_COMPOSITES or fn in _RELATE_COMPOSITES:
            relate = fn.startswith("relate_")
            rel_param = None
            fparams = side
            if relate:
                if not side or pattr[side[0]] not in dom.relations:
                    raise bad(f"node {k} ({fn}): the first side input must be a relation")
                rel_param, fparams = side[0], side[1:]
            fattrs = []
            for p in fparams:
                if pattr[p] not in dom.attributes:
                    raise bad(f"node {k} ({fn}): side input {p} is not an object attribute")
                fattrs.append(pattr[p])
            if len({a.name for a in fattrs}) != len(fattrs):
                raise bad(f"node {k} ({fn}): an attribute appears twice in the side inputs")
            suffix = fn.rsplit("filter", 1)[1].lstrip("_")
            cnodes.append(
                _CNode(
                    kind=_RELATE if relate else _FILTER,
                    suffix=suffix,
                    rel_param=rel_param,
                    filter_params=fparams,
                    filter_attrs=tuple(a.name for a in fattrs),
                    filter_values=tuple(a.concepts for a in fattrs),
                    unset=tuple(unset[p] for p in fparams),
                    **common,
                )
            )
        else:
            if len(side) != len(sig.params) or len(side) > 1:
                raise bad(f"node {k} ({fn}): expects {len(sig.params)} side input(s), got {len(side)}")
            side_param, side_values = None, ()
            if side:
                side_param = side[0]
                a = pattr[side_param]
                if a.type_name != sig.params[0]:
                    raise bad(f"node {k} ({fn}): side input {side_param} must be a {sig.params[0]}")
                side_values = a.concepts
            cnodes.append(
                _CNode(
                    kind=_PLAIN,
                    op=ops[fn],
                    side_param=side_param,
                    side_values=side_values,
                    **common,
                )
            )
        types.append(sig.output)

    final = types[-1]
    if final == BOOL:
        answers: tuple[str, ...] = ("yes", "no")
    elif final == INTEGER:
        answers = tuple(str(i) for i in range(dom.max_count + 1))
    elif final in (OBJECT, "ObjectSet"):
        raise bad(f"the last node ({t.nodes[-1]['type']}) gives no answer")
    else:
        answers = dom.attribute_of_type(final).concepts
    return _CTemplate(
        template=t,
        nodes=tuple(cnodes),
        answers=answers,
        has_relate=any(n["type"] == "relate" for n in t.nodes),
        other_pairs=_other_pairs(t, pattr, dom),
        unset_values=unset,
        memo_keys=_memo_keys(t, cnodes),
    )


def _memo_keys(t: Template, cnodes: Sequence[_CNode]) -> tuple[tuple[int, ...] | None, ...]:
    """For each template node t: the earlier template nodes whose outputs are all that the search from t on
    depends on (inputs of later nodes, OUT_NEQ partners); None where memoising is not safe.

    The answer-balancing limit is fixed during one search, so a sub-search that found nothing finds nothing
    again from the same outputs, up to its own random draws (CLEVR's random extra filter keys and sampled
    trivial relate options). With a raw ``relate`` node (degeneracy test) every earlier output is part of the
    key, and nodes with values downstream of a relate must lie inside the sub-search."""
    T = len(cnodes)
    if any(c["type"] == "NEQ" for c in t.constraints):
        return (None,) * T
    has_relate = any(n.function == "relate" for n in cnodes)
    below_relate = [False] * T
    for k, n in enumerate(cnodes):
        below_relate[k] = any(cnodes[j].function == "relate" or below_relate[j] for j in n.inputs)
    out_neq = [(min(j, k), k) for k, n in enumerate(cnodes) for j in n.out_neq]
    keys: list[tuple[int, ...] | None] = []
    for s in range(T):
        if has_relate:
            unsafe = any(
                below_relate[k] and (cnodes[k].kind != _PLAIN or cnodes[k].side_param) for k in range(s)
            )
            keys.append(None if unsafe else tuple(range(s)))
            continue
        need = {j for k in range(s, T) for j in cnodes[k].inputs if j < s}
        need |= {a for a, b in out_neq if a < s <= b}
        keys.append(tuple(sorted(need)))
    return tuple(keys)


def _other_pairs(t: Template, pattr: Mapping[str, Any], dom: Domain) -> tuple[tuple[str, str], ...]:
    """CLEVR's "other" heuristic applies to templates whose parameters are exactly one object description
    ``<X>`` and a second one ``<X2>`` (CLEVR: Z, C, M, S and Z2, C2, M2, S2); returns the (X, X2) pairs."""
    names = {p["name"] for p in t.params}
    base = sorted(n for n in names if not any(ch.isdigit() for ch in n))
    if not base or any(pattr[n] not in dom.attributes for n in base):
        return ()
    pairs = tuple((n, n[:-1] + "2>") for n in base if n.endswith(">"))
    if len(pairs) != len(base) or names != set(base) | {b for _, b in pairs}:
        return ()
    return pairs
