"""The ONNX op table, elementwise and numeric ops: one small function per ONNX op type.

A converter reads its node through a NodeContext (`ctx.input(i)` for tensors, `ctx.static(i)`
for inputs that must be known at import time, `ctx.attr(name)` for attributes) and returns the
node's outputs. Anything it cannot express raises Unsupported with the reason. Compositions the
DSL already has (layer_norm, batch_norm, pad) are reused from its builtins, so each is written
once.
"""
from __future__ import annotations

import math

import numpy as np
from onnx import helper

from ..dsl.builtins import BUILTINS
from ..ir.types import is_float
from .context import CONVERTERS, Unsupported, converter
from .importer import ONNX_DTYPES


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

UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log",
         "Sqrt": "sqrt", "Abs": "abs", "Neg": "neg", "Sign": "sign", "Softplus": "softplus",
         "Erf": "erf", "Not": "logical_not"}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Equal": "equal",
          "Less": "less", "LessOrEqual": "less_equal", "Greater": "greater",
          "GreaterOrEqual": "greater_equal", "And": "logical_and", "Or": "logical_or",
          "Xor": "not_equal"}


def _unary(op):
    return lambda ctx: [ctx.emit(op, ctx.input(0))]


def _binary(op):
    def convert(ctx):
        a, b = ctx.input(0), ctx.input(1)
        if op == "div" and not is_float(a.type.dtype):
            raise Unsupported("integer Div (it truncates; chainrule divides floats only)")
        return [ctx.emit(op, a, b)]
    return convert


for _op_type, _op in UNARY.items():
    CONVERTERS[_op_type] = _unary(_op)
for _op_type, _op in BINARY.items():
    CONVERTERS[_op_type] = _binary(_op)


@converter("Identity")
def _identity(ctx):
    return [ctx.input(0)]


@converter("Reciprocal")
def _reciprocal(ctx):
    x = ctx.input(0)
    return [ctx.emit("div", ctx.constant(1.0, x), x)]


@converter("Pow")
def _pow(ctx):
    base, exponent = ctx.input(0), ctx.input(1)
    _require_float(ctx, base, "Pow")
    if exponent.type.dtype != base.type.dtype:
        exponent = ctx.emit("cast", exponent, dtype=base.type.dtype)
    return [ctx.emit("pow", base, exponent)]


@converter("LeakyRelu")
def _leaky_relu(ctx):
    return [ctx.emit("leaky_relu", ctx.input(0), alpha=ctx.float_attr("alpha", 0.01))]


def _where_positive(ctx, x, negative):
    """x where x > 0, else `negative` (Elu, Selu, PRelu)."""
    return ctx.emit("where", ctx.emit("greater", x, ctx.constant(0.0, x)), x, negative)


@converter("Elu")
def _elu(ctx):
    x = ctx.input(0)
    alpha = ctx.constant(ctx.float_attr("alpha", 1.0), x)
    below = ctx.emit("mul", alpha, ctx.emit("sub", ctx.emit("exp", x), ctx.constant(1.0, x)))
    return [_where_positive(ctx, x, below)]


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
    if known is not None and not known.symbolic:
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
    x = ctx.input(0)
    ctx.attr("saturate")
    to = ctx.attr("to")
    if to not in ONNX_DTYPES:
        raise Unsupported(f"Cast to {helper.tensor_dtype_to_np_dtype(to)} (chainrule has "
                          f"float32, float64, int64 and bool)")
    dtype = ONNX_DTYPES[to]
    return [x if dtype == x.type.dtype else ctx.emit("cast", x, dtype=dtype)]


@converter("CastLike")
def _cast_like(ctx):
    x, like = ctx.input(0), ctx.type_of(1)
    ctx.attr("saturate")
    return [x if like.dtype == x.type.dtype else ctx.emit("cast", x, dtype=like.dtype)]


@converter("Dropout")
def _dropout(ctx):
    ctx.attr("seed")
    training = ctx.static(2, "Dropout's training_mode")
    if training is not None and bool(training):
        raise Unsupported("Dropout with training_mode true (imported models run inference)")
    if ctx.output_used(1):
        raise Unsupported("Dropout's mask output")
    return [ctx.input(0)]


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

REDUCTIONS = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max",
              "ReduceMin": "min", "ReduceLogSumExp": "logsumexp",
              "ReduceSumSquare": "sum", "ReduceL2": "sum", "ReduceL1": "sum"}
# Since opset 18 every reduction takes its axes as an input; ReduceSum did from 13.
AXES_INPUT_SINCE = {"ReduceSum": 13}


def _reduction_axes(ctx):
    if ctx.importer.opset >= AXES_INPUT_SINCE.get(ctx.node.op_type, 18):
        axes = ctx.static_ints(1, "the reduction axes")
    else:
        axes = ctx.attr("axes")
        axes = None if axes is None else tuple(axes)
    return None if axes is not None and len(axes) == 0 else axes, axes is not None


@converter(*REDUCTIONS)
def _reduction(ctx):
    op_type = ctx.node.op_type
    x = ctx.input(0)
    axes, given = _reduction_axes(ctx)
    keepdims = bool(ctx.attr("keepdims", 1))
    if ctx.attr("noop_with_empty_axes", 0) and axes is None:
        return [x]
    if op_type in ("ReduceSumSquare", "ReduceL2"):
        x = ctx.emit("mul", x, x)
    elif op_type == "ReduceL1":
        x = ctx.emit("abs", x)
    result = ctx.emit(REDUCTIONS[op_type], x, axes=axes, keepdims=keepdims)
    return [ctx.emit("sqrt", result) if op_type == "ReduceL2" else result]


@converter("ArgMax", "ArgMin")
def _arg_reduction(ctx):
    ctx.require_attr("select_last_index", 0, 0)
    return [ctx.emit(ctx.node.op_type.lower(), ctx.input(0),
                     axis=ctx.attr("axis", 0), keepdims=bool(ctx.attr("keepdims", 1)))]


@converter("Softmax", "LogSoftmax")
def _softmax(ctx):
    op = "softmax" if ctx.node.op_type == "Softmax" else "log_softmax"
    return [ctx.emit(op, ctx.input(0), axis=ctx.attr("axis", -1))]


# ---- normalisation ----------------------------------------------------------------------------

@converter("LayerNormalization")
def _layer_norm(ctx):
    x, scale = ctx.input(0), ctx.input(1)
    bias = ctx.input(2) if ctx.has_input(2) else ctx.constant(0.0, x)
    ctx.attr("stash_type")
    if ctx.output_used(1) or ctx.output_used(2):
        raise Unsupported("LayerNormalization's Mean and InvStdDev outputs")
    axis = ctx.attr("axis", -1) % x.type.rank
    axes = tuple(range(axis, x.type.rank))
    compose = BUILTINS["layer_norm"].compose
    return [compose(ctx, x, scale, bias, axes, ctx.float_attr("epsilon", 1e-5))]


@converter("BatchNormalization")
def _batch_norm(ctx):
    """With its running statistics as initializers, the DSL's batch_norm: they are state that
    training updates (ONNX's momentum m is PyTorch's 1 - m). Given as inputs, inference only."""
    ctx.require_attr("training_mode", 0, 0)
    if any(ctx.output_used(i) for i in (1, 2)):
        raise Unsupported("BatchNormalization's training outputs")
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    epsilon, momentum = ctx.float_attr("epsilon", 1e-5), ctx.float_attr("momentum", 0.9)
    names = ctx.node.input[3], ctx.node.input[4]
    if all(ctx.importer.is_initializer(name) for name in names):
        mean, variance = (ctx.importer.state_param(name) for name in names)
        compose = BUILTINS["batch_norm"].compose
        return [compose(ctx, x, scale, bias, mean, variance, 1.0 - momentum, epsilon)]
    mean, variance = ctx.input(3), ctx.input(4)
    spread = tuple(a for a in range(x.type.rank) if a != 1)

    def per_channel(value):
        return ctx.emit("unsqueeze", value, axes=spread)

    deviation = ctx.emit("sqrt", ctx.emit("add", per_channel(variance),
                                          ctx.constant(epsilon, x)))
    normalised = ctx.emit("div", ctx.emit("sub", x, per_channel(mean)), deviation)
    return [ctx.emit("add", ctx.emit("mul", normalised, per_channel(scale)),
                     per_channel(bias))]


# ---- losses -----------------------------------------------------------------------------------

def _class_axis_last(ctx, x):
    """[N, C, d1, ...] -> [N, d1, ..., C]: chainrule's losses take classes on the last axis."""
    if x.type.rank <= 2:
        return x
    perm = (0,) + tuple(range(2, x.type.rank)) + (1,)
    return ctx.emit("transpose", x, perm=perm)


def _negative_log_likelihood(ctx, log_probabilities, labels, weights):
    """Per-example -log p[label] (times the label's weight), and the weights it used."""
    classes = log_probabilities.type.shape[-1]
    if not isinstance(classes, int):
        raise Unsupported(f"a loss over {classes} classes (the class count must be known)")
    one_hot = ctx.emit("one_hot", labels, depth=classes, dtype=log_probabilities.type.dtype)
    picked = ctx.emit("sum", ctx.emit("mul", one_hot, log_probabilities), axes=(-1,))
    losses = ctx.emit("neg", picked)
    if weights is None:
        return losses, None
    example_weights = ctx.emit("take", weights, labels, axis=0)
    return ctx.emit("mul", losses, example_weights), example_weights


def _reduced_loss(ctx, losses, example_weights):
    reduction = ctx.require_attr("reduction", ("mean", "sum", "none"), "mean")
    if reduction == "none":
        return losses
    total = ctx.emit("sum", losses)
    if reduction == "sum":
        return total
    if example_weights is None:
        return ctx.emit("mean", losses)
    return ctx.emit("div", total, ctx.emit("sum", example_weights))


def _labels(ctx, index):
    if ctx.attr("ignore_index") is not None:
        raise Unsupported("attribute ignore_index not supported")
    labels = ctx.input(index)
    if labels.type.dtype != "i64":
        raise Unsupported(f"labels of dtype {labels.type.dtype} (chainrule reads int64)")
    return labels


@converter("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx):
    scores, labels = _class_axis_last(ctx, ctx.input(0)), _labels(ctx, 1)
    weights = ctx.input(2) if ctx.has_input(2) else None
    reduction = ctx.attr("reduction", "mean")
    if weights is None and reduction == "mean" and not ctx.output_used(1) \
            and scores.type.rank == 2:
        return [ctx.emit("cross_entropy", scores, labels)]
    log_probabilities = ctx.emit("log_softmax", scores, axis=-1)
    losses, example_weights = _negative_log_likelihood(ctx, log_probabilities, labels, weights)
    log_prob_output = log_probabilities
    if scores.type.rank > 2:  # back to [N, C, d1, ...]
        rank = scores.type.rank
        log_prob_output = ctx.emit("transpose", log_probabilities,
                                   perm=(0, rank - 1) + tuple(range(1, rank - 1)))
    return [_reduced_loss(ctx, losses, example_weights), log_prob_output]


@converter("NegativeLogLikelihoodLoss")
def _negative_log_likelihood_loss(ctx):
    log_probabilities, labels = _class_axis_last(ctx, ctx.input(0)), _labels(ctx, 1)
    weights = ctx.input(2) if ctx.has_input(2) else None
    losses, example_weights = _negative_log_likelihood(ctx, log_probabilities, labels, weights)
    return [_reduced_loss(ctx, losses, example_weights)]
