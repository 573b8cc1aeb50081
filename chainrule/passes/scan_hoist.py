"""Moving work out of a scan's loop, so that the loop keeps only the recurrence.

A backend runs a scan's body once per step, so every node in it is T calls, each on one
step's slice. Most of a recurrent cell's work does not need that:

- a node that reads no carried value (the input projection `x_t @ W.T + b`, or in a backward
  scan what the saved residuals alone give, `1 - y_t * y_t`) is computed for every step at
  once before the loop, on the whole sequence, and the loop reads its slices;
- a node that reads only outer values (`W.T`) is computed once before the loop;
- a node whose value never reaches a carried value (in a backward scan the weight gradient
  `dz_t^T @ x_t`) is computed for every step at once after the loop, from the stacked values
  it reads, which the loop then saves;
- a carried sum (`acc = acc + f_t`, autodiff's running sum of an outer value's cotangent) becomes
  the stack of its terms, summed after the loop, which then often moves out too: T products
  of one step's rows become one product over all T * B rows.

Computing a node for every step at once is its op applied with a leading step axis (`_batched`),
which holds for the ops listed there; any other node stays in the loop. Stochastic nodes stay
too, so that each step draws its own mask as it did.
"""
from __future__ import annotations

from ..ir import Graph, Namer, Node, OpTypeError, Value, dims, get_op
from ..ir.ops import infer_types
from ..ir.scan import ScanParts, stacked_type, step_type
from ..ir.shapes import normalize_axes, normalize_axis
from .dce import binding_inputs
from .rewrite import Rewriter

REDUCTIONS = ("sum", "mean", "max", "min", "logsumexp")


def hoist_scans(graph: Graph) -> tuple[Graph, bool]:
    rewriter = Rewriter(graph)
    namer = Namer(_all_names(graph))
    changed = False
    for node in graph.nodes:
        node = rewriter.remap(node)
        if node.op != "scan":
            rewriter.keep(node)
            continue
        fission = _Fission(node, namer)
        if not fission.worth_it():
            rewriter.keep(node)
            continue
        results = fission.emit(rewriter)
        for old, new in zip(node.outputs, results):
            if not rewriter.can_replace(old, new):
                # the value already took another result's place (a body returning one value
                # twice): this result is a copy of it
                new = fission.emit_op(rewriter, "cast", [rewriter.current(new)],
                                       {"dtype": new.type.dtype, "saturate": True}, old.name)
            rewriter.replace(old, new)
        changed = True
    result, _ = rewriter.finish()
    return result, changed


def _all_names(graph: Graph) -> set[str]:
    return {v.name for v in graph.values()}.union(*map(_all_names, graph.bodies()))


def _batched(node: Node, batched: list[bool], input_types: list, length) -> dict | None:
    """The node's attrs when its op runs on every step at once, its batched operands (those
    of `batched`) holding a leading step axis; None when the op cannot, or the types do not
    come out as the stacks of its per-step results."""
    op = get_op(node.op)
    if "stochastic" in op.traits or "structured" in op.traits or len(node.outputs) != 1:
        return None
    rank = node.output.type.rank
    attrs = dict(node.attrs)
    step_ranks = [v.type.rank for v in node.inputs]
    if "elementwise" in op.traits:
        # A leading axis keeps numpy's trailing alignment only on operands of the result's rank.
        if any(b and r != rank for b, r in zip(batched, step_ranks)):
            return None
    elif node.op == "matmul":
        if min(step_ranks) < 2:
            return None
    elif node.op == "transpose":
        attrs["perm"] = (0,) + tuple(p + 1 for p in node.attrs["perm"])
    elif node.op in REDUCTIONS:
        axes = node.attrs["axes"]
        axes = range(step_ranks[0]) if axes is None else normalize_axes(axes, step_ranks[0])
        attrs["axes"] = tuple(a + 1 for a in axes)
    elif node.op in ("softmax", "log_softmax"):
        attrs["axis"] = normalize_axis(node.attrs["axis"], step_ranks[0]) + 1
    elif node.op == "slice":
        attrs["axes"] = tuple(normalize_axis(a, step_ranks[0]) + 1 for a in node.attrs["axes"])
    elif node.op == "unsqueeze":
        attrs["axes"] = tuple(a + 1 for a in normalize_axes(node.attrs["axes"], rank))
    elif node.op == "squeeze" and node.attrs["axes"] is not None:
        attrs["axes"] = tuple(a + 1 for a in normalize_axes(node.attrs["axes"], step_ranks[0]))
    elif node.op == "reshape":
        attrs["shape"] = (length,) + tuple(node.attrs["shape"])
    elif node.op == "cast":
        pass
    else:
        return None
    try:
        (result,) = infer_types(node.op, input_types, attrs)
    except OpTypeError:
        return None
    return attrs if result == stacked_type(node.output.type, length) else None


class _Fission:
    """One scan split into what runs before its loop, the loop, and what runs after it."""

    def __init__(self, node: Node, namer: Namer):
        self.node, self.namer = node, namer
        self.body = body = node.attrs["body"]
        self.length = node.attrs["length"]
        self.parts = ScanParts.of(len(node.inputs), body, node.attrs["carried"],
                                  node.attrs["scanned"])
        self.carried_in, self.sequence_in, self.outer_in = self.parts.operands(body.inputs)
        self.carried_out, self.steps_out = self.parts.results(body.outputs)
        self.sums = self._carried_sums()
        made = {v: n for n in body.nodes for v in n.outputs}
        self.sum_nodes = {made[self.carried_out[i]] for i in self.sums}
        self._classify()

    def _readers(self) -> dict[Value, int]:
        count: dict[Value, int] = {}
        for value in [v for n in self.body.nodes for v in n.inputs] + list(self.body.outputs):
            count[value] = count.get(value, 0) + 1
        return count

    def _carried_sums(self) -> dict[int, Value]:
        """Carried values that only sum their steps' terms: the carried index -> the term."""
        readers, made = self._readers(), {v: n for n in self.body.nodes for v in n.outputs}
        sums = {}
        for index, (before, after) in enumerate(zip(self.carried_in, self.carried_out)):
            producer = made.get(after)
            if (producer is None or producer.op != "add" or readers.get(before) != 1
                    or readers.get(after) != 1 or producer.inputs.count(before) != 1):
                continue
            (term,) = [v for v in producer.inputs if v is not before]
            varying = self.sequence_in + [v for v in self.carried_in if v is not before]
            if (term.type == before.type and not self._reaches([before], term)
                    and self._reaches(varying, term)):
                sums[index] = term
        return sums

    def _reaches(self, sources: list[Value], target: Value) -> bool:
        seen = set(sources)
        for node in self.body.nodes:
            if any(v in seen for v in node.inputs):
                seen.update(node.outputs)
        return target in seen

    def _classify(self) -> None:
        """Which body values move: before the loop (`early`, by kind) or after it (`late`)."""
        body = self.body
        recurrent = [v for i, v in enumerate(self.carried_in) if i not in self.sums]
        depends = set(recurrent) | {self.carried_in[i] for i in self.sums}
        for node in body.nodes:
            if (any(v in depends for v in node.inputs) or "body" in node.attrs
                    or "stochastic" in get_op(node.op).traits):
                depends.update(node.outputs)
        feeds = {v for i, v in enumerate(self.carried_out) if i not in self.sums}
        for node in reversed(body.nodes):
            if any(v in feeds for v in node.outputs):
                feeds.update(node.inputs)
        kept_returns = {v for i, v in enumerate(self.carried_out) if i not in self.sums}
        # Before the loop: outer values alone ("outer"), or the whole sequence ("sequence").
        self.early: dict[Value, str] = {v: "outer" for v in self.outer_in}
        self.early.update((v, "sequence") for v in self.sequence_in)
        self.early_nodes: list[tuple[Node, dict | None]] = []
        for node in body.nodes:
            if (node in self.sum_nodes or any(v in depends for v in node.outputs)
                    or any(v in kept_returns for v in node.outputs)
                    or any(v not in self.early for v in node.inputs)):
                continue
            if all(self.early[v] == "outer" for v in node.inputs):
                self.early_nodes.append((node, None))
                self.early[node.output] = "outer"
                continue
            attrs = self._batched_attrs(node, lambda v: self.early[v] == "sequence")
            if attrs is not None:
                self.early_nodes.append((node, attrs))
                self.early[node.output] = "sequence"
        self._late(depends, feeds)

    def _batched_attrs(self, node: Node, is_batched) -> dict | None:
        batched = [is_batched(v) for v in node.inputs]
        types = [stacked_type(v.type, self.length) if b else v.type
                 for v, b in zip(node.inputs, batched)]
        return _batched(node, batched, types, self.length)

    def _late(self, depends: set, feeds: set) -> None:
        """Nodes after the loop: those no carried value needs, each computed on the stacks of
        what it reads; a node that cannot be leaves the loop none of its readers."""
        candidates = [n for n in self.body.nodes if n not in self.sum_nodes
                      and any(v in depends for v in n.outputs)
                      and not any(v in feeds for v in n.outputs)]
        moved: dict[Node, dict] = {}
        for node in candidates:
            attrs = self._batched_attrs(node, lambda v: self.early.get(v) != "outer")
            if attrs is not None:
                moved[node] = attrs
        while True:  # a node left in the loop keeps what it reads there too
            early = {n for n, _ in self.early_nodes}
            staying = [n for n in self.body.nodes
                       if n not in moved and n not in early and n not in self.sum_nodes]
            read_in_loop = {v for n in staying for v in n.inputs}
            dropped = [n for n in moved if any(v in read_in_loop for v in n.outputs)]
            if not dropped:
                break
            for node in dropped:
                del moved[node]
        self.late_nodes = moved

    def worth_it(self) -> bool:
        return bool(self.early_nodes or self.late_nodes or self.sums)

    def emit(self, rewriter: Rewriter) -> list[Value]:
        """Emit the nodes before the loop, the new scan and the nodes after it; returns the
        values that take the old scan's results' places."""
        node, parts = self.node, self.parts
        carried_ops, sequence_ops, outer_ops = parts.operands(node.inputs)
        outside = dict(zip(self.sequence_in, sequence_ops)) | dict(zip(self.outer_in, outer_ops))
        for inner, attrs in self.early_nodes:
            emitted = self._emit(rewriter, inner, [outside[v] for v in inner.inputs],
                                 inner.attrs if attrs is None else attrs)
            outside[inner.output] = emitted
        loop, exported = self._loop(outside)
        results = self._emit_scan(rewriter, loop, carried_ops, outside)
        (loop_carried, loop_steps) = (results[:len(loop.carried)], results[len(loop.carried):])
        stacks = dict(zip(exported, loop_steps))
        summed = {}  # a sum's term whose sum over the steps is one matrix product
        products = self._summed_products()
        for inner, attrs in self.late_nodes.items():
            inputs = [stacks.get(v, outside.get(v)) for v in inner.inputs]
            if inner.output in products and all(v.type.rank == 3 for v in inputs):
                term, transposed = products[inner.output]
                total = self._contracted(rewriter, inner, inputs)
                if transposed:
                    total = self.emit_op(rewriter, "transpose", [total], {"perm": (1, 0)},
                                          f"{term.name}.steps", inner.loc)
                summed[term] = total
                continue
            if inner.output in summed:  # the transpose of a product summed above
                continue
            stacks[inner.output] = self._emit(rewriter, inner, inputs, attrs)
        carried_iter = iter(loop_carried)
        replaced = []
        for index, first in enumerate(carried_ops):
            if index in self.sums:
                term = self.sums[index]
                total = summed.get(term) or self.emit_op(
                    rewriter, "sum", [stacks[term] if term in stacks else outside[term]],
                    {"axes": (0,), "keepdims": False}, f"{node.outputs[index].name}.steps")
                replaced.append(self.emit_op(rewriter, "add", [first, total], {},
                                              node.outputs[index].name))
            else:
                replaced.append(next(carried_iter))
        for value in self.steps_out:
            replaced.append(stacks[value] if value in stacks else outside[value])
        return replaced

    def _summed_products(self) -> dict[Value, tuple[Value, bool]]:
        """The products of two matrices per step, moved after the loop, whose steps are only
        summed (a carried sum's term, or the term's transpose): the sum over the steps of
        a_t @ b_t is one product, the steps' columns of a against the steps' rows of b. By
        the product's value: the term, and whether the term is the product transposed."""
        made = {n.output: n for n in self.late_nodes}
        readers = self._readers()
        found = {}
        for term in self.sums.values():
            if readers.get(term) != 1:  # read besides by its sum: its steps are needed too
                continue
            node, transposed = made.get(term), False
            if node is not None and node.op == "transpose" and node.attrs["perm"] == (1, 0) \
                    and readers.get(node.inputs[0]) == 1:
                node, transposed = made.get(node.inputs[0]), True
            if (node is not None and node.op == "matmul"
                    and all(v.type.rank == 2 for v in node.inputs)):
                found[node.output] = (term, transposed)
        return found

    def _contracted(self, rewriter, inner: Node, inputs: list[Value]) -> Value:
        a, b = inputs
        (_, m, k), (_, _, n) = a.type.shape, b.type.shape
        rows = dims.mul(self.length, k)
        name = inner.output.name
        producer = rewriter.producers.get(a)
        if producer is not None and producer.op == "transpose" and \
                producer.attrs["perm"] == (0, 2, 1):
            # a_t = x_t^T: the steps' rows of x, as one matrix, transposed (a view in numpy)
            x = producer.inputs[0]
            stacked = self.emit_op(rewriter, "reshape", [x], {"shape": (rows, m)}, f"{name}.lhs")
            left = self.emit_op(rewriter, "transpose", [stacked], {"perm": (1, 0)},
                                 f"{name}.lhs")
        else:
            moved = self.emit_op(rewriter, "transpose", [a], {"perm": (1, 0, 2)}, f"{name}.lhs")
            left = self.emit_op(rewriter, "reshape", [moved], {"shape": (m, rows)},
                                 f"{name}.lhs")
        right = self.emit_op(rewriter, "reshape", [b], {"shape": (rows, n)}, f"{name}.rhs")
        return self.emit_op(rewriter, "matmul", [left, right], {}, f"{name}.steps", inner.loc)

    def _loop(self, outside: dict) -> tuple[_Loop, list[Value]]:
        """The new body: the nodes that stay, reading slices of what moved before the loop;
        it returns the carried values, then every value read after it (`exported`)."""
        early = {n for n, _ in self.early_nodes}
        staying = [n for n in self.body.nodes
                   if n not in early and n not in self.late_nodes and n not in self.sum_nodes]
        made_in_loop = set(self.carried_in) | {v for n in staying for v in n.outputs}
        computed_outside = {n.output for n in self.late_nodes} | {
            n.output for n, _ in self.early_nodes if self.early[n.output] == "sequence"}
        after = [v for n in self.late_nodes for v in n.inputs if v in made_in_loop]
        # A step's value stays stacked by the loop unless it is computed outside for every
        # step (a value of outer values alone, or a sequence's own slice, is still returned
        # by the loop at each step).
        after += [v for v in self.steps_out if v not in computed_outside]
        after += [self.sums[i] for i in sorted(self.sums) if self.sums[i] in made_in_loop]
        exported = list(dict.fromkeys(after))
        return _Loop(self, staying, outside, exported), exported

    def _emit_scan(self, rewriter, loop: _Loop, carried_ops, outside) -> list[Value]:
        operands = ([carried_ops[i] for i in loop.carried_positions]
                    + [outside[v] for v in loop.sequences] + [outside[v] for v in loop.outer])
        if not loop.graph.outputs:
            return []
        attrs = {**self.node.attrs, "body": loop.graph, "carried": len(loop.carried),
                 "scanned": len(loop.sequences)}
        names = [self.node.outputs[i].name for i in loop.carried_positions]
        names += [f"{v.name}.steps" for v in loop.exported]
        types = infer_types("scan", [v.type for v in operands], attrs)
        outs = tuple(Value(name if i < len(loop.carried) else self.namer.fresh(name), t)
                     for i, (name, t) in enumerate(zip(names, types)))
        rewriter.keep(Node("scan", tuple(operands), attrs, outs, self.node.loc))
        return list(outs)

    def _emit(self, rewriter, inner: Node, inputs, attrs) -> Value:
        return self.emit_op(rewriter, inner.op, inputs, attrs, inner.output.name, inner.loc)

    def emit_op(self, rewriter, op, inputs, attrs, name, loc=None) -> Value:
        (out_type,) = infer_types(op, [v.type for v in inputs], attrs)
        out = Value(self.namer.fresh(name), out_type)
        rewriter.keep(Node(op, tuple(inputs), dict(attrs), (out,), loc or self.node.loc))
        return out


class _Loop:
    """The body of the scan that stays: its inputs, nodes and outputs."""

    def __init__(self, fission: _Fission, staying: list[Node], outside: dict,
                 exported: list[Value]):
        self.carried_positions = [i for i in range(len(fission.carried_in))
                                  if i not in fission.sums]
        self.carried = [fission.carried_in[i] for i in self.carried_positions]
        read = {v for n in staying for v in n.inputs} | set(exported)
        read |= {fission.carried_out[i] for i in self.carried_positions}
        read |= binding_inputs(fission.body, staying)
        moved = [v for v in outside if v in read and v not in fission.carried_in]
        self.sequences = [v for v in moved if fission.early.get(v) == "sequence"]
        self.outer = [v for v in moved if fission.early.get(v) == "outer"]
        self.exported = exported
        # A value computed before the loop is read in it through a new input of its own.
        renamed = {}
        for v in self.sequences + self.outer:
            if v in fission.sequence_in or v in fission.outer_in:
                renamed[v] = v
            else:
                wanted = step_type(outside[v].type) if v in self.sequences else v.type
                renamed[v] = Value(fission.namer.fresh(f"{v.name}.in"), wanted)
        graph = Graph("body", loc=fission.body.loc)
        graph.inputs = self.carried + [renamed[v] for v in self.sequences + self.outer]
        graph.nodes = [Node(n.op, tuple(renamed.get(v, v) for v in n.inputs), n.attrs,
                            n.outputs, n.loc) for n in staying]
        graph.outputs = ([fission.carried_out[i] for i in self.carried_positions]
                         + [renamed.get(v, v) for v in exported])
        self.graph = graph
