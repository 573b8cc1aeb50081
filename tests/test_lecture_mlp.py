"""The founding example: the lecture's one-hidden-layer MLP with weight decay, in float64.

The gradients chainrule computes must equal the lecture's hand-derived equations, written here
in plain numpy, and central finite differences.
"""
import numpy as np
import pytest

import chainrule
from support.numeric import assert_close, central_difference
from support.paths import ROOT

MODEL = ROOT / "tests" / "models" / "mlp_f64.nn"
LAM = 0.0001


def lecture_gradients(x, y, W1, W2):
    """Forward and backward propagation exactly as the lecture derives them, batched."""
    batch = x.shape[0]
    z = x @ W1.T                                   # z = W1 x
    h = np.maximum(z, 0)                           # h = phi(z)
    o = h @ W2.T                                   # o = W2 h
    shifted = o - o.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    L = -np.mean(np.log(p[np.arange(batch), y]))   # L = l(o, y)
    s = LAM / 2 * (np.sum(W1 ** 2) + np.sum(W2 ** 2))
    J = L + s
    dJ_do = (p - np.eye(W2.shape[0])[y]) / batch   # dJ/do = dL/do
    dJ_dW2 = dJ_do.T @ h + LAM * W2                # dJ/dW2 = dJ/do h^T + lambda W2
    dJ_dh = dJ_do @ W2                             # dJ/dh = W2^T dJ/do
    dJ_dz = dJ_dh * (z > 0)                        # dJ/dz = dJ/dh * phi'(z)
    dJ_dW1 = dJ_dz.T @ x + LAM * W1                # dJ/dW1 = dJ/dz x^T + lambda W1
    return J, dJ_dW1, dJ_dW2


@pytest.fixture(scope="module")
def setting():
    model = chainrule.compile(str(MODEL))
    rng = np.random.default_rng(7)
    # Larger weights than the default init so relu masks and weight decay both matter.
    model.set_params({"W1": rng.normal(0, 0.1, (256, 784)), "W2": rng.normal(0, 0.1, (10, 256))})
    x = rng.normal(size=(6, 784))
    y = rng.integers(0, 10, 6)
    return model, x, y


def test_gradients_equal_the_lectures_equations(setting):
    model, x, y = setting
    got = model.grad(x=x, y=y)
    J, dW1, dW2 = lecture_gradients(x, y, model.params["W1"], model.params["W2"])
    assert set(got) == {"J", "W1", "W2"}
    assert_close(got["J"], J, 1e-12, what="J")
    assert_close(got["W1"], dW1, 1e-6, what="dJ/dW1")
    assert_close(got["W2"], dW2, 1e-6, what="dJ/dW2")


def test_gradients_equal_finite_differences(setting):
    model, x, y = setting
    got = model.grad(x=x, y=y)
    rng = np.random.default_rng(3)
    for name in ("W1", "W2"):
        # A random block of entries: the full W1 would take 400k evaluations. Errors are
        # relative to the gradient's largest entry, as tiny entries are all rounding.
        param = model.params[name]
        rows = rng.choice(param.shape[0], 3, replace=False)
        cols = rng.choice(param.shape[1], 4, replace=False)
        numeric = np.array([[central_difference(lambda: float(model.run(x=x, y=y)["J"]),
                                                param[r:r + 1, c])[0] for c in cols]
                            for r in rows])
        assert_close(got[name][np.ix_(rows, cols)], numeric, 1e-6, what=name,
                     scale=np.max(np.abs(got[name])))


def test_w2_gradient_sums_both_uses(setting):
    """W2 feeds both o and s: its gradient is the sum of the two contributions."""
    model, x, y = setting
    graph, grads = model.grad_graph()
    producer = graph.producers()[graph.find(grads["W2"])]
    assert producer.op == "add"
    assert {v.name for v in producer.inputs} == {"dJ/dW2.via_pow.1", "dJ/dW2.via_W2.T"}


def test_backward_graph_reads_like_the_lecture():
    text = chainrule.compile(str(ROOT / "examples" / "mlp.nn")).ir(grad=True)
    lines = {line.split(" = ")[0].strip(): line for line in text.splitlines() if " = " in line}
    assert "mul(%dJ/dL.sub, %dJ/dL.div)" in lines["%dJ/do"]        # (softmax - onehot) / B
    assert "matmul(%dJ/do, %W2)" in lines["%dJ/dh"]                 # W2^T dJ/do, batched
    assert "mul(%dJ/dh, %dJ/dh.cast)" in lines["%dJ/dz"]            # dJ/dh * relu'(z)
    assert "greater(%z, %dJ/dh.const)" in lines["%dJ/dh.greater"]
    assert "add(%dJ/dW1.via_pow, %dJ/dW1.via_W1.T)" in lines["%dJ/dW1"]
    assert "examples/mlp.nn:9:9" in lines["%dJ/dh"]                 # points at o = h @ W2.T
    assert "examples/mlp.nn:8:9" in lines["%dJ/dz"]                 # points at h = relu(z)
