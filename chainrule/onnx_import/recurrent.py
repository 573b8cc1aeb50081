"""ONNX's recurrent layers, RNN, GRU and LSTM: one `scan` per direction, whose body is the cell
written with ordinary ops, so that autodiff, the backends and the exporter need nothing of
their own for them.

Outside the scan, the input's projection for every step is one matmul (`X Wᵀ + Wb`, a sequence
the scan reads step by step); inside, each step adds the recurrent part `H Rᵀ + Rb` and applies
the gates. Per-row lengths (`sequence_lens`) become a mask sequence: a step past a row's length
keeps that row's state and outputs zeros, so the final state is the one at the row's last
step, and a reverse direction starts at that step. Gates come in ONNX's order: LSTM i, o, f, c;
GRU z, r, h.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir import Value, dims
from ..ir.types import UNKNOWN, is_float
from .body import Body, emit_scan
from .context import Unsupported, converter

DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


# ---- activations ------------------------------------------------------------------------------
# name (lower case, as ONNX compares them) -> (the alpha and beta defaults it takes, or None
# for one it does not, and how it is written with IR ops).

def _affine(b, x, alpha, beta):
    return b.emit("add", b.emit("mul", x, b.constant(alpha, x.type.dtype)),
                  b.constant(beta, x.type.dtype))


def _thresholded_relu(b, x, alpha, beta):
    zero = b.constant(0.0, x.type.dtype)
    return b.emit("where", b.emit("greater", x, b.constant(alpha, x.type.dtype)), x, zero)


def _scaled_tanh(b, x, alpha, beta):
    scaled = b.emit("mul", x, b.constant(beta, x.type.dtype))
    return b.emit("mul", b.emit("tanh", scaled), b.constant(alpha, x.type.dtype))


def _hard_sigmoid(b, x, alpha, beta):
    return b.emit("clip", _affine(b, x, alpha, beta), lo=0.0, hi=1.0)


def _elu(b, x, alpha, beta):
    one = b.constant(1.0, x.type.dtype)
    below = b.emit("mul", b.emit("sub", b.emit("exp", x), one), b.constant(alpha, x.type.dtype))
    return b.emit("where", b.emit("greater", x, b.constant(0.0, x.type.dtype)), x, below)


def _softsign(b, x, alpha, beta):
    one = b.constant(1.0, x.type.dtype)
    return b.emit("div", x, b.emit("add", one, b.emit("abs", x)))


@dataclass(frozen=True)
class Activation:
    write: Callable
    alpha: float | None = None  # its default, where it takes one
    beta: float | None = None


ACTIVATIONS = {
    "sigmoid": Activation(lambda b, x, alpha, beta: b.emit("sigmoid", x)),
    "tanh": Activation(lambda b, x, alpha, beta: b.emit("tanh", x)),
    "relu": Activation(lambda b, x, alpha, beta: b.emit("relu", x)),
    "softplus": Activation(lambda b, x, alpha, beta: b.emit("softplus", x)),
    "softsign": Activation(_softsign),
    "leakyrelu": Activation(lambda b, x, alpha, beta: b.emit("leaky_relu", x, alpha=alpha),
                            alpha=0.01),
    "thresholdedrelu": Activation(_thresholded_relu, alpha=1.0),
    "elu": Activation(_elu, alpha=1.0),
    "affine": Activation(_affine, alpha=1.0, beta=0.0),
    "scaledtanh": Activation(_scaled_tanh, alpha=1.0, beta=1.0),
    "hardsigmoid": Activation(_hard_sigmoid, alpha=0.2, beta=0.5),
}


@dataclass(frozen=True)
class Function:
    """One activation with its alpha and beta, applied in a body."""

    activation: Activation
    alpha: float | None
    beta: float | None

    def __call__(self, body: Body, x):
        return self.activation.write(body, x, self.alpha, self.beta)


def _functions(ctx, cell, directions: int) -> list[list[Function]]:
    """Each direction's activation functions, in the cell's order (f, g, h). activation_alpha
    and activation_beta are consumed in the order of the functions that take them."""
    names = [name.decode() if isinstance(name, bytes) else name
             for name in ctx.attr("activations", None) or cell.activations * directions]
    wanted = len(cell.activations) * directions
    if len(names) != wanted:
        raise Unsupported(f"attribute activations holds {len(names)} names, where "
                          f"{cell.op} of {directions} direction(s) takes {wanted}")
    # float32 in the file: the shortest decimal that rounds to it is what the exporter meant
    alphas = iter(float(str(np.float32(a))) for a in ctx.attr("activation_alpha", None) or ())
    betas = iter(float(str(np.float32(b))) for b in ctx.attr("activation_beta", None) or ())
    functions = []
    for name in names:
        activation = ACTIVATIONS.get(name.lower())
        if activation is None:
            raise Unsupported(f"attribute activations: {name} (supported: "
                              f"{', '.join(sorted(ACTIVATIONS))})")
        alpha = None if activation.alpha is None else next(alphas, activation.alpha)
        beta = None if activation.beta is None else next(betas, activation.beta)
        functions.append(Function(activation, alpha, beta))
    per = len(cell.activations)
    return [functions[i * per:(i + 1) * per] for i in range(directions)]


# ---- the cells --------------------------------------------------------------------------------

@dataclass
class Step:
    """What a cell's step reads in the body: the carried states, this step's input projection
    (`X Wᵀ + Wb`, all gates side by side), the recurrent weights transposed (`Rᵀ`), their
    bias, the peepholes, and the cell's options."""

    body: Body
    states: list[Value]
    projection: Value
    recurrent: Value
    recurrent_bias: Value | None
    peepholes: list[Value] | None
    functions: list[Function]
    clip: float | None
    hidden: int
    linear_before_reset: bool = False
    input_forget: bool = False

    def gate(self, values, index: int):
        """Gate `index` of a [B, gates*H] value."""
        return self.body.emit("slice", values, starts=(index * self.hidden,),
                              ends=((index + 1) * self.hidden,), axes=(1,), steps=(1,))

    def recurrence(self, h, first: int | None = None, last: int | None = None):
        """`h Rᵀ + Rb`, for all gates or for gates first..last-1."""
        weights, bias = self.recurrent, self.recurrent_bias
        if first is not None:
            bounds = {"starts": (first * self.hidden,), "ends": (last * self.hidden,),
                      "steps": (1,)}
            weights = self.body.emit("slice", weights, axes=(1,), **bounds)
            if bias is not None:
                bias = self.body.emit("slice", bias, axes=(0,), **bounds)
        product = self.body.emit("matmul", h, weights)
        return product if bias is None else self.body.emit("add", product, bias)

    def activate(self, index: int, x, name: str, clipped: bool = True):
        """Activation function `index` of the cell (f, g, h) of x, clipped first, named."""
        if clipped and self.clip is not None:
            x = self.body.emit("clip", x, lo=-self.clip, hi=self.clip)
        return self.body.named(self.functions[index](self.body, x), name)

    def add(self, *values):
        total = values[0]
        for value in values[1:]:
            total = self.body.emit("add", total, value)
        return total


def _rnn_step(step: Step) -> list:
    (h,) = step.states
    return [step.activate(0, step.add(step.projection, step.recurrence(h)), "h.next")]


def _gru_step(step: Step) -> list:
    b = step.body
    (h,) = step.states
    x_z, x_r, x_h = (step.gate(step.projection, i) for i in range(3))
    if step.linear_before_reset:
        recurrence = step.recurrence(h)
        h_z, h_r, h_h = (step.gate(recurrence, i) for i in range(3))
    else:
        zr = step.recurrence(h, 0, 2)
        h_z, h_r = step.gate(zr, 0), step.gate(zr, 1)
    z = step.activate(0, b.emit("add", x_z, h_z), "z")
    r = step.activate(0, b.emit("add", x_r, h_r), "r")
    if step.linear_before_reset:
        reset = b.emit("mul", r, h_h)
    else:
        reset = step.recurrence(b.emit("mul", r, h), 2, 3)
    candidate = step.activate(1, b.emit("add", x_h, reset), "candidate")
    # (1 - z) candidate + z h, written with one product
    return [b.named(b.emit("add", candidate, b.emit("mul", z, b.emit("sub", h, candidate))),
                    "h.next")]


def _lstm_step(step: Step) -> list:
    b = step.body
    h, c = step.states
    gates = step.add(step.projection, step.recurrence(h))
    g_i, g_o, g_f, g_c = (step.gate(gates, i) for i in range(4))
    p_i, p_o, p_f = step.peepholes or (None, None, None)

    def peephole(pre, weight, cell):
        return pre if weight is None else b.emit("add", pre, b.emit("mul", weight, cell))

    i = step.activate(0, peephole(g_i, p_i, c), "i")
    if step.input_forget:
        f = b.named(b.emit("sub", b.constant(1.0, i.type.dtype), i), "f")
    else:
        f = step.activate(0, peephole(g_f, p_f, c), "f")
    candidate = step.activate(1, g_c, "candidate")
    c_next = b.named(b.emit("add", b.emit("mul", f, c), b.emit("mul", i, candidate)), "c.next")
    o = step.activate(0, peephole(g_o, p_o, c_next), "o")
    h_next = b.emit("mul", o, step.activate(2, c_next, "c.activated", clipped=False))
    return [b.named(h_next, "h.next"), c_next]


@dataclass(frozen=True)
class Cell:
    op: str
    gates: int
    activations: tuple[str, ...]  # the defaults, per direction
    states: int  # hidden (and cell) states
    step: Callable


RNN = Cell("RNN", 1, ("Tanh",), 1, _rnn_step)
GRU = Cell("GRU", 3, ("Sigmoid", "Tanh"), 1, _gru_step)
LSTM = Cell("LSTM", 4, ("Sigmoid", "Tanh", "Tanh"), 2, _lstm_step)


# ---- the node ---------------------------------------------------------------------------------

@dataclass
class Options:
    hidden: int
    directions: tuple[bool, ...]  # each direction's `reverse`
    layout: int
    clip: float | None
    functions: list[list[Function]]
    linear_before_reset: bool = False
    input_forget: bool = False


def _options(ctx, cell: Cell, r_type) -> Options:
    direction = ctx.require_attr("direction", tuple(DIRECTIONS), "forward")
    directions = DIRECTIONS[direction]
    hidden = ctx.attr("hidden_size", None)
    if hidden is None:
        hidden = r_type.shape[-1]
    if not isinstance(hidden, int) or hidden < 1:
        raise Unsupported(f"attribute hidden_size is needed (R's last dim {hidden} gives none)")
    expected = (len(directions), cell.gates * hidden, hidden)
    if tuple(r_type.shape) != expected:
        raise Unsupported(f"R is {r_type}, where hidden_size={hidden} and direction="
                          f"{direction} make it [{', '.join(map(str, expected))}]")
    clip = ctx.attr("clip", None)
    if clip is not None:
        if not clip > 0:  # NaN included
            raise Unsupported(f"attribute clip={clip} (it must be positive)")
        clip = ctx.float_attr("clip", clip)
    options = Options(hidden, directions, ctx.require_attr("layout", (0, 1), 0), clip,
                      _functions(ctx, cell, len(directions)))
    if cell is GRU:
        options.linear_before_reset = bool(ctx.attr("linear_before_reset", 0))
    if cell is LSTM:
        options.input_forget = bool(ctx.require_attr("input_forget", (0, 1), 0))
    return options


def _direction(ctx, value, index: int):
    """Direction `index` of a value whose leading axis holds the directions."""
    one = ctx.emit("slice", value, starts=(index,), ends=(index + 1,), axes=(0,), steps=(1,))
    return ctx.emit("squeeze", one, axes=(0,))


def _gates(ctx, value, first: int, last: int, hidden: int, axis: int):
    """Gates first..last-1 of a value holding them side by side along `axis`."""
    return ctx.emit("slice", value, starts=(first * hidden,), ends=(last * hidden,),
                    axes=(axis,), steps=(1,))


def _step_mask(ctx, length):
    """[T, B, 1] bools from sequence_lens: whether step t is within row b's length; None
    without lengths, or when every row is known to be as long as the sequence."""
    if not ctx.has_input(4):
        return None
    known = ctx.known(4)
    if known is not None and not known.symbolic and isinstance(length, int):
        if np.any(known.array > length) or np.any(known.array < 0):
            raise Unsupported(f"sequence_lens {known.array.tolist()} for a sequence of "
                              f"{length} steps: each lies in [0, {length}]")
        if np.all(known.array == length):
            return None
    lengths = ctx.input(4)
    steps = ctx.emit("unsqueeze", ctx.emit("arange", n=length), axes=(1,))
    within = ctx.emit("less", steps, ctx.emit("cast", lengths, dtype="i64"))
    return ctx.emit("unsqueeze", within, axes=(2,))


def _initial(ctx, index: int, layout: int, batch, hidden: int, dtype: str, directions: int):
    """Each direction's initial state from input `index` ([D, B, H], or [B, D, H] with
    layout 1), zeros where the input is absent."""
    if not ctx.has_input(index):
        if batch == UNKNOWN:
            raise Unsupported("a batch of unknown size without initial states")
        zeros = ctx.emit("broadcast_to", ctx.constant(0.0, dtype), shape=(batch, hidden))
        return [zeros] * directions
    states = ctx.input(index)
    if states.type.rank != 3:
        raise Unsupported(f"input {index} is {states.type}, where a rank-3 state is needed")
    if layout == 1:
        states = ctx.emit("transpose", states, perm=(1, 0, 2))
    return [_direction(ctx, states, d) for d in range(directions)]


def _recurrent(ctx, cell: Cell) -> list:
    x, w, r = ctx.input(0), ctx.input(1), ctx.input(2)
    if not is_float(x.type.dtype):
        raise Unsupported(f"{cell.op} of {x.type.dtype} inputs (it computes on floats)")
    ctx.require_rank(x, 3, 3, "input X")
    options = _options(ctx, cell, r.type)
    hidden, layout = options.hidden, options.layout
    if layout == 1:
        x = ctx.emit("transpose", x, perm=(1, 0, 2))
    length, batch = x.type.shape[0], x.type.shape[1]
    if length == UNKNOWN or not (isinstance(length, int) or dims.is_symbolic(length)):
        raise Unsupported(f"X of a sequence length chainrule cannot name ({x.type})")
    dtype = x.type.dtype
    count = len(options.directions)
    initial = [_initial(ctx, 5, layout, batch, hidden, dtype, count)]
    if cell.states == 2:
        initial.append(_initial(ctx, 6, layout, batch, hidden, dtype, count))
    mask = _step_mask(ctx, length)
    finals, stacks = [], []
    for d, reverse in enumerate(options.directions):
        states = [per_direction[d] for per_direction in initial]
        results = _direction_scan(ctx, cell, options, x, _direction(ctx, w, d),
                                  _direction(ctx, r, d), d, states, mask, reverse)
        finals.append(_emptied(ctx, results[:cell.states], mask))
        stacks.append(results[cell.states])
    return _outputs(ctx, cell, layout, finals, stacks)


def _emptied(ctx, states: list, mask) -> list:
    """The final states, zero in a row of length 0 (which keeps its initial state through
    every step), as onnxruntime gives them."""
    if mask is None:
        return states
    first = ctx.emit("squeeze", ctx.emit("slice", mask, starts=(0,), ends=(1,), axes=(0,),
                                         steps=(1,)), axes=(0,))
    zero = ctx.constant(0.0, states[0].type.dtype)
    return [ctx.emit("where", first, state, zero) for state in states]


def _direction_scan(ctx, cell, options, x, w, r, d, states, mask, reverse):
    """One direction's scan: its final states and its stacked outputs [T, B, H]."""
    hidden, gates = options.hidden, cell.gates
    projection = ctx.emit("matmul", x, ctx.emit("transpose", w, perm=(1, 0)))
    recurrent_bias = None
    if ctx.has_input(3):
        bias = _direction(ctx, ctx.input(3), d)
        projection = ctx.emit("add", projection, _gates(ctx, bias, 0, gates, hidden, 0))
        recurrent_bias = _gates(ctx, bias, gates, 2 * gates, hidden, 0)
    outer = {"rt": ctx.emit("transpose", r, perm=(1, 0))}
    if recurrent_bias is not None:
        outer["rb"] = recurrent_bias
    if cell is LSTM and ctx.has_input(7):
        p = _direction(ctx, ctx.input(7), d)
        outer.update((f"p{gate}", _gates(ctx, p, i, i + 1, hidden, 0))
                     for i, gate in enumerate("iof"))
    sequences = [projection] if mask is None else [projection, mask]

    body = Body(ctx, f"{cell.op.lower()}_step")
    names = ("h", "c")[:cell.states]
    carried_in = [body.input(f"{name}.in", state.type)
                  for name, state in zip(names, states, strict=True)]
    projection_in, *mask_in = [body.input(name, value.type.with_shape(value.type.shape[1:]))
                               for name, value in zip(("xw", "within"), sequences)]
    outer_in = {name: body.input(name, value.type) for name, value in outer.items()}
    peepholes = [outer_in[f"p{gate}"] for gate in "iof"] if "pi" in outer_in else None
    step = Step(body, carried_in, projection_in, outer_in["rt"], outer_in.get("rb"), peepholes,
                options.functions[d], options.clip, hidden, options.linear_before_reset,
                options.input_forget)
    carried_out = cell.step(step)
    output = carried_out[0]
    for within in mask_in:
        carried_out = [body.emit("where", within, new, old)
                       for new, old in zip(carried_out, carried_in, strict=True)]
        output = body.emit("where", within, output, body.constant(0.0, output.type.dtype))
    return emit_scan(ctx, body, [*carried_out, output], [*states, *sequences, *outer.values()],
                     carried=cell.states, scanned=len(sequences), length=x.type.shape[0],
                     reverse=reverse)


def _outputs(ctx, cell, layout, finals, stacks) -> list:
    """Y [T, D, B, H] (layout 1: [B, T, D, H]), then Y_h and Y_c [D, B, H] ([B, D, H])."""
    def joined(values, axis):
        values = [ctx.emit("unsqueeze", v, axes=(axis,)) for v in values]
        return values[0] if len(values) == 1 else ctx.emit("concat", *values, axis=axis)

    y = joined(stacks, 1)
    states = [joined([final[i] for final in finals], 0) for i in range(cell.states)]
    if layout == 1:
        y = ctx.emit("transpose", y, perm=(2, 0, 1, 3))
        states = [ctx.emit("transpose", s, perm=(1, 0, 2)) for s in states]
    return [y, *states]


@converter("RNN")
def _rnn(ctx):
    return _recurrent(ctx, RNN)


@converter("GRU")
def _gru(ctx):
    return _recurrent(ctx, GRU)


@converter("LSTM")
def _lstm(ctx):
    return _recurrent(ctx, LSTM)
