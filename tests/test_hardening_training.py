"""Training under abuse: Ray addresses that are not Ray, worker counts past what a machine holds,
damaged checkpoints, Ctrl-C without a checkpoint, resuming from the checkpoint's own options,
and a reader of stdout that goes away.

Ray is optional here as in tests/test_distributed.py: the tests that need it are skipped without
it, unless CHAINRULE_REQUIRE_RAY is set. Every address these tests probe is on this machine.
"""
import errno
import io
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import chainrule
from chainrule import distributed
from chainrule.distributed import MAX_WORKERS, WORKER_BYTES, check_worker_memory, probe
from chainrule.fileio import load_npz
from chainrule.ir import ChainruleError
from chainrule.train import CHECKPOINT_FILE, TrainConfig, Trainer
from support.cli import chainrule as chainrule_cli
from support.cli import chainrule_process, fails, ok
from support.optional_ray import needs_ray, ray
from support.paths import ROOT
from support.training import edit_meta


DIGITS = str(ROOT / "examples" / "digits_classifier.nn")
DIGITS_DATA = str(ROOT / "examples" / "data" / "digits_test.npz")
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")


# ---- services that are not Ray ---------------------------------------------------------------

class LocalService:
    """A TCP server on 127.0.0.1 that accepts connections and answers each with `reply` (None:
    says nothing and keeps the connection open until it stops)."""

    def __init__(self, reply: bytes | None):
        self.reply = reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.connections = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)
            if self.reply is not None:
                connection.sendall(self.reply)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        for connection in self.connections:
            connection.close()
        self.server.close()


@pytest.fixture
def silent_service():
    service = LocalService(None)
    yield service
    service.stop()


@pytest.fixture
def http_service():
    service = LocalService(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    yield service
    service.stop()


@pytest.fixture
def quick_probe(monkeypatch):
    """A probe that waits a fraction of a second (the silent service never answers)."""
    monkeypatch.setattr(distributed, "PROBE_SECONDS", 0.3)


def test_a_service_that_accepts_and_says_nothing_is_not_taken_for_ray(silent_service,
                                                                     quick_probe):
    with pytest.raises(ChainruleError, match=f"no Ray cluster answers at 127.0.0.1:"
                                             f"{silent_service.port} \\(nothing came back"):
        probe(f"127.0.0.1:{silent_service.port}")


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_service_that_answers_http_is_not_taken_for_ray(http_service, quick_probe, scheme):
    with pytest.raises(ChainruleError, match="is not a Ray cluster"):
        probe(f"{scheme}127.0.0.1:{http_service.port}")


@pytest.mark.parametrize("address", [
    ".:80", "a" * 64 + ":80", "host:0", "host:65536", "host:http", "host:-1", ":80",
    "ray://:80", "[::1:80", "[127.0.0.1]:80", "1.2.3:80", "héte:80", "a..b:80", "-a:80",
    "host:٣", "host:80:80",
])
def test_a_malformed_address_is_refused_before_any_connection(address, monkeypatch):
    def no_connection(*args, **kwargs):
        raise AssertionError(f"{address} was connected to")

    monkeypatch.setattr(distributed.socket, "create_connection", no_connection)
    with pytest.raises(ChainruleError, match="is not a Ray cluster address"):
        probe(address)


@pytest.mark.parametrize("address", [".:80", "a" * 64 + ":80", "host:99999", "host\n:80"])
def test_a_malformed_address_is_a_usage_error(address):
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--workers", "2",
                                 "--address", address), code=2)
    assert result.stderr.startswith(f"chainrule: error: {address!r} is not a Ray cluster "
                                    f"address")
    assert result.stderr.count("\n") == 1


@needs_ray
def test_training_with_an_address_that_is_not_ray_ends_in_one_line(silent_service,
                                                                   quick_probe):
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--workers", "2",
                                 "--address", f"127.0.0.1:{silent_service.port}"))
    assert "no Ray cluster answers at 127.0.0.1:" in result.stderr
    assert result.stderr.count("\n") == 1


# ---- how many workers -------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [str(MAX_WORKERS + 1), "99999999999999999999"])
def test_more_workers_than_the_cap_is_a_usage_error(workers):
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--workers", workers),
                   code=2)
    assert result.stderr == (f"chainrule: error: --workers {workers} is more than chainrule "
                             f"runs: at most {MAX_WORKERS} workers\n")


def test_local_workers_that_memory_cannot_hold_are_refused_with_the_numbers(monkeypatch):
    monkeypatch.setattr(distributed, "available_memory", lambda: 10 * WORKER_BYTES)
    params = {"W": np.zeros(1000, np.float32)}
    each = WORKER_BYTES + 5 * 4000
    with pytest.raises(ChainruleError) as error:
        check_worker_memory(16, params)
    assert error.value.message == (
        f"16 local Ray workers would take about {16 * each:,} bytes ({each:,} each), more "
        f"than the {10 * WORKER_BYTES:,} bytes of memory available: give --workers 9 or "
        f"fewer, or --address of a cluster")
    check_worker_memory(9, params)


@needs_ray
def test_the_cli_refuses_local_workers_before_starting_ray(monkeypatch):
    monkeypatch.setattr(distributed, "available_memory", lambda: 4 * WORKER_BYTES)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a new process finds it

    def no_start(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_start)
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--workers", "8"))
    assert "8 local Ray workers would take about" in result.stderr
    assert "give --workers 3 or fewer" in result.stderr


@pytest.mark.subprocess
@pytest.mark.ray
@needs_ray
def test_more_workers_than_a_cluster_has_cpus_are_refused(tmp_path):
    """The driver, another process, joins a one-CPU cluster that this test started."""
    import logging
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        cluster = ray.get_runtime_context().gcs_address
        probe(cluster)  # a Ray cluster answers the probe
        result = chainrule_process("train", DIGITS, "--data", DIGITS_DATA, "--workers", "2",
                                   "--address", cluster, timeout=300)
    finally:
        ray.shutdown()
    assert result.returncode == 1, result.stderr
    assert f"--workers 2 is more than the 1 CPUs of the Ray cluster at {cluster}: give " \
           f"--workers 1 or fewer" in result.stderr
    assert "Traceback" not in result.stderr


# ---- fuzz: addresses and worker counts through the command line --------------------------------

def random_address(rng: np.random.Generator, ports: list[int]) -> str:
    """An address that is either on this machine or malformed: nothing leaves the machine."""
    kind = rng.integers(6)
    port = str(rng.choice(ports)) if rng.integers(4) else str(rng.integers(-5, 70000))
    if kind == 0:
        return f"{rng.choice(LOOPBACK)}:{port}"
    if kind == 1:
        return f"ray://{rng.choice(LOOPBACK)}:{port}"
    if kind == 2:  # a label too long, an empty label, a bad character
        label = rng.choice(["a" * int(rng.integers(64, 300)), "", "a b", "é", "a/b", "\0"])
        return f"{label}.{rng.choice(LOOPBACK)}:{port}"
    if kind == 3:
        return "".join(rng.choice(list(":/.[]@%a1 -_\n"), int(rng.integers(0, 12))))
    if kind == 4:
        return f"{rng.choice(LOOPBACK)}:{rng.choice(['', 'x', '1e3', '٣', '80:80', '+80'])}"
    return "auto" if rng.integers(2) else "ray://"


def random_workers(rng: np.random.Generator) -> str:
    """A count that gets as far as the address half the time, else one that is refused."""
    if rng.integers(2):
        return str(rng.integers(1, 5))
    choices = [str(rng.integers(-3, 1)), str(rng.integers(MAX_WORKERS - 2, MAX_WORKERS + 3)),
               "9" * int(rng.integers(10, 40)), "two", "1.5", ""]
    return choices[rng.integers(len(choices))]


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_addresses_and_worker_counts_end_in_a_clean_exit(seed, silent_service,
                                                              http_service, quick_probe,
                                                              monkeypatch):
    def loopback_only(address, *args, **kwargs):
        assert address[0] in ("127.0.0.1", "localhost", "::1"), address
        return real_connection(address, *args, **kwargs)

    real_connection = socket.create_connection
    monkeypatch.setattr(distributed.socket, "create_connection", loopback_only)
    if ray is not None:  # "auto" finds no cluster and says so, instead of starting one
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", no_local_ray)
    rng = np.random.default_rng(seed)
    ports = [silent_service.port, http_service.port, 1]
    for _ in range(20):
        argv = ["train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                "--workers", random_workers(rng), "--address", random_address(rng, ports)]
        result = chainrule_cli(*argv)
        assert result.returncode in (1, 2), (argv, result.stderr)
        assert "Traceback" not in result.stderr, (argv, result.stderr)
        # One line, after argparse's usage for what it refuses itself.
        assert "error: " in result.stderr.splitlines()[-1], (argv, result.stderr)
        if result.returncode == 1:
            assert result.stderr.count("\n") == 1, (argv, result.stderr)


def no_local_ray(address=None, **options):
    raise ConnectionError(f"no Ray cluster at {address} in this test")


# ---- damaged checkpoints ----------------------------------------------------------------------

@pytest.fixture
def one_epoch(tmp_path):
    checkpoint = tmp_path / "ckpt"
    ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1", "--checkpoint",
                     checkpoint, "-q"))
    return checkpoint


def set_word(field, key, value):
    def edit(meta):
        if key in ("state", "inc"):
            meta[field]["state"][key] = value
        else:
            meta[field][key] = value
    return edit


@pytest.mark.parametrize("edit, field", [
    (set_word("rng", "state", 2 ** 200), "random state 'rng'"),
    (set_word("rng", "inc", -1), "random state 'rng'"),
    (set_word("rng", "state", 1.5), "random state 'rng'"),
    (set_word("rng", "has_uint32", 5), "random state 'rng'"),
    (set_word("rng", "uinteger", 2 ** 40), "random state 'rng'"),
    (set_word("rng", "bit_generator", "MT19937"), "random state 'rng'"),
    (set_word("epoch_rng", "state", 2 ** 128), "random state 'epoch_rng'"),
    (set_word("dropout_rng", "inc", "7"), "random state 'dropout_rng'"),
    (lambda meta: meta["settings"].update(batch_size="32"), "setting 'batch_size'"),
    (lambda meta: meta["settings"].update(freeze=[1]), "setting 'freeze'"),
    (lambda meta: meta["settings"].update(schedule="sometimes"), "setting 'schedule'"),
    (lambda meta: meta.update(optimizer={"kind": 3}), "meta field 'optimizer'"),
    (lambda meta: meta.update(options=[]), "meta field 'options'"),
    (lambda meta: meta["options"].update(epochs="three"), "option 'epochs'"),
    (lambda meta: meta["options"].update(optimizer="newton"), "option 'optimizer'"),
    (lambda meta: meta["options"].update(input="x=a.npy"), "option 'input'"),
    (lambda meta: meta["options"].update(opt_level="O9"), "option 'opt_level'"),
])
def test_a_damaged_checkpoint_field_is_refused_by_name(one_epoch, edit, field):
    edit_meta(one_epoch, edit)
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "2",
                                 "--resume", one_epoch, "--override"))
    assert f"the checkpoint's {field} is" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_position_past_the_end_of_an_epoch_is_refused(one_epoch):
    edit_meta(one_epoch, lambda meta: meta.update(batch=10 ** 9))
    result = fails(chainrule_cli("train", "--resume", one_epoch, "--epochs", "2", "--override"))
    assert "the resumed position, batch 1000000000 of epoch 2, is past the" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("chainrule: error: ")


# ---- Ctrl-C without a checkpoint, and where training stood ------------------------------------

def stop_after(steps: int):
    """A progress callback that asks training to stop, as Ctrl-C does, after `steps` steps."""
    def progress(trainer, *args):
        if trainer.steps == steps:
            trainer.stop_requested = True
    return progress


def test_ctrl_c_without_a_checkpoint_writes_the_last_steps_params(tmp_path, monkeypatch):
    monkeypatch.setattr("chainrule.cli.training.print_progress", stop_after(20))
    output = tmp_path / "out.npz"
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "5",
                           "--batch-size", "16", "-o", output)
    assert result.returncode == 130, result.stderr
    rows = len(np.load(DIGITS_DATA)["y"])
    per_epoch = -(-rows // 16)
    where = f"epoch {20 // per_epoch + 1}, batch {20 % per_epoch}"
    assert f"interrupted after {where}; wrote the params of that step to {output}" \
        in result.stderr
    trainer = Trainer(chainrule.compile(DIGITS), TrainConfig(epochs=5, batch_size=16))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(dict(np.load(DIGITS_DATA)), progress=stop_after(20))
    written = load_npz(output)
    assert set(written) == set(trainer.params)
    for name, array in trainer.params.items():
        assert np.array_equal(written[name], array), name


def test_interrupt_and_resume_name_the_same_epoch_and_batch(tmp_path, monkeypatch):
    checkpoint = tmp_path / "ckpt"
    common = ["train", DIGITS, "--data", DIGITS_DATA, "--epochs", "4", "--batch-size", "16"]
    rows = len(np.load(DIGITS_DATA)["y"])
    per_epoch = -(-rows // 16)
    with monkeypatch.context() as patch:
        patch.setattr("chainrule.cli.training.print_progress", stop_after(per_epoch + 3))
        stopped = chainrule_cli(*common, "--checkpoint", checkpoint)
    assert stopped.returncode == 130
    assert "interrupted after epoch 2, batch 3; checkpoint written to" in stopped.stderr
    assert f"chainrule train --resume {checkpoint}" in stopped.stderr
    resumed = ok(chainrule_cli("train", "--resume", checkpoint))
    assert f"resumed from {checkpoint} after epoch 2, batch 3" in resumed.stdout
    assert "epoch   2  train:" in resumed.stdout  # the rest of that same epoch 2


# ---- resuming with the checkpoint's options ---------------------------------------------------

TRAINED_WITH = ["--epochs", "3", "--batch-size", "16", "--optimizer", "sgd", "--momentum", "0.9",
                "--lr", "0.05", "--lr-schedule", "cosine", "--seed", "3", "--val-split", "0.2"]


def test_resume_dir_alone_trains_on_with_the_checkpoints_options(tmp_path, monkeypatch):
    straight = tmp_path / "straight.npz"
    ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, *TRAINED_WITH, "-o", straight,
                     "-q"))
    checkpoint, resumed = tmp_path / "ckpt", tmp_path / "resumed.npz"
    with monkeypatch.context() as patch:
        patch.setattr("chainrule.cli.training.print_progress", stop_after(30))
        stopped = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, *TRAINED_WITH,
                                "-o", resumed, "--checkpoint", checkpoint)
    assert stopped.returncode == 130
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()  # the checkpoint's paths do not depend on the working directory
    result = ok(chainrule_cli("train", "--resume", checkpoint, "-q", cwd=elsewhere))
    taken = result.stderr.splitlines()[0]
    assert taken.startswith(f"chainrule: note: from the checkpoint in {checkpoint}: {DIGITS} "
                            f"--data {DIGITS_DATA}")
    for option in ("--epochs 3", "--optimizer sgd", "--lr 0.05", "--lr-schedule cosine",
                   "--seed 3", "--val-split 0.2", f"--output {resumed}"):
        assert option in taken
    with np.load(straight) as expected, np.load(resumed) as got:
        for name in expected:
            assert np.array_equal(expected[name], got[name]), name


def test_options_given_on_resume_override_the_checkpoints_and_say_so(tmp_path):
    checkpoint = tmp_path / "ckpt"
    ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, *TRAINED_WITH, "--checkpoint",
                     checkpoint, "-q"))
    refused = fails(chainrule_cli("train", "--resume", checkpoint, "--epochs", "4"))
    assert "given here instead of the checkpoint's: --epochs 4 (the checkpoint's: --epochs 3)" \
        in refused.stderr
    assert "epochs 3 -> 4" in refused.stderr  # a setting that changes the result: --override
    relative = os.path.relpath(DIGITS_DATA, ROOT)  # the same file by another path: no note
    result = ok(chainrule_cli("train", "--resume", checkpoint, "--epochs", "4", "--override",
                              "--data", relative))
    assert "epoch   4  train:" in result.stdout
    notes = result.stderr.splitlines()
    assert "--epochs 3" not in notes[0] and "--data" not in notes[0]  # given, so not taken
    assert notes[1] == ("chainrule: note: given here instead of the checkpoint's: --epochs 4 "
                        "(the checkpoint's: --epochs 3)")


def test_a_checkpoint_without_recorded_options_resumes_as_before(one_epoch):
    edit_meta(one_epoch, lambda meta: meta.pop("options"))
    missing = fails(chainrule_cli("train", "--resume", one_epoch), code=2)
    assert missing.stderr == ("chainrule: error: train needs a model FILE (or --resume DIR, "
                              "whose checkpoint names it)\n")
    result = ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "2",
                              "--resume", one_epoch, "--override"))
    assert "from the checkpoint" not in result.stderr
    assert "epoch   2  train:" in result.stdout


def test_a_fifo_in_place_of_the_checkpoint_is_named_as_one(one_epoch):
    (one_epoch / CHECKPOINT_FILE).unlink()
    os.mkfifo(one_epoch / CHECKPOINT_FILE)
    result = fails(chainrule_cli("train", "--resume", one_epoch))
    assert "not a regular file but a FIFO" in result.stderr


def test_a_fifo_in_place_of_the_lock_file_is_refused_without_waiting(tmp_path):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    os.mkfifo(checkpoint / ".lock")
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                                 "--checkpoint", checkpoint, "-q"))
    assert "the checkpoint lock must be one" in result.stderr


# ---- a reader that goes away ------------------------------------------------------------------

@pytest.mark.subprocess
def test_a_closed_stdout_does_not_end_training_and_o_is_written(tmp_path):
    """`chainrule train ... | head -2`: the reader takes two lines and goes; training goes on
    quietly to the end and writes -o."""
    output = tmp_path / "trained.npz"
    process = subprocess.Popen(
        [sys.executable, "-m", "chainrule", "train", "examples/mlp_digits.nn", "--data",
         "examples/data/digits_train.npz", "--epochs", "60", "-o", str(output)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("training mlp_digits")
    assert process.stdout.readline().startswith("epoch   1")
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    with np.load(output) as trained:
        assert set(trained) == set(chainrule.compile(str(ROOT / "examples" / "mlp_digits.nn")).params)


@pytest.mark.subprocess
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_a_stdout_closed_or_full_does_not_end_training_and_o_is_written(tmp_path, stdout):
    """`chainrule train ... >&-` and `> /dev/full`: nothing can be printed, and training goes
    on to write -o; a full stdout is said once on stderr, a closed one needs no word."""
    output = tmp_path / "trained.npz"
    with open("/dev/full", "w") as full:
        process = subprocess.run(
            [sys.executable, "-m", "chainrule", "train", DIGITS, "--data", DIGITS_DATA,
             "--epochs", "2", "-o", str(output)],
            cwd=ROOT, stdout=full if stdout == "full" else None, stderr=subprocess.PIPE,
            text=True, timeout=300,
            preexec_fn=(lambda: os.close(1)) if stdout == "closed" else None)
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr and "Exception ignored" not in process.stderr
    warned = "cannot write to stdout (No space left on device)" in process.stderr
    assert warned == (stdout == "full"), process.stderr
    assert output.exists()


def test_a_log_that_cannot_be_written_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    """A full disk under --log-jsonl: the log stops, -o is still written."""
    from chainrule.cli import training

    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(training, "open", lambda *args, **kwargs: FullDisk(), raising=False)
    output = tmp_path / "trained.npz"
    result = ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "3", "-q",
                              "--log-jsonl", tmp_path / "log.jsonl", "-o", output))
    assert result.stderr.count("cannot write to") == 1
    assert "(No space left on device); the log stops here, training goes on" in result.stderr
    assert output.exists()
