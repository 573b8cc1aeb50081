"""grad(...) inside a model: gradients of gradients, checked against finite differences."""
import numpy as np

import chainrule
from support.numeric import assert_close, central_difference
from support.paths import ROOT


def test_hessian_vector_product_matches_finite_differences_of_the_gradient():
    model = chainrule.compile(str(ROOT / "tests" / "models" / "hvp_f64.nn"))
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(5, 3)), "y": rng.integers(0, 4, 5),
              "v": rng.normal(size=(4, 3))}
    hv = model.run(**inputs)["Hv"]
    W = model.params["W"]
    eps = 1e-5
    model.params["W"] = W + eps * inputs["v"]
    plus = model.run(**inputs)["g"]
    model.params["W"] = W - eps * inputs["v"]
    minus = model.run(**inputs)["g"]
    model.params["W"] = W
    assert_close(hv, (plus - minus) / (2 * eps), 1e-6)


def test_gradient_penalty_trains_through_second_derivatives():
    source = (ROOT / "examples" / "gradient_penalty.nn").read_text().replace("f32", "f64")
    model = chainrule.compile(source=source)
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(size=(6, 8)), "y": rng.integers(0, 3, 6)}
    grads = model.grad(**inputs)
    for name in ("W1", "W2"):
        numeric = central_difference(lambda: float(model.run(**inputs)["J"]), model.params[name])
        assert_close(grads[name], numeric, 1e-6, what=name)


def test_grad_expression_is_expanded_before_any_backend():
    model = chainrule.compile(str(ROOT / "examples" / "gradient_penalty.nn"))
    assert all(node.op != "grad" for node in model.graph.nodes)
    assert "%saliency = " in model.ir()
    assert model.to_onnx(grad=True).graph.node


def test_jvp_is_the_directional_derivative():
    model = chainrule.compile(source="model m(x: f64[3], W: f64[4, 3], v: f64[3]) {\n"
                              "  y = tanh(W @ x) * 2\n  d = jvp(y, x, v)\n  return d, y\n}\n")
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=3), "W": rng.normal(size=(4, 3)), "v": rng.normal(size=3)}
    eps = 1e-6
    plus = model.run(**{**inputs, "x": inputs["x"] + eps * inputs["v"]})["y"]
    minus = model.run(**{**inputs, "x": inputs["x"] - eps * inputs["v"]})["y"]
    assert_close(model.run(**inputs)["d"], (plus - minus) / (2 * eps), 1e-7)


def test_grad_with_respect_to_an_intermediate_value():
    model = chainrule.compile(source="model m(x: f64[3], w: f64[3]) {\n  h = tanh(x * w)\n"
                              "  L = sum(h * h)\n  g = grad(L, h)\n  return L, g, h\n}\n")
    outputs = model.run(x=np.array([0.5, -1.0, 2.0]), w=np.array([1.0, 2.0, 0.5]))
    assert_close(outputs["g"], 2 * outputs["h"], 1e-15)
