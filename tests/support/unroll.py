"""A graph's scans unrolled into plain nodes: the twin that scan results are checked against.

Each scan of a known length becomes `length` copies of its body, a sequence's step read with
`take` and the steps' values put together with `unsqueeze` and `concat`. Nested scans unroll
too. Written apart from the project's own lowering on purpose: it is the reference.
"""
from __future__ import annotations

from chainrule.ir import Graph, GraphBuilder, Value
from chainrule.ir.scan import ScanParts


def unrolled(graph: Graph) -> Graph:
    result = graph.copy()
    result.nodes = []
    builder = GraphBuilder(result)
    mapping: dict[Value, Value] = {}
    _inline(builder, graph, mapping)
    result.outputs = [mapping.get(v, v) for v in graph.outputs]
    result.objective = mapping.get(graph.objective, graph.objective)
    for original in graph.outputs:  # the outputs keep their names
        builder.rename(mapping.get(original, original), original.name)
    return result


def _inline(builder: GraphBuilder, graph: Graph, mapping: dict) -> None:
    """Append graph's nodes to builder's graph, reading mapping[v] for each value v."""
    for node in graph.nodes:
        inputs = [mapping.get(v, v) for v in node.inputs]
        if node.op == "scan":
            results = _unrolled_scan(builder, node, inputs)
        else:
            attrs = node.attrs
            results = builder.emit_results(node.op, inputs, attrs, loc=node.loc,
                                           names=[v.name for v in node.outputs])
        mapping.update(zip(node.outputs, results))


def _unrolled_scan(builder: GraphBuilder, node, inputs) -> list[Value]:
    body, length = node.attrs["body"], node.attrs["length"]
    assert isinstance(length, int), "unroll a scan of a known length"
    parts = ScanParts.of(len(inputs), body, node.attrs["carried"], node.attrs["scanned"])
    state, sequences, outer = parts.operands(inputs)
    carried_in, sequence_in, outer_in = parts.operands(body.inputs)
    steps: dict[int, list[Value]] = {}
    order = range(length - 1, -1, -1) if node.attrs["reverse"] else range(length)
    for t in order:
        index = builder.constant(t, "i64", name=f"t{t}")
        slices = [builder.emit("take", (sequence, index), {"axis": 0}, name=f"step{t}")
                  for sequence in sequences]
        mapping = dict(zip(carried_in, state)) | dict(zip(sequence_in, slices))
        mapping |= dict(zip(outer_in, outer))
        _inline(builder, body, mapping)
        returned = [mapping.get(v, v) for v in body.outputs]
        state, steps[t] = parts.results(returned)
    stacks = []
    for position in range(parts.stacked):
        rows = [builder.emit("unsqueeze", (steps[t][position],), {"axes": (0,)})
                for t in range(length)]
        stacks.append(builder.emit("concat", rows, {"axis": 0}) if length > 1 else rows[0])
    return list(state) + stacks
