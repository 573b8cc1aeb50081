"""Tensors with a dim of size 0: ONNX's meaning on every backend, forward and backward.

Each program runs on the compiled numpy backend, the numpy interpreter it replaces, and
onnxruntime; all three must agree on every value, NaN included. What has no value (argmax over
nothing, cross_entropy over no classes) is a located error.
"""
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import chainrule
from chainrule.backends import get_backend
from chainrule.gradcheck import gradcheck
from chainrule.ir import ChainruleError
from chainrule.onnx_import import UnsupportedModel
from op_cases import Arg, Case, forward_graph
from support.backend_checks import check_against_interpreter_twice, check_standard
from support.cli import chainrule as chainrule_cli
from support.cli import fails
from support.onnx_models import model_of as onnx_model_of
from support.op_checks import check_against_reference, check_on_onnxruntime
from support.onnx_models import run_both
from support.paths import ROOT

X = np.arange(12, dtype=np.float32).reshape(3, 4)
INTS = np.arange(12, dtype=np.int64).reshape(3, 4)
I64 = np.iinfo(np.int64)


def model_of(body: str, signature: str = "x: f32[3, 4]"):
    return chainrule.compile(source=f"model m({signature}) {{\n    J = {body}\n    return J\n}}\n")


def run_everywhere(model, **feeds) -> dict:
    """J on the compiled numpy backend and on onnxruntime, after the interpreter has given the
    compiled backend's values; numpy's RuntimeWarnings are left to the caller."""
    graph, _ = model.compile_graph(opt_level="O2")
    check_against_interpreter_twice(graph, feeds, model.params)
    numpy_value = model.run(**feeds)["J"]
    onnx_value = model.run(backend="onnxruntime", **feeds)["J"]
    assert onnx_value.dtype == numpy_value.dtype and onnx_value.shape == numpy_value.shape
    np.testing.assert_array_equal(onnx_value, numpy_value)
    return numpy_value


@pytest.mark.parametrize("body, expected", [
    ("sum(x[:, 2:2])", np.float32(0)),
    ("sum(x[:, 2:2], axis=1)", np.zeros(3, np.float32)),
    ("prod(x[:, 2:2], axis=1)", np.ones(3, np.float32)),
    ("prod(x[1:1, :])", np.float32(1)),
    ("max(x[:, 2:2], axis=1)", np.full(3, -np.inf, np.float32)),
    ("min(x[:, 2:2])", np.float32(np.inf)),
    ("logsumexp(x[:, 2:2], axis=1)", np.full(3, -np.inf, np.float32)),
    ("max(x[1:1, :], axis=0, keepdims=true)", np.full((1, 4), -np.inf, np.float32)),
])
def test_reductions_over_nothing_give_their_identity(body, expected):
    value = run_everywhere(model_of(body), x=X)
    assert value.shape == expected.shape
    np.testing.assert_array_equal(value, expected)


@pytest.mark.parametrize("body, expected", [
    ("max(x[:, 2:2], axis=1)", np.full(3, I64.min)),
    ("min(x[:, 2:2], axis=1)", np.full(3, I64.max)),
    ("sum(x[0:0, :])", np.int64(0)),
    ("prod(x[0:0, :], axis=0)", np.ones(4, np.int64)),
])
def test_integer_extremes_over_nothing_are_the_dtypes_bounds(body, expected):
    value = run_everywhere(model_of(body, "x: i64[3, 4]"), x=INTS)
    np.testing.assert_array_equal(value, expected)
    assert value.dtype == np.int64


@pytest.mark.parametrize("body, shape", [("mean(x[:, 2:2])", ()), ("mean(x[:, 2:2], axis=1)", (3,))])
def test_the_mean_of_nothing_is_nan_and_numpy_warns(body, shape):
    model = model_of(body)
    with pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        model.run(x=X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = run_everywhere(model, x=X)
    assert value.shape == shape and np.all(np.isnan(value))


@pytest.mark.parametrize("body, shape", [
    ("softmax(x[:, 2:2], axis=1)", (3, 0)),
    ("log_softmax(x[:, 2:2], axis=-1)", (3, 0)),
    ("softmax(x[:, 2:2], axis=0)", (3, 0)),
    ("exp(x[:, 2:2]) * 2.0 + x[:, 3:3]", (3, 0)),
    ("x[:, 2:2] + x[:, 0:1]", (3, 0)),  # 0 broadcasts with 1 to 0
    ("x[0:0, :] * x[0:1, :]", (0, 4)),
    ("reshape(x[:, 2:2], (-1,))", (0,)),
    ("reshape(x[:, 2:2], (5, -1))", (5, 0)),
    ("cumsum(x[:, 2:2], axis=1)", (3, 0)),
    ("x[:, 2:2].T", (0, 3)),
    ("argmax(x[:, 2:2], axis=0)", (0,)),  # one index per empty column: none
    ("zeros((3, 0)) + x[:, 1:1]", (3, 0)),
    ("f32(arange(0)) + x[0, 0:0]", (0,)),
])
def test_ops_on_empty_tensors_give_empty_results(body, shape):
    assert run_everywhere(model_of(body), x=X).shape == shape


# ---- random shapes with a dim of 0 ------------------------------------------------------------

RANDOM_SHAPES = settings(max_examples=20, derandomize=True, deadline=None)
EMPTY_SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=3).filter(
    lambda shape: 0 in shape)
UNARY = ["neg", "exp", "tanh", "relu", "sigmoid", "abs", "gelu", "softplus", "sin"]
BINARY = ["add", "sub", "mul", "maximum", "minimum"]


@RANDOM_SHAPES
@given(op=st.sampled_from(UNARY), shape=EMPTY_SHAPES)
def test_elementwise_ops_and_their_gradients_on_random_empty_shapes(op, shape):
    case = Case(op, (Arg(shape),))
    check_against_reference(case, np.random.default_rng(0))
    check_on_onnxruntime(case, "f64")


@RANDOM_SHAPES
@given(op=st.sampled_from(BINARY),
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=3,
                                                min_side=0, max_side=3).filter(
           lambda drawn: 0 in drawn.result_shape))
def test_broadcasting_with_a_dim_of_0_on_random_shapes(op, shapes):
    case = Case(op, tuple(Arg(shape) for shape in shapes.input_shapes))
    check_against_reference(case, np.random.default_rng(0))
    check_on_onnxruntime(case, "f64")


# op -> numpy's reduction, given the identity ONNX gives over nothing
IDENTITIES = {"sum": (np.sum, None), "prod": (np.prod, None), "max": (np.max, -np.inf),
              "min": (np.min, np.inf)}


@st.composite
def empty_reductions(draw_from):
    shape = draw_from(EMPTY_SHAPES)
    op = draw_from(st.sampled_from(sorted(IDENTITIES) + ["mean", "logsumexp"]))
    axes = draw_from(st.none() | st.lists(st.integers(0, len(shape) - 1), min_size=1,
                                          unique=True).map(tuple))
    return Case(op, (Arg(shape),), {"axes": axes, "keepdims": draw_from(st.booleans())})


def reduced_over_nothing_as_numpy_does(case: Case, x: np.ndarray) -> np.ndarray:
    axes, keepdims = case.attrs["axes"], case.attrs["keepdims"]
    if case.op == "mean":
        return np.mean(x, axis=axes, keepdims=keepdims)
    if case.op == "logsumexp":
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))
    reduce, initial = IDENTITIES[case.op]
    return reduce(x, axis=axes, keepdims=keepdims, **({} if initial is None else
                                                      {"initial": initial}))


@RANDOM_SHAPES
@given(case=empty_reductions())
def test_reductions_of_random_empty_shapes_agree_with_numpy_on_every_backend(case):
    graph = forward_graph(case)
    x = np.random.default_rng(0).normal(size=case.args[0].shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.asarray(reduced_over_nothing_as_numpy_does(case, x))
        check_against_interpreter_twice(graph, {"a0": x}, {})
        for backend in ("numpy", "onnxruntime"):
            got = get_backend(backend).run(graph, {"a0": x}, {})["out"]
            assert got.shape == expected.shape == tuple(graph.outputs[0].type.shape), case.id
            np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=f"{backend} {case.id}")


def test_an_empty_slice_inside_a_concat_adds_nothing():
    value = run_everywhere(model_of("concat(x[:, 0:2], x[:, 2:2], x[:, 2:4], axis=1)"), x=X)
    np.testing.assert_array_equal(value, X)


def test_a_matmul_over_an_inner_dim_of_0_gives_zeros():
    value = run_everywhere(model_of("x[:, 1:1] @ x[:, 1:1].T"), x=X)
    np.testing.assert_array_equal(value, np.zeros((3, 3), np.float32))


def test_an_empty_input_runs():
    value = run_everywhere(model_of("sum(x, axis=1) + 1.0", "x: f32[B, 0]"),
                           x=np.zeros((5, 0), np.float32))
    np.testing.assert_array_equal(value, np.ones(5, np.float32))


@pytest.mark.parametrize("body, signature, message, column", [
    ("argmax(x[:, 2:2], axis=1)", "x: f32[3, 4]",
     "argmax over an empty axis is undefined (axis 1 of f32[3, 0] has size 0)", 9),
    ("argmin(x, axis=0)", "x: f32[0, 4]", "argmin over an empty axis is undefined", 9),
    ("cross_entropy(x[:, 0:0], y)", "x: f32[3, 4], y: i64[3]",
     "cross_entropy over 0 classes is undefined", 9),
])
def test_what_has_no_value_over_nothing_is_a_located_error(body, signature, message, column):
    with pytest.raises(ChainruleError) as caught:
        model_of(body, signature)
    assert message in caught.value.message
    assert (caught.value.line, caught.value.col) == (2, column)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_an_argmax_over_a_dim_bound_to_0_at_run_time_fails_at_its_line(backend):
    model = model_of("argmax(x, axis=1)", "x: f32[3, N]")
    with pytest.raises(ChainruleError) as caught:
        model.run(backend=backend, x=np.zeros((3, 0), np.float32))
    assert caught.value.line == 2 and "argmax" in caught.value.message


def test_a_param_with_a_dim_of_size_0_is_refused():
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source="model m(x: f32[3]) {\n    param W: f32[3, 0] = zeros()\n"
                                 "    J = sum(x)\n    return J\n}\n")
    assert "a param with a dim of size 0 holds nothing to learn" in caught.value.message
    assert caught.value.line == 2


GRADIENT_THROUGH_EMPTIES = """model m(x: f32[3, 4]) {
    param W: f32[4, 5] = glorot()
    param V: f32[5, 2] = glorot()
    h = tanh(x @ W)
    e = h[:, 2:2]
    whole = concat(h[:, 0:2], e, h[:, 2:5], axis=1)
    z = e @ V[0:0, :] + h @ V
    J = sum(whole * whole) + sum(e) + mean(h) + sum(prod(e, axis=1) * h[:, 0]) + sum(z * z) \\
        + sum(exp(logsumexp(e, axis=1)) * h[:, 1]) + sum(softmax(e, axis=1)) \\
        + sum(reshape(e, (-1,)))
    return J
}"""


def test_gradients_through_empty_slices_match_finite_differences():
    model = chainrule.compile(source=GRADIENT_THROUGH_EMPTIES)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    rows = gradcheck(model, {"x": x}, backends=("numpy", "onnxruntime"))
    assert {row.param for row in rows} == {"W", "V"}
    assert all(row.passed for row in rows), rows
    for level in ("O0", "O2"):
        graph, _ = model.compile_graph(grad=True, opt_level=level)
        check_against_interpreter_twice(graph, {"x": x}, model.params)


@pytest.mark.parametrize("opset", [13, 14, 18])  # Reshape's allowzero came in 14
def test_the_exported_gradient_through_empties_runs_in_onnxruntime_at_every_opset(opset):
    import onnxruntime
    model = chainrule.compile(source=GRADIENT_THROUGH_EMPTIES)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    proto = model.to_onnx(grad=True, opset=opset)
    check_standard(proto)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    fed = {i.name for i in session.get_inputs()}
    got = session.run(None, {name: value for name, value in {"x": x, **model.params}.items()
                             if name in fed})
    expected = model.grad(x=x)
    for output, value in zip(session.get_outputs(), got, strict=True):
        np.testing.assert_allclose(value, expected[output.name.removeprefix("dJ/d")], rtol=1e-5,
                                   atol=1e-6, err_msg=output.name)


@pytest.mark.parametrize("opset", [13, 17, 18, 20])  # ReduceMax's versions: 13, 18, 20
@pytest.mark.parametrize("signature, array", [("x: f32[3, 4]", X), ("x: i64[3, 4]", INTS)])
def test_extremes_over_nothing_are_the_same_at_every_opset(opset, signature, array):
    import onnxruntime
    model = chainrule.compile(source=f"model m({signature}) {{\n    e = x[:, 2:2]\n"
                                     f"    return max(e, axis=1), min(e, axis=1)\n}}\n")
    expected = model.run(x=array)
    proto = model.to_onnx(opset=opset)
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    for output, value in zip(session.get_outputs(), session.run(None, {"x": array}), strict=True):
        np.testing.assert_array_equal(value, expected[output.name], err_msg=output.name)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("example", ["digits_classifier", "lenet_digits"])  # lenet: conv, flatten
def test_a_batch_of_0_rows_runs_forward_and_its_mean_loss_is_nan(example, backend):
    model = chainrule.compile(ROOT / "examples" / f"{example}.nn")
    empty = {"x": np.zeros((0, 64), np.float32), "y": np.zeros(0, np.int64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        outputs = model.run(backend=backend, **empty)
        grads = model.grad(backend=backend, **empty)
    assert np.isnan(outputs["J"]) and outputs["logits"].shape == (0, 10)
    trained = [value.name for value in model.graph.trainable_values()]
    assert all(not np.any(grads[name]) for name in trained)  # no rows, no gradient


@pytest.mark.parametrize("shape, target, expected", [
    ((0, 16, 2, 2), (0, -1), (0, 64)),  # a batch of 0 flattened: numpy alone finds -1 ambiguous
    ((0, 64), (-1, 1, 8, 8), (0, 1, 8, 8)),
    ((3, 0), (5, -1), (5, 0)),
])
def test_an_empty_reshape_sizes_its_minus_one_as_the_type_rule_does(shape, target, expected):
    source = (f"model m(x: f32[{', '.join(map(str, shape))}]) {{\n"
              f"    J = reshape(x, {target})\n    return J\n}}\n")
    assert run_everywhere(chainrule.compile(source=source), x=np.zeros(shape, np.float32)).shape \
        == expected


@pytest.mark.parametrize("dims", [{"B": 2, "T": 0}, {"B": 0, "T": 3}])
def test_an_attention_block_over_dims_fixed_at_0_gives_one_gradient_on_both_backends(dims):
    """onnxruntime's graph optimisations fold shapes with a fixed 0 wrongly: the backend turns
    them off for such a graph, which would otherwise fail to load."""
    model = chainrule.compile(ROOT / "examples" / "attention.nn", dims=dims)
    feeds = {"x": np.ones((dims["B"], dims["T"], 8), np.float32),
             "t": np.ones((dims["B"], 1), np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        numpy_grads = model.grad(**feeds)
        onnx_grads = model.grad(backend="onnxruntime", **feeds)
    for name, value in numpy_grads.items():
        np.testing.assert_array_equal(onnx_grads[name], value, err_msg=name)
    assert np.isnan(numpy_grads["J"])


def test_dim_0_on_the_command_line_runs_and_warns_of_the_nan_loss():
    result = chainrule_cli("run", ROOT / "examples" / "mlp.nn", "--random-inputs", "--dim", "B=0")
    assert result.returncode == 0, result.stderr
    assert "J  float32[] = nan" in result.stdout and "o  float32[0, 10]" in result.stdout
    assert "J holds NaN or Inf" in result.stderr



# ---- the ONNX importer ------------------------------------------------------------------------

def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def empty_slice(into: str) -> list:
    """`into` = x[:, 2:2]: an empty value computed in the model."""
    return [helper.make_node("Slice", ["x", "two", "two", "one"], [into])]


SLICE_BOUNDS = [ints("two", [2]), ints("one", [1])]

IMPORTED = {
    "Tile with a repeat of 0": ([helper.make_node("Tile", ["x", "repeats"], ["y"])],
                                [ints("repeats", [1, 0])]),
    "Compress that keeps nothing": (
        [helper.make_node("Compress", ["x", "keep"], ["y"], axis=1)],
        [numpy_helper.from_array(np.zeros(4, bool), "keep")]),
    "Reshape with allowzero to a 0": (
        empty_slice("e") + [helper.make_node("Reshape", ["e", "shape"], ["y"], allowzero=1)],
        SLICE_BOUNDS + [ints("shape", [0, 3, 5])]),
    "an empty initializer in a Concat": (
        [helper.make_node("Concat", ["x", "nothing"], ["y"], axis=1)],
        [numpy_helper.from_array(np.zeros((3, 0), np.float32), "nothing")]),
    "ReduceMax over nothing": (
        empty_slice("e") + [helper.make_node("ReduceMax", ["e", "one"], ["y"], keepdims=0)],
        SLICE_BOUNDS),
    "ReduceMean over nothing": (
        empty_slice("e") + [helper.make_node("ReduceMean", ["e", "one"], ["y"], keepdims=0)],
        SLICE_BOUNDS),
    "Resize to a size of 0": (
        [helper.make_node("Reshape", ["x", "image"], ["x4"]),
         helper.make_node("Resize", ["x4", "", "", "sizes"], ["y"], mode="nearest")],
        [ints("image", [1, 1, 3, 4]), ints("sizes", [1, 1, 0, 4])]),
}


def reference_outputs(case: str, proto) -> np.ndarray:
    """ONNX's reference evaluator's y. A Resize to a size of 0 fails in onnx 1.16's evaluator
    and in onnxruntime (a scale of 0), so its y is written out: the empty [1, 1, 0, 4]."""
    if case.startswith("Resize"):
        return np.zeros((1, 1, 0, 4), np.float32)
    return ReferenceEvaluator(proto).run(None, {"x": X})[0]


@pytest.mark.parametrize("case", IMPORTED)
def test_imported_empty_tensors_agree_with_onnx_on_both_backends(case):
    nodes, initializers = IMPORTED[case]
    proto = onnx_model_of(nodes, [("x", TensorProto.FLOAT, [3, 4])], [("y", TensorProto.FLOAT, None)],
                     initializers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of nothing
        expected = reference_outputs(case, proto)
        got = run_both(chainrule.import_onnx(proto), x=X)["y"]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_an_empty_onnx_input_imports_and_runs():
    proto = onnx_model_of([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
                     [("x", TensorProto.FLOAT, [0, 4])], [("y", TensorProto.FLOAT, None)])
    got = run_both(chainrule.import_onnx(proto), x=np.zeros((0, 4), np.float32))["y"]
    assert got == np.float32(0)


@pytest.mark.parametrize("op_type, expected", [("ReduceMax", False), ("ReduceMin", True)])
def test_any_and_all_of_nothing_import_as_false_and_true(op_type, expected):
    proto = onnx_model_of([helper.make_node(op_type, ["x"], ["y"], keepdims=0)],
                          [("x", TensorProto.BOOL, [0, 3])], [("y", TensorProto.BOOL, None)])
    got = run_both(chainrule.import_onnx(proto), x=np.zeros((0, 3), bool))["y"]
    np.testing.assert_array_equal(got, np.bool_(expected))


def test_an_imported_argmax_over_an_empty_axis_is_refused_naming_its_node():
    proto = onnx_model_of([helper.make_node("ArgMax", ["x"], ["y"], axis=0, name="pick")],
                     [("x", TensorProto.FLOAT, [0, 4])], [("y", TensorProto.INT64, None)])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    problem, = caught.value.problems
    assert problem.node == "pick"
    assert "argmax over an empty axis is undefined" in problem.reason


@pytest.mark.parametrize("command, what", [("train", "training data"), ("evaluate", "the data")])
def test_training_or_evaluating_on_0_rows_is_refused(tmp_path, command, what):
    """A model runs on 0 rows, but a step or an average over rows needs at least one."""
    data = tmp_path / "none.npz"
    np.savez(data, x=np.zeros((0, 64), np.float32), y=np.zeros(0, np.int64))
    out = tmp_path / "p.npz"
    result = fails(chainrule_cli(command, ROOT / "examples" / "digits_classifier.nn", "--data",
                                 data, *(["-o", out] if command == "train" else
                                         ["--initial-params"])))
    assert f"{what} has 0 rows" in result.stderr
    assert not out.exists()
