"""Algebraic simplification and constant folding as small pattern -> replacement rules.

A rule looks at one node (inputs already rewritten) and returns the value that can stand for
its output, or None. Rules may emit new nodes through the context.
"""
from __future__ import annotations

import math

from ..ir import Graph, Namer, Node, OpTypeError, Value, infer_type
from ..ir.shapes import broadcast_shapes, compose_perms, is_identity_perm
from .rewrite import Rewriter, to_fixed_point

RULES = []


def rule(*ops: str):
    """Register a rule for nodes of these ops (none named: every op). apply_rules calls a rule
    only on its ops' nodes: most nodes then meet one rule or two, not all of them."""
    def register(fn):
        fn.ops = frozenset(ops) or None
        RULES.append(fn)
        return fn
    return register


class RuleContext:
    def __init__(self, rewriter: Rewriter, evaluate=None):
        self.rewriter = rewriter
        self.evaluate = evaluate
        self.producers = rewriter.producers
        # A rule names a new helper value after the node it rewrites (`J.scale`); the namer
        # keeps that unique when the rule fires on a node of that name again.
        self.namer = Namer.for_graph(rewriter.source)

    def defined_by(self, value: Value, *ops: str) -> Node | None:
        """The node defining `value` if its op is one of `ops`."""
        node = self.producers.get(value)
        return node if node is not None and node.op in ops else None

    def constant(self, value: Value) -> float | None:
        node = self.defined_by(value, "constant")
        return node.attrs["value"] if node is not None else None

    def emit(self, op: str, inputs, attrs: dict, like: Node, name: str) -> Value:
        inputs = tuple(inputs)
        out_type = infer_type(op, [v.type for v in inputs], attrs)
        if name != like.output.name:  # the replacement itself takes over its node's name
            name = self.namer.fresh(name)
        out = Value(name, out_type)
        self.rewriter.keep(Node(op, inputs, attrs, (out,), like.loc))
        return out


def _same_type(a: Value, b: Value) -> bool:
    return a.type == b.type


@rule("mul", "div")
def multiply_by_one(ctx, node):
    if node.op == "mul":
        a, b = node.inputs
        if ctx.constant(b) == 1.0 and _same_type(a, node.output):
            return a
        if ctx.constant(a) == 1.0 and _same_type(b, node.output):
            return b
    if node.op == "div" and ctx.constant(node.inputs[1]) == 1.0:
        if _same_type(node.inputs[0], node.output):
            return node.inputs[0]
    return None


@rule("add", "sub")
def add_zero(ctx, node):
    if node.op in ("add", "sub"):
        a, b = node.inputs
        if _is_zero(ctx, b) and _same_type(a, node.output):
            return a
        if node.op == "add" and _is_zero(ctx, a) and _same_type(b, node.output):
            return b
    return None


def _is_zero(ctx, value: Value) -> bool:
    """A zero constant, or one broadcast (autodiff's zero cotangents, a sum's first value)."""
    spread = ctx.defined_by(value, "broadcast_like")
    return ctx.constant(spread.inputs[0] if spread is not None else value) == 0.0


@rule("neg")
def double_negation(ctx, node):
    inner = ctx.defined_by(node.inputs[0], "neg")
    return inner.inputs[0] if inner is not None else None


@rule("transpose")
def transpose_of_transpose(ctx, node):
    value, perm = node.inputs[0], node.attrs["perm"]
    if not is_identity_perm(perm) and ctx.defined_by(value, "transpose") is None:
        return None
    return _transposed(ctx, value, perm, node, node.output.name)


def _transposed(ctx, value: Value, perm: tuple, like: Node, name: str) -> Value:
    """`value` transposed by `perm`, with no transpose of a transpose: the rules that emit a
    transpose call this, so the next round need not cancel it."""
    if is_identity_perm(perm):
        return value
    inner = ctx.defined_by(value, "transpose")
    if inner is not None:
        value, perm = inner.inputs[0], compose_perms(inner.attrs["perm"], perm)
        if is_identity_perm(perm):
            return value
    return ctx.emit("transpose", (value,), {"perm": perm}, like, name)


@rule("cast")
def cast_to_same_dtype(ctx, node):
    if node.inputs[0].type.dtype == node.attrs["dtype"]:
        return node.inputs[0]
    return None


@rule("broadcast_like")
def broadcast_to_own_shape(ctx, node):
    if _same_type(node.inputs[0], node.output):
        return node.inputs[0]
    return None


@rule("sum", "mean")
def reduce_nothing(ctx, node):
    """sum/mean over axes that are all size 1, keeping them, is the identity."""
    if node.attrs["keepdims"] and node.attrs["axes"] is not None:
        x = node.inputs[0]
        if all(x.type.shape[a] == 1 for a in node.attrs["axes"]):
            return x
    return None


@rule("sum")
def sum_of_unsqueeze(ctx, node):
    """Summing away exactly the axes an unsqueeze added gives back its input."""
    if node.attrs["keepdims"]:
        return None
    inner = ctx.defined_by(node.inputs[0], "unsqueeze")
    if inner is None or node.attrs["axes"] is None:
        return None
    rank = node.inputs[0].type.rank
    if sorted(a % rank for a in node.attrs["axes"]) == sorted(a % rank for a in inner.attrs["axes"]):
        return inner.inputs[0]
    return None


@rule("sum")
def sum_of_negation(ctx, node):
    """sum(-x) is -sum(x): the negation then meets the sum's result, not x's size (the
    gradient of x - mean, batch norm's, negates a cotangent of x's size to sum it)."""
    inner = ctx.defined_by(node.inputs[0], "neg")
    if inner is None:
        return None
    total = ctx.emit("sum", inner.inputs, node.attrs, node, f"{node.output.name}.sum")
    return ctx.emit("neg", (total,), {}, node, node.output.name)


@rule("numel")
def static_numel(ctx, node):
    """numel of dims known at compile time is a constant."""
    shape = node.inputs[0].type.shape
    axes = range(len(shape)) if node.attrs["axes"] is None else node.attrs["axes"]
    dims = [shape[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        return None
    return ctx.emit("constant", (), {"value": float(math.prod(dims)),
                                     "dtype": node.attrs["dtype"]}, node, node.output.name)


@rule("pow")
def square_by_multiplying(ctx, node):
    """x ** 2 is x * x: one multiply per element instead of a call to pow."""
    if ctx.constant(node.inputs[1]) == 2.0:
        x = node.inputs[0]
        if x.type == node.output.type:
            return ctx.emit("mul", (x, x), {}, node, node.output.name)
    return None


BROADCASTING = ("add", "sub", "mul", "div")


@rule(*BROADCASTING)
def broadcast_implicitly(ctx, node):
    """An operand made bigger by broadcast_like, or by an unsqueeze of leading axes, only for an
    elementwise op that broadcasts anyway: use the smaller value and let the op broadcast."""
    out = node.output
    for position, operand in enumerate(node.inputs):
        producer = ctx.defined_by(operand, "broadcast_like", "unsqueeze")
        if producer is None:
            continue
        if producer.op == "unsqueeze" and not _leading(producer.attrs["axes"], operand.type.rank):
            continue  # implicit broadcasting adds leading axes only
        smaller = producer.inputs[0]
        inputs = list(node.inputs)
        inputs[position] = smaller
        try:
            shape = broadcast_shapes(*(v.type.shape for v in inputs))
        except OpTypeError:
            continue
        if shape == out.type.shape and smaller.type.dtype == out.type.dtype:
            return ctx.emit(node.op, inputs, node.attrs, node, out.name)
    return None


def _leading(axes, rank: int) -> bool:
    return sorted(a % rank for a in axes) == list(range(len(axes)))


@rule("mul")
def merge_scalar_factors(ctx, node):
    """c1 * (c2 * x) = (c1 * c2) * x for scalar constants c1, c2."""
    for outer, inner in (node.inputs, reversed(node.inputs)):
        c1 = ctx.constant(outer)
        inner_node = ctx.defined_by(inner, "mul")
        if c1 is None or inner_node is None:
            continue
        for factor, rest in (inner_node.inputs, reversed(inner_node.inputs)):
            c2 = ctx.constant(factor)
            if c2 is not None and rest.type == node.output.type:
                product = ctx.emit("constant", (), {"value": c1 * c2,
                                                    "dtype": outer.type.dtype}, node,
                                   f"{node.output.name}.scale")
                return ctx.emit("mul", (product, rest), {}, node, node.output.name)
    return None


@rule("transpose")
def transpose_of_matmul(ctx, node):
    """(A B)^T = B^T A^T: a product of views, and a contiguous result instead of a view."""
    rank = node.inputs[0].type.rank
    if rank < 2 or node.attrs["perm"] != tuple(range(rank - 2)) + (rank - 1, rank - 2):
        return None
    product = ctx.defined_by(node.inputs[0], "matmul")
    if product is None:
        return None
    a, b = product.inputs
    if a.type.rank != rank or b.type.rank != rank:
        return None
    perm, name = node.attrs["perm"], node.output.name
    b_t = _transposed(ctx, b, perm, node, f"{name}.lhs")
    a_t = _transposed(ctx, a, perm, node, f"{name}.rhs")
    return ctx.emit("matmul", (b_t, a_t), {}, node, name)


@rule()
def fold_scalar_constants(ctx, node):
    """An elementwise op of scalar constants is a constant (evaluated by the given kernels)."""
    if ctx.evaluate is None or not node.inputs:  # a constant has none
        return None
    out = node.output
    if out.type.rank != 0 or out.type.dtype not in ("f32", "f64"):
        return None
    values = [ctx.constant(v) for v in node.inputs]
    if any(v is None for v in values) or any(v.type.dtype != out.type.dtype for v in node.inputs):
        return None
    result = float(ctx.evaluate(node, values))
    if not math.isfinite(result):
        return None
    return ctx.emit("constant", (), {"value": result, "dtype": out.type.dtype}, node, out.name)


def simplify(graph: Graph, evaluate=None) -> tuple[Graph, bool]:
    """Apply RULES until none applies (a rule's output may enable another rule);
    `evaluate(node, scalars)` enables constant folding."""
    return to_fixed_point(lambda g: simplify_once(g, evaluate), graph)


def simplify_once(graph: Graph, evaluate=None) -> tuple[Graph, bool]:
    """Apply RULES to every node once, in order."""
    return apply_rules(graph, RULES, evaluate)


def apply_rules(graph: Graph, rules, evaluate=None) -> tuple[Graph, bool]:
    """Rebuild `graph`, replacing each node's output by the first rule's replacement, if any.
    A rule with `ops` (see `rule`) is tried on those ops' nodes only."""
    rewriter = Rewriter(graph)
    ctx = RuleContext(rewriter, evaluate)
    by_op: dict[str, list] = {}
    for node in graph.nodes:
        node = rewriter.remap(node)
        if "body" in node.attrs or len(node.outputs) != 1:  # a scan: rules rewrite plain ops
            rewriter.keep(node)
            continue
        candidates = by_op.get(node.op)
        if candidates is None:
            candidates = by_op[node.op] = [
                r for r in rules if getattr(r, "ops", None) is None or node.op in r.ops]
        replacement = None
        for candidate in candidates:
            replacement = candidate(ctx, node)
            if replacement is not None:
                break
        if replacement is None or not rewriter.can_replace(node.output, replacement):
            rewriter.keep(node)
            continue
        rewriter.replace(node.output, replacement)
    return rewriter.finish()
