"""Bounds on numeric settings, one definition each, shared by the command line (an argparse
type that parses an option's text) and the Python API (a check of a value passed in), so both
refuse the same values with the same words."""
from __future__ import annotations

import argparse
import math
import numbers

from .ir import ChainruleError


class Number:
    """A whole number or a finite float within bounds. As an argparse type, a value outside
    them is a usage error naming the option (exit 2), not a failure deep inside numpy or
    onnxruntime after the model compiled; `check` refuses the same values given to the API."""

    def __init__(self, kind, least=None, *, above=None, most=None, below=None):
        self.kind, self.least, self.above, self.most, self.below = kind, least, above, most, below

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:  # not a number, or an int of more digits than Python parses
            value = None
        if value is None or not self.accepts(value):
            shown = text if len(text) <= 40 else f"{text[:40]}..."
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {shown!r}")
        return value

    def check(self, value, what: str):
        """`value` as given to the API for `what`: of the wrong Python type a TypeError, out
        of bounds (or NaN, or infinite) a ChainruleError."""
        if type(value) is self.kind is float and math.isfinite(value) and self.within(value):
            return value  # the usual call, such as each step's lr, without the ABCs' checks
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise TypeError(f"{what} must be {self.describe()}, not {type(value).__name__} "
                            f"{value!r}")
        if not self.accepts(value):
            raise ChainruleError(f"{what} must be {self.describe()}, not {value!r}")
        return value

    def accepts(self, value) -> bool:
        # An int is finite however large: math.isfinite would convert it to a float first.
        return ((isinstance(value, numbers.Integral) or math.isfinite(value))
                and self.within(value))

    def within(self, value) -> bool:
        return ((self.least is None or value >= self.least)
                and (self.above is None or value > self.above)
                and (self.most is None or value <= self.most)
                and (self.below is None or value < self.below))

    def describe(self) -> str:
        kind = "a whole number" if self.kind is int else "a finite number"
        if self.least is not None and self.most is not None:
            return f"{kind} from {self.least:,} to {self.most:,}"
        bounds = [f"{words} {bound:,}" for words, bound in (
            ("at least", self.least), ("greater than", self.above), ("at most", self.most),
            ("less than", self.below)) if bound is not None]
        return f"{kind} {' and '.join(bounds)}"


COUNT = Number(int, 1)               # epochs, batch sizes, samples
STEPS = Number(int, 0)               # warmup steps, patience, epochs between decays (0: off)
POSITIVE = Number(float, above=0)    # the learning rate
NON_NEGATIVE = Number(float, 0)      # weight decay, a clipping bound (0: none), a decay factor
# numpy's Generator takes any non-negative integer as a seed, and refuses a negative one.
SEED = Number(int, 0)
# A velocity kept with momentum 1 or more never forgets a gradient: sgd diverges.
MOMENTUM = Number(float, 0, below=1)
FRACTION = Number(float, above=0, below=1)  # the share of the data held out for validation
