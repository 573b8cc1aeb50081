"""Tensor types: a dtype and a shape whose dims are integers or symbolic names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = ("f32", "f64")
INT_DTYPES = ("i64",)
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)

NUMPY_DTYPES = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "bool": np.bool_}
# ONNX's numbers for them (onnx.TensorProto.FLOAT and so on), written out so that the IR, and
# what imports it, need not load onnx.
ONNX_DTYPES = {"f32": 1, "f64": 11, "i64": 7, "bool": 9}

# A dim is an int, a symbolic name such as "B", an expression over names (dims.DimExpr:
# `B*H`, `S-1`), or UNKNOWN when no expression can say it. dims.py, which computes with them,
# reads UNKNOWN from here, so the alias cannot name DimExpr itself.
Dim = object
UNKNOWN = "?"


def dtype_of_numpy(dtype: np.dtype) -> str:
    for name, numpy_type in NUMPY_DTYPES.items():
        if np.dtype(numpy_type) == np.dtype(dtype):
            return name
    raise ValueError(f"numpy dtype {np.dtype(dtype)} has no chainrule equivalent")


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


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
