"""The textual form of the IR: one node per line, its DSL location as a trailing comment."""
from __future__ import annotations

from . import dims
from .graph import Graph, Node, Value

COMMENT_COLUMN = 64


def format_attr(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dims.DimExpr) and not str(value)[0].isalpha():
        return f"({value})"  # an attribute's dim starts with a symbol or a parenthesis
    return str(value)


def format_value(value: Value) -> str:
    return f"%{value.name}"


def format_node(node: Node) -> str:
    outs = ", ".join(format_value(v) for v in node.outputs)
    args = ", ".join(format_value(v) for v in node.inputs)
    text = f"{outs} = {node.op}({args})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items()) + "}"
    types = ", ".join(str(v.type) for v in node.outputs)
    return f"{text} : {types}"


def _with_loc(text: str, loc) -> str:
    if loc is None:
        return text
    return f"{text.ljust(COMMENT_COLUMN)}  # {loc.described()}"


def print_graph(graph: Graph, locations: bool = True) -> str:
    """The graph as text; without `locations`, the trailing DSL locations are left out."""
    header = ", ".join(f"{format_value(v)}: {v.type}" for v in graph.inputs)
    lines = [f"graph {graph.name}({header}) {{"]
    for param in graph.params:
        text = f"{param.kind} {format_value(param.value)}: {param.value.type} = {param.init}"
        lines.append("  " + _with_loc(text, param.loc if locations else None))
    for node in graph.nodes:
        lines.append("  " + _with_loc(format_node(node), node.loc if locations else None))
    lines.append("  return " + ", ".join(format_value(v) for v in graph.outputs))
    lines += [f"  update %{state} = %{output}" for state, output in graph.updates.items()]
    lines.append("}")
    return "\n".join(lines) + "\n"
