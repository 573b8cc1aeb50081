"""Mixed-precision training: the forward and backward graphs in bf16 or f16 from f32 master
params (passes/mixed_precision.py), and f16's dynamic loss scaling in the train step
(passes/optimizers.py): the step, its skips, its state in checkpoints, its ONNX export and
the command line."""
import json

import numpy as np
import onnx
import pytest

import chainrule
from chainrule import TrainConfig, Trainer
from chainrule.ir import ChainruleError, print_graph
from chainrule.passes.mixed_precision import (GOOD_STEPS, KEPT_IN_F32, LOSS_SCALE, SKIPPED,
                                              lower_precision)
from support.backend_checks import check_standard
from support.cli import chainrule as run_cli, fails, ok
from support.paths import ROOT

TINY = """
model tiny(x: f32[B, 4], y: i64[B]) {
    param W1: f32[8, 4] = he()
    param W2: f32[3, 8] = glorot()
    h = relu(x @ W1.T)
    J = cross_entropy(h @ W2.T, y)
    return J
}
"""
MLP = ROOT / "examples" / "mlp_digits.nn"
LENET = ROOT / "examples" / "lenet_digits.nn"
DIGITS = ROOT / "examples" / "data" / "digits_train.npz"
DIGITS_TEST = ROOT / "examples" / "data" / "digits_test.npz"


def tiny_batch(rows=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, 4)).astype(np.float32),
            "y": rng.integers(0, 3, rows)}


def tiny_trainer(precision, optimizer="adam", backend="numpy", **settings):
    model = chainrule.compile(source=TINY)
    return Trainer(model, TrainConfig(precision=precision, optimizer=optimizer, backend=backend,
                                      **settings))


def digits(rows=None):
    data = dict(np.load(DIGITS))
    return data if rows is None else {name: array[:rows] for name, array in data.items()}


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_the_forward_and_backward_compute_in_the_low_dtype_from_f32_params(precision):
    model = chainrule.compile(str(MLP))
    graph, grads = model.compile_graph(grad=True, training=True, precision=precision)
    products = [n for n in graph.nodes if n.op in ("matmul", "gemm")]
    assert products and all(n.output.type.dtype == precision for n in products)
    kept = [n for n in graph.nodes if n.op in KEPT_IN_F32]
    assert kept and all(n.output.type.dtype == "f32" for n in kept)
    by_name = {v.name: v for v in graph.values()}
    assert all(p.value.type.dtype == "f32" for p in graph.params)
    assert {by_name[g].type.dtype for g in grads.values()} == {"f32"}
    assert graph.objective.name == "J" and graph.objective.type.dtype == "f32"
    assert [v.name for v in graph.outputs[:2]] == ["J", "acc"]


def test_the_pass_casts_params_and_data_down_and_losses_and_outputs_up():
    graph = chainrule.compile(source="""
model tiny(x: f32[B, 4], y: i64[B]) {
    param W: f32[3, 4] = glorot()
    o = x @ W.T
    J = cross_entropy(o, y) + 0.01 * sum(W * W)
    return J, o
}
""").graph
    assert print_graph(lower_precision(graph, "f16")[0], locations=False) == """\
graph tiny(%x: f32[B, 4], %y: i64[B], %amp.loss_scale: f32[]) {
  param %W: f32[3, 4] = glorot()
  %W.f16 = cast(%W) {dtype=f16, saturate=true} : f16[3, 4]
  %W.T = transpose(%W.f16) {perm=[1, 0]} : f16[4, 3]
  %x.f16 = cast(%x) {dtype=f16, saturate=true} : f16[B, 4]
  %o.f16 = matmul(%x.f16, %W.T) : f16[B, 3]
  %o.f32 = cast(%o.f16) {dtype=f32, saturate=true} : f32[B, 3]
  %cross_entropy = cross_entropy(%o.f32, %y) : f32[]
  %mul = mul(%W.f16, %W.f16) : f16[3, 4]
  %mul.f32 = cast(%mul) {dtype=f32, saturate=true} : f32[3, 4]
  %sum = sum(%mul.f32) {axes=none, keepdims=false} : f32[]
  %const = constant() {value=0.01, dtype=f32} : f32[]
  %mul.1 = mul(%const, %sum) : f32[]
  %J = add(%cross_entropy, %mul.1) : f32[]
  %o = cast(%o.f16) {dtype=f32, saturate=true} : f32[B, 3]
  return %J, %o
}
"""


def test_f32_is_the_graph_unchanged():
    graph = chainrule.compile(source=TINY).graph
    assert lower_precision(graph, "f32") == (graph, False)


def test_an_unknown_precision_is_refused():
    with pytest.raises(ChainruleError, match="unknown precision 'f8'; choose from f32, bf16, f16"):
        TrainConfig(precision="f8")


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_a_low_precision_step_follows_the_f32_step_to_its_precision(precision):
    batch = tiny_batch()
    f32, low = tiny_trainer("f32", "sgd"), tiny_trainer(precision, "sgd")
    before = {name: np.array(array) for name, array in f32.params.items()}
    f32.train_step(batch, 0.5)
    low.train_step(batch, 0.5)
    for name, expected in f32.params.items():
        got = low.params[name]
        assert got.dtype == np.float32  # the master weights stay f32
        moved = np.abs(expected - before[name]).max()
        assert np.abs(got - expected).max() < 0.02 * moved + 1e-6, name
    assert any(not np.array_equal(low.params[n], f32.params[n]) for n in f32.params)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_an_imported_onnx_model_trains_in_mixed_precision(precision):
    logits = chainrule.compile(source=TINY.replace("J = cross_entropy(h @ W2.T, y)\n    return J",
                                                   "o = h @ W2.T\n    return o"))
    proto = logits.to_onnx(outputs=["o"])
    batch = tiny_batch()
    trainers = [Trainer(chainrule.import_onnx(proto, loss="cross_entropy"),
                        TrainConfig(precision=p, optimizer="sgd")) for p in ("f32", precision)]
    for trainer in trainers:
        trainer.train_step(batch, 0.5)
    f32, low = (trainer.params for trainer in trainers)
    assert set(f32) == set(low)
    assert all(low[n].dtype == np.float32 for n in low)
    assert any(not np.array_equal(low[n], f32[n]) for n in f32)
    for name in f32:
        np.testing.assert_allclose(low[name], f32[name], rtol=0.05, atol=1e-3)


def test_a_model_in_f64_is_refused():
    model = chainrule.compile(source=TINY).to_f64()
    with pytest.raises(ChainruleError, match="mixed precision .bf16. trains f32 models, and "
                                             "the objective 'J' is f64"):
        Trainer(model, TrainConfig(precision="bf16"))


def test_f16_skips_a_step_whose_gradients_overflow_and_halves_the_scale():
    trainer = tiny_trainer("f16")
    trainer.train_step(tiny_batch(seed=1), 0.01)
    trainer.state = {LOSS_SCALE: np.float32(2.0 ** 40)}  # f16 overflows at 65504
    params = {k: np.array(v) for k, v in trainer.params.items()}
    state = {k: np.array(v) for k, v in trainer.state.items()}
    outputs = trainer.train_step(tiny_batch(seed=2), 0.01)
    assert outputs[SKIPPED] == 1
    for name, array in params.items():
        assert np.array_equal(trainer.params[name], array), name
    for name, array in state.items():
        if not name.startswith("amp."):
            assert np.array_equal(trainer.state[name], array), name
    assert trainer.state[LOSS_SCALE] == 2.0 ** 39 and trainer.state[GOOD_STEPS] == 0


def test_the_scale_doubles_after_the_interval_of_good_steps():
    trainer = tiny_trainer("f16", loss_scale_interval=3)
    assert trainer.state[LOSS_SCALE] == 2.0 ** 16
    trainer.state = {LOSS_SCALE: np.float32(2.0 ** 8)}  # far from f16's overflow
    for step in range(5):
        assert trainer.train_step(tiny_batch(seed=step), 0.01)[SKIPPED] == 0
    assert trainer.state[LOSS_SCALE] == 2.0 ** 9 and trainer.state[GOOD_STEPS] == 2


def test_a_step_with_every_param_frozen_is_never_skipped():
    trainer = tiny_trainer("f16", freeze=("W*",))
    assert trainer.train_step(tiny_batch(), 0.01)[SKIPPED] == 0


BATCH_NORM_MODEL = """model bn(x: f32[B, 4], y: i64[B]) {
    param W: f32[6, 4] = glorot()
    param g: f32[6] = ones()
    param b: f32[6] = zeros()
    state m: f32[6] = zeros()
    state v: f32[6] = ones()
    return cross_entropy(batch_norm(x @ W.T, g, b, m, v)[:, 0:3], y)
}
"""


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_running_statistics_are_computed_in_f32_and_stay_finite(backend):
    # A batch variance of 1e10 is past f16: the numpy step overflows and is skipped, keeping
    # the statistics; onnxruntime computes f16 ops in f32 itself and takes the step, and the
    # statistics, computed in f32, hold the variance.
    model = chainrule.compile(source=BATCH_NORM_MODEL)
    trainer = Trainer(model, TrainConfig(precision="f16", backend=backend))
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32), np.arange(8) % 3
    trainer.train_step({"x": x, "y": y}, 0.01)
    trainer.train_step({"x": x * 1e5, "y": y}, 0.01)
    for name in ("m", "v"):
        assert np.isfinite(trainer.params[name]).all(), (name, trainer.params[name])


def test_bf16_needs_no_loss_scale():
    trainer = tiny_trainer("bf16")
    assert not any(name.startswith("amp.") for name in trainer.state)
    assert trainer.interface.skipped is None


def test_onnxruntime_runs_the_f16_step_as_numpy_does():
    numpy_run, ort_run = tiny_trainer("f16"), tiny_trainer("f16", backend="onnxruntime")
    for step in range(4):
        batch = tiny_batch(seed=step)
        if step == 2:  # a skipped step too: onnxruntime computes some f16 ops in f32 (where
            batch["x"][0, 0] = np.nan  # it has no f16 kernel), so it is made to skip by a NaN
        expected, got = numpy_run.train_step(batch, 0.01), ort_run.train_step(batch, 0.01)
        assert got[SKIPPED] == expected[SKIPPED] == (step == 2)
        if step != 2:
            np.testing.assert_allclose(got["J"], expected["J"], rtol=1e-2)
    for name, array in numpy_run.params.items():
        np.testing.assert_allclose(ort_run.params[name], array, rtol=1e-2, atol=1e-4)
    assert ort_run.state[LOSS_SCALE] == numpy_run.state[LOSS_SCALE] == 2.0 ** 15


def test_onnxruntime_runs_the_bf16_step_as_numpy_does():
    numpy_run, ort_run = tiny_trainer("bf16"), tiny_trainer("bf16", backend="onnxruntime")
    for step in range(3):
        batch = tiny_batch(seed=step)
        expected, got = numpy_run.train_step(batch, 0.01), ort_run.train_step(batch, 0.01)
        np.testing.assert_allclose(got["J"], expected["J"], rtol=2e-2)
    for name, array in numpy_run.params.items():
        np.testing.assert_allclose(ort_run.params[name], array, rtol=2e-2, atol=1e-3)


CONV = """
model conv(x: f32[B, 16], y: i64[B]) {
    param C: f32[4, 1, 3, 3] = he()
    param W: f32[3, 16] = glorot()
    h = max_pool2d(relu(conv2d(reshape(x, (-1, 1, 4, 4)), C, padding=1)), 2)
    J = cross_entropy(flatten(h) @ W.T, y)
    return J
}
"""


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_onnxruntime_runs_a_low_precision_convolution_step_as_numpy_does(precision):
    rng = np.random.default_rng(4)
    batch = {"x": rng.normal(size=(6, 16)).astype(np.float32), "y": rng.integers(0, 3, 6)}
    runs = [Trainer(chainrule.compile(source=CONV),
                    TrainConfig(precision=precision, optimizer="sgd", backend=backend))
            for backend in ("numpy", "onnxruntime")]
    if precision == "f16":  # far from f16's overflow, so that neither step is skipped
        for trainer in runs:
            trainer.state = {LOSS_SCALE: np.float32(2.0 ** 8)}
    expected, got = (trainer.train_step(batch, 0.1) for trainer in runs)
    np.testing.assert_allclose(got["J"], expected["J"], rtol=2e-2)
    for name, array in runs[0].params.items():
        np.testing.assert_allclose(runs[1].params[name], array, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_the_exported_step_is_standard_onnx_with_the_skip_as_a_where(precision):
    model = chainrule.compile(source=TINY).to_onnx(train_step="adam", precision=precision)
    check_standard(model)
    casts = {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute}
    low = onnx.TensorProto.FLOAT16 if precision == "f16" else onnx.TensorProto.BFLOAT16
    assert low in casts
    defaults = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    if precision == "f16":
        assert defaults[LOSS_SCALE] == 2.0 ** 16 and defaults[GOOD_STEPS] == 0
        assert any(n.op_type == "Where" and "W1.next" in n.output for n in model.graph.node)
    else:
        assert LOSS_SCALE not in defaults


def test_a_resumed_f16_run_ends_as_an_unbroken_one_with_its_loss_scale(tmp_path):
    data = digits(96)
    config = dict(precision="f16", epochs=2, batch_size=16, loss_scale_interval=2)
    unbroken = Trainer(chainrule.compile(str(MLP)), TrainConfig(**config))
    unbroken.fit(data)
    first = Trainer(chainrule.compile(str(MLP)), TrainConfig(**{**config, "epochs": 1}))
    first.fit(data, checkpoint_dir=tmp_path)
    saved = dict(np.load(tmp_path / "checkpoint.npz"))
    assert f"state/{LOSS_SCALE}" in saved and f"state/{GOOD_STEPS}" in saved
    resumed = Trainer(chainrule.compile(str(MLP)), TrainConfig(**config))
    resumed.load_checkpoint(tmp_path, override=True)  # only the epoch count differs
    resumed.fit(data)
    for name, array in unbroken.params.items():
        assert np.array_equal(resumed.params[name], array), name
    assert resumed.state[LOSS_SCALE] == unbroken.state[LOSS_SCALE] != 2.0 ** 16


def test_resuming_in_another_precision_needs_override(tmp_path):
    data = digits(64)
    Trainer(chainrule.compile(str(MLP)), TrainConfig(epochs=1, precision="f16")).fit(
        data, checkpoint_dir=tmp_path)
    trainer = Trainer(chainrule.compile(str(MLP)), TrainConfig(epochs=2, precision="bf16"))
    with pytest.raises(ChainruleError, match="precision f16 -> bf16"):
        trainer.load_checkpoint(tmp_path)
    trainer.load_checkpoint(tmp_path, override=True)  # the Adam state carries over
    assert trainer.steps == 2 and not any(name.startswith("amp.") for name in trainer.state)


def test_workers_refuse_a_low_precision():
    model = chainrule.compile(source=TINY)
    with pytest.raises(ChainruleError, match="precision bf16 is not available with workers"):
        Trainer(model, TrainConfig(precision="bf16"), workers=2)


def test_the_log_counts_the_skipped_steps(tmp_path):
    log = tmp_path / "log.jsonl"
    result = ok(run_cli("train", MLP, "--data", DIGITS, "--epochs", "2", "--precision", "f16",
                        "--loss-scale-interval", "20", "--log-jsonl", log, "-o",
                        tmp_path / "p.npz"))
    assert "f16 compute" in result.stdout
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 2]  # the scale outgrew f16 twice
    assert records[-1]["loss_scale"] == 2.0 ** 18
    assert "[2 skipped, loss scale 262144]" in result.stdout


def test_a_resume_keeps_the_precision_the_checkpoint_recorded(tmp_path):
    log = tmp_path / "log.jsonl"
    ok(run_cli("train", MLP, "--data", DIGITS, "--epochs", "1", "--precision", "f16",
               "--checkpoint", tmp_path / "ckpt", "--log-jsonl", log, "-q"))
    ok(run_cli("train", "--resume", tmp_path / "ckpt", "--epochs", "2", "--override", "-q"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "skipped_steps" in records[-1]


def test_the_command_line_refuses_misused_precision(tmp_path):
    assert "invalid choice: 'f8'" in fails(run_cli("train", MLP, "--data", DIGITS,
                                                   "--precision", "f8"), 2).stderr
    assert "give --train-step" in fails(run_cli("export", MLP, "-o", tmp_path / "m.onnx",
                                                "--precision", "bf16"), 2).stderr


def test_export_writes_the_mixed_precision_train_step(tmp_path):
    path = tmp_path / "step.onnx"
    result = ok(run_cli("export", MLP, "--train-step", "--precision", "f16", "-o", path))
    assert "amp.loss_scale" in result.stdout and "amp.skipped" in result.stdout
    check_standard(onnx.load(path))


def accuracy(model_path, precision, epochs, rows=None):
    model = chainrule.compile(str(model_path))
    Trainer(model, TrainConfig(epochs=epochs, precision=precision)).fit(digits(rows))
    return Trainer(model, TrainConfig()).evaluate(dict(np.load(DIGITS_TEST)))["acc"]


@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_the_mlp_trains_to_its_f32_accuracy(precision):
    expected = accuracy(MLP, "f32", 3)
    assert abs(accuracy(MLP, precision, 3) - expected) <= 0.003


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "f16"])
def test_lenet_trains_to_its_f32_accuracy(precision):
    expected = accuracy(LENET, "f32", 2)
    assert abs(accuracy(LENET, precision, 2) - expected) <= 0.003
