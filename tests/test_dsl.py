"""The model language: what lowers to what, and located errors for what does not."""
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.passes import autodiff_rules

MLP_LIKE = """
model m(x: f32[B, 4], y: i64[B]) {
    param W: f32[3, 4] = glorot()
    let k = 2
    z = x @ W.T
    L = cross_entropy(z, y) + k * mean(z ** 2)
    return L, z
}
"""


def error_of(source: str) -> ChainruleError:
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=source)
    return info.value


def test_constants_fold_and_adopt_the_tensor_dtype():
    model = chainrule.compile(source="model m(x: f64[3]) {\n  let a = 3\n  y = a / 2 * x\n"
                              "  return y\n}\n")
    (node,) = [n for n in model.graph.nodes if n.op == "constant"]
    assert node.attrs == {"value": 1.5, "dtype": "f64"}
    assert str(model.graph.outputs[0].type) == "f64[3]"


def test_symbolic_dims_flow_through():
    model = chainrule.compile(source=MLP_LIKE)
    assert str(model.graph.find("z").type) == "f32[B, 3]"


def test_keyword_arguments_and_tuples():
    model = chainrule.compile(source="model m(x: f32[2, 3, 4]) {\n"
                              "  s = sum(x, axis=(0, 2), keepdims=true)\n  return s\n}\n")
    assert str(model.graph.outputs[0].type) == "f32[1, 3, 1]"
    assert model.graph.nodes[-1].attrs == {"axes": (0, 2), "keepdims": True}


def test_multiline_calls_and_comments():
    model = chainrule.compile(source="model m(x: f32[2, 3]) {  # inputs\n"
                              "  s = sum(x,\n          axis=1)   # over rows\n  return s\n}")
    assert str(model.graph.outputs[0].type) == "f32[2]"


def test_params_initialise_reproducibly():
    a = chainrule.compile(source=MLP_LIKE, seed=5).params["W"]
    b = chainrule.compile(source=MLP_LIKE, seed=5).params["W"]
    c = chainrule.compile(source=MLP_LIKE, seed=6).params["W"]
    assert (a == b).all() and not (a == c).all()
    assert abs(a).max() <= (6 / 7) ** 0.5  # glorot's limit for fan_in 4 + fan_out 3


@pytest.mark.parametrize("source, line, col, message", [
    ("model m(x: f32[3]) {\n  y = x +\n  return y\n}\n", 2, 10, "unexpected end of line"),
    ("model m(x: f32[3]) {\n  y = relu(xx)\n  return y\n}\n", 2, 12, "unknown name 'xx'; did you mean 'x'?"),
    ("model m(x: f32[3]) {\n  let k = 1\n  let k = 2\n  return x\n}\n", 3, 7, "'k' is already defined (at line 2)"),
    ("model m(x: f32[3]) {\n  y = relu(x, x)\n  return y\n}\n", 2, 15, "relu() takes at most 1 argument"),
    ("model m(x: f32[3]) {\n  y = sum(x, axes=0)\n  return y\n}\n", 2, 14, "sum() has no argument 'axes'; did you mean 'axis'?"),
    ("model m(x: f32[3]) {\n  y = rleu(x)\n  return y\n}\n", 2, 7, "unknown function 'rleu'; did you mean 'relu'?"),
    ("model m(x: f32[B, 3], w: f32[4]) {\n  y = x * w\n  return y\n}\n", 2, 7, "shapes [B, 3] and [4] do not broadcast"),
    ("model m(x: f32[3]) {\n  param W: f32[3] = normal(1.0)\n  return x\n}\n", 2, 21, "normal(mean, std) takes 2 arguments, got 1"),
    ("model m(x: f32[3]) {\n  param W: f32[3] = xavier()\n  return x\n}\n", 2, 21, "unknown initialiser 'xavier'"),
    ("model m(x: f32[3]) {\n  y = x.X\n  return y\n}\n", 2, 9, "unknown attribute '.X'"),
    ("model m(x: f32[3]) {\n  y = x\n}\n", 1, 7, "has no return statement"),
])
def test_errors_point_at_the_mistake(source, line, col, message):
    error = error_of(source)
    assert (error.file, error.line, error.col) == ("<string>", line, col), error.render()
    assert message in error.message


def test_rendered_error_shows_line_and_caret():
    model_source = "model m(x: f32[3]) {\n  y = relu(xx)\n  return y\n}\n"
    error = error_of(model_source)
    rendered = error.render(lambda file: model_source.splitlines())
    assert rendered.splitlines() == ["<string>:2:12: error: unknown name 'xx'; did you mean 'x'?",
                                     "      y = relu(xx)", "               ^"]


def test_gradient_with_respect_to_an_integer_input_is_an_error():
    model = chainrule.compile(source=MLP_LIKE)
    with pytest.raises(ChainruleError, match="cannot differentiate with respect to 'y'"):
        model.grad_graph(wrt=["y"])


def test_objective_must_be_a_scalar():
    model = chainrule.compile(source="model m(x: f32[3]) {\n  param W: f32[3] = ones()\n"
                              "  y = x * W\n  return y\n}\n")
    with pytest.raises(ChainruleError, match="must be a float scalar") as info:
        model.grad_graph()
    assert info.value.line == 3


def test_missing_derivative_rules_are_listed_together(monkeypatch):
    monkeypatch.delitem(autodiff_rules.VJP_RULES, "relu")
    monkeypatch.delitem(autodiff_rules.VJP_RULES, "tanh")
    model = chainrule.compile(source="model m(x: f32[3]) {\n  param W: f32[3] = ones()\n"
                              "  a = relu(x * W)\n  b = tanh(a)\n  c = relu(b)\n"
                              "  J = sum(c)\n  return J\n}\n")
    with pytest.raises(ChainruleError) as info:
        model.grad_graph()
    message = info.value.message
    assert message.count("'relu'") == 2 and message.count("'tanh'") == 1
    assert "<string>:3:7" in message and "<string>:4:7" in message and "<string>:5:7" in message


@pytest.mark.parametrize("source, message", [
    ("model m(x: f32[3]) {\n  param W: f32[100000, 100000] = zeros()\n  return x\n}\n",
     "a param of 10,000,000,000 values is more than chainrule holds"),
    ("model m(y: i64[3]) {\n  z = one_hot(y, n=-3)\n  return z\n}\n",
     "one_hot needs a positive number of classes, got -3"),
])
def test_impossible_sizes_are_located_errors(source, message):
    error = error_of(source)
    assert message in error.message and error.line == 2


def test_a_long_one_line_source_is_source_not_a_path():
    source = "model m(x: f32[3]) { return x }" + " " * 5000
    assert chainrule.compile(source=source).graph.outputs[0].name == "x"


def test_an_integer_constant_must_be_an_integer():
    ir_text = ("graph g(%x: i64[3]) {\n  %c = constant() {value=nan, dtype=i64} : i64[]\n"
               "  return %c\n}\n")
    with pytest.raises(ChainruleError, match="i64 constant cannot be nan"):
        chainrule.compile(source=ir_text)


def test_integer_division_is_refused():
    error = error_of("model m(x: i64[3], y: i64[3]) {\n  b = x / y\n  return b\n}\n")
    assert "div needs a float operand, got i64[3]" in error.message and error.line == 2


@pytest.mark.parametrize("returned", ["g, h", "h, g", "h, h"])
def test_a_value_returned_twice_is_an_error_even_under_two_names(returned):
    source = f"model m(x: f32[3]) {{\n    h = relu(x)\n    g = h\n    return {returned}\n}}\n"
    with pytest.raises(chainrule.ChainruleError, match="is returned twice") as raised:
        chainrule.compile(source=source)
    assert raised.value.line == 4
