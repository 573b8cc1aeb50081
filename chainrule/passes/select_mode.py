"""Choosing training or inference: each train_or_eval(t, e) node becomes t or e.

A model with batch_norm computes one result from the batch's statistics (training) and another
from the running ones (inference); both are in the graph, joined by train_or_eval, until this
pass picks one. Inference also drops the outputs that hold state updates, which only training
uses. Every preset runs it first, so the passes after it and the backends never see the op
(autodiff may come before it: its rule keeps the choice open for the gradient).
"""
from __future__ import annotations

from ..ir import Graph, Node
from .dce import eliminate_dead_code, select_outputs
from .rewrite import Rewriter


def select_mode(graph: Graph, training: bool) -> tuple[Graph, bool]:
    changed = False
    if not training and graph.updates:
        updates = set(graph.updates.values())
        graph = select_outputs(graph, [v.name for v in graph.outputs if v.name not in updates])
        changed = True
    if not any(node.op == "train_or_eval" for node in graph.nodes):
        return graph, changed
    rewriter = Rewriter(graph)
    for node in graph.nodes:
        node = rewriter.remap(node)
        if node.op != "train_or_eval":
            rewriter.keep(node)
            continue
        chosen = node.inputs[0 if training else 1]
        if rewriter.can_replace(node.output, chosen):
            rewriter.replace(node.output, chosen)
        else:  # an output that cannot take the chosen value's place keeps a copy of it
            rewriter.keep(Node("cast", (chosen,), {"dtype": chosen.type.dtype, "saturate": True},
                               node.outputs, node.loc))
    result, _ = rewriter.finish()
    return eliminate_dead_code(result)[0], True
