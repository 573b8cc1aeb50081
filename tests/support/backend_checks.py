"""Checks between backends: standard ONNX, the tolerances between numpy and onnxruntime, and
the compiled numpy backend against the interpreter it replaces."""
from __future__ import annotations

import numpy as np
import onnx

from chainrule.backends.numpy_backend import NumpyBackend
from chainrule.backends.numpy_compiled import compile_graph

# dtype -> (rtol, atol) between the two backends
TOLERANCES = {"f64": (1e-12, 1e-12), "f32": (1e-5, 1e-6)}


def check_standard(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert [o.domain for o in model.opset_import] == [""]
    assert all(node.domain == "" for node in model.graph.node)


def assert_identical(actual: dict, expected: dict, what: str = "", rtol: float = 0.0) -> None:
    assert list(actual) == list(expected), what
    for name, value in expected.items():
        got = np.asarray(actual[name])
        assert got.dtype == value.dtype, f"{what} {name}: dtype {got.dtype} != {value.dtype}"
        assert got.shape == value.shape, f"{what} {name}: shape {got.shape} != {value.shape}"
        if rtol and value.dtype.kind == "f":  # relative to the largest entry: sums cancel
            scale = np.max(np.abs(value), initial=0.0)
            assert np.all(np.abs(got - value) <= rtol * scale), f"{what} {name} differs"
        else:
            assert np.array_equal(got, value, equal_nan=True), f"{what} {name} differs"


def copies(arrays: dict) -> dict:
    return {name: np.array(value, copy=True) for name, value in arrays.items()}


def check_against_interpreter_twice(graph, feeds: dict, params: dict,
                                    rtol: float = 0.0) -> None:
    """One compiled function, called twice, against the interpreter; nothing it was given or
    gave back may change. `rtol` allows rounding: a convolution's kernels keep the batch
    innermost in memory, and a sum over a buffer laid out otherwise adds in another order."""
    expected = NumpyBackend().run(graph, feeds, params)
    compiled = compile_graph(graph)
    feeds_before, params_before = copies(feeds), copies(params)
    first = compiled(feeds, params)
    assert_identical(first, expected, "first call", rtol)
    first_before = copies(first)
    second = compiled(feeds, params)
    assert_identical(second, expected, "second call", rtol)
    assert_identical(first, first_before, "first call's outputs after the second call")
    assert_identical(feeds, feeds_before, "inputs after two calls")
    assert_identical(params, params_before, "params after two calls")
