"""A small model to train and its data, and a hand editor of checkpoints, for the training
tests."""
from __future__ import annotations

import json

import numpy as np

from chainrule.fileio import load_npz
from chainrule.train import CHECKPOINT_FILE

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


def edit_meta(checkpoint, edit) -> None:
    """Rewrite the meta record of the checkpoint in directory `checkpoint` with `edit(meta)`,
    as a user editing it by hand would."""
    path = checkpoint / CHECKPOINT_FILE
    arrays = load_npz(path)
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
