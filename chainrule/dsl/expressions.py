"""Lowering expressions: one `x_<alias>` method per expression alias of the grammar.

Expressions evaluate to an IR `Value`, a compile-time constant (int, float, bool or a tuple of
them) or a `Weak` value (see weak.py). Constants fold in Python (`2 * 3`); integer constants
stay within 64 bits. In an elementwise op a float literal meeting an integer tensor makes it
f64, as numpy 2 does with Python scalars (NEP 50): `y * 0.5` is f64, `y + 1` stays i64; tensors
of two dtypes are cast to the one they promote to (ir/types.py, JAX's lattice).

Expressions nest as deep as the text does (`-(-(-x))`, a sum of 20,000 terms), so they are not
evaluated by recursion: see `ExpressionLowerer.expr` and `ExpressionLowerer.lower_weak`.
"""
from __future__ import annotations

import difflib
import operator
from types import GeneratorType

from lark import Token, Tree

from ..ir import OPS, ChainruleError, SourceLoc, TensorType, Value, compositions, dims, get_op
from ..ir.errors import INT64_MAX, integer_literal
from ..ir.limits import dim_number_problem
from ..ir.shapes import TO_END, TO_START
from ..ir.types import (UNKNOWN, WEAK_FLOAT, int_range, int_range_text, is_float, is_int,
                        promote_types, with_article)
from .builtins import BUILTINS, CASTS, NO_DEFAULT, DTypeName, StringLiteral
from .scan_loops import Collected, LoopIndexing, ScanRefused
from .weak import STRONG_BUILTINS, WEAK_OPERATORS, Weak, is_float_literal


def _on_bools(fn):
    def fold(a, b):
        if not (isinstance(a, bool) and isinstance(b, bool)):
            raise ValueError("'and' and 'or' take true or false")
        return fn(a, b)
    return fold


FOLD = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "less": operator.lt, "less_equal": operator.le, "greater": operator.gt,
    "greater_equal": operator.ge, "equal": operator.eq, "not_equal": operator.ne,
    "logical_and": _on_bools(operator.and_), "logical_or": _on_bools(operator.or_),
}
BINARY_OPS = tuple(FOLD) + ("matmul",)
# Arithmetic where an operand is a symbolic dim: a dim expression (`S-1`, `B*H`, `W//2`).
DIM_FOLD = {"add": dims.add, "sub": dims.sub, "mul": dims.mul, "floordiv": dims.floordiv,
            "mod": dims.mod}
# `//` and `%` on tensors: no op of their own, but floor of a quotient (Python's semantics).
TENSOR_COMPOSITIONS = {"floordiv": compositions.floor_divide, "mod": compositions.remainder}
# Unary operators on constants: the fold and the kind of constant it takes.
UNARY_FOLD = {"neg": (operator.neg, "a number"), "logical_not": (operator.not_, "true or false")}


class SymbolicDim(str):
    """A symbolic dim named in an expression (`zeros((B, 32))`): its size is known only when
    the model runs. It is the string a shape holds for that dim."""


def is_dim(value) -> bool:
    """A symbolic dim or an expression over them (dims.DimExpr), as an expression's value."""
    return isinstance(value, (SymbolicDim, dims.DimExpr))


def as_dim_value(dim):
    """A dims.py result as an expression's value: a bare symbol is a SymbolicDim."""
    return SymbolicDim(dim) if isinstance(dim, str) else dim


def symbolic_dim_error(dim: SymbolicDim, use: str, loc) -> ChainruleError:
    return ChainruleError(f"{dim} is a symbolic dim, known only when the model runs, but "
                          f"{use} must be known when it compiles; bind it (--dim {dim}=N on "
                          f"the command line, or chainrule.compile(..., dims={{'{dim}': N}})) "
                          f"or give a number", loc)


class ExpressionLowerer(LoopIndexing):
    """The expression half of the lowering; `Lowerer` (lower.py) adds programs, statements and
    functions, and sets up `graph`, `builder`, `user_values`, `weak_forms`, `functions` and
    `call_stack`."""

    def __init__(self, filename: str, dims: dict | None = None):
        self.filename = filename
        self.dims = dict(dims or {})        # symbolic dims bound to sizes at compile time
        self.symbolic_dims: set[str] = set()  # the others that the model's types declare
        self.dims_read: set[str] = set()  # the bound ones the model reads (the rest are unknown)
        self.iterations: list[str] = []     # the enclosing loops' current steps, `t=3`
        self.call_path: list[str] = []      # the enclosing calls and loop steps (a loc's scope)
        self.frames: list = []              # the enclosing loops lowered to scans (ScanFrame)

    def loc(self, item) -> SourceLoc:
        """Where `item` is, and in which iteration of the loops around it."""
        line, column = ((item.line, item.column) if isinstance(item, Token)
                        else (item.meta.line, item.meta.column))
        return SourceLoc(self.filename, line, column, ", ".join(self.iterations),
                         scope=tuple(self.call_path))

    def integer(self, token: Token) -> int:
        return integer_literal(str(token), self.loc(token))

    def expr(self, tree, scope):
        """The value of an expression tree: an IR Value or a compile-time constant.

        One `x_<alias>` method per expression alias. A leaf's method returns its value; a
        method that needs the values of subtrees is a generator that yields each subtree and is
        sent back its value. This loop keeps those waiting generators on a list rather than on
        Python's stack, so an expression may nest as deep as memory allows.
        """
        waiting = []
        value = self.start(tree, scope, waiting)
        while waiting:
            try:
                subtree = waiting[-1].send(value)
            except StopIteration as finished:
                waiting.pop()
                value = finished.value
            else:
                value = self.start(subtree, scope, waiting)
        return value

    def start(self, tree, scope, waiting: list):
        """A leaf's value; or None, having put the generator of an inner node on `waiting`."""
        result = getattr(self, "x_" + tree.data)(tree, scope)
        if isinstance(result, GeneratorType):
            waiting.append(result)
            return None
        return result

    def x_int_literal(self, tree, scope):
        return self.integer(tree.children[0])

    def x_float_literal(self, tree, scope):
        return float(tree.children[0])

    def x_true_literal(self, tree, scope):
        return True

    def x_false_literal(self, tree, scope):
        return False

    def x_dtype_literal(self, tree, scope):
        return DTypeName(str(tree.children[0]))

    def x_string_literal(self, tree, scope):
        return StringLiteral(str(tree.children[0])[1:-1])

    def x_none_literal(self, tree, scope):
        return None

    def x_tuple_literal(self, tree, scope):
        items = []
        for child in tree.children:
            if child is not None:
                items.append((yield child))
        if not all(is_number(item) or is_dim(item) for item in items):
            raise ChainruleError("tuples hold numbers (axes, shapes, permutations), not "
                                 "tensors or tuples", self.loc(tree))
        return tuple(items)

    def x_name(self, tree, scope):
        """A name's value; a dim's name, where no value has it, is its size when bound at
        compile time, else the symbolic dim itself (as a shape holds it)."""
        name = str(tree.children[0])
        if scope.owner(name) is None:
            if name in self.dims:
                self.dims_read.add(name)
                return self.dims[name]
            if name in self.symbolic_dims:
                return SymbolicDim(name)
        value = scope.lookup(name, self.loc(tree))
        if self.is_layer(value):
            raise self.layer_used_as_value(name, value, self.loc(tree))
        if isinstance(value, Collected):
            raise ScanRefused(f"'{name}' collects the values of the loop over "
                              f"'{value.frame.variable}' step by step; it is read after the "
                              f"loop, not in it", self.loc(tree))
        return value

    def unary(self, op, tree, scope):
        operand = yield tree.children[0]
        loc = self.loc(tree)
        if isinstance(operand, Weak) and op in WEAK_OPERATORS:
            return self.defer(op, WEAK_OPERATORS[op], [(operand, loc)], {}, loc)
        if isinstance(operand, (Value, Weak)):
            return self.builder.emit(op, (self.alone(operand),), loc=loc)
        if op == "neg" and is_dim(operand):
            return as_dim_value(dims.neg(operand))
        fold, takes = UNARY_FOLD[op]
        if not is_number(operand) or (op == "logical_not") != isinstance(operand, bool):
            raise ChainruleError(f"'{op}' takes a tensor or {takes}, not {operand!r}",
                                 self.loc(tree))
        return fold(operand)

    def x_indexing(self, tree, scope):
        """x[...] is a slice of the ranges and integers, then a squeeze of the integers' axes."""
        base_tree, *items = tree.children
        loc = self.loc(tree)
        base = self.alone((yield base_tree))
        if not isinstance(base, Value):
            raise ChainruleError("only tensors can be indexed", loc)
        picked = []  # (axis, (start, end, step), whether an index drops the axis)
        for axis, item in enumerate(self.items_per_axis(items, base.type, loc)):
            if item is None:
                continue
            if isinstance(item, Tree) and item.data == "slice_range":
                bounds = yield from self.slice_bounds(item)
            else:
                bounds = yield from self.index_bounds(item, base.type.shape[axis], axis)
            picked.append((axis, bounds, not (isinstance(item, Tree)
                                              and item.data == "slice_range")))
        return self.pick(base, picked, loc)

    def pick(self, base: Value, picked: list, loc) -> Value:
        """base sliced to each picked axis' (start, end, step), then the indexed axes dropped;
        bounds that change with a scan loop's variable read a sequence or take."""
        if any(self.loop_symbols(bound) for _, bounds, _ in picked for bound in bounds):
            return self.pick_in_loop(base, picked, loc)
        window = {"starts": (), "ends": (), "axes": (), "steps": ()}
        for axis, bounds, _ in picked:
            if bounds != (0, TO_END, 1):
                for key, bound in zip(("starts", "ends", "steps"), bounds, strict=True):
                    window[key] += (bound,)
                window["axes"] += (axis,)
        squeezed = tuple(axis for axis, _, index in picked if index)
        result = base
        if window["axes"]:
            result = self.builder.emit("slice", (result,), window, loc=loc)
        if squeezed:
            result = self.builder.emit("squeeze", (result,), {"axes": squeezed}, loc=loc)
        return result

    def items_per_axis(self, items, value_type: TensorType, loc) -> list:
        """One subscript item per axis: '...' and the axes after the last item take None (all)."""
        ellipses = [i for i, item in enumerate(items)
                    if isinstance(item, Tree) and item.data == "ellipsis"]
        named = len(items) - len(ellipses)
        if len(ellipses) > 1 or named > value_type.rank:
            raise ChainruleError(f"{named} indices (and {len(ellipses)} '...') for a tensor of "
                                 f"type {value_type}; give at most one per axis and one '...'",
                                 loc)
        if ellipses:
            at = ellipses[0]
            items = items[:at] + [None] * (value_type.rank - named) + items[at + 1:]
        return list(items) + [None] * (value_type.rank - len(items))

    def slice_bounds(self, tree):
        """Yields the bounds' subtrees; returns (start, end, step)."""
        bounds = []
        for child in tree.children[:2]:
            bounds.append(None if child is None
                          else (yield from self.constant_int(child, "slice bound", dim=True)))
        step_tree = tree.children[2]
        bounds.append(None if step_tree is None
                      else (yield from self.constant_int(step_tree, "slice step")))
        start, end, step = bounds
        step = 1 if step is None else step
        if step == 0:
            raise ChainruleError("a slice step cannot be 0", self.loc(tree))
        if start is None:
            start = 0 if step > 0 else TO_END
        if end is None:
            end = TO_END if step > 0 else TO_START
        return start, end, step

    def index_bounds(self, tree, dim, axis):
        """Yields the index's subtree; returns the (start, end, step) that picks it."""
        index = yield from self.constant_int(tree, "an index", dim=True)
        if is_dim(index):
            # A scan loop's variable counts from 0, unlike a size (which is at least 1): a
            # window of it is checked at the loop's first and last steps (check_window).
            if dim != UNKNOWN and not self.loop_symbols(index) and dims.at_least(index, dim):
                raise ChainruleError(f"index {index} is out of range for axis {axis} of size "
                                     f"{dim}", self.loc(tree))
            return index, dims.add(index, 1), 1
        if isinstance(dim, int) and not -dim <= index < dim:
            raise ChainruleError(f"index {index} is out of range for axis {axis} of size {dim}",
                                 self.loc(tree))
        return index, TO_END if index == -1 else index + 1, 1

    def constant_int(self, tree, what: str, dim: bool = False):
        """Yields `tree`; returns its value, which must be an integer constant (or, with
        `dim`, a symbolic dim such as `S-1`)."""
        value = yield tree
        if dim and is_dim(value):
            return value
        if isinstance(value, Value):
            raise ChainruleError(f"{what} must be an integer constant; take(x, indices, axis) "
                                 f"indexes with a tensor", self.loc(tree))
        if isinstance(value, bool) or not isinstance(value, int):
            raise ChainruleError(f"{what} must be an integer, not {value!r}", self.loc(tree))
        return value

    def x_attribute(self, tree, scope):
        base_tree, attribute = tree.children
        base = self.alone((yield base_tree))
        if str(attribute) != "T":
            raise ChainruleError(f"unknown attribute '.{attribute}'; only '.T' (transpose) "
                                 f"exists", self.loc(attribute))
        if not isinstance(base, Value):
            raise ChainruleError("'.T' applies to a tensor", self.loc(attribute))
        perm = tuple(reversed(range(base.type.rank)))
        hint = f"{base.name}.T" if base in self.user_values else None
        return self.builder.emit("transpose", (base,), {"perm": perm}, loc=self.loc(tree),
                                 name=hint)

    def binary(self, op, tree, scope):
        left = yield tree.children[0]
        right = yield tree.children[1]
        loc = self.loc(tree)
        if not isinstance(left, Value) and not isinstance(right, Value):
            if not isinstance(left, Weak) and not isinstance(right, Weak):
                return self.fold(op, left, right, loc)
            if op in WEAK_OPERATORS:
                return self.defer(op, WEAK_OPERATORS[op], [(left, loc), (right, loc)], {}, loc)
        if op in TENSOR_COMPOSITIONS:
            inputs = self.tensor_inputs("div", (left, right), loc)
            return TENSOR_COMPOSITIONS[op](Composer(self, loc), *inputs)
        if op not in OPS:
            raise ChainruleError(f"'{op}' computes sizes from numbers and dims; it takes no "
                                 f"tensors", loc)
        return self.builder.emit(op, self.tensor_inputs(op, (left, right), loc), loc=loc)

    def fold(self, op, left, right, loc):
        if is_dim(left) or is_dim(right):
            return self.fold_dims(op, left, right, loc)
        if op not in FOLD:
            raise ChainruleError(f"'{op}' needs tensors, not constants", loc)
        if not (is_number(left) and is_number(right)):
            raise ChainruleError(f"'{op}' needs numbers or tensors, not tuples", loc)
        # An integer power can take longer to compute than anyone would wait.
        if op == "pow" and _is_int(left) and _is_int(right) and abs(left) > 1 and right > 64:
            raise ChainruleError(f"{_power(left, right)} gives an integer past 64 bits", loc)
        try:
            result = FOLD[op](left, right)
        except (ZeroDivisionError, OverflowError, ValueError) as error:
            raise ChainruleError(f"constant expression fails: {error}", loc) from None
        if isinstance(result, complex):
            raise ChainruleError(f"{_power(left, right)} is not a real number", loc)
        if _is_int(result) and not -INT64_MAX - 1 <= result <= INT64_MAX:
            raise ChainruleError(f"'{op}' of {left} and {right} gives an integer past 64 bits",
                                 loc)
        return result

    def fold_dims(self, op, left, right, loc):
        """Arithmetic on dims and integers: a dim (`S-1`), for shapes, slices and arange."""
        dim = left if is_dim(left) else right
        other = right if dim is left else left
        if self.loop_symbols(dim) and (op not in DIM_FOLD or not (is_dim(other)
                                                                  or _is_int(other))):
            raise ChainruleError(f"'{op}' of the loop variable {dim} and {other!r}: in a scan "
                                 f"the loop variable is an integer that indexes and computes "
                                 f"indices; as a tensor it is i64(...) or f32(...) of it", loc)
        if op not in DIM_FOLD:
            use = "a dim computed with '/' (dims divide with '//')" if op == "div" else \
                f"a number used in '{op}'"
            raise symbolic_dim_error(dim, use, loc)
        for value in (left, right):
            if not is_dim(value) and (isinstance(value, bool) or not isinstance(value, int)):
                raise ChainruleError(f"dims compute with integers, not {value!r}", loc)
        try:
            dim = DIM_FOLD[op](left, right)
        except dims.NotADim as error:
            raise ChainruleError(f"the dim {error}", loc) from None
        problem = dim_number_problem(dim)
        if problem:
            raise ChainruleError(problem, loc)
        return as_dim_value(dim)

    def tensor_inputs(self, op, arguments, loc, default="f32") -> list[Value]:
        """An op's tensor arguments as IR values: numbers and weak values take the dtype of the
        tensors they meet, or `default`. Where an op computes in one dtype, tensors of several
        are cast to the one they promote to (types.promote_types: `i32 + f16` is f16), and a
        float literal meeting integer tensors makes them f64, as numpy 2 does with a Python
        float (NEP 50): `y * 0.5` is f64."""
        # where's condition gives its values no dtype: where(c, 1.0, 2.0) is f32.
        operands = arguments[1:] if op == "where" else arguments
        dtype = _meeting_dtype(operands)
        promoted = _promoted_dtype(operands) if op and _computes_in_one_dtype(op) else None
        if promoted is not None:
            if (is_int(promoted) and "elementwise" in get_op(op).traits
                    and any(map(is_float_literal, operands))):
                promoted = promote_types(*_tensor_dtypes(operands), WEAK_FLOAT)
            dtype, first = promoted, len(arguments) - len(operands)
            cast = [self.cast(a, dtype, loc) if isinstance(a, Value) else a for a in operands]
            arguments = list(arguments[:first]) + cast
        return [self.as_tensor(a, dtype or default, loc) for a in arguments]

    def as_tensor(self, value, dtype: str, loc) -> Value:
        """`value` as an IR value; a number or weak value becomes one of `dtype`, the dtype of
        the tensor it meets."""
        if isinstance(value, Value):
            return value
        if isinstance(value, Weak):
            # A bool tensor gives numbers no dtype: the weak value is f32 and the op decides.
            return self.lower_weak(value, "f32" if dtype == "bool" else dtype)
        if is_dim(value) and self.loop_symbols(value):
            return self.cast(self.loop_tensor(value, loc), "f32" if dtype == "bool" else dtype,
                             loc)
        if isinstance(value, SymbolicDim):
            raise symbolic_dim_error(value, "a number used in arithmetic", loc)
        if isinstance(value, DTypeName):
            raise ChainruleError(f"{value} is a dtype, not a value; it is given as dtype=... "
                                 f"or called as a cast, {value}(x)", loc)
        if not is_number(value):
            raise ChainruleError(f"{describe_constant(value)} cannot be used as a tensor", loc)
        if isinstance(value, bool):
            dtype = "bool"
        elif is_int(dtype) and not float(value).is_integer():  # 0.5, inf or nan
            raise ChainruleError(f"the constant {value} meets {with_article(dtype)} tensor; "
                                 f"convert the tensor with f32(...) first", loc)
        elif dtype == "bool":
            raise ChainruleError(f"the constant {value} meets a bool tensor", loc)
        return self.typed_constant(value, dtype, loc)

    def typed_constant(self, value, dtype: str, loc) -> Value:
        """A constant node of `value`; as an integer dtype, an integer within its range that
        the constant's f64 attr holds exactly (2**63 - 1 would round to 2**63, and 2**53 + 1
        to 2**53)."""
        if is_int(dtype):
            least, greatest = int_range(dtype)
            if not (least <= value <= greatest and float(value) == value):
                raise ChainruleError(f"the constant {value} is no {dtype} a constant holds "
                                     f"exactly: {with_article(dtype)} lies in "
                                     f"{int_range_text(dtype)}, and a constant's value is an "
                                     f"f64, which holds every integer up to 2**53 and some "
                                     f"past it", loc)
        return self.builder.constant(value, dtype, loc=loc)

    def alone(self, value):
        """`value`, where no typed value meets it: a weak value is f32, as a number is."""
        return self.lower_weak(value, "f32") if isinstance(value, Weak) else value

    def defer(self, function, symbol, positional, keywords, loc) -> Weak:
        weak = Weak(function, symbol, tuple(positional), dict(keywords), loc)
        self.weak_forms[weak] = {}
        return weak

    def lower_weak(self, weak: Weak, dtype: str) -> Value:
        """`weak` lowered with its numbers as constants of `dtype`, once per dtype.

        Its weak arguments take the same dtype, so they are lowered first, innermost and
        leftmost first, from a list rather than by recursion: a weak value nests as deep as the
        text does."""
        pending = [weak]
        while pending:
            top = pending[-1]
            inner = [a for a in top.arguments
                     if isinstance(a, Weak) and dtype not in self.weak_forms[a]]
            if inner:
                pending.extend(reversed(inner))
                continue
            pending.pop()
            forms = self.weak_forms[top]
            if dtype not in forms:
                forms[dtype] = self.lower_weak_call(top, dtype)
        return self.weak_forms[weak][dtype]

    def lower_weak_call(self, weak: Weak, dtype: str) -> Value:
        """The call or operator `weak` records, lowered by the usual path (so with its checks
        and messages) with its numbers as `dtype` constants, at the place of the call."""
        if weak.symbol is None:
            value = self.call_builtin(weak.function, weak.positional, weak.keywords, weak.loc,
                                      dtype)
        else:
            operands = [self.as_tensor(a, dtype, weak.loc) for a in weak.arguments]
            value = self.builder.emit(weak.function, operands, loc=weak.loc)
        if weak.name is not None and value not in self.user_values:
            value = self.builder.rename(value, weak.name)
            self.user_values.add(value)
        return value

    def x_call(self, tree, scope):
        name_token, args = tree.children
        name = str(name_token)
        loc = self.loc(tree)
        positional, keywords = yield from self.gather_arguments(args)
        local = scope.lookup(name, loc) if scope.owner(name) is not None else None
        if self.is_layer(local):
            return self.call_layer_named(name, local, positional, keywords, loc)
        if name in self.functions:
            return self.call_function(self.functions[name], positional, keywords, loc)
        if name in CASTS:
            return self.call_cast(name, positional, keywords, loc)
        if name in BUILTINS:
            return self.call_builtin(name, positional, keywords, loc)
        if scope.owner(name) is not None:
            raise ChainruleError(f"'{name}' is {describe_constant(local)}, not a layer or a "
                                 f"function; only those are called", self.loc(name_token))
        known = list(BUILTINS) + list(CASTS) + list(self.functions)
        raise ChainruleError(f"unknown function '{name}'{suggest(name, known)}",
                             self.loc(name_token))

    def gather_arguments(self, args):
        """Yields each argument's tree; returns (positional, keywords), each value with its
        location."""
        positional, keywords = [], {}
        for arg in (args.children if args else []):
            if isinstance(arg, Tree) and arg.data == "kwarg":
                key, expression = arg.children
                if str(key) in keywords:
                    raise ChainruleError(f"argument '{key}' is given twice", self.loc(key))
                keywords[str(key)] = ((yield expression), self.loc(key))
            else:
                if keywords:
                    raise ChainruleError("positional argument after a keyword argument",
                                         self.loc(arg))
                positional.append(((yield arg), self.loc(arg)))
        return positional, keywords

    def bind_arguments(self, name, params, defaults, positional, keywords, loc) -> dict:
        if len(positional) > len(params):
            noun = "argument" if len(params) == 1 else "arguments"
            raise ChainruleError(f"{name}() takes at most {len(params)} {noun} "
                                 f"({', '.join(params)}), got {len(positional)}",
                                 positional[len(params)][1])
        bound = {p: value for p, (value, _) in zip(params, positional)}
        for key, (value, key_loc) in keywords.items():
            if key not in params:
                hint = suggest(key, params) or f"; it takes ({', '.join(params)})"
                raise ChainruleError(f"{name}() has no argument '{key}'{hint}", key_loc)
            if key in bound:
                raise ChainruleError(f"{name}() got '{key}' twice", key_loc)
            bound[key] = value
        for param in params:
            if param not in bound:
                if defaults.get(param, NO_DEFAULT) is NO_DEFAULT:
                    raise ChainruleError(f"{name}() is missing argument '{param}'", loc)
                bound[param] = defaults[param]
        return bound

    def call_builtin(self, name, positional, keywords, loc, dtype=None):
        """A built-in's value. On literals alone it is a weak value, unless `dtype` (lowering
        one) gives its literals a dtype."""
        spec = BUILTINS[name]
        defaults = {key: option[0] for key, option in spec.options.items()}
        defaults.update(dict.fromkeys(spec.optional))  # left out, or given as none
        if spec.variadic:
            leading = len(spec.leading_options)
            bound = self.bind_arguments(name, tuple(spec.options), defaults,
                                        positional[:leading], keywords, loc)
            tensors = self.variadic_tensors(name, positional[leading:], loc)
        else:
            bound = self.bind_arguments(name, spec.params, defaults, positional, keywords, loc)
            tensors = [bound[t] for t in spec.tensors
                       if not (t in spec.optional and bound[t] is None)]
        # Options first: a bad one is reported at the call, even on a call that waits.
        attrs = self.builtin_attrs(name, spec, bound, loc)
        if not any(isinstance(t, Value) for t in tensors):
            if spec.op in FOLD and not any(isinstance(t, Weak) for t in tensors):
                return self.fold(spec.op, *tensors, loc)
            if dtype is None and name not in STRONG_BUILTINS:
                return self.defer(name, None, positional, keywords, loc)
        # A dtype= option gives the literals it applies to that dtype: full(2, 0.1, dtype=f64).
        inputs = self.tensor_inputs(spec.op, tensors, loc, dtype or attrs.get("dtype") or "f32")
        if spec.compose is None:
            return self.emit_op(spec.op, inputs, attrs, loc)
        try:
            return spec.compose(Composer(self, loc), *inputs, **attrs)
        except ChainruleError as error:
            raise ChainruleError(f"{name}(): {error.message}", error.loc, error.notes) from None

    def builtin_attrs(self, name, spec, bound: dict, loc) -> dict:
        attrs = {}
        for key, (_, convert, attr) in spec.options.items():
            value = bound[key]
            if isinstance(value, Value):
                raise ChainruleError(f"{name}(): '{key}' must be a constant", loc)
            if isinstance(value, Weak):
                raise ChainruleError(f"{name}(): '{key}' must be a number, not {value!r} (a "
                                     f"built-in's value is a tensor)", loc)
            try:
                attrs[attr] = convert(value)
            except TypeError as error:
                raise ChainruleError(f"{name}(): {error}", loc) from None
        return attrs

    def variadic_tensors(self, name, positional, loc) -> list:
        if not positional:
            raise ChainruleError(f"{name}() needs at least one tensor", loc)
        for value, arg_loc in positional:
            if not isinstance(value, (Value, Weak)):
                raise ChainruleError(f"{name}() takes tensors as positional arguments, not "
                                     f"{value!r}; give options by keyword", arg_loc)
        return [value for value, _ in positional]

    def emit_op(self, op, inputs, attrs, loc) -> Value:
        """Emit a built-in's op; a stochastic op not given a seed gets its position in the
        graph, so each dropout draws its own mask and every run draws the same ones."""
        if "stochastic" in get_op(op).traits and attrs.get("seed") is None:
            attrs = {**attrs, "seed": len(self.graph.nodes)}
        return self.builder.emit(op, inputs, attrs, loc=loc)

    def call_cast(self, dtype, positional, keywords, loc):
        bound = self.bind_arguments(dtype, ("x",), {}, positional, keywords, loc)
        value = bound["x"]
        if isinstance(value, Weak):
            # A float cast gives a weak value its dtype; another converts its f32 form, as it
            # converts any float.
            value = self.lower_weak(value, dtype if is_float(dtype) else "f32")
        if is_dim(value) and self.loop_symbols(value):
            value = self.loop_tensor(value, loc)
        if not isinstance(value, Value):
            if not is_number(value):
                raise ChainruleError(f"{dtype}() takes a tensor or a number, not "
                                     f"{describe_constant(value)}", loc)
            return self.typed_constant(value, dtype, loc)
        return self.cast(value, dtype, loc)

    def cast(self, value: Value, dtype: str, loc) -> Value:
        if value.type.dtype == dtype:
            return value
        return self.builder.emit("cast", (value,), {"dtype": dtype}, loc=loc)


class Composer:
    """What a composite built-in sees: ops and constants added at the call's location."""

    def __init__(self, lowerer: ExpressionLowerer, loc: SourceLoc):
        self.lowerer = lowerer
        self.loc = loc

    def emit(self, op, *inputs, **attrs) -> Value:
        return self.lowerer.emit_op(op, inputs, attrs, self.loc)

    def constant(self, value, like: Value) -> Value:
        return self.lowerer.builder.constant(value, like.type.dtype, loc=self.loc)

    def error(self, message: str):
        raise ChainruleError(message, self.loc)

    def update_state(self, state: Value, new: Value) -> None:
        self.lowerer.update_state(state, new, self.loc)


def _meeting_dtype(arguments) -> str | None:
    """The dtype constant arguments take from the tensors among them: a numeric one's if there
    is one, since where(cond, a, 0.5) means 0.5 in a's dtype, not cond's."""
    dtypes = [a.type.dtype for a in arguments if isinstance(a, Value)]
    return next((d for d in dtypes if d != "bool"), dtypes[0] if dtypes else None)


def _computes_in_one_dtype(op: str) -> bool:
    """Whether an op's tensor operands share a dtype, so that the DSL promotes them."""
    return "elementwise" in get_op(op).traits or op in ("matmul", "concat")


def _promoted_dtype(arguments) -> str | None:
    """The dtype the tensors among `arguments` promote to; None when there are none or when
    they do not promote (narrow dtypes), which the op's type rule then reports."""
    dtypes = _tensor_dtypes(arguments)
    return promote_types(*dtypes) if dtypes else None


def _tensor_dtypes(arguments) -> list[str]:
    return [a.type.dtype for a in arguments if isinstance(a, Value)]


def is_number(value) -> bool:
    return isinstance(value, (int, float, bool))


def _power(base, exponent) -> str:
    return f"{f'({base})' if base < 0 else base} ** {exponent}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe_constant(value) -> str:
    if isinstance(value, Value):
        return f"a tensor ({value.type})"
    if value is None:
        return "none"
    return "a tuple" if isinstance(value, tuple) else repr(value)


def suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


for _op in BINARY_OPS:
    setattr(ExpressionLowerer, "x_" + _op,
            lambda self, tree, scope, _op=_op: self.binary(_op, tree, scope))
for _op in UNARY_FOLD:
    setattr(ExpressionLowerer, "x_" + _op,
            lambda self, tree, scope, _op=_op: self.unary(_op, tree, scope))
