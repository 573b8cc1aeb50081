"""Graphs compared by their structure: what a round trip through text must keep."""
import numpy as np

from chainrule.ir import Graph
from chainrule.ir.types import numpy_dtype


def structure(graph: Graph) -> dict:
    """The graph with values as their positions: what must survive a round trip. A constant's
    value is compared in its dtype (an f32 prints as the shortest text of that f32); a scan's
    body is compared as a graph of its own."""
    index = {value: i for i, value in enumerate(graph.values())}

    def attrs(node):
        if node.op == "constant":
            dtype = node.attrs["dtype"]
            with np.errstate(over="ignore"):  # 1e39 is inf as an f32
                return dtype, repr(numpy_dtype(dtype).type(node.attrs["value"]))
        return [(key, structure(value) if isinstance(value, Graph) else repr(value))
                for key, value in node.attrs.items()]

    return {
        "inputs": [str(v.type) for v in graph.inputs],
        "params": [(p.kind, str(p.value.type), str(p.init)) for p in graph.params],
        "nodes": [(n.op, [index[v] for v in n.inputs], attrs(n), [str(v.type) for v in n.outputs])
                  for n in graph.nodes],
        "outputs": [index[v] for v in graph.outputs],
        "updates": [(index[graph.find(s)], index[graph.find(o)]) for s, o in graph.updates.items()],
    }
