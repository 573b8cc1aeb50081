"""The train command: options to a training config, data sets, the epoch log and the fit."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from .. import api
from ..data import check_mapping
from ..distributed import check_address, usable_ray
from ..fileio import check_writable, save_npz
from ..ir import ChainruleError
from ..passes.manager import PRESETS
from ..train import (CheckpointLock, NonFiniteError, TrainConfig, Trainer, TrainingStopped,
                     format_epoch, print_progress, read_checkpoint, split_validation)
from .inputs import (UsageError, frozen_patterns, load_model, mapping, optimizer_spec,
                     training_data)
from .parser import build_parser
from .reporting import write_report_after_training

# The options (argparse dests) a checkpoint records and `--resume DIR` takes back: what is
# trained, on what, how, and where the result goes. Not where or how verbosely it runs
# (--threads, --workers, --address, -q), nor --params, which the checkpoint's params replace.
RESUMED_OPTIONS = (
    "file", "data", "input", "map", "label_column", "strict_inputs", "val", "val_split",
    "seed", "dim", "loops", "opt_level", "loss", "target_input", "loss_output", "freeze",
    "trainable", "epochs", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay",
    "clip_grad_norm", "param_group", "lr", "lr_schedule", "step_every", "step_gamma",
    "warmup_steps", "early_stop", "backend", "allow_nonfinite", "output", "log_jsonl",
    "precision", "loss_scale_interval", "report")
# Recorded as absolute paths, so that a resume from another directory reads the same files.
PATH_OPTIONS = ("file", "data", "val", "output", "log_jsonl", "report")


def train_config(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       optimizer=optimizer_spec(args), schedule=args.lr_schedule,
                       seed=args.seed, step_every=args.step_every, step_gamma=args.step_gamma,
                       backend=args.backend, opt_level=args.opt_level,
                       check_numerics=args.check_numerics,
                       allow_nonfinite=args.allow_nonfinite, clip_grad_norm=args.clip_grad_norm,
                       warmup_steps=args.warmup_steps, early_stop=args.early_stop,
                       freeze=frozen_patterns(args), precision=args.precision,
                       loss_scale_interval=args.loss_scale_interval)


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
        if args.address is not None:
            check_address(args.address)
        usable_ray(args.workers, args.check_numerics)
    except ChainruleError as error:
        raise UsageError(error.message) from None


def note(text: str) -> None:
    print(f"chainrule: note: {text}", file=sys.stderr)


def cmd_train(args) -> int:
    if args.resume:
        take_checkpoint_options(args)
    if args.file is None:
        raise UsageError("train needs a model FILE (or --resume DIR, whose checkpoint names "
                         "it)")
    check_workers(args)
    if args.report:  # as -o is: before any work
        check_writable(args.report)
    model = load_model(args, own_options=("freeze",))
    config = train_config(args)
    train_data, val_data = training_sets(args, model)
    checkpoint = args.checkpoint or args.resume
    # Held from before the resume reads the checkpoint until the last one is written.
    with CheckpointLock(checkpoint) if checkpoint else contextlib.nullcontext():
        log = EpochLog(args)
        with Trainer(model, config, log, workers=args.workers, address=args.address,
                     notify=note) as trainer:
            trainer.options = recorded_options(args)
            return resume_and_fit(args, trainer, train_data, val_data, checkpoint)


# ---- the options a checkpoint keeps -----------------------------------------------------------

def recorded_options(args) -> dict:
    """The RESUMED_OPTIONS of this run as a checkpoint's JSON holds them, paths absolute."""
    options = {name: getattr(args, name) for name in RESUMED_OPTIONS}
    for name in PATH_OPTIONS:
        if options[name]:
            options[name] = os.path.abspath(options[name])
    if options["input"]:
        options["input"] = [absolute_binding(binding) for binding in options["input"]]
    return options


def absolute_binding(binding: str) -> str:
    """NAME=FILE with FILE absolute (a malformed binding as it is: reading it says why)."""
    name, equals, file = binding.partition("=")
    return f"{name}={os.path.abspath(file)}" if equals and file else binding


def train_parser() -> argparse.ArgumentParser:
    """A new parser of the train command alone (the top-level parser's subcommand)."""
    subcommands = next(action for action in build_parser()._actions
                       if isinstance(action, argparse._SubParsersAction))
    return subcommands.choices["train"]


def given_options(argv: list[str]) -> set[str]:
    """The RESUMED_OPTIONS that the command line `argv` gives, whatever their values: argparse
    sets no default on an attribute the namespace has already, so those still unset after
    parsing were not given (but the optional FILE is always set: None when not given)."""
    unset = object()
    parsed = train_parser().parse_args(argv[argv.index("train") + 1:],
                                       argparse.Namespace(**dict.fromkeys(RESUMED_OPTIONS,
                                                                          unset)))
    given = {name for name in RESUMED_OPTIONS if getattr(parsed, name) is not unset}
    if parsed.file is None:
        given.discard("file")
    return given


def take_checkpoint_options(args) -> None:
    """On --resume DIR, each option the checkpoint recorded that this command line does not
    give; a note says which were taken and which given ones differ from the checkpoint's. A
    checkpoint from before options were recorded takes none."""
    path, _, meta = read_checkpoint(args.resume)
    recorded = meta.get("options", {})
    actions = {action.dest: action for action in train_parser()._actions}
    given = given_options(args.argv)
    current = recorded_options(args)  # as recorded: the same file by another path is the same
    taken, changed = [], []
    for name in RESUMED_OPTIONS:
        value = recorded.get(name)
        if name not in recorded or value == current[name]:
            continue
        if not fits_option(actions[name], value):
            raise ChainruleError(f"{path}: the checkpoint's option '{name}' is {value!r}; the "
                                 f"file is damaged or from another version")
        if name in given:
            changed.append(f"{as_typed(actions[name], getattr(args, name))} (the checkpoint's: "
                           f"{as_typed(actions[name], value)})")
        else:
            taken.append(as_typed(actions[name], value))
            setattr(args, name, value)
            if name in ("output", "log_jsonl") and value:
                check_writable(value)
    if taken:
        note(f"from the checkpoint in {args.resume}: {' '.join(taken)}")
    if changed:
        note(f"given here instead of the checkpoint's: {', '.join(changed)}")


def fits_option(action: argparse.Action, value) -> bool:
    """`value` is one the train parser could have given `action`'s dest."""
    if isinstance(action, argparse._StoreTrueAction):
        return type(value) is bool
    if isinstance(action, argparse._StoreConstAction):  # -O0 ... -O3: one dest, several flags
        return value in PRESETS
    if value is None:
        return True
    if isinstance(action, argparse._AppendAction):
        return isinstance(value, list) and all(isinstance(item, str) and parses(action, item)
                                               for item in value)
    return parses(action, value) and (action.choices is None or value in action.choices)


def parses(action: argparse.Action, value) -> bool:
    """`value` is what the option's type makes of its own text: of the right kind, and within
    the bounds the parser checks (parser.Number)."""
    if action.type is None:
        return isinstance(value, str)
    try:
        return type(value) is not bool and action.type(str(value)) == value
    except (argparse.ArgumentTypeError, ValueError):
        return False


def as_typed(action: argparse.Action, value) -> str:
    """The option with `value` as a command line gives it."""
    if not action.option_strings:
        return str(value)  # the positional FILE
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        return flag if value else f"no {flag}"
    if isinstance(action, argparse._StoreConstAction):
        return f"-{value}"
    if value is None:
        return f"no {flag}"
    if isinstance(action, argparse._AppendAction):
        return " ".join(f"{flag} {item}" for item in value)
    return f"{flag} {value}"


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
    """Prints each epoch's line and appends it to --log-jsonl (open while training); keeps
    the records for --report."""

    def __init__(self, args):
        self.args = args
        self.file = None
        self.objective = None
        self.records = []

    def __enter__(self):
        if self.args.log_jsonl:
            self.file = open(self.args.log_jsonl, "a")
        return self

    def __exit__(self, *exc_info):
        if self.file:
            with contextlib.suppress(OSError):  # a failure to write was said when it happened
                self.file.close()

    def __call__(self, record):
        self.records.append(record)
        if not self.args.quiet:
            print(format_epoch(record, self.objective), flush=True)
        if self.file:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as error:
                self.stop_logging(error)

    def stop_logging(self, error: OSError) -> None:
        """A log that cannot be written (a full disk) must not cost the training: it is
        said once, and training goes on to write -o and its checkpoints."""
        print(f"chainrule: warning: cannot write to {self.args.log_jsonl} "
              f"({error.strerror or error}); the log stops here, training goes on",
              file=sys.stderr)
        with contextlib.suppress(OSError):
            self.file.close()
        self.file = None


def position(trainer: Trainer) -> str:
    """The last step completed, numbered as the epoch log numbers epochs (from 1)."""
    if trainer.batch == 0:
        return f"epoch {trainer.epoch}"
    return f"epoch {trainer.epoch + 1}, batch {trainer.batch}"


def fit(args, trainer: Trainer, train_data, val_data, checkpoint) -> int:
    """Train, then write -o; Ctrl-C and a non-finite step say what was kept."""
    config = trainer.config
    trainer.log.objective = trainer.interface.objective
    if not args.quiet:
        if args.resume:
            print(f"resumed from {args.resume} after {position(trainer)}")
        workers = f" with {args.workers} workers" if args.workers else ""
        print(f"training {trainer.model.graph.name} on {config.backend}{workers}: "
              f"{config.epochs} epochs, batch {config.batch_size}, {config.optimizer.kind} "
              f"lr {config.lr} ({config.schedule})"
              + (f", {config.precision} compute" if config.precision != "f32" else ""))
    started = time.perf_counter()
    try:
        trainer.fit(train_data, val_data, checkpoint,
                    progress=None if args.quiet else print_progress)
    except TrainingStopped:
        where = position(trainer)
        if checkpoint:
            print(f"interrupted after {where}; checkpoint written to {checkpoint}. Resume "
                  f"with:\n  chainrule train --resume {checkpoint}", file=sys.stderr)
        elif args.output:
            save_npz(args.output, trainer.params)
            print(f"interrupted after {where}; wrote the params of that step to "
                  f"{args.output} (give --checkpoint DIR to be able to resume)",
                  file=sys.stderr)
        else:
            print(f"interrupted after {where}; no -o FILE or --checkpoint DIR was given, so "
                  f"nothing was saved", file=sys.stderr)
        write_report(args, trainer)
        return 130
    except NonFiniteError as error:
        write_report(args, trainer)  # the curves up to the last whole epoch show the way there
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
    write_report(args, trainer)
    return 0


def write_report(args, trainer: Trainer) -> None:
    if args.report and write_report_after_training(args.report, reported_records(trainer),
                                                   trainer.model) and not args.quiet:
        print(f"wrote {args.report}")


def reported_records(trainer: Trainer) -> list[dict]:
    """The epochs' records, and for a run stopped mid-epoch the steps of that epoch, marked
    `partial` (it has no averages)."""
    records = list(trainer.log.records)
    steps = trainer.epoch_steps
    if trainer.batch and steps and steps["step"]:
        records.append({"epoch": trainer.epoch + 1, "steps": trainer.steps, "partial": True,
                        "train": {}, "per_step": steps})
    return records
