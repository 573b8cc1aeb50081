"""Training: minibatches through the train-step graph, with checkpoints that resume exactly.

The update itself is IR (passes/optimizers.py); this module feeds it batches, keeps the params
and optimizer state between steps, schedules the learning rate, evaluates, and writes
checkpoints atomically.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import get_backend
from .backends.numpy_backend import NumpyBackend
from .fileio import load_npz, save_npz
from .ir import ChainruleError, print_graph
from .ir.types import NUMPY_DTYPES
from .passes import select_outputs
from .passes.optimizers import LR, OptimizerSpec

CHECKPOINT_FILE = "checkpoint.npz"
CHECKPOINT_FORMAT = 1
SCHEDULES = ("constant", "cosine", "step")


@dataclass
class TrainConfig:
    """Training settings; the defaults are the CLI's and train examples/mlp_digits.nn."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.001
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec("adam"))
    schedule: str = "constant"
    step_every: int = 0          # epochs between decays for the step schedule (0: epochs // 3)
    step_gamma: float = 0.1
    seed: int = 0
    backend: str = "numpy"
    check_numerics: bool = False  # run the numpy interpreter, stopping at the first NaN/Inf
    opt_level: str = "O1"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ChainruleError(f"unknown lr schedule '{self.schedule}'; choose from "
                                 f"{', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ChainruleError("epochs and batch size must be at least 1")


# ---- data -------------------------------------------------------------------------------------

def check_dataset(graph, arrays: dict, what: str) -> int:
    """The number of rows; every model input must be there with the same number of rows."""
    names = [v.name for v in graph.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ChainruleError(f"{what} has no array named {', '.join(missing)}; the model's "
                             f"inputs are {', '.join(names)} (it holds "
                             f"{', '.join(arrays) or 'nothing'})")
    rows = {n: (np.shape(arrays[n])[0] if np.ndim(arrays[n]) else None) for n in names}
    if len(set(rows.values())) != 1 or None in rows.values():
        listed = ", ".join(f"{n}: {r} rows" for n, r in rows.items())
        raise ChainruleError(f"{what}: the inputs must have the same number of rows ({listed})")
    return next(iter(rows.values()))


def split_validation(arrays: dict, fraction: float, seed: int) -> tuple[dict, dict]:
    rows = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed + 1).permutation(rows)
    held = max(1, int(round(rows * fraction)))
    val, train = order[:held], order[held:]
    return ({k: v[train] for k, v in arrays.items()}, {k: v[val] for k, v in arrays.items()})


def batches(arrays: dict, order: np.ndarray, batch_size: int, start: int = 0):
    """Minibatches in `order`; the last partial batch is used, not dropped."""
    for index, begin in enumerate(range(0, len(order), batch_size)):
        if index >= start:
            rows = order[begin:begin + batch_size]
            yield index, {k: v[rows] for k, v in arrays.items()}


# ---- the trainer ------------------------------------------------------------------------------

class Trainer:
    def __init__(self, model, config: TrainConfig, log=None):
        self.model = model
        self.config = config
        self.log = log or (lambda record: None)
        self.step_graph, self.interface = model.train_step_graph(config.optimizer,
                                                                 config.opt_level)
        metrics = [self.interface.objective] + self.interface.metrics
        self.eval_graph = model.optimize(select_outputs(model.graph, metrics), config.opt_level)
        if config.check_numerics:
            self.backend = self.step_backend = NumpyBackend(check_numerics=True)
        else:
            self.backend = get_backend(config.backend)
            # The step replaces every param array it is given: it may update them in place.
            self.step_backend = get_backend(config.backend, donate_params=True)
        self.params = {k: np.array(v) for k, v in model.params.items()}
        self.state = self.initial_state()
        self.epoch = 0          # epochs completed
        self.batch = 0          # batches completed within the current epoch
        self.steps = 0          # steps completed in all
        self.rng = np.random.default_rng(config.seed)
        # Dropout masks, drawn afresh each step; a stream of its own so shuffling is unchanged.
        self.dropout_rng = np.random.default_rng([config.seed, 1])
        self.epoch_rng_state = self.rng.bit_generator.state
        self.stop_requested = False

    def initial_state(self) -> dict[str, np.ndarray]:
        by_name = {v.name: v for v in self.step_graph.inputs}
        return {name: np.zeros([d for d in by_name[name].type.shape],
                               NUMPY_DTYPES[by_name[name].type.dtype])
                for name in self.interface.state}

    @property
    def dtype(self):
        return NUMPY_DTYPES[self.model.objective.type.dtype]

    def learning_rate(self, total_steps: int) -> float:
        config = self.config
        if config.schedule == "cosine":
            return config.lr * 0.5 * (1 + math.cos(math.pi * self.steps / max(total_steps, 1)))
        if config.schedule == "step":
            every = config.step_every or max(config.epochs // 3, 1)
            return config.lr * config.step_gamma ** (self.epoch // every)
        return config.lr

    def train_step(self, batch: dict, lr: float) -> dict:
        feeds = dict(batch)
        feeds.update(self.state)
        feeds[LR] = np.asarray(lr, self.dtype)
        outputs = self.step_backend.run(self.step_graph, feeds, self.params, training=True,
                                        rng=self.dropout_rng)
        for param, next_name in self.interface.params.items():
            self.params[param] = outputs[next_name]
        for state, next_name in self.interface.state.items():
            self.state[state] = outputs[next_name]
        return outputs

    def evaluate(self, arrays: dict) -> dict[str, float]:
        """Objective and metrics over a whole data set, averaged over rows."""
        rows = check_dataset(self.eval_graph, arrays, "validation data")
        totals = {}
        for _, batch in batches(arrays, np.arange(rows), max(self.config.batch_size, 256)):
            size = len(next(iter(batch.values())))
            outputs = self.backend.run(self.eval_graph, batch, self.params)
            for name, value in outputs.items():
                totals[name] = totals.get(name, 0.0) + float(value) * size
        return {name: total / rows for name, total in totals.items()}

    def fit(self, train: dict, val: dict | None = None, checkpoint_dir=None, progress=None):
        rows = check_dataset(self.model.graph, train, "training data")
        per_epoch = math.ceil(rows / self.config.batch_size)
        total_steps = per_epoch * self.config.epochs
        previous_handler = signal.signal(signal.SIGINT, self._request_stop)
        try:
            while self.epoch < self.config.epochs:
                if self.batch == 0:
                    self.epoch_rng_state = self.rng.bit_generator.state
                else:  # resuming mid-epoch: redraw this epoch's order from its saved state
                    self.rng.bit_generator.state = self.epoch_rng_state
                order = self.rng.permutation(rows)
                sums, seen, started = {}, 0, time.perf_counter()
                for index, batch in batches(train, order, self.config.batch_size, self.batch):
                    outputs = self.train_step(batch, self.learning_rate(total_steps))
                    size = len(next(iter(batch.values())))
                    for name in [self.interface.objective] + self.interface.metrics:
                        sums[name] = sums.get(name, 0.0) + float(outputs[name]) * size
                    seen += size
                    self.batch, self.steps = index + 1, self.steps + 1
                    if progress:
                        progress(self, index + 1, per_epoch, seen, sums, started)
                    if self.stop_requested:
                        if checkpoint_dir:
                            self.save_checkpoint(checkpoint_dir)
                        raise KeyboardInterrupt
                record = {"epoch": self.epoch + 1, "steps": self.steps,
                          "seconds": time.perf_counter() - started,
                          "train": {k: v / max(seen, 1) for k, v in sums.items()}}
                if val is not None:
                    record["val"] = self.evaluate(val)
                self.epoch, self.batch = self.epoch + 1, 0
                if checkpoint_dir:
                    self.save_checkpoint(checkpoint_dir)
                self.log(record)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
        return self.params

    def _request_stop(self, signum, frame):
        if self.stop_requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.stop_requested = True

    # ---- checkpoints --------------------------------------------------------------------------

    def fingerprint(self) -> str:
        # Without locations: the same model read from another path or directory is the same.
        text = print_graph(self.model.graph, locations=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save_checkpoint(self, directory) -> Path:
        directory = Path(directory)
        meta = {"format": CHECKPOINT_FORMAT, "model": self.fingerprint(),
                "optimizer": asdict(self.config.optimizer), "epoch": self.epoch,
                "batch": self.batch, "steps": self.steps,
                "rng": self.rng.bit_generator.state, "epoch_rng": self.epoch_rng_state,
                "dropout_rng": self.dropout_rng.bit_generator.state}
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays.update({f"state/{k}": v for k, v in self.state.items()})
        arrays["meta"] = np.array(json.dumps(meta))
        path = directory / CHECKPOINT_FILE
        save_npz(path, arrays)
        return path

    def load_checkpoint(self, directory) -> None:
        """Restore params, state, position and RNG; refuse a checkpoint of another model."""
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise ChainruleError(f"{path}: no checkpoint there")
        arrays = load_npz(path)
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except (KeyError, ValueError):
            raise ChainruleError(f"{path}: not a chainrule checkpoint (no readable meta)") from None
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ChainruleError(f"{path}: unknown checkpoint format {meta.get('format')}")
        if meta["model"] != self.fingerprint():
            raise ChainruleError(f"{path}: the checkpoint is of a different model "
                                 f"(fingerprint {meta['model']}, this model {self.fingerprint()})")
        if meta["optimizer"] != asdict(self.config.optimizer):
            raise ChainruleError(f"{path}: the checkpoint used optimizer {meta['optimizer']}, "
                                 f"not {asdict(self.config.optimizer)}")
        params = {k.removeprefix("param/"): v for k, v in arrays.items() if k.startswith("param/")}
        state = {k.removeprefix("state/"): v for k, v in arrays.items() if k.startswith("state/")}
        _check_same(path, "params", params, self.params)
        _check_same(path, "optimizer state", state, self.state)
        self.params, self.state = params, state
        self.epoch, self.batch, self.steps = meta["epoch"], meta["batch"], meta["steps"]
        self.rng.bit_generator.state = meta["rng"]
        self.epoch_rng_state = meta["epoch_rng"]
        self.dropout_rng.bit_generator.state = meta["dropout_rng"]


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
    """A one-line progress bar, redrawn in place on a terminal."""
    if not stream.isatty():
        return
    elapsed = max(time.perf_counter() - started, 1e-9)
    width = 24
    filled = int(width * done / total)
    objective = sums[trainer.interface.objective] / max(seen, 1)
    eta = elapsed / done * (total - done)
    stream.write(f"\repoch {trainer.epoch + 1}/{trainer.config.epochs} "
                 f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                 f"{seen / elapsed:,.0f} samples/s  {trainer.interface.objective} "
                 f"{objective:.4f}  eta {eta:4.1f}s")
    if done == total:
        stream.write("\r" + " " * 100 + "\r")
    stream.flush()


def format_epoch(record: dict, objective: str) -> str:
    def metrics(values):
        parts = []
        for name, value in values.items():
            parts.append(f"{name} {value * 100:.2f}%" if name == "acc" else f"{name} {value:.4f}")
        return "  ".join(parts)
    line = f"epoch {record['epoch']:>3}  train: {metrics(record['train'])}"
    if "val" in record:
        line += f"  |  val: {metrics(record['val'])}"
    return line + f"  ({record['seconds']:.2f}s)"
