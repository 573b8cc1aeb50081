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
    """The node on one line; a body it holds shows as `body(...) {...}`, not its lines."""
    return _node_text(node, "body(...) {...} " if "body" in node.attrs else "")


def _node_text(node: Node, body: str) -> str:
    outs = ", ".join(format_value(v) for v in node.outputs)
    args = ", ".join(format_value(v) for v in node.inputs)
    text = f"{outs} = {node.op}({args})"
    attrs = {k: v for k, v in node.attrs.items() if k != "body"}
    if attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in attrs.items()) + "}"
    types = ", ".join(str(v.type) for v in node.outputs)
    return f"{text} {body}: {types}"


def _with_loc(text: str, loc) -> str:
    if loc is None:
        return text
    return f"{text.ljust(COMMENT_COLUMN)}  # {loc.described()}"


def _inputs_text(graph: Graph) -> str:
    return ", ".join(f"{format_value(v)}: {v.type}" for v in graph.inputs)


def _node_lines(node: Node, indent: str, locations: bool) -> list[str]:
    """The node's lines: one, or for a node holding a body, its head, the body's nodes
    indented, and the closing line with the types and the location."""
    loc = node.loc if locations else None
    body = node.attrs.get("body")
    if body is None:
        return [indent + _with_loc(format_node(node), loc)]
    head, tail = _node_text(node, "\0").split("\0")
    lines = [f"{indent}{head}body({_inputs_text(body)}) {{"]
    for inner in body.nodes:
        lines += _node_lines(inner, indent + "  ", locations)
    lines.append(f"{indent}  return " + ", ".join(format_value(v) for v in body.outputs))
    lines.append(indent + _with_loc("} " + tail, loc))
    return lines


def print_graph(graph: Graph, locations: bool = True) -> str:
    """The graph as text; without `locations`, the trailing DSL locations are left out."""
    lines = [f"graph {graph.name}({_inputs_text(graph)}) {{"]
    for param in graph.params:
        text = f"{param.kind} {format_value(param.value)}: {param.value.type} = {param.init}"
        lines.append("  " + _with_loc(text, param.loc if locations else None))
    for node in graph.nodes:
        lines += _node_lines(node, "  ", locations)
    lines.append("  return " + ", ".join(format_value(v) for v in graph.outputs))
    lines += [f"  update %{state} = %{output}" for state, output in graph.updates.items()]
    lines.append("}")
    return "\n".join(lines) + "\n"
