"""Promoting a graph to float64: every f16, bf16 and f32 value, constant and cast becomes f64.

Used by gradient checking, where finite differences need float64 to mean anything.
"""
from __future__ import annotations

from ..ir import Graph, GraphBuilder, Namer, Param, Value


def _promoted(dtype: str) -> str:
    return "f64" if dtype in ("f16", "bf16", "f32") else dtype


def promote_to_f64(graph: Graph) -> tuple[Graph, bool]:
    result = Graph(graph.name, loc=graph.loc, input_locs=dict(graph.input_locs),
                   updates=dict(graph.updates))
    values: dict[Value, Value] = {}

    def promote_value(value: Value) -> Value:
        values[value] = Value(value.name, value.type.with_dtype(_promoted(value.type.dtype)))
        return values[value]

    result.inputs = [promote_value(v) for v in graph.inputs]
    result.params = [Param(promote_value(p.value), p.init, p.loc, p.trainable)
                     for p in graph.params]
    # The graph's names are unique already, so each node keeps its output's name.
    builder = GraphBuilder(result, Namer(v.name for v in result.inputs + result.param_values()))
    changed_bodies = False
    for node in graph.nodes:
        attrs = {k: _promoted(v) if k == "dtype" else v for k, v in node.attrs.items()}
        if "body" in attrs:  # a scan's body, promoted as a graph of its own
            attrs["body"], promoted_body = promote_to_f64(attrs["body"])
            changed_bodies = changed_bodies or promoted_body
        results = builder.emit_results(node.op, [values[v] for v in node.inputs], attrs,
                                       loc=node.loc, names=[v.name for v in node.outputs])
        values.update(zip(node.outputs, results))
    result.outputs = [values[v] for v in graph.outputs]
    result.objective = values.get(graph.objective)
    changed = changed_bodies or any(v.type != values[v].type for v in values)
    return result, changed
