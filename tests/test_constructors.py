"""Tensor constructors: zeros, ones, full, eye, arange, zeros_like and ones_like.

Their values and dtypes against numpy on both backends, with symbolic dims read when the model
runs (two batch sizes, one compiled graph); the ONNX export under the full checker; gradients
through them against finite differences in float64; located errors; the IR text round trip.
"""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends import get_backend
from chainrule.gradcheck import gradcheck
from chainrule.ir import parse_graph, print_graph
from chainrule.ir.text import graph_differences
from chainrule.passes.optimizers import OptimizerSpec
from support.backend_checks import check_standard
from support.numeric import assert_close, central_difference

BACKENDS = ("numpy", "onnxruntime")
# (B, N): the sizes of the symbolic dims, two sets per model
SIZES = [(2, 3), (5, 1)]
SIGNATURE = "x: f32[B, 3], xd: f64[B, 3], y: i64[N]"


def constructor_model(expression: str) -> chainrule.Model:
    return chainrule.compile(source=f"model m({SIGNATURE}) {{\n    c = {expression}\n    return c\n}}\n")


def feeds(batch: int, count: int) -> dict:
    rng = np.random.default_rng(batch)
    return {"x": rng.normal(size=(batch, 3)).astype(np.float32),
            "xd": rng.normal(size=(batch, 3)), "y": rng.integers(0, 5, count)}


# DSL expression -> numpy's array from the inputs and the sizes (B, N)
CONSTRUCTORS = {
    "zeros((B, 4))": lambda d, b, n: np.zeros((b, 4), np.float32),
    "f64(zeros((2, B)))": lambda d, b, n: np.zeros((2, b)),
    "i64(zeros(B))": lambda d, b, n: np.zeros(b, np.int64),
    "ones((B, N))": lambda d, b, n: np.ones((b, n), np.float32),
    "f64(ones((N, 2, B)))": lambda d, b, n: np.ones((n, 2, b)),
    "i64(ones((3,)))": lambda d, b, n: np.ones(3, np.int64),
    "full((B, 2), 2.5)": lambda d, b, n: np.full((b, 2), 2.5, np.float32),
    "full((B, 2), f64(0.1))": lambda d, b, n: np.full((b, 2), 0.1),
    "full((N, B), i64(-7))": lambda d, b, n: np.full((n, b), -7),
    "full(4, true)": lambda d, b, n: np.full(4, True),
    "full((B, 3), xd[1, 2])": lambda d, b, n: np.full((b, 3), d["xd"][1, 2]),
    "eye(3)": lambda d, b, n: np.eye(3, dtype=np.float32),
    "f64(eye(4))": lambda d, b, n: np.eye(4),
    "i64(eye(2))": lambda d, b, n: np.eye(2, dtype=np.int64),
    "arange(5)": lambda d, b, n: np.arange(5),
    "f32(arange(3))": lambda d, b, n: np.arange(3, dtype=np.float32),
    "f64(arange(4)) * 0.5": lambda d, b, n: np.arange(4) * 0.5,
    "zeros((B, N), dtype=f64)": lambda d, b, n: np.zeros((b, n)),
    "ones(3, dtype=i64)": lambda d, b, n: np.ones(3, np.int64),
    "ones((2, B), dtype=bool)": lambda d, b, n: np.ones((2, b), bool),
    "full((B, 2), 0.1, dtype=f64)": lambda d, b, n: np.full((b, 2), 0.1),
    "full(2, 3, dtype=i64)": lambda d, b, n: np.full(2, 3),
    "eye(3, dtype=f64)": lambda d, b, n: np.eye(3),
    "arange(4, dtype=f32)": lambda d, b, n: np.arange(4, dtype=np.float32),
    "zeros_like(x)": lambda d, b, n: np.zeros_like(d["x"]),
    "ones_like(xd)": lambda d, b, n: np.ones_like(d["xd"]),
    # zeros are f32 whatever they meet; with an f64 tensor the two promote to f64.
    "zeros((B, 3)) + xd": lambda d, b, n: d["xd"],
    "zeros_like(y)": lambda d, b, n: np.zeros_like(d["y"]),
    "ones_like(y)": lambda d, b, n: np.ones_like(d["y"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("expression", CONSTRUCTORS)
def test_values_and_dtypes_match_numpy_at_two_sizes(expression, backend):
    model = constructor_model(expression)
    for batch, count in SIZES:  # one compiled graph (one onnxruntime session) for both
        data = feeds(batch, count)
        expected = CONSTRUCTORS[expression](data, batch, count)
        actual = model.run(backend=backend, **data)["c"]
        assert actual.dtype == expected.dtype, (expression, batch)
        assert actual.shape == expected.shape, (expression, batch)
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("expression", CONSTRUCTORS)
def test_the_export_passes_the_full_onnx_checker(expression):
    model = constructor_model(expression)
    proto = model.to_onnx()
    check_standard(proto)
    (output,) = proto.graph.output
    declared = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert declared == list(model.graph.outputs[0].type.shape)


def test_symbolic_dims_are_read_when_the_model_runs():
    model = constructor_model("zeros((B, N, 2))")
    (fill,) = [n for n in model.graph.nodes if n.op == "fill"]
    assert fill.attrs == {"shape": ("B", "N", 2)} and len(fill.inputs) == 1
    assert model.graph.outputs[0].type.shape == ("B", "N", 2)
    onnx_ops = {node.op_type for node in model.to_onnx().graph.node}
    assert {"Shape", "Gather", "Concat", "Expand"} <= onnx_ops
    for backend in BACKENDS:
        assert model.run(backend=backend, **feeds(3, 5))["c"].shape == (3, 5, 2)


@pytest.mark.parametrize("expression, shape, expected", [
    ("zeros((B*N, N-1))", "f32[B*N, N-1]", lambda b, n: np.zeros((b * n, n - 1), np.float32)),
    ("f32(arange(N+B))", "f32[B+N]", lambda b, n: np.arange(n + b, dtype=np.float32)),
    ("ones(((B+1)//2, N % 3 + 1))", "f32[(B+1)//2, N%3+1]",
     lambda b, n: np.ones(((b + 1) // 2, n % 3 + 1), np.float32)),
])
def test_constructors_take_dim_expressions(expression, shape, expected):
    model = constructor_model(expression)
    assert str(model.graph.outputs[0].type) == shape
    for batch, count in [(3, 5), (4, 2)]:
        for backend in ("numpy", "numpy-check", "onnxruntime"):
            result = model.run(backend=backend, **feeds(batch, count))["c"]
            np.testing.assert_array_equal(result, expected(batch, count))


def test_dims_bound_at_compile_time_give_a_fixed_shape():
    model = chainrule.compile(source=f"model m({SIGNATURE}) {{\n    c = ones((B, 2))\n    return c\n}}\n",
                              dims={"B": 4})
    (fill,) = [n for n in model.graph.nodes if n.op == "fill"]
    assert fill.attrs["shape"] == (4, 2) and len(fill.inputs) == 1  # the value alone
    for backend in BACKENDS:
        np.testing.assert_array_equal(model.run(backend=backend, **feeds(4, 2))["c"],
                                      np.ones((4, 2), np.float32))
    sized = chainrule.compile(source=f"model m({SIGNATURE}) {{\n    c = eye(B) + f32(arange(B))\n"
                              f"    return c\n}}\n", dims={"B": 3})
    np.testing.assert_array_equal(sized.run(**feeds(3, 2))["c"],
                                  np.eye(3, dtype=np.float32) + np.arange(3))


def test_predict_reads_the_batch_size_of_each_batch():
    # 7 rows in batches of 3: the last batch has one row, and the constructor follows it.
    model = chainrule.compile(source="model m(x: f32[B, 3]) {\n    o = ones((B, 2)) * sum(x)\n"
                              "    return o\n}\n")
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    for backend in BACKENDS:
        predicted = model.predict({"x": x}, batch_size=3, backend=backend)["o"]
        batch_sums = np.repeat([x[:3].sum(), x[3:6].sum(), x[6:].sum()], [3, 3, 1])
        np.testing.assert_array_equal(predicted, np.repeat(batch_sums[:, None], 2, axis=1))


# ---- gradients --------------------------------------------------------------------------------

GRADIENT_MODEL = """model m(x: f64[B, 3], y: f64[B, 4]) {
    param W: f64[4, 3] = glorot()
    param s: f64[] = normal(0.5, 0.1)
    h = f64(zeros((B, 4))) + x @ W.T
    g = tanh(h + full((B, 4), s) * ones_like(y)) + f64(eye(4))[0] + zeros_like(x)[:, 0:1]
    J = sum(g * y) + sum(f64(arange(3)) * s)
    return J
}
"""


@pytest.mark.parametrize("opt_level", ["O0", "O2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_constructors_match_finite_differences(backend, opt_level):
    model = chainrule.compile(source=GRADIENT_MODEL)
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(5, 3)), "y": rng.normal(size=(5, 4))}
    grads = model.grad(backend=backend, opt_level=opt_level, **data)

    def objective():
        return float(model.run(**data)["J"])
    for name in ("W", "s"):
        numeric = central_difference(objective, model.params[name])
        assert_close(grads[name], numeric, 1e-6, atol=1e-9, what=f"d/d{name}")


def test_gradient_and_training_step_exports_pass_the_full_onnx_checker():
    model = chainrule.compile(source=GRADIENT_MODEL)
    check_standard(model.to_onnx(grad=True))
    check_standard(model.to_onnx(train_step=OptimizerSpec("adam")))


def test_no_gradient_flows_into_the_inputs_a_constructor_reads_dims_from():
    model = chainrule.compile(source="model m(x: f64[B, 3]) {\n"
                              "    c = f64(zeros((B, 3))) + ones_like(x) + full((B, 1), f64(2.0))\n"
                              "    J = sum(c)\n    return J\n}\n")
    x = np.random.default_rng(1).normal(size=(4, 3))
    for backend in BACKENDS:
        grads = model.grad(wrt=["x"], backend=backend, x=x)
        np.testing.assert_array_equal(grads["x"], np.zeros_like(x))


def test_an_f32_constructor_model_gradchecks_in_float64():
    model = chainrule.compile(source="model m(x: f32[B, 3]) {\n    param W: f32[4, 3] = glorot()\n"
                              "    h = zeros((B, 4)) + x @ W.T\n    J = sum(tanh(h) * eye(4)[1])\n"
                              "    return J\n}\n")
    x = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    rows = gradcheck(model, {"x": x}, backends=BACKENDS)
    assert rows and all(row.passed for row in rows), rows


def test_a_zero_state_carried_through_a_loop():
    model = chainrule.compile(source="""model rnn(x: f64[B, T, 3]) {
    param W: f64[4, 4] = glorot()
    param U: f64[4, 3] = glorot()
    h = f64(zeros((B, 4)))
    for t in range(T) {
        h = tanh(h @ W.T + x[:, t] @ U.T)
    }
    J = sum(h * h)
    return J, h
}
""", dims={"T": 3})
    x = np.random.default_rng(3).normal(size=(2, 3, 3))
    W, U = model.params["W"], model.params["U"]
    h = np.zeros((2, 4))
    for t in range(3):
        h = np.tanh(h @ W.T + x[:, t] @ U.T)
    for backend in BACKENDS:
        assert_close(model.run(backend=backend, x=x)["h"], h, 1e-12, what=backend)


# ---- errors -----------------------------------------------------------------------------------

def model_with(line: str) -> str:
    return f"model m({SIGNATURE}) {{\n    c = {line}\n    return c\n}}\n"


ERRORS = [
    ("zeros((C, 4))", 16, "unknown name 'C'"),
    ("ones((-1, B))", 9, "ones(): shape (-1, B) has a size of -1; sizes are 0 or more"),
    ("full((B, 2.5), 1.0)", 9, "full(): a shape holds sizes and dim names, not 2.5 as in "
                               "(B, 2.5)"),
    ("zeros(x)", 9, "zeros(): 'shape' must be a constant"),
    ("full((B, 3), x)", 9, "full(): the value must be a scalar, not f32[B, 3]"),
    ("zeros((B, 4), dtype=3)", 9, "zeros(): dtype must be one of f16, bf16, f32, f64, "
     "i8, i16, i32, i64, u8, u16, u32, u64, bool, f8e4m3fn, f8e4m3fnuz, f8e5m2, f8e5m2fnuz, "
     "f8e8m0, f4e2m1, i4, u4, i2, u2, not 3"),
    ("zeros((B, 3), dtype=f8e5m2) + x", 9, "add needs operands of one dtype, got "
     "f8e5m2[B, 3] and f32[B, 3]"),
    ("eye(0)", 9, "eye(): n must be a positive integer, not 0"),
    ("eye(2.0)", 9, "eye(): n must be a positive integer, not 2.0"),
    ("arange(-3)", 9, "arange(): n must be an integer of 0 or more or a dim, not -3"),
    ("eye(B)", 9, "eye(): B is a symbolic dim, known only when the model runs, but n "
                  "must be known when it compiles; bind it (--dim B=N) or give a number"),
    ("zeros((B / 2, 3))", 16, "B is a symbolic dim, known only when the model runs, but a dim "
                             "computed with '/' (dims divide with '//')"),
    ("zeros((B // 0, 3))", 16, "the dim B // 0 divides by zero"),
    ("zeros((60000, 60000))", 9, "zeros(): fill gives f32[60000, 60000], which holds "
                                 "3,600,000,000 values"),
    ("zeros_like((1, 2))", 9, "a tuple cannot be used as a tensor"),
]


@pytest.mark.parametrize("line, col, message", ERRORS, ids=[line for line, _, _ in ERRORS])
def test_errors_are_located(line, col, message, tmp_path):
    path = tmp_path / "m.nn"
    path.write_text(model_with(line))
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(str(path))
    error = info.value
    assert (error.file, error.line, error.col) == (str(path), 2, col)
    assert error.message.startswith(message), error.message


# ---- IR text and passes -----------------------------------------------------------------------

@pytest.mark.parametrize("opt_level", ["O0", "O2"])
def test_constructor_graphs_round_trip_through_the_ir_text(opt_level):
    model = chainrule.compile(source=GRADIENT_MODEL)
    for graph in (model.graph, model.compile_graph(grad=True, opt_level=opt_level)[0],
                  constructor_model("ones((N, B, 2))").graph):
        text = print_graph(graph)
        parsed = parse_graph(text)
        assert print_graph(parsed) == text
        assert graph_differences(graph, parsed) == []


def test_fill_and_arange_in_ir_text():
    graph = parse_graph("""graph g(%x: f32[B, 3]) {
  %v = constant() {value=2.0, dtype=f32} : f32[]
  %f = fill(%v) {shape=[2, B]} : f32[2, B]
  %r = arange() {n=3} : i64[3]
  return %f, %r
}
""")
    x = np.zeros((4, 3), np.float32)
    for backend in BACKENDS:
        results = get_backend(backend).run(graph, {"x": x}, {})
        np.testing.assert_array_equal(results["f"], np.full((2, 4), 2.0, np.float32))
        np.testing.assert_array_equal(results["r"], np.arange(3))
    with pytest.raises(ChainruleError, match=r"fill's shape \[2, -1\] needs sizes of 0 or more"):
        parse_graph("graph g(%x: f32[B, 3]) {\n  %v = constant() {value=2.0, dtype=f32} : f32[]\n"
                    "  %f = fill(%v) {shape=[2, -1]} : f32[2, B]\n  return %f\n}\n")


def test_passes_keep_constructor_values():
    model = chainrule.compile(source=GRADIENT_MODEL)
    rng = np.random.default_rng(4)
    data = {"x": rng.normal(size=(3, 3)), "y": rng.normal(size=(3, 4))}
    expected = model.grad(opt_level="O0", **data)
    for opt_level in ("O1", "O2"):
        for name, value in model.grad(opt_level=opt_level, **data).items():
            assert_close(value, expected[name], 1e-12, what=f"{opt_level} {name}")
