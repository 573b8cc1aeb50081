"""Reverse-mode autodiff as a graph transformation: the backward pass is appended as IR nodes.

Walk the forward nodes in reverse; for each node on a path from a requested input to the
objective, ask its op's rule for input cotangents and accumulate them, summing the
contributions of a value used more than once. No tape: the result is one graph that computes
the objective and its gradients, reusing the forward values it needs.
"""
from __future__ import annotations

from ..ir import ChainruleError, Graph, GraphBuilder, Node, Value, get_op
from ..ir.types import is_float
from .autodiff_rules import VJP_RULES, Backward


def gradient_prefix(objective: Value) -> str:
    """What the name of every value the backward graph of `objective` computes starts with."""
    return f"d{objective.name}/d"


def gradient_name(objective: Value, value: Value) -> str:
    return gradient_prefix(objective) + value.name


def autodiff(graph: Graph, objective: Value, wrt: list[Value]) -> tuple[Graph, dict[str, Value]]:
    """A new graph whose outputs are graph's outputs followed by d objective / d each of `wrt`.

    Returns the graph and the gradient values by the name of the value they differentiate.
    """
    _check_request(graph, objective, wrt)
    active = _active_values(graph, objective, wrt)
    _check_rules(graph, active)

    result = graph.copy()
    builder = GraphBuilder(result)
    forward_values = set(graph.values())
    producer = builder.graph_producer(objective)
    seed = builder.constant(1.0, objective.type.dtype, loc=producer.loc if producer else graph.loc,
                            name=gradient_name(objective, objective))
    contributions: dict[Value, list[tuple[Value, str]]] = {objective: [(seed, "")]}
    totals: set[Value] = {seed}
    summed_for: dict[Value, Value] = {}  # a value asked for as `wrt` may also be a node's output

    def total(value: Value, loc) -> Value:
        """The summed cotangent of `value`, named d<objective>/d<value>."""
        if value in summed_for:
            return summed_for[value]
        # A part renamed as another value's total since it was recorded is known by its new
        # value (a rule may give one value as the cotangent of two inputs).
        parts = [(builder.current(p), via) for p, via in contributions.pop(value, [])]
        name = gradient_name(objective, value)
        renamable = {p for p, _ in parts if p not in forward_values and p not in totals}
        if not parts:
            zero = builder.constant(0.0, value.type.dtype, loc=loc, name=f"{name}.zero")
            summed = builder.emit("broadcast_like", (zero, value), loc=loc, name=name)
        elif len(parts) == 1:
            summed = parts[0][0]
            if summed in renamable:
                summed = builder.rename(summed, name)
        else:
            for part, via in parts:
                if part in renamable:
                    builder.rename(part, f"{name}.via_{via}")
            summed = builder.current(parts[0][0])
            for part, _ in parts[1:]:
                summed = builder.emit("add", (summed, builder.current(part)), loc=loc,
                                      name=f"{name}.sum")
            summed = builder.rename(summed, name)
        totals.add(summed)
        summed_for[value] = summed
        return summed

    for node in reversed(graph.nodes):
        out = node.output
        if out not in active or out not in contributions:
            continue
        cotangent = total(out, node.loc)
        backward = Backward(builder, node, gradient_name(objective, out), active)
        rule = VJP_RULES[node.op]
        input_cotangents = rule(backward, cotangent, *node.inputs, out, **node.attrs)
        for value, input_cotangent in zip(node.inputs, input_cotangents, strict=True):
            if value in active and input_cotangent is not None:
                contributions.setdefault(value, []).append((input_cotangent, out.name))

    param_locs = {p.value: p.loc for p in graph.params}
    grads = {w.name: total(w, param_locs.get(w, graph.loc)) for w in wrt}
    forward_outputs = set(graph.outputs)
    result.outputs = list(graph.outputs) + [g for g in grads.values()
                                            if g not in forward_outputs]
    return result, grads


def _check_request(graph: Graph, objective: Value, wrt: list[Value]) -> None:
    producer = graph.producers().get(objective)
    loc = producer.loc if producer else graph.loc
    if objective.type.rank != 0 or not is_float(objective.type.dtype):
        raise ChainruleError(f"the objective '{objective.name}' must be a float scalar to "
                             f"differentiate, but it is {objective.type}", loc)
    for value in wrt:
        if not is_float(value.type.dtype):
            raise ChainruleError(f"cannot differentiate with respect to '{value.name}': it is "
                                 f"{value.type}, and only float values have gradients",
                                 graph.input_locs.get(value.name, loc))


def _active_values(graph: Graph, objective: Value, wrt: list[Value]) -> set[Value]:
    """Float values that depend on some of `wrt` and that the objective depends on."""
    depends = set(wrt)
    for node in graph.nodes:
        if get_op(node.op).differentiable and any(v in depends for v in node.inputs):
            depends.update(v for v in node.outputs if is_float(v.type.dtype))
    reaches = {objective}
    for node in reversed(graph.nodes):
        if any(v in reaches for v in node.outputs):
            reaches.update(node.inputs)
    return depends & reaches


def _check_rules(graph: Graph, active: set[Value]) -> None:
    """Every op on an active path needs a derivative rule; list all that lack one at once."""
    missing: list[Node] = [n for n in graph.nodes
                           if n.output in active and n.op not in VJP_RULES]
    if missing:
        lines = [f"  {n.loc}: '{n.op}' (computing %{n.output.name})" for n in missing]
        raise ChainruleError("no derivative rule for ops on the path to the objective:\n"
                             + "\n".join(lines), missing[0].loc)
