"""The IR verifier: the invariants every pass relies on, checked in one walk over the graph.

Passes assume single assignment, definition before use (which is also topological order),
registered ops with complete attrs, and declared types equal to what inference says. Tests run
`verify` between passes so that a pass breaking one of these fails where it breaks it, with the
offending node and its DSL location, instead of somewhere downstream.
"""
from __future__ import annotations

from typing import Iterator

from .errors import ChainruleError, SourceLoc
from .graph import Graph, Node, Param, Value
from .ops import ATTR_KINDS, OPS, OpDef, complete_attrs, infer_types
from .printer import format_node, format_value
from .shapes import OpTypeError
from .symbols import symbol_sources, unbound_rule
from .types import is_float


class VerifyError(ChainruleError):
    """A graph breaks an IR invariant; `loc` is the offending node's (or param's) location."""


def verify(graph: Graph) -> None:
    """Raise VerifyError for the first broken invariant; return None for a well-formed graph."""
    first = next(_problems(graph), None)
    if first is not None:
        raise first


def verify_all(graph: Graph) -> list[str]:
    """Every broken invariant, one line each: `FILE:LINE:COL: <node>: <rule>`."""
    return [str(problem) for problem in _problems(graph)]


class _Scope:
    """The values defined so far while walking the graph in definition order."""

    def __init__(self, graph: Graph):
        # Everything the graph defines anywhere: tells "used too early" from "not in the graph".
        self.in_graph = set(graph.values())
        self.defined: set[Value] = set()
        self.by_name: dict[str, Value] = {}

    def use(self, value: Value) -> str | None:
        """The broken rule when `value` is read here, or None."""
        if value in self.defined:
            return None
        if value in self.in_graph:
            return f"uses {format_value(value)} before it is defined"
        return f"uses {format_value(value)}, which the graph does not define"

    def define(self, value: Value) -> str | None:
        """Record `value` as defined here; the broken rule when that breaks SSA, or None."""
        rule = None
        if value in self.defined:
            rule = f"defines {format_value(value)} a second time"
        elif self.by_name.get(value.name, value) is not value:
            rule = f"defines {format_value(value)}, a name another value already has"
        self.defined.add(value)
        self.by_name.setdefault(value.name, value)
        return rule


def _problems(graph: Graph) -> Iterator[VerifyError]:
    """The broken invariants in graph order, lazily so that `verify` stops at the first."""
    scope = _Scope(graph)
    for value in graph.inputs:
        yield from _located(f"input {_declaration(value)}", graph.loc, [scope.define(value)])
    for param in graph.params:
        yield from _located(f"{param.kind} {_declaration(param.value)}", param.loc,
                            [scope.define(param.value), *_param_rules(param)])
    bound = set(symbol_sources(graph))
    for node in graph.nodes:
        yield from _located(format_node(node), node.loc,
                            _node_rules(scope, node) + [_symbols_rule(node, bound)])
        if isinstance(node.attrs.get("body"), Graph):
            yield from _body_problems(node.attrs["body"])
    returned = "return " + ", ".join(format_value(v) for v in graph.outputs)
    yield from _located(returned, graph.loc, [scope.use(value) for value in graph.outputs])
    yield from _located(returned, graph.loc, [_objective_rule(graph)])
    for state, output in graph.updates.items():
        yield from _located(f"update %{state} = %{output}", graph.loc,
                            [_update_rule(graph, state, output)])
    yield from _group_problems(graph)


def _body_problems(body: Graph) -> Iterator[VerifyError]:
    """A body is a graph of its own (checked in its own scope: it reads only its inputs) that
    keeps nothing: no params, no state updates, no objective."""
    kept = ["it declares params" if body.params else None,
            "it updates state" if body.updates else None,
            "it has an objective" if body.objective is not None else None]
    yield from _located(f"body({', '.join(map(_declaration, body.inputs))})", body.loc, kept)
    yield from _problems(body)


def _objective_rule(graph: Graph) -> str | None:
    """The objective, when there is one, leads the outputs: the text form and the front ends
    know it by that place."""
    if graph.objective is None or graph.outputs[:1] == [graph.objective]:
        return None
    return f"the objective {format_value(graph.objective)} is not the first output"


def _group_problems(graph: Graph) -> Iterator[VerifyError]:
    """A group is consecutive elementwise nodes whose values other than the last one's are read
    once, inside the group: a backend may then compute it all where its last node stands."""
    if not graph.groups:
        return
    position = {node: index for index, node in enumerate(graph.nodes)}
    readers = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value, []).append(node)
    for value in graph.outputs:
        readers.setdefault(value, []).append(None)
    for group in graph.groups:
        result = group[-1]
        indices = [position.get(node) for node in group]
        rule = None
        if None in indices or indices != list(range(indices[0], indices[0] + len(group))):
            rule = "its nodes are not consecutive nodes of the graph"
        elif any("elementwise" not in getattr(OPS.get(n.op), "traits", ()) for n in group):
            rule = "holds a node that is not elementwise"
        elif any(len(readers.get(n.output, [])) != 1 or readers[n.output][0] not in group
                 for n in group[:-1]):
            rule = "a value inside it is read more than once or outside it"
        yield from _located(f"group ending at {format_node(result)}", result.loc, [rule])


def _located(subject: str, loc: SourceLoc | None, rules) -> Iterator[VerifyError]:
    """One VerifyError per broken rule (None means the rule holds)."""
    for rule in rules:
        if rule is not None:
            yield VerifyError(f"{subject}: {rule}", loc)


def _declaration(value: Value) -> str:
    return f"{format_value(value)}: {value.type}"


def _update_rule(graph: Graph, state: str, output: str) -> str | None:
    """A state's update is an output of the state's type."""
    states = {p.value.name: p.value for p in graph.params if not p.trainable}
    outputs = {v.name: v for v in graph.outputs}
    if state not in states:
        return f"%{state} is not a state"
    if output not in outputs:
        return f"%{output} is not an output"
    if outputs[output].type != states[state].type:
        return f"the update is {outputs[output].type}, the state {states[state].type}"
    return None


def _param_rules(param: Param) -> list[str]:
    # Params are trained and initialised from their shape, so they need floats and known sizes.
    value_type = param.value.type
    rules = []
    if not is_float(value_type.dtype):
        rules.append(f"a param needs a float dtype, not {value_type.dtype}")
    symbolic = [str(dim) for dim in value_type.shape if not ATTR_KINDS["int"](dim)]
    if symbolic:
        rules.append(f"a param's dims must be integers, not {', '.join(symbolic)}")
    return rules


def _node_rules(scope: _Scope, node: Node) -> list[str | None]:
    # Inputs are checked before the outputs are defined, so a node reading its own output is
    # reported as a use before definition.
    uses = [scope.use(value) for value in node.inputs]
    op_rules = _op_rules(node)
    definitions = [scope.define(value) for value in node.outputs]
    return uses + op_rules + definitions


def _symbols_rule(node: Node, bound: set[str]) -> str | None:
    """A size attr is computed when the graph runs from the symbols the inputs bind."""
    return unbound_rule(node, bound) if node.op in OPS else None


def _op_rules(node: Node) -> list[str]:
    """What the op registry demands of the node: arity, one output (several for a
    multi-result op, as its rule says), attrs, the inferred type."""
    rules = []
    op = OPS.get(node.op)
    if op is None:
        return [f"unknown op '{node.op}'"]
    if len(node.outputs) != 1 and "multi_result" not in op.traits:
        rules.append(f"has {len(node.outputs)} outputs; a node of '{op.name}' has one")
    if len(node.inputs) != op.num_inputs:
        rules.append(f"op '{op.name}' takes {op.num_inputs} inputs, got {len(node.inputs)}")
    rules += _attr_rules(op, node.attrs)
    # Type inference needs the right arity and valid attrs: only once those hold does a type
    # mismatch say something new about the node.
    return rules or _type_rules(node)


def _attr_rules(op: OpDef, attrs: dict) -> list[str]:
    try:
        complete = complete_attrs(op, attrs)
    except OpTypeError as error:  # an unknown name, a missing required attr or a wrong kind
        return [str(error)]
    # complete_attrs keeps the given values, so the attrs can only differ by missing defaults.
    # Passes and backends read attrs without defaults, so nodes must carry every one.
    missing = [name for name in complete if name not in attrs]
    if missing:
        return [f"attrs lack their defaults for {', '.join(missing)}"]
    return []


def _type_rules(node: Node) -> list[str]:
    try:
        inferred = infer_types(node.op, [value.type for value in node.inputs], node.attrs)
    except OpTypeError as error:
        return [f"the op's type rule rejects the inputs: {error}"]
    declared = tuple(value.type for value in node.outputs)
    if len(declared) != len(inferred):
        return [f"has {len(declared)} outputs; its op gives {len(inferred)}"]
    if declared != inferred:
        shown = ", ".join(map(str, declared)), ", ".join(map(str, inferred))
        return [f"declared type {shown[0]} differs from the inferred type {shown[1]}"]
    return []
