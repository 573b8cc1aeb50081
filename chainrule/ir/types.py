"""Tensor types: a dtype and a shape whose dims are integers or symbolic names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Every dtype ONNX has but strings and complex numbers, by chainrule's short names.
FLOAT_DTYPES = ("f16", "bf16", "f32", "f64")
SIGNED_DTYPES = ("i8", "i16", "i32", "i64")
UNSIGNED_DTYPES = ("u8", "u16", "u32", "u64")
INT_DTYPES = SIGNED_DTYPES + UNSIGNED_DTYPES
# The 8-, 4- and 2-bit dtypes hold quantized and compressed data: values are cast to and from
# them, moved, reshaped and (de)quantized, but no arithmetic is done in them (ONNX defines next
# to none, and what the hardware that has them computes is a wider type).
NARROW_DTYPES = ("f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz", "f8e8m0", "f4e2m1",
                 "i4", "u4", "i2", "u2")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",) + NARROW_DTYPES
NARROW_INT_DTYPES = ("i4", "u4", "i2", "u2")  # whole numbers, as files and constants hold them
# The float8 dtypes a cast saturates into (ONNX's Cast, QuantizeLinear with saturate=1).
SATURATING_DTYPES = ("f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz")

# numpy's name for each. numpy has no bfloat16 or narrow dtypes: those come from ml_dtypes,
# imported only when a model uses one (its import costs about as much as numpy's).
NUMPY_NAMES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
               "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
               "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64", "bool": "bool",
               "f8e4m3fn": "float8_e4m3fn", "f8e4m3fnuz": "float8_e4m3fnuz",
               "f8e5m2": "float8_e5m2", "f8e5m2fnuz": "float8_e5m2fnuz",
               "f8e8m0": "float8_e8m0fnu", "f4e2m1": "float4_e2m1fn",
               "i4": "int4", "u4": "uint4", "i2": "int2", "u2": "uint2"}
ML_DTYPES = ("bf16",) + NARROW_DTYPES
DTYPE_OF_NUMPY_NAME = {numpy: name for name, numpy in NUMPY_NAMES.items()}
# ONNX's numbers for them (onnx.TensorProto.FLOAT and so on), written out so that the IR, and
# what imports it, need not load onnx.
ONNX_DTYPES = {"f32": 1, "u8": 2, "i8": 3, "u16": 4, "i16": 5, "i32": 6, "i64": 7, "bool": 9,
               "f16": 10, "f64": 11, "u32": 12, "u64": 13, "bf16": 16, "f8e4m3fn": 17,
               "f8e4m3fnuz": 18, "f8e5m2": 19, "f8e5m2fnuz": 20, "u4": 21, "i4": 22,
               "f4e2m1": 23, "f8e8m0": 24, "u2": 25, "i2": 26}
DTYPE_OF_ONNX = {number: dtype for dtype, number in ONNX_DTYPES.items()}

# A dim is an int, a symbolic name such as "B", an expression over names (dims.DimExpr:
# `B*H`, `S-1`), or UNKNOWN when no expression can say it. dims.py, which computes with them,
# reads UNKNOWN from here, so the alias cannot name DimExpr itself.
Dim = object
UNKNOWN = "?"


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds a chainrule dtype's values."""
    if dtype in ML_DTYPES:
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, NUMPY_NAMES[dtype]))
    return np.dtype(NUMPY_NAMES[dtype])


def cast_array(x: np.ndarray, dtype: str, saturate: bool = True) -> np.ndarray:
    """x cast to `dtype` as ONNX's Cast does where numpy's astype differs: a float cast to a
    float8 dtype saturates (NaN stays NaN) unless `saturate` is false, and one to a 4- or
    2-bit integer truncates, giving 0 beyond the range (undefined in ONNX; ml_dtypes 0.7's
    result, where older ones wrap around)."""
    target = numpy_dtype(dtype)
    if not DTYPE_OF_NUMPY_NAME.get(x.dtype.name, "").startswith(("f", "bf")):  # not a float
        return x.astype(target)
    if saturate and dtype in SATURATING_DTYPES:
        import ml_dtypes
        largest = float(ml_dtypes.finfo(target).max)
        x = np.clip(x, -largest, largest)
    elif dtype in NARROW_INT_DTYPES:
        lo, hi = int_range(dtype)
        truncated = np.trunc(x)
        x = np.where((truncated >= lo) & (truncated <= hi), truncated, 0)
    return x.astype(target)


def dtype_of_numpy(dtype: np.dtype) -> str:
    name = DTYPE_OF_NUMPY_NAME.get(np.dtype(dtype).name)
    if name is None:
        raise ValueError(f"numpy dtype {np.dtype(dtype)} has no chainrule equivalent")
    return name


def is_float(dtype: str) -> bool:
    """A dtype that arithmetic runs in and derivatives are taken in."""
    return dtype in FLOAT_DTYPES


def is_int(dtype: str) -> bool:
    return dtype in INT_DTYPES


def is_numeric(dtype: str) -> bool:
    """A dtype that arithmetic runs in: not bool, not a narrow dtype."""
    return dtype in FLOAT_DTYPES or dtype in INT_DTYPES


def _bits(dtype: str) -> int:
    """An integer dtype's width: int8 and uint8 are 8."""
    return int(NUMPY_NAMES[dtype].lstrip("uint"))


def int_range(dtype: str) -> tuple[int, int]:
    """The least and greatest value of an integer dtype."""
    bits = _bits(dtype)
    if dtype.startswith("u"):  # u8 to u64, and the narrow u4 and u2
        return 0, 2 ** bits - 1
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def with_article(dtype: str) -> str:
    """'an i64', 'a u8': the dtype as a sentence names one."""
    return f"{'an' if dtype[0] in 'fi' else 'a'} {dtype}"


def int_range_text(dtype: str) -> str:
    """An integer dtype's range as errors write it: [-2**63, 2**63)."""
    bits = _bits(dtype)
    if dtype.startswith("u"):  # u8 to u64, and the narrow u4 and u2
        return f"[0, 2**{bits})"
    return f"[-2**{bits - 1}, 2**{bits - 1})"


# ---- promotion: JAX's lattice, in its 64-bit mode ------------------------------------------------
# When tensors of two dtypes meet in one elementwise op, the DSL casts both to the least dtype
# above both in this lattice (each dtype lists the ones just above it). Unlike numpy's, it never
# widens a float because an integer met it (i32 with f16 is f16), and it keeps bf16 and f16
# apart until f32. "f*" is the float an i64 and a u64 meet at, which no tensor has: it is f64
# unless a float takes it further. Narrow dtypes promote to nothing: they are cast explicitly.
WEAK_FLOAT = "f*"
LATTICE = {"bool": ("u8", "i8"), "u8": ("u16", "i16"), "u16": ("u32", "i32"),
           "u32": ("u64", "i64"), "u64": (WEAK_FLOAT,), "i8": ("i16",), "i16": ("i32",),
           "i32": ("i64",), "i64": (WEAK_FLOAT,), WEAK_FLOAT: ("f16", "bf16"),
           "f16": ("f32",), "bf16": ("f32",), "f32": ("f64",), "f64": ()}


def _at_or_above(dtype: str) -> set[str]:
    above, frontier = {dtype}, [dtype]
    while frontier:
        for higher in LATTICE[frontier.pop()]:
            if higher not in above:
                above.add(higher)
                frontier.append(higher)
    return above


def promote_types(*dtypes: str) -> str | None:
    """The dtype tensors of `dtypes` compute in together, or None when none is implied (a
    narrow dtype meeting another). Joined all at once, since resolving "f*" early is not
    associative: i64, u64 and f16 meet at f16, though i64 and u64 alone are f64."""
    if len(set(dtypes)) == 1:
        return dtypes[0]
    if any(d not in LATTICE for d in dtypes):
        return None
    common = set.intersection(*map(_at_or_above, dtypes))
    # The least common dtype is the one every other common dtype is above.
    least = next(d for d in common if common <= _at_or_above(d))
    return "f64" if least == WEAK_FLOAT else least


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(dtype, self.shape)

    def with_shape(self, shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def scalar(dtype: str) -> TensorType:
    return TensorType(dtype, ())
