"""Lowering `for` loops, unrolled or as one scan node (see scan_loops.py), and the indexed
assignment `ys[:, t] = h` that collects a loop's per-step values."""
from __future__ import annotations

import math

from lark import Tree

from ..ir import ChainruleError, Value, dims, limits
from .expressions import SymbolicDim, describe_constant, is_dim, symbolic_dim_error
from .scan_loops import UNROLL_LIMIT, Collected, ScanFrame, ScanRefused, assigned_names
from .scope import Scope
from .weak import Weak

# An unrolled loop: this many iterations of one loop is already a very large graph.
MAX_LOOP_ITERATIONS = 100_000


def _type_change(before, after) -> str | None:
    """How a carried value's type changed, or None if it did not."""
    if isinstance(before, Value) and isinstance(after, Value):
        if before.type == after.type:
            return None
        return f"{_kind(before)} before and {_kind(after)} after"
    if isinstance(before, Value) == isinstance(after, Value):
        return None  # numbers or literal expressions on both sides: typed when they meet one
    hint = (f"; start it as a tensor, e.g. {_zeros_text(after)}"
            if isinstance(after, Value) else "")
    return f"{_kind(before)} before and {_kind(after)} after{hint}"


def _kind(value) -> str:
    if isinstance(value, Value):
        return str(value.type)
    return "a tensor made of literals" if isinstance(value, Weak) else "a number"


def _in_loop(error: ChainruleError, variable: str) -> ChainruleError:
    """The error, saying which scan loop's body it is in (once: the innermost); an error
    located in the body says it as its location's iteration does."""
    if "(in the loop over " in error.message or error.loc and error.loc.iteration:
        return error  # said already, or by the location's iteration
    kind = ScanRefused if isinstance(error, ScanRefused) else ChainruleError
    return kind(f"{error.message} (in the loop over {variable})", error.loc, error.notes)


def _zeros_text(value: Value) -> str:
    """The zeros(...) call that makes a tensor of value's type."""
    sizes = ", ".join(map(str, value.type.shape))
    shape = f"({sizes},)" if value.type.rank == 1 else f"({sizes})"
    dtype = "" if value.type.dtype == "f32" else f", dtype={value.type.dtype}"
    return f"zeros({shape}{dtype})"


def _whole_axis(item) -> bool:
    """A `:` subscript: the axis taken whole."""
    return isinstance(item, Tree) and item.data == "slice_range" and not any(item.children)


class LoopLowering:
    """The loop half of the statements, mixed into `Lowerer` (lower.py)."""

    def for_stmt(self, tree: Tree, scope: Scope) -> None:
        """`for t in range(...) { body }`: unrolled, or one scan node (see scan_loops.py), as
        the loop mode and the bound say."""
        variable, function, args, body = tree.children
        bounds = self.loop_range(function, args, scope)
        if scope.owner(str(variable)) is not None:
            raise ChainruleError(f"the loop variable '{variable}' is already a name here; "
                                 f"give the loop a new one", self.loc(variable))
        symbolic = [b for b in bounds if is_dim(b)]
        steps = None if symbolic else range(*bounds)
        if symbolic or self.loops == "scan" or (self.loops == "auto"
                                                and len(steps) > UNROLL_LIMIT):
            try:
                return self.scan_loop(tree, scope, bounds)
            except ChainruleError:
                # In auto, a loop of a known length unrolls when its body cannot be a scan
                # for any reason; an error the body has either way is then the unrolled one's.
                if steps is None or self.loops == "scan":
                    raise
        self.unroll(tree, scope, steps)

    def unroll(self, tree: Tree, scope: Scope, steps: range) -> None:
        """The body lowered once per iteration, its nodes marked with the iteration, and
        carried names rebound after each."""
        variable, _, _, body = tree.children
        loc = self.loc(tree)
        if len(steps) > MAX_LOOP_ITERATIONS:
            raise ChainruleError(f"this loop runs {len(steps):,} times; a loop unrolls into the "
                                 f"graph, at most {MAX_LOOP_ITERATIONS:,} times", loc)
        self.check_unrolled_total(len(steps), loc)
        self.unrolled_lengths.append(len(steps))
        try:
            for step in steps:
                self.iterations.append(f"{variable}={step}")
                self.call_path.append(f"{variable}={step}")
                try:
                    iteration = Scope("loop", scope)
                    iteration.bind(str(variable), step, self.loc(variable))
                    with self.nested("loop", loc):
                        self.lower_block(body, iteration)
                    self.carry(iteration)
                finally:
                    self.iterations.pop()
                    self.call_path.pop()
        finally:
            self.unrolled_lengths.pop()

    def check_unrolled_total(self, length: int, loc) -> None:
        """A loop inside unrolled loops unrolls once per iteration of each: refuse, before
        any of it is lowered, a nest whose product of lengths passes the model's limit."""
        total = math.prod(self.unrolled_lengths) * length
        if total > limits.MAX_LOWERED_BLOCKS:
            lengths = self.unrolled_lengths + [length]
            shown = lengths if len(lengths) <= 6 else lengths[:3] + ["..."] + lengths[-2:]
            raise ChainruleError(f"{len(lengths)} nested loops unroll "
                                 f"{' × '.join(map(str, shown))} = {total:,} iterations of "
                                 f"this one; a model lowers at most "
                                 f"{limits.MAX_LOWERED_BLOCKS:,} blocks of statements "
                                 f"({limits.BLOCKS_COUNTED})", loc)

    def loop_range(self, function, args, scope: Scope) -> tuple:
        """The (start, stop, step) of the `range(...)` a loop runs over: integers, or dims for
        the start and stop."""
        loc = self.loc(function)
        if str(function) != "range":
            raise ChainruleError(f"a for loop runs over range(...), not {function}(...)", loc)
        items = args.children if args else []
        if not 1 <= len(items) <= 3 or any(isinstance(i, Tree) and i.data == "kwarg"
                                          for i in items):
            raise ChainruleError(f"range takes one to three integers (stop, or start, stop, "
                                 f"step), got {len(items)} arguments", loc)
        bounds = [self.loop_bound(item, scope) for item in items]
        if len(bounds) == 3 and is_dim(bounds[2]):
            raise symbolic_dim_error(bounds[2], "range's step", self.loc(items[2]))
        if len(bounds) == 3 and bounds[2] == 0:
            raise ChainruleError("range's step cannot be 0", self.loc(items[2]))
        if len(bounds) == 1:
            return 0, bounds[0], 1
        return bounds[0], bounds[1], bounds[2] if len(bounds) == 3 else 1

    def loop_bound(self, tree, scope: Scope):
        value = self.expr(tree, scope)
        if is_dim(value) and self.loops == "unroll":
            raise symbolic_dim_error(value, "a loop bound (a loop unrolls with --loops unroll)",
                                     self.loc(tree))
        if is_dim(value):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            shown = f"a tensor of type {value.type}" if isinstance(value, Value) else repr(value)
            raise ChainruleError(f"a loop bound must be a compile-time integer (a number, a "
                                 f"let or a dim), not {shown}", self.loc(tree))
        return value

    def scan_loop(self, tree: Tree, scope: Scope, bounds: tuple) -> None:
        """The loop as one scan node: the body lowered once into the scan's body graph, the
        carried names rebound to the scan's results and the collected ones to its stacks."""
        variable, _, _, body = tree.children
        name, loc = str(variable), self.loc(tree)
        self.check_scan_bounds(name, bounds, loc)
        taken = self.symbolic_dims | set(self.dims) | {f.symbol for f in self.frames}
        frame = ScanFrame(name, name if name not in taken else f"{name}'", bounds,
                          self.builder, loc)
        plain, indexed = assigned_names(body)
        carried = [n for n in plain if scope.owner(n) is not None]
        collected = [n for n in indexed if scope.owner(n) is not None]
        both = [n for n in collected if n in carried]
        if both:
            raise ScanRefused(f"'{both[0]}' is assigned both whole and by index in the loop "
                              f"over '{name}'", loc)
        surroundings = Scope("loop", scope)
        for carried_name in carried:
            before = scope.lookup(carried_name, loc)
            surroundings.bindings[carried_name] = (frame.carry(carried_name, before)
                                                   if isinstance(before, Value) else before)
        for collected_name in collected:
            target = scope.lookup(collected_name, loc)
            surroundings.bindings[collected_name] = Collected(collected_name, target, frame)
        nodes_before = len(self.builder.graph.nodes)
        nexts = self.lower_scan_body(tree, frame, surroundings, carried)
        if not carried and not collected:  # lowered for its errors: nothing leaves the loop
            self.builder.truncate(nodes_before)
            return
        results, stacks = frame.scan(nexts)
        for carried_name, result in zip(carried, results, strict=True):
            scope.owner(carried_name).bindings[carried_name] = result
            self.user_values.add(result)
        for collected_name, stack in zip(collected, stacks, strict=True):
            placed = frame.placed(collected_name, stack, scope.lookup(collected_name, loc).type)
            scope.owner(collected_name).bindings[collected_name] = placed
            self.user_values.add(placed)

    def check_scan_bounds(self, name: str, bounds: tuple, loc) -> None:
        if len(self.frames) >= limits.MAX_SCAN_NESTING:
            raise ScanRefused(f"the loop over '{name}' would be a scan nested "
                              f"{len(self.frames) + 1} deep; scans nest at most "
                              f"{limits.MAX_SCAN_NESTING} deep (ONNX's readers stop at about "
                              f"30); unroll the inner loops (--loops unroll)", loc)
        for frame in self.frames:
            if any(frame.symbol in dims.symbols(b) for b in bounds if is_dim(b)):
                raise ScanRefused(f"the bound of the inner loop over '{name}' changes with "
                                  f"'{frame.variable}', but a scan's steps all run the same "
                                  f"body", loc)

    def lower_scan_body(self, tree: Tree, frame: ScanFrame, surroundings: Scope,
                        carried: list[str]) -> list[Value]:
        """Lower the body into the frame's graph; returns the carried names' next values. On
        an error, what the loop added around it is dropped (an unrolled loop may follow)."""
        variable, _, _, body = tree.children
        around, weak_forms = self.builder, self.weak_forms
        nodes_before = len(around.graph.nodes)
        # A weak value is lowered anew in the body: its forms outside are not the body's.
        self.builder, self.weak_forms = frame.builder, {weak: {} for weak in weak_forms}
        self.frames.append(frame)
        self.iterations.append(frame.variable)
        try:
            iteration = Scope("loop", surroundings)
            iteration.bind(frame.variable, SymbolicDim(frame.symbol), self.loc(variable))
            with self.nested("loop", frame.loc):
                self.lower_block(body, iteration)
            nexts = [self.carried_next(n, surroundings.parent.lookup(n, frame.loc), iteration)
                     for n in carried]
            for weak, forms in list(self.weak_forms.items()):
                if weak not in weak_forms and not forms:
                    self.lower_weak(weak, "f32")
            return nexts
        except ChainruleError as error:
            around.truncate(nodes_before)
            raise _in_loop(error, frame.variable) from None
        finally:
            self.builder, self.weak_forms = around, weak_forms
            self.frames.pop()
            self.iterations.pop()

    def carried_next(self, name: str, before, iteration: Scope) -> Value:
        """The value a scan's body gives a carried name for the next step."""
        after = iteration.owner(name).bindings[name]
        problem = _type_change(before, after)
        if problem:
            raise ChainruleError(f"'{name}' is carried from one iteration to the next, so its "
                                 f"type must stay the same, but it is {problem}",
                                 iteration.owner(name).locs.get(name))
        if not isinstance(before, Value):
            raise ScanRefused(f"'{name}' is carried through a scan as {_kind(before)}; a scan "
                              f"carries tensors: start it as a tensor, e.g. full((), "
                              f"{before!r}) or zeros(...)", iteration.owner(name).locs.get(name))
        return after

    def carry(self, iteration: Scope) -> None:
        """Rebind the names the iteration carried where they are defined, checking that each
        keeps its type, which the next iteration and the code after the loop rely on."""
        for name in iteration.carried:
            owner = iteration.parent.owner(name)
            before, after = owner.bindings[name], iteration.bindings[name]
            problem = _type_change(before, after)
            if problem:
                raise ChainruleError(f"'{name}' is carried from one iteration to the next, so "
                                     f"its type must stay the same, but it is {problem}",
                                     iteration.locs[name])
            owner.bindings[name] = after

    def index_assign_stmt(self, tree: Tree, scope: Scope) -> None:
        """`ys[:, t] = h`: ys with the values at that index replaced by h (a new value under
        the same name). In a scan's body, indexed by the loop's own variable, it collects h at
        every step instead: the scan stacks them and places the stack along that axis."""
        name_token, *items, expression = tree.children
        name, loc = str(name_token), self.loc(name_token)
        target = scope.lookup(name, loc)
        whole = target.target if isinstance(target, Collected) else target
        if not isinstance(whole, Value):
            raise ChainruleError(f"'{name}[...] = ...' updates a tensor, and '{name}' is "
                                 f"{describe_constant(whole)}", loc)
        axis, index = self.updated_axis(whole, items, scope, loc)
        value = self.as_tensor(self.expr(expression, scope), whole.type.dtype, loc)
        shape = whole.type.shape
        step_type = whole.type.with_shape(shape[:axis] + shape[axis + 1:])
        if value.type != step_type:
            raise ChainruleError(f"'{name}' is {whole.type}, so one index of its axis {axis} "
                                 f"takes a {step_type}, not a {value.type}", loc)
        if isinstance(target, Collected):
            frame = target.frame
            if index != frame.symbol:
                raise ScanRefused(f"'{name}[...]' collects one value per step of the loop "
                                  f"over '{frame.variable}', so its index is "
                                  f"'{frame.variable}' itself", loc)
            frame.collect(name, axis, value, loc)
            return
        updated = self.updated(whole, axis, index, value, loc)
        scope.bind(name, self.name_value(updated, name), loc)

    def updated_axis(self, target: Value, items, scope: Scope, loc) -> tuple:
        """The axis and the index `target[...] = ...` writes at: one index on one axis."""
        picked = [(axis, item) for axis, item
                  in enumerate(self.items_per_axis(items, target.type, loc))
                  if item is not None and not _whole_axis(item)]
        if len(picked) != 1 or isinstance(picked[0][1], Tree) and \
                picked[0][1].data in ("slice_range", "ellipsis"):
            raise ChainruleError("an indexed assignment replaces the values at one index of "
                                 "one axis, e.g. ys[:, t] = h", loc)
        axis, item = picked[0]
        index = self.expr(item, scope)
        size = target.type.shape[axis]
        if is_dim(index):
            return axis, index
        if isinstance(index, bool) or not isinstance(index, int):
            raise ChainruleError(f"an index is an integer or a loop variable, not "
                                 f"{describe_constant(index)}", self.loc(item))
        if isinstance(size, int) and not -size <= index < size:
            raise ChainruleError(f"index {index} is out of range for axis {axis} of size "
                                 f"{size}", self.loc(item))
        return axis, index % size if isinstance(size, int) else index

    def updated(self, target: Value, axis: int, index, value: Value, loc) -> Value:
        """target with `value` at `index` of `axis`: where(position == index, value, target)."""
        emit = self.builder.emit
        positions = emit("arange", (), {"n": target.type.shape[axis]}, loc=loc)
        at = (self.builder.constant(index, "i64", loc=loc) if isinstance(index, int)
              else self.loop_tensor(index, loc))
        hit = emit("equal", (positions, at), loc=loc)
        others = tuple(a for a in range(target.type.rank) if a != axis)
        if others:
            hit = emit("unsqueeze", (hit,), {"axes": others}, loc=loc)
        spread = emit("unsqueeze", (value,), {"axes": (axis,)}, loc=loc)
        return emit("where", (hit, spread, target), loc=loc)
