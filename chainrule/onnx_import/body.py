"""Writing a scan's body from a converter: RNN, GRU and LSTM (recurrent.py) write their cell
with IR ops, Scan and Loop (control_flow.py) import their ONNX subgraph into one. Either way the
body is a closed graph of its own, built through the same builder as the outer graph, its nodes
located at the ONNX node that made them."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, GraphBuilder, Value
from ..ir.graph import Namer
from ..ir.shapes import FAR
from ..ir.types import TensorType
from .context import Unsupported

# Past the start of any axis, for a slice that runs backwards to the first element.
BEFORE_START = -FAR


class Body:
    """A body graph under construction: its inputs (declared in the scan's order: carried,
    scanned, outer) and the nodes that compute its outputs."""

    def __init__(self, ctx, name: str = "body"):
        self.ctx = ctx
        self.graph = Graph(name, loc=ctx.loc)
        self.builder = GraphBuilder(self.graph, Namer())

    def input(self, name: str, value_type: TensorType) -> Value:
        value = Value(self.builder.namer.fresh(name), value_type)
        self.graph.inputs.append(value)
        return value

    def emit(self, op: str, *inputs: Value, **attrs) -> Value:
        try:
            return self.builder.emit(op, inputs, attrs, loc=self.ctx.loc)
        except ChainruleError as error:
            raise Unsupported(f"{op} in the loop's body: {error.message}") from None

    def named(self, value: Value, name: str) -> Value:
        """`value` (a node's output) under a name a reader of the body recognises."""
        return self.builder.rename(value, name)

    def constant(self, value: float, dtype: str) -> Value:
        return self.builder.constant(value, dtype, loc=self.ctx.loc)


def emit_scan(ctx, body: Body, outputs, operands, *, carried: int, scanned: int, length,
              reverse: bool = False) -> tuple[Value, ...]:
    """The scan of `body` (returning `outputs`: the carried values' next values, then the
    per-step ones) over `operands`, appended to the outer graph: its results. With `reverse`
    the steps run from the last to the first, written as a forward scan over the sequences
    reversed whose stacks are reversed back: a `.nn` loop lowers to that one, so an import
    with a reverse direction still prints as DSL (`chainrule import -o model.nn`)."""
    body.graph.outputs = list(outputs)
    operands = list(operands)
    sequences = slice(carried, carried + scanned)
    if reverse:
        operands[sequences] = [reversed_steps(ctx, value) for value in operands[sequences]]
    attrs = {"body": body.graph, "length": length, "carried": carried, "scanned": scanned,
             "reverse": False}
    try:
        results = ctx.builder.emit_results("scan", operands, attrs, loc=ctx.loc)
    except ChainruleError as error:
        raise Unsupported(f"scan: {error.message}") from None
    if not reverse:
        return results
    return (*results[:carried], *(reversed_steps(ctx, stack) for stack in results[carried:]))


def reversed_steps(ctx, value: Value) -> Value:
    """`value` in reverse order along its leading axis (the steps of a sequence or a stack)."""
    return ctx.emit("slice", value, starts=(-1,), ends=(BEFORE_START,), axes=(0,), steps=(-1,))
