"""Group elementwise ops into kernels (-O2, last): each group is a tree of elementwise nodes
whose inner values are read once, inside the group, so a backend may compute the whole tree in
one pass over memory (the numpy backend's fused kernels) or node by node, as before.

The graph keeps its ops: the pass moves each group's nodes next to its last one, the node that
computes the group's result, and lists the groups in `graph.groups`. Groups cover the forward
activations, the backward chains (relu_grad, tanh's g * (1 - y*y)) and the optimizer updates
(weight decay + gradient + SGD or Adam step), whose chains end in a param's next value.
"""
from __future__ import annotations

from ..ir import Graph, Node, get_op


def _groupable(node: Node) -> bool:
    """Elementwise, deterministic and on arrays: a scalar chain is not worth a kernel."""
    traits = get_op(node.op).traits
    return ("elementwise" in traits and "stochastic" not in traits and len(node.outputs) == 1
            and node.output.type.rank > 0)


def group_elementwise(graph: Graph) -> tuple[Graph, bool]:
    readers: dict = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers.setdefault(value, []).append(node)
    returned = set(graph.outputs)
    group_of: dict[Node, list[Node]] = {}
    # From the last node back, so a node's single reader is placed before the node is: a node
    # joins its reader's group when it is that group's only use of its value, else starts one.
    for node in reversed(graph.nodes):
        if not _groupable(node):
            continue
        uses = readers.get(node.output, [])
        reader = uses[0] if len(uses) == 1 and node.output not in returned else None
        group = group_of.get(reader)
        if group is not None and group[0].output.type.shape == node.output.type.shape:
            group.append(node)
        else:
            group = [node]
        group_of[node] = group
    groups = {id(group): group for group in group_of.values()}
    if not groups:
        return graph, False
    # Each group's nodes move down to its result node, in their order: a moved node's inputs
    # are defined before its old place, and its value is read only inside the group.
    order = {node: index for index, node in enumerate(graph.nodes)}
    result = graph.copy()
    result.nodes = []
    for node in graph.nodes:
        group = group_of.get(node)
        if group is None:
            result.nodes.append(node)
        elif group[0] is node:
            result.nodes.extend(sorted(group, key=order.__getitem__))
    result.groups = [tuple(sorted(group, key=order.__getitem__)) for group in groups.values()]
    result.groups.sort(key=lambda group: order[group[-1]])
    return result, True
