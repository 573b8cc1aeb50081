"""The runtime protocols: every backend is a Backend whose step runner is a StepRunner, the
Trainer's runner is chosen once, and `fit` leaves the trained params in the model."""
from __future__ import annotations

import numpy as np
import pytest

import chainrule
from chainrule.backends import CHECKING_BACKEND, Backend, StepRunner, get_backend
from chainrule.backends.numpy_backend import NumpyBackend
from chainrule.ir import ChainruleError
from chainrule.passes.optimizers import LR, OptimizerSpec
from chainrule.runners import LocalRunner, held_updates
from chainrule.train import NonFiniteError, TrainConfig, Trainer
from support.numeric import digits
from support.paths import ROOT

MLP_DIGITS = str(ROOT / "examples" / "mlp_digits.nn")
CLASSIFIER = str(ROOT / "examples" / "digits_classifier.nn")  # returns its logits too
BACKEND_NAMES = ["numpy", "onnxruntime", CHECKING_BACKEND]


def accuracy(model, data) -> float:
    scores = model.predict(data, ["logits"])["logits"]
    return float(np.mean(np.argmax(scores, axis=1) == data["y"]))


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_every_backend_and_its_step_runner_follow_the_protocols(name):
    model = chainrule.compile(MLP_DIGITS)
    backend = get_backend(name)
    assert isinstance(backend, Backend) and backend.name == name
    graph, interface = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    runner = backend.step_runner(graph, held_updates(interface))
    assert isinstance(runner, StepRunner)
    runner.load(model.params)
    batch = {k: v[:16] for k, v in digits("train").items()}
    outputs = runner.step({**batch, LR: np.asarray(0.1, np.float32)})
    assert sorted(outputs) == ["J", "acc"]  # the updated params stay in the runner
    assert not np.array_equal(runner.values()["W1"], model.params["W1"])


def test_the_checking_interpreter_is_a_backend_by_name():
    backend = get_backend(CHECKING_BACKEND)
    assert isinstance(backend, NumpyBackend) and backend.check_numerics
    with pytest.raises(ChainruleError, match=f"choose from numpy, onnxruntime, "
                                             f"{CHECKING_BACKEND}"):
        get_backend("jax")


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_fit_leaves_the_trained_params_in_the_model(backend):
    model = chainrule.compile(CLASSIFIER)
    test = digits("test")
    untrained = accuracy(model, test)
    trainer = Trainer(model, TrainConfig(epochs=2, backend=backend))
    history = trainer.fit(digits("train"))
    trained = accuracy(model, test)
    assert untrained < 0.3 < 0.85 < trained  # chance is 0.1
    assert trained == pytest.approx(trainer.evaluate(test)["acc"], abs=1e-6)
    assert len(history.epochs) == 2
    for name, array in trainer.params.items():
        assert np.array_equal(model.params[name], array), name
    assert model.run(**test)["acc"] == pytest.approx(trained, abs=1e-6)


def test_the_model_keeps_what_an_interrupted_fit_trained():
    model = chainrule.compile(MLP_DIGITS)
    initial = {name: array.copy() for name, array in model.params.items()}

    def stop_after_three_steps(trainer, *progress):
        trainer.stop_requested = trainer.steps == 3

    trainer = Trainer(model, TrainConfig(epochs=1))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(digits("train"), progress=stop_after_three_steps)
    assert trainer.steps == 3
    for name in initial:
        assert np.array_equal(model.params[name], trainer.params[name]), name
        assert not np.array_equal(model.params[name], initial[name]), name


def test_a_fit_that_runs_no_step_leaves_the_model_alone():
    model = chainrule.compile(MLP_DIGITS)
    trainer = Trainer(model, TrainConfig(epochs=1))
    data = digits("train")
    trainer.fit(data)
    kept = model.params
    model.params["W1"] = np.zeros_like(kept["W1"])  # the model's own, changed after fit
    trainer.fit(data)  # the one epoch is done: no step runs
    assert model.params is kept and not model.params["W1"].any()


def test_the_trained_params_stop_being_the_trainers_arrays():
    """The model holds copies: the trainer's next steps do not change them."""
    model = chainrule.compile(MLP_DIGITS)
    trainer = Trainer(model, TrainConfig(epochs=1))
    trainer.fit(digits("train"))
    kept = {name: array.copy() for name, array in model.params.items()}
    trainer.train_step(digits("test"), 0.1)
    for name in kept:
        assert np.array_equal(model.params[name], kept[name]), name


def test_check_numerics_trains_on_plain_arrays_to_the_compiled_backends_params():
    data = {k: v[:64] for k, v in digits("train").items()}
    params = {}
    for check in (False, True):
        trainer = Trainer(chainrule.compile(MLP_DIGITS), TrainConfig(epochs=2, check_numerics=check))
        assert isinstance(trainer.runner, LocalRunner)
        trainer.fit(data)
        params[check] = {k: np.array(v) for k, v in trainer.params.items()}
    for name in params[False]:
        np.testing.assert_allclose(params[True][name], params[False][name], rtol=1e-4,
                                   atol=1e-6, err_msg=name)


def test_check_numerics_stops_training_at_the_first_bad_node():
    model = chainrule.compile(MLP_DIGITS)
    trainer = Trainer(model, TrainConfig(epochs=1, lr=1e30, optimizer=OptimizerSpec("sgd"),
                                         check_numerics=True))
    with pytest.raises(ChainruleError, match=r"produced (NaN|Inf) \(--check-numerics\)"):
        trainer.fit(digits("train"))


def test_a_non_finite_step_says_how_to_find_it():
    model = chainrule.compile(MLP_DIGITS)
    trainer = Trainer(model, TrainConfig(epochs=1, lr=1e30, optimizer=OptimizerSpec("sgd")))
    with pytest.raises(NonFiniteError, match=r"Rerun with --check-numerics to find"):
        trainer.fit(digits("train"))


def test_a_non_finite_step_leaves_the_model_its_last_finite_params():
    model = chainrule.compile(MLP_DIGITS)
    initial = {name: array.copy() for name, array in model.params.items()}
    trainer = Trainer(model, TrainConfig(epochs=1, lr=1e30, optimizer=OptimizerSpec("sgd")))
    with pytest.raises(NonFiniteError):
        trainer.fit(digits("train"))
    for name, array in model.params.items():
        assert np.array_equal(array, initial[name]), name


def test_fit_after_a_checkpoint_is_loaded_gives_the_model_its_params(tmp_path):
    data = digits("train")
    trained = Trainer(chainrule.compile(MLP_DIGITS), TrainConfig(epochs=1))
    trained.fit(data, checkpoint_dir=tmp_path)
    model = chainrule.compile(MLP_DIGITS)
    resumed = Trainer(model, TrainConfig(epochs=1))
    resumed.load_checkpoint(tmp_path)
    resumed.fit(data)  # finished already: no step runs
    for name, array in trained.params.items():
        assert np.array_equal(model.params[name], array), name


@pytest.mark.parametrize("name", ["numpy", "onnxruntime"])
def test_a_step_runner_works_on_after_its_caller_drops_the_graph(name):
    import gc

    model = chainrule.compile(MLP_DIGITS)
    graph, interface = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    runner = get_backend(name).step_runner(graph, held_updates(interface))
    del graph
    model._compiled.clear()  # the model's own cache of compiled graphs held it too
    gc.collect()
    runner.load(model.params)
    batch = {k: v[:16] for k, v in digits("train").items()}
    assert sorted(runner.step({**batch, LR: np.asarray(0.1, np.float32)})) == ["J", "acc"]


def test_a_graph_compiled_directly_runs_after_its_other_references_go():
    import gc

    from chainrule.backends.numpy_compiled import compile_graph

    compiled = compile_graph(chainrule.compile(MLP_DIGITS).compile_graph()[0])
    gc.collect()
    test = digits("test")
    assert 0.0 <= compiled({"x": test["x"], "y": test["y"]},
                           chainrule.compile(MLP_DIGITS).params)["acc"] <= 1.0
