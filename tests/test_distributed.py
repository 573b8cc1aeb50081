"""Data-parallel training on Ray (chainrule/distributed.py): the same params as one process,
faults survived, checkpoints shared with single-process training, and clean errors.

One local Ray session serves the module. Without Ray the tests that need it are skipped, unless
CHAINRULE_REQUIRE_RAY is set (as CI's main run sets it), when a missing Ray fails the module;
the no-Ray path of the CLI is tested either way, by hiding the module.
"""
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends import threads
from chainrule.cli import main
from chainrule.distributed import (INSTALL_HINT, TRIAL_STEPS, CallExchange, CompiledExchange,
                                   probe, split_rows)
from chainrule.page.report import training_document
from chainrule.passes.optimizers import OptimizerSpec, ParamGroup
from chainrule.train import CHECKPOINT_FILE, NonFiniteError, TrainConfig, Trainer
from support.optional_ray import needs_ray, ray
from support.paths import ROOT
from support.cli import chainrule_process, start_chainrule_process
from support.numeric import assert_close, digits

pytestmark = pytest.mark.ray

MLP = str(ROOT / "examples" / "mlp.nn")
LENET = str(ROOT / "examples" / "lenet_digits.nn")

SMALL = """
model small(x: f64[B, 6], y: i64[B]) {
    param W: f64[8, 6] = normal(0.0, 0.5)
    param V: f64[3, 8] = normal(0.0, 0.5)
    J = cross_entropy(tanh(x @ W.T) @ V.T, y) + 0.01 * sum(W ** 2)
    return J
}
"""
WITH_DROPOUT = SMALL.replace("tanh(x @ W.T)", "dropout(tanh(x @ W.T), 0.3)")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


def data(rows: int, features: int, classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(rows, features)), "y": rng.integers(0, classes, rows)}


def trained(model, config, train, workers=None, **fit_options):
    """The params after `fit`, copied, and the trainer's epoch records and notes. The model
    keeps its params: `fit` leaves the trained ones in it, and each run here starts afresh."""
    records, notes = [], []
    initial = dict(model.params)
    try:
        with Trainer(model, config, records.append, workers=workers,
                     notify=notes.append) as trainer:
            trainer.fit(train, **fit_options)
            return {k: np.array(v) for k, v in trainer.params.items()}, records, notes
    finally:
        model.params = initial


def assert_same_params(actual, expected, rtol=1e-9):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], rtol, what=name)


# ---- the step ---------------------------------------------------------------------------------

def test_shards_are_contiguous_and_differ_by_at_most_one():
    rows = np.arange(10, 20)
    shards = split_rows(rows, 3)
    assert [list(s) for s in shards] == [[10, 11, 12, 13], [14, 15, 16], [17, 18, 19]]
    assert [len(s) for s in split_rows(np.arange(2), 3)] == [1, 1, 0]  # a short last batch


# 47 rows in batches of 10: four full batches and one of 7, so 3 workers get shards 4-3-3 and
# 3-2-2; four epochs are 20 steps. Adam runs on 3 workers only (and on 2 with onnxruntime).
EQUIVALENCE = [("sgd", OptimizerSpec("sgd", momentum=0.9), "cosine", (1, 2, 3)),
               ("adam", OptimizerSpec("adam", weight_decay=0.01), "constant", (3,))]


@needs_ray
@pytest.mark.parametrize("name,spec,schedule,worker_counts", EQUIVALENCE,
                         ids=[e[0] for e in EQUIVALENCE])
def test_params_equal_single_process_training_for_any_worker_count(ray_session, name, spec,
                                                                    schedule, worker_counts):
    """The lecture MLP in float64: the same params after 20 steps, to 1e-9."""
    model = chainrule.compile(MLP).to_f64()
    config = TrainConfig(epochs=4, batch_size=10, lr=0.05, optimizer=spec, schedule=schedule)
    train = data(47, 784, 10)
    expected, single_records, _ = trained(model, config, train)
    for workers in worker_counts:
        params, records, notes = trained(model, config, train, workers)
        assert_same_params(params, expected)
        assert notes == []
        assert records[-1]["train"]["J"] == pytest.approx(single_records[-1]["train"]["J"],
                                                          rel=1e-9)
        step = records[-1]["distributed"]
        assert step["workers"] == workers and step["steps"] == 5 and step["restarts"] == 0
        assert step["gradients_bytes_per_step"] >= sum(p.nbytes for p in expected.values())
        assert step["compute_seconds_per_step"] > 0
        assert step["communication_seconds_per_step"] >= 0


@needs_ray
def test_every_replica_holds_the_same_params_and_optimizer_state(ray_session):
    """Each worker updates its own replica from the same sums added in the same order: after
    training, every replica equals the others bit for bit, and the driver's copy (read from
    worker 0) equals single-process training's."""
    config = TrainConfig(epochs=2, batch_size=7, lr=0.05, optimizer=OptimizerSpec("adam"))
    train = data(30, 6, 3)
    with Trainer(chainrule.compile(source=SMALL), config) as single:
        single.fit(train)
        expected = {**single.params, **single.state}
    with Trainer(chainrule.compile(source=SMALL), config, workers=3) as trainer:
        trainer.fit(train)
        replicas = ray.get([w.values.remote() for w in trainer.runner.replicas.workers])
        held = {**trainer.params, **trainer.state}
    assert held.keys() == expected.keys() and "opt.m.W" in held
    assert_same_params(held, expected)
    for values in replicas:
        for name in held:
            assert np.array_equal(values[name], held[name]), name


@needs_ray
def test_params_the_workers_refuse_leave_every_copy_as_it_was(ray_session):
    """A wrong shape set through `trainer.params` is refused in one line, as in one process,
    and the driver goes on serving (and checkpointing) the params the replicas hold."""
    with Trainer(chainrule.compile(source=SMALL), TrainConfig(), workers=1) as trainer:
        before = {name: np.array(value) for name, value in trainer.params.items()}
        wrong = {**before, "W": np.zeros(before["W"].shape[:1] + (1,), np.float32)}
        with pytest.raises(ChainruleError, match="'W'"):
            trainer.params = wrong
        for name, value in trainer.params.items():
            np.testing.assert_array_equal(value, before[name], err_msg=name)


@needs_ray
def test_a_run_keeps_the_exchange_that_its_trial_found_faster(ray_session):
    """Actor calls, then a compiled graph, each for TRIAL_STEPS steps after one to warm up;
    then the faster by median step, and the params are those of one process throughout."""
    config = TrainConfig(optimizer=OptimizerSpec("sgd", momentum=0.9))
    batch = data(12, 6, 3)
    steps = 2 * (TRIAL_STEPS + 1) + 2
    with Trainer(chainrule.compile(source=SMALL), config) as single:
        for _ in range(steps):
            single.train_step(batch, 0.1)
    with Trainer(chainrule.compile(source=SMALL), config, workers=2) as trainer:
        replicas = trainer.runner.replicas
        kinds = []
        for _ in range(steps):
            trainer.train_step(batch, 0.1)
            kinds.append(replicas.exchange.kind if replicas.exchange else None)
        trials = {kind: np.median(seconds[1:]) for kind, seconds in replicas.trial_seconds.items()}
        assert [len(seconds) for seconds in replicas.trial_seconds.values()] == \
            [TRIAL_STEPS + 1] * 2
        assert replicas.kept == min(trials, key=trials.get)
        assert kinds[:TRIAL_STEPS] == [CallExchange.kind] * TRIAL_STEPS
        assert kinds[TRIAL_STEPS + 1:2 * TRIAL_STEPS + 1] == [CompiledExchange.kind] * TRIAL_STEPS
        assert kinds[-1] == replicas.kept
        assert_same_params(trainer.params, single.params)


@needs_ray
def test_a_lone_worker_that_dies_stops_training_with_the_checkpoint_as_remedy(ray_session):
    """With one worker its replica is the only one: its death loses the steps since the
    driver last read the params, which an unfaulted run would have; training stops."""
    def kill_after_step_2(trainer, *progress):
        if trainer.steps == 2:
            kill(trainer.runner.replicas.workers[0])

    with pytest.raises(ChainruleError, match=r"every worker died in step 3 .* resume from the "
                                             r"checkpoint"):
        trained(chainrule.compile(source=SMALL), DROPOUT_CONFIG, DROPOUT_DATA, 1,
                progress=kill_after_step_2)


def kill(worker) -> None:
    """Kill a worker and wait until the kill has landed, so that the next step finds it dead."""
    ray.kill(worker)
    while True:
        try:
            ray.get(worker.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return


def minor_page_faults(pid: int) -> int:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    return int(fields[7])  # minflt, the 10th field of proc(5), the 8th after the name


@needs_ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_worker_computes_as_the_drivers_process_does(ray_session):
    """A worker's steps allocate arrays as large as the last step freed. Without malloc
    keeping freed memory, the lecture MLP's batch of 1024 faulted in 1,775 fresh pages a step
    in a Ray worker (and none in the driver), which made the worker's gradient about 40%
    slower than one process's. It runs at the driver's priority, not Ray's niceness 15, and
    does not import torch (2.3 s before the first step) for arrays that are numpy's."""
    model = chainrule.compile(MLP)
    batch = data(1024, 784, 10)
    batch["x"] = batch["x"].astype(np.float32)
    with Trainer(model, TrainConfig(optimizer=OptimizerSpec("sgd")), workers=1) as trainer:
        worker = trainer.runner.replicas.workers[0]
        pid = ray.get(worker.__ray_call__.remote(lambda actor: os.getpid()))
        for _ in range(3):  # the first steps grow the heap to what a step needs
            trainer.train_step(batch, 0.01)
        before = minor_page_faults(pid)
        for _ in range(5):
            trainer.train_step(batch, 0.01)
        # Actor calls write each step's sums into the object store, a fresh page a fault
        # (about 260 a step here, 794 KB); the arrays freed and faulted in again were 1,900.
        assert (minor_page_faults(pid) - before) / 5 < 600
        if os.geteuid() == 0:  # raising a process's priority takes the privilege
            assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
        # Ray's channels import torch where it is installed, unless told there is none to send.
        assert not ray.get(worker.__ray_call__.remote(lambda actor: "torch" in sys.modules))
        # The threads setting, not the driver's count of free cores: under auto each worker
        # leaves out the cores the others keep busy.
        assert ray.get(worker.__ray_call__.remote(
            lambda actor: threads.chosen_threads())) == threads.AUTO


@needs_ray
def test_clipping_warmup_groups_and_frozen_params_train_alike_on_workers(ray_session):
    """Every worker clips the whole batch's summed gradients in its update, and computes none
    for a frozen param: the params equal single-process training's."""
    model = chainrule.compile(MLP).to_f64()
    spec = OptimizerSpec("rmsprop", groups=(ParamGroup("W2", lr_scale=0.5),))
    config = TrainConfig(epochs=2, batch_size=10, lr=0.01, optimizer=spec,
                         clip_grad_norm=0.05, warmup_steps=3, freeze=("W1",))
    train = data(30, 784, 10)
    expected, _, _ = trained(model, config, train)
    params, _, _ = trained(model, config, train, workers=2)
    assert_same_params(params, expected)
    assert np.array_equal(params["W1"], model.params["W1"])
    assert not np.array_equal(params["W2"], model.params["W2"])


@needs_ray
def test_workers_run_the_chosen_backend(ray_session):
    model = chainrule.compile(MLP).to_f64()
    config = TrainConfig(epochs=2, batch_size=10, lr=0.05, optimizer=OptimizerSpec("adam"))
    train = data(30, 784, 10)
    expected, _, _ = trained(model, config, train)
    params, _, _ = trained(model, replace(config, backend="onnxruntime"), train, workers=2)
    assert_same_params(params, expected)


@needs_ray
def test_batch_norm_statistics_are_averaged_over_shards_by_rows(ray_session):
    """One step (lr 0: params stay) on 7 rows, shards of 4 and 3: each running statistic is
    the shards' next values weighted by rows, which for the first running mean is the
    batch's."""
    model = chainrule.compile(LENET).to_f64()
    config = TrainConfig(optimizer=OptimizerSpec("sgd"))
    batch = {k: v[:7] for k, v in digits("train").items()}
    batch["x"] = batch["x"].astype(np.float64)
    state = ("m1", "v1", "m2", "v2")

    def one_step(rows, workers=None):
        notes = []
        with Trainer(model, config, workers=workers, notify=notes.append) as trainer:
            trainer.train_step({k: v[rows] for k, v in batch.items()}, 0.0)
            return {name: np.array(trainer.params[name]) for name in state}, notes

    shards = [one_step(slice(0, 4))[0], one_step(slice(4, 7))[0]]
    distributed, notes = one_step(slice(0, 7), workers=2)
    for name in state:
        expected = (4 * shards[0][name] + 3 * shards[1][name]) / 7
        assert_close(distributed[name], expected, 1e-12, what=name)
    whole, _ = one_step(slice(0, 7))  # the first batch norm sees the same rows whole or not
    assert_close(distributed["m1"], whole["m1"], 1e-12, what="m1")
    assert len(notes) == 1 and "batch_norm" in notes[0]


SUMMED_OVER_ROWS = SMALL.replace("J = cross_entropy(tanh(x @ W.T) @ V.T, y)",
                                 "J = cross_entropy(tanh(x @ W.T) @ V.T, y) * numel(y, dtype=f64)")
GRADIENT_PENALTY = (ROOT / "examples" / "gradient_penalty.nn").read_text()


@needs_ray
@pytest.mark.parametrize("source,features", [(SUMMED_OVER_ROWS, 6), (GRADIENT_PENALTY, 8)],
                         ids=["summed", "gradient-penalty"])
def test_an_objective_that_is_not_a_mean_over_rows_is_refused(ray_session, source, features):
    """A loss summed over rows, and a penalty on the input gradient of a mean (which shrinks
    as the batch grows): either would train differently on shards."""
    model = chainrule.compile(source=source).to_f64()
    with Trainer(model, TrainConfig(batch_size=8), workers=2) as trainer:
        with pytest.raises(ChainruleError, match="not a mean over the batch's rows"):
            trainer.fit(data(16, features, 3))


@needs_ray
def test_a_non_finite_step_stops_distributed_training(ray_session):
    model = chainrule.compile(source=SMALL)
    config = TrainConfig(epochs=3, batch_size=4, lr=1e300, optimizer=OptimizerSpec("sgd"))
    with Trainer(model, config, workers=2) as trainer:
        with pytest.raises(NonFiniteError, match=r"--check-numerics \(without --workers\)"):
            trainer.fit(data(16, 6, 3))


# ---- dropout, faults and checkpoints ----------------------------------------------------------

DROPOUT_CONFIG = TrainConfig(epochs=2, batch_size=6, lr=0.1, optimizer=OptimizerSpec("adam"))
DROPOUT_DATA = data(24, 6, 3)


@pytest.fixture(scope="module")
def with_dropout_on_2_workers(ray_session):
    """The params of an unfaulted, uninterrupted run of the dropout model on 2 workers."""
    return trained(chainrule.compile(source=WITH_DROPOUT), DROPOUT_CONFIG, DROPOUT_DATA, 2)[0]


@needs_ray
def test_a_killed_worker_is_replaced_and_its_shard_run_again(with_dropout_on_2_workers):
    """The worker of shard 1 is killed after step 3; step 4 finds it dead, a new one runs its
    shard with the same dropout masks, and the params are exactly an unfaulted run's."""
    def kill_after_step_3(trainer, *progress):
        if trainer.steps == 3:
            kill(trainer.runner.replicas.workers[1])

    params, records, notes = trained(chainrule.compile(source=WITH_DROPOUT), DROPOUT_CONFIG,
                                     DROPOUT_DATA, 2, progress=kill_after_step_3)
    for name, expected in with_dropout_on_2_workers.items():
        assert np.array_equal(params[name], expected), name
    assert [r["distributed"]["restarts"] for r in records] == [1, 0]
    assert len(notes) == 1 and notes[0].startswith("worker 1 died in step 4")


@needs_ray
def test_dropout_masks_follow_the_step_and_resume_with_it(with_dropout_on_2_workers, tmp_path):
    straight = with_dropout_on_2_workers
    without_dropout, _, _ = trained(chainrule.compile(source=SMALL), DROPOUT_CONFIG, DROPOUT_DATA)
    assert not np.allclose(straight["W"], without_dropout["W"])  # the masks did something
    model = chainrule.compile(source=WITH_DROPOUT)

    def stop_after_step_5(trainer, *progress):
        trainer.stop_requested = trainer.steps == 5

    with pytest.raises(KeyboardInterrupt):
        trained(model, DROPOUT_CONFIG, DROPOUT_DATA, 2, checkpoint_dir=tmp_path,
                progress=stop_after_step_5)
    with Trainer(model, DROPOUT_CONFIG, workers=2) as resumed:
        resumed.load_checkpoint(tmp_path)
        assert resumed.steps == 5
        resumed.fit(DROPOUT_DATA)
        for name in straight:
            assert np.array_equal(resumed.params[name], straight[name]), name


@needs_ray
@pytest.mark.parametrize("first,then", [(2, None), (None, 3)], ids=["ray-then-local",
                                                                    "local-then-ray"])
def test_a_checkpoint_resumes_in_either_kind_of_run(ray_session, tmp_path, first, then):
    model = chainrule.compile(source=SMALL)
    config = TrainConfig(epochs=3, batch_size=5, lr=0.1, optimizer=OptimizerSpec("adam"))
    train = data(23, 6, 3)
    straight, _, _ = trained(model, config, train)

    def stop_after_step_7(trainer, *progress):
        trainer.stop_requested = trainer.steps == 7

    with pytest.raises(KeyboardInterrupt):
        trained(model, config, train, first, checkpoint_dir=tmp_path, progress=stop_after_step_7)
    with Trainer(model, config, workers=then) as resumed:
        resumed.load_checkpoint(tmp_path)
        resumed.fit(train)
        assert_same_params({k: np.array(v) for k, v in resumed.params.items()}, straight)


# ---- settings refused -------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, -2, 1.5, True])
def test_a_worker_count_below_one_or_not_whole_is_refused(workers):
    with pytest.raises(ChainruleError, match="--workers must be a whole number of at least 1"):
        Trainer(chainrule.compile(source=SMALL), TrainConfig(), workers=workers)


def test_check_numerics_is_refused_with_workers():
    with pytest.raises(ChainruleError, match="--check-numerics .* without --workers"):
        Trainer(chainrule.compile(source=SMALL), TrainConfig(check_numerics=True), workers=2)


@needs_ray
def test_inputs_without_a_batch_dim_are_refused():
    fixed = chainrule.compile(source=SMALL.replace("x: f64[B, 6], y: i64[B]", "x: f64[4, 6], y: i64[4]"))
    with pytest.raises(ChainruleError, match=r"x: f64\[4, 6\], y: i64\[4\] has none"):
        Trainer(fixed, TrainConfig(), workers=2)


def test_an_address_that_is_no_address_is_refused():
    with pytest.raises(ChainruleError, match="not a Ray cluster address"):
        probe("headnode")


# ---- the command line -------------------------------------------------------------------------

def write_data(path, rows=64, seed=0):
    np.savez(path, **data(rows, 6, 3, seed))
    return str(path)


@pytest.fixture
def train_small(tmp_path):
    """`chainrule train` of the small model on 64 rows: the command line's start."""
    model = tmp_path / "small.nn"
    model.write_text(SMALL)
    return ["train", str(model), "--data", write_data(tmp_path / "train.npz")]


@pytest.mark.parametrize("options,message", [
    (["--workers", "0"], "--workers must be a whole number of at least 1, not 0"),
    (["--workers", "2", "--check-numerics"], "--check-numerics runs the numpy interpreter"),
    (["--address", "auto"], "--address names the Ray cluster that --workers N runs on"),
])
def test_cli_refuses_bad_distributed_options(train_small, capsys, options, message):
    assert main(train_small + options) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chainrule: error: {message}") and err.count("\n") == 1


def test_cli_without_ray_says_how_to_install_it(train_small, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if absent
    assert main(train_small + ["--workers", "2"]) == 2
    assert capsys.readouterr().err == f"chainrule: error: {INSTALL_HINT}\n"
    assert "pip install 'chainrule[distributed]'" in INSTALL_HINT


@pytest.mark.subprocess
@needs_ray
def test_cli_reports_an_unreachable_cluster_in_one_line(train_small):
    result = chainrule_process(*train_small, "--workers", "2", "--address", "ray://127.0.0.1:1",
                               timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("chainrule: error: cannot reach a Ray cluster at ray://127.0.0.1:1 (")
    assert len(result.stderr.strip().splitlines()) == 1


@needs_ray
def test_cli_trains_with_workers_validates_and_logs_the_step_split(ray_session, train_small,
                                                                   tmp_path, capsys):
    common = train_small + ["--val", write_data(tmp_path / "val.npz", 20, 1), "--epochs", "2",
                            "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.1"]
    assert main(common + ["-o", str(tmp_path / "single.npz")]) == 0
    log = tmp_path / "log.jsonl"
    assert main(common + ["--workers", "2", "-o", str(tmp_path / "ray.npz"),
                          "--log-jsonl", str(log), "--report", str(tmp_path / "run.html")]) == 0
    out = capsys.readouterr().out
    assert "training small on numpy with 2 workers: 2 epochs" in out
    assert "|  val: J" in out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["distributed"]["steps"] for r in records] == [8, 8]
    assert set(records[0]["distributed"]) == {
        "workers", "steps", "compute_seconds_per_step", "communication_seconds_per_step",
        "gradients_bytes_per_step", "restarts"}
    assert "val" in records[0]
    # each step's split, in the log and charted by the report (tests/test_report.py's page)
    for record in records:
        per_step = record["per_step"]
        assert len(per_step["compute_seconds"]) == len(per_step["communication_seconds"]) == 8
        assert min(per_step["compute_seconds"]) > 0
        assert record["distributed"]["compute_seconds_per_step"] == \
            pytest.approx(sum(per_step["compute_seconds"]) / 8)
    seconds = next(chart for chart in training_document(records)["charts"]
                   if chart["scale"] == "step" and chart["metric"] == "seconds")
    assert {line["name"]: len(line["x"]) for line in seconds["series"]} == \
        {"compute": 16, "communication": 16}
    assert (tmp_path / "run.html").stat().st_size > 0
    with np.load(tmp_path / "single.npz") as single, np.load(tmp_path / "ray.npz") as sharded:
        assert_same_params(dict(sharded), dict(single))


@pytest.mark.subprocess
@needs_ray
def test_cli_interrupted_by_sigint_checkpoints_and_resumes_to_the_same_params(ray_session,
                                                                            train_small,
                                                                            tmp_path):
    """The driver, a subprocess that joins this module's Ray cluster by its address, gets SIGINT
    once its first epoch is logged; it finishes the step, checkpoints and exits 130. Resumed,
    it ends with the params of an uninterrupted (single-process) run."""
    checkpoint, log = tmp_path / "checkpoint", tmp_path / "log.jsonl"
    common = train_small + ["--epochs", "6", "--batch-size", "4", "-q"]
    distributed = common + ["--workers", "2"]
    cluster = ray_session.get_runtime_context().gcs_address  # joined, rather than started
    driver = start_chainrule_process(*distributed, "--address", cluster,
                                     "--checkpoint", checkpoint, "--log-jsonl", log)
    # A watchdog against a driver that hangs, not a measure of speed: ten minutes for an
    # epoch of eight small steps.
    watchdog = threading.Timer(600, driver.kill)
    watchdog.start()
    while not (log.exists() and log.read_text()) and driver.poll() is None:
        time.sleep(0.02)
    watchdog.cancel()
    assert driver.poll() is None, "the driver ended (or hung and was killed) before its first " \
                                  "epoch was logged"
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 130, err
    assert "checkpoint written to" in err and "Traceback" not in err
    assert (checkpoint / CHECKPOINT_FILE).is_file()
    resumed, straight = tmp_path / "resumed.npz", tmp_path / "straight.npz"
    assert main(distributed + ["--resume", str(checkpoint), "-o", str(resumed)]) == 0
    assert main(common + ["-o", str(straight)]) == 0
    with np.load(resumed) as resumed_params, np.load(straight) as straight_params:
        assert_same_params(dict(resumed_params), dict(straight_params))
