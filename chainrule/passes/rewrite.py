"""Rebuilding a graph node by node while replacing values: the edit API every rewrite uses.

Graph copies share Values and Nodes, so a pass never mutates either: a value's name is fixed
when it is made. Replacing a value is the one edit: `replace(old, new)` points every node kept
after, the outputs and the objective at `new`. A graph output keeps its name across passes, so
the value replacing one is made anew under that name (`rename`) and replaces the value it
copies in the nodes kept since. Passes find values by identity, never by name.
"""
from __future__ import annotations

from typing import Callable

from ..ir import Graph, Node, Value
from ..ir.graph import NodeIndex


class Rewriter:
    def __init__(self, graph: Graph):
        self.source = graph
        self.graph = graph.copy()
        self.graph.nodes = []
        self.index = NodeIndex(self.graph.nodes)
        self.replaced: dict[Value, Value] = {}
        self.outputs = set(graph.outputs)
        self.interface = set(graph.inputs) | set(graph.param_values())
        self.changed = False
        # The kept node defining each value, as it stands now: rename rebuilds nodes.
        self.producers: dict[Value, Node] = {}

    def current(self, value: Value) -> Value:
        while value in self.replaced:
            value = self.replaced[value]
        return value

    def remap(self, node: Node) -> Node:
        """The node with its inputs replaced by their current values (a new node if any)."""
        inputs = tuple(self.current(v) for v in node.inputs)
        if inputs == node.inputs:
            return node
        return Node(node.op, inputs, node.attrs, node.outputs, node.loc)

    def keep(self, node: Node) -> None:
        self.graph.nodes.append(node)
        self.producers.update(dict.fromkeys(node.outputs, node))

    def can_replace(self, old: Value, new: Value) -> bool:
        """Replacing a graph output is possible only when `new` can take over its name."""
        new = self.current(new)
        if old not in self.outputs:
            return True
        return new not in self.interface and new not in self.outputs and new.type == old.type

    def replace(self, old: Value, new: Value) -> None:
        new = self.current(new)
        if old in self.outputs:
            if new.name != old.name:
                new = self.rename(new, old.name)
            self.outputs.add(new)
        self.replaced[old] = new
        self.changed = True

    def rename(self, value: Value, name: str) -> Value:
        """A new value named `name` that replaces `value` (a kept node's output): its producer
        is re-emitted with it, and the nodes kept since read it."""
        del self.producers[value]
        renamed = Value(name, value.type)
        for made in self.index.rename_output(value, renamed):
            node = self.graph.nodes[made]
            self.producers.update(dict.fromkeys(node.outputs, node))
        self.replaced[value] = renamed
        return renamed

    def finish(self) -> tuple[Graph, bool]:
        self.graph.outputs = [self.current(v) for v in self.source.outputs]
        if self.source.objective is not None:
            self.graph.objective = self.current(self.source.objective)
        return self.graph, self.changed


def to_fixed_point(rewrite: Callable[[Graph], tuple[Graph, bool]],
                   graph: Graph) -> tuple[Graph, bool]:
    """Apply `rewrite` until it reports no change; whether any application changed the graph.
    No round limit: the rules must not undo one another, as a rule set that did would loop
    with any limit too, only less visibly."""
    changed = False
    while True:
        graph, changed_now = rewrite(graph)
        if not changed_now:
            return graph, changed
        changed = True
