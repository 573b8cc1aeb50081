"""The ONNX op table, elementwise and numeric ops: one small function per ONNX op type.

A converter reads its node through a NodeContext (`ctx.input(i)` for tensors, `ctx.static(i)`
for inputs that must be known at import time, `ctx.attr(name)` for attributes) and returns the
node's outputs. Anything it cannot express raises Unsupported with the reason. An op chainrule
lacks is composed of those it has (Round of floor and where, Selu of where and exp); the
shared compositions of ir/compositions.py (elu, ceil, Mod's remainders, layer_norm,
batch_norm, pad, the triangles of Trilu) are reused where ONNX means the same, so each is
written once.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from ..ir import Value, compositions
from ..ir.ops import OPS, OpDef
from ..ir.shapes import TO_START
from ..ir.types import DTYPE_OF_ONNX, is_float, numpy_dtype
from .context import CONVERTERS, Unsupported, converter


def _chain(ctx, op, values):
    result = values[0]
    for value in values[1:]:
        result = ctx.emit(op, result, value)
    return result


def _require_float(ctx, value, what="this op"):
    if not is_float(value.type.dtype):
        raise Unsupported(f"{what} on {value.type.dtype} tensors (chainrule computes it on "
                          f"floats)")


# ---- elementwise ------------------------------------------------------------------------------

def _exact(op: OpDef):
    """The converter of an ONNX op that computes exactly `op`: its inputs are the op's."""
    return lambda ctx: [ctx.emit(op.name, *(ctx.input(i) for i in range(op.num_inputs)))]


# The inverse of the ONNX lowering's 1:1 ops. An ONNX op that means more than chainrule's op
# (Max of any number of inputs, Pow of mixed dtypes, integer Div) has its own converter below.
for _op in OPS.values():
    if _op.onnx is not None:
        CONVERTERS[_op.onnx] = _exact(_op)


@converter("Div")
def _div(ctx):
    a, b = ctx.input(0), ctx.input(1)
    return [ctx.emit("div" if is_float(a.type.dtype) else "int_div", a, b)]


@converter("Xor")
def _xor(ctx):
    return [ctx.emit("not_equal", ctx.input(0), ctx.input(1))]


@converter("Identity")
def _identity(ctx):
    return [ctx.element(0)]  # a sequence or an optional passes as a tensor does


@converter("Reciprocal")
def _reciprocal(ctx):
    x = ctx.input(0)
    return [ctx.emit("div", ctx.constant(1.0, x), x)]


@converter("Pow")
def _pow(ctx):
    base, exponent = ctx.input(0), ctx.input(1)
    if exponent.type.dtype != base.type.dtype:
        exponent = ctx.emit("cast", exponent, dtype=base.type.dtype)
    return [ctx.emit("pow", base, exponent)]


@converter("LeakyRelu")
def _leaky_relu(ctx):
    return [ctx.emit("leaky_relu", ctx.input(0), alpha=ctx.float_attr("alpha", 0.01))]


def _where_positive(ctx, x, negative):
    """x where x > 0, else `negative` (Selu, PRelu)."""
    return ctx.emit("where", ctx.emit("greater", x, ctx.constant(0.0, x)), x, negative)


@converter("Elu")
def _elu(ctx):
    alpha = ctx.float_attr("alpha", 1.0)
    return [_in_f32_for_half_floats(ctx, ctx.input(0), lambda x: compositions.elu(ctx, x, alpha))]


@converter("Selu")
def _selu(ctx):
    x = ctx.input(0)
    alpha = ctx.float_attr("alpha", 1.67326319217681884765625)
    gamma = ctx.constant(ctx.float_attr("gamma", 1.05070102214813232421875), x)
    below = ctx.emit("mul", ctx.constant(alpha, x),
                     ctx.emit("sub", ctx.emit("exp", x), ctx.constant(1.0, x)))
    return [ctx.emit("mul", gamma, _where_positive(ctx, x, below))]


@converter("PRelu")
def _prelu(ctx):
    x, slope = ctx.input(0), ctx.input(1)
    return [_where_positive(ctx, x, ctx.emit("mul", slope, x))]


def _hard_sigmoid(ctx, x, alpha, beta):
    scaled = ctx.emit("add", ctx.emit("mul", ctx.constant(alpha, x), x), ctx.constant(beta, x))
    return ctx.emit("clip", scaled, lo=0.0, hi=1.0)


@converter("HardSigmoid")
def _hard_sigmoid_node(ctx):
    x = ctx.input(0)
    return [_hard_sigmoid(ctx, x, ctx.float_attr("alpha", 0.2), ctx.float_attr("beta", 0.5))]


@converter("HardSwish")
def _hard_swish(ctx):
    x = ctx.input(0)
    return [ctx.emit("mul", x, _hard_sigmoid(ctx, x, 1.0 / 6.0, 0.5))]


@converter("Softsign")
def _softsign(ctx):
    x = ctx.input(0)
    return [ctx.emit("div", x, ctx.emit("add", ctx.constant(1.0, x), ctx.emit("abs", x)))]


@converter("Gelu")
def _gelu(ctx):
    x = ctx.input(0)
    if ctx.require_attr("approximate", ("none", "tanh"), "none") == "tanh":
        return [ctx.emit("gelu", x)]
    # x/2 (1 + erf(x / sqrt 2))
    scaled = ctx.emit("div", x, ctx.constant(math.sqrt(2.0), x))
    one_plus = ctx.emit("add", ctx.constant(1.0, x), ctx.emit("erf", scaled))
    return [ctx.emit("mul", ctx.emit("mul", ctx.constant(0.5, x), x), one_plus)]


@converter("ThresholdedRelu")
def _thresholded_relu(ctx):
    x = ctx.input(0)
    alpha = ctx.constant(ctx.float_attr("alpha", 1.0), x)
    return [ctx.emit("where", ctx.emit("greater", x, alpha), x, ctx.constant(0.0, x))]


@converter("Celu")
def _celu(ctx):
    """max(0, x) + min(0, alpha (exp(x / alpha) - 1))."""
    def celu(x):
        alpha = ctx.constant(ctx.float_attr("alpha", 1.0), x)
        zero = ctx.constant(0.0, x)
        below = ctx.emit("mul", alpha, ctx.emit("sub", ctx.emit("exp", ctx.emit("div", x, alpha)),
                                                ctx.constant(1.0, x)))
        return ctx.emit("add", ctx.emit("maximum", zero, x), ctx.emit("minimum", zero, below))
    return [_in_f32_for_half_floats(ctx, ctx.input(0), celu)]


def _in_f32_for_half_floats(ctx, x, compose):
    """compose(x), computed in f32 when x is f16 or bf16 and cast back: exp(x) - 1 rounded to
    a half float's 8 or 11 bits before the subtraction loses the one rounding ONNX's single op
    makes."""
    dtype = x.type.dtype
    if dtype not in ("f16", "bf16"):
        return compose(x)
    return ctx.emit("cast", compose(ctx.emit("cast", x, dtype="f32")), dtype=dtype)


@converter("Swish")
def _swish(ctx):
    x = ctx.input(0)
    scaled = ctx.emit("mul", ctx.constant(ctx.float_attr("alpha", 1.0), x), x)
    return [ctx.emit("mul", x, ctx.emit("sigmoid", scaled))]


@converter("Mish")
def _mish(ctx):
    x = ctx.input(0)
    return [ctx.emit("mul", x, ctx.emit("tanh", ctx.emit("softplus", x)))]


@converter("Shrink")
def _shrink(ctx):
    """x + bias below -lambd, x - bias above lambd, 0 between."""
    x = ctx.input(0)
    _require_float(ctx, x, "Shrink")
    lambd, bias = ctx.float_attr("lambd", 0.5), ctx.constant(ctx.float_attr("bias", 0.0), x)
    inner = ctx.emit("where", ctx.emit("greater", x, ctx.constant(lambd, x)),
                     ctx.emit("sub", x, bias), ctx.constant(0.0, x))
    return [ctx.emit("where", ctx.emit("less", x, ctx.constant(-lambd, x)),
                     ctx.emit("add", x, bias), inner)]


@converter("IsNaN")
def _is_nan(ctx):
    x = ctx.input(0)
    return [ctx.emit("not_equal", x, x)]


@converter("IsInf")
def _is_inf(ctx):
    x = ctx.input(0)
    signs = [sign for sign, attribute in ((1.0, "detect_positive"), (-1.0, "detect_negative"))
             if ctx.attr(attribute, 1)]
    found = [ctx.emit("equal", x, ctx.constant(sign * math.inf, x)) for sign in signs]
    if not found:
        return [ctx.emit("broadcast_like", ctx.constant(0, "bool"), x)]
    return [_chain(ctx, "logical_or", found)]


# ---- rounding ---------------------------------------------------------------------------------

@converter("Ceil")
def _ceil(ctx):
    x = ctx.input(0)
    _require_float(ctx, x, "Ceil")
    return [compositions.ceil(ctx, x)]


@converter("Round")
def _round(ctx):
    x = ctx.input(0)
    _require_float(ctx, x, "Round")
    return [compositions.round_half_even(ctx, x)]


@converter("Mod")
def _mod(ctx):
    """C's fmod with fmod=1, else Python's % (the sign of y): the int_mod op on integers,
    composed of float ops on floats."""
    x, y = ctx.input(0), ctx.input(1)
    fmod = bool(ctx.attr("fmod", 0))
    if not is_float(x.type.dtype):
        return [ctx.emit("int_mod", x, y, fmod=fmod)]
    return [compositions.remainder(ctx, x, y, truncated=fmod)]


@converter("BitShift")
def _bit_shift(ctx):
    direction = ctx.attr("direction")
    ops = {"LEFT": "left_shift", "RIGHT": "right_shift"}
    if direction not in ops:
        raise Unsupported(f"BitShift's direction {direction!r} (LEFT or RIGHT)")
    return [ctx.emit(ops[direction], ctx.input(0), ctx.input(1))]


@converter("BitCast")
def _bit_cast(ctx):
    to = ctx.attr("to")
    if to not in DTYPE_OF_ONNX:
        raise Unsupported(f"BitCast to dtype {to} (chainrule has every dtype but strings and "
                          f"complex numbers)")
    return [ctx.emit("bitcast", ctx.input(0), dtype=DTYPE_OF_ONNX[to])]


@converter("Clip")
def _clip(ctx):
    x = ctx.input(0)
    bounds = [_static_or_tensor(ctx, index) for index in (1, 2)]
    if is_float(x.type.dtype) and all(not hasattr(b, "type") for b in bounds):
        lo, hi = (-math.inf if bounds[0] is None else bounds[0],
                  math.inf if bounds[1] is None else bounds[1])
        if lo > hi:  # ONNX: every value becomes max
            return [ctx.emit("broadcast_like", ctx.constant(hi, x), x)]
        return [ctx.emit("clip", x, lo=lo, hi=hi)]
    for op, bound in (("maximum", bounds[0]), ("minimum", bounds[1])):
        if bound is not None:
            bound = bound if hasattr(bound, "type") else ctx.constant(bound, x)
            x = ctx.emit(op, x, bound)
    return [x]


def _static_or_tensor(ctx, index):
    """An optional scalar input as a number when it is known, else as a tensor."""
    if not ctx.has_input(index):
        return None
    known = ctx.importer.static_value(ctx.node.input[index])
    if known is not None and not known.symbolic and known.array.size == 1:
        return float(known.array.reshape(()))
    return ctx.input(index)


@converter("Max", "Min", "Sum", "Mean")
def _variadic(ctx):
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[ctx.node.op_type]
    values = ctx.inputs()
    result = _chain(ctx, op, values)
    if ctx.node.op_type == "Mean":
        if len(values) == 1:
            return [result]
        result = ctx.emit("div", result, ctx.constant(len(values), result))
    elif len(values) == 1:  # a broadcast with nothing: still its own value
        return [values[0]]
    return [result]


@converter("Where")
def _where(ctx):
    return [ctx.emit("where", ctx.input(0), ctx.input(1), ctx.input(2))]


@converter("Cast")
def _cast(ctx):
    to = ctx.attr("to")
    if to not in helper.get_all_tensor_dtypes():
        raise Unsupported(f"Cast to {to}, which is no ONNX dtype")
    if to not in DTYPE_OF_ONNX:
        raise Unsupported(f"Cast to {TensorProto.DataType.Name(to)} (chainrule has every dtype "
                          f"but strings and complex numbers)")
    return [_cast_to(ctx, DTYPE_OF_ONNX[to])]


@converter("CastLike")
def _cast_like(ctx):
    return [_cast_to(ctx, ctx.type_of(1).dtype)]


def _cast_to(ctx, dtype: str) -> Value:
    x = ctx.input(0)
    saturate = bool(ctx.attr("saturate", 1))
    if dtype == x.type.dtype:
        return x
    return ctx.emit("cast", x, dtype=dtype, saturate=saturate)


@converter("Dropout")
def _dropout(ctx):
    """With training_mode true, the DSL's dropout: x times the IR's dropout_mask, which draws a
    mask while the model trains and is ones when it runs, so an imported model trains with
    dropout active and runs without it. The identity with training_mode false or absent, or a
    ratio of 0, as ONNX defines it (the ratio then matters to nothing and may be computed).
    The mask output is true where x is kept.

    The seed attribute seeds the mask where no generator is given (a run in training mode
    outside a trainer, the training ONNX export); a trainer draws every mask from its own."""
    x = ctx.input(0)
    seed = ctx.attr("seed")
    training = ctx.static_scalar(2, "Dropout's training_mode")
    ratio = 0.0
    if training is not None and bool(training):
        ratio = ctx.static_scalar(1, "Dropout's ratio", np.array(0.5))
        if ratio.dtype.kind != "f":
            raise Unsupported(f"Dropout's ratio (input '{ctx.node.input[1]}') must be a "
                              f"float, not {ratio.dtype}")
        # The shortest decimal of the float32 the exporter wrote: 0.1, not 0.100000001.
        ratio = float(str(ratio))
    if ratio == 0.0:
        if not ctx.output_used(1):
            return [x]
        return [x, ctx.emit("broadcast_like", ctx.constant(1, "bool"), x)]
    _require_float(ctx, x, "Dropout in training mode")
    # numpy seeds with non-negative ints, and the IR's ints are int64: a negative seed wraps.
    seed = len(ctx.builder.graph.nodes) if seed is None else seed % 2 ** 63
    mask = ctx.emit("dropout_mask", x, p=ratio, seed=seed)
    output = ctx.emit("mul", x, mask)
    if not ctx.output_used(1):
        return [output]
    return [output, ctx.emit("not_equal", mask, ctx.constant(0.0, mask))]


# ---- matrix products --------------------------------------------------------------------------

@converter("MatMul")
def _matmul(ctx):
    return [ctx.emit("matmul", ctx.input(0), ctx.input(1))]


def _transposed(ctx, x):
    return ctx.emit("transpose", x, perm=(1, 0))


@converter("Gemm")
def _gemm(ctx):
    a, b = ctx.input(0), ctx.input(1)
    if ctx.attr("transA", 0):
        a = _transposed(ctx, a)
    if ctx.attr("transB", 0):
        b = _transposed(ctx, b)
    product = ctx.emit("matmul", a, b)
    alpha, beta = ctx.float_attr("alpha", 1.0), ctx.float_attr("beta", 1.0)
    if alpha != 1.0:
        product = ctx.emit("mul", ctx.constant(alpha, product), product)
    if ctx.has_input(2) and beta != 0.0:
        c = ctx.input(2)
        if beta != 1.0:
            c = ctx.emit("mul", ctx.constant(beta, c), c)
        product = ctx.emit("add", product, c)
    return [product]


@converter("Einsum")
def _einsum(ctx):
    from .einsum import einsum
    return [einsum(ctx, ctx.attr("equation"), ctx.inputs())]


# ---- reductions -------------------------------------------------------------------------------

# op type -> (elementwise before, reduction, elementwise after); None for none.
REDUCTIONS = {"ReduceSum": (None, "sum", None), "ReduceMean": (None, "mean", None),
              "ReduceMax": (None, "max", None), "ReduceMin": (None, "min", None),
              "ReduceLogSumExp": (None, "logsumexp", None),
              "ReduceSumSquare": ("square", "sum", None), "ReduceL1": ("abs", "sum", None),
              "ReduceL2": ("square", "sum", "sqrt"), "ReduceLogSum": (None, "sum", "log"),
              "ReduceProd": (None, "prod", None)}
# Since opset 18 every reduction takes its axes as an input; ReduceSum did from 13.
AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduction_axes(ctx):
    """The axes, or None for every axis; () when noop_with_empty_axes leaves x unreduced."""
    if ctx.importer.opset >= AXES_INPUT_SINCE.get(ctx.node.op_type, 18):
        axes = ctx.static_ints(1, "the reduction axes")
    else:
        axes = ctx.attr("axes")
        axes = None if axes is None else tuple(axes)
    noop = ctx.attr("noop_with_empty_axes", 0)
    if not axes:
        return () if noop else None
    return axes


def _elementwise(ctx, op, x):
    if op is None:
        return x
    return ctx.emit("mul", x, x) if op == "square" else ctx.emit(op, x)


@converter(*REDUCTIONS)
def _reduction(ctx):
    before, reduction, after = REDUCTIONS[ctx.node.op_type]
    x = ctx.input(0)
    axes = _reduction_axes(ctx)
    keepdims = bool(ctx.attr("keepdims", 1))
    if x.type.dtype == "bool" and reduction in ("max", "min"):  # any and all
        numbers = ctx.emit("cast", x, dtype="i64")
        result = ctx.emit(reduction, numbers, axes=axes, keepdims=keepdims) if axes != () \
            else numbers
        # Over nothing the max is i64's least value, which a cast would take as true: any of
        # nothing is false (and all of nothing, i64's greatest, true).
        return [ctx.emit("greater", result, ctx.constant(0.0, "i64"))]
    x = _elementwise(ctx, before, x)
    if axes == ():  # noop_with_empty_axes: the elementwise parts only
        result = x
    else:
        result = ctx.emit(reduction, x, axes=axes, keepdims=keepdims)
    return [_elementwise(ctx, after, result)]


@converter("ArgMax", "ArgMin")
def _arg_reduction(ctx):
    """With select_last_index, the first extreme of x reversed along the axis, counted back."""
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.type.rank)
    keepdims = bool(ctx.attr("keepdims", 1))
    op = ctx.node.op_type.lower()
    if not ctx.attr("select_last_index", 0):
        return [ctx.emit(op, x, axis=axis, keepdims=keepdims)]
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise Unsupported(f"{ctx.node.op_type} with select_last_index over the symbolic axis "
                          f"{axis} of {x.type}")
    reversed_x = ctx.emit("slice", x, starts=(-1,), ends=(TO_START,), axes=(axis,), steps=(-1,))
    index = ctx.emit(op, reversed_x, axis=axis, keepdims=keepdims)
    return [ctx.emit("sub", ctx.constant(size - 1, index), index)]


@converter("Hardmax")
def _hardmax(ctx):
    """1 where argmax (the first maximum) along the axis picks, else 0."""
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", -1), x.type.rank)
    size = x.type.shape[axis]
    if not isinstance(size, int):
        raise Unsupported(f"Hardmax over the symbolic axis {axis} of {x.type}")
    picked = ctx.emit("one_hot", ctx.emit("argmax", x, axis=axis, keepdims=False), depth=size,
                      dtype=x.type.dtype)  # the class axis last
    if axis == x.type.rank - 1:
        return [picked]
    perm = tuple(range(axis)) + (x.type.rank - 1,) + tuple(range(axis, x.type.rank - 1))
    return [ctx.emit("transpose", picked, perm=perm)]


@converter("Softmax", "LogSoftmax")
def _softmax(ctx):
    op = "softmax" if ctx.node.op_type == "Softmax" else "log_softmax"
    x, axis = ctx.input(0), ctx.attr("axis", -1)
    if op == "softmax" and _nan_rows_replaced(ctx):
        return [_softmax_of_masked_rows(ctx, x, axis)]
    return [ctx.emit(op, x, axis=axis)]


def _nan_rows_replaced(ctx) -> bool:
    """Whether the model reads the softmax only to replace its NaN, as torch's exported
    scaled dot-product attention does: Where(IsNaN(p), 0, p)."""
    readers = {op for op, _ in ctx.importer.positions.get(ctx.node.output[0], ())}
    return "IsNaN" in readers and readers <= {"IsNaN", "Where"}


def _softmax_of_masked_rows(ctx, x, axis):
    """softmax(x) with 0, not NaN, in each row whose every score is -inf: a query that may
    attend to nothing (a left-padded row under a causal mask). The model replaces that NaN
    with 0 itself, but the gradient of the softmax it replaced would be NaN * 0."""
    lowest = -float(np.finfo(numpy_dtype(x.type.dtype)).max)
    top = ctx.emit("max", x, axes=(axis,), keepdims=True)
    masked = ctx.emit("less", top, ctx.constant(lowest, x))
    zero = ctx.constant(0.0, x)
    probabilities = ctx.emit("softmax", ctx.emit("where", masked, zero, x), axis=axis)
    return ctx.emit("where", masked, zero, probabilities)
