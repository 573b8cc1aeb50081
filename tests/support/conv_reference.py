"""Plain-numpy references for the convolution and pooling ops, written from their definitions
with loops over windows (PyTorch's semantics: pads are each spatial axis' begin, then each one's
end; windows of ceil mode start inside the input or its begin padding; an average divides by
the window clipped to the padded input, or to the input without count_include_pad)."""
from __future__ import annotations

import math

import numpy as np


def _padded(x, pads, value=0.0):
    rank = len(pads) // 2
    widths = [(0, 0)] * (x.ndim - rank) + list(zip(pads[:rank], pads[rank:]))
    return np.pad(x, widths, constant_values=value)


def _taps(positions, kernel, strides, dilations):
    """Each window position, each tap of the kernel, and the input position that tap reads."""
    for position in np.ndindex(*positions):
        for tap in np.ndindex(*kernel):
            yield position, tap, tuple(p * s + t * d for p, s, t, d in zip(
                position, strides, tap, dilations, strict=True))


def conv(x, w, strides, pads, dilations, groups):
    rank = w.ndim - 2
    padded = _padded(x, pads)
    kernel = w.shape[2:]
    out = [(padded.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
           for i in range(rank)]
    in_group, out_group = x.shape[1] // groups, w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0], *out), x.dtype)
    for o in range(w.shape[0]):
        channels = slice(o // out_group * in_group, (o // out_group + 1) * in_group)
        for position, tap, at in _taps(out, kernel, strides, dilations):
            y[(slice(None), o, *position)] += padded[(slice(None), channels, *at)] @ \
                w[(o, slice(None), *tap)]
    return y


def conv_transpose(x, w, strides, pads, dilations, groups, output_padding):
    rank = w.ndim - 2
    kernel = w.shape[2:]
    in_group, out_group = x.shape[1] // groups, w.shape[1]
    full = [(x.shape[2 + i] - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1
            + output_padding[i] for i in range(rank)]
    y = np.zeros((x.shape[0], out_group * groups, *full), x.dtype)
    for c in range(x.shape[1]):
        outputs = slice(c // in_group * out_group, (c // in_group + 1) * out_group)
        for position, tap, at in _taps(x.shape[2:], kernel, strides, dilations):
            y[(slice(None), outputs, *at)] += np.multiply.outer(
                x[(slice(None), c, *position)], w[(c, slice(None), *tap)])
    crop = tuple(slice(pads[i], full[i] - pads[rank + i]) for i in range(rank))
    return y[(Ellipsis, *crop)]


def conv_weight_grad(x, g, kernel, strides, pads, dilations, groups):
    padded = _padded(x, pads)
    in_group, out_group = x.shape[1] // groups, g.shape[1] // groups
    grad = np.zeros((g.shape[1], in_group, *kernel), x.dtype)
    for o in range(g.shape[1]):
        channels = slice(o // out_group * in_group, (o // out_group + 1) * in_group)
        for position, tap, at in _taps(g.shape[2:], kernel, strides, dilations):
            grad[(o, slice(None), *tap)] += g[(slice(None), o, *position)] @ \
                padded[(slice(None), channels, *at)]
    return grad


def pool_windows(spatial, kernel, strides, pads, ceil_mode):
    """For each output position: the window's start (padding included) along each axis."""
    rank = len(kernel)
    counts = []
    for i in range(rank):
        span = spatial[i] + pads[i] + pads[rank + i] - kernel[i]
        count = (math.ceil(span / strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (count - 1) * strides[i] >= spatial[i] + pads[i]:
            count -= 1
        counts.append(count)
    for position in np.ndindex(*counts):
        yield position, tuple(p * s - b for p, s, b in zip(position, strides, pads[:rank]))


def _inside(spatial, starts, kernel):
    """The positions of a window that lie in the input, in row-major order."""
    ranges = [range(max(s, 0), min(s + k, n)) for s, k, n in zip(starts, kernel, spatial)]
    return list(np.ndindex(*[len(r) for r in ranges])), ranges


def _first_max(x, lead, starts, kernel):
    offsets, ranges = _inside(x.shape[2:], starts, kernel)
    positions = [tuple(r[o] for r, o in zip(ranges, offset)) for offset in offsets]
    values = [x[lead + p] for p in positions]
    return positions[int(np.argmax(values))]  # the first of tied maxima


def _pool_shape(x, kernel, strides, pads, ceil_mode):
    positions = [p for p, _ in pool_windows(x.shape[2:], kernel, strides, pads, ceil_mode)]
    return x.shape[:2] + tuple(np.max(positions, axis=0) + 1)


def max_pool(x, kernel, strides, pads, ceil_mode):
    return max_pool_take(x, x, kernel, strides, pads, ceil_mode)


def max_pool_take(values, x, kernel, strides, pads, ceil_mode):
    y = np.zeros(_pool_shape(x, kernel, strides, pads, ceil_mode), values.dtype)
    for lead in np.ndindex(*x.shape[:2]):
        for position, starts in pool_windows(x.shape[2:], kernel, strides, pads, ceil_mode):
            y[lead + position] = values[lead + _first_max(x, lead, starts, kernel)]
    return y


def max_unpool(g, x, kernel, strides, pads, ceil_mode):
    grad = np.zeros_like(x)
    for lead in np.ndindex(*x.shape[:2]):
        for position, starts in pool_windows(x.shape[2:], kernel, strides, pads, ceil_mode):
            grad[lead + _first_max(x, lead, starts, kernel)] += g[lead + position]
    return grad


def _divisor(spatial, starts, kernel, pads, count_include_pad):
    rank = len(kernel)
    size = 1
    for i, (start, k, n) in enumerate(zip(starts, kernel, spatial)):
        end = min(start + k, n + pads[rank + i])
        if not count_include_pad:
            start, end = max(start, 0), min(end, n)
        size *= end - start
    return size


def avg_pool(x, kernel, strides, pads, ceil_mode, count_include_pad):
    y = np.zeros(_pool_shape(x, kernel, strides, pads, ceil_mode), x.dtype)
    for position, starts in pool_windows(x.shape[2:], kernel, strides, pads, ceil_mode):
        _, ranges = _inside(x.shape[2:], starts, kernel)
        window = x[(slice(None), slice(None), *[slice(r.start, r.stop) for r in ranges])]
        divisor = _divisor(x.shape[2:], starts, kernel, pads, count_include_pad)
        y[(slice(None), slice(None), *position)] = window.sum(axis=tuple(
            range(2, x.ndim))) / divisor
    return y


def avg_unpool(g, like, kernel, strides, pads, ceil_mode, count_include_pad):
    grad = np.zeros(like.shape, g.dtype)
    for position, starts in pool_windows(like.shape[2:], kernel, strides, pads, ceil_mode):
        _, ranges = _inside(like.shape[2:], starts, kernel)
        divisor = _divisor(like.shape[2:], starts, kernel, pads, count_include_pad)
        window = (slice(None), slice(None), *[slice(r.start, r.stop) for r in ranges])
        share = g[(slice(None), slice(None), *position)] / divisor
        grad[window] += share.reshape(share.shape + (1,) * (like.ndim - 2))
    return grad


def pad(x, pads, value):
    return _padded(x, pads, value)


REFERENCES = {"conv": conv, "conv_transpose": conv_transpose,
              "conv_weight_grad": conv_weight_grad, "max_pool": max_pool,
              "max_unpool": max_unpool, "max_pool_take": max_pool_take, "avg_pool": avg_pool,
              "avg_unpool": avg_unpool, "pad": pad}
