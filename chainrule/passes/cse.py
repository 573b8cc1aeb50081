"""Common-subexpression elimination: one node per distinct (op, inputs, attrs)."""
from __future__ import annotations

from ..ir import Graph
from .rewrite import Rewriter


def _key(node):
    attrs = tuple(sorted(node.attrs.items()))
    return node.op, tuple(id(v) for v in node.inputs), attrs


def eliminate_common_subexpressions(graph: Graph) -> tuple[Graph, bool]:
    rewriter = Rewriter(graph)
    seen = {}
    for node in graph.nodes:
        node = rewriter.remap(node)
        if "body" in node.attrs:  # a scan is kept: two with one body are not worth finding
            rewriter.keep(node)
            continue
        key = _key(node)
        earlier = seen.get(key)
        if earlier is not None and rewriter.can_replace(node.output, earlier.output):
            rewriter.replace(node.output, earlier.output)
            continue
        seen.setdefault(key, node)
        rewriter.keep(node)
    return rewriter.finish()
