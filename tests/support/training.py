"""A small model to train and its data, for the training tests."""
from __future__ import annotations

import numpy as np

# Two params, an objective with an L2 term and a metric beside it.
SMALL = """
model small(x: f64[B, 3], y: i64[B]) {
    param W: f64[4, 3] = normal(0.0, 0.5)
    param V: f64[2, 4] = normal(0.0, 0.5)
    o = tanh(x @ W.T) @ V.T
    L = cross_entropy(o, y)
    J = L + 0.01 * sum(W ** 2)
    return J, L
}
"""


def small_data(rows=10, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, 3)), "y": rng.integers(0, 2, rows)}
