"""Which values autodiff must carry cotangents for, and whether their ops have rules."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, Node, Value, get_op
from ..ir.types import is_float
from .autodiff_rules import VJP_RULES


def active_values(graph: Graph, objectives: list[Value], wrt: list[Value]) -> set[Value]:
    """Float values that depend on some of `wrt` and that some objective depends on."""
    depends = set(wrt)
    for node in graph.nodes:
        if get_op(node.op).differentiable and any(v in depends for v in node.inputs):
            depends.update(v for v in node.outputs if is_float(v.type.dtype))
    reaches = set(objectives)
    for node in reversed(graph.nodes):
        if any(v in reaches for v in node.outputs):
            reaches.update(node.inputs)
    return depends & reaches


def check_rules(graph: Graph, active: set[Value]) -> None:
    """Every op on an active path needs a derivative rule; list all that lack one at once.
    A scan has its own (autodiff_scan.py), which checks its body's ops."""
    missing: list[Node] = [n for n in graph.nodes
                           if n.op not in VJP_RULES and n.op != "scan"
                           and any(v in active for v in n.outputs)]
    if missing:
        lines = [f"  {n.loc}: '{n.op}' (computing %{n.outputs[0].name})" for n in missing]
        raise ChainruleError("no derivative rule for ops on the path to the objective:\n"
                             + "\n".join(lines), missing[0].loc)
