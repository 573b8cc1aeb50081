"""Weakly typed literals: a built-in call or arithmetic on literals alone (`sqrt(2.0)`) takes the
dtype of the typed value it meets, as a number does; a float literal meeting an i64 tensor in an
elementwise op promotes it to f64, as numpy 2 does with Python scalars (NEP 50)."""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from support.numeric import assert_close, central_difference

FUNCTIONS = """
def scale(a, s=sqrt(2.0)) {
    return a * s
}
"""

# Lines computing y from x: [2, 3] and v: [3] of one float dtype; the numpy value of y.
FLOAT_CASES = [
    (["y = x / sqrt(4.0)"], lambda x, v: x / np.sqrt(4.0)),
    (["y = x * exp(-1.0) + tanh(0.5)"], lambda x, v: x * np.exp(-1.0) + np.tanh(0.5)),
    (["let c = sqrt(2.0)", "y = c * x"], lambda x, v: np.sqrt(2.0) * x),
    (["y = sqrt(2.0) * sqrt(3.0) * x"], lambda x, v: np.sqrt(2.0) * np.sqrt(3.0) * x),
    (["y = -sqrt(2.0) * x"], lambda x, v: -np.sqrt(2.0) * x),
    (["y = maximum(1.0, 2.0) * x"], lambda x, v: 2.0 * x),
    (["y = broadcast_to(1.0, (3,)) + v"], lambda x, v: 1.0 + v),
    (["y = (sqrt(2.0) + 1) ** 2 / 4 - x"], lambda x, v: (np.sqrt(2.0) + 1) ** 2 / 4 - x),
    (["g = exp(-0.5)", "y = x * g + g"], lambda x, v: x * np.exp(-0.5) + np.exp(-0.5)),
    (["y = scale(x)"], lambda x, v: x * np.sqrt(2.0)),
    (["y = scale(x, s=tanh(0.3))"], lambda x, v: x * np.tanh(0.3)),
    (["y = scale(sqrt(3.0), exp(1.0)) * x"], lambda x, v: np.sqrt(3.0) * np.exp(1.0) * x),
    (["y = maximum(b=exp(-1.0), a=x)"], lambda x, v: np.maximum(x, np.exp(-1.0))),
    (["y = where(x > 0, sqrt(2.0), x)"], lambda x, v: np.where(x > 0, np.sqrt(2.0), x)),
    (["y = concat(v, broadcast_to(sqrt(2.0), (2,)))"],
     lambda x, v: np.concatenate([v, np.full(2, np.sqrt(2.0))])),
    (["y = sum(broadcast_to(0.5, (2, 3)), axis=0) * v"], lambda x, v: np.full(3, 1.0) * v),
]


def compile_model(lines, signature, functions=FUNCTIONS, outputs="y"):
    body = "".join(f"    {line}\n" for line in lines + [f"return {outputs}"])
    return chainrule.compile(source=f"{functions}model m({signature}) {{\n{body}}}\n")


def run_both(model, **inputs) -> dict:
    """The outputs from numpy, after checking onnxruntime gives the same in the same dtypes."""
    expected = model.run(**inputs)
    actual = model.run(backend="onnxruntime", **inputs)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert_close(actual[name], value, 1e-6 if value.dtype == np.float32 else 1e-12,
                     what=name)
    return expected


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("lines, reference", FLOAT_CASES,
                         ids=["; ".join(lines) for lines, _ in FLOAT_CASES])
def test_a_literal_only_expression_takes_the_dtype_it_meets(lines, reference, dtype):
    numpy_dtype = {"f32": np.float32, "f64": np.float64}[dtype]
    rng = np.random.default_rng(3)
    x, v = rng.normal(size=(2, 3)).astype(numpy_dtype), rng.normal(size=3).astype(numpy_dtype)
    model = compile_model(lines, f"x: {dtype}[2, 3], v: {dtype}[3]")
    graph, _ = model.compile_graph(passes="dce")  # an unused default argument is dead code
    assert {node.outputs[0].type.dtype for node in graph.nodes} <= {dtype, "bool"}
    y = run_both(model, x=x, v=v)["y"]
    assert y.dtype == numpy_dtype
    expected = reference(x.astype(np.float64), v.astype(np.float64))
    assert_close(y, expected, 1e-6 if dtype == "f32" else 1e-14, what="y")


def test_a_literal_only_value_in_float64_is_computed_in_float64():
    model = compile_model(["y = f64(sqrt(2.0)) + x * 0"], "x: f64[]")
    assert model.run(x=np.float64(1.0))["y"] == np.sqrt(2.0)  # not sqrt(2) rounded to f32


@pytest.mark.parametrize("lines, outputs, dtypes", [
    (["g = sqrt(2.0)"], "g", ["f32"]),
    (["h = broadcast_to(sqrt(2.0), (2, 3)).T"], "h", ["f32"]),
    (["h = broadcast_to(exp(1.0), (2, 3))[1]"], "h", ["f32"]),
    (["a = f64(sqrt(2.0))", "b = f32(sqrt(2.0))", "c = i64(sqrt(4.0))", "d = sqrt(2.0) > 1"],
     "a, b, c, d", ["f64", "f32", "i64", "bool"]),
])
def test_what_meets_no_typed_value_is_f32_and_casts_give_a_dtype(lines, outputs, dtypes):
    model = compile_model(lines, "x: f64[3]", outputs=outputs)
    assert [value.type.dtype for value in model.graph.outputs] == dtypes
    assert [value.name for value in model.graph.outputs] == outputs.split(", ")


def test_a_named_weak_value_names_its_lowered_node():
    model = compile_model(["let c = sqrt(2.0)", "y = c * x"], "x: f64[3]")
    node = model.graph.producers()[model.graph.find("c")]
    assert (node.op, str(node.outputs[0].type)) == ("sqrt", "f64[]")


def test_lowered_nodes_carry_the_location_of_the_call():
    model = compile_model(["let c = exp(-1.0)", "y = x / sqrt(4.0) + c * x"], "x: f64[3]",
                          functions="")
    locations = {(node.op, node.attrs.get("value")): (node.loc.line, node.loc.col)
                 for node in model.graph.nodes}
    assert locations[("constant", 4.0)] == locations[("sqrt", None)] == (3, 13)
    assert locations[("constant", -1.0)] == locations[("exp", None)] == (2, 13)
    assert locations[("div", None)] == (3, 9)


def test_number_folding_is_unchanged():
    model = compile_model(["let lam = 0.0001", "y = 2 * 3 * x + lam"], "x: f64[3]")
    constants = [n.attrs["value"] for n in model.graph.nodes if n.op == "constant"]
    assert constants == [6.0, 0.0001]


@pytest.mark.parametrize("call", ["dropout(1.0, 0.0)", "grad(1.0, 2.0)", "jvp(1.0, 2.0, 3.0)"])
def test_grad_jvp_and_dropout_are_lowered_at_the_call(call):
    # Lowered at the call they are f32 values, which the f64 tensor then promotes; a weak
    # value would have been lowered as f64 itself, with nothing to cast.
    model = compile_model([f"y = x * {call}"], "x: f64[3]")
    casts = [node for node in model.graph.nodes if node.op == "cast"]
    assert [(str(n.inputs[0].type), n.attrs["dtype"]) for n in casts] == [("f32[]", "f64")]


# ---- integer tensors meeting literals: numpy 2's rules ------------------------------------

INTEGER_CASES = ["y * 0.5", "y + sqrt(2.0)", "y + 1", "2.5 - y", "y ** 0.5", "y * -exp(-1.0)",
                 "maximum(y, 0.5)", "minimum(y, 1)", "where(y > 1, y, 0.5)", "y > 0.5",
                 "y == 1.0", "y + maximum(1, 2)"]


@pytest.mark.parametrize("expression", INTEGER_CASES)
def test_a_literal_meeting_an_i64_tensor_promotes_as_numpy_does(expression):
    y = np.arange(4)
    model = compile_model([f"r = {expression}"], "y: i64[4]", functions="", outputs="r")
    result = run_both(model, y=y)["r"]
    expected = eval(expression, {"y": y, **{f: getattr(np, f) for f in
                                            ("sqrt", "exp", "maximum", "minimum", "where")}})
    assert result.dtype == expected.dtype
    assert_close(result, expected, 1e-14, what=expression)


def test_index_inputs_are_not_promoted():
    model = compile_model(["r = take(v, y + 1)"], "v: f64[5], y: i64[4]", outputs="r")
    assert str(model.graph.outputs[0].type) == "f64[4]"
    assert "take needs i64 indices, got f64[4]" in error_of(["r = take(v, y * 0.5)"],
                                                            "v: f64[5], y: i64[4]").message


def test_a_bool_tensor_still_refuses_numbers():
    assert error_of(["r = b + 1"], "b: bool[3]").message == "the constant 1 meets a bool tensor"


# ---- errors -------------------------------------------------------------------------------

def error_of(lines, signature) -> ChainruleError:
    with pytest.raises(ChainruleError) as info:
        compile_model(lines, signature, functions="", outputs=lines[-1].split(" =")[0])
    return info.value


@pytest.mark.parametrize("lines, line, col, message", [
    (["r = x[sqrt(4.0)]"], 2, 11, "an index must be an integer, not sqrt(4.0)"),
    (["let c = -sqrt(2.0) * 2", "r = x[c]"], 3, 11,
     "an index must be an integer, not (-sqrt(2.0)) * 2"),
    (["r = leaky_relu(x, alpha=sqrt(2.0))"], 2, 9,
     "leaky_relu(): 'alpha' must be a number, not sqrt(2.0) (a built-in's value is a tensor)"),
    (["r = broadcast_to(1.0, shape=(true, false))"], 2, 9,
     "broadcast_to(): shape must be an integer, a dim or a tuple of them"),
    (["let c = reshape(1.0, (4,))", "r = x"], 2, 13, "reshape of [] to [4]: 1 elements cannot "
                                                     "become 4"),
    (["r = broadcast_to(1.0, (2,)) + x"], 2, 9,
     "shapes [2] and [3] do not broadcast (axis -1: 2 vs 3)"),
])
def test_errors_name_weak_values_readably(lines, line, col, message):
    error = error_of(lines, "x: f64[3]")
    assert (error.line, error.col, error.message) == (line, col, message)


def test_an_initialiser_argument_is_a_number():
    error = error_of(["param W: f64[3] = normal(sqrt(4.0), 1.0)", "r = x"], "x: f64[3]")
    assert error.message == "initialiser arguments are finite numbers, not sqrt(4.0)"


@pytest.mark.parametrize("expression, nodes", [
    ("relu(" * 5000 + "1.0" + ")" * 5000, 5001),
    ("-(" * 5000 + "sqrt(2.0)" + ")" * 5000 + " * x", 5003),
    (" + ".join(["sqrt(2.0)"] * 5000) + " + x", 15000),
], ids=["calls", "minus signs", "sum"])
def test_deep_literal_expressions_compile(expression, nodes):
    model = compile_model([f"r = {expression}"], "x: f64[3]", functions="", outputs="r")
    assert len(model.graph.nodes) == nodes


# ---- gradients ----------------------------------------------------------------------------

def test_gradients_through_weak_literals_match_finite_differences():
    model = chainrule.compile(source=FUNCTIONS + """
    model m(x: f64[4, 3]) {
        param W: f64[2, 3] = normal(0.0, 1.0)
        let c = exp(-0.5)
        h = tanh(x @ W.T / sqrt(3.0) + tanh(0.3))
        penalty = maximum(0.1, 0.2) * sum(W * W)
        J = mean(scale(h) ** 2) * c + penalty - sqrt(2.0) * mean(h * x[:, :2])
        return J
    }
    """)
    x = np.random.default_rng(5).normal(size=(4, 3))
    numeric = {name: central_difference(lambda: float(model.run(x=x)["J"]), array)
               for name, array in {**model.params, "x": x}.items()}
    for backend in ("numpy", "onnxruntime"):
        grads = model.grad(wrt=["W", "x"], backend=backend, x=x)
        assert grads["J"].dtype == np.float64
        for name, expected in numeric.items():
            assert_close(grads[name], expected, 1e-6, atol=1e-9, what=f"{backend} d/d{name}")
