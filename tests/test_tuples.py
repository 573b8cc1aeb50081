"""Functions that return several values, and `a, b = f(...)` that unpacks them: in a model, in
an unrolled loop and in a scan's body (an LSTM cell returning h and c)."""
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
    ("    x, b = split(x)\n    return b", 5, "'x' is already defined"),
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
