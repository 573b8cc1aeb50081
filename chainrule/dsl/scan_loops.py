"""A `for` loop lowered to one `scan` node: its body lowered once, into a graph of its own.

The body graph has its own `BodyBuilder`, which shares the outer namer (names stay unique
across the printed text, as ONNX needs) and captures, on first use, each value from outside
that a node of the body reads: it becomes an outer operand of the scan (memoized). Names the
body assigns that are bound before the loop are carried values. Inside the body the loop
variable is a dim expression over a symbol of its own (`t`), so `8*t:8*t+8` keeps a constant
width; `x[:, t]` of a value from outside the loop reads a sequence (x with that axis moved to
the front), and whatever needs t as a tensor reads a counter, a scanned `arange` of t's values.
"""
from __future__ import annotations

from lark import Tree

from ..ir import ChainruleError, Graph, GraphBuilder, SourceLoc, Value, dims, get_op
from ..ir.shapes import TO_END, TO_START
from ..ir.symbols import node_symbols, symbol_sources

# In `--loops auto`, a loop with a constant bound unrolls up to this many steps and becomes a
# scan past it. Unrolled, a short loop is a few copies of its body that -O2 simplifies and
# fuses across steps; past a few dozen steps the copies cost compile time and memory in
# proportion to the length, while a scan costs the same for any length.
UNROLL_LIMIT = 16
LOOP_MODES = ("auto", "unroll", "scan")


class ScanRefused(ChainruleError):
    """A loop whose body cannot be a scan (it says why); in `auto` a loop with a constant
    bound unrolls instead."""


class Collected:
    """What a name holds inside a scan body while `name[..., t, ...] = value` collects its
    per-step values: it cannot be read there, since its value exists only after the loop."""

    def __init__(self, name: str, target: Value, frame: ScanFrame):
        self.name, self.target, self.frame = name, target, frame


def assigned_names(block: Tree) -> tuple[list[str], list[str]]:
    """The names a loop body assigns (`h = ...`, `h, c = ...`, in inner loops too) and those it
    assigns by index (`ys[:, t] = ...`, in the body itself or its ifs), in order of first
    appearance. The blocks being read wait on a list, not on Python's stack: any nesting reads."""
    plain, indexed = [], []
    waiting = [(iter(block.children), True)]  # statements, and whether they are the body's own
    while waiting:
        statements, own = waiting[-1]
        stmt = next(statements, None)
        if stmt is None:
            waiting.pop()
        elif stmt.data == "assign_stmt":
            plain.append(str(stmt.children[0]))
        elif stmt.data == "unpack_stmt":
            plain += [str(token) for token in stmt.children[:-1]]
        elif stmt.data == "index_assign_stmt":
            (indexed if own else plain).append(str(stmt.children[0]))
        elif stmt.data == "for_stmt":
            waiting.append((iter(stmt.children[3].children), False))
        elif stmt.data == "if_stmt":  # both branches: either may run
            branches = [b for b in stmt.children[1:] if b is not None]
            waiting.append((iter([s for b in branches
                                  for s in (b.children if b.data == "block" else [b])]), own))
    return list(dict.fromkeys(plain)), list(dict.fromkeys(indexed))


def range_length(start, stop, step):
    """How many steps `range(start, stop, step)` takes, as a dim: a ceiling division."""
    if step > 0:
        return dims.ceildiv(dims.sub(stop, start), step)
    return dims.ceildiv(dims.sub(start, stop), -step)


class BodyBuilder(GraphBuilder):
    """Builds a scan's body; a value from outside read by a node becomes a body input."""

    def __init__(self, graph: Graph, around: GraphBuilder, frame: ScanFrame):
        super().__init__(graph, around.namer)
        self.around = around
        self.frame = frame
        self.captured: dict[Value, Value] = {}  # a value from outside -> its body input
        self.inputs: set[Value] = set()

    def defines(self, value: Value) -> bool:
        return value in self._producers or value in self.inputs

    def input(self, hint: str, value_type) -> Value:
        value = Value(self.namer.fresh(hint), value_type)
        self.inputs.add(value)
        return value

    def capture(self, value: Value) -> Value:
        if self.defines(value):
            return value
        if value not in self.captured:
            if isinstance(self.around, BodyBuilder):
                self.around.capture(value)
            self.captured[value] = self.input(value.name, value.type)
        return self.captured[value]

    def emit_results(self, op, inputs, attrs=None, *, loc=None, names=()):
        spec = get_op(op)
        reason = ("it draws random numbers, and each step would draw the same ones"
                  if "stochastic" in spec.traits else
                  "grad and jvp are expanded in the graph of the model, not in a loop's body"
                  if op == "grad" else None)
        if reason:
            raise ScanRefused(f"{op} cannot be in the body of a scan: {reason}", loc)
        outs = super().emit_results(op, [self.capture(v) for v in inputs], attrs, loc=loc,
                                    names=names)
        builder = self
        while isinstance(builder, BodyBuilder):  # this loop's variable, and those around it
            builder.frame.check_sizes(outs, attrs or {}, loc)
            builder = builder.around
        return outs

    def rename(self, value: Value, name: str) -> Value:
        value = self.current(value)
        if value in self._producers:
            return super().rename(value, name)
        if value not in self.frame.sequences.values() or \
                any(value in node.inputs for node in self.graph.nodes):
            return value  # a carried or outer value, or a step already read, keeps its name
        # A sequence's step named by the text (`xt = x[:, t]`) before anything reads it.
        self.namer.release(value.name)
        renamed = Value(self.namer.fresh(name), value.type)
        self.inputs.discard(value)
        self.inputs.add(renamed)
        self.frame.replace_input(value, renamed)
        self._renamed[value] = renamed
        return renamed


class ScanFrame:
    """One `for` loop being lowered to a scan: its body builder, the loop's range, and the
    sequences, counter and per-step outputs its body asks for."""

    def __init__(self, variable: str, symbol: str, bounds: tuple, around: GraphBuilder,
                 loc: SourceLoc):
        self.variable, self.symbol, self.loc = variable, symbol, loc
        self.start, self.stop, self.step = bounds
        self.length = range_length(*bounds)
        self.around = around
        self.body = Graph("body", loc=loc)
        self.builder = BodyBuilder(self.body, around, self)
        self.carried: list[tuple[str, Value]] = []     # (name, body input)
        self.first_values: list[Value] = []            # their values before the loop
        self.sequences: dict[tuple[Value, int], Value] = {}  # (value, axis) -> body input
        self.scanned_operands: list[Value] = []
        self.counter: Value | None = None
        self.collected: dict[str, tuple[int, Value]] = {}  # name -> (axis, step value)

    def check_sizes(self, outs, attrs: dict, loc) -> None:
        """A size (a type's dim, a shape attr) cannot depend on t: every step has one type."""
        sizes = [d for out in outs for d in out.type.shape]
        for value in attrs.values():
            sizes += list(value) if isinstance(value, tuple) else [value]
        for size in sizes:
            if isinstance(size, (str, dims.DimExpr)) and self.symbol in dims.symbols(size):
                raise ScanRefused(f"a size here would be {size}, which changes with "
                                  f"'{self.variable}'; in a scan every step has the same "
                                  f"shapes", loc)

    def replace_input(self, old: Value, new: Value) -> None:
        """`new` in place of the sequence's body input `old`, which nothing reads yet."""
        for key, value in self.sequences.items():
            if value is old:
                self.sequences[key] = new
        if self.counter is old:
            self.counter = new

    def carry(self, name: str, first: Value) -> Value:
        value = self.builder.input(f"{name}.in", first.type)
        self.carried.append((name, value))
        self.first_values.append(first)
        return value

    def whole_axis(self, size) -> bool:
        """Whether the loop visits every index of an axis of this size, in order."""
        return self.start == 0 and self.step == 1 and self.stop == size

    def reversed_axis(self, size) -> bool:
        return (self.step == -1 and self.stop == -1
                and dims.canonical(self.start) == dims.sub(size, 1))

    def steps_of(self, value: Value, axis: int) -> Value:
        """`value` sliced to the indices the loop visits along `axis`, that axis moved to the
        front: what the scan reads one step at a time. Computed in the graph where `value`
        is defined (once, not at every step of a loop around this one); the scan node
        captures it into the graph around this loop when it is emitted."""
        home = self.around
        while isinstance(home, BodyBuilder) and not home.defines(value):
            home = home.around
        size = value.type.shape[axis]
        if not self.whole_axis(size):
            if isinstance(self.start, int) and self.start < 0 or \
                    isinstance(self.stop, int) and self.stop < (-1 if self.step < 0 else 0):
                raise ScanRefused(f"the loop over '{self.variable}' reads an axis by index "
                                  f"with a range that counts past its ends", self.loc)
            self.check_within(value, axis)
            end = TO_START if self.step < 0 and self.stop == -1 else self.stop
            value = home.emit("slice", (value,), {
                "starts": (self.start,), "ends": (end,), "axes": (axis,),
                "steps": (self.step,)}, loc=self.loc)
        if axis:
            perm = (axis, *(a for a in range(value.type.rank) if a != axis))
            value = home.emit("transpose", (value,), {"perm": perm}, loc=self.loc)
        return value

    def check_within(self, value: Value, axis: int) -> None:
        """A range of known bounds reads only indices the axis has (unrolled, an index past
        the end is an error at the step that reads it)."""
        size = value.type.shape[axis]
        if not all(isinstance(b, int) for b in (self.start, self.stop, size)):
            return
        visited = range(self.start, self.stop, self.step)
        if visited and max(visited[0], visited[-1]) >= size:
            raise ChainruleError(f"the loop over '{self.variable}' reads index "
                                 f"{max(visited[0], visited[-1])} of an axis of size {size}",
                                 self.loc)

    def sequence(self, value: Value, axis: int) -> Value:
        """The body input holding step t's slice of `value` along `axis`."""
        key = (value, axis)
        if key not in self.sequences:
            steps = self.steps_of(value, axis)
            self.scanned_operands.append(steps)
            hint = f"{value.name}.{self.variable}"
            self.sequences[key] = self.builder.input(hint, steps.type.with_shape(
                steps.type.shape[1:]))
        return self.sequences[key]

    def counter_value(self) -> Value:
        """t as an i64 tensor in the body: a sequence of arange's values."""
        if self.counter is None:
            top = dims.add(self.start, 1) if self.step < 0 else self.stop
            if isinstance(top, int) and top < 1:
                raise ScanRefused(f"the loop over '{self.variable}' uses its variable as a "
                                  f"value, which a range with negative indices cannot give",
                                  self.loc)
            outermost = self.around
            while isinstance(outermost, BodyBuilder):
                outermost = outermost.around
            indices = outermost.emit("arange", (), {"n": top}, loc=self.loc)
            steps = self.steps_of(indices, 0)
            self.scanned_operands.append(steps)
            self.counter = self.builder.input(self.variable, steps.type.with_shape(()))
            self.sequences[(indices, 0)] = self.counter
        return self.counter

    def collect(self, name: str, axis: int, value: Value, loc) -> None:
        if name in self.collected:
            raise ChainruleError(f"'{name}' takes one value per step; it is assigned once per "
                                 f"iteration", loc)
        self.collected[name] = (axis, value)

    def scan(self, carried_next: list[Value]) -> tuple[list[Value], list[Value]]:
        """Emit the scan around the loop: its carried results and its stacks."""
        builder = self.builder
        stacked = [value for _, value in self.collected.values()]
        # Captured first: a value from outside the loop may leave it as it came in.
        self.body.outputs = [builder.capture(builder.current(v)) for v in carried_next + stacked]
        self.capture_sizes()
        captured = list(builder.captured)
        self.body.inputs = ([value for _, value in self.carried] + list(self.sequences.values())
                            + [builder.captured[v] for v in captured])
        # Values from further out are captured into the graph around as the scan reads them.
        operands = self.first_values + self.scanned_operands + captured
        names = [name for name, _ in self.carried] + list(self.collected)
        results = self.around.emit_results("scan", operands, {
            "body": self.body, "length": self.length, "carried": len(self.carried),
            "scanned": len(self.scanned_operands), "reverse": False}, loc=self.loc, names=names)
        return list(results[:len(self.carried)]), list(results[len(self.carried):])

    def capture_sizes(self) -> None:
        """The body reads the size of each symbol its nodes are written with (an inner loop of
        T steps) off an input that declares it, as any graph does: the model's input declaring
        it is captured when no input of the body does."""
        builder = self.builder
        bound = {dim for value in [v for _, v in self.carried] + list(self.sequences.values())
                 + list(builder.captured.values()) for dim in value.type.shape}
        needed = set().union(*(node_symbols(node) for node in self.body.nodes)) - bound
        outermost = self.around
        while isinstance(outermost, BodyBuilder):
            outermost = outermost.around
        sources = symbol_sources(outermost.graph)
        for symbol in sorted(needed):
            if symbol in sources:
                builder.capture(sources[symbol][0])

    def placed(self, name: str, stack: Value, target_type) -> Value:
        """A stack of per-step values placed where `name[..., t, ...]` put them."""
        axis, _ = self.collected[name]
        size = target_type.shape[axis]
        if self.reversed_axis(size):
            stack = self.around.emit("slice", (stack,), {
                "starts": (TO_END,), "ends": (TO_START,), "axes": (0,), "steps": (-1,)},
                loc=self.loc)
        elif not self.whole_axis(size):
            raise ScanRefused(f"'{name}[...]' collects one value per step of the loop over "
                              f"'{self.variable}', so the loop must visit every index of its "
                              f"axis {axis} (of size {size}): range({size}), or "
                              f"range({size} - 1, -1, -1)", self.loc)
        if axis:
            rank = stack.type.rank
            perm = (*range(1, axis + 1), 0, *range(axis + 1, rank))
            stack = self.around.emit("transpose", (stack,), {"perm": perm}, loc=self.loc,
                                     name=name)
        return stack


class LoopIndexing:
    """What expressions do with a scan loop's variable, mixed into `ExpressionLowerer`
    (expressions.py), whose `frames` are the scan loops being lowered."""

    def pick_in_loop(self, base: Value, picked: list, loc) -> Value:
        """Indexing by a scan loop's variable: `x[:, t]` of a value from outside the loop is a
        sequence the scan reads step by step; any other index or slice that moves with t
        (`x[:, 8*t:8*t+8]`, `h[t - 1]`) takes the indices t gives, of a constant width."""
        for axis, (start, _, _), index in picked:
            frame = next((f for f in self.frames if index and start == f.symbol), None)
            if frame is not None and self.outside(frame, base):
                rest = [(a - (a > axis), bounds, i) for a, bounds, i in picked if a != axis]
                return self.pick(frame.sequence(base, axis), rest, loc)
        fixed = [(a, b, False) for a, b, _ in picked if not self.loop_symbols(*b)]
        result = self.pick(base, fixed, loc)
        for axis, (start, end, step), _ in picked:
            if not self.loop_symbols(start, end, step):
                continue
            width = dims.sub(end, start)
            if step != 1 or not isinstance(width, int) or width < 1:
                raise ChainruleError(f"a slice from {start} to {end} changes its width with "
                                     f"the loop's step; in a scan every step reads as many "
                                     f"values (a constant width, step 1)", loc)
            self.check_window(start, end, result.type.shape[axis], loc)
            first = self.loop_tensor(start, loc)
            offsets = self.builder.emit("arange", (), {"n": width}, loc=loc)
            indices = self.builder.emit("add", (offsets, first), loc=loc)
            result = self.builder.emit("take", (result, indices), {"axis": axis}, loc=loc)
        squeezed = tuple(axis for axis, _, index in picked if index)
        if squeezed:
            result = self.builder.emit("squeeze", (result,), {"axes": squeezed}, loc=loc)
        return result

    def check_window(self, start, end, size, loc) -> None:
        """A window that moves with the loops stays inside its axis at their first and last
        steps, where that is known: `take` would read index -1 as the last one."""
        for when in ("first", "last"):
            env = {}
            for frame in self.frames:
                steps = frame.length
                if when == "last" and not isinstance(steps, int):
                    break
                env[frame.symbol] = (frame.start if when == "first"
                                     else dims.add(frame.start, frame.step * (steps - 1)))
            else:
                low, high = dims.substitute(start, env), dims.substitute(end, env)
                if isinstance(low, int) and low < 0 or \
                        isinstance(high, int) and isinstance(size, int) and high > size:
                    raise ChainruleError(f"at the loop's {when} step this reads indices "
                                         f"{low} to {high} of an axis of size {size}", loc)

    def outside(self, frame, value: Value) -> bool:
        """Whether `value` is defined outside the body of `frame`'s loop."""
        builder = self.builder
        while True:
            if builder.defines(value):
                return False
            if builder is frame.builder:
                return True
            builder = builder.around

    def loop_symbols(self, *bounds) -> set[str]:
        """The scan loops' symbols the bounds are written with."""
        found = set()
        for bound in bounds:
            if isinstance(bound, (str, dims.DimExpr)):
                found |= dims.symbols(bound)
        return found & {frame.symbol for frame in self.frames}

    def loop_tensor(self, dim, loc) -> Value:
        """A dim that changes with scan loops' variables, as an i64 tensor of the body."""
        return dims.compute(dim, _LoopArithmetic(self, loc))


class _LoopArithmetic:
    """dims.compute's arithmetic on i64 tensors of a scan's body: a scan loop's symbol is its
    counter; any other symbol is a size the body does not have."""

    def __init__(self, lowerer: LoopIndexing, loc):
        self.lowerer, self.loc = lowerer, loc
        self.frames = {frame.symbol: frame for frame in lowerer.frames}

    def number(self, n):
        return self.lowerer.builder.constant(n, "i64", loc=self.loc)

    def symbol(self, name):
        if name not in self.frames:
            variables = ", ".join(f"'{f.variable}'" for f in self.frames.values())
            raise ChainruleError(f"an expression of the loop variable ({variables}) and the "
                                 f"dim {name} cannot be computed in a scan's body; bind {name} "
                                 f"(--dim) or unroll the loop (--loops unroll)", self.loc)
        return self.frames[name].counter_value()

    def add(self, a, b):
        return self.lowerer.builder.emit("add", (a, b), loc=self.loc)

    def mul(self, a, b):
        return self.lowerer.builder.emit("mul", (a, b), loc=self.loc)

    def floordiv(self, a, b):
        raise ChainruleError("a floor division of the loop variable cannot be computed in a "
                             "scan's body; unroll the loop (--loops unroll)", self.loc)

    mod = floordiv
