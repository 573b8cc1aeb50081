"""Compositions both front ends build: a loss, a normalisation or a padding made of several
ops, written once against the face a front end hands them. `ops.emit(op, *inputs, **attrs)`
appends a node, `ops.constant(value, like)` makes a scalar of `like`'s dtype, `ops.error(text)`
raises the front end's located error, and `ops.update_state(state, value)` records what
training writes into a state. The DSL registers each as a built-in (dsl/builtins.py); the ONNX
importer calls them for the ops they implement.
"""
from __future__ import annotations

import math

from .shapes import TO_END, TO_START, shapes_may_equal
from .types import is_float, is_int


def cross_entropy(ops, logits, labels):
    """Integer labels: the cross_entropy op. Probability targets shaped like the logits: the
    mean over the batch of -sum(targets * log_softmax(logits))."""
    if labels.type.dtype == "i64":
        return ops.emit("cross_entropy", logits, labels)
    if labels.type.dtype != logits.type.dtype or not shapes_may_equal(labels.type.shape,
                                                                      logits.type.shape):
        ops.error(f"labels must be i64, or probability targets of the logits' dtype and "
                  f"shape; got logits {logits.type} and targets {labels.type}")
    log_probabilities = ops.emit("log_softmax", logits, axis=-1)
    per_example = ops.emit("sum", ops.emit("mul", labels, log_probabilities), axes=(-1,))
    return ops.emit("neg", ops.emit("mean", per_example))


def binary_cross_entropy_with_logits(ops, logits, targets):
    # -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x)) = softplus(x) - t x, stable for any x.
    if targets.type.dtype != logits.type.dtype:
        ops.error(f"targets must have the logits' dtype; got logits {logits.type} and "
                  f"targets {targets.type}")
    losses = ops.emit("sub", ops.emit("softplus", logits), ops.emit("mul", targets, logits))
    return ops.emit("mean", losses)


def silu(ops, x):
    """x·sigmoid(x), also called swish."""
    return ops.emit("mul", x, ops.emit("sigmoid", x))


def elu(ops, x, alpha):
    """x where x > 0, else alpha·(eˣ − 1). The exponential reads x only where x ≤ 0, so a large
    x, whose eˣ would overflow, gives no 0·inf = NaN in the gradient of the branch not taken."""
    positive = ops.emit("greater", x, ops.constant(0.0, x))
    not_above_zero = ops.emit("where", positive, ops.constant(0.0, x), x)
    below = ops.emit("mul", ops.constant(alpha, x),
                     ops.emit("sub", ops.emit("exp", not_above_zero), ops.constant(1.0, x)))
    return ops.emit("where", positive, x, below)


def variance(ops, x, axes, keepdims, correction):
    """Σ(x − mean)² / (n − correction) over `axes` (PyTorch's torch.var: correction=1 is the
    unbiased estimate)."""
    centered = ops.emit("sub", x, ops.emit("mean", x, axes=axes, keepdims=True))
    squares = ops.emit("sum", ops.emit("mul", centered, centered), axes=axes, keepdims=keepdims)
    count = ops.emit("numel", x, axes=axes, dtype=x.type.dtype)
    if correction:
        count = ops.emit("sub", count, ops.constant(correction, x))
    return ops.emit("div", squares, count)


def standard_deviation(ops, x, axes, keepdims, correction):
    return ops.emit("sqrt", variance(ops, x, axes, keepdims, correction))


def triangle(ops, x, k, upper):
    """x where its last two dims' position (row, column) has column − row ≥ k (upper) or
    ≤ k (lower), else 0: numpy's triu and tril, for known and symbolic dims alike."""
    if x.type.rank < 2:
        ops.error(f"the triangle is of the last two dims, so x needs rank 2 or more, not "
                  f"{x.type}")
    rows, columns = x.type.shape[-2:]
    row = ops.emit("unsqueeze", ops.emit("arange", n=rows), axes=(1,))
    column = ops.emit("unsqueeze", ops.emit("arange", n=columns), axes=(0,))
    diagonal = ops.emit("sub", column, row)  # which diagonal each element is on
    k = min(max(k, -2 ** 31), 2 ** 31)  # past that, every size chainrule takes keeps all or none
    keep = ops.emit("greater_equal" if upper else "less_equal", diagonal,
                    ops.constant(k, diagonal))
    return ops.emit("where", keep, x, ops.constant(0, x))


def _require_float(ops, x, what):
    if not is_float(x.type.dtype):
        ops.error(f"{what} of {x.type.dtype} tensors: chainrule divides numbers only (cast them "
                  f"with f32(...) or i64(...))")


def ceil(ops, x):
    return ops.emit("neg", ops.emit("floor", ops.emit("neg", x)))


def round_half_even(ops, x):
    """To the nearest integer, halves to the even one (as numpy and ONNX do)."""
    floor = ops.emit("floor", x)
    fraction = ops.emit("sub", x, floor)  # exact
    half = ops.constant(0.5, x)
    up = ops.emit("add", floor, ops.constant(1.0, x))
    odd = ops.emit("not_equal", ops.emit("floor", ops.emit("mul", floor, half)),
                   ops.emit("mul", floor, half))
    at_half = ops.emit("where", odd, up, floor)
    nearest = ops.emit("where", ops.emit("less", fraction, half), floor, up)
    return ops.emit("where", ops.emit("equal", fraction, half), at_half, nearest)


def floor_divide(ops, x, y):
    """Python's x // y: floor(x / y) on floats; on integers (x − x % y) / y, which divides
    exactly, so int_div's truncation cannot round it."""
    if is_int(x.type.dtype):
        return ops.emit("int_div", ops.emit("sub", x, ops.emit("int_mod", x, y)), y)
    _require_float(ops, x, "//")
    return ops.emit("floor", ops.emit("div", x, y))


def remainder(ops, x, y, truncated=False):
    """Python's x % y, x − floor(x / y)·y, which has y's sign; truncated, C's fmod,
    x − trunc(x / y)·y, which has x's. The int_mod op on integers; on floats composed, exact
    but for the rounding of the product."""
    if is_int(x.type.dtype):
        return ops.emit("int_mod", x, y, fmod=truncated)
    _require_float(ops, x, "fmod" if truncated else "%")
    quotient = ops.emit("div", x, y)
    if truncated:
        below_zero = ops.emit("less", quotient, ops.constant(0.0, x))
        whole = ops.emit("where", below_zero, ceil(ops, quotient), ops.emit("floor", quotient))
    else:
        whole = ops.emit("floor", quotient)
    result = ops.emit("sub", x, ops.emit("mul", whole, y))
    # A finite x by ±inf keeps x (for % with signs that differ, y), where the formula gives
    # 0·inf = nan.
    infinity = ops.constant(math.inf, x)
    if truncated:
        kept = x
    else:
        zero = ops.constant(0.0, x)
        same_sign = ops.emit("equal", ops.emit("greater", x, zero), ops.emit("greater", y, zero))
        kept = ops.emit("where", ops.emit("logical_or", same_sign, ops.emit("equal", x, zero)),
                        x, y)
    by_infinity = ops.emit("logical_and", ops.emit("equal", ops.emit("abs", y), infinity),
                           ops.emit("less", ops.emit("abs", x), infinity))
    return ops.emit("where", by_infinity, kept, result)


def _standardised(ops, x, axes, eps):
    """(x − mean)/√(variance + eps) over `axes`, the variance biased (as PyTorch's norms)."""
    mean = ops.emit("mean", x, axes=axes, keepdims=True)
    centered = ops.emit("sub", x, mean)
    variance = ops.emit("mean", ops.emit("mul", centered, centered), axes=axes, keepdims=True)
    deviation = ops.emit("sqrt", ops.emit("add", variance, ops.constant(eps, x)))
    return ops.emit("div", centered, deviation)


def layer_norm(ops, x, gamma, beta, axes, eps):
    return ops.emit("add", ops.emit("mul", _standardised(ops, x, axes, eps), gamma), beta)


def rms_norm(ops, x, weight, eps, axes):
    """x/√(mean(x²) + eps)·weight over `axes` (PyTorch's RMSNorm, ONNX's RMSNormalization)."""
    square_mean = ops.emit("mean", ops.emit("mul", x, x), axes=axes, keepdims=True)
    deviation = ops.emit("sqrt", ops.emit("add", square_mean, ops.constant(eps, x)))
    return ops.emit("mul", ops.emit("div", x, deviation), weight)


def _channel_affine(ops, normalised, weight, bias):
    """normalised·weight + bias, weight and bias [C] against [N, C, ...]."""
    channels, rank = normalised.type.shape[1], normalised.type.rank
    for name, value in (("weight", weight), ("bias", bias)):
        if value.type.rank != 1 or not shapes_may_equal(value.type.shape, (channels,)):
            ops.error(f"{name} must be [{channels}] (one per channel), not {value.type}")
    spread = tuple(range(1, rank - 1))
    return ops.emit("add", ops.emit("mul", normalised, ops.emit("unsqueeze", weight, axes=spread)),
                    ops.emit("unsqueeze", bias, axes=spread))


def instance_norm(ops, x, weight, bias, eps):
    """Each channel of each example normalised over its spatial axes, [N, C, *spatial]
    (PyTorch's instance_norm without running statistics, ONNX's InstanceNormalization)."""
    if x.type.rank < 3:
        ops.error(f"x must be [N, C, *spatial], not {x.type}")
    normalised = _standardised(ops, x, tuple(range(2, x.type.rank)), eps)
    return _channel_affine(ops, normalised, weight, bias)


def group_norm(ops, x, weight, bias, groups, eps):
    """Each example's channels in `groups` groups, each normalised over its channels and
    spatial axes as one, then weight and bias per channel (PyTorch's group_norm, ONNX's
    GroupNormalization from opset 21)."""
    if x.type.rank < 2:
        ops.error(f"x must be [N, C, *spatial], not {x.type}")
    _, channels, *spatial = x.type.shape
    if not isinstance(channels, int) or channels % groups:
        ops.error(f"the channels of {x.type} must be known and split into {groups} groups of "
                  f"equal size")
    grouped = ops.emit("reshape", x, shape=(0, groups, channels // groups, *spatial))
    normalised = _standardised(ops, grouped, tuple(range(2, grouped.type.rank)), eps)
    return _channel_affine(ops, ops.emit("reshape", normalised, shape=(0, channels, *spatial)),
                           weight, bias)


def batch_norm(ops, x, gamma, beta, running_mean, running_var, momentum, eps):
    """PyTorch's batch norm over the channel axis 1: in training, the batch's statistics
    normalise, and the running ones move towards them (the variance unbiased); otherwise the
    running ones normalise. Both results are in the graph, joined by train_or_eval."""
    if x.type.rank < 2:
        ops.error(f"batch_norm needs [N, C, ...] input, not {x.type}")
    channels = x.type.shape[1]
    for name, value in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                        ("running_var", running_var)):
        if value.type.rank != 1 or not shapes_may_equal(value.type.shape, (channels,)):
            ops.error(f"{name} must be [{channels}] (one per channel), not {value.type}")
    axes = (0,) + tuple(range(2, x.type.rank))
    spread = tuple(a for a in range(x.type.rank) if a != 1)  # [C] -> [1, C, 1, 1]

    def per_channel(value):
        return ops.emit("unsqueeze", value, axes=spread)

    def normalised(centered, variance):
        # gamma / deviation is one number per channel: x's size meets one product, where
        # dividing by the deviation and then multiplying by gamma would be two, and two more
        # in the gradient.
        deviation = ops.emit("sqrt", ops.emit("add", variance, ops.constant(eps, x)))
        scale = ops.emit("div", per_channel(gamma), deviation)
        return ops.emit("add", ops.emit("mul", centered, scale), per_channel(beta))

    mean = ops.emit("mean", x, axes=axes, keepdims=True)
    centered = ops.emit("sub", x, mean)
    variance = ops.emit("mean", ops.emit("mul", centered, centered), axes=axes, keepdims=True)
    result = ops.emit("train_or_eval", normalised(centered, variance), normalised(
        ops.emit("sub", x, per_channel(running_mean)), per_channel(running_var)))
    count = ops.emit("numel", x, axes=axes, dtype=x.type.dtype)
    unbiased = ops.emit("mul", ops.emit("squeeze", variance, axes=spread),
                        ops.emit("div", count, ops.emit("sub", count, ops.constant(1.0, x))))

    def moved(running, batch):
        kept = ops.emit("mul", ops.constant(1.0 - momentum, x), running)
        return ops.emit("add", kept, ops.emit("mul", ops.constant(momentum, x), batch))

    ops.update_state(running_mean, moved(running_mean, ops.emit("squeeze", mean, axes=spread)))
    ops.update_state(running_var, moved(running_var, unbiased))
    return result


def pad(ops, x, pads, mode, value):
    """PyTorch's F.pad: pads in pairs from the last axis backwards, (left, right, top,
    bottom, ...). A constant pad is the pad op; reflect and edge (PyTorch's replicate) are
    slices of x concatenated to it, one axis at a time."""
    if len(pads) % 2 or len(pads) > 2 * x.type.rank or any(p < 0 for p in pads):
        ops.error(f"pads are pairs (begin, end) >= 0 from the last axis backwards, at most "
                  f"{x.type.rank} of them for {x.type}; got {pads}")
    if mode != "constant" and value != 0.0:
        ops.error(f'value is the padding of mode="constant", not of mode="{mode}"')
    rank = x.type.rank
    pairs = {rank - 1 - i: pads[2 * i:2 * i + 2] for i in range(len(pads) // 2)}
    if not any(pads):
        return x
    for axis, (begin, end) in pairs.items():
        size = x.type.shape[axis]
        if mode == "reflect" and (begin or end) and (not isinstance(size, int)
                                                     or max(begin, end) >= size):
            ops.error(f'mode="reflect" pads less than the size of the axis it pads; got pads '
                      f"({begin}, {end}) for axis {axis} of {x.type}")
    if mode == "constant":
        begins = tuple(pairs.get(axis, (0, 0))[0] for axis in range(rank))
        ends = tuple(pairs.get(axis, (0, 0))[1] for axis in range(rank))
        return ops.emit("pad", x, pads=begins + ends, value=value)
    for axis, (begin, end) in sorted(pairs.items()):
        if begin or end:
            x = pad_axis(ops, x, axis, begin, end, mode)
    return x


def pad_axis(ops, x, axis, begin, end, mode):
    size = x.type.shape[axis]

    def part(start, stop, step):
        return ops.emit("slice", x, starts=(start,), ends=(stop,), axes=(axis,), steps=(step,))

    def repeated(edge, count):
        shape = tuple(count if i == axis else -1 for i in range(x.type.rank))
        return ops.emit("broadcast_to", edge, shape=shape)

    if mode == "reflect":
        # x[begin], ..., x[1] before and x[size - 2], ..., x[size - 1 - end] after.
        before = part(begin, 0, -1) if begin else None
        after = part(size - 2, size - 2 - end if end < size - 1 else TO_START, -1) \
            if end else None
    else:
        before = repeated(part(0, 1, 1), begin) if begin else None
        after = repeated(part(-1, TO_END, 1), end) if end else None
    pieces = [piece for piece in (before, x, after) if piece is not None]
    return ops.emit("concat", *pieces, axis=axis)


def determinant(ops, x):
    """det of x [..., n, n] by Gaussian elimination with partial pivoting: at each column the
    row with the largest magnitude is swapped up (each swap flips the sign), and the product
    of the pivots is the determinant. For exports whose runtime has no Det of x's dtype."""
    n = x.type.shape[-1]
    rows = ops.emit("unsqueeze", ops.emit("arange", n=n), axes=(1,))  # a column [n, 1]
    result = None
    for k in range(n):
        below = ops.emit("slice", x, starts=(k, k), ends=(n, k + 1), axes=(-2, -1), steps=(1, 1))
        offset = ops.emit("argmax", ops.emit("abs", below), axis=-2, keepdims=True)  # [..., 1, 1]
        pivot_row = ops.emit("add", offset, ops.constant(k, offset))
        x = _swap_rows(ops, x, rows, k, pivot_row)
        pivot = ops.emit("slice", x, starts=(k, k), ends=(k + 1, k + 1), axes=(-2, -1),
                         steps=(1, 1))
        swapped = ops.emit("not_equal", offset, ops.constant(0, offset))
        signed = ops.emit("where", swapped, ops.emit("neg", pivot), pivot)
        result = signed if result is None else ops.emit("mul", result, signed)
        if k + 1 < n:
            x = _eliminated_below(ops, x, k, n, pivot)
    return ops.emit("squeeze", result, axes=(-2, -1))


def _swap_rows(ops, x, rows, k, pivot_row):
    """x with row k and row pivot_row [..., 1, 1] swapped."""
    at_k = ops.emit("equal", rows, ops.constant(k, rows))
    at_pivot = ops.emit("equal", rows, pivot_row)
    order = ops.emit("where", at_k, pivot_row, ops.emit("where", at_pivot,
                                                         ops.constant(k, rows), rows))
    return ops.emit("gather_elements", x, ops.emit("broadcast_like", order, x), axis=-2)


def _eliminated_below(ops, x, k, n, pivot):
    """x with column k zeroed below row k by subtracting multiples of row k."""
    def rows_of(start, end):
        return ops.emit("slice", x, starts=(start,), ends=(end,), axes=(-2,), steps=(1,))
    lower = rows_of(k + 1, n)
    # A zero pivot, the largest in its column, leaves nothing below to eliminate (and the
    # determinant 0): divided by 1 instead, the column stays as it is rather than NaN.
    pivot = ops.emit("where", ops.emit("equal", pivot, ops.constant(0.0, pivot)),
                     ops.constant(1.0, pivot), pivot)
    factors = ops.emit("div", ops.emit("slice", lower, starts=(k,), ends=(k + 1,), axes=(-1,),
                                       steps=(1,)), pivot)
    lower = ops.emit("sub", lower, ops.emit("mul", factors, rows_of(k, k + 1)))
    return ops.emit("concat", rows_of(0, k + 1), lower, axis=-2)
