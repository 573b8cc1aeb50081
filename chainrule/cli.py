"""The `chainrule` command line: check, ir, run, grad, predict, train, export, viz, gradcheck."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, api
from .backends import BACKENDS
from .backends.feeds import index_inputs, label_bounds
from .backends.numpy_backend import NumpyBackend
from .backends.numpy_compiled import compile_graph as compile_numpy
from .backends.numpy_compiled import describe_plan
from .backends.onnx_backend import DEFAULT_OPSET
from .data import Dataset, bind_inputs, check_mapping, check_rows, read_array, read_dataset
from .fileio import atomic_write_bytes, check_writable, load_npz, save_npz
from .passes import gradient_prefix
from .passes.manager import PASSES, PRESETS, PassContext
from .passes.optimizers import OPTIMIZERS, OptimizerSpec
from .gradcheck import EPS as GRADCHECK_EPS
from .gradcheck import TOLERANCE as GRADCHECK_TOLERANCE
from .gradcheck import format_rows, gradcheck
from .viz import render, to_dot
from .train import (SCHEDULES, CheckpointLock, NonFiniteError, TrainConfig, Trainer,
                    format_epoch, print_progress, split_validation)
from .ir import ChainruleError, Graph, print_graph
from .ir.limits import check_allocation, itemsize
from .ir.types import NUMPY_DTYPES, UNKNOWN

DEFAULTS = TrainConfig()
DEFAULT_DIM = 4  # size given to symbolic dims by --random-inputs unless --dim binds them


class UsageError(Exception):
    """A bad command-line value: exit code 2."""


# ---- inputs -----------------------------------------------------------------------------------

def parse_assignments(items, what: str, convert=str) -> dict:
    result = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} expects NAME=VALUE, got '{item}'")
        try:
            result[name] = convert(value)
        except ValueError:
            raise UsageError(f"{what} {name}: '{value}' is not valid") from None
    return result


def random_inputs(graph: Graph, dims: dict, seed: int, given: dict) -> dict:
    rng = np.random.default_rng(seed)
    bounds = label_bounds(graph)
    wanted = [v for v in graph.inputs if v.name not in given]
    shapes = {v.name: tuple(d if isinstance(d, int) else dims.get(d, DEFAULT_DIM)
                            for d in v.type.shape) for v in wanted}
    total = sum(math.prod(shapes[v.name]) * itemsize(v.type.dtype) for v in wanted)
    check_allocation("the random inputs", total)
    arrays = {}
    for value in wanted:
        shape = shapes[value.name]
        dtype = NUMPY_DTYPES[value.type.dtype]
        if value.type.dtype in ("f32", "f64"):
            arrays[value.name] = rng.standard_normal(shape, dtype)  # no f64 copy of an f32
        elif value.type.dtype == "i64":
            arrays[value.name] = rng.integers(0, bounds.get(value.name, 10), shape)
        else:
            arrays[value.name] = rng.random(shape) < 0.5
    return arrays


def read_data(path, singles, args) -> Dataset:
    """Arrays from one data file of any format and from NAME=FILE assignments (which win)."""
    data = read_dataset(path, getattr(args, "label_column", None)) if path else Dataset()
    for name, file in parse_assignments(singles, "--input").items():
        data.add(name, read_array(file), file)
    return data


def mapping(args) -> dict[str, str]:
    items = [item for group in (args.map or ()) for item in group.split(",") if item]
    return parse_assignments(items, "--map")


def bind(args, graph: Graph, data: Dataset, reader: str = "the model"):
    """The data's arrays bound to `graph`'s inputs; the notes on how are printed."""
    bound = bind_inputs(graph.inputs, data, mapping(args), strict=args.strict_inputs,
                        label_inputs={i.name for i in index_inputs(graph)}, reader=reader)
    for note in bound.notes:
        print(f"chainrule: note: {note}", file=sys.stderr)
    return bound


def parse_dims(args) -> dict[str, int]:
    dims = parse_assignments(args.dim, "--dim", int)
    for name, size in dims.items():
        if size < 1:
            raise UsageError(f"--dim {name}={size}: a dim is a positive size")
    return dims


def gather_inputs(args, model: api.Model, graph: Graph | None = None) -> dict:
    """Arrays for the inputs of `graph` (default: the model's): from files, then at random."""
    graph = graph or model.graph
    check_mapping(model.graph.inputs, mapping(args))
    bound = bind(args, graph, read_data(args.inputs, args.input, args))
    arrays = bound.arrays
    if bound.missing and args.random_inputs:
        dims = parse_dims(args)
        arrays.update(random_inputs(graph, _bind_dims(graph, arrays, dims), args.seed, arrays))
    elif bound.missing:
        listed = ", ".join(f"{v.name}: {v.type}" for v in bound.missing)
        raise ChainruleError(f"the model needs input(s) {listed}; give --inputs FILE, "
                             f"--input NAME=FILE, --map INPUT=ARRAY or --random-inputs")
    return arrays


def _bind_dims(graph: Graph, arrays: dict, dims: dict) -> dict:
    """Symbolic dims already fixed by given arrays, then by --dim."""
    bound = dict(dims)
    for value in graph.inputs:
        if value.name in arrays:
            for dim, size in zip(value.type.shape, np.shape(arrays[value.name])):
                if isinstance(dim, str) and dim != UNKNOWN:
                    bound.setdefault(dim, size)
    return bound


def load_model(args) -> api.Model:
    model = api.compile(args.file, seed=args.seed)
    if getattr(args, "params", None):
        model.set_params(load_npz(args.params))
    return model


# ---- printing ---------------------------------------------------------------------------------

def describe(array: np.ndarray) -> str:
    array = np.asarray(array)
    if array.ndim == 0:
        return f"{array.dtype}[] = {array.item():.6g}"
    shape = f"{array.dtype}[{', '.join(map(str, array.shape))}]"
    if array.size == 0 or array.dtype == np.bool_:
        return shape
    values = array.astype(np.float64)
    return (f"{shape}  mean {values.mean():.4g}  std {values.std():.4g}  "
            f"min {values.min():.4g}  max {values.max():.4g}")


def print_arrays(arrays: dict) -> None:
    width = max((len(name) for name in arrays), default=0)
    for name, array in arrays.items():
        print(f"  {name.ljust(width)}  {describe(array)}")


# ---- commands ---------------------------------------------------------------------------------

def cmd_check(args) -> int:
    model = load_model(args)
    graph = model.graph
    print(f"{args.file}: model {graph.name} ok")
    print("inputs:")
    for value in graph.inputs:
        print(f"  {value.name}: {value.type}")
    print("params:")
    total = 0
    for param in graph.params:
        count = int(np.prod(param.value.type.shape))
        total += count
        noun = "value" if count == 1 else "values"
        print(f"  {param.value.name}: {param.value.type} = {param.init}  ({count:,} {noun})")
    print(f"  total: {total:,} values")
    print("outputs:")
    for index, value in enumerate(graph.outputs):
        role = "  (objective)" if index == 0 else ""
        print(f"  {value.name}: {value.type}{role}")
    print(f"nodes: {len(graph.nodes)}")
    return 0


def pass_context(args) -> PassContext:
    unknown = sorted(set(args.print_after or ()) - set(PASSES))
    if unknown:
        raise UsageError(f"--print-after: unknown pass(es) {', '.join(unknown)}; the passes are "
                         f"{', '.join(PASSES)}")
    print_after = True if args.print_after_all else set(args.print_after or ())
    return PassContext(verify_each=args.verify_each, print_after=print_after,
                       time_passes=args.time_passes)


def cmd_ir(args) -> int:
    model = load_model(args)
    graph, _ = model.compile_graph(grad=args.grad, opt_level=args.opt_level,
                                   passes=args.passes, ctx=pass_context(args))
    if args.emit == "python" or args.print_memory_plan:
        compiled = compile_numpy(graph)
        if args.emit == "python":
            print(compiled.source, end="")
        if args.print_memory_plan:
            print(describe_plan(graph, compiled.plan))
    elif not (args.print_after_all or args.print_after):
        print(print_graph(graph), end="")
    return 0


def chosen_backend(args):
    """--backend by name, or the checking numpy interpreter with --check-numerics."""
    return NumpyBackend(check_numerics=True) if args.check_numerics else args.backend


def warn_nonfinite(arrays: dict) -> None:
    """A NaN or an Inf in a result is said, never left to be found later."""
    bad = [name for name, array in arrays.items()
           if np.asarray(array).dtype.kind == "f" and not np.isfinite(array).all()]
    if bad:
        print(f"chainrule: warning: {', '.join(bad)} hold NaN or Inf (an overflow, or a "
              f"division by zero); rerun with --check-numerics to find the first node that "
              f"produces one", file=sys.stderr)


def report(args, title: str, arrays: dict) -> int:
    """Print each array's summary; save them all with -o."""
    print(f"{title} ({'numpy, checking numerics' if args.check_numerics else args.backend}):")
    print_arrays(arrays)
    warn_nonfinite(arrays)
    if args.output:
        save_npz(args.output, arrays)
        print(f"wrote {args.output}")
    return 0


def cmd_run(args) -> int:
    model = load_model(args)
    names = split_names(args.outputs)
    graph = model.forward_graph(names, args.opt_level)
    inputs = gather_inputs(args, model, graph)
    outputs = model.run(backend=chosen_backend(args), opt_level=args.opt_level,
                        outputs=names, **inputs)
    return report(args, "outputs", outputs)


def split_names(text: str | None) -> list[str] | None:
    return [name for name in text.split(",") if name] if text else None


def cmd_grad(args) -> int:
    model = load_model(args)
    wrt = args.wrt.split(",") if args.wrt else None
    inputs = gather_inputs(args, model)
    results = model.grad(wrt=wrt, backend=chosen_backend(args), opt_level=args.opt_level,
                         **inputs)
    return report(args, "objective and gradients", results)


def cmd_export(args) -> int:
    model = load_model(args)
    outputs = args.outputs.split(",") if args.outputs else None
    wrt = args.wrt.split(",") if args.wrt else None
    if args.train_step and (args.grad or outputs or wrt):
        raise UsageError("--train-step exports the whole step; it takes no --grad, --outputs "
                         "or --wrt")
    proto = model.to_onnx(args.output, grad=args.grad, outputs=outputs, wrt=wrt,
                          opset=args.opset, opt_level=args.opt_level,
                          train_step=optimizer_spec(args) if args.train_step else None)
    graph = proto.graph
    print(f"wrote {args.output}: opset {args.opset}, {len(graph.node)} ONNX nodes")
    print("  inputs:  " + ", ".join(i.name for i in graph.input))
    print("  outputs: " + ", ".join(o.name for o in graph.output))
    print("  initializers: " + (", ".join(i.name for i in graph.initializer) or "(none)"))
    return 0


def training_data(args, model: api.Model, path, singles, what: str) -> dict | None:
    """A data set bound to the model's inputs and checked whole, before any training."""
    if not path and not singles:
        return None
    bound = bind(args, model.graph, read_data(path, singles, args))
    if bound.missing:
        listed = ", ".join(f"'{v.name}' ({v.type})" for v in bound.missing)
        raise ChainruleError(f"the {what} has no array for input(s) {listed}; --map INPUT=ARRAY "
                             f"binds an input to an array of another name")
    check_rows(model.graph.inputs, bound.arrays, bound.origin)
    return bound.arrays


def optimizer_spec(args) -> OptimizerSpec:
    return OptimizerSpec(args.optimizer, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay)


def train_config(args) -> TrainConfig:
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       optimizer=optimizer_spec(args), schedule=args.lr_schedule,
                       seed=args.seed, step_every=args.step_every, step_gamma=args.step_gamma,
                       backend=args.backend, opt_level=args.opt_level or "O1",
                       check_numerics=args.check_numerics,
                       allow_nonfinite=args.allow_nonfinite)


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
    return train_data, val_data


def cmd_train(args) -> int:
    model = load_model(args)
    config = train_config(args)
    train_data, val_data = training_sets(args, model)
    checkpoint = args.checkpoint or args.resume
    # Held from before the resume reads the checkpoint until the last one is written.
    with CheckpointLock(checkpoint) if checkpoint else contextlib.nullcontext():
        log = EpochLog(args)
        trainer = Trainer(model, config, log)
        if args.resume:
            for note in trainer.load_checkpoint(args.resume, override=args.override):
                print(f"chainrule: note: {note}", file=sys.stderr)
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
        print(f"training {trainer.model.graph.name} on {config.backend}: {config.epochs} "
              f"epochs, batch {config.batch_size}, {config.optimizer.kind} lr {config.lr} "
              f"({config.schedule})")
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
        print(f"trained in {time.perf_counter() - started:.2f}s")
    if args.output:
        save_npz(args.output, trainer.params)
        if not args.quiet:
            print(f"wrote {args.output}")
    return 0


def cmd_predict(args) -> int:
    model = load_model(args)
    check_mapping(model.graph.inputs, mapping(args))
    data = read_data(args.data, args.input, args)
    names = split_names(args.outputs)
    if names is None:  # every output with a row per example that the data can feed
        available = bind_inputs(model.graph.inputs, data, mapping(args)).arrays
        names = model.per_example_outputs(available)
        if not names:
            raise ChainruleError(f"no output of {model.graph.name} can be predicted row by row "
                                 f"from {data.files}; name one with --outputs")
    graph = model.forward_graph(names, args.opt_level)
    bound = bind(args, graph, data, reader=f"computing {', '.join(names)}")
    if bound.missing:
        listed = ", ".join(f"'{v.name}' ({v.type})" for v in bound.missing)
        raise ChainruleError(f"computing {', '.join(names)} needs input(s) {listed}, which "
                             f"{data.files} does not hold; --map INPUT=ARRAY binds an input to "
                             f"an array of another name")
    rows = check_rows(graph.inputs, bound.arrays, bound.origin)
    started = time.perf_counter()
    results = model.predict(bound.arrays, names, batch_size=args.batch_size,
                            backend=args.backend, opt_level=args.opt_level,
                            progress=lambda done, total: predict_progress(done, total, started))
    if args.argmax:
        results.update(class_indices(results))
    print(f"predicted {', '.join(names)} for {rows:,} rows in "
          f"{time.perf_counter() - started:.2f}s ({args.backend}):")
    print_arrays(results)
    warn_nonfinite(results)
    if args.output:
        write_predictions(args.output, results)
        print(f"wrote {args.output}")
    return 0


def class_indices(results: dict) -> dict:
    """`name.argmax` for each output that is a matrix of floats (logits or probabilities)."""
    chosen = {f"{name}.argmax": np.argmax(array, axis=1)
              for name, array in results.items() if array.ndim == 2 and array.dtype.kind == "f"}
    if not chosen:
        raise UsageError("--argmax needs an output that is a 2-D float array (one row of class "
                         "scores per example)")
    return chosen


def write_predictions(path: str, results: dict) -> None:
    """.npz, or .csv with a header: one column per 1-D output and per column of a 2-D one."""
    if not path.lower().endswith(".csv"):
        save_npz(path, results)
        return
    columns, header = [], []
    for name, array in results.items():
        if array.ndim not in (1, 2):
            raise UsageError(f"output {name} has {array.ndim} axes; a CSV file holds 1-D and "
                             f"2-D outputs: write a .npz")
        block = array.reshape(len(array), -1)
        if block.dtype == np.bool_:
            block = block.astype(np.int64)
        columns += list(block.T)
        header += [name] if array.ndim == 1 else [f"{name}.{i}" for i in range(block.shape[1])]
    text = io.StringIO()
    text.write(",".join(header) + "\n")
    # str() of a numpy scalar is its shortest round-tripping form in its own precision.
    for row in zip(*columns):
        text.write(",".join(map(str, row)) + "\n")
    atomic_write_bytes(path, text.getvalue().encode())


def predict_progress(done: int, total: int, started: float, stream=sys.stderr) -> None:
    if not stream.isatty():
        return
    width = 24
    filled = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - started, 1e-9)
    stream.write(f"\rpredicting [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
                 f"rows  {rate:,.0f} rows/s")
    if done >= total:
        stream.write("\r" + " " * 72 + "\r")
    stream.flush()


def cmd_viz(args) -> int:
    model = load_model(args)
    graph, _ = model.compile_graph(grad=args.grad, opt_level=args.opt_level)
    dot_text = to_dot(graph, gradient_prefix(model.objective) if args.grad else None)
    if not args.output:
        print(dot_text, end="")
        return 0
    note = render(dot_text, args.output)
    if note:
        print(f"chainrule: {note}", file=sys.stderr)
    else:
        print(f"wrote {args.output}")
    return 0


def cmd_gradcheck(args) -> int:
    model = load_model(args)
    inputs = gather_inputs(args, model)
    backends = sorted(BACKENDS) if args.backend == "all" else [args.backend]
    if args.samples < 1:
        raise UsageError("--samples must be at least 1")
    rows = gradcheck(model, inputs, backends, samples=args.samples, seed=args.seed)
    print(f"gradients of {model.objective.name} against central differences in float64 "
          f"(eps {GRADCHECK_EPS:g}, tolerance {GRADCHECK_TOLERANCE:g} relative to the largest "
          f"entry):")
    print(format_rows(rows))
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


# ---- argument parsing -------------------------------------------------------------------------

class DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, where it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or "default" in text
                or not action.option_strings or isinstance(action, argparse._StoreConstAction)):
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainrule", description="Compile, run, differentiate and export .nn models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    parser.add_argument("--version", action="version", version=f"chainrule {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=DefaultsShown)
        sub.add_argument("file", help="a .nn model file")
        sub.add_argument("--seed", type=int, default=0,
                         help="seed for param initialisation and random inputs")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show Python tracebacks")
        sub.set_defaults(func=func)
        return sub

    def with_optimization(sub):
        levels = sub.add_mutually_exclusive_group()
        for level in PRESETS:
            levels.add_argument(f"-{level}", dest="opt_level", action="store_const", const=level,
                                help=f"optimisation preset: {', '.join(PRESETS[level])}")
        sub.set_defaults(opt_level="O0")
        return sub

    def with_optimizer(sub):
        sub.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer.kind,
                         help="the update rule")
        sub.add_argument("--momentum", type=float, default=0.0, help="sgd momentum")
        sub.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
        sub.add_argument("--weight-decay", type=float, default=0.0,
                         help="decoupled for sgd and adamw, added to the gradient for adam")
        return sub

    def with_data(sub, flag="--inputs", help_text="the inputs' arrays: .npz, .npy, .csv or IDX"):
        sub.add_argument(flag, metavar="FILE", help=help_text)
        sub.add_argument("--input", action="append", metavar="NAME=FILE",
                         help="one input's array from a .npy or IDX file (repeatable)")
        sub.add_argument("--map", action="append", metavar="INPUT=ARRAY,...",
                         help="bind model inputs to arrays of other names (repeatable)")
        sub.add_argument("--strict-inputs", action="store_true",
                         help="refuse data files holding arrays the model does not read")
        sub.add_argument("--label-column", metavar="NAME",
                         help="CSV: the label column (the other columns are the features)")

    def with_inputs(sub, backends=sorted(BACKENDS), default_backend="numpy", output=True,
                    numerics=True):
        with_data(sub)
        sub.add_argument("--dim", action="append", metavar="NAME=N",
                         help=f"size of a symbolic dim for random inputs (default {DEFAULT_DIM})")
        sub.add_argument("--random-inputs", action="store_true",
                         help="draw missing inputs at random (labels within their class count)")
        sub.add_argument("--params", metavar="P.npz", help="param values replacing the initial ones")
        sub.add_argument("--backend", choices=backends, default=default_backend)
        if numerics:
            sub.add_argument("--check-numerics", action="store_true",
                             help="run the numpy interpreter and stop at the first node that "
                                  "produces NaN or Inf")
        if output:
            sub.add_argument("-o", "--output", metavar="OUT.npz", help="save the results")

    command("check", cmd_check, "parse, lower and type-check a model; print a summary") \
        .add_argument("--params", metavar="P.npz", help="param values to check against the model")
    ir = with_optimization(command("ir", cmd_ir, "print the graph IR (of a .nn or .cir file)"))
    ir.add_argument("--grad", action="store_true", help="include the backward graph")
    ir.add_argument("--passes", metavar="P1,P2", help="run exactly these passes "
                    f"({', '.join(PASSES)}) instead of a preset")
    ir.add_argument("--print-after-all", action="store_true", help="print the IR after each pass")
    ir.add_argument("--print-after", action="append", metavar="PASS",
                    help="print the IR after this pass (repeatable)")
    ir.add_argument("--time-passes", action="store_true", help="print a table of pass times")
    ir.add_argument("--verify-each", action="store_true",
                    help="run the IR verifier before and after every pass")
    ir.add_argument("--emit", choices=("ir", "python"), default="ir",
                    help="print the IR, or the Python the numpy backend generates for it")
    ir.add_argument("--print-memory-plan", action="store_true",
                    help="print which results the numpy backend computes in place and when "
                         "each intermediate is freed")
    ir.add_argument("--params", help=argparse.SUPPRESS)
    run = with_optimization(command("run", cmd_run, "run the forward pass"))
    with_inputs(run)
    run.add_argument("--outputs", metavar="NAMES", help="compute only these outputs (and only "
                     "the inputs they need)")
    predict = with_optimization(command(
        "predict", cmd_predict, "run the model over a whole data file in batches, without "
        "labels"))
    with_data(predict, "--data", "the data: .npz, .npy, .csv or IDX")
    predict.add_argument("--params", metavar="TRAINED.npz", help="trained param values")
    predict.add_argument("--outputs", metavar="NAMES", help="outputs to predict (default: "
                         "every output with a row per example that the data can feed)")
    predict.add_argument("--batch-size", type=int, default=256, help="rows per batch")
    predict.add_argument("--argmax", action="store_true",
                         help="also write NAME.argmax, the class index per row, for each 2-D "
                              "float output")
    predict.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                         help="where to run")
    predict.add_argument("-o", "--output", metavar="OUT.npz|OUT.csv",
                         help="save the predictions")
    predict.set_defaults(opt_level="O1")
    grad = command("grad", cmd_grad, "compute the objective and its gradients")
    with_inputs(with_optimization(grad))
    grad.add_argument("--wrt", metavar="NAMES", help="comma-separated params/inputs "
                      "(default: every param)")
    train = with_optimization(command("train", cmd_train, "train the model's params"))
    with_data(train, "--data", "training data: .npz, .npy, .csv or IDX")
    train.add_argument("--val", metavar="FILE", help="validation data, read as --data is")
    train.add_argument("--val-split", type=float, metavar="F",
                       help="hold out this fraction of the training data for validation")
    train.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help="passes over the data")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                       help="rows per step")
    with_optimizer(train)
    train.add_argument("--lr", type=float, default=DEFAULTS.lr, help="learning rate")
    train.add_argument("--lr-schedule", choices=SCHEDULES, default=DEFAULTS.schedule,
                       help="constant; cosine decay to 0 over all steps; or step: times "
                            "--step-gamma every --step-every epochs")
    train.add_argument("--step-every", type=int, default=DEFAULTS.step_every, metavar="N",
                       help="step schedule: epochs between decays (0: a third of --epochs)")
    train.add_argument("--step-gamma", type=float, default=DEFAULTS.step_gamma, metavar="F",
                       help="step schedule: factor applied at each decay")
    train.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                       help="where to run the train step")
    train.add_argument("--check-numerics", action="store_true",
                       help="run the numpy interpreter and stop at the first NaN or Inf")
    train.add_argument("--params", metavar="INIT.npz", help="initial param values")
    train.add_argument("-o", "--output", metavar="TRAINED.npz", help="save the trained params")
    train.add_argument("--checkpoint", metavar="DIR", help="write a checkpoint after each epoch")
    train.add_argument("--resume", metavar="DIR", help="continue from the checkpoint in DIR")
    train.add_argument("--override", action="store_true",
                       help="resume even though options differ from the checkpoint's (batch "
                            "size, learning rate, schedule, optimizer, epochs)")
    train.add_argument("--allow-nonfinite", action="store_true",
                       help="train on through steps whose objective or params are NaN or Inf "
                            "(by default training stops at the first)")
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing while training")
    train.add_argument("--log-jsonl", metavar="FILE", help="append one JSON line per epoch")
    train.set_defaults(opt_level=None)

    check = command("gradcheck", cmd_gradcheck,
                    "check gradients against finite differences in float64")
    with_inputs(check, backends=sorted(BACKENDS) + ["all"], default_backend="all", output=False,
                numerics=False)
    check.add_argument("--samples", type=int, default=20,
                       help="entries checked per param (all of a smaller param)")
    viz = with_optimization(command("viz", cmd_viz, "draw the computational graph"))
    viz.add_argument("--grad", action="store_true", help="draw the backward graph too")
    viz.add_argument("-o", "--output", metavar="GRAPH.svg",
                     help=".svg, .png (rendered with Graphviz) or .dot; default: DOT on stdout")

    export = with_optimization(command("export", cmd_export, "export to ONNX"))
    export.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    export.add_argument("--grad", action="store_true", help="add the gradients as outputs")
    export.add_argument("--train-step", action="store_true",
                        help="export forward, backward and optimizer update as one step")
    with_optimizer(export)
    export.add_argument("--wrt", metavar="NAMES", help="with --grad: what to differentiate")
    export.add_argument("--outputs", metavar="NAMES", help="keep only these outputs")
    export.add_argument("--params", metavar="P.npz", help="param values for the initializers")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    return parser


def _source_lines(file: str):
    try:
        return Path(file).read_text().split("\n")  # newlines only, as the parser counts
    except (OSError, UnicodeDecodeError):
        return None


def check_output_paths(args) -> None:
    """Every path the command will write can be written: checked before any work, so a long
    training never ends in a failure to save its result."""
    for option, is_directory in (("output", False), ("checkpoint", True),
                                 ("log_jsonl", False)):
        path = getattr(args, option, None)
        if path:
            check_writable(path, directory=is_directory)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        os.environ["CHAINRULE_VERIFY"] = "1"  # debug mode verifies the IR between passes
    try:
        check_output_paths(args)
        return args.func(args)
    except UsageError as error:
        if args.debug:
            raise
        print(f"chainrule: error: {error}", file=sys.stderr)
        return 2
    except ChainruleError as error:
        if args.debug:
            raise
        print(error.render(_source_lines), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("chainrule: interrupted", file=sys.stderr)
        return 130
