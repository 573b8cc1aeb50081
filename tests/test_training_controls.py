"""Training controls: gradient clipping, lr warmup, early stopping and RMSprop, checked against
hand formulas, torch, the exported ONNX step in onnxruntime, and through the CLI."""
import json

import numpy as np
import onnx
import onnxruntime
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.fileio import load_npz
from chainrule.passes.optimizers import CLIP_EPS, LR, OptimizerSpec, ParamGroup
from chainrule.train import CHECKPOINT_FILE, TrainConfig, Trainer, warmup_factor
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close
from support.training import SMALL, small_data

DIGITS = ("examples/mlp_digits.nn", "--data", "examples/data/digits_train.npz")


def gradients_along(trainer, model, data, steps, lr):
    """The gradients at the params each of `steps` steps starts from (the trainer steps)."""
    start = {k: v.copy() for k, v in trainer.params.items()}
    grads_per_step = []
    for _ in range(steps):
        model.params = {k: v.copy() for k, v in trainer.params.items()}
        grads = model.grad(**data)
        grads_per_step.append({k: grads[k] for k in ("W", "V")})
        trainer.train_step(data, lr)
    return start, grads_per_step


# ---- clipping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("max_norm", [0.05, 100.0], ids=["clipped", "under-the-bound"])
def test_clipping_scales_all_gradients_by_their_joint_norm(max_norm):
    model = chainrule.compile(source=SMALL)
    data = small_data()
    trainer = Trainer(model, TrainConfig(lr=0.1, optimizer=OptimizerSpec("sgd"),
                                         clip_grad_norm=max_norm))
    params, grads_per_step = gradients_along(trainer, model, data, 3, 0.1)
    for grads in grads_per_step:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
        scale = min(1.0, max_norm / (norm + CLIP_EPS))
        params = {k: params[k] - 0.1 * scale * grads[k] for k in grads}
    for name, expected in params.items():
        assert_close(trainer.params[name], expected, 1e-12, atol=1e-14, what=name)
    clipped = max_norm < 1
    first_norm = np.sqrt(sum(np.sum(g * g) for g in grads_per_step[0].values()))
    assert (first_norm > max_norm) == clipped  # the case tests what its name says


def test_clipping_matches_torch_clip_grad_norm():
    torch = pytest.importorskip("torch")
    model = chainrule.compile(source=SMALL)
    trainer = Trainer(model, TrainConfig(lr=0.2, optimizer=OptimizerSpec("sgd"),
                                         clip_grad_norm=0.1))
    params, grads_per_step = gradients_along(trainer, model, small_data(), 2, 0.2)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    optimizer = torch.optim.SGD(tensors.values(), lr=0.2)
    for grads in grads_per_step:
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        torch.nn.utils.clip_grad_norm_(tensors.values(), 0.1)
        optimizer.step()
    for name, tensor in tensors.items():
        assert_close(trainer.params[name], tensor.detach().numpy(), 1e-12, atol=1e-14,
                     what=name)


# ---- RMSprop ----------------------------------------------------------------------------------

def rmsprop_reference(spec, lr, params, grads_per_step):
    """RMSprop as PyTorch documents it (no momentum, not centered), in plain numpy."""
    params = {k: v.copy() for k, v in params.items()}
    square_avg = {k: np.zeros_like(v) for k, v in params.items()}
    for grads in grads_per_step:
        for name, g in grads.items():
            g = g + spec.weight_decay * params[name]
            square_avg[name] = spec.alpha * square_avg[name] + (1 - spec.alpha) * g * g
            params[name] = params[name] - lr * g / (np.sqrt(square_avg[name]) + spec.eps)
    return params


@pytest.mark.parametrize("spec", [OptimizerSpec("rmsprop"),
                                  OptimizerSpec("rmsprop", weight_decay=0.01, alpha=0.9)],
                         ids=["defaults", "decay-alpha"])
def test_rmsprop_step_matches_the_formula_and_torch(spec):
    model = chainrule.compile(source=SMALL)
    trainer = Trainer(model, TrainConfig(lr=0.01, optimizer=spec))
    assert sorted(trainer.interface.state) == ["opt.square_avg.V", "opt.square_avg.W"]
    start, grads_per_step = gradients_along(trainer, model, small_data(), 4, 0.01)
    expected = rmsprop_reference(spec, 0.01, start, grads_per_step)
    for name in expected:
        assert_close(trainer.params[name], expected[name], 1e-12, atol=1e-14, what=name)
    torch = pytest.importorskip("torch")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    optimizer = torch.optim.RMSprop(tensors.values(), lr=0.01, alpha=spec.alpha, eps=spec.eps,
                                    weight_decay=spec.weight_decay)
    for grads in grads_per_step:
        for name, tensor in tensors.items():
            tensor.grad = torch.tensor(grads[name])
        optimizer.step()
    for name, tensor in tensors.items():
        assert_close(trainer.params[name], tensor.detach().numpy(), 1e-12, atol=1e-14,
                     what=f"torch {name}")


def test_rmsprop_defaults_are_pytorchs_and_momentum_is_refused():
    spec = OptimizerSpec("rmsprop")
    assert (spec.alpha, spec.eps, spec.momentum) == (0.99, 1e-8, 0.0)
    with pytest.raises(ChainruleError, match="rmsprop has no momentum"):
        OptimizerSpec("rmsprop", momentum=0.9)
    with pytest.raises(ChainruleError, match="alpha must lie in"):
        OptimizerSpec("rmsprop", alpha=1.0)


# ---- warmup -----------------------------------------------------------------------------------

def test_warmup_ramps_the_scheduled_lr_over_the_first_steps():
    assert [warmup_factor(done, 4) for done in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    trainer = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(lr=0.1, schedule="cosine", warmup_steps=4, epochs=2))
    seen = []
    for steps in range(6):
        trainer.steps = steps
        seen.append(trainer.learning_rate(10))
    cosine = [0.1 * 0.5 * (1 + np.cos(np.pi * t / 10)) for t in range(6)]
    ramp = [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert_close(np.array(seen), np.array(cosine) * ramp, 1e-15)


def test_fit_steps_with_the_warmed_up_lr():
    data = small_data(rows=8)
    warmed = Trainer(chainrule.compile(source=SMALL),
                     TrainConfig(epochs=3, batch_size=8, lr=0.3, warmup_steps=2,
                                 optimizer=OptimizerSpec("sgd")))
    warmed.fit(data)
    by_hand = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(batch_size=8, optimizer=OptimizerSpec("sgd")))
    for lr in (0.15, 0.3, 0.3):  # one step per epoch: half the lr, then all of it
        by_hand.train_step(data, lr)
    for name in by_hand.params:
        assert_close(warmed.params[name], by_hand.params[name], 1e-12, atol=1e-14, what=name)


# ---- the exported step ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["adam", "rmsprop"])
def test_exported_step_clips_and_follows_the_warmed_up_lr_in_onnxruntime(kind, tmp_path):
    model = chainrule.compile(source=SMALL.replace("f64", "f32"))
    config = TrainConfig(batch_size=8, lr=0.05, optimizer=OptimizerSpec(kind),
                         clip_grad_norm=0.2, warmup_steps=5)
    path = tmp_path / "step.onnx"
    model.to_onnx(path, train_step=OptimizerSpec(kind, clip_grad_norm=0.2))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert "opt.clip_scale" in {n.output[0] for n in proto.graph.node}  # clipping is in it

    trainer = Trainer(model, config)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output_names = [o.name for o in proto.graph.output]
    state = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    rng = np.random.default_rng(0)
    for _ in range(8):
        batch = {"x": rng.normal(size=(8, 3)).astype(np.float32), "y": rng.integers(0, 2, 8)}
        lr = trainer.learning_rate(total_steps=8)
        trainer.train_step(batch, lr)
        trainer.steps += 1
        feeds = {**state, **batch, LR: np.array(lr, np.float32)}
        outputs = dict(zip(output_names, session.run(None, feeds), strict=True))
        state.update({name: outputs[f"{name}.next"] for name in state})
    for name in ("W", "V"):
        assert_close(state[name], trainer.params[name], 1e-4, what=f"onnxruntime {name}")


def test_export_command_writes_the_clipped_step(tmp_path):
    path = tmp_path / "step.onnx"
    result = chainrule_cli("export", "examples/mlp_digits.nn", "--train-step", "--optimizer",
                           "rmsprop", "--clip-grad-norm", "1.5", "-o", path)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(str(path))
    assert "opt.clip_scale" in {n.output[0] for n in proto.graph.node}
    assert any(i.name.startswith("opt.square_avg.") for i in proto.graph.input)


# ---- early stopping ---------------------------------------------------------------------------

def scripted_validation(trainer, losses):
    """Make the trainer's validation loss follow `losses`, epoch by epoch."""
    scores = iter(losses)
    trainer.evaluate = lambda arrays: {"J": next(scores), "L": 0.0}


def params_by_epoch(trainer):
    kept = {}

    def log(record):
        kept[record["epoch"]] = {k: np.array(v) for k, v in trainer.params.items()}
    trainer.log = log
    return kept


def test_early_stop_stops_after_patience_and_restores_the_best_params(tmp_path):
    trainer = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(epochs=10, batch_size=4, lr=0.1, early_stop=2))
    scripted_validation(trainer, [1.0, 0.5, 0.7, 0.6, 0.4, 0.2])
    kept = params_by_epoch(trainer)
    trainer.fit(small_data(), val=small_data(seed=1), checkpoint_dir=tmp_path)
    assert trainer.epoch == 4 and trainer.early_stopping.exhausted and trainer.restored_best
    saved = load_npz(tmp_path / CHECKPOINT_FILE)
    for name, array in kept[2].items():
        assert np.array_equal(trainer.params[name], array), name
        assert np.array_equal(trainer.model.params[name], array), name
        assert np.array_equal(saved[f"param/{name}"], array), name
    assert not np.array_equal(kept[4]["W"], kept[2]["W"])  # going back changed something


def test_early_stop_keeps_the_last_params_when_they_are_the_best():
    trainer = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(epochs=3, batch_size=4, lr=0.1, early_stop=1))
    scripted_validation(trainer, [0.9, 0.8, 0.7])
    kept = params_by_epoch(trainer)
    trainer.fit(small_data(), val=small_data(seed=1))
    assert trainer.epoch == 3 and not trainer.restored_best
    assert np.array_equal(trainer.params["W"], kept[3]["W"])


def test_early_stop_resumes_with_its_best_params_and_patience(tmp_path):
    losses = [1.0, 0.5, 0.7, 0.6, 0.9]
    config = dict(epochs=6, batch_size=4, lr=0.1, early_stop=3)
    straight = Trainer(chainrule.compile(source=SMALL), TrainConfig(**config))
    scripted_validation(straight, losses)
    straight.fit(small_data(), val=small_data(seed=1))

    first = Trainer(chainrule.compile(source=SMALL), TrainConfig(**config))
    first.config.epochs = 3
    scripted_validation(first, losses[:3])
    first.fit(small_data(), val=small_data(seed=1), checkpoint_dir=tmp_path)
    resumed = Trainer(chainrule.compile(source=SMALL), TrainConfig(**config))
    resumed.load_checkpoint(tmp_path, override=True)
    assert (resumed.early_stopping.epoch, resumed.early_stopping.waited) == (2, 1)
    scripted_validation(resumed, losses[3:])
    resumed.fit(small_data(), val=small_data(seed=1))
    assert resumed.epoch == straight.epoch == 5
    for name in straight.params:
        assert np.array_equal(straight.params[name], resumed.params[name]), name


def test_early_stop_needs_validation_data():
    trainer = Trainer(chainrule.compile(source=SMALL), TrainConfig(early_stop=2))
    with pytest.raises(ChainruleError, match="give validation data"):
        trainer.fit(small_data())


def test_a_checkpoint_from_before_rmsprop_and_clipping_keeps_its_optimizer_state(tmp_path):
    trainer = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(epochs=1, batch_size=4, optimizer=OptimizerSpec("adam")))
    trainer.fit(small_data(), checkpoint_dir=tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    arrays = load_npz(path)
    meta = json.loads(str(arrays["meta"]))
    for newer in ("alpha", "clip_grad_norm"):
        del meta["optimizer"][newer]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    resumed = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(epochs=1, batch_size=4, optimizer=OptimizerSpec("adam")))
    assert resumed.load_checkpoint(tmp_path) == []
    assert np.array_equal(resumed.state["opt.m.W"], trainer.state["opt.m.W"])


# ---- the command line -------------------------------------------------------------------------

def test_train_command_stops_early_and_writes_the_best_params(tmp_path):
    output = tmp_path / "trained.npz"
    result = chainrule_cli("train", *DIGITS, "--val", "examples/data/digits_test.npz",
                           "--epochs", "12", "--early-stop", "2", "--lr", "0.03", "--optimizer",
                           "rmsprop", "--clip-grad-norm", "1", "--warmup-steps", "20",
                           "-o", output, "--log-jsonl", tmp_path / "log.jsonl")
    assert result.returncode == 0, result.stderr
    assert "early stop after epoch" in result.stdout
    restored = [line for line in result.stdout.splitlines() if line.startswith("restored")]
    assert len(restored) == 1, result.stdout
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    best = min(records, key=lambda record: record["val"]["J"])
    assert f"epoch {best['epoch']}," in restored[0]
    assert len(records) < 12
    # The written params are the best epoch's: evaluating them gives its val loss.
    model = chainrule.compile("examples/mlp_digits.nn")
    model.set_params(load_npz(output))
    trainer = Trainer(model, TrainConfig())
    val = trainer.evaluate(dict(np.load("examples/data/digits_test.npz")))
    assert_close(np.array(val["J"]), np.array(best["val"]["J"]), 1e-5)


@pytest.mark.parametrize("options, message", [
    (["--early-stop", "2"], "--early-stop 2 watches the validation loss: give --val FILE"),
    (["--optimizer", "rmsprop", "--momentum", "0.9"], "rmsprop has no momentum"),
    (["--clip-grad-norm", "-1"], "argument --clip-grad-norm: expected a finite number at least 0"),
    (["--warmup-steps", "-3"], "argument --warmup-steps: expected a whole number at least 0"),
])
def test_train_command_names_a_bad_control(options, message):
    result = chainrule_cli("train", *DIGITS, "--epochs", "1", *options)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ---- frozen params ----------------------------------------------------------------------------

def test_frozen_params_get_no_gradient_and_no_update():
    model = chainrule.compile(source=SMALL)
    trainer = Trainer(model, TrainConfig(batch_size=10, lr=0.1, freeze=("W*",),
                                         optimizer=OptimizerSpec("sgd")))
    assert set(trainer.interface.params) == {"V"}
    assert not any("dJ/dW" in value.name for value in trainer.step_graph.values())
    start = {k: v.copy() for k, v in trainer.params.items()}
    model.params = dict(start)
    gradient = model.grad(**small_data())["V"]
    trainer.train_step(small_data(), 0.1)
    assert np.array_equal(trainer.params["W"], start["W"])
    assert_close(trainer.params["V"], start["V"] - 0.1 * gradient, 1e-12, atol=1e-14, what="V")


def test_export_command_writes_a_step_that_leaves_frozen_params_alone(tmp_path):
    path = tmp_path / "step.onnx"
    result = chainrule_cli("export", "examples/mlp_digits.nn", "--train-step", "--freeze",
                           "W1", "-o", path)
    assert result.returncode == 0, result.stderr
    outputs = {o.name for o in onnx.load(str(path)).graph.output}
    assert "W2.next" in outputs and "W1.next" not in outputs
    assert not any(name.endswith(".W1.next") for name in outputs)  # no optimizer state either


def test_a_freeze_pattern_must_match_a_param():
    with pytest.raises(ChainruleError, match=r"freeze pattern 'b\*' matches no param; the "
                                             r"params are W, V"):
        Trainer(chainrule.compile(source=SMALL), TrainConfig(freeze=("b*",)))


def test_train_command_freezes_params_by_pattern(tmp_path):
    first, frozen = tmp_path / "first.npz", tmp_path / "frozen.npz"
    assert chainrule_cli("train", *DIGITS, "--epochs", "1", "-q", "-o", first).returncode == 0
    result = chainrule_cli("train", *DIGITS, "--epochs", "1", "-q", "--params", first,
                           "--freeze", "W1", "-o", frozen)
    assert result.returncode == 0, result.stderr
    before, after = load_npz(first), load_npz(frozen)
    assert np.array_equal(before["W1"], after["W1"])
    assert not np.array_equal(before["W2"], after["W2"])
    assert chainrule_cli("run", "examples/mlp_digits.nn", "--freeze", "W1",
                         "--random-inputs").returncode != 0  # only train reads it for .nn


def test_a_frozen_run_resumes_with_the_same_patterns_and_notes_new_ones(tmp_path):
    config = dict(epochs=1, batch_size=4, freeze=("W",))
    Trainer(chainrule.compile(source=SMALL), TrainConfig(**config)).fit(
        small_data(), checkpoint_dir=tmp_path)
    same = Trainer(chainrule.compile(source=SMALL), TrainConfig(**config))
    assert same.load_checkpoint(tmp_path) == []
    thawed = Trainer(chainrule.compile(source=SMALL), TrainConfig(epochs=1, batch_size=4))
    assert thawed.load_checkpoint(tmp_path, override=True) == [
        "overriding the checkpoint's settings: freeze ['W'] -> []",
        "other params are frozen, so the optimizer state of those that train now and did not "
        "then starts afresh"]
    assert np.array_equal(thawed.state["opt.m.V"], same.state["opt.m.V"])
    assert not thawed.state["opt.m.W"].any()


# ---- param groups -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_param_groups_set_weight_decay_and_lr_per_param(kind):
    groups = (ParamGroup("V", weight_decay=0.0, lr_scale=0.5), ParamGroup("*", lr_scale=3.0))
    spec = OptimizerSpec(kind, weight_decay=0.1, groups=groups)
    model = chainrule.compile(source=SMALL)
    trainer = Trainer(model, TrainConfig(lr=0.05, optimizer=spec))
    start, grads_per_step = gradients_along(trainer, model, small_data(), 3, 0.05)
    # Each param as if it alone were trained with its group's lr and decay.
    own = {"V": (0.05 * 0.5, 0.0), "W": (0.05 * 3.0, 0.1)}
    for name, (lr, weight_decay) in own.items():
        expected = sgd_or_adamw_reference(OptimizerSpec(kind, weight_decay=weight_decay), lr,
                                          {name: start[name]},
                                          [{name: grads[name]} for grads in grads_per_step])
        assert_close(trainer.params[name], expected[name], 1e-12, atol=1e-14, what=name)


def sgd_or_adamw_reference(spec, lr, params, grads_per_step):
    """SGD (no momentum) and AdamW by their textbook formulas, in plain numpy."""
    params = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for name, g in grads.items():
            w = params[name]
            if spec.kind == "sgd":
                params[name] = w - lr * g - lr * spec.weight_decay * w
                continue
            m[name] = spec.beta1 * m[name] + (1 - spec.beta1) * g
            v[name] = spec.beta2 * v[name] + (1 - spec.beta2) * g * g
            m_hat, v_hat = m[name] / (1 - spec.beta1 ** t), v[name] / (1 - spec.beta2 ** t)
            decay = lr * spec.weight_decay * w
            params[name] = w - lr * m_hat / (np.sqrt(v_hat) + spec.eps) - decay
    return params


def test_a_param_group_must_match_a_trained_param():
    spec = OptimizerSpec("sgd", groups=(ParamGroup("b*", weight_decay=0.0),))
    with pytest.raises(ChainruleError, match=r"param group 'b\*' matches no trained param"):
        Trainer(chainrule.compile(source=SMALL), TrainConfig(optimizer=spec))


def test_param_groups_survive_a_checkpoint(tmp_path):
    spec = OptimizerSpec("adam", groups=(ParamGroup("W", lr_scale=0.1),))
    config = dict(epochs=1, batch_size=4, optimizer=spec)
    Trainer(chainrule.compile(source=SMALL), TrainConfig(**config)).fit(
        small_data(), checkpoint_dir=tmp_path)
    resumed = Trainer(chainrule.compile(source=SMALL), TrainConfig(**config))
    assert resumed.load_checkpoint(tmp_path) == []
    plain = Trainer(chainrule.compile(source=SMALL),
                    TrainConfig(epochs=1, batch_size=4, optimizer=OptimizerSpec("adam")))
    with pytest.raises(ChainruleError, match="lr_scale"):
        plain.load_checkpoint(tmp_path)


def test_train_command_reads_param_groups(tmp_path):
    result = chainrule_cli("train", *DIGITS, "--epochs", "1", "-q", "--optimizer", "sgd",
                           "--param-group", "W1:lr_scale=0", "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    initial = chainrule.compile("examples/mlp_digits.nn").params
    trained = load_npz(tmp_path / "out.npz")
    assert np.array_equal(trained["W1"], initial["W1"])  # an lr of 0 leaves it be
    assert not np.array_equal(trained["W2"], initial["W2"])


@pytest.mark.parametrize("text, message", [
    ("W1", "--param-group expects PATTERN:KEY=VALUE"),
    ("W1:momentum=0.9", "--param-group W1: unknown setting momentum; choose from weight_decay"),
    ("W1:lr_scale=fast", "--param-group W1 lr_scale: 'fast' is not valid"),
])
def test_train_command_names_a_bad_param_group(text, message):
    result = chainrule_cli("train", *DIGITS, "--epochs", "1", "--param-group", text)
    assert result.returncode == 2
    assert message in result.stderr
