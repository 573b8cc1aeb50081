"""The ONNX op table, loss ops: SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss as
a log-softmax, each label's log-probability picked out, and a (weighted) reduction."""
from __future__ import annotations

from .context import Unsupported, converter


def _class_axis_last(ctx, x):
    """[N, C, d1, ...] -> [N, d1, ..., C]: chainrule's losses take classes on the last axis."""
    if x.type.rank <= 2:
        return x
    perm = (0,) + tuple(range(2, x.type.rank)) + (1,)
    return ctx.emit("transpose", x, perm=perm)


def _labels(ctx, index):
    """The labels, and where they count: None, or a bool mask that is false at ignore_index
    (whose labels become 0, so that every label picks some class)."""
    labels = ctx.input(index)
    if labels.type.dtype != "i64":
        raise Unsupported(f"labels of dtype {labels.type.dtype} (chainrule reads int64)")
    ignore_index = ctx.attr("ignore_index")
    if ignore_index is None:
        return labels, None
    counted = ctx.emit("not_equal", labels, ctx.constant(ignore_index, labels))
    return ctx.emit("where", counted, labels, ctx.constant(0, labels)), counted


def _negative_log_likelihood(ctx, log_probabilities, labels, counted, weights):
    """Per-example -log p[label] times the label's weight (0 where ignored), and the weights
    used (None when every example weighs 1)."""
    picked = ctx.emit("gather_elements", log_probabilities,
                      ctx.emit("unsqueeze", labels, axes=(-1,)), axis=-1)
    losses = ctx.emit("neg", ctx.emit("squeeze", picked, axes=(-1,)))
    example_weights = None if weights is None else ctx.emit("take", weights, labels, axis=0)
    if counted is not None:
        mask = ctx.emit("cast", counted, dtype=losses.type.dtype)
        example_weights = mask if example_weights is None else \
            ctx.emit("mul", example_weights, mask)
    if example_weights is None:
        return losses, None
    return ctx.emit("mul", losses, example_weights), example_weights


def _reduced_loss(ctx, losses, example_weights):
    reduction = ctx.require_attr("reduction", ("mean", "sum", "none"), "mean")
    if reduction == "none":
        return losses
    total = ctx.emit("sum", losses)
    if reduction == "sum":
        return total
    if example_weights is None:
        return ctx.emit("mean", losses)
    return ctx.emit("div", total, ctx.emit("sum", example_weights))


@converter("SoftmaxCrossEntropyLoss")
def _softmax_cross_entropy(ctx):
    scores = _class_axis_last(ctx, ctx.input(0))
    labels, counted = _labels(ctx, 1)
    weights = ctx.input(2) if ctx.has_input(2) else None
    reduction = ctx.attr("reduction", "mean")
    if weights is None and counted is None and reduction == "mean" and \
            not ctx.output_used(1) and scores.type.rank == 2:
        return [ctx.emit("cross_entropy", scores, labels)]
    log_probabilities = ctx.emit("log_softmax", scores, axis=-1)
    losses, example_weights = _negative_log_likelihood(ctx, log_probabilities, labels, counted,
                                                       weights)
    log_prob_output = log_probabilities
    if scores.type.rank > 2:  # back to [N, C, d1, ...]
        rank = scores.type.rank
        log_prob_output = ctx.emit("transpose", log_probabilities,
                                   perm=(0, rank - 1) + tuple(range(1, rank - 1)))
    return [_reduced_loss(ctx, losses, example_weights), log_prob_output]


@converter("NegativeLogLikelihoodLoss")
def _negative_log_likelihood_loss(ctx):
    log_probabilities = _class_axis_last(ctx, ctx.input(0))
    labels, counted = _labels(ctx, 1)
    weights = ctx.input(2) if ctx.has_input(2) else None
    losses, example_weights = _negative_log_likelihood(ctx, log_probabilities, labels, counted,
                                                       weights)
    return [_reduced_loss(ctx, losses, example_weights)]
