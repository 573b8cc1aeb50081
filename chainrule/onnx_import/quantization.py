"""Quantized models: QuantizeLinear and DequantizeLinear (QDQ graphs), DynamicQuantizeLinear,
and the integer matmuls MatMulInteger and QLinearMatMul.

Each is composed of the IR's casts, arithmetic, rounding and clips, so both backends compute
ONNX's numbers exactly: a quantization is x / scale rounded half to even, plus the zero point,
clipped to the integer dtype's range (or cast, saturating, to a float8 dtype); a
dequantization is (q - zero point) * scale in float32. Scales and zero points of
QuantizeLinear and DequantizeLinear are constants, per tensor, per axis or per block, expanded
at import time to broadcast against x.

A DequantizeLinear that reads a QuantizeLinear of the same float32 scale and zero point is one
fake_quantize op: the same numbers, and a model that trains takes the pair's gradient with the
straight-through estimator (docs/onnx.md, "Quantized models").
"""
from __future__ import annotations

import numpy as np

from ..ir import Value, compositions
from ..ir.types import (DTYPE_OF_ONNX, SATURATING_DTYPES, dtype_of_numpy, int_range, numpy_dtype,
                        promote_types)
from .context import Unsupported, converter
from .convolution import conv_by_attrs

INTEGER_QUANTIZED_DTYPES = ("u8", "i8", "u16", "i16", "u4", "i4", "u2", "i2")
QUANTIZED_DTYPES = INTEGER_QUANTIZED_DTYPES + ("f4e2m1",) + SATURATING_DTYPES
# DequantizeLinear reads int32 too: quantizers write biases so.
DEQUANTIZED_DTYPES = QUANTIZED_DTYPES + ("i32",)


def _expanded(array: np.ndarray, shape, axis: int, block_size: int) -> np.ndarray:
    """A scale or zero point as an array that broadcasts against x of `shape`: one value,
    one per index of `axis`, or one per block of `block_size` indices along it."""
    if array.ndim == 0 or (array.size == 1 and not block_size):
        return array.reshape(())
    if not block_size:
        if array.ndim != 1 or array.size != shape[axis]:
            raise Unsupported(f"a scale or zero point of shape {list(array.shape)} for axis "
                              f"{axis} of size {shape[axis]}")
        return array.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    if not isinstance(shape[axis], int):
        raise Unsupported(f"blocks of {block_size} along axis {axis} of size {shape[axis]} (the "
                          f"blocked axis's size must be known)")
    blocks = -(-shape[axis] // block_size)
    if array.ndim != len(shape) or array.shape[axis] != blocks:
        raise Unsupported(f"a blocked scale or zero point of shape {list(array.shape)} for x "
                          f"of shape {list(shape)}, blocks of {block_size} along axis {axis}")
    return np.repeat(array, block_size, axis=axis).take(range(shape[axis]), axis=axis)


class Quantization:
    """A node's scale and zero point (expanded against x; the zero point 0 when absent) and
    the quantized dtype."""

    def __init__(self, ctx, x: Value, default_dtype: str, allowed=QUANTIZED_DTYPES):
        shape = x.type.shape
        self.block_size = ctx.attr("block_size", 0)
        raw_scale = ctx.static(1, "the scale")
        # The axis means something only to a scale of more than one value.
        axis = ctx.attr("axis", 1)
        self.axis = ctx.axis(axis, x.type.rank) if raw_scale.size > 1 else 0
        self.scale = _expanded(raw_scale, shape, self.axis, self.block_size)
        self.scale_dtype = dtype_of_numpy(raw_scale.dtype)
        zero_point = ctx.static(2, "the zero point")
        self.dtype = default_dtype if zero_point is None else dtype_of_numpy(zero_point.dtype)
        if self.dtype not in allowed:
            raise Unsupported(f"quantized dtype {self.dtype}")
        zero_point = np.zeros((), np.float32) if zero_point is None else zero_point
        self.zero_point = _expanded(zero_point.astype(np.float32), shape, self.axis,
                                    self.block_size)


def _output_dtype(ctx, default: str | None) -> str | None:
    chosen = ctx.attr("output_dtype", 0)
    return DTYPE_OF_ONNX[chosen] if chosen else default


def quantize(ctx, x: Value, scale: Value, zero_point: Value, dtype: str, saturate=True):
    """x / scale rounded half to even, plus zero_point, clipped to `dtype`'s range, as
    `dtype` (scale and zero_point broadcast against x, in x's dtype)."""
    scaled = ctx.emit("div", x, scale)
    if dtype not in INTEGER_QUANTIZED_DTYPES:  # float8 and float4: the cast rounds, saturating where asked
        if dtype in SATURATING_DTYPES:
            return ctx.emit("cast", scaled, dtype=dtype, saturate=saturate)
        return ctx.emit("cast", ctx.emit("add", scaled, zero_point), dtype=dtype)
    shifted = ctx.emit("add", compositions.round_half_even(ctx, scaled), zero_point)
    lo, hi = int_range(dtype)
    return ctx.emit("cast", ctx.emit("clip", shifted, lo=float(lo), hi=float(hi)), dtype=dtype)


def _compute_dtype(ctx, x: Value, scale_dtype: str) -> str:
    precision = ctx.attr("precision", 0)
    if precision:
        return DTYPE_OF_ONNX[precision]
    # numpy's x / scale; at least f32 so that zero points up to 2**16 add exactly.
    return promote_types(x.type.dtype, scale_dtype, "f32")


@converter("QuantizeLinear")
def _quantize_linear(ctx):
    x = ctx.input(0)
    saturate = bool(ctx.attr("saturate", 1))
    if _computed_per_tensor(ctx):
        return [_quantize_by_values(ctx, x, saturate)]
    params = Quantization(ctx, x, _output_dtype(ctx, "u8"))
    dtype = _compute_dtype(ctx, x, params.scale_dtype)
    if x.type.dtype != dtype:
        x = ctx.emit("cast", x, dtype=dtype)
    scale = ctx.known_tensor(params.scale.astype(numpy_dtype(dtype)), ctx.node.input[1])
    zero_point = ctx.known_tensor(params.zero_point.astype(numpy_dtype(dtype)), "zero_point")
    return [quantize(ctx, x, scale, zero_point, params.dtype, saturate=saturate)]


def _computed_per_tensor(ctx) -> bool:
    """Whether the scale is one value computed at run time (DynamicQuantizeLinear's function
    body computes it from x)."""
    scale = ctx.type_of(1)
    return ctx.importer.static_value(ctx.node.input[1]) is None and \
        all(d == 1 for d in scale.shape)


def _quantize_by_values(ctx, x: Value, saturate: bool) -> Value:
    """QuantizeLinear by a scale and zero point of one value each, computed at run time."""
    ctx.attr("axis", 1)  # one scale for the whole tensor: no axis to read it along
    scale = ctx.input(1)
    zero_point = ctx.input(2) if ctx.has_input(2) else None
    dtype = zero_point.type.dtype if zero_point is not None else _output_dtype(ctx, "u8")
    if dtype not in QUANTIZED_DTYPES:
        raise Unsupported(f"quantized dtype {dtype}")
    compute = _compute_dtype(ctx, x, scale.type.dtype)

    def scalar(value):
        value = value if value.type.rank == 0 else ctx.emit("reshape", value, shape=())
        return value if value.type.dtype == compute else ctx.emit("cast", value, dtype=compute)
    x = x if x.type.dtype == compute else ctx.emit("cast", x, dtype=compute)
    shift = ctx.constant(0.0, compute) if zero_point is None else scalar(zero_point)
    return quantize(ctx, x, scalar(scale), shift, dtype, saturate=saturate)


def _quantize_pair(ctx, params: Quantization) -> Value | None:
    """The input of the QuantizeLinear whose output this DequantizeLinear reads, when that
    quantizes float32 to an integer dtype with the same scale, zero point and axis."""
    source = ctx.node.input[0]
    producer = next((node for node in ctx.importer.model.graph.node
                     if source in node.output), None)
    if producer is None or producer.op_type != "QuantizeLinear" or \
            params.dtype not in INTEGER_QUANTIZED_DTYPES:
        return None
    if _layout(producer) != _layout(ctx.node) or params.scale_dtype != "f32":
        return None
    for index in (1, 2):
        mine, theirs = (_static_array(ctx, node, index) for node in (ctx.node, producer))
        if mine is None or theirs is None or not np.array_equal(mine, theirs) or \
                mine.dtype != theirs.dtype:
            return None
    x = ctx.importer.tensor(producer.input[0], ctx)
    return x if x.type.dtype == "f32" else None


def _layout(node) -> tuple:
    attrs = {a.name: a.i for a in node.attribute if a.name in ("axis", "block_size")}
    return attrs.get("axis", 1), attrs.get("block_size", 0)


def _static_array(ctx, node, index: int) -> np.ndarray | None:
    if index >= len(node.input) or not node.input[index]:
        return np.zeros(())  # no zero point
    known = ctx.importer.static_value(node.input[index])
    return None if known is None or known.symbolic else known.array


@converter("DequantizeLinear")
def _dequantize_linear(ctx):
    x = ctx.input(0)
    params = Quantization(ctx, x, x.type.dtype, DEQUANTIZED_DTYPES)
    dtype = _output_dtype(ctx, params.scale_dtype)
    scale = ctx.known_tensor(params.scale.astype(np.float32), ctx.node.input[1])
    zero_point = ctx.known_tensor(params.zero_point, "zero_point")
    quantized_from = _quantize_pair(ctx, params) if dtype == "f32" else None
    if quantized_from is not None:
        lo, hi = int_range(params.dtype)
        return [ctx.emit("fake_quantize", quantized_from, scale, zero_point, lo=float(lo),
                         hi=float(hi))]
    centered = ctx.emit("cast", x, dtype="f32")
    if params.dtype not in SATURATING_DTYPES:  # a float8 zero point is 0
        centered = ctx.emit("sub", centered, zero_point)
    result = ctx.emit("mul", centered, scale)
    return [result if dtype == "f32" else ctx.emit("cast", result, dtype=dtype)]


@converter("DynamicQuantizeLinear")
def _dynamic_quantize_linear(ctx):
    """x to uint8 over the range [min(x, 0), max(x, 0)]: the scale is that range / 255, the
    zero point -min / scale rounded and saturated; the three outputs are y, scale, zero point."""
    x = ctx.input(0)
    zero = ctx.constant(0.0, x)
    lo = ctx.emit("minimum", ctx.emit("min", x), zero)
    hi = ctx.emit("maximum", ctx.emit("max", x), zero)
    scale = ctx.emit("div", ctx.emit("sub", hi, lo), ctx.constant(255.0, x))
    shifted = compositions.round_half_even(ctx, ctx.emit("div", ctx.emit("neg", lo), scale))
    zero_point = ctx.emit("clip", shifted, lo=0.0, hi=255.0)
    y = quantize(ctx, x, scale, zero_point, "u8")
    return [y, scale, ctx.emit("cast", zero_point, dtype="u8")]


def _centered(ctx, index: int, zero_point_index: int, dtype: str, row_axis: bool) -> Value:
    """Input `index` minus its zero point (absent: 0), cast to `dtype` (exact: an integer
    dtype, or a float that holds the 8-bit differences). A zero point of one value per row
    (per output channel of a convolution's weight) broadcasts along axis 0."""
    value = ctx.emit("cast", ctx.input(index), dtype=dtype)
    zero_point = ctx.static(zero_point_index, "the zero point")
    if zero_point is None or not zero_point.any():
        return value
    if row_axis and zero_point.size > 1:
        zero_point = zero_point.reshape((-1,) + (1,) * (value.type.rank - 1))
    zero_point = ctx.known_tensor(zero_point.astype(numpy_dtype(dtype)),
                                  ctx.node.input[zero_point_index])
    return ctx.emit("sub", value, zero_point)


@converter("MatMulInteger")
def _matmul_integer(ctx):
    """(a - a_zero_point) @ (b - b_zero_point) in int32."""
    a = _centered(ctx, 0, 2, "i32", row_axis=True)
    b = _centered(ctx, 1, 3, "i32", row_axis=False)
    return [ctx.emit("matmul", a, b)]


@converter("QLinearMatMul")
def _qlinear_matmul(ctx):
    """The integer product (a - a_zero_point) @ (b - b_zero_point), computed exactly in f64,
    times a_scale * b_scale / y_scale (in the scales' dtype, as ONNX's reference), quantized to
    y's zero point's dtype."""
    a = _centered(ctx, 0, 2, "f64", row_axis=True)
    b = _centered(ctx, 3, 5, "f64", row_axis=False)
    a_scale = ctx.static(1, "a_scale")
    if a_scale.size > 1:
        a_scale = a_scale.reshape(-1, 1)
    return [_requantized(ctx, ctx.emit("matmul", a, b), a_scale, ctx.static(4, "b_scale"),
                         y_scale_index=6)]


def _requantized(ctx, accumulated: Value, x_scale, w_scale, y_scale_index: int) -> Value:
    """An f64 integer accumulator times x_scale * w_scale / y_scale (computed in the scales'
    dtype, as ONNX's reference does), rounded, plus y's zero point, saturated to its dtype
    (absent: input 0's)."""
    factor = (x_scale * w_scale / ctx.static(y_scale_index, "y_scale")).astype(np.float64)
    scaled = ctx.emit("mul", accumulated, ctx.known_tensor(factor, "factor"))
    zero_point = ctx.static(y_scale_index + 1, "y_zero_point")
    dtype = dtype_of_numpy(zero_point.dtype) if zero_point is not None else ctx.type_of(0).dtype
    zero_point = np.zeros(()) if zero_point is None else zero_point.astype(np.float64)
    shifted = ctx.emit("add", compositions.round_half_even(ctx, scaled),
                       ctx.known_tensor(zero_point, "y_zero_point"))
    lo, hi = int_range(dtype)
    return ctx.emit("cast", ctx.emit("clip", shifted, lo=float(lo), hi=float(hi)), dtype=dtype)


def _exact_integer_conv(ctx, x: Value, w: Value) -> Value:
    """The convolution of integer-valued f32 tensors (8-bit values less their zero points,
    |v| <= 255) as f64, exactly where onnxruntime convolves only floats: w splits into 16 w_hi
    + w_lo with |w_hi| <= 16 and 0 <= w_lo < 16, so each product is below 2**12 and each f32
    sum exact while a window holds at most 4096 products (channels per group times kernel
    size); the two parts join in f64."""
    sixteen = ctx.constant(16.0, w)
    high = ctx.emit("floor", ctx.emit("div", w, sixteen))
    low = ctx.emit("sub", w, ctx.emit("mul", high, sixteen))
    high_part, low_part = (ctx.emit("cast", conv_by_attrs(ctx, x, part), dtype="f64")
                           for part in (high, low))
    return ctx.emit("add", ctx.emit("mul", high_part, ctx.constant(16.0, "f64")), low_part)


@converter("ConvInteger")
def _conv_integer(ctx):
    """The convolution of x - x_zero_point with w - w_zero_point, in int32."""
    x = _centered(ctx, 0, 2, "f32", row_axis=False)
    w = _centered(ctx, 1, 3, "f32", row_axis=True)
    return [ctx.emit("cast", _exact_integer_conv(ctx, x, w), dtype="i32")]


@converter("QLinearConv")
def _qlinear_conv(ctx):
    """ConvInteger's accumulator plus the int32 bias, requantized as QLinearMatMul's is."""
    x = _centered(ctx, 0, 2, "f32", row_axis=False)
    w = _centered(ctx, 3, 5, "f32", row_axis=True)
    accumulated = _exact_integer_conv(ctx, x, w)
    spread = (-1,) + (1,) * (accumulated.type.rank - 2)
    if ctx.has_input(8):
        bias = ctx.static(8, "the bias").astype(np.float64).reshape(spread)
        accumulated = ctx.emit("add", accumulated, ctx.known_tensor(bias, "bias"))
    w_scale = ctx.static(4, "w_scale")
    if w_scale.size > 1:
        w_scale = w_scale.reshape(spread)
    return [_requantized(ctx, accumulated, ctx.static(1, "x_scale"), w_scale,
                         y_scale_index=6)]
