"""The Python API keeps its word: an optimizer's name works wherever its spec does; run,
predict, grad, train_step and evaluate cast arguments as the CLI casts data files, with the
CLI's notes as warnings; `fit` returns its history; and `chainrule evaluate` reports a data
file's metrics as training reports validation metrics."""
import warnings

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError, InputNote, OptimizerSpec, TrainConfig, Trainer
from support.cli import chainrule as run_cli
from support.numeric import digits
from support.paths import ROOT

MLP = ROOT / "examples" / "mlp.nn"
CLASSIFIER = ROOT / "examples" / "digits_classifier.nn"
DIGITS_TEST = ROOT / "examples" / "data" / "digits_test.npz"


def batch(rows=4):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(rows, 784)).astype(np.float32), "y": np.arange(rows) % 10}


# ---- an optimizer's name wherever a spec goes --------------------------------------------------

@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_train_config_takes_an_optimizers_name(name):
    config = TrainConfig(optimizer=name, epochs=1)
    assert config.optimizer == OptimizerSpec(name)
    model = chainrule.compile(CLASSIFIER)
    data = {k: v[:64] for k, v in digits("train").items()}
    history = Trainer(model, config).fit(data)
    assert np.isfinite(history.train("J")).all()


def test_an_unknown_optimizer_name_is_refused_by_the_config():
    with pytest.raises(ChainruleError, match="unknown optimizer 'adagrad'; choose from sgd"):
        TrainConfig(optimizer="adagrad")
    with pytest.raises(ChainruleError, match="a name .* or an OptimizerSpec, not int"):
        TrainConfig(optimizer=3)


def test_a_name_and_its_spec_make_the_same_train_step():
    model = chainrule.compile(MLP)
    by_name = model.to_onnx(train_step="adam")
    by_spec = model.to_onnx(train_step=OptimizerSpec("adam"))
    assert by_name.SerializeToString() == by_spec.SerializeToString()
    assert (chainrule.ir.print_graph(model.train_step_graph("adamw")[0])
            == chainrule.ir.print_graph(model.train_step_graph(OptimizerSpec("adamw"))[0]))


def test_train_step_shares_its_state_between_a_name_and_its_spec():
    model = chainrule.compile(MLP)
    model.train_step(optimizer="adam", **batch())
    model.train_step(optimizer=OptimizerSpec("adam"), **batch())
    assert len(model._trainers) == 1


# ---- casts as the CLI's, notes as warnings -----------------------------------------------------

def test_run_casts_f64_and_lists_with_the_clis_note():
    model = chainrule.compile(MLP)
    exact = batch()
    with pytest.warns(InputNote, match=r"input 'x': f64 from the argument rounded to f32"):
        cast = model.run(x=exact["x"].astype(np.float64), y=exact["y"].tolist())
    expected = model.run(**exact)
    for name in expected:
        np.testing.assert_array_equal(cast[name], expected[name])


def test_an_argument_of_the_right_dtype_gets_no_note():
    model = chainrule.compile(MLP)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.run(**batch())
        model.grad(**batch())


def test_a_note_points_at_the_callers_line():
    model = chainrule.compile(MLP)
    with pytest.warns(InputNote) as caught:
        model.run(outputs=["o"], x=batch()["x"].astype(np.float64))
    assert caught[0].filename == __file__


def test_ints_become_floats_where_exact():
    model = chainrule.compile(MLP)
    with pytest.warns(InputNote, match=r"i64 from the argument cast to f32 \(exact\)"):
        model.run(outputs=["o"], x=np.ones((2, 784), np.int64))


@pytest.mark.parametrize("call", [
    lambda model, x, y: model.run(x=x, y=y),
    lambda model, x, y: model.grad(x=x, y=y),
    lambda model, x, y: model.train_step(x=x, y=y),
    lambda model, x, y: model.evaluate({"x": x, "y": y}),
])
def test_a_cast_that_changes_a_value_is_refused_with_the_clis_message(call):
    model = chainrule.compile(MLP)
    x = batch()["x"]
    with pytest.raises(ChainruleError, match="input 'y' is i64 but the argument holds f64: it "
                                             "holds numbers with a fractional part, such as 0.5"):
        call(model, x, np.array([0.5, 1, 2, 3]))


def test_predict_refuses_what_f32_cannot_hold():
    model = chainrule.compile(MLP)
    with pytest.raises(ChainruleError, match="input 'x' is f32 but the argument holds f64: it "
                                             "holds numbers too large for f32"):
        model.predict({"x": np.full((2, 784), 1e39)}, ["o"])


def test_predict_grad_and_train_step_cast_as_run_does():
    model = chainrule.compile(MLP)
    exact = batch()
    loose = {"x": exact["x"].astype(np.float64).tolist(), "y": exact["y"].tolist()}
    with pytest.warns(InputNote):
        predicted = model.predict(loose, ["o"])
    np.testing.assert_array_equal(predicted["o"], model.predict(exact, ["o"])["o"])
    with pytest.warns(InputNote):
        grads = model.grad(**loose)
    for name, array in model.grad(**exact).items():
        np.testing.assert_array_equal(grads[name], array)
    with pytest.warns(InputNote):
        model.train_step(**loose)


def test_fit_and_evaluate_cast_data_sets_as_predict_does():
    model = chainrule.compile(CLASSIFIER)
    data = {k: v[:64] for k, v in digits("train").items()}
    loose = {"x": data["x"].astype(np.float64), "y": data["y"].astype(np.float64)}
    trainer = Trainer(model, TrainConfig(epochs=1))
    with pytest.warns(InputNote) as caught:
        trainer.fit(loose, val=loose)
    notes = {str(warning.message) for warning in caught}
    assert notes == {"input 'x': f64 from the argument rounded to f32 (precision only, as every "
                     "framework does)", "input 'y': f64 from the argument cast to i64 (exact)"}
    with pytest.warns(InputNote):
        assert trainer.evaluate(loose) == trainer.evaluate(data)


# ---- fit's history and evaluate ----------------------------------------------------------------

def test_fit_returns_each_epochs_train_and_validation_metrics():
    model = chainrule.compile(CLASSIFIER)
    train, test = digits("train"), digits("test")
    logged = []
    trainer = Trainer(model, TrainConfig(epochs=3), log=logged.append)
    history = trainer.fit(train, val=test)
    assert history.epochs == logged
    assert [record["epoch"] for record in history.epochs] == [1, 2, 3]
    assert len(history.train("acc")) == len(history.val("J")) == 3
    assert history.train("J")[-1] < history.train("J")[0]
    assert history.val("acc")[-1] == pytest.approx(trainer.evaluate(test)["acc"])


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_model_evaluate_reports_what_validation_reports(backend):
    model = chainrule.compile(CLASSIFIER)
    trainer = Trainer(model, TrainConfig(epochs=1))
    trainer.fit(digits("train"))
    test = digits("test")
    metrics = model.evaluate(test, backend=backend, batch_size=100)
    assert list(metrics) == ["J", "acc"]
    expected = trainer.evaluate(test)
    for name in expected:
        assert metrics[name] == pytest.approx(expected[name], rel=1e-5)


def test_evaluate_refuses_an_output_with_a_row_per_example():
    model = chainrule.compile(CLASSIFIER)
    with pytest.raises(ChainruleError, match=r"logits \(f32\[B, 10\]\) are not scalars"):
        model.evaluate(digits("test"), ["logits"])


# ---- chainrule evaluate -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("evaluate") / "trained.npz"
    result = run_cli("train", CLASSIFIER, "--data", ROOT / "examples/data/digits_train.npz",
                     "--epochs", 1, "-q", "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def reported(stdout: str) -> dict[str, str]:
    """`J 0.7371  acc 91.09%` from evaluate's second line, by name."""
    words = stdout.splitlines()[1].split()
    return dict(zip(words[::2], words[1::2], strict=True))


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_evaluate_prints_the_objective_and_accuracy(trained, backend):
    result = run_cli("evaluate", CLASSIFIER, "--params", trained, "--data", DIGITS_TEST,
                     "--backend", backend)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"evaluated digits_classifier on 359 rows of {DIGITS_TEST}")
    model = chainrule.compile(CLASSIFIER)
    model.set_params(dict(np.load(trained)))
    expected = model.evaluate(digits("test"))
    shown = reported(result.stdout)
    assert shown == {"J": f"{expected['J']:.4f}", "acc": f"{expected['acc'] * 100:.2f}%"}


def test_evaluate_an_onnx_model_with_a_loss(trained, tmp_path):
    onnx = tmp_path / "classifier.onnx"
    exported = run_cli("export", CLASSIFIER, "--params", trained, "--outputs", "logits",
                       "-o", onnx)
    assert exported.returncode == 0, exported.stderr
    native = reported(run_cli("evaluate", CLASSIFIER, "--params", trained,
                              "--data", DIGITS_TEST).stdout)
    result = run_cli("evaluate", onnx, "--loss", "cross_entropy", "--data", DIGITS_TEST)
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout) == {"loss": native["J"], "acc": native["acc"]}
    without_loss = run_cli("evaluate", onnx, "--data", DIGITS_TEST)
    assert without_loss.returncode == 1
    assert "loss comes from --loss" in without_loss.stderr


def test_evaluate_reports_only_the_outputs_asked_for(trained):
    result = run_cli("evaluate", CLASSIFIER, "--params", trained, "--data", DIGITS_TEST,
                     "--outputs", "acc")
    assert result.returncode == 0, result.stderr
    assert list(reported(result.stdout)) == ["acc"]


@pytest.mark.parametrize("command", ["evaluate", "predict", "run"])
def test_the_cli_says_each_cast_once(command, tmp_path):
    data = tmp_path / "loose.npz"
    np.savez(data, **{k: v.astype(np.float64) for k, v in digits("test").items()})
    option = "--inputs" if command == "run" else "--data"
    initial = ["--initial-params"] if command in ("predict", "evaluate") else []
    result = run_cli(command, CLASSIFIER, option, data, *initial)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "f64 from" in line]
    assert notes and len(notes) == len(set(notes)), result.stderr
    assert "InputNote" not in result.stderr


@pytest.mark.parametrize("args, code, message", [
    ([], 2, "no data: give --data FILE or --input NAME=FILE"),
    (["--data", DIGITS_TEST, "--outputs", "logits"], 1, "are not scalars"),
    (["--data", DIGITS_TEST, "--outputs", "nope"], 1, "unknown output(s) nope"),
    (["--data", DIGITS_TEST, "--batch-size", "0"], 2, "argument --batch-size: expected a whole"),
    (["--input", "x=missing.npy"], 1, "missing.npy: error: no such file"),
])
def test_evaluate_errors_and_exit_codes(args, code, message):
    result = run_cli("evaluate", CLASSIFIER, "--initial-params", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
