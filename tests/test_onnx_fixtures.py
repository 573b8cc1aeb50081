"""Models exported from PyTorch, imported end to end: forward against onnxruntime on the
original file, gradients against PyTorch's autograd, and the exported training step against
the numpy backend. The fixtures and their expected values come from
tests/fixtures/onnx/make_fixtures.py (which needs torch; these tests do not)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

import chainrule
from chainrule import OptimizerSpec
from chainrule.ir import dsl_names
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx"
# fixture -> (loss attached, target input, tolerance of the gradients)
CASES = {
    "mlp": ("cross_entropy", "y", 1e-5),
    "mlp_f64": ("cross_entropy", "y", 1e-9),
    "lenet_bn": ("cross_entropy", "y", 1e-5),
    "transformer_block": ("mse", "target", 1e-5),
}


def expected(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def imported(name: str) -> chainrule.Model:
    loss, target, _ = CASES[name]
    return chainrule.import_onnx(str(FIXTURES / f"{name}.onnx"), loss=loss, targets=target)


def feeds(name: str) -> dict:
    data, (_, target, _) = expected(name), CASES[name]
    return {"x": data["input/x"], target: data["labels" if "labels" in data else "target"]}


def onnxruntime_session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options,
                                        providers=["CPUExecutionProvider"])


def assert_gradients_match(model, grads, reference, prefix, tolerance):
    """Each gradient against PyTorch's, relative to the largest gradient of the model: a
    gradient that is zero in exact arithmetic (a bias before batch norm) is rounding noise
    in both, and noise has no meaningful relative error of its own."""
    scale = max(np.max(np.abs(v)) for k, v in reference.items() if k.startswith(prefix))
    for key, value in reference.items():
        if key.startswith(prefix):
            ir_name = model.onnx_names[key.removeprefix(prefix)]
            assert_close(grads[ir_name], value, tolerance, scale=scale, what=key)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_the_imported_forward_matches_onnxruntime_on_the_original_file(name, backend):
    data = expected(name)
    session = onnxruntime_session(FIXTURES / f"{name}.onnx")
    original = session.run(None, {"x": data["input/x"]})
    ours = imported(name).run(backend=backend, **feeds(name))
    for info, reference in zip(session.get_outputs(), original, strict=True):
        tolerance = 1e-12 if reference.dtype == np.float64 else 1e-5
        assert_close(ours[info.name], reference, tolerance, what=info.name)
        assert_close(ours[info.name], data[f"output/{info.name}"], tolerance, what=info.name)


@pytest.mark.parametrize("name", CASES)
def test_gradients_with_a_loss_attached_match_pytorch(name):
    model, data = imported(name), expected(name)
    grads = model.grad(**feeds(name))
    assert_close(grads["loss"], data["loss"], CASES[name][2], what="loss")
    assert_gradients_match(model, grads, data, "grad/", CASES[name][2])


def test_batch_norm_trains_on_batch_statistics_and_moves_the_running_ones_as_pytorch_does():
    model, data = imported("lenet_bn"), expected("lenet_bn")
    grads = model.grad(training=True, **feeds("lenet_bn"))
    assert_close(grads["loss"], data["train/loss"], 1e-5, what="loss")
    assert_gradients_match(model, grads, data, "train/grad/", 1e-5)
    model.train_step(lr=0.0, optimizer="sgd", **feeds("lenet_bn"))
    for statistic in ("running_mean", "running_var"):
        prefix = f"train/{statistic}/"
        for key, value in data.items():
            if key.startswith(prefix):
                ir_name = model.onnx_names[key.removeprefix(prefix)]
                assert_close(model.params[ir_name], value, 1e-5, what=key)


@pytest.mark.parametrize("name", ["mlp", "lenet_bn", "transformer_block"])
def test_the_exported_train_step_runs_twenty_steps_in_onnxruntime_as_numpy_does(name, tmp_path):
    model = imported(name)
    path = tmp_path / "step.onnx"
    # SGD: Adam would scale the rounding noise of a gradient that is zero in exact arithmetic
    # (a conv bias before batch norm) up to full steps, differently on each backend.
    proto = model.to_onnx(path, train_step=OptimizerSpec("sgd"))
    onnx.checker.check_model(proto, full_check=True)
    session = onnxruntime_session(path)
    outputs = [o.name for o in proto.graph.output]
    carried = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    reference = imported(name)
    batch = feeds(name)
    lr = np.array(0.05, np.float32)
    for _ in range(20):
        result = dict(zip(outputs, session.run(None, {**carried, **batch, "opt.lr": lr})))
        carried.update((k, result[f"{k}.next"]) for k in carried if f"{k}.next" in result)
        reference.train_step(lr=0.05, optimizer="sgd", **batch)
    for param in reference.graph.params:
        name_ = param.value.name
        assert_close(carried[name_], reference.params[name_], 1e-4, what=name_)
    moved = [p.value.name for p in reference.graph.params if p.trainable]
    start = imported(name).params
    assert any(not np.allclose(reference.params[k], start[k]) for k in moved)


def test_an_imported_model_names_its_params_after_the_initializers():
    model = imported("mlp")
    assert set(model.onnx_names) >= {"0.weight", "0.bias", "2.weight", "2.bias", "x", "y"}
    assert [v.name for v in model.graph.inputs] == ["x", "y"]
    assert model.objective.name == "loss"


def test_freeze_and_trainable_choose_what_trains():
    path = str(FIXTURES / "mlp.onnx")
    frozen = chainrule.import_onnx(path, loss="cross_entropy", freeze=["0.weight", "0.bias"])
    names = frozen.onnx_names
    trainable = {p.value.name for p in frozen.graph.params if p.trainable}
    assert trainable == {names["2.weight"], names["2.bias"]}
    only = chainrule.import_onnx(path, loss="cross_entropy", trainable=["2.bias"])
    assert {p.value.name for p in only.graph.params if p.trainable} == {only.onnx_names["2.bias"]}
    grads = frozen.grad(**feeds("mlp"))
    assert names["0.weight"] not in grads and names["2.weight"] in grads
    with pytest.raises(chainrule.ChainruleError, match="not float initializers.*0.weight"):
        chainrule.import_onnx(path, freeze=["nope"])


@pytest.mark.parametrize("name", CASES)
def test_import_to_dsl_compiles_back_to_the_same_results(name, tmp_path):
    loss, target, tolerance = CASES[name]
    path = tmp_path / f"{name}.nn"
    result = chainrule_cli("import", FIXTURES / f"{name}.onnx", "--loss", loss, "--target-input",
                           target, "-o", path)
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    assert "# /" in text  # each statement names its ONNX node
    recompiled = chainrule.compile(str(path))
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as values:
        recompiled.set_params(dict(values))
    original = imported(name)
    assert len(recompiled.graph.nodes) == len(original.graph.nodes)
    names = dsl_names(original.graph)
    for training in (False, True):
        ours = recompiled.grad(training=training, **feeds(name))
        theirs = original.grad(training=training, **feeds(name))
        assert set(ours) == {names.get(k, k) for k in theirs}
        for key, value in theirs.items():
            assert np.array_equal(ours[names.get(key, key)], value), key
