"""The domain: attributes, concepts, relations and the signatures of both program languages.

A :class:`Domain` is immutable and passed explicitly to whatever needs it; nothing in the package keeps a
module-level current domain. Everything attribute-specific (``filter_color``, ``query_shape``, ``same_size``,
``equal_material`` ...) is *derived* from the attribute list, so a new world (one more colour, a new attribute)
needs only a new JSON definition file such as ``domains/clevr.json``.

Two languages share the domain:

* the CLEVR DSL (raw programs as found in CLEVR's ``questions.json``), with value types ``ObjectSet``,
  ``Object``, ``Integer``, ``Bool`` and one type per attribute (``Color``, ``Shape`` ...);
* the NS-CL language that the neural executor runs (NSCL-REFERENCE section 4), whose object-typed inputs take
  object sets (uniqueness is a softmax there, not an op).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from .errors import DataError, where
from .io import read_json

# Value types shared by both languages.
OBJECT_SET = "ObjectSet"
OBJECT = "Object"
INTEGER = "Integer"
BOOL = "Bool"
_BUILTIN_TYPES = frozenset({"ObjectSet", "Object", "Integer", "Bool"})
# Placeholder output type of ops whose result type is that of their attribute parameter (query_*, query).
ATTRIBUTE_VALUE = "AttributeValue"

# NS-CL parameter kinds.
P_CONCEPTS = "concepts"  # one or more object-level concepts (filter)
P_RELATION = "relation"  # one relational concept (relate)
P_ATTRIBUTE = "attribute"  # one attribute name (query, relate_attribute_equal, query_attribute_equal)


@dataclass(frozen=True)
class Signature:
    """Typed signature of one operation.

    ``inputs`` are value types of the input nodes; ``params`` are the types (CLEVR: ``Color`` ...) or kinds
    (NS-CL: ``concepts`` / ``relation`` / ``attribute``) of the parameters; ``attribute`` is set for
    attribute-specific CLEVR functions (``filter_color`` has attribute ``color``).
    """

    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    output: str
    attribute: str | None = None
    template_only: bool = False


@dataclass(frozen=True)
class Attribute:
    """An attribute space (``color``) or relation space (``spatial_relation``) and its concepts."""

    name: str
    type_name: str  # CLEVR's type name, e.g. "Color"
    concepts: tuple[str, ...]
    wildcard: str | None = None  # the word used when a template leaves this attribute unset ("thing")


@dataclass(frozen=True)
class Domain:
    name: str
    attributes: tuple[Attribute, ...]
    relations: tuple[Attribute, ...]
    max_count: int = 10
    relation_field: str = "relationships"
    description: str = ""
    # Rendering facts for the generator, per attribute: concept -> value (colour RGB, size half-extent,
    # the renderer's shape/material name). Not part of equality: two domains with the same concepts are equal.
    appearance: Mapping[str, Mapping[str, object]] = field(default_factory=dict, compare=False, hash=False)

    # ----------------------------------------------------------------------------------------- lookups
    @cached_property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @cached_property
    def relation_concepts(self) -> tuple[str, ...]:
        return tuple(c for r in self.relations for c in r.concepts)

    @cached_property
    def object_concepts(self) -> tuple[str, ...]:
        return tuple(c for a in self.attributes for c in a.concepts)

    @cached_property
    def _attr_by_name(self) -> Mapping[str, Attribute]:
        return MappingProxyType({a.name: a for a in self.attributes + self.relations})

    @cached_property
    def _attr_by_type(self) -> Mapping[str, Attribute]:
        return MappingProxyType({a.type_name: a for a in self.attributes + self.relations})

    @cached_property
    def _attr_by_concept(self) -> Mapping[str, Attribute]:
        return MappingProxyType({c: a for a in self.attributes + self.relations for c in a.concepts})

    def attribute(self, name: str) -> Attribute:
        """The attribute or relation space called ``name``; KeyError-free: raises ValueError."""
        try:
            return self._attr_by_name[name]
        except KeyError:
            raise ValueError(f"unknown attribute {name!r} (known: {', '.join(self._attr_by_name)})") from None

    def attribute_of_type(self, type_name: str) -> Attribute:
        try:
            return self._attr_by_type[type_name]
        except KeyError:
            raise ValueError(f"unknown value type {type_name!r}") from None

    def attribute_of_concept(self, concept: str) -> Attribute | None:
        """The space a concept belongs to, or None if the domain has no such concept."""
        return self._attr_by_concept.get(concept)

    def is_object_concept(self, concept: str) -> bool:
        a = self._attr_by_concept.get(concept)
        return a is not None and a in self.attributes

    def is_relation_concept(self, concept: str) -> bool:
        a = self._attr_by_concept.get(concept)
        return a is not None and a in self.relations

    # ----------------------------------------------------------------------------------------- answers
    @cached_property
    def answer_words(self) -> tuple[str, ...]:
        """Every possible answer string: yes, no, 0..max_count, and every object concept."""
        return ("yes", "no") + tuple(str(i) for i in range(self.max_count + 1)) + self.object_concepts

    def normalize_answer(self, answer: object) -> str:
        """CLEVR answers appear as strings, JSON booleans or integers; return the canonical string."""
        if isinstance(answer, bool):
            return "yes" if answer else "no"
        if isinstance(answer, int):
            return str(answer)
        if isinstance(answer, str):
            a = answer.strip().lower()
            if a in ("true", "false"):
                return "yes" if a == "true" else "no"
            return a
        raise ValueError(f"answer {answer!r} is not a string, boolean or integer")

    def answer_type(self, answer: str) -> str:
        """``Bool``, ``Integer`` or the attribute type name (``Color``) of a normalised answer."""
        if answer in ("yes", "no"):
            return BOOL
        if answer.isdigit():
            return INTEGER
        a = self._attr_by_concept.get(answer)
        if a is None or a not in self.attributes:
            raise ValueError(f"answer {answer!r} is not a yes/no, a number or a concept of the domain")
        return a.type_name

    # ------------------------------------------------------------------------------------ signatures
    @cached_property
    def clevr_functions(self) -> Mapping[str, Signature]:
        """Every function of the CLEVR DSL, attribute-specific ones derived from the attributes."""
        return MappingProxyType({s.name: s for s in self._clevr_signatures()})

    def _clevr_signatures(self) -> list[Signature]:
        S, O = OBJECT_SET, OBJECT
        sigs = [
            Signature("scene", (), (), S),
            Signature("unique", (S,), (), O),
            Signature("union", (S, S), (), S),
            Signature("intersect", (S, S), (), S),
            Signature("count", (S,), (), INTEGER),
            Signature("exist", (S,), (), BOOL),
            Signature("equal_integer", (INTEGER, INTEGER), (), BOOL),
            Signature("less_than", (INTEGER, INTEGER), (), BOOL),
            Signature("greater_than", (INTEGER, INTEGER), (), BOOL),
            Signature("equal_object", (O, O), (), BOOL),
        ]
        for r in self.relations:
            sigs.append(Signature("relate", (O,), (r.type_name,), S))
        for a in self.attributes:
            t = a.type_name
            sigs += [
                Signature(f"filter_{a.name}", (S,), (t,), S, a.name),
                Signature(f"query_{a.name}", (O,), (), t, a.name),
                Signature(f"same_{a.name}", (O,), (), S, a.name),
                Signature(f"equal_{a.name}", (t, t), (), BOOL, a.name),
            ]
        # Template-only composites (expanded by the question engine, never in a finished program).
        obj_types = tuple(a.type_name for a in self.attributes)
        rel_types = tuple(r.type_name for r in self.relations)
        for suffix, out in (("", S), ("_unique", O), ("_count", INTEGER), ("_exist", BOOL)):
            sigs.append(Signature(f"filter{suffix}", (S,), obj_types, out, template_only=True))
            sigs.append(
                Signature(f"relate_filter{suffix}", (O,), rel_types + obj_types, out, template_only=True)
            )
        return sigs

    @cached_property
    def nscl_ops(self) -> Mapping[str, Signature]:
        """The NS-CL language (NSCL-REFERENCE section 4). Object-typed inputs receive object sets."""
        S, O = OBJECT_SET, OBJECT
        sigs = [
            Signature("scene", (), (), S),
            Signature("filter", (S,), (P_CONCEPTS,), S),
            Signature("relate", (O,), (P_RELATION,), S),
            Signature("relate_attribute_equal", (O,), (P_ATTRIBUTE,), S),
            Signature("intersect", (S, S), (), S),
            Signature("union", (S, S), (), S),
            Signature("query", (O,), (P_ATTRIBUTE,), ATTRIBUTE_VALUE),
            Signature("exist", (S,), (), BOOL),
            Signature("count", (S,), (), INTEGER),
            Signature("query_attribute_equal", (O, O), (P_ATTRIBUTE,), BOOL),
            Signature("count_equal", (S, S), (), BOOL),
            Signature("count_less", (S, S), (), BOOL),
            Signature("count_greater", (S, S), (), BOOL),
        ]
        return MappingProxyType({s.name: s for s in sigs})

    # ------------------------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<domain>") -> Domain:
        """Build a domain from its JSON definition (see ``domains/clevr.json``)."""
        try:
            attrs = tuple(
                Attribute(name, spec["type"], _concept_list(spec["concepts"]), spec.get("wildcard"))
                for name, spec in data["attributes"].items()
            )
            rels = tuple(
                Attribute(name, spec["type"], _concept_list(spec["concepts"]))
                for name, spec in data["relations"].items()
            )
            dom = cls(
                name=str(data["name"]),
                attributes=attrs,
                relations=rels,
                max_count=int(data.get("max_count", 10)),
                relation_field=str(data.get("relation_field", "relationships")),
                description=str(data.get("description", "")),
                appearance=MappingProxyType(
                    {
                        k: MappingProxyType(dict(v))
                        for k, v in data.get("appearance", {}).items()
                        if k[0] != "_"
                    }
                ),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{where(source)}invalid domain definition: missing or malformed {e}") from None
        seen: dict[str, str] = {}
        for a in attrs + rels:
            if not a.concepts:
                raise DataError(f"{where(source, a.name)}attribute has no concepts")
            if not all(isinstance(c, str) and c for c in a.concepts):
                raise DataError(f"{where(source, a.name)}'concepts' must be a list of non-empty strings")
            for c in a.concepts:
                if c in seen:
                    raise DataError(f"{where(source, c)}concept belongs to both {seen[c]} and {a.name}")
                seen[c] = a.name
        if len({a.name for a in attrs + rels}) != len(attrs + rels):
            raise DataError(f"{where(source)}duplicate attribute names")
        types = [a.type_name for a in attrs + rels]
        for t in set(types):
            if types.count(t) > 1 or t in _BUILTIN_TYPES:
                raise DataError(f"{where(source, t)}type name used twice or reserved")
        names = [s.name for s in dom._clevr_signatures()]
        for fn in set(names):
            if names.count(fn) > 1:
                raise DataError(f"{where(source, fn)}derived function name clashes with another function")
        return dom

    @classmethod
    def load(cls, path: str | Path) -> Domain:

        return cls.from_dict(read_json(path), str(path))

    def __reduce__(self) -> tuple:
        # Pickle through the JSON definition (cached mapping proxies are not picklable), e.g. for workers.
        return (Domain.from_dict, (self.to_dict(), f"<pickled {self.name}>"))

    def to_dict(self) -> dict:
        """The JSON definition; ``Domain.from_dict(d.to_dict()) == d``."""

        def spec(a: Attribute) -> dict:
            s: dict = {"type": a.type_name, "concepts": list(a.concepts)}
            if a.wildcard is not None:
                s["wildcard"] = a.wildcard
            return s

        return {
            "name": self.name,
            "description": self.description,
            "attributes": {a.name: spec(a) for a in self.attributes},
            "relations": {r.name: spec(r) for r in self.relations},
            "relation_field": self.relation_field,
            "max_count": self.max_count,
            "appearance": {k: dict(v) for k, v in self.appearance.items()},
        }


def _concept_list(value: object) -> tuple[str, ...]:
    """A definition's ``concepts`` list (a bare string would otherwise become its letters)."""
    if not isinstance(value, list):
        raise TypeError("'concepts' must be a list")
    return tuple(value)


def builtin_domain(name: str = "clevr") -> Domain:
    """A domain shipped with the package (``clevr``); an unknown name raises DataError."""
    folder = resources.files("nscl").joinpath("domains")
    known = sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    if name not in known:
        raise DataError(f"unknown domain {name!r} (built-in: {', '.join(known)}; or give a domain JSON file)")
    text = folder.joinpath(f"{name}.json").read_text(encoding="utf-8")
    return Domain.from_dict(json.loads(text), f"nscl/domains/{name}.json")


def load_domain(spec: str | None) -> Domain:
    """A built-in domain by name, or a domain definition file by path; None means ``clevr``."""
    if spec is None:
        return builtin_domain()
    if spec.endswith(".json") or Path(spec).exists():
        return Domain.load(spec)
    return builtin_domain(spec)
