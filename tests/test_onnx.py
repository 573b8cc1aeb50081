"""The ONNX export: standard ONNX that passes the full checker and matches numpy in onnxruntime."""
import onnx
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends import get_backend
from chainrule.backends.onnx_backend import export_onnx
from chainrule.cli import random_inputs
from chainrule.passes import autodiff
from op_cases import CASES, Case, F, indices, scalar_objective_graph
from support.backend_checks import TOLERANCES, check_standard
from support.numeric import assert_close
from support.op_checks import check_on_onnxruntime
from support.paths import EXAMPLES


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_and_its_gradient_match_numpy_in_onnxruntime(case, dtype):
    check_on_onnxruntime(case, dtype)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "grad"])
def test_example_exports_and_matches_numpy(path, grad, tmp_path):
    model = chainrule.compile(str(path))
    proto = model.to_onnx(tmp_path / "model.onnx", grad=grad)
    check_standard(onnx.load(str(tmp_path / "model.onnx")))
    assert proto.graph.node, "export produced no nodes"
    graph = model.export_graph(grad=grad)
    feeds = random_inputs(graph, {"B": 5}, seed=0, given={})
    expected = get_backend("numpy").run(graph, feeds, model.params)
    actual = get_backend("onnxruntime").run(graph, feeds, model.params)
    for name in expected:
        assert_close(actual[name], expected[name], 1e-5, atol=1e-7, what=name)


def test_export_keeps_source_locations_and_symbolic_dims(tmp_path):
    model = chainrule.compile(str(EXAMPLES[0].parent / "mlp.nn"))
    proto = model.to_onnx(grad=True)
    docs = [node.doc_string for node in proto.graph.node]
    assert all(doc.startswith(str(EXAMPLES[0].parent / "mlp.nn")) for doc in docs if doc)
    assert any(doc.endswith("mlp.nn:8:9") for doc in docs)  # relu and its derivative
    x = next(i for i in proto.graph.input if i.name == "x")
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["B", 784]
    assert [i.name for i in proto.graph.initializer] == ["W1", "W2"]
    assert [o.name for o in proto.graph.output] == ["J", "o", "dJ/dW1", "dJ/dW2"]


def test_inference_export_prunes_unused_inputs():
    model = chainrule.compile(str(EXAMPLES[0].parent / "mlp.nn"))
    proto = model.to_onnx(outputs=["o"])
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["o"]


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_older_and_newer_opsets(opset):
    model = chainrule.compile(str(EXAMPLES[0].parent / "mlp.nn"))
    check_standard(model.to_onnx(grad=True, opset=opset))


@pytest.mark.parametrize("case, adjoint", [
    (Case("take", (F((4, 3)), indices((2,), 4))), "scatter_add"),
    (Case("gather_elements", (F((4, 3)), indices((2, 3), 4))), "scatter_elements_add"),
], ids=lambda c: getattr(c, "op", c))
def test_the_gradients_of_gathers_need_opset_16(case, adjoint):
    graph, inputs, objective = scalar_objective_graph(case)
    grad_graph, _ = autodiff(graph, objective, inputs[:1])
    check_standard(export_onnx(graph, {}, opset=13))
    with pytest.raises(ChainruleError, match=rf"the gradient of {case.op} \({adjoint}\) needs "
                                             rf"ONNX opset 16 or newer, not 13"):
        export_onnx(grad_graph, {}, opset=13)
