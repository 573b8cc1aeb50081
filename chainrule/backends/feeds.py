"""Checking the arrays given for a graph's inputs and params against their declared types."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, Graph, Value
from ..ir.types import NUMPY_DTYPES, UNKNOWN, dtype_of_numpy


def check_arrays(values: list[Value], arrays: dict, kind: str, dims: dict | None = None) -> dict:
    """Check `arrays` (by name) against `values`; returns the symbolic dims they bind.

    A missing or extra array, a wrong dtype or rank, a fixed dim that differs, or a symbolic dim
    bound to two sizes each raise a ChainruleError naming the array, what was declared and what
    was given. `dims` are sizes already bound (by the inputs, when checking params).
    """
    dims = dict(dims or {})
    bound_by = {name: "the inputs" for name in dims}
    expected = {v.name: v for v in values}
    extra = [name for name in arrays if name not in expected]
    if extra:
        raise ChainruleError(f"unknown {_plural(kind, extra)} {_quoted(extra)}; the model's "
                             f"{kind}s are {', '.join(expected) or '(none)'}")
    missing = [v for v in values if v.name not in arrays]
    if missing:
        declared = ", ".join(f"'{v.name}' (declared {v.type})" for v in missing)
        raise ChainruleError(f"missing {_plural(kind, missing)} {declared}; given "
                             f"{_quoted(arrays) or 'none'}")
    for value in values:
        declared = value.type
        try:
            array = np.asarray(arrays[value.name])
        except (ValueError, TypeError) as error:
            raise ChainruleError(f"{kind} '{value.name}' is declared {declared} but given "
                                 f"something that is not an array ({error})") from None
        given_dtype = _dtype_name(array.dtype)
        described = (f"{kind} '{value.name}' is declared {declared} but given {given_dtype}"
                     f"[{', '.join(map(str, array.shape))}]")
        if array.dtype != np.dtype(NUMPY_DTYPES[declared.dtype]):
            raise ChainruleError(f"{described}: the dtype is {given_dtype}, not {declared.dtype}")
        if array.ndim != declared.rank:
            raise ChainruleError(f"{described}: it has {array.ndim} axes, not {declared.rank}")
        for axis, (dim, size) in enumerate(zip(declared.shape, array.shape, strict=True)):
            if isinstance(dim, int) and dim != size:
                raise ChainruleError(f"{described}: axis {axis} has size {size}, not {dim}")
            if isinstance(dim, str) and dim != UNKNOWN:
                if dim in dims and dims[dim] != size:
                    raise ChainruleError(f"{described}: {dim} is {dims[dim]} in "
                                         f"{bound_by[dim]} but {size} here")
                dims.setdefault(dim, size)
                bound_by.setdefault(dim, f"{kind} '{value.name}'")
    return dims


def _plural(kind: str, items) -> str:
    return kind if len(items) == 1 else kind + "s"


def _quoted(names) -> str:
    return ", ".join(f"'{name}'" for name in names)


def _dtype_name(dtype: np.dtype) -> str:
    """A dtype as the DSL writes it (`f64`), or as numpy does when the DSL has no name for it."""
    try:
        return dtype_of_numpy(dtype)
    except ValueError:
        return str(dtype)


def check_feeds(graph: Graph, inputs: dict, params: dict) -> dict:
    dims = check_arrays(graph.inputs, inputs, "input")
    check_arrays(graph.param_values(), params, "param", dims)
    return dims


class CheckedFeeds:
    """A graph's input and param arrays in graph order, fully checked once per signature.

    Checking names, dtypes and dims costs as much as running a small graph, so a backend checks
    each distinct (dtype, shape) signature once and then only compares signatures."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.seen: set = set()

    def arrays(self, inputs: dict, params: dict) -> list[np.ndarray]:
        try:
            arrays = [_as_array(inputs[v.name]) for v in self.graph.inputs]
            arrays += [_as_array(params[v.name]) for v in self.graph.param_values()]
        except (KeyError, ValueError, TypeError):
            arrays = None  # missing, or not an array: check_feeds says which
        signature = arrays and (len(inputs), len(params),
                                tuple((a.dtype, a.shape) for a in arrays))
        if signature not in self.seen:
            check_feeds(self.graph, inputs, params)
            self.seen.add(signature)
        return arrays


def _as_array(value) -> np.ndarray:
    return value if type(value) is np.ndarray else np.asarray(value)
