"""Shape and dtype inference: recompute every node's output type from the registry's rules."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, Node, OpTypeError, Value, infer_type
from .rewrite import Rewriter


def infer_shapes(graph: Graph) -> tuple[Graph, bool]:
    """The graph with each node's output typed as its op's rule infers; a node whose type
    changes is rebuilt with a new value (values are shared with other graphs)."""
    rewriter = Rewriter(graph)
    for node in graph.nodes:
        node = rewriter.remap(node)
        try:
            inferred = infer_type(node.op, [v.type for v in node.inputs], node.attrs)
        except OpTypeError as error:
            raise ChainruleError(f"%{node.output.name} = {node.op}(...): {error}",
                                 node.loc) from None
        old = node.output
        if old.type == inferred:
            rewriter.keep(node)
            continue
        retyped = Value(old.name, inferred)
        rewriter.keep(Node(node.op, node.inputs, node.attrs, (retyped,), node.loc))
        rewriter.replace(old, retyped)
    return rewriter.finish()
