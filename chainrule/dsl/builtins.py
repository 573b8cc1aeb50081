"""The DSL's built-in functions: how a call's arguments map onto an IR op's inputs and attrs.

One entry per built-in. Adding an op to the DSL means one entry here (and its IR rules).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

NO_DEFAULT = object()


def _axes(axis):
    """`axis=1`, `axis=(0, 2)` or `axis=none` as the IR's axes attribute."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, tuple)):
        raise TypeError("axis must be an integer or a tuple of integers")
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _ints(name):
    def convert(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in value):
            return value
        raise TypeError(f"{name} must be an integer or a tuple of integers")
    return convert


def _int(name):
    def convert(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer")
        return value
    return convert


def _bool(name):
    def convert(value):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false")
        return value
    return convert


@dataclass(frozen=True)
class Builtin:
    op: str
    tensors: tuple[str, ...]
    # DSL option name -> (default, converter to the IR attribute value, IR attribute name)
    options: dict = field(default_factory=dict)

    @property
    def params(self) -> tuple[str, ...]:
        return self.tensors + tuple(self.options)


def _option(default, convert: Callable, attr: str):
    return (default, convert, attr)


REDUCTION_OPTIONS = {"axis": _option(None, _axes, "axes"),
                     "keepdims": _option(False, _bool("keepdims"), "keepdims")}

BUILTINS: dict[str, Builtin] = {}


def builtin(name, op, tensors, options=None):
    BUILTINS[name] = Builtin(op, tuple(tensors), dict(options or {}))


for _unary in ("relu", "sigmoid", "tanh", "exp", "log"):
    builtin(_unary, _unary, ("x",))
for _binary in ("add", "sub", "mul", "div", "pow", "matmul"):
    builtin(_binary, _binary, ("a", "b"))
builtin("where", "where", ("cond", "a", "b"))
builtin("sum", "sum", ("x",), REDUCTION_OPTIONS)
builtin("mean", "mean", ("x",), REDUCTION_OPTIONS)
builtin("softmax", "softmax", ("x",), {"axis": _option(-1, _int("axis"), "axis")})
builtin("transpose", "transpose", ("x",), {"perm": _option(NO_DEFAULT, _ints("perm"), "perm")})
builtin("cross_entropy", "cross_entropy", ("logits", "labels"))
builtin("mse", "mse", ("pred", "target"))
builtin("one_hot", "one_hot", ("labels",),
        {"n": _option(NO_DEFAULT, _int("n"), "depth")})

# Casts: `f32(x)` converts x to f32.
CASTS = ("f32", "f64", "i64", "bool")
