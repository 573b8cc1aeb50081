"""The numpy backend's convolution, pooling and padding kernels (numpy_kernels' table takes
them in).

Layout. The kernels work in a batch-innermost layout, [C, *spatial, N] in memory, and hand
results out as [N, C, *spatial] views of it (elementwise ops between layers keep that layout,
since numpy's ufuncs follow their operand's memory order): a window tap is then a strided slice
whose innermost axis, the batch, is contiguous, so the loops numpy runs inside are long however
small the images, and a tap of every window along the last spatial axis reads one contiguous
run of out * N numbers.

Paths. Each op is a few large numpy calls, never a loop over pixels or the batch, and the
shape picks the path (measured on the project's machine, bench/bench.py workloads 6 and 10):
- conv: im2col copies the windows once into columns [C * kernel, out * N] (for a 1x1 kernel
  the input already is them, every stride-th pixel when strided), then one matrix product,
  batched over groups (a depthwise convolution too: its columns' products beat a loop over
  the kernel's taps from a few thousand pixels on);
- conv_weight_grad: the output gradient times the same columns;
- conv_transpose (the input's gradient): at stride 1, with 8 channels out or more, it is the
  convolution of its input by the flipped weight, whose columns make one product; else it
  multiplies first and then sums each window's columns back onto the positions the window
  covers (a fold: one add per tap), a depthwise one tap by tap, each tap's weight times the
  input.

Max pooling's gradient is a gather: each tap of the windows writes the output gradient where
that tap holds its window's first maximum, straight into the result when windows do not
overlap (a 2x2 pool of stride 2), rather than adding every tap's masked gradient into zeros.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..ir.ops import rule_table
from ..ir.shapes import conv_output_dim, pool_end_pad, pool_output_dim, pool_window_sizes
from .numpy_products import lowest, matmul

CONVOLUTION_KERNELS, kernel = rule_table()


# ---- layout -----------------------------------------------------------------------------------

def _batch_last(x, pads=None, value=0.0):
    """x [N, C, *spatial] as a contiguous [C, *spatial, N], its spatial axes padded (each axis'
    begin, then each one's end); free when x is a view of such an array."""
    moved = x.transpose(*range(1, x.ndim), 0)
    if pads is None or not any(pads):
        return np.ascontiguousarray(moved)
    result = np.full(_padded_shape(moved.shape[:-1], pads) + moved.shape[-1:], value, x.dtype)
    result[_interior(moved.shape[:-1], pads)] = moved
    return result


def _batch_first(y):
    """A [C, *spatial, N] array as the [N, C, *spatial] value it holds."""
    return y.transpose(y.ndim - 1, *range(y.ndim - 1))


def _padded(x, pads, value=0.0):
    """x with pads (begins, then ends) on its trailing len(pads) // 2 axes."""
    if not any(pads):
        return x
    result = np.full(_padded_shape(x.shape, pads), value, x.dtype)
    result[_interior(x.shape, pads)] = x
    return result


def _padded_shape(shape, pads) -> tuple:
    rank = len(pads) // 2
    lead = len(shape) - rank
    return tuple(shape[:lead]) + tuple(d + b + e for d, b, e in zip(shape[lead:], pads[:rank],
                                                                   pads[rank:], strict=True))


def _interior(shape, pads) -> tuple:
    """The index of an array of `shape` inside its copy padded on the trailing axes."""
    rank = len(pads) // 2
    lead = len(shape) - rank
    return (slice(None),) * lead + tuple(slice(b, b + d) for b, d in zip(
        pads[:rank], shape[lead:], strict=True))


@kernel("pad")
def _pad(x, pads, value):
    return _padded(x, pads, value)


# ---- windows ----------------------------------------------------------------------------------

def _taps(kernel_shape):
    """A window's positions in row-major order."""
    return itertools.product(*map(range, kernel_shape))


def _covered(tap, strides, dilations, out) -> tuple:
    """The positions of a padded [C, *spatial, N] that one tap of every window reads."""
    return (slice(None), *[slice(t * d, t * d + s * (n - 1) + 1, s)
                           for t, d, s, n in zip(tap, dilations, strides, out, strict=True)])


def _output_spatial(spatial, kernel_shape, strides, pads, dilations) -> tuple:
    rank = len(kernel_shape)
    return tuple(conv_output_dim(n, k, s, b, e, d) for n, k, s, b, e, d in zip(
        spatial, kernel_shape, strides, pads[:rank], pads[rank:], dilations, strict=True))


def _tap_major_windows(padded, kernel_shape, strides, dilations, out):
    """The windows of a padded [C, *spatial, N] as a view [C, *kernel, *out, N]: the order of
    im2col's rows (channel, then tap) and columns (window, then batch)."""
    spatial_strides = padded.strides[1:-1]
    shape = (padded.shape[0], *kernel_shape, *out, padded.shape[-1])
    steps = (padded.strides[0],
             *[d * step for d, step in zip(dilations, spatial_strides, strict=True)],
             *[s * step for s, step in zip(strides, spatial_strides, strict=True)],
             padded.strides[-1])
    return as_strided(padded, shape, steps, writeable=False)


def _columns(x, kernel_shape, strides, pads, dilations, groups):
    """im2col: x's windows as [groups, C / groups * kernel, out * N] (no copy for a 1x1
    kernel of stride 1 over a batch-last x)."""
    padded = _batch_last(x, pads)
    out = _output_spatial(x.shape[2:], kernel_shape, strides, pads, dilations)
    rows = padded.shape[0] // groups * math.prod(kernel_shape)
    # Every size given: a -1 is ambiguous when a batch of 0 leaves no columns.
    columns = (groups, rows, math.prod(out) * padded.shape[-1])
    if all(k == 1 for k in kernel_shape):
        picked = padded[(slice(None), *[slice(None, None, s) for s in strides])]
        return np.ascontiguousarray(picked).reshape(columns)
    return _tap_major_windows(padded, kernel_shape, strides, dilations, out).reshape(columns)


def _fold(taps, padded_shape, strides, dilations):
    """The transpose of the windows: each tap's values taps[tap] [C, *out, N] summed onto the
    positions it covers in zeros of padded_shape [C, *spatial, N]."""
    rank = len(strides)
    out = taps.shape[rank + 1:2 * rank + 1]
    result = np.zeros(padded_shape, taps.dtype)
    for tap in _taps(taps.shape[:rank]):
        result[_covered(tap, strides, dilations, out)] += taps[tap]
    return result


# ---- convolution ------------------------------------------------------------------------------

def _grouped_matmul(a, b):
    """a [groups, M, K] times b [groups, K, P]; one plain matrix product for one group (numpy
    runs a stack of one more slowly)."""
    if a.shape[0] == 1:
        return matmul(a[0], b[0])[None]
    return matmul(a, b)


def _channel_weight(w, tap, rank):
    """A depthwise weight's tap as [C, 1, ..., 1], broadcasting over [C, *spatial, N]."""
    return w[(slice(None), 0, *tap)].reshape((-1,) + (1,) * (rank + 1))


@kernel("conv")
def _conv(x, w, strides, pads, dilations, groups):
    out = _output_spatial(x.shape[2:], w.shape[2:], strides, pads, dilations)
    columns = _columns(x, w.shape[2:], strides, pads, dilations, groups)
    y = _grouped_matmul(w.reshape(groups, w.shape[0] // groups, -1), columns)
    return _batch_first(y.reshape((w.shape[0],) + out + x.shape[:1]))


@kernel("conv_transpose")
def _conv_transpose(x, w, strides, pads, dilations, groups, output_padding):
    flipped_pads = _flipped_pads(w.shape[2:], strides, pads, dilations, output_padding)
    # The flipped convolution copies columns of the input, a fold adds columns of the result
    # (a pass per tap) after a product whose inner size is only the input's channels: measured,
    # the fold wins only for a handful of channels out (an RGB or grey image's).
    if flipped_pads is not None and w.shape[1] * groups >= FLIPPED_MIN_CHANNELS:
        return _conv(x, _flipped(w, groups), strides, flipped_pads, dilations, groups)
    rank, kernel_shape, channels = w.ndim - 2, w.shape[2:], w.shape[1] * groups
    full = tuple((n - 1) * s + d * (k - 1) + 1 + e for n, s, d, k, e in zip(
        x.shape[2:], strides, dilations, kernel_shape, output_padding, strict=True))
    padded_shape = (channels,) + full + x.shape[:1]
    if w.shape[0] == groups and w.shape[1] == 1:
        summed = _depthwise_fold(_batch_last(x), w, padded_shape, strides, dilations)
    else:
        # The weight transposed into a contiguous copy: a transposed operand would send BLAS
        # down its slower path, and the weight is small beside the columns.
        weights = np.ascontiguousarray(
            w.reshape(groups, w.shape[0] // groups, -1).transpose(0, 2, 1))
        columns = _grouped_matmul(weights, _batch_last(x).reshape(
            groups, w.shape[0] // groups, -1))
        taps = np.moveaxis(columns.reshape((channels,) + kernel_shape + x.shape[2:]
                                           + x.shape[:1]),
                           range(1, 1 + rank), range(rank))  # [*kernel, channels, *x's, N]
        summed = _fold(taps, padded_shape, strides, dilations)
    spatial = tuple(f - b - e for f, b, e in zip(full, pads[:rank], pads[rank:], strict=True))
    return _batch_first(summed[_interior((channels,) + spatial, pads)])


# LeNet's second input gradient (16 channels out of 32): 245 µs flipped, 323 folded; its first
# (1 of 16): 131 and 95; 16 of 32 and 64 of 128 alike either way (one thread, this machine).
FLIPPED_MIN_CHANNELS = 8


def _flipped_pads(kernel_shape, strides, pads, dilations, output_padding):
    """The pads with which a stride-1 conv_transpose is the convolution by its flipped weight
    (`_flipped`), or None where it is not one (a stride, or a pad past the kernel's span):
    that convolution's columns make one matrix product, with no fold afterwards."""
    rank = len(kernel_shape)
    if any(s != 1 for s in strides):
        return None
    spans = [d * (k - 1) for k, d in zip(kernel_shape, dilations, strict=True)]
    flipped = tuple(span - b for span, b in zip(spans, pads[:rank], strict=True)) + tuple(
        span - e + extra
        for span, e, extra in zip(spans, pads[rank:], output_padding, strict=True))
    return flipped if min(flipped) >= 0 else None


def _flipped(w, groups):
    """conv_transpose's weight [C, O / groups, *kernel] as the weight [O, C / groups, *kernel]
    of the convolution it equals at stride 1: each group's matrix transposed, each kernel
    reversed along every spatial axis."""
    channels, outputs, kernel_shape = w.shape[0], w.shape[1], w.shape[2:]
    per_group = w.reshape((groups, channels // groups, outputs) + kernel_shape)
    swapped = per_group.swapaxes(1, 2)[(Ellipsis, *[slice(None, None, -1)] * len(kernel_shape))]
    return np.ascontiguousarray(swapped).reshape(
        (groups * outputs, channels // groups) + kernel_shape)


def _depthwise_fold(x, w, padded_shape, strides, dilations):
    """A depthwise conv_transpose's fold: each tap's weight times x [C, *out, N] summed onto
    the positions that tap covers."""
    rank = len(strides)
    out = x.shape[1:-1]
    result = np.zeros(padded_shape, x.dtype)
    scratch = np.empty_like(x)
    for tap in _taps(w.shape[2:]):
        result[_covered(tap, strides, dilations, out)] += np.multiply(
            x, _channel_weight(w, tap, rank), out=scratch)
    return result


@kernel("conv_weight_grad")
def _conv_weight_grad(x, g, kernel, strides, pads, dilations, groups):
    columns = _columns(x, kernel, strides, pads, dilations, groups)
    grads = _batch_last(g).reshape(groups, g.shape[1] // groups, -1)
    return _grouped_matmul(grads, columns.transpose(0, 2, 1)).reshape(
        (g.shape[1], x.shape[1] // groups) + tuple(kernel))


# ---- pooling ----------------------------------------------------------------------------------

def _pool_pads(shape, kernel_shape, strides, pads, ceil_mode) -> tuple:
    """Pads with which floor-mode windows are the pooling's (ceil mode pads the end more)."""
    rank = len(kernel_shape)
    return tuple(pads[:rank]) + tuple(pool_end_pad(n, k, s, b, e, ceil_mode) for n, k, s, b, e
                                      in zip(shape[2:], kernel_shape, strides, pads[:rank],
                                             pads[rank:], strict=True))


def _pool_taps(x, kernel_shape, strides, pads, ceil_mode, value):
    """Each tap's values [C, *out, N] across all windows of x padded with `value`, in the
    windows' row-major order; and the pads."""
    full = _pool_pads(x.shape, kernel_shape, strides, pads, ceil_mode)
    padded = _batch_last(x, full, value)
    out = [pool_output_dim(n, k, s, b, e, ceil_mode) for n, k, s, b, e in zip(
        x.shape[2:], kernel_shape, strides, pads[:len(kernel_shape)],
        pads[len(kernel_shape):], strict=True)]
    ones = (1,) * len(kernel_shape)
    return [padded[_covered(tap, strides, ones, out)] for tap in _taps(kernel_shape)], full


@kernel("max_pool")
def _max_pool(x, kernel, strides, pads, ceil_mode):
    taps, _ = _pool_taps(x, kernel, strides, pads, ceil_mode, lowest(x.dtype))
    return _batch_first(_reduce_taps(np.maximum, taps))


def _reduce_taps(ufunc, taps):
    """ufunc folded over the taps into a new array (the taps are views of the input)."""
    result = np.array(taps[0])
    for tap in taps[1:]:
        ufunc(result, tap, out=result)
    return result


def _first_maxima(taps):
    """Per tap, where it holds its window's maximum: of tied maxima, the first in the window's
    row-major order. A generator: each tap's mask is reused for the next."""
    peak = _reduce_taps(np.maximum, taps)
    hit = np.empty(peak.shape, bool)
    unclaimed = None
    for index, values in enumerate(taps):
        np.equal(values, peak, out=hit)
        if unclaimed is not None:
            hit &= unclaimed
        if index < len(taps) - 1:
            unclaimed = ~hit if unclaimed is None else np.logical_xor(unclaimed, hit,
                                                                     out=unclaimed)
        yield hit


@kernel("max_unpool")
def _max_unpool(g, x, kernel, strides, pads, ceil_mode):
    taps, full = _pool_taps(x, kernel, strides, pads, ceil_mode, lowest(x.dtype))
    # A bf16 (an ml_dtypes array) is summed in f32 and rounded once: numpy 2.0 crashes adding
    # into a strided bf16 view (seen training LeNet in bf16).
    summed = np.float32 if g.dtype.kind == "V" else g.dtype
    grads = _batch_last(g).astype(summed, copy=False)
    padded_shape = _padded_shape(x.shape[1:], full) + x.shape[:1]
    ones = (1,) * len(kernel)
    disjoint = all(s >= k for s, k in zip(strides, kernel, strict=True))
    tiled = disjoint and all(s == k and o * s == n for s, k, o, n in zip(
        strides, kernel, g.shape[2:], padded_shape[1:-1], strict=True))
    # Windows that tile the padded input write every position once: no zeros first.
    result = (np.empty if tiled else np.zeros)(padded_shape, summed)
    scratch = None if disjoint else np.empty(grads.shape, summed)
    # Multiplying by the mask is 3x faster than choosing by it, and the same where the
    # cotangent is finite; an inf would make NaN of the zeros (inf * 0), so it is chosen.
    finite = math.isfinite(grads.sum())
    for tap, hit in zip(_taps(kernel), _first_maxima(taps), strict=True):
        target = result[_covered(tap, strides, ones, g.shape[2:])]
        share = (np.multiply(grads, hit, out=target if disjoint else scratch) if finite
                 else np.where(hit, grads, np.zeros((), summed)))
        if disjoint and not finite:
            target[...] = share
        elif not disjoint:
            target += share
    return _batch_first(result[_interior(x.shape[1:], full)]).astype(g.dtype, copy=False)


@kernel("max_pool_take")
def _max_pool_take(values, x, kernel, strides, pads, ceil_mode):
    taps, _ = _pool_taps(x, kernel, strides, pads, ceil_mode, lowest(x.dtype))
    values_taps, _ = _pool_taps(values, kernel, strides, pads, ceil_mode, 0.0)
    result = np.zeros(values_taps[0].shape, values.dtype)
    for hit, tap in zip(_first_maxima(taps), values_taps, strict=True):
        np.copyto(result, tap, where=hit)
    return _batch_first(result)


@functools.lru_cache(maxsize=256)
def _divisor(spatial, kernel_shape, strides, pads, ceil_mode, count_include_pad):
    """What each window of avg_pool divides by: a number when all agree, else an array over the
    output's spatial axes (the product of each axis' window sizes)."""
    rank = len(kernel_shape)
    sizes = [pool_window_sizes(n, k, s, b, e, ceil_mode, count_include_pad) for n, k, s, b, e
             in zip(spatial, kernel_shape, strides, pads[:rank], pads[rank:], strict=True)]
    if all(set(axis) == {k} for axis, k in zip(sizes, kernel_shape, strict=True)):
        return float(math.prod(kernel_shape))
    return functools.reduce(np.multiply.outer, [np.asarray(axis, float) for axis in sizes])


@kernel("avg_pool")
def _avg_pool(x, kernel, strides, pads, ceil_mode, count_include_pad):
    taps, _ = _pool_taps(x, kernel, strides, pads, ceil_mode, 0.0)
    total = _reduce_taps(np.add, taps)
    divisor = _divisor(x.shape[2:], kernel, strides, pads, ceil_mode, count_include_pad)
    return _batch_first(np.divide(total, np.asarray(divisor, x.dtype)[..., None], out=total))


@kernel("avg_unpool")
def _avg_unpool(g, like, kernel, strides, pads, ceil_mode, count_include_pad):
    divisor = _divisor(like.shape[2:], kernel, strides, pads, ceil_mode, count_include_pad)
    share = _batch_last(g) / np.asarray(divisor, g.dtype)[..., None]
    full = _pool_pads(like.shape, kernel, strides, pads, ceil_mode)
    summed = _fold(np.broadcast_to(share, tuple(kernel) + share.shape),
                   _padded_shape(like.shape[1:], full) + like.shape[:1], strides,
                   (1,) * len(kernel))
    return _batch_first(summed[_interior(like.shape[1:], full)])
