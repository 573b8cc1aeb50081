"""GEMM epilogues (-O2, after fuse): an update `beta * W + alpha * (A @ B)` becomes one gemm_acc.

A weight's gradient is a matrix product, and everything the optimizer then does with it until the
next weight (weight decay, the learning rate, the subtraction) is linear in the weight and the
product:  W - lr * (lam * W + A @ B)  =  (1 - lr*lam) * W  +  (-lr) * (A @ B).
The numpy backend computes the right-hand side into W's buffer with two passes over W besides
the product (alpha scales the product's smallest operand), where the op-by-op form makes four
passes over W and a temporary; onnxruntime sums C into its Gemm. The same holds for a momentum
buffer (mu * v + A @ B) and for a gradient with weight decay (A @ B + lam * W).

The pass writes each chain as a linear form, {term: coefficient}, whose terms are arrays and
matrix products and whose coefficients are sums of products of scalars, and rewrites a chain
whose form has exactly one product and one array into gemm_acc. Only values read once, inside
the chain, are looked through, so nothing is computed twice. A chain folded inside a longer one
that folds too leaves a dead gemm_acc, which dce removes: the longer one reads the shorter one's
form, not its alpha and beta.
"""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from ..ir import Graph, Value
from .simplify import apply_rules

# A coefficient is a sum of monomials; a monomial is (number, scalar Values multiplied).
ONE = ((1.0, ()),)
CHAIN_OPS = ("add", "sub", "mul", "neg")
PRODUCT_OPS = ("matmul", "gemm", "gemm_acc")
LINEAR_OPS = CHAIN_OPS + PRODUCT_OPS


class Product(NamedTuple):
    """The term op(a) @ op(b)."""

    a: Value
    b: Value
    trans_a: bool
    trans_b: bool


def _scaled(form: dict, monomials) -> dict:
    return {term: tuple((k1 * k2, f1 + f2) for k1, f1 in coefficient for k2, f2 in monomials)
            for term, coefficient in form.items()}


def _merged(first: dict, second: dict) -> dict:
    merged = dict(first)
    for term, coefficient in second.items():
        merged[term] = merged.get(term, ()) + coefficient
    return merged


class LinearForms:
    """Reads chains of add, sub, neg, scalar mul and matrix products as linear forms."""

    def __init__(self, ctx, uses: Counter, forms: dict):
        self.ctx = ctx
        self.uses = uses
        self.forms = forms  # value -> the form of a chain node seen before, folded or not

    def of(self, value: Value) -> dict:
        """The form of a value read once, inside the chain; any other value is a term."""
        node = self.ctx.producers.get(value)
        if (node is None or node.op not in LINEAR_OPS or self.uses[value] != 1
                or value.type.rank != 2):
            return {value: ONE}
        form = self.forms.get(value) or self.of_node(node)
        # More than a product and an array cannot fold, however it goes on: the chain around
        # it may still fold with it as its array, and long sums stay linear in time.
        return form if len(form) <= 2 else {value: ONE}

    def of_node(self, node) -> dict:
        value = node.output
        if node.op == "gemm":
            return {Product(*node.inputs, **node.attrs): ONE}
        if node.op == "matmul":
            a, b = node.inputs
            return ({Product(a, b, False, False): ONE} if a.type.rank == b.type.rank == 2
                    else {value: ONE})
        if node.op == "gemm_acc":
            a, b, c, alpha, beta = node.inputs
            return {Product(a, b, **node.attrs): self.factor(alpha), c: self.factor(beta)}
        if any(v.type != value.type for v in node.inputs if v.type.rank > 0):
            return {value: ONE}  # a broadcast: not a linear form over whole arrays
        if node.op == "neg":
            return _scaled(self.of(node.inputs[0]), ((-1.0, ()),))
        first, second = node.inputs
        if node.op == "add":
            return _merged(self.of(first), self.of(second))
        if node.op == "sub":
            return _merged(self.of(first), _scaled(self.of(second), ((-1.0, ()),)))
        scalar, array = (first, second) if first.type.rank == 0 else (second, first)
        if scalar.type.rank != 0 or array.type.rank == 0:
            return {value: ONE}
        return _scaled(self.of(array), self.factor(scalar))

    def factor(self, scalar: Value) -> tuple:
        number = self.ctx.constant(scalar)
        return ((number, ()),) if number is not None else ((1.0, (scalar,)),)


def _coefficient(ctx, monomials, dtype: str, like, name: str, emitted: dict) -> Value:
    """The scalar nodes of a coefficient, like monomials summed first; a coefficient emitted
    before (every param's update has alpha = -lr) is reused."""
    summed: dict = {}
    for number, factors in monomials:
        key = tuple(sorted(factors, key=lambda v: v.name))  # a product in one order
        summed[key] = summed.get(key, 0.0) + number
    key = (dtype, frozenset(summed.items()))
    if key not in emitted:
        emitted[key] = _emit_coefficient(ctx, summed, dtype, like, name)
    return emitted[key]


def _emit_coefficient(ctx, summed: dict, dtype: str, like, name: str) -> Value:
    total = None
    for factors, number in summed.items():
        term = None
        for factor in factors:
            term = factor if term is None else ctx.emit("mul", (term, factor), {}, like, name)
        if term is None or number != 1.0:
            scale = ctx.emit("constant", (), {"value": number, "dtype": dtype}, like, name)
            term = scale if term is None else ctx.emit("mul", (scale, term), {}, like, name)
        total = term if total is None else ctx.emit("add", (total, term), {}, like, name)
    return total


def _epilogue_rule(uses: Counter, near_products: set):
    emitted, forms = {}, {}  # forms: each chain's once, however long the chain around it

    def gemm_epilogue(ctx, node):
        out = node.output
        if out not in near_products:
            return None
        form = forms[out] = LinearForms(ctx, uses, forms).of_node(node)
        products = [term for term in form if isinstance(term, Product)]
        arrays = [term for term in form if not isinstance(term, Product)]
        if len(products) != 1 or len(arrays) != 1 or arrays[0].type != out.type:
            return None
        product, array = products[0], arrays[0]
        dtype, name = out.type.dtype, out.name
        alpha = _coefficient(ctx, form[product], dtype, node, f"{name}.alpha", emitted)
        beta = _coefficient(ctx, form[array], dtype, node, f"{name}.beta", emitted)
        folded = ctx.emit("gemm_acc", (product.a, product.b, array, alpha, beta),
                          {"trans_a": product.trans_a, "trans_b": product.trans_b}, node, name)
        # The chains after this one read `folded` where they read `out`.
        forms[folded], uses[folded] = form, uses[out]
        return folded
    gemm_epilogue.ops = frozenset(CHAIN_OPS)
    return gemm_epilogue


def _near_products(graph: Graph, uses: Counter) -> set:
    """The chain nodes (on matrices) that read a matrix product, directly or through chain
    nodes read once: the only ones whose form can hold a product."""
    near, reaching = set(), set()  # reaching: products, and near nodes read once
    for node in graph.nodes:
        if len(node.outputs) != 1:
            continue
        out = node.output
        if node.op in PRODUCT_OPS and out.type.rank == 2:
            reaching.add(out)
        elif (node.op in CHAIN_OPS and out.type.rank == 2
              and any(v in reaching for v in node.inputs)):
            near.add(out)
            if uses[out] == 1:
                reaching.add(out)
    return near


def gemm_epilogue(graph: Graph) -> tuple[Graph, bool]:
    uses = Counter(v for node in graph.nodes for v in node.inputs)
    uses.update(graph.outputs)
    near = _near_products(graph, uses)
    if not near:
        return graph, False
    return apply_rules(graph, [_epilogue_rule(uses, near)])
