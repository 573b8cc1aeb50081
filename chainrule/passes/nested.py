"""Running a pass inside the bodies that scan nodes hold, as well as over the graph itself."""
from __future__ import annotations

from typing import Callable

from ..ir import Graph, Node

GraphPass = Callable[[Graph], tuple[Graph, bool]]


def in_bodies(run: GraphPass) -> GraphPass:
    """`run`, applied to every body first, innermost first, then to the graph. A body is a
    closed graph, so a pass over it needs nothing from around it; the node holding it is
    rebuilt with the new body, its operands and results unchanged."""
    def nested(graph: Graph) -> tuple[Graph, bool]:
        graph, inner = with_bodies(graph, nested)
        graph, changed = run(graph)
        return graph, changed or inner
    return nested


def with_bodies(graph: Graph, run: GraphPass) -> tuple[Graph, bool]:
    """The graph with `run` applied to each body its nodes hold (not recursively)."""
    nodes, changed = [], False
    for node in graph.nodes:
        body = node.attrs.get("body")
        if isinstance(body, Graph):
            body, changed_body = run(body)
            if changed_body:
                node = Node(node.op, node.inputs, {**node.attrs, "body": body}, node.outputs,
                            node.loc)
                changed = True
        nodes.append(node)
    if not changed:
        return graph, False
    result = graph.copy()
    result.nodes = nodes
    return result, True
