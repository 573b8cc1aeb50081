"""numpy kernels, one per op, called as kernel(*input_arrays, **attrs).

An op whose registry entry names the numpy function computing it (`OpDef.numpy`) gets that
function, at the end of this file; the kernels written here are the rest. Ops with the
"stochastic" trait also receive `training` (the backend's mode) and `rng`.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from ..ir import grid_sampling
from ..ir.ops import GELU_CUBIC, GELU_SCALE, OPS, OpDef, rule_table
from ..ir.types import cast_array, numpy_dtype
from . import erf_approximation as cody
from .numpy_convolution import CONVOLUTION_KERNELS
from .numpy_products import highest, lowest, matmul

KERNELS, kernel = rule_table()


def _axes(axes):
    return None if axes is None else tuple(axes)


def _reduction(reduce):
    # dtype=: numpy sums and multiplies integers narrower than 64 bits in (u)int64 and means
    # them in float64; the op's result, as ONNX's, keeps the operand's dtype (a mean of
    # integers truncates).
    def kernel(x, axes, keepdims):
        return reduce(x, axis=_axes(axes), keepdims=keepdims, dtype=x.dtype)
    return kernel


def _from_numpy(op: OpDef):
    """The kernel of an op numpy computes exactly: its function, or for a reduction over the
    op's axes, that function called with numpy's axis= (argmax takes the op's attrs as they
    are)."""
    function = getattr(np, op.numpy)
    return _reduction(function) if "axes" in op.attrs else function


@kernel("relu")
def _relu(x):
    return np.maximum(x, 0)


@kernel("sigmoid")
def _sigmoid(x):
    # 1 / (1 + exp(-x)) overflows for large negative x; through e = exp(-|x|), which never
    # does, it is 1 / (1 + e) for x >= 0 and e / (1 + e) below. Five ufuncs: a quarter of
    # the time of exp(-logaddexp(0, -x)), within an ulp of it.
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.where(x >= 0, r, e * r)


@kernel("stop_gradient")
def _stop_gradient(x):
    return x


@kernel("leaky_relu")
def _leaky_relu(x, alpha):
    return np.where(x > 0, x, alpha * x)


@kernel("gelu")
def _gelu(x):
    inner = GELU_SCALE * (x + GELU_CUBIC * (x * x * x))
    return 0.5 * x * (1.0 + np.tanh(inner))


@kernel("softplus")
def _softplus(x):
    return np.logaddexp(0, x)  # log(1 + exp(x)) without overflow


# erf works through blocks of this many elements, so that its temporaries stay in the cache
# (1.7 times faster on a million elements than one pass over them all).
ERF_BLOCK = 1 << 16


@kernel("erf")
def _erf(x):
    flat = x.reshape(-1)
    result = np.empty(flat.shape, x.dtype)
    for start in range(0, flat.size, ERF_BLOCK):
        result[start:start + ERF_BLOCK] = _erf_block(flat[start:start + ERF_BLOCK])
    return result.reshape(x.shape)


def _erf_block(x):
    """Cody's approximations (erf_approximation.py), each on the elements of its interval, in
    float64 whatever x's dtype."""
    y = np.abs(x, dtype=np.float64)
    small = y <= cody.SMALL_UP_TO
    middle = ~small & (y <= cody.MIDDLE_UP_TO)
    large = ~(small | middle)  # and NaN, which every step keeps
    result = np.empty_like(y)
    near = y[small]
    result[small] = near * _rational(cody.SMALL, near * near)
    mid = y[middle]
    result[middle] = 1.0 - np.exp(-mid * mid) * _rational(cody.MIDDLE, mid)
    # erfc(27) underflows to 0: clamping keeps y^2 finite without changing the result.
    far = np.minimum(y[large], 27.0)
    z = 1.0 / (far * far)
    result[large] = 1.0 - (np.exp(-far * far) * (cody.INV_SQRT_PI - z * _rational(cody.LARGE, z))
                           / far)
    return np.copysign(result, x)


def _rational(fraction, z):
    numerator, denominator = (_polynomial(coefficients, z) for coefficients in fraction)
    numerator /= denominator
    return numerator


def _polynomial(coefficients, z):
    """Horner's rule in place (numpy.polyval allocates an array per coefficient: 3x slower)."""
    result = np.full_like(z, coefficients[0])
    for coefficient in coefficients[1:]:
        result *= z
        result += coefficient
    return result


@kernel("clip")
def _clip(x, lo, hi):
    return np.clip(x, lo, hi)


@kernel("cast")
def _cast(x, dtype, saturate):
    return cast_array(x, dtype, saturate)


@kernel("fake_quantize")
def _fake_quantize(x, scale, zero_point, lo, hi):
    quantized = np.clip(np.rint(x / scale) + zero_point, lo, hi)
    return ((quantized - zero_point) * scale).astype(x.dtype, copy=False)


@kernel("constant")
def _constant(value, dtype):
    return np.asarray(value, dtype=numpy_dtype(dtype))


@kernel("arange")
def _arange(n):
    return np.arange(n, dtype=np.int64)


@kernel("cumsum")
def _cumsum(x, axis):
    return np.cumsum(x, axis=axis, dtype=x.dtype)  # numpy's own widens narrow integers


@kernel("cumprod")
def _cumprod(x, axis):
    return np.cumprod(x, axis=axis, dtype=x.dtype)


@kernel("int_div")
def _int_div(a, b):
    """a / b truncated toward zero: numpy's floor division, one up where the signs differ and
    a remainder is left. A division by 0 gives 0."""
    quotient = np.floor_divide(a, b)
    if a.dtype.kind == "i":
        quotient += (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
    return quotient


@kernel("int_mod")
def _int_mod(a, b, fmod):
    return np.fmod(a, b) if fmod else np.remainder(a, b)


def _shift(shift_within_width, filled):
    """A shift whose amounts outside [0, bits) give `filled(x)`, the whole width shifted out."""
    def kernel(x, shift):
        outside = (shift < 0) | (shift >= x.dtype.itemsize * 8)
        within = shift_within_width(x, np.where(outside, 0, shift).astype(x.dtype))
        return np.where(outside, filled(x), within)
    return kernel


KERNELS["left_shift"] = _shift(np.left_shift, lambda x: x.dtype.type(0))
# Arithmetic: a negative number shifted out is -1 (by the width less one, its sign bit).
KERNELS["right_shift"] = _shift(
    np.right_shift, lambda x: np.right_shift(x, x.dtype.itemsize * 8 - 1) if x.dtype.kind == "i"
    else x.dtype.type(0))


@kernel("bitcast")
def _bitcast(x, dtype):
    return x.view(numpy_dtype(dtype))


KERNELS["matmul"] = matmul


@kernel("transpose")
def _transpose(x, perm):
    return np.transpose(x, perm)


@kernel("max")
def _max(x, axes, keepdims):
    return np.max(x, axis=_axes(axes), keepdims=keepdims, initial=lowest(x.dtype))


@kernel("min")
def _min(x, axes, keepdims):
    return np.min(x, axis=_axes(axes), keepdims=keepdims, initial=highest(x.dtype))


@kernel("logsumexp")
def _logsumexp(x, axes, keepdims):
    # Shift by the max so exp cannot overflow; an all -inf slice keeps -inf instead of nan,
    # and so does an empty one (its max is -inf, its sum of exps 0).
    peak = np.max(x, axis=_axes(axes), keepdims=True, initial=-np.inf)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x - peak), axis=_axes(axes), keepdims=True)) + peak
    return total if keepdims else np.squeeze(total, axis=_axes(axes))


# The array methods (x.max) rather than the functions (np.max): a train step on a small batch
# calls these every step, and the functions' dispatch layers cost more than the arithmetic.
@kernel("log_softmax")
def _log_softmax(x, axis):
    if x.size == 0:  # x.max has no identity to give over an empty axis; nothing to compute
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@kernel("softmax")
def _softmax(x, axis):
    if x.size == 0:
        return x.copy()
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


@kernel("cross_entropy")
def _cross_entropy(logits, labels, checked=False):
    return _nll(_log_softmax(logits, -1), labels, checked)


@kernel("nll")
def _nll(log_probs, labels, checked=False):
    """The mean negative log-probability of each row's label."""
    _check_labels(labels, log_probs.shape[-1], checked)
    rows = log_probs.reshape(-1, log_probs.shape[-1])
    picked = rows[np.arange(rows.shape[0]), labels.reshape(-1)]
    total = picked.sum()
    return -(total / total.dtype.type(picked.size))  # np.mean's arithmetic, without its layers


def _check_labels(labels, classes: int, checked: bool = False) -> None:
    """Labels computed inside a model: numpy would index from the end for -1, or write a zero
    one-hot row, without a word. `checked`: they are a graph input, which the feeds check
    looked at before the call (the compiled backend passes it)."""
    if checked:
        return
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values from {labels.min()} "
                         f"to {labels.max()}")


@kernel("mse")
def _mse(pred, target):
    return np.mean(np.square(pred - target))


@kernel("one_hot")
def _one_hot(labels, depth, dtype, checked=False):
    _check_labels(labels, depth, checked)
    return (labels[..., None] == np.arange(depth)).astype(numpy_dtype(dtype))


@kernel("broadcast_like")
def _broadcast_like(x, like):
    return np.broadcast_to(x, like.shape)


@kernel("fill")
def _fill(value, shape):
    return np.full(shape, value, value.dtype)


@kernel("broadcast_to")
def _broadcast_to(x, shape):
    leading = len(shape) - x.ndim
    return np.broadcast_to(x, [x.shape[i - leading] if d == -1 else d
                               for i, d in enumerate(shape)])


@kernel("reshape")
def _reshape(x, shape):
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if -1 in target and 0 in target:
        target[target.index(-1)] = _minus_one_beside_a_zero(x.shape, target)
    return np.reshape(x, target)


def _minus_one_beside_a_zero(shape, target) -> int:
    """The size a -1 stands for beside a 0, which numpy finds ambiguous (0 / 0): x's
    dims over the target's others once the dims both hold are cancelled, as the type rule
    cancels B in (B*64) / B; a 0 in both is the same empty axis, a batch of 0 rows."""
    left, others = list(shape), []
    for dim in target:
        if dim in left:
            left.remove(dim)
        elif dim != -1:
            others.append(dim)
    if 0 in left or 0 in others:
        raise ValueError(f"reshape of an empty {list(shape)} to {list(target)}: the -1 could "
                         f"be any size")
    return math.prod(left) // math.prod(others)


@kernel("reshape_like")
def _reshape_like(x, like):
    return np.reshape(x, like.shape)


@kernel("unsqueeze")
def _unsqueeze(x, axes):
    return np.expand_dims(x, tuple(axes))


@kernel("squeeze")
def _squeeze(x, axes):
    return np.squeeze(x, axis=tuple(axes))


@kernel("concat")
def _concat(*parts, axis):
    return np.concatenate(parts, axis=axis)


@kernel("unconcat")
def _unconcat(whole, *parts, axis, index):
    start = sum(part.shape[axis] for part in parts[:index])
    return np.take(whole, np.arange(start, start + parts[index].shape[axis]), axis=axis)


def _window(rank, starts, ends, axes, steps):
    """The index tuple for x[start:end:step] on `axes` and everything elsewhere."""
    index = [slice(None)] * rank
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        index[axis] = slice(start, end, step)
    return tuple(index)


@kernel("slice")
def _slice(x, starts, ends, axes, steps):
    return x[_window(x.ndim, starts, ends, axes, steps)]


@kernel("unslice")
def _unslice(sliced, like, starts, ends, axes, steps):
    result = np.zeros(like.shape, sliced.dtype)
    result[_window(like.ndim, starts, ends, axes, steps)] = sliced
    return result


@kernel("take")
def _take(x, indices, axis):
    return np.take(x, indices, axis=axis)


@kernel("scatter_add")
def _scatter_add(updates, indices, like, axis):
    axis %= like.ndim
    result = np.zeros(like.shape, updates.dtype)
    # With the indexed axis first, result[indices] lines up with updates' index dims first.
    index_dims = range(axis, axis + indices.ndim)
    np.add.at(np.moveaxis(result, axis, 0), indices,
              np.moveaxis(updates, index_dims, range(indices.ndim)))
    return result


def _element_index(indices, axis):
    """The index that reads, for each position of `indices`, the element at that position but
    with indices' value on `axis` (ONNX's GatherElements and ScatterElements)."""
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = indices
    return tuple(index)


@kernel("gather_elements")
def _gather_elements(x, indices, axis):
    return x[_element_index(indices, axis)]


@kernel("scatter_elements_add")
def _scatter_elements_add(updates, indices, like, axis):
    result = np.zeros(like.shape, updates.dtype)
    np.add.at(result, _element_index(indices, axis), updates)
    return result


@kernel("numel")
def _numel(x, axes, dtype):
    dims = x.shape if axes is None else [x.shape[a] for a in axes]
    return np.asarray(math.prod(dims), dtype=numpy_dtype(dtype))


@kernel("dropout_mask")
def _dropout_mask(x, p, seed, training=False, rng=None):
    """Ones unless training; then each element is kept with probability 1 - p and scaled by
    1 / (1 - p). The mask is a value of the graph, so the backward pass reuses it. It is drawn
    from the backend's generator `rng` (a trainer's, so masks differ step to step and resume
    exactly), or from Generator(seed) when none is given."""
    if not training:
        return np.ones_like(x)
    kept = (rng or np.random.default_rng(seed)).random(x.shape) >= p
    return kept.astype(x.dtype) / np.asarray(1.0 - p, x.dtype)


# ---- fused ops (written by the fuse pass at -O2) ---------------------------------------------

@kernel("relu_grad")
def _relu_grad(x, g):
    return np.multiply(g, x > 0)


@kernel("cross_entropy_grad")
def _cross_entropy_grad(logits, labels, scale, checked=False):
    """(softmax(logits) - onehot(labels)) * scale, without materialising the one-hot."""
    _check_labels(labels, logits.shape[-1], checked)
    return _minus_one_hot_scaled(_softmax(logits, -1), labels, scale)


@kernel("cross_entropy_grad_from_log_probs")
def _cross_entropy_grad_from_log_probs(log_probs, labels, scale, checked=False):
    _check_labels(labels, log_probs.shape[-1], checked)
    return _minus_one_hot_scaled(np.exp(log_probs), labels, scale)


def _minus_one_hot_scaled(probabilities, labels, scale):
    """(probabilities - onehot(labels)) * scale, in probabilities' buffer."""
    flat = probabilities.reshape(-1, probabilities.shape[-1])
    flat[np.arange(flat.shape[0]), labels.reshape(-1)] -= 1
    probabilities *= scale
    return probabilities


@kernel("sum_squares")
def _sum_squares(x):
    flat = x.reshape(-1)
    return np.asarray(np.dot(flat, flat), dtype=x.dtype)


@kernel("gemm")
def _gemm(a, b, trans_a, trans_b):
    return matmul(a.T if trans_a else a, b.T if trans_b else b)


@kernel("gemm_acc")
def _gemm_acc(a, b, c, alpha, beta, trans_a, trans_b, overwrite=False):
    """alpha * op(a) @ op(b) + beta * c, into c's own buffer when the caller gives it up.

    alpha scales the smallest of a, b and the product, and beta is applied in place: two passes
    over c's size besides the product. (BLAS's gemm with beta, through scipy, measured no
    faster on this project's machine: it reads c inside the product's kernel instead.)"""
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    if alpha == 1:
        product = matmul(a, b)
    elif a.size < c.size and a.size <= b.size:  # c has the product's shape
        product = matmul(a * alpha, b)
    elif b.size < c.size:
        product = matmul(a, b * alpha)
    else:
        product = matmul(a, b)
        product *= alpha
    if not overwrite:
        return np.add(c if beta == 1 else c * beta, product, out=product)
    if beta != 1:
        c *= beta
    c += product
    return c


@kernel("det")
def _det(x):
    return np.linalg.det(x)


@kernel("top_k_indices")
def _top_k_indices(x, k, axis, largest):
    # A stable sort keeps ties in order. For the largest, the sort runs over x reversed and
    # reads backwards, so that ties still come lowest position first.
    if not largest:
        return np.argsort(x, axis=axis, kind="stable").take(np.arange(k), axis=axis)
    last = x.shape[axis] - 1
    ascending = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
    return last - ascending.take(np.arange(last, last - k, -1), axis=axis)


# ---- grid_sample: the same steps as its composition (ir/grid_sampling.py), on arrays.

@kernel("grid_sample")
def _grid_sample(x, grid, mode, padding_mode, align_corners):
    rank = x.ndim - 2
    taps_per_axis = [
        _grid_taps(grid[..., rank - 1 - axis], size, mode, padding_mode, align_corners)
        for axis, size in enumerate(x.shape[2:])]
    batch = np.arange(x.shape[0]).reshape((-1,) + (1,) * rank)
    channels_last = np.moveaxis(x, 1, -1)
    result = np.zeros(grid.shape[:-1] + x.shape[1:2], x.dtype)
    for combination in itertools.product(*taps_per_axis):
        weight = functools.reduce(np.multiply, [tap_weight for _, tap_weight in combination])
        read = channels_last[(batch, *(tap_index for tap_index, _ in combination))]
        result += read * weight[..., None]
    return np.ascontiguousarray(np.moveaxis(result, -1, 1))


def _grid_taps(normalised, size, mode, padding_mode, align_corners):
    """[(index, weight)] of each tap along one axis; zeros padding weighs one outside by 0."""
    scale = (size - 1) / 2 if align_corners else size / 2
    coordinate = normalised * scale + (size - 1) / 2
    if mode == "nearest":
        coordinate = np.rint(coordinate)
    if mode != "cubic":
        coordinate = _padded_coordinate(coordinate, size, padding_mode, align_corners)
    if mode == "nearest":
        positions, weights = [coordinate], [np.ones_like(coordinate)]
    else:
        floor = np.floor(coordinate)
        fraction = coordinate - floor
        offsets, weights = ((0, 1), [1 - fraction, fraction]) if mode == "linear" else \
            ((-1, 0, 1, 2), grid_sampling.cubic_weights(fraction))
        positions = [floor + offset for offset in offsets]
    taps = []
    for position, weight in zip(positions, weights, strict=True):
        if padding_mode == "zeros":
            weight = np.where((position >= 0) & (position <= size - 1), weight, 0)
        else:
            position = _padded_coordinate(position, size, padding_mode, align_corners)
        # A NaN coordinate reads pixel 0, and its NaN weight makes the result NaN.
        index = np.clip(np.nan_to_num(position, nan=0.0), 0, size - 1).astype(np.int64)
        taps.append((index, weight.astype(normalised.dtype)))
    return taps


def _padded_coordinate(coordinate, size, padding_mode, align_corners):
    if padding_mode == "reflection":
        low, high = grid_sampling.coordinate_bounds(size, align_corners)
        if high == low:
            return np.zeros_like(coordinate)
        span = high - low
        distance = np.abs(coordinate - low)
        spans = np.floor(distance / span)
        extra = distance - spans * span
        coordinate = np.where(spans % 2 == 0, low + extra, high - extra)
    if padding_mode == "zeros":
        return coordinate
    return np.clip(coordinate, 0, size - 1)


KERNELS.update(CONVOLUTION_KERNELS)

# Every op numpy computes exactly, with no kernel of its own above.
for _op in OPS.values():
    if _op.numpy is not None and _op.name not in KERNELS:
        KERNELS[_op.name] = _from_numpy(_op)
