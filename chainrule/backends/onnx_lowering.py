"""ONNX lowerings, one per op: each writes standard (default-domain) ONNX nodes for one IR node.

A lowering is called as lower(emitter, node, out, *input_names) and must define `out`.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..ir.types import NUMPY_DTYPES

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE,
               "i64": TensorProto.INT64, "bool": TensorProto.BOOL}

LOWERINGS = {}


def lowering(*ops):
    def register(fn):
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return register


def _direct(onnx_op):
    def lower(em, node, out, *inputs):
        em.add(onnx_op, inputs, out)
    return lower


for _op, _onnx_op in {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "neg": "Neg",
    "exp": "Exp", "log": "Log", "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu",
    "less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
    "greater_equal": "GreaterOrEqual", "equal": "Equal", "where": "Where", "matmul": "MatMul",
}.items():
    LOWERINGS[_op] = _direct(_onnx_op)


@lowering("not_equal")
def _not_equal(em, node, out, a, b):
    em.add("Not", [em.add("Equal", [a, b])], out)


@lowering("cast")
def _cast(em, node, out, x):
    em.add("Cast", [x], out, to=ONNX_DTYPES[node.attrs["dtype"]])


@lowering("constant")
def _constant(em, node, out):
    array = np.asarray(node.attrs["value"], dtype=NUMPY_DTYPES[node.attrs["dtype"]])
    em.add("Constant", [], out, value=em.tensor(array, out))


@lowering("transpose")
def _transpose(em, node, out, x):
    em.add("Transpose", [x], out, perm=list(node.attrs["perm"]))


@lowering("sum")
def _sum(em, node, out, x):
    em.reduce("ReduceSum", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("mean")
def _mean(em, node, out, x):
    em.reduce("ReduceMean", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("softmax")
def _softmax(em, node, out, x):
    em.add("Softmax", [x], out, axis=node.attrs["axis"])


@lowering("cross_entropy")
def _cross_entropy(em, node, out, logits, labels):
    log_probabilities = em.add("LogSoftmax", [logits], axis=-1)
    picked = em.add("GatherElements", [log_probabilities, em.unsqueeze(labels, [-1])], axis=-1)
    em.add("Neg", [em.reduce("ReduceMean", picked, None, False)], out)


@lowering("mse")
def _mse(em, node, out, pred, target):
    diff = em.add("Sub", [pred, target])
    em.reduce("ReduceMean", em.add("Mul", [diff, diff]), None, False, out)


@lowering("one_hot")
def _one_hot(em, node, out, labels):
    # Equal against a constant range, then Cast: onnxruntime's OneHot lacks double outputs.
    classes = em.const(np.arange(node.attrs["depth"], dtype=np.int64), "classes")
    matches = em.add("Equal", [em.unsqueeze(labels, [-1]), classes])
    em.add("Cast", [matches], out, to=ONNX_DTYPES[node.attrs["dtype"]])


@lowering("broadcast_like")
def _broadcast_like(em, node, out, x, like):
    em.add("Expand", [x, em.add("Shape", [like])], out)


@lowering("unsqueeze")
def _unsqueeze(em, node, out, x):
    em.unsqueeze(x, list(node.attrs["axes"]), out)


@lowering("numel")
def _numel(em, node, out, x):
    axes = node.attrs["axes"]
    if axes is None:
        count = em.add("Size", [x])
    else:
        picked = em.add("Gather", [em.add("Shape", [x]),
                                   em.const(np.asarray(axes, dtype=np.int64), "axes")])
        count = em.reduce("ReduceProd", picked, None, False)
    em.add("Cast", [count], out, to=ONNX_DTYPES[node.attrs["dtype"]])
