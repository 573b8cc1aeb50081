"""What each op computes: forward values against plain numpy expressions (also over random
shapes with hypothesis), forward-only ops through onnxruntime, and the DSL's indexing, shape
built-ins, logic, dropout and compositions."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import chainrule
from chainrule import ChainruleError
from chainrule.backends import get_backend
from chainrule.backends.onnx_backend import export_onnx
from chainrule.ir import OpTypeError, infer_type
from chainrule.ir.types import TensorType, numpy_dtype
from op_cases import CASES, FORWARD_CASES, REFERENCES, Arg, Case, draw, forward_graph, in_dtype
from support.backend_checks import TOLERANCES, check_standard
from support.numeric import assert_close
from support.op_checks import check_against_reference, check_gradients


@pytest.mark.parametrize("case", CASES + FORWARD_CASES, ids=lambda c: c.id)
def test_op_matches_its_numpy_reference(case):
    check_against_reference(case, np.random.default_rng(2))


@pytest.mark.parametrize("dtype", TOLERANCES)
@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.id)
def test_forward_only_op_matches_numpy_in_onnxruntime(case, dtype):
    case = in_dtype(case, dtype)
    graph = forward_graph(case)
    check_standard(export_onnx(graph, {}))
    rng = np.random.default_rng(3)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(graph.inputs, case.args, strict=True)}
    expected = get_backend("numpy").run(graph, feeds, {})["out"]
    actual = get_backend("onnxruntime").run(graph, feeds, {})["out"]
    assert actual.dtype == expected.dtype
    assert_close(actual, expected, *TOLERANCES[dtype], what=case.id)


# ---- erf, gather_elements and scatter_elements_add ---------------------------------------------

# A dense grid, the ends of the approximation's intervals, and the extremes.
ERF_POINTS = np.concatenate([
    np.linspace(-8.0, 8.0, 200_001),
    [0.0, -0.0, 5e-324, -1e-310, 1e-300, 1e-20, -1e-8, 0.46875, np.nextafter(0.46875, 1.0), 4.0,
     np.nextafter(4.0, 5.0), -26.0, 27.5, 1e10, 3e38, np.inf, -np.inf, np.nan],
])
# (backend, dtype) -> the largest error allowed, relative to |erf(x)| (float64: a few ulps;
# float32: an ulp, onnxruntime's own Erf a few).
ERF_TOLERANCES = {("numpy", "f64"): 1e-15, ("onnxruntime", "f64"): 1e-15,
                  ("numpy", "f32"): 6e-8, ("onnxruntime", "f32"): 3e-7}


@pytest.mark.parametrize("backend, dtype", ERF_TOLERANCES)
def test_erf_matches_math_erf(backend, dtype):
    x = ERF_POINTS.astype(numpy_dtype(dtype))
    graph = forward_graph(Case("erf", (Arg(x.shape, dtype),)))
    result = get_backend(backend).run(graph, {"a0": x}, {})["out"]
    assert result.dtype == x.dtype
    expected = np.array([math.erf(v) for v in x.astype(np.float64)])
    finite = ~np.isnan(expected)
    error = np.abs(result[finite] - expected[finite])
    worst = np.max(error / np.maximum(np.abs(expected[finite]), np.finfo(x.dtype).tiny))
    assert worst <= ERF_TOLERANCES[backend, dtype], f"relative error {worst:.3g}"
    assert np.isnan(result[~finite]).all()
    # erf is odd (onnxruntime's float64 Where drops the sign of -0, so zeros are left out).
    nonzero = finite & (x != 0)
    assert np.array_equal(np.signbit(result[nonzero]), np.signbit(x[nonzero]))


@pytest.mark.parametrize("shape, axis", [((4, 3), 0), ((2, 5, 3), 1), ((2, 5, 3), -1), ((6,), 0)])
def test_gather_elements_is_take_along_axis_and_scatter_elements_add_its_transpose(shape, axis):
    rng = np.random.default_rng(18)
    x = rng.normal(size=shape)
    index_shape = list(shape)
    index_shape[axis] = 7
    positions = rng.integers(-shape[axis], shape[axis], index_shape)
    numpy = get_backend("numpy")
    gathered = numpy.run(forward_graph(Case("gather_elements", (
        Arg(shape), Arg(positions.shape, "i64")), {"axis": axis})), {"a0": x, "a1": positions},
        {})["out"]
    assert np.array_equal(gathered, np.take_along_axis(x, positions, axis))
    # <gather(x), u> = <x, scatter(u)>: repeated indices must accumulate.
    u = rng.normal(size=positions.shape)
    scattered = numpy.run(forward_graph(Case("scatter_elements_add", (
        Arg(u.shape), Arg(positions.shape, "i64"), Arg(shape)), {"axis": axis})),
        {"a0": u, "a1": positions, "a2": x}, {})["out"]
    assert scattered.shape == x.shape
    assert math.isclose(np.sum(gathered * u), np.sum(x * scattered), rel_tol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_gather_elements_refuses_indices_out_of_range(backend):
    graph = forward_graph(Case("gather_elements", (Arg((3, 4)), Arg((3, 2), "i64")), {"axis": 1}))
    x = np.zeros((3, 4))
    with pytest.raises(ChainruleError, match=r"input 'a1' holds 4, out of range: indices for "
                                             r"gather_elements over 4 items lie in \[-4, 4\)"):
        get_backend(backend).run(graph, {"a0": x, "a1": np.full((3, 2), 4)}, {})
    result = get_backend(backend).run(graph, {"a0": x, "a1": np.full((3, 2), -4)}, {})["out"]
    assert result.shape == (3, 2)


@pytest.mark.parametrize("positions, axis, message", [
    (TensorType("i64", (3,)), 0, "gather_elements needs indices of the operand's rank, got "
                                 "i64[3] for [3, 4]"),
    (TensorType("f64", (3, 4)), 0, "gather_elements needs i64 indices, got f64[3, 4]"),
    (TensorType("i64", (2, 5)), 0, "axis 1 of the indices is longer than the operand's"),
    (TensorType("i64", (3, 4)), 2, "axis 2 is out of range for rank 2"),
])
def test_gather_elements_type_errors(positions, axis, message):
    with pytest.raises(OpTypeError, match=re.escape(message)):
        infer_type("gather_elements", [TensorType("f64", (3, 4)), positions], {"axis": axis})


@pytest.mark.parametrize("k, axis, message", [
    (6, -1, "top_k_indices of 6 along axis 1 of f64[3, 5]: k lies in [0, 5]"),
    (-1, 0, "top_k_indices of -1 along axis 0 of f64[3, 5]: k lies in [0, 3]"),
    (1, 2, "axis 2 is out of range for rank 2"),
])
def test_top_k_indices_type_errors(k, axis, message):
    with pytest.raises(OpTypeError, match=re.escape(message)):
        infer_type("top_k_indices", [TensorType("f64", (3, 5))], {"k": k, "axis": axis})


@pytest.mark.parametrize("dtype", ["u64", "u32", "u16", "i8", "f16"])
def test_top_k_indices_rank_every_dtype_alike_on_both_backends(dtype):
    """onnxruntime's TopK lacks some dtypes; the export ranks those in one it has, in the
    same order (u64 across 2**63 included)."""
    values = {"u64": [2 ** 64 - 1, 0, 2 ** 63, 2 ** 63 - 1, 5, 2 ** 63],
              "u32": [2 ** 32 - 1, 0, 2 ** 31, 7, 5, 2 ** 31]}.get(dtype, [3, 0, 100, -1, 5, 100])
    if dtype.startswith("u"):
        values = [v if v >= 0 else 1 for v in values]
    graph = forward_graph(Case("top_k_indices", (Arg((6,), dtype),), {"k": 4}))
    x = np.array(values, dtype=numpy_dtype(dtype))
    for backend in ("numpy", "onnxruntime"):
        result = get_backend(backend).run(graph, {"a0": x}, {})["out"]
        np.testing.assert_array_equal(result, np.argsort(-np.array(values, dtype=object),
                                                         kind="stable")[:4].astype(np.int64),
                                      err_msg=backend)


def test_top_k_indices_of_bf16_values_inside_a_graph_on_both_backends():
    model = chainrule.compile(source="model m(x: f32[6]) {\n"
                                     "  return top_k_indices(bf16(x), 3)\n}\n")
    x = np.array([0.5, 3.0, -1.0, 3.0, 2.0, 1.0], np.float32)
    for backend in ("numpy", "onnxruntime"):
        (result,) = model.run(backend=backend, x=x).values()
        np.testing.assert_array_equal(result, [1, 3, 4], err_msg=backend)


# ---- det -----------------------------------------------------------------------------------------

def test_det_pivots_and_its_gradient_is_the_cofactor_matrix_even_where_singular():
    """onnxruntime's float64 det is an elimination, which must swap rows at a zero pivot; the
    gradient is the cofactor matrix, which a singular matrix has too."""
    model = chainrule.compile(source="""
    model m(x: f64[3, 3, 3]) {
        param P: f64[3, 3, 3] = ones()
        d = det(x)
        J = sum(det(x * P))
        return J, d
    }""")
    x = np.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]],  # pivots need swaps
                  [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [1.0, 0.0, 1.0]],  # singular
                  [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # a permutation
    cofactors = np.array([[[0.0, -12.0, 0.0], [-8.0, 0.0, 0.0], [0.0, 3.0, -6.0]],
                          [[4.0, 4.0, -4.0], [-2.0, -2.0, 2.0], [0.0, 0.0, 0.0]],
                          [[0.0, 0.0, -1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]])
    for backend in ("numpy", "onnxruntime"):
        assert_close(model.run(backend=backend, x=x)["d"], [-24.0, 0.0, -1.0], 1e-14,
                     what=backend)
        assert_close(model.grad(backend=backend, x=x)["P"], cofactors * x, 1e-14, what=backend)


# ---- grid_sample -------------------------------------------------------------------------------

@pytest.mark.parametrize("x, grid, attrs, message", [
    (TensorType("f64", (1, 2, 4, 5)), TensorType("f64", (1, 3, 2)), {},
     "grid_sample of x [1, 2, 4, 5] needs a grid [batch, out, out, 2], got [1, 3, 2]"),
    (TensorType("f64", (1, 2, 4, 5)), TensorType("f64", (1, 3, 3, 3)), {},
     "needs a grid [batch, out, out, 2], got [1, 3, 3, 3]"),
    (TensorType("f64", (2, 2, 4, 5)), TensorType("f64", (3, 3, 3, 2)), {},
     "x [2, 2, 4, 5] and grid [3, 3, 3, 2] differ in batch size"),
    (TensorType("f64", (1, 2, 4, 5)), TensorType("f32", (1, 3, 3, 2)), {},
     "grid_sample needs operands of one dtype"),
    (TensorType("f64", (1, 2)), TensorType("f64", (1, 2)), {},
     "grid_sample takes x [batch, channels, *spatial] with fixed channels and spatial sizes"),
    (TensorType("f64", (1, 2, 4, 5)), TensorType("f64", (1, 3, 3, 2)), {"mode": "bilinear"},
     "grid_sample's mode is one of 'nearest', 'linear', 'cubic', not 'bilinear'"),
    (TensorType("f64", (1, 2, 4, 5)), TensorType("f64", (1, 3, 3, 2)),
     {"padding_mode": "edge"}, "padding_mode is one of 'zeros', 'border', 'reflection'"),
])
def test_grid_sample_type_errors(x, grid, attrs, message):
    with pytest.raises(OpTypeError, match=re.escape(message)):
        infer_type("grid_sample", [x, grid], attrs)


def test_grid_sample_in_the_dsl_names_a_mode_it_does_not_know_at_its_line():
    source = ("model m(x: f32[1, 2, 4, 5], g: f32[1, 3, 3, 2]) {\n"
              "  return grid_sample(x, g, mode=\"bilinear\")\n}\n")
    with pytest.raises(ChainruleError, match="mode is one of 'nearest', 'linear', 'cubic'") as info:
        chainrule.compile(source=source)
    assert info.value.loc.line == 2


def test_grid_sample_reads_nan_points_as_nan_on_both_backends():
    source = ("model m(x: f64[1, 1, 2, 2], g: f64[1, 1, 2, 2]) {\n"
              "  return grid_sample(x, g, padding_mode=\"border\")\n}\n")
    grid = np.array([[[[np.nan, 0.0], [0.0, 0.0]]]])
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    model = chainrule.compile(source=source)
    for backend in ("numpy", "onnxruntime"):
        (result,) = model.run(backend=backend, x=x, g=grid).values()
        np.testing.assert_array_equal(result, [[[[np.nan, 1.5]]]])


@pytest.mark.parametrize("op", ["sinh", "cosh"])
def test_hyperbolic_functions_overflow_only_where_numpy_does(op):
    # e^710 is past f64, but sinh(710) and cosh(710) are not.
    x = np.array([710.0, -710.0, 709.0, 711.0])
    model = chainrule.compile(source=f"model m(x: f64[4]) {{\n    return {op}(x)\n}}\n")
    with np.errstate(over="ignore"):  # past 710.48 they are inf, as they should be
        expected = getattr(np, op)(x)
    for backend in ("numpy", "onnxruntime"):
        (result,) = model.run(backend=backend, x=x).values()
        np.testing.assert_allclose(result, expected, rtol=1e-13)


# ---- random shapes ----------------------------------------------------------------------------

# op -> the domain its operands are drawn from
UNARY = {"neg": "any", "exp": "any", "log": "positive", "log1p": "positive", "relu": "any",
         "sigmoid": "any", "tanh": "any", "sin": "any", "cos": "any", "sqrt": "positive",
         "abs": "any", "sign": "any", "floor": "any", "gelu": "any", "softplus": "any",
         "erf": "any", "leaky_relu": "any", "clip": "any", "logical_not": "bool",
         "tan": "inside_unit", "asin": "inside_unit", "acos": "inside_unit", "atan": "any",
         "sinh": "any", "cosh": "any", "asinh": "any", "acosh": "above_one",
         "atanh": "inside_unit"}
BINARY = {"add": "any", "sub": "any", "mul": "any", "div": "away_from_zero", "pow": "positive",
          "maximum": "any", "minimum": "any", "less": "any", "greater_equal": "any",
          "logical_and": "bool", "logical_or": "bool"}
ATTRS = {"leaky_relu": {"alpha": 0.1}, "clip": {"lo": -0.5, "hi": 0.5}}
RANDOM_SHAPES = settings(max_examples=25, derandomize=True, deadline=None)


def _operand(shape, domain):
    return Arg(tuple(shape), "bool" if domain == "bool" else "f64", domain)


@RANDOM_SHAPES
@given(op=st.sampled_from(sorted(UNARY)), shape=hnp.array_shapes(min_dims=0, max_side=4))
def test_unary_ops_on_random_shapes(op, shape):
    case = Case(op, (_operand(shape, UNARY[op]),), ATTRS.get(op, {}))
    check_against_reference(case, np.random.default_rng(4))


@RANDOM_SHAPES
@given(op=st.sampled_from(sorted(BINARY)),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_side=4))
def test_broadcasting_ops_on_random_shapes(op, shapes):
    domains = (BINARY[op], "any" if op == "pow" else BINARY[op])
    case = Case(op, tuple(_operand(s, d) for s, d in zip(shapes.input_shapes, domains)))
    check_against_reference(case, np.random.default_rng(5))


@st.composite
def reductions(draw_from):
    shape = draw_from(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4))
    rank = len(shape)
    op = draw_from(st.sampled_from(["sum", "mean", "max", "min", "logsumexp", "argmax",
                                    "argmin"]))
    # Each axis may be written negative.
    axes = [a - rank * draw_from(st.booleans())
            for a in draw_from(st.lists(st.integers(0, rank - 1), min_size=1, unique=True))]
    keepdims = draw_from(st.booleans())
    if op in ("argmax", "argmin"):
        return Case(op, (Arg(shape),), {"axis": axes[0], "keepdims": keepdims})
    every = draw_from(st.booleans())
    return Case(op, (Arg(shape),), {"axes": None if every else tuple(axes), "keepdims": keepdims})


@RANDOM_SHAPES
@given(case=reductions())
def test_reductions_on_random_shapes_and_axes(case):
    check_against_reference(case, np.random.default_rng(6))


# ---- the DSL ----------------------------------------------------------------------------------

def run_both(source: str, **inputs) -> dict:
    """The model's outputs from numpy, after checking onnxruntime agrees."""
    model = chainrule.compile(source=source)
    expected = model.run(**inputs)
    actual = model.run(backend="onnxruntime", **inputs)
    for name in expected:
        assert_close(actual[name], expected[name], 1e-12, atol=1e-12, what=name)
    return expected


def one_output(signature: str, expression: str) -> str:
    return f"model m({signature}) {{\n  y = {expression}\n  return y\n}}\n"


def run_one(signature: str, expression: str, **inputs):
    """The value of `expression` (possibly an input itself, as x[:] is x)."""
    (result,) = run_both(one_output(signature, expression), **inputs).values()
    return result


def output_type(signature: str, expression: str) -> str:
    return str(chainrule.compile(source=one_output(signature, expression)).graph.outputs[0].type)


INDEXING = ["x[:, 0:3]", "x[..., -1]", "x[1]", "x[:, ::2]", "x[::-1, 1:-1:2, 2]",
            "x[-2:, ..., 1:]", "x[:]", "x[1, 2, 3]", "x[..., ::-2]", "x[0:100]", "x[-1, -1]"]


@pytest.mark.parametrize("expression", INDEXING)
def test_indexing_matches_numpy(expression):
    x = np.random.default_rng(7).normal(size=(4, 6, 5))
    result = run_one("x: f64[4, 6, 5]", expression, x=x)
    expected = eval(expression, {"x": x})  # the DSL's indexing is numpy's
    assert result.shape == expected.shape and np.array_equal(result, expected)


@pytest.mark.parametrize("expression, expected", [
    ("x[:, 1:3]", "f64[B, 2]"),   # a fixed axis keeps its number
    ("x[1:]", "f64[B-1, 6]"),     # a dim expression
    ("x[1:-2:2]", "f64[?, 6]"),    # B-3 may be negative: numpy clamps it
    ("x[:, 2:]", "f64[B, 4]"),
    ("x[::-1]", "f64[B, 6]"),     # the whole axis, reversed
    ("x[0]", "f64[6]"),
    ("x[..., -1]", "f64[B]"),
])
def test_indexing_keeps_symbolic_dims_where_it_can(expression, expected):
    assert output_type("x: f64[B, 6]", expression) == expected
    x = np.random.default_rng(8).normal(size=(3, 6))
    assert np.array_equal(run_one("x: f64[B, 6]", expression, x=x), eval(expression, {"x": x}))


@pytest.mark.parametrize("expression, message", [
    ("x[4]", "index 4 is out of range for axis 0 of size 4"),
    ("x[0, 0, 0, 0]", "4 indices (and 0 '...') for a tensor of type f64[4, 6, 5]"),
    ("x[..., 0, ...]", "at most one per axis and one '...'"),
    ("x[0:2:0]", "a slice step cannot be 0"),
    ("x[x]", "an index must be an integer constant; take(x, indices, axis)"),
    ("x[0.5]", "an index must be an integer, not 0.5"),
])
def test_indexing_errors(expression, message):
    assert message in error_message("x: f64[4, 6, 5]", expression)


def error_message(signature: str, expression: str) -> str:
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=one_output(signature, expression))
    assert info.value.line == 2, info.value
    return info.value.message


# B is 4 when the models run; `reference` computes the output from the inputs with numpy.
@pytest.mark.parametrize("signature, expression, expected, reference", [
    ("x: f64[B, 3, 4]", "reshape(x, (0, -1))", "f64[B, 12]", lambda x: x.reshape(4, 12)),
    ("x: f64[B, 3, 4]", "reshape(x, (0, 2, -1))", "f64[B, 2, 6]", lambda x: x.reshape(4, 2, 6)),
    ("x: f64[B, 3, 4]", "reshape(x, (-1, 4))", "f64[3*B, 4]", lambda x: x.reshape(-1, 4)),
    ("x: f64[B, 12]", "reshape(x, (-1, 3, 4))", "f64[B, 3, 4]", lambda x: x.reshape(4, 3, 4)),
    ("x: f64[2, 6]", "reshape(x, (3, -1))", "f64[3, 4]", lambda x: x.reshape(3, 4)),
    ("x: f64[2, 6]", "reshape(x, 12)", "f64[12]", lambda x: x.reshape(12)),
    ("x: f64[B, 1]", "broadcast_to(x, (-1, 5))", "f64[B, 5]",
     lambda x: np.broadcast_to(x, (4, 5))),
    ("x: f64[3]", "broadcast_to(x, (2, 3))", "f64[2, 3]", lambda x: np.broadcast_to(x, (2, 3))),
    ("x: f64[B, 1, 3]", "squeeze(x, 1)", "f64[B, 3]", lambda x: x[:, 0]),
    ("x: f64[B, 3]", "unsqueeze(x, (0, -1))", "f64[1, B, 3, 1]", lambda x: x[None, ..., None]),
    ("x: f64[B, 3], z: f64[B, 2]", "concat(x, z, x, axis=-1)", "f64[B, 8]",
     lambda x, z: np.concatenate([x, z, x], axis=-1)),
    ("x: f64[B, 3]", "concat(x, x)", "f64[2*B, 3]", lambda x: np.concatenate([x, x])),
    ("x: f64[B, 3]", "stack(x, 2 * x, x, axis=1)", "f64[B, 3, 3]",
     lambda x: np.stack([x, 2 * x, x], axis=1)),
    ("x: f64[B, 3]", "stack(x, x, axis=-1)", "f64[B, 3, 2]", lambda x: np.stack([x, x], -1)),
    ("x: f64[5, 3], i: i64[B, 2]", "take(x, i)", "f64[B, 2, 3]", lambda x, i: x[i]),
    ("x: f64[B, 3]", "max(x, axis=-1, keepdims=true)", "f64[B, 1]",
     lambda x: x.max(-1, keepdims=True)),
    ("x: f64[B, 3]", "argmax(x, axis=1)", "i64[B]", lambda x: x.argmax(1)),
    ("x: f64[B, 3]", "logsumexp(x, axis=0)", "f64[3]", lambda x: np.log(np.exp(x).sum(0))),
    ("x: f64[B, 3]", "log_softmax(x)", "f64[B, 3]",
     lambda x: x - np.log(np.exp(x).sum(-1, keepdims=True))),
])
def test_shape_builtins(signature, expression, expected, reference):
    assert output_type(signature, expression) == expected
    model = chainrule.compile(source=one_output(signature, expression))
    rng = np.random.default_rng(9)
    feeds = {v.name: rng.integers(0, 5, (4, 2)) if v.type.dtype == "i64" else
             rng.normal(size=[d if isinstance(d, int) else 4 for d in v.type.shape])
             for v in model.graph.inputs}
    assert_close(run_one(signature, expression, **feeds), reference(**feeds), 1e-12,
                 what=expression)


def test_concat_and_stack_values_and_gradients():
    source = """
    model m(a: f64[B, 3], b: f64[B, 2]) {
        param W: f64[5, 5] = normal(0.0, 1.0)
        c = concat(a, b, axis=1)
        s = stack(c @ W, c, axis=0)
        d = concat(c, 2 * c, axis=0)
        J = sum(s[0] * s[1]) + sum(d[1:] ** 2)
        return J, c, s, d
    }
    """
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 2))
    outputs = run_both(source, a=a, b=b)
    c = np.concatenate([a, b], axis=1)
    model = chainrule.compile(source=source)
    W = model.params["W"]
    assert np.array_equal(outputs["c"], c)
    assert np.allclose(outputs["s"], np.stack([c @ W, c]))
    assert np.array_equal(outputs["d"], np.concatenate([c, 2 * c]))
    check_gradients(model, a=a, b=b)


def test_comparisons_logic_and_where():
    source = """
    model m(a: f64[3, 4], b: f64[4]) {
        both = a > 0 and not (b < 0) or a == b
        either = logical_or(logical_and(a >= b, b != 0), logical_not(a <= 0))
        y = where(both, a, 0.5)
        z = where(either, -1, b)
        return y, z, both, either
    }
    """
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    outputs = run_both(source, a=a, b=b)
    both = ((a > 0) & ~(b < 0)) | (a == b)
    either = ((a >= b) & (b != 0)) | ~(a <= 0)
    assert np.array_equal(outputs["both"], both) and np.array_equal(outputs["either"], either)
    assert np.array_equal(outputs["y"], np.where(both, a, 0.5))
    assert np.array_equal(outputs["z"], np.where(either, -1.0, b))


def test_logic_folds_constants_and_rejects_numbers():
    assert output_type("x: f64[2]", "where(true and not false, x, 0)") == "f64[2]"
    with pytest.raises(ChainruleError, match="'and' and 'or' take true or false"):
        chainrule.compile(source=one_output("x: f64[2]", "x + (1 and 2)"))
    message = error_message("x: f64[2]", "where(not 1, x, x)")
    assert "'logical_not' takes a tensor or true or false, not 1" in message


def test_max_reduces_and_maximum_compares():
    source = """
    model m(a: f64[3, 4], b: f64[4]) {
        r = max(a, axis=0)
        e = maximum(a, b)
        n = min(a, axis=(0, 1), keepdims=true)
        f = minimum(a, 0)
        i = argmax(a, axis=-1)
        return r, e, n, f, i
    }
    """
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    outputs = run_both(source, a=a, b=b)
    assert np.array_equal(outputs["r"], a.max(axis=0))
    assert np.array_equal(outputs["e"], np.maximum(a, b))
    assert np.array_equal(outputs["n"], a.min(keepdims=True))
    assert np.array_equal(outputs["f"], np.minimum(a, 0))
    assert np.array_equal(outputs["i"], a.argmax(axis=-1))


def test_ties_split_the_gradient_evenly():
    source = """
    model m(x: f64[2, 3], y: f64[2, 3]) {
        param W: f64[2, 3] = ones()
        J = sum(max(x * W, axis=1)) + sum(maximum(W, y))
        return J
    }
    """
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    y = np.array([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    grads = chainrule.compile(source=source).grad(x=x, y=y)
    from_max = np.array([[0.0, 1.5, 1.5], [1.0, 0.0, 1.0]])  # x * half a share each
    from_maximum = np.array([[0.5, 1.0, 0.0], [0.5, 0.5, 1.0]])
    assert np.array_equal(grads["W"], from_max + from_maximum)


@pytest.mark.parametrize("signature, expression", [
    ("a: f64[4], b: f64[4, 5]", "a @ b"),
    ("a: f64[2, 3, 4], b: f64[4]", "a @ b"),
    ("a: f64[4], b: f64[4]", "a @ b"),
    ("a: f64[2, 1, 3, 4], b: f64[5, 4, 2]", "matmul(a, b)"),
    ("a: f64[3, 4], b: f64[3, 4]", "a ** b"),
])
def test_matmul_and_tensor_powers_in_the_dsl(signature, expression):
    model = chainrule.compile(source=one_output(signature, expression))
    rng = np.random.default_rng(13)
    feeds = {v.name: np.abs(rng.normal(size=v.type.shape)) + 0.5 for v in model.graph.inputs}
    expected = eval(expression.replace("matmul(a, b)", "a @ b"), dict(feeds))
    assert model.graph.outputs[0].type.shape == np.shape(expected)
    assert_close(run_one(signature, expression, **feeds), expected, 1e-12)


DROPOUT = """
model m(x: f64[B, 200]) {
    param W: f64[200] = ones()
    h = dropout(x * W, 0.25)
    k = dropout(x, 0.25)
    J = sum(h)
    return J, h, k
}
"""


def test_dropout_is_the_identity_unless_training():
    model = chainrule.compile(source=DROPOUT)
    x = np.random.default_rng(14).normal(size=(8, 200))
    for backend in ("numpy", "onnxruntime"):
        outputs = get_backend(backend).run(model.graph, {"x": x}, model.params)
        assert np.array_equal(outputs["h"], x) and np.array_equal(outputs["k"], x), backend


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_dropout_in_training_drops_scales_and_reuses_its_mask(backend):
    model = chainrule.compile(source=DROPOUT)
    x = np.random.default_rng(15).normal(size=(8, 200))
    graph, grads = model.grad_graph()
    outputs = get_backend(backend).run(graph, {"x": x}, model.params, training=True)
    h, k = outputs["h"], outputs["k"]
    dropped = h == 0
    assert 0.2 < dropped.mean() < 0.3
    assert np.allclose(h[~dropped], x[~dropped] / 0.75)
    assert not np.array_equal(dropped, k == 0), "two dropouts share a mask"
    mask = h / x  # 0 or 1 / 0.75: the gradient of sum(h) w.r.t. W must use this very mask
    assert_close(outputs[grads["W"]], (mask * x).sum(axis=0), 1e-12)  # grads hold names


def test_numpy_dropout_masks_are_reproducible():
    model = chainrule.compile(source=DROPOUT)
    x = np.random.default_rng(16).normal(size=(8, 200))
    numpy = get_backend("numpy")
    first = numpy.run(model.graph, {"x": x}, model.params, training=True)
    again = chainrule.compile(source=DROPOUT)
    second = numpy.run(again.graph, {"x": x}, again.params, training=True)
    assert np.array_equal(first["h"], second["h"]) and np.array_equal(first["k"], second["k"])


# ---- compositions -----------------------------------------------------------------------------

def _layer_norm(x, gamma, beta):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta


def _log_sigmoid(x):
    return -np.log1p(np.exp(-x))


COMPOSITIONS = [
    ("layer_norm(h, G, b)", lambda h, G, b, t, p: _layer_norm(h, G, b)),
    ("cross_entropy(h, p)", lambda h, G, b, t, p: -np.mean(
        np.sum(p * np.log(REFERENCES["softmax"](h, -1)), -1))),
    ("binary_cross_entropy_with_logits(h, t)",
     lambda h, G, b, t, p: -np.mean(t * _log_sigmoid(h) + (1 - t) * _log_sigmoid(-h))),
]


@pytest.mark.parametrize("expression, reference", COMPOSITIONS, ids=lambda c: str(c)[:12])
def test_compositions_match_numpy_and_finite_differences(expression, reference):
    source = f"""
    model m(x: f64[B, 4], t: f64[B, 5], p: f64[B, 5]) {{
        param W: f64[5, 4] = normal(0.0, 1.0)
        param G: f64[5] = normal(1.0, 0.1)
        param b: f64[5] = normal(0.0, 0.1)
        h = x @ W.T
        y = {expression}
        J = sum(y * y)
        return J, y
    }}
    """
    rng = np.random.default_rng(17)
    x, t = rng.normal(size=(3, 4)), (rng.random((3, 5)) < 0.5).astype(np.float64)
    p = REFERENCES["softmax"](rng.normal(size=(3, 5)), -1)
    model = chainrule.compile(source=source)
    y = run_both(source, x=x, t=t, p=p)["y"]
    params = model.params
    assert_close(y, reference(x @ params["W"].T, params["G"], params["b"], t, p), 1e-12)
    check_gradients(model, x=x, t=t, p=p)


def test_cross_entropy_targets_must_match_the_logits():
    message = error_message("o: f64[B, 5], p: f64[B, 4]", "cross_entropy(o, p)")
    assert message == ("cross_entropy(): labels must be i64, or probability targets of the "
                       "logits' dtype and shape; got logits f64[B, 5] and targets f64[B, 4]")


# ---- type errors name the operands ------------------------------------------------------------

@pytest.mark.parametrize("signature, expression, message", [
    ("a: f64[B, 3], b: f64[4]", "maximum(a, b)", "shapes [B, 3] and [4] do not broadcast"),
    ("a: f64[2, 3], b: f64[3, 3]", "concat(a, b, axis=1)",
     "concat along axis 1 needs equal dims elsewhere, got [2, 3] and [3, 3] (axis 0 differs)"),
    ("a: f64[2, 3], b: f64[2]", "stack(a, b)", "stack(): concat needs operands of one rank"),
    ("a: f64[2, 3]", "reshape(a, (4, 2))", "reshape of [2, 3] to [4, 2]: 6 elements cannot"),
    ("a: f64[2, 3]", "reshape(a, (-1, -1))", "dims are sizes, 0 (copy the input dim) or one -1"),
    ("a: f64[2, 3]", "reshape(a, (4, -1))", "6 elements do not divide into [4]"),
    ("a: f64[2, 3]", "squeeze(a, 0)", "axis 0 of [2, 3] has size 2"),
    ("a: f64[2, 3]", "broadcast_to(a, (3, 3))", "shapes [2, 3] and [3, 3] do not broadcast"),
    ("a: f64[3]", "broadcast_to(a, (1, 1))", "cannot broadcast [3] to [1, 1]"),
    ("a: f64[2, 3], i: f64[4]", "take(a, i)", "take needs i64 indices, got f64[4]"),
    ("a: f64[2, 3]", "clip(a, 1, 0)", "clip needs lo <= hi"),
    ("a: f64[2, 3]", "sqrt(a > 0)", "sqrt needs a float operand, got bool[2, 3]"),
    ("a: f64[2, 3]", "logical_not(a)", "logical_not needs a bool operand, got f64[2, 3]"),
    ("a: f64[2, 3]", "argmax(a, axis=2)", "axis 2 is out of range for rank 2"),
    ("a: f64[2, 3]", "dropout(a, 1.0)", "dropout probability must lie in [0, 1), got 1.0"),
    ("a: f64[2, 3]", "concat(a, 1)", "concat() takes tensors as positional arguments"),
])
def test_type_errors_name_the_operands(signature, expression, message):
    assert message in error_message(signature, expression)
