"""Small ONNX models built with onnx.helper, and their imports run on both backends."""
from __future__ import annotations

import numpy as np
from onnx import helper


def model_of(nodes, inputs, outputs, initializers=(), opset=18, domains=()):
    """A model from (name, dtype, shape) inputs and outputs; a shape of None leaves it out."""
    def info(name, dtype, shape):
        return helper.make_tensor_value_info(name, dtype, shape)
    graph = helper.make_graph(nodes, "test", [info(*i) for i in inputs],
                              [info(*o) for o in outputs], list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports)


def run_both(model, **inputs):
    """Each output (by ONNX name) on numpy, after checking onnxruntime agrees."""
    feeds = {model.onnx_names[name]: array for name, array in inputs.items()}
    numpy_results = model.run(**feeds)
    onnx_results = model.run(backend="onnxruntime", **feeds)
    by_onnx = {ir: name for name, ir in model.onnx_names.items()}
    for name, array in numpy_results.items():
        np.testing.assert_allclose(onnx_results[name], array, rtol=1e-6, atol=1e-6)
    return {by_onnx[name]: array for name, array in numpy_results.items()}
