"""Per-scene index of the question engine: object sets as bit masks, and the plain CLEVR functions on it.

Object sets are Python ``int`` bit masks (bit ``i`` = object ``i``), objects are ints. ``_SceneIndex``
computes, once per scene, the object set of every attribute value, of every masked attribute key (a value or
None per attribute) and of every relation, and caches the options of CLEVR's composite ``filter*`` /
``relate_filter*`` nodes per input; ``_make_ops`` gives a bit-mask implementation of every plain CLEVR
function of a domain (``Op``: scene index, input values, side-input value -> output or ``INVALID``).
Underscored names are internal to the question engine's modules (scene_index, template_compiler,
questions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..domain import Domain
from ..symbolic import SceneFacts

__all__ = ["INVALID", "Op"]


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
