"""Per-op test data, used by several tests: cases (input shapes, dtypes, value domains and
attrs) and plain numpy references of what each op computes.

Each differentiable op has at least one case in CASES, each other op one in FORWARD_CASES;
broadcasting, size-1 dims and negative axes are covered where the op has them. Values stay away
from kinks and ties (relu at 0, max ties), where finite differences do not estimate the
subgradient the rules choose.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from chainrule.ir import Graph, GraphBuilder, Value
from chainrule.ir.shapes import TO_END, TO_START
from chainrule.ir.types import TensorType, numpy_dtype
from support.conv_reference import REFERENCES as CONV_REFERENCES
from support.sampling_reference import grid_sample


@dataclass(frozen=True)
class Arg:
    shape: tuple
    dtype: str = "f64"
    # any | positive | away_from_zero | inside_unit (|x| < 0.9) | above_one (x > 1.2) |
    # labels:N | indices:N | bool
    domain: str = "any"


@dataclass(frozen=True)
class Case:
    op: str
    args: tuple
    attrs: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        shapes = "_".join("x".join(map(str, a.shape)) or "scalar" for a in self.args)
        extra = "_".join(f"{k}{v}" for k, v in self.attrs.items())
        return f"{self.op}-{shapes}{'-' + extra if extra else ''}".replace(" ", "")


F = Arg


def labels(shape, classes):
    return Arg(shape, "i64", f"labels:{classes}")


def indices(shape, size):
    """i64 indices into an axis of `size`, negative ones (counting from the end) included."""
    return Arg(shape, "i64", f"indices:{size}")


def ints(shape, dtype, low, high):
    """Integers of `dtype` drawn from [low, high)."""
    return Arg(shape, dtype, f"ints:{low}:{high}")


def window(starts, ends, axes, steps):
    return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


def conv_window(strides, pads, dilations=None, groups=1, **extra):
    return {"strides": strides, "pads": pads, "dilations": dilations or (1,) * len(strides),
            "groups": groups, **extra}


def pool_window(kernel, strides, pads=None, ceil_mode=False, **extra):
    return {"kernel": kernel, "strides": strides, "pads": pads or (0,) * 2 * len(kernel),
            "ceil_mode": ceil_mode, **extra}


CASES = [
    Case("add", (F((3, 4)), F((4,)))),
    Case("add", (F((2, 1, 3)), F((4, 1)))),
    Case("sub", (F((3, 1)), F((1, 4)))),
    Case("mul", (F((3, 4)), F((3, 4)))),
    Case("mul", (F(()), F((2, 3)))),
    Case("div", (F((3, 4)), F((4,), domain="away_from_zero"))),
    Case("pow", (F((3, 4), domain="positive"), F((3, 4)))),
    Case("pow", (F((2, 3), domain="positive"), F((1,)))),
    Case("neg", (F((5,)),)),
    Case("exp", (F((2, 3)),)),
    Case("log", (F((2, 3), domain="positive"),)),
    Case("relu", (F((4, 5), domain="away_from_zero"),)),
    Case("sigmoid", (F((4, 5)),)),
    Case("tanh", (F((4, 5)),)),
    Case("sin", (F((4, 5)),)),
    Case("sin", (F(()),)),
    Case("cos", (F((4, 5)),)),
    Case("cos", (F(()),)),
    Case("tan", (F((4, 5), domain="inside_unit"),)),
    Case("asin", (F((4, 5), domain="inside_unit"),)),
    Case("acos", (F((4, 5), domain="inside_unit"),)),
    Case("acos", (F((), domain="inside_unit"),)),
    Case("atan", (F((4, 5)),)),
    Case("sinh", (F((4, 5)),)),
    Case("cosh", (F((4, 5)),)),
    Case("asinh", (F((4, 5)),)),
    Case("acosh", (F((4, 5), domain="above_one"),)),
    Case("atanh", (F((4, 5), domain="inside_unit"),)),
    Case("log1p", (F((4, 5), domain="positive"),)),
    # sampling: points inside and outside the image, in every mode and padding
    Case("grid_sample", (F((2, 3, 4, 5)), F((2, 3, 2, 2)))),
    Case("grid_sample", (F((1, 2, 3, 4)), F((1, 2, 3, 2), domain="inside_unit")),
         {"mode": "cubic", "align_corners": True}),
    Case("grid_sample", (F((1, 2, 3, 4)), F((1, 3, 2, 2))),
         {"mode": "cubic", "padding_mode": "border"}),
    Case("grid_sample", (F((1, 2, 3, 4)), F((1, 3, 2, 2))),
         {"mode": "linear", "padding_mode": "reflection", "align_corners": True}),
    Case("grid_sample", (F((2, 1, 3, 3)), F((2, 2, 2, 2))),
         {"mode": "nearest", "padding_mode": "reflection"}),
    Case("grid_sample", (F((1, 2, 2, 3, 4)), F((1, 2, 1, 2, 3))), {"padding_mode": "border"}),
    Case("grid_sample", (F((1, 1, 2, 3, 3)), F((1, 1, 2, 2, 3))),
         {"mode": "cubic", "padding_mode": "reflection"}),
    Case("grid_sample", (F((2, 2, 5)), F((2, 3, 1))), {"mode": "cubic"}),
    Case("log1p", (F((), domain="positive"),)),
    Case("where", (Arg((3, 4), "bool", "bool"), F((3, 4)), F((4,)))),
    Case("cast", (F((3,)),), {"dtype": "f64"}),
    Case("matmul", (F((3, 4)), F((4, 5)))),
    Case("matmul", (F((2, 3, 4)), F((4, 5)))),
    Case("matmul", (F((2, 1, 3, 4)), F((5, 4, 2)))),
    Case("matmul", (F((4,)), F((4, 5)))),
    Case("matmul", (F((2, 3, 4)), F((4,)))),
    Case("matmul", (F((4,)), F((4,)))),
    Case("transpose", (F((2, 3, 4)),), {"perm": (2, 0, 1)}),
    Case("det", (F((3, 3)),)),
    Case("det", (F((2, 4, 4)),)),
    Case("det", (F((2, 1, 1)),)),
    Case("det", (F((1, 2, 2)),)),
    Case("sum", (F((3, 4)),)),
    Case("sum", (F((2, 3, 4)),), {"axes": (0, 2), "keepdims": True}),
    Case("sum", (F((2, 3, 4)),), {"axes": (-1,), "keepdims": False}),
    Case("mean", (F((3, 4)),), {"axes": (1,), "keepdims": False}),
    Case("mean", (F((2, 3, 4)),)),
    Case("softmax", (F((3, 5)),), {"axis": -1}),
    Case("softmax", (F((3, 5)),), {"axis": 0}),
    Case("cross_entropy", (F((6, 5)), Arg((6,), "i64", "labels:5"))),
    Case("cross_entropy", (F((2, 3, 4)), Arg((2, 3), "i64", "labels:4"))),
    Case("mse", (F((4, 3)), F((4, 3)))),
    Case("mse", (F((4, 3)), F((3,)))),
    Case("broadcast_like", (F((1, 3)), F((4, 3)))),
    Case("unsqueeze", (F((3, 4)),), {"axes": (0, 2)}),
    # elementwise
    Case("sqrt", (F((3, 4), domain="positive"),)),
    Case("abs", (F((3, 4), domain="away_from_zero"),)),
    Case("leaky_relu", (F((4, 5), domain="away_from_zero"),)),
    Case("leaky_relu", (F((2, 1, 3), domain="away_from_zero"),), {"alpha": 0.2}),
    Case("gelu", (F((4, 5)),)),
    Case("gelu", (F(()),)),
    Case("erf", (F((4, 5)),)),
    Case("erf", (F(()),)),
    Case("softplus", (F((4, 5)),)),
    Case("clip", (F((4, 5)),), {"lo": -0.5, "hi": 0.7}),
    Case("fake_quantize", (F((4, 5)), F((5,), domain="positive"), F(())),
         {"lo": -3.0, "hi": 4.0}),
    Case("maximum", (F((3, 4)), F((4,)))),
    Case("maximum", (F((2, 1, 3)), F((4, 1)))),
    Case("minimum", (F((3, 1)), F((1, 4)))),
    Case("minimum", (F(()), F((2, 3)))),
    Case("pow", (F((2, 3), domain="positive"), F(()))),
    # reductions
    Case("max", (F((3, 4)),)),
    Case("max", (F((2, 3, 4)),), {"axes": (0, 2), "keepdims": True}),
    Case("max", (F((1, 5)),), {"axes": (-1,), "keepdims": False}),
    Case("min", (F((3, 4)),), {"axes": (1,), "keepdims": False}),
    Case("min", (F((2, 3, 4)),), {"axes": (-2,), "keepdims": True}),
    Case("logsumexp", (F((3, 4)),)),
    Case("logsumexp", (F((2, 3, 4)),), {"axes": (1,), "keepdims": True}),
    Case("logsumexp", (F((2, 1, 4)),), {"axes": (-1, 0), "keepdims": False}),
    Case("prod", (F((3, 4)),)),
    Case("prod", (F((2, 3, 4)),), {"axes": (0, 2), "keepdims": True}),
    Case("prod", (F((2, 3, 4)),), {"axes": (-1,), "keepdims": False}),
    Case("cumsum", (F((3, 4)),), {"axis": 1}),
    Case("cumsum", (F((2, 3, 4)),), {"axis": -3}),
    Case("cumsum", (F((5,)),), {"axis": 0}),
    Case("cumprod", (F((3, 4), domain="away_from_zero"),), {"axis": 1}),
    Case("cumprod", (F((2, 3, 4), domain="away_from_zero"),), {"axis": -3}),
    # shape
    Case("reshape", (F((2, 3, 4)),), {"shape": (4, -1)}),
    Case("reshape", (F((2, 3, 4)),), {"shape": (0, -1)}),
    Case("reshape", (F((6,)),), {"shape": (1, 2, 3)}),
    Case("reshape_like", (F((2, 3, 4)), F((6, 4)))),
    Case("broadcast_to", (F((3, 1)),), {"shape": (2, 3, 4)}),
    Case("broadcast_to", (F((2, 1)),), {"shape": (-1, 5)}),
    Case("squeeze", (F((3, 1, 4)),), {"axes": (1,)}),
    Case("squeeze", (F((1, 3, 1)),), {"axes": (0, -1)}),
    Case("concat", (F((2, 3)), F((2, 4))), {"axis": 1}),
    Case("concat", (F((2, 3)), F((1, 3)), F((4, 3))), {"axis": 0}),
    Case("concat", (F((2, 3, 1)), F((2, 3, 2))), {"axis": -1}),
    Case("concat", (F((3,)),), {"axis": 0}),
    Case("unconcat", (F((5, 3)), F((2, 3)), F((3, 3))), {"axis": 0, "index": 1}),
    Case("unconcat", (F((2, 7)), F((2, 3)), F((2, 4))), {"axis": -1, "index": 0}),
    Case("slice", (F((5, 6)),), window((1,), (4,), (0,), (1,))),
    Case("slice", (F((4, 6)),), window((0, TO_END), (TO_END, TO_START), (0, 1), (2, -2))),
    Case("slice", (F((3, 5)),), window((-3,), (TO_END,), (-1,), (1,))),
    Case("unslice", (F((3, 6)), F((5, 6))), window((1,), (4,), (0,), (1,))),
    Case("unslice", (F((2, 3)), F((4, 6))),
         window((0, TO_END), (TO_END, TO_START), (0, 1), (2, -2))),
    Case("take", (F((5, 3)), labels((4,), 5)), {"axis": 0}),
    Case("take", (F((2, 5, 3)), labels((2, 2), 5)), {"axis": 1}),
    Case("take", (F((4, 3)), labels((), 3)), {"axis": -1}),
    Case("scatter_add", (F((6, 3)), labels((6,), 4), F((4, 3))), {"axis": 0}),
    Case("scatter_add", (F((2, 2, 2, 3)), labels((2, 2), 5), F((2, 5, 3))), {"axis": 1}),
    Case("gather_elements", (F((4, 3)), indices((6, 3), 4))),
    Case("gather_elements", (F((2, 5, 3)), indices((2, 2, 3), 5)), {"axis": 1}),
    # fewer rows than x: ONNX reads the first ones
    Case("gather_elements", (F((3, 4)), indices((2, 1), 4)), {"axis": -1}),
    Case("gather_elements", (F((5,)), indices((7,), 5)), {"axis": -1}),
    Case("scatter_elements_add", (F((6, 3)), indices((6, 3), 4), F((4, 3)))),
    Case("scatter_elements_add", (F((2, 4, 1)), indices((2, 4, 1), 3), F((3, 4, 2))),
         {"axis": -3}),
    # nn
    Case("log_softmax", (F((3, 5)),), {"axis": -1}),
    Case("log_softmax", (F((2, 3, 4)),), {"axis": 1}),
    Case("fill", (F(()),), {"shape": (2, 3)}),
    # convolution and pooling (tests/test_conv.py covers their options more widely)
    Case("conv", (F((2, 3, 5, 6)), F((4, 3, 3, 2))), conv_window((1, 1), (1, 0, 1, 1))),
    Case("conv", (F((2, 4, 7, 6)), F((6, 2, 3, 2))),
         conv_window((2, 1), (1, 1, 0, 1), dilations=(1, 2), groups=2)),
    Case("conv", (F((1, 3, 5, 5)), F((3, 1, 3, 3))), conv_window((1, 1), (1, 1, 1, 1), groups=3)),
    Case("conv", (F((2, 2, 7)), F((3, 2, 3))), conv_window((2,), (1, 1), dilations=(2,))),
    Case("conv_transpose", (F((2, 3, 3, 4)), F((3, 2, 3, 3))),
         conv_window((2, 1), (1, 0, 1, 1), output_padding=(1, 0))),
    Case("conv_transpose", (F((1, 4, 3, 3)), F((4, 1, 2, 3))),
         conv_window((2, 2), (0, 1, 1, 0), dilations=(2, 1), groups=2, output_padding=(1, 0))),
    Case("conv_weight_grad", (F((2, 3, 5, 6)), F((2, 4, 5, 6))),
         {"kernel": (3, 2), **conv_window((1, 1), (1, 0, 1, 1))}),
    Case("conv_weight_grad", (F((2, 4, 7, 6)), F((2, 6, 3, 6))),
         {"kernel": (3, 2), **conv_window((2, 1), (1, 1, 0, 1), dilations=(1, 2), groups=2)}),
    Case("max_pool", (F((2, 3, 5, 6)),), pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("max_pool", (F((1, 2, 6, 5)),), pool_window((3, 3), (2, 1), (1, 1, 1, 1))),
    Case("max_pool", (F((2, 2, 7)),), pool_window((3,), (2,), (1, 1), ceil_mode=True)),
    Case("max_unpool", (F((2, 3, 3, 3)), F((2, 3, 5, 6))),
         pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("max_pool_take", (F((1, 2, 6, 5)), F((1, 2, 6, 5))),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1))),
    Case("avg_pool", (F((2, 3, 5, 6)),), pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("avg_pool", (F((1, 2, 6, 5)),),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1), count_include_pad=False)),
    Case("avg_pool", (F((2, 2, 7)),), pool_window((2,), (3,), (1, 1), ceil_mode=True)),
    Case("avg_unpool", (F((1, 2, 3, 5)), F((1, 2, 6, 5))),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1), count_include_pad=False)),
    Case("avg_unpool", (F((2, 3, 3, 3)), F((2, 3, 5, 6))),
         pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("pad", (F((2, 3, 4)),), {"pads": (0, 1, 2, 1, 0, 3), "value": 0.5}),
]


# ---- plain numpy references, one per op, and cases for the ops without derivative rules ----


def _softmax(x, axis):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _slice(x, starts, ends, axes, steps):
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        x = np.take(x, list(range(*slice(start, end, step).indices(x.shape[axis]))), axis=axis)
    return x


def _unslice(sliced, like, **window):
    positions = _slice(np.arange(like.size).reshape(like.shape), **window)
    result = np.zeros(like.size, sliced.dtype)
    result[positions.ravel()] = sliced.ravel()
    return result.reshape(like.shape)


def _scatter_add(updates, indices, like, axis):
    axis %= like.ndim
    result = np.zeros(like.shape, updates.dtype)
    before = (slice(None),) * axis
    for position in np.ndindex(indices.shape):
        result[before + (indices[position],)] += updates[before + position]
    return result


def _gather_elements(x, indices, axis):
    """ONNX's definition: out[p] = x[p with its `axis` coordinate replaced by indices[p]]."""
    result = np.empty(indices.shape, x.dtype)
    for position in np.ndindex(indices.shape):
        source = list(position)
        source[axis] = indices[position]
        result[position] = x[tuple(source)]
    return result


def _scatter_elements_add(updates, indices, like, axis):
    result = np.zeros(like.shape, updates.dtype)
    for position in np.ndindex(indices.shape):
        target = list(position)
        target[axis] = indices[position]
        result[tuple(target)] += updates[position]
    return result


def _by_element(function):
    """A math module function applied to each element (in float64), in x's dtype."""
    return lambda x: np.vectorize(function, otypes=[x.dtype])(x)


def _unconcat(whole, *parts, axis, index):
    offsets = np.cumsum([p.shape[axis] for p in parts])[:-1]
    return np.split(whole, offsets, axis=axis)[index]


def _reshape(x, shape):
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


def _broadcast_to(x, shape):
    lead = len(shape) - x.ndim
    return np.broadcast_to(x, [x.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)])


def _cross_entropy(logits, labels):
    log_p = np.log(_softmax(logits, -1))
    return -np.mean(np.take_along_axis(log_p, labels[..., None], -1))


def _axes(axes):
    return None if axes is None else tuple(axes)


def _cross_entropy_grad(logits, labels, scale):
    onehot = np.eye(logits.shape[-1])[labels]
    return (_softmax(logits, -1) - onehot) * scale


def _nll(log_probs, labels):
    return -np.mean(np.take_along_axis(log_probs, labels[..., None], axis=-1))


def _gemm(a, b, trans_a, trans_b):
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


def _gemm_acc(a, b, c, alpha, beta, trans_a, trans_b):
    return alpha * _gemm(a, b, trans_a, trans_b) + beta * c


def _top_k_indices(x, k, axis, largest):
    rows = np.moveaxis(x, axis, -1)
    result = np.empty(rows.shape[:-1] + (k,), np.int64)
    for where in np.ndindex(*rows.shape[:-1]):
        row = rows[where].tolist()
        ranked = sorted(range(len(row)), key=lambda i: (-row[i] if largest else row[i], i))
        result[where] = ranked[:k]
    return np.moveaxis(result, -1, axis)


def _determinant(x):
    """By the Leibniz formula: a sum over the permutations of signed products."""
    n = x.shape[-1]
    total = np.zeros(x.shape[:-2], x.dtype)
    for permutation in itertools.permutations(range(n)):
        inversions = sum(a > b for a, b in itertools.combinations(permutation, 2))
        product = np.prod([x[..., row, column] for row, column in enumerate(permutation)],
                          axis=0)
        total += (-1) ** inversions * product
    return total


def _fill(value, shape):
    return np.broadcast_to(value, shape)


def _by_integer(function):
    """function(a, b) on each pair of elements as Python ints, wrapped to a's dtype."""
    def reference(a, b, **attrs):
        bits = a.dtype.itemsize * 8
        def wrapped(x, y):
            value = function(int(x), int(y), bits, **attrs) % 2 ** bits
            return value - 2 ** bits if a.dtype.kind == "i" and value >= 2 ** (bits - 1) \
                else value
        return np.vectorize(wrapped, otypes=[a.dtype])(a, b)
    return reference


def _truncated_quotient(x, y, bits):
    quotient = abs(x) // abs(y)
    return quotient if (x < 0) == (y < 0) else -quotient


def _remainder(x, y, bits, fmod):
    return x - y * _truncated_quotient(x, y, bits) if fmod else x % y


def _shifted_left(x, shift, bits):
    return x << shift if 0 <= shift < bits else 0


def _shifted_right(x, shift, bits):  # Python's >> fills with the sign
    return x >> shift if 0 <= shift < bits else (-1 if x < 0 else 0)


REFERENCES = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "neg": lambda x: -x,
    "exp": np.exp, "log": np.log, "tanh": np.tanh, "sin": _by_element(math.sin),
    "cos": _by_element(math.cos), "tan": _by_element(math.tan), "asin": _by_element(math.asin),
    "acos": _by_element(math.acos), "atan": _by_element(math.atan),
    "sinh": _by_element(math.sinh), "cosh": _by_element(math.cosh),
    "asinh": _by_element(math.asinh), "acosh": _by_element(math.acosh),
    "atanh": _by_element(math.atanh), "sqrt": np.sqrt, "abs": np.abs,
    "sign": np.sign, "floor": np.floor, "log1p": np.log1p, "stop_gradient": lambda x: x,
    "relu": lambda x: x * (x > 0), "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "leaky_relu": lambda x, alpha: np.where(x > 0, x, alpha * x),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "softplus": lambda x: np.log1p(np.exp(x)), "erf": _by_element(math.erf),
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "fake_quantize": lambda x, scale, zero_point, lo, hi: (
        np.minimum(np.maximum(np.round(x / scale) + zero_point, lo), hi) - zero_point) * scale,
    "maximum": lambda a, b: np.where(a >= b, a, b), "minimum": lambda a, b: np.where(a <= b, a, b),
    "less": lambda a, b: a < b, "less_equal": lambda a, b: a <= b,
    "greater": lambda a, b: a > b, "greater_equal": lambda a, b: a >= b,
    "equal": lambda a, b: a == b, "not_equal": lambda a, b: a != b,
    "logical_and": lambda a, b: a & b, "logical_or": lambda a, b: a | b,
    "logical_not": lambda x: ~x, "where": np.where,
    "cast": lambda x, dtype, saturate: x.astype(numpy_dtype(dtype)),
    "sum": lambda x, axes, keepdims: x.sum(axis=_axes(axes), keepdims=keepdims),
    "mean": lambda x, axes, keepdims: x.mean(axis=_axes(axes), keepdims=keepdims),
    "prod": lambda x, axes, keepdims: np.multiply.reduce(x, axis=_axes(axes), keepdims=keepdims),
    "cumsum": lambda x, axis: np.add.accumulate(x, axis=axis),
    "cumprod": lambda x, axis: np.multiply.accumulate(x, axis=axis, dtype=x.dtype),
    "int_div": _by_integer(_truncated_quotient), "int_mod": _by_integer(_remainder),
    "left_shift": _by_integer(_shifted_left), "right_shift": _by_integer(_shifted_right),
    "bitwise_and": lambda a, b: a & b, "bitwise_or": lambda a, b: a | b,
    "bitwise_xor": lambda a, b: a ^ b, "bitwise_not": lambda x: ~x,
    "bitcast": lambda x, dtype: np.frombuffer(x.tobytes(), numpy_dtype(dtype)).reshape(x.shape),
    "max": lambda x, axes, keepdims: x.max(axis=_axes(axes), keepdims=keepdims),
    "min": lambda x, axes, keepdims: x.min(axis=_axes(axes), keepdims=keepdims),
    "logsumexp": lambda x, axes, keepdims: np.log(np.exp(x).sum(axis=_axes(axes),
                                                                keepdims=keepdims)),
    "argmax": lambda x, axis, keepdims: np.argmax(x, axis=axis, keepdims=keepdims),
    "argmin": lambda x, axis, keepdims: np.argmin(x, axis=axis, keepdims=keepdims),
    "numel": lambda x, axes, dtype: np.asarray(
        np.prod([x.shape[a] for a in axes] if axes is not None else x.shape),
        numpy_dtype(dtype)),
    "matmul": lambda a, b: a @ b, "transpose": lambda x, perm: x.transpose(perm),
    "reshape": _reshape, "reshape_like": lambda x, like: x.reshape(like.shape),
    "broadcast_to": _broadcast_to, "broadcast_like": lambda x, like: np.broadcast_to(x, like.shape),
    "unsqueeze": lambda x, axes: np.expand_dims(x, axes),
    "squeeze": lambda x, axes: np.squeeze(x, axes),
    "concat": lambda *parts, axis: np.concatenate(parts, axis),
    "unconcat": _unconcat, "slice": _slice, "unslice": _unslice,
    "take": lambda x, indices, axis: np.take(x, indices, axis), "scatter_add": _scatter_add,
    "gather_elements": _gather_elements, "scatter_elements_add": _scatter_elements_add,
    "softmax": _softmax, "log_softmax": lambda x, axis: np.log(_softmax(x, axis)),
    "cross_entropy": _cross_entropy, "mse": lambda a, b: np.mean((a - b) ** 2),
    "relu_grad": lambda x, g: g * (x > 0), "cross_entropy_grad": _cross_entropy_grad,
    "nll": _nll,
    "cross_entropy_grad_from_log_probs": lambda log_probs, labels, scale: (
        (np.exp(log_probs) - np.eye(log_probs.shape[-1])[labels]) * scale),
    "sum_squares": lambda x: np.sum(x * x), "gemm": _gemm,
    "gemm_acc": _gemm_acc,
    "one_hot": lambda labels, depth, dtype: np.eye(depth, dtype=numpy_dtype(dtype))[labels],
    "dropout_mask": lambda x, p, seed: np.ones_like(x),  # inference; training is tested below
    "fill": _fill, "arange": lambda n: np.arange(n), "grid_sample": grid_sample,
    "top_k_indices": _top_k_indices, "det": _determinant,
    **CONV_REFERENCES,
}

# Ops without derivative rules have no gradient cases; these cover them (and casts away from
# floats) for the reference and onnxruntime checks.
FORWARD_CASES = [
    Case("sign", (Arg((3, 4)),)),
    Case("floor", (Arg((3, 4)),)),
    Case("floor", (Arg(()),)),
    Case("prod", (labels((3, 4), 5),), {"axes": (1,), "keepdims": False}),
    Case("cumsum", (labels((3, 4), 5),), {"axis": 0}),
    Case("cumprod", (ints((3, 4), "i32", -3, 4),), {"axis": 0}),
    # integer ops: divisors of both signs, shifts past the width and below 0
    Case("int_div", (ints((3, 4), "i32", -20, 20), ints((4,), "i32", 1, 6))),
    Case("int_div", (ints((3, 4), "i8", -20, 20), ints((3, 1), "i8", -6, -1))),
    Case("int_div", (ints((3, 4), "u8", 0, 250), ints((4,), "u8", 1, 9))),
    Case("int_mod", (ints((3, 4), "i32", -20, 20), ints((4,), "i32", -6, -1))),
    Case("int_mod", (ints((3, 4), "i64", -20, 20), ints((3, 1), "i64", 1, 6)), {"fmod": True}),
    Case("int_mod", (ints((3, 4), "i16", -20, 20), ints((4,), "i16", -6, -1)), {"fmod": True}),
    Case("bitwise_and", (ints((3, 4), "u8", 0, 256), ints((4,), "u8", 0, 256))),
    Case("bitwise_or", (ints((3, 4), "i32", -99, 99), ints((3, 1), "i32", -99, 99))),
    Case("bitwise_xor", (ints((2, 3), "i64", -99, 99), ints((2, 3), "i64", -99, 99))),
    Case("bitwise_not", (ints((2, 3), "i32", -99, 99),)),
    Case("left_shift", (ints((3, 4), "u8", 0, 256), ints((4,), "u8", 0, 10))),
    Case("left_shift", (ints((3, 4), "i32", -99, 99), ints((3, 4), "i32", -2, 34))),
    Case("right_shift", (ints((3, 4), "u8", 0, 256), ints((4,), "u8", 0, 10))),
    Case("right_shift", (ints((3, 4), "i32", -99, 99), ints((3, 4), "i32", -2, 34))),
    Case("bitcast", (ints((2, 3), "i32", -99, 99),), {"dtype": "u32"}),
    Case("bitcast", (Arg((2, 3), "bool", "bool"),), {"dtype": "u8"}),
    # max pooling of integers pads with the dtype's least value
    Case("max_pool", (ints((1, 2, 5, 5), "u8", 0, 256),), pool_window((3, 3), (2, 2), (1, 1, 1, 1))),
    Case("max_pool", (ints((1, 1, 4, 4), "i8", -99, 0),), pool_window((2, 2), (2, 2), (1, 1, 1, 1))),
    Case("stop_gradient", (Arg((3, 4)),)),
    Case("stop_gradient", (labels((2, 3), 5),)),
    Case("logical_and", (Arg((3, 4), "bool", "bool"), Arg((4,), "bool", "bool"))),
    Case("logical_or", (Arg((2, 1), "bool", "bool"), Arg((1, 3), "bool", "bool"))),
    Case("logical_not", (Arg((5,), "bool", "bool"),)),
    Case("bitwise_and", (labels((3, 4), 9), labels((4,), 9))),
    Case("bitwise_or", (labels((2, 1), 9), labels((1, 3), 9))),
    Case("bitwise_xor", (labels((3, 4), 9), labels((3, 4), 9))),
    Case("bitwise_not", (labels((5,), 9),)),
    Case("less", (Arg((3, 4)), Arg((4,)))),
    Case("less_equal", (Arg((3, 1)), Arg((1, 4)))),
    Case("greater", (Arg(()), Arg((2, 3)))),
    Case("greater_equal", (Arg((3, 4)), Arg((3, 4)))),
    Case("equal", (labels((3, 4), 3), labels((4,), 3))),
    Case("not_equal", (labels((3, 4), 3), labels((3, 1), 3))),
    Case("argmax", (Arg((3, 4)),), {"axis": 1}),
    Case("argmax", (Arg((2, 3, 4)),), {"axis": -1, "keepdims": True}),
    Case("argmin", (Arg((3, 4)),), {"axis": 0}),
    Case("argmin", (labels((2, 5), 3),), {"axis": -1}),  # ties: the first position
    Case("one_hot", (labels((4,), 5),), {"depth": 5, "dtype": "f64"}),
    Case("numel", (Arg((2, 3)),), {"axes": (1,), "dtype": "f64"}),
    Case("cast", (Arg((3, 4)),), {"dtype": "i64"}),
    Case("cast", (Arg((3, 4)),), {"dtype": "bool"}),
    Case("dropout_mask", (Arg((3, 4)),), {"p": 0.5, "seed": 0}),
    Case("take", (labels((5, 2), 9), labels((3,), 5)), {"axis": 0}),
    Case("gather_elements", (labels((3, 4), 9), indices((3, 2), 4)), {"axis": 1}),
    Case("top_k_indices", (Arg((3, 5)),), {"k": 2}),
    Case("top_k_indices", (Arg((2, 3, 4)),), {"k": 3, "axis": 1, "largest": False}),
    Case("top_k_indices", (labels((4, 6), 3),), {"k": 3, "axis": 0}),  # ties: lower first
    Case("top_k_indices", (labels((6,), 2),), {"k": 6, "largest": False}),
    # constructors
    Case("fill", (labels((), 9),), {"shape": (4, 5, 2)}),
    Case("fill", (Arg((), "bool", "bool"),), {"shape": (2, 3)}),
    Case("fill", (Arg(()),), {"shape": ()}),
    Case("arange", (), {"n": 5}),
    # fused ops, which the fuse pass writes into gradient graphs
    Case("relu_grad", (Arg((3, 4), domain="away_from_zero"), Arg((3, 4)))),
    Case("cross_entropy_grad", (Arg((6, 5)), labels((6,), 5), Arg(()))),
    Case("cross_entropy_grad", (Arg((2, 3, 4)), labels((2, 3), 4), Arg(()))),
    Case("nll", (Arg((6, 5)), labels((6,), 5))),
    Case("nll", (Arg((2, 3, 4)), labels((2, 3), 4))),
    Case("cross_entropy_grad_from_log_probs",
         (Arg((6, 5)), labels((6,), 5), Arg(()))),
    Case("sum_squares", (Arg((3, 4)),)),
    Case("gemm", (Arg((4, 3)), Arg((4, 5))), {"trans_a": True, "trans_b": False}),
    Case("gemm", (Arg((3, 4)), Arg((5, 4))), {"trans_a": False, "trans_b": True}),
    Case("gemm_acc", (Arg((4, 3)), Arg((4, 5)), Arg((3, 5)), Arg(()), Arg(())),
         {"trans_a": True, "trans_b": False}),
    Case("gemm_acc", (Arg((3, 4)), Arg((5, 4)), Arg((3, 5)), Arg(()), Arg(())),
         {"trans_a": False, "trans_b": True}),
    Case("gemm_acc", (Arg((3, 4)), Arg((4, 5)), Arg((3, 5)), Arg(()), Arg(()))),
]



def in_dtype(case: Case, dtype: str) -> Case:
    """The case with its float operands in `dtype`."""
    args = tuple(dataclasses.replace(a, dtype=dtype) if a.dtype in ("f32", "f64") else a
                 for a in case.args)
    return dataclasses.replace(case, args=args)


def draw(arg: Arg, rng: np.random.Generator) -> np.ndarray:
    if arg.domain == "bool":
        return rng.random(arg.shape) < 0.5
    if arg.domain.startswith("labels:"):
        return rng.integers(0, int(arg.domain.split(":")[1]), arg.shape)
    if arg.domain.startswith("ints:"):
        low, high = (int(bound) for bound in arg.domain.split(":")[1:])
        return rng.integers(low, high, arg.shape).astype(numpy_dtype(arg.dtype))
    if arg.domain.startswith("indices:"):
        size = int(arg.domain.split(":")[1])
        return rng.integers(-size, size, arg.shape)
    values = rng.normal(size=arg.shape)
    if arg.domain == "positive":
        values = np.abs(values) + 0.5
    elif arg.domain == "away_from_zero":
        values = np.sign(values) * (np.abs(values) + 0.2)
    elif arg.domain == "inside_unit":
        values = 0.9 * np.tanh(values)
    elif arg.domain == "above_one":
        values = np.abs(values) + 1.2
    # An array even for shape (): numpy's arithmetic on a 0-d array gives a scalar, which a
    # finite difference could not perturb in place.
    return np.array(values, dtype=np.float64 if arg.dtype == "f64" else np.float32)


def forward_graph(case: Case) -> Graph:
    """inputs a0.. -> op -> out."""
    graph = Graph(f"forward_{case.op}")
    graph.inputs = [Value(f"a{i}", TensorType(arg.dtype, arg.shape))
                    for i, arg in enumerate(case.args)]
    graph.outputs = [GraphBuilder(graph).emit(case.op, graph.inputs, case.attrs, name="out")]
    return graph


def scalar_objective_graph(case: Case) -> tuple[Graph, list[Value], Value]:
    """inputs a0.. -> op -> sum(out * weight): a scalar whose gradient exercises the op's rule."""
    graph = Graph(f"case_{case.op}")
    inputs = []
    for index, arg in enumerate(case.args):
        value = Value(f"a{index}", TensorType(arg.dtype, arg.shape))
        graph.inputs.append(value)
        inputs.append(value)
    builder = GraphBuilder(graph)
    out = builder.emit(case.op, inputs, case.attrs, name="out")
    weight = Value("weight", out.type)
    graph.inputs.append(weight)
    builder.namer.taken.add("weight")
    objective = builder.emit("sum", [builder.emit("mul", [out, weight])], name="objective")
    graph.outputs = [objective, out]
    return graph, inputs, objective
