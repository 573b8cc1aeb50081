"""The commands that run a model on arrays: run, grad, gradcheck, predict and evaluate."""
from __future__ import annotations

import io
import sys
import time

import numpy as np

from ..backends import BACKENDS, CHECKING_BACKEND
from ..data import bind_inputs, check_mapping, check_rows, is_float_array
from ..fileio import atomic_write_bytes, save_npz
from ..gradcheck import EPS as GRADCHECK_EPS
from ..gradcheck import format_rows, gradcheck, low_precision, tolerance
from ..ir import ChainruleError
from ..ir.types import is_float
from ..train import draw_progress, format_metrics
from .inputs import (UsageError, bind, gather_inputs, is_onnx_model, load_model, mapping,
                     read_data)


def describe(array: np.ndarray) -> str:
    array = np.asarray(array)
    if array.ndim == 0:
        value = array.item() if array.dtype.kind in "biu" else float(array.astype(np.float64))
        return f"{array.dtype}[] = {value:.6g}"
    shape = f"{array.dtype}[{', '.join(map(str, array.shape))}]"
    if array.size == 0 or array.dtype == np.bool_:
        return shape
    values = array.astype(np.float64)  # bf16 and float8 arrays too, whose sums numpy rounds
    return (f"{shape}  mean {values.mean():.4g}  std {values.std():.4g}  "
            f"min {values.min():.4g}  max {values.max():.4g}")


def print_arrays(arrays: dict) -> None:
    width = max((len(name) for name in arrays), default=0)
    for name, array in arrays.items():
        print(f"  {name.ljust(width)}  {describe(array)}")


def chosen_backend(args):
    """--backend by name, or the checking numpy interpreter with --check-numerics."""
    return CHECKING_BACKEND if args.check_numerics else args.backend


def warn_nonfinite(arrays: dict) -> None:
    """A NaN or an Inf in a result is said, never left to be found later."""
    bad = [name for name, array in arrays.items()
           if is_float_array(array) and not np.isfinite(array).all()]
    if bad:
        verb = "holds" if len(bad) == 1 else "hold"
        print(f"chainrule: warning: {', '.join(bad)} {verb} NaN or Inf (an overflow, or a "
              f"division by zero); rerun with --check-numerics to find the first node that "
              f"produces one", file=sys.stderr)


def report(args, title: str, arrays: dict, write=save_npz) -> int:
    """Print a title and each array's summary, warn of NaN or Inf; `write` them all to -o."""
    print(f"{title}:")
    print_arrays(arrays)
    warn_nonfinite(arrays)
    if args.output:
        write(args.output, arrays)
        print(f"wrote {args.output}")
    return 0


def backend_title(args) -> str:
    return "numpy, checking numerics" if args.check_numerics else args.backend


def split_names(text: str | None) -> list[str] | None:
    return [name for name in text.split(",") if name] if text else None


def cmd_run(args) -> int:
    model = load_model(args)
    names = split_names(args.outputs)
    graph = model.forward_graph(names, args.opt_level)
    inputs = gather_inputs(args, model, graph)
    outputs = model.run(backend=chosen_backend(args), opt_level=args.opt_level,
                        outputs=names, **inputs)
    return report(args, f"outputs ({backend_title(args)})", outputs)


def cmd_grad(args) -> int:
    model = load_model(args)
    wrt = args.wrt.split(",") if args.wrt else None
    inputs = gather_inputs(args, model)
    results = model.grad(wrt=wrt, backend=chosen_backend(args), opt_level=args.opt_level,
                         **inputs)
    return report(args, f"objective and gradients ({backend_title(args)})", results)


def cmd_gradcheck(args) -> int:
    model = load_model(args)
    inputs = gather_inputs(args, model)
    backends = sorted(BACKENDS) if args.backend == "all" else [args.backend]
    check_finite_objective(model, inputs)
    rows = gradcheck(model, inputs, backends, samples=args.samples, seed=args.seed)
    low = low_precision(model)
    computed = f" computed in {low}" if low else ""
    print(f"gradients of {model.objective.name}{computed} against central differences in "
          f"float64 (eps {GRADCHECK_EPS:g}, tolerance {tolerance(model):g} relative to the "
          f"largest entry):")
    print(format_rows(rows))
    failed = [row for row in rows if not row.passed]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def check_finite_objective(model, inputs: dict) -> None:
    """Finite differences of a NaN or Inf objective compare NaN with NaN: every row would
    fail without saying why, so the objective is checked first."""
    name = model.objective.name
    value = np.asarray(model.run(outputs=[name], **inputs)[name])
    if not np.isfinite(value).all():
        raise ChainruleError(f"the objective {name} is {value} at these inputs, so its finite "
                             f"differences say nothing; gradcheck needs a finite objective (a "
                             f"mean over an empty batch is NaN: --dim sizes the random inputs)")


def check_trained(args, model) -> None:
    """A .nn model's params start at random: predicting or evaluating with them is almost
    always a forgotten --params, so it takes --initial-params to ask for it."""
    if model.params and not (args.params or args.initial_params or is_onnx_model(args)):
        results = {"predict": "predictions", "evaluate": "metrics"}[args.command]
        raise UsageError(f"{args.file} has params, and no --params TRAINED.npz was given: its "
                         f"{results} would come from the random initial params. Give the "
                         f"trained ones (chainrule train ... -o TRAINED.npz writes them), or "
                         f"--initial-params to {args.command} with the initial ones")


def check_argmax(args, graph) -> None:
    """--argmax reads a matrix of class scores: known from the types, before anything runs."""
    if args.argmax and not any(value.type.rank == 2 and is_float(value.type.dtype)
                               for value in graph.outputs):
        raise UsageError("--argmax needs an output that is a 2-D float array (one row of class "
                         "scores per example)")


def check_csv_outputs(args, graph) -> None:
    """A CSV file holds 1-D and 2-D outputs: known from the types, before anything runs. (A
    scalar has no row per example, which predict itself refuses.)"""
    if not (args.output or "").lower().endswith(".csv"):
        return
    for value in graph.outputs:
        if value.type.rank > 2:
            raise UsageError(f"output {value.name} is {value.type}, with {value.type.rank} "
                             f"axes; a CSV file holds 1-D and 2-D outputs: write a .npz")


def cmd_predict(args) -> int:
    model = load_model(args)
    check_trained(args, model)
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
    check_argmax(args, graph)
    check_csv_outputs(args, graph)
    bound, rows = bind_data_set(args, model, names, data)
    started = time.perf_counter()
    results = model.predict(bound.arrays, names, batch_size=args.batch_size,
                            backend=args.backend, opt_level=args.opt_level,
                            progress=lambda done, total: predict_progress(done, total, started))
    if args.argmax:
        results.update(class_indices(results))
    title = (f"predicted {', '.join(names)} for {rows:,} rows in "
             f"{time.perf_counter() - started:.2f}s ({args.backend})")
    return report(args, title, results, write_predictions)


def bind_data_set(args, model, names: list[str], data):
    """The data bound to the inputs that computing the outputs `names` reads, checked whole
    (every one there, with the same number of rows), and the number of rows."""
    graph = model.forward_graph(names, args.opt_level)
    bound = bind(args, graph, data, reader=f"computing {', '.join(names)}")
    if bound.missing:
        listed = ", ".join(f"'{v.name}' ({v.type})" for v in bound.missing)
        raise ChainruleError(f"computing {', '.join(names)} needs input(s) {listed}, which "
                             f"{data.files} does not hold; --map INPUT=ARRAY binds an input to "
                             f"an array of another name")
    return bound, check_rows(graph.inputs, bound.arrays, bound.origin)


def cmd_evaluate(args) -> int:
    """The objective and metrics (or --outputs) over a data file, averaged over its rows."""
    if not args.data and not args.input:
        raise UsageError("no data: give --data FILE or --input NAME=FILE")
    model = load_model(args)
    check_trained(args, model)
    check_mapping(model.graph.inputs, mapping(args))
    names = [v.name for v in model.evaluation_graph(split_names(args.outputs),
                                                    args.opt_level).outputs]
    data = read_data(args.data, args.input, args)
    bound, rows = bind_data_set(args, model, names, data)
    started = time.perf_counter()
    metrics = model.evaluate(bound.arrays, names, batch_size=args.batch_size,
                             backend=args.backend, opt_level=args.opt_level)
    print(f"evaluated {model.graph.name} on {rows:,} rows of {data.files} in "
          f"{time.perf_counter() - started:.2f}s ({args.backend}):")
    print(f"  {format_metrics(metrics)}")
    warn_nonfinite(metrics)
    return 0


def class_indices(results: dict) -> dict:
    """`name.argmax` for each output that is a matrix of floats (logits or probabilities): one
    at least, as check_argmax saw to it."""
    return {f"{name}.argmax": np.argmax(array, axis=1)
            for name, array in results.items() if array.ndim == 2 and is_float_array(array)}


def write_predictions(path: str, results: dict) -> None:
    """.npz, or .csv with a header: one column per 1-D output and per column of a 2-D one."""
    if not path.lower().endswith(".csv"):
        save_npz(path, results)
        return
    columns, header = [], []
    for name, array in results.items():  # 1-D and 2-D: check_csv_outputs saw to it
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


def predict_progress(done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    draw_progress("predicting", done, total, f"rows  {rate:,.0f} rows/s")
