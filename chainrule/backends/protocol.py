"""What every backend offers, and what runs its train steps: the two runtime protocols.

A backend runs a graph on arrays (`run`) and makes a step runner for a train step
(`step_runner`). A step runner holds the step's params and optimizer state from one step to the
next: `load` puts values in, `step` runs one step on the batch's feeds, `values` reads them back.
The compiled numpy backend and onnxruntime keep them resident (numpy arrays updated in place,
IO-bound onnxruntime buffers); the numpy interpreter holds them in a Python dict (PlainStep)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..ir import Graph

# The numpy interpreter stopping at the first node that makes a NaN or an Inf: what
# --check-numerics runs, by name, computing what "numpy" does.
CHECKING_BACKEND = "numpy-check"


@runtime_checkable
class StepRunner(Protocol):
    """A train step run again and again, holding its params and state between steps."""

    def load(self, values: dict[str, np.ndarray]) -> None:
        """Copy in every held value (params and carried state) by name."""

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step on `feeds` (the batch and the learning rate): the outputs that replace no
        held value (the objective and metrics), by name."""

    def values(self) -> dict[str, np.ndarray]:
        """The held values by name; a later step may overwrite these arrays."""


@runtime_checkable
class Backend(Protocol):
    """Runs graphs. `get_backend(name)` makes one; what it compiles for a graph it keeps
    itself, for as long as it lives (the graph holds no backend state)."""

    name: str

    def run(self, graph: Graph, inputs: dict, params: dict, *, training: bool = False,
            rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Every output of `graph` by name; `training` switches stochastic ops such as dropout
        on, drawing from `rng` where the backend draws its own masks."""

    def step_runner(self, graph: Graph, carried: dict[str, str],
                    rng: np.random.Generator | None = None) -> StepRunner:
        """A runner for the train step `graph` (run in training mode): it holds the params
        and the inputs named in `carried`, which maps each to the output that replaces it
        after a step."""
