"""Training: optimizer graphs against plain-numpy updates, exact resume, ONNX train steps."""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx.reference import ReferenceEvaluator

import chainrule
from chainrule import ChainruleError
from chainrule.passes.optimizers import LR, OptimizerSpec
from chainrule.train import CHECKPOINT_FILE, TrainConfig, Trainer
from support.paths import ROOT
from support.cli import chainrule as chainrule_cli
from support.cli import start_chainrule_process
from support.numeric import assert_close
from support.training import SMALL, small_data


def reference_updates(spec, lr, params, grads_per_step):
    """The optimizers' textbook updates in plain numpy, applied to given gradients."""
    params = {k: v.copy() for k, v in params.items()}
    slots = {k: {"velocity": np.zeros_like(v), "m": np.zeros_like(v), "v": np.zeros_like(v)}
             for k, v in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for name, g in grads.items():
            w, s = params[name], slots[name]
            if spec.kind == "sgd":
                update = g
                if spec.momentum:
                    s["velocity"] = spec.momentum * s["velocity"] + g
                    update = g + spec.momentum * s["velocity"] if spec.nesterov else s["velocity"]
                params[name] = w - lr * update - lr * spec.weight_decay * w
            else:
                if spec.kind == "adam":
                    g = g + spec.weight_decay * w
                s["m"] = spec.beta1 * s["m"] + (1 - spec.beta1) * g
                s["v"] = spec.beta2 * s["v"] + (1 - spec.beta2) * g * g
                m_hat = s["m"] / (1 - spec.beta1 ** t)
                v_hat = s["v"] / (1 - spec.beta2 ** t)
                decay = lr * spec.weight_decay * w if spec.kind == "adamw" else 0
                params[name] = w - lr * m_hat / (np.sqrt(v_hat) + spec.eps) - decay
    return params


SPECS = [OptimizerSpec("sgd"), OptimizerSpec("sgd", momentum=0.9),
         OptimizerSpec("sgd", momentum=0.9, nesterov=True, weight_decay=0.01),
         OptimizerSpec("adam", weight_decay=0.01), OptimizerSpec("adamw", weight_decay=0.1)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-m{s.momentum}-n{s.nesterov}")
def test_train_step_graph_matches_textbook_update(spec):
    model = chainrule.compile(source=SMALL)
    data = small_data()
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=10, lr=0.05, optimizer=spec))
    start = {k: v.copy() for k, v in trainer.params.items()}
    grads_per_step = []
    for _ in range(3):
        model.params = dict(trainer.params)
        grads = model.grad(**data)
        grads_per_step.append({k: grads[k] for k in ("W", "V")})
        trainer.train_step(data, 0.05)
    expected = reference_updates(spec, 0.05, start, grads_per_step)
    for name in expected:
        assert_close(trainer.params[name], expected[name], 1e-12, atol=1e-14, what=name)


def fitted(model_source, epochs, **config):
    trainer = Trainer(chainrule.compile(source=model_source),
                      TrainConfig(epochs=epochs, batch_size=4, lr=0.1, **config))
    return trainer


def test_resume_between_epochs_is_bit_exact(tmp_path):
    data = small_data(rows=11)  # 11 rows, batch 4: the last batch is partial
    spec = OptimizerSpec("adam")
    straight = fitted(SMALL, 4, optimizer=spec, schedule="step")
    straight.fit(data)
    first = fitted(SMALL, 4, optimizer=spec, schedule="step")
    first.config.epochs = 2  # as if stopped after two epochs; the step schedule counts epochs
    first.fit(data, checkpoint_dir=tmp_path)
    resumed = fitted(SMALL, 4, optimizer=spec, schedule="step")
    assert resumed.load_checkpoint(tmp_path, override=True) == [
        "overriding the checkpoint's settings: epochs 2 -> 4"]
    assert resumed.epoch == 2
    resumed.fit(data)
    for name in straight.params:
        assert np.array_equal(straight.params[name], resumed.params[name]), name


def test_interrupt_mid_epoch_checkpoints_and_resumes_exactly(tmp_path):
    data = small_data(rows=13)
    spec = OptimizerSpec("sgd", momentum=0.9)
    straight = fitted(SMALL, 3, optimizer=spec, schedule="cosine")
    straight.fit(data)

    def stop_after_five_steps(trainer, *args):
        if trainer.steps == 5:
            trainer.stop_requested = True

    interrupted = fitted(SMALL, 3, optimizer=spec, schedule="cosine")
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(data, checkpoint_dir=tmp_path, progress=stop_after_five_steps)
    resumed = fitted(SMALL, 3, optimizer=spec, schedule="cosine")
    resumed.load_checkpoint(tmp_path)
    assert (resumed.epoch, resumed.batch, resumed.steps) == (1, 1, 5)
    resumed.fit(data)
    for name in straight.params:
        assert np.array_equal(straight.params[name], resumed.params[name]), name


def test_bad_checkpoints_are_refused_and_left_alone(tmp_path):
    data = small_data()
    trainer = fitted(SMALL, 1, optimizer=OptimizerSpec("adam"))
    trainer.fit(data, checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    good = path.read_bytes()

    other_model = fitted(SMALL.replace("tanh", "relu"), 1, optimizer=OptimizerSpec("adam"))
    with pytest.raises(ChainruleError, match="different model"):
        other_model.load_checkpoint(tmp_path)
    other_optimizer = fitted(SMALL, 1, optimizer=OptimizerSpec("sgd"))
    with pytest.raises(ChainruleError, match="optimizer"):
        other_optimizer.load_checkpoint(tmp_path)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ChainruleError, match="not a readable .npz"):
        fitted(SMALL, 1, optimizer=OptimizerSpec("adam")).load_checkpoint(tmp_path)
    assert path.read_bytes() == good[: len(good) // 2]  # refused, not overwritten
    with pytest.raises(ChainruleError, match="no checkpoint"):
        trainer.load_checkpoint(tmp_path / "elsewhere")


def test_rows_must_agree_across_inputs():
    trainer = fitted(SMALL, 1)
    data = small_data()
    data["y"] = data["y"][:7]
    with pytest.raises(ChainruleError, match=r"x: 10 rows, y: 7 rows"):
        trainer.fit(data)
    with pytest.raises(ChainruleError, match="no array named y"):
        trainer.fit({"x": data["x"]})


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_exported_train_step_matches_numpy_in_onnxruntime_and_reference(optimizer, tmp_path):
    model = chainrule.compile(source=SMALL.replace("f64", "f32"))
    spec = OptimizerSpec(optimizer, momentum=0.9 if optimizer == "sgd" else 0.0)
    path = tmp_path / "step.onnx"
    model.to_onnx(path, train_step=spec)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain for o in proto.opset_import} == {""}

    trainer = Trainer(model, TrainConfig(batch_size=8, lr=0.05, optimizer=spec))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(proto)
    output_names = [o.name for o in proto.graph.output]
    state = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    reference_state = dict(state)
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.integers(0, 2, 8)}
        trainer.train_step(batch, 0.05)
        for runner, current in ((session.run, state), (reference.run, reference_state)):
            feeds = {**current, **batch, LR: np.array(0.05, np.float32)}
            outputs = dict(zip(output_names, runner(None, feeds)))
            current.update({name: outputs[f"{name}.next"] for name in current})
    for name in ("W", "V"):
        assert_close(state[name], trainer.params[name], 1e-4, what=f"onnxruntime {name}")
        assert_close(reference_state[name], trainer.params[name], 1e-4, what=f"reference {name}")


def test_digits_example_reaches_97_percent(tmp_path):
    train = dict(np.load(ROOT / "examples" / "data" / "digits_train.npz"))
    test = dict(np.load(ROOT / "examples" / "data" / "digits_test.npz"))
    for backend in ("numpy", "onnxruntime"):  # each from the initial params
        model = chainrule.compile(str(ROOT / "examples" / "mlp_digits.nn"))
        trainer = Trainer(model, TrainConfig(backend=backend))  # the CLI's defaults
        trainer.fit(train)
        assert trainer.evaluate(test)["acc"] >= 0.97, backend


def test_train_command_logs_epochs_and_saves(tmp_path):
    log = tmp_path / "log.jsonl"
    result = chainrule_cli(
        "train", "examples/mlp_digits.nn",
        "--data", "examples/data/digits_train.npz", "--val", "examples/data/digits_test.npz",
        "--epochs", "2", "--log-jsonl", log, "-o", tmp_path / "trained.npz",
        "--checkpoint", tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "acc" in lines[0] and "val:" in lines[0] and "%" in lines[0]
    assert len(log.read_text().splitlines()) == 2
    assert sorted(np.load(tmp_path / "trained.npz").files) == ["W1", "W2"]
    assert (tmp_path / "ckpt" / CHECKPOINT_FILE).is_file()


DROPOUT = SMALL.replace("o = tanh(x @ W.T) @ V.T", "o = dropout(tanh(x @ W.T), p=0.5) @ V.T")


def test_dropout_masks_change_per_step_and_resume_exactly(tmp_path):
    data = small_data(rows=12)
    trainer = fitted(DROPOUT, 2, optimizer=OptimizerSpec("sgd"))
    start = {k: v.copy() for k, v in trainer.params.items()}
    steps = []
    for _ in range(2):  # the same step from the same params: only the masks differ
        trainer.params = {k: v.copy() for k, v in start.items()}
        trainer.train_step(data, 0.1)
        steps.append(trainer.params["W"] - start["W"])
    assert not np.allclose(steps[0], steps[1])

    straight = fitted(DROPOUT, 3, optimizer=OptimizerSpec("sgd"))
    straight.fit(data)
    first = fitted(DROPOUT, 3, optimizer=OptimizerSpec("sgd"))
    first.config.epochs = 1
    first.fit(data, checkpoint_dir=tmp_path)
    resumed = fitted(DROPOUT, 3, optimizer=OptimizerSpec("sgd"))
    resumed.load_checkpoint(tmp_path, override=True)  # stopped as if after one epoch
    resumed.fit(data)
    assert np.array_equal(straight.params["W"], resumed.params["W"])
    evaluation = straight.evaluate(data)  # inference mode: dropout is the identity
    assert evaluation == straight.evaluate(data)


@pytest.mark.subprocess
def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    import signal
    import time
    checkpoint = tmp_path / "ckpt"
    process = start_chainrule_process(
        "train", "examples/mlp_digits.nn", "--data", "examples/data/digits_train.npz",
        "--epochs", "100000", "--checkpoint", checkpoint)
    assert process.stdout.readline().startswith("training mlp_digits")
    process.stdout.readline()  # the first epoch's line: training is under way
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "checkpoint written to" in stderr and "--resume" in stderr
    trainer = Trainer(chainrule.compile(str(ROOT / "examples" / "mlp_digits.nn")),
                      TrainConfig(epochs=100000))
    trainer.load_checkpoint(checkpoint)
    assert trainer.steps > 0


def test_validation_feeds_only_what_the_objective_reads():
    """An input and a param that only another output reads are neither needed nor refused."""
    model = chainrule.compile(source="""model m(x: f32[B, 3], y: i64[B], mask: f32[B, 3]) {
    param W: f32[4, 3] = normal(0.0, 0.5)
    param V: f32[3, 3] = normal(0.0, 0.5)
    return cross_entropy(x @ W.T, y), (x * mask) @ V
}""")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(20, 3)).astype(np.float32), "y": rng.integers(0, 4, 20),
            "mask": np.ones((20, 3), np.float32)}
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=8))
    trainer.fit(data, data)  # validates each epoch
    model.params = {name: np.array(array) for name, array in trainer.params.items()}
    assert trainer.evaluate(data)["cross_entropy"] == pytest.approx(
        float(model.run(**data)["cross_entropy"]), rel=1e-6)
