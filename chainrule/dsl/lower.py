"""Lowering the parse tree to the graph IR: programs, statements and functions here, loops in
loops.py, expressions in expressions.py (one method per grammar alias in each).

Literals are weakly typed, as in JAX (see weak.py): `x / sqrt(2.0)` is f64 for an f64 `x`, as
`2 * x` stays f32 for an f32 one; what meets no typed value (a model output, `.T`, an index
base) is f32.
"""
from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from lark import Tree

from ..ir import (ChainruleError, Graph, GraphBuilder, InitSpec, Param, SourceLoc, TensorType,
                  Value, dims, limits)
from ..ir.errors import INT64_MAX
from ..ir.init import INITIALIZERS, check_init
from ..ir.limits import dim_number_problem
from ..ir.symbols import check_bound
from ..ir.types import is_float
from .builtins import BUILTINS, CASTS, NO_DEFAULT
from .expressions import DIM_FOLD, ExpressionLowerer, describe_constant, is_dim, is_number
from .layers import LAYER_BODY_STATEMENTS, LayerLowering
from .loops import LoopLowering
from .parser import parse
from .scan_loops import LOOP_MODES, ScanRefused
from .scope import Scope, redefinition
from .weak import Weak

# Functions are inlined at each call, by a recursive call of the lowering: a chain of calls
# deeper than this is an error well before Python's recursion limit...
MAX_CALL_DEPTH = 64
# ...and since a function that calls another twice doubles the nodes, a few lines can ask for
# more nodes than memory holds: one call may inline this many.
MAX_INLINED_NODES = 100_000
# Loop bodies, if branches, function calls and layers are lowered by recursive calls, a few
# frames each: blocks nested deeper than this are an error well before Python's recursion limit.
MAX_NESTING = 100


class Results(tuple):
    """The values a function returns with `return a, b`: unpacked by `a, b = f(...)`, never a
    value of their own (unlike a tuple of numbers, a shape)."""


@dataclass
class Function:
    name: str
    params: list  # [(name, default expression tree or None)]
    body: Tree
    loc: SourceLoc
    # A layer's forward reads the names of its instance (arguments, params, layers) here.
    enclosing: Scope | None = None


def lower_source(source: str, filename: str = "<string>", dims: dict | None = None,
                 loops: str = "auto") -> Graph:
    """Parse and lower the one model in `source` to a graph; `dims` binds symbolic dims to
    sizes at compile time; `loops` is "auto" (a loop unrolls up to UNROLL_LIMIT steps and is
    a scan past that or over a symbolic bound), "unroll" or "scan"."""
    if loops not in LOOP_MODES:
        raise ChainruleError(f"loops is one of {', '.join(LOOP_MODES)}, not {loops!r}")
    lowerer = Lowerer(filename, checked_dims(dims), loops)
    graph = lowerer.lower_program(parse(source, filename))
    check_dims_read(lowerer, filename)
    return graph


def checked_dims(dims: dict | None) -> dict | None:
    """Sizes bound to symbolic dims are whole numbers a dim can be (a bool is not one)."""
    for name, size in (dims or {}).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ChainruleError(f"dims: {name!r} is not a dim's name")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
                or not 0 <= size <= INT64_MAX:
            raise ChainruleError(f"dims: {name} must be a whole number from 0 to 2**63 - 1, "
                                 f"not {size!r}")
    return {name: int(size) for name, size in dims.items()} if dims else dims


def check_dims_read(lowerer, filename: str) -> None:
    """A size bound to a dim the model never names would silently do nothing (a misspelt
    `dims={"t": 28}` for T): refuse it, listing the dims the model has."""
    unknown = sorted(set(lowerer.dims) - lowerer.dims_read)
    if unknown:
        known = sorted(lowerer.dims_read | lowerer.symbolic_dims)
        raise ChainruleError(f"dims: {filename} has no dim {', '.join(unknown)}; its dims "
                             f"are {', '.join(known) or '(none)'}")


class Lowerer(LayerLowering, LoopLowering, ExpressionLowerer):
    def __init__(self, filename: str, dims: dict | None = None, loops: str = "auto"):
        super().__init__(filename, dims)
        self.loops = loops
        self.functions: dict[str, Function] = {}
        self.layers: dict = {}  # name -> LayerDef
        self.layer_stack: list[str] = []  # the layers being instantiated, outermost first
        self.call_stack: list[str] = []
        self.open_blocks: list[str] = []  # what each block being lowered is, outermost first
        self.blocks_lowered = 0
        self.unrolled_lengths: list[int] = []  # the lengths of the unrolled loops around

    # ---- program structure --------------------------------------------------------------------

    def lower_program(self, tree: Tree) -> Graph:
        models = [item for item in tree.children if item.data == "model"]
        for item in tree.children:
            if item.data == "function":
                self.declare_function(item)
            elif item.data == "layer_def":
                self.declare_layer(item)
        if len(models) != 1:
            where = self.loc(models[1].children[0]) if models else SourceLoc(self.filename, 1, 1)
            raise ChainruleError(f"a file defines exactly one model, found {len(models)}", where)
        return self.lower_model(models[0])

    def declare_function(self, tree: Tree) -> None:
        name_token, fparams, body = tree.children
        name = str(name_token)
        self.check_new_callable(name, "function", self.loc(name_token))
        self.functions[name] = Function(name, self.formal_params(fparams), body,
                                        self.loc(name_token))

    def check_new_callable(self, name: str, kind: str, loc: SourceLoc) -> None:
        """A function or layer definition's name is new: not a built-in, nor defined before."""
        if name in BUILTINS or name in CASTS:
            raise ChainruleError(f"'{name}' is a built-in function; give your {kind} another "
                                 f"name", loc)
        earlier = self.functions.get(name) or self.layers.get(name)
        if earlier is not None:
            raise redefinition(f"{kind} '{name}'", f"a {kind} is defined once", loc,
                               earlier.loc)

    def formal_params(self, fparams) -> list:
        """[(name, default expression tree or None)] of a definition's parameter list."""
        params = []
        for fparam in (fparams.children if fparams else []):
            param_name, default = fparam.children
            if any(p[0] == str(param_name) for p in params):
                raise ChainruleError(f"parameter '{param_name}' is repeated",
                                     self.loc(param_name))
            params.append((str(param_name), default))
        return params

    def make_function(self, name, params, body, loc, enclosing=None) -> Function:
        return Function(name, params, body, loc, enclosing)

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
        if self.frames:
            raise ScanRefused("a state update (update(...), batch_norm's running statistics) "
                              "cannot be in the body of a scan: the model's outputs are "
                              "values of the graph around the loop", loc)
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

    def lower_type(self, tree: Tree, scope: Scope | None = None) -> TensorType:
        """A declared type; in a layer's body (`scope`) a name in it may be the layer's
        argument or let."""
        dtype, *dims = tree.children
        return TensorType(str(dtype), tuple(self.lower_dim(d, scope) for d in dims
                                            if d is not None))

    def lower_dim(self, tree: Tree, scope: Scope | None = None):
        """A dim of a declared type: a size, a symbol (its size if bound at compile time) or
        an expression over them, in canonical form."""
        if tree.data == "int_dim":
            return self.integer(tree.children[0])
        if tree.data == "sym_dim":
            name = str(tree.children[0])
            if scope is not None and scope.owner(name) is not None:
                return self.dim_of_name(name, scope.lookup(name, self.loc(tree)), tree)
            if name in self.dims:
                self.dims_read.add(name)
                return self.dims[name]
            self.symbolic_dims.add(name)
            return name
        left, right = (self.lower_dim(child, scope) for child in tree.children)
        try:
            dim = DIM_FOLD[tree.data.removeprefix("dim_")](left, right)
        except dims.NotADim as error:
            raise ChainruleError(f"the dim {error}", self.loc(tree)) from None
        problem = dim_number_problem(dim)
        if problem:
            raise ChainruleError(problem, self.loc(tree))
        if isinstance(dim, int) and dim < 1:
            raise ChainruleError(f"a dim comes to {dim}; sizes are positive", self.loc(tree))
        return dim

    def dim_of_name(self, name: str, value, tree: Tree):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if is_dim(value):
            return str(value) if isinstance(value, str) else value
        raise ChainruleError(f"'{name}' in a type is a size, a positive integer or a dim, not "
                             f"{describe_constant(value)}", self.loc(tree))

    @contextmanager
    def nested(self, kind: str, loc: SourceLoc):
        """Lowering a block that `kind` ("loop", "if", "function call", "layer") opens at
        `loc`: one level deeper, and one more block lowered."""
        if len(self.open_blocks) >= MAX_NESTING:
            raise ChainruleError(f"{_nesting(self.open_blocks + [kind])} nested "
                                 f"{len(self.open_blocks) + 1} deep here; at most "
                                 f"{MAX_NESTING}", loc)
        self.blocks_lowered += 1
        if self.blocks_lowered > limits.MAX_LOWERED_BLOCKS:
            raise ChainruleError(f"the model lowers more than {limits.MAX_LOWERED_BLOCKS:,} "
                                 f"blocks of statements by here ({limits.BLOCKS_COUNTED}); "
                                 f"make it smaller", loc)
        self.open_blocks.append(kind)
        try:
            yield
        finally:
            self.open_blocks.pop()

    def lower_block(self, block: Tree, scope: Scope):
        """Lower statements; returns the return statement's values (None if there is none)."""
        for stmt in block.children:
            if scope.kind == "layer" and stmt.data not in LAYER_BODY_STATEMENTS:
                raise ChainruleError("a layer's body declares params, state, lets and layers "
                                     "and defines forward(...); computing goes in forward",
                                     self.loc(stmt))
            if stmt.data == "return_stmt":
                if scope.kind == "loop":
                    raise ChainruleError("return cannot be inside a loop; assign the values "
                                         "and return them after it", self.loc(stmt))
                return self.lower_return(stmt, scope)
            if stmt.data == "if_stmt":
                returned = self.if_stmt(stmt, scope)
                if returned is not None:
                    return returned
                continue
            getattr(self, stmt.data)(stmt, scope)
        return None

    def if_stmt(self, tree: Tree, scope: Scope):
        """`if COND { ... } else { ... }`, decided when the model compiles: the branch COND
        picks is lowered in the scope around it (an `if` has no scope of its own: what a
        branch assigns, the lines after it read); returns a return statement's values."""
        branch = tree
        while branch is not None and branch.data == "if_stmt":  # `else if` chains, any length
            branch = self.chosen_branch(branch, scope)
        if branch is None:
            return None
        with self.nested("if", self.loc(tree)):
            return self.lower_block(branch, scope)

    def chosen_branch(self, tree: Tree, scope: Scope):
        """The block, `else if`, or None that an if's condition picks."""
        condition, chosen, otherwise = tree.children
        value = self.expr(condition, scope)
        if not isinstance(value, bool):
            shown = (f"a tensor of type {value.type}; for values chosen per element, use "
                     f"where(cond, a, b)" if isinstance(value, Value) else
                     f"{describe_constant(value)}")
            raise ChainruleError(f"an if's condition is true or false when the model "
                                 f"compiles (lets, numbers, bound dims, the loop variable "
                                 f"of an unrolled loop), not {shown}", self.loc(condition))
        return chosen if value else otherwise

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
        if scope.kind not in ("model", "layer"):
            raise ChainruleError(f"{kind}s are declared in a model or a layer, not in a "
                                 f"{scope.kind}", loc)
        value_type = self.lower_type(type_tree, scope if scope.kind == "layer" else None)
        if not is_float(value_type.dtype):
            raise ChainruleError(f"{kind} '{name_token}' must be of a float dtype (f16, bf16, "
                                 f"f32, f64), not {value_type.dtype}", loc)
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
        name = (self.layer_param_name(scope, str(name_token), loc) if scope.kind == "layer"
                else str(name_token))
        value = Value(name, value_type)
        scope.bind(str(name_token), value, loc)
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
        value = self.expr(expression, scope)
        if isinstance(value, Results):
            raise ChainruleError(f"this call returns {len(value)} values; unpack them, one "
                                 f"name each: {', '.join(['a', 'b', 'c', 'd'][:len(value)])}"
                                 f"{', ...' if len(value) > 4 else ''} = ...",
                                 self.loc(expression))
        self.assign(name_token, value, scope)

    def unpack_stmt(self, tree: Tree, scope: Scope) -> None:
        """`h, c = cell(x, h, c)`: each name takes one of the values the call returns."""
        *name_tokens, expression = tree.children
        value = self.expr(expression, scope)
        if not isinstance(value, Results):
            raise ChainruleError(f"{len(name_tokens)} names take the values of a function "
                                 f"that returns as many (return a, b), not one value",
                                 self.loc(expression))
        if len(value) != len(name_tokens):
            raise ChainruleError(f"{len(name_tokens)} names for {len(value)} values",
                                 self.loc(name_tokens[0]))
        names = [str(token) for token in name_tokens]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated:
            raise ChainruleError(f"'{repeated}' is named twice", self.loc(name_tokens[0]))
        for token, item in zip(name_tokens, value):
            self.assign(token, item, scope)

    def assign(self, name_token, value, scope: Scope) -> None:
        name = str(name_token)
        loc = self.loc(name_token)
        if name in scope.bindings and scope.kind == "loop":
            scope.bind(name, None, loc)  # raises the "already defined" error
        scope.bind(name, self.name_value(value, name), loc, again=True)

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
        nested = next((e for e, v in zip(tree.children, values) if isinstance(v, Results)),
                      None)
        if nested is not None:
            raise ChainruleError("a call that returns several values is unpacked first "
                                 "(a, b = f(...)), not returned as one", self.loc(nested))
        if scope.kind == "function":
            return values[0] if len(values) == 1 else Results(values)
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

    def call_function(self, function: Function, positional, keywords, loc, label=None):
        """The value a call of `function` returns; its nodes' locations are in the call's
        scope, `label` (a layer's path) or the function's name, with where it is called."""
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
        self.call_path.append(f"{label or function.name} {loc.line}:{loc.col}")
        try:
            result = self.inline(function, positional, keywords, loc)
        except ChainruleError as error:
            if error.loc == loc:  # a mistake in the call itself
                raise
            note = (loc, f"in the call to '{function.name}' here")
            raise ChainruleError(error.message, error.loc, error.notes + (note,)) from None
        finally:
            self.call_stack.pop()
            self.call_path.pop()
        if len(self.graph.nodes) - nodes_before > MAX_INLINED_NODES:
            raise ChainruleError(f"this call of '{function.name}' inlines more than "
                                 f"{MAX_INLINED_NODES:,} nodes (each call of a function adds "
                                 f"all of its nodes)", loc)
        return result

    def inline(self, function: Function, positional, keywords, loc):
        """The value `function` returns, its body lowered into the graph."""
        params = [p for p, _ in function.params]
        scope = Scope("function", function.enclosing)
        defaults = {}
        for param, default in function.params:
            defaults[param] = NO_DEFAULT if default is None else self.expr(default, scope)
        bound = self.bind_arguments(function.name, params, defaults, positional, keywords, loc)
        for param in params:
            scope.bind(param, bound[param], function.loc)
        with self.nested("function call", loc):
            result = self.lower_block(function.body, scope)
        if result is None:
            raise ChainruleError(f"function '{function.name}' has no return statement",
                                 function.loc)
        return result


def _nesting(kinds: list[str]) -> str:
    """What the open blocks are: "loops", or "blocks (97 loops, 3 ifs, 1 function call)"."""
    counts = Counter(kinds)
    if len(counts) == 1:
        return f"{kinds[0]}s"
    listed = ", ".join(f"{count} {kind}{'s' if count > 1 else ''}"
                       for kind, count in counts.items())
    return f"blocks ({listed})"
