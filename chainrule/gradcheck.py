"""Checking compiled gradients against central finite differences, for users.

The model is promoted to float64 first; each backend's gradient of the objective with respect to
each param is compared with (f(p + eps) - f(p - eps)) / 2 eps on a sample of entries.

A model whose params are f16 or bf16 has its own gradient checked, as computed in that dtype,
against the differences of the model promoted to float64 (differences taken in f16 would be
rounding noise): the tolerance is then a few units in the last place of the low dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends import get_backend

EPS = 1e-6
TOLERANCE = 1e-6  # relative to the largest gradient entry of the param
# A gradient computed in f16 or bf16 is checked to this many of its dtype's epsilon (2**-10 and
# 2**-7): each op rounds once, and a sum of n terms rounds to about sqrt(n) of them.
LOW_PRECISION_EPSILONS = 16
MANTISSA_BITS = {"f16": 10, "bf16": 7}  # stored, the implicit leading one left out
# Central differences resolve a derivative to about (rounding of f) / EPS; below this, times
# max(1, |f|), an error is noise (a gradient that is zero in exact arithmetic, such as a conv
# bias before batch norm, has no meaningful relative error).
RESOLUTION = 1e-8


@dataclass
class GradCheckRow:
    backend: str
    param: str
    entries: int
    max_abs_error: float
    max_rel_error: float
    resolution: float = 0.0
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= self.tolerance or self.max_abs_error <= self.resolution


def low_precision(model) -> str | None:
    """The least precise of f16 and bf16 among a model's trainable params, if either is."""
    dtypes = {param.type.dtype for param in model.graph.trainable_values()}
    return "bf16" if "bf16" in dtypes else "f16" if "f16" in dtypes else None


def tolerance(model) -> float:
    """The relative error gradcheck allows for `model`'s gradients."""
    low = low_precision(model)
    if low is None:
        return TOLERANCE
    return LOW_PRECISION_EPSILONS * 2.0 ** -MANTISSA_BITS[low]


def gradcheck(model, inputs: dict, backends=("numpy",), samples: int = 20,
              seed: int = 0) -> list[GradCheckRow]:
    analytic = model if low_precision(model) else None
    wide = model.to_f64()
    wide_inputs = {k: (np.asarray(v, np.float64) if _is_low_float(v) else v)
                   for k, v in inputs.items()}
    rows = []
    # A model with batch_norm computes differently in training: both modes are checked.
    for training in (False, True) if model.graph.updates else (False,):
        grads_by_backend = {
            name: (analytic.grad(backend=name, training=training, **inputs) if analytic else
                   wide.grad(backend=name, training=training, **wide_inputs))
            for name in backends}
        rows += _check_mode(wide, wide_inputs, grads_by_backend, samples,
                            np.random.default_rng(seed), training, tolerance(model))
    return rows


def _is_low_float(value) -> bool:
    dtype = np.asarray(value).dtype
    return dtype in (np.float32, np.float16) or dtype.name == "bfloat16"


def _check_mode(model, inputs, grads_by_backend, samples, rng, training: bool,
                tolerance: float) -> list[GradCheckRow]:
    objective = model.objective.name
    forward = get_backend("numpy")
    graph, _ = model.compile_graph(training=training)
    value_of_objective = float(forward.run(graph, inputs, model.params)[objective])
    resolution = RESOLUTION * max(1.0, abs(value_of_objective))
    rows = []
    for param in model.graph.trainable_values():
        value = model.params[param.name]
        entries = _sample(value.size, samples, rng)
        numeric = np.empty(len(entries))
        flat = value.reshape(-1)
        for i, entry in enumerate(entries):
            saved = flat[entry]
            flat[entry] = saved + EPS
            plus = float(forward.run(graph, inputs, model.params)[objective])
            flat[entry] = saved - EPS
            minus = float(forward.run(graph, inputs, model.params)[objective])
            flat[entry] = saved
            numeric[i] = (plus - minus) / (2 * EPS)
        for backend, grads in grads_by_backend.items():
            analytic = np.asarray(grads[param.name], np.float64).reshape(-1)
            errors = np.abs(analytic[entries] - numeric)
            scale = max(np.max(np.abs(analytic)), 1e-12)
            label = f"{backend} (training)" if training else backend
            rows.append(GradCheckRow(label, param.name, len(entries),
                                     float(errors.max(initial=0)),
                                     float(errors.max(initial=0) / scale), resolution,
                                     tolerance))
    return rows


def _sample(size: int, samples: int, rng) -> np.ndarray:
    if size <= samples:
        return np.arange(size)
    return np.sort(rng.choice(size, samples, replace=False))


def format_rows(rows: list[GradCheckRow]) -> str:
    lines = [f"{'backend':<24} {'param':<16} {'entries':>7} {'max abs err':>12} "
             f"{'max rel err':>12}  result",
             "-" * 84]
    for row in rows:
        lines.append(f"{row.backend:<24} {row.param:<16} {row.entries:>7} "
                     f"{row.max_abs_error:>12.3e} {row.max_rel_error:>12.3e}  "
                     f"{'pass' if row.passed else 'FAIL'}")
    return "\n".join(lines)


