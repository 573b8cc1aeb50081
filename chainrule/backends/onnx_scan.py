"""A scan as ONNX: `Scan` when it has a sequence to step through, `Loop` when it has none.

The body becomes a subgraph through the same lowerings as the model (so a scan in a body
becomes a subgraph in a subgraph). Its carried values are the loop's state; its sequences are
Scan's scan inputs along axis 0; its per-step values are the scan outputs. The outer values are
not passed in: ONNX lets a subgraph read the names of the graphs around it, so the body reads
the operands themselves. Reversed, Scan reads its inputs from the last step back and prepends
each step's outputs, which puts step t's value at index t, as the scan op does. ONNX Scan counts
its steps by the scan inputs, so a scan over no sequence (its length a dim) is a Loop with that
trip count, whose outputs come stacked in the order of the iterations: reversed, they are turned
around.
"""
from __future__ import annotations

from onnx import TensorProto, helper

from ..ir.scan import ScanParts
from ..ir.shapes import TO_END
from .onnx_lowering import lowering

BACKWARDS = 1  # Scan's direction of a reversed input, or of an output prepended each step


@lowering("scan")
def _scan(em, node, out, *operands):
    body = node.attrs["body"]
    parts = ScanParts.of(len(node.inputs), body, node.attrs["carried"], node.attrs["scanned"])
    first, sequences, outer = parts.operands(operands)
    carried_in, scanned_in, outer_in = parts.operands(body.inputs)
    names = {value: f"{out}#body/{value.name}" for value in carried_in + scanned_in}
    names.update(zip(outer_in, outer, strict=True))
    inner = em.nested(body, names)
    inner.lower(body.nodes)
    outputs = _body_outputs(inner, body, out)
    inputs = [inner.value_info(v) for v in carried_in + scanned_in]
    results = [em.name(v) for v in node.outputs]
    if sequences:
        _emit_scan(em, node, parts, inner, inputs, outputs, first + sequences, results)
    else:
        _emit_loop(em, node, parts, inner, inputs, outputs, first, results)


def _body_outputs(inner, body, out: str) -> list:
    """The body's outputs as ONNX value infos, each name once and made by a node of the body:
    a value returned twice, or an input returned as it is, gets a copy."""
    produced = {value for node in body.nodes for value in node.outputs}
    infos, returned = [], set()
    inner.lowering = out
    for value in body.outputs:
        name = inner.name(value)
        if value not in produced or name in returned:
            name = inner.add("Identity", [name], inner.fresh("returned"))
        returned.add(name)
        infos.append(inner.value_info(value, name))
    inner.lowering = ""
    return infos


def _subgraph(inner, body, name: str, inputs: list, outputs: list):
    produced = [out for node in body.nodes for out in node.outputs]
    returned = {info.name for info in outputs}
    value_infos = [inner.value_info(v) for v in produced if inner.name(v) not in returned]
    return helper.make_graph(inner.nodes, name, inputs, outputs, value_info=value_infos)


def _emit_scan(em, node, parts: ScanParts, inner, inputs, outputs, operands, results) -> None:
    body = node.attrs["body"]
    directions = {}
    if node.attrs["reverse"]:
        directions["scan_input_directions"] = [BACKWARDS] * parts.scanned
        if parts.stacked:
            directions["scan_output_directions"] = [BACKWARDS] * parts.stacked
    graph = _subgraph(inner, body, f"{results[0]}#body", inputs, outputs)
    em.nodes.append(helper.make_node("Scan", operands, results, name=results[0],
                                     doc_string=em.doc, body=graph,
                                     num_scan_inputs=parts.scanned, **directions))


def _emit_loop(em, node, parts: ScanParts, inner, inputs, outputs, first, results) -> None:
    """A Loop of `length` iterations: its body takes the iteration's number and the loop's
    condition before the carried values, and gives the condition back unchanged."""
    body = node.attrs["body"]
    step, condition = f"{results[0]}#body/step", f"{results[0]}#body/condition"
    inner.lowering = results[0]
    kept = inner.add("Identity", [condition], inner.fresh("condition"))
    inputs = [helper.make_tensor_value_info(step, TensorProto.INT64, []),
              helper.make_tensor_value_info(condition, TensorProto.BOOL, []), *inputs]
    outputs = [helper.make_tensor_value_info(kept, TensorProto.BOOL, []), *outputs]
    graph = _subgraph(inner, body, f"{results[0]}#body", inputs, outputs)
    length = node.attrs["length"]
    trip_count = em.ints(length, "length") if isinstance(length, int) else \
        em.add("Squeeze", [em.size(length), em.ints([0], "axes")])
    carried, stacked = parts.results(results)
    if node.attrs["reverse"]:  # iteration i ran step length-1-i
        in_iteration_order = [em.fresh("iterations") for _ in stacked]
    else:
        in_iteration_order = stacked
    em.nodes.append(helper.make_node("Loop", [trip_count, "", *first],
                                     carried + in_iteration_order, name=results[0],
                                     doc_string=em.doc, body=graph))
    if node.attrs["reverse"]:
        for iterations, result in zip(in_iteration_order, stacked, strict=True):
            em.add("Slice", [iterations, em.ints([-1], "start"), em.ints([-TO_END - 1], "end"),
                             em.ints([0], "axes"), em.ints([-1], "steps")], result)
