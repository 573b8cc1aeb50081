"""The public API's fast paths: -O2 by default, params kept by the backend between train steps
(onnxruntime holding them in IO-bound buffers), and the threads setting."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest

import chainrule
from chainrule.backends import threads
from chainrule.backends.onnx_backend import OnnxRuntimeBackend
from chainrule.cli import main
from chainrule.cli.parser import build_parser
from chainrule.ir import ChainruleError
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer

from support.numeric import assert_close

MLP = str(Path(__file__).parent.parent / "examples" / "mlp.nn")


def batch(seed: int, rows: int = 8):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, 784)).astype(np.float32),
            "y": rng.integers(0, 10, rows)}


@pytest.fixture(autouse=True)
def default_threads(monkeypatch):
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    yield
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    threads.set_threads(None)


# ---- -O2 by default ---------------------------------------------------------------------------

def test_the_default_pipeline_gives_the_numbers_of_O0():
    model = chainrule.compile(MLP, seed=1)
    data = batch(0)
    assert_close(model.run(**data)["J"], model.run(opt_level="O0", **data)["J"], 1e-5)
    fast, plain = model.grad(**data), model.grad(opt_level="O0", **data)
    for name in plain:
        assert_close(fast[name], plain[name], 1e-4, atol=1e-7, what=name)
    stepped, reference = chainrule.compile(MLP, seed=1), chainrule.compile(MLP, seed=1)
    for seed in range(3):
        stepped.train_step(lr=0.1, **batch(seed))
        reference.train_step(lr=0.1, opt_level="O0", **batch(seed))
    for name in reference.params:
        assert_close(stepped.params[name], reference.params[name], 1e-4, atol=1e-7, what=name)


def test_the_cli_runs_and_trains_at_O2_unless_told():
    parser = build_parser()
    for command in ("run", "grad", "predict", "train"):
        assert parser.parse_args([command, MLP]).opt_level == "O2", command
    assert parser.parse_args(["run", MLP, "-O0"]).opt_level == "O0"
    assert parser.parse_args(["ir", MLP]).opt_level == "O0"  # inspection shows the plain IR
    assert TrainConfig().opt_level == "O2"


# ---- params stay with the backend -------------------------------------------------------------

def test_a_numpy_train_step_updates_the_params_in_their_own_buffers():
    """No copy and no new array per step: SGD's update writes into the param it replaces."""
    model = chainrule.compile(MLP)
    model.train_step(lr=0.1, **batch(0))
    trainer = next(iter(model._trainers.values()))
    held = {name: trainer.params[name] for name in trainer.interface.params}
    before = {name: array.copy() for name, array in held.items()}
    for seed in range(1, 4):
        model.train_step(lr=0.1, **batch(seed))
    for name, array in held.items():
        assert trainer.params[name] is array, name
        assert not np.array_equal(array, before[name]), name


def test_arrays_read_from_params_are_the_callers():
    """Reading params hands them over: later steps neither change nor share those arrays."""
    model = chainrule.compile(MLP)
    model.train_step(lr=0.1, **batch(0))
    kept = model.params["W1"]
    snapshot = kept.copy()
    for seed in range(1, 3):
        model.train_step(lr=0.1, **batch(seed))
    assert np.array_equal(kept, snapshot)
    assert not np.array_equal(model.params["W1"], snapshot)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_a_backend_loads_the_params_once_and_not_per_step(monkeypatch, backend):
    model = chainrule.compile(MLP)
    model.train_step(lr=0.1, backend=backend, **batch(0))
    resident = next(iter(model._trainers.values())).runner
    loads = []
    original = resident.load
    monkeypatch.setattr(resident, "load", lambda values: (loads.append(1), original(values)))
    for seed in range(1, 4):
        model.train_step(lr=0.1, backend=backend, **batch(seed))
    assert loads == []
    model.params  # read: handed back; the next step loads them again, once
    for seed in range(4, 6):
        model.train_step(lr=0.1, backend=backend, **batch(seed))
    assert loads == [1]


@pytest.mark.parametrize("optimizer", ["sgd", OptimizerSpec("sgd", momentum=0.9)])
def test_params_held_by_onnxruntime_come_back_current(optimizer):
    """The IO-bound params match numpy's after each step, whether or not they are read
    between steps, and a param set between steps is the one the next step starts from."""
    on_numpy, held, read_often = (chainrule.compile(MLP, seed=2) for _ in range(3))
    for seed in range(4):
        on_numpy.train_step(lr=0.05, optimizer=optimizer, **batch(seed))
        held.train_step(lr=0.05, optimizer=optimizer, backend="onnxruntime", **batch(seed))
        read_often.train_step(lr=0.05, optimizer=optimizer, backend="onnxruntime",
                              **batch(seed))
        for name in on_numpy.params:
            assert_close(read_often.params[name], on_numpy.params[name], 1e-4, atol=1e-6,
                         what=f"step {seed} {name}")
    for name in on_numpy.params:
        assert np.array_equal(held.params[name], read_often.params[name]), name
    zeros = {name: np.zeros_like(array) for name, array in held.params.items()}
    held.set_params(zeros)
    objective = held.train_step(lr=0.05, optimizer=optimizer, backend="onnxruntime",
                                **batch(9))
    assert objective["J"] == pytest.approx(np.log(10), rel=1e-5)  # all-zero logits


def test_a_trainer_on_onnxruntime_checkpoints_and_resumes_its_current_params(tmp_path):
    model = chainrule.compile(MLP)
    config = TrainConfig(optimizer=OptimizerSpec("adam"), backend="onnxruntime")
    trainer = Trainer(model, config)
    for seed in range(3):
        trainer.train_step(batch(seed), 0.01)
    current = {name: array.copy() for name, array in trainer.params.items()}
    state = {name: array.copy() for name, array in trainer.state.items()}
    trainer.save_checkpoint(tmp_path)
    resumed = Trainer(model, config)
    resumed.load_checkpoint(tmp_path)
    for name in current:
        assert np.array_equal(resumed.params[name], current[name]), name
    for name in state:
        assert np.array_equal(resumed.state[name], state[name]), name
    trainer.train_step(batch(5), 0.01)
    resumed.train_step(batch(5), 0.01)
    for name in current:
        assert np.array_equal(resumed.params[name], trainer.params[name]), name


def test_a_held_input_is_not_fed():
    model = chainrule.compile(MLP)
    trainer = Trainer(model, TrainConfig(backend="onnxruntime"))
    with pytest.raises(ChainruleError, match="held by the backend"):
        trainer.train_step({**batch(0), "opt.step": np.zeros((), np.float32)}, 0.01)


# ---- threads ----------------------------------------------------------------------------------

def intra_op_threads() -> int:
    graph = chainrule.compile(MLP).forward_graph(["o"])
    options = OnnxRuntimeBackend().session(graph).get_session_options()
    return options.intra_op_num_threads


def test_the_environment_variable_sets_the_threads(monkeypatch):
    assert threads.chosen_threads() == threads.DEFAULT_THREADS == threads.AUTO
    monkeypatch.setenv(threads.ENV_VAR, "auto")
    assert threads.chosen_threads() == threads.AUTO
    monkeypatch.setenv(threads.ENV_VAR, "2")
    assert threads.chosen_threads() == 2
    assert intra_op_threads() == 2
    for bad in ("two", "0"):
        monkeypatch.setenv(threads.ENV_VAR, bad)
        with pytest.raises(ChainruleError, match=threads.ENV_VAR):
            threads.chosen_threads()


def test_set_threads_overrides_the_environment(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "2")
    threads.set_threads(1)
    assert intra_op_threads() == 1
    threads.set_threads(None)
    assert threads.chosen_threads() == 2


def test_the_blas_limit_follows_the_setting_when_threadpoolctl_is_there():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    for count in (1, 2):
        threads.set_threads(count)
        blas = threadpoolctl.threadpool_info()
        assert blas and all(info["num_threads"] == count for info in blas
                            if info["user_api"] == "blas")


def test_without_threadpoolctl_blas_is_left_alone(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "threadpoolctl", None)  # import fails
    monkeypatch.setattr(threads, "_blas_controllers", None)
    threads.set_threads(2)  # no error: onnxruntime still takes the setting
    assert threads.apply_blas_threads() is False
    assert intra_op_threads() == 2


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine whose other processes' CPU time the test sets: `machine.busy` seconds
    of every core, at `machine.now` on the monotonic clock; this process uses none."""
    state = SimpleNamespace(busy=0.0, now=100.0, running=1)
    monkeypatch.setattr(threads, "usable_cpus", lambda: frozenset({0, 1}))
    monkeypatch.setattr(threads, "_quota_cores", lambda: None)
    monkeypatch.setattr(threads, "_busy_seconds", lambda cpus: state.busy)
    monkeypatch.setattr(threads, "_others_running_now", lambda cores: state.running - 1)
    monkeypatch.setattr(threads.time, "monotonic", lambda: state.now)
    monkeypatch.setattr(threads.time, "process_time", lambda: 0.0)
    monkeypatch.setattr(threads, "_sample", None)
    return state


def test_auto_gives_large_products_the_free_cores_and_small_ones_one(machine):
    assert threads.threads_for(threads.PARALLEL_MIN_FLOPS) == 2
    assert threads.threads_for(threads.PARALLEL_MIN_FLOPS - 1) == 1
    threads.set_threads(1)  # a count set is used for everything
    assert threads.threads_for(1e12) == 1
    threads.set_threads(threads.AUTO)
    assert threads.threads_for(1e12) == 2


def test_auto_leaves_out_the_cores_other_processes_keep_busy(machine):
    machine.running = 2  # at the first sample, another thread is running
    assert threads.free_cores() == 1
    machine.now += threads.SAMPLE_SECONDS / 2  # within the interval: the sample holds
    machine.running = 1
    assert threads.free_cores() == 1
    machine.now += threads.SAMPLE_SECONDS
    machine.busy += 0.1 * threads.SAMPLE_SECONDS  # a daemon's few percent: the core is free
    assert threads.free_cores() == 2
    machine.now += threads.SAMPLE_SECONDS
    machine.busy += 0.95 * threads.SAMPLE_SECONDS  # another process spinning on one core
    assert threads.free_cores() == 1
    assert threads.threads_for(1e12) == 1
    machine.now += threads.SAMPLE_SECONDS
    machine.busy += 5 * threads.SAMPLE_SECONDS  # more than the machine: still one core left
    assert threads.free_cores() == 1


def test_auto_counts_only_the_cpus_the_process_may_use(monkeypatch):
    monkeypatch.setattr(threads, "_sample", None)
    monkeypatch.setattr(threads, "_busy_seconds", lambda cpus: None)
    monkeypatch.setattr(threads, "usable_cpus", lambda: frozenset(range(64)))
    monkeypatch.setattr(threads, "_quota_cores", lambda: 2)  # a container's quota
    assert threads.free_cores() == 2
    monkeypatch.setattr(threads, "_sample", None)
    monkeypatch.setattr(threads, "usable_cpus", lambda: frozenset({3}))  # taskset -c 3
    monkeypatch.setattr(threads, "_quota_cores", lambda: None)
    assert threads.free_cores() == 1


def test_auto_gives_a_session_a_pool_only_for_products_large_at_its_fixed_sizes(machine):
    """A session is made before any batch: a symbolic batch counts as one row."""
    def session_threads(source):
        graph = chainrule.compile(source=source).forward_graph()
        return OnnxRuntimeBackend().session(graph).get_session_options().intra_op_num_threads
    product = "model m(x: f32[{rows}, 512]) {{\n param W: f32[512, 512] = he()\n" \
              "    return x @ W\n}}\n"
    assert session_threads(product.format(rows=48)) == 2  # 25 MFLOP
    assert session_threads(product.format(rows=16)) == 1  # 8 MFLOP: a numpy product's pair
    assert session_threads(product.format(rows="B")) == 1  # 0.5 MFLOP a row
    threads.set_threads(2)
    assert session_threads(product.format(rows="B")) == 2


def test_a_session_takes_a_pool_at_its_first_calls_sizes(machine):
    model = chainrule.compile(source="model m(x: f32[B, 512]) {\n"
                                     "    param W: f32[512, 512] = he()\n    y = x @ W\n"
                                     "    return y\n}\n")
    graph, backend = model.forward_graph(), OnnxRuntimeBackend()
    assert backend.session(graph).get_session_options().intra_op_num_threads == 1
    x = np.ones((48, 512), np.float32)  # 25 MFLOP
    expected = backend.run(graph, {"x": x}, model.params)
    assert backend.session(graph).get_session_options().intra_op_num_threads == 2
    np.testing.assert_array_equal(backend.run(graph, {"x": x}, model.params)["y"],
                                  expected["y"])


def test_a_train_step_whose_session_is_made_anew_keeps_its_params(machine):
    """The first step's batch gives the session a pool: the held params and optimizer state
    are bound to the new session, and the steps go on from them."""
    data = batch(0, rows=128)  # the lecture MLP's first product: 51 MFLOP
    params = []
    for backend in ("numpy", "onnxruntime"):
        trainer = Trainer(chainrule.compile(MLP, seed=3), TrainConfig(
            optimizer=OptimizerSpec("sgd", momentum=0.9), lr=0.05, backend=backend))
        for _ in range(3):
            trainer.train_step(data, 0.05)
        params.append({name: np.array(value) for name, value in trainer.params.items()})
    session = trainer.runner.steps.runner.session
    assert session.get_session_options().intra_op_num_threads == 2
    for name, value in params[0].items():
        assert_close(params[1][name], value, 1e-4, what=name)


def test_numpy_products_set_blas_threads_by_their_size(machine, monkeypatch):
    from chainrule.backends.numpy_kernels import KERNELS
    counts = []  # each limit set on the BLAS library, in order
    monkeypatch.setattr(threads, "_controllers", lambda: [SimpleNamespace(
        set_num_threads=counts.append)])
    monkeypatch.setattr(threads, "_blas_threads", None)
    small, large = np.ones((8, 8), np.float32), np.ones((200, 200), np.float32)
    KERNELS["matmul"](large, large)  # 16 MFLOP
    KERNELS["matmul"](small, small)
    KERNELS["matmul"](small, small)  # set only when it changes
    assert counts == [2, 1]
    counts.clear()
    model = chainrule.compile(MLP)  # the generated code's inline products too
    model.run(x=np.ones((64, 784), np.float32), y=np.zeros(64, np.int64))
    assert counts == [2, 1]  # x @ W1 (64 x 784 x 256: 26 MFLOP), then h @ W2 (0.3 MFLOP)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_the_thread_count_does_not_change_a_single_bit(backend):
    """Under auto the threads follow the machine's load, so a run resumed on a busier machine
    must still give the uninterrupted run's params: BLAS and onnxruntime split a product's
    rows and columns among threads, never the sum along its inner axis."""
    lenet = Path(__file__).parent.parent / "examples" / "lenet_digits.nn"
    with np.load(Path(__file__).parent.parent / "examples" / "data" / "digits_train.npz") as data:
        digits = {"x": data["x"][:128], "y": data["y"][:128]}
    params = []
    for count in (1, 2):
        threads.set_threads(count)
        trainer = Trainer(chainrule.compile(str(lenet)), TrainConfig(
            optimizer=OptimizerSpec("sgd", momentum=0.9), lr=0.05, backend=backend))
        for _ in range(2):
            trainer.train_step(digits, 0.05)
        params.append({name: np.array(value) for name, value in trainer.params.items()})
    for name, value in params[0].items():
        np.testing.assert_array_equal(value, params[1][name], err_msg=name)


def test_the_cli_takes_threads(capsys):
    parser = build_parser()
    for command in ("run", "grad", "predict", "train", "gradcheck"):
        assert parser.parse_args([command, MLP, "--threads", "2"]).threads == 2, command
    assert main(["run", MLP, "--random-inputs", "--threads", "2"]) == 0
    assert threads.chosen_threads() == 2
    assert main(["run", MLP, "--random-inputs", "--threads", "auto"]) == 0
    assert threads.chosen_threads() == threads.AUTO
    with pytest.raises(SystemExit) as usage_error:
        main(["run", MLP, "--random-inputs", "--threads", "0"])
    assert usage_error.value.code == 2
    assert "argument --threads: expected a whole number from 1 to" in capsys.readouterr().err


def test_sessions_do_not_spin():
    graph = chainrule.compile(MLP).forward_graph(["o"])
    session = OnnxRuntimeBackend().session(graph)
    entries = session.get_session_options().get_session_config_entry(
        "session.intra_op.allow_spinning")
    assert entries == "0"
    assert session.get_session_options().execution_mode == \
        onnxruntime.ExecutionMode.ORT_SEQUENTIAL
