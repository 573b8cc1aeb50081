"""Names in the language: functions that return several values, `a, b = f(...)` that unpacks
them (in a model, an unrolled loop and a scan's body), names assigned again, and `if`."""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from support.numeric import assert_close

LSTM_CELL = """def lstm_cell(x, h, c, W, U, b) {
    gates = x @ W.T + h @ U.T + b
    i = sigmoid(gates[:, 0:4])
    f = sigmoid(gates[:, 4:8])
    g = tanh(gates[:, 8:12])
    o = sigmoid(gates[:, 12:16])
    c_next = f * c + i * g
    return o * tanh(c_next), c_next
}
"""
MODEL = """model lstm(x: f64[B, T, 3]) {
    param W: f64[16, 3] = glorot()
    param U: f64[16, 4] = glorot()
    param b: f64[16] = normal(0.0, 0.1)
    h = zeros((B, 4), dtype=f64)
    c = zeros((B, 4), dtype=f64)
    for t in range(T) {
        STEP
    }
    J = sum(h * h) + sum(c)
    return J
}
"""
UNPACKED = "h, c = lstm_cell(x[:, t], h, c, W, U, b)"
INLINE = """gates = x[:, t] @ W.T + h @ U.T + b
        c = sigmoid(gates[:, 4:8]) * c + sigmoid(gates[:, 0:4]) * tanh(gates[:, 8:12])
        h = sigmoid(gates[:, 12:16]) * tanh(c)"""


@pytest.mark.parametrize("loops", ["scan", "unroll"])
def test_a_cell_returning_h_and_c_computes_the_loop_written_inline(loops):
    dims = {"T": 5} if loops == "unroll" else None
    unpacked = chainrule.compile(source=LSTM_CELL + MODEL.replace("STEP", UNPACKED),
                                 loops=loops, dims=dims)
    inline = chainrule.compile(source=MODEL.replace("STEP", INLINE), loops=loops, dims=dims)
    inline.set_params(unpacked.params)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    assert_close(unpacked.run(x=x)["J"], inline.run(x=x)["J"], rtol=1e-15)
    ours, theirs = unpacked.grad(x=x), inline.grad(x=x)
    for name in ("W", "U", "b"):
        assert_close(ours[name], theirs[name], rtol=1e-12)


def test_unpacking_at_the_top_level_names_each_value():
    model = chainrule.compile(source="def split(x) {\n    return x * 2.0, x + 1.0\n}\n"
                              "model m(x: f64[3]) {\n    a, b = split(x)\n"
                              "    return a, b\n}\n")
    results = model.run(x=np.arange(3.0))
    assert set(results) == {"a", "b"}
    np.testing.assert_array_equal(results["b"], np.arange(3.0) + 1)


@pytest.mark.parametrize("body, line, message", [
    ("    y = split(x)\n    return y", 5, "this call returns 2 values; unpack them, one name "
                                           "each: a, b = ..."),
    ("    a, b, c = split(x)\n    return a", 5, "3 names for 2 values"),
    ("    a, b = x * 2.0\n    return a", 5, "2 names take the values of a function that "
                                           "returns as many (return a, b), not one value"),
    ("    a, a = split(x)\n    return a", 5, "'a' is named twice"),
    ("    for t in range(2) {\n        b, b2 = split(x)\n        b = x\n    }\n    return x",
     7, "'b' is already defined (at line 6); a name is assigned once per iteration"),
    ("    return split(x)", 5, "a call that returns several values is unpacked first"),
    ("    y = split(x) + 1.0\n    return y", 5, "not tuples"),
])
def test_unpacking_mistakes_are_located_errors(body, line, message):
    source = ("def split(x) {\n    return x * 2.0, x + 1.0\n}\nmodel m(x: f64[3]) {\n"
              + body + "\n}\n")
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source)
    assert caught.value.line == line
    assert message in caught.value.message


# ---- names assigned again, and compile-time if --------------------------------------------------

def test_a_name_assigned_again_is_a_new_value_the_lines_after_read():
    model = chainrule.compile(source="model m(x: f64[3]) {\n    y = x * 2.0\n"
                              "    y = relu(y) + 1.0\n    x = x - 1.0\n    return y, x\n}\n")
    results = model.run(x=np.array([-1.0, 0.5, 2.0]))
    np.testing.assert_array_equal(results["y"], [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(list(results.values())[1], [-2.0, -0.5, 1.0])


IF_MODEL = """def dense(x, W, b, use_bias=true) {
    y = x @ W.T
    if use_bias {
        y = y + b
    }
    return y
}

model m(x: f64[B, 4]) {
    param W: f64[3, 4] = glorot()
    param b: f64[3] = normal(0.0, 1.0)
    let deep = DEEP
    y = dense(x, W, b, use_bias=BIAS)
    if deep {
        y = relu(y)
    } else if 2 > 1 {
        y = tanh(y)
    }
    for t in range(3) {
        if t == 0 {
            y = y * 2.0
        } else {
            y = y + 1.0
        }
    }
    return sum(y)
}
"""


@pytest.mark.parametrize("deep, bias", [("true", "true"), ("false", "false")])
def test_if_lowers_the_branch_its_condition_picks(deep, bias):
    source = IF_MODEL.replace("DEEP", deep).replace("BIAS", bias)
    model = chainrule.compile(source=source)
    x = np.random.default_rng(0).normal(size=(2, 4))
    W, b = model.params["W"], model.params["b"]
    y = x @ W.T + (b if bias == "true" else 0.0)
    y = np.maximum(y, 0) if deep == "true" else np.tanh(y)
    assert_close(model.run(x=x)["sum"], np.sum(y * 2.0 + 2.0), rtol=1e-14)
    ops = [node.op for node in model.graph.nodes]
    assert ("relu" in ops) == (deep == "true") and ("tanh" in ops) == (deep == "false")


@pytest.mark.parametrize("condition, message", [
    ("x > 0.0", "an if's condition is true or false when the model compiles"),
    ("B > 2", "B is a symbolic dim, known only when the model runs"),
    ("3", "an if's condition is true or false when the model compiles"),
])
def test_an_if_on_what_is_known_only_at_run_time_is_a_located_error(condition, message):
    source = ("model m(x: f64[B, 3]) {\n    y = x\n    if " + condition + " {\n"
              "        y = x * 2.0\n    }\n    return sum(y)\n}\n")
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source)
    assert message in caught.value.message and caught.value.line == 3
