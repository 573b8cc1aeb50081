"""Expanding `grad(objective, wrt)` nodes into the backward graph they stand for.

Each grad node is replaced by the gradient that reverse-mode autodiff builds for the graph up to
that node; the rest of the graph then reads the gradient. Nodes are expanded in order, so a
later grad (or the training objective's autodiff) differentiates graphs that already contain
backward nodes: that is what makes second derivatives work.
"""
from __future__ import annotations

from ..ir import Graph
from .autodiff import autodiff
from .dce import eliminate_dead_code
from .rewrite import Rewriter


def expand_grads(graph: Graph) -> tuple[Graph, bool]:
    changed = False
    while True:
        index = next((i for i, n in enumerate(graph.nodes) if n.op == "grad"), None)
        if index is None:
            return graph, changed
        graph = _expand_one(graph, index)
        changed = True


def _expand_one(graph: Graph, index: int) -> Graph:
    node = graph.nodes[index]
    objective, wrt = node.inputs
    prefix = graph.copy()
    prefix.nodes = graph.nodes[:index]
    prefix.outputs = [objective]
    prefix.objective = objective
    differentiated, grads = autodiff(prefix, objective, [wrt])
    gradient = grads[wrt.name]

    rewriter = Rewriter(graph)
    for kept in differentiated.nodes:
        rewriter.keep(kept)
    backward_values = {v for n in differentiated.nodes[index:] for v in n.outputs}
    if gradient in backward_values:
        # The gradient autodiff created takes the name the user gave the grad call.
        gradient = rewriter.rename(gradient, node.output.name)
    rewriter.replace(node.output, gradient)
    for rest in graph.nodes[index + 1:]:
        rewriter.keep(rewriter.remap(rest))
    result, _ = rewriter.finish()
    return eliminate_dead_code(result)[0]
