"""ONNX lowerings, one per op: each writes standard (default-domain) ONNX nodes for one IR node.

A lowering is called as lower(emitter, node, out, *input_names) and must define `out`. Only
ops that onnxruntime's CPU provider runs in both float32 and float64 are used; where it lacks
one (float64 Gelu or Erf, a stable float64 Softplus, a float64 alpha for LeakyRelu) the lowering
composes it.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..ir import ChainruleError
from ..ir.ops import GELU_CUBIC, GELU_SCALE, rule_table
from ..ir.shapes import TO_END
from ..ir.types import NUMPY_DTYPES

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE,
               "i64": TensorProto.INT64, "bool": TensorProto.BOOL}

LOWERINGS, lowering = rule_table()


def _direct(onnx_op):
    def lower(em, node, out, *inputs):
        em.add(onnx_op, inputs, out)
    return lower


for _op, _onnx_op in {
    "add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "neg": "Neg",
    "exp": "Exp", "log": "Log", "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu",
    "equal": "Equal", "matmul": "MatMul",
    "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign", "maximum": "Max", "minimum": "Min",
    "logical_and": "And", "logical_or": "Or", "logical_not": "Not",
}.items():
    LOWERINGS[_op] = _direct(_onnx_op)


@lowering("where")
def _where(em, node, out, cond, a, b):
    if _dtype(node) == "bool":  # onnxruntime has no boolean Where: (c and a) or (not c and b)
        em.add("Or", [em.add("And", [cond, a]), em.add("And", [em.add("Not", [cond]), b])], out)
        return
    em.add("Where", [cond, a, b], out)


def _ordering(onnx_op: str):
    def lower(em, node, out, a, b):
        if node.inputs[0].type.dtype == "bool":  # ONNX orders numbers only: False < True
            a, b = (em.add("Cast", [v], to=ONNX_DTYPES["i64"]) for v in (a, b))
        em.add(onnx_op, [a, b], out)
    return lower


for _op, _onnx_op in {"less": "Less", "less_equal": "LessOrEqual", "greater": "Greater",
                      "greater_equal": "GreaterOrEqual"}.items():
    LOWERINGS[_op] = _ordering(_onnx_op)


def _dtype(node) -> str:
    return node.outputs[0].type.dtype


def _rank(node) -> int:
    return node.outputs[0].type.rank


@lowering("leaky_relu")
def _leaky_relu(em, node, out, x):
    # Composed: LeakyRelu's alpha is a float32 attribute, which float64 results would notice.
    dtype = _dtype(node)
    positive = em.add("Greater", [x, em.scalar(0.0, dtype)])
    em.add("Where", [positive, x, em.add("Mul", [x, em.scalar(node.attrs["alpha"], dtype)])], out)


@lowering("gelu")
def _gelu(em, node, out, x):
    def scalar(value):
        return em.scalar(value, _dtype(node))
    cube = em.add("Mul", [x, em.add("Mul", [x, x])])
    inner = em.add("Mul", [scalar(GELU_SCALE),
                           em.add("Add", [x, em.add("Mul", [scalar(GELU_CUBIC), cube])])])
    gate = em.add("Add", [scalar(1.0), em.add("Tanh", [inner])])
    em.add("Mul", [em.add("Mul", [scalar(0.5), x]), gate], out)


@lowering("softplus")
def _softplus(em, node, out, x):
    # relu(x) + log(1 + exp(-|x|)) never overflows.
    decay = em.add("Exp", [em.add("Neg", [em.add("Abs", [x])])])
    tail = em.add("Log", [em.add("Add", [em.scalar(1.0, _dtype(node)), decay])])
    em.add("Add", [em.add("Relu", [x]), tail], out)


@lowering("clip")
def _clip(em, node, out, x):
    bounds = [em.scalar(node.attrs[bound], _dtype(node)) for bound in ("lo", "hi")]
    em.add("Clip", [x, *bounds], out)


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


@lowering("arange")
def _arange(em, node, out):
    em.add("Range", [em.ints(0, "start"), em.ints(node.attrs["n"], "limit"),
                     em.ints(1, "delta")], out)


@lowering("transpose")
def _transpose(em, node, out, x):
    if not node.attrs["perm"]:  # a scalar: ONNX cannot type an empty perm attribute
        em.add("Identity", [x], out)
        return
    em.add("Transpose", [x], out, perm=list(node.attrs["perm"]))


@lowering("sum")
def _sum(em, node, out, x):
    em.reduce("ReduceSum", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("mean")
def _mean(em, node, out, x):
    em.reduce("ReduceMean", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("max", "min", "logsumexp")
def _extreme(em, node, out, x):
    onnx_op = {"max": "ReduceMax", "min": "ReduceMin", "logsumexp": "ReduceLogSumExp"}[node.op]
    em.reduce(onnx_op, x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("argmax", "argmin")
def _arg_extreme(em, node, out, x):
    # ONNX's default select_last_index=0 picks the first of tied positions, as numpy does.
    onnx_op = {"argmax": "ArgMax", "argmin": "ArgMin"}[node.op]
    em.add(onnx_op, [x], out, axis=node.attrs["axis"], keepdims=int(node.attrs["keepdims"]))


@lowering("softmax")
def _softmax(em, node, out, x):
    em.add("Softmax", [x], out, axis=node.attrs["axis"])


@lowering("log_softmax")
def _log_softmax(em, node, out, x):
    em.add("LogSoftmax", [x], out, axis=node.attrs["axis"])


@lowering("cross_entropy")
def _cross_entropy(em, node, out, logits, labels):
    log_probabilities = em.add("LogSoftmax", [logits], axis=-1)
    # A non-negative axis: onnx.reference's GatherElements mishandles axis=-1.
    last = node.inputs[0].type.rank - 1
    picked = em.add("GatherElements", [log_probabilities, em.unsqueeze(labels, [-1])], axis=last)
    picked = _nan_unless_labels_valid(em, node, picked, labels, node.inputs[0].type.shape[-1])
    em.add("Neg", [em.reduce("ReduceMean", picked, None, False)], out)


def _nan_unless_labels_valid(em, node, x, labels, classes):
    """x, with NaN where a label lies outside [0, classes). Inputs are checked before any
    backend runs, but a label computed inside the model can only be caught here, and ONNX has
    no op to refuse it: onnxruntime would take -1 as the last class, or write a zero one-hot
    row. NaN makes the result non-finite, which run warns of and training stops at."""
    if not isinstance(classes, int):
        return x
    valid = em.add("And", [em.add("GreaterOrEqual", [labels, em.ints(0)]),
                           em.add("Less", [labels, em.ints(classes)])])
    nan = em.scalar(float("nan"), node.outputs[0].type.dtype)
    return em.add("Where", [em.unsqueeze(valid, [-1]), x, nan])


@lowering("mse")
def _mse(em, node, out, pred, target):
    diff = em.add("Sub", [pred, target])
    em.reduce("ReduceMean", em.add("Mul", [diff, diff]), None, False, out)


@lowering("one_hot")
def _one_hot(em, node, out, labels):
    # Equal against a constant range, then Cast: onnxruntime's OneHot lacks double outputs.
    classes = em.ints(range(node.attrs["depth"]), "classes")
    matches = em.add("Equal", [em.unsqueeze(labels, [-1]), classes])
    hot = em.add("Cast", [matches], to=ONNX_DTYPES[node.attrs["dtype"]])
    em.add("Identity", [_nan_unless_labels_valid(em, node, hot, labels, node.attrs["depth"])],
           out)


@lowering("broadcast_like")
def _broadcast_like(em, node, out, x, like):
    em.add("Expand", [x, em.add("Shape", [like])], out)


@lowering("broadcast_to")
def _broadcast_to(em, node, out, x):
    # Expand broadcasts both ways, so a 1 keeps the operand's dim where the target says -1.
    shape = [1 if d == -1 else d for d in node.attrs["shape"]]
    em.add("Expand", [x, em.ints(shape, "shape")], out)


@lowering("fill")
def _fill(em, node, out, value, *sources):
    # The shape's -1s are the sources' dims, read off their shapes at run time.
    dims = iter([em.dim(source, axis)
                 for source, axis in zip(sources, node.attrs["axes"], strict=True)])
    sizes = [next(dims) if d == -1 else em.ints([d], "size") for d in node.attrs["shape"]]
    shape = em.add("Concat", sizes, axis=0) if sources else em.ints(node.attrs["shape"], "shape")
    em.add("Expand", [value, shape], out)


@lowering("reshape")
def _reshape(em, node, out, x):
    # ONNX Reshape shares the IR's meaning of 0 (copy the input dim) and -1.
    em.add("Reshape", [x, em.ints(node.attrs["shape"], "shape")], out)


@lowering("reshape_like")
def _reshape_like(em, node, out, x, like):
    em.add("Reshape", [x, em.add("Shape", [like])], out)


@lowering("unsqueeze")
def _unsqueeze(em, node, out, x):
    em.unsqueeze(x, list(node.attrs["axes"]), out)


@lowering("squeeze")
def _squeeze(em, node, out, x):
    em.add("Squeeze", [x, em.ints(node.attrs["axes"], "axes")], out)


@lowering("concat")
def _concat(em, node, out, *parts):
    em.add("Concat", parts, out, axis=node.attrs["axis"])


@lowering("unconcat")
def _unconcat(em, node, out, whole, *parts):
    # Offsets come from the parts' shapes at run time, so symbolic sizes need no special case.
    axis = node.attrs["axis"] % _rank(node)
    sizes = [em.dim(part, axis) for part in parts[:node.attrs["index"] + 1]]
    start = em.ints([0], "start")
    for size in sizes[:-1]:
        start = em.add("Add", [start, size])
    end = em.add("Add", [start, sizes[-1]])
    em.add("Slice", [whole, start, end, em.ints([axis], "axes")], out)


def _window(em, node) -> list[str]:
    """Slice's starts, ends, axes and steps inputs from the node's attrs."""
    return [em.ints(node.attrs[name], name) for name in ("starts", "ends", "axes", "steps")]


@lowering("slice")
def _slice(em, node, out, x):
    em.add("Slice", [x, *_window(em, node)], out)


@lowering("unslice")
def _unslice(em, node, out, sliced, like):
    # Slice the flat positions of `like` with the same window, then scatter into zeros there.
    shape = em.add("Shape", [like])
    count = em.add("Size", [like])
    positions = em.add("Range", [em.ints(0, "zero"), count, em.ints(1, "one")])
    picked = em.add("Slice", [em.add("Reshape", [positions, shape]), *_window(em, node)])
    flat = em.ints([-1], "flat")
    zeros = em.add("Reshape", [em.add("Expand", [em.scalar(0.0, _dtype(node)), shape]), flat])
    scattered = em.add("ScatterElements", [zeros, em.add("Reshape", [picked, flat]),
                                           em.add("Reshape", [sliced, flat])], axis=0)
    em.add("Reshape", [scattered, shape], out)


@lowering("take")
def _take(em, node, out, x, indices):
    em.add("Gather", [x, indices], out, axis=node.attrs["axis"])


SCATTER_ADD_SINCE = 16  # ScatterElements' reduction="add"


@lowering("scatter_add")
def _scatter_add(em, node, out, updates, indices, like):
    if em.opset < SCATTER_ADD_SINCE:
        raise ChainruleError(f"the gradient of take (scatter_add) needs ONNX opset "
                             f"{SCATTER_ADD_SINCE} or newer, not {em.opset}", node.loc)
    rank, axis = _rank(node), node.attrs["axis"] % _rank(node)
    # Flatten the index dims into one, so indices and updates line up element by element.
    like_shape = em.add("Shape", [like])
    flat_shape = em.add("Concat", [em.add("Slice", [like_shape, em.ints([0]), em.ints([axis])]),
                                   em.ints([-1]),
                                   em.add("Slice", [like_shape, em.ints([axis + 1]),
                                                    em.ints([TO_END])])], axis=0)
    flat_updates = em.add("Reshape", [updates, flat_shape])
    column = em.ints([1] * axis + [-1] + [1] * (rank - axis - 1), "column")
    spread = em.add("Expand", [em.add("Reshape", [indices, column]),
                               em.add("Shape", [flat_updates])])
    zeros = em.add("Expand", [em.scalar(0.0, _dtype(node)), like_shape])
    em.add("ScatterElements", [zeros, spread, flat_updates], out, axis=axis, reduction="add")


@lowering("numel")
def _numel(em, node, out, x):
    axes = node.attrs["axes"]
    if axes is None:
        count = em.add("Size", [x])
    else:
        picked = em.add("Gather", [em.add("Shape", [x]), em.ints(axes, "axes")])
        count = em.reduce("ReduceProd", picked, None, False)
    em.add("Cast", [count], out, to=ONNX_DTYPES[node.attrs["dtype"]])


@lowering("dropout_mask")
def _dropout_mask(em, node, out, x):
    """Ones for inference. For training, RandomUniformLike seeded with the op's seed: a standard
    op, though its numbers are onnxruntime's, not numpy's (ONNX Dropout would hide the mask,
    and the backward pass must multiply by the same one)."""
    dtype = _dtype(node)
    if not em.training:
        em.add("Expand", [em.scalar(1.0, dtype), em.add("Shape", [x])], out)
        return
    p = node.attrs["p"]
    uniform = em.add("RandomUniformLike", [x], seed=float(node.attrs["seed"]))
    kept = em.add("GreaterOrEqual", [uniform, em.scalar(p, dtype)])
    scale = em.scalar(1.0 / (1.0 - p), dtype)
    em.add("Mul", [em.add("Cast", [kept], to=ONNX_DTYPES[dtype]), scale], out)


# ---- fused ops (written by the fuse pass at -O2) ---------------------------------------------

@lowering("relu_grad")
def _relu_grad(em, node, out, x, g):
    zero = em.scalar(0.0, node.inputs[0].type.dtype)
    em.add("Where", [em.add("Greater", [x, zero]), g, em.scalar(0.0, node.inputs[1].type.dtype)],
           out)


@lowering("cross_entropy_grad")
def _cross_entropy_grad(em, node, out, logits, labels, scale):
    dtype = node.inputs[0].type.dtype
    classes = em.ints(list(range(node.inputs[0].type.shape[-1])), "classes")
    onehot = em.add("Cast", [em.add("Equal", [em.unsqueeze(labels, [-1]), classes])],
                    to=ONNX_DTYPES[dtype])
    difference = em.add("Sub", [em.add("Softmax", [logits], axis=-1), onehot])
    em.add("Mul", [difference, scale], out)


@lowering("sum_squares")
def _sum_squares(em, node, out, x):
    em.add("ReduceSumSquare", [x], out, keepdims=0)


@lowering("gemm")
def _gemm(em, node, out, a, b):
    em.add("Gemm", [a, b], out, transA=int(node.attrs["trans_a"]),
           transB=int(node.attrs["trans_b"]))
