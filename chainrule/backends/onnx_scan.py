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

A scan may run no step (its length 0, or below 0 as range(1, T) with T = 0): its carried values
come out as they went in, its stacks empty. onnxruntime's Scan refuses sequences of no step, and
its Loop of no iteration gives its stacks a shape of its own, so a scan whose length is known
only at run time is an If: no step on one branch, the Scan or Loop on the other.
"""
from __future__ import annotations

from onnx import TensorProto, helper

from ..ir.scan import ScanParts
from ..ir.shapes import TO_END
from ..ir.types import ONNX_DTYPES
from .onnx_lowering import lowering

BACKWARDS = 1  # Scan's direction of a reversed input, or of an output prepended each step


@lowering("scan")
def _scan(em, node, out, *operands):
    length = node.attrs["length"]
    results = [em.name(v) for v in node.outputs]
    if length == 0:
        _emit_no_step(em, node, operands, results)
    elif isinstance(length, int):
        _emit_steps(em, node, operands, results, results[0])
    else:
        _emit_guarded(em, node, operands, results)


def _emit_guarded(em, node, operands, results) -> None:
    """A scan whose length is known only at run time, behind an If on whether it runs any
    step: onnxruntime's Scan refuses sequences of no step, and its Loop of no iteration
    stacks its outputs in a shape of its own guess."""
    none, some = em.branch(), em.branch()
    no_step = [none.fresh("nostep") for _ in results]
    _emit_no_step(none, node, operands, no_step)
    steps = [some.fresh("steps") for _ in results]
    _emit_steps(some, node, operands, steps, results[0])
    # At or below 0: range(1, T) runs no step when T is 0, as in Python.
    empty = em.add("LessOrEqual", [em.size(node.attrs["length"]), em.ints([0], "none")])
    em.nodes.append(helper.make_node(
        "If", [empty], results, name=results[0], doc_string=em.doc,
        then_branch=_branch_graph(none, node, no_step, f"{results[0]}#nostep"),
        else_branch=_branch_graph(some, node, steps, f"{results[0]}#steps")))


def _branch_graph(branch, node, names, graph_name: str):
    outputs = [branch.value_info(value, name)
               for value, name in zip(node.outputs, names, strict=True)]
    return helper.make_graph(branch.nodes, graph_name, [], outputs)


def _emit_no_step(em, node, operands, results) -> None:
    """A scan of no step: the carried values as they came in, and each stack empty, of shape
    (0, *step shape)."""
    carried = node.attrs["carried"]
    for operand, result in zip(operands[:carried], results[:carried], strict=True):
        em.add("Identity", [operand], result)
    for value, result in zip(node.outputs[carried:], results[carried:], strict=True):
        zero = helper.make_tensor("value", ONNX_DTYPES[value.type.dtype], [1], [0])
        em.add("ConstantOfShape", [em.dims((0, *value.type.shape[1:]))], result, value=zero)


def _emit_steps(em, node, operands, results, prefix: str) -> None:
    """A scan of at least one step, its body's values named `prefix#body/...`."""
    parts = ScanParts.of(len(node.inputs), node.attrs["body"], node.attrs["carried"],
                         node.attrs["scanned"])
    first, sequences, outer = parts.operands(operands)
    if sequences:
        # onnxruntime refuses sequences of different lengths: checking one checks them all
        rows = parts.operands(node.inputs)[1][0].type.shape[0]
        sequences[0] = _of_length(em, sequences[0], rows, node.attrs["length"])
        _emit_scan(em, node, parts, first + sequences, outer, results, prefix)
    else:
        _emit_loop(em, node, parts, first, outer, results, prefix)


def _of_length(em, sequence: str, rows, length) -> str:
    """The sequence, checked to have `length` steps: Scan counts its steps by its scan inputs,
    so sequences of another length would run that many steps instead of failing, as the
    numpy backends do. A reshape to [length, ...] fails in onnxruntime unless the sizes agree
    (and costs nothing when they do)."""
    if isinstance(rows, int) and rows == length:
        return sequence
    rest = em.add("Slice", [em.add("Shape", [sequence]), em.ints([1], "start"),
                            em.ints([TO_END], "end")])
    shape = em.add("Concat", [em.size(length), rest], axis=0)
    return em.add("Reshape", [sequence, shape])


def _emit_scan(em, node, parts: ScanParts, operands, outer, results, prefix: str) -> None:
    directions = {}
    if node.attrs["reverse"]:
        directions["scan_input_directions"] = [BACKWARDS] * parts.scanned
        if parts.stacked:
            directions["scan_output_directions"] = [BACKWARDS] * parts.stacked
    body = _body_graph(em, node, parts, outer, prefix)
    em.nodes.append(helper.make_node("Scan", operands, results, name=results[0],
                                     doc_string=em.doc, body=body,
                                     num_scan_inputs=parts.scanned, **directions))


def _emit_loop(em, node, parts: ScanParts, first, outer, results, prefix: str) -> None:
    """A Loop of `length` iterations, stopped by the trip count alone (no condition)."""
    body = _body_graph(em, node, parts, outer, prefix, loop=True)
    length = node.attrs["length"]
    trip_count = em.ints(length, "length") if isinstance(length, int) else \
        em.add("Squeeze", [em.size(length), em.ints([0], "axes")])
    carried, stacked = parts.results(results)
    reverse = node.attrs["reverse"]
    # Reversed, iteration i ran step length-1-i: the stacks come out the other way round.
    in_iteration_order = [em.fresh("iterations") for _ in stacked] if reverse else stacked
    # Named after its first output, as every node is (a reversed stack's Slice takes the
    # stack's own name).
    outputs = carried + in_iteration_order
    em.nodes.append(helper.make_node("Loop", [trip_count, "", *first], outputs, name=outputs[0],
                                     doc_string=em.doc, body=body))
    if reverse:
        for iterations, result in zip(in_iteration_order, stacked, strict=True):
            em.add("Slice", [iterations, em.ints([-1], "start"), em.ints([-TO_END - 1], "end"),
                             em.ints([0], "axes"), em.ints([-1], "steps")], result)


def _body_graph(em, node, parts: ScanParts, outer, prefix: str, loop: bool = False):
    """The scan's body as an ONNX graph, its values named `prefix#body/...`: it takes the
    carried values and the steps' slices (after a Loop's iteration number and condition) and
    reads the outer values by the outer names; it returns (after a Loop's condition, handed
    back as it came) the carried values' next values and the per-step values."""
    body = node.attrs["body"]
    carried_in, scanned_in, outer_in = parts.operands(body.inputs)
    inner = em.nested(body, prefix, dict(zip(outer_in, outer, strict=True)))
    inner.lower(body.nodes)
    inputs = [inner.value_info(v) for v in carried_in + scanned_in]
    outputs = _body_outputs(inner, body, prefix)
    if loop:
        step, condition = f"{prefix}#body/step", f"{prefix}#body/condition"
        inner.lowering = prefix
        unchanged = inner.add("Identity", [condition], inner.fresh("condition"))
        inputs = [helper.make_tensor_value_info(step, TensorProto.INT64, []),
                  helper.make_tensor_value_info(condition, TensorProto.BOOL, []), *inputs]
        outputs = [helper.make_tensor_value_info(unchanged, TensorProto.BOOL, []), *outputs]
    produced = [value for body_node in body.nodes for value in body_node.outputs]
    returned = {info.name for info in outputs}
    value_infos = [inner.value_info(v) for v in produced if inner.name(v) not in returned]
    return helper.make_graph(inner.nodes, f"{prefix}#body", inputs, outputs,
                             value_info=value_infos)


def _body_outputs(inner, body, prefix: str) -> list:
    """The body's outputs as ONNX value infos, each name once and made by a node of the body:
    a value returned twice, or an input returned as it is, gets a copy."""
    produced = {value for node in body.nodes for value in node.outputs}
    infos, returned = [], set()
    inner.lowering = prefix
    for value in body.outputs:
        name = inner.name(value)
        if value not in produced or name in returned:
            name = inner.add("Identity", [name], inner.fresh("returned"))
        returned.add(name)
        infos.append(inner.value_info(value, name))
    return infos
