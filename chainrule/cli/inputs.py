"""Reading a model, its params and its data from the command line, and binding arrays to inputs."""
from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np

from ..backends.feeds import index_inputs, label_bounds
from ..data import (Dataset, bind_inputs, check_mapping, check_rows, dtype_kind, read_array,
                    read_dataset)
from ..fileio import load_npz
from ..ir import ChainruleError, Graph
from ..ir import dims as dim_exprs
from ..ir.limits import check_allocation, itemsize
from ..ir.types import UNKNOWN, int_range, numpy_dtype
from ..passes.optimizers import OptimizerSpec, ParamGroup

DEFAULT_DIM = 4  # size given to symbolic dims by --random-inputs unless --dim binds them


class UsageError(Exception):
    """A bad command-line value: exit code 2."""


ONNX_OPTIONS = ("loss", "loss_output", "freeze", "trainable")


def optimizer_spec(args) -> OptimizerSpec:
    """The optimizer the options name (train, and export --train-step), without the clipping:
    train keeps that as a setting of its own (TrainConfig.clip_grad_norm)."""
    return OptimizerSpec(args.optimizer, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay,
                         groups=tuple(param_group(text) for text in args.param_group or ()))


GROUP_SETTINGS = ("weight_decay", "lr_scale")


def param_group(text: str) -> ParamGroup:
    """--param-group PATTERN:KEY=VALUE[,KEY=VALUE...], KEY one of GROUP_SETTINGS."""
    pattern, colon, settings = text.partition(":")
    if not colon or not pattern:
        raise UsageError(f"--param-group expects PATTERN:KEY=VALUE[,KEY=VALUE] (such as "
                         f"'b*:weight_decay=0'), got '{text}'")
    values = parse_assignments(settings.split(","), f"--param-group {pattern}", float)
    unknown = sorted(set(values) - set(GROUP_SETTINGS))
    if unknown:
        raise UsageError(f"--param-group {pattern}: unknown setting {', '.join(unknown)}; "
                         f"choose from {', '.join(GROUP_SETTINGS)}")
    bad = [f"{key}={value:g}" for key, value in values.items()
           if not (math.isfinite(value) and value >= 0)]
    if bad:
        raise UsageError(f"--param-group {pattern}: {', '.join(bad)}: a setting is a finite "
                         f"number of at least 0")
    return ParamGroup(pattern, **values)


def exported_step_spec(args) -> OptimizerSpec:
    """export --train-step: the optimizer with the clipping the options ask for."""
    return replace(optimizer_spec(args), clip_grad_norm=args.clip_grad_norm)


def is_onnx_model(args) -> bool:
    return str(args.file).endswith(".onnx")


def frozen_patterns(args) -> tuple[str, ...]:
    """train --freeze on a chainrule model: glob patterns of params to keep fixed (an .onnx
    model's --freeze names initializers, and the import fixes them)."""
    return () if is_onnx_model(args) else tuple(_names(args.freeze) or ())


def load_model(args, own_options=()):
    """The model FILE names: a .nn (or .cir) file compiled, or an .onnx file imported.
    `own_options` are ONNX options the command also reads for a chainrule model."""
    from .. import api  # the compiler: loaded by the commands that read a model, not by --help

    if is_onnx_model(args):
        model = api.import_onnx(args.file, loss=args.loss, targets=args.target_input,
                                loss_output=args.loss_output, trainable=_names(args.trainable),
                                freeze=_names(args.freeze) or (), dims=parse_dims(args))
        for note in model.notes:
            print(f"chainrule: note: {note}", file=sys.stderr)
    else:
        given = [f"--{o.replace('_', '-')}" for o in ONNX_OPTIONS
                 if getattr(args, o, None) and o not in own_options]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f".onnx models; {args.file} is a chainrule model")
        model = api.compile(args.file, seed=args.seed, dims=parse_dims(args),
                            loops=args.loops)
    if getattr(args, "params", None):
        model.set_params(load_npz(args.params))
    return model


def _names(text):
    return [name for name in text.split(",") if name] if text else None


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
    shapes = {v.name: tuple(_size(d, dims) for d in v.type.shape) for v in wanted}
    total = sum(math.prod(shapes[v.name]) * itemsize(v.type.dtype) for v in wanted)
    check_allocation("the random inputs", total)
    return {value.name: random_array(rng, value.type.dtype, shapes[value.name],
                                     bounds.get(value.name))
            for value in wanted}


def random_array(rng, dtype: str, shape: tuple, bound: int | None) -> np.ndarray:
    """Random values of `dtype`: floats from the standard normal (powers of two for f8e8m0,
    which has no sign), integers in [0, bound) for labels and else in [0, 10) or as far as the
    dtype reaches, bools at even odds."""
    target = numpy_dtype(dtype)
    kind = dtype_kind(dtype)
    if kind == "bool":
        return rng.random(shape) < 0.5
    if kind == "int":
        _, greatest = int_range(dtype)
        return rng.integers(0, min(bound or 10, greatest + 1), shape).astype(target)
    if dtype in ("f32", "f64"):
        return rng.standard_normal(shape, target)  # no f64 copy of an f32
    if dtype == "f8e8m0":
        return np.exp2(rng.integers(-4, 4, shape)).astype(target)
    return rng.standard_normal(shape, np.float32).astype(target)


def _size(dim, dims: dict) -> int:
    """A random input's size along a dim: its number, or its symbols' sizes (--dim, else
    DEFAULT_DIM) put into it (`2*B`, `S-1`)."""
    if isinstance(dim, int):
        return dim
    if not dim_exprs.is_symbolic(dim):
        return DEFAULT_DIM
    sizes = {symbol: dims.get(symbol, DEFAULT_DIM) for symbol in dim_exprs.symbols(dim)}
    return max(dim_exprs.evaluate(dim, sizes), 1)


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
    return parse_assignments(args.dim, "--dim", int)  # NAME=N, checked by the parser


def gather_inputs(args, model, graph: Graph | None = None) -> dict:
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


def training_data(args, model, path, singles, what: str) -> dict | None:
    """A data set bound to the model's inputs and checked whole, before any training."""
    if not path and not singles:
        return None
    if not model.graph.inputs:
        raise ChainruleError(f"model {model.graph.name} has no inputs, so no {what} can feed "
                             f"it; training reads batches of a model's inputs")
    bound = bind(args, model.graph, read_data(path, singles, args))
    if bound.missing:
        listed = ", ".join(f"'{v.name}' ({v.type})" for v in bound.missing)
        raise ChainruleError(f"the {what} has no array for input(s) {listed}; --map INPUT=ARRAY "
                             f"binds an input to an array of another name")
    check_rows(model.graph.inputs, bound.arrays, bound.origin)
    return bound.arrays
