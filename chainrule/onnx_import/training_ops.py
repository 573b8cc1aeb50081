"""The `ai.onnx.preview.training` optimizers (Momentum, Adam, Adagrad) as inference-time ops:
one update of each tensor X from its gradient G and its state, composed of elementwise ops, as
ONNX's reference computes it. The step count T is read at run time: the updates at T = 0 (no
bias correction, a momentum's first gradient taken whole) are selected with `where`."""
from __future__ import annotations

from .context import Unsupported, converter

TRAINING_DOMAIN = "ai.onnx.preview.training"
# The ops of that domain this module converts (Gradient, which differentiates a graph of its
# own, is not one).
TRAINING_OPS = frozenset({"Momentum", "Adam", "Adagrad"})


def _groups(ctx, per_tensor: int) -> list[list]:
    """The rate R, the count T (in X's dtype), then `per_tensor` lists of as many tensors
    each (X..., G..., state...)."""
    tensors = ctx.inputs()[2:]
    if len(tensors) % per_tensor or not tensors:
        raise Unsupported(f"{ctx.node.op_type} of {len(tensors)} tensors (it takes {per_tensor} "
                          f"per tensor updated: X, G and its state)")
    count = len(tensors) // per_tensor
    return [tensors[i * count:(i + 1) * count] for i in range(per_tensor)]


def _scalars(ctx, like):
    """R and T as scalars of X's dtype, and whether T > 0."""
    rate, step = ctx.input(0), ctx.input(1)
    dtype = like.type.dtype
    rate = rate if rate.type.dtype == dtype else ctx.emit("cast", rate, dtype=dtype)
    started = ctx.emit("greater", step, ctx.constant(0, step))
    return rate, ctx.emit("cast", step, dtype=dtype), started


def _regularized(ctx, x, g):
    """G plus the gradient of the L2 term, norm_coefficient * X."""
    coefficient = ctx.float_attr("norm_coefficient", 0.0)
    return ctx.emit("add", ctx.emit("mul", ctx.constant(coefficient, x), x), g)


def _scaled(ctx, factor: float, value):
    return ctx.emit("mul", ctx.constant(factor, value), value)


@converter("Momentum")
def _momentum(ctx):
    xs, gs, vs = _groups(ctx, 3)
    rate, _, started = _scalars(ctx, xs[0])
    alpha, beta = ctx.float_attr("alpha", 0.0), ctx.float_attr("beta", 0.0)
    mode = ctx.require_attr("mode", ("standard", "nesterov"), "standard")
    new_xs, new_vs = [], []
    for x, g, v in zip(xs, gs, vs, strict=True):
        g = _regularized(ctx, x, g)
        # The first step (T = 0) takes the gradient whole.
        step = ctx.emit("where", started, _scaled(ctx, beta, g), g)
        v_new = ctx.emit("add", _scaled(ctx, alpha, v), step)
        direction = v_new if mode == "standard" else \
            ctx.emit("add", g, _scaled(ctx, alpha, v_new))
        new_xs.append(ctx.emit("sub", x, ctx.emit("mul", rate, direction)))
        new_vs.append(v_new)
    return [*new_xs, *new_vs]


@converter("Adagrad")
def _adagrad(ctx):
    xs, gs, hs = _groups(ctx, 3)
    rate, step, _ = _scalars(ctx, xs[0])
    decay, epsilon = ctx.float_attr("decay_factor", 0.0), ctx.float_attr("epsilon", 0.0)
    decayed = ctx.emit("div", rate, ctx.emit("add", ctx.constant(1.0, step),
                                               _scaled(ctx, decay, step)))
    new_xs, new_hs = [], []
    for x, g, h in zip(xs, gs, hs, strict=True):
        g = _regularized(ctx, x, g)
        h_new = ctx.emit("add", h, ctx.emit("mul", g, g))
        root = ctx.emit("add", ctx.emit("sqrt", h_new), ctx.constant(epsilon, h_new))
        new_xs.append(ctx.emit("sub", x, ctx.emit("div", ctx.emit("mul", decayed, g), root)))
        new_hs.append(h_new)
    return [*new_xs, *new_hs]


@converter("Adam")
def _adam(ctx):
    xs, gs, vs, hs = _groups(ctx, 4)
    rate, step, started = _scalars(ctx, xs[0])
    alpha, beta = ctx.float_attr("alpha", 0.9), ctx.float_attr("beta", 0.999)
    epsilon = ctx.float_attr("epsilon", 0.0)
    post = ctx.float_attr("norm_coefficient_post", 0.0)

    def one_minus_power(base: float):  # 1 - base**T
        power = ctx.emit("pow", ctx.constant(base, step), step)
        return ctx.emit("sub", ctx.constant(1.0, step), power)
    corrected = ctx.emit("div", ctx.emit("mul", rate, ctx.emit("sqrt", one_minus_power(beta))),
                         one_minus_power(alpha))
    adjusted = ctx.emit("where", started, corrected, rate)
    new_xs, new_vs, new_hs = [], [], []
    for x, g, v, h in zip(xs, gs, vs, hs, strict=True):
        g = _regularized(ctx, x, g)
        v_new = ctx.emit("add", _scaled(ctx, alpha, v), _scaled(ctx, 1 - alpha, g))
        h_new = ctx.emit("add", _scaled(ctx, beta, h),
                         _scaled(ctx, 1 - beta, ctx.emit("mul", g, g)))
        root = ctx.emit("add", ctx.emit("sqrt", h_new), ctx.constant(epsilon, h_new))
        x_new = ctx.emit("sub", x, ctx.emit("mul", adjusted, ctx.emit("div", v_new, root)))
        new_xs.append(_scaled(ctx, 1 - post, x_new))
        new_vs.append(v_new)
        new_hs.append(h_new)
    return [*new_xs, *new_vs, *new_hs]
