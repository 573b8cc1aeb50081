"""ONNX's sequences and optionals, within one step: a sequence's length and whether an
optional holds something are fixed at import time, so a sequence is a TensorSequence (a tuple
of IR values) and an empty optional is ABSENT while the model is imported, and neither is left
in the graph. A sequence-typed graph input or output is one graph input or output per tensor
(importer.py, `structured_input`). SequenceMap's body is imported once per position of its
sequences, into the graph itself (control_flow.py, `InlineImporter`)."""
from __future__ import annotations

import numpy as np

from .context import ABSENT, Absent, Known, TensorSequence, Unsupported, converter, dim_hint
from .control_flow import InlineImporter, subgraph_attr, tensor_result


def _position(ctx, index: int, length: int, default: int, end_allowed: bool) -> int:
    """Input `index` as a position in a sequence of `length` tensors, counted from the end
    when negative; `end_allowed` takes `length` itself (inserting at the back)."""
    position = ctx.static_int(index, f"{ctx.node.op_type}'s position", default)
    last = length if end_allowed else length - 1
    if not -length <= position <= last:
        raise Unsupported(f"{ctx.node.op_type} at position {position} of a sequence of "
                          f"{length} tensors")
    return position + length if position < 0 else position


def _same_dtype(ctx, values) -> None:
    dtypes = sorted({value.type.dtype for value in values})
    if len(dtypes) > 1:
        raise Unsupported(f"{ctx.node.op_type} of tensors of the dtypes {', '.join(dtypes)} "
                          f"(a sequence holds one dtype)")


@converter("SequenceConstruct")
def _sequence_construct(ctx):
    values = ctx.inputs()
    _same_dtype(ctx, values)
    return [TensorSequence(values)]


@converter("SequenceEmpty")
def _sequence_empty(ctx):
    ctx.attr("dtype")  # an empty sequence holds no tensor that could have it
    return [TensorSequence()]


@converter("SequenceLength")
def _sequence_length(ctx):
    return [Known(np.array(len(ctx.sequence(0)), np.int64))]


@converter("SequenceAt")
def _sequence_at(ctx):
    sequence = ctx.sequence(0)
    return [sequence[_position(ctx, 1, len(sequence), None, end_allowed=False)]]


@converter("SequenceInsert")
def _sequence_insert(ctx):
    sequence, tensor = ctx.sequence(0), ctx.input(1)
    _same_dtype(ctx, [*sequence, tensor])
    position = _position(ctx, 2, len(sequence), len(sequence), end_allowed=True)
    return [TensorSequence((*sequence[:position], tensor, *sequence[position:]))]


@converter("SequenceErase")
def _sequence_erase(ctx):
    sequence = ctx.sequence(0)
    position = _position(ctx, 1, len(sequence), -1, end_allowed=False)
    return [TensorSequence((*sequence[:position], *sequence[position + 1:]))]


@converter("SplitToSequence")
def _split_to_sequence(ctx):
    """torch.chunk and torch.split as the dynamo exporter writes them unoptimised (ShuffleNet's
    channel split): the parts, as Split makes them."""
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.type.rank)
    keepdims = ctx.attr("keepdims", 1)
    size = x.type.shape[axis]
    split = ctx.static(1, "SplitToSequence's split")
    if not isinstance(size, int):
        raise Unsupported(f"SplitToSequence of the symbolic axis {axis} ({size}) of {x.type}",
                          hint=dim_hint([size]))
    if split is None or split.ndim == 0:
        part = 1 if split is None else int(split)
        if part < 1:
            raise Unsupported(f"SplitToSequence into parts of {part}")
        lengths = [min(part, size - start) for start in range(0, size, part)]
    else:
        lengths = [int(v) for v in split.ravel()]
    if sum(lengths) != size or min(lengths, default=0) < 0:
        raise Unsupported(f"SplitToSequence of {size} into {lengths}")
    parts, start = [], 0
    for length in lengths:
        parts.append(ctx.emit("slice", x, starts=(start,), ends=(start + length,),
                              axes=(axis,), steps=(1,)))
        start += length
    if split is None and not keepdims:
        parts = [ctx.emit("squeeze", part, axes=(axis,)) for part in parts]
    return [TensorSequence(parts)]


@converter("ConcatFromSequence")
def _concat_from_sequence(ctx):
    sequence = ctx.sequence(0)
    if not sequence:
        raise Unsupported("ConcatFromSequence of an empty sequence (it has no shape)")
    rank = sequence[0].type.rank
    new_axis = ctx.attr("new_axis", 0)
    axis = ctx.axis(ctx.attr("axis"), rank + 1 if new_axis else rank)
    if new_axis:
        sequence = [ctx.emit("unsqueeze", value, axes=(axis,)) for value in sequence]
    if len(sequence) == 1:
        return [sequence[0]]
    return [ctx.emit("concat", *sequence, axis=axis)]


@converter("SequenceMap")
def _sequence_map(ctx):
    """The body applied to each position of the sequences (and to the tensors as they are),
    imported once per position: its outputs at each position make the output sequences."""
    body = subgraph_attr(ctx, "body")
    operands = [ctx.element(index) for index in range(len(ctx.node.input))]
    lengths = {len(value) for value in operands if isinstance(value, TensorSequence)}
    if len(lengths) != 1 or not isinstance(operands[0], TensorSequence):
        raise Unsupported(f"SequenceMap over sequences of the lengths {sorted(lengths)} (the "
                          f"first input is a sequence, and all have one length)")
    if len(body.input) != len(operands):
        raise Unsupported(f"a body of {len(body.input)} inputs for {len(operands)} operands")
    outputs = [[] for _ in body.output]
    for position in range(lengths.pop()):
        step = [value[position] if isinstance(value, TensorSequence) else value
                for value in operands]
        results = InlineImporter(ctx.importer, body).import_body(step)
        for output, result in zip(outputs, results, strict=True):
            output.append(tensor_result(ctx, result))
    return [TensorSequence(output) for output in outputs]


@converter("Optional")
def _optional(ctx):
    ctx.attr("type")  # the type of what it would hold: chainrule reads it from the input
    return [ctx.element(0)]


@converter("OptionalHasElement")
def _optional_has_element(ctx):
    return [Known(np.array(not isinstance(ctx.element(0), Absent)))]


@converter("OptionalGetElement")
def _optional_get_element(ctx):
    held = ctx.element(0)
    if held is ABSENT:
        raise Unsupported(f"OptionalGetElement of '{ctx.node.input[0]}', an optional that "
                          f"holds nothing")
    return [held]
