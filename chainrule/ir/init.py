"""Drawing params' initial values from their init specs with a seeded numpy Generator."""
from __future__ import annotations

import math

import numpy as np

from .graph import Graph, InitSpec
from .types import NUMPY_DTYPES

MAX_PARAM_ELEMENTS = 2 ** 31  # 8 GiB of f32: a larger param is a typo, not a model

# kind -> names of its arguments
INITIALIZERS = {
    "normal": ("mean", "std"),
    "uniform": ("low", "high"),
    "zeros": (),
    "ones": (),
    "glorot": (),  # uniform in ±sqrt(6 / (fan_in + fan_out))
    "he": (),      # normal with std sqrt(2 / fan_in)
}


def check_init(spec: InitSpec, shape) -> str | None:
    """Why `spec` cannot initialise a tensor of `shape`, or None when it can."""
    if not all(math.isfinite(a) for a in spec.args):
        return f"{spec.kind}'s arguments must be finite numbers"
    if all(isinstance(d, int) for d in shape) and math.prod(shape) > MAX_PARAM_ELEMENTS:
        return (f"a param of {math.prod(shape):,} values is more than chainrule holds "
                f"({MAX_PARAM_ELEMENTS:,})")
    if spec.kind not in INITIALIZERS:
        return f"unknown initialiser '{spec.kind}'; known: {', '.join(INITIALIZERS)}"
    arity = len(INITIALIZERS[spec.kind])
    if len(spec.args) != arity:
        names = ", ".join(INITIALIZERS[spec.kind])
        return f"{spec.kind}({names}) takes {arity} arguments, got {len(spec.args)}"
    if spec.kind == "normal" and spec.args[1] < 0:
        return "normal's std must not be negative"
    if spec.kind == "uniform" and spec.args[0] > spec.args[1]:
        return "uniform's low must not exceed high"
    if not all(isinstance(d, int) for d in shape):
        return "a param's dims must be integers"
    return None


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) for a weight used as `x @ W.T`: shape [out, in], [in] for vectors."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def draw(spec: InitSpec, shape, dtype: str, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(shape)
    if spec.kind == "normal":
        values = rng.normal(spec.args[0], spec.args[1], shape)
    elif spec.kind == "uniform":
        values = rng.uniform(spec.args[0], spec.args[1], shape)
    elif spec.kind == "zeros":
        values = np.zeros(shape)
    elif spec.kind == "ones":
        values = np.ones(shape)
    elif spec.kind == "glorot":
        fan_in, fan_out = fans(shape)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        values = rng.uniform(-limit, limit, shape)
    elif spec.kind == "he":
        fan_in, _ = fans(shape)
        values = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    else:
        raise ValueError(f"unknown initialiser {spec.kind}")
    return np.asarray(values, dtype=NUMPY_DTYPES[dtype])


def initial_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Every param's initial value, drawn in declaration order from one Generator(seed)."""
    rng = np.random.default_rng(seed)
    return {p.value.name: draw(p.init, p.value.type.shape, p.value.type.dtype, rng)
            for p in graph.params}
