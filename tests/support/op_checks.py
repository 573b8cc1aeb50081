"""The checks every op case (tests/op_cases.py) gets: its values against a plain-numpy
reference, its derivative rule against finite differences in float64, and its gradient graph on
onnxruntime against numpy. tests/test_conv.py runs them on random configurations too."""
from __future__ import annotations

import numpy as np

from chainrule.backends import get_backend
from chainrule.backends.onnx_backend import export_onnx
from chainrule.ir.types import numpy_dtype
from chainrule.passes import autodiff
from op_cases import REFERENCES, Case, draw, forward_graph, in_dtype, scalar_objective_graph

from .backend_checks import TOLERANCES, check_standard
from .numeric import assert_close, central_difference


def check_against_reference(case: Case, rng) -> None:
    """The op on the numpy backend against its plain-numpy reference (op_cases.REFERENCES):
    same dtype, same shape (the inferred one too), same values."""
    graph = forward_graph(case)
    arrays = [draw(arg, rng) for arg in case.args]
    feeds = {v.name: a for v, a in zip(graph.inputs, arrays, strict=True)}
    result = get_backend("numpy").run(graph, feeds, {})["out"]
    (node,) = graph.nodes
    expected = np.asarray(REFERENCES[case.op](*arrays, **node.attrs))
    out = node.outputs[0]
    assert result.dtype == np.dtype(numpy_dtype(out.type.dtype)) == expected.dtype, case.id
    assert result.shape == expected.shape, f"{case.id}: {result.shape} != {expected.shape}"
    assert list(out.type.shape) == list(expected.shape), f"{case.id}: inferred {out.type}"
    assert_close(result, expected, 1e-12, atol=1e-12, what=case.id)


def check_derivative_rule(case: Case) -> None:
    """The gradient of the case's scalar objective against central differences, in float64."""
    rng = np.random.default_rng(0)
    graph, inputs, objective = scalar_objective_graph(case)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(inputs, case.args, strict=True)}
    feeds["weight"] = rng.normal(size=graph.find("weight").type.shape)
    wrt = [v for v in inputs if v.type.dtype == "f64"]
    grad_graph, grads = autodiff(graph, objective, wrt)
    numpy = get_backend("numpy")
    results = numpy.run(grad_graph, feeds, {})
    for value in wrt:
        numeric = central_difference(
            lambda: float(numpy.run(graph, feeds, {})["objective"]), feeds[value.name])
        assert_close(results[grads[value.name].name], numeric, 1e-6, atol=1e-9,
                     what=f"d/d{value.name}")


def check_on_onnxruntime(case: Case, dtype: str) -> None:
    """The case's gradient graph in `dtype`, exported as standard ONNX, on onnxruntime against
    numpy."""
    case = in_dtype(case, dtype)
    rng = np.random.default_rng(1)
    graph, inputs, objective = scalar_objective_graph(case)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(inputs, case.args, strict=True)}
    weight = graph.find("weight").type
    feeds["weight"] = rng.normal(size=weight.shape).astype(numpy_dtype(weight.dtype))
    wrt = [v for v in inputs if v.type.dtype == dtype]
    grad_graph, _ = autodiff(graph, objective, wrt)
    check_standard(export_onnx(grad_graph, {}))
    expected = get_backend("numpy").run(grad_graph, feeds, {})
    actual = get_backend("onnxruntime").run(grad_graph, feeds, {})
    rtol, atol = TOLERANCES[dtype]
    for name in expected:
        assert actual[name].dtype == expected[name].dtype, name
        assert_close(actual[name], expected[name], rtol, atol=atol, what=name)


def check_gradients(model, **inputs):
    """Every param's gradient from both backends against central differences."""
    numeric = {name: central_difference(lambda: float(model.run(**inputs)["J"]), array)
               for name, array in model.params.items()}
    for backend in ("numpy", "onnxruntime"):
        grads = model.grad(backend=backend, **inputs)
        for name, expected in numeric.items():
            assert_close(grads[name], expected, 1e-6, atol=1e-9, what=f"{backend} d/d{name}")
