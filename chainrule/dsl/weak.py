"""Weakly typed literal expressions: a built-in call or operator on literals alone.

A number has no dtype of its own in the DSL, and neither has `sqrt(2.0)` or `-exp(-1.0) * 2`:
such an expression is kept as a `Weak` value and lowered only when it meets a typed value, in
that value's dtype (see `ExpressionLowerer.lower_weak`), as JAX's weak types do.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import SourceLoc

# Operators whose result has their operands' dtype, so on weak operands the result is weak too,
# and how they read. Comparisons and logic give bools: weak operands are lowered as f32 there.
WEAK_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@",
                  "neg": "-"}
# Built-ins lowered at the call even on literals alone: grad and jvp differentiate the values
# they are given, each dropout draws its mask by its place in the graph, and a constructor's
# tensor has a dtype of its own (f32; i64 for arange; full's value's), so that `h = zeros((B, 4))`
# can start a value a loop carries.
STRONG_BUILTINS = frozenset({"grad", "jvp", "dropout", "zeros", "ones", "full", "eye", "arange"})
# How deep an error message shows a weak value's arguments.
SHOWN_DEPTH = 6


@dataclass(eq=False)
class Weak:
    """A literal-only call or operator, e.g. `sqrt(2.0)`: weakly typed until it meets a typed
    value, then lowered in that value's dtype by `Lowerer.lower_weak` (once per dtype).

    `function` is a built-in, or an operator's op when `symbol` is set; the arguments are
    numbers, tuples or Weak values, as `Lowerer.x_call` collects them: ((value, loc), ...) and
    {key: (value, loc)}. Compared by identity: the lowerer keys its lowered forms on it.
    """
    function: str
    symbol: str | None
    positional: tuple
    keywords: dict
    loc: SourceLoc
    name: str | None = None  # what the model's text calls it, for the lowered value
    # Whether a float literal is in it (see `is_float_literal`). Set here rather than found by
    # a walk when needed: a weak value nests as deep as the text does.
    is_float: bool = field(init=False)

    def __post_init__(self):
        self.is_float = any(map(is_float_literal, self.arguments))

    @property
    def arguments(self) -> list:
        return [v for v, _ in self.positional] + [v for v, _ in self.keywords.values()]

    def __repr__(self) -> str:
        return self.text(SHOWN_DEPTH)

    def text(self, depth: int) -> str:
        """As DSL text, arguments nested deeper than `depth` shown as '...'."""
        def show(value):
            if not isinstance(value, Weak):
                return literal_text(value)
            shown = value.text(depth - 1) if depth > 1 else "..."
            return f"({shown})" if self.symbol and value.symbol else shown
        arguments = [show(v) for v, _ in self.positional]
        arguments += [f"{key}={show(v)}" for key, (v, _) in self.keywords.items()]
        if self.symbol is None:
            return f"{self.function}({', '.join(arguments)})"
        if len(arguments) == 1:
            return self.symbol + arguments[0]
        return f" {self.symbol} ".join(arguments)


def literal_text(value) -> str:
    """A constant as DSL text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        items = ", ".join(map(literal_text, value))
        return f"({items},)" if len(value) == 1 else f"({items})"
    return repr(value)


def is_float_literal(value) -> bool:
    """A float as numpy 2 reads a Python scalar (NEP 50): `0.5` and `sqrt(2.0)` are, `1` and
    `maximum(1, 2)` are not."""
    return isinstance(value, float) or isinstance(value, Weak) and value.is_float
