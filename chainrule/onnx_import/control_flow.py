"""ONNX's Scan and Loop nodes onto `scan`: their body, an ONNX subgraph, is imported into the
scan's body graph by an importer of its own, whose values fall back to the enclosing scope's.
A body that reads an outer value (a weight, an input) gets it as an outer operand of the scan:
the scan's body is closed, the ONNX one need not be. Nested bodies recurse, each capturing
from the scope around it.

Scan maps directly (its scan axes and directions by transposes and reversals around a forward
scan).
Loop becomes a scan when its trip count is known and its condition can never turn false:
the iteration number is the sequence arange(M), and the scan outputs stack as Loop's do. A
Loop that may stop early has no fixed length, which a scan needs, and is refused. A Loop that
carries a sequence (whose length grows step by step, which no scan can carry) is unrolled
instead: its body is imported once per step into the graph itself, by an `InlineImporter`,
with the step's number known, so that it may stop early where its condition is known.

If takes its branch at import time where its condition is known there. Otherwise both
branches are imported into the graph (a branch computes values and changes nothing else) and
each output selects between them with `where`; that needs the branches' outputs to agree in
type (tensors of one type, or sequences of one length of such), else the condition must be a
constant.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ir import Value
from ..ir.scan import step_type
from ..ir.types import TensorType
from .body import Body, emit_scan, reversed_steps
from .context import Absent, Known, TensorSequence, Unsupported, converter
from .importer import Importer, identifier, tensor_expected


class BodyImporter(Importer):
    """Imports an ONNX subgraph into a scan's body: names it does not define are looked up
    in the enclosing importer's scope; a tensor read from there becomes a body input, which
    the scan receives as an outer operand."""

    def __init__(self, outer: Importer, subgraph, body: Body):
        model = helper.make_model(subgraph, opset_imports=outer.model.opset_import)
        super().__init__(model, outer.file, dims=outer.dims)
        self.outer = outer
        self.opset = outer.opset
        self.graph = body.graph
        self.builder = body.builder
        self.params = outer.params
        self.names = {}
        self.captured: dict[Value, Value] = {}  # outer value -> the body input holding it
        if subgraph.initializer or subgraph.sparse_initializer:
            raise Unsupported(f"initializers inside the body '{subgraph.name}'")

    # ---- the enclosing scope ------------------------------------------------------------------

    def defines(self, name: str) -> bool:
        return name in self.values or name in self.poisoned

    def capture(self, value: Value) -> Value:
        """The body input standing for an outer value."""
        if value not in self.captured:
            self.captured[value] = Value(self.builder.namer.fresh(f"{value.name}.outer"),
                                         value.type)
            self.bound.add(self.captured[value])  # no node computes it, so none renames it
        return self.captured[value]

    def tensor(self, name: str, ctx) -> Value:
        if self.defines(name):
            return super().tensor(name, ctx)
        known = self.outer.known_value(name)
        if known is not None:  # a constant: made again in the body where it is small
            self.values[name] = known
            return super().tensor(name, ctx)
        self.values[name] = self.capture(self.outer.tensor(name, None))
        return self.values[name]

    def known_value(self, name: str) -> Known | None:
        if self.defines(name):
            return super().known_value(name)
        return self.outer.known_value(name)

    def static_value(self, name: str) -> Known | None:
        if self.defines(name):
            return super().static_value(name)
        return self.outer.static_value(name)

    def type_of(self, name: str) -> TensorType:
        if self.defines(name):
            return super().type_of(name)
        return self.outer.type_of(name)

    def element(self, name: str, ctx):
        if self.defines(name):
            return super().element(name, ctx)
        held = self.outer.element(name, None)
        if isinstance(held, TensorSequence):
            return TensorSequence(map(self.capture, held))
        return held if isinstance(held, Absent) else self.tensor(name, ctx)

    def constant_tensor(self, hint: str, array: np.ndarray, loc) -> Value:
        # A body holds no params: the constant is the outer graph's, read as an outer value.
        return self.capture(self.outer.constant_tensor(hint, array, loc))

    def dims_tensor(self, array: np.ndarray, what: str, loc) -> Value:
        return self.capture(self.outer.dims_tensor(array, what, loc))

    # ---- the walk -----------------------------------------------------------------------------

    def import_body(self, inputs: list) -> list:
        """Bind the subgraph's inputs (each a body input Value, or a Known constant), convert
        its nodes and return its outputs: Values, or Known where an output is a constant."""
        for info, value in zip(self.model.graph.input, inputs, strict=True):
            self.values[info.name] = value
            if isinstance(value, Value):
                self.bound.add(value)
        for index, node in enumerate(self.model.graph.node):
            self.convert(node, index)
        if self.problems:
            first = self.problems[0]
            raise Unsupported("; ".join(f"its body's {p}" for p in self.problems),
                              needs_constant=first.needs_constant, hint=first.hint)
        return [self.result(info.name) for info in self.model.graph.output]

    def result(self, name: str):
        """A body output: a Value, or Known where it is a constant."""
        value = self.values.get(name) if self.defines(name) else None
        return value if isinstance(value, Known) else self.tensor(name, None)

    def finish(self, outputs: list[Value]) -> tuple[list[Value], list[Value]]:
        """The body's inputs completed with the captured outer values (the scan's last run of
        operands), and the outer values they stand for."""
        self.graph.inputs += list(self.captured.values())
        # A body output that is one of its inputs or an outer value is copied: a body's
        # outputs are values it computes.
        return list(self.captured), [self.computed(value) for value in outputs]

    def computed(self, value: Value) -> Value:
        if value in self.graph.inputs or value in self.captured.values():
            zero = self.builder.constant(0, value.type.dtype, loc=self.graph.loc)
            op = "logical_or" if value.type.dtype == "bool" else "add"
            return self.builder.emit(op, (value, zero), loc=self.graph.loc)
        return value


def _body_input(body: Body, info, value_type: TensorType) -> Value:
    return body.input(identifier(info.name, "input"), value_type)


def _moved(ctx, value: Value, source: int, destination: int) -> Value:
    """`value` with its axis `source` moved to `destination` (a transpose; itself if equal)."""
    if source == destination:
        return value
    perm = list(range(value.type.rank))
    perm.insert(destination, perm.pop(source))
    return ctx.emit("transpose", value, perm=tuple(perm))


class InlineImporter(BodyImporter):
    """Imports an ONNX subgraph into the enclosing graph itself (an If's branch, a step of an
    unrolled Loop, a position of SequenceMap): an outer value is read as it is, and a body
    output may be a sequence or an empty optional, as any value of the enclosing graph."""

    def __init__(self, outer: Importer, subgraph):
        super().__init__(outer, subgraph, outer)
        # Values of the enclosing graph keep their names: a body's Identity must not rename
        # them.
        self.bound = outer.bound

    def capture(self, value: Value) -> Value:
        return value

    def result(self, name: str):
        value = self.values.get(name) if self.defines(name) else None
        return value if isinstance(value, Known) else self.element(name, None)


def tensor_result(ctx, result) -> Value:
    """A body output as a tensor of the graph (a constant one made a value)."""
    if isinstance(result, Known):
        return ctx.importer.materialise(result, None, ctx, "output")
    if isinstance(result, (TensorSequence, Absent)):
        raise tensor_expected("a body output", result)
    return result


def subgraph_attr(ctx, name: str):
    graph = ctx.attr(name)
    if not isinstance(graph, onnx.GraphProto):
        raise Unsupported(f"attribute {name} must be a graph")
    return graph


@converter("Scan")
def _scan(ctx):
    subgraph = subgraph_attr(ctx, "body")
    scanned = ctx.attr("num_scan_inputs")
    operands = ctx.inputs()
    carried = len(operands) - scanned
    outputs = len(subgraph.output) - carried
    if scanned < 1 or carried < 0 or outputs < 0 or len(subgraph.input) != len(operands):
        raise Unsupported(f"attribute num_scan_inputs={scanned} for {len(operands)} inputs and "
                          f"a body of {len(subgraph.input)} inputs and "
                          f"{len(subgraph.output)} outputs")
    input_axes = ctx.attr("scan_input_axes", None) or [0] * scanned
    input_directions = ctx.attr("scan_input_directions", None) or [0] * scanned
    output_axes = ctx.attr("scan_output_axes", None) or [0] * outputs
    output_directions = ctx.attr("scan_output_directions", None) or [0] * outputs
    for name, values, count in (("scan_input_axes", input_axes, scanned),
                                ("scan_input_directions", input_directions, scanned),
                                ("scan_output_axes", output_axes, outputs),
                                ("scan_output_directions", output_directions, outputs)):
        ctx.require_length(values, count, f"attribute {name}")
        if name.endswith("directions") and not set(values) <= {0, 1}:
            raise Unsupported(f"attribute {name}={list(values)} (each is 0 or 1)")
    sequences = []
    for value, axis, direction in zip(operands[carried:], input_axes, input_directions,
                                      strict=True):
        value = _moved(ctx, value, ctx.axis(axis, value.type.rank, "scan_input_axes"), 0)
        sequences.append(reversed_steps(ctx, value) if direction else value)
    length = sequences[0].type.shape[0]

    body = Body(ctx, subgraph.name or "body")
    inner = BodyImporter(ctx.importer, subgraph, body)
    infos = list(subgraph.input)
    inputs = [_body_input(body, info, value.type) for info, value in
              zip(infos[:carried], operands[:carried], strict=True)]
    inputs += [_body_input(body, info, step_type(value.type)) for info, value in
               zip(infos[carried:], sequences, strict=True)]
    results = _emit(ctx, inner, body, inner.import_body(inputs), operands[:carried] + sequences,
                    carried, len(sequences), length)
    final, stacks = results[:carried], []
    for stack, axis, direction in zip(results[carried:], output_axes, output_directions,
                                      strict=True):
        stack = reversed_steps(ctx, stack) if direction else stack
        stacks.append(_moved(ctx, stack, 0, ctx.axis(axis, stack.type.rank,
                                                     "scan_output_axes")))
    return [*final, *stacks]


def _emit(ctx, inner: BodyImporter, body: Body, outputs: list, operands: list, carried: int,
          scanned: int, length) -> tuple:
    """The scan of the imported body over `operands` and the outer values it captured."""
    outer, outputs = inner.finish([inner.materialise(o, None, None, "output")
                                   if isinstance(o, Known) else o for o in outputs])
    return emit_scan(ctx, body, outputs, [*operands, *outer], carried=carried, scanned=scanned,
                     length=length)


@converter("Loop")
def _loop(ctx):
    subgraph = subgraph_attr(ctx, "body")
    trip_count = ctx.static_int(0, "Loop's trip count M")
    if trip_count is None:
        raise Unsupported("a Loop without a trip count M (it runs until its condition turns "
                          "false; a scan needs a fixed length)")
    condition = ctx.static(1, "Loop's condition", default=np.array(True))
    if not np.all(condition) or trip_count < 0:
        trip_count = 0  # it runs no step: a scan of none passes its carried values through
    initial = [ctx.element(i) for i in range(2, len(ctx.node.input))]
    carried = len(initial)
    infos = list(subgraph.input)
    if len(infos) != carried + 2 or len(subgraph.output) < carried + 1:
        raise Unsupported(f"a body of {len(infos)} inputs and {len(subgraph.output)} outputs "
                          f"for {carried} carried values")
    if any(isinstance(value, (TensorSequence, Absent)) for value in initial):
        return _unrolled_loop(ctx, subgraph, trip_count, initial)
    body = Body(ctx, subgraph.name or "body")
    inner = BodyImporter(ctx.importer, subgraph, body)
    iteration = ctx.emit("arange", n=trip_count)
    # The body's inputs in the scan's order: the carried values, then the iteration number.
    carried_in = [_body_input(body, info, value.type)
                  for info, value in zip(infos[2:], initial, strict=True)]
    # While the body runs, its condition input is true: that is all a Loop that never stops
    # early lets it read.
    iteration_in = _body_input(body, infos[0], step_type(iteration.type))
    outputs = inner.import_body([iteration_in, Known(np.array(True)), *carried_in])
    condition_out = outputs[0]
    if not (isinstance(condition_out, Known) and np.all(condition_out.array)):
        raise Unsupported(f"a Loop whose condition may turn false at run time (the body "
                          f"computes its condition '{subgraph.output[0].name}'; a scan has a "
                          f"fixed length)")
    return list(_emit(ctx, inner, body, outputs[1:], [*initial, iteration], carried, 1,
                      trip_count))



def _unrolled_loop(ctx, subgraph, trip_count: int, carried: list) -> list:
    """A Loop imported step by step into the graph: the carried values (sequences among them)
    pass from one step's body to the next, and each scan output stacks its steps (the body's
    inputs and outputs checked against them by _loop)."""
    steps = []
    for iteration in range(trip_count):
        inner = InlineImporter(ctx.importer, subgraph)
        condition, *outputs = inner.import_body([Known(np.array(iteration, np.int64)),
                                                 Known(np.array(True)), *carried])
        if not isinstance(condition, Known):
            raise Unsupported(f"an unrolled Loop whose condition "
                              f"'{subgraph.output[0].name}' is computed at run time")
        carried = outputs[:len(carried)]
        steps.append([tensor_result(ctx, value) for value in outputs[len(carried):]])
        if not np.all(condition.array):
            break
    if not steps and len(subgraph.output) > len(carried) + 1:
        raise Unsupported("a Loop that runs no step has scan outputs of no known shape")
    stacks = [ctx.emit("concat", *(ctx.emit("unsqueeze", value, axes=(0,)) for value in column),
                       axis=0) for column in zip(*steps, strict=True)]
    return [*carried, *stacks]


@converter("If")
def _if(ctx):
    branches = [subgraph_attr(ctx, name) for name in ("then_branch", "else_branch")]
    if len(branches[0].output) != len(branches[1].output):
        raise Unsupported(f"branches of {len(branches[0].output)} and "
                          f"{len(branches[1].output)} outputs")
    if any(branch.input for branch in branches):
        raise Unsupported("If branches that take inputs (ONNX's take none)")
    known = ctx.known(0)
    if known is not None and not known.symbolic:
        taken = branches[0] if np.all(known.array) else branches[1]
        return InlineImporter(ctx.importer, taken).import_body([])
    condition = ctx.input(0)
    then_results, else_results = (InlineImporter(ctx.importer, branch).import_body([])
                                  for branch in branches)
    return [_selected(ctx, condition, chosen, other)
            for chosen, other in zip(then_results, else_results, strict=True)]


def _selected(ctx, condition: Value, then_value, else_value):
    """`where(condition, then_value, else_value)` for each tensor the two results hold."""
    if isinstance(then_value, TensorSequence) and isinstance(else_value, TensorSequence) and \
            len(then_value) == len(else_value):
        return TensorSequence(_selected(ctx, condition, *pair)
                              for pair in zip(then_value, else_value, strict=True))
    if isinstance(then_value, (TensorSequence, Absent)) or \
            isinstance(else_value, (TensorSequence, Absent)):
        raise _branches_differ(ctx)
    then_value, else_value = tensor_result(ctx, then_value), tensor_result(ctx, else_value)
    if then_value.type != else_value.type:
        raise _branches_differ(ctx)
    return ctx.emit("where", condition, then_value, else_value)


def _branches_differ(ctx) -> Unsupported:
    return Unsupported("If whose branches give values of different types (or sequences of "
                       "different lengths) at a condition computed at run time",
                       needs_constant=ctx.node.input[0])
