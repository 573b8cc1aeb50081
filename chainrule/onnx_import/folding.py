"""Folding at import time: the nodes that compute shapes, indices and other constants.

Exporters compute a reshape's target from `Shape`, `Gather`, `Concat` and friends. chainrule
graphs have static attributes, so these chains are evaluated here, with numpy, on constants.
A symbolic dim (the batch `B`) rides along as its name in an object array, so `[B, 6, 16]`
can become a reshape that keeps the input's dim. A folder returns None when its inputs are not
all known; the node is then converted to IR instead, if it can be.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from onnx import TensorProto, helper

from ..ir.ops import rule_table
from ..ir.types import NUMPY_DTYPES, UNKNOWN, TensorType
from .context import Known, Unsupported, dim_hint, tensor_array

# ONNX op type -> the function computing such a node's value at import time.
FOLDERS, folder = rule_table()
# Arrays larger than this are not folded: the node runs in the graph instead.
FOLD_LIMIT = 1 << 16


def shape_of(shape) -> np.ndarray:
    """A shape as a folded value: int64 when every dim is a number, else an object array."""
    if all(isinstance(d, int) for d in shape):
        return np.array(shape, dtype=np.int64)
    return np.array(list(shape), dtype=object)


def known_inputs(ctx) -> list[np.ndarray | None] | None:
    """Every input's folded array (None for an absent optional one), or None unless all of
    them are known and small."""
    arrays = []
    for index in range(len(ctx.node.input)):
        if not ctx.has_input(index):
            arrays.append(None)
            continue
        known = ctx.known(index)
        if known is None or known.array.size > FOLD_LIMIT:
            return None
        arrays.append(known.array)
    return arrays


def _too_large(shape) -> bool:
    """Whether a folded result of `shape` would be too large to fold: the node then runs in
    the graph, where chainrule's size limits apply."""
    return math.prod(shape) > FOLD_LIMIT


def _is_symbolic(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def _tidy(array) -> Known:
    """Back to int64 once no symbolic dim is left."""
    array = Known(array).array
    if array.dtype == object and not any(isinstance(v, str) for v in array.ravel()):
        return Known(array.astype(np.int64))
    return Known(array)


# ---- the shape of a value ---------------------------------------------------------------------

def symbolic_shape(value_type: TensorType) -> np.ndarray:
    """A value's shape as a Known array: ints where sizes are known, names where symbolic."""
    if UNKNOWN in value_type.shape:
        raise Unsupported(f"the shape {value_type.shape} has a dim no name describes")
    return shape_of(value_type.shape)


@folder("Shape")
def _shape(ctx):
    shape = symbolic_shape(ctx.type_of(0))
    rank = len(shape)
    start = ctx.attr("start", 0)
    end = ctx.attr("end", rank)
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    return [_tidy(shape[start:end])]


@folder("Size")
def _size(ctx):
    shape = ctx.type_of(0).shape
    if not all(isinstance(d, int) for d in shape):
        raise Unsupported(f"Size of a value of symbolic shape {list(shape)}",
                          hint=dim_hint(shape))
    return [Known(np.array(math.prod(shape), dtype=np.int64))]


@folder("Constant")
def _constant(ctx):
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if name in ctx.attributes:
            value = ctx.attr(name)
            if name == "value":
                return [Known(tensor_array(value, "Constant's value"))]
            dtype = np.float32 if "float" in name else np.int64
            return [Known(np.array(value, dtype=dtype))]
    for name in ctx.attributes:
        ctx.attr(name)
    raise Unsupported(f"Constant with {', '.join(ctx.attributes) or 'no value'} "
                      f"(supported: value, value_float(s), value_int(s))")


# ---- the rest fold only when every input is known ---------------------------------------------

def _foldable(function):
    def fold(ctx):
        arrays = known_inputs(ctx)
        if arrays is None:
            return None
        return function(ctx, *arrays)
    return fold


def _numbers_only(op, *arrays):
    symbolic = [a for a in arrays if a is not None and _is_symbolic(a)]
    if symbolic:
        raise Unsupported(f"{op} of a shape holding symbolic dims",
                          hint=dim_hint(np.concatenate([a.ravel() for a in symbolic])))


@folder("Identity")
@_foldable
def _identity(ctx, x):
    return [Known(x)]


@folder("Cast")
@_foldable
def _cast(ctx, x):
    to = ctx.attr("to")
    if to not in helper.get_all_tensor_dtypes():
        raise Unsupported(f"Cast to {to}, which is no ONNX dtype")
    target = helper.tensor_dtype_to_np_dtype(to)
    if np.dtype(target).kind not in "biuf":  # a string or complex constant: nothing reads it
        raise Unsupported(f"Cast to {TensorProto.DataType.Name(to)}")
    ctx.attr("saturate")
    if _is_symbolic(x):
        if target != np.int64:
            _numbers_only("Cast", x)
        return [Known(x)]
    return [Known(x.astype(target))]


@folder("CastLike")
def _cast_like(ctx):
    """Only the value needs to be known: the other input gives just its dtype."""
    known = ctx.known(0)
    if known is None:
        return None
    ctx.attr("saturate")
    target = NUMPY_DTYPES[ctx.type_of(1).dtype]
    if known.symbolic:
        if target != np.int64:
            _numbers_only("CastLike", known.array)
        return [known]
    return [Known(known.array.astype(target))]


@folder("Gather")
@_foldable
def _gather(ctx, data, indices):
    axis = ctx.axis(ctx.attr("axis", 0), data.ndim)
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise Unsupported(f"Gather indices of dtype {indices.dtype}")
    if indices.size and (indices.min() < -data.shape[axis] or indices.max() >= data.shape[axis]):
        raise Unsupported(f"Gather indices {indices.tolist()} are out of range for an axis of "
                          f"size {data.shape[axis]}")
    if _too_large(data.shape[:axis] + indices.shape + data.shape[axis + 1:]):
        return None
    return [_tidy(np.asarray(np.take(data, indices, axis=axis), dtype=data.dtype))]


@folder("Concat")
@_foldable
def _concat(ctx, *parts):
    axis = ctx.attr("axis")
    symbolic = any(_is_symbolic(p) for p in parts)
    parts = [p.astype(object) if symbolic else p for p in parts]
    return [_tidy(np.concatenate(parts, axis=axis))]


@folder("Unsqueeze")
@_foldable
def _unsqueeze(ctx, x, axes):
    rank = x.ndim + len(axes)
    for axis in sorted(int(a) % rank for a in axes):
        x = np.expand_dims(x, axis)
    return [Known(x)]


@folder("Squeeze")
@_foldable
def _squeeze(ctx, x, axes=None):
    if axes is None:
        return [Known(np.squeeze(x))]
    return [Known(np.squeeze(x, axis=tuple(int(a) for a in axes)))]


@folder("Slice")
@_foldable
def _slice(ctx, x, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return [Known(x[tuple(index)])]


@folder("Reshape")
@_foldable
def _reshape(ctx, x, shape):
    ctx.attr("allowzero")
    _numbers_only("Reshape", shape)
    target = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    return [Known(x.reshape(target))]


@folder("ConstantOfShape")
@_foldable
def _constant_of_shape(ctx, shape):
    if _is_symbolic(shape) or _too_large(int(d) for d in shape):
        return None  # converted to a fill instead
    fill = fill_value(ctx)
    return [Known(np.full(tuple(int(d) for d in shape), fill, dtype=fill.dtype))]


def fill_value(ctx) -> np.ndarray:
    """ConstantOfShape's value: one number (0.0 as float32 when not given)."""
    value = ctx.attr("value")
    if value is None:
        return np.array(0, dtype=np.float32)
    array = tensor_array(value, "ConstantOfShape's value")
    if array.size != 1 or array.dtype.kind not in "biuf":
        raise Unsupported(f"ConstantOfShape's value of shape {list(array.shape)} and dtype "
                          f"{array.dtype} (it takes one number)")
    return array.reshape(())


@folder("Range")
@_foldable
def _range(ctx, start, limit, delta):
    _numbers_only("Range", start, limit, delta)
    return [range_values(start, limit, delta)]


def range_values(start, limit, delta) -> Known:
    """ONNX's Range of known bounds, counted before numpy makes it."""
    if any(np.size(bound) != 1 for bound in (start, limit, delta)):
        raise Unsupported("Range's start, limit and delta must be one value each")
    start, limit, delta = (np.asarray(bound).reshape(()) for bound in (start, limit, delta))
    if delta == 0 or not all(np.isfinite(bound) for bound in (start, limit, delta)):
        raise Unsupported(f"Range from {start} to {limit} by {delta}")
    if start.dtype.kind in "iu" and abs(int(limit) - int(start)) >= 2 ** 63:
        raise Unsupported(f"Range from {start} to {limit} (numpy's int64 overflows)")
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    if count > FOLD_LIMIT:
        raise Unsupported(f"Range of {count:,} values (at most {FOLD_LIMIT:,} are folded)")
    if count == 0:  # numpy's arange refuses some bounds that give nothing
        return Known(np.zeros(0, dtype=start.dtype))
    return Known(np.arange(start, limit, delta).astype(start.dtype))


def _elementwise(function):
    """A numpy function applied to known arrays; shapes with symbolic dims go through the
    identities a symbol obeys (B * 1, B + 0, B // 1, B == B)."""
    @_foldable
    def fold(ctx, *arrays):
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
        if _too_large(shape):
            return None
        if not any(_is_symbolic(a) for a in arrays):
            return [Known(np.asarray(function(*arrays)))]
        columns = [np.broadcast_to(np.asarray(a, dtype=object), shape).ravel() for a in arrays]
        results = [_symbolic_op(ctx.node.op_type, *items) for items in zip(*columns)]
        return [_tidy(np.array(results, dtype=object).reshape(shape))]
    return fold


def _symbolic_op(op_type, *items):
    if all(isinstance(i, (int, np.integer)) for i in items):
        return int(ELEMENTWISE[op_type](*(np.int64(i) for i in items)))
    a, b = items[0], items[-1]
    if op_type == "Mul" and (a == 1 or b == 1):
        return b if a == 1 else a
    if op_type in ("Add", "Sub") and b == 0 or op_type == "Add" and a == 0:
        return a if b == 0 else b
    if op_type == "Div" and b == 1:
        return a
    if op_type == "Equal":
        return a == b if isinstance(a, str) and isinstance(b, str) else False
    if op_type == "Where":
        return items[1] if items[0] else items[2]
    if op_type in ("Max", "Min") and a == b:
        return a
    raise Unsupported(f"{op_type} of the symbolic dims {items}", hint=dim_hint(items))


def _divide(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.asarray(a).dtype)  # ONNX truncates
    return np.true_divide(a, b)


ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _divide,
               "Equal": np.equal, "Less": np.less, "Greater": np.greater,
               "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
               "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
               "Not": np.logical_not,
               "Neg": np.negative, "Abs": np.abs, "Where": np.where,
               "Max": lambda *xs: functools.reduce(np.maximum, xs),
               "Min": lambda *xs: functools.reduce(np.minimum, xs)}
for _op_type, _function in ELEMENTWISE.items():
    FOLDERS[_op_type] = _elementwise(_function)


@folder("Mod")
@_foldable
def _mod(ctx, a, b):
    _numbers_only("Mod", a, b)
    if _too_large(np.broadcast_shapes(a.shape, b.shape)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):  # x mod 0: ONNX leaves it undefined
        return [Known(np.asarray(np.fmod(a, b) if ctx.attr("fmod", 0) else np.mod(a, b)))]


@folder("Expand")
@_foldable
def _expand(ctx, x, shape):
    _numbers_only("Expand", x, shape)
    target = np.broadcast_shapes(x.shape, tuple(int(d) for d in shape))
    if _too_large(target):
        return None
    return [Known(np.broadcast_to(x, target).copy())]


@folder("Transpose")
@_foldable
def _transpose(ctx, x):
    perm = ctx.attr("perm")
    return [Known(np.transpose(x, perm))]


@folder("ReduceProd")
@_foldable
def _reduce_prod(ctx, x, axes=None):
    _numbers_only("ReduceProd", x)
    keepdims = bool(ctx.attr("keepdims", 1))
    ctx.attr("noop_with_empty_axes")
    axes = None if axes is None or len(axes) == 0 else tuple(int(a) for a in axes)
    return [Known(np.prod(x, axis=axes, keepdims=keepdims))]
