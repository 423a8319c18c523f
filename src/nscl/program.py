"""Typed programs: raw CLEVR programs, NS-CL programs, and the translation between them.

Raw CLEVR programs are lists of nodes in topological order; each node has a function, input node indices and
value inputs (``"red"``, ``"left"``). They are parsed from every form found in the wild: the node's function
under ``function`` or ``type``, value inputs under ``value_inputs`` or ``side_inputs``.

NS-CL programs (NSCL-REFERENCE section 6) merge consecutive filters into one ``filter`` with several concepts,
drop ``unique`` (object-typed inputs take sets), and fold the intermediate ``query_*``/``count`` of comparisons
into ``query_attribute_equal`` and ``count_equal``/``count_less``/``count_greater``. They print in a readable
nested form (:meth:`Program.to_str`), which :func:`program_from_str` reads back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .domain import (
    ATTRIBUTE_VALUE,
    OBJECT,
    OBJECT_SET,
    P_ATTRIBUTE,
    P_CONCEPTS,
    P_RELATION,
    Domain,
)
from .errors import ProgramError


# --------------------------------------------------------------------------------------------- CLEVR
@dataclass(frozen=True)
class ClevrNode:
    function: str
    inputs: tuple[int, ...] = ()
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClevrProgram:
    nodes: tuple[ClevrNode, ...]

    def __len__(self) -> int:
        """The raw program length (number of nodes), which the curriculum thresholds."""
        return len(self.nodes)

    @classmethod
    def from_json(cls, data: object, where: str = "program") -> ClevrProgram:
        """Parse a CLEVR program in any of its published forms (``function``/``type``,
        ``value_inputs``/``side_inputs``). Raises ProgramError naming the node on malformed input."""
        if not isinstance(data, list):
            raise ProgramError(f"{where}: a program must be a list of nodes, got {type(data).__name__}")
        nodes = []
        for i, n in enumerate(data):
            if not isinstance(n, Mapping):
                raise ProgramError(f"{where}: node {i}: a node must be an object, got {type(n).__name__}")
            fn = n.get("function", n.get("type"))
            if not isinstance(fn, str):
                raise ProgramError(f"{where}: node {i}: missing 'function' (or 'type')")
            inputs = n.get("inputs", [])
            values = n.get("value_inputs", n.get("side_inputs", []))
            if not isinstance(inputs, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in inputs
            ):
                raise ProgramError(f"{where}: node {i} ({fn}): 'inputs' must be a list of node indices")
            if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
                raise ProgramError(f"{where}: node {i} ({fn}): 'value_inputs' must be a list of strings")
            nodes.append(ClevrNode(fn, tuple(inputs), tuple(values)))
        return cls(tuple(nodes))

    def to_json(self) -> list[dict]:
        """CLEVR v1.0 form: ``function``, ``inputs``, ``value_inputs``."""
        return [
            {"inputs": list(n.inputs), "function": n.function, "value_inputs": list(n.values)}
            for n in self.nodes
        ]

    def validate(self, domain: Domain, where: str = "program") -> list[str]:
        """Check functions, input indices, types and values; return each node's output type."""
        if not self.nodes:
            raise ProgramError(f"{where}: empty program")
        types: list[str] = []
        for i, n in enumerate(self.nodes):
            sig = domain.clevr_functions.get(n.function)
            if sig is None or sig.template_only:
                raise ProgramError(f"{where}: node {i}: unknown function {n.function!r}")
            _check_inputs(where, i, n.function, n.inputs, sig.inputs, types, nscl=False)
            if len(n.values) != len(sig.params):
                raise ProgramError(
                    f"{where}: node {i} ({n.function}): expects {len(sig.params)} value input(s), got {len(n.values)}"
                )
            for v, t in zip(n.values, sig.params):
                if v not in domain.attribute_of_type(t).concepts:
                    raise ProgramError(
                        f"{where}: node {i} ({n.function}): unknown concept {v!r} for type {t}"
                    )
            types.append(sig.output)
        return types


def _check_inputs(
    where: str,
    i: int,
    name: str,
    inputs: Sequence[int],
    wanted: Sequence[str],
    types: Sequence[str],
    nscl: bool,
) -> None:
    if len(inputs) != len(wanted):
        raise ProgramError(f"{where}: node {i} ({name}): expects {len(wanted)} input(s), got {len(inputs)}")
    for k, (j, t) in enumerate(zip(inputs, wanted)):
        if not 0 <= j < i:
            raise ProgramError(
                f"{where}: node {i} ({name}): input {k} refers to node {j}, which is out of range or not earlier"
            )
        got = types[j]
        # An Object-typed slot of an NS-CL op takes an object set (uniqueness is a softmax there). Not so in
        # CLEVR, whose ``relate`` shares the name but needs ``unique`` first.
        ok = got == t or (nscl and t == OBJECT and got == OBJECT_SET)
        if not ok:
            raise ProgramError(f"{where}: node {i} ({name}): input {k} must be {t}, but node {j} gives {got}")


# --------------------------------------------------------------------------------------------- NS-CL
@dataclass(frozen=True)
class Node:
    """One NS-CL operation. ``concepts`` holds filter concepts or the relation concept; ``attribute`` the
    attribute of query / relate_attribute_equal / query_attribute_equal."""

    op: str
    inputs: tuple[int, ...] = ()
    concepts: tuple[str, ...] = ()
    attribute: str | None = None


_ATTRIBUTE_FIRST = frozenset({"query", "relate_attribute_equal", "query_attribute_equal"})


@dataclass(frozen=True)
class Program:
    """An NS-CL program: nodes in topological order; the last node is the answer."""

    nodes: tuple[Node, ...]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def final_op(self) -> str:
        return self.nodes[-1].op

    def validate(self, domain: Domain, where: str = "program") -> list[str]:
        """Check ops, inputs, types and concepts; return each node's output type (query gives the attribute's
        type name, e.g. ``Color``)."""
        if not self.nodes:
            raise ProgramError(f"{where}: empty program")
        types: list[str] = []
        for i, n in enumerate(self.nodes):
            sig = domain.nscl_ops.get(n.op)
            if sig is None:
                raise ProgramError(f"{where}: node {i}: unknown operation {n.op!r}")
            _check_inputs(where, i, n.op, n.inputs, sig.inputs, types, nscl=True)
            kinds = set(sig.params)
            if P_CONCEPTS in kinds:
                if not n.concepts:
                    raise ProgramError(f"{where}: node {i} (filter): needs at least one concept")
                for c in n.concepts:
                    if not domain.is_object_concept(c):
                        raise ProgramError(f"{where}: node {i} ({n.op}): unknown concept {c!r}")
            elif P_RELATION in kinds:
                if len(n.concepts) != 1 or not domain.is_relation_concept(n.concepts[0]):
                    raise ProgramError(f"{where}: node {i} ({n.op}): unknown relation concept {n.concepts!r}")
            elif n.concepts:
                raise ProgramError(f"{where}: node {i} ({n.op}): takes no concepts, got {list(n.concepts)}")
            if P_ATTRIBUTE in kinds:
                if n.attribute not in domain.attribute_names:
                    raise ProgramError(f"{where}: node {i} ({n.op}): unknown attribute {n.attribute!r}")
            elif n.attribute is not None:
                raise ProgramError(f"{where}: node {i} ({n.op}): takes no attribute, got {n.attribute!r}")
            out = sig.output
            if out == ATTRIBUTE_VALUE:
                out = domain.attribute(n.attribute).type_name  # type: ignore[arg-type]
            types.append(out)
        return types

    def output_type(self, domain: Domain) -> str:
        return self.validate(domain)[-1]

    # ------------------------------------------------------------------------------------ JSON
    def to_json(self) -> list[dict]:
        out = []
        for n in self.nodes:
            d: dict = {"op": n.op, "inputs": list(n.inputs)}
            if n.concepts:
                d["concepts"] = list(n.concepts)
            if n.attribute is not None:
                d["attribute"] = n.attribute
            out.append(d)
        return out

    @classmethod
    def from_json(cls, data: object, where: str = "program") -> Program:
        if not isinstance(data, list):
            raise ProgramError(f"{where}: an NS-CL program must be a list of nodes")
        nodes = []
        for i, d in enumerate(data):
            if not isinstance(d, Mapping) or not isinstance(d.get("op"), str):
                raise ProgramError(f"{where}: node {i}: missing 'op'")
            op = d["op"]
            inputs = d.get("inputs", [])
            if not isinstance(inputs, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in inputs
            ):
                raise ProgramError(f"{where}: node {i} ({op}): 'inputs' must be a list of node indices")
            concepts = d.get("concepts", [])
            if isinstance(concepts, str):
                concepts = [concepts]
            if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
                raise ProgramError(f"{where}: node {i} ({op}): 'concepts' must be a list of strings")
            attribute = d.get("attribute")
            if attribute is not None and not isinstance(attribute, str):
                raise ProgramError(f"{where}: node {i} ({op}): 'attribute' must be a string")
            nodes.append(Node(op, tuple(inputs), tuple(concepts), attribute))
        return cls(tuple(nodes))

    # ------------------------------------------------------------------------------------ printing
    def to_str(self, root: int | None = None) -> str:
        """Readable nested form, e.g. ``query(color, filter(scene(), [large, metal, sphere]))``."""
        i = len(self.nodes) - 1 if root is None else root
        n = self.nodes[i]
        args = [self.to_str(j) for j in n.inputs]
        if n.op in _ATTRIBUTE_FIRST:
            args.insert(0, str(n.attribute))
        elif n.op == "filter":
            args.append("[" + ", ".join(n.concepts) + "]")
        elif n.concepts:
            args.append(", ".join(n.concepts))
        return f"{n.op}({', '.join(args)})"

    __str__ = to_str

    def canonical(self) -> Program:
        """An equivalent program with commutative parts in a fixed order (filter concepts sorted, the two
        inputs of intersect/union/query_attribute_equal/count_equal ordered by their printed form), used for
        exact-match scoring."""
        # Inputs are ordered by the printed form of their *canonical* subtrees (nodes are canonicalised in
        # topological order), so that e.g. [red, cube] and [cube, red] sort the same way.
        nodes: list[Node] = []
        printed: list[str] = []
        for n in self.nodes:
            inputs = n.inputs
            if n.op in ("intersect", "union", "query_attribute_equal", "count_equal") and len(inputs) == 2:
                inputs = tuple(sorted(inputs, key=lambda j: printed[j]))
            concepts = tuple(sorted(n.concepts)) if n.op == "filter" else n.concepts
            nodes.append(Node(n.op, inputs, concepts, n.attribute))
            printed.append(Program(tuple(nodes)).to_str(len(nodes) - 1))
        prog = Program(tuple(nodes))
        return Program.from_tree(prog)

    @classmethod
    def from_tree(cls, prog: Program) -> Program:
        """Re-linearise a program in post-order from its root (drops unused nodes, fixes a node order)."""
        out: list[Node] = []
        index: dict[Node, int] = {}

        def visit(i: int) -> int:
            n = prog.nodes[i]
            new_inputs = tuple(visit(j) for j in n.inputs)
            node = Node(n.op, new_inputs, n.concepts, n.attribute)
            if node not in index:
                index[node] = len(out)
                out.append(node)
            return index[node]

        visit(len(prog.nodes) - 1)
        return cls(tuple(out))


# --------------------------------------------------------------------------------------------- readable form
_STR_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*|[()\[\],])")


def program_from_str(text: str, domain: Domain) -> Program:
    """Read the readable form of :meth:`Program.to_str`, e.g.
    ``query(color, filter(relate(filter(scene(), [red]), left), [cube]))``; raises ProgramError."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _STR_TOKEN.match(text, pos)
        if m is None:
            raise ProgramError(f"{text!r}: unexpected character at {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    nodes: list[Node] = []
    i = 0

    def expect(tok: str) -> None:
        nonlocal i
        if i >= len(tokens) or tokens[i] != tok:
            raise ProgramError(f"{text!r}: expected {tok!r} at token {i}")
        i += 1

    def call() -> int:
        nonlocal i
        op = tokens[i]
        if op not in domain.nscl_ops:
            raise ProgramError(f"{text!r}: unknown operation {op!r}")
        i += 1
        expect("(")
        inputs: list[int] = []
        concepts: list[str] = []
        attribute = None
        while tokens[i] != ")":
            if tokens[i] == "[":
                i += 1
                while tokens[i] != "]":
                    if tokens[i] != ",":
                        concepts.append(tokens[i])
                    i += 1
                i += 1
            elif i + 1 < len(tokens) and tokens[i + 1] == "(":
                inputs.append(call())
            elif tokens[i] in domain.attribute_names:
                attribute = tokens[i]
                i += 1
            else:
                concepts.append(tokens[i])
                i += 1
            if tokens[i] == ",":
                i += 1
        expect(")")
        nodes.append(Node(op, tuple(inputs), tuple(concepts), attribute))
        return len(nodes) - 1

    try:
        call()
    except IndexError:
        raise ProgramError(f"{text!r}: unexpected end") from None
    if i != len(tokens):
        raise ProgramError(f"{text!r}: trailing text after the program")
    prog = Program.from_tree(Program(tuple(nodes)))
    prog.validate(domain, text)
    return prog


# --------------------------------------------------------------------------------------------- translation
_COMPARE_INT = {"equal_integer": "count_equal", "less_than": "count_less", "greater_than": "count_greater"}


def translate(raw: ClevrProgram, domain: Domain, where: str = "program") -> Program:
    """Translate a raw CLEVR program into NS-CL (NSCL-REFERENCE section 6).

    Raises ProgramError for ill-formed programs and for ``equal_object``, which NS-CL has no op for.
    """
    raw.validate(domain, where)
    consumers = [0] * len(raw.nodes)
    for n in raw.nodes:
        for j in n.inputs:
            consumers[j] += 1
    nodes: list[Node] = []
    # raw node -> index of the NS-CL node that carries its object set
    ref: dict[int, int] = {}
    # raw node index of a query_*/count that is folded into its consumer: (NS-CL input, attribute or None)
    pending: dict[int, tuple[int, str | None]] = {}
    last = len(raw.nodes) - 1

    def emit(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    for i, n in enumerate(raw.nodes):
        sig = domain.clevr_functions[n.function]
        fn = n.function
        if fn == "scene":
            ref[i] = emit(Node("scene"))
        elif fn == "unique":
            ref[i] = ref[n.inputs[0]]
        elif sig.attribute is not None and fn.startswith("filter_"):
            j = n.inputs[0]
            src = raw.nodes[j]
            if src.function.startswith("filter_") and consumers[j] == 1 and nodes[ref[j]].op == "filter":
                k = ref[j]
                prev = nodes[k]
                nodes[k] = Node("filter", prev.inputs, prev.concepts + n.values, None)
                ref[i] = k
            else:
                ref[i] = emit(Node("filter", (ref[j],), n.values))
        elif fn == "relate":
            ref[i] = emit(Node("relate", (ref[n.inputs[0]],), n.values))
        elif sig.attribute is not None and fn.startswith("same_"):
            ref[i] = emit(Node("relate_attribute_equal", (ref[n.inputs[0]],), (), sig.attribute))
        elif fn in ("intersect", "union"):
            ref[i] = emit(Node(fn, (ref[n.inputs[0]], ref[n.inputs[1]])))
        elif fn == "exist":
            ref[i] = emit(Node("exist", (ref[n.inputs[0]],)))
        elif fn == "count" or (sig.attribute is not None and fn.startswith("query_")):
            attr = sig.attribute if fn != "count" else None
            if i == last:
                op = "count" if attr is None else "query"
                ref[i] = emit(Node(op, (ref[n.inputs[0]],), (), attr))
            else:
                pending[i] = (ref[n.inputs[0]], attr)
        elif sig.attribute is not None and fn.startswith("equal_") or fn in _COMPARE_INT:
            a, b = n.inputs
            if a not in pending or b not in pending:
                raise ProgramError(f"{where}: node {i} ({fn}): its inputs must be query/count nodes")
            (xa, attr_a), (xb, attr_b) = pending[a], pending[b]
            if fn in _COMPARE_INT:
                ref[i] = emit(Node(_COMPARE_INT[fn], (xa, xb)))
            else:
                if attr_a != sig.attribute or attr_b != sig.attribute:
                    raise ProgramError(f"{where}: node {i} ({fn}): compares different attributes")
                ref[i] = emit(Node("query_attribute_equal", (xa, xb), (), sig.attribute))
        elif fn == "equal_object":
            raise ProgramError(f"{where}: node {i}: equal_object has no NS-CL counterpart")
        else:  # pragma: no cover - every non-template function is handled above
            raise ProgramError(f"{where}: node {i}: cannot translate {fn!r}")
    if last not in ref or raw.validate(domain, where)[-1] in (OBJECT, OBJECT_SET):
        raise ProgramError(f"{where}: the last node ({raw.nodes[-1].function}) gives no answer")
    prog = Program(tuple(nodes))
    # Re-linearise so the answer node is last and unused nodes vanish.
    root = ref[last]
    return Program.from_tree(Program(prog.nodes[: root + 1]))


def clevr_answer_op(raw: ClevrProgram) -> str:
    """Question type of a raw CLEVR program by its NS-CL final op (``query``, ``count_less``, ...)."""
    fn = raw.nodes[-1].function
    if fn.startswith("query_"):
        return "query"
    if fn in _COMPARE_INT:
        return _COMPARE_INT[fn]
    if fn == "equal_object":
        return fn
    if fn.startswith("equal_"):
        return "query_attribute_equal"
    return fn


def iter_concepts(prog: Program) -> Iterable[str]:
    for n in prog.nodes:
        yield from n.concepts
