"""Shape and dtype inference: recompute every node's output type from the registry's rules."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, OpTypeError, infer_type


def infer_shapes(graph: Graph) -> tuple[Graph, bool]:
    """Set each node's output type to what its op's rule infers; report whether any changed."""
    changed = False
    for node in graph.nodes:
        try:
            inferred = infer_type(node.op, [v.type for v in node.inputs], node.attrs)
        except OpTypeError as error:
            raise ChainruleError(f"%{node.outputs[0].name} = {node.op}(...): {error}",
                                 node.loc) from None
        if node.outputs[0].type != inferred:
            node.outputs[0].type = inferred
            changed = True
    return graph, changed
