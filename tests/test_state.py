"""State: values a model keeps that training updates but never differentiates, and batch_norm,
whose running statistics are state, in training and in inference."""
import numpy as np
import onnx
import onnxruntime
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.ir import parse_graph, print_graph
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close, central_difference

BN = """model bn(x: f64[B, 3, 4, 4], y: i64[B]) {
    param gamma: f64[3] = ones()
    param beta: f64[3] = zeros()
    param W: f64[2, 48] = glorot()
    state mean: f64[3] = zeros()
    state var: f64[3] = ones()
    h = batch_norm(x, gamma, beta, mean, var, momentum=0.2, eps=0.001)
    J = cross_entropy(reshape(h, (-1, 48)) @ W.T, y)
    return J, h
}
"""


def feeds(rng, rows=5):
    return {"x": rng.normal(size=(rows, 3, 4, 4)) * 2 + 1, "y": rng.integers(0, 2, rows)}


def hand_batch_norm(x, gamma, beta, mean, var, eps):
    spread = (1, -1, 1, 1)
    return ((x - mean.reshape(spread)) / np.sqrt(var.reshape(spread) + eps) * gamma.reshape(spread)
            + beta.reshape(spread))


@pytest.fixture
def model():
    m = chainrule.compile(source=BN)
    rng = np.random.default_rng(0)
    m.set_params({"gamma": rng.normal(size=3) + 1, "beta": rng.normal(size=3),
                  "mean": rng.normal(size=3), "var": rng.random(3) + 0.5})
    return m


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_inference_normalises_with_the_running_statistics(model, backend):
    data = feeds(np.random.default_rng(1))
    p = model.params
    expected = hand_batch_norm(data["x"], p["gamma"], p["beta"], p["mean"], p["var"], 1e-3)
    outputs = model.run(backend=backend, **data)
    assert sorted(outputs) == ["J", "h"]  # the state updates are no output of inference
    assert_close(outputs["h"], expected, 1e-12)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_training_normalises_with_the_batch_and_moves_the_running_statistics(model, backend):
    data = feeds(np.random.default_rng(2))
    before = {k: v.copy() for k, v in model.params.items()}
    x = data["x"]
    batch_mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    graph, _ = model.compile_graph(training=True)
    outputs = model.backend(backend).run(graph, data, model.params)
    expected = hand_batch_norm(x, before["gamma"], before["beta"], batch_mean, batch_var, 1e-3)
    assert_close(outputs["h"], expected, 1e-12)
    model.train_step(lr=0.0, optimizer="sgd", backend=backend, **data)
    unbiased = x.var(axis=(0, 2, 3), ddof=1)  # PyTorch's running variance is unbiased
    assert_close(model.params["mean"], 0.8 * before["mean"] + 0.2 * batch_mean, 1e-12)
    assert_close(model.params["var"], 0.8 * before["var"] + 0.2 * unbiased, 1e-12)
    assert_close(model.params["gamma"], before["gamma"], 0)  # lr 0: params stay


@pytest.mark.parametrize("training", [False, True])
def test_gradients_in_both_modes_match_finite_differences(model, training):
    data = feeds(np.random.default_rng(3))
    grads = model.grad(wrt=["gamma", "W", "x"], training=training, **data)
    graph, _ = model.compile_graph(training=training)
    backend = model.backend("numpy")

    def objective():
        return float(backend.run(graph, data, model.params)["J"])
    for name in ("gamma", "W"):
        assert_close(grads[name], central_difference(objective, model.params[name]), 1e-6,
                     what=name)
    assert_close(grads["x"], central_difference(objective, data["x"]), 1e-6, what="x")


def test_a_gradient_inside_the_model_keeps_the_mode_choice():
    """grad(...) expands before the mode is chosen: train_or_eval's own derivative rule."""
    source = BN.replace("    return J, h", "    P = J + 0.1 * sum(grad(J, x) ** 2)\n    return P")
    model = chainrule.compile(source=source)
    data = feeds(np.random.default_rng(4))
    for training in (False, True):
        grads = model.grad(wrt=["gamma"], training=training, **data)
        graph, _ = model.compile_graph(training=training)
        backend = model.backend("numpy")
        numeric = central_difference(lambda: float(backend.run(graph, data, model.params)["P"]),
                                     model.params["gamma"])
        assert_close(grads["gamma"], numeric, 1e-6, what=f"training={training}")


def test_state_in_the_ir_text_round_trips_and_checks():
    model = chainrule.compile(source=BN)
    text = print_graph(model.graph)
    assert "  state %mean: f64[3] = zeros()" in text
    assert "  update %mean = %mean.next" in text and "train_or_eval(" in text
    assert print_graph(parse_graph(text)) == text
    trained = chainrule.compile(source=text)
    data = feeds(np.random.default_rng(5))
    trained.train_step(lr=0.1, **data)
    assert not np.array_equal(trained.params["mean"], np.zeros(3))


def test_resume_is_bit_exact_with_state(tmp_path):
    rng = np.random.default_rng(6)
    data = feeds(rng, rows=22)
    config = dict(epochs=3, batch_size=8, lr=0.05, optimizer=OptimizerSpec("adam"))
    straight = Trainer(chainrule.compile(source=BN), TrainConfig(**config))
    straight.fit(data)
    first = Trainer(chainrule.compile(source=BN), TrainConfig(**{**config, "epochs": 1}))
    first.fit(data, checkpoint_dir=tmp_path)
    resumed = Trainer(chainrule.compile(source=BN), TrainConfig(**config))
    resumed.load_checkpoint(tmp_path, override=True)
    resumed.fit(data)
    for name in ("mean", "var", "gamma", "W"):
        assert np.array_equal(straight.params[name], resumed.params[name]), name
    assert not np.array_equal(straight.params["var"], np.ones(3))


def test_the_exported_train_step_carries_state_through_onnxruntime(tmp_path):
    model = chainrule.compile(source=BN.replace("f64", "f32"))
    path = tmp_path / "step.onnx"
    proto = model.to_onnx(path, train_step=OptimizerSpec("sgd"))
    onnx.checker.check_model(proto, full_check=True)
    outputs = [o.name for o in proto.graph.output]
    assert "mean.next" in outputs and "var.next" in outputs
    state = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options)
    reference = chainrule.compile(source=BN.replace("f64", "f32"))
    rng = np.random.default_rng(7)
    for _ in range(3):
        data = {k: v.astype(np.float32) if v.dtype.kind == "f" else v
                for k, v in feeds(rng).items()}
        result = dict(zip(outputs, session.run(None, {**state, **data,
                                                      "opt.lr": np.array(0.1, np.float32)})))
        state = {name: result[name + ".next"] for name in state}
        reference.train_step(lr=0.1, optimizer="sgd", **data)
    for name in ("mean", "var", "W"):
        assert_close(state[name], reference.params[name], 1e-5, what=name)


def test_an_inference_export_reads_state_as_constants():
    model = chainrule.compile(source=BN.replace("f64", "f32"))
    proto = model.to_onnx(outputs=["h"])
    onnx.checker.check_model(proto, full_check=True)
    assert {"mean", "var"} <= {t.name for t in proto.graph.initializer}
    assert [o.name for o in proto.graph.output] == ["h"]


def test_check_lists_state_apart_from_params(tmp_path):
    path = tmp_path / "bn.nn"
    path.write_text(BN)
    result = chainrule_cli("check", path)
    assert result.returncode == 0, result.stderr
    assert "state (updated by training):\n  mean: f64[3] = zeros()  (3 values, next: " \
           "mean.next)" in result.stdout
    assert "mean.next" not in result.stdout.split("outputs:")[1]


@pytest.mark.parametrize("body, line, col, message", [
    ("    state s: f64[3] = zeros()\n    h = batch_norm(x, g, g, g, s)\n", 4, 9,
     "'g' must be declared with state (a value training updates), not a param"),
    ("    state s: f64[3] = zeros()\n    h = batch_norm(x, g, g, s, s)\n", 4, 9,
     "state 's' is updated twice"),
    ("    state s: i64[3] = zeros()\n    h = x\n", 3, 11,
     "state 's' must be of a float dtype (f16, bf16, f32, f64)"),
    ("    h = batch_norm(x, g, g, g, g)\n", 3, 9, "'g' must be declared with state"),
    ("    state s: f64[4] = zeros()\n    h = batch_norm(x, g, g, s, s)\n", 4, 9,
     "running_mean must be [3] (one per channel), not f64[4]"),
])
def test_state_errors_are_located(body, line, col, message):
    source = ("model m(x: f64[B, 3, 2, 2]) {\n    param g: f64[3] = ones()\n" + body +
              "    J = sum(x)\n    return J\n}\n")
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source)
    assert message in caught.value.message
    assert (caught.value.line, caught.value.col) == (line, col)


def test_state_cannot_be_declared_in_a_function():
    with pytest.raises(ChainruleError,
                       match="states are declared in a model or a layer, not in a function"):
        chainrule.compile(source="def f(a) {\n    state s: f32[1] = zeros()\n    return a\n}\n"
                          "model m(x: f32[1]) {\n    y = f(x)\n    return y\n}\n")


def test_predict_reads_state_as_inference_does(model):
    data = feeds(np.random.default_rng(8), rows=7)
    predicted = model.predict({"x": data["x"]}, ["h"], batch_size=3)
    assert_close(predicted["h"], model.run(outputs=["h"], x=data["x"])["h"], 1e-12)
