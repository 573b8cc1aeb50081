"""Reverse mode through a scan: a reverse scan whose body is the forward body's own derivative.

For a scan whose body computes `(c', ys) = f(c, x, k)`, the backward is the scan, run the other
way, of the body's vector-Jacobian product: it carries `dc` from step to step and the sum of
`dk` over the steps, reads each step's `dys` and what the derivative needs of that step's
forward values, and stacks `dx`. Those forward values (the residuals) the forward scan saves:
it is rebuilt with them as extra stacked results. A value of the body that depends on the outer
values alone (a transposed weight) is the same at every step, so the backward body recomputes
it rather than saving T copies.
"""
from __future__ import annotations

from ..ir import Graph, GraphBuilder, Node, Value
from ..ir.ops import is_random
from ..ir.scan import ScanParts, stacked_type
from ..ir.types import is_float
from .activity import active_values, check_rules

# What the names of the values the backward body computes start with: d<step>/d<value>.
STEP_PREFIX = "dstep/d"


def scan_vjp(builder: GraphBuilder, node: Node, cotangents: list, active: set, reverse,
             prefix: str) -> list:
    """The cotangents of the scan's operands (None for one that needs none), given its
    results' (None for a result nothing reads); appends the backward scan to builder's graph
    and rebuilds the forward scan there with the residuals it saves. `reverse` is autodiff's
    walk, which differentiates the body as it differentiates a graph; what the backward scan
    writes is named starting with `prefix`, as every value of the backward graph is."""
    body = node.attrs["body"]
    parts = ScanParts.of(len(node.inputs), body, node.attrs["carried"], node.attrs["scanned"])
    derivative = _Derivative(body, parts, node, cotangents, active)
    if not derivative.wrt:
        return [None] * len(node.inputs)
    derivative.differentiate(reverse)
    saved = _save_residuals(builder, node, derivative.forward, derivative.residuals)
    return _emit_backward_scan(builder, node, parts, derivative, saved, cotangents, prefix)


class _Derivative:
    """The body's derivative, as the nodes of the backward body and the values it reads."""

    def __init__(self, body: Graph, parts: ScanParts, node: Node, cotangents: list,
                 active: set):
        self.body, self.parts = body, parts
        carried_in, scanned_in, outer_in = parts.operands(body.inputs)
        carried_ops, scanned_ops, outer_ops = parts.operands(node.inputs)
        # Every float carried value is differentiated: one inactive at the start may become
        # active at a later step through an active outer value.
        self.carried = [i for i, v in enumerate(carried_in) if is_float(v.type.dtype)]
        self.scanned = [i for i, v in enumerate(scanned_ops) if v in active]
        self.outer = [i for i, v in enumerate(outer_ops) if v in active]
        _, stacked_results = parts.results(cotangents)
        self.stacked = [i for i, cotangent in enumerate(stacked_results) if cotangent is not None]
        # The carried values' cotangents run through the steps whenever any cotangent reaches
        # the scan: a stack's reaches the first values too.
        reached = self.scanned or self.outer or any(c is not None for c in cotangents)
        self.wrt = [carried_in[i] for i in self.carried] if reached else []
        self.wrt += [scanned_in[i] for i in self.scanned] + [outer_in[i] for i in self.outer]

    def differentiate(self, reverse) -> None:
        body, parts = self.body, self.parts
        joint = body.copy()
        builder = GraphBuilder(joint)
        carried_out, steps_out = parts.results(body.outputs)
        carried_in = parts.operands(body.inputs)[0]
        self.carried_seeds = [Value(builder.namer.fresh(STEP_PREFIX + carried_in[i].name + ".next"),
                                    carried_in[i].type) for i in self.carried]
        self.step_seeds = [Value(builder.namer.fresh(f"{STEP_PREFIX}{steps_out[i].name}"),
                                 steps_out[i].type) for i in self.stacked]
        seeds = ([(carried_out[i], seed) for i, seed in zip(self.carried, self.carried_seeds)]
                 + [(steps_out[i], seed) for i, seed in zip(self.stacked, self.step_seeds)])
        active = active_values(body, [value for value, _ in seeds], self.wrt)
        check_rules(body, active)
        grads = reverse(builder, body, seeds, self.wrt, active, STEP_PREFIX)
        self.grads = [grads[v.name] for v in self.wrt]
        self.builder = builder
        # The forward nodes as the derivative left them: a scan among them now also saves
        # what its own derivative reads.
        self.forward = body.copy()
        self.forward.nodes = joint.nodes[:len(body.nodes)]
        self.backward_nodes = joint.nodes[len(body.nodes):]
        self._find_residuals()

    def _find_residuals(self) -> None:
        """Which forward values the backward nodes read: those that change from step to step
        are saved (residuals), the ones of outer values alone are recomputed."""
        body = self.forward
        carried_in, scanned_in, outer_in = self.parts.operands(body.inputs)
        invariant = set(outer_in)
        for node in body.nodes:
            if all(v in invariant for v in node.inputs) and not is_random(node):
                invariant.update(node.outputs)
        read = {v for node in self.backward_nodes for v in node.inputs} | set(self.grads)
        made = {v: node for node in body.nodes for v in node.outputs}
        self.residuals = [v for v in list(carried_in) + list(made)
                          if v in read and v not in invariant]
        self.sequences = [v for v in scanned_in if v in read]
        # The invariant nodes the backward reads, with what they read in turn.
        needed, recomputed = {v for v in read if v in invariant and v in made}, []
        for node in reversed(body.nodes):
            if any(v in needed for v in node.outputs):
                recomputed.append(node)
                needed.update(v for v in node.inputs if v in made)
        self.recomputed = recomputed[::-1]
        read_outer = read | {v for node in self.recomputed for v in node.inputs}
        self.outer_read = [i for i, v in enumerate(outer_in) if v in read_outer]


def _save_residuals(builder: GraphBuilder, node: Node, body: Graph,
                    residuals: list[Value]) -> list[Value]:
    """Rebuild the forward scan in builder's graph with `body` (the forward body as its
    derivative left it), each residual stacked as an extra result; returns the stacks."""
    if not residuals and body.nodes == node.attrs["body"].nodes:
        return []
    saving = body.copy()
    saving.outputs = list(body.outputs) + residuals
    length = node.attrs["length"]
    stacks = [Value(builder.namer.fresh(f"{v.name}.saved"), stacked_type(v.type, length))
              for v in residuals]
    rebuilt = Node(node.op, node.inputs, {**node.attrs, "body": saving},
                   node.outputs + tuple(stacks), node.loc)
    builder.replace_node(node, rebuilt)
    return stacks


def _emit_backward_scan(builder: GraphBuilder, node: Node, parts: ScanParts,
                        derivative: _Derivative, saved: list[Value], cotangents: list,
                        prefix: str) -> list:
    """The reverse scan over the derivative's nodes, and the operands' cotangents it gives."""
    loc = node.loc
    carried_ops, scanned_ops, outer_ops = parts.operands(node.inputs)
    carried_res, _ = parts.results(node.outputs)
    _, stacked_cots = parts.results(cotangents)
    outer_in = parts.operands(derivative.body.inputs)[2]
    grads = dict(zip(derivative.wrt, derivative.grads))
    back = Graph("body", nodes=list(derivative.recomputed) + list(derivative.backward_nodes),
                 loc=derivative.body.loc)
    body_builder = GraphBuilder(back, derivative.builder.namer)

    # Carried: each carried value's cotangent, then each outer value's running sum.
    sums_in = [Value(body_builder.namer.fresh(f"{STEP_PREFIX}{outer_in[i].name}.sum"),
                     outer_in[i].type) for i in derivative.outer]
    sums_out = [body_builder.emit("add", (total, grads[outer_in[i]]), loc=loc,
                                  name=f"{STEP_PREFIX}{outer_in[i].name}.sum")
                for total, i in zip(sums_in, derivative.outer)]
    carried_in = parts.operands(derivative.body.inputs)[0]
    back.inputs = (derivative.carried_seeds + sums_in + derivative.step_seeds
                   + derivative.residuals + derivative.sequences
                   + [outer_in[i] for i in derivative.outer_read])
    scanned_in = parts.operands(derivative.body.inputs)[1]
    back.outputs = ([grads[carried_in[i]] for i in derivative.carried] + sums_out
                    + [grads[scanned_in[i]] for i in derivative.scanned])

    def zeros_like(value: Value) -> Value:
        zero = builder.constant(0.0, value.type.dtype, loc=loc,
                                name=f"{prefix}{value.name}.zero")
        return builder.emit("broadcast_like", (zero, value), loc=loc,
                            name=f"{prefix}{value.name}.zeros")

    first = ([cotangents[i] if cotangents[i] is not None else zeros_like(carried_res[i])
              for i in derivative.carried]
             + [zeros_like(outer_ops[i]) for i in derivative.outer])
    sequences = ([stacked_cots[i] for i in derivative.stacked] + saved
                 + [scanned_ops[scanned_in.index(v)] for v in derivative.sequences])
    outer = [outer_ops[i] for i in derivative.outer_read]
    attrs = {"body": back, "length": node.attrs["length"], "carried": len(first),
             "scanned": len(sequences), "reverse": not node.attrs["reverse"]}
    names = [f"{prefix}{operand.name}.scan" for operand in
             [carried_ops[i] for i in derivative.carried] + [outer_ops[i] for i in derivative.outer]
             + [scanned_ops[i] for i in derivative.scanned]]
    results = builder.emit_results("scan", first + sequences + outer, attrs, loc=loc,
                                   names=names)
    operand_cots: list = [None] * len(node.inputs)
    carried_count, outer_count = len(derivative.carried), len(derivative.outer)
    for position, i in enumerate(derivative.carried):
        operand_cots[i] = results[position]
    for position, i in enumerate(derivative.outer):
        operand_cots[parts.carried + parts.scanned + i] = results[carried_count + position]
    for position, i in enumerate(derivative.scanned):
        operand_cots[parts.carried + i] = results[carried_count + outer_count + position]
    return operand_cots
