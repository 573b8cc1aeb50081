"""Checking the arrays given for a graph's inputs and params against their declared types."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, Graph, Value
from ..ir.types import NUMPY_DTYPES, UNKNOWN


def check_arrays(values: list[Value], arrays: dict, kind: str, dims: dict | None = None) -> dict:
    """Check `arrays` (by name) against `values`; returns the symbolic dims they bind.

    A missing or extra array, a wrong dtype or rank, a fixed dim that differs, or a symbolic dim
    bound to two sizes each raise a ChainruleError naming the array.
    """
    dims = dict(dims or {})
    bound_by = {name: "--dim" for name in dims}
    expected = {v.name: v for v in values}
    extra = sorted(set(arrays) - set(expected))
    if extra:
        raise ChainruleError(f"unknown {kind} {', '.join(extra)}; the model's {kind}s are "
                             f"{', '.join(expected) or '(none)'}")
    for value in values:
        if value.name not in arrays:
            raise ChainruleError(f"missing {kind} '{value.name}' ({value.type})")
        array = np.asarray(arrays[value.name])
        declared = value.type
        described = f"{kind} '{value.name}' is declared {declared} but given {array.dtype}" \
                    f"{list(array.shape)}"
        if array.dtype != np.dtype(NUMPY_DTYPES[declared.dtype]):
            raise ChainruleError(f"{described}: wrong dtype")
        if array.ndim != declared.rank:
            raise ChainruleError(f"{described}: wrong rank")
        for dim, size in zip(declared.shape, array.shape, strict=True):
            if isinstance(dim, int) and dim != size:
                raise ChainruleError(f"{described}: dim {dim} differs")
            if isinstance(dim, str) and dim != UNKNOWN:
                if dim in dims and dims[dim] != size:
                    raise ChainruleError(f"{described}: {dim} is {dims[dim]} in "
                                         f"{bound_by[dim]} but {size} here")
                dims.setdefault(dim, size)
                bound_by.setdefault(dim, f"{kind} '{value.name}'")
    return dims


def check_feeds(graph: Graph, inputs: dict, params: dict) -> dict:
    dims = check_arrays(graph.inputs, inputs, "input")
    check_arrays(graph.param_values(), params, "param", dims)
    return dims
