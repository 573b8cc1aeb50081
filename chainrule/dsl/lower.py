"""Lowering the parse tree to the graph IR: programs, statements and functions here,
expressions in expressions.py (one method per grammar alias in each).

Literals are weakly typed, as in JAX (see weak.py): `x / sqrt(2.0)` is f64 for an f64 `x`, as
`2 * x` stays f32 for an f32 one; what meets no typed value (a model output, `.T`, an index
base) is f32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lark import Tree

from ..ir import (ChainruleError, Graph, GraphBuilder, InitSpec, Param, SourceLoc, TensorType,
                  Value, dims)
from ..ir.init import INITIALIZERS, check_init
from ..ir.symbols import check_bound
from ..ir.types import is_float
from .builtins import BUILTINS, CASTS, NO_DEFAULT
from .expressions import (DIM_FOLD, ExpressionLowerer, SymbolicDim, describe_constant,
                          is_dim, is_number, suggest, symbolic_dim_error)
from .parser import parse
from .scan_loops import (LOOP_MODES, UNROLL_LIMIT, Collected, ScanFrame, ScanRefused,
                         assigned_names)
from .weak import Weak

# Functions are inlined at each call, by a recursive call of the lowering: a chain of calls
# deeper than this is an error well before Python's recursion limit...
MAX_CALL_DEPTH = 64
# ...and since a function that calls another twice doubles the nodes, a few lines can ask for
# more nodes than memory holds: one call may inline this many.
MAX_INLINED_NODES = 100_000
# An unrolled loop: this many iterations of one loop is already a very large graph.
MAX_LOOP_ITERATIONS = 100_000


@dataclass
class Function:
    name: str
    params: list  # [(name, default expression tree or None)]
    body: Tree
    loc: SourceLoc


class Scope:
    """Names visible in a model, function or loop body; a name is bound once per scope.

    A loop body's scope sees the names around it. Assigning one of those in the body rebinds
    it for the next iteration and for the code after the loop: it is `carried`. Every other
    name assigned in the body is local to one iteration."""

    def __init__(self, kind: str, parent: Scope | None = None):
        self.kind = kind
        self.parent = parent
        self.bindings: dict[str, object] = {}
        self.locs: dict[str, SourceLoc] = {}
        self.carried: list[str] = []

    def bind(self, name: str, value, loc: SourceLoc) -> None:
        if name in self.bindings:
            rule = ("a name is assigned once per iteration" if self.kind == "loop"
                    else "a name is assigned once")
            raise _redefinition(f"'{name}'", rule, loc, self.locs[name])
        if self.parent is not None and self.parent.owner(name) is not None:
            self.carried.append(name)
        self.bindings[name] = value
        self.locs[name] = loc

    def owner(self, name: str) -> Scope | None:
        """The nearest scope, this one or one around it, where `name` is bound."""
        scope = self
        while scope is not None and name not in scope.bindings:
            scope = scope.parent
        return scope

    def lookup(self, name: str, loc: SourceLoc):
        owner = self.owner(name)
        if owner is not None:
            return owner.bindings[name]
        raise ChainruleError(f"unknown name '{name}'{suggest(name, self.visible())}", loc)

    def visible(self) -> list[str]:
        names, scope = [], self
        while scope is not None:
            names += scope.bindings
            scope = scope.parent
        return names


def _whole_axis(item) -> bool:
    """A `:` subscript: the axis taken whole."""
    return isinstance(item, Tree) and item.data == "slice_range" and not any(item.children)


def _redefinition(what: str, rule: str, loc: SourceLoc, first: SourceLoc) -> ChainruleError:
    return ChainruleError(f"{what} is already defined (at line {first.line}); {rule}", loc,
                          ((first, "first defined here"),))


def _type_change(before, after) -> str | None:
    """How a carried value's type changed, or None if it did not."""
    kind = _kind
    if isinstance(before, Value) and isinstance(after, Value):
        return None if before.type == after.type else f"{kind(before)} before and {kind(after)} after"
    if isinstance(before, Value) == isinstance(after, Value):
        return None  # numbers or literal expressions on both sides: typed when they meet one
    hint = (f"; start it as a tensor, e.g. {_zeros_text(after)}"
            if isinstance(after, Value) else "")
    return f"{kind(before)} before and {kind(after)} after{hint}"


def _kind(value) -> str:
    if isinstance(value, Value):
        return str(value.type)
    return "a tensor made of literals" if isinstance(value, Weak) else "a number"


def in_loop(error: ChainruleError, variable: str) -> ChainruleError:
    """The error, saying which scan loop's body it is in (once: the innermost); an error
    located in the body says it as its location's iteration does."""
    if "(in the loop over " in error.message or error.loc and error.loc.iteration:
        return error  # said already, or by the location's iteration
    kind = ScanRefused if isinstance(error, ScanRefused) else ChainruleError
    return kind(f"{error.message} (in the loop over {variable})", error.loc, error.notes)


def _zeros_text(value: Value) -> str:
    """The zeros(...) call that makes a tensor of value's type."""
    dims = ", ".join(map(str, value.type.shape))
    shape = f"({dims},)" if value.type.rank == 1 else f"({dims})"
    dtype = "" if value.type.dtype == "f32" else f", dtype={value.type.dtype}"
    return f"zeros({shape}{dtype})"


def lower_source(source: str, filename: str = "<string>", dims: dict | None = None,
                 loops: str = "auto") -> Graph:
    """Parse and lower the one model in `source` to a graph; `dims` binds symbolic dims to
    sizes at compile time; `loops` is "auto" (a loop unrolls up to UNROLL_LIMIT steps and is
    a scan past that or over a symbolic bound), "unroll" or "scan"."""
    if loops not in LOOP_MODES:
        raise ChainruleError(f"loops is one of {', '.join(LOOP_MODES)}, not {loops!r}")
    return Lowerer(filename, dims, loops).lower_program(parse(source, filename))


class Lowerer(ExpressionLowerer):
    def __init__(self, filename: str, dims: dict | None = None, loops: str = "auto"):
        super().__init__(filename, dims)
        self.loops = loops
        self.functions: dict[str, Function] = {}
        self.call_stack: list[str] = []

    # ---- program structure --------------------------------------------------------------------

    def lower_program(self, tree: Tree) -> Graph:
        models = [item for item in tree.children if item.data == "model"]
        for item in tree.children:
            if item.data == "function":
                self.declare_function(item)
        if len(models) != 1:
            where = self.loc(models[1].children[0]) if models else SourceLoc(self.filename, 1, 1)
            raise ChainruleError(f"a file defines exactly one model, found {len(models)}", where)
        return self.lower_model(models[0])

    def declare_function(self, tree: Tree) -> None:
        name_token, fparams, body = tree.children
        name = str(name_token)
        if name in BUILTINS or name in CASTS:
            raise ChainruleError(f"'{name}' is a built-in function; give yours another name",
                                 self.loc(name_token))
        if name in self.functions:
            raise _redefinition(f"function '{name}'", "a function is defined once",
                                self.loc(name_token), self.functions[name].loc)
        params = []
        for fparam in (fparams.children if fparams else []):
            param_name, default = fparam.children
            if any(p[0] == str(param_name) for p in params):
                raise ChainruleError(f"parameter '{param_name}' is repeated",
                                     self.loc(param_name))
            params.append((str(param_name), default))
        self.functions[name] = Function(name, params, body, self.loc(name_token))

    def lower_model(self, tree: Tree) -> Graph:
        name_token, decls, body = tree.children
        self.graph = Graph(str(name_token), loc=self.loc(name_token))
        self.builder = GraphBuilder(self.graph)
        self.user_values: set[Value] = set()
        self.state_updates: dict[str, Value] = {}
        # Every weak value made, in order, with its lowered forms by dtype.
        self.weak_forms: dict[Weak, dict[str, Value]] = {}
        scope = Scope("model")
        for decl in (decls.children if decls else []):
            input_name, type_tree = decl.children
            value = Value(str(input_name), self.lower_type(type_tree))
            self.builder.namer.taken.add(value.name)
            scope.bind(value.name, value, self.loc(input_name))
            self.graph.inputs.append(value)
            self.graph.input_locs[value.name] = self.loc(input_name)
            self.user_values.add(value)
        outputs = self.lower_block(body, scope)
        if outputs is None:
            raise ChainruleError(f"model '{self.graph.name}' has no return statement",
                                 self.loc(name_token))
        # A weak value nothing used is lowered too, as f32, so a mistake in it is reported as
        # one in any call is (dce removes it).
        for weak, forms in list(self.weak_forms.items()):
            if not forms:
                self.lower_weak(weak, "f32")
        outputs += self.update_outputs()
        self.graph.outputs = [self.builder.current(v) for v in outputs]
        self.graph.objective = self.graph.outputs[0] if self.graph.outputs else None
        check_bound(self.graph)
        return self.graph

    def update_state(self, state: Value, new: Value, loc: SourceLoc) -> None:
        """Record `new` as the value training gives `state` next (batch_norm's running
        statistics); the model gets it as an extra output, `<state>.next`."""
        states = {p.value: p for p in self.graph.params if not p.trainable}
        if state not in states:
            kind = "a param" if any(p.value is state for p in self.graph.params) else \
                f"a value of type {state.type}"
            raise ChainruleError(f"'{state.name}' must be declared with state (a value training "
                                 f"updates), not {kind}", loc)
        if state.name in self.state_updates:
            raise ChainruleError(f"state '{state.name}' is updated twice; each state has one "
                                 f"update per training step", loc)
        self.state_updates[state.name] = new

    def update_outputs(self) -> list[Value]:
        outputs = []
        for state, value in self.state_updates.items():
            value = self.claim_name(self.builder.current(value), f"{state}.next")
            self.graph.updates[state] = value.name
            outputs.append(value)
        return outputs

    def lower_type(self, tree: Tree) -> TensorType:
        dtype, *dims = tree.children
        return TensorType(str(dtype), tuple(self.lower_dim(d) for d in dims if d is not None))

    def lower_dim(self, tree: Tree):
        """A dim of a declared type: a size, a symbol (its size if bound at compile time) or
        an expression over them, in canonical form."""
        if tree.data == "int_dim":
            return self.integer(tree.children[0])
        if tree.data == "sym_dim":
            name = str(tree.children[0])
            if name in self.dims:
                return self.dims[name]
            self.symbolic_dims.add(name)
            return name
        left, right = (self.lower_dim(child) for child in tree.children)
        try:
            dim = DIM_FOLD[tree.data.removeprefix("dim_")](left, right)
        except dims.NotADim as error:
            raise ChainruleError(f"the dim {error}", self.loc(tree)) from None
        if isinstance(dim, int) and dim < 1:
            raise ChainruleError(f"a dim comes to {dim}; sizes are positive", self.loc(tree))
        return dim

    def lower_block(self, block: Tree, scope: Scope):
        """Lower statements; returns the return statement's values (None if there is none)."""
        for stmt in block.children:
            if stmt.data == "return_stmt":
                if scope.kind == "loop":
                    raise ChainruleError("return cannot be inside a loop; assign the values "
                                         "and return them after it", self.loc(stmt))
                return self.lower_return(stmt, scope)
            getattr(self, stmt.data)(stmt, scope)
        return None

    # ---- loops --------------------------------------------------------------------------------

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
            except ScanRefused:
                if steps is None or self.loops == "scan":
                    raise
        self.unroll(tree, scope, steps)

    def unroll(self, tree: Tree, scope: Scope, steps: range) -> None:
        """The body lowered once per iteration, its nodes marked with the iteration, and
        carried names rebound after each."""
        variable, _, _, body = tree.children
        if len(steps) > MAX_LOOP_ITERATIONS:
            raise ChainruleError(f"this loop runs {len(steps):,} times; a loop unrolls into the "
                                 f"graph, at most {MAX_LOOP_ITERATIONS:,} times", self.loc(tree))
        for step in steps:
            self.iterations.append(f"{variable}={step}")
            try:
                iteration = Scope("loop", scope)
                iteration.bind(str(variable), step, self.loc(variable))
                self.lower_block(body, iteration)
                self.carry(iteration)
            finally:
                self.iterations.pop()

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
        for frame in self.frames:
            if any(frame.symbol in dims.symbols(b) for b in bounds if is_dim(b)):
                raise ScanRefused(f"the bound of the inner loop over '{name}' changes with "
                                  f"'{frame.variable}', but a scan's steps all run the same "
                                  f"body", loc)
        if not is_dim(bounds[0]) and not is_dim(bounds[1]) and not len(range(*bounds)):
            raise ScanRefused(f"the loop over '{name}' runs no step; a scan runs at least one",
                              loc)
        taken = self.symbolic_dims | set(self.dims) | {f.symbol for f in self.frames}
        symbol = name if name not in taken else f"{name}'"
        frame = ScanFrame(name, symbol, bounds, self.builder, loc)
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
        around, weak_forms = self.builder, self.weak_forms
        self.builder, self.weak_forms = frame.builder, {weak: {} for weak in weak_forms}
        self.frames.append(frame)
        self.iterations.append(name)
        try:
            iteration = Scope("loop", surroundings)
            iteration.bind(name, SymbolicDim(symbol), self.loc(variable))
            self.lower_block(body, iteration)
            nexts = [self.carried_next(n, scope.lookup(n, loc), iteration) for n in carried]
            for weak, forms in list(self.weak_forms.items()):
                if weak not in weak_forms and not forms:
                    self.lower_weak(weak, "f32")
        except ChainruleError as error:
            around.truncate(nodes_before)
            raise in_loop(error, name) from None
        finally:
            self.builder, self.weak_forms = around, weak_forms
            self.frames.pop()
            self.iterations.pop()
        if not carried and not collected:  # lowered for its errors: nothing leaves the loop
            around.truncate(nodes_before)
            return
        results, stacks = frame.scan(nexts)
        for carried_name, result in zip(carried, results, strict=True):
            scope.owner(carried_name).bindings[carried_name] = result
            self.user_values.add(result)
        for collected_name, stack in zip(collected, stacks, strict=True):
            target = scope.lookup(collected_name, loc)
            placed = frame.placed(collected_name, stack, target.type)
            scope.owner(collected_name).bindings[collected_name] = placed
            self.user_values.add(placed)

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

    # ---- statements ---------------------------------------------------------------------------

    def param_stmt(self, tree: Tree, scope: Scope) -> None:
        self.declare_kept(tree, scope, trainable=True)

    def state_stmt(self, tree: Tree, scope: Scope) -> None:
        self.declare_kept(tree, scope, trainable=False)

    def declare_kept(self, tree: Tree, scope: Scope, trainable: bool) -> None:
        """A param (trainable) or state declaration: a value the model keeps between runs."""
        name_token, type_tree, init_name, args = tree.children
        loc = self.loc(name_token)
        kind = "param" if trainable else "state"
        if scope.kind != "model":
            raise ChainruleError(f"{kind}s are declared in a model, not in a {scope.kind}", loc)
        value_type = self.lower_type(type_tree)
        if not is_float(value_type.dtype):
            raise ChainruleError(f"{kind} '{name_token}' must be f32 or f64, not "
                                 f"{value_type.dtype}", loc)
        init_args = []
        for arg in (args.children if args else []):
            if isinstance(arg, Tree) and arg.data == "kwarg":
                names = INITIALIZERS.get(str(init_name))
                hint = "" if names is None else f": write {init_name}({', '.join(names)})"
                raise ChainruleError(f"initialiser arguments are positional{hint}", self.loc(arg))
            constant = self.expr(arg, scope)
            if not is_number(constant) or not math.isfinite(constant):
                raise ChainruleError(f"initialiser arguments are finite numbers, not "
                                     f"{describe_constant(constant)}", self.loc(arg))
            init_args.append(float(constant))
        spec = InitSpec(str(init_name), tuple(init_args))
        problem = check_init(spec, value_type.shape)
        if problem:
            raise ChainruleError(problem, self.loc(init_name))
        value = Value(str(name_token), value_type)
        scope.bind(value.name, value, loc)
        self.builder.namer.taken.add(value.name)
        self.graph.params.append(Param(value, spec, loc, trainable))
        self.user_values.add(value)

    def let_stmt(self, tree: Tree, scope: Scope) -> None:
        name_token, expression = tree.children
        constant = self.expr(expression, scope)
        if isinstance(constant, Value):
            raise ChainruleError(f"let binds a compile-time constant; use '{name_token} = ...' "
                                 f"for a tensor", self.loc(name_token))
        self.name_value(constant, str(name_token))
        scope.bind(str(name_token), constant, self.loc(name_token))

    def assign_stmt(self, tree: Tree, scope: Scope) -> None:
        name_token, expression = tree.children
        name = str(name_token)
        loc = self.loc(name_token)
        if name in scope.bindings:
            scope.bind(name, None, loc)  # raises the "already defined" error
        value = self.name_value(self.expr(expression, scope), name)
        scope.bind(name, value, loc)

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

    def name_value(self, value, name: str):
        """The value under the name the model's text gives it (a function's names are local)."""
        if self.call_stack:
            return value
        if isinstance(value, Value) and value not in self.user_values:
            value = self.builder.rename(value, name)
            self.user_values.add(value)
        elif isinstance(value, Weak) and value.name is None:
            value.name = name  # for its lowered forms, made later
        return value

    def lower_return(self, tree: Tree, scope: Scope):
        values = [self.expr(e, scope) for e in tree.children]
        if scope.kind == "function":
            if len(values) != 1:
                raise ChainruleError("a function returns one value", self.loc(tree))
            return values[0]
        outputs = []
        for expression, value in zip(tree.children, values, strict=True):
            value = self.alone(value)
            if isinstance(value, Value):  # as it stands now: claiming an output's name renames
                value = self.builder.current(value)
            else:
                if not is_number(value):
                    raise ChainruleError("a model returns tensors or numbers, not tuples",
                                         self.loc(expression))
                value = self.builder.constant(value, "f32", loc=self.loc(expression))
            if value in outputs:
                raise ChainruleError(f"'{value.name}' is returned twice", self.loc(expression))
            if isinstance(expression, Tree) and expression.data == "name":
                value = self.claim_name(value, str(expression.children[0]))
            outputs.append(value)
        return outputs

    def claim_name(self, value: Value, name: str) -> Value:
        """An output is known by the name the return statement gives it: a value carried
        through a loop ends as `h.7`, and `return h` should give an output `h`. The earlier
        value called `h` takes a fresh name."""
        interface = set(self.graph.inputs) | set(self.graph.param_values())
        if value.name == name or value in interface:
            return value
        holder = next((out for node in self.graph.nodes for out in node.outputs
                       if out.name == name), None)
        if holder is not None:
            namer = self.builder.namer
            held = namer.fresh(name)  # `name` is taken: this gives `name.N`
            namer.release(held)
            self.builder.rename(holder, held)
        return self.builder.rename(value, name)

    def call_function(self, function: Function, positional, keywords, loc):
        chain = self.call_stack + [function.name]
        if function.name in self.call_stack:
            raise ChainruleError(f"function '{function.name}' calls itself "
                                 f"({' -> '.join(chain)}); recursion is not supported", loc)
        if len(self.call_stack) >= MAX_CALL_DEPTH:
            shown = chain[:2] + ["..."] + chain[-2:]
            raise ChainruleError(f"function calls nest more than {MAX_CALL_DEPTH} deep "
                                 f"({' -> '.join(shown)})", loc)
        nodes_before = len(self.graph.nodes)
        # On the call stack from here: a default argument may call functions too.
        self.call_stack.append(function.name)
        try:
            result = self.inline(function, positional, keywords, loc)
        except ChainruleError as error:
            if error.loc == loc:  # a mistake in the call itself
                raise
            note = (loc, f"in the call to '{function.name}' here")
            raise ChainruleError(error.message, error.loc, error.notes + (note,)) from None
        finally:
            self.call_stack.pop()
        if len(self.graph.nodes) - nodes_before > MAX_INLINED_NODES:
            raise ChainruleError(f"this call of '{function.name}' inlines more than "
                                 f"{MAX_INLINED_NODES:,} nodes (each call of a function adds "
                                 f"all of its nodes)", loc)
        return result

    def inline(self, function: Function, positional, keywords, loc):
        """The value `function` returns, its body lowered into the graph."""
        params = [p for p, _ in function.params]
        scope = Scope("function")
        defaults = {}
        for param, default in function.params:
            defaults[param] = NO_DEFAULT if default is None else self.expr(default, scope)
        bound = self.bind_arguments(function.name, params, defaults, positional, keywords, loc)
        for param in params:
            scope.bind(param, bound[param], function.loc)
        result = self.lower_block(function.body, scope)
        if result is None:
            raise ChainruleError(f"function '{function.name}' has no return statement",
                                 function.loc)
        return result
