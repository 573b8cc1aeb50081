"""Checking the arrays given for a graph's inputs and params against their declared types."""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from ..ir import OPS, ChainruleError, Graph, Node, Value, dims as dim_exprs
from ..ir.types import UNKNOWN, dtype_of_numpy, numpy_dtype


def check_arrays(values: list[Value], arrays: dict, kind: str, dims: dict | None = None) -> dict:
    """Check `arrays` (by name) against `values`; returns the symbolic dims they bind.

    A missing or extra array, a wrong dtype or rank, a fixed dim that differs, a symbolic dim
    bound to two sizes, or an expression dim (`2*B`) that is not its size each raise a
    ChainruleError naming the array, what was declared and what was given. `dims` are sizes
    already bound (by the inputs, when checking params).
    """
    dims = dict(dims or {})
    bound_by = {name: "the inputs" for name in dims}
    expressions = []
    expected = {v.name: v for v in values}
    extra = [name for name in arrays if name not in expected]
    if extra:
        raise ChainruleError(f"unknown {_plural(kind, extra)} {quoted(extra)}; the model's "
                             f"{kind}s are {', '.join(expected) or '(none)'}")
    missing = [v for v in values if v.name not in arrays]
    if missing:
        declared = ", ".join(f"'{v.name}' (declared {v.type})" for v in missing)
        raise ChainruleError(f"missing {_plural(kind, missing)} {declared}; given "
                             f"{quoted(arrays) or 'none'}")
    for value in values:
        declared = value.type
        try:
            array = np.asarray(arrays[value.name])
        except (ValueError, TypeError) as error:
            raise ChainruleError(f"{kind} '{value.name}' is declared {declared} but given "
                                 f"something that is not an array ({error})") from None
        given_dtype = dtype_name(array.dtype)
        described = (f"{kind} '{value.name}' is declared {declared} but given {given_dtype}"
                     f"[{', '.join(map(str, array.shape))}]")
        if array.dtype != np.dtype(numpy_dtype(declared.dtype)):
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
            elif dim_exprs.is_symbolic(dim):
                expressions.append((described, axis, dim, size, f"{kind} '{value.name}'"))
    _solve_expressions(expressions, dims, bound_by)
    for described, axis, dim, size, where in expressions:
        _check_expression(described, axis, dim, size, dims, bound_by)
    return dims


def _solve_expressions(expressions, dims: dict, bound_by: dict) -> None:
    """Axes declared as expressions bind the one symbol each leaves unbound (`2*B` of 6 rows
    makes B 3), over and over while one does, whatever order the inputs come in."""
    pending = list(expressions)
    while pending:
        for item in pending:
            _, _, dim, size, where = item
            solved = dim_exprs.solve(dim, size, dims)
            if solved is not None:
                dims[solved[0]], bound_by[solved[0]] = solved[1], where
                pending.remove(item)
                break
        else:
            return


def _check_expression(described, axis, dim, size, dims, bound_by) -> None:
    """An axis declared as an expression must equal its value under the bound sizes."""
    symbols = sorted(dim_exprs.symbols(dim))
    known = ", ".join(f"{s}={dims[s]} (from {bound_by[s]})" for s in symbols if s in dims)
    unbound = [s for s in symbols if s not in dims]
    if len(unbound) == 1:  # solving found no size of at least 1
        raise ChainruleError(f"{described}: axis {axis} has size {size}, which {dim} is for no "
                             f"size of {unbound[0]}" + (f" with {known}" if known else ""))
    if unbound:
        raise ChainruleError(f"{described}: axis {axis} is declared {dim}, and no input binds "
                             f"{', '.join(unbound)} by itself")
    expected = dim_exprs.evaluate(dim, dims)
    if expected != size:
        raise ChainruleError(f"{described}: axis {axis} has size {size}, but {dim} is "
                             f"{expected} with {known}")


def _plural(kind: str, items) -> str:
    return kind if len(items) == 1 else kind + "s"


def quoted(names) -> str:
    return ", ".join(f"'{name}'" for name in names)


def dtype_name(dtype: np.dtype) -> str:
    """A dtype as the DSL writes it (`f64`), or as numpy does when the DSL has no name for it."""
    try:
        return dtype_of_numpy(dtype)
    except ValueError:
        return str(dtype)


def check_feeds(graph: Graph, inputs: dict, params: dict) -> dict:
    dims = check_arrays(graph.inputs, inputs, "input")
    check_arrays(graph.param_values(), params, "param", dims)
    check_index_ranges(index_inputs(graph), inputs, dims)
    return dims


# ---- labels and indices -----------------------------------------------------------------------

@dataclass(frozen=True)
class IndexInput:
    """A graph input that an op reads as class labels or indices, and the op's bound on it."""

    name: str
    node: Node
    bound: int | str           # exclusive upper bound: a size, or a symbolic dim
    negatives: bool            # the op counts negative indices from the end, as numpy does

    def describe(self, size: int) -> str:
        noun = "indices" if self.negatives else "labels"
        low = -size if self.negatives else 0
        reader = OPS[self.node.op].index_input.described.format(op=self.node.op, size=size)
        return f"{noun} for {reader} lie in [{low}, {size})"


def index_inputs(graph: Graph) -> list[IndexInput]:
    """Every (input, op) pair where an op reads a graph input as labels or indices; of ops that
    bound an input alike (a loss and its gradient), the first."""
    inputs = set(graph.inputs)
    found = {}
    for node in graph.nodes:
        operand = OPS[node.op].index_input
        if operand is None or node.inputs[operand.position] not in inputs:
            continue
        bound = operand.bound([v.type for v in node.inputs], node.attrs)
        index = IndexInput(node.inputs[operand.position].name, node, bound, operand.negatives)
        found.setdefault((index.name, index.bound, index.negatives), index)
    return list(found.values())


def label_bounds(graph: Graph) -> dict[str, int]:
    """The tightest static exclusive upper bound of each labels input."""
    bounds = {}
    for index in index_inputs(graph):
        if isinstance(index.bound, int):
            bounds[index.name] = min(index.bound, bounds.get(index.name, index.bound))
    return bounds


INT64 = np.dtype(np.int64)
# Up to this many indices Python's min and max over a list are quicker than numpy's reductions,
# which take microseconds to start (more when a session's run has just left the caches cold).
FEW_INDICES = 64


def check_index_ranges(indexed: list[IndexInput], inputs: dict, dims: dict) -> None:
    """Refuse labels or indices outside what their op accepts, the same way before every
    backend: numpy would index from the end or fail, onnxruntime return garbage or fail."""
    for index in indexed:
        size = dims.get(index.bound) if isinstance(index.bound, str) else index.bound
        array = _as_array(inputs[index.name])
        if size is None or array.size == 0:
            continue
        if array.size <= FEW_INDICES:
            values = (array if array.ndim == 1 else array.ravel()).tolist()
            smallest, largest = min(values), max(values)
        elif not index.negatives and array.dtype == INT64 and (
                array.view(np.uint64).max() < size):
            continue  # one pass: a negative label reads as a huge unsigned one
        else:
            smallest, largest = array.min(), array.max()
        low = -size if index.negatives else 0
        if smallest < low or largest >= size:
            bad = smallest if smallest < low else largest
            raise ChainruleError(f"input '{index.name}' holds {bad}, out of range: "
                                 f"{index.describe(size)}", index.node.loc)


DTYPE_AND_SHAPE = operator.attrgetter("dtype", "shape")


def _signature(counts: tuple, arrays: list) -> tuple:
    """What checking `arrays` depends on: how many were given (a name no input has adds one)
    and each one's type, dtype and shape. Types included, a signature seen after a check holds
    numpy arrays only; what has no dtype raises AttributeError."""
    return (*counts, *map(type, arrays), *map(DTYPE_AND_SHAPE, arrays))


class CheckedFeeds:
    """A graph's input and param arrays in graph order, fully checked once per signature.

    Checking names, dtypes and dims costs as much as running a small graph, so a backend checks
    each distinct (dtype, shape) signature once and then only compares signatures. `held`
    names the inputs and params a backend keeps itself between calls (see `fed_arrays`)."""

    def __init__(self, graph: Graph, held=frozenset()):
        self.graph = graph
        self.seen: dict = {}  # signature -> the symbolic dims it binds, first call's first
        self.indexed = index_inputs(graph)
        self.held = frozenset(held)
        self.fed = [v for v in graph.inputs if v.name not in self.held]
        self.fed_names = [v.name for v in self.fed]
        self.input_names = [v.name for v in graph.inputs]
        self.param_names = [v.name for v in graph.param_values()]

    @property
    def first_dims(self) -> dict:
        """The symbolic dims of the first call's signature."""
        return next(iter(self.seen.values()))

    def fed_arrays(self, inputs: dict, held) -> list[np.ndarray]:
        """The arrays of the inputs not held, in graph order. The first call with each
        signature of theirs checks everything, the held inputs and params included: `held()`
        gives them by name, and is called only then. A held value keeps its shape and dtype,
        so later calls compare signatures."""
        try:
            arrays = [inputs[name] for name in self.fed_names]
            signature = _signature((len(inputs),), arrays)
        except (KeyError, AttributeError):
            signature = None  # missing, or not an array: check_feeds says which
        dims = self.seen.get(signature)
        if dims is None:
            held = held()
            params = {v.name: held[v.name] for v in self.graph.param_values()}
            every = dict(inputs)
            every.update((name, held[name]) for name in self.held if name not in params)
            unknown = sorted(self.held & set(inputs))
            if unknown:
                raise ChainruleError(f"input(s) {quoted(unknown)} are held by the backend "
                                     f"between calls, not fed")
            dims = check_feeds(self.graph, every, params)
            arrays = [_as_array(array) for array in arrays]
            self.seen[_signature((len(inputs),), arrays)] = dims
        elif self.indexed:
            check_index_ranges(self.indexed, inputs, dims)
        return arrays

    def arrays(self, inputs: dict, params: dict) -> list[np.ndarray]:
        # Written for the steady state, where this is most of a small graph's call overhead.
        try:
            arrays = [inputs[name] for name in self.input_names]
            arrays += [params[name] for name in self.param_names]
            signature = _signature((len(inputs), len(params)), arrays)
        except (KeyError, AttributeError):
            signature = None  # missing, or not an array: check_feeds says which
        dims = self.seen.get(signature)
        if dims is None:
            dims = check_feeds(self.graph, inputs, params)
            arrays = [_as_array(array) for array in arrays]
            self.seen[_signature((len(inputs), len(params)), arrays)] = dims
        elif self.indexed:  # values change from call to call: check them every time
            check_index_ranges(self.indexed, inputs, dims)
        return arrays


def _as_array(value) -> np.ndarray:
    return value if type(value) is np.ndarray else np.asarray(value)
