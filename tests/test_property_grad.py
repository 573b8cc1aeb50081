"""Random well-typed programs, written as DSL text, differentiated and checked against finite
differences in float64.

Hypothesis writes a model whose inputs are float64 tensors of a few small shapes, then a chain
of statements drawn from the op set: elementwise unary and binary ops with broadcasting,
maximum/minimum, matmul (batched and with vectors), transpose, sum/mean/max/min/logsumexp with
axes and keepdims, softmax/log_softmax, where on a comparison, concat and slicing, and values
scaled and shifted by literal-only expressions (`sqrt(2.0)`, `exp(-0.5)`, sometimes bound by a
`let`), which are weakly typed and so must come out float64 too. Each statement reads earlier
values or fresh inputs; the objective adds one scalar term per value that nothing else reads.
chainrule compiles the text, differentiates the objective with respect to every input, and
each gradient must match central finite differences; at -O2 the objective and gradients must
equal those at -O0 up to float rounding.

Finite differences estimate a derivative only where the function is smooth and finite, so:
- log, sqrt, division and pow get arguments bounded away from 0 by construction
  (`log(v * v + 0.5)`), and exp only sees tanh's output;
- each value's magnitude is bounded while the program is written, so nothing overflows;
- kinks and ties (relu, abs, leaky_relu and clip arguments, maximum/minimum operands, the
  extremes of max/min reductions, the two sides of the comparison a `where` selects on) are
  measured in a forward run, and a program with any of them within KINK_MARGIN is rejected
  (hypothesis draws another).

The suite runs 25 derandomized examples. To explore thousands of fresh programs locally:

    CHAINRULE_PROPERTY_EXAMPLES=5000 python -m pytest tests/test_property_grad.py

A failure prints the program (and its input seed) as a hypothesis note.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import chainrule
from chainrule.backends import get_backend
from support.numeric import assert_close, central_difference

EXAMPLES = int(os.environ.get("CHAINRULE_PROPERTY_EXAMPLES", "25"))
MAX_BOUND = 30.0      # no value of a program may exceed this magnitude (as estimated)
INPUT_BOUND = 2.0     # inputs are drawn uniformly from [-INPUT_BOUND, INPUT_BOUND]
KINK_MARGIN = 1e-3    # how far from a kink or tie every argument must stay
MAX_STATEMENTS = 10

# Dims shrink towards 2 (not 1), so even simple examples broadcast and reduce something.
DIM = st.sampled_from([2, 3, 1])
SHAPES = st.lists(DIM, max_size=3).map(tuple)


@dataclass(frozen=True)
class Val:
    name: str
    shape: tuple
    bound: float  # an upper bound on |value|, estimated while writing the program


# Unary templates: text -> (result bound from operand bound, kink points of the operand).
UNARY = {
    "tanh({0})": (lambda b: 1.0, ()),
    "sigmoid({0})": (lambda b: 1.0, ()),
    "exp(tanh({0}))": (lambda b: math.e, ()),
    "log({0} * {0} + 0.5)": (lambda b: max(math.log(b * b + 0.5), 1.0), ()),
    "sqrt({0} * {0} + 0.5)": (lambda b: b + 1.0, ()),
    "softplus({0})": (lambda b: b + 1.0, ()),
    "gelu({0})": (lambda b: b + 1.0, ()),
    "-{0}": (lambda b: b, ()),
    "{0} ** 2": (lambda b: b * b, ()),
    "{0} ** 3": (lambda b: b ** 3, ()),
    "relu({0})": (lambda b: b, (0.0,)),
    "abs({0})": (lambda b: b, (0.0,)),
    "leaky_relu({0}, alpha=0.2)": (lambda b: b, (0.0,)),
    "clip({0}, lo=-0.5, hi=0.7)": (lambda b: 0.7, (-0.5, 0.7)),
}
# Binary templates (operands broadcast): text -> (result bound, whether the operands may tie).
BINARY = {
    "{0} + {1}": (lambda a, b: a + b, False),
    "{0} - {1}": (lambda a, b: a + b, False),
    "{0} * {1}": (lambda a, b: a * b, False),
    "{0} / ({1} * {1} + 0.5)": (lambda a, b: 2 * a, False),
    "({0} * {0} + 0.5) ** tanh({1})": (lambda a, b: max(a * a + 0.5, 2.0), False),
    "maximum({0}, {1})": (lambda a, b: max(a, b), True),
    "minimum({0}, {1})": (lambda a, b: max(a, b), True),
}
# Literal-only expressions -> a bound on |value|.
LITERALS = {"sqrt(2.0)": 1.5, "exp(-0.5)": 0.7, "tanh(0.3)": 0.3, "(-sqrt(2.0) * exp(-1.0))": 0.6,
            "maximum(0.5, tanh(0.3)) / sqrt(3.0)": 0.3}
REDUCTIONS = ("sum", "mean", "max", "min", "logsumexp")
COMPARISONS = ("<", "<=", ">", ">=")
# Objective terms, one per value nothing else reads.
TERMS = ("mean({0} ** 2)", "mean({0})", "mean(tanh({0}))", "logsumexp({0})")


def broadcast(*shapes) -> tuple | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def matmul_shape(a: tuple, b: tuple) -> tuple | None:
    if not a or not b:
        return None
    try:
        return np.matmul(np.zeros(a), np.zeros(b)).shape
    except ValueError:
        return None


# ---- kinks: each returns the distance of a program's values from a kink or tie ----------------

def distance_to_points(name, points, values) -> float:
    return min(float(np.min(np.abs(values[name] - p), initial=np.inf)) for p in points)


def distance_between(a, b, values) -> float:
    return float(np.min(np.abs(values[a] - values[b]), initial=np.inf))


def extreme_gap(name, axes, values) -> float:
    """The smallest gap between the two largest and between the two smallest entries of each
    reduced group (max and min each have a kink where their extreme ties)."""
    array = values[name]
    axes = tuple(range(array.ndim)) if axes is None else tuple(a % array.ndim for a in axes)
    kept = [a for a in range(array.ndim) if a not in axes]
    groups = np.sort(np.transpose(array, kept + list(axes)).reshape(
        [array.shape[a] for a in kept] + [-1]), axis=-1)
    if groups.shape[-1] < 2:
        return np.inf
    gaps = np.minimum(groups[..., -1] - groups[..., -2], groups[..., 1] - groups[..., 0])
    return float(np.min(gaps, initial=np.inf))


# ---- the program writer -----------------------------------------------------------------------

@dataclass
class Program:
    inputs: list = field(default_factory=list)
    values: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    read: set = field(default_factory=set)
    kinks: list = field(default_factory=list)  # (distance, *args): distance(*args, values)
    objective: str = ""

    def source(self, outputs) -> str:
        signature = ", ".join(f"{v.name}: f64[{', '.join(map(str, v.shape))}]"
                              for v in self.inputs)
        body = "".join(f"    {line}\n" for line in self.lines + [self.objective])
        return f"model random({signature}) {{\n{body}    return {', '.join(outputs)}\n}}\n"

    def text(self) -> str:
        return self.source(["J"])

    def probe(self) -> str:
        """The same model returning every named value too, to measure kinks."""
        return self.source(["J"] + [v.name for v in self.values])

    def kink_margin(self, values) -> float:
        return min((kink(*arguments, values) for kink, *arguments in self.kinks),
                   default=np.inf)


class Writer:
    """Writes a Program statement by statement from hypothesis draws."""

    def __init__(self, draw):
        self.draw = draw
        self.program = Program()

    def fresh_input(self, shape) -> Val:
        value = Val(f"x{len(self.program.inputs)}", tuple(shape), INPUT_BOUND)
        self.program.inputs.append(value)
        return value

    def operand(self, fits=lambda shape: True, make_shape=None, avoid=None) -> Val:
        """An earlier value (or input) whose shape fits, or usually so, else a fresh input."""
        candidates = [v for v in self.program.inputs + self.program.values
                      if fits(v.shape) and v is not avoid]
        if candidates and self.draw(st.integers(0, 3)) > 0:
            return self.draw(st.sampled_from(candidates))
        shape = self.draw(make_shape if make_shape is not None else SHAPES)
        return self.fresh_input(shape)

    def broadcast_partner(self, shape, avoid=None) -> Val:
        return self.operand(lambda s: broadcast(shape, s) is not None,
                            broadcast_shapes_for(shape), avoid)

    def emit(self, text, shape, bound, reads) -> Val | None:
        if bound > MAX_BOUND:
            return None
        value = Val(f"v{len(self.program.values)}", tuple(shape), bound)
        self.program.lines.append(f"{value.name} = {text}")
        self.program.values.append(value)
        self.program.read.update(r.name for r in reads)
        return value

    # ---- one method per kind of statement -------------------------------------------------

    def unary(self):
        x = self.operand()
        template = self.draw(st.sampled_from(list(UNARY)))
        bound_of, points = UNARY[template]
        value = self.emit(template.format(x.name), x.shape, bound_of(x.bound), [x])
        if value is not None and points:
            self.program.kinks.append((distance_to_points, x.name, points))

    def binary(self):
        a = self.operand()
        template = self.draw(st.sampled_from(list(BINARY)))
        bound_of, ties = BINARY[template]
        b = self.broadcast_partner(a.shape, avoid=a if ties else None)
        value = self.emit(template.format(a.name, b.name), broadcast(a.shape, b.shape),
                          bound_of(a.bound, b.bound), [a, b])
        if value is not None and ties:
            self.program.kinks.append((distance_between, a.name, b.name))

    def literal(self):
        x = self.operand()
        scale, shift = (self.draw(st.sampled_from(list(LITERALS))) for _ in range(2))
        bound = x.bound * LITERALS[scale] + LITERALS[shift]
        if self.draw(st.booleans()):
            name = f"c{len(self.program.lines)}"
            self.program.lines.append(f"let {name} = {scale}")
            scale = name
        self.emit(f"{x.name} * {scale} + {shift}", x.shape, bound, [x])

    def matmul(self):
        a = self.operand(lambda s: len(s) >= 1, SHAPES.filter(len))
        b = self.operand(lambda s: matmul_shape(a.shape, s) is not None,
                         matmul_partners(a.shape))
        text = self.draw(st.sampled_from(["{0} @ {1}", "matmul({0}, {1})"]))
        self.emit(text.format(a.name, b.name), matmul_shape(a.shape, b.shape),
                  a.shape[-1] * a.bound * b.bound, [a, b])

    def transpose(self):
        x = self.operand(lambda s: len(s) >= 2, SHAPES.filter(lambda s: len(s) >= 2))
        perm = tuple(self.draw(st.permutations(range(len(x.shape)))))
        text = (f"{x.name}.T" if perm == tuple(reversed(range(len(perm))))
                else f"transpose({x.name}, perm={format_ints(perm)})")
        self.emit(text, [x.shape[p] for p in perm], x.bound, [x])

    def reduction(self):
        x = self.operand()
        op = self.draw(st.sampled_from(REDUCTIONS))
        rank = len(x.shape)
        axes = None
        if rank and self.draw(st.booleans()):
            axes = tuple(self.draw(st.lists(st.integers(0, rank - 1), min_size=1,
                                            max_size=rank, unique=True)))
            axes = tuple(a - rank if self.draw(st.booleans()) else a for a in axes)
        keepdims = self.draw(st.booleans())
        reduced = set(range(rank)) if axes is None else {a % rank for a in axes}
        count = math.prod(x.shape[a] for a in reduced)
        shape = [1 if a in reduced else d for a, d in enumerate(x.shape)
                 if keepdims or a not in reduced]
        options = "" if axes is None else f", axis={format_ints(axes)}"
        options += f", keepdims={'true' if keepdims else 'false'}"
        bound = {"sum": count * x.bound, "logsumexp": x.bound + math.log(count)}.get(op, x.bound)
        value = self.emit(f"{op}({x.name}{options})", shape, bound, [x])
        if value is not None and op in ("max", "min"):
            self.program.kinks.append((extreme_gap, x.name, axes))

    def normalizer(self):
        x = self.operand(lambda s: len(s) >= 1, SHAPES.filter(len))
        op = self.draw(st.sampled_from(["softmax", "log_softmax"]))
        rank = len(x.shape)
        axis = self.draw(st.integers(-rank, rank - 1))
        bound = 1.0 if op == "softmax" else 2 * x.bound + math.log(x.shape[axis])
        self.emit(f"{op}({x.name}, axis={axis})", x.shape, bound, [x])

    def where(self):
        p = self.operand()
        q = self.broadcast_partner(p.shape, avoid=p)
        condition = broadcast(p.shape, q.shape)
        a = self.broadcast_partner(condition)
        comparison = self.draw(st.sampled_from(COMPARISONS))
        b = self.broadcast_partner(broadcast(condition, a.shape)) if self.draw(
            st.booleans()) else None  # else the constant 0.5
        shape = broadcast(condition, a.shape, *([b.shape] if b else []))
        text = f"where({p.name} {comparison} {q.name}, {a.name}, {b.name if b else 0.5})"
        value = self.emit(text, shape, max(a.bound, b.bound if b else 0.5),
                          [p, q, a] + ([b] if b else []))
        if value is not None:
            self.program.kinks.append((distance_between, p.name, q.name))

    def concat(self):
        a = self.operand(lambda s: len(s) >= 1, SHAPES.filter(len))
        rank = len(a.shape)
        axis = self.draw(st.integers(-rank, rank - 1))

        def fits(shape):
            return len(shape) == rank and all(
                d == e for i, (d, e) in enumerate(zip(shape, a.shape, strict=True))
                if i != axis % rank)

        b = self.operand(fits, DIM.map(lambda n: a.shape[:axis % rank] + (n,)
                                       + a.shape[axis % rank + 1:]))
        shape = list(a.shape)
        shape[axis] += b.shape[axis]
        self.emit(f"concat({a.name}, {b.name}, axis={axis})", shape, max(a.bound, b.bound),
                  [a, b])

    def slicing(self):
        x = self.operand(lambda s: len(s) >= 1, SHAPES.filter(len))
        rank = len(x.shape)
        count = self.draw(st.integers(1, rank))
        trailing = count < rank and self.draw(st.booleans())  # x[..., items] or x[items]
        axes = range(rank - count, rank) if trailing else range(count)
        items, shape, whole = [], list(x.shape), True
        for axis in axes:
            text, length, everything = self.draw(subscripts(x.shape[axis]))
            items.append(text)
            shape[axis] = length
            whole = whole and everything
        if whole:  # x[:] is x itself, no new value
            return
        shape = [d for d in shape if d is not None]
        subscript = ", ".join((["..."] if trailing else []) + items)
        self.emit(f"{x.name}[{subscript}]", shape, x.bound, [x])

    def finish(self):
        """The objective: one scalar term per value nothing else reads."""
        if not self.program.values:
            x = self.operand()
            self.emit(f"tanh({x.name})", x.shape, 1.0, [x])
        sinks = [v for v in self.program.values if v.name not in self.program.read]
        terms = [self.draw(st.sampled_from(TERMS)).format(v.name) for v in sinks]
        self.program.objective = f"J = {' + '.join(terms)}"


# Elementwise ops have the most templates, so they are drawn more often.
STATEMENTS = [Writer.unary, Writer.binary, Writer.unary, Writer.matmul, Writer.reduction,
              Writer.unary, Writer.where, Writer.binary, Writer.transpose, Writer.normalizer,
              Writer.concat, Writer.slicing, Writer.literal]


def format_ints(values) -> str:
    values = tuple(values)
    return str(values[0]) if len(values) == 1 else f"({', '.join(map(str, values))})"


def broadcast_shapes_for(shape):
    """Shapes that broadcast with `shape`: a suffix of it with some dims 1 (or 1s widened)."""
    @st.composite
    def partner(draw):
        keep = draw(st.integers(0, len(shape)))
        suffix = shape[len(shape) - keep:]
        return tuple(draw(st.sampled_from([d, 1])) if d > 1 else draw(DIM) for d in suffix)
    return partner()


def matmul_partners(shape):
    """Right operands for `x @ b` with x of `shape`: a vector, a matrix, or a batch of them."""
    k = shape[-1]
    matrices = DIM.map(lambda n: (k, n))
    options = [st.just((k,)), matrices]
    if len(shape) <= 2:
        options.append(st.tuples(st.integers(1, 2), DIM).map(lambda bn: (bn[0], k, bn[1])))
    else:
        options.append(DIM.map(lambda n: shape[:-2] + (k, n)))
    return st.one_of(options)


@st.composite
def subscripts(draw, size):
    """One subscript item for an axis of `size`: its text, the axis's new length (None when an
    integer drops the axis) and whether it keeps the whole axis as it is."""
    if draw(st.booleans()):
        index = draw(st.integers(-size, size - 1))
        return str(index), None, False
    bound = st.none() | st.integers(-size, size)
    start, stop = draw(bound), draw(bound)
    step = draw(st.sampled_from([None, 1, 2, -1]))
    length = len(range(*slice(start, stop, step).indices(size)))
    assume(length > 0)
    text = f"{'' if start is None else start}:{'' if stop is None else stop}"
    text += "" if step is None else f":{step}"
    return text, length, start in (None, 0) and stop is None and step in (None, 1)


@st.composite
def programs(draw) -> Program:
    writer = Writer(draw)
    for _ in range(draw(st.integers(3, MAX_STATEMENTS))):
        draw(st.sampled_from(STATEMENTS))(writer)
    writer.finish()
    return writer.program


@settings(max_examples=EXAMPLES, deadline=None,
          derandomize="CHAINRULE_PROPERTY_EXAMPLES" not in os.environ,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(programs(), st.integers(0, 2 ** 32 - 1))
def test_random_program_gradients_match_finite_differences(program, seed):
    note(f"input seed {seed}; program:\n{program.text()}")
    rng = np.random.default_rng(seed)
    inputs = {v.name: rng.uniform(-INPUT_BOUND, INPUT_BOUND, v.shape) for v in program.inputs}

    values = {**chainrule.compile(source=program.probe()).run(**inputs), **inputs}
    assume(all(np.all(np.isfinite(v)) for v in values.values()))
    assume(program.kink_margin(values) > KINK_MARGIN)

    model = chainrule.compile(source=program.text())
    wrt = [v.name for v in program.inputs]
    grads = model.grad(wrt=wrt, **inputs)
    assert set(grads) == {"J", *wrt}
    assert_close(grads["J"], values["J"], 1e-12, what="J")

    forward, _ = model.compile_graph()
    backend = get_backend("numpy")

    def objective():
        return float(backend.run(forward, inputs, {})["J"])

    # Rounding in J limits what finite differences resolve: about 1e-16 * |J| / 1e-6.
    atol = 1e-9 * (1.0 + abs(float(values["J"])))
    for name in wrt:
        assert grads[name].shape == inputs[name].shape, name
        numeric = central_difference(objective, inputs[name])
        assert_close(grads[name], numeric, 1e-6, atol=atol, what=f"dJ/d{name}")

    # The optimisation passes may reorder float operations, nothing more.
    optimised = model.grad(wrt=wrt, opt_level="O2", **inputs)
    for name, value in grads.items():
        assert_close(optimised[name], value, 1e-9, atol=1e-12, what=f"-O2 {name}")
