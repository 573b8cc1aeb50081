"""Bad input to the Python API: a ChainruleError naming what is wrong (a TypeError for a value
of the wrong Python type), never numpy's ValueError or a silent acceptance; and the API refuses
what the command line refuses."""
import math

import numpy as np
import onnx
import pytest

import chainrule
from chainrule.ir import ChainruleError
from chainrule.train import TrainConfig, Trainer
from support.cli import chainrule as chainrule_cli
from support.cli import fails
from support.paths import ROOT

LINEAR = "model m(x: f32[B, 3], y: f32[B]) {\n  param W: f32[3] = glorot()\n  return mse(x @ W, y)\n}\n"
RESNET_BLOCK = ROOT / "examples" / "resnet_block.nn"
MLP_ONNX = ROOT / "tests" / "fixtures" / "onnx" / "mlp.onnx"


def batch(rows=4):
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((rows, 3)).astype(np.float32),
            "y": rng.standard_normal(rows).astype(np.float32)}


# ---- seeds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, -(2 ** 70)])
def test_a_negative_seed_is_refused_naming_the_seed(seed):
    with pytest.raises(ChainruleError, match="seed must be a whole number at least 0"):
        chainrule.compile(source=LINEAR, seed=seed)


@pytest.mark.parametrize("seed", [1.5, True, "3", None])
def test_a_seed_that_is_no_whole_number_is_a_type_error(seed):
    with pytest.raises(TypeError, match="seed must be a whole number"):
        chainrule.compile(source=LINEAR, seed=seed)


def test_a_large_seed_and_a_numpy_integer_are_seeds():
    chainrule.compile(source=LINEAR, seed=2 ** 80)
    chainrule.compile(source=LINEAR, seed=np.int64(7))


def test_a_trainers_negative_seed_is_refused_before_training():
    with pytest.raises(ChainruleError, match="TrainConfig.seed must be"):
        TrainConfig(seed=-1)


# ---- optimisation levels ----------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda m: m.run(opt_level="O9", **batch()),
    lambda m: m.grad(opt_level="O9", **batch()),
    lambda m: m.train_step(opt_level="O9", **batch()),
    lambda m: m.predict({"x": batch()["x"]}, opt_level="O9"),
    lambda m: m.evaluate(batch(), opt_level="O9"),
    lambda m: m.to_onnx(opt_level="O9"),
    lambda m: m.to_onnx(opt_level="O9", train_step="sgd"),
    lambda m: m.ir(opt_level="O9"),
], ids=["run", "grad", "train_step", "predict", "evaluate", "to_onnx", "to_onnx-step", "ir"])
def test_an_unknown_opt_level_names_the_levels(call):
    model = chainrule.compile(source=LINEAR)
    with pytest.raises(ChainruleError, match="unknown optimisation level 'O9'; choose from "
                                             "O0, O1, O2"):
        call(model)


def test_a_train_config_with_an_unknown_opt_level_is_refused():
    with pytest.raises(ChainruleError, match="unknown optimisation level"):
        TrainConfig(opt_level="O3")


# ---- training settings ------------------------------------------------------------------------

@pytest.mark.parametrize("lr", [-1, -0.5, math.nan, math.inf])
def test_train_step_refuses_a_negative_or_non_finite_learning_rate(lr):
    """A step's lr may be 0, as a warmup's first step is; below 0, or not finite, it is not."""
    model = chainrule.compile(source=LINEAR)
    before = dict(model.params)
    with pytest.raises(ChainruleError, match="learning rate must be a finite number at least "
                                             "0"):
        model.train_step(lr=lr, **batch())
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_a_later_train_step_checks_its_own_learning_rate():
    model = chainrule.compile(source=LINEAR)
    model.train_step(lr=0.1, **batch())
    with pytest.raises(ChainruleError, match="learning rate"):
        model.train_step(lr=-1, **batch())


@pytest.mark.parametrize("settings, message", [
    ({"lr": -1}, "TrainConfig.lr must be a finite number greater than 0"),
    ({"lr": math.nan}, "TrainConfig.lr must be"),
    ({"lr": math.inf}, "TrainConfig.lr must be"),
    ({"epochs": 0}, "TrainConfig.epochs must be a whole number at least 1"),
    ({"batch_size": 0}, "TrainConfig.batch_size must be a whole number at least 1"),
    ({"warmup_steps": -1}, "TrainConfig.warmup_steps must be a whole number at least 0"),
    ({"early_stop": -2}, "TrainConfig.early_stop must be"),
    ({"step_every": -1}, "TrainConfig.step_every must be"),
    ({"step_gamma": -0.5}, "TrainConfig.step_gamma must be a finite number at least 0"),
    ({"clip_grad_norm": math.inf}, "TrainConfig.clip_grad_norm must be"),
])
def test_train_config_refuses_what_the_cli_refuses(settings, message):
    with pytest.raises(ChainruleError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("settings, message", [
    ({"momentum": 1.0}, "OptimizerSpec.momentum must be a finite number at least 0 and less "
                        "than 1"),
    ({"momentum": math.nan}, "OptimizerSpec.momentum must be"),
    ({"kind": "adamw", "weight_decay": -0.1}, "OptimizerSpec.weight_decay must be a finite "
                                              "number at least 0"),
    ({"clip_grad_norm": math.inf}, "OptimizerSpec.clip_grad_norm must be"),
])
def test_an_optimizer_spec_refuses_what_the_cli_refuses(settings, message):
    with pytest.raises(ChainruleError, match=message):
        chainrule.OptimizerSpec(**settings)


@pytest.mark.parametrize("settings", [{"epochs": 2.5}, {"batch_size": True}, {"lr": "0.1"}])
def test_train_config_settings_of_the_wrong_type_are_type_errors(settings):
    with pytest.raises(TypeError, match="must be"):
        TrainConfig(**settings)


def test_the_cli_and_train_config_agree_on_each_bound():
    from chainrule.cli import parser
    from chainrule.train import SETTING_BOUNDS

    assert SETTING_BOUNDS["lr"] is parser.POSITIVE
    assert SETTING_BOUNDS["seed"] is parser.SEED
    assert SETTING_BOUNDS["epochs"] is parser.COUNT


@pytest.mark.parametrize("fraction", [0, 1, -0.2, math.nan])
def test_a_validation_fraction_outside_0_to_1_is_refused(fraction):
    from chainrule.train import split_validation

    with pytest.raises(ChainruleError, match="validation fraction must be"):
        split_validation(batch(), fraction, 0)


# ---- empty batches ----------------------------------------------------------------------------

def test_train_step_refuses_a_batch_of_no_rows_and_keeps_the_state():
    model = chainrule.compile(RESNET_BLOCK)
    x, y = np.zeros((0, 64), np.float32), np.zeros(0, np.int64)
    before = {k: np.array(v) for k, v in model.params.items()}
    with pytest.raises(ChainruleError, match="the batch has 0 rows"):
        model.train_step(x=x, y=y)
    after = model.params
    assert all(np.array_equal(before[k], after[k]) for k in before)
    rng = np.random.default_rng(0)
    scores = model.train_step(x=rng.standard_normal((8, 64)).astype(np.float32),
                              y=rng.integers(0, 10, 8))
    assert all(math.isfinite(v) for v in scores.values())


def test_train_step_refuses_a_sequence_batch_of_no_rows():
    source = ("model m(xs: f32[T, B, 3], y: f32[B]) {\n  param W: f32[3] = glorot()\n"
              "  return mse(sum(xs @ W, axis=0), y)\n}\n")
    model = chainrule.compile(source=source)
    with pytest.raises(ChainruleError, match="the batch has 0 rows"):
        model.train_step(xs=np.zeros((2, 0, 3), np.float32), y=np.zeros(0, np.float32))
    scores = model.train_step(xs=np.ones((2, 4, 3), np.float32), y=np.zeros(4, np.float32))
    assert math.isfinite(scores[model.objective.name])


# ---- target input names -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a b", "a\nb", "1y", "y-", "t.x"])
def test_import_onnx_refuses_a_target_name_no_ir_can_carry(name):
    with pytest.raises(ChainruleError, match="target input's name must be an identifier"):
        chainrule.import_onnx(str(MLP_ONNX), loss="cross_entropy", targets=name)


def test_import_onnx_takes_an_identifier_as_target_name():
    model = chainrule.import_onnx(str(MLP_ONNX), loss="cross_entropy", targets="labels_1")
    assert "labels_1" in [v.name for v in model.graph.inputs]


@pytest.mark.parametrize("name", ["", "a b", "a\nb"])
def test_the_cli_refuses_a_target_input_no_ir_can_carry(name):
    result = fails(chainrule_cli("ir", MLP_ONNX, "--loss", "cross_entropy", "--target-input",
                                 name), code=2)
    assert "--target-input" in result.stderr
    assert "must be an identifier" in result.stderr
    assert result.stdout == ""


def test_a_target_input_written_to_ir_reads_back(tmp_path):
    result = chainrule_cli("ir", MLP_ONNX, "--loss", "cross_entropy", "--target-input",
                           "labels")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "t.cir"
    path.write_text(result.stdout)
    assert chainrule_cli("check", path).returncode == 0


def test_an_exported_model_with_a_new_target_input_passes_the_checker():
    model = chainrule.import_onnx(str(MLP_ONNX), loss="cross_entropy", targets="labels")
    onnx.checker.check_model(model.to_onnx())


# ---- dims -------------------------------------------------------------------------------------

def test_a_dim_the_model_does_not_have_is_refused_naming_its_dims():
    with pytest.raises(ChainruleError, match="has no dim Q; its dims are B"):
        chainrule.compile(source=LINEAR, dims={"Q": 2})


def test_a_dim_read_only_by_a_loop_bound_is_known():
    source = ("model m(x: f32[4]) {\n  h = x\n  for t in range(T) {\n    h = h * 2.0\n  }\n"
              "  return sum(h)\n}\n")
    model = chainrule.compile(source=source, dims={"T": 3})
    assert float(model.run(x=np.ones(4, np.float32))[model.objective.name]) == 32.0


def test_a_bound_dim_and_an_unknown_one_name_only_the_unknown():
    with pytest.raises(ChainruleError, match="has no dim T; its dims are B$"):
        chainrule.compile(source=LINEAR, dims={"B": 4, "T": 3})


def test_the_cli_refuses_a_dim_the_model_does_not_have():
    result = fails(chainrule_cli("run", ROOT / "examples" / "mlp.nn", "--random-inputs",
                                 "--dim", "Q=3"))
    assert "has no dim Q; its dims are B" in result.stderr


def test_a_trainers_own_step_refuses_no_rows_and_a_negative_lr():
    trainer = Trainer(chainrule.compile(source=LINEAR), TrainConfig(optimizer="sgd"))
    with pytest.raises(ChainruleError, match="the batch has 0 rows"):
        trainer.train_step(batch(rows=0), 0.1)
    with pytest.raises(ChainruleError, match="learning rate must be"):
        trainer.train_step(batch(), -0.1)
