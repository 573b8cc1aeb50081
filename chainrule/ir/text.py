"""Reading the printer's text back into a Graph, and comparing graphs structurally.

`parse_graph(print_graph(g))` rebuilds `g`: the same names, types, attrs (as the Python types
the op registry expects), params and outputs, and each node's DSL location from its trailing
`# FILE:LINE:COL` comment. Every node is checked against the registry as it is read, and a
failure is a ChainruleError located in the IR text itself.
"""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import zip_longest
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput, VisitError
from lark.visitors import Transformer_NonRecursive

from . import dims
from .errors import ChainruleError, SourceLoc, from_printable, integer_literal, syntax_error
from .graph import Graph, InitSpec, Node, Param, Value
from .init import check_init
from .limits import MAX_SCAN_NESTING
from .ops import ATTR_KINDS, OPS, OpDef, complete_attrs, infer_types
from .shapes import OpTypeError
from .types import UNKNOWN, TensorType

# An imported model's locations read `FILE.onnx:NODE`: ONNX nodes have names, not lines.
ONNX_SUFFIX = ".onnx"

GRAMMAR = Path(__file__).with_name("ir.lark")

# How the named terminals read in "expected ..." messages; the others are their literal text.
READABLE = {"VALUE": "a %value", "NAME": "a name", "NUMBER": "a number", "INT": "an integer",
            "DTYPE": "a dtype (f32, f64, i64, bool, ...)", "$END": "end of input"}


def parse_graph(text: str, filename: str = "<ir>") -> Graph:
    """The graph `text` describes; syntax and typing errors are located in `text`."""
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        raise syntax_error(error, text, filename, _parser(), READABLE) from None
    return _GraphReader(text, filename).read(tree)


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # The contextual lexer lets names such as `none`, `inf` or `f32` be graph names and dims.
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual",
                propagate_positions=True, maybe_placeholders=True)


class _Literals(Transformer_NonRecursive):
    """Tensor types and attribute values as the Python objects the IR holds.

    An attribute's value is then fitted to its op's schema by `_as_kind`. Not recursive: a list
    may nest as deep as the text does (and is refused afterwards).
    """

    def __init__(self, filename: str):
        super().__init__()
        self.filename = filename

    def tensor_type(self, children):
        dtype, *dims = children
        return TensorType(str(dtype), tuple(dim for dim in dims if dim is not None))

    def int_dim(self, children):
        return _number(children[0], self.filename)

    def symbolic_dim(self, children):
        return str(children[0])

    def unknown_dim(self, _):
        return UNKNOWN

    def dim_add(self, children):
        return dims.add(*children)

    def dim_sub(self, children):
        return dims.sub(*children)

    def dim_mul(self, children):
        return dims.mul(*children)

    def dim_floordiv(self, children):
        return dims.floordiv(*children)

    def dim_mod(self, children):
        return dims.mod(*children)

    def dim_neg(self, children):
        return dims.neg(children[0])

    def none_value(self, _):
        return None

    def true_value(self, _):
        return True

    def false_value(self, _):
        return False

    def number(self, children):
        return _number(children[0], self.filename)

    def dtype_name(self, children):
        return str(children[0])

    def empty_tuple(self, _):
        return ()

    def tuple_value(self, items):
        return tuple(items)


def _literal(tree: Tree, filename: str):
    try:
        return _Literals(filename).transform(tree)
    except VisitError as error:  # lark wraps what its callbacks raise: an integer too large
        if isinstance(error.orig_exc, dims.NotADim):
            line, column = getattr(tree.meta, "line", 0), getattr(tree.meta, "column", 0)
            raise ChainruleError(f"the dim {error.orig_exc}",
                                 SourceLoc(filename, line, column)) from None
        raise error.orig_exc from None


def _number(token: Token, filename: str) -> int | float:
    text = str(token)
    if text.lstrip("-").isdigit():
        return integer_literal(text, SourceLoc(filename, token.line, token.column))
    return float(text)


def _as_kind(kind: str, value):
    # A float attr written as `2` means 2.0: the registry's kinds accept ints there, but
    # passes and backends expect the float the builder would have stored.
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _values(tree: Tree | None) -> list[Token]:
    """The tokens of an optional comma list (a placeholder None when the list is empty)."""
    return [t for t in (tree.children if tree is not None else ()) if t is not None]


class _GraphReader:
    """Rebuilds a Graph from the parse tree, defining each value once, in text order."""

    def __init__(self, text: str, filename: str):
        self.lines = text.splitlines()
        self.filename = filename
        self.defined: dict[str, tuple[Value, SourceLoc]] = {}
        self.depth = 0  # how many bodies enclose what is read

    def loc(self, item) -> SourceLoc:
        if isinstance(item, Token):
            return SourceLoc(self.filename, item.line, item.column)
        return SourceLoc(self.filename, item.meta.line, item.meta.column)

    def read(self, tree: Tree) -> Graph:
        name, inputs, *statements = tree.children
        graph = Graph(str(name), loc=self.loc(name))
        graph.inputs = [self.read_input(item) for item in _values(inputs)]
        for statement in statements:
            getattr(self, "read_" + statement.data)(statement, graph)
        return graph

    # ---- values -------------------------------------------------------------------------------

    def define(self, token: Token, value_type: TensorType) -> Value:
        name = str(token)[1:]
        if name in self.defined:
            first = self.defined[name][1]
            raise ChainruleError(f"%{name} is already defined (at line {first.line}); a value "
                                 f"is defined once", self.loc(token),
                                 ((first, "first defined here"),))
        value = Value(name, value_type)
        self.defined[name] = (value, self.loc(token))
        return value

    def use(self, token: Token) -> Value:
        name = str(token)[1:]
        if name not in self.defined:
            raise ChainruleError(f"%{name} is not defined before this use", self.loc(token))
        return self.defined[name][0]

    def trailing_loc(self, tree: Tree) -> SourceLoc | None:
        """The DSL location in the `# FILE:LINE:COL [ITERATION]` comment after `tree` on its
        last line (the iteration is there for nodes of an unrolled loop)."""
        rest = self.lines[tree.meta.end_line - 1][tree.meta.end_column - 1:].strip()
        if not rest.startswith("#"):
            return None
        rest, iteration = rest[1:].removeprefix(" "), ""
        if rest.endswith("]") and " [" in rest:
            rest, iteration = rest[:-1].rsplit(" [", 1)
        if ONNX_SUFFIX + ":" in rest:  # an imported model's `FILE.onnx:NODE`
            file, node = rest.split(ONNX_SUFFIX + ":", 1)
            return SourceLoc(from_printable(file) + ONNX_SUFFIX, 0, 0, iteration,
                             node=from_printable(node))
        # Split from the right since FILE may hold ':' itself (C:/models/m.nn).
        file, *position = rest.rsplit(":", 2)
        if len(position) != 2 or not all(number.isdecimal() for number in position):
            return None  # a plain comment, not a location
        return SourceLoc(from_printable(file), *map(int, position), iteration)

    # ---- statements ---------------------------------------------------------------------------

    def read_input(self, tree: Tree) -> Value:
        name, type_tree = tree.children
        return self.define(name, _literal(type_tree, self.filename))

    def read_param(self, tree: Tree, graph: Graph) -> None:
        declared, name, type_tree, kind, *args = tree.children
        value_type = _literal(type_tree, self.filename)
        numbers = tuple(float(_number(a, self.filename)) for a in args if a is not None)
        if not all(map(math.isfinite, numbers)):
            raise ChainruleError("initialiser arguments are finite numbers", self.loc(kind))
        spec = InitSpec(str(kind), numbers)
        problem = check_init(spec, value_type.shape)
        if problem:
            raise ChainruleError(problem, self.loc(kind))
        graph.params.append(Param(self.define(name, value_type), spec, self.trailing_loc(tree),
                                  trainable=str(declared) == "param"))

    def read_node(self, tree: Tree, graph: Graph) -> None:
        names, op_name, operands, attrs, body_tree, *type_trees = tree.children
        op = OPS.get(str(op_name))
        if op is None:
            raise ChainruleError(f"unknown op '{op_name}'", self.loc(op_name))
        inputs = tuple(self.use(token) for token in _values(operands))
        node_attrs = self.read_attrs(op, attrs, op_name, body_tree)
        declared = [_literal(type_tree, self.filename) for type_tree in type_trees]
        try:
            inferred = infer_types(op.name, [value.type for value in inputs], node_attrs)
        except OpTypeError as error:
            raise ChainruleError(str(error), self.loc(op_name)) from None
        tokens = _values(names)
        if len(tokens) != len(inferred) or len(declared) != len(inferred):
            raise ChainruleError(f"{op.name} gives {len(inferred)} results; the line names "
                                 f"{len(tokens)} and declares {len(declared)} types",
                                 self.loc(op_name))
        for token, written, wanted, type_tree in zip(tokens, declared, inferred, type_trees):
            if written != wanted:
                raise ChainruleError(f"{token} is declared {written}, but {op.name} gives "
                                     f"{wanted}", self.loc(type_tree))
        outputs = tuple(self.define(token, written) for token, written in zip(tokens, declared))
        graph.nodes.append(Node(op.name, inputs, node_attrs, outputs, self.trailing_loc(tree)))

    def read_body(self, tree: Tree) -> Graph:
        """A scan's body, in a scope of its own: it reads only its inputs."""
        reader = _GraphReader.__new__(_GraphReader)
        reader.lines, reader.filename, reader.defined = self.lines, self.filename, {}
        reader.depth = self.depth + 1
        if reader.depth > MAX_SCAN_NESTING:  # refused before reading recurses past the stack
            raise ChainruleError(f"this scan is nested {reader.depth} deep; scans nest at "
                                 f"most {MAX_SCAN_NESTING} deep", self.loc(tree))
        inputs, *statements = tree.children
        body = Graph("body", loc=self.loc(tree))
        body.inputs = [reader.read_input(item) for item in _values(inputs)]
        for statement in statements:
            getattr(reader, "read_" + statement.data)(statement, body)
        body.objective = None  # read_outputs took the first output, as a graph's objective
        return body

    def read_attrs(self, op: OpDef, tree: Tree | None, op_name: Token,
                   body_tree: Tree | None) -> dict:
        written = {}
        if body_tree is not None:
            if "body" not in op.attrs:
                raise ChainruleError(f"op '{op.name}' has no body", self.loc(body_tree))
            written["body"] = self.read_body(body_tree)
        for attr in _values(tree):
            key, value = self.read_attr(op, attr)
            if str(key) in written:
                raise ChainruleError(f"attribute '{key}' is given twice", self.loc(key))
            written[str(key)] = value
        try:
            complete = complete_attrs(op, written)
        except OpTypeError as error:  # a required attribute is missing
            raise ChainruleError(str(error), self.loc(op_name)) from None
        # Written attributes keep their order, so the node prints back as it was written.
        return {**written, **complete}

    def read_attr(self, op: OpDef, tree: Tree) -> tuple[Token, object]:
        key, value_tree = tree.children
        spec = op.attrs.get(str(key))
        if spec is None:
            raise ChainruleError(f"op '{op.name}' has no attribute '{key}'", self.loc(key))
        value = _literal(value_tree, self.filename)
        if isinstance(value, tuple) and any(isinstance(item, tuple) for item in value):
            raise ChainruleError(f"op '{op.name}': attribute '{key}' is a list of lists; a list "
                                 f"attribute holds numbers", self.loc(value_tree))
        value = _as_kind(spec.kind, value)
        if not ATTR_KINDS[spec.kind](value):
            raise ChainruleError(f"op '{op.name}': attribute '{key}' must be {spec.kind}, "
                                 f"not {value!r}", self.loc(value_tree))
        return key, value

    def read_outputs(self, tree: Tree, graph: Graph) -> None:
        graph.outputs = [self.use(token) for token in _values(tree)]
        # The text has no objective of its own: as in the front ends, it is the first output.
        graph.objective = graph.outputs[0] if graph.outputs else None

    def read_update(self, tree: Tree, graph: Graph) -> None:
        state, output = (self.use(token) for token in tree.children)
        graph.updates[state.name] = output.name


# ---- structural equality ----------------------------------------------------------------------

def graph_differences(a: Graph, b: Graph) -> list[str]:
    """What tells `a` from `b`, one line per differing part; empty when they are the same.

    Values compare by name and type, nodes by op, input names, attrs and DSL location, params
    by init spec and location. Attrs and init arguments compare by `repr`, which tells 1 from
    1.0 and True, and -0.0 from 0.0, yet finds nan equal to nan.
    """
    differences = [f"graph name: {a.name!r} != {b.name!r}"] if a.name != b.name else []
    for part, describe in _PARTS:
        pairs = zip_longest(describe(a), describe(b), fillvalue="(missing)")
        differences += [f"{part} {index}: {left} != {right}"
                        for index, (left, right) in enumerate(pairs) if left != right]
    return differences


def _describe_value(value: Value) -> str:
    return f"%{value.name}: {value.type!r}"


def _describe_param(param: Param) -> str:
    args = ", ".join(repr(arg) for arg in param.init.args)
    return (f"{param.kind} {_describe_value(param.value)} = {param.init.kind}({args}) at "
            f"{param.loc!r}")


def _describe_node(node: Node) -> str:
    outputs = ", ".join(_describe_value(value) for value in node.outputs)
    inputs = ", ".join(f"%{value.name}" for value in node.inputs)
    attrs = ", ".join(f"{key}={_describe_attr(value)}"
                      for key, value in sorted(node.attrs.items()))
    return f"{outputs} = {node.op}({inputs}) {{{attrs}}} at {node.loc!r}"


def _describe_attr(value) -> str:
    if isinstance(value, Graph):  # a body: its parts, as a graph's
        return "{" + "; ".join(f"{part} {text}" for part, describe in _PARTS
                               for text in describe(value)) + "}"
    return repr(value)


_PARTS = (
    ("input", lambda graph: [_describe_value(value) for value in graph.inputs]),
    ("param", lambda graph: [_describe_param(param) for param in graph.params]),
    ("node", lambda graph: [_describe_node(node) for node in graph.nodes]),
    ("output", lambda graph: [f"%{value.name}" for value in graph.outputs]),
    ("update", lambda graph: [f"%{state} = %{output}" for state, output in graph.updates.items()]),
)
