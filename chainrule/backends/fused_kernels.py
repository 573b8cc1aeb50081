"""The numpy backend's fused kernels: a group of elementwise nodes (passes/group_elementwise.py)
becomes one loop nest compiled by numba, which reads each operand once and writes the result
once, where numpy makes a pass over memory, and often a temporary, per op.

Kernels are opt-in, CHAINRULE_FUSED_KERNELS=1 with numba installed (an optional extra, `pip
install chainrule[speed]`): measured in whole train steps they have not yet beaten numpy's
separate calls on this project's 2-core machine, and each costs a compile at its first call.
Otherwise, and for a group of fewer than KERNEL_MIN_ELEMENTS elements, the backend runs a
group's nodes one numpy call at a time, as it runs every other node. Kernels
compile on their first call (about 0.1 s each, 0.4 s for the multithreaded variant) and are
shared by every group with the same source, in every graph of the process.
"""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os

from ..ir import OPS, Node, Value
from ..ir.types import INT_DTYPES, NUMPY_NAMES, UNKNOWN

# Measured on the 2-core machine (README, Performance): a kernel beats numpy's calls from about
# a thousand elements on, one thread beats two below about 65,000. Below the first, a kernel's
# gain (under 2 µs a call) would take some 50,000 calls to repay its compile time.
KERNEL_MIN_ELEMENTS = 1024
PARALLEL_MIN_ELEMENTS = 65536

# The dtypes a kernel takes: numba has no bfloat16, and computes float16 through float32 where
# numpy rounds each op's result to float16, so groups of those stay with numpy.
_TYPES = {"f32": "np.float32", "f64": "np.float64", "bool": "np.bool_",
          **{dtype: f"np.{NUMPY_NAMES[dtype]}" for dtype in INT_DTYPES}}


def numba_installed() -> bool:
    return importlib.util.find_spec("numba") is not None


def available() -> bool:
    """Whether groups run as kernels: CHAINRULE_FUSED_KERNELS=1 and numba is installed."""
    return os.environ.get("CHAINRULE_FUSED_KERNELS", "0") == "1" and numba_installed()


def _typed(number, dtype: str) -> str:
    return f"{_TYPES[dtype]}({number!r})"


def _scalar_template(template: str):
    return lambda a, attrs, t: template.format(*a)


# Each op as scalar code: (argument expressions, attrs, result dtype) -> expression. The same
# operations in the same dtype as the numpy kernels, so results agree to rounding (exactly for
# + - * /); an op missing here keeps its group on numpy. Most come from the registry's scalar
# code; those below need an attr or the result's dtype. exp, log and tanh (and sin and cos) have
# none on purpose: numba calls the scalar C library for them, 4x (exp) to 40x (tanh) slower
# than numpy's vectorised loops, which outweighs any saving in memory traffic.
SCALAR_CODE = {name: _scalar_template(op.scalar) for name, op in OPS.items()
               if op.scalar is not None}
SCALAR_CODE.update({
    "relu": lambda a, attrs, t: f"np.maximum({a[0]}, {_typed(0, t)})",
    "relu_grad": lambda a, attrs, t: f"({a[1]} * {_TYPES[t]}({a[0]} > 0))",
    "leaky_relu": lambda a, attrs, t: (f"({a[0]} if {a[0]} > 0 else "
                                       f"{_typed(attrs['alpha'], t)} * {a[0]})"),
    "cast": lambda a, attrs, t: f"{_TYPES[t]}({a[0]})",
})

def _index(value: Value, out_shape: tuple) -> str | None:
    """How the loop nest over out_shape reads value: its subscript, or None if the types do
    not say (a dim neither equal to the result's nor 1, or unknown)."""
    offset = len(out_shape) - value.type.rank
    subscript = []
    for axis, dim in enumerate(value.type.shape):
        out_dim = out_shape[offset + axis]
        if dim == out_dim and dim != UNKNOWN:
            subscript.append(f"i{offset + axis}")
        elif dim == 1:
            subscript.append("0")
        else:
            return None
    return f"[{', '.join(subscript)}]"


def kernel_source(group: tuple[Node, ...]) -> tuple[str, list[Value]] | None:
    """A group's kernel, `def kernel(operands..., out)`, and its operands (the values the group
    reads from outside); None when numpy must run it (an op or a broadcast it cannot write)."""
    inside = {node.output for node in group}
    operands = list(dict.fromkeys(v for node in group for v in node.inputs if v not in inside))
    out_shape = group[-1].output.type.shape
    if any(op.op not in SCALAR_CODE for op in group) or out_shape.count(UNKNOWN):
        return None
    if any(v.type.dtype not in _TYPES for v in operands + [node.output for node in group]):
        return None  # the scalar code is written for these dtypes alone
    if not out_shape:
        return None  # one element: no loop to fuse
    if not any(v.type.shape == out_shape for v in operands):
        return None  # the size test before the call reads an operand of the result's shape
    names = {value: f"a{index}" for index, value in enumerate(operands)}
    body, reads = [], {}
    for value in operands:
        if value.type.rank == 0:
            body.append(f"{names[value]} = scalar({names[value]})")
            reads[value] = names[value]
        else:
            subscript = _index(value, out_shape)
            if subscript is None:
                return None
            reads[value] = names[value] + subscript
    rank = len(out_shape)
    body.append(f"{', '.join(f'n{axis}' for axis in range(rank))}, = out.shape")
    indent = ""
    for axis in range(rank):
        loop = "LOOP" if axis == 0 else "range"
        body.append(f"{indent}for i{axis} in {loop}(n{axis}):")
        indent += "    "
    for index, node in enumerate(group):
        code = SCALAR_CODE[node.op]([reads[v] for v in node.inputs], node.attrs,
                                    node.output.type.dtype)
        if index == len(group) - 1:
            body.append(f"{indent}out[{', '.join(f'i{a}' for a in range(rank))}] = {code}")
        else:
            reads[node.output] = f"t{index}"
            body.append(f"{indent}t{index} = {code}")
    arguments = ", ".join([names[v] for v in operands] + ["out"])
    source = f"def kernel({arguments}):\n" + "".join(f"    {line}\n" for line in body)
    return source, operands


class Kernel:
    """One kernel source, compiled by numba on first use: single-threaded, and with the outer
    loop split over threads for results of PARALLEL_MIN_ELEMENTS or more."""

    def __init__(self, source: str):
        self.source = source
        self.name = "fused_" + hashlib.sha1(source.encode()).hexdigest()[:10]
        self.serial = self.parallel = None

    def __call__(self, *arrays):
        if arrays[-1].size >= PARALLEL_MIN_ELEMENTS:
            if self.parallel is None:
                self.parallel = _compile(self.source, parallel=True)
            self.parallel(*arrays)
        else:
            if self.serial is None:
                self.serial = _compile(self.source, parallel=False)
            self.serial(*arrays)
        return arrays[-1]


_CACHE: dict[str, Kernel] = {}


def kernel_for(source: str) -> Kernel:
    """The process' one Kernel for this source, so equal groups compile once."""
    if source not in _CACHE:
        _CACHE[source] = Kernel(source)
    return _CACHE[source]


def _compile(source: str, parallel: bool):
    import numba
    import numpy as np
    if parallel and "NUMBA_THREADING_LAYER" not in os.environ:
        # numba's default, OpenMP, keeps its threads spinning after a loop; beside OpenBLAS's
        # threads on two cores that made the lecture MLP step 5x slower (2.2 ms -> 12 ms).
        # The workqueue layer's threads sleep instead.
        numba.config.THREADING_LAYER = "workqueue"
    namespace = {"np": np, "math": math, "scalar": _scalar_reader(),
                 "LOOP": numba.prange if parallel else range}
    exec(compile(source, "<chainrule fused kernel>", "exec"), namespace)
    # error_model="numpy": a division by zero gives inf or nan, as in numpy, and raises nothing.
    return numba.njit(parallel=parallel, error_model="numpy", nogil=True)(namespace["kernel"])


_SCALAR = []


def _scalar_reader():
    """`scalar(x)` inside a kernel: the number in a 0-d array or a numpy scalar, either of which
    a rank-0 value may be at run time."""
    if not _SCALAR:
        from numba import types
        from numba.extending import overload

        def scalar(x):
            raise NotImplementedError  # only numba calls it, through the overload

        @overload(scalar)
        def _scalar(x):
            if isinstance(x, types.Array):
                return lambda x: x[()]
            return lambda x: x
        _SCALAR.append(scalar)
    return _SCALAR[0]
