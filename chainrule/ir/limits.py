"""Size limits: what a model may ask for, checked before anything is built or allocated.

A few characters of DSL can ask for more than any machine holds (`f32[100000, 100000]`, a
function inlined a million times, `--dim B=10**12`); each limit turns that into a located error
that gives the size, instead of a MemoryError, a swap storm or a hang.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .dims import DimExpr, Quotient
from .errors import ChainruleError, SourceLoc
from .types import TensorType, numpy_dtype

# One tensor of a model: 2**31 values (8 GiB of f32). Larger is a typo, not a model.
MAX_ELEMENTS = 2 ** 31
# One model's graph, counting its backward graph and everything inlined: past this, compiling
# takes minutes and the generated code does not fit in memory. The largest example, a 1,600-layer
# MLP with its train step, has about 15,000 nodes.
MAX_NODES = 250_000
# Unrolling and inlining repeat work whether or not it adds nodes: each unrolled loop iteration,
# inlined function call and layer made lowers a block of statements again, in 10 to 100
# microseconds. A model may lower as many in all as one loop may unroll (40 nested range(2)
# loops would ask for 2**40); the examples lower at most about 100.
MAX_LOWERED_BLOCKS = 100_000
# What MAX_LOWERED_BLOCKS counts, as the errors that refuse more say.
BLOCKS_COUNTED = "each unrolled loop iteration, function call and layer made lowers one"

# A number in a dim expression (`S + 1`, `2*T`) is at most a tensor's size: the sizes computed
# from it when the model runs then stay far inside int64 on every backend (onnxruntime computes
# them in int64, and `S + 2**63 - 1` would wrap round to a negative size).
MAX_DIM_NUMBER = MAX_ELEMENTS
# A tensor's rank: numpy 1 stops at 32 dims, numpy 2 at 64.
MAX_RANK = 32
# A scan's body is a graph inside a node: scans inside scans nest graphs, which every reader of
# the model recurses into, and ONNX's protobuf readers refuse past about 30 levels.
MAX_SCAN_NESTING = 16


def itemsize(dtype: str) -> int:
    return np.dtype(numpy_dtype(dtype)).itemsize


def type_size_problem(value_type: TensorType) -> str | None:
    """Why a tensor of this type cannot exist: too many dims, or too many values. (A dim of
    size 0 is fine: an empty tensor holds nothing, and every op gives it ONNX's meaning.)"""
    if value_type.rank > MAX_RANK:
        return (f"{value_type.dtype}[...] of {value_type.rank} dims; a tensor has at most "
                f"{MAX_RANK}")
    static = [d for d in value_type.shape if isinstance(d, int)]
    count = math.prod(static)
    if count > MAX_ELEMENTS:
        return (f"{value_type}, which holds {count:,} values "
                f"({count * itemsize(value_type.dtype):,} bytes), more than the "
                f"{MAX_ELEMENTS:,} a tensor may hold")
    return None


def dim_number_problem(dim) -> str | None:
    """Why a dim expression cannot be computed when the model runs: a number in it past
    MAX_DIM_NUMBER."""
    if not isinstance(dim, DimExpr):
        return None
    polynomials = [dim.terms]
    while polynomials:
        for monomial, coefficient in polynomials.pop():
            if abs(coefficient) > MAX_DIM_NUMBER:
                return (f"the dim {dim} holds the number {coefficient}; a dim computes with "
                        f"numbers up to {MAX_DIM_NUMBER:,}, a tensor's size at most")
            polynomials += [part for atom, _ in monomial if isinstance(atom, Quotient)
                            for part in (atom.numerator, atom.denominator)]
    return None


def check_node_count(count: int, loc: SourceLoc | None) -> None:
    if count > MAX_NODES:
        raise ChainruleError(f"the model grows past {MAX_NODES:,} graph nodes here (each call "
                             f"of a function, each loop and each grad(...) adds all of its "
                             f"nodes); make it smaller", loc)


def check_scan_nesting(graph) -> None:
    """Scans nest at most MAX_SCAN_NESTING deep (IR text may nest them deeper than the DSL
    makes them); the first one past that is a located error."""
    waiting = [(graph, 0)]
    while waiting:
        outer, depth = waiting.pop()
        for node in outer.nodes:
            if "body" not in node.attrs:
                continue
            if depth == MAX_SCAN_NESTING:
                raise ChainruleError(f"this {node.op} is nested {depth + 1} deep; scans nest "
                                     f"at most {MAX_SCAN_NESTING} deep", node.loc)
            waiting.append((node.attrs["body"], depth + 1))


def check_graph_sizes(graph) -> None:
    """Every declared input, param and value of `graph` can exist, and the graph is not too
    large nor its scans too deep; the first that cannot is a located error."""
    check_node_count(len(graph.nodes), graph.nodes[-1].loc if graph.nodes else graph.loc)
    check_scan_nesting(graph)
    for value in graph.inputs:
        problem = type_size_problem(value.type)
        if problem:
            raise ChainruleError(f"input '{value.name}' is {problem}",
                                 graph.input_locs.get(value.name))
    for param in graph.params:
        problem = type_size_problem(param.value.type)
        if problem:
            raise ChainruleError(f"param '{param.value.name}' is {problem}", param.loc)
    for node in graph.nodes:
        for out in node.outputs:
            problem = type_size_problem(out.type)
            if problem:
                raise ChainruleError(f"{node.op} gives {problem}", node.loc)


def available_memory() -> int:
    """Bytes this process could still allocate: MemAvailable where Linux says it, else all of
    physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2 ** 63


def check_allocation(what: str, nbytes: int, loc: SourceLoc | None = None) -> None:
    """Refuse to allocate `nbytes` for `what` when memory cannot hold it."""
    available = available_memory()
    if nbytes > available:
        raise ChainruleError(f"{what} would take {nbytes:,} bytes, more than the "
                             f"{available:,} bytes of memory available", loc)
