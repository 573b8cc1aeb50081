"""What the Trainer runs its steps with: a runner, chosen once when the Trainer is made.

A runner is a backend's step runner (backends/protocol.py: load, step, values) plus what a
Trainer asks of it around the steps: the feeds of a batch, a look at the training data before
the first step, notes for the epoch's record, and closing. Two kinds:
- LocalRunner: the whole train step in this process, run by the backend's step runner, which
  keeps the params resident (compiled numpy, onnxruntime) or in a dict (the numpy interpreter
  of --check-numerics). A batch's feeds are its rows.
- ShardedRunner (distributed.py): Ray workers, each holding a replica of the params and
  state, compute the gradients of a shard of the batch each and all apply the same update. A
  batch's feeds are its row indices.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .backends import StepRunner
from .ir import ChainruleError, Graph
from .passes.optimizers import TrainStepInterface


class TrainRunner(StepRunner, Protocol):
    """A step runner as the Trainer uses it: `graph` is what each step runs, `interface`
    names its params, state, objective and metrics."""

    graph: Graph
    interface: TrainStepInterface
    rerun_note: str  # what to add to "rerun with --check-numerics" for these steps

    def feeds(self, data: dict, rows: np.ndarray | None, step: int) -> dict[str, np.ndarray]:
        """What `step` is fed for the batch of `data` made of `rows` (all of it when None),
        the `step`-th of the run, beside the learning rate."""

    def prepare(self, data: dict, evaluate: Callable[[dict], dict]) -> None:
        """Before the first step on the training set `data`; `evaluate` gives the objective
        and metrics over a data set with the current params."""

    def nonfinite_params(self) -> list[str]:
        """The params that the last step made NaN or Inf."""

    def epoch_record(self) -> dict:
        """Entries for the record of the epoch that just ended."""

    def close(self) -> None:
        """Release what the runner holds beyond this process."""


def held_updates(interface: TrainStepInterface) -> dict[str, str]:
    """Each value a step runner holds (params, model and optimizer state) -> the output that
    replaces it after a step."""
    return {**interface.params, **interface.state}


class LocalRunner:
    """A train step run in this process by a backend's step runner, fed the batch's rows (the
    whole step; a ShardedRunner sends the rows to workers, which each run a shard's gradients
    and the update on their replicas)."""

    rerun_note = ""

    def __init__(self, steps: StepRunner, graph: Graph, interface: TrainStepInterface):
        self.steps, self.graph, self.interface = steps, graph, interface

    def load(self, values: dict) -> None:
        self.steps.load(values)

    def values(self) -> dict[str, np.ndarray]:
        return self.steps.values()

    def step(self, feeds: dict) -> dict[str, np.ndarray]:
        return self.steps.step(feeds)

    def feeds(self, data: dict, rows: np.ndarray | None, step: int) -> dict[str, np.ndarray]:
        return dict(data) if rows is None else take_rows(data, rows)

    def prepare(self, data: dict, evaluate) -> None:
        """Nothing to do: each step is fed its rows."""

    def nonfinite_params(self) -> list[str]:
        current = self.steps.values()
        return [name for name in self.interface.params if not np.isfinite(current[name]).all()]

    def epoch_record(self) -> dict:
        return {}

    def close(self) -> None:
        """Nothing outside this process."""


# ---- a data set's rows ------------------------------------------------------------------------

def check_dataset(graph, arrays: dict, what: str) -> int:
    """The number of rows; every model input must be there with the same number of rows."""
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ChainruleError(f"{what} has no array named {', '.join(missing)}; the model's "
                             f"inputs are {', '.join(names)} (it holds "
                             f"{', '.join(arrays) or 'nothing'})")
    rows = {n: (np.shape(arrays[n])[0] if np.ndim(arrays[n]) else None) for n in names}
    if len(set(rows.values())) != 1 or None in rows.values():
        listed = ", ".join(f"{n}: {r} rows" for n, r in rows.items())
        raise ChainruleError(f"{what}: the inputs must have the same number of rows ({listed})")
    count = next(iter(rows.values()))
    if count == 0:
        refuse_no_rows(what)
    return count


def batch_axis_inputs(graph) -> list[str]:
    """The inputs whose first dim is symbolic: the axis of a batch's rows."""
    return [v.name for v in graph.inputs
            if v.type.rank and not isinstance(v.type.shape[0], int)]


def check_some_rows(names: list[str], arrays: dict, what: str) -> None:
    """A batch whose inputs need not share their rows (a sequence model's `[T, B, ...]` beside
    its `[B, ...]`) has some: none of the inputs `names` (batch_axis_inputs) is given 0 of
    them."""
    for name in names:
        array = arrays.get(name)
        try:
            shape = array.shape if type(array) is np.ndarray else np.shape(array)
        except ValueError:
            continue  # a ragged list, no array: the feeds' check says so
        if shape[:1] == (0,):  # a missing one has shape (): the feeds' check names it
            refuse_no_rows(what)


def refuse_no_rows(what: str):
    # A model runs on 0 rows, but a step or an average over none is NaN (and a step's NaN
    # batch statistics would poison batch norm's running ones).
    raise ChainruleError(f"{what} has 0 rows")


def take_rows(arrays: dict, rows: np.ndarray) -> dict:
    return {name: array[rows] for name, array in arrays.items()}
