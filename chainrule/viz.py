"""Pictures of the computational graph, drawn the way the lecture draws them.

Values are boxes labelled with their name and shape, operators are circles; data flows from the
inputs and params at the lower left to the objective at the upper right. With the backward graph,
its nodes take a second colour and dashed edges show the forward values it reuses. The DOT text
is written here; Graphviz's `dot` program renders it when installed.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .fileio import atomic_write_bytes
from .ir import ChainruleError, Graph

FORWARD = {"box": "#dbe9f6", "op": "#ffffff", "edge": "#34495e"}
BACKWARD = {"box": "#fbe3cf", "op": "#fff5ec", "edge": "#d35400"}
INSTALL_HINT = "Graphviz's dot program is not installed (apt-get install graphviz)"


SYMBOLS = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "matmul": "@", "pow": "**",
           "neg": "−x", "transpose": "ᵀ", "greater": ">", "less": "<"}


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped + '"'


def _shape(value) -> str:
    return "[" + ", ".join(str(d) for d in value.type.shape) + "]" if value.type.rank else "scalar"


def to_dot(graph: Graph, backward_prefix: str | None = None) -> str:
    """DOT text for `graph`; nodes whose value's name starts with `backward_prefix` (autodiff
    names every value it writes d<objective>/d...) are drawn as the backward graph."""
    forward_nodes = {n for n in graph.nodes
                     if backward_prefix is None
                     or not n.outputs[0].name.startswith(backward_prefix)}
    forward_values = set(graph.inputs) | set(graph.param_values())
    forward_values.update(v for n in graph.nodes if n in forward_nodes for v in n.outputs)
    ids = {value: f"v{i}" for i, value in enumerate(graph.values())}
    # rankdir=BT with sources declared first: inputs low and left, data flowing up and right.
    lines = [f"digraph {_quote(graph.name)} {{",
             "  rankdir=BT; nodesep=0.3; ranksep=0.3;",
             '  node [fontname="Helvetica", fontsize=11]; edge [arrowsize=0.6];']

    def box(value, backward: bool, label=None):
        colours = BACKWARD if backward else FORWARD
        label = label or f"{value.name}\n{_shape(value)}"
        lines.append(f"  {ids[value]} [shape=box, style=filled, fillcolor={_quote(colours['box'])},"
                     f" label={_quote(label)}];")

    for value in list(graph.inputs) + graph.param_values():
        box(value, backward=False)
    for index, node in enumerate(graph.nodes):
        backward = node not in forward_nodes
        colours = BACKWARD if backward else FORWARD
        if node.op == "constant":  # a constant is a value, not a computation
            number = f"{node.attrs['value']:g}"
            lines.append(f"  {ids[node.output]} [shape=box, style=\"filled,rounded\", "
                         f"fontsize=9, fillcolor={_quote(colours['op'])}, "
                         f"label={_quote(number)}];")
            continue
        op_id = f"op{index}"
        symbol = SYMBOLS.get(node.op, node.op)
        # In an unrolled loop each copy of the body is labelled with its step, as the IR is.
        iteration = node.loc.iteration if node.loc else ""
        label = f"{symbol}\n{iteration}" if iteration else symbol
        size = "fixedsize=true, width=0.55, fontsize=10" if len(symbol) <= 5 and not iteration \
            else "margin=0.02, fontsize=9"
        where = f"{node.op} at {node.loc.described()}" if node.loc else node.op
        lines.append(f"  {op_id} [shape=circle, {size}, "
                     f"style=filled, fillcolor={_quote(colours['op'])}, "
                     f"color={_quote(colours['edge'])}, label={_quote(label)}, "
                     f"tooltip={_quote(where)}];")
        for value in node.inputs:
            reused = backward and value in forward_values
            style = ", style=dashed" if reused else ""
            lines.append(f"  {ids[value]} -> {op_id} [color={_quote(colours['edge'])}{style}];")
        for value in node.outputs:
            box(value, backward)
            lines.append(f"  {op_id} -> {ids[value]} [color={_quote(colours['edge'])}];")
    sources = " ".join(ids[v] for v in list(graph.inputs) + graph.param_values())
    if sources:
        lines.append(f"  {{ rank=min; {sources} }}")
    if graph.outputs:
        lines.append(f"  {{ rank=max; {ids[graph.outputs[0]]} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def picture_target(path) -> tuple[Path, str]:
    """The file `render` will write for `path`, and a note to give before writing it: without
    Graphviz an .svg/.png request becomes the .dot beside it, which must not exist yet (it
    would be replaced without the user having asked for it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".dot", ".gv", ".svg", ".png"):
        raise ChainruleError(f"{path}: unknown picture format '{suffix}'; use .svg, .png or .dot")
    if suffix in (".dot", ".gv") or shutil.which("dot") is not None:
        return path, ""
    fallback = path.with_suffix(".dot")
    if fallback.exists():
        raise ChainruleError(f"{path}: {INSTALL_HINT}, so the graph would be written as "
                             f"{fallback}, which exists; remove it, or give -o {fallback} "
                             f"to replace it")
    return fallback, f"{INSTALL_HINT}; writing {fallback} instead"


def render(dot_text: str, path) -> str:
    """Write `path` (.dot, .svg or .png); returns a note for the user, empty when all went well.

    Without Graphviz an .svg/.png request writes the .dot next to it instead (picture_target)."""
    target, note = picture_target(path)
    if target.suffix.lower() in (".dot", ".gv"):
        atomic_write_bytes(target, dot_text.encode())
        return note
    result = subprocess.run([shutil.which("dot"), f"-T{target.suffix[1:].lower()}"],
                            input=dot_text.encode(), capture_output=True, timeout=120)
    if result.returncode != 0:
        raise ChainruleError(f"dot failed: {result.stderr.decode(errors='replace').strip()}")
    atomic_write_bytes(target, result.stdout)
    return ""
