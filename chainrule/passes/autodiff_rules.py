"""Derivative rules: for each differentiable op, its vector-Jacobian product written as IR.

A rule receives a `Backward` context for one forward node and the cotangent of its output, and
returns one cotangent per input (None where an input gets no gradient). Rules build ordinary
IR nodes through the context, so the backward graph is plain IR that every backend runs.
Rules emit only ops that have rules themselves (or carry no gradient), so a backward graph can
be differentiated again.

Where a function has no derivative (ties of max/min, the kinks of abs, relu and clip) the rules
pick a subgradient: max/min reductions and maximum/minimum split the cotangent evenly between
tied operands; max pooling gives each window's cotangent to the first of its tied maxima in
row-major order; abs has slope 0 at 0, relu 0, clip 1 at its bounds.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

from ..ir import Graph, GraphBuilder, Node, Value, dims, grid_sampling
from ..ir.ops import GELU_CUBIC, GELU_SCALE, rule_table
from ..ir.shapes import TO_END, TO_START, compose_perms, is_identity_perm, normalize_axes

VJP_RULES, vjp = rule_table()


class Backward:
    """Emits the backward nodes for one forward node, tagged with that node's location.
    `reverse_part(builder, graph, seeds, wrt, prefix)` is autodiff's own walk over a graph's
    nodes, which a rule may run over a composition it emits (`through_composition`)."""

    def __init__(self, builder: GraphBuilder, node: Node, name_hint: str, active: set,
                 reverse_part: Callable):
        self.builder = builder
        self.node = node
        self.name_hint = name_hint
        self.active = active
        self.reverse_part = reverse_part

    def wants(self, value: Value) -> bool:
        """Whether `value` needs a cotangent; rules skip the work for inputs that do not."""
        return value in self.active

    def emit(self, op, *inputs, **attrs) -> Value:
        return self.builder.emit(op, inputs, attrs, loc=self.node.loc,
                                 name=f"{self.name_hint}.{op}")

    def constant(self, value, like: Value) -> Value:
        return self.builder.constant(value, like.type.dtype, loc=self.node.loc,
                                     name=f"{self.name_hint}.const")

    def transpose(self, value: Value, perm) -> Value:
        """transpose(value, perm), reusing the original when value is itself its inverse."""
        producer = self.builder.graph_producer(value)
        if producer is not None and producer.op == "transpose":
            if is_identity_perm(compose_perms(producer.attrs["perm"], perm)):
                return producer.inputs[0]
        return self.emit("transpose", value, perm=perm)

    def swap_last_two(self, value: Value) -> Value:
        rank = value.type.rank
        return self.transpose(value, tuple(range(rank - 2)) + (rank - 1, rank - 2))

    def keep_reduced_axes(self, value: Value, x: Value, axes, keepdims: bool) -> Value:
        """A reduction's output (or cotangent) with the reduced axes of `x` back as size 1."""
        if keepdims or not x.type.rank:
            return value
        return self.emit("unsqueeze", value, axes=normalize_axes(axes, x.type.rank))

    def through_composition(self, compose, cotangent: Value, *inputs: Value) -> tuple:
        """The cotangents of `inputs` (None for those not wanted) for an op whose value is
        `compose(self, *inputs)`, a composition of ops that have rules: the composition is
        emitted here and reversed through their rules, as autodiff reverses any graph."""
        start = len(self.builder.graph.nodes)
        composed = compose(self, *inputs)
        view = Graph(f"{self.node.op}.composed", list(inputs), [],
                     self.builder.graph.nodes[start:])
        wanted = [value for value in inputs if self.wants(value)]
        grads = self.reverse_part(self.builder, view, [(composed, cotangent)], wanted,
                                  f"{self.name_hint}.")
        return tuple(grads[value.name] if value in wanted else None for value in inputs)

    def zeros_like(self, value: Value) -> Value:
        return self.emit("broadcast_like", self.constant(0.0, value), value)

    def unbroadcast(self, cotangent: Value, target: Value) -> Value:
        """Sum a broadcast result's cotangent back to the shape of the operand `target`."""
        shape, target_shape = cotangent.type.shape, target.type.shape
        leading = len(shape) - len(target_shape)
        if leading > 0:
            cotangent = self.emit("sum", cotangent, axes=tuple(range(leading)), keepdims=False)
        stretched = tuple(i for i, (d, t) in enumerate(zip(cotangent.type.shape, target_shape))
                          if t == 1 and d != 1)
        if stretched:
            cotangent = self.emit("sum", cotangent, axes=stretched, keepdims=True)
        return cotangent


# ---- elementwise ------------------------------------------------------------------------------

@vjp("add")
def _add(bw, g, a, b, out):
    return bw.unbroadcast(g, a), bw.unbroadcast(g, b)


@vjp("sub")
def _sub(bw, g, a, b, out):
    grad_b = bw.unbroadcast(bw.emit("neg", g), b) if bw.wants(b) else None
    return bw.unbroadcast(g, a), grad_b


@vjp("mul")
def _mul(bw, g, a, b, out):
    grad_a = bw.unbroadcast(bw.emit("mul", g, b), a) if bw.wants(a) else None
    grad_b = bw.unbroadcast(bw.emit("mul", g, a), b) if bw.wants(b) else None
    return grad_a, grad_b


@vjp("div")
def _div(bw, g, a, b, out):
    grad_a = bw.emit("div", g, b)
    grad_b = bw.emit("neg", bw.emit("mul", grad_a, out)) if bw.wants(b) else None
    return bw.unbroadcast(grad_a, a), grad_b and bw.unbroadcast(grad_b, b)


@vjp("pow")
def _pow(bw, g, a, b, out):
    grad_a = _pow_base(bw, g, a, b) if bw.wants(a) else None
    grad_b = None
    if bw.wants(b):
        grad_b = bw.unbroadcast(bw.emit("mul", g, bw.emit("mul", out, bw.emit("log", a))), b)
    return grad_a, grad_b


def _pow_base(bw, g, a, b):
    exponent_node = bw.builder.graph_producer(b)
    if exponent_node is not None and exponent_node.op == "constant":
        power = exponent_node.attrs["value"] - 1.0
        lowered = a if power == 1.0 else bw.emit("pow", a, bw.constant(power, a))
    else:
        lowered = bw.emit("pow", a, bw.emit("sub", b, bw.constant(1.0, b)))
    return bw.unbroadcast(bw.emit("mul", g, bw.emit("mul", b, lowered)), a)


@vjp("neg")
def _neg(bw, g, x, out):
    return (bw.emit("neg", g),)


@vjp("exp")
def _exp(bw, g, x, out):
    return (bw.emit("mul", g, out),)


@vjp("log")
def _log(bw, g, x, out):
    return (bw.emit("div", g, x),)


@vjp("relu")
def _relu(bw, g, x, out):
    mask = bw.emit("cast", bw.emit("greater", x, bw.constant(0.0, x)), dtype=x.type.dtype)
    return (bw.emit("mul", g, mask),)


@vjp("sigmoid")
def _sigmoid(bw, g, x, out):
    slope = bw.emit("mul", out, bw.emit("sub", bw.constant(1.0, out), out))
    return (bw.emit("mul", g, slope),)


@vjp("tanh")
def _tanh(bw, g, x, out):
    slope = bw.emit("sub", bw.constant(1.0, out), bw.emit("mul", out, out))
    return (bw.emit("mul", g, slope),)


@vjp("sin")
def _sin(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("cos", x)),)


@vjp("cos")
def _cos(bw, g, x, out):
    return (bw.emit("neg", bw.emit("mul", g, bw.emit("sin", x))),)


@vjp("tan")
def _tan(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("add", bw.constant(1.0, out), bw.emit("mul", out, out))),)


def _one_minus_square(bw, x):
    return bw.emit("sub", bw.constant(1.0, x), bw.emit("mul", x, x))


@vjp("asin")
def _asin(bw, g, x, out):
    return (bw.emit("div", g, bw.emit("sqrt", _one_minus_square(bw, x))),)


@vjp("acos")
def _acos(bw, g, x, out):
    return (bw.emit("neg", bw.emit("div", g, bw.emit("sqrt", _one_minus_square(bw, x)))),)


@vjp("atan")
def _atan(bw, g, x, out):
    return (bw.emit("div", g, bw.emit("add", bw.constant(1.0, x), bw.emit("mul", x, x))),)


@vjp("sinh")
def _sinh(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("cosh", x)),)


@vjp("cosh")
def _cosh(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("sinh", x)),)


@vjp("asinh")
def _asinh(bw, g, x, out):
    root = bw.emit("sqrt", bw.emit("add", bw.emit("mul", x, x), bw.constant(1.0, x)))
    return (bw.emit("div", g, root),)


@vjp("acosh")
def _acosh(bw, g, x, out):
    # √((x − 1)(x + 1)) rather than √(x² − 1): exact where x is near 1.
    root = bw.emit("sqrt", bw.emit("mul", bw.emit("sub", x, bw.constant(1.0, x)),
                                   bw.emit("add", x, bw.constant(1.0, x))))
    return (bw.emit("div", g, root),)


@vjp("atanh")
def _atanh(bw, g, x, out):
    return (bw.emit("div", g, _one_minus_square(bw, x)),)


@vjp("log1p")
def _log1p(bw, g, x, out):
    return (bw.emit("div", g, bw.emit("add", bw.constant(1.0, x), x)),)


@vjp("sqrt")
def _sqrt(bw, g, x, out):
    return (bw.emit("div", g, bw.emit("mul", out, bw.constant(2.0, out))),)


@vjp("abs")
def _abs(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("sign", x)),)


@vjp("leaky_relu")
def _leaky_relu(bw, g, x, out, alpha):
    slope = bw.emit("where", bw.emit("greater", x, bw.constant(0.0, x)), bw.constant(1.0, x),
                    bw.constant(alpha, x))
    return (bw.emit("mul", g, slope),)


@vjp("gelu")
def _gelu(bw, g, x, out):
    # gelu(x) = x/2 (1 + tanh(u)), u = c (x + k x^3):
    # gelu'(x) = (1 + tanh(u))/2 + x/2 (1 - tanh(u)^2) c (1 + 3k x^2)
    def const(value):
        return bw.constant(value, x)
    square = bw.emit("mul", x, x)
    inner = bw.emit("mul", const(GELU_SCALE),
                    bw.emit("mul", x, bw.emit("add", const(1.0),
                                              bw.emit("mul", const(GELU_CUBIC), square))))
    t = bw.emit("tanh", inner)
    inner_slope = bw.emit("mul", const(GELU_SCALE),
                          bw.emit("add", const(1.0), bw.emit("mul", const(3 * GELU_CUBIC), square)))
    tanh_slope = bw.emit("sub", const(1.0), bw.emit("mul", t, t))
    half_x = bw.emit("mul", const(0.5), x)
    slope = bw.emit("add", bw.emit("mul", const(0.5), bw.emit("add", const(1.0), t)),
                    bw.emit("mul", half_x, bw.emit("mul", tanh_slope, inner_slope)))
    return (bw.emit("mul", g, slope),)


@vjp("softplus")
def _softplus(bw, g, x, out):
    return (bw.emit("mul", g, bw.emit("sigmoid", x)),)


@vjp("erf")
def _erf(bw, g, x, out):
    # erf'(x) = 2/sqrt(pi) exp(-x^2)
    decay = bw.emit("exp", bw.emit("neg", bw.emit("mul", x, x)))
    return (bw.emit("mul", g, bw.emit("mul", bw.constant(2.0 / math.sqrt(math.pi), x), decay)),)


@vjp("clip")
def _clip(bw, g, x, out, lo, hi):
    inside = bw.emit("logical_and", bw.emit("greater_equal", x, bw.constant(lo, x)),
                     bw.emit("less_equal", x, bw.constant(hi, x)))
    return (bw.emit("mul", g, bw.emit("cast", inside, dtype=x.type.dtype)),)


@vjp("fake_quantize")
def _fake_quantize(bw, g, x, scale, zero_point, out, lo, hi):
    """The straight-through estimator: round's derivative taken as 1 where the quantized value
    is within [lo, hi] before clipping (so the clip's is 0 outside it). The scale and zero
    point are constants of the model: no gradient."""
    shifted = bw.emit("add", bw.emit("div", x, scale), zero_point)
    inside = bw.emit("logical_and", bw.emit("greater_equal", shifted, bw.constant(lo, x)),
                     bw.emit("less_equal", shifted, bw.constant(hi, x)))
    return (bw.emit("mul", g, bw.emit("cast", inside, dtype=x.type.dtype)), None, None)


@vjp("maximum", "minimum")
def _extremum(bw, g, a, b, out):
    # The share of `a` is 1 where it wins, 0 where it loses, 1/2 on a tie: (1 +- sign(a - b))/2.
    direction = bw.emit("sign", bw.emit("sub", a, b))
    if bw.node.op == "minimum":
        direction = bw.emit("neg", direction)
    half = bw.constant(0.5, g)
    grad_a = grad_b = None
    if bw.wants(a):
        share_a = bw.emit("mul", half, bw.emit("add", bw.constant(1.0, g), direction))
        grad_a = bw.unbroadcast(bw.emit("mul", g, share_a), a)
    if bw.wants(b):
        share_b = bw.emit("mul", half, bw.emit("sub", bw.constant(1.0, g), direction))
        grad_b = bw.unbroadcast(bw.emit("mul", g, share_b), b)
    return grad_a, grad_b


@vjp("where")
def _where(bw, g, cond, a, b, out):
    zero = bw.constant(0.0, g)
    grad_a = bw.unbroadcast(bw.emit("where", cond, g, zero), a) if bw.wants(a) else None
    grad_b = bw.unbroadcast(bw.emit("where", cond, zero, g), b) if bw.wants(b) else None
    return None, grad_a, grad_b


@vjp("cast")
def _cast(bw, g, x, out, dtype, saturate):
    return (bw.emit("cast", g, dtype=x.type.dtype),)


# ---- linear algebra and shape -----------------------------------------------------------------

@vjp("matmul")
def _matmul(bw, g, a, b, out):
    if a.type.rank < 2 or b.type.rank < 2:
        # Promote 1-D operands to matrices as numpy does, then drop the added axes again.
        a2 = bw.emit("unsqueeze", a, axes=(0,)) if a.type.rank == 1 else a
        b2 = bw.emit("unsqueeze", b, axes=(1,)) if b.type.rank == 1 else b
        g2 = g
        if a.type.rank == 1:
            g2 = bw.emit("unsqueeze", g2, axes=(g2.type.rank - (0 if b.type.rank == 1 else 1),))
        if b.type.rank == 1:
            g2 = bw.emit("unsqueeze", g2, axes=(g2.type.rank,))
        grad_a2 = bw.emit("matmul", g2, bw.swap_last_two(b2))
        grad_b2 = bw.emit("matmul", bw.swap_last_two(a2), g2)
        grad_a = bw.unbroadcast(grad_a2, a2)
        grad_b = bw.unbroadcast(grad_b2, b2)
        if a.type.rank == 1:
            grad_a = bw.emit("sum", grad_a, axes=(0,), keepdims=False)
        if b.type.rank == 1:
            grad_b = bw.emit("sum", grad_b, axes=(1,), keepdims=False)
        return grad_a, grad_b
    grad_a = grad_b = None
    if bw.wants(a):
        grad_a = bw.unbroadcast(bw.emit("matmul", g, bw.swap_last_two(b)), a)
    if bw.wants(b):
        grad_b = bw.unbroadcast(bw.emit("matmul", bw.swap_last_two(a), g), b)
    return grad_a, grad_b


@vjp("det")
def _det(bw, g, x, out):
    # d det(x) / dx is x's cofactor matrix (det(x) inv(x)ᵀ where x is invertible, and still
    # defined where it is not): each cofactor the signed det of the minor without its row and
    # column.
    n = x.type.shape[-1]
    spread = bw.emit("unsqueeze", g, axes=(-2, -1))
    if n == 1:
        return (bw.emit("broadcast_like", spread, x),)
    positions, skipped = bw.emit("arange", n=n - 1), bw.emit("arange", n=n)
    past_skipped = bw.emit("greater_equal", bw.emit("unsqueeze", positions, axes=(0,)),
                           bw.emit("unsqueeze", skipped, axes=(1,)))
    without = bw.emit("add", positions, bw.emit("cast", past_skipped, dtype="i64"))  # [n, n-1]
    minors = bw.emit("take", bw.emit("take", x, without, axis=-2), without, axis=-1)
    leading = x.type.rank - 2  # minors is [..., row, r, column, c]
    minors = bw.transpose(minors, (*range(leading), leading, leading + 2, leading + 1,
                                   leading + 3))
    parity = bw.emit("cast", bw.emit("add", bw.emit("unsqueeze", skipped, axes=(1,)),
                                     bw.emit("unsqueeze", skipped, axes=(0,))),
                     dtype=x.type.dtype)
    half = bw.emit("mul", parity, bw.constant(0.5, x))
    odd = bw.emit("sub", half, bw.emit("floor", half))  # 0, or 1/2 where row + column is odd
    sign = bw.emit("sub", bw.constant(1.0, x), bw.emit("mul", bw.constant(4.0, x), odd))
    return (bw.emit("mul", spread, bw.emit("mul", sign, bw.emit("det", minors))),)


@vjp("transpose")
def _transpose(bw, g, x, out, perm):
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return (bw.transpose(g, inverse),)


def _spread(bw, g, x, axes, keepdims):
    """The cotangent of a reduction, broadcast back over the reduced axes."""
    return bw.emit("broadcast_like", bw.keep_reduced_axes(g, x, axes, keepdims), x)


@vjp("sum")
def _sum(bw, g, x, out, axes, keepdims):
    return (_spread(bw, g, x, axes, keepdims),)


@vjp("mean")
def _mean(bw, g, x, out, axes, keepdims):
    count = bw.emit("numel", x, axes=axes, dtype=x.type.dtype)
    # Divided before it is spread: the division reads the reduced cotangent, not x's size, and
    # the spread stays a broadcast that whatever consumes it reads in its own memory order.
    return (_spread(bw, bw.emit("div", g, count), x, axes, keepdims),)


@vjp("max", "min")
def _extreme(bw, g, x, out, axes, keepdims):
    # Every position holding the extreme value gets an equal share of the cotangent.
    hits = bw.emit("cast", bw.emit("equal", x, bw.keep_reduced_axes(out, x, axes, keepdims)),
                   dtype=x.type.dtype)
    share = bw.emit("div", hits, bw.emit("sum", hits, axes=axes, keepdims=True))
    return (bw.emit("mul", bw.keep_reduced_axes(g, x, axes, keepdims), share),)


@vjp("prod")
def _prod(bw, g, x, out, axes, keepdims):
    """g times the product of the other elements: the product of the nonzero ones divided by
    x's own (1 for a zero), or 0 where another element is zero. Exact at zeros, where out/x
    is not."""
    zero = bw.constant(0.0, x)
    is_zero = bw.emit("equal", x, zero)
    nonzero = bw.emit("where", is_zero, bw.constant(1.0, x), x)
    nonzero_product = bw.emit("prod", nonzero, axes=axes, keepdims=True)
    zero_count = bw.emit("cast", is_zero, dtype=x.type.dtype)
    zeros_elsewhere = bw.emit("sub", bw.emit("sum", zero_count, axes=axes, keepdims=True),
                              zero_count)
    others = bw.emit("where", bw.emit("equal", zeros_elsewhere, zero),
                     bw.emit("div", nonzero_product, nonzero), zero)
    return (bw.emit("mul", bw.keep_reduced_axes(g, x, axes, keepdims), others),)


def _reversed_along(bw, value, axis):
    return bw.emit("slice", value, starts=(-1,), ends=(TO_START,), axes=(axis,), steps=(-1,))


def _sums_from_the_end(bw, value, axis):
    """Each element's sum with every one after it along `axis`."""
    return _reversed_along(bw, bw.emit("cumsum", _reversed_along(bw, value, axis), axis=axis),
                           axis)


@vjp("cumsum")
def _cumsum(bw, g, x, out, axis):
    # Element i reaches every running sum from i on: the running sums of g taken backwards.
    return (_sums_from_the_end(bw, g, axis),)


@vjp("cumprod")
def _cumprod(bw, g, x, out, axis):
    # Element i scales every running product from i on, each of which it divides exactly
    # where it is not 0 (a 0 in x gives a nan there, as prod's rule avoids at the cost of a
    # count of zeros; running products would need one per position).
    return (bw.emit("div", _sums_from_the_end(bw, bw.emit("mul", g, out), axis), x),)


@vjp("logsumexp")
def _logsumexp(bw, g, x, out, axes, keepdims):
    weights = bw.emit("exp", bw.emit("sub", x, bw.keep_reduced_axes(out, x, axes, keepdims)))
    return (bw.emit("mul", bw.keep_reduced_axes(g, x, axes, keepdims), weights),)


@vjp("broadcast_like")
def _broadcast_like(bw, g, x, like, out):
    return bw.unbroadcast(g, x), None


@vjp("fill")
def _fill(bw, g, value, out, shape):
    return (bw.emit("sum", g) if bw.wants(value) else None,)


@vjp("broadcast_to")
def _broadcast_to(bw, g, x, out, shape):
    return (bw.unbroadcast(g, x),)


@vjp("reshape")
def _reshape(bw, g, x, out, shape):
    return (bw.emit("reshape_like", g, x),)


@vjp("reshape_like")
def _reshape_like(bw, g, x, like, out):
    return bw.emit("reshape_like", g, x), None


@vjp("unsqueeze")
def _unsqueeze(bw, g, x, out, axes):
    return (bw.emit("sum", g, axes=normalize_axes(axes, out.type.rank), keepdims=False),)


@vjp("squeeze")
def _squeeze(bw, g, x, out, axes):
    return (bw.emit("unsqueeze", g, axes=normalize_axes(axes, x.type.rank)),)


@vjp("concat")
def _concat(bw, g, *parts_and_out, axis):
    parts = parts_and_out[:-1]
    return tuple(bw.emit("unconcat", g, *parts, axis=axis, index=i) if bw.wants(part) else None
                 for i, part in enumerate(parts))


@vjp("unconcat")
def _unconcat(bw, g, whole, *parts_and_out, axis, index):
    parts = parts_and_out[:-1]
    pieces = [g if i == index else bw.zeros_like(part) for i, part in enumerate(parts)]
    return (bw.emit("concat", *pieces, axis=axis),) + (None,) * len(parts)


@vjp("slice")
def _slice(bw, g, x, out, **window):
    return (bw.emit("unslice", g, x, **window),)


@vjp("unslice")
def _unslice(bw, g, sliced, like, out, **window):
    return bw.emit("slice", g, **window), None


# Each gather reads at indices and its scatter adds at them: the two are each other's transpose.
SCATTER_OF_GATHER = {"take": "scatter_add", "gather_elements": "scatter_elements_add"}
GATHER_OF_SCATTER = {scatter: gather for gather, scatter in SCATTER_OF_GATHER.items()}


@vjp(*SCATTER_OF_GATHER)
def _gather(bw, g, x, indices, out, axis):
    return bw.emit(SCATTER_OF_GATHER[bw.node.op], g, indices, x, axis=axis), None


@vjp(*GATHER_OF_SCATTER)
def _scatter(bw, g, updates, indices, like, out, axis):
    return bw.emit(GATHER_OF_SCATTER[bw.node.op], g, indices, axis=axis), None, None


# ---- nn ---------------------------------------------------------------------------------------

@vjp("softmax")
def _softmax(bw, g, x, out, axis):
    dot = bw.emit("sum", bw.emit("mul", g, out), axes=(axis,), keepdims=True)
    return (bw.emit("mul", out, bw.emit("sub", g, dot)),)


@vjp("log_softmax")
def _log_softmax(bw, g, x, out, axis):
    total = bw.emit("sum", g, axes=(axis,), keepdims=True)
    return (bw.emit("sub", g, bw.emit("mul", bw.emit("exp", out), total)),)


@vjp("cross_entropy")
def _cross_entropy(bw, g, logits, labels, out):
    # d mean(-log softmax(o)[y]) / d o = (softmax(o) - onehot(y)) / batch
    probabilities = bw.emit("softmax", logits, axis=-1)
    onehot = bw.emit("one_hot", labels, depth=logits.type.shape[-1], dtype=logits.type.dtype)
    batch = bw.emit("numel", labels, axes=None, dtype=logits.type.dtype)
    scale = bw.emit("div", g, batch)
    return bw.emit("mul", bw.emit("sub", probabilities, onehot), scale), None


@vjp("mse")
def _mse(bw, g, pred, target, out):
    diff = bw.emit("sub", pred, target)
    count = bw.emit("numel", diff, axes=None, dtype=diff.type.dtype)
    scale = bw.emit("div", bw.emit("mul", g, bw.constant(2.0, g)), count)
    grad = bw.emit("mul", diff, scale)
    grad_target = bw.unbroadcast(bw.emit("neg", grad), target) if bw.wants(target) else None
    return bw.unbroadcast(grad, pred), grad_target


@vjp("train_or_eval")
def _train_or_eval(bw, g, train, evaluate, out):
    zero = bw.emit("broadcast_like", bw.constant(0.0, g), g)
    return (bw.emit("train_or_eval", g, zero) if bw.wants(train) else None,
            bw.emit("train_or_eval", zero, g) if bw.wants(evaluate) else None)


# ---- convolution and pooling ------------------------------------------------------------------
# conv, conv_transpose and conv_weight_grad are the three faces of <conv(x, w), g>: its
# derivative in x is conv_transpose(g, w) and in w conv_weight_grad(x, g), so the derivatives of
# each are the other two, and derivatives of any order need no other op.

def _transposed_like(bw, g, w, x, kernel, window):
    """conv_transpose(g, w) with x's spatial sizes: its output padding is the rows past the
    last window of a convolution over x, which no window reads. Over a symbolic size with a
    stride that count depends on the size, and an output padding is a number (in ONNX too):
    the output is padded by as many rows as there can be (stride - 1), all zeros, and sliced
    to x's size."""
    rank, pads = len(kernel), window["pads"]
    padding = tuple(dims.mod(dims.add(n, b + e - d * (k - 1) - 1), s) for n, k, s, b, e, d in zip(
        x.type.shape[2:], kernel, window["strides"], pads[:rank], pads[rank:],
        window["dilations"], strict=True))
    symbolic = [axis for axis, p in enumerate(padding) if not isinstance(p, int)]
    most = tuple(s - 1 if axis in symbolic else p
                 for axis, (p, s) in enumerate(zip(padding, window["strides"], strict=True)))
    grad = bw.emit("conv_transpose", g, w, output_padding=most, **window)
    if not symbolic:
        return grad
    return bw.emit("slice", grad, starts=(0,) * len(symbolic),
                   ends=tuple(x.type.shape[2 + axis] for axis in symbolic),
                   axes=tuple(2 + axis for axis in symbolic), steps=(1,) * len(symbolic))


@vjp("conv")
def _conv(bw, g, x, w, out, **window):
    kernel = w.type.shape[2:]
    grad_x = grad_w = None
    if bw.wants(x):
        grad_x = _transposed_like(bw, g, w, x, kernel, window)
    if bw.wants(w):
        grad_w = bw.emit("conv_weight_grad", x, g, kernel=kernel, **window)
    return grad_x, grad_w


@vjp("conv_transpose")
def _conv_transpose(bw, g, x, w, out, output_padding, **window):
    grad_x = bw.emit("conv", g, w, **window) if bw.wants(x) else None
    grad_w = bw.emit("conv_weight_grad", g, x, kernel=w.type.shape[2:], **window) \
        if bw.wants(w) else None
    return grad_x, grad_w


@vjp("conv_weight_grad")
def _conv_weight_grad(bw, g, x, output_grad, out, kernel, **window):
    grad_x = grad_output = None
    if bw.wants(x):
        grad_x = _transposed_like(bw, output_grad, g, x, kernel, window)
    if bw.wants(output_grad):
        grad_output = bw.emit("conv", x, g, **window)
    return grad_x, grad_output


# The gradient of max pooling goes to the first maximum of each window in row-major order;
# max_unpool and max_pool_take read the positions off x itself, so they carry no gradient to x
# (the positions are piecewise constant in x).
@vjp("max_pool")
def _max_pool(bw, g, x, out, **window):
    return (bw.emit("max_unpool", g, x, **window),)


@vjp("max_unpool")
def _max_unpool(bw, g, output_grad, x, out, **window):
    return bw.emit("max_pool_take", g, x, **window), None


@vjp("max_pool_take")
def _max_pool_take(bw, g, values, x, out, **window):
    return bw.emit("max_unpool", g, x, **window), None


@vjp("avg_pool")
def _avg_pool(bw, g, x, out, **window):
    return (bw.emit("avg_unpool", g, x, **window),)


@vjp("avg_unpool")
def _avg_unpool(bw, g, output_grad, like, out, **window):
    return bw.emit("avg_pool", g, **window), None


@vjp("grid_sample")
def _grid_sample(bw, g, x, grid, out, **options):
    # Piecewise a polynomial in the grid, so its composition's rules give both cotangents.
    return bw.through_composition(functools.partial(grid_sampling.sample, **options), g, x, grid)


@vjp("pad")
def _pad(bw, g, x, out, pads, value):
    rank = x.type.rank
    axes = tuple(axis for axis in range(rank) if pads[axis] or pads[rank + axis])
    if not axes:
        return (g,)
    return (bw.emit("slice", g, starts=tuple(pads[axis] for axis in axes),
                    ends=tuple(-pads[rank + axis] or TO_END for axis in axes), axes=axes,
                    steps=(1,) * len(axes)),)
