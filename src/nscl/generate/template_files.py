"""Question-template and synonym files of the question engine: loading and validation.

Owns :class:`Template` (one CLEVR question family: phrasings, program nodes, parameter slots, constraints),
``load_templates`` (every ``*.json`` template file of a directory, packaged ``generate/templates`` by
default, numbered into global families in :data:`CLEVR_FILE_ORDER`), the structural checks that turn
malformed input into a :class:`~nscl.errors.DataError` naming the file and template, and ``load_synonyms``
(the word -> surface forms table, packaged ``generate/synonyms.json`` by default). Checks that need the
domain (function signatures, parameter types) happen when :mod:`nscl.generate.template_compiler` prepares a
template for the search.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from ..errors import DataError, where

__all__ = [
    "CLEVR_FILE_ORDER",
    "CONSTRAINT_TYPES",
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
