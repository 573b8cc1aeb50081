"""Synchronous data-parallel training on Ray: each step's gradients from shards of the batch on
N workers, one optimizer update in this process (the driver).

A step. The global batch is N contiguous shards of its rows whose sizes differ by at most one
(rows that are indices into the training data, which went into Ray's object store once: a step
sends row indices, not data). Worker k, a Ray actor holding the gradient graph compiled for the
chosen backend, runs shard k and returns every output of that graph times the shard's rows: the
objective and metrics, the gradients, and the next values of the model's state. The driver adds
the shards' sums in shard order, divides by the batch's rows, and feeds the result to the
optimizer's update graph (passes/optimizers.py build_update_step: the same update the
single-process train step runs). The new params go into the object store once, and every worker
reads that one object at the next step.

The assumption. Averaging shard gradients weighted by rows gives the batch's gradient exactly
when the objective is a mean over the batch's rows plus terms that do not depend on the batch
(`cross_entropy`, `mse`, plus weight decay, as in examples/mlp.nn): then the result does not
depend on N, and equals single-process training with the same batch size. `fit` checks this on
its first batch, with the model in inference mode (no dropout, batch norm on its running
statistics): the objective of the whole batch must equal the row-weighted mean of its shards'
objectives, or training is refused (an objective summed over rows, or one that mixes rows). What
that check cannot see is training mode's batch norm, which normalises each shard with the
shard's own statistics, as data-parallel training without synchronised batch norm does: a model
with batch_norm trains, with a note, but its gradients depend on N. Its running statistics are
the shards' next values averaged, weighted by their rows: a running mean moves by the mean of
the shards' means, which is the batch's mean of what that batch norm sees, and a running
variance by the mean of the shards' unbiased variances, which leaves out how the shards' means
differ.

Why the driver averages (and not an all-reduce among the workers). The driver holds the params
and the optimizer state in one place, so it runs the update once, and the checkpoint, the
non-finite checks and the learning-rate schedule stay the single-process Trainer's code. Adding
in shard order makes every run add the same numbers in the same order, so a run is
deterministic whatever order the workers finish in. With the optimizer on the driver, an
all-reduce among the workers gains nothing: the sum must still reach the driver, and the new
params go out from it as they do now. (Replicating the optimizer on every worker, as
all-reduce training does, would save sending the params, but would put the state that
checkpoints, the schedule and the non-finite checks read into N copies kept in step.)

Faults. A worker that dies (killed, out of memory, its node lost) is replaced by a new actor,
which loads the data set from the object store, and its shard of the interrupted step is run
again with the same params and dropout seed, so the result is the one an unfaulted run gets.
After MAX_RESTARTS replacements in one step, the next death stops training with an error. The driver
holds all state: Ctrl-C on it finishes the step and writes the checkpoint, as single-process
training does, and the checkpoint format is the same, so either kind of run resumes the other.

Dropout. Shard k of step s draws its masks from Generator([seed, 1, s, k]) (the trainer's
dropout seed, [seed, 1], then the step and the shard): the same masks whichever worker runs
the shard and however often, and a resumed run goes on from the checkpoint's step count.
(onnxruntime draws masks from its own generator, as it does single-process; only the numpy
backend's masks are reproducible.)
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import numbers
import os
import re
import socket
import time
import warnings

import numpy as np

from .backends import get_backend
from .backends.threads import configured_threads, set_threads
from .ir import ChainruleError
from .ir.limits import available_memory
from .passes import select_outputs
from .passes.optimizers import build_update_step, step_optimizer, trained_params, update_inputs
from .runners import LocalRunner, check_dataset, held_updates, take_rows

INSTALL_HINT = ("data-parallel training (--workers) needs Ray: pip install "
                "'chainrule[distributed]' (or pip install -e '.[distributed]' in a checkout)")
MAX_RESTARTS = 3        # replacements of one worker within one step before training stops
PROBE_SECONDS = 5.0     # how long to wait for a cluster's port to connect, and then to answer
MAX_WORKERS = 1024      # more shards than this leaves each a few rows of any sensible batch
# A worker's resident memory before its share of the model: 118 MB measured (RSS of a
# ShardWorker after a step of examples/mlp.nn on numpy, Ray 2.60), rounded up.
WORKER_BYTES = 128 * 2 ** 20
# The first bytes an HTTP/2 client sends: its preface, then an empty SETTINGS frame. Ray's
# head (GCS) and its client server speak gRPC, whose servers answer with a SETTINGS frame.
HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4      # the frame type in byte 3 of an HTTP/2 frame header
HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def usable_ray(workers, check_numerics: bool = False):
    """The ray module, once the settings are known to suit data-parallel training: a whole
    number of workers, at least 1; no --check-numerics; Ray installed (else how to install
    it)."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ChainruleError(f"--workers must be a whole number of at least 1, not {workers!r}")
    if workers > MAX_WORKERS:
        raise ChainruleError(f"--workers {workers} is more than chainrule runs: at most "
                             f"{MAX_WORKERS} workers")
    if check_numerics:
        raise ChainruleError("--check-numerics runs the numpy interpreter in one process, not "
                             "on workers: run it without --workers (single-process training "
                             "gives the same params)")
    try:
        import ray
    except ImportError:
        raise ChainruleError(INSTALL_HINT) from None
    return ray


def split_rows(rows: np.ndarray, workers: int) -> list[np.ndarray]:
    """`rows` as `workers` contiguous shards whose sizes differ by at most one (larger first);
    a batch smaller than that leaves the last shards empty."""
    return np.array_split(rows, workers)


class ShardWorker:
    """A Ray actor: the gradient graph compiled for one backend, and the training data."""

    def __init__(self, graph, backend: str, threads: int, dropout_seed: list[int]):
        set_threads(threads)
        self.graph = graph
        self.backend = get_backend(backend)
        self.dropout_seed = dropout_seed
        self.input_names = [v.name for v in graph.inputs]
        self.param_names = [v.name for v in graph.param_values()]
        self.data = None

    def ready(self) -> bool:
        return True

    def load(self, data: dict) -> None:
        self.data = data  # arrays in the object store, shared with the node's other workers

    def gradients(self, params: dict, rows: np.ndarray, step: int, shard: int):
        """Every output of the graph on these rows, times their count (a sum over the rows for
        a mean objective), and the seconds it took."""
        started = time.perf_counter()
        batch = {name: self.data[name][rows] for name in self.input_names}
        rng = np.random.default_rng([*self.dropout_seed, step, shard])
        outputs = self.backend.run(self.graph, batch,
                                   {name: params[name] for name in self.param_names},
                                   training=True, rng=rng)
        count = len(rows)
        sums = {name: value * count for name, value in outputs.items()}
        return sums, time.perf_counter() - started


class ShardedGradients:
    """The gradient half of a train step, computed by `workers` Ray actors on shards of each
    batch and averaged here; `update_graph` and `interface` are the optimizer update that
    ShardedRunner runs on the result. `workers` holds the actors' handles, shard k on workers[k]."""

    def __init__(self, model, config, workers: int, address: str | None, notify,
                 dropout_seed: list[int]):
        self.ray = usable_ray(workers, config.check_numerics)
        check_batch_axis(model.graph)
        self.notify = notify or (lambda text: warnings.warn(text, RuntimeWarning, stacklevel=3))
        self.count = int(workers)
        worker_graph, self.update_graph, self.interface = split_step(model, config)
        if model.graph.updates:
            self.notify("batch_norm normalises each worker's shard with the shard's own "
                        "statistics, so with --workers the gradients depend on the number of "
                        "workers; its running statistics are averaged over the shards")
        self.input_names = [v.name for v in model.graph.inputs]
        if address is None and not self.ray.is_initialized():
            check_worker_memory(workers, model.params)
        self.started_ray = connect(self.ray, address)
        if address is not None:
            self.check_cluster_cpus(workers, address)
        # Actors take no CPU while alive (Ray's default), so N workers start on any cluster;
        # SPREAD puts them on different nodes where there are several.
        self.actor = self.ray.remote(ShardWorker).options(scheduling_strategy="SPREAD")
        self.worker_args = (self.ray.put(worker_graph), config.backend, configured_threads(),
                            list(dropout_seed))
        self.data_ref, self.rows = None, 0
        self.workers = [self.start_worker() for _ in range(workers)]
        self.wait_until_ready()
        self.restarts = 0
        self.step_records = []  # (compute, communication, bytes out, bytes back) per step

    def check_cluster_cpus(self, workers: int, address: str) -> None:
        """Refuse more workers than the joined cluster has CPUs: the actors reserve none, so
        the extra ones would only share cores with the others, each holding its own memory."""
        cpus = int(self.ray.cluster_resources().get("CPU", 0))
        if workers > cpus:
            if self.started_ray:
                self.ray.shutdown()
                self.started_ray = False
            raise ChainruleError(f"--workers {workers} is more than the {cpus} CPUs of the Ray "
                                 f"cluster at {address}: give --workers {max(cpus, 1)} or fewer")

    # ---- workers ----------------------------------------------------------------------------

    def start_worker(self):
        worker = self.actor.remote(*self.worker_args)
        if self.data_ref is not None:
            worker.load.remote(self.data_ref)  # an actor runs its calls in order
        return worker

    def wait_until_ready(self) -> None:
        try:
            self.ray.get([worker.ready.remote() for worker in self.workers])
        except self.ray.exceptions.RayError as error:
            self.close()
            raise ChainruleError(f"a Ray worker could not start: {first_line(error)} (each "
                                 f"node of the cluster needs chainrule installed)") from None

    def restart(self, shard: int, error, step: int) -> None:
        """Replace the dead worker of `shard` by a new actor."""
        self.restarts += 1
        self.notify(f"worker {shard} died in step {step + 1} ({first_line(error)}); "
                    f"restarting it and running its shard again")
        with contextlib.suppress(self.ray.exceptions.RayError):  # gone already
            self.ray.kill(self.workers[shard])
        self.workers[shard] = self.start_worker()

    def close(self) -> None:
        """Stop the workers, and Ray if this process started it."""
        for worker in self.workers:
            with contextlib.suppress(self.ray.exceptions.RayError):  # gone already
                self.ray.kill(worker)
        self.workers, self.data_ref, self.worker_args = [], None, ()
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    # ---- data -------------------------------------------------------------------------------

    def load(self, data: dict) -> None:
        """Put the model's inputs of `data` into the object store, once, for every worker."""
        arrays = {name: np.asarray(data[name]) for name in self.input_names}
        self.rows = len(next(iter(arrays.values())))
        self.data_ref = self.ray.put(arrays)
        for worker in self.workers:
            worker.load.remote(self.data_ref)

    def check_mean_over_rows(self, data: dict, evaluate, batch_size: int) -> None:
        """Refuse an objective that is not a mean over rows (see the module's docstring): on the
        first batch, in inference mode, the whole batch's objective must be the row-weighted
        mean of its shards'. `evaluate` gives the objective over a data set."""
        rows = np.arange(min(batch_size, self.rows))
        shards = [part for part in split_rows(rows, self.count) if len(part)]
        if len(shards) < 2:
            return
        objective = self.interface.objective

        def value(part):  # one evaluation batch: part is at most the batch size
            return evaluate(take_rows(data, part))[objective]

        whole = value(rows)
        weighted = sum(len(part) * value(part) for part in shards) / len(rows)
        if math.isfinite(whole) and not math.isclose(whole, weighted, rel_tol=1e-4,
                                                      abs_tol=1e-7):
            raise ChainruleError(
                f"the objective {objective} is not a mean over the batch's rows: on the first "
                f"{len(rows)} rows it is {whole:.6g}, and the row-weighted mean of its "
                f"{len(shards)} shards' is {weighted:.6g}, so averaging the shards' gradients "
                f"would not give the batch's gradient. Data-parallel training needs an "
                f"objective that is a mean over rows plus terms that do not depend on the "
                f"batch; train this model without --workers")

    # ---- a step -----------------------------------------------------------------------------

    def averaged(self, params: dict, rows: np.ndarray | None, step: int) -> dict:
        """The gradient graph's outputs on the batch `rows` (None: all the loaded rows),
        averaged over its rows: each shard's sum, added in shard order, over the row count."""
        rows = np.arange(self.rows) if rows is None else rows
        started = time.perf_counter()
        params_ref = self.ray.put(params)  # once per step: every worker reads this one object
        shards = [(k, part) for k, part in enumerate(split_rows(rows, self.count)) if len(part)]
        calls = {k: self.submit(k, params_ref, part, step) for k, part in shards}
        results = [self.result(k, calls[k], params_ref, part, step) for k, part in shards]
        wall = time.perf_counter() - started
        averaged = {}
        for name in results[0][0]:
            total = results[0][0][name]
            for sums, _ in results[1:]:
                total = total + sums[name]
            dtype = np.asarray(total).dtype  # an integer state stays one
            averaged[name] = np.asarray(total / len(rows)).astype(dtype, copy=False)
        compute = max(seconds for _, seconds in results)
        self.step_records.append((compute, wall - compute, nbytes(params),
                                  sum(nbytes(sums) for sums, _ in results)))
        return averaged

    def submit(self, shard: int, params_ref, rows: np.ndarray, step: int):
        return self.workers[shard].gradients.remote(params_ref, rows, step, shard)

    def result(self, shard: int, call, params_ref, rows: np.ndarray, step: int):
        """The shard's result; a dead worker is replaced and the shard run again."""
        ray = self.ray
        for attempt in range(MAX_RESTARTS + 1):
            try:
                return ray.get(call)
            except ray.exceptions.RayActorError as error:
                if attempt == MAX_RESTARTS:
                    raise ChainruleError(f"worker {shard} died {attempt + 1} times in step "
                                         f"{step + 1}, the last time: {first_line(error)}; "
                                         f"training stopped") from None
                self.restart(shard, error, step)
                call = self.submit(shard, params_ref, rows, step)
            except ray.exceptions.RayTaskError as error:
                cause = error.cause
                if isinstance(cause, ChainruleError):  # a located error of the model or data
                    raise cause from None
                raise ChainruleError(f"worker {shard} failed in step {step + 1}: "
                                     f"{first_line(error)}") from None

    def epoch_summary(self) -> dict:
        """The epoch's steps in this process, per step: the slowest worker's compute, the rest
        of the time until the last result was in (sending the params, returning the sums,
        waiting on restarts), and the bytes each way; then the counts start again."""
        records, self.step_records = self.step_records, []
        restarts, self.restarts = self.restarts, 0
        means = [sum(column) / len(records) for column in zip(*records)] if records else [0] * 4
        compute, communication, out, back = means
        return {"workers": self.count, "steps": len(records),
                "compute_seconds_per_step": compute,
                "communication_seconds_per_step": communication,
                "params_bytes_per_step": int(out), "gradients_bytes_per_step": int(back),
                "restarts": restarts}


class ShardedRunner(LocalRunner):
    """The Trainer's runner with `workers` Ray workers: a batch's feeds are the gradient graph's
    outputs averaged over its shards (ShardedGradients), and a step runs the optimizer's update
    graph on them here, with the params and optimizer state resident in the numpy backend; the
    new params go to the workers as they are at the next step."""

    rerun_note = " (without --workers)"

    def __init__(self, model, config, workers: int, address: str | None, notify,
                 dropout_seed: list[int]):
        self.gradients = ShardedGradients(model, config, workers, address, notify,
                                          dropout_seed)
        graph, interface = self.gradients.update_graph, self.gradients.interface
        # The update is a few elementwise ops per param: numpy runs it with no session, writing
        # the new params into their own arrays (it has no dropout to draw).
        update = get_backend("numpy", donate_params=True).step_runner(graph,
                                                                      held_updates(interface))
        super().__init__(update, graph, interface)
        self.model_graph, self.batch_size = model.graph, config.batch_size
        self.param_names = [v.name for v in graph.param_values()]

    def feeds(self, data: dict, rows: np.ndarray | None, step: int) -> dict[str, np.ndarray]:
        """The gradients of the batch `rows` of the loaded data set, averaged over its shards;
        with rows None, `data` is a batch of its own, loaded as a data set first."""
        if rows is None:
            check_dataset(self.model_graph, data, "the batch")
            self.gradients.load(data)
        current = self.values()
        return self.gradients.averaged({name: current[name] for name in self.param_names},
                                       rows, step)

    def prepare(self, data: dict, evaluate) -> None:
        """The training data into the object store, once; an objective that is not a mean over
        rows is refused."""
        self.gradients.load(data)
        self.gradients.check_mean_over_rows(data, evaluate, self.batch_size)

    def epoch_record(self) -> dict:
        return {"distributed": self.gradients.epoch_summary()}

    def close(self) -> None:
        self.gradients.close()


def split_step(model, config):
    """The train step in two: the gradient graph the workers run (every output the update
    reads, and only those) and the update graph with its interface, which the driver runs."""
    graph, grads = model.compile_graph(grad=True, wrt=trained_params(model.graph, config.freeze),
                                       opt_level=config.opt_level, training=True)
    update, interface = build_update_step(graph, grads, step_optimizer(config))
    selected = select_outputs(graph, update_inputs(graph, grads))
    selected.updates = {}  # the driver applies them: here they are outputs like the others
    return (model.optimize(selected, config.opt_level),
            model.optimize(update, config.opt_level), interface)


def check_batch_axis(graph) -> None:
    """Shards are slices of rows: every input needs the batch as a symbolic first dim."""
    fixed = [f"{v.name}: {v.type}" for v in graph.inputs
             if not v.type.rank or not isinstance(v.type.shape[0], str)]
    if fixed:
        raise ChainruleError(f"data-parallel training splits each batch's rows among the "
                             f"workers, so every input needs a symbolic first dim (the batch); "
                             f"{', '.join(fixed)} has none")


def connect(ray, address: str | None) -> bool:
    """Join the Ray cluster at `address`, or start one here when it is None. A session this
    process already has is used as it is. True when this call started Ray."""
    if ray.is_initialized():
        return False
    if address is not None:
        probe(address)
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
            return True
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ChainruleError(f"cannot join the Ray cluster at {address or 'this machine'}: "
                             f"{first_line(error)}") from None
    return True


def check_worker_memory(workers: int, params: dict) -> None:
    """Refuse, before Ray starts here, local workers that memory cannot hold: each takes
    WORKER_BYTES, and its params, their gradients and their sums besides."""
    each = WORKER_BYTES + 3 * nbytes(params)
    available = available_memory()
    if workers * each > available:
        raise ChainruleError(f"{workers} local Ray workers would take about "
                             f"{workers * each:,} bytes ({each:,} each), more than the "
                             f"{available:,} bytes of memory available: give --workers "
                             f"{max(available // each, 1)} or fewer, or --address of a cluster")


def split_address(address: str) -> tuple[str, int]:
    """HOST and PORT of `ray://HOST:PORT` or `HOST:PORT` (HOST a name, an IPv4 address or an
    [IPv6] one; PORT 1 to 65535), or an error that says what form an address takes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
            and (valid_ip(host[1:-1], 6) if bracketed else valid_host(host))):
        raise ChainruleError(f"{address!r} is not a Ray cluster address: give auto, "
                             f"ray://HOST:PORT or HOST:PORT (HOST a name or an IP address, "
                             f"[ADDRESS] for IPv6; PORT 1 to 65535)")
    return host.strip("[]"), int(port)


def valid_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def valid_host(host: str) -> bool:
    """An IPv4 address, or a host name: dot-separated labels of 1 to 63 letters, digits,
    hyphens and underscores (not at either end), 253 characters in all, the last not all
    digits (the resolver would read `1.2.3` as the address 1.2.0.3)."""
    if valid_ip(host, 4):
        return True
    labels = host.split(".")
    return (0 < len(host) <= 253 and host.isascii() and not labels[-1].isdigit()
            and all(HOST_LABEL.fullmatch(label) for label in labels))


def check_address(address: str) -> None:
    """`address` has the form of a Ray cluster's address (see split_address), or is auto."""
    if address != "auto":
        split_address(address)


def probe(address: str) -> None:
    """Fail within about 2 * PROBE_SECONDS, with one line, on an address where no Ray cluster
    answers, rather than wait for Ray's own retries (two minutes or more, logging as they go):
    the port must accept a connection and answer an HTTP/2 greeting as gRPC servers do."""
    if address == "auto":
        return  # Ray looks for a cluster on this machine and says at once if there is none
    host, port = split_address(address)
    hint = "start one with `ray start --head` on its head node, or check the address"
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return  # a TLS cluster answers only after a TLS handshake
            connection.sendall(HTTP2_GREETING)
            answer = connection.recv(9)
    except TimeoutError:
        raise ChainruleError(f"no Ray cluster answers at {address} (nothing came back within "
                             f"{PROBE_SECONDS:g}s); {hint}") from None
    except (OSError, UnicodeError, ValueError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise ChainruleError(f"cannot reach a Ray cluster at {address} ({reason}); "
                             f"{hint}") from None
    if len(answer) < 4 or answer[3] != HTTP2_SETTINGS:
        raise ChainruleError(f"the service at {address} is not a Ray cluster (it does not "
                             f"answer as Ray's gRPC server does); {hint}")


def nbytes(arrays: dict) -> int:
    return sum(np.asarray(array).nbytes for array in arrays.values())


def first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
