"""A scan's loop on numpy arrays, shared by the compiled backend and the interpreter: each runs
the body its own way and hands this loop the function that runs one step."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError


class StepError(Exception):
    """A body step failed: the step it failed at, and the error."""

    def __init__(self, step: int, error: Exception):
        super().__init__(str(error))
        self.step, self.error = step, error


def scan_loop(step, operands, carried: int, scanned: int, length: int, reverse: bool) -> tuple:
    """The scan's results: the carried values after the last step, then each step's values
    stacked along a new leading axis at their step's index. `step(*inputs)` runs the body on
    the carried values, one slice of each sequence, and the outer values."""
    if length < 1:
        raise ChainruleError(f"a scan needs at least one step; its length came to {length}")
    state = list(operands[:carried])
    sequences = operands[carried:carried + scanned]
    outer = list(operands[carried + scanned:])
    for sequence in sequences:
        if len(sequence) != length:
            raise ChainruleError(f"a scan over {length} steps got a sequence of length "
                                 f"{len(sequence)}")
    steps = []
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
