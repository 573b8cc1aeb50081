"""BLAS's gemm with beta, written in place: C <- alpha * op(A) @ op(B) + beta * C.

numpy's matmul has no beta and no in-place accumulation; scipy exposes BLAS's gemm with both.
scipy comes with the `speed` extra (`pip install chainrule[speed]`); without it `gemm_into`
falls back to numpy: the product, then the scaling and the sum in place.
"""
from __future__ import annotations

import numpy as np

_UNLOADED = object()
_routines = _UNLOADED


def _blas_routines() -> dict:
    """scipy's sgemm and dgemm by dtype, or {} without scipy. Loading scipy loads its own BLAS
    library, which must then take the configured threads too."""
    global _routines
    if _routines is _UNLOADED:
        try:
            from scipy.linalg import blas
        except ImportError:
            _routines = {}
        else:
            _routines = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}
            from .threads import apply_blas_threads
            apply_blas_threads(again=True)
    return _routines


def available() -> bool:
    return bool(_blas_routines())


def _fortran_operand(x: np.ndarray, transposed: bool) -> tuple[np.ndarray, int]:
    """x (transposed if asked) as a Fortran-ordered matrix and BLAS's trans flag, with no copy
    when x is contiguous either way: a C-ordered x is its transpose in Fortran order."""
    if x.flags.f_contiguous:
        return x, int(transposed)
    if x.flags.c_contiguous:
        return x.T, int(not transposed)
    return np.asfortranarray(x), int(transposed)


def gemm_into(c: np.ndarray, a, b, alpha: float, beta: float, trans_a: bool,
              trans_b: bool) -> np.ndarray:
    """c = alpha * op(a) @ op(b) + beta * c, written into c's buffer."""
    routine = _blas_routines().get(c.dtype)
    if routine is not None and a.dtype == b.dtype == c.dtype and c.flags.c_contiguous:
        # c^T = alpha * op(b)^T @ op(a)^T + beta * c^T, and c^T is Fortran-ordered: BLAS writes
        # into it with no copy.
        rhs, rhs_flag = _fortran_operand(b, not trans_b)
        lhs, lhs_flag = _fortran_operand(a, not trans_a)
        routine(alpha, rhs, lhs, beta, c.T, trans_a=rhs_flag, trans_b=lhs_flag, overwrite_c=1)
        return c
    product = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    product *= alpha
    c *= beta
    c += product
    return c
