"""CLEVR's question engine, re-implemented: template instantiation by randomised depth-first search.

The algorithm is CLEVR's (CLEVR-FACTS section 4); only the data structures differ, for speed:

* templates are tried in the order of how many questions each has produced so far (a stable sort, so ties
  keep the file order), one instance per template, until ``questions_per_image`` questions are made; all
  counts are reset every ``reset_every`` scenes;
* a template is instantiated by a depth-first search over partial programs: each template node is expanded
  into every option (composite ``filter*`` / ``relate_filter*`` nodes into masked attribute keys, plain nodes
  with a parameter into every value of its type), options are visited in a uniformly random order, states
  whose output is invalid or that break a constraint (``NULL``, ``OUT_NEQ``, ``NEQ``) are pruned, and the first
  complete program that passes answer balancing (and, for templates with a raw ``relate``, the degeneracy
  test) is taken;
* the text is a random phrasing with every parameter replaced through a random synonym, optional
  ``[words]`` kept with probability 1/2 and CLEVR's "other" heuristic.

Object sets are Python ``int`` bit masks (bit ``i`` = object ``i``), objects are ints; per scene, the object
set of every masked attribute key and every relation is computed once; a search state is the current path of
the recursion (node outputs are computed once, when a child is created, and never copied); random orders are
drawn lazily (a Fisher-Yates shuffle that stops when the search does). Visiting options in the order of a
lazily drawn uniform permutation visits them with the same distribution as CLEVR's shuffled stack, so the
questions follow the same distribution as CLEVR's engine, not the same random stream.

Differences from CLEVR's code, all deliberate:

* Memo of failed sub-searches (``memoize=True``, the default): within one search, a sub-search that found no
  question is not repeated from the same outputs of the earlier template nodes (only the outputs it depends
  on form the key, e.g. the object that a description picked out, not the description). CLEVR repeats it,
  which differs only through that sub-search's own random draws (random extra filter keys, sampled trivial
  relate options). This is what makes exhaustive searches cheap (compare_integer #0, whose answer balancing
  rejects every instance after the first, is searched exhaustively on every scene); family, answer and
  program-length distributions match ``memoize=False`` (CLEVR's search) within sampling noise.
* ``max_states`` bounds one search (CLEVR has no bound); the default is far above what searches need.
* Filter options are taken on the composite node's own input set; CLEVR takes the output of the last
  expanded node, which is the same set except in single_or #5 (two scene nodes first), where it only
  changes how many random extra keys the second filter gets. A ``filter`` expanded to no node at all (a
  random all-None key) stands for its input; CLEVR points it at the previous node.
* ``NEQ`` (unused by the templates) rejects equal values, as its name says; CLEVR's test is inverted.
* The "other" heuristic treats the wildcard (``thing``) as unset, as ``NULL`` does; CLEVR's code compares
  with ``""`` only, so "other" also disappears there when one shape is ``thing`` and the other is not,
  although the two descriptions may then match the same object.
* Answers outside the template's answer domain (a count above ``max_count``) are counted, not an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np

from ..domain import BOOL, INTEGER, OBJECT, Domain
from ..errors import DataError, where
from ..program import ClevrNode, ClevrProgram
from ..symbolic import SceneFacts

__all__ = [
    "CLEVR_FILE_ORDER",
    "GeneratedQuestion",
    "QuestionEngine",
    "Template",
    "load_synonyms",
    "load_templates",
]

# CLEVR's template files in the order that gives the global question_family_index 0-89.
CLEVR_FILE_ORDER = (
    "compare_integer",
    "comparison",
    "three_hop",
    "single_and",
    "same_relate",
    "single_or",
    "one_hop",
    "two_hop",
    "zero_hop",
)
CONSTRAINT_TYPES = ("NULL", "OUT_NEQ", "NEQ")
TRIVIAL_FRACTION = 0.1  # share of "trivial" relate_filter options kept (CLEVR's trivial_frac)
_FILTER_COMPOSITES = ("filter", "filter_unique", "filter_count", "filter_exist")
_RELATE_COMPOSITES = tuple("relate_" + c for c in _FILTER_COMPOSITES)
_OPTIONAL = re.compile(r"\[([^\[]*)\]")


# --------------------------------------------------------------------------------------------- templates
@dataclass(frozen=True)
class Template:
    """One question family: phrasings, program template, parameter slots and constraints (CLEVR format).

    ``family`` is the global family index (CLEVR's ``question_family_index``), ``index_in_file`` the position
    inside ``filename``.
    """

    family: int
    filename: str
    index_in_file: int
    text: tuple[str, ...]
    nodes: tuple[dict, ...]
    params: tuple[dict, ...]
    constraints: tuple[dict, ...]

    @property
    def where(self) -> str:
        return f"{self.filename}: template {self.index_in_file}"


def _template_dir(directory: Path | None) -> Traversable:
    if directory is None:
        return resources.files("nscl").joinpath("generate", "templates")
    return Path(directory)


def load_templates(directory: Path | None = None) -> list[Template]:
    """Load every ``*.json`` template file of ``directory`` (None: the packaged templates).

    Files named in :data:`CLEVR_FILE_ORDER` come first in that order, then any other file sorted by name;
    families are numbered consecutively in that order, so CLEVR's nine files give CLEVR's global families
    0-89. Raises :class:`DataError` naming the file and template index on malformed input.
    """
    root = _template_dir(directory)
    if not root.is_dir():
        raise DataError(f"{root}: template directory not found")
    files = {f.name: f for f in root.iterdir() if f.name.endswith(".json") and f.is_file()}
    first = [f"{n}.json" for n in CLEVR_FILE_ORDER if f"{n}.json" in files]
    names = first + sorted(set(files) - set(first))
    if not names:
        raise DataError(f"{root}: no template files (*.json)")
    out: list[Template] = []
    for name in names:
        try:
            data = json.loads(files[name].read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{where(name)}cannot read template file: {e}") from None
        if not isinstance(data, list):
            raise DataError(f"{where(name)}a template file must hold a JSON list of templates")
        for i, raw in enumerate(data):
            out.append(_parse_template(raw, name, i, len(out)))
    return out


def _parse_template(raw: object, filename: str, index: int, family: int) -> Template:
    loc = f"{filename}: template {index}"

    def bad(msg: str) -> DataError:
        return DataError(f"{loc}: {msg}")

    if not isinstance(raw, Mapping):
        raise bad("a template must be a JSON object")
    text, nodes, params = raw.get("text"), raw.get("nodes"), raw.get("params")
    constraints = raw.get("constraints", [])
    if not isinstance(text, list) or not text or not all(isinstance(t, str) and t.strip() for t in text):
        raise bad("'text' must be a non-empty list of phrasings")
    if not isinstance(params, list) or not all(
        isinstance(p, Mapping) and isinstance(p.get("name"), str) and isinstance(p.get("type"), str)
        for p in params
    ):
        raise bad("'params' must be a list of {name, type} objects")
    names = [p["name"] for p in params]
    if len(set(names)) != len(names):
        raise bad("duplicate parameter names")
    if not isinstance(nodes, list) or not nodes:
        raise bad("'nodes' must be a non-empty list")
    for k, n in enumerate(nodes):
        if not isinstance(n, Mapping) or not isinstance(n.get("type"), str):
            raise bad(f"node {k}: missing 'type'")
        inputs = n.get("inputs", [])
        if not isinstance(inputs, list) or not all(
            isinstance(j, int) and not isinstance(j, bool) and 0 <= j < k for j in inputs
        ):
            raise bad(f"node {k} ({n['type']}): 'inputs' must list earlier node indices")
        side = n.get("side_inputs", [])
        if not isinstance(side, list) or not all(isinstance(s, str) and s in names for s in side):
            raise bad(f"node {k} ({n['type']}): 'side_inputs' must name declared parameters")
    if not isinstance(constraints, list):
        raise bad("'constraints' must be a list")
    for k, c in enumerate(constraints):
        if not isinstance(c, Mapping) or c.get("type") not in CONSTRAINT_TYPES:
            raise bad(f"constraint {k}: type must be one of {', '.join(CONSTRAINT_TYPES)}")
        ps = c.get("params")
        if c["type"] == "NULL":
            ok = isinstance(ps, list) and len(ps) == 1 and ps[0] in names
        elif c["type"] == "NEQ":
            ok = isinstance(ps, list) and len(ps) == 2 and all(p in names for p in ps)
        else:
            ok = (
                isinstance(ps, list)
                and len(ps) == 2
                and all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < len(nodes) for j in ps)
            )
        if not ok:
            raise bad(f"constraint {k} ({c['type']}): bad 'params' {ps!r}")
    return Template(
        family=family,
        filename=filename,
        index_in_file=index,
        text=tuple(text),
        nodes=tuple(dict(n) for n in nodes),
        params=tuple(dict(p) for p in params),
        constraints=tuple(dict(c) for c in constraints),
    )


def load_synonyms(path: Path | None = None) -> dict[str, list[str]]:
    """The synonym table (word -> surface forms); None: the packaged ``generate/synonyms.json``."""
    src: Traversable = (
        resources.files("nscl").joinpath("generate", "synonyms.json") if path is None else Path(path)
    )
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where(src)}cannot read synonyms: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and v and all(isinstance(s, str) for s in v)
        for k, v in data.items()
    ):
        raise DataError(f"{where(src)}synonyms must map each word to a non-empty list of strings")
    return {k: list(v) for k, v in data.items()}


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class GeneratedQuestion:
    """One question: text, CLEVR program (plain functions only, CLEVR v1.0 form), normalised answer
    (``yes``/``no``, ``"3"``, ``"red"``), global family index and template file name.

    ``params`` holds the template's parameter values in template order, before synonyms: a concept, or
    ``""`` / the attribute's wildcard (``thing``) for a parameter left unset.
    """

    text: str
    program: ClevrProgram
    answer: str
    family: int
    template_filename: str
    params: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------------------------- scene index
class _Invalid:
    """Marker for an invalid node output (CLEVR's ``__INVALID__``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Any = _Invalid()


class _SceneIndex:
    """Per-scene precomputation: object sets as bit masks, masked attribute keys, relation masks."""

    def __init__(self, facts: SceneFacts, domain: Domain) -> None:
        n = facts.n
        self.n = n
        self.full = (1 << n) - 1
        self.value: dict[str, list[str]] = {}
        self.vmask: dict[str, dict[str, int]] = {}
        self.same: dict[str, list[int]] = {}
        for a in domain.attributes:
            vals = [str(o.get(a.name, "")) for o in facts.attributes]
            masks: dict[str, int] = {}
            for i, v in enumerate(vals):
                masks[v] = masks.get(v, 0) | (1 << i)
            self.value[a.name] = vals
            self.vmask[a.name] = masks
            self.same[a.name] = [masks[v] & ~(1 << i) for i, v in enumerate(vals)]
        self.rel_names = tuple(domain.relation_concepts)
        self.rel: dict[str, list[int]] = {}
        for r in self.rel_names:
            lists = facts.relations.get(r)
            masks_r = [0] * n
            if lists is not None:
                for i in range(min(n, len(lists))):
                    m = 0
                    for j in lists[i]:
                        m |= 1 << j
                    masks_r[i] = m
            self.rel[r] = masks_r
        self._keys: dict[tuple[str, ...], list[tuple[tuple, int]]] = {}
        self._filter_cache: dict[tuple, tuple[list, int]] = {}
        self._relate_cache: dict[tuple, tuple[list, list]] = {}

    def keys(self, attrs: tuple[str, ...]) -> list[tuple[tuple, int]]:
        """Every masked key (a value or None per attribute) that matches an object, with its object set."""
        got = self._keys.get(attrs)
        if got is None:
            table: dict[tuple, int] = {}
            k = len(attrs)
            columns = [self.value[a] for a in attrs]
            for i in range(self.n):
                full = [c[i] for c in columns]
                bit = 1 << i
                for m in range(1 << k):
                    key = tuple(full[j] if (m >> j) & 1 else None for j in range(k))
                    table[key] = table.get(key, 0) | bit
            got = self._keys[attrs] = list(table.items())
        return got

    def mask_of(self, attrs: tuple[str, ...], key: Sequence[str | None]) -> int:
        m = self.full
        for a, v in zip(attrs, key):
            if v is not None:
                m &= self.vmask[a].get(v, 0)
        return m

    def filter_options(self, x: int, attrs: tuple[str, ...], kind: str) -> tuple[list, int]:
        """CLEVR's filter options for input set ``x``: (key, subset) pairs and how many random keys to add."""
        ck = (x, attrs, kind)
        got = self._filter_cache.get(ck)
        if got is None:
            opts = [(k, x & m) for k, m in self.keys(attrs)]
            if kind == "unique":
                opts = [(k, s) for k, s in opts if s and not s & (s - 1)]
                extra = 0
            else:
                if kind == "":  # plain filter: no all-None key
                    none = (None,) * len(attrs)
                    opts = [(k, s) for k, s in opts if k != none]
                if kind == "exist":
                    extra = len(opts)
                else:  # filter, count: as many random keys as there are singleton options
                    extra = sum(1 for _, s in opts if s and not s & (s - 1))
            got = self._filter_cache[ck] = (opts, extra)
        return got

    def relate_options(self, obj: int, attrs: tuple[str, ...], kind: str) -> tuple[list, list]:
        """CLEVR's relate_filter options of object ``obj``: (non-trivial, trivial) lists of
        (relation, key, subset); trivial = the subset is the key's whole object set."""
        ck = (obj, attrs, kind)
        got = self._relate_cache.get(ck)
        if got is None:
            unique = kind == "unique"
            include_zero = kind in ("count", "exist")
            opts: list = []
            trivial: list = []
            keys = self.keys(attrs)
            for r in self.rel_names:
                related = self.rel[r][obj]
                for k, fm in keys:
                    s = related & fm
                    if unique:
                        if not s or s & (s - 1):
                            continue
                    elif not s and not include_zero:
                        continue
                    (trivial if s == fm else opts).append((r, k, s))
            got = self._relate_cache[ck] = (opts, trivial)
        return got


# --------------------------------------------------------------------------------------------- plain ops
Op = Callable[[_SceneIndex, list, Any], Any]


def _op_unique(sc: _SceneIndex, a: list, v: Any) -> Any:
    x = a[0]
    if x and not x & (x - 1):
        return x.bit_length() - 1
    return INVALID


def _make_ops(domain: Domain) -> dict[str, Op]:
    """Bit-mask implementations of every plain CLEVR function of the domain."""
    ops: dict[str, Op] = {
        "scene": lambda sc, a, v: sc.full,
        "unique": _op_unique,
        "relate": lambda sc, a, v: sc.rel[v][a[0]],
        "union": lambda sc, a, v: a[0] | a[1],
        "intersect": lambda sc, a, v: a[0] & a[1],
        "count": lambda sc, a, v: a[0].bit_count(),
        "exist": lambda sc, a, v: a[0] != 0,
        "equal_integer": lambda sc, a, v: a[0] == a[1],
        "less_than": lambda sc, a, v: a[0] < a[1],
        "greater_than": lambda sc, a, v: a[0] > a[1],
        "equal_object": lambda sc, a, v: a[0] == a[1],
    }
    for attr in domain.attributes:
        n = attr.name
        ops[f"filter_{n}"] = lambda sc, a, v, n=n: a[0] & sc.vmask[n].get(v, 0)
        ops[f"query_{n}"] = lambda sc, a, v, n=n: sc.value[n][a[0]]
        ops[f"same_{n}"] = lambda sc, a, v, n=n: sc.same[n][a[0]]
        ops[f"equal_{n}"] = lambda sc, a, v: a[0] == a[1]
    return ops


# --------------------------------------------------------------------------------------------- compiled
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


def _lazy_shuffle(a: list, rnd: Callable[[], float]) -> Iterator:
    """Yield the items of ``a`` in a uniformly random order, drawing the order only as far as it is
    consumed (a Fisher-Yates shuffle of ``a`` in place)."""
    n = len(a)
    for k in range(n):
        j = k + int(rnd() * (n - k))
        a[k], a[j] = a[j], a[k]
        yield a[k]


class _Uniform:
    """Uniform [0, 1) numbers from a numpy Generator, drawn in blocks (one generator call per block)."""

    __slots__ = ("_rng", "_buf", "_i")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        i = self._i
        if i >= len(self._buf):
            self._buf = self._rng.random(256).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]

    def choice(self, seq: Sequence) -> Any:
        return seq[int(self() * len(seq))]


class _Abort(Exception):
    """The search visited ``max_states`` states without finding a question."""


# --------------------------------------------------------------------------------------------- engine
@dataclass
class _Counts:
    questions: list[int] = field(default_factory=list)  # per template
    answers: list[dict[str, int]] = field(default_factory=list)  # per template: answer -> count


class QuestionEngine:
    """Instantiates question templates on scenes as CLEVR's ``generate_questions.py`` does.

    The engine keeps, per template, the number of questions made and the count of each answer; both are
    reset every ``reset_every`` scenes (the first :meth:`generate` call resets them). ``max_states`` bounds
    the number of search states visited for one template on one scene (CLEVR has no bound); a search that
    reaches it gives up on that template for that scene.
    """

    def __init__(
        self,
        domain: Domain,
        templates: Sequence[Template],
        synonyms: Mapping[str, list[str]],
        *,
        questions_per_image: int = 10,
        reset_every: int = 250,
        max_states: int = 200_000,
        memoize: bool = True,
    ) -> None:
        if questions_per_image < 1:
            raise ValueError("questions_per_image must be at least 1")
        if reset_every < 1:
            raise ValueError("reset_every must be at least 1")
        if max_states < 1:
            raise ValueError("max_states must be at least 1")
        if not templates:
            raise ValueError("no templates")
        self.domain = domain
        self.templates = tuple(templates)
        self.synonyms = {k: tuple(v) for k, v in synonyms.items()}
        self.questions_per_image = questions_per_image
        self.reset_every = reset_every
        self.max_states = max_states
        self.memoize = memoize
        self._ops = _make_ops(domain)
        self._compiled = tuple(self._compile(t) for t in self.templates)
        self._scenes_seen = 0
        self._counts = _Counts()
        self.reset_counts()
        #: number of states visited by the last search (for benchmarks and tests)
        self.last_states = 0

    # ------------------------------------------------------------------------------------ compilation
    def _compile(self, t: Template) -> _CTemplate:
        dom = self.domain

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
                        op=self._ops[fn],
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

    # ------------------------------------------------------------------------------------ counts
    def reset_counts(self) -> None:
        """Forget all per-template question and answer counts."""
        self._counts = _Counts(
            questions=[0] * len(self._compiled),
            answers=[dict.fromkeys(ct.answers, 0) for ct in self._compiled],
        )

    @property
    def template_counts(self) -> tuple[int, ...]:
        """Questions made per template since the last reset."""
        return tuple(self._counts.questions)

    def answer_counts(self, template: int) -> dict[str, int]:
        """Answer counts of one template (by position in ``templates``) since the last reset."""
        return dict(self._counts.answers[template])

    # ------------------------------------------------------------------------------------ generation
    def generate(self, facts: SceneFacts, rng: np.random.Generator) -> list[GeneratedQuestion]:
        """Up to ``questions_per_image`` questions about one scene, at most one per template."""
        if self._scenes_seen % self.reset_every == 0:
            self.reset_counts()
        self._scenes_seen += 1
        sc = _SceneIndex(facts, self.domain)
        rnd = _Uniform(rng)
        counts = self._counts
        order = sorted(range(len(self._compiled)), key=counts.questions.__getitem__)
        out: list[GeneratedQuestion] = []
        for k in order:
            q = self._instantiate(self._compiled[k], counts.answers[k], sc, rnd)
            if q is None:
                continue
            counts.questions[k] += 1
            counts.answers[k][q.answer] = counts.answers[k].get(q.answer, 0) + 1
            out.append(q)
            if len(out) >= self.questions_per_image:
                break
        return out

    def _instantiate(
        self, ct: _CTemplate, answer_counts: Mapping[str, int], sc: _SceneIndex, rnd: _Uniform
    ) -> GeneratedQuestion | None:
        """One instance of a template by randomised DFS, or None."""
        ranked = sorted(answer_counts.values())
        if len(ranked) >= 2:
            limit = min(1.1 * ranked[-2], 5.0 * max(ranked[len(ranked) // 2], 5))
        else:
            limit = float("inf")
        found = self._search(ct, sc, rnd, answer_counts, limit)
        if found is None:
            return None
        nodes, vals, answer = found
        program = ClevrProgram(tuple(ClevrNode(f, i, v) for f, i, v in nodes))
        text = self._text(ct, vals, rnd)
        t = ct.template
        params = tuple((p["name"], vals[p["name"]]) for p in t.params if p["name"] in vals)
        return GeneratedQuestion(text, program, answer, t.family, t.filename, params)

    def _search(
        self,
        ct: _CTemplate,
        sc: _SceneIndex,
        rnd: _Uniform,
        answer_counts: Mapping[str, int],
        limit: float,
    ) -> tuple[list, dict[str, str], str] | None:
        cnodes = ct.nodes
        T = len(cnodes)
        outs: list[Any] = [None] * T  # output of each template node (its last expanded node)
        idx: list[int] = [0] * T  # program index of each template node's last expanded node
        prog: list[tuple[str, tuple[int, ...], tuple[str, ...]]] = []
        vals: dict[str, str] = {}
        budget = self.max_states
        states = 0
        ops = self._ops
        result: list = []
        memo_keys = ct.memo_keys if self.memoize else (None,) * T
        failed: set = set()

        def finish(answer_value: Any) -> bool:
            if answer_value is True or answer_value is False:
                a = "yes" if answer_value else "no"
            else:
                a = str(answer_value)
            if answer_counts.get(a, 0) > limit:
                return False
            if ct.has_relate and _degenerate(prog, answer_value, sc, ops):
                return False
            result.append(a)
            return True

        def accept_level(t: int, node: _CNode, out: Any) -> bool:
            """Constraints decided at template node ``t``; recurse; True once a question is found."""
            for j in node.out_neq:
                if outs[j] == out:
                    return False
            for p, q in node.neq:
                if vals[p] == vals[q]:
                    return False
            if t == T - 1:
                return finish(out)
            return expand(t + 1)

        def expand(t: int) -> bool:
            mk = memo_keys[t]
            if mk is None:
                return expand_node(t)
            key = (t, *[outs[j] for j in mk])
            if key in failed:
                return False
            if expand_node(t):
                return True
            failed.add(key)
            return False

        def expand_node(t: int) -> bool:
            nonlocal states
            node = cnodes[t]
            base = len(prog)
            kind = node.kind
            if kind == _PLAIN:
                args = [outs[i] for i in node.inputs]
                in_idx = tuple(idx[i] for i in node.inputs)
                idx[t] = base
                if node.side_param is None:
                    states += 1
                    out = node.op(sc, args, None)  # type: ignore[misc]
                    if out is INVALID:
                        return False
                    outs[t] = out
                    prog.append((node.function, in_idx, ()))
                    if accept_level(t, node, out):
                        return True
                    del prog[base:]
                    return False
                p = node.side_param
                null = p in node.null_params
                for v in _lazy_shuffle(list(node.side_values), rnd):
                    states += 1
                    if states > budget:
                        raise _Abort
                    if null:
                        continue  # a NULL parameter of a plain node can never be left unset
                    out = node.op(sc, args, v)  # type: ignore[misc]
                    if out is INVALID:
                        continue
                    outs[t] = out
                    vals[p] = v
                    prog.append((node.function, in_idx, (v,)))
                    if accept_level(t, node, out):
                        return True
                    del prog[base:]
                return False

            src = node.inputs[0]
            x = outs[src]
            attrs = node.filter_attrs
            fparams = node.filter_params
            unset = node.unset
            nulls = node.null_params
            suffix = node.suffix
            if kind == _FILTER:
                opts, extra = sc.filter_options(x, attrs, suffix)
                pool: list = list(range(len(opts) + extra))
            else:
                nontrivial, trivial = sc.relate_options(x, attrs, suffix)
                n_triv = round(len(nontrivial) * TRIVIAL_FRACTION / (1 - TRIVIAL_FRACTION))
                opts = nontrivial
                if n_triv and trivial:
                    chosen = []
                    for o in _lazy_shuffle(list(trivial), rnd):
                        chosen.append(o)
                        if len(chosen) == n_triv:
                            break
                    opts = nontrivial + chosen
                pool = list(range(len(opts)))
                extra = 0
            n_opts = len(opts)
            for i in _lazy_shuffle(pool, rnd):
                states += 1
                if states > budget:
                    raise _Abort
                if kind == _FILTER:
                    if i < n_opts:
                        key, s = opts[i]
                    else:  # CLEVR's "empty" option: a fresh random key, each attribute a value or None
                        key = tuple(
                            None if (j := int(rnd() * (len(vs) + 1))) == len(vs) else vs[j]
                            for vs in node.filter_values
                        )
                        s = x & sc.mask_of(attrs, key)
                    rel = None
                else:
                    rel, key, s = opts[i]
                skip = False
                for p, v, u in zip(fparams, key, unset):
                    if v is None:
                        vals[p] = u
                    else:
                        vals[p] = v
                        if p in nulls:
                            skip = True
                if skip:
                    continue
                cur = idx[src]
                if rel is not None:
                    vals[node.rel_param] = rel  # type: ignore[index]
                    prog.append(("relate", (cur,), (rel,)))
                    cur = len(prog) - 1
                    if node.rel_param in nulls:
                        del prog[base:]
                        continue
                for a, v in zip(attrs, key):
                    if v is not None:
                        prog.append(("filter_" + a, (cur,), (v,)))
                        cur = len(prog) - 1
                if suffix == "unique":
                    if not s or s & (s - 1):
                        del prog[base:]
                        continue
                    out: Any = s.bit_length() - 1
                elif suffix == "count":
                    out = s.bit_count()
                elif suffix == "exist":
                    out = s != 0
                else:
                    out = s
                if suffix:
                    prog.append((suffix, (cur,), ()))
                    cur = len(prog) - 1
                idx[t] = cur
                outs[t] = out
                if accept_level(t, node, out):
                    return True
                del prog[base:]
            return False

        try:
            ok = expand(0)
        except _Abort:
            ok = False
        self.last_states = states
        if not ok:
            return None
        return list(prog), dict(vals), result[0]

    # ------------------------------------------------------------------------------------ text
    def _text(self, ct: _CTemplate, vals: Mapping[str, str], rnd: _Uniform) -> str:
        text = rnd.choice(ct.template.text)
        for name, val in vals.items():
            forms = self.synonyms.get(val)
            if forms:
                val = rnd.choice(forms)
            text = text.replace(name, val)
        text = " ".join(text.split())
        while True:  # each [optional] part kept with probability 1/2
            m = _OPTIONAL.search(text)
            if m is None:
                break
            keep = m.group(1) if rnd() > 0.5 else ""
            text = text[: m.start()] + keep + text[m.end() :]
        text = " ".join(text.split())
        text = _other_heuristic(text, vals, ct)
        return text[:1].upper() + text[1:]


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


def _other_heuristic(text: str, vals: Mapping[str, str], ct: _CTemplate) -> str:
    """CLEVR's "other" rule: when the two object descriptions set one attribute to two different values,
    the second object cannot be the first, so " other " is dropped and " another " becomes " a "."""
    if not ct.other_pairs or (" other " not in text and " another " not in text):
        return text
    unset = ct.unset_values
    for a, b in ct.other_pairs:
        va, vb = vals[a], vals[b]
        if va != unset[a] and vb != unset[b] and va != vb:
            return text.replace(" other ", " ").replace(" another ", " a ")
    return text


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


def _degenerate(
    prog: Sequence[tuple[str, tuple[int, ...], tuple[str, ...]]],
    answer: Any,
    sc: _SceneIndex,
    ops: Mapping[str, Op],
) -> bool:
    """CLEVR's degeneracy test: replacing any ``relate`` node by ``scene`` (dropping the nodes that no longer
    feed the answer) must change the answer."""
    for r, (fn, _, _) in enumerate(prog):
        if fn != "relate":
            continue
        memo: dict[int, Any] = {}

        def ev(i: int, r: int = r, memo: dict[int, Any] = memo) -> Any:
            if i in memo:
                return memo[i]
            if i == r:
                out = sc.full
            else:
                f, inputs, values = prog[i]
                args = [ev(j) for j in inputs]
                if any(a is INVALID for a in args):
                    out = INVALID
                else:
                    out = ops[f](sc, args, values[0] if values else None)
            memo[i] = out
            return out

        if ev(len(prog) - 1) == answer:
            return True
    return False
