"""ONNX Dropout imported: with training_mode true it is the DSL's dropout (a mask drawn while the
model trains, the identity when it runs), its mask output is that mask, and its seed seeds it;
otherwise it is the identity."""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule import OptimizerSpec
from chainrule.backends import get_backend
from chainrule.onnx_import import UnsupportedModel
from chainrule.train import DROPOUT_STREAM, TrainConfig
from support.cli import chainrule as chainrule_cli
from support.paths import ROOT

RATIO = 0.25
SEED = 5
UNITS = 200
# x is the identity, so h = x @ W is W, and a step's update of W is the gradient of h itself.
X = np.eye(4, dtype=np.float32)
W = np.random.default_rng(21).normal(size=(4, UNITS)).astype(np.float32)
TARGET = np.zeros((4, UNITS), np.float32)


def constant_node(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def dropout_model(*, ratio=RATIO, training=True, seed=SEED, ratio_input=False):
    """x f32[4, 4] -> MatMul(W) -> Dropout -> y, mask. The ratio and training_mode are Constant
    nodes as torch writes them (None leaves training_mode out); `ratio_input` makes the ratio
    a graph input instead."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])]
    if ratio_input:
        inputs.append(helper.make_tensor_value_info("ratio", TensorProto.FLOAT, []))
    else:
        # A float is written as torch writes it, f32; any other value as it is.
        array = np.array(ratio, np.float32) if isinstance(ratio, float) else np.asarray(ratio)
        nodes.append(constant_node("ratio", array))
    dropout_inputs = ["h", "ratio"]
    if training is not None:
        nodes.append(constant_node("training", np.array(training)))
        dropout_inputs.append("training")
    attributes = {} if seed is None else {"seed": seed}
    nodes.append(helper.make_node("Dropout", dropout_inputs, ["y", "mask"], **attributes))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, UNITS]),
               helper.make_tensor_value_info("mask", TensorProto.BOOL, [4, UNITS])]
    graph = helper.make_graph(nodes, "dropout", inputs, outputs,
                              [numpy_helper.from_array(W, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def imported(**options):
    return chainrule.import_onnx(dropout_model(**options), loss="mse", targets="target")


def by_onnx_name(model, results):
    return {onnx_name: results[name] for onnx_name, name in model.onnx_names.items()
            if name in results}


def run(model, backend="numpy", training=False):
    """y and mask (by ONNX name) of one run: inference, or training with the backend's own
    generator (numpy's Generator(seed) of each mask)."""
    if not training:
        outputs = [model.onnx_names["y"], model.onnx_names["mask"]]
        return by_onnx_name(model, model.run(backend=backend, outputs=outputs, x=X))
    graph, _ = model.compile_graph(training=True)
    results = get_backend(backend).run(graph, {"x": X, "target": TARGET}, model.params,
                                       training=True)
    return by_onnx_name(model, results)


def dropout_masks(graph):
    return [node for node in graph.nodes if node.op == "dropout_mask"]


def expected_step(mask, lr):
    """W after one SGD step on mean((W * mask / (1 - p) - 0)^2), and that loss."""
    y = W * mask / np.float32(1 - RATIO)
    gradient = 2 * y / y.size * mask / np.float32(1 - RATIO)
    return W - lr * gradient, np.mean(np.square(y))


# ---- inference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_run_is_the_identity_and_the_mask_keeps_everything(backend):
    model = imported()
    [node] = dropout_masks(model.graph)
    assert node.attrs == {"p": RATIO, "seed": SEED}
    results = run(model, backend)
    assert np.array_equal(results["y"], W)
    assert results["mask"].dtype == np.bool_ and results["mask"].all()


def test_only_training_mode_true_with_a_ratio_draws_a_mask():
    """The identity otherwise, even while the model trains."""
    for options in ({"training": False}, {"training": None}, {"ratio": 0.0}, {}):
        model = imported(**options)
        results = run(model, training=True)
        if options:
            assert not dropout_masks(model.graph), options
            assert np.array_equal(results["y"], W) and results["mask"].all(), options
        else:
            assert len(dropout_masks(model.graph)) == 1 and not results["mask"].all()


def test_a_ratio_computed_at_run_time_or_not_a_float_is_refused_by_name():
    with pytest.raises(UnsupportedModel) as caught:
        imported(ratio_input=True)
    [problem] = caught.value.problems
    assert problem.needs_constant == "ratio"
    assert "Dropout's ratio (input 'ratio') must be a constant" in problem.reason
    # In inference the ratio matters to nothing: it may be computed.
    assert not dropout_masks(imported(ratio_input=True, training=False).graph)
    with pytest.raises(UnsupportedModel) as caught:
        imported(ratio=np.int64(0))
    assert [p.reason for p in caught.value.problems] == [
        "Dropout's ratio (input 'ratio') must be a float, not int64"]


# ---- training -----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_training_drops_about_the_ratio_and_the_mask_output_is_the_mask(backend):
    model = imported()
    results = run(model, backend, training=True)
    y, mask = results["y"], results["mask"]
    assert mask.dtype == np.bool_
    assert 0.2 < 1 - mask.mean() < 0.3
    assert np.array_equal(y[~mask], np.zeros((~mask).sum(), np.float32))
    np.testing.assert_allclose(y[mask], W[mask] / np.float32(1 - RATIO), rtol=1e-6)


def test_the_seed_attribute_seeds_the_mask_where_no_generator_is_given():
    model = imported()
    results = run(model, training=True)
    kept = np.random.default_rng(SEED).random((4, UNITS)) >= RATIO
    assert np.array_equal(results["mask"], kept)
    # Without the attribute the mask has a seed too: the node's place in the graph (after the
    # MatMul), as the DSL's dropout has.
    assert [node.attrs["seed"] for node in dropout_masks(imported(seed=None).graph)] == [1]
    # ONNX's seed is an int64; numpy's seeds are not negative.
    assert [node.attrs["seed"] for node in dropout_masks(imported(seed=-3).graph)] == \
        [2 ** 63 - 3]


def test_a_train_step_draws_the_trainers_mask_and_updates_through_kept_units_only():
    model = imported()
    lr = 0.5
    metrics = model.train_step(lr=lr, optimizer="sgd", x=X, target=TARGET)
    # The trainer's dropout generator, drawn once for the one mask.
    generator = np.random.default_rng([TrainConfig().seed, DROPOUT_STREAM])
    kept = generator.random((4, UNITS)) >= RATIO
    updated, loss = expected_step(kept, lr)
    np.testing.assert_allclose(model.params["W"], updated, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    assert np.array_equal(model.params["W"][~kept], W[~kept])


def test_the_exported_train_step_drops_units_in_onnxruntime(tmp_path):
    model = imported()
    path = tmp_path / "step.onnx"
    proto = model.to_onnx(path, train_step=OptimizerSpec("sgd"))
    onnx.checker.check_model(proto, full_check=True)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options)
    defaults = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    lr = np.array(0.5, np.float32)
    loss, updated = session.run(["loss", "W.next"],
                                {**defaults, "x": X, "target": TARGET, "opt.lr": lr})
    # onnxruntime draws its own mask: the units the step left alone are the ones it dropped.
    kept = updated != W
    assert 0.2 < 1 - kept.mean() < 0.3
    expected, expected_loss = expected_step(kept, lr)
    np.testing.assert_allclose(updated, expected, rtol=1e-6)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)


def test_a_torch_training_export_imports_with_its_dropout():
    path = ROOT / "tests/fixtures/onnx/dynamic/encoder_layer-train-ts.onnx"
    result = chainrule_cli("check", path, "--dim", "B=3", "--dim", "S=5")
    assert result.returncode == 0, result.stderr
    model = chainrule.import_onnx(path, dims={"B": 3, "S": 5})
    # Three Dropout nodes in training mode; the fourth has no training_mode and is the identity.
    assert [node.attrs["p"] for node in dropout_masks(model.graph)] == [0.1] * 3
