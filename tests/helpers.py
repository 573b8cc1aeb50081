"""Shared test helpers: finite differences and relative comparisons."""
from __future__ import annotations

import numpy as np


def central_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, f(x) a float64 scalar."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    out = grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        out[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual, expected, rtol, atol=0.0, what="", scale=None):
    """max |actual - expected| <= rtol * scale + atol; scale defaults to max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if scale is None:
        scale = max(np.max(np.abs(expected), initial=0.0), 1e-12)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= rtol * scale + atol, f"{what}: max error {error:.3g} vs scale {scale:.3g}"
