"""Appending typed nodes to a graph: the one way lowering, autodiff and rewrites add nodes."""
from __future__ import annotations

from .errors import ChainruleError, SourceLoc
from .graph import Graph, Namer, Node, Value
from .limits import check_node_count, type_size_problem
from .ops import complete_attrs, get_op, infer_type
from .shapes import OpTypeError


class GraphBuilder:
    def __init__(self, graph: Graph, namer: Namer | None = None):
        self.graph = graph
        self.namer = namer or Namer.for_graph(graph)
        self._producers = graph.producers()

    def graph_producer(self, value: Value) -> Node | None:
        """The node defining `value`, or None for inputs and params."""
        return self._producers.get(value)

    def emit(self, op: str, inputs, attrs=None, *, loc: SourceLoc | None = None,
             name: str | None = None) -> Value:
        """Append `op(inputs){attrs}`, infer its type, and return its output value."""
        attrs = dict(attrs or {})
        inputs = tuple(inputs)
        try:
            out_type = infer_type(op, [v.type for v in inputs], attrs)
            attrs = complete_attrs(get_op(op), attrs)
        except OpTypeError as error:
            raise ChainruleError(str(error), loc) from None
        problem = type_size_problem(out_type)
        if problem:
            raise ChainruleError(f"{op} gives {problem}", loc)
        check_node_count(len(self.graph.nodes) + 1, loc)
        out = Value(self.namer.fresh(name or op), out_type)
        node = Node(op, inputs, attrs, (out,), loc)
        self.graph.nodes.append(node)
        self._producers[out] = node
        return out

    def constant(self, value: float, dtype: str, *, loc=None, name=None) -> Value:
        return self.emit("constant", (), {"value": float(value), "dtype": dtype}, loc=loc,
                         name=name or "const")

    def rename(self, value: Value, name: str) -> None:
        """Give a value this builder created a new unique name (e.g. its final, readable one)."""
        self.namer.release(value.name)
        value.name = self.namer.fresh(name)
