"""numpy kernels, one per op, called as kernel(*input_arrays, **attrs).

Ops with the "stochastic" trait also receive `training` (the backend's mode) and `rng`.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir.ops import GELU_CUBIC, GELU_SCALE, rule_table
from ..ir.types import NUMPY_DTYPES

KERNELS, kernel = rule_table()


def _axes(axes):
    return None if axes is None else tuple(axes)


for _op, _fn in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": np.power, "neg": np.negative, "exp": np.exp, "log": np.log, "tanh": np.tanh,
    "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
    "greater_equal": np.greater_equal, "equal": np.equal, "not_equal": np.not_equal,
    "where": np.where, "matmul": np.matmul, "sqrt": np.sqrt, "abs": np.abs, "sign": np.sign,
    "maximum": np.maximum, "minimum": np.minimum, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_not": np.logical_not,
    "argmax": np.argmax, "argmin": np.argmin,  # called as (x, axis=, keepdims=) already
}.items():
    KERNELS[_op] = _fn


def _reduction(reduce):
    def kernel(x, axes, keepdims):
        return reduce(x, axis=_axes(axes), keepdims=keepdims)
    return kernel


for _op, _fn in {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}.items():
    KERNELS[_op] = _reduction(_fn)


@kernel("relu")
def _relu(x):
    return np.maximum(x, 0)


@kernel("sigmoid")
def _sigmoid(x):
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)


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


@kernel("clip")
def _clip(x, lo, hi):
    return np.clip(x, lo, hi)


@kernel("cast")
def _cast(x, dtype):
    return x.astype(NUMPY_DTYPES[dtype])


@kernel("constant")
def _constant(value, dtype):
    return np.asarray(value, dtype=NUMPY_DTYPES[dtype])


@kernel("arange")
def _arange(n):
    return np.arange(n, dtype=np.int64)


@kernel("transpose")
def _transpose(x, perm):
    return np.transpose(x, perm)


@kernel("logsumexp")
def _logsumexp(x, axes, keepdims):
    # Shift by the max so exp cannot overflow; an all -inf slice keeps -inf instead of nan.
    peak = np.max(x, axis=_axes(axes), keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    total = np.log(np.sum(np.exp(x - peak), axis=_axes(axes), keepdims=True)) + peak
    return total if keepdims else np.squeeze(total, axis=_axes(axes))


@kernel("log_softmax")
def _log_softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


@kernel("softmax")
def _softmax(x, axis):
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


@kernel("cross_entropy")
def _cross_entropy(logits, labels):
    _check_labels(labels, logits.shape[-1])
    picked = np.take_along_axis(_log_softmax(logits, -1), labels[..., None], axis=-1)
    return -np.mean(picked)


def _check_labels(labels, classes: int) -> None:
    """Labels computed inside a model (inputs are checked before any backend runs): numpy
    would index from the end for -1, or write a zero one-hot row, without a word."""
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values from {labels.min()} "
                         f"to {labels.max()}")


@kernel("mse")
def _mse(pred, target):
    return np.mean(np.square(pred - target))


@kernel("one_hot")
def _one_hot(labels, depth, dtype):
    _check_labels(labels, depth)
    return (labels[..., None] == np.arange(depth)).astype(NUMPY_DTYPES[dtype])


@kernel("broadcast_like")
def _broadcast_like(x, like):
    return np.broadcast_to(x, like.shape)


@kernel("fill")
def _fill(value, *sources, shape, axes):
    dims = iter([source.shape[axis] for source, axis in zip(sources, axes, strict=True)])
    return np.full([next(dims) if d == -1 else d for d in shape], value, value.dtype)


@kernel("broadcast_to")
def _broadcast_to(x, shape):
    leading = len(shape) - x.ndim
    return np.broadcast_to(x, [x.shape[i - leading] if d == -1 else d
                               for i, d in enumerate(shape)])


@kernel("reshape")
def _reshape(x, shape):
    return np.reshape(x, [x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


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


@kernel("numel")
def _numel(x, axes, dtype):
    dims = x.shape if axes is None else [x.shape[a] for a in axes]
    return np.asarray(math.prod(dims), dtype=NUMPY_DTYPES[dtype])


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
def _cross_entropy_grad(logits, labels, scale):
    """(softmax(logits) - onehot(labels)) * scale, without materialising the one-hot."""
    _check_labels(labels, logits.shape[-1])
    grad = _softmax(logits, -1)
    flat = grad.reshape(-1, grad.shape[-1])
    flat[np.arange(flat.shape[0]), labels.reshape(-1)] -= 1
    grad *= scale
    return grad


@kernel("sum_squares")
def _sum_squares(x):
    flat = x.reshape(-1)
    return np.asarray(np.dot(flat, flat), dtype=x.dtype)


@kernel("gemm")
def _gemm(a, b, trans_a, trans_b):
    return np.matmul(a.T if trans_a else a, b.T if trans_b else b)
