"""How arrays numpy cannot hold natively cross into and out of an onnxruntime session.

onnxruntime's Python binding converts only numpy's own dtypes: an ml_dtypes array (bf16, a
float8, f4e2m1, int4, int2) is refused as a feed, and such an output cannot be fetched
(1.29 and 1.32 alike). Each of those dtypes has a carrier, a numpy dtype that holds every one
of its values exactly; the session's model takes and gives the carrier at its edges and casts
to and from the dtype inside. Exported files keep the graph's own dtypes: only sessions get
the edges.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ir.types import DTYPE_OF_ONNX, ONNX_DTYPES, numpy_dtype

# Every float8, f4e2m1 and bf16 value is an f32 (NaN and the infinities included); every
# 4- and 2-bit integer is an i8 or u8.
CARRIERS = {"bf16": "f32", "f8e4m3fn": "f32", "f8e4m3fnuz": "f32", "f8e5m2": "f32",
            "f8e5m2fnuz": "f32", "f8e8m0": "f32", "f4e2m1": "f32",
            "i4": "i8", "i2": "i8", "u4": "u8", "u2": "u8"}


def carrier(dtype: str) -> str:
    """The dtype an array of `dtype` crosses a session's edge as: itself, unless numpy needs
    ml_dtypes to hold it."""
    return CARRIERS.get(dtype, dtype)


def fed_name(name: str) -> str:
    return f"{name}#fed"


def fetched_name(name: str) -> str:
    return f"{name}#fetched"


def value_edge_name(name: str, dtype: str, edge) -> str:
    """The name an input or output of `dtype` has at a session's edge (`edge` is fed_name for
    an input, fetched_name for an output)."""
    return edge(name) if dtype in CARRIERS else name


def with_carried_edges(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose inputs and outputs of a carried dtype are their carriers', cast
    at the edge: input x is fed as `x#fed`, output y fetched as `y#fetched`."""
    if not any(_dtype_of(info) in CARRIERS
               for info in [*model.graph.input, *model.graph.output]):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    casts_in = []
    for info in graph.input:
        dtype = _dtype_of(info)
        if dtype in CARRIERS:
            casts_in.append(helper.make_node("Cast", [fed_name(info.name)], [info.name],
                                             name=fed_name(info.name), to=ONNX_DTYPES[dtype]))
            info.name = fed_name(info.name)
            info.type.tensor_type.elem_type = ONNX_DTYPES[CARRIERS[dtype]]
    for info in graph.output:
        dtype = _dtype_of(info)
        if dtype in CARRIERS:
            graph.node.append(helper.make_node("Cast", [info.name], [fetched_name(info.name)],
                                               name=fetched_name(info.name),
                                               to=ONNX_DTYPES[CARRIERS[dtype]]))
            info.name = fetched_name(info.name)
            info.type.tensor_type.elem_type = ONNX_DTYPES[CARRIERS[dtype]]
    nodes = casts_in + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


def to_carrier(array: np.ndarray, dtype: str) -> np.ndarray:
    """`array` (of `dtype`) as the session takes it."""
    wanted = numpy_dtype(carrier(dtype))
    return array if array.dtype == wanted else np.asarray(array).astype(wanted)


def from_carrier(array: np.ndarray, dtype: str) -> np.ndarray:
    """A fetched array of `dtype`'s carrier as `dtype` again."""
    wanted = numpy_dtype(dtype)
    return array if array.dtype == wanted else array.astype(wanted)


def _dtype_of(info: onnx.ValueInfoProto) -> str | None:
    return DTYPE_OF_ONNX.get(info.type.tensor_type.elem_type)
