"""ONNX models on the command line: every command takes an .onnx file, a loss can be attached,
and a model that cannot be imported is one error naming every node at fault."""
import numpy as np
import onnx
from onnx import TensorProto, helper

from support.cli import chainrule
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx"
MLP = FIXTURES / "mlp.onnx"
DIGITS = ROOT / "examples" / "data"


def test_train_fine_tunes_an_imported_mlp_on_the_digits(tmp_path):
    result = chainrule("train", MLP, "--loss", "cross_entropy", "--data",
                       DIGITS / "digits_train.npz", "--val", DIGITS / "digits_test.npz",
                       "--epochs", "20", "-o", tmp_path / "trained.npz")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-3]
    validation = float(last.split("val:")[1].split("acc")[1].split("%")[0])
    assert validation > 93.0, result.stdout
    with np.load(tmp_path / "trained.npz") as trained:
        assert {"param_0.weight", "param_2.bias"} <= set(trained)


def test_train_fits_an_imported_lstm_to_the_digits_read_row_by_row(tmp_path):
    """torch's nn.LSTM classifier, imported onto one scan, trains from the command line."""
    result = chainrule("train", FIXTURES / "recurrent" / "lstm_classifier-ts.onnx", "--loss",
                       "cross_entropy", "--data", DIGITS / "digits_rows_train.npz", "--val",
                       DIGITS / "digits_rows_test.npz", "--epochs", "5", "--lr", "0.01",
                       "-o", tmp_path / "trained.npz")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-3]
    validation = float(last.split("val:")[1].split("acc")[1].split("%")[0])
    assert validation > 80.0, result.stdout


def test_check_grad_and_run_read_an_onnx_file(tmp_path):
    check = chainrule("check", MLP, "--loss", "cross_entropy")
    assert check.returncode == 0, check.stderr
    assert "y: i64[B]" in check.stdout and "loss: f32[]  (objective)" in check.stdout
    grad = chainrule("grad", MLP, "--loss", "mse", "--random-inputs", "-o", tmp_path / "g.npz")
    assert grad.returncode == 0, grad.stderr
    run = chainrule("run", MLP, "--random-inputs", "--outputs", "logits")
    assert run.returncode == 0, run.stderr
    assert "logits" in run.stdout


def test_export_train_step_of_an_imported_model_passes_the_full_checker(tmp_path):
    path = tmp_path / "step.onnx"
    result = chainrule("export", FIXTURES / "lenet_bn.onnx", "--loss", "cross_entropy",
                       "--train-step", "--optimizer", "adam", "-o", path)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    outputs = {o.name for o in proto.graph.output}
    assert {"features.1.running_mean.next", "fc.weight.next"} <= outputs
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)


def test_freeze_leaves_the_named_initializers_alone(tmp_path):
    result = chainrule("train", MLP, "--loss", "cross_entropy", "--freeze", "0.weight,0.bias",
                       "--data", DIGITS / "digits_test.npz", "--epochs", "1", "-q",
                       "-o", tmp_path / "t.npz")
    assert result.returncode == 0, result.stderr
    original = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(MLP).graph.initializer}
    with np.load(tmp_path / "t.npz") as trained:
        assert np.array_equal(trained["param_0.weight"], original["0.weight"])
        assert not np.array_equal(trained["param_2.weight"], original["2.weight"])


def unsupported_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="fine"),
             helper.make_node("TfIdfVectorizer", ["a"], ["b"], name="first_bad"),
             helper.make_node("Tanh", ["b"], ["c"], name="downstream"),
             helper.make_node("LeakyRelu", ["x"], ["d"], name="second_bad", alpha=0.1,
                              beta=2.0),
             helper.make_node("Custom", ["x"], ["e"], name="third_bad", domain="com.example"),
             helper.make_node("Add", ["c", "e"], ["f"], name="end"),
             helper.make_node("Add", ["f", "d"], ["y"], name="last")]
    model = helper.make_model(helper.make_graph(nodes, "bad", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.example", 1)])
    onnx.save(model, path)


def test_a_model_that_cannot_be_imported_lists_every_node_at_fault(tmp_path):
    path = tmp_path / "bad.onnx"
    unsupported_model(path)
    result = chainrule("check", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{path}: error: cannot import 3 nodes of this ONNX model"
    assert f"{path}:first_bad: note: TfIdfVectorizer: op not supported" in lines
    assert f"{path}:second_bad: note: LeakyRelu: attribute beta not supported" in lines
    assert any(line.startswith(f"{path}:third_bad: note: Custom: domain 'com.example'")
               for line in lines)
    assert not any("downstream" in line for line in lines)  # it only inherits the failure


def test_check_lists_every_problem_downstream_ones_included_with_its_hint(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1, 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    nodes = [helper.make_node("TfIdfVectorizer", ["x"], ["a"], name="no_such_op"),
             helper.make_node("Resize", ["a", "", "scales"], ["y"], name="downstream",
                              mode="area", nearest_mode="middle"),
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Expand", ["ones", "x_shape"], ["z"], name="to_batch")]
    ones = helper.make_tensor("ones", TensorProto.FLOAT, [2, 1, 2, 2], [1.0] * 8)
    # The failed node's output type, declared as exporters declare intermediate values.
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["B", 1, 2, 2])
    model = helper.make_model(helper.make_graph(nodes, "bad", [x], [y, z], [scales, ones],
                                                value_info=[a]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    result = chainrule("check", path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{path}: error: cannot import 3 nodes of this ONNX model"
    assert lines[1:] == [
        f"{path}:no_such_op: note: TfIdfVectorizer: op not supported",
        f"{path}:downstream: note: Resize: attribute mode='area' (supported: 'nearest', "
        f"'linear', 'cubic')",
        f"{path}:downstream: note: Resize: attribute nearest_mode='middle' (supported: "
        f"'round_prefer_floor', 'round_prefer_ceil', 'floor', 'ceil')",
        f"{path}:to_batch: note: Expand: Expand of f32[2, 1, 2, 2] to [B, 1, 2, 2]: 2 against "
        f"B cannot be decided when the model is imported (hint: fix the dim with --dim B=2)",
        f"{path}: note: the model needs ONNX ops chainrule does not import: TfIdfVectorizer"]


def test_onnx_options_on_a_dsl_model_and_bad_files_are_clear_errors(tmp_path):
    misuse = chainrule("check", ROOT / "examples" / "mlp.nn", "--loss", "mse")
    assert misuse.returncode == 2
    assert "--loss applies to .onnx models" in misuse.stderr
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xfe")
    result = chainrule("check", damaged)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{damaged}: error: not an ONNX model")
    missing = chainrule("check", tmp_path / "missing.onnx")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"{tmp_path / 'missing.onnx'}: error: no such file"
    unknown = chainrule("train", MLP, "--loss", "cross_entropy", "--freeze", "nope",
                        "--data", DIGITS / "digits_test.npz")
    assert unknown.returncode == 1 and "--freeze: nope is not" in unknown.stderr


def test_gradcheck_passes_on_an_imported_cnn_with_batch_norm_in_both_modes():
    # In training mode the conv biases before batch norm have a gradient of exactly zero:
    # both sides are rounding noise there, below what central differences resolve.
    result = chainrule("gradcheck", FIXTURES / "lenet_bn.onnx", "--loss", "cross_entropy",
                       "--random-inputs")
    assert result.returncode == 0, result.stdout
    assert "40 passed, 0 failed" in result.stdout


def test_check_shows_which_initializers_train_and_which_are_frozen(tmp_path):
    path = tmp_path / "scaled.onnx"
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Mul", ["h", "scale"], ["y"])]
    initializers = [onnx.numpy_helper.from_array(np.ones((3, 2), np.float32), "W"),
                    onnx.numpy_helper.from_array(np.array(0.5, np.float32), "scale")]
    graph = helper.make_graph(nodes, "scaled",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])],
                              initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    default = chainrule("check", path).stdout
    assert "params:\n  W: f32[3, 2]" in default
    assert "frozen (training leaves them):\n  scale: f32[]" in default
    chosen = chainrule("check", path, "--trainable", "scale").stdout
    assert "params:\n  scale: f32[]" in chosen
    assert "frozen (training leaves them):\n  W: f32[3, 2]" in chosen
