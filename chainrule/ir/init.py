"""Drawing params' initial values from their init specs with a seeded numpy Generator."""
from __future__ import annotations

import math

import numpy as np

from .graph import Graph, InitSpec
from .limits import MAX_ELEMENTS, check_allocation, itemsize
from .types import numpy_dtype

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
    if all(isinstance(d, int) for d in shape) and 0 in shape:
        # Values and inputs may be empty, but a param is something to learn: one that holds
        # nothing has nothing to train, and is far likelier a typo than a wish.
        return ("a param with a dim of size 0 holds nothing to learn (values and inputs may "
                "be empty; params may not)")
    if all(isinstance(d, int) for d in shape) and math.prod(shape) > MAX_ELEMENTS:
        return (f"a param of {math.prod(shape):,} values is more than chainrule holds "
                f"({MAX_ELEMENTS:,})")
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
    """Values drawn directly in `dtype`: an f32 param never passes through an f64 array."""
    shape, values_dtype = tuple(shape), numpy_dtype(dtype)
    if spec.kind == "zeros":
        return np.zeros(shape, values_dtype)
    if spec.kind == "ones":
        return np.ones(shape, values_dtype)
    if spec.kind == "normal":
        return _normal(rng, shape, values_dtype, spec.args[0], spec.args[1])
    if spec.kind == "uniform":
        return _uniform(rng, shape, values_dtype, spec.args[0], spec.args[1])
    fan_in, fan_out = fans(shape)
    if spec.kind == "glorot":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return _uniform(rng, shape, values_dtype, -limit, limit)
    if spec.kind == "he":
        return _normal(rng, shape, values_dtype, 0.0, math.sqrt(2.0 / fan_in))
    raise ValueError(f"unknown initialiser {spec.kind}")


def _drawn_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype values are drawn in: numpy's Generator draws f32 and f64 only, so f16 and
    bf16 values are drawn as f32 and rounded."""
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float32)


def _normal(rng, shape, dtype, mean: float, std: float) -> np.ndarray:
    drawn = _drawn_dtype(dtype)
    values = rng.standard_normal(shape, drawn)
    values *= drawn.type(std)
    values += drawn.type(mean)
    return values.astype(dtype, copy=False)


def _uniform(rng, shape, dtype, low: float, high: float) -> np.ndarray:
    drawn = _drawn_dtype(dtype)
    values = rng.random(shape, drawn)
    values *= drawn.type(high - low)
    values += drawn.type(low)
    return values.astype(dtype, copy=False)


def initial_params(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Every param's initial value, drawn in declaration order from one Generator(seed), once
    it is clear that memory holds them all."""
    total = sum(math.prod(p.value.type.shape) * itemsize(p.value.type.dtype)
                for p in graph.params)
    check_allocation(f"the model's {len(graph.params)} params", total, graph.loc)
    rng = np.random.default_rng(seed)
    return {p.value.name: draw(p.init, p.value.type.shape, p.value.type.dtype, rng)
            for p in graph.params}
