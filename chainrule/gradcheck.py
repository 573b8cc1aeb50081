"""Checking compiled gradients against central finite differences, for users.

The model is promoted to float64 first; each backend's gradient of the objective with respect to
each param is compared with (f(p + eps) - f(p - eps)) / 2 eps on a sample of entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends import get_backend

EPS = 1e-6
TOLERANCE = 1e-6  # relative to the largest gradient entry of the param
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

    @property
    def passed(self) -> bool:
        return self.max_rel_error <= TOLERANCE or self.max_abs_error <= self.resolution


def gradcheck(model, inputs: dict, backends=("numpy",), samples: int = 20,
              seed: int = 0) -> list[GradCheckRow]:
    model = model.to_f64()
    inputs = {k: (np.asarray(v, np.float64) if np.asarray(v).dtype == np.float32 else v)
              for k, v in inputs.items()}
    rows = []
    # A model with batch_norm computes differently in training: both modes are checked.
    for training in (False, True) if model.graph.updates else (False,):
        rows += _check_mode(model, inputs, backends, samples, np.random.default_rng(seed),
                            training)
    return rows


def _check_mode(model, inputs, backends, samples, rng, training: bool) -> list[GradCheckRow]:
    objective = model.objective.name
    forward = get_backend("numpy")
    graph, _ = model.compile_graph(training=training)
    grads_by_backend = {name: model.grad(backend=name, training=training, **inputs)
                        for name in backends}
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
            analytic = grads[param.name].reshape(-1)
            errors = np.abs(analytic[entries] - numeric)
            scale = max(np.max(np.abs(analytic)), 1e-12)
            label = f"{backend} (training)" if training else backend
            rows.append(GradCheckRow(label, param.name, len(entries),
                                     float(errors.max(initial=0)),
                                     float(errors.max(initial=0) / scale), resolution))
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


