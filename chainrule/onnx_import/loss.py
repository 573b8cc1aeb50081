"""Attaching a loss to an imported inference model: a new input holds the targets, and the
loss becomes the objective, the first output. The model's own outputs stay outputs; with
cross-entropy, `acc` (the fraction of rows classified right) follows the loss."""
from __future__ import annotations

import re

from ..ir import ChainruleError, GraphBuilder, SourceLoc, Value, compositions
from ..ir.types import TensorType, is_float

LOSSES = ("cross_entropy", "mse", "bce")
# A target input's name goes as it is into IR text, the decompiled .nn and the exported ONNX
# model, so it must be a name all three read back: a plain identifier.
TARGET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_target_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"the target input's name must be a str, not {type(name).__name__}")
    if not TARGET_NAME.fullmatch(name):
        raise ChainruleError(f"the target input's name must be an identifier (a letter or _, "
                             f"then letters, digits or _), not {name!r}")
    return name


def _target_type(loss: str, output: Value) -> TensorType:
    if loss == "cross_entropy":
        return TensorType("i64", output.type.shape[:-1])  # a class label per row
    return output.type


def attach_loss(imported, loss: str, target_input: str, loss_output: str | None,
                file: str) -> None:
    check_target_name(target_input)
    graph = imported.graph
    loc = SourceLoc(file, 0, 0)
    if loss not in LOSSES:
        raise ChainruleError(f"unknown loss '{loss}'; the losses are {', '.join(LOSSES)}", loc)
    outputs = [v for v in graph.outputs if v.name not in graph.updates.values()]
    output = _loss_output(imported, outputs, loss_output, loc)
    if not is_float(output.type.dtype) or output.type.rank == 0:
        raise ChainruleError(f"a {loss} loss reads float scores, not output '{output.name}' "
                             f"of type {output.type}", loc)
    taken = {v.name for v in graph.values()}
    if target_input in taken:
        raise ChainruleError(f"the target input '{target_input}' would clash with a value of "
                             f"the model; choose another name with --target-input", loc)
    target = Value(target_input, _target_type(loss, output))
    graph.inputs.append(target)
    graph.input_locs[target.name] = loc
    ops = _Ops(GraphBuilder(graph), loc)
    objective = _loss(ops, loss, output, target)
    objective = ops.builder.rename(objective, "loss")
    graph.outputs.insert(0, objective)
    graph.objective = objective
    if loss == "cross_entropy" and "acc" not in taken:
        graph.outputs.insert(1, _accuracy(ops, output, target))
    imported.names[target_input] = target.name


def _accuracy(ops, scores, labels) -> Value:
    """The fraction of rows whose highest score is the label: what training reports as acc."""
    predicted = ops.emit("argmax", scores, axis=-1, keepdims=False)
    hits = ops.emit("cast", ops.emit("equal", predicted, labels), dtype=scores.type.dtype)
    accuracy = ops.emit("mean", hits, axes=None, keepdims=False)
    return ops.builder.rename(accuracy, "acc")


def _loss_output(imported, outputs, name, loc) -> Value:
    if not outputs:
        raise ChainruleError("the model has no output to attach a loss to", loc)
    if name is None:
        return outputs[0]
    by_name = {v.name: v for v in outputs}
    ir_name = imported.names.get(name, name)
    if ir_name not in by_name:
        raise ChainruleError(f"--loss-output: the model has no output '{name}'; its outputs "
                             f"are {', '.join(v.name for v in outputs)}", loc)
    return by_name[ir_name]


class _Ops:
    """The face ir.compositions build through: emit, constant and error."""

    def __init__(self, builder: GraphBuilder, loc: SourceLoc):
        self.builder, self.loc = builder, loc

    def emit(self, op, *inputs, **attrs):
        return self.builder.emit(op, inputs, attrs, loc=self.loc)

    def constant(self, value, like):
        return self.builder.constant(value, like.type.dtype, loc=self.loc)

    def error(self, message):
        raise ChainruleError(message, self.loc)


def _loss(ops, loss, output, target) -> Value:
    if loss == "cross_entropy":
        classes = output.type.shape[-1]
        if not isinstance(classes, int):
            target = _one_hot_over(ops, target, classes, output.type.dtype)
        return compositions.cross_entropy(ops, output, target)
    if loss == "mse":
        return ops.emit("mse", output, target)
    return compositions.binary_cross_entropy_with_logits(ops, output, target)


def _one_hot_over(ops, labels, classes, dtype) -> Value:
    """Labels as probabilities over a symbolic class axis (a question-answering head scores
    each of the S tokens as the answer's start): `labels == arange(S)`, as one_hot cannot,
    whose number of classes is a number."""
    positions = ops.emit("arange", n=classes)
    expanded = ops.emit("unsqueeze", labels, axes=(labels.type.rank,))
    return ops.emit("cast", ops.emit("equal", expanded, positions), dtype=dtype)
