"""CLEVR's question engine, re-implemented: template instantiation by randomised depth-first search.

This module owns the engine (:class:`QuestionEngine`: template order, answer balancing, the search, the
degeneracy test, the question text) and its result, :class:`GeneratedQuestion`. Template and synonym files
are loaded by :mod:`nscl.generate.template_files`, prepared for the search by
:mod:`nscl.generate.template_compiler`, and evaluated on a per-scene bit-mask index from
:mod:`nscl.generate.scene_index`.

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

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..domain import Domain
from ..program import ClevrNode, ClevrProgram
from ..symbolic import SceneFacts
from .scene_index import INVALID, Op, _make_ops, _SceneIndex
from .template_compiler import _FILTER, _PLAIN, _CNode, _compile_template, _CTemplate
from .template_files import Template

__all__ = ["GeneratedQuestion", "QuestionEngine"]

TRIVIAL_FRACTION = 0.1  # share of "trivial" relate_filter options kept (CLEVR's trivial_frac)
_OPTIONAL = re.compile(r"\[([^\[]*)\]")


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
    reaches it gives up on that template for that scene. ``wording_seed`` seeds the separate random stream the
    wording (phrasing, synonyms, optional words) draws from.
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
        wording_seed: int | Sequence[int] | np.random.SeedSequence = 0,
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
        # The wording (phrasing, synonyms, optional words) draws from its own stream, so which questions a seed
        # asks (programs, answers), and the scenes drawn after them, do not depend on the wording the templates
        # offer.
        self._words = np.random.default_rng(wording_seed)
        self._ops = _make_ops(domain)
        self._compiled = tuple(_compile_template(t, domain, self._ops) for t in self.templates)
        self._scenes_seen = 0
        self._counts = _Counts()
        self.reset_counts()
        #: number of states visited by the last search (for benchmarks and tests)
        self.last_states = 0

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
        words = _Uniform(self._words)
        rnd = _Uniform(rng)
        counts = self._counts
        order = sorted(range(len(self._compiled)), key=counts.questions.__getitem__)
        out: list[GeneratedQuestion] = []
        for k in order:
            q = self._instantiate(self._compiled[k], counts.answers[k], sc, rnd, words)
            if q is None:
                continue
            counts.questions[k] += 1
            counts.answers[k][q.answer] = counts.answers[k].get(q.answer, 0) + 1
            out.append(q)
            if len(out) >= self.questions_per_image:
                break
        return out

    def _instantiate(
        self,
        ct: _CTemplate,
        answer_counts: Mapping[str, int],
        sc: _SceneIndex,
        rnd: _Uniform,
        words: _Uniform,
    ) -> GeneratedQuestion | None:
        """One instance of a template by randomised DFS (``rnd``), or None; its wording draws from ``words``."""
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
        text = self._text(ct, vals, words)
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
