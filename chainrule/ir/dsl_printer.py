"""The decompiler: a graph as `.nn` DSL text that compiles back to the same graph.

Each node becomes one statement, `name = spelling`, in the graph's order, with where it came
from as a trailing comment: an imported node's ONNX name, a lowered node's FILE:LINE:COL.
SPELLINGS has one entry per op: the DSL operator or built-in call whose lowering emits exactly
that op with exactly its attrs, by default the op's own built-in (`OpDef.builtin`). Only the
fused ops have none: the -O2 fuse pass writes them, never a front end.

A value keeps its IR name where that is a DSL name (an identifier that is no keyword, dtype or
function the text may call); others get a sanitised unique one (`fc1.weight` -> `fc1_weight`).
Params are saved by name, so `dsl_names(graph)` gives the mapping from IR names to DSL names.

The text is DSL, but `ir` imports nothing of `dsl`: tests/test_dsl_printer.py compiles what
this prints and compares the graphs.
"""
from __future__ import annotations

import math
import re
from pathlib import PurePath

import numpy as np

from . import dims
from .errors import INT64_MAX, ChainruleError, printable
from .graph import Graph, Node, Value
from .ops import OPS, REQUIRED, OpDef
from .scan import ScanParts
from .shapes import TO_END, TO_START
from .types import DTYPES, NARROW_INT_DTYPES, UNKNOWN, is_float, is_int

KEYWORDS = frozenset({"model", "def", "param", "state", "let", "return", "for", "in", "and",
                      "or", "not", "true", "false", "none", "if", "else", "layer", "forward"})
# Built-ins the text may call that are not named after an op.
FUNCTIONS = frozenset({"full", "update", "conv1d", "conv2d", "conv_transpose1d",
                       "conv_transpose2d", "max_pool1d", "max_pool2d", "avg_pool1d",
                       "avg_pool2d"} | {op.builtin for op in OPS.values()
                                       if op.builtin not in (None, op.name)})
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
INDENT = "    "
COMMENT_COLUMN = 60


# ---- literals -----------------------------------------------------------------------------------

def int_text(value: int) -> str:
    # -2**63 has no literal of its own: 2**63 is past 64 bits.
    return f"-{INT64_MAX} - 1" if value == TO_START else str(value)


def float_text(value: float) -> str:
    """A float as DSL text that reads back as exactly this double; the DSL has no inf or nan,
    but 1e999 overflows to inf and inf - inf is nan."""
    value = float(value)
    if math.isnan(value):
        return "1e999 - 1e999"
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


def f32_text(value: float) -> str:
    """The shortest text that lowers to the same float32: `1e-05`, not the double
    9.999999747378752e-06 an imported float32 holds."""
    with np.errstate(over="ignore"):
        single = np.float32(value)
    text = str(single)
    if not math.isfinite(single) or np.float32(float(text)) != single:
        return float_text(value)
    return text


class Text(str):
    """An attr's string (grid_sample's mode), which the DSL writes in quotes."""


def literal(value) -> str:
    """An attr's value as DSL text."""
    if isinstance(value, Text):
        return f'"{value}"'
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return int_text(value)
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, tuple):
        items = ", ".join(map(literal, value))
        return f"({items},)" if len(value) == 1 else f"({items})"
    if value in DTYPES:
        return value
    if dims.is_symbolic(value):
        return str(value)
    raise TypeError(f"no DSL literal for {value!r}")


def call(function: str, args, options=()) -> str:
    """`function(a, b, key=value)`; `options` are (name, value) pairs, an `axis` holding one
    axis written as that integer."""
    parts = list(args)
    for name, value in options:
        if name == "axis" and isinstance(value, tuple) and len(value) == 1:
            value = value[0]
        parts.append(f"{name}={literal(value)}")
    return f"{function}({', '.join(parts)})"


def op_options(node: Node, renamed: dict | None = None) -> list[tuple[str, object]]:
    """The node's attrs as a built-in's options (IR names unless `renamed`), leaving out each
    attr at the op's default, which is the built-in's default too."""
    renamed = renamed or {}
    options = []
    for attr, value in node.attrs.items():
        default = OPS[node.op].attrs[attr].default
        if default is not REQUIRED and type(default) is type(value) and default == value:
            continue
        if OPS[node.op].attrs[attr].kind == "str":
            value = Text(value)
        options.append((renamed.get(attr, attr), value))
    return options


# ---- spellings: (node, argument names, graph) -> the expression ---------------------------------

def _builtin(function: str, **renamed):
    """The built-in `function`: inputs positional, attrs as options (renamed: IR -> DSL)."""
    return lambda node, args, graph: call(function, args, op_options(node, renamed))


def _infix(symbol: str):
    return lambda node, args, graph: f" {symbol} ".join(args)


def _prefix(symbol: str):
    return lambda node, args, graph: f"{symbol}{args[0]}"


def _cast(node, args, graph):
    dtype = node.attrs["dtype"]
    # f32(x) of an f32 x is x itself; f8e4m3fn(x) saturates
    if node.inputs[0].type.dtype == dtype or not node.attrs["saturate"]:
        return call("cast", args, op_options(node))
    return f"{dtype}({args[0]})"


def _constant(node, args, graph):
    value, dtype = float(node.attrs["value"]), node.attrs["dtype"]
    if dtype == "bool" and value in (0.0, 1.0):
        text = "true" if value else "false"
    elif dtype == "bool" or is_int(dtype) or dtype in NARROW_INT_DTYPES:
        whole = abs(value) <= INT64_MAX or value == TO_START
        text = int_text(int(value)) if whole else float_text(value)
    else:
        text = f32_text(value) if dtype == "f32" else float_text(value)
    return f"{dtype}({text})"


def _transpose(node, args, graph):
    if node.attrs["perm"] == tuple(reversed(range(node.inputs[0].type.rank))):
        return f"{args[0]}.T"
    return call("transpose", args, op_options(node))


def _subscript(rank: int, starts, ends, axes, steps) -> str | None:
    """The `x[...]` subscript that lowers to exactly this slice, or None: indexing lists
    increasing axes and leaves out the ones it takes whole."""
    if not axes or list(axes) != sorted(set(axes)) or axes[0] < 0 or axes[-1] >= rank:
        return None
    items = [":"] * (axes[-1] + 1)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0 or (start, end, step) == (0, TO_END, 1):
            return None
        forward = step > 0
        first = "" if start == (0 if forward else TO_END) else literal(start)
        last = "" if end == (TO_END if forward else TO_START) else literal(end)
        items[axis] = f"{first}:{last}" + ("" if step == 1 else f":{int_text(step)}")
    return ", ".join(items)


def _slice(node, args, graph):
    attrs = node.attrs
    subscript = _subscript(node.inputs[0].type.rank, attrs["starts"], attrs["ends"],
                           attrs["axes"], attrs["steps"])
    if subscript is None:
        return call("slice", args, op_options(node))
    return f"{args[0]}[{subscript}]"


def _fill(node, args, graph):
    return f"full({literal(node.attrs['shape'])}, {args[0]})"


def _per_axis(values: tuple, default=None):
    """A per-axis option as PyTorch writes it: left out at its default, once if all agree."""
    if default is not None and all(v == default for v in values):
        return None
    return values[0] if len(set(values)) == 1 else values


def _symmetric(pads: tuple, rank: int) -> bool:
    return rank in (1, 2) and pads[:rank] == pads[rank:]


def _window(function: str, args, options) -> str:
    return call(function, args, [(k, v) for k, v in options if v is not None])


def _conv(node, args, graph):
    """conv1d/conv2d and conv_transpose1d/2d (PyTorch's options) where they give these pads,
    else the op's own attrs."""
    attrs = node.attrs
    rank = len(attrs["strides"])
    if not _symmetric(attrs["pads"], rank):
        return call(node.op, args, op_options(node))
    return _window(f"{node.op}{rank}d", args, [
        ("stride", _per_axis(attrs["strides"], 1)),
        ("padding", _per_axis(attrs["pads"][:rank], 0)),
        ("output_padding", _per_axis(attrs.get("output_padding", (0,)), 0)),
        ("dilation", _per_axis(attrs["dilations"], 1)),
        ("groups", _per_axis((attrs["groups"],), 1))])


def _pool(node, args, graph):
    """max_pool2d(x, kernel=2) and the like where they give these pads, else the op's attrs."""
    attrs = node.attrs
    rank = len(attrs["kernel"])
    if not _symmetric(attrs["pads"], rank):
        return call(node.op, args, op_options(node))
    options = [("kernel", _per_axis(attrs["kernel"])),
               ("stride", None if attrs["strides"] == attrs["kernel"]
                else _per_axis(attrs["strides"])),
               ("padding", _per_axis(attrs["pads"][:rank], 0)),
               ("ceil_mode", attrs["ceil_mode"] or None)]
    if "count_include_pad" in attrs and not attrs["count_include_pad"]:
        options.append(("count_include_pad", False))
    return _window(f"{node.op}{rank}d", args, options)


def _pad(node, args, graph):
    """pad(x, pads) takes F.pad's pairs from the last axis back; the op lists each axis'
    begin, then each one's end. A pad of nothing is constant_pad: pad's is x itself."""
    pads, rank = node.attrs["pads"], node.inputs[0].type.rank
    if not any(pads):
        return call("constant_pad", args, op_options(node))
    pairs = []
    for axis in reversed(range(rank)):
        pairs += [pads[axis], pads[rank + axis]]
    while pairs[-2:] == [0, 0]:
        del pairs[-2:]
    value = float(node.attrs["value"])
    options = [("pads", tuple(pairs))] + ([("value", value)] if float_text(value) != "0.0"
                                          else [])
    return call("pad", args, options)


OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@",
             "less": "<", "less_equal": "<=", "greater": ">", "greater_equal": ">=",
             "equal": "==", "not_equal": "!=", "logical_and": "and", "logical_or": "or"}


def _by_builtin(op: OpDef):
    """The op's own built-in: its attrs as options, under their DSL names."""
    return _builtin(op.builtin, **{attr: spec.dsl_name for attr, spec in op.attrs.items()
                                   if spec.dsl_name})


SPELLINGS = {
    **{op.name: _by_builtin(op) for op in OPS.values() if op.builtin is not None},
    **{op: _infix(symbol) for op, symbol in OPERATORS.items()},
    "neg": _prefix("-"),
    "logical_not": _prefix("not "),
    "cast": _cast,
    "constant": _constant,
    "transpose": _transpose,
    "slice": _slice,
    "fill": _fill,
    "conv": _conv,
    "conv_transpose": _conv,
    "max_pool": _pool,
    "avg_pool": _pool,
    "pad": _pad,
}

# ---- names --------------------------------------------------------------------------------------

def _all_values(graph: Graph):
    """The graph's values, then those of the bodies its nodes hold, and theirs."""
    yield from graph.values()
    for body in graph.bodies():
        yield from _all_values(body)


def _symbolic_dims(graph: Graph) -> set[str]:
    """The symbols the graph's types are written with."""
    return set().union(*(dims.symbols(d) for v in _all_values(graph) for d in v.type.shape))


def _reserved(graph: Graph) -> set[str]:
    """Names a value must not take: keywords, dtypes, the functions the text may call, and
    symbolic dims (`full((B, 4), v)` reads B as the dim only where no value has that name)."""
    return set(KEYWORDS) | set(DTYPES) | set(OPS) | FUNCTIONS | _symbolic_dims(graph)


def sanitised(name: str, reserved) -> str:
    """`fc1.weight` -> `fc1_weight`, `/layer/Gemm_output_0` -> `layer_Gemm_output_0`,
    `0.weight` -> `v0_weight`, `sum` -> `sum_`."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "v"
    if cleaned[0].isdigit():
        cleaned = "v" + cleaned
    return cleaned + "_" if cleaned in reserved else cleaned


def _value_names(graph: Graph) -> dict[Value, str]:
    reserved = _reserved(graph)
    values = list(_all_values(graph))
    taken = set(reserved)
    names = {}
    # Names that stay first, so that no sanitised name takes one of them.
    for value in values:
        if IDENTIFIER.match(value.name) and value.name not in taken:
            names[value] = value.name
            taken.add(value.name)
    for value in values:
        if value not in names:
            base = name = sanitised(value.name, reserved)
            count = 1
            while name in taken:
                count += 1
                name = f"{base}_{count}"
            names[value] = name
            taken.add(name)
    return names


def dsl_names(graph: Graph) -> dict[str, str]:
    """IR value name -> the name `print_dsl` gives it, for inputs, params and node outputs:
    re-key a model's param values with it to load them into the printed model
    (`{names[k]: v for k, v in params.items()}`). A compiled model's state updates are named
    `<state>.next` again, whatever their DSL name."""
    return {value.name: name for value, name in _value_names(graph).items()}


# ---- the model ----------------------------------------------------------------------------------

def _error(message: str, loc=None) -> ChainruleError:
    return ChainruleError(f"cannot print as DSL: {message}", loc)


def _location(loc) -> str:
    if loc is None:
        return ""
    return printable(loc.node) if loc.node else loc.described()


def _line(text: str, loc, indent: str = INDENT) -> str:
    where = _location(loc)
    text = indent + text
    return f"{text.ljust(COMMENT_COLUMN)}  # {where}" if where else text


def value_source(param) -> str:
    """Where an imported param's value comes from (the initializer, or the constant or node
    attribute, it holds): its init spec is only what a run without those values draws."""
    loc = param.loc
    return f"value from {printable(PurePath(loc.file).name)}: '{printable(loc.node)}'"


def _type_text(value: Value) -> str:
    if UNKNOWN in value.type.shape:
        raise _error(f"'{value.name}' has the type {value.type}, with a dim no name describes")
    return str(value.type)


def _split_outputs(graph: Graph) -> tuple[list[Value], dict[Value, Value]]:
    """The returned outputs, and each update's value -> its state. A model returns what its
    return statement lists, then each state's next value in the order of its update."""
    by_name = {v.name: v for v in graph.values()}
    updates = {by_name[output]: by_name[state] for state, output in graph.updates.items()}
    returned = graph.outputs[:len(graph.outputs) - len(updates)]
    order = {out: index for index, node in enumerate(graph.nodes) for out in node.outputs}
    if graph.outputs[len(returned):] != list(updates):
        raise _error("the state updates must be the last outputs, in the order of "
                     "graph.updates", graph.loc)
    if any(v not in order for v in updates) or \
            [order[v] for v in updates] != sorted(order[v] for v in updates):
        raise _error("each state update must be a node's output, in the order of "
                     "graph.updates", graph.loc)
    if not returned:
        raise _error("a model returns at least one value", graph.loc)
    if len(set(returned)) != len(returned) or set(returned) & set(updates):
        raise _error("a model returns each value once", graph.loc)
    return returned, updates


def _statement(node: Node, names: dict[Value, str], graph: Graph) -> str:
    if len(node.outputs) != 1:
        raise _error(f"op '{node.op}' has {len(node.outputs)} outputs; a statement names one",
                     node.loc)
    spell = SPELLINGS.get(node.op)
    if spell is None:
        fused = node.op in OPS and "fused" in OPS[node.op].traits
        reason = (": it is a fused op, which the -O2 fuse pass writes after autodiff and no "
                  "front end emits; print the graph from before that pass" if fused else "")
        raise _error(f"op '{node.op}' has no DSL spelling{reason}", node.loc)
    return spell(node, [names[v] for v in node.inputs], graph)


def _statements(nodes, names: dict[Value, str], graph: Graph, updates: dict, indent: str,
                loops: tuple[str, ...] = ()) -> list[str]:
    """One statement per node (a loop for a scan); `loops` are the enclosing loops' variables."""
    lines = []
    for node in nodes:
        if node.op == "scan":
            lines += _loop(node, names, graph, indent, loops)
            continue
        expression = _statement(node, names, graph)
        out = node.output
        if out in updates:
            expression = f"update({names[updates[out]]}, {expression})"
        lines.append(_line(f"{names[out]} = {expression}", node.loc, indent))
    return lines


def _loop_variable(names: dict[Value, str], graph: Graph, loops: tuple[str, ...]) -> str:
    taken = set(names.values()) | _reserved(graph) | set(loops)
    return next(name for name in ("t", "step", *(f"t{i}" for i in range(1, len(taken) + 2)))
                if name not in taken)


def _loop(node: Node, names: dict[Value, str], graph: Graph, indent: str,
          loops: tuple[str, ...]) -> list[str]:
    """A scan as the `for` loop that lowers to it: each carried value named before the loop by
    its result's name and assigned its next value at the end of the body, each sequence read
    as `xs[t]`, each per-step value collected as `ys[t] = y` into a stack defined before."""
    attrs, body = node.attrs, node.attrs["body"]
    if attrs["reverse"]:
        raise _error("a reverse scan has no for loop that lowers to it (a loop reads "
                     "`x[t]` of a reversed sequence instead); print the graph from before "
                     "autodiff", node.loc)
    parts = ScanParts.of(len(node.inputs), body, attrs["carried"], attrs["scanned"])
    first, sequences, outer = parts.operands(node.inputs)
    carried_in, scanned_in, outer_in = parts.operands(body.inputs)
    carried_out, stacked_out = parts.results(node.outputs)
    next_values, step_values = parts.results(body.outputs)
    step = _loop_variable(names, graph, loops)
    inner = indent + INDENT
    lines = [_line(f"{names[result]} = {names[start]}", node.loc, indent)
             for result, start in zip(carried_out, first, strict=True)]
    lines += [_line(f"{names[stack]} = zeros({literal(stack.type.shape)}, "
                    f"dtype={stack.type.dtype})", node.loc, indent) for stack in stacked_out]
    lines.append(_line(f"for {step} in range({literal(attrs['length'])}) {{", node.loc, indent))
    names.update(zip(carried_in, (names[v] for v in carried_out), strict=True))
    names.update(zip(outer_in, (names[v] for v in outer), strict=True))
    lines += [_line(f"{names[value]} = {names[sequence]}[{step}]", node.loc, inner)
              for value, sequence in zip(scanned_in, sequences, strict=True)]
    lines += _statements(body.nodes, names, graph, {}, inner, (*loops, step))
    # A carried value's next value may be another carried value as it was at this step
    # (`a, b = b, a`): read through a copy, made before any of them is assigned.
    taken = set(names.values()) | _reserved(graph) | set(loops) | {step}
    reads = {}
    for value in next_values:
        if value in carried_in and value not in reads:
            copy = next(f"{names[value]}_{n}" for n in range(1, len(taken) + 2)
                        if f"{names[value]}_{n}" not in taken)
            taken.add(copy)
            reads[value] = copy
            lines.append(_line(f"{copy} = {names[value]}", node.loc, inner))
    lines += [_line(f"{names[result]} = {reads.get(value, names[value])}", node.loc, inner)
              for result, value in zip(carried_out, next_values, strict=True)]
    lines += [_line(f"{names[stack]}[{step}] = {names[value]}", node.loc, inner)
              for stack, value in zip(stacked_out, step_values, strict=True)]
    lines.append(indent + "}")
    return lines


def print_dsl(graph: Graph, *, header: str = "") -> str:
    """The graph as one `.nn` model that compiles back to it: inputs, params and state with
    their init specs, one statement per node, the outputs returned by name, each state update
    as `next = update(state, ...)`. `header` becomes comment lines at the top. Values are named
    as `dsl_names(graph)` says; an op with no spelling is a ChainruleError naming it."""
    names = _value_names(graph)
    returned, updates = _split_outputs(graph)
    for dim in _symbolic_dims(graph) - {UNKNOWN}:
        if not IDENTIFIER.match(dim) or dim in KEYWORDS or dim in DTYPES:
            raise _error(f"the symbolic dim '{dim}' is not a DSL name", graph.loc)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    model = sanitised(graph.name, KEYWORDS | set(DTYPES))
    inputs = ", ".join(f"{names[v]}: {_type_text(v)}" for v in graph.inputs)
    lines.append(f"model {model}({inputs}) {{")
    for param in graph.params:
        value = param.value
        if not is_float(value.type.dtype):
            raise _error(f"{param.kind} '{value.name}' is {value.type.dtype}; the DSL keeps "
                         f"float values only", param.loc)
        text = f"{param.kind} {names[value]}: {_type_text(value)} = {param.init}"
        lines.append(_line(text, param.loc) if not param.loc or not param.loc.node else
                     f"{INDENT}{text}".ljust(COMMENT_COLUMN) + f"  # {value_source(param)}")
    if graph.params:
        lines.append("")
    lines += _statements(graph.nodes, names, graph, updates, INDENT)
    lines.append(INDENT + "return " + ", ".join(names[v] for v in returned))
    lines.append("}")
    return "\n".join(lines) + "\n"
