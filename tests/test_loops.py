"""Loops: `for t in range(...)` unrolls into plain IR, carries names across iterations, and
marks every node with its iteration; the backward graph through time comes from autodiff."""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.ir import parse_graph, print_graph
from support.numeric import assert_backends_agree, assert_close, central_difference, digits
from support.paths import ROOT

GRU_CELL = """
def gru(x, h, Wz, Uz, Wr, Ur, Wh, Uh) {
    z = sigmoid(x @ Wz.T + h @ Uz.T)
    r = sigmoid(x @ Wr.T + h @ Ur.T)
    candidate = tanh(x @ Wh.T + (r * h) @ Uh.T)
    return (1.0 - z) * h + z * candidate
}
"""
GRU_HEAD = """model gru_seq(x: f64[B, 5, 3], h0: f64[B, 4], y: i64[B]) {
    param Wz: f64[4, 3] = glorot()
    param Uz: f64[4, 4] = glorot()
    param Wr: f64[4, 3] = glorot()
    param Ur: f64[4, 4] = glorot()
    param Wh: f64[4, 3] = glorot()
    param Uh: f64[4, 4] = glorot()
    param V: f64[2, 4] = glorot()
"""
GRU_LOOP = GRU_CELL + GRU_HEAD + """    h = h0
    for t in range(5) {
        h = gru(x[:, t], h, Wz, Uz, Wr, Ur, Wh, Uh)
    }
    J = cross_entropy(h @ V.T, y)
    return J
}
"""
GRU_UNROLLED = GRU_CELL + GRU_HEAD + "".join(
    f"    h{t + 1} = gru(x[:, {t}], h{t}, Wz, Uz, Wr, Ur, Wh, Uh)\n" for t in range(5)
).replace("h0, Wz", "h0, Wz") + """    J = cross_entropy(h5 @ V.T, y)
    return J
}
"""


def gru_feeds(rng):
    return {"x": rng.normal(size=(3, 5, 3)), "h0": rng.normal(size=(3, 4)) * 0.1,
            "y": np.array([0, 1, 1])}


def canonical(graph) -> str:
    """The graph's text with values numbered in order of definition: equal for graphs that
    differ only in value names."""
    names = {}
    for value in list(graph.inputs) + graph.param_values():
        names[value.name] = value.name
    for node in graph.nodes:
        for out in node.outputs:
            names[out.name] = f"v{len(names)}"
    lines = []
    for node in graph.nodes:
        inputs = ", ".join(names[v.name] for v in node.inputs)
        lines.append(f"{names[node.outputs[0].name]} = {node.op}({inputs}) {node.attrs} : "
                     f"{node.outputs[0].type}")
    lines.append("return " + ", ".join(names[v.name] for v in graph.outputs))
    return "\n".join(lines)


def test_a_gru_loop_is_the_hand_unrolled_gru():
    looped, unrolled = chainrule.compile(source=GRU_LOOP), chainrule.compile(source=GRU_UNROLLED)
    for grad in (False, True):
        assert canonical(looped.compile_graph(grad=grad, opt_level="O1")[0]) == \
            canonical(unrolled.compile_graph(grad=grad, opt_level="O1")[0])
    feeds = gru_feeds(np.random.default_rng(0))
    expected = unrolled.grad(**feeds)
    for name, value in looped.grad(**feeds).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


def test_gradients_through_the_loop_match_finite_differences():
    model = chainrule.compile(source=GRU_LOOP)
    feeds = gru_feeds(np.random.default_rng(1))
    grads = model.grad(wrt=["Uz", "Wh", "x", "h0"], **feeds)
    for name in ("Uz", "Wh"):
        param = model.params[name]
        numeric = central_difference(lambda: float(model.run(**feeds)["J"]), param)
        assert_close(grads[name], numeric, 1e-6, what=name)
    for name in ("x", "h0"):
        numeric = central_difference(lambda: float(model.run(**feeds)["J"]), feeds[name])
        assert_close(grads[name], numeric, 1e-6, what=name)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_the_unrolled_gru_runs_the_same_on_both_backends(backend):
    model = chainrule.compile(source=GRU_LOOP)
    feeds = gru_feeds(np.random.default_rng(2))
    reference = model.grad(**feeds)
    for name, value in model.grad(backend=backend, opt_level="O2", **feeds).items():
        assert_close(value, reference[name], 1e-10, what=name)


def test_nodes_carry_their_iteration_and_the_text_round_trips():
    model = chainrule.compile(source=GRU_LOOP)
    for grad in (False, True):
        graph = model.compile_graph(grad=grad)[0]
        text = print_graph(graph)
        assert "# <string>:4:9 [t=4]" in text  # the cell's first line, in the last step
        assert print_graph(parse_graph(text)) == text
    backward = print_graph(model.compile_graph(grad=True)[0])
    assert "%dJ/dh.4" in backward and "[t=0]" in backward.split("%dJ/dh0")[-1]


def test_a_carried_value_is_used_after_the_loop_and_locals_stay_inside():
    model = chainrule.compile(source="model m(x: f64[4]) {\n"
                              "    s = x\n"
                              "    for i in range(3) {\n"
                              "        step = s * 2.0\n"
                              "        s = step + 1.0\n"
                              "    }\n"
                              "    return s\n}\n")
    x = np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(model.run(x=x)["s"], ((x * 2 + 1) * 2 + 1) * 2 + 1)
    with pytest.raises(ChainruleError, match="unknown name 'step'") as caught:
        chainrule.compile(source="model m(x: f64[4]) {\n    for i in range(3) {\n"
                          "        step = x * 2.0\n    }\n    return step\n}\n")
    assert (caught.value.line, caught.value.col) == (5, 12)


def test_nested_loops_and_a_loop_in_a_def_over_a_stacked_param():
    source = """
def layers(h, W, depth) {
    for i in range(depth) {
        h = tanh(h @ W[i].T)
    }
    return h
}
model m(x: f64[2, 3]) {
    param W: f64[4, 3, 3] = glorot()
    total = 0.0 * x
    for outer in range(2) {
        for inner in range(outer, 3) {
            total = total + x * inner
        }
    }
    y = layers(x, W, 4)
    return total, y
}
"""
    model = chainrule.compile(source=source)
    x = np.arange(6.0).reshape(2, 3)
    outputs = model.run(x=x)
    np.testing.assert_array_equal(outputs["total"], x * (0 + 1 + 2 + 1 + 2))
    h = x
    for i in range(4):
        h = np.tanh(h @ model.params["W"][i].T)
    assert_close(outputs["y"], h, 1e-12)
    text = model.ir()
    assert "[outer=1, inner=2]" in text and "[i=3]" in text


def test_range_takes_start_stop_and_step_and_may_be_empty():
    model = chainrule.compile(source="model m(x: f64[]) {\n    s = x\n"
                              "    for k in range(10, 0, -3) {\n        s = s + k\n    }\n"
                              "    for k in range(0) {\n        s = s * 100.0\n    }\n"
                              "    return s\n}\n")
    assert model.run(x=np.array(1.0))["s"] == 1 + 10 + 7 + 4 + 1


def test_a_bound_dim_bounds_a_loop():
    source = ("model m(x: f64[B, T]) {\n    s = x[:, 0]\n    for t in range(1, T) {\n"
              "        s = s + x[:, t]\n    }\n    return s\n}\n")
    model = chainrule.compile(source=source, dims={"T": 4})
    assert model.graph.inputs[0].type.shape == ("B", 4)
    x = np.arange(8.0).reshape(2, 4)
    np.testing.assert_array_equal(model.run(x=x)["s"], x.sum(axis=1))


LOOP_ERRORS = [
    ("model m(x: f64[3]) {\n    s = x\n    for t in range(2) {\n        s = sum(s)\n    }\n"
     "    return s\n}\n", 4, 9,
     "'s' is carried from one iteration to the next, so its type must stay the same, but it is "
     "f64[3] before and f64[] after (in the loop iteration t=0)"),
    ("model m(x: f64[3]) {\n    s = 0.0\n    for t in range(2) {\n        s = s + x\n    }\n"
     "    return s\n}\n", 4, 9, "a number before and f64[3] after; start it as a tensor, e.g. "
     "zeros((3,), dtype=f64)"),
    ("model m(x: f64[3]) {\n    for t in range(x) {\n        y = x\n    }\n    return x\n}\n",
     2, 20, "a loop bound must be a compile-time integer (a number, a let or a dim), not "
     "a tensor of type f64[3]"),
    ("model m(x: f64[3]) {\n    for t in range(2.5) {\n        y = x\n    }\n    return x\n}\n",
     2, 20, "not 2.5"),
    ("model m(x: f64[3]) {\n    for t in range(0, 4, 0) {\n        y = x\n    }\n"
     "    return x\n}\n", 2, 26, "range's step cannot be 0"),
    ("model m(x: f64[3]) {\n    for t in range() {\n        y = x\n    }\n    return x\n}\n",
     2, 14, "range takes one to three integers"),
    ("model m(x: f64[3]) {\n    for t in ranged(3) {\n        y = x\n    }\n    return x\n}\n",
     2, 14, "a for loop runs over range(...), not ranged(...)"),
    ("model m(x: f64[3]) {\n    for x in range(3) {\n        y = x\n    }\n    return x\n}\n",
     2, 9, "the loop variable 'x' is already a name here"),
    ("model m(x: f64[3]) {\n    for t in range(3) {\n        return x\n    }\n}\n",
     3, 9, "return cannot be inside a loop"),
    ("model m(x: f64[3]) {\n    for t in range(3) {\n        param W: f64[3] = zeros()\n"
     "    }\n    return x\n}\n", 3, 15,
     "params are declared in a model or a layer, not in a loop"),
    ("model m(x: f64[3]) {\n    s = x\n    for t in range(3) {\n        s = s + 1.0\n"
     "        s = s * 2.0\n    }\n    return s\n}\n", 5, 9,
     "'s' is already defined (at line 4); a name is assigned once per iteration"),
    ("model m(x: f64[3]) {\n    for t in range(3) {\n        t = x\n    }\n    return x\n}\n",
     3, 9, "'t' is already defined"),
    ("model m(x: f64[3]) {\n    s = x\n    for t in range(4) {\n        s = s + x[t]\n    }\n"
     "    return s\n}\n", 4, 19, "index 3 is out of range for axis 0 of size 3 (in the loop "
     "iteration t=3)"),
]


@pytest.mark.parametrize("source, line, col, message", LOOP_ERRORS)
def test_loop_errors_are_located(source, line, col, message):
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source)
    error = caught.value
    assert message in error.render(), error.render()
    assert (error.line, error.col) == (line, col), error.render()


def test_the_deep_mlp_as_a_loop_computes_what_it_did_written_out():
    looped = chainrule.compile(str(ROOT / "examples" / "deep_mlp.nn"))
    unrolled = chainrule.compile(str(ROOT / "tests" / "models" / "deep_mlp_unrolled.nn"))
    params = unrolled.params
    looped.set_params({"W1": params["W1"], "b1": params["b1"], "W4": params["W4"],
                       "b4": params["b4"], "Wo": params["Wo"], "bo": params["bo"],
                       "Wh": np.stack([params["W2"], params["W3"]]),
                       "bh": np.stack([params["b2"], params["b3"]])})
    rng = np.random.default_rng(3)
    feeds = {"x": rng.normal(size=(6, 12)).astype(np.float32), "y": rng.integers(0, 5, 6)}
    expected, got = unrolled.grad(**feeds), looped.grad(**feeds)
    np.testing.assert_allclose(got["J"], expected["J"], rtol=1e-6)
    np.testing.assert_allclose(got["Wh"], np.stack([expected["W2"], expected["W3"]]), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(got["W1"], expected["W1"], rtol=1e-5, atol=1e-7)


GRU_DIGITS = ROOT / "examples" / "gru_digits.nn"


def test_the_gru_example_forward_gradient_and_train_step_agree_on_both_backends():
    assert_backends_agree(GRU_DIGITS, {name: array[:16] for name, array in digits("test").items()})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_the_gru_example_learns_the_digits(backend):
    from chainrule.train import TrainConfig, Trainer
    trainer = Trainer(chainrule.compile(str(GRU_DIGITS)), TrainConfig(backend=backend))
    trainer.fit(digits("train"))  # the CLI's defaults: 20 epochs, batch 32, Adam, lr 0.001
    assert trainer.evaluate(digits("test"))["acc"] >= 0.97


def test_viz_labels_each_step_of_an_unrolled_loop():
    from chainrule.viz import to_dot
    model = chainrule.compile(str(GRU_DIGITS))
    graph, _ = model.compile_graph(grad=True)
    dot = to_dot(graph, "dJ/d")
    assert dot.count("\\nt=7") > 10  # the op circles of the last step
    assert "gru_digits.nn:17:28 [t=7]" in dot
