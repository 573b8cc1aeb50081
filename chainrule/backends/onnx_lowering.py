"""ONNX lowerings, one per op: each writes standard (default-domain) ONNX nodes for one IR node.

A lowering is called as lower(emitter, node, out, *input_names) and must define `out`. An op
whose registry entry names its ONNX op (`OpDef.onnx`) is lowered to that node, at the end of
this file, unless a lowering here composes it instead. Only ops that onnxruntime's CPU provider
runs in both float32 and float64 are used; where it lacks one (float64 Gelu or Erf, a stable
float64 Softplus, a float64 alpha for LeakyRelu) the lowering composes it. Convolutions and
average pooling are the exception: float32 graphs get Conv, ConvTranspose and AveragePool, and
float64 graphs, which onnxruntime has no kernels of those for, get their compositions. The
other dtypes (bf16, the small integers) use the same ops: where onnxruntime has no kernel of
one at a dtype, the export's last step (onnx_widening.py) computes it in a wider dtype.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from onnx import helper

from ..ir import ChainruleError, Graph, GraphBuilder, compositions, dims, grid_sampling
from ..ir.ops import GELU_CUBIC, GELU_SCALE, OPS, rule_table
from ..ir.shapes import (TO_END, broadcast_shapes, conv_output_dim, normalize_axes, pool_end_pad,
                         pool_window_sizes)
from ..ir.types import (ONNX_DTYPES, SATURATING_DTYPES, int_range, is_float, is_int,
                        numpy_dtype)
from . import erf_approximation as cody

LOWERINGS, lowering = rule_table()


def _direct(onnx_op):
    def lower(em, node, out, *inputs):
        em.add(onnx_op, inputs, out)
    return lower


@lowering("where")
def _where(em, node, out, cond, a, b):
    if _dtype(node) == "bool":  # onnxruntime has no boolean Where: (c and a) or (not c and b)
        em.add("Or", [em.add("And", [cond, a]), em.add("And", [em.add("Not", [cond]), b])], out)
        return
    em.add("Where", [cond, a, b], out)


def _ordering(onnx_op: str):
    def lower(em, node, out, a, b):
        if node.inputs[0].type.dtype == "bool":  # ONNX orders numbers only: False < True
            a, b = (em.add("Cast", [v], to=ONNX_DTYPES["i64"]) for v in (a, b))
        em.add(onnx_op, [a, b], out)
    return lower


for _op in ("less", "less_equal", "greater", "greater_equal"):
    LOWERINGS[_op] = _ordering(OPS[_op].onnx)


def _dtype(node) -> str:
    return node.output.type.dtype


def _rank(node) -> int:
    return node.output.type.rank


@lowering("leaky_relu")
def _leaky_relu(em, node, out, x):
    # Composed: LeakyRelu's alpha is a float32 attribute, which float64 results would notice.
    dtype = _dtype(node)
    positive = em.add("Greater", [x, em.scalar(0.0, dtype)])
    em.add("Where", [positive, x, em.add("Mul", [x, em.scalar(node.attrs["alpha"], dtype)])], out)


@lowering("gelu")
def _gelu(em, node, out, x):
    def scalar(value):
        return em.scalar(value, _dtype(node))
    cube = em.add("Mul", [x, em.add("Mul", [x, x])])
    inner = em.add("Mul", [scalar(GELU_SCALE),
                           em.add("Add", [x, em.add("Mul", [scalar(GELU_CUBIC), cube])])])
    gate = em.add("Add", [scalar(1.0), em.add("Tanh", [inner])])
    em.add("Mul", [em.add("Mul", [scalar(0.5), x]), gate], out)


@lowering("softplus")
def _softplus(em, node, out, x):
    # relu(x) + log(1 + exp(-|x|)) never overflows.
    decay = em.add("Exp", [em.add("Neg", [em.add("Abs", [x])])])
    tail = em.add("Log", [em.add("Add", [em.scalar(1.0, _dtype(node)), decay])])
    em.add("Add", [em.add("Relu", [x]), tail], out)


@lowering("log1p")
def _log1p(em, node, out, x):
    em.add("Log", [em.add("Add", [em.scalar(1.0, _dtype(node)), x])], out)


@lowering("stop_gradient")
def _stop_gradient(em, node, out, x):
    em.add("Identity", [x], out)


@lowering("erf")
def _erf(em, node, out, x):
    dtype = _dtype(node)
    if dtype != "f64":  # f16 and bf16 computed in f32 (onnx_widening.py), rounded once
        # onnxruntime 1.20 gives erf(NaN) = 1 (1.32 gives NaN): a NaN passes through as itself.
        em.add("Where", [em.add("IsNaN", [x]), x, em.add("Erf", [x])], out)
        return
    # onnxruntime has no float64 Erf: Cody's approximations, as the numpy kernel evaluates them.
    def rational(fraction, z):
        numerator, denominator = (_polynomial(em, coefficients, z, dtype)
                                  for coefficients in fraction)
        return em.add("Div", [numerator, denominator])
    y = em.add("Abs", [x])
    square = em.add("Mul", [y, y])
    near = em.add("Mul", [x, rational(cody.SMALL, square)])
    decay = em.add("Exp", [em.add("Neg", [square])])
    z = em.add("Reciprocal", [square])
    tail = em.add("Sub", [em.scalar(cody.INV_SQRT_PI, dtype),
                          em.add("Mul", [z, rational(cody.LARGE, z)])])
    erfc = em.add("Where", [em.add("LessOrEqual", [y, em.scalar(cody.MIDDLE_UP_TO, dtype)]),
                            em.add("Mul", [decay, rational(cody.MIDDLE, y)]),
                            em.add("Div", [em.add("Mul", [decay, tail]), y])])
    beyond = em.add("Mul", [em.add("Sign", [x]), em.add("Sub", [em.scalar(1.0, dtype), erfc])])
    em.add("Where", [em.add("LessOrEqual", [y, em.scalar(cody.SMALL_UP_TO, dtype)]), near,
                     beyond], out)


def _polynomial(em, coefficients, z, dtype) -> str:
    """The polynomial in z with `coefficients` from the highest power down, by Horner's rule."""
    result = em.scalar(coefficients[0], dtype)
    for coefficient in coefficients[1:]:
        result = em.add("Add", [em.add("Mul", [result, z]), em.scalar(coefficient, dtype)])
    return result


# ---- the trigonometric and hyperbolic ops. onnxruntime runs Tan, Asin ... Atanh in float32
# only: other dtypes get compositions of Sin, Cos, Exp, Log and Sqrt, exact to a few roundings.

class _Composer:
    """Writes one composition: ONNX nodes over values of one dtype."""

    def __init__(self, em, dtype):
        self.em, self.dtype = em, dtype

    def __call__(self, op_type, *inputs, **attrs) -> str:
        return self.em.add(op_type, list(inputs), **attrs)

    def number(self, value) -> str:
        return self.em.scalar(value, self.dtype)

    def one_minus(self, x) -> str:
        return self("Sub", self.number(1.0), x)

    def one_plus(self, x) -> str:
        return self("Add", self.number(1.0), x)


def _arctan(c, x):
    """atan x: float32's Atan of x (or of 1/x past 1, where atan x = sign(x)·π/2 − atan 1/x),
    refined by two Newton steps on tan y = t, y ← y − (sin y − t cos y) cos y, each of which
    squares float32's relative error."""
    beyond_one = c("Greater", c("Abs", x), c.number(1.0))
    t = c("Where", beyond_one, c("Div", c.number(1.0), x), x)
    y = c("Cast", c("Atan", c("Cast", t, to=ONNX_DTYPES["f32"])), to=ONNX_DTYPES[c.dtype])
    for _ in range(2):
        sine, cosine = c("Sin", y), c("Cos", y)
        y = c("Sub", y, c("Mul", c("Sub", sine, c("Mul", t, cosine)), cosine))
    folded = c("Sub", c("Mul", c("Sign", x), c.number(math.pi / 2)), y)
    return c("Where", beyond_one, folded, y)


def _arcsin(c, x):
    # 2 atan(x / (1 + √(1 − x²))) holds up to |x| = 1, where asin x = ±π/2.
    root = c("Sqrt", c.one_minus(c("Mul", x, x)))
    return c("Mul", c.number(2.0), _arctan(c, c("Div", x, c.one_plus(root))))


def _arccos(c, x):
    # 2 atan √((1 − x) / (1 + x)): π at x = −1, where the quotient is infinite.
    return c("Mul", c.number(2.0), _arctan(c, c("Sqrt", c("Div", c.one_minus(x), c.one_plus(x)))))


def _sinh(c, x):
    # (eˣ − e⁻ˣ)/2 cancels below |x| = 1; there 2t/(1 − t²), t = tanh(x/2), keeps the digits.
    t = c("Tanh", c("Mul", c.number(0.5), x))
    near_zero = c("Div", c("Mul", c.number(2.0), t), c.one_minus(c("Mul", t, t)))
    wide = c("Sub", *_half_exponentials(c, x))
    return c("Where", c("Less", c("Abs", x), c.number(1.0)), near_zero, wide)


def _half_exponentials(c, x):
    """eˣ/2 and e⁻ˣ/2 as e^(±x − ln 2), which overflow only where sinh and cosh do (not at
    x = 710, where eˣ does)."""
    return (c("Exp", c("Sub", x, c.number(math.log(2.0)))),
            c("Exp", c("Sub", c("Neg", x), c.number(math.log(2.0)))))


def _cosh(c, x):
    return c("Add", *_half_exponentials(c, x))


def _log_of_one_plus(c, u):
    """ln(1 + u) to full precision for small u: ln w · u / (w − 1) with w = 1 + u rounded,
    whose rounding error the quotient cancels (Goldberg's trick); u itself where w is 1, and
    ln w where u is infinite."""
    w = c.one_plus(u)
    rounded = c("Sub", w, c.number(1.0))
    unchanged = c("Equal", rounded, c.number(0.0))
    correction = c("Div", u, c("Where", unchanged, c.number(1.0), rounded))
    correction = c("Where", c("IsInf", u), c.number(1.0), correction)
    return c("Where", unchanged, u, c("Mul", c("Log", w), correction))


def _beyond_squares(c, magnitude, near):
    """`near` where `magnitude` is at most 1e8, ln 2 + ln(magnitude) past it: there
    √(x² ± 1) is |x| to the last bit, and x² may overflow. In f16, whose x² overflows from
    256 on (and 1e8 is not a number), the switch is at 128, past which 1/x² is below f16's
    last bit too."""
    far = c("Add", c.number(math.log(2.0)), c("Log", magnitude))
    switch = 128.0 if c.dtype == "f16" else 1e8
    return c("Where", c("Greater", magnitude, c.number(switch)), far, near)


def _arcsinh(c, x):
    # sign(x) ln(1 + |x| + x²/(1 + √(x² + 1))), odd by construction.
    magnitude, square = c("Abs", x), c("Mul", x, x)
    step = c("Add", magnitude, c("Div", square, c.one_plus(c("Sqrt", c.one_plus(square)))))
    return c("Mul", c("Sign", x), _beyond_squares(c, magnitude, _log_of_one_plus(c, step)))


def _arccosh(c, x):
    # ln(1 + (x − 1) + √((x − 1)(x + 1))): exact near x = 1, where x² − 1 is not.
    below = c("Sub", x, c.number(1.0))
    root = c("Sqrt", c("Mul", below, c.one_plus(x)))
    return _beyond_squares(c, x, _log_of_one_plus(c, c("Add", below, root)))


def _arctanh(c, x):
    # ln((1 + x)/(1 − x))/2 = ln(1 + 2x/(1 − x))/2, the second exact near 0.
    return c("Mul", c.number(0.5), _log_of_one_plus(c, c("Div", c("Add", x, x), c.one_minus(x))))


TRIGONOMETRIC_COMPOSITIONS = {
    "tan": lambda c, x: c("Div", c("Sin", x), c("Cos", x)),
    "asin": _arcsin, "acos": _arccos, "atan": _arctan,
    "sinh": _sinh, "cosh": _cosh,
    "asinh": _arcsinh, "acosh": _arccosh, "atanh": _arctanh,
}


def _native_in_float32(compose):
    def lower(em, node, out, x):
        if _dtype(node) == "f32":
            em.add(OPS[node.op].onnx, [x], out)
        else:
            em.add("Identity", [compose(_Composer(em, _dtype(node)), x)], out)
    return lower


for _name, _compose in TRIGONOMETRIC_COMPOSITIONS.items():
    LOWERINGS[_name] = _native_in_float32(_compose)


@lowering("clip")
def _clip(em, node, out, x):
    bounds = [em.scalar(node.attrs[bound], _dtype(node)) for bound in ("lo", "hi")]
    em.add("Clip", [x, *bounds], out)


@lowering("fake_quantize")
def _fake_quantize(em, node, out, x, scale, zero_point):
    # Round is ONNX's half-to-even rounding; the clip bounds are integers, exact in any float.
    bounds = [em.scalar(node.attrs[bound], _dtype(node)) for bound in ("lo", "hi")]
    shifted = em.add("Add", [em.add("Round", [em.add("Div", [x, scale])]), zero_point])
    clipped = em.add("Clip", [shifted, *bounds])
    em.add("Mul", [em.add("Sub", [clipped, zero_point]), scale], out)


@lowering("not_equal")
def _not_equal(em, node, out, a, b):
    em.add("Not", [em.add("Equal", [a, b])], out)


@lowering("cast")
def _cast(em, node, out, x):
    dtype = node.attrs["dtype"]
    # Cast's saturate attribute (opset 19 on) is read only by casts to float8.
    saturate = {} if node.attrs["saturate"] or dtype not in SATURATING_DTYPES else {"saturate": 0}
    source = node.inputs[0].type.dtype
    if dtype in ("i4", "u4", "i2", "u2") and is_float(source):
        x = _zero_beyond(em, x, source, *int_range(dtype))
    em.add("Cast", [x], out, to=ONNX_DTYPES[dtype], **saturate)


def _zero_beyond(em, x, dtype, lo, hi):
    """x truncated toward zero where that lies in [lo, hi], else 0 (NaN too), as the numpy
    kernel casts, where onnxruntime's Cast rounds and wraps around. ONNX leaves a cast beyond
    the range undefined; the backends agree."""
    zero = em.scalar(0, dtype)
    truncated = em.add("Where", [em.add("Less", [x, zero]), em.add("Ceil", [x]),
                                 em.add("Floor", [x])])
    inside = em.add("And", [em.add("GreaterOrEqual", [truncated, em.scalar(lo, dtype)]),
                            em.add("LessOrEqual", [truncated, em.scalar(hi, dtype)])])
    return em.add("Where", [inside, truncated, zero])


@lowering("constant")
def _constant(em, node, out):
    array = np.asarray(node.attrs["value"], dtype=numpy_dtype(node.attrs["dtype"]))
    em.add("Constant", [], out, value=em.tensor(array, out))


@lowering("arange")
def _arange(em, node, out):
    n = node.attrs["n"]
    limit = em.ints(n, "limit") if isinstance(n, int) else \
        em.add("Squeeze", [em.size(n), em.ints([0], "axes")])
    em.add("Range", [em.ints(0, "start"), limit, em.ints(1, "delta")], out)


@lowering("transpose")
def _transpose(em, node, out, x):
    if not node.attrs["perm"]:  # a scalar: ONNX cannot type an empty perm attribute
        em.add("Identity", [x], out)
        return
    em.add("Transpose", [x], out, perm=list(node.attrs["perm"]))


@lowering("sum")
def _sum(em, node, out, x):
    em.reduce("ReduceSum", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("mean")
def _mean(em, node, out, x):
    x_type = node.inputs[0].type
    _reduce_mean(em, x, x_type.shape, x_type.dtype, node.attrs["axes"], node.attrs["keepdims"],
                 out)


def _reduce_mean(em, x, shape, dtype, axes, keepdims, out=None):
    """ReduceMean where the reduced set is never empty. ONNX leaves the mean of nothing
    undefined and onnxruntime gives 0; numpy gives NaN. So where a reduced dim may be 0 (a 0,
    or a symbol that may be bound to 0 at run time) the mean is the sum over the count, and
    0 / 0 gives NaN as numpy does."""
    reduced = [shape[a] for a in normalize_axes(axes, len(shape))]
    if all(isinstance(d, int) and d > 0 for d in reduced):
        return em.reduce("ReduceMean", x, axes, keepdims, out)
    total = em.reduce("ReduceSum", x, axes, keepdims)
    count = em.add("Cast", [_count(em, x, axes)], to=ONNX_DTYPES[dtype])
    return em.add("Div", [total, count], out)


@lowering("prod")
def _prod(em, node, out, x):
    em.reduce("ReduceProd", x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("cumsum")
def _cumsum(em, node, out, x):
    em.add("CumSum", [x, em.ints(node.attrs["axis"], "axis")], out)


# ONNX's CumProd and BitCast came with opset 26.
CUMPROD_SINCE = BITCAST_SINCE = 26


@lowering("cumprod")
def _cumprod(em, node, out, x):
    """CumProd, or before opset 26 the running products written out, one Mul per element
    along an axis of known length."""
    axis = node.attrs["axis"]
    if em.opset >= CUMPROD_SINCE:
        em.add("CumProd", [x, em.ints(axis, "axis")], out)
        return
    length = node.inputs[0].type.shape[axis]
    if not isinstance(length, int) or length == 0:
        raise ChainruleError(f"cumprod along an axis of size {length} needs ONNX's CumProd, "
                             f"opset {CUMPROD_SINCE} or newer, not {em.opset}", node.loc)
    running = [em.add("Slice", [x, em.ints([0]), em.ints([1]), em.ints([axis])])]
    for index in range(1, length):
        element = em.add("Slice", [x, em.ints([index]), em.ints([index + 1]), em.ints([axis])])
        running.append(em.add("Mul", [running[-1], element]))
    em.add("Concat", running, out, axis=axis)


@lowering("bitcast")
def _bitcast(em, node, out, x):
    dtype = node.attrs["dtype"]
    if em.opset < BITCAST_SINCE and is_int(dtype) and not is_float(node.inputs[0].type.dtype):
        # Between integers (and bools) of one width, Cast wraps around: the bits stay.
        em.add("Cast", [x], out, to=ONNX_DTYPES[dtype])
        return
    if em.opset < BITCAST_SINCE:  # no composition of older ops reads a float's bits
        raise ChainruleError(f"the ONNX form of bitcast (BitCast) needs opset {BITCAST_SINCE} "
                             f"or newer, not {em.opset}", node.loc)
    em.add("BitCast", [x], out, to=ONNX_DTYPES[node.attrs["dtype"]])


@lowering("int_mod")
def _int_mod(em, node, out, a, b):
    em.add("Mod", [a, b], out, fmod=int(node.attrs["fmod"]))


@lowering("left_shift", "right_shift")
def _shift(em, node, out, x, shift):
    """BitShift where the amount lies in [0, bits), which is all that ONNX defines before
    opset 28; elsewhere the whole width shifted out: 0, or -1 for a negative x shifted right.
    BitShift takes unsigned integers only before opset 28: a signed x is shifted as its
    two's-complement bits, and a negative one shifted right as ~(~x >> shift), which fills
    with its sign bit (~ as a xor with the all-ones mask of the negatives)."""
    dtype = _dtype(node)
    zero = em.scalar(0, dtype)
    outside = em.add("Or", [em.add("Less", [shift, zero]), em.add(
        "GreaterOrEqual", [shift, em.scalar(numpy_dtype(dtype).itemsize * 8, dtype)])])
    within = em.add("Where", [outside, zero, shift])
    direction = "LEFT" if node.op == "left_shift" else "RIGHT"
    if not dtype.startswith("i"):
        em.add("Where", [outside, zero, em.add("BitShift", [x, within], direction=direction)],
               out)
        return

    def unsigned(value):
        return em.add("Cast", [value], to=ONNX_DTYPES["u" + dtype[1:]])
    filled, bits = zero, unsigned(x)
    if node.op == "right_shift":
        filled = em.add("Where", [em.add("Less", [x, zero]), em.scalar(-1, dtype), zero])
        bits = em.add("BitwiseXor", [bits, unsigned(filled)])
    shifted = em.add("BitShift", [bits, unsigned(within)], direction=direction)
    if node.op == "right_shift":
        shifted = em.add("BitwiseXor", [shifted, unsigned(filled)])
    em.add("Where", [outside, filled, em.add("Cast", [shifted], to=ONNX_DTYPES[dtype])], out)


@lowering("max", "min", "logsumexp")
def _extreme(em, node, out, x):
    onnx_op = {"max": "ReduceMax", "min": "ReduceMin", "logsumexp": "ReduceLogSumExp"}[node.op]
    em.reduce(onnx_op, x, node.attrs["axes"], node.attrs["keepdims"], out)


@lowering("argmax", "argmin")
def _arg_extreme(em, node, out, x):
    # ONNX's default select_last_index=0 picks the first of tied positions, as numpy does.
    onnx_op = {"argmax": "ArgMax", "argmin": "ArgMin"}[node.op]
    em.add(onnx_op, [x], out, axis=node.attrs["axis"], keepdims=int(node.attrs["keepdims"]))


@lowering("softmax")
def _softmax(em, node, out, x):
    em.add("Softmax", [x], out, axis=node.attrs["axis"])


@lowering("log_softmax")
def _log_softmax(em, node, out, x):
    em.add("LogSoftmax", [x], out, axis=node.attrs["axis"])


@lowering("cross_entropy")
def _cross_entropy(em, node, out, logits, labels):
    _nll(em, node, out, em.add("LogSoftmax", [logits], axis=-1), labels)


@lowering("nll")
def _nll(em, node, out, log_probabilities, labels):
    # A non-negative axis: onnx.reference's GatherElements mishandles axis=-1.
    last = node.inputs[0].type.rank - 1
    picked = em.add("GatherElements", [log_probabilities, em.unsqueeze(labels, [-1])], axis=last)
    picked = _nan_unless_labels_valid(em, node, picked, labels, node.inputs[0].type.shape[-1])
    mean = _reduce_mean(em, picked, node.inputs[1].type.shape, node.output.type.dtype, None,
                        False)
    em.add("Neg", [mean], out)


def _nan_unless_labels_valid(em, node, x, labels, classes):
    """x, with NaN where a label lies outside [0, classes). Inputs are checked before any
    backend runs, but a label computed inside the model can only be caught here, and ONNX has
    no op to refuse it: onnxruntime would take -1 as the last class, or write a zero one-hot
    row. NaN makes the result non-finite, which run warns of and training stops at."""
    if not isinstance(classes, int):
        return x
    valid = em.add("And", [em.add("GreaterOrEqual", [labels, em.ints(0)]),
                           em.add("Less", [labels, em.ints(classes)])])
    nan = em.scalar(float("nan"), node.output.type.dtype)
    return em.add("Where", [em.unsqueeze(valid, [-1]), x, nan])


@lowering("mse")
def _mse(em, node, out, pred, target):
    diff = em.add("Sub", [pred, target])
    shape = broadcast_shapes(node.inputs[0].type.shape, node.inputs[1].type.shape)
    _reduce_mean(em, em.add("Mul", [diff, diff]), shape, node.output.type.dtype, None, False,
                 out)


@lowering("one_hot")
def _one_hot(em, node, out, labels):
    # Equal against a constant range, then Cast: onnxruntime's OneHot lacks double outputs.
    classes = em.ints(range(node.attrs["depth"]), "classes")
    matches = em.add("Equal", [em.unsqueeze(labels, [-1]), classes])
    hot = em.add("Cast", [matches], to=ONNX_DTYPES[node.attrs["dtype"]])
    em.add("Identity", [_nan_unless_labels_valid(em, node, hot, labels, node.attrs["depth"])],
           out)


@lowering("broadcast_like")
def _broadcast_like(em, node, out, x, like):
    em.add("Expand", [x, em.add("Shape", [like])], out)


@lowering("broadcast_to")
def _broadcast_to(em, node, out, x):
    # Expand broadcasts both ways, so a 1 keeps the operand's dim where the target says -1.
    shape = [1 if d == -1 else d for d in node.attrs["shape"]]
    em.add("Expand", [x, em.dims(shape)], out)


@lowering("fill")
def _fill(em, node, out, value):
    em.add("Expand", [value, em.dims(node.attrs["shape"])], out)


ALLOWZERO_SINCE = 14  # Reshape's allowzero


@lowering("reshape")
def _reshape(em, node, out, x):
    # ONNX Reshape shares the IR's meaning of 0 (copy the input dim) and -1. onnxruntime
    # refuses a -1 when x holds nothing (a batch of 0 rows flattened), as the size it stands
    # for is then ambiguous: a -1 the type rule sized is written as that size.
    result = node.output.type.shape
    if 0 in result and all(isinstance(d, int) for d in result):
        _nothing(em, node, out, em.ints(list(result), "shape"))
        return
    shape = [size if d == -1 and isinstance(size, int) and size > 0 else d
             for d, size in zip(node.attrs["shape"], result, strict=True)]
    em.add("Reshape", [x, em.dims(shape)], out)


@lowering("reshape_like")
def _reshape_like(em, node, out, x, like):
    # like's shape holds sizes only: a 0 in it is an empty axis, which Reshape takes as such
    # with allowzero=1; without it, 0 would copy x's dim.
    shape = em.add("Shape", [like])
    if em.opset >= ALLOWZERO_SINCE:
        em.add("Reshape", [x, shape], out, allowzero=1)
    elif 0 in node.output.type.shape:
        _nothing(em, node, out, shape)
    else:
        em.add("Reshape", [x, shape], out)


def _nothing(em, node, out, shape):
    """An empty result of `shape`, where a Reshape's 0 would copy a dim of x: x holds
    nothing, and so do zeros of that shape."""
    em.add("Expand", [em.scalar(0.0, _dtype(node)), shape], out)


@lowering("unsqueeze")
def _unsqueeze(em, node, out, x):
    em.unsqueeze(x, list(node.attrs["axes"]), out)


@lowering("squeeze")
def _squeeze(em, node, out, x):
    em.add("Squeeze", [x, em.ints(node.attrs["axes"], "axes")], out)


@lowering("concat")
def _concat(em, node, out, *parts):
    em.add("Concat", parts, out, axis=node.attrs["axis"])


@lowering("unconcat")
def _unconcat(em, node, out, whole, *parts):
    # Offsets come from the parts' shapes at run time, so symbolic sizes need no special case.
    axis = node.attrs["axis"] % _rank(node)
    sizes = [em.dim(part, axis) for part in parts[:node.attrs["index"] + 1]]
    start = em.ints([0], "start")
    for size in sizes[:-1]:
        start = em.add("Add", [start, size])
    end = em.add("Add", [start, sizes[-1]])
    em.add("Slice", [whole, start, end, em.ints([axis], "axes")], out)


def _window(em, node) -> list[str]:
    """Slice's starts, ends, axes and steps inputs from the node's attrs."""
    return [em.dims(node.attrs[name], name) for name in ("starts", "ends", "axes", "steps")]


@lowering("slice")
def _slice(em, node, out, x):
    em.add("Slice", [x, *_window(em, node)], out)


@lowering("unslice")
def _unslice(em, node, out, sliced, like):
    # Slice the flat positions of `like` with the same window, then scatter into zeros there.
    shape = em.add("Shape", [like])
    count = em.add("Size", [like])
    positions = em.add("Range", [em.ints(0, "zero"), count, em.ints(1, "one")])
    picked = em.add("Slice", [em.add("Reshape", [positions, shape]), *_window(em, node)])
    flat = em.ints([-1], "flat")
    zeros = em.add("Reshape", [em.add("Expand", [em.scalar(0.0, _dtype(node)), shape]), flat])
    scattered = em.add("ScatterElements", [zeros, em.add("Reshape", [picked, flat]),
                                           em.add("Reshape", [sliced, flat])], axis=0)
    em.add("Reshape", [scattered, shape], out)


@lowering("take")
def _take(em, node, out, x, indices):
    em.add("Gather", [x, indices], out, axis=node.attrs["axis"])


SCATTER_ADD_SINCE = 16  # ScatterElements' reduction="add"


def _require_scatter_add(em, node, gradient_of: str) -> None:
    if em.opset < SCATTER_ADD_SINCE:
        raise ChainruleError(f"the gradient of {gradient_of} ({node.op}) needs ONNX opset "
                             f"{SCATTER_ADD_SINCE} or newer, not {em.opset}", node.loc)


@lowering("scatter_add")
def _scatter_add(em, node, out, updates, indices, like):
    _require_scatter_add(em, node, "take")
    rank, axis = _rank(node), node.attrs["axis"] % _rank(node)
    # Flatten the index dims into one, so indices and updates line up element by element.
    like_shape = em.add("Shape", [like])
    flat_shape = em.add("Concat", [em.add("Slice", [like_shape, em.ints([0]), em.ints([axis])]),
                                   em.ints([-1]),
                                   em.add("Slice", [like_shape, em.ints([axis + 1]),
                                                    em.ints([TO_END])])], axis=0)
    flat_updates = em.add("Reshape", [updates, flat_shape])
    column = em.ints([1] * axis + [-1] + [1] * (rank - axis - 1), "column")
    spread = em.add("Expand", [em.add("Reshape", [indices, column]),
                               em.add("Shape", [flat_updates])])
    zeros = em.add("Expand", [em.scalar(0.0, _dtype(node)), like_shape])
    em.add("ScatterElements", [zeros, spread, flat_updates], out, axis=axis, reduction="add")


@lowering("gather_elements")
def _gather_elements(em, node, out, x, indices):
    # A non-negative axis: onnx.reference's GatherElements mishandles axis=-1.
    em.add("GatherElements", [x, indices], out, axis=node.attrs["axis"] % _rank(node))


@lowering("scatter_elements_add")
def _scatter_elements_add(em, node, out, updates, indices, like):
    _require_scatter_add(em, node, "gather_elements")
    zeros = em.add("Expand", [em.scalar(0.0, _dtype(node)), em.add("Shape", [like])])
    em.add("ScatterElements", [zeros, indices, updates], out, axis=node.attrs["axis"] % _rank(node),
           reduction="add")


@lowering("numel")
def _numel(em, node, out, x):
    em.add("Cast", [_count(em, x, node.attrs["axes"])], out, to=ONNX_DTYPES[node.attrs["dtype"]])


def _count(em, x, axes):
    """How many elements of x each reduction over `axes` (None: all) takes, an int64 scalar."""
    if axes is None:
        return em.add("Size", [x])
    picked = em.add("Gather", [em.add("Shape", [x]), em.ints(axes, "axes")])
    return em.reduce("ReduceProd", picked, None, False)


@lowering("dropout_mask")
def _dropout_mask(em, node, out, x):
    """Ones for inference. For training, RandomUniformLike seeded with the op's seed: a standard
    op, though its numbers are onnxruntime's, not numpy's (ONNX Dropout would hide the mask,
    and the backward pass must multiply by the same one)."""
    dtype = _dtype(node)
    if not em.training:
        em.add("Expand", [em.scalar(1.0, dtype), em.add("Shape", [x])], out)
        return
    p = node.attrs["p"]
    uniform = em.add("RandomUniformLike", [x], seed=float(node.attrs["seed"]))
    kept = em.add("GreaterOrEqual", [uniform, em.scalar(p, dtype)])
    scale = em.scalar(1.0 / (1.0 - p), dtype)
    em.add("Mul", [em.add("Cast", [kept], to=ONNX_DTYPES[dtype]), scale], out)


# ---- fused ops (written by the fuse pass at -O2) ---------------------------------------------

@lowering("relu_grad")
def _relu_grad(em, node, out, x, g):
    # g times the mask, as the numpy kernel computes it (so an inf cotangent where x <= 0 is
    # NaN on both): onnxruntime's Where with a scalar branch took 4x Cast and Mul's time.
    positive = em.add("Greater", [x, em.scalar(0.0, node.inputs[0].type.dtype)])
    em.add("Mul", [g, em.add("Cast", [positive], to=ONNX_DTYPES[_dtype(node)])], out)


@lowering("cross_entropy_grad")
def _cross_entropy_grad(em, node, out, logits, labels, scale):
    _minus_one_hot_scaled(em, node, out, em.add("Softmax", [logits], axis=-1), labels, scale)


@lowering("cross_entropy_grad_from_log_probs")
def _cross_entropy_grad_from_log_probs(em, node, out, log_probabilities, labels, scale):
    _minus_one_hot_scaled(em, node, out, em.add("Exp", [log_probabilities]), labels, scale)


def _minus_one_hot_scaled(em, node, out, probabilities, labels, scale):
    dtype = node.inputs[0].type.dtype
    classes = em.ints(list(range(node.inputs[0].type.shape[-1])), "classes")
    onehot = em.add("Cast", [em.add("Equal", [em.unsqueeze(labels, [-1]), classes])],
                    to=ONNX_DTYPES[dtype])
    em.add("Mul", [em.add("Sub", [probabilities, onehot]), scale], out)


@lowering("sum_squares")
def _sum_squares(em, node, out, x):
    em.add("ReduceSumSquare", [x], out, keepdims=0)


@lowering("gemm")
def _gemm(em, node, out, a, b):
    if is_float(_dtype(node)):
        em.add("Gemm", [a, b], out, transA=int(node.attrs["trans_a"]),
               transB=int(node.attrs["trans_b"]))
        return
    # ONNX's Gemm takes no 8- or 16-bit integers: a MatMul of the operands as Gemm reads them.
    a, b = (em.add("Transpose", [x], perm=[1, 0]) if node.attrs[flag] else x
            for x, flag in ((a, "trans_a"), (b, "trans_b")))
    em.add("MatMul", [a, b], out)


@lowering("gemm_acc")
def _gemm_acc(em, node, out, a, b, c, alpha, beta):
    # Gemm's alpha and beta are attributes, fixed at export; these are values of the step (the
    # learning rate): they scale A and C, which Gemm then sums.
    em.add("Gemm", [em.add("Mul", [a, alpha]), b, em.add("Mul", [c, beta])], out,
           transA=int(node.attrs["trans_a"]), transB=int(node.attrs["trans_b"]))


# ---- convolution and pooling ------------------------------------------------------------------
# onnxruntime runs Conv, ConvTranspose and AveragePool in float32 only, so in float64 (and for the
# ops ONNX has no counterpart of) the lowerings compose them: Gather reads each window's taps off
# the padded planes (im2col), one MatMul does the arithmetic, and ScatterElements sums windows
# back onto the positions they cover. Ceil mode becomes floor mode over a longer end pad, since
# ONNX infers ceil mode's shapes as PyTorch does only from opset 22.
FOLD_SINCE = 16  # ScatterElements' reduction="add"


def _spatial(value) -> tuple:
    return tuple(value.type.shape[2:])


def _fixed(node, spatial, why: str) -> tuple:
    """Spatial sizes that must be numbers when the graph is exported, for `why`; a symbolic one
    is an error at the node's line."""
    symbolic = [str(d) for d in spatial if not isinstance(d, int)]
    if symbolic:
        raise ChainruleError(f"the ONNX form of {node.op} over the symbolic spatial size "
                             f"{', '.join(symbolic)} is not supported ({why} are computed when "
                             f"the graph is exported); fix it with --dim "
                             f"{sorted(dims.symbols(symbolic[0]))[0]}=N", node.loc)
    return tuple(spatial)


def _conv_attrs(node) -> dict:
    """ONNX Conv's and ConvTranspose's attributes for a conv node."""
    attrs = node.attrs
    return {"strides": list(attrs["strides"]), "pads": list(attrs["pads"]),
            "dilations": list(attrs["dilations"]), "group": attrs["groups"]}


def _padded(spatial, pads) -> list[int]:
    rank = len(spatial)
    return [n + b + e for n, b, e in zip(spatial, pads[:rank], pads[rank:], strict=True)]


def _window_positions(padded, kernel, strides, dilations) -> np.ndarray:
    """The flat position in a padded plane of each window's every tap: [kernel, windows]."""
    rank = len(kernel)
    windows = [conv_output_dim(n, k, s, 0, 0, d)
               for n, k, s, d in zip(padded, kernel, strides, dilations, strict=True)]
    positions = np.zeros((1,) * (2 * rank), np.int64)
    for axis in range(rank):
        taps = (np.arange(kernel[axis]) * dilations[axis]).reshape(_along(axis, 2 * rank))
        starts = (np.arange(windows[axis]) * strides[axis]).reshape(_along(rank + axis, 2 * rank))
        positions = positions * padded[axis] + taps + starts
    return positions.reshape(math.prod(kernel), math.prod(windows))


def _along(axis: int, rank: int) -> tuple:
    return tuple(-1 if i == axis else 1 for i in range(rank))


def _unfold(em, node, x, spatial, kernel, strides, pads, dilations) -> str:
    """x's windows as [N, C, kernel, windows]: each tap of every window one strided Slice of the
    zero-padded planes (a Gather of the windows' positions measured several times slower)."""
    spatial = _fixed(node, spatial, "the windows' positions")
    rank = len(kernel)
    if any(pads):
        x = em.add("Pad", [x, em.ints([0, 0, *pads[:rank], 0, 0, *pads[rank:]], "pads"),
                           em.scalar(0.0, _dtype(node))])
    windows = [conv_output_dim(n, k, s, 0, 0, d) for n, k, s, d in zip(
        _padded(spatial, pads), kernel, strides, dilations, strict=True)]
    axes, steps = em.ints(list(range(2, 2 + rank)), "axes"), em.ints(list(strides), "steps")
    taps = []
    for tap in itertools.product(*map(range, kernel)):
        starts = [t * d for t, d in zip(tap, dilations, strict=True)]
        ends = [b + s * (n - 1) + 1 for b, s, n in zip(starts, strides, windows, strict=True)]
        taps.append(em.unsqueeze(em.add("Slice", [x, em.ints(starts, "starts"),
                                                  em.ints(ends, "ends"), axes, steps]), [2]))
    stacked = em.add("Concat", taps, axis=2) if len(taps) > 1 else taps[0]
    return em.add("Reshape", [stacked, em.ints([0, 0, len(taps), math.prod(windows)],
                                               "windows")])


def _fold(em, node, taps, spatial, kernel, strides, pads, dilations, out) -> None:
    """The transpose of _unfold: taps [N, C, kernel * windows] summed onto the positions their
    windows cover in zero planes, which are then cropped to `spatial`."""
    spatial = _fixed(node, spatial, "the windows' positions")
    if em.opset < FOLD_SINCE:
        raise ChainruleError(f"the ONNX form of {node.op} needs opset {FOLD_SINCE} or newer, "
                             f"not {em.opset}", node.loc)
    padded = _padded(spatial, pads)
    positions = _window_positions(padded, kernel, strides, dilations).reshape(1, 1, -1)
    shape = em.add("Shape", [taps])
    planes = em.add("Concat", [em.add("Slice", [shape, em.ints([0]), em.ints([2])]),
                               em.ints([math.prod(padded)])], axis=0)
    zeros = em.add("Expand", [em.scalar(0.0, _dtype(node)), planes])
    indices = em.add("Expand", [em.ints(positions, "windows"), shape])
    summed = em.add("ScatterElements", [zeros, indices, taps], axis=2, reduction="add")
    image = em.add("Reshape", [summed, em.ints([0, 0, *padded], "image")])
    rank = len(spatial)
    em.add("Slice", [image, em.ints(pads[:rank], "starts"),
                     em.ints([b + n for b, n in zip(pads[:rank], spatial, strict=True)], "ends"),
                     em.ints(list(range(2, 2 + rank)), "axes")], out)


@lowering("conv")
def _conv(em, node, out, x, w):
    kernel = node.inputs[1].type.shape[2:]
    if _dtype(node) == "f32":
        em.add("Conv", [x, w], out, kernel_shape=list(kernel), **_conv_attrs(node))
        return
    attrs, groups = node.attrs, node.attrs["groups"]
    channels, windows = node.output.type.shape[1], _spatial(node.output)
    taps = _unfold(em, node, x, _spatial(node.inputs[0]), kernel, attrs["strides"],
                   attrs["pads"], attrs["dilations"])
    # w [groups, out / groups, in / groups * kernel] @ [N, groups, in / groups * kernel, windows]
    columns = em.add("Reshape", [taps, em.ints([0, groups, -1, math.prod(windows)], "columns")])
    weights = em.add("Reshape", [w, em.ints([groups, channels // groups, -1], "weights")])
    em.add("Reshape", [em.add("MatMul", [weights, columns]),
                       em.ints([0, channels, *windows], "shape")], out)


@lowering("conv_transpose")
def _conv_transpose(em, node, out, x, w):
    attrs, weight = node.attrs, node.inputs[1].type.shape
    if _dtype(node) == "f32":
        em.add("ConvTranspose", [x, w], out, kernel_shape=list(weight[2:]),
               output_padding=list(attrs["output_padding"]), **_conv_attrs(node))
        return
    groups, channels = attrs["groups"], node.output.type.shape[1]
    # w [groups, in / groups, out / groups * kernel]ᵀ @ x [N, groups, in / groups, pixels], then
    # each pixel's taps summed onto the output positions its window covers.
    weights = em.add("Reshape", [w, em.ints([groups, weight[0] // groups, -1], "weights")])
    inputs = em.add("Reshape", [x, em.ints([0, groups, weight[0] // groups, -1], "inputs")])
    product = em.add("MatMul", [em.add("Transpose", [weights], perm=[0, 2, 1]), inputs])
    taps = em.add("Reshape", [product, em.ints([0, channels, -1], "taps")])
    _fold(em, node, taps, _spatial(node.output), weight[2:], attrs["strides"],
          attrs["pads"], attrs["dilations"], out)


@lowering("conv_weight_grad")
def _conv_weight_grad(em, node, out, x, g):
    if _dtype(node) == "f32" and not _by_columns(node):
        _conv_weight_grad_as_conv(em, node, out, x, g)
        return
    # dW = the sum over the batch of each row's g [O, windows] times its columns [windows,
    # C * kernel]: one batched MatMul and a ReduceSum, which onnxruntime ran faster than the
    # Conv over swapped axes, by a third at 64 channels of 16x16 (bench/onnx_forms.py).
    attrs, groups = node.attrs, node.attrs["groups"]
    channels, outputs = node.inputs[0].type.shape[1], node.inputs[1].type.shape[1]
    rows, windows = channels // groups * math.prod(attrs["kernel"]), math.prod(
        _spatial(node.inputs[1]))
    taps = _unfold(em, node, x, _spatial(node.inputs[0]), attrs["kernel"], attrs["strides"],
                   attrs["pads"], attrs["dilations"])
    # Every size given: a -1 is ambiguous when a batch of 0 leaves no columns.
    columns = em.add("Transpose", [em.add("Reshape", [taps, em.ints(
        [0, groups, rows, windows], "columns")])], perm=[0, 1, 3, 2])
    grads = em.add("Reshape", [g, em.ints([0, groups, outputs // groups, windows], "grads")])
    summed = em.reduce("ReduceSum", em.add("MatMul", [grads, columns]), (0,), False)
    em.add("Reshape", [summed, em.ints(node.output.type.shape, "shape")], out)


def _by_columns(node) -> bool:
    """Whether a float32 weight gradient exports by columns: over fixed sizes (Slice places the
    windows), and where a row has more windows than the convolution has output channels per
    group, so that the batched MatMul's result, a weight's worth of numbers per row, is no
    larger than the columns themselves (a ResNet's last layers, 512 channels over 7x7
    windows, would hold a copy of the weight per row of the batch)."""
    sizes = [*node.inputs[0].type.shape[1:], *node.inputs[1].type.shape[1:]]
    if not all(isinstance(n, int) for n in sizes):
        return False
    outputs = node.inputs[1].type.shape[1] // node.attrs["groups"]
    return outputs <= math.prod(_spatial(node.inputs[1]))


def _conv_weight_grad_as_conv(em, node, out, x, g):
    """Where columns do not pay (`_by_columns`):
    dW[o, c, k] = sum over n, p of g[n, o, p] x[n, c, p * stride + k * dilation]: a Conv of x
    with g as its kernel, the batch as the channels summed over, each input channel as a batch
    entry, and stride and dilation swapped. Its windows may run past the kernel's size (input
    past the last window of the forward conv), so they are cropped."""
    attrs, groups, channels = node.attrs, node.attrs["groups"], node.inputs[0].type.shape[1]
    rank, kernel = len(attrs["kernel"]), attrs["kernel"]
    # x [N, C, *S] -> [C / groups, groups * N, *S]; g [N, O, *P] -> [O, N, *P], group-major.
    inputs = em.add("Reshape", [x, em.dims([0, groups, channels // groups, *_spatial(
        node.inputs[0])], "grouped")])
    inputs = em.add("Transpose", [inputs], perm=[2, 1, 0, *range(3, 3 + rank)])
    inputs = em.add("Reshape", [inputs, em.dims([channels // groups, -1, *_spatial(
        node.inputs[0])], "inputs")])
    weights = em.add("Transpose", [g], perm=[1, 0, *range(2, 2 + rank)])
    # g is the kernel: its shape, which Conv can read off it, may be symbolic.
    window = _spatial(node.inputs[1])
    shape = {"kernel_shape": list(window)} if all(isinstance(d, int) for d in window) else {}
    correlated = em.add("Conv", [inputs, weights], strides=list(attrs["dilations"]),
                        dilations=list(attrs["strides"]), pads=list(attrs["pads"]),
                        group=groups, **shape)
    cropped = em.add("Slice", [correlated, em.ints([0] * rank, "starts"),
                               em.ints(list(kernel), "ends"),
                               em.ints(list(range(2, 2 + rank)), "axes")])
    em.add("Transpose", [cropped], out, perm=[1, 0, *range(2, 2 + rank)])


def _pool_attrs(node, x) -> dict:
    """MaxPool's and AveragePool's attributes, ceil mode's overhang added to the end pads.
    Over symbolic sizes, ONNX's own ceil mode: where the type rule states such a size, the
    last window starts inside the input, and ONNX counts the windows as PyTorch does."""
    attrs, rank = node.attrs, len(node.attrs["kernel"])
    if attrs["ceil_mode"] and not all(isinstance(n, int) for n in _spatial(x)):
        return {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["strides"]),
                "pads": list(attrs["pads"]), "ceil_mode": 1}
    if not attrs["ceil_mode"]:  # floor mode's windows never overhang the end pad
        ends = list(attrs["pads"][rank:])
    else:
        ends = [pool_end_pad(n, k, s, b, e, True) for n, k, s, b, e in zip(
            _fixed(node, _spatial(x), "ceil mode's end pads"), attrs["kernel"],
            attrs["strides"], attrs["pads"][:rank], attrs["pads"][rank:], strict=True)]
    return {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["strides"]),
            "pads": list(attrs["pads"][:rank]) + ends}


@lowering("max_pool")
def _max_pool(em, node, out, x):
    em.add("MaxPool", [x], out, **_pool_attrs(node, node.inputs[0]))


def _max_positions(em, node, x) -> str:
    """Where max_pool(x) finds each maximum, as flat indices into x: MaxPool's Indices, the
    first of tied maxima in the window's row-major order, as the numpy kernel picks."""
    pooled, positions = em.fresh("MaxPool"), em.fresh("Indices")
    em.nodes.append(helper.make_node("MaxPool", [x], [pooled, positions], name=positions,
                                     doc_string=em.doc, **_pool_attrs(node, node.inputs[-1])))
    return positions


@lowering("max_unpool")
def _max_unpool(em, node, out, g, x):
    if em.opset < FOLD_SINCE:
        raise ChainruleError(f"the ONNX form of max_unpool needs opset {FOLD_SINCE} or newer, "
                             f"not {em.opset}", node.loc)
    flat, shape = em.ints([-1], "flat"), em.add("Shape", [x])
    positions = em.add("Reshape", [_max_positions(em, node, x), flat])
    zeros = em.add("Reshape", [em.add("Expand", [em.scalar(0.0, _dtype(node)), shape]), flat])
    summed = em.add("ScatterElements", [zeros, positions, em.add("Reshape", [g, flat])],
                    axis=0, reduction="add")
    em.add("Reshape", [summed, shape], out)


@lowering("max_pool_take")
def _max_pool_take(em, node, out, values, x):
    flat = em.add("Reshape", [values, em.ints([-1], "flat")])
    em.add("Gather", [flat, _max_positions(em, node, x)], out, axis=0)


def _divisor(node, x) -> np.ndarray:
    """What each window of the average divides by, over the output's spatial axes: the
    kernel's size alone where every window lies within the padded input and counts it."""
    attrs, rank = node.attrs, len(node.attrs["kernel"])
    if not attrs["ceil_mode"] and (attrs["count_include_pad"] or not any(attrs["pads"])):
        return np.asarray(math.prod(attrs["kernel"]), numpy_dtype(_dtype(node)))
    _fixed(node, _spatial(x), "the windows' divisors")
    divisor = np.ones(())
    for n, k, s, b, e in zip(_spatial(x), attrs["kernel"], attrs["strides"],
                             attrs["pads"][:rank], attrs["pads"][rank:], strict=True):
        sizes = pool_window_sizes(n, k, s, b, e, attrs["ceil_mode"], attrs["count_include_pad"])
        divisor = np.multiply.outer(divisor, np.asarray(sizes, float))
    return divisor.astype(numpy_dtype(_dtype(node)))


@lowering("avg_pool")
def _avg_pool(em, node, out, x):
    attrs, pool = node.attrs, _pool_attrs(node, node.inputs[0])
    if _dtype(node) == "f32":
        averaged = em.add("AveragePool", [x], count_include_pad=int(attrs["count_include_pad"]),
                          **pool)
        # Counting padding, AveragePool divides by the kernel's size, also in windows that
        # overhang the end pad in ceil mode: those divide by less. Not counting it, it divides
        # by what each window covers, so the divisors (and the spatial sizes) need not be known.
        kernel_size = math.prod(attrs["kernel"])
        divisor = _divisor(node, node.inputs[0]) if attrs["count_include_pad"] else kernel_size
        if np.any(divisor != kernel_size):
            rescale = (kernel_size / divisor).astype(divisor.dtype)
            em.add("Mul", [averaged, em.const(rescale, "rescale")], out)
        else:
            em.add("Identity", [averaged], out)
        return
    divisor = _divisor(node, node.inputs[0])
    taps = _unfold(em, node, x, _spatial(node.inputs[0]), attrs["kernel"], attrs["strides"],
                   pool["pads"], (1,) * len(attrs["kernel"]))
    total = em.add("Reshape", [em.reduce("ReduceSum", taps, (2,), False),
                               em.ints([0, 0, *_spatial(node.output)], "shape")])
    em.add("Div", [total, em.const(divisor, "divisor")], out)


@lowering("avg_unpool")
def _avg_unpool(em, node, out, g, like):
    attrs, kernel = node.attrs, node.attrs["kernel"]
    _fixed(node, _spatial(node.inputs[1]), "the windows' positions")
    share = em.add("Div", [g, em.const(_divisor(node, node.inputs[1]), "divisor")])
    # Every tap of a window gets the window's share.
    windows = math.prod(_spatial(node.inputs[0]))
    spread = em.add("Concat", [em.dim(g, 0), em.ints([node.inputs[0].type.shape[1],
                                                      math.prod(kernel), windows])], axis=0)
    taps = em.add("Expand", [em.add("Reshape", [share, em.ints([0, 0, 1, windows], "share")]),
                             spread])
    taps = em.add("Reshape", [taps, em.ints([0, 0, -1], "taps")])
    _fold(em, node, taps, _spatial(node.inputs[1]), kernel, attrs["strides"],
          _pool_attrs(node, node.inputs[1])["pads"], (1,) * len(kernel), out)


@lowering("pad")
def _pad(em, node, out, x):
    em.add("Pad", [x, em.ints(node.attrs["pads"], "pads"),
                   em.scalar(node.attrs["value"], _dtype(node))], out)


@lowering("det")
def _det(em, node, out, x):
    if _dtype(node) == "f32":
        em.add("Det", [x], out)
    else:
        _lower_composition(em, node, out, compositions.determinant)


@lowering("top_k_indices")
def _top_k_indices(em, node, out, x):
    # TopK's first output, the values, is left to a GatherElements of these as in the graph.
    # (onnx_widening ranks the dtypes onnxruntime's TopK lacks in ones it takes.)
    em.nodes.append(helper.make_node(
        "TopK", [x, em.ints([node.attrs["k"]], "k")], [em.fresh("top_k_values"), out], name=out,
        doc_string=em.doc, axis=node.attrs["axis"], largest=int(node.attrs["largest"]),
        sorted=1))


# ---- grid_sample: ONNX GridSample where onnxruntime runs it, else its composition of
# primitives (ir/grid_sampling.py). GridSample reads 4-D images (modes bilinear and bicubic)
# from opset 16, and any rank (modes linear and cubic) from opset 20; onnxruntime runs the
# first in float32 only, the second in both dtypes but not volumetric cubic.
GRID_SAMPLE_SINCE = 16
GRID_SAMPLE_ANY_RANK_SINCE = 20
GRID_SAMPLE_MODES_BEFORE_20 = {"linear": "bilinear", "cubic": "bicubic", "nearest": "nearest"}


class _Composing:
    """The `ops` face of ir/compositions.py on a scratch graph, for a composition's nodes."""

    def __init__(self, node):
        self.builder = GraphBuilder(Graph(node.op))
        self.loc = node.loc

    def emit(self, op, *inputs, **attrs):
        return self.builder.emit(op, inputs, attrs, loc=self.loc)

    def constant(self, value, like):
        return self.builder.constant(value, like.type.dtype, loc=self.loc)


def _lower_composition(em, node, out, compose) -> None:
    """The node written as `compose(ops, *node.inputs)`, its values named after `out`."""
    ops = _Composing(node)
    result = compose(ops, *node.inputs)
    for inner in ops.builder.graph.nodes:
        for value in inner.outputs:
            em.names[value] = out if value is result else f"{out}#{value.name}"
    em.lower(ops.builder.graph.nodes)


def _grid_sample_mode_name(em, node) -> str | None:
    """The mode as the opset's GridSample names it, where onnxruntime runs that; else None."""
    rank, mode = node.inputs[0].type.rank - 2, node.attrs["mode"]
    if em.opset >= GRID_SAMPLE_ANY_RANK_SINCE and (rank == 2 or rank == 3 and mode != "cubic"):
        return mode
    if em.opset >= GRID_SAMPLE_SINCE and rank == 2 and _dtype(node) == "f32":
        return GRID_SAMPLE_MODES_BEFORE_20[mode]
    return None


@lowering("grid_sample")
def _grid_sample(em, node, out, x, grid):
    mode = _grid_sample_mode_name(em, node)
    if mode is None:
        _lower_composition(em, node, out, functools.partial(grid_sampling.sample, **node.attrs))
        return
    em.add("GridSample", [x, grid], out, mode=mode, padding_mode=node.attrs["padding_mode"],
           align_corners=int(node.attrs["align_corners"]))


# Every op an ONNX op computes exactly, with no lowering of its own above (those compose where
# onnxruntime lacks a dtype or a stable kernel: softplus, erf, bool orderings and Where).
for _op in OPS.values():
    if _op.onnx is not None and _op.name not in LOWERINGS:
        LOWERINGS[_op.name] = _direct(_op.onnx)
