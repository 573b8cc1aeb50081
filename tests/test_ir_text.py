"""The textual IR round-trips: `parse_graph(print_graph(g))` prints as `g` and equals it."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule
from chainrule.ir import (DTYPES, FLOAT_DTYPES, OPS, UNKNOWN, ChainruleError, Graph,
                          GraphBuilder, InitSpec, Namer, Param, SourceLoc, TensorType, Value,
                          parse_graph, print_graph)
from chainrule.ir.text import graph_differences
from support.paths import EXAMPLES, ROOT

MODELS = EXAMPLES + sorted((ROOT / "tests" / "models").glob("*.nn"))


def assert_round_trips(graph: Graph) -> None:
    text = print_graph(graph)
    parsed = parse_graph(text)
    assert print_graph(parsed) == text
    assert graph_differences(graph, parsed) == []


@pytest.mark.parametrize("path", MODELS, ids=lambda path: path.name)
def test_forward_and_grad_graphs_of_every_model_round_trip(path):
    model = chainrule.compile(str(path))
    assert_round_trips(model.graph)
    assert_round_trips(model.grad_graph()[0])


GOLDEN_FILES = sorted((ROOT / "tests" / "ir").glob("*.golden"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda path: path.stem)
def test_golden_files_read_back_as_written(path):
    # The goldens are printer output after passes (cse, simplify...) under a comment header.
    text = path.read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    assert print_graph(parse_graph(text, str(path))) == body


# ---- random well-typed graphs ------------------------------------------------------------------

# Names as the DSL and the Namer make them: dots and slashes appear in `dJ/dW1.via_pow.1`.
VALUE_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_./]{0,6}", fullmatch=True)
WORDS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,4}", fullmatch=True)
DIMS = st.one_of(st.integers(1, 3), st.sampled_from(["B", "N", UNKNOWN]))
FILES = st.sampled_from(["examples/mlp.nn", "<string>", "C:/models/a-b.v2.nn", "odd #name.nn"])
LOCS = st.none() | st.builds(SourceLoc, FILES, st.integers(1, 999), st.integers(1, 99))
INIT_SPECS = st.one_of(
    st.builds(lambda mean, std: InitSpec("normal", (mean, std)), st.floats(-1, 1),
              st.floats(0, 1)),
    st.sampled_from([InitSpec("zeros"), InitSpec("glorot"), InitSpec("uniform", (-0.5, 0.5))]))
# Constants are where floats meet the text: inf, nan, -0.0, 5e-05, 1e+300 all must survive.
CONSTANTS = st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 5e-05, 1e300, 2.0]) | st.floats()
# Ops by family, so that the dozen elementwise ops do not crowd out the others.
OP_FAMILIES = [sorted(name for name, op in OPS.items() if "elementwise" in op.traits),
               ["matmul"], ["transpose"], ["sum", "mean"], ["constant"]]


def draw_attrs(draw, op_name: str, inputs: list[Value]) -> dict:
    """Attributes the op's type rule accepts for these inputs (defaults are left out at times)."""
    rank = inputs[0].type.rank if inputs else 0
    if op_name == "transpose":
        return {"perm": tuple(draw(st.permutations(range(rank))))}
    if op_name in ("sum", "mean"):
        axis = st.integers(-rank, rank - 1) if rank else st.nothing()
        axes = st.none() | st.lists(axis, max_size=rank,
                                    unique_by=lambda index: index % rank).map(tuple)
        return draw(st.fixed_dictionaries({}, optional={"axes": axes, "keepdims": st.booleans()}))
    if op_name == "constant":
        return {"value": draw(CONSTANTS), "dtype": draw(st.sampled_from(DTYPES))}
    return {name: draw(st.sampled_from(DTYPES)) for name in OPS[op_name].attrs}  # cast's dtype


def draw_node(draw, builder: GraphBuilder, pool: list[Value]) -> Value | None:
    """A node of a random registry op on values drawn from `pool`, or None if it is ill-typed."""
    op_name = draw(st.sampled_from(draw(st.sampled_from(OP_FAMILIES))))
    inputs = [draw(st.sampled_from(pool)) for _ in range(OPS[op_name].num_inputs)]
    attrs = draw_attrs(draw, op_name, inputs)
    name = draw(st.none() | VALUE_NAMES)
    try:
        return builder.emit(op_name, inputs, attrs, loc=draw(LOCS), name=name)
    except ChainruleError:  # the type rule rejects these operands: skip, stay well-typed
        return None


@st.composite
def graphs(draw) -> Graph:
    graph = Graph(draw(WORDS))
    namer = Namer()
    # Values of one dtype meet in ops more often; a value of any other dtype joins at times.
    dtype = draw(st.sampled_from(DTYPES))
    dtypes = st.sampled_from([dtype] * len(DTYPES)) | st.sampled_from(DTYPES)
    float_dtypes = st.sampled_from(FLOAT_DTYPES)
    for _ in range(draw(st.integers(1, 3))):
        value_type = TensorType(draw(dtypes), tuple(draw(st.lists(DIMS, max_size=3))))
        graph.inputs.append(Value(namer.fresh(draw(VALUE_NAMES)), value_type))
    for _ in range(draw(st.integers(0, 2))):
        value_type = TensorType(draw(float_dtypes),
                                tuple(draw(st.lists(st.integers(1, 3), max_size=2))))
        value = Value(namer.fresh(draw(VALUE_NAMES)), value_type)
        graph.params.append(Param(value, draw(INIT_SPECS), draw(LOCS)))
    pool = graph.inputs + graph.param_values()
    builder = GraphBuilder(graph, namer)
    for _ in range(draw(st.integers(1, 10))):
        value = draw_node(draw, builder, pool)
        if value is not None:
            pool.append(value)
    graph.outputs = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
    return graph


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(graphs())
def test_random_graphs_round_trip(graph):
    assert_round_trips(graph)


def test_every_dtype_round_trips_as_an_input_a_constant_and_a_cast():
    graph = Graph("every_dtype")
    builder = GraphBuilder(graph, Namer())
    graph.inputs = [Value(f"x_{dtype}", TensorType(dtype, ("B", 2))) for dtype in DTYPES]
    casts = [builder.emit("cast", [graph.inputs[0]], {"dtype": dtype}) for dtype in DTYPES]
    constants = [builder.emit("constant", [], {"value": 1.0, "dtype": dtype}) for dtype in DTYPES]
    graph.outputs = graph.inputs + casts + constants
    assert_round_trips(graph)
    assert all(f": {dtype}[B, 2]" in print_graph(graph) for dtype in DTYPES)


# ---- what the text may say ---------------------------------------------------------------------

GRAPH = """\
# A hand-written graph; whole-line comments are ignored.
graph g(%x: f32[B, 3]) {
  param %W: f32[2, 3] = normal(0.0, 0.01)                # C:/m.nn:2:3
  %W.T = transpose(%W) {perm=[1, 0]} : f32[3, 2]         # not a location
  %y = matmul(%x, %W.T) : f32[B, 2]
  %k = constant() {value=2, dtype=f32} : f32[]
  # another comment
  %s = sum(%y) : f32[]
  %big = mul(%s, %k) : f32[]                             # examples/mlp.nn:9:13
  return %big, %y
}
"""


def test_attrs_take_the_registry_types_and_defaults():
    graph = parse_graph(GRAPH)
    attrs = {node.outputs[0].name: node.attrs for node in graph.nodes}
    assert attrs["W.T"] == {"perm": (1, 0)} and type(attrs["W.T"]["perm"]) is tuple
    assert attrs["k"] == {"value": 2.0, "dtype": "f32"} and type(attrs["k"]["value"]) is float
    assert attrs["s"] == {"axes": None, "keepdims": False}


def test_trailing_locations_are_read_and_other_comments_ignored():
    graph = parse_graph(GRAPH)
    assert graph.params[0].loc == SourceLoc("C:/m.nn", 2, 3)
    assert [node.loc for node in graph.nodes] == [None, None, None, None,
                                                  SourceLoc("examples/mlp.nn", 9, 13)]
    assert [value.name for value in graph.outputs] == ["big", "y"]


def test_special_floats_survive():
    text = ("graph g() {\n" + "".join(
        f"  %c{i} = constant() {{value={value!r}, dtype=f64}} : f64[]\n"
        for i, value in enumerate([math.inf, -math.inf, math.nan, -0.0, 5e-05, 1e300]))
        + "  return %c0\n}\n")
    values = [node.attrs["value"] for node in parse_graph(text).nodes]
    assert values[:2] == [math.inf, -math.inf] and math.isnan(values[2])
    assert math.copysign(1.0, values[3]) == -1.0 and values[4:] == [5e-05, 1e300]
    assert print_graph(parse_graph(text)) == text


def test_differences_name_what_differs():
    a, b = parse_graph(GRAPH), parse_graph(GRAPH)
    b.nodes[0].loc = SourceLoc("m.nn", 1, 1)
    b.nodes[2].attrs["value"] = 2  # an int where the registry stores a float
    differences = graph_differences(a, b)
    assert len(differences) == 2
    assert differences[0].startswith("node 0:") and differences[1].startswith("node 2:")


def error_of(text: str) -> ChainruleError:
    with pytest.raises(ChainruleError) as info:
        parse_graph(text, "bad.ir")
    assert info.value.file == "bad.ir"
    return info.value


def replaced(old: str, new: str) -> str:
    assert old in GRAPH
    return GRAPH.replace(old, new, 1)


ERROR_CASES = [
    (replaced("matmul(", "matmull("), 5, 8, "unknown op 'matmull'"),
    (replaced(": f32[B, 2]", ": f32[B, 3]"), 5, 27, "%y is declared f32[B, 3], but matmul gives "
                                                    "f32[B, 2]"),
    (replaced("%y = matmul(%x, %W.T)", "%y = matmul(%x, %W.U)"), 5, 19, "%W.U is not defined"),
    (replaced("  %W.T = transpose", "  %x = transpose"), 4, 3, "%x is already defined"),
    (replaced("  %W.T = transpose", "  %W = transpose"), 4, 3, "%W is already defined"),
    (replaced("return %big, %y", "return %big, %z"), 10, 16, "%z is not defined"),
    (replaced("%s = sum(%y)", "%s = sum(%s)"), 8, 12, "%s is not defined"),
    (replaced("perm=[1, 0]", "perm=[1.0, 0]"), 4, 30, "'perm' must be ints"),
    (replaced("perm=[1, 0]", "order=[1, 0]"), 4, 25, "has no attribute 'order'"),
    (replaced("perm=[1, 0]", "perm=[1, 0], perm=[0, 1]"), 4, 38, "'perm' is given twice"),
    (replaced("{perm=[1, 0]} ", ""), 4, 10, "needs attribute 'perm'"),
    (replaced("perm=[1, 0]", "perm=[0, 0]"), 4, 10, "not a permutation"),
    (replaced("normal(0.0, 0.01)", "normal(0.0)"), 3, 25, "takes 2 arguments"),
    (replaced("%x, %W.T)", "%x %W.T)"), 5, 18, "unexpected '%W.T'; expected ')', ','"),
    (replaced(": f32[B, 2]", "f32[B, 2]"), 5, 25, "unexpected 'f32'; expected ':', 'body', '{'"),
    (replaced("%k = ", "%k $= "), 6, 6, "unexpected character '$'"),
    (GRAPH[:GRAPH.index("  return")], 9, 80, "unexpected end of input; expected ',', 'return', a %value"),
]


@pytest.mark.parametrize("text, line, col, message", ERROR_CASES,
                         ids=[case[-1] for case in ERROR_CASES])
def test_errors_are_located_in_the_ir_text(text, line, col, message):
    error = error_of(text)
    assert (error.line, error.col) == (line, col), error
    assert message in error.message


def test_a_second_definition_points_at_the_first():
    error = error_of(replaced("  %k = constant", "  %y = constant"))
    assert error.notes == ((SourceLoc("bad.ir", 5, 3), "first defined here"),)
