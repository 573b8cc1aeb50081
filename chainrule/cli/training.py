"""The train command: options to a training config, data sets, the epoch log and the fit."""
from __future__ import annotations

import contextlib
import json
import sys
import time

from .. import api
from ..data import check_mapping
from ..distributed import usable_ray
from ..fileio import save_npz
from ..ir import ChainruleError
from ..train import (CheckpointLock, NonFiniteError, TrainConfig, Trainer, format_epoch,
                     print_progress, split_validation)
from .inputs import (UsageError, frozen_patterns, load_model, mapping, optimizer_spec,
                     training_data)


def train_config(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       optimizer=optimizer_spec(args), schedule=args.lr_schedule,
                       seed=args.seed, step_every=args.step_every, step_gamma=args.step_gamma,
                       backend=args.backend, opt_level=args.opt_level,
                       check_numerics=args.check_numerics,
                       allow_nonfinite=args.allow_nonfinite, clip_grad_norm=args.clip_grad_norm,
                       warmup_steps=args.warmup_steps, early_stop=args.early_stop,
                       freeze=frozen_patterns(args))


def training_sets(args, model: api.Model) -> tuple[dict, dict | None]:
    check_mapping(model.graph.inputs, mapping(args))
    train_data = training_data(args, model, args.data, args.input, "training data")
    if train_data is None:
        raise UsageError("no training data: give --data FILE or --input NAME=FILE")
    val_data = training_data(args, model, args.val, None, "validation data")
    if args.val_split is not None:
        if val_data is not None:
            raise UsageError("give --val or --val-split, not both")
        if not 0 < args.val_split < 1:
            raise UsageError("--val-split must lie between 0 and 1")
        train_data, val_data = split_validation(train_data, args.val_split, args.seed)
    if args.early_stop and val_data is None:
        raise UsageError(f"--early-stop {args.early_stop} watches the validation loss: give "
                         f"--val FILE or --val-split F")
    return train_data, val_data


def check_workers(args) -> None:
    """--workers and --address make sense together and Ray is there: checked before any work."""
    if args.workers is None:
        if args.address:
            raise UsageError("--address names the Ray cluster that --workers N runs on: give "
                             "--workers too")
        return
    try:
        usable_ray(args.workers, args.check_numerics)
    except ChainruleError as error:
        raise UsageError(error.message) from None


def note(text: str) -> None:
    print(f"chainrule: note: {text}", file=sys.stderr)


def cmd_train(args) -> int:
    check_workers(args)
    model = load_model(args, own_options=("freeze",))
    config = train_config(args)
    train_data, val_data = training_sets(args, model)
    checkpoint = args.checkpoint or args.resume
    # Held from before the resume reads the checkpoint until the last one is written.
    with CheckpointLock(checkpoint) if checkpoint else contextlib.nullcontext():
        log = EpochLog(args)
        with Trainer(model, config, log, workers=args.workers, address=args.address,
                     notify=note) as trainer:
            return resume_and_fit(args, trainer, train_data, val_data, checkpoint)


def resume_and_fit(args, trainer: Trainer, train_data, val_data, checkpoint) -> int:
    config, log = trainer.config, trainer.log
    if args.resume:
        for text in trainer.load_checkpoint(args.resume, override=args.override):
            note(text)
        if trainer.epoch >= config.epochs:
            print(f"{args.resume}: the checkpoint has already trained {trainer.epoch} of "
                  f"{config.epochs} epochs; nothing to do (to train further, raise "
                  f"--epochs and add --override)")
            return 0
    if not args.output and not checkpoint:
        print("chainrule: warning: no -o FILE and no --checkpoint DIR: the trained params "
              "will not be saved", file=sys.stderr)
    with log:
        return fit(args, trainer, train_data, val_data, checkpoint)


def print_early_stop(trainer: Trainer) -> None:
    """Say why training stopped before --epochs, and which epoch's params are kept."""
    best, objective = trainer.early_stopping, trainer.interface.objective
    if best.exhausted:
        print(f"early stop after epoch {trainer.epoch}: val {objective} has not improved for "
              f"{best.patience} epochs")
    if trainer.restored_best:
        print(f"restored the params of epoch {best.epoch}, the best on validation (val "
              f"{objective} {best.loss:.4f})")


class EpochLog:
    """Prints each epoch's line and appends it to --log-jsonl (open while training)."""

    def __init__(self, args):
        self.args = args
        self.file = None
        self.objective = None

    def __enter__(self):
        if self.args.log_jsonl:
            self.file = open(self.args.log_jsonl, "a")
        return self

    def __exit__(self, *exc_info):
        if self.file:
            self.file.close()

    def __call__(self, record):
        if not self.args.quiet:
            print(format_epoch(record, self.objective), flush=True)
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


def fit(args, trainer: Trainer, train_data, val_data, checkpoint) -> int:
    """Train, then write -o; Ctrl-C and a non-finite step say what was kept."""
    config = trainer.config
    trainer.log.objective = trainer.interface.objective
    if not args.quiet:
        if args.resume:
            print(f"resumed from {args.resume}: epoch {trainer.epoch}, batch {trainer.batch}")
        workers = f" with {args.workers} workers" if args.workers else ""
        print(f"training {trainer.model.graph.name} on {config.backend}{workers}: "
              f"{config.epochs} epochs, batch {config.batch_size}, {config.optimizer.kind} "
              f"lr {config.lr} ({config.schedule})")
    started = time.perf_counter()
    try:
        trainer.fit(train_data, val_data, checkpoint,
                    progress=None if args.quiet else print_progress)
    except KeyboardInterrupt:
        where = f"epoch {trainer.epoch + 1}, batch {trainer.batch}"
        if checkpoint:
            print(f"interrupted at {where}; checkpoint written to {checkpoint}. Resume with:\n"
                  f"  chainrule train {args.file} --resume {checkpoint} [the same options]",
                  file=sys.stderr)
        else:
            print(f"interrupted at {where}; no --checkpoint DIR was given, so nothing was "
                  f"saved", file=sys.stderr)
        return 130
    except NonFiniteError as error:
        kept = (f"the checkpoint in {checkpoint} (epoch {trainer.epoch}) is kept"
                if checkpoint and trainer.epoch else "no checkpoint was written")
        unwritten = f"; nothing was written to {args.output}" if args.output else ""
        raise NonFiniteError(f"{error.message} ({kept}{unwritten})") from None
    if not args.quiet:
        print_early_stop(trainer)
        print(f"trained in {time.perf_counter() - started:.2f}s")
    if args.output:
        save_npz(args.output, trainer.params)
        if not args.quiet:
            print(f"wrote {args.output}")
    return 0
