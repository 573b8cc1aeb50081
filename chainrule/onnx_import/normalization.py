"""The ONNX op table, normalisations: each one composed of means, square roots and
broadcasting. The DSL's layer_norm and batch_norm are reused where their outputs suffice."""
from __future__ import annotations

import math

from ..ir import compositions
from .context import Unsupported, converter


def _axis(ctx, x, default):
    return ctx.axis(ctx.attr("axis", default), x.type.rank)


def _moments(ctx, x, axes):
    """x - mean(x) and the (biased) variance, both reduced over `axes` with keepdims."""
    centered = ctx.emit("sub", x, ctx.emit("mean", x, axes=axes, keepdims=True))
    return centered, ctx.emit("mean", ctx.emit("mul", centered, centered), axes=axes,
                              keepdims=True)


def _inverse_deviation(ctx, variance, epsilon):
    deviation = ctx.emit("sqrt", ctx.emit("add", variance, ctx.constant(epsilon, variance)))
    return ctx.emit("div", ctx.constant(1.0, variance), deviation)


def _per_channel(ctx, value, rank):
    """A [C] vector against [N, C, ...]."""
    return ctx.emit("unsqueeze", value, axes=tuple(range(1, rank - 1)))


@converter("LayerNormalization")
def _layer_norm(ctx):
    x, scale = ctx.input(0), ctx.input(1)
    bias = ctx.input(2) if ctx.has_input(2) else ctx.constant(0.0, x)
    ctx.attr("stash_type")  # statistics in float32 or better: chainrule keeps x's dtype
    axes = tuple(range(_axis(ctx, x, -1), x.type.rank))
    epsilon = ctx.float_attr("epsilon", 1e-5)
    if not (ctx.output_used(1) or ctx.output_used(2)):
        return [compositions.layer_norm(ctx, x, scale, bias, axes, epsilon)]
    centered, variance = _moments(ctx, x, axes)
    inverse = _inverse_deviation(ctx, variance, epsilon)
    normalised = ctx.emit("mul", centered, inverse)
    y = ctx.emit("add", ctx.emit("mul", normalised, scale), bias)
    return [y, ctx.emit("mean", x, axes=axes, keepdims=True), inverse]


@converter("RMSNormalization")
def _rms_norm(ctx):
    x, scale = ctx.input(0), ctx.input(1)
    ctx.attr("stash_type")
    axes = tuple(range(_axis(ctx, x, -1), x.type.rank))
    return [compositions.rms_norm(ctx, x, scale, ctx.float_attr("epsilon", 1e-5), axes)]


@converter("BatchNormalization")
def _batch_norm(ctx):
    """With its running statistics as initializers, the batch_norm composition: they are state that
    training updates (ONNX's momentum m is PyTorch's 1 - m). Given as inputs, inference only."""
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    epsilon, momentum = ctx.float_attr("epsilon", 1e-5), ctx.float_attr("momentum", 0.9)
    if ctx.attr("training_mode", 0):
        return _batch_norm_training(ctx, x, scale, bias, epsilon, momentum)
    if any(ctx.output_used(i) for i in (1, 2)):
        raise Unsupported("BatchNormalization's running statistics outputs (they are given "
                          "in training mode only)")
    names = ctx.node.input[3], ctx.node.input[4]
    if all(ctx.importer.is_initializer(name) for name in names):
        mean, variance = (ctx.importer.state_param(name) for name in names)
        return [compositions.batch_norm(ctx, x, scale, bias, mean, variance, 1.0 - momentum,
                                        epsilon)]
    mean, variance = ctx.input(3), ctx.input(4)
    rank = x.type.rank
    inverse = _inverse_deviation(ctx, _per_channel(ctx, variance, rank), epsilon)
    normalised = ctx.emit("mul", ctx.emit("sub", x, _per_channel(ctx, mean, rank)), inverse)
    return [ctx.emit("add", ctx.emit("mul", normalised, _per_channel(ctx, scale, rank)),
                     _per_channel(ctx, bias, rank))]


def _batch_norm_training(ctx, x, scale, bias, epsilon, momentum):
    """A node in training mode as a function: y normalised by the batch's statistics, and the
    running ones moved towards them (the variance biased, as ONNX defines it)."""
    rank = x.type.rank
    spread = tuple(a for a in range(rank) if a != 1)
    centered, variance = _moments(ctx, x, spread)
    inverse = _inverse_deviation(ctx, variance, epsilon)
    normalised = ctx.emit("mul", centered, inverse)
    y = ctx.emit("add", ctx.emit("mul", normalised, _per_channel(ctx, scale, rank)),
                 _per_channel(ctx, bias, rank))
    keep, blend = ctx.constant(momentum, x), ctx.constant(1.0 - momentum, x)

    def running(index, batch):
        name = ctx.node.input[index]  # running statistics are never trained
        current = ctx.importer.state_param(name) if ctx.importer.is_initializer(name) else \
            ctx.input(index)
        return ctx.emit("add", ctx.emit("mul", current, keep),
                        ctx.emit("mul", ctx.emit("squeeze", batch, axes=spread), blend))
    if not (ctx.output_used(1) or ctx.output_used(2)):
        return [y]
    return [y, running(3, ctx.emit("mean", x, axes=spread, keepdims=True)),
            running(4, variance)]


@converter("InstanceNormalization")
def _instance_norm(ctx):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    return [compositions.instance_norm(ctx, x, scale, bias, ctx.float_attr("epsilon", 1e-5))]


@converter("GroupNormalization")
def _group_norm(ctx):
    """Statistics per group of channels: x as [N, groups, C / groups, ...]. The scale and bias
    are per channel from opset 21 on (the group_norm composition), per group before."""
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    ctx.attr("stash_type")
    groups = ctx.positive_attr("num_groups")
    batch, channels, *spatial = ctx.require_rank(x, 2).type.shape
    if not isinstance(channels, int) or channels % groups:
        raise Unsupported(f"GroupNormalization of {x.type} into {groups} groups")
    epsilon = ctx.float_attr("epsilon", 1e-5)
    if ctx.importer.opset >= 21:
        return [compositions.group_norm(ctx, x, scale, bias, groups, epsilon)]
    grouped = ctx.emit("reshape", x, shape=(0, groups, channels // groups, *spatial))
    centered, variance = _moments(ctx, grouped, tuple(range(2, grouped.type.rank)))
    normalised = ctx.emit("mul", centered, _inverse_deviation(ctx, variance, epsilon))
    rank = grouped.type.rank
    normalised = ctx.emit("add", ctx.emit("mul", normalised, _per_channel(ctx, scale, rank)),
                          _per_channel(ctx, bias, rank))
    return [ctx.emit("reshape", normalised, shape=(0, channels, *spatial))]


@converter("MeanVarianceNormalization")
def _mean_variance_norm(ctx):
    """(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9), ONNX's own formula."""
    x = ctx.input(0)
    axes = tuple(ctx.attr("axes", (0, 2, 3)))
    mean = ctx.emit("mean", x, axes=axes, keepdims=True)
    square_mean = ctx.emit("mean", ctx.emit("mul", x, x), axes=axes, keepdims=True)
    deviation = ctx.emit("sqrt", ctx.emit("sub", square_mean, ctx.emit("mul", mean, mean)))
    return [ctx.emit("div", ctx.emit("sub", x, mean),
                     ctx.emit("add", deviation, ctx.constant(1e-9, x)))]


@converter("LpNormalization")
def _lp_norm(ctx):
    """x over its L1 or L2 norm along the axis; where the norm is 0, 0."""
    x = ctx.input(0)
    axis = _axis(ctx, x, -1)
    p = ctx.require_attr("p", (1, 2), 2)
    if p == 1:
        norm = ctx.emit("sum", ctx.emit("abs", x), axes=(axis,), keepdims=True)
    else:
        norm = ctx.emit("sqrt", ctx.emit("sum", ctx.emit("mul", x, x), axes=(axis,),
                                         keepdims=True))
    zero = ctx.constant(0.0, x)
    return [ctx.emit("where", ctx.emit("equal", norm, zero), zero, ctx.emit("div", x, norm))]


@converter("LRN")
def _local_response_norm(ctx):
    """x / (bias + alpha / size * (sum of x^2 over the `size` channels around each))^beta."""
    x = ctx.require_rank(ctx.input(0), 2)
    size = ctx.positive_attr("size")
    alpha, beta = ctx.float_attr("alpha", 1e-4), ctx.float_attr("beta", 0.75)
    bias = ctx.float_attr("bias", 1.0)
    channels = x.type.shape[1]
    if not isinstance(channels, int):
        raise Unsupported(f"LRN over the symbolic channels of {x.type}")
    before, after = math.floor((size - 1) / 2), math.ceil((size - 1) / 2)
    squares = ctx.emit("mul", x, x)
    pads = [0] * 2 * x.type.rank
    pads[1], pads[x.type.rank + 1] = before, after
    padded = ctx.emit("pad", squares, pads=tuple(pads), value=0.0)
    window = None
    for offset in range(size):
        part = ctx.emit("slice", padded, starts=(offset,), ends=(offset + channels,), axes=(1,),
                        steps=(1,))
        window = part if window is None else ctx.emit("add", window, part)
    scaled = ctx.emit("add", ctx.constant(bias, x),
                      ctx.emit("mul", ctx.constant(alpha / size, x), window))
    return [ctx.emit("div", x, ctx.emit("pow", scaled, ctx.constant(beta, x)))]
