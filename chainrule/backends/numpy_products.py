"""What the numpy backend's kernel modules share: matrix products, with their threads and
half-float handling, and a dtype's least and greatest values (max's and min's identities)."""
from __future__ import annotations

import numpy as np

from ..ir.types import dtype_of_numpy, is_float
from .threads import use_blas_threads

# numpy multiplies f16 matrices without BLAS (about 50 times f32's time) and ml_dtypes' bf16
# ones about 8 times: a product of half floats is computed in f32 and rounded once, summing in
# f32 as the half-precision units of accelerators (and onnxruntime's CPU provider) do.
HALF_FLOATS = ("float16", "bfloat16")


def in_dtype(result, dtype):
    """result in `dtype`: numpy multiplies bfloat16 matrices in float32 and returns that, and
    with numpy 2.0 a Python scalar meeting a bfloat16 array makes float32 too."""
    return result if result.dtype == dtype else result.astype(dtype)


def matmul(a, b):
    """The matmul op's kernel, which every product of the numpy kernels goes through."""
    if a.ndim > 1 and b.ndim > 1:  # a product of matrices (of stacks of them): its threads
        use_blas_threads(2 * max(a.size * b.shape[-1], b.size * a.shape[-2]))
    if a.dtype.name in HALF_FLOATS:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return in_dtype(np.matmul(a, b), a.dtype)


def is_float_array_dtype(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 is of numpy's kind "V", not "f".
    return is_float(dtype_of_numpy(dtype))


def lowest(dtype):
    """What max gives over nothing, as ONNX's ReduceMax: -inf, or an int dtype's least value."""
    return -np.inf if is_float_array_dtype(dtype) else np.iinfo(dtype).min


def highest(dtype):
    """What min gives over nothing: inf, or an int dtype's greatest value."""
    return np.inf if is_float_array_dtype(dtype) else np.iinfo(dtype).max
