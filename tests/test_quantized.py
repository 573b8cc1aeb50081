"""Casts between every dtype, and quantized (QDQ) models: import, run on both backends, and
fine-tune through the quantize-dequantize pairs with a straight-through estimator."""
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import chainrule
from support.cli import chainrule as chainrule_cli
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx"
BACKENDS = ("numpy", "onnxruntime")


def one_node_model(node, inputs, outputs, initializers=(), opset=21):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ---- casts --------------------------------------------------------------------------------------

def cast_model(to, saturate):
    node = helper.make_node("Cast", ["x"], ["y"], to=to, saturate=saturate)
    return one_node_model(node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", to, [4])])


@pytest.mark.parametrize("to, dtype, largest", [(TensorProto.FLOAT8E4M3FN, "float8_e4m3fn", 448),
                                                (TensorProto.FLOAT8E5M2, "float8_e5m2", 57344)])
def test_a_cast_to_float8_saturates_unless_told_not_to(to, dtype, largest):
    x = np.array([1e6, -1e6, np.inf, 1.0], np.float32)
    saturated = chainrule.import_onnx(cast_model(to, 1)).run(x=x)["y"]
    assert saturated.dtype == getattr(ml_dtypes, dtype)
    np.testing.assert_array_equal(saturated.astype(np.float32), [largest, -largest, largest, 1])
    overflowed = chainrule.import_onnx(cast_model(to, 0)).run(x=x)["y"].astype(np.float32)
    assert not np.isfinite(overflowed[:3]).any() and overflowed[3] == 1


def test_a_constant_cast_to_float8_saturates_when_folded():
    big = onnx.numpy_helper.from_array(np.array([1e6, 2.0], np.float32), "c")
    nodes = [helper.make_node("Cast", ["c"], ["q"], to=TensorProto.FLOAT8E4M3FN),
             helper.make_node("Cast", ["q"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("y", 1, [2])], [big])
    model = chainrule.import_onnx(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 21)]))
    np.testing.assert_array_equal(model.run()["y"], [448, 2])


def test_a_float_beyond_int4s_range_casts_to_zero_on_both_backends():
    """ONNX leaves it undefined; numpy's casts (ml_dtypes') give 0, and so does the export."""
    model = chainrule.import_onnx(cast_model(TensorProto.INT4, 1))
    x = np.array([-9.0, -8.9, 7.9, 8.0], np.float32)
    for backend in BACKENDS:
        np.testing.assert_array_equal(model.run(backend=backend, x=x)["y"].astype(int),
                                      [0, -8, 7, 0])


def test_a_cast_to_int32_stays_int32_and_indexes_a_gather():
    nodes = [helper.make_node("Cast", ["i"], ["j"], to=TensorProto.INT32),
             helper.make_node("Gather", ["x", "j"], ["y"], axis=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                     helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("j", TensorProto.INT32, [3])])
    model = chainrule.import_onnx(helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]))
    x, i = np.arange(4, dtype=np.float32) * 10, np.array([3, 0, 2])
    for backend in BACKENDS:
        results = model.run(backend=backend, x=x, i=i)
        assert results["j"].dtype == np.int32
        np.testing.assert_array_equal(results["y"], [30, 0, 20])


# ---- QuantizeLinear and DequantizeLinear ---------------------------------------------------------

def qdq_model(scale, zero_point, axis=1):
    """x -> QuantizeLinear -> q, and q -> DequantizeLinear -> y, sharing scale and zero point."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    inits = [onnx.numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             onnx.numpy_helper.from_array(np.asarray(zero_point), "z")]
    dtype = helper.np_dtype_to_tensor_dtype(np.asarray(zero_point).dtype)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 3])],
                              [helper.make_tensor_value_info("q", dtype, [2, 3]),
                               helper.make_tensor_value_info("y", 1, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_quantize_rounds_half_to_even_and_saturates_per_axis():
    model = chainrule.import_onnx(qdq_model([0.5, 1.0, 2.0], np.array([0, 10, 250], np.uint8)))
    x = np.array([[0.25, 0.5, 1.0], [-3.0, 300.0, 5.0]], np.float32)
    for backend in BACKENDS:
        results = model.run(backend=backend, x=x)
        # 0.25/0.5 = 0.5 -> 0; 0.5 + 10 = 10.5 -> 10 (even); 1/2 + 250 = 250.5 -> 250; -6 -> 0;
        # 310 -> 255; 2.5 + 250 -> 252.
        np.testing.assert_array_equal(results["q"], [[0, 10, 250], [0, 255, 252]])
        np.testing.assert_array_equal(results["y"], [[0, 0, 0], [0, 245, 4]])


def test_a_quantize_dequantize_pair_is_one_fake_quantize():
    model = chainrule.import_onnx(qdq_model(0.1, np.int8(3)))
    graph, _ = model.compile_graph(opt_level="O2")
    assert "fake_quantize" in {node.op for node in graph.nodes}


# ---- a QDQ model made by onnxruntime's quantizer -------------------------------------------------

def qdq_fixture():
    with np.load(FIXTURES / "lenet_qdq.npz") as data:
        return dict(data)


def test_the_qdq_lenet_matches_onnxruntime_running_it_on_both_backends():
    data = qdq_fixture()
    model = chainrule.import_onnx(str(FIXTURES / "lenet_qdq.onnx"))
    for backend in BACKENDS:
        (logits,) = model.run(backend=backend, x=data["input/x"]).values()
        np.testing.assert_allclose(logits, data["output/logits"], rtol=0, atol=1e-6)


def test_fine_tuning_the_qdq_lenet_lowers_its_loss():
    data = qdq_fixture()
    model = chainrule.import_onnx(str(FIXTURES / "lenet_qdq.onnx"), loss="cross_entropy",
                                  targets="y")
    batch = {"x": data["input/x"], "y": data["labels"]}
    before = float(model.grad(**batch)["loss"])
    for _ in range(20):
        model.train_step(lr=0.05, optimizer="sgd", **batch)
    assert float(model.grad(**batch)["loss"]) < before - 0.05


def test_the_cli_trains_a_qdq_model(tmp_path):
    data = qdq_fixture()
    path = tmp_path / "batch.npz"
    np.savez(path, x=data["input/x"], y=data["labels"])
    result = chainrule_cli("train", FIXTURES / "lenet_qdq.onnx", "--loss", "cross_entropy",
                           "--data", path, "--epochs", "3", "-o", tmp_path / "tuned.npz")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tuned.npz").exists()


# ---- the straight-through estimator ---------------------------------------------------------------

STE_MODEL = """
model ste(w: f64[8]) {
    param x: f64[8] = zeros()
    return sum(w * fake_quantize(x, f64(0.5), f64(2.0), lo=0.0, hi=7.0))
}
"""


def test_the_fake_quantize_gradient_is_the_straight_through_estimator():
    """d/dx sum(w * fake_quantize(x)) is w where lo <= x / scale + zero_point <= hi, else 0:
    round's derivative taken as 1, the clip's as 0 outside its range."""
    model = chainrule.compile(source=STE_MODEL)
    xs = np.array([-1.5, -1.0, -0.9, 0.0, 1.2, 2.5, 2.6, 9.0])
    weights = np.arange(1.0, 9.0)
    model.set_params({"x": xs})
    inside = (xs / 0.5 + 2.0 >= 0) & (xs / 0.5 + 2.0 <= 7)
    for backend in BACKENDS:
        grads = model.grad(backend=backend, w=weights)
        np.testing.assert_array_equal(grads["x"], np.where(inside, weights, 0.0))


def test_conv_integer_is_exact_past_float32s_integers():
    """2000 products of up to 255 by 127 sum past 2**25, where float32 holds only multiples
    of 4: the convolution still equals the int64 one on both backends."""
    rng = np.random.default_rng(0)
    x = rng.integers(200, 256, size=(1, 2000, 1, 1), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(2, 2000, 1, 1), dtype=np.int8)
    w[0] = 127  # one output channel of large sums, made odd
    x[0, 0] += 1 - int(x.astype(np.int64).sum()) % 2
    node = helper.make_node("ConvInteger", ["x", "w"], ["y"])
    model = chainrule.import_onnx(one_node_model(
        node, [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 2, 1, 1])],
        [onnx.numpy_helper.from_array(w, "w")], opset=17))
    expected = np.einsum("nchw,mchw->nmhw", x.astype(np.int64), w.astype(np.int64))
    assert expected[0, 0, 0, 0] > 2 ** 25 and expected[0, 0, 0, 0] % 2 == 1
    for backend in BACKENDS:
        np.testing.assert_array_equal(model.run(backend=backend, x=x)["y"], expected)
