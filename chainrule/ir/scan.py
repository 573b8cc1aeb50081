"""The scan op: a loop as one node holding its body graph, as `lax.scan` and ONNX Scan keep one.

    %h, %ys = scan(%h0, %xs, %W) {length=T, carried=1, scanned=1, reverse=false} {
      body(%h: f32[B, 8], %x: f32[B, 4], %w: f32[8, 8]) { ...  return %h.next, %y }
    } : f32[B, 8], f32[T, B, 8]

Operands come in three runs: the `carried` values' first values, the `scanned` sequences (step
t reads `xs[t]`, their leading axis of size `length`), and the outer values the body reads,
unchanged at every step. The body is a closed graph: its inputs are the same three runs (a
sequence's input being one step's slice), and it reads nothing else. It returns the carried
values' next values, then one value per step, which the node stacks along a new leading axis.
The node's results are the carried values after the last step, then the stacks. With
`reverse`, step t runs from length-1 down to 0, and each step's value still lands at index t.
"""
from __future__ import annotations

from dataclasses import dataclass

from .graph import Graph
from .shapes import OpTypeError, dims_may_equal
from .types import TensorType


@dataclass(frozen=True)
class ScanParts:
    """How a scan's operands, its body's inputs and outputs, and its results split into runs."""

    carried: int
    scanned: int
    outer: int
    stacked: int

    @classmethod
    def of(cls, num_operands: int, body: Graph, carried: int, scanned: int) -> ScanParts:
        outer = num_operands - carried - scanned
        if carried < 0 or scanned < 0 or outer < 0:
            raise OpTypeError(f"scan has {num_operands} operands, fewer than its carried "
                              f"({carried}) and scanned ({scanned}) values")
        return cls(carried, scanned, outer, len(body.outputs) - carried)

    def operands(self, values) -> tuple[list, list, list]:
        """The carried, scanned and outer runs of the operands (or of the body's inputs)."""
        values = list(values)
        first, second = self.carried, self.carried + self.scanned
        return values[:first], values[first:second], values[second:]

    def results(self, values) -> tuple[list, list]:
        """The carried and stacked runs of the results (or of the body's outputs)."""
        values = list(values)
        return values[:self.carried], values[self.carried:]


def step_type(sequence: TensorType) -> TensorType:
    """One step's slice of a sequence: the type without its leading axis."""
    return sequence.with_shape(sequence.shape[1:])


def stacked_type(step: TensorType, length) -> TensorType:
    return step.with_shape((length, *step.shape))


def infer_scan(*operands: TensorType, body: Graph, length, carried: int, scanned: int,
               reverse: bool) -> tuple[TensorType, ...]:
    """The results' types, after checking that the operands fit the body's inputs, and the
    body's carried outputs its carried inputs."""
    parts = ScanParts.of(len(operands), body, carried, scanned)
    if len(body.inputs) != len(operands):
        raise OpTypeError(f"scan's body takes {len(body.inputs)} inputs for "
                          f"{len(operands)} operands")
    if parts.stacked < 0:
        raise OpTypeError(f"scan's body returns {len(body.outputs)} values, fewer than its "
                          f"{carried} carried ones")
    if isinstance(length, int) and length < 0:
        raise OpTypeError(f"scan's length is {length}, below 0")
    first, sequences, outer = parts.operands(operands)
    inputs = [value.type for value in body.inputs]
    expected = first + [step_type(s) for s in sequences if s.rank >= 1] + outer
    for index, sequence in enumerate(sequences):
        if sequence.rank == 0 or not dims_may_equal(sequence.shape[0], length):
            raise OpTypeError(f"scan's sequence {index} is {sequence}; a sequence's leading "
                              f"axis has the scan's length {length}")
    for index, (given, wanted) in enumerate(zip(expected, inputs, strict=True)):
        if given != wanted:
            raise OpTypeError(f"scan's operand {index} gives its body {given}, but body "
                              f"input %{body.inputs[index].name} is {wanted}")
    carried_out, steps = parts.results(value.type for value in body.outputs)
    for index, (before, after) in enumerate(zip(first, carried_out, strict=True)):
        if before != after:
            raise OpTypeError(f"scan's carried value {index} enters as {before} and leaves the "
                              f"body as {after}; a carried value keeps its type")
    return tuple(first) + tuple(stacked_type(step, length) for step in steps)

