"""Optimisation passes keep results: regressions found by the property tests."""
import numpy as np
import pytest

import chainrule


@pytest.mark.parametrize("level", ["O1", "O2"])
def test_an_unsqueeze_of_a_trailing_axis_is_kept(level):
    model = chainrule.compile(source="model m(x: f64[3, 3], w: f64[3]) {\n"
                              "  y = unsqueeze(w, axis=1) * x\n  return y\n}\n")
    feeds = {"x": np.ones((3, 3)), "w": np.array([1.0, 2.0, 3.0])}
    assert np.array_equal(model.run(opt_level=level, **feeds)["y"],
                          model.run(opt_level="O0", **feeds)["y"])


def test_max_reduction_gradient_on_a_square_input_keeps_its_rows():
    model = chainrule.compile(source="model m(x: f64[3, 3], w: f64[3]) {\n"
                              "  J = sum(max(x, axis=1) * w)\n  return J\n}\n")
    feeds = {"x": np.array([[0.0, 5, 0], [7, 0, 0], [0, 0, 9]]), "w": np.array([10.0, 20, 30])}
    expected = np.array([[0.0, 10, 0], [20, 0, 0], [0, 0, 30]])
    for level in ("O0", "O1", "O2"):
        assert np.array_equal(model.grad(wrt=["x"], opt_level=level, **feeds)["x"], expected)


def test_equal_gradients_of_several_outputs_keep_their_names():
    """CSE merges the zero gradients of a, b and c; each output keeps its own name."""
    model = chainrule.compile(source="model m(a: f64[1], b: f64[], c: f64[], x: f64[]) {\n"
                              "  J = x * x\n  return J\n}\n")
    feeds = {"a": np.ones(1), "b": np.array(1.0), "c": np.array(1.0), "x": np.array(2.0)}
    for level in ("O1", "O2"):
        grads = model.grad(wrt=["a", "b", "c", "x"], opt_level=level, **feeds)
        assert float(grads["x"]) == 4.0 and grads["a"].shape == (1,) and float(grads["b"]) == 0


def test_a_rewrite_reading_a_renamed_value_reads_it_under_its_new_name():
    """dJ/dx1 simplifies to the seed dJ/dJ, which then takes the output's name; rules that
    later read the seed off earlier nodes must see the renamed value (found by hypothesis)."""
    model = chainrule.compile(source="model m(x0: f64[1], x1: f64[], x2: f64[]) {\n"
                              "  v0 = x0 + x1\n  v1 = tanh(x2)\n  v2 = tanh(x0)\n"
                              "  J = mean(v0) + mean(v1 ** 2) + mean(v2 ** 2)\n  return J\n}\n")
    feeds = {"x0": np.array([0.3]), "x1": np.array(0.2), "x2": np.array(-0.4)}
    expected = model.grad(wrt=["x0", "x1", "x2"], opt_level="O0", **feeds)
    for level in ("O1", "O2"):
        got = model.grad(wrt=["x0", "x1", "x2"], opt_level=level, **feeds)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-12)


@pytest.mark.parametrize("gaps", [False, True])
def test_the_gradient_of_consecutive_slices_is_their_gradients_put_together(gaps):
    """unslice + unslice of adjacent windows becomes one concat (gaps: windows that leave a
    column out stay an unslice)."""
    end = 7 if gaps else 8
    model = chainrule.compile(source="model m(g: f64[3, 8]) {\n"
                              "  a = sigmoid(g[:, 0:2])\n  b = tanh(g[:, 2:4])\n"
                              f"  c = g[:, 4:6] * g[:, 4:6]\n  d = exp(g[:, 6:{end}])\n"
                              "  J = sum(a) + sum(b * 2.0) + sum(c) + sum(d)\n  return J\n}\n")
    feeds = {"g": np.random.default_rng(0).normal(size=(3, 8))}
    expected = model.grad(wrt=["g"], opt_level="O0", **feeds)["g"]
    np.testing.assert_allclose(model.grad(wrt=["g"], opt_level="O1", **feeds)["g"], expected,
                               rtol=1e-15)
    graph, _ = model.compile_graph(grad=True, wrt=["g"], opt_level="O1")
    ops = [node.op for node in graph.nodes]
    assert ops.count("concat") == 1
    assert ops.count("unslice") == (1 if gaps else 0)
