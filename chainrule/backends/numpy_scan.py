"""A scan's loop on numpy arrays, shared by the compiled backend and the interpreter: each runs
the body its own way and hands this loop the function that runs one step."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, dims
from ..ir.types import UNKNOWN, numpy_dtype


class StepError(Exception):
    """A body step failed: the step it failed at, and the error."""

    def __init__(self, step: int, error: Exception):
        super().__init__(str(error))
        self.step, self.error = step, error


def scan_loop(step, node, operands, length: int) -> tuple:
    """The scan `node`'s results: the carried values after the last step, then each step's
    values stacked along a new leading axis at their step's index. `step(*inputs)` runs the
    body on the carried values, one slice of each sequence, and the outer values. A scan of no
    step is a loop of no iteration: the carried values come out as they went in."""
    carried, scanned = node.attrs["carried"], node.attrs["scanned"]
    # As Python's range, a loop that would end before its start runs no step: the length of
    # range(1, T) comes to T-1, which is -1 when T is 0.
    length = max(length, 0)
    state = list(operands[:carried])
    sequences = operands[carried:carried + scanned]
    outer = list(operands[carried + scanned:])
    for sequence in sequences:
        if len(sequence) != length:
            raise ChainruleError(f"a scan over {length} steps got a sequence of length "
                                 f"{len(sequence)}")
    if length == 0:
        return (*state, *_empty_stacks(node, operands))
    reverse, steps = node.attrs["reverse"], []
    for t in range(length - 1, -1, -1) if reverse else range(length):
        try:
            results = step(*state, *[sequence[t] for sequence in sequences], *outer)
        except Exception as error:
            raise StepError(t, error) from error
        state = results[:carried]
        steps.append(results[carried:])
    if reverse:
        steps.reverse()
    # Stacked once at the end: one copy per stack rather than one small copy per step.
    return (*state, *(np.stack(values) for values in zip(*steps)))


def _empty_stacks(node, operands) -> list[np.ndarray]:
    """The stacks of a scan of no step: arrays of shape (0, *step shape), each step shape read
    off the results' types with their symbols sized by the operands (a body's sizes all come
    from its inputs, which are the operands or their steps)."""
    sizes = {}
    for value, array in zip(node.inputs, operands, strict=True):
        for dim, size in zip(value.type.shape, np.shape(array), strict=True):
            if isinstance(dim, str) and dim != UNKNOWN:
                sizes.setdefault(dim, size)
    stacks = []
    for value in node.outputs[node.attrs["carried"]:]:
        try:
            shape = tuple(dims.evaluate(dim, sizes) for dim in value.type.shape[1:])
        except (KeyError, TypeError, ValueError):
            raise ChainruleError(f"a scan of no step returns an empty %{value.name}, but its "
                                 f"step's shape {value.type} is not known from the operands' "
                                 f"shapes") from None
        stacks.append(np.zeros((0, *shape), numpy_dtype(value.type.dtype)))
    return stacks
