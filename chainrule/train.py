"""Training: minibatches through the train-step graph, with checkpoints that resume exactly.

The update itself is IR (passes/optimizers.py); this module feeds it batches, keeps the params
and optimizer state between steps, schedules the learning rate, evaluates, and writes
checkpoints atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import math
import signal
import stat
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import CHECKING_BACKEND, get_backend
from .bounds import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, STEPS
from .data import conform_arguments
from .distributed import ShardedRunner
from .fileio import load_npz, save_npz
from .ir import ChainruleError, print_graph
from .ir.types import numpy_dtype
from .passes import select_outputs
from .passes.manager import check_opt_level
from .passes.mixed_precision import (DEFAULT_GROWTH_INTERVAL, LOSS_SCALE, PRECISIONS,
                                     check_precision)
from .passes.optimizers import LR, OptimizerSpec, initial_state, metric_outputs, step_optimizer
from .runners import (LocalRunner, TrainRunner, batch_axis_inputs, check_dataset,
                      check_some_rows, held_updates, take_rows)

CHECKPOINT_FILE = "checkpoint.npz"
LOCK_FILE = ".lock"
CHECKPOINT_FORMAT = 2  # 2 records the settings a resume must keep; 1 did not
SCHEDULES = ("constant", "cosine", "step")
# What a resume must keep (TrainConfig fields): changing them mid-run changes the result.
RESUME_SETTINGS = ("epochs", "batch_size", "lr", "schedule", "step_every", "step_gamma",
                   "warmup_steps", "clip_grad_norm", "early_stop", "freeze", "precision",
                   "loss_scale_interval")
DROPOUT_STREAM = 1  # dropout draws from Generator([seed, DROPOUT_STREAM]), apart from shuffling


class NonFiniteError(ChainruleError):
    """A training step produced a NaN or an Inf: the run stops before the params are saved."""


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C stopped `fit` between two steps: the params, the model's and a checkpoint's, are
    those of the last step completed (a second Ctrl-C, mid-step, raises a plain
    KeyboardInterrupt)."""


# The bounds the command line's options have (cli/parser.py takes the same ones); the
# optimizer's own settings are checked by OptimizerSpec.
SETTING_BOUNDS = {"epochs": COUNT, "batch_size": COUNT, "lr": POSITIVE, "step_every": STEPS,
                  "step_gamma": NON_NEGATIVE, "seed": SEED, "clip_grad_norm": NON_NEGATIVE,
                  "warmup_steps": STEPS, "early_stop": STEPS, "loss_scale_interval": COUNT}


@dataclass
class TrainConfig:
    """Training settings; the defaults are the CLI's and train examples/mlp_digits.nn."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.001
    optimizer: OptimizerSpec | str = "adam"  # a name is made a spec with its defaults
    schedule: str = "constant"
    step_every: int = 0          # epochs between decays for the step schedule (0: epochs // 3)
    step_gamma: float = 0.1
    seed: int = 0
    backend: str = "numpy"
    check_numerics: bool = False  # run the numpy interpreter, stopping at the first NaN/Inf
    opt_level: str = "O2"
    allow_nonfinite: bool = False  # train on through steps whose results are NaN or Inf
    clip_grad_norm: float = 0.0   # bound on the L2 norm of all gradients together (0: none)
    warmup_steps: int = 0         # the lr rises linearly from 0 over the first N steps
    early_stop: int = 0           # stop after N epochs without a better validation loss (0: never)
    freeze: tuple[str, ...] = ()  # glob patterns of params that stay as they are
    precision: str = "f32"        # bf16, f16: compute in it, params and optimizer state f32
    loss_scale_interval: int = DEFAULT_GROWTH_INTERVAL  # f16: good steps before the scale doubles

    def __post_init__(self):
        self.optimizer = OptimizerSpec.of(self.optimizer)
        check_precision(self.precision)
        if self.schedule not in SCHEDULES:
            raise ChainruleError(f"unknown lr schedule '{self.schedule}'; choose from "
                                 f"{', '.join(SCHEDULES)}")
        for name, bound in SETTING_BOUNDS.items():
            bound.check(getattr(self, name), f"TrainConfig.{name}")
        check_opt_level(self.opt_level)

    @property
    def backend_name(self):
        """The backend that runs: the checking interpreter with check_numerics."""
        return CHECKING_BACKEND if self.check_numerics else self.backend


@dataclass
class History:
    """What one `fit` call trained, an epoch's record each (the records the log gets, and
    `--log-jsonl` writes): `epoch`, `steps` (in all so far), `seconds`, `train` (the objective
    and metrics averaged over the epoch's steps) and, with validation data, `val` (the same
    over the validation data after the epoch), and with f16 loss scaling `skipped_steps` (the
    epoch's steps skipped for non-finite gradients) and `loss_scale` (the scale after it).

    Each record also has `lr` (the epoch's last step's) and `per_step`, one series per key, an
    entry per step the epoch ran: `step` (its number in the whole run, from 1, continued by a
    resumed run), `lr`, `train` (the objective and each metric by name; None for a step that
    loss scaling skipped) and, on Ray workers, `compute_seconds` and `communication_seconds`
    (the `distributed` entry has their means)."""

    epochs: list[dict] = field(default_factory=list)

    def train(self, name: str) -> list[float]:
        """One metric (or the objective) on the training data, per epoch."""
        return [record["train"][name] for record in self.epochs]

    def val(self, name: str) -> list[float]:
        """One metric (or the objective) on the validation data, per epoch."""
        return [record["val"][name] for record in self.epochs if "val" in record]


def record_step(per_step: dict, step: int, lr: float, outputs: dict, skipped: bool) -> None:
    """One step's entry in each of its epoch's per-step series: its number in the whole run,
    its lr, and what it reported (None for a step that loss scaling skipped)."""
    per_step["step"].append(step)
    per_step["lr"].append(float(lr))
    for name, series in per_step["train"].items():
        series.append(None if skipped else float(outputs[name]))


# ---- data -------------------------------------------------------------------------------------

def split_validation(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    FRACTION.check(fraction, "the validation fraction")
    rows = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed + 1).permutation(rows)
    held = max(1, int(round(rows * fraction)))
    val, train = order[:held], order[held:]
    return take_rows(arrays, train), take_rows(arrays, val)


def batch_rows(order: np.ndarray, batch_size: int, start: int = 0):
    """The rows of each minibatch in `order`; the last partial batch is used, not dropped."""
    for index, begin in enumerate(range(0, len(order), batch_size)):
        if index >= start:
            yield index, order[begin:begin + batch_size]


# ---- evaluation -------------------------------------------------------------------------------

EVALUATION_BATCH = 256  # rows per batch when evaluating, unless training's batches are larger


def reported_outputs(graph) -> list[str]:
    """What training reports and evaluation averages: the objective, then the metrics (the
    other scalar outputs of its dtype)."""
    return [graph.objective.name] + [v.name for v in metric_outputs(graph, {})]


def average_outputs(backend, graph, arrays: dict, params: dict, batch_size: int,
                    what: str) -> dict[str, float]:
    """`graph`'s scalar outputs over a whole data set, run `batch_size` rows at a time and
    averaged over rows (each batch's value is its rows' mean)."""
    rows = check_dataset(graph, arrays, what)
    # Only what the outputs read: an input that only another output reads is not fed.
    arrays = {v.name: arrays[v.name] for v in graph.inputs}
    totals = {}
    for _, indices in batch_rows(np.arange(rows), batch_size):
        size = len(indices)
        for name, value in backend.run(graph, take_rows(arrays, indices), params).items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
    return {name: total / rows for name, total in totals.items()}


# ---- the trainer ------------------------------------------------------------------------------

def make_runner(model, config: TrainConfig, dropout_rng, workers: int | None,
                address: str | None, notify) -> TrainRunner:
    """The whole step in this process on the configured backend, or with `workers` its
    gradients from Ray workers (distributed.py)."""
    if workers is not None:
        if config.precision != "f32":
            raise ChainruleError(f"precision {config.precision} is not available with workers "
                                 f"yet: data-parallel steps compute in f32")
        return ShardedRunner(model, config, workers, address, notify,
                             dropout_seed=[config.seed, DROPOUT_STREAM])
    graph, interface = model.train_step_graph(step_optimizer(config), config.opt_level,
                                              config.freeze, config.precision,
                                              config.loss_scale_interval)
    # The step replaces every param array it is given: it may update them in place.
    backend = get_backend(config.backend_name, donate_params=True)
    return LocalRunner(backend.step_runner(graph, held_updates(interface), rng=dropout_rng),
                       graph, interface)


class Trainer:
    """Trains a model's params: `fit` runs epochs of minibatches, with checkpoints.

    Its steps run on one runner (runners.py), chosen when it is made (make_runner), which holds
    the params and optimizer state between steps. With `workers=N` the gradients of each step
    come from N Ray workers, each on a contiguous shard of the batch (chainrule/distributed.py),
    and this process runs the optimizer update alone; `address` joins a running Ray cluster ("auto", "ray://HOST:PORT"; None starts one
    here). Everything else (schedule, checkpoints, logs, non-finite checks) is the same, and so
    are the params (see distributed.py for the assumption that makes them so). `notify` gets
    one-line notes such as a worker's restart (default: warnings.warn). Close a distributed
    trainer when done (`close()`, or `with Trainer(...) as trainer:`) to stop its workers."""

    def __init__(self, model, config: TrainConfig, log=None, *, workers: int | None = None,
                 address: str | None = None, notify=None):
        self.model = model
        self.config = config
        self.log = log or (lambda record: None)
        # Dropout masks, drawn afresh each step; a stream of its own so shuffling is unchanged.
        self.dropout_rng = np.random.default_rng([config.seed, DROPOUT_STREAM])
        self.runner = make_runner(model, config, self.dropout_rng, workers, address, notify)
        self.step_graph, self.interface = self.runner.graph, self.runner.interface
        # What each step and evaluation reports: the objective, then the metrics.
        self.reported = [self.interface.objective] + self.interface.metrics
        self.eval_graph = model.optimize(select_outputs(model.graph, self.reported),
                                         config.opt_level)
        self.backend = get_backend(config.backend_name)
        self.dtype = numpy_dtype(model.objective.type.dtype)
        self._param_names = [v.name for v in self.step_graph.param_values()]
        self._batch_axis_inputs = batch_axis_inputs(model.graph)
        self.runner.load({**model.params, **self.initial_state()})
        # Whether the model holds the runner's params: fit hands them over when they moved.
        self.model_has_params = True
        self.epoch = 0          # epochs completed
        self.batch = 0          # batches completed within the current epoch
        self.steps = 0          # steps completed in all
        self.rng = np.random.default_rng(config.seed)
        self.epoch_rng_state = self.rng.bit_generator.state
        self.stop_requested = False
        self.early_stopping = EarlyStopping(config.early_stop)
        self.restored_best = False  # whether fit ended by going back to the best epoch's params
        # The per-step series of the epoch in progress (History's `per_step`): what a run
        # stopped mid-epoch, by Ctrl-C or a NaN, did since its last whole epoch.
        self.epoch_steps: dict | None = None
        # Saved in each checkpoint as it is, for whoever resumes it (the CLI keeps its options).
        self.options: dict | None = None

    def initial_state(self) -> dict[str, np.ndarray]:
        return initial_state(self.step_graph, self.interface)

    # ---- params and optimizer state --------------------------------------------------------

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current params by name: the runner's live arrays, which a later step may
        overwrite (copy an array to keep it); assign a whole dict to change them."""
        current = self.runner.values()
        return {name: current[name] for name in self._param_names}

    @params.setter
    def params(self, values: dict) -> None:
        self.runner.load({**self.runner.values(), **values})
        self.model_has_params = False

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's state by name, held as `params` are."""
        current = self.runner.values()
        return {name: current[name] for name in self.interface.state}

    @state.setter
    def state(self, values: dict) -> None:
        self.runner.load({**self.runner.values(), **values})
        self.model_has_params = False

    def learning_rate(self, total_steps: int) -> float:
        """The next step's lr: the schedule's, times the warmup's ramp while it lasts."""
        return self.scheduled_lr(total_steps) * warmup_factor(self.steps, self.config.warmup_steps)

    def scheduled_lr(self, total_steps: int) -> float:
        config = self.config
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * self.steps / max(total_steps, 1)))
        if config.schedule == "step":
            every = config.step_every or max(config.epochs // 3, 1)
            return config.lr * config.step_gamma ** (self.epoch // every)
        return config.lr

    def train_step(self, batch: dict, lr: float) -> dict:
        """One step on `batch`: the objective and metrics by name (`params` gives the updated
        params)."""
        # A step's own lr may be 0 (a warmup's first step is): it moves state, not params.
        NON_NEGATIVE.check(lr, "the learning rate")
        check_some_rows(self._batch_axis_inputs, batch, "the batch")
        return self.step_on(batch, None, lr)

    def step_on(self, data: dict, rows: np.ndarray | None, lr: float) -> dict:
        """One step on the batch of `data` made of `rows` (all of it when None)."""
        feeds = self.runner.feeds(data, rows, self.steps)
        feeds[LR] = np.asarray(lr, self.dtype)
        self.model_has_params = False
        return self.runner.step(feeds)

    def evaluate(self, arrays: dict) -> dict[str, float]:
        """Objective and metrics over a whole data set, averaged over rows."""
        arrays = conform_arguments(self.eval_graph.inputs, arrays)
        current = self.params
        params = {v.name: current[v.name] for v in self.eval_graph.param_values()}
        return average_outputs(self.backend, self.eval_graph, arrays, params,
                               max(self.config.batch_size, EVALUATION_BATCH), "validation data")

    def fit(self, train: dict, val: dict | None = None, checkpoint_dir=None, progress=None):
        """Train to `config.epochs`, checkpointing to `checkpoint_dir` (held exclusively)
        after each epoch; Ctrl-C stops after the current step with a checkpoint, raising
        TrainingStopped (a KeyboardInterrupt). The model
        gets the trained params when fit returns and when Ctrl-C stops it (not after a step
        that made them NaN or Inf). Returns the History of the epochs this call ran.

        With `config.early_stop`, training stops once the validation loss has not improved for
        that many epochs, and fit ends with the params of the best epoch (`restored_best` says
        whether they differ from the last epoch's), in the model and the last checkpoint."""
        if self.config.early_stop and val is None:
            raise ChainruleError(f"early stopping (patience {self.config.early_stop}) watches "
                                 f"the validation loss: give validation data")
        inputs = self.model.graph.inputs
        train = conform_arguments(inputs, train)
        val = None if val is None else conform_arguments(inputs, val)
        rows = check_dataset(self.model.graph, train, "training data")
        self.check_position(rows)
        self.runner.prepare(train, self.evaluate)
        lock = CheckpointLock(checkpoint_dir) if checkpoint_dir else contextlib.nullcontext()
        history = History()
        with lock:
            previous_handler = signal.signal(signal.SIGINT, self._request_stop)
            try:
                while self.epoch < self.config.epochs and not self.early_stopping.exhausted:
                    record = self.run_epoch(train, rows, checkpoint_dir, progress)
                    if val is not None:
                        record["val"] = self.evaluate(val)
                        self.watch_validation(record["val"])
                    self.epoch, self.batch = self.epoch + 1, 0
                    if checkpoint_dir:
                        self.save_checkpoint(checkpoint_dir)
                    history.epochs.append(record)
                    self.log(record)
                if self.restore_best() and checkpoint_dir:
                    self.save_checkpoint(checkpoint_dir)
            finally:
                signal.signal(signal.SIGINT, previous_handler)
        self.update_model()
        return history

    def check_position(self, rows: int) -> None:
        """A resumed position lies within an epoch of this data (a checkpoint records the
        batch, not the data's size)."""
        per_epoch = math.ceil(rows / self.config.batch_size)
        if self.batch > per_epoch:
            raise ChainruleError(f"the resumed position, batch {self.batch} of epoch "
                                 f"{self.epoch + 1}, is past the {per_epoch} batches of an "
                                 f"epoch of this data: the checkpoint is damaged or was "
                                 f"trained on other data")

    def watch_validation(self, scores: dict) -> None:
        if self.config.early_stop:
            self.early_stopping.observe(self.epoch + 1, scores[self.interface.objective],
                                        self.params)

    def restore_best(self) -> bool:
        """Go back to the best epoch's params if the last epoch's are not they."""
        best = self.early_stopping
        if not self.config.early_stop or best.params is None or best.epoch == self.epoch:
            return False
        self.params = {name: np.array(array) for name, array in best.params.items()}
        self.restored_best = True
        return True

    def update_model(self) -> None:
        """Give the model the params (and model state) trained so far, copied, if they moved
        since it last had them: its own calls, such as `predict`, then use them. Called where
        a checkpoint would be written (the end of `fit`, a Ctrl-C stop), never after a step
        that failed, so the model never holds a non-finite step's params."""
        if self.model_has_params:
            return
        trained = {name: np.array(array) for name, array in self.params.items()}
        self.model.params = {**self.model.params, **trained}
        self.model_has_params = True

    def run_epoch(self, train: dict, rows: int, checkpoint_dir, progress) -> dict:
        """The rest of the current epoch (all of it unless resuming mid-epoch); returns its
        record: the objective and metrics averaged over the rows seen."""
        per_epoch = math.ceil(rows / self.config.batch_size)
        total_steps = per_epoch * self.config.epochs
        if self.batch == 0:
            self.epoch_rng_state = self.rng.bit_generator.state
        else:  # resuming mid-epoch: redraw this epoch's order from its saved state
            self.rng.bit_generator.state = self.epoch_rng_state
        order = self.rng.permutation(rows)
        sums, seen, started = {}, 0, time.perf_counter()
        skipped, averaged = 0, 0
        per_step = self.epoch_steps = {"step": [], "lr": [],
                                       "train": {name: [] for name in self.reported}}
        for index, indices in batch_rows(order, self.config.batch_size, self.batch):
            lr = self.learning_rate(total_steps)
            outputs = self.step_on(train, indices, lr)
            # A step that loss scaling skipped changed nothing: its NaN is the scale's cue.
            was_skipped = bool(self.interface.skipped and outputs[self.interface.skipped])
            skipped += was_skipped
            if not self.config.allow_nonfinite and not was_skipped:
                self.check_finite(outputs, index)
            size = len(indices)
            if not was_skipped:  # its objective may be the Inf that caused the skip
                for name in self.reported:
                    sums[name] = sums.get(name, 0.0) + float(outputs[name]) * size
                averaged += size
            seen += size
            self.batch, self.steps = index + 1, self.steps + 1
            record_step(per_step, self.steps, lr, outputs, was_skipped)
            if progress:
                progress(self, index + 1, per_epoch, seen, sums, started)
            if self.stop_requested:
                if checkpoint_dir:
                    self.save_checkpoint(checkpoint_dir)
                self.update_model()
                raise TrainingStopped
        record = {"epoch": self.epoch + 1, "steps": self.steps,
                  "seconds": time.perf_counter() - started,
                  "train": {k: v / max(averaged, 1) for k, v in sums.items()}}
        if self.interface.skipped:
            record.update(skipped_steps=skipped, loss_scale=float(self.state[LOSS_SCALE]))
        runner_record = self.runner.epoch_record()
        # A runner's per-step series (a sharded step's compute and communication) join ours.
        per_step.update(runner_record.pop("per_step", {}))
        record.update(runner_record, lr=per_step["lr"][-1] if per_step["lr"] else None,
                      per_step=per_step)
        return record

    def check_finite(self, outputs: dict, index: int) -> None:
        """Stop at the first step whose objective or updated params hold a NaN or an Inf (an
        infinite gradient shows up in the params it updates)."""
        objective = self.interface.objective
        bad = [] if np.isfinite(outputs[objective]) else [f"the objective {objective}"]
        bad += [f"param {name}" for name in self.runner.nonfinite_params()]
        if bad:
            raise NonFiniteError(
                f"step {self.steps + 1} (epoch {self.epoch + 1}, batch {index + 1}) made "
                f"{', '.join(bad)} NaN or Inf; training stopped. Rerun with --check-numerics"
                f"{self.runner.rerun_note} to "
                f"find the first node that produces it (a learning rate too high is the usual "
                f"cause), or give --allow-nonfinite to train on")

    def _request_stop(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True

    def close(self) -> None:
        """Stop the workers of a distributed trainer (and Ray, if it started it)."""
        self.runner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- checkpoints --------------------------------------------------------------------------

    def fingerprint(self) -> str:
        # Without locations: the same model read from another path or directory is the same.
        text = print_graph(self.model.graph, locations=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save_checkpoint(self, directory) -> Path:
        directory = Path(directory)
        meta = {"format": CHECKPOINT_FORMAT, "model": self.fingerprint(),
                "optimizer": optimizer_record(self.config.optimizer),
                "settings": self.settings(),
                "epoch": self.epoch,
                "batch": self.batch, "steps": self.steps,
                "rng": self.rng.bit_generator.state, "epoch_rng": self.epoch_rng_state,
                "dropout_rng": self.dropout_rng.bit_generator.state}
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays.update({f"state/{k}": v for k, v in self.state.items()})
        if self.options is not None:
            meta["options"] = self.options
        if self.early_stopping.params is not None:
            meta["early_stop"] = self.early_stopping.progress()
            arrays.update({f"best/{k}": v for k, v in self.early_stopping.params.items()})
        arrays["meta"] = np.array(json.dumps(meta))
        path = directory / CHECKPOINT_FILE
        save_npz(path, arrays)
        return path

    def settings(self) -> dict:
        """The RESUME_SETTINGS as a checkpoint's JSON holds them (a tuple as a list)."""
        values = {name: getattr(self.config, name) for name in RESUME_SETTINGS}
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in values.items()}

    def load_checkpoint(self, directory, override: bool = False) -> list[str]:
        """Restore params, state, position and RNG; refuse a checkpoint of another model, or
        one trained with other settings unless `override`. Returns notes on what was
        overridden."""
        path, arrays, meta = read_checkpoint(directory)
        if meta["model"] != self.fingerprint():
            raise ChainruleError(f"{path}: the checkpoint is of a different model "
                                 f"(fingerprint {meta['model']}, this model {self.fingerprint()})")
        changes = self.changed_settings(meta)
        if changes and not override:
            raise ChainruleError(f"{path}: the checkpoint was trained with other settings: "
                                 f"{'; '.join(changes)}. Resume with the same options, or give "
                                 f"--override to go on with the new ones")
        params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
        state = {k.removeprefix("state/"): v for k, v in arrays.items() if k.startswith("state/")}
        _check_same(path, "params", params, self.params)
        notes = [f"overriding the checkpoint's settings: {'; '.join(changes)}"] if changes else []
        if self.config.early_stop and "early_stop" in meta:
            best = {k.removeprefix("best/"): v for k, v in arrays.items() if k.startswith("best/")}
            _check_same(path, "best params", best, self.params)
            self.early_stopping.resume(meta["early_stop"], best, path)
        if meta.get("settings", {}).get("precision", "f32") != self.config.precision:
            # Another precision has other state (the loss scale): what both have carries over.
            state = {**self.state, **{k: v for k, v in state.items() if k in self.state}}
        if recorded_optimizer(meta) != optimizer_record(self.config.optimizer):
            notes.append("the optimizer changed, so its state starts afresh")
        elif meta.get("settings", {}).get("freeze", []) != list(self.config.freeze):
            # The buffers of params trained both times carry over; the others start at 0.
            kept = {name: array for name, array in state.items() if name in self.state}
            _check_same(path, "optimizer state", kept, {k: self.state[k] for k in kept})
            self.state = kept
            notes.append("other params are frozen, so the optimizer state of those that "
                         "train now and did not then starts afresh")
        else:
            _check_same(path, "optimizer state", state, self.state)
            self.state = state
        self.params = params
        self.epoch, self.batch, self.steps = meta["epoch"], meta["batch"], meta["steps"]
        self.rng.bit_generator.state = meta["rng"]  # read_meta checked them
        self.dropout_rng.bit_generator.state = meta["dropout_rng"]
        self.epoch_rng_state = meta["epoch_rng"]
        return notes

    def changed_settings(self, meta: dict) -> list[str]:
        """'NAME: OLD -> NEW' for each setting this run changes from the checkpoint's."""
        old = dict(meta.get("settings", {}), optimizer=recorded_optimizer(meta))
        new = dict(self.settings(), optimizer=optimizer_record(self.config.optimizer))
        return [f"{name.replace('_', ' ')} {_shown(old[name])} -> {_shown(new[name])}"
                for name in new if name in old and old[name] != new[name]]


def read_checkpoint(directory) -> tuple[Path, dict, dict]:
    """The checkpoint file in `directory`, its arrays and its meta (checked: read_meta)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.exists() and not path.is_symlink():  # anything else there: load_npz says what
        raise ChainruleError(f"{path}: no checkpoint there")
    arrays = load_npz(path)
    return path, arrays, read_meta(path, arrays.pop("meta", None))


def warmup_factor(steps_done: int, warmup_steps: int) -> float:
    """The warmup's share of the lr for the step after `steps_done`: k/N for the k-th of the
    first N steps, then 1."""
    if steps_done >= warmup_steps:
        return 1.0
    return (steps_done + 1) / warmup_steps


class EarlyStopping:
    """The best validation loss so far, the epoch and a copy of the params that reached it,
    and how many epochs since have not improved on it; `patience` such epochs exhaust it."""

    def __init__(self, patience: int):
        self.patience = patience
        self.loss = math.inf
        self.epoch = 0
        self.params = None
        self.waited = 0

    @property
    def exhausted(self) -> bool:
        return bool(self.patience) and self.waited >= self.patience

    def observe(self, epoch: int, loss: float, params: dict) -> None:
        if loss < self.loss:  # a NaN loss is no improvement
            self.loss, self.epoch, self.waited = loss, epoch, 0
            self.params = {name: np.array(array) for name, array in params.items()}
        else:
            self.waited += 1

    def progress(self) -> dict:
        """What a checkpoint keeps beside the best params."""
        return {"loss": self.loss, "epoch": self.epoch, "waited": self.waited}

    def resume(self, progress, params: dict, path) -> None:
        try:
            self.loss, self.epoch = float(progress["loss"]), int(progress["epoch"])
            self.waited = int(progress["waited"])
        except (TypeError, ValueError, KeyError, OverflowError) as error:
            raise ChainruleError(f"{path}: the checkpoint's early-stopping record is damaged "
                                 f"({error})") from None
        self.params = params


def optimizer_record(spec: OptimizerSpec) -> dict:
    """The optimizer's fields as a checkpoint's JSON holds them (its param groups a list)."""
    return json.loads(json.dumps(asdict(spec)))


def recorded_optimizer(meta: dict) -> dict:
    """The checkpoint's optimizer, fields it predates at their defaults (the values it ran)."""
    return {**optimizer_record(OptimizerSpec()), **meta["optimizer"]}


def is_word(value, bits: int) -> bool:
    """`value` is an int that fits an unsigned integer of `bits` bits."""
    return type(value) is int and 0 <= value < 2 ** bits


def is_pcg64_state(value) -> bool:
    """`value` is numpy's PCG64 state as `bit_generator.state` gives it: two 128-bit words and
    a buffered 32-bit draw (an out-of-range word makes numpy raise OverflowError)."""
    if not isinstance(value, dict) or set(value) != {"bit_generator", "state", "has_uint32",
                                                     "uinteger"}:
        return False
    words = value["state"]
    return (value["bit_generator"] == "PCG64" and isinstance(words, dict)
            and set(words) == {"state", "inc"}
            and is_word(words["state"], 128) and is_word(words["inc"], 128)
            and value["has_uint32"] in (0, 1) and type(value["has_uint32"]) is int
            and is_word(value["uinteger"], 32))


# Each field of a checkpoint's meta: its type and what else it must satisfy.
META_FIELDS = {
    "format": (int, lambda v: v in (1, CHECKPOINT_FORMAT)),
    "model": (str, None),
    "optimizer": (dict, lambda v: isinstance(v.get("kind"), str)),
    "epoch": (int, lambda v: v >= 0),
    "batch": (int, lambda v: v >= 0),
    "steps": (int, lambda v: v >= 0),
    "rng": (dict, is_pcg64_state),
    "epoch_rng": (dict, is_pcg64_state),
    "dropout_rng": (dict, is_pcg64_state),
}
# Each resume setting a checkpoint records: what its value must be (TrainConfig's types).
SETTING_CHECKS = {
    "epochs": lambda v: type(v) is int and v >= 1,
    "batch_size": lambda v: type(v) is int and v >= 1,
    "lr": lambda v: type(v) in (int, float),
    "schedule": lambda v: v in SCHEDULES,
    "step_every": lambda v: type(v) is int and v >= 0,
    "step_gamma": lambda v: type(v) in (int, float),
    "warmup_steps": lambda v: type(v) is int and v >= 0,
    "clip_grad_norm": lambda v: type(v) in (int, float),
    "early_stop": lambda v: type(v) is int and v >= 0,
    "freeze": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "precision": lambda v: v in PRECISIONS,
    "loss_scale_interval": lambda v: type(v) is int and v >= 1,
}


def read_meta(path, meta) -> dict:
    """The checkpoint's metadata, checked field by field, so a hand-edited or damaged file
    gets a message naming the field rather than a KeyError."""
    try:
        meta = json.loads(str(meta)) if meta is not None else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise ChainruleError(f"{path}: not a chainrule checkpoint (no readable meta)")
    for name, (kind, valid) in META_FIELDS.items():
        value = meta.get(name)
        if type(value) is not kind or (valid and not valid(value)):
            shown = "missing" if name not in meta else f"{value!r}"
            what = "random state" if valid is is_pcg64_state else "meta field"
            raise ChainruleError(f"{path}: the checkpoint's {what} '{name}' is {shown}; "
                                 f"the file is damaged or from another version")
    for name in ("settings", "options"):
        if name in meta and not isinstance(meta[name], dict):
            raise ChainruleError(f"{path}: the checkpoint's meta field '{name}' is not a "
                                 f"mapping; the file is damaged")
    for name, value in meta.get("settings", {}).items():
        if name in SETTING_CHECKS and not SETTING_CHECKS[name](value):
            raise ChainruleError(f"{path}: the checkpoint's setting '{name}' is {value!r}; "
                                 f"the file is damaged or from another version")
    return meta


def _shown(value) -> str:
    if isinstance(value, dict):  # an optimizer spec: its kind and the fields not at default
        defaults = optimizer_record(OptimizerSpec())
        return str(value.get("kind")) + "".join(
            f" {k}={v}" for k, v in value.items() if k != "kind" and v != defaults.get(k))
    return str(value)


class CheckpointLock:
    """Exclusive use of a checkpoint directory while training writes to it.

    An flock on DIR/.lock: a second training refuses to start, and the kernel releases the lock
    when its holder dies, however it dies. Holding it, temporary files that a killed writer
    left in DIR are removed."""

    held: set = set()  # directories this process holds: taking one again is a no-op

    def __init__(self, directory):
        self.directory = Path(directory)
        self.file = None

    def __enter__(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.directory.resolve()
        if key in CheckpointLock.held:
            return self
        self.file = _open_lock_file(self.directory / LOCK_FILE)
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise ChainruleError(f"{self.directory}: another training is writing checkpoints "
                                 f"here ({holder}); wait for it, or choose another "
                                 f"--checkpoint DIR") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"process {os.getpid()}")
        self.file.flush()
        for leftover in self.directory.glob(f".{CHECKPOINT_FILE}.*.tmp"):
            leftover.unlink(missing_ok=True)
        CheckpointLock.held.add(key)
        return self

    def __exit__(self, *exc_info):
        if self.file is not None:  # this one took the lock
            CheckpointLock.held.discard(self.directory.resolve())
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


def _open_lock_file(path: Path):
    """The lock file, opened for update without blocking: a FIFO put in its place would wait
    forever for a writer, so anything but a regular file there is refused."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ChainruleError(f"{path}: not a regular file; the checkpoint lock must be one")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "r+")


def _check_same(path, what, loaded: dict, expected: dict) -> None:
    if set(loaded) != set(expected):
        raise ChainruleError(f"{path}: the checkpoint's {what} are {sorted(loaded)}, the "
                             f"model's {sorted(expected)}")
    for name, array in loaded.items():
        if array.shape != expected[name].shape or array.dtype != expected[name].dtype:
            raise ChainruleError(f"{path}: {what} '{name}' is {array.dtype}{list(array.shape)} "
                                 f"in the checkpoint, {expected[name].dtype}"
                                 f"{list(expected[name].shape)} in the model")


def print_progress(trainer, done, total, seen, sums, started, stream=sys.stderr):
    """The epoch's progress bar, with throughput, running objective and time left."""
    elapsed = max(time.perf_counter() - started, 1e-9)
    objective = sums.get(trainer.interface.objective, math.nan) / max(seen, 1)
    eta = elapsed / done * (total - done)
    draw_progress(f"epoch {trainer.epoch + 1}/{trainer.config.epochs}", done, total,
                  f"{seen / elapsed:,.0f} samples/s  {trainer.interface.objective} "
                  f"{objective:.4f}  eta {eta:4.1f}s", stream)


def draw_progress(title: str, done: int, total: int, details: str, stream=sys.stderr,
                  width: int = 24) -> None:
    """A one-line progress bar, redrawn in place on a terminal and erased when done."""
    if not stream.isatty():
        return
    filled = int(width * done / max(total, 1))
    line = f"{title} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} {details}"
    stream.write("\r" + line)
    if done >= total:
        stream.write("\r" + " " * len(line) + "\r")
    stream.flush()


def format_metrics(values: dict[str, float]) -> str:
    """`J 0.1234  acc 96.50%`: the objective and metrics as the epoch log and evaluate show
    them."""
    return "  ".join(f"{name} {value * 100:.2f}%" if name == "acc" else f"{name} {value:.4f}"
                     for name, value in values.items())


def format_epoch(record: dict, objective: str) -> str:
    line = f"epoch {record['epoch']:>3}  train: {format_metrics(record['train'])}"
    if "val" in record:
        line += f"  |  val: {format_metrics(record['val'])}"
    if "skipped_steps" in record:
        line += f"  [{record['skipped_steps']} skipped, loss scale {record['loss_scale']:g}]"
    return line + f"  ({record['seconds']:.2f}s)"
