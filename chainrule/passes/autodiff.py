"""Reverse-mode autodiff as a graph transformation: the backward pass is appended as IR nodes.

Walk the forward nodes in reverse; for each node on a path from a requested input to the
objective, ask its op's rule for input cotangents and accumulate them, summing the
contributions of a value used more than once. No tape: the result is one graph that computes
the objective and its gradients, reusing the forward values it needs. A scan is differentiated
by a reverse scan (autodiff_scan.py), whose body this same walk writes.
"""
from __future__ import annotations

from ..ir import ChainruleError, Derivation, Graph, GraphBuilder, Value
from ..ir.types import is_float
from .activity import active_values, check_rules
from .autodiff_rules import VJP_RULES, Backward
from .autodiff_scan import scan_vjp


def gradient_prefix(objective: Value) -> str:
    """What the name of every value the backward graph of `objective` computes starts with."""
    return f"d{objective.name}/d"


def gradient_name(objective: Value, value: Value) -> str:
    return gradient_prefix(objective) + value.name


def autodiff(graph: Graph, objective: Value, wrt: list[Value],
             seed: Value | None = None) -> tuple[Graph, dict[str, Value]]:
    """A new graph whose outputs are graph's outputs followed by d objective / d each of `wrt`;
    with `seed` (a scalar value of the graph), those times `seed`: loss scaling's gradients.

    Returns the graph and the gradient values by the name of the value they differentiate.
    """
    _check_request(graph, objective, wrt)
    active = active_values(graph, [objective], wrt)
    check_rules(graph, active)

    result = graph.copy()
    builder = GraphBuilder(result)
    producer = builder.graph_producer(objective)
    seed = seed or builder.constant(1.0, objective.type.dtype,
                                    loc=producer.loc if producer else graph.loc,
                                    name=gradient_name(objective, objective))
    result.derivations = {**graph.derivations, seed: Derivation("seed", objective)}
    result.cotangents = dict(graph.cotangents)
    grads = reverse(builder, graph, [(objective, seed)], wrt, active, gradient_prefix(objective),
                    annotate=True)
    forward_outputs = set(graph.outputs)
    result.outputs = list(graph.outputs) + [g for g in grads.values()
                                            if g not in forward_outputs]
    return result, grads


def reverse(builder: GraphBuilder, graph: Graph, seeds: list[tuple[Value, Value]],
            wrt: list[Value], active: set[Value], prefix: str,
            annotate: bool = False) -> dict[str, Value]:
    """Append to builder's graph (a copy of `graph`) the nodes that carry the cotangents
    `seeds` gives some values back to each of `wrt`; the summed cotangent of a value is named
    `prefix` + its name. Returns the gradients by the name of the value they differentiate.

    With `annotate`, the builder's graph records why it wrote each value (Graph.derivations)
    and each value's summed cotangent (Graph.cotangents)."""
    spans = _Spans(builder.graph.nodes)
    forward_values = set(graph.values())
    contributions: dict[Value, list[tuple[Value, str]]] = {}
    for value, seed in seeds:
        contributions.setdefault(value, []).append((seed, ""))
    totals: set[Value] = {seed for _, seed in seeds}
    summed_for: dict[Value, Value] = {}  # a value asked for as `wrt` may also be a node's output

    def total(value: Value, loc) -> Value:
        """The summed cotangent of `value`, named <prefix><value>."""
        if value in summed_for:
            return summed_for[value]
        # A part renamed as another value's total since it was recorded is known by its new
        # value (a rule may give one value as the cotangent of two inputs).
        parts = [(builder.current(p), via) for p, via in contributions.pop(value, [])]
        name = prefix + value.name
        renamable = {p for p, _ in parts if p not in forward_values and p not in totals}
        spans.open(Derivation("sum", value, producers.get(value)))
        if not parts:
            zero = builder.constant(0.0, value.type.dtype, loc=loc, name=f"{name}.zero")
            summed = builder.emit("broadcast_like", (zero, value), loc=loc, name=name)
        elif len(parts) == 1:
            summed = parts[0][0]
            if summed in renamable:
                summed = builder.rename(summed, name)
        elif (assembled := _assembled_slices(builder, [p for p, _ in parts], loc, name)):
            summed = builder.rename(assembled, name)
        else:
            for part, via in parts:
                if part in renamable:
                    builder.rename(part, f"{name}.via_{via}")
            summed = builder.current(parts[0][0])
            for part, _ in parts[1:]:
                summed = builder.emit("add", (summed, builder.current(part)), loc=loc,
                                      name=f"{name}.sum")
            summed = builder.rename(summed, name)
        spans.close()
        totals.add(summed)
        summed_for[value] = summed
        return summed

    producers = graph.producers()
    for node in reversed(graph.nodes):
        reached = [out in active and out in contributions for out in node.outputs]
        if not any(reached):
            continue
        if node.op == "scan":
            cotangents = [total(out, node.loc) if wanted else None
                          for out, wanted in zip(node.outputs, reached)]
            spans.open(Derivation("rule", node.outputs[0], node))
            input_cotangents = scan_vjp(builder, node, cotangents, active, reverse, prefix)
            via = node.outputs[0].name
        else:
            out = node.output
            backward = Backward(builder, node, prefix + out.name, active, _reverse_part)
            cotangent = total(out, node.loc)
            spans.open(Derivation("rule", out, node))
            input_cotangents = VJP_RULES[node.op](backward, cotangent, *node.inputs, out,
                                                  **node.attrs)
            via = out.name
        spans.close()
        for value, input_cotangent in zip(node.inputs, input_cotangents, strict=True):
            if value in active and input_cotangent is not None:
                contributions.setdefault(value, []).append((input_cotangent, via))

    param_locs = {p.value: p.loc for p in graph.params}
    grads = {w.name: builder.current(total(w, param_locs.get(w, graph.loc))) for w in wrt}
    if annotate:
        builder.graph.derivations.update(spans.derivations())
        builder.graph.cotangents.update((value, builder.current(total))
                                        for value, total in summed_for.items())
    return grads


class _Spans:
    """Which run of appended nodes each Derivation wrote. Kept as positions and read at the
    end, since renaming a value replaces the node that makes it in place."""

    def __init__(self, nodes: list):
        self.nodes = nodes
        self.spans: list[tuple[int, int, Derivation]] = []
        self.opened: tuple[int, Derivation] | None = None

    def open(self, derivation: Derivation) -> None:
        self.opened = (len(self.nodes), derivation)

    def close(self) -> None:
        start, derivation = self.opened
        self.spans.append((start, len(self.nodes), derivation))

    def derivations(self) -> dict:
        return {out: derivation for start, end, derivation in self.spans
                for node in self.nodes[start:end] for out in node.outputs}


def _reverse_part(builder: GraphBuilder, graph: Graph, seeds: list[tuple[Value, Value]],
                  wrt: list[Value], prefix: str) -> dict[str, Value]:
    """`reverse` over a part of the graph being differentiated (a composition a derivative
    rule emits), carrying cotangents through the values between its seeds and `wrt`."""
    active = active_values(graph, [value for value, _ in seeds], wrt)
    return reverse(builder, graph, seeds, wrt, active, prefix)


def _assembled_slices(builder: GraphBuilder, parts: list[Value], loc, name: str) -> Value | None:
    """The cotangents of consecutive slices of one value (an LSTM's four gates, read out of one
    matrix), put together by concatenation rather than summed from zero-padded copies; equal
    slices' cotangents are summed first. None unless every part is the cotangent of a slice
    along one axis and some of them are consecutive or equal."""
    windows = [_unit_window(builder.graph_producer(part)) for part in parts]
    if None in windows or len({(axis, like) for axis, like, _, _, _ in windows}) != 1:
        return None
    axis, like = windows[0][:2]
    pieces: dict[tuple, list[Value]] = {}
    for _, _, start, end, piece in windows:
        pieces.setdefault((start, end), []).append(piece)
    spans = sorted(pieces)
    if any(end > start for (_, end), (start, _) in zip(spans, spans[1:])):
        return None  # overlapping slices
    runs = [[spans[0]]]
    for span in spans[1:]:
        if span[0] == runs[-1][-1][1]:
            runs[-1].append(span)
        else:
            runs.append([span])
    if len(runs) == len(parts):
        return None  # nothing to put together
    summed = None
    for run in runs:
        parts_of_run = []
        for span in run:
            total = pieces[span][0]
            for piece in pieces[span][1:]:
                total = builder.emit("add", (total, piece), loc=loc, name=f"{name}.part")
            parts_of_run.append(total)
        joined = (parts_of_run[0] if len(parts_of_run) == 1 else
                  builder.emit("concat", parts_of_run, {"axis": axis}, loc=loc,
                               name=f"{name}.parts"))
        start, end = run[0][0], run[-1][1]
        if not (start == 0 and end == like.type.shape[axis] and joined.type == like.type):
            window = {"starts": (start,), "ends": (end,), "axes": (axis,), "steps": (1,)}
            joined = builder.emit("unslice", (joined, like), window, loc=loc, name=name)
        summed = joined if summed is None else builder.emit("add", (summed, joined), loc=loc,
                                                            name=f"{name}.sum")
    return summed


def _unit_window(node):
    """(axis, like, start, end, sliced) of an unslice along one axis with step 1 and known
    bounds, or None for any other node."""
    if node is None or node.op != "unslice":
        return None
    attrs, (sliced, like) = node.attrs, node.inputs
    if len(attrs["axes"]) != 1 or attrs["steps"] != (1,):
        return None
    (start,), (end,) = attrs["starts"], attrs["ends"]
    axis = attrs["axes"][0] % like.type.rank
    size = like.type.shape[axis]
    if not all(isinstance(d, int) for d in (start, end, size)) or not 0 <= start < end <= size:
        return None
    return axis, like, start, end, sliced


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
