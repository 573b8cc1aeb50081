"""Rebuilding a graph node by node while replacing values: the edit API every rewrite uses.

Graph copies share Node objects, so a pass never mutates a node; it emits a new one with its
inputs remapped. A replaced value that is a graph output keeps its name, so outputs stay
addressable by name across passes.
"""
from __future__ import annotations

from ..ir import Graph, Node, Value


class Rewriter:
    def __init__(self, graph: Graph):
        self.source = graph
        self.graph = graph.copy()
        self.graph.nodes = []
        self.replaced: dict[Value, Value] = {}
        self.outputs = set(graph.outputs)
        self.interface = set(graph.inputs) | set(graph.param_values())
        self.changed = False
        self.position: dict[Value, int] = {}

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
        self.position[node.outputs[0]] = len(self.graph.nodes)
        self.graph.nodes.append(node)

    def can_replace(self, old: Value, new: Value) -> bool:
        """Replacing a graph output is possible only when `new` can take over its name."""
        new = self.current(new)
        if old not in self.outputs:
            return True
        return new not in self.interface and new not in self.outputs and new.type == old.type

    def replace(self, old: Value, new: Value) -> None:
        new = self.current(new)
        if old in self.outputs:
            new = self.rename(new, old.name)
            self.outputs.add(new)
        self.replaced[old] = new
        self.changed = True

    def rename(self, value: Value, name: str) -> Value:
        """Re-emit value's producer with a fresh output named `name`, and point the nodes kept
        since at it: values are shared with earlier graphs, so none is renamed in place."""
        index = self.position.pop(value)
        producer = self.graph.nodes[index]
        renamed = Value(name, value.type)
        self.graph.nodes[index] = Node(producer.op, producer.inputs, producer.attrs, (renamed,),
                                       producer.loc)
        self.position[renamed] = index
        for later, node in enumerate(self.graph.nodes[index + 1:], start=index + 1):
            if value in node.inputs:  # nodes already emitted read the value under its new name
                inputs = tuple(renamed if v is value else v for v in node.inputs)
                self.graph.nodes[later] = Node(node.op, inputs, node.attrs, node.outputs,
                                               node.loc)
        self.replaced[value] = renamed
        return renamed

    def finish(self) -> tuple[Graph, bool]:
        self.graph.outputs = [self.current(v) for v in self.source.outputs]
        if self.source.objective is not None:
            self.graph.objective = self.current(self.source.objective)
        return self.graph, self.changed
