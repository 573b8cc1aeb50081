"""numpy kernels, one per op, called as kernel(*input_arrays, **attrs)."""
from __future__ import annotations

import math

import numpy as np

from ..ir.types import NUMPY_DTYPES

KERNELS = {}


def kernel(*ops):
    def register(fn):
        for op in ops:
            KERNELS[op] = fn
        return fn
    return register


def _axes(axes):
    return None if axes is None else tuple(axes)


for _op, _fn in {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": np.power, "neg": np.negative, "exp": np.exp, "log": np.log, "tanh": np.tanh,
    "less": np.less, "less_equal": np.less_equal, "greater": np.greater,
    "greater_equal": np.greater_equal, "equal": np.equal, "not_equal": np.not_equal,
    "where": np.where, "matmul": np.matmul,
}.items():
    KERNELS[_op] = _fn


@kernel("relu")
def _relu(x):
    return np.maximum(x, 0)


@kernel("sigmoid")
def _sigmoid(x):
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype)


@kernel("cast")
def _cast(x, dtype):
    return x.astype(NUMPY_DTYPES[dtype])


@kernel("constant")
def _constant(value, dtype):
    return np.asarray(value, dtype=NUMPY_DTYPES[dtype])


@kernel("transpose")
def _transpose(x, perm):
    return np.transpose(x, perm)


@kernel("sum")
def _sum(x, axes, keepdims):
    return np.sum(x, axis=_axes(axes), keepdims=keepdims)


@kernel("mean")
def _mean(x, axes, keepdims):
    return np.mean(x, axis=_axes(axes), keepdims=keepdims)


def _log_softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


@kernel("softmax")
def _softmax(x, axis):
    shifted = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return shifted / np.sum(shifted, axis=axis, keepdims=True)


@kernel("cross_entropy")
def _cross_entropy(logits, labels):
    classes = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must lie in [0, {classes}), got values from {labels.min()} "
                         f"to {labels.max()}")
    picked = np.take_along_axis(_log_softmax(logits, -1), labels[..., None], axis=-1)
    return -np.mean(picked)


@kernel("mse")
def _mse(pred, target):
    return np.mean(np.square(pred - target))


@kernel("one_hot")
def _one_hot(labels, depth, dtype):
    return (labels[..., None] == np.arange(depth)).astype(NUMPY_DTYPES[dtype])


@kernel("broadcast_like")
def _broadcast_like(x, like):
    return np.broadcast_to(x, like.shape)


@kernel("unsqueeze")
def _unsqueeze(x, axes):
    return np.expand_dims(x, tuple(axes))


@kernel("numel")
def _numel(x, axes, dtype):
    dims = x.shape if axes is None else [x.shape[a] for a in axes]
    return np.asarray(math.prod(dims), dtype=NUMPY_DTYPES[dtype])
