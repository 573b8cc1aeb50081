"""Shape and dtype inference: recompute every node's output type from the registry's rules."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, Node, OpTypeError, Value
from ..ir.ops import infer_types
from .rewrite import Rewriter


def infer_shapes(graph: Graph) -> tuple[Graph, bool]:
    """The graph with each node's outputs typed as its op's rule infers; a node whose types
    change is rebuilt with new values (values are shared with other graphs)."""
    rewriter = Rewriter(graph)
    for node in graph.nodes:
        node = rewriter.remap(node)
        try:
            inferred = infer_types(node.op, [v.type for v in node.inputs], node.attrs)
        except OpTypeError as error:
            raise ChainruleError(f"%{node.outputs[0].name} = {node.op}(...): {error}",
                                 node.loc) from None
        if tuple(v.type for v in node.outputs) == inferred:
            rewriter.keep(node)
            continue
        retyped = tuple(Value(old.name, new) for old, new in zip(node.outputs, inferred))
        rewriter.keep(Node(node.op, node.inputs, node.attrs, retyped, node.loc))
        for old, new in zip(node.outputs, retyped):
            rewriter.replace(old, new)
    return rewriter.finish()
