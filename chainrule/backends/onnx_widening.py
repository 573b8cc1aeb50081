"""The export's last step: each ONNX node at a dtype onnxruntime's CPU provider has no kernel for
computes in the nearest wider dtype it has, between casts.

Which kernels exist is the committed table onnxruntime_kernels.json (tests/support/
onnxruntime_kernel_table.py writes it from onnxruntime's own registry, keeping what the oldest
and the newest supported release both have, and adds the dtypes a ScatterElements or ScatterND
runs each reduction in, found by running one). A node's dtypes are read per type constraint of
its schema (Gather's data and indices apart), and the least widening that some kernel takes is
chosen: inputs bound to a widened constraint are cast up, outputs computed wide and cast back.

What that costs in exactness, by kind of op:
- Data movement, comparisons, min/max, abs, neg, where, sign: exact through any wider dtype
  that holds every value (a float in f32, a u16 in i32).
- f16/bf16 +, -, *, / and sqrt through f32: exact, as f32 has more than twice their
  precision plus two bits, so rounding the f32 result again is rounding the exact one.
- Integer arithmetic through a wider integer: exact modulo 2**bits, and the cast back wraps
  (onnxruntime's integer casts truncate the bits, as numpy's astype does), which is what ONNX
  and numpy give for an overflowing integer result.
- Other float functions (exp, tanh, softmax, reductions that accumulate) in f32 and rounded
  once: not the correctly rounded result in the narrow dtype in every case, but the one numpy
  computes too (ml_dtypes evaluates bf16 functions in f32), and a reduction accumulates in f32
  where numpy accumulates in the narrow dtype, which is closer to the exact sum.
"""
from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path

import onnx
from onnx import helper

from ..ir.types import DTYPE_OF_ONNX, ONNX_DTYPES

KERNEL_TABLE = Path(__file__).with_name("onnxruntime_kernels.json")
# Dtypes onnxruntime runs every lowering in: a graph of these alone is left as it is, without
# type inference.
NATIVE = {"f32", "f64", "i64", "bool"}
# onnxruntime itself computes an f16 node it has no kernel of in f32 (its InsertCastTransformer)
# and drops the casts between two such nodes, so that a chain of them rounds once, as ONNX's
# reference does; casts written here would round after each. Only a kernel that takes f16 but
# refuses it when run (a reduction below) is widened here.
LEFT_TO_ONNXRUNTIME = {"f16"}
# Wider dtypes that hold every value of a dtype, nearest first.
WIDER = {"f16": ("f32", "f64"), "bf16": ("f32", "f64"), "f32": ("f64",),
         "i8": ("i16", "i32", "i64"), "i16": ("i32", "i64"), "i32": ("i64",),
         "u8": ("u16", "i16", "u32", "i32", "u64", "i64"), "u16": ("u32", "i32", "u64", "i64"),
         "u32": ("u64", "i64"), "bool": ("u8", "i32", "i64")}
# Ops whose result's bits are the same whether an integer's bits are read signed or unsigned:
# they move values, test them for equality, or compute modulo 2**bits (a sum, a product). A
# u64, which no wider dtype holds, is computed as the i64 of the same bits there: a cast
# between the two keeps every bit.
SAME_WIDTH = {"u64": "i64", "u32": "i32", "u16": "i16", "u8": "i8"}
MODULAR_OPS = {"Add", "Sub", "Mul", "Neg", "Sum", "ReduceSum", "ReduceProd", "CumSum", "MatMul",
               "Equal", "Where", "Identity", "Reshape", "Transpose", "Concat", "Slice", "Gather",
               "GatherElements", "Expand", "Pad", "Squeeze", "Unsqueeze", "Tile", "Flatten",
               "Split"}
# Ops that only order values. A u64 is ordered as the i64 of its bits plus 2**63 (modulo 2**64,
# so adding the same constant again gives the bits back): that maps 0 to the least i64 and
# 2**64 - 1 to the greatest, keeping the order.
ORDERING_OPS = {"ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "Max", "Min", "Less", "Greater",
                "LessOrEqual", "GreaterOrEqual", "TopK"}
SHIFTED = "i64+2**63"


@functools.cache
def kernel_table() -> dict:
    return json.loads(KERNEL_TABLE.read_text())


def kernels() -> dict:
    """{op: [[since opset, until opset, type constraints, [dtype combinations]], ...]}"""
    return kernel_table()["kernels"]


def reduction_dtypes(node: onnx.NodeProto) -> list[str] | None:
    """The dtypes a reducing op (ScatterElements, ScatterND) runs its data in with the node's
    reduction, where the table says onnxruntime refuses some its kernel takes."""
    reduction = next((a.s.decode() for a in node.attribute if a.name == "reduction"), "none")
    return kernel_table()["reductions"].get(node.op_type, {}).get(reduction)


def widened(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every node onnxruntime has no kernel of at its dtypes computed in wider
    ones (in place; returned for chaining). Nodes no kernel takes even widened are left alone:
    onnxruntime then names them."""
    graph = model.graph
    declared = [*graph.input, *graph.output, *graph.value_info]
    if all(DTYPE_OF_ONNX.get(v.type.tensor_type.elem_type) in NATIVE for v in declared):
        return model
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    dtypes = _value_dtypes(onnx.shape_inference.infer_shapes(model).graph)
    _widen_graph(graph, dtypes, opset)
    return model


def _value_dtypes(graph: onnx.GraphProto) -> dict[str, str]:
    """The dtype of every value type inference named, subgraphs' included."""
    dtypes = {t.name: DTYPE_OF_ONNX.get(t.data_type) for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        dtypes[info.name] = DTYPE_OF_ONNX.get(info.type.tensor_type.elem_type)
    for node in graph.node:
        for body in _bodies(node):
            dtypes.update(_value_dtypes(body))
    return dtypes


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH] + \
        [g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPHS for g in attr.graphs]


def _widen_graph(graph: onnx.GraphProto, dtypes: dict[str, str], opset: int) -> None:
    nodes = []
    casts: dict[tuple[str, str], str] = {}  # (value, dtype) -> the value cast to that dtype
    for node in graph.node:
        for body in _bodies(node):
            _widen_graph(body, dtypes, opset)
        nodes += _in_kernel_dtypes(node, dtypes, opset, casts)
    del graph.node[:]
    graph.node.extend(nodes)


def _in_kernel_dtypes(node, dtypes, opset, casts) -> list[onnx.NodeProto]:
    """The node, or the casts around it that put it at dtypes onnxruntime has a kernel for."""
    found = _kernel_at(node.op_type, opset) if node.domain in ("", "ai.onnx") else None
    if found is None:
        return [node]
    constraints, combos = found
    slots = _constraint_slots(node, opset)
    bound = {}
    for name, constraint in slots:
        if constraint in constraints and dtypes.get(name):
            bound.setdefault(constraint, dtypes[name])
    wanted = _least_widening(constraints, bound, combos, node.op_type, reduction_dtypes(node),
                             _schema_dtypes(node.op_type, opset))
    if wanted is None or wanted == bound:
        return [node]
    changed = {c for c in bound if wanted[c] != bound[c]}
    before, after = [], []
    inputs, outputs = list(node.input), list(node.output)
    for position, name in enumerate(inputs):
        constraint = slots[position][1]
        if name and constraint in changed:
            key = (name, wanted[constraint])
            if key not in casts:
                casts[key] = f"{name}#as_{wanted[constraint]}"
                before += _converted(name, casts[key], wanted[constraint])
            inputs[position] = casts[key]
    for position, name in enumerate(outputs):
        constraint = slots[len(inputs) + position][1]
        if name and constraint in changed:
            outputs[position] = f"{name}#in_{wanted[constraint]}"
            after += _converted(outputs[position], name, bound[constraint])
    wide = onnx.NodeProto()
    wide.CopyFrom(node)
    del wide.input[:], wide.output[:]
    wide.input.extend(inputs)
    wide.output.extend(outputs)
    return before + [wide] + after


def _converted(source: str, target: str, dtype: str) -> list[onnx.NodeProto]:
    """Nodes that define `target` as `source` in `dtype` (SHIFTED: as an i64 shifted by 2**63;
    from SHIFTED: shifted back, then cast)."""
    if dtype == SHIFTED:
        cast = f"{target}#cast"
        return [helper.make_node("Cast", [source], [cast], name=cast, to=ONNX_DTYPES["i64"]),
                *_shift(cast, target)]
    if source.endswith(f"#in_{SHIFTED}"):
        shifted = f"{target}#unshifted"
        return [*_shift(source, shifted),
                helper.make_node("Cast", [shifted], [target], name=f"{target}#to_{dtype}",
                                 to=ONNX_DTYPES[dtype])]
    return [helper.make_node("Cast", [source], [target], name=f"{target}#to_{dtype}",
                             to=ONNX_DTYPES[dtype])]


def _shift(source: str, target: str) -> list[onnx.NodeProto]:
    """target = source + 2**63, an i64 wrapping around."""
    shift = helper.make_tensor(f"{target}#shift", onnx.TensorProto.INT64, [], [-2 ** 63])
    return [helper.make_node("Constant", [], [shift.name], name=shift.name, value=shift),
            helper.make_node("Add", [source, shift.name], [target], name=target)]


@functools.cache
def _kernel_at(op_type: str, opset: int) -> tuple[list[str], frozenset] | None:
    """The op's type constraints and the dtype combinations its kernels take at `opset`."""
    return next(((constraints, frozenset(map(tuple, combos)))
                 for since, until, constraints, combos in kernels().get(op_type, [])
                 if since <= opset <= until), None)


@functools.cache
def _formal_constraints(op_type: str, opset: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    schema = onnx.defs.get_schema(op_type, opset, "")
    return (tuple(f.type_str for f in schema.inputs), tuple(f.type_str for f in schema.outputs))


@functools.cache
def _schema_dtypes(op_type: str, opset: int) -> dict[str, set[str]]:
    """The dtypes the op's schema at `opset` allows for each type constraint."""
    known = onnx.TensorProto.DataType.values()  # an older onnx lacks the newest dtypes
    names = {f"tensor({onnx.TensorProto.DataType.Name(n).lower()})": d
             for n, d in DTYPE_OF_ONNX.items() if n in known}
    schema = onnx.defs.get_schema(op_type, opset, "")
    return {tc.type_param_str: {names[t] for t in tc.allowed_type_strs if t in names}
            for tc in schema.type_constraints}


def _constraint_slots(node, opset) -> list[tuple[str, str]]:
    """(value name, type constraint) of each input, then each output; a variadic last formal
    parameter stands for every value past it."""
    slots = []
    for values, formals in zip((node.input, node.output),
                               _formal_constraints(node.op_type, opset), strict=True):
        for position, name in enumerate(values):
            slots.append((name, formals[min(position, len(formals) - 1)]))
    return slots


def _least_widening(constraints, bound, combos, op_type: str,
                    reduction_dtypes: list[str] | None, schema_dtypes: dict) -> dict | None:
    """The dtypes, one per bound constraint, that a kernel takes with the least widening: each
    bound dtype or one in WIDER of it (or, for a modular op, its SAME_WIDTH; for an ordering
    op, a u64 SHIFTED), fewest steps first. A dtype LEFT_TO_ONNXRUNTIME passes as taken unless
    the reduction's dtypes (the data's, T) leave it out, or the op's schema at this opset
    does (IsInf takes f16 from opset 20 on: before, onnxruntime refuses the graph)."""
    def taken(picked) -> bool:
        if reduction_dtypes is not None and picked[constraints.index("T")] not in \
                reduction_dtypes:
            return False
        if any(p in LEFT_TO_ONNXRUNTIME and p not in schema_dtypes.get(c, (p,))
               for p, c in zip(picked, constraints, strict=True)):
            return False
        if all(p is not None and p not in LEFT_TO_ONNXRUNTIME for p in picked):
            return tuple(picked) in combos
        return any(all(p is None or p == k or p in LEFT_TO_ONNXRUNTIME
                       for p, k in zip(picked, combo, strict=True)) for combo in combos)

    def choices_for(dtype):
        same_width = (SAME_WIDTH[dtype],) if op_type in MODULAR_OPS and dtype in SAME_WIDTH \
            else (SHIFTED,) if op_type in ORDERING_OPS and dtype == "u64" else ()
        return [dtype, *WIDER.get(dtype, ()), *same_width]
    choices = [choices_for(bound[c]) if c in bound else [None] for c in constraints]
    candidates = sorted(itertools.product(*(range(len(c)) for c in choices)), key=sum)
    for steps in candidates:
        picked = [choice[step] for choice, step in zip(choices, steps, strict=True)]
        kernel_dtypes = ["i64" if p == SHIFTED else p for p in picked]
        if taken(kernel_dtypes):
            return {c: p for c, p in zip(constraints, picked, strict=True) if p is not None}
    return None
