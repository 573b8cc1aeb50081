"""Appending typed nodes to a graph: the one way lowering, autodiff and rewrites add nodes."""
from __future__ import annotations

from .errors import ChainruleError, SourceLoc
from .graph import Graph, Namer, Node, NodeIndex, Value
from .limits import check_node_count, type_size_problem
from .ops import complete_attrs, get_op, infer_types
from .shapes import OpTypeError


class GraphBuilder:
    def __init__(self, graph: Graph, namer: Namer | None = None):
        self.graph = graph
        self.namer = namer or Namer.for_graph(graph)
        self._producers = graph.producers()
        self._index = NodeIndex(graph.nodes)
        self._renamed: dict[Value, Value] = {}  # a value renamed -> the value in its place

    def graph_producer(self, value: Value) -> Node | None:
        """The node defining `value`, or None for inputs and params."""
        return self._producers.get(value)

    def emit(self, op: str, inputs, attrs=None, *, loc: SourceLoc | None = None,
             name: str | None = None) -> Value:
        """Append `op(inputs){attrs}`, infer its type, and return its output value."""
        (out,) = self.emit_results(op, inputs, attrs, loc=loc, names=(name or op,))
        return out

    def emit_results(self, op: str, inputs, attrs=None, *, loc: SourceLoc | None = None,
                     names=()) -> tuple[Value, ...]:
        """Append a node of any op, multi-result ones too (`scan`); its results are named
        after `names`, in order, and the op for those left out."""
        attrs = dict(attrs or {})
        inputs = tuple(inputs)
        try:
            out_types = infer_types(op, [v.type for v in inputs], attrs)
            attrs = complete_attrs(get_op(op), attrs)
        except OpTypeError as error:
            raise ChainruleError(str(error), loc) from None
        for out_type in out_types:
            problem = type_size_problem(out_type)
            if problem:
                raise ChainruleError(f"{op} gives {problem}", loc)
        check_node_count(len(self.graph.nodes) + 1, loc)
        hints = list(names) + [op] * (len(out_types) - len(names))
        outs = tuple(Value(self.namer.fresh(hint), out_type)
                     for hint, out_type in zip(hints, out_types))
        node = Node(op, inputs, attrs, outs, loc)
        self.graph.nodes.append(node)
        self._producers.update(dict.fromkeys(outs, node))
        return outs

    def replace_node(self, old: Node, new: Node) -> None:
        """Put `new` where `old` stands: a node rebuilt with the same outputs, and maybe more
        (a forward scan that also saves what its derivative reads)."""
        index = next(i for i, node in enumerate(self.graph.nodes) if node is old)
        self.graph.nodes[index] = new
        self._producers.update(dict.fromkeys(new.outputs, new))
        self._index.replaced(index, new)

    def truncate(self, count: int) -> None:
        """Drop the nodes appended after the first `count`: a lowering that backs out of what
        it began (a loop that unrolls after all)."""
        for node in self.graph.nodes[count:]:
            for out in node.outputs:
                self._producers.pop(out, None)
                self.namer.release(out.name)
        del self.graph.nodes[count:]
        self._index = NodeIndex(self.graph.nodes)

    def constant(self, value: float, dtype: str, *, loc=None, name=None) -> Value:
        return self.emit("constant", (), {"value": float(value), "dtype": dtype}, loc=loc,
                         name=name or "const")

    def rename(self, value: Value, name: str) -> Value:
        """A node's output under a new unique name (e.g. its final, readable one): a new Value
        that replaces it in the graph's nodes, outputs and objective. The old one is out of
        the graph; `current` maps it to its replacement for values the caller holds."""
        value = self.current(value)
        if value.name == name:
            return value
        self.namer.release(value.name)
        renamed = Value(self.namer.fresh(name), value.type)
        del self._producers[value]
        nodes = self.graph.nodes
        for made in self._index.rename_output(value, renamed):
            self._producers.update(dict.fromkeys(nodes[made].outputs, nodes[made]))
        # In place: a caller may hold the list (`graph.outputs.insert(1, rename(...))`).
        self.graph.outputs[:] = [renamed if v is value else v for v in self.graph.outputs]
        if self.graph.objective is value:
            self.graph.objective = renamed
        self._renamed[value] = renamed
        return renamed

    def current(self, value: Value) -> Value:
        """The value standing for `value` now: itself, or what replaced it when renamed."""
        while value in self._renamed:
            value = self._renamed[value]
        return value
