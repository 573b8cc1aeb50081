"""Synchronous data-parallel training on Ray: each step's gradients from shards of the batch on
N workers, each of which applies the same optimizer update to its replica of the params.

A step. The global batch is N contiguous shards of its rows whose sizes differ by at most one
(rows that are indices into the training data, which went into Ray's object store once: a step
sends row indices, not data). Worker k, a Ray actor holding the gradient graph compiled for the
chosen backend and a replica of the params and the state (the model's and the optimizer's),
runs shard k and sends every output of that graph times the shard's rows to every worker: the
objective and metrics, the gradients, and the next values of the model's state. Each worker
adds the shards' sums in shard order, divides by the batch's rows, and runs the optimizer's
update graph on the result (passes/optimizers.py build_update_step: the same update the
single-process train step runs). Every replica adds the same numbers in the same order, so all
hold the same params, whatever order the shards finish in, and a run is deterministic. Only
worker 0's objective and metrics, and the names of any params the step made non-finite, come
back to the driver. The exchange is plain actor calls (the sums through the object store) or a
Ray Compiled Graph (shared-memory channels set up once, whose waiting ends poll): a run tries
each for a few steps and keeps the faster, as which wins depends on whether the workers have
the machine's cores to themselves (Replicas.start_exchange).

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

Why replicas (and not the update on the driver). Sending the params to the workers every step
cost a round of object-store puts and task calls that dominated small steps (4.7 ms a step on
one machine). With a replica on every worker, only the batch's row indices go out and the
sums go from worker to worker. The driver reads the params and state from worker 0 when it
needs them (checkpoints, validation, the end of training, Ctrl-C), and keeps that copy; the
learning-rate schedule stays on the driver, which sends each step's rate with its rows.

Faults. A worker that dies (killed, out of memory, its node lost) is replaced by a new actor,
which loads the data set from the object store and the params and state from the most recent
live replica (or from the driver's copy, when no step has run since it was taken); if a live
replica had finished the interrupted step, that is the step's result, else the step runs
again on every worker with the same dropout seeds, so the result is the one an unfaulted run
gets. When every worker dies (a single worker, say) after steps the driver has no copy of,
training stops with an error: the checkpoint is what covers it. After MAX_RESTARTS
replacements in one step, the next death stops training with an error. Ctrl-C on the driver
finishes the step and writes the checkpoint, as single-process training does, and the
checkpoint format is the same, so either kind of run resumes the other.

Dropout. Shard k of step s draws its masks from Generator([seed, 1, s, k]) (the trainer's
dropout seed, [seed, 1], then the step and the shard): the same masks whichever worker runs
the shard and however often, and a resumed run goes on from the checkpoint's step count.
(onnxruntime draws masks from its own generator, as it does single-process; only the numpy
backend's masks are reproducible.)
"""
from __future__ import annotations

import contextlib
import ctypes
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
from .backends.threads import chosen_threads, set_threads
from .ir import ChainruleError
from .ir.limits import available_memory
from .passes import select_outputs
from .passes.optimizers import (LR, build_update_step, step_optimizer, trained_params,
                                update_inputs)
from .runners import check_dataset, held_updates, take_rows

INSTALL_HINT = ("data-parallel training (--workers) needs Ray: pip install "
                "'chainrule[distributed]' (or pip install -e '.[distributed]' in a checkout)")
MAX_RESTARTS = 3        # replacements of one worker within one step before training stops
PROBE_SECONDS = 5.0     # how long to wait for a cluster's port to connect, and then to answer
MAX_WORKERS = 1024      # more shards than this leaves each a few rows of any sensible batch
# A worker's resident memory before its share of the model: 118 MB measured (RSS of a
# worker after a step of examples/mlp.nn on numpy, Ray 2.60), rounded up.
WORKER_BYTES = 128 * 2 ** 20
# The first bytes an HTTP/2 client sends: its preface, then an empty SETTINGS frame. Ray's
# head (GCS) and its client server speak gRPC, whose servers answer with a SETTINGS frame.
HTTP2_GREETING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4      # the frame type in byte 3 of an HTTP/2 frame header
HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# glibc's mallopt parameters: the free memory at the heap's top kept rather than returned to
# the system, and the size from which an allocation gets pages of its own.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_FREE_BYTES, OWN_PAGES_BYTES = 1 << 30, 32 << 20  # 32 MiB: the most glibc accepts
# The share of a step's expected compute that the driver sleeps before it polls for the result:
# enough to free its core for most of the step, and short of the step by more than steps vary.
SLEEP_SHARE = 0.8


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


class ReplicaWorker:
    """A Ray actor: the gradient graph compiled for one backend, the training data, and a
    replica of the params and state (model and optimizer), which every step updates as it
    updates every other replica. It runs shard `shard` of each batch's `count` shards."""

    def __init__(self, graph, update_graph, carried: dict, checked: list[str], backend: str,
                 threads: int | str, niceness: int, dropout_seed: list[int], shard: int,
                 count: int):
        set_threads(threads)
        keep_freed_memory()
        send_no_torch_tensors()
        # Ray starts its workers at niceness 15, so on a machine that other processes keep busy
        # they got a fraction of a core each against the driver's own process; they compute at
        # the driver's priority where the system lets a process raise its own.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
        self.graph = graph
        self.backend = get_backend(backend)
        # The update is a few elementwise ops per param: numpy runs it with no session, writing
        # the new params into their own arrays (it has no dropout to draw).
        self.update = get_backend("numpy", donate_params=True).step_runner(update_graph,
                                                                           carried)
        self.dropout_seed, self.shard, self.count = dropout_seed, shard, count
        self.input_names = [v.name for v in graph.inputs]
        self.param_names = [v.name for v in graph.param_values()]
        self.checked = checked  # the params whose non-finite values stop training
        self.data = None
        self.version, self.last_applied = None, None

    def ready(self) -> bool:
        return True

    def load(self, data: dict) -> None:
        self.data = data  # arrays in the object store, shared with the node's other workers

    def load_values(self, values: dict, version: int) -> None:
        """Every held value (params and state) by name; `version` counts the driver's loads
        and steps, so that after a fault it can tell which replicas are current."""
        self.update.load(values)
        self.version = version

    def values(self) -> dict:
        return self.update.values()

    def held_version(self) -> int:
        return self.version

    def last_result(self) -> tuple:
        """What the last `apply` returned."""
        return self.last_applied

    def shard_sums(self, batch: tuple):
        """Every output of the gradient graph on this worker's shard of the batch, times the
        shard's rows (a sum over them for a mean objective), and the seconds it took; None
        for a shard with no rows. `batch` is (the batch's rows, the step, the lr, the version
        the step makes)."""
        rows, step = batch[0], batch[1]
        part = split_rows(rows, self.count)[self.shard]
        if not len(part):
            return None
        started = time.perf_counter()
        inputs = {name: self.data[name][part] for name in self.input_names}
        rng = np.random.default_rng([*self.dropout_seed, step, self.shard])
        held = self.update.values()
        outputs = self.backend.run(self.graph, inputs,
                                   {name: held[name] for name in self.param_names},
                                   training=True, rng=rng)
        count = len(part)
        sums = {name: value * count for name, value in outputs.items()}
        return sums, time.perf_counter() - started

    def apply(self, batch: tuple, *shards) -> tuple:
        """The optimizer update from the shards' sums (added in shard order, over the batch's
        rows): the step's objective and metrics, the params it made non-finite, the slowest
        shard's seconds plus this update's, and the bytes of the sums read."""
        rows, _, lr, version = batch
        started = time.perf_counter()
        results = [result for result in shards if result is not None]
        feeds = averaged_sums([sums for sums, _ in results], len(rows))
        feeds[LR] = lr
        outputs = self.update.step(feeds)
        self.version = version
        held = self.update.values()
        nonfinite = [name for name in self.checked if not np.isfinite(held[name]).all()]
        compute = max(seconds for _, seconds in results) + time.perf_counter() - started
        self.last_applied = (outputs, nonfinite, compute,
                             sum(nbytes(sums) for sums, _ in results))
        return self.last_applied


def driver_niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):  # no niceness (Windows)
        return 0


def send_no_torch_tensors() -> None:
    """Tell Ray's channels that this worker sends no torch tensors. Where torch is installed,
    a compiled graph's first step imports it in every worker, to place tensors on devices:
    2.3 s before the first step here, and torch's memory in each worker, for numpy arrays."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray.experimental.channel.common import ChannelContext

        ChannelContext.get_current()._torch_available = False


def keep_freed_memory() -> None:
    """Have malloc keep freed arrays' memory for the next step's arrays. In a Ray worker process
    glibc hands it back to the system instead, so each gradient call faulted its arrays' pages
    in afresh: 1,775 page faults (7 MB) a call on the lecture MLP's batch of 1024, which made it
    about 40% slower than the same call in the driver's process, which makes none. Nothing to
    do without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES)
        libc.mallopt(M_MMAP_THRESHOLD, OWN_PAGES_BYTES)


def averaged_sums(shard_sums: list[dict], rows: int) -> dict:
    """The shards' sums added in shard order, whichever finished first, over the batch's rows:
    every replica adds the same numbers in the same order and so holds the same params."""
    averaged = {}
    for name in shard_sums[0]:
        total = shard_sums[0][name]
        for sums in shard_sums[1:]:
            total = total + sums[name]
        dtype = np.asarray(total).dtype  # an integer state stays one
        averaged[name] = np.asarray(total / rows).astype(dtype, copy=False)
    return averaged


class CompiledExchange:
    """A step through a Ray Compiled Graph: shared-memory channels set up once, from the driver
    to the workers (the batch), from each worker to every other (its shard's sums) and back
    (the objective). A step then costs no task submission and no object-store round trip."""

    kind = "compiled graph"

    def __init__(self, ray, workers: list, buffer_bytes: int):
        from ray.dag import InputNode, MultiOutputNode

        with InputNode() as batch:
            sums = [worker.shard_sums.bind(batch) for worker in workers]
            graph = MultiOutputNode([worker.apply.bind(batch, *sums) for worker in workers])
        self.graph = graph.experimental_compile(_buffer_size_bytes=buffer_bytes)

    def run(self, batch: tuple, expected_seconds: float) -> list:
        """The workers' results of the step `batch`, which should take about
        `expected_seconds`. Waiting for a compiled graph's result polls, keeping a core busy,
        which on a machine with a core per worker takes one from the workers: so the driver
        sleeps through most of the step first."""
        results = self.graph.execute(batch)
        time.sleep(expected_seconds * SLEEP_SHARE)
        # No timeout (-1): a large batch's step may take longer than Ray's default 10 s.
        return [result.get(timeout=-1) for result in results]

    def close(self) -> None:
        # A dead worker's channels make Ray log errors while it tears the graph down.
        compiled_logger = logging.getLogger("ray.dag.compiled_dag_node")
        level = compiled_logger.level
        compiled_logger.setLevel(logging.CRITICAL)
        try:
            self.graph.teardown()
        finally:
            compiled_logger.setLevel(level)


class CallExchange:
    """A step as plain actor calls: each worker's sums go through the object store, and each
    apply call names all of them. The caller sleeps while it waits."""

    kind = "actor calls"

    def __init__(self, ray, workers: list, buffer_bytes: int):
        self.ray, self.workers = ray, workers

    def run(self, batch: tuple, expected_seconds: float) -> list:
        sums = [worker.shard_sums.remote(batch) for worker in self.workers]
        return self.ray.get([worker.apply.remote(batch, *sums) for worker in self.workers])

    def close(self) -> None:
        """Nothing set up beyond the workers."""


CALLS = CallExchange.kind
EXCHANGES = {CALLS: CallExchange, CompiledExchange.kind: CompiledExchange}
TRIAL_STEPS = 8  # steps timed on each kind of exchange before the faster is kept


class Replicas:
    """`workers` Ray actors, each holding the gradient graph, the data and a replica of the
    params and state; a step sends each the batch's rows, each computes its shard's sums and
    applies the update from all of them. `workers` holds the actors' handles, shard k on
    workers[k]."""

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
        self.actor = self.ray.remote(ReplicaWorker).options(scheduling_strategy="SPREAD")
        self.worker_args = (self.ray.put(worker_graph), self.ray.put(self.update_graph),
                            held_updates(self.interface), list(self.interface.params),
                            # The setting, not a count: under auto each worker gives its
                            # products the cores the others leave free, one each when N
                            # workers share N cores.
                            config.backend, chosen_threads(), driver_niceness(),
                            list(dropout_seed))
        self.sums_bytes = nbytes(model.params) + (1 << 16)  # the gradients and a few scalars
        self.data_ref, self.rows = None, 0
        self.workers = [self.start_worker(shard) for shard in range(workers)]
        self.wait_until_ready()
        self.exchange = None  # set up at the first step, once the workers hold their values
        self.expected_seconds = 0.0  # the last step's compute: the next should take as long
        # Each kind of exchange runs TRIAL_STEPS steps (after one to warm up), and the faster
        # by median step is kept: which wins depends on the machine (see start_exchange).
        self.trial_seconds = {kind: [] for kind in EXCHANGES}
        self.kept = None
        # The driver's copy of the held values, and the version it is of: loads and steps
        # each make a new version, and the copy is current while no step has run since.
        self.copy, self.copy_version, self.version = {}, 0, 0
        self.restarts = 0
        self.step_records = []  # (compute, communication, bytes of the sums) per step

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

    def start_worker(self, shard: int):
        worker = self.actor.remote(*self.worker_args, shard, self.count)
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

    def start_exchange(self) -> None:
        """The next step's exchange: each kind in turn for its trial, then the faster. A
        compiled graph has the lower fixed cost, but its waiting workers (and driver) poll,
        keeping a core busy: where the workers have the machine's cores to themselves, it
        wins; where other work needs those cores, the workers computing lose them to the
        polling ones, and actor calls, which sleep while they wait, win."""
        kind = self.kept or next((kind for kind, seconds in self.trial_seconds.items()
                                  if len(seconds) < TRIAL_STEPS + 1), None)
        if kind is None:
            medians = {kind: float(np.median(seconds[1:]))
                       for kind, seconds in self.trial_seconds.items()}
            kind = self.kept = min(medians, key=medians.get)
        try:
            self.exchange = EXCHANGES[kind](self.ray, self.workers, self.sums_bytes)
        except Exception:  # noqa: BLE001 - Ray Client, or a Ray without compiled graphs
            self.trial_seconds.pop(kind)
            self.kept = CALLS
            self.exchange = CallExchange(self.ray, self.workers, self.sums_bytes)

    def time_exchange(self, seconds: float) -> None:
        """Count a step's seconds towards its exchange's trial; a trial done, the next step
        starts the next exchange."""
        if self.kept is not None or self.exchange is None:  # kept, or stopped by a fault
            return
        trial = self.trial_seconds[self.exchange.kind]
        trial.append(seconds)
        if len(trial) > TRIAL_STEPS:
            self.stop_exchange()

    def stop_exchange(self) -> None:
        if self.exchange is not None:
            with contextlib.suppress(Exception):  # noqa: BLE001 - a graph broken by a fault
                self.exchange.close()
            self.exchange = None

    def close(self) -> None:
        """Stop the workers, and Ray if this process started it."""
        self.stop_exchange()
        for worker in self.workers:
            with contextlib.suppress(self.ray.exceptions.RayError):  # gone already
                self.ray.kill(worker)
        self.workers, self.data_ref, self.worker_args = [], None, ()
        if self.started_ray:
            self.ray.shutdown()
            self.started_ray = False

    # ---- data and values --------------------------------------------------------------------

    def load(self, data: dict) -> None:
        """Put the model's inputs of `data` into the object store, once, for every worker."""
        arrays = {name: np.asarray(data[name]) for name in self.input_names}
        self.rows = len(next(iter(arrays.values())))
        self.data_ref = self.ray.put(arrays)
        # Waited for: the compiled graph's steps do not queue behind an actor's calls.
        self.ray.get([worker.load.remote(self.data_ref) for worker in self.workers])

    def load_values(self, values: dict) -> None:
        """Every replica holds `values` (params and state), a new version of them. Values the
        workers refuse (each checks them as a single-process step does) leave the replicas
        and the driver's copy as they were, and the refusal is the workers' ChainruleError."""
        copy = {name: np.array(array) for name, array in values.items()}
        try:
            self.send_values(self.workers, copy, self.version + 1)
        except self.ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, ChainruleError):
                raise error.cause from None
            raise
        self.version += 1
        self.copy, self.copy_version = copy, self.version

    def send_values(self, workers: list, values: dict, version: int) -> None:
        values_ref = self.ray.put(values)
        self.ray.get([worker.load_values.remote(values_ref, version) for worker in workers])

    def values(self) -> dict:
        """The current params and state: the driver's copy, fetched from a worker when a step
        has run since."""
        if self.copy_version != self.version:
            values = self.live_values()
            self.copy = {name: np.array(array) for name, array in values.items()}
            self.copy_version = self.version
        return self.copy

    def live_values(self) -> dict:
        """The held values of the first worker alive (all replicas hold the same)."""
        for worker in self.workers:
            with contextlib.suppress(self.ray.exceptions.RayActorError):
                return self.ray.get(worker.values.remote())
        raise ChainruleError("every worker died, and with them the params trained since the "
                             "driver last read them; training stopped: resume from the "
                             "checkpoint")

    # ---- a step -----------------------------------------------------------------------------

    def step(self, rows: np.ndarray | None, step: int, lr: np.ndarray) -> tuple[dict, list]:
        """One step on the batch `rows` of the loaded data (None: all of it) on every replica:
        its objective and metrics, and the params it made non-finite."""
        rows = np.arange(self.rows) if rows is None else rows
        batch = (rows, step, lr, self.version + 1)
        started = time.perf_counter()
        outputs, nonfinite, compute, sums_bytes = self.run_step(batch, step)
        self.version, self.expected_seconds = batch[3], compute
        wall = time.perf_counter() - started
        self.step_records.append((compute, wall - compute, sums_bytes))
        self.time_exchange(wall)
        return outputs, nonfinite

    def run_step(self, batch: tuple, step: int) -> tuple:
        """Worker 0's result of the step; dead workers are replaced, and the step runs again
        unless a live replica had finished it."""
        for attempt in range(MAX_RESTARTS + 1):
            if self.exchange is None:
                self.start_exchange()
            try:
                return self.exchange.run(batch, self.expected_seconds)[0]
            except (self.ray.exceptions.RayActorError,
                    self.ray.exceptions.RayChannelError) as error:
                if attempt == MAX_RESTARTS:
                    raise ChainruleError(f"a worker died {attempt + 1} times in step "
                                         f"{step + 1}, the last time: {first_line(error)}; "
                                         f"training stopped") from None
                finished = self.recover(error, step, batch[3])
                if finished is not None:
                    return self.ray.get(finished.last_result.remote())
            except self.ray.exceptions.RayTaskError as error:
                cause = error.cause
                if isinstance(cause, ChainruleError):  # a located error of the model or data
                    raise cause from None
                raise ChainruleError(f"a worker failed in step {step + 1}: "
                                     f"{first_line(error)}") from None

    def recover(self, error, step: int, version: int):
        """Replace the dead workers, and bring every replica to the most recent values a live
        one holds (else the driver's copy, if no step has run since it). That live worker when
        it had finished the step (`version`), else None: the step runs again."""
        self.stop_exchange()
        versions = {}
        for shard, worker in enumerate(self.workers):
            with contextlib.suppress(self.ray.exceptions.RayActorError):
                versions[shard] = self.ray.get(worker.held_version.remote())
        dead = [shard for shard in range(self.count) if shard not in versions]
        if not dead:
            raise ChainruleError(f"the workers lost touch in step {step + 1}: "
                                 f"{first_line(error)}; training stopped") from None
        for shard in dead:
            self.restart(shard, error, step)
        if versions:
            newest = max(versions, key=versions.get)
            source, current = self.workers[newest], versions[newest]
            values = self.ray.get(source.values.remote())
        elif self.copy_version == self.version:
            source, values, current = None, self.copy, self.version
        else:
            raise ChainruleError(f"every worker died in step {step + 1} ({first_line(error)}), "
                                 f"and with them the params trained since the last checkpoint; "
                                 f"training stopped: resume from the checkpoint") from None
        behind = [self.workers[shard] for shard in range(self.count)
                  if versions.get(shard) != current]
        self.send_values(behind, values, current)
        return source if current == version else None

    def restart(self, shard: int, error, step: int) -> None:
        """Replace the dead worker of `shard` by a new actor."""
        self.restarts += 1
        self.notify(f"worker {shard} died in step {step + 1} ({first_line(error)}); "
                    f"a new worker takes its shard")
        with contextlib.suppress(self.ray.exceptions.RayError):  # gone already
            self.ray.kill(self.workers[shard])
        self.workers[shard] = self.start_worker(shard)
        self.ray.get(self.workers[shard].ready.remote())

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

    def epoch_summary(self) -> dict:
        """The epoch's steps in this process, per step: the slowest worker's compute (its
        shard's gradients and the update), the rest of the time until the step's results were
        in (sending the rows, exchanging the sums, waiting on restarts), and the bytes of the
        sums, their means under `distributed` and the first two step by step under
        `per_step`; then the counts start again."""
        records, self.step_records = self.step_records, []
        restarts, self.restarts = self.restarts, 0
        means = [sum(column) / len(records) for column in zip(*records)] if records else [0] * 3
        compute, communication, sums_bytes = means
        return {"distributed": {"workers": self.count, "steps": len(records),
                                "compute_seconds_per_step": compute,
                                "communication_seconds_per_step": communication,
                                "gradients_bytes_per_step": int(sums_bytes),
                                "restarts": restarts},
                "per_step": {"compute_seconds": [record[0] for record in records],
                             "communication_seconds": [record[1] for record in records]}}


ROWS, STEP = "batch rows", "batch step"  # a sharded step's feeds beside the learning rate


class ShardedRunner:
    """The Trainer's runner with `workers` Ray workers (Replicas): the params and state live
    on the workers, each step updates every replica alike, and the driver fetches them when it
    reads them (checkpoints, validation, the end of training)."""

    rerun_note = " (without --workers)"

    def __init__(self, model, config, workers: int, address: str | None, notify,
                 dropout_seed: list[int]):
        self.replicas = Replicas(model, config, workers, address, notify, dropout_seed)
        self.graph, self.interface = self.replicas.update_graph, self.replicas.interface
        self.model_graph, self.batch_size = model.graph, config.batch_size
        self.nonfinite = []

    def load(self, values: dict) -> None:
        self.replicas.load_values(values)

    def values(self) -> dict[str, np.ndarray]:
        return dict(self.replicas.values())

    def feeds(self, data: dict, rows: np.ndarray | None, step: int) -> dict:
        """The batch's rows of the loaded data set, and the step; with rows None, `data` is a
        batch of its own, loaded as a data set first."""
        if rows is None:
            check_dataset(self.model_graph, data, "the batch")
            self.replicas.load(data)
        return {ROWS: rows, STEP: step}

    def step(self, feeds: dict) -> dict[str, np.ndarray]:
        outputs, self.nonfinite = self.replicas.step(feeds[ROWS], feeds[STEP], feeds[LR])
        return outputs

    def nonfinite_params(self) -> list[str]:
        return self.nonfinite

    def prepare(self, data: dict, evaluate) -> None:
        """The training data into the object store, once; an objective that is not a mean over
        rows is refused."""
        self.replicas.load(data)
        self.replicas.check_mean_over_rows(data, evaluate, self.batch_size)

    def epoch_record(self) -> dict:
        return self.replicas.epoch_summary()

    def close(self) -> None:
        self.replicas.close()


def split_step(model, config):
    """The train step in two: the gradient graph the workers run (every output the update
    reads, and only those) and the update graph with its interface, which every worker runs
    on its replica from the summed gradients."""
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
    WORKER_BYTES, and besides its replica of the params, the optimizer's state (at most two
    slots a param, Adam's), the gradients and their sums: five times the params' bytes."""
    each = WORKER_BYTES + 5 * nbytes(params)
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
