"""Folding at import time: the nodes that compute shapes, indices and other constants.

Exporters compute a reshape's target from `Shape`, `Gather`, `Concat` and friends. chainrule
graphs have static attributes, so these chains are evaluated here, with numpy, on constants.
A symbolic dim rides along in an object array as a dim expression (`dims.Symbol("B")`, or a
`DimExpr` such as `B*4`), so `Mul(Shape(x)[0], 4)` folds to `B*4` and `[B*4, S, 4]` becomes a
reshape op's shape. What only the run can decide (`B == 1`) is not folded: the node is reported
with a `--dim` hint. A folder returns None when its inputs are not all known, or when its
result would have a symbolic size (`Range(0, S)`); the node is then converted to IR instead.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from onnx import TensorProto, helper

from ..ir import dims
from ..ir.limits import MAX_RANK
from ..ir.ops import rule_table
from ..ir.types import DTYPE_OF_ONNX, UNKNOWN, TensorType, cast_array, is_int
from .context import Known, Unsupported, dim_hint, tensor_array

# ONNX op type -> the function computing such a node's value at import time.
FOLDERS, folder = rule_table()
# Arrays larger than this are not folded: the node runs in the graph instead.
FOLD_LIMIT = 1 << 16


def shape_of(shape) -> np.ndarray:
    """A shape as a folded value: int64 when every dim is a number, else an object array of
    ints and dim expressions."""
    if all(isinstance(d, int) for d in shape):
        return np.array(shape, dtype=np.int64)
    return _dim_array([_arithmetic(d) for d in shape])


def substituted_shape(array: np.ndarray, replace: dict) -> np.ndarray:
    """A folded array of dims with symbols replaced (a fresh symbol an op tied to a dim)."""
    items = [_arithmetic(dims.substitute(dims.canonical(item), replace))
             for item in array.ravel()]
    return _dim_array(items).reshape(array.shape)


def _dim_array(items) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items  # a 1-D array of objects, whatever the items are
    return array


def _arithmetic(dim):
    """A canonical dim in the form numpy's object arithmetic computes with: a bare symbol's
    name becomes a `dims.Symbol`."""
    return dims.Symbol(dim) if isinstance(dim, str) else dim


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


def _within_rank(ctx, results: list[Known]) -> list[Known]:
    """Folded results of at most MAX_RANK dims, as every tensor has: numpy 1 stops at 32 dims
    and numpy 2 at 64, so a larger constant would import or not by numpy's version."""
    for known in results:
        if known.array.ndim > MAX_RANK:
            raise Unsupported(f"{ctx.node.op_type} folds to a constant of {known.array.ndim} "
                              f"dims; a tensor has at most {MAX_RANK}")
    return results


def _broadcast_shape(ctx, *shapes) -> tuple:
    """numpy's broadcast of `shapes`, refused past MAX_RANK dims (where numpy 2's broadcast
    raises a RuntimeError rather than a ValueError)."""
    rank = max(map(len, shapes))
    if rank > MAX_RANK:
        raise Unsupported(f"{ctx.node.op_type} broadcasts to {rank} dims; a tensor has at "
                          f"most {MAX_RANK}")
    return np.broadcast_shapes(*shapes)


def _is_symbolic(array) -> bool:
    return isinstance(array, np.ndarray) and array.dtype == object


def _tidy(array) -> Known:
    """Each dim in canonical form (`B*4//4` is `B`), and back to int64 once no symbolic dim is
    left."""
    array = Known(array).array
    if array.dtype != object:
        return Known(array)
    canonical = [_canonical_item(v) for v in array.ravel()]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in canonical):
        return Known(np.array(canonical, dtype=np.int64).reshape(array.shape))
    if all(isinstance(v, bool) for v in canonical):
        return Known(np.array(canonical, dtype=bool).reshape(array.shape))
    return Known(_dim_array([_arithmetic(v) for v in canonical]).reshape(array.shape))


def _canonical_item(item):
    if isinstance(item, (bool, np.bool_)):
        return bool(item)
    return dims.canonical(item)


# ---- the shape of a value ---------------------------------------------------------------------

def symbolic_shape(value_type: TensorType) -> np.ndarray:
    """A value's shape as a Known array: ints where sizes are known, dim expressions where
    symbolic."""
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
    size = dims.product(symbolic_shape(ctx.type_of(0)))
    return [_tidy(np.array(_arithmetic(size), dtype=object))]


@folder("Constant")
def _constant(ctx):
    for name in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if name in ctx.attributes:
            value = ctx.attr(name)
            if name == "value":
                return _within_rank(ctx, [Known(tensor_array(value, "Constant's value"))])
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
        results = function(ctx, *arrays)
        return None if results is None else _within_rank(ctx, results)
    return fold


def _any_symbolic(*arrays) -> bool:
    return any(a is not None and _is_symbolic(a) for a in arrays)


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
    if to not in DTYPE_OF_ONNX:  # a string or complex constant: nothing reads it
        raise Unsupported(f"Cast to {TensorProto.DataType.Name(to)}")
    saturate = bool(ctx.attr("saturate", 1))
    if _is_symbolic(x):
        # Dims stay dims as integers; as floats (an attention scale) they are computed at run
        # time, by the Cast converter.
        return [Known(x)] if is_int(DTYPE_OF_ONNX[to]) else None
    return [Known(cast_array(x, DTYPE_OF_ONNX[to], saturate))]


@folder("CastLike")
def _cast_like(ctx):
    """Only the value needs to be known: the other input gives just its dtype."""
    known = ctx.known(0)
    if known is None:
        return None
    saturate = bool(ctx.attr("saturate", 1))
    dtype = ctx.type_of(1).dtype
    if known.symbolic:
        return [known] if is_int(dtype) else None
    return [Known(cast_array(known.array, dtype, saturate))]


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
    axes = np.ravel(axes)  # onnx's own Loop test gives one axis as a 0-d tensor
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
    if _any_symbolic(starts, ends, axes, steps):
        return None  # a slice of symbolic size: the slice op, with dim bounds
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
    if _any_symbolic(shape):
        return None  # a result of symbolic size: the reshape op
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
    if _any_symbolic(start, limit, delta):
        return None  # a symbolic count: the arange op
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
    """A numpy function applied to known arrays; where dims are symbolic, element by element
    with the dims' arithmetic and what can be proven about them (`B*4`, `S+1 > S`)."""
    @_foldable
    def fold(ctx, *arrays):
        if ctx.node.op_type in LOGICAL and any(np.asarray(a).dtype != bool for a in arrays):
            # numpy would take numbers (and dims) as truth values; ONNX's T here is bool
            raise Unsupported(f"{ctx.node.op_type} of numbers: its inputs must be bool")
        shape = _broadcast_shape(ctx, *(np.shape(a) for a in arrays))
        if _too_large(shape):
            return None
        if not _any_symbolic(*arrays):
            return [Known(np.asarray(function(*arrays)))]
        if any(np.asarray(a).dtype.kind == "f" for a in arrays):
            return None  # dims among floats: computed at run time
        columns = [np.broadcast_to(np.asarray(a, dtype=object), shape).ravel() for a in arrays]
        results = [_symbolic_op(ctx.node.op_type, function, *map(_canonical_item, items))
                   for items in zip(*columns, strict=True)]
        result = np.empty(len(results), dtype=object)
        result[:] = results
        return [_tidy(result.reshape(shape))]
    return fold


def _symbolic_op(op_type, function, *items):
    """One element of an elementwise op where a dim is symbolic; Unsupported, with a --dim
    hint, where the answer depends on the dims' sizes (`B == 1`)."""
    if all(isinstance(i, int) for i in items):
        return np.asarray(function(*(np.int64(i) for i in items))).item()
    result = SYMBOLIC[op_type](*items) if op_type in SYMBOLIC else None
    if result is None:
        shown = ", ".join(map(str, items))
        raise Unsupported(f"{op_type} of the dims {shown} cannot be decided when the model is "
                          f"imported", hint=dim_hint(items))
    return result


def _above(a, b) -> bool:
    """Whether a > b for every size of the symbols: dims are integers, so a >= b + 1."""
    return dims.at_least(a, dims.add(b, 1))


def _decided(true: bool, false: bool) -> bool | None:
    return True if true else False if false else None


def _equal(a, b):
    return _decided(a == b, dims.provably_different(a, b))


def _less(a, b):
    return _decided(_above(b, a), dims.at_least(a, b))


def _less_or_equal(a, b):
    return _decided(dims.at_least(b, a), _above(a, b))


def _larger(a, b):
    return a if dims.at_least(a, b) else b if dims.at_least(b, a) else None


def _smaller(a, b):
    return b if dims.at_least(a, b) else a if dims.at_least(b, a) else None


def _divisible(a, b) -> bool:
    """Whether a // b and a % b are ONNX's (truncating) and defined: a >= 0 and b >= 1."""
    return dims.is_nonnegative(a) and dims.at_least(b, 1)


def _floor_divide(a, b):
    """ONNX's integer Div truncates; on dims, which are sizes (>= 0), that is floor division."""
    return dims.floordiv(a, b) if _divisible(a, b) else None


def _remainder(a, b):
    return dims.mod(a, b) if _divisible(a, b) else None


def _where(condition, a, b):
    return (a if condition else b) if isinstance(condition, bool) else None


def _absolute(a):
    return a if dims.is_nonnegative(a) else \
        dims.neg(a) if dims.is_nonnegative(dims.neg(a)) else None


def _reduce(pick):
    def reduce(*items):
        result = items[0]
        for item in items[1:]:
            result = None if result is None else pick(result, item)
        return result
    return reduce


# Elementwise ops on dims: each returns None where only the run can decide.
SYMBOLIC = {"Add": dims.add, "Sub": dims.sub, "Mul": dims.mul, "Div": _floor_divide,
            "Mod": _remainder, "Neg": dims.neg, "Abs": _absolute,
            "Equal": _equal, "Less": _less, "LessOrEqual": _less_or_equal,
            "Greater": lambda a, b: _less(b, a),
            "GreaterOrEqual": lambda a, b: _less_or_equal(b, a),
            "Where": _where,
            "Max": _reduce(_larger), "Min": _reduce(_smaller)}


def _divide(a, b):
    if np.issubdtype(np.asarray(a).dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.asarray(a).dtype)  # ONNX truncates
    return np.true_divide(a, b)


LOGICAL = {"And", "Or", "Xor", "Not"}
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


@folder("Pow")
@_foldable
def _power(ctx, base, exponent):
    """A float power of numbers (the square root of a ViT's position count, which
    interpolate_pos_encoding computes); integer powers and dims run in the graph."""
    if _any_symbolic(base, exponent) or np.asarray(base).dtype.kind != "f":
        return None
    return [Known(np.power(base, exponent).astype(np.asarray(base).dtype))]


@folder("Mod")
def _mod(ctx):
    """np.mod (or np.fmod) on numbers; on dims, which are >= 0, the two agree."""
    function = np.fmod if ctx.attr("fmod", 0) else np.mod

    def modulo(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):  # x mod 0: ONNX leaves it undefined
            return function(a, b)
    return _elementwise(modulo)(ctx)


@folder("Expand")
@_foldable
def _expand(ctx, x, shape):
    if _any_symbolic(shape):
        return None  # a result of symbolic size: broadcast_to
    target = _broadcast_shape(ctx, x.shape, tuple(int(d) for d in shape))
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
    keepdims = bool(ctx.attr("keepdims", 1))
    ctx.attr("noop_with_empty_axes")
    axes = None if axes is None or len(axes) == 0 else tuple(int(a) for a in axes)
    return [_tidy(np.prod(x, axis=axes, keepdims=keepdims))]
