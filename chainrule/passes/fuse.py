"""Fusions for finished gradient graphs (-O2): several ops become one that numpy or ONNX runs
in fewer passes over memory. Each is a pattern -> replacement rule; fused ops have no
derivative rule, so this pass runs after autodiff.
"""
from __future__ import annotations

from ..ir import Graph
from .simplify import apply_rules

FUSIONS = []


def fusion(*ops: str):
    """Register a fusion for nodes of these ops (apply_rules tries it on those only)."""
    def register(fn):
        fn.ops = frozenset(ops)
        FUSIONS.append(fn)
        return fn
    return register


def _operand_pairs(node):
    a, b = node.inputs
    return ((a, b), (b, a))


@fusion("mul")
def relu_backward(ctx, node):
    """g * cast(x > 0) -> relu_grad(x, g): one masked multiply."""
    out = node.output
    for g, mask in _operand_pairs(node):
        cast = ctx.defined_by(mask, "cast")
        if cast is None or cast.attrs["dtype"] != g.type.dtype:
            continue
        compare = ctx.defined_by(cast.inputs[0], "greater")
        if compare is None or ctx.constant(compare.inputs[1]) != 0.0:
            continue
        x = compare.inputs[0]
        if x.type == g.type == out.type:
            return ctx.emit("relu_grad", (x, g), {}, node, out.name)
    return None


@fusion("mul")
def softmax_cross_entropy_backward(ctx, node):
    """(softmax(o) - one_hot(y)) * s -> cross_entropy_grad(o, y, s): (p - onehot) / B."""
    out = node.output
    for difference, scale in _operand_pairs(node):
        sub = ctx.defined_by(difference, "sub")
        if sub is None or scale.type.rank != 0:
            continue
        softmax = ctx.defined_by(sub.inputs[0], "softmax")
        onehot = ctx.defined_by(sub.inputs[1], "one_hot")
        if softmax is None or onehot is None:
            continue
        logits, labels = softmax.inputs[0], onehot.inputs[0]
        last = logits.type.rank - 1
        if (softmax.attrs["axis"] in (-1, last) and onehot.attrs["depth"] == logits.type.shape[-1]
                and logits.type == out.type and labels.type.shape == logits.type.shape[:-1]):
            return ctx.emit("cross_entropy_grad", (logits, labels, scale), {}, node, out.name)
    return None


@fusion("sum")
def sum_of_squares(ctx, node):
    """sum(x * x) over every axis -> sum_squares(x): a dot product, no temporary."""
    if node.attrs["keepdims"]:
        return None
    x_squared = ctx.defined_by(node.inputs[0], "mul")
    rank = node.inputs[0].type.rank
    axes = node.attrs["axes"]
    if x_squared is None or x_squared.inputs[0] is not x_squared.inputs[1]:
        return None
    if axes is not None and sorted(a % rank for a in axes) != list(range(rank)):
        return None
    return ctx.emit("sum_squares", (x_squared.inputs[0],), {}, node, node.output.name)


@fusion("matmul")
def matmul_of_transposes(ctx, node):
    """A 2-D matmul of transposed operands -> gemm with transA/transB: no transposed copy."""
    if any(v.type.rank != 2 for v in node.inputs):
        return None
    operands, flags = [], {}
    for value, flag in zip(node.inputs, ("trans_a", "trans_b"), strict=True):
        transpose = ctx.defined_by(value, "transpose")
        operands.append(transpose.inputs[0] if transpose else value)
        flags[flag] = transpose is not None
    if not any(flags.values()):
        return None
    return ctx.emit("gemm", operands, flags, node, node.output.name)


def _shared_log_softmax(graph: Graph):
    """A cross_entropy and a cross_entropy_grad of the same logits and labels compute the same
    softmax: cross_entropy -> nll(log_softmax(o), y), and its gradient reads exp of those
    log-probs. Rewrites the pairs that both rules find (None when there are none)."""
    def key(node):
        return tuple(node.inputs[:2])

    losses = {key(node) for node in graph.nodes if node.op == "cross_entropy"}
    both = {key(node) for node in graph.nodes if node.op == "cross_entropy_grad"} & losses
    if not both:
        return None  # no pair: the graph need not be rebuilt
    log_probs = {}

    def share(ctx, node):
        if key(node) not in both:
            return None
        logits, labels = node.inputs[:2]
        name = node.output.name
        if node.op == "cross_entropy":
            log_probs[key(node)] = ctx.emit("log_softmax", (logits,), {"axis": -1}, node,
                                            f"{name}.log_probs")
            return ctx.emit("nll", (log_probs[key(node)], labels), {}, node, name)
        if key(node) not in log_probs:  # the gradient comes first: leave this pair alone
            return None
        return ctx.emit("cross_entropy_grad_from_log_probs",
                        (log_probs[key(node)], labels, node.inputs[2]), {}, node, name)
    share.ops = frozenset(("cross_entropy", "cross_entropy_grad"))
    return share


def fuse(graph: Graph) -> tuple[Graph, bool]:
    graph, changed = apply_rules(graph, FUSIONS)
    share = _shared_log_softmax(graph)
    if share is None:
        return graph, changed
    graph, shared = apply_rules(graph, [share])
    return graph, changed or shared
