"""The built-ins made of other ops (silu and swish, elu, var and std, tril and triu) and the
new ops' behaviour in models (floor's and stop_gradient's missing gradients, prod's gradient at
zeros): values against numpy on both backends, gradients against central differences in
float64."""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.ir.types import NUMPY_DTYPES
from support.backend_checks import TOLERANCES
from support.numeric import assert_close
from support.op_checks import check_gradients

BATCH = 3


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _elu(alpha):
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _var(axis=None, keepdims=False, correction=0):
    return lambda x: np.var(x, axis=axis, keepdims=keepdims, ddof=correction)


def _std(axis=None, keepdims=False, correction=0):
    return lambda x: np.std(x, axis=axis, keepdims=keepdims, ddof=correction)


# (signature, expression, result shape, numpy reference)
CASES = [
    ("x: F[B, 5]", "silu(x)", "[B, 5]", lambda x: x * _sigmoid(x)),
    ("x: F[B, 5]", "swish(x)", "[B, 5]", lambda x: x * _sigmoid(x)),
    ("x: F[B, 5]", "elu(x)", "[B, 5]", _elu(1.0)),
    ("x: F[B, 5]", "elu(x, alpha=0.3)", "[B, 5]", _elu(0.3)),
    ("x: F[B, 5]", "elu(100.0 * x, 2.0)", "[B, 5]", lambda x: _elu(2.0)(100.0 * x)),
    ("x: F[B, 4, 5]", "var(x)", "[]", _var()),
    ("x: F[B, 4, 5]", "var(x, axis=-1)", "[B, 4]", _var(axis=-1)),
    ("x: F[B, 4, 5]", "var(x, axis=(0, 2), keepdims=true, correction=1)", "[1, 4, 1]",
     _var(axis=(0, 2), keepdims=True, correction=1)),
    ("x: F[B, 4, 5]", "std(x, axis=1, correction=1)", "[B, 5]", _std(axis=1, correction=1)),
    ("x: F[B, 4, 5]", "std(x, 2, true)", "[B, 4, 1]", _std(axis=2, keepdims=True)),
    ("x: F[B, 4, 5]", "tril(x)", "[B, 4, 5]", np.tril),
    ("x: F[B, 4, 5]", "tril(x, k=-1)", "[B, 4, 5]", lambda x: np.tril(x, -1)),
    ("x: F[4, 5]", "triu(x, 2)", "[4, 5]", lambda x: np.triu(x, 2)),
    ("x: F[B, 4, 5]", "triu(x, k=-7)", "[B, 4, 5]", lambda x: np.triu(x, -7)),
    ("x: F[B, 3]", "tril(x)", "[B, 3]", np.tril),
    ("x: F[B, 5]", "floor(3.0 * x)", "[B, 5]", lambda x: np.floor(3.0 * x)),
    ("x: F[B, 5]", "log1p(abs(x))", "[B, 5]", lambda x: np.log1p(np.abs(x))),
    ("x: F[B, 5]", "stop_gradient(x)", "[B, 5]", lambda x: x),
    ("x: F[B, 4, 5]", "prod(x, axis=(0, 2))", "[4]", lambda x: np.prod(x, axis=(0, 2))),
    ("x: F[B, 4, 5]", "cumsum(x, axis=-1)", "[B, 4, 5]", lambda x: np.cumsum(x, axis=-1)),
    ("x: F[S, 4]", "cumsum(x, 0)", "[S, 4]", lambda x: np.cumsum(x, axis=0)),
]


def model_source(signature: str, expression: str, dtype: str) -> str:
    return (f"model m({signature.replace('F[', f'{dtype}[')}) {{\n  y = {expression}\n"
            f"  return y\n}}\n")


def random_feeds(graph, rng, dtype) -> dict:
    return {v.name: rng.normal(size=[d if isinstance(d, int) else BATCH for d in v.type.shape])
            .astype(NUMPY_DTYPES[dtype]) for v in graph.inputs}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("signature, expression, shape, compute", CASES,
                         ids=[case[1] for case in CASES])
def test_builtin_matches_numpy_on_both_backends(signature, expression, shape, compute, dtype):
    model = chainrule.compile(source=model_source(signature, expression, dtype))
    assert str(model.graph.outputs[0].type) == f"{dtype}{shape}"
    feeds = random_feeds(model.graph, np.random.default_rng(0), dtype)
    expected = compute(*(feeds[v.name].astype(np.float64) for v in model.graph.inputs))
    rtol, atol = TOLERANCES[dtype]
    result = model.run(**feeds)["y"]
    assert result.dtype == NUMPY_DTYPES[dtype]
    assert_close(result, expected, max(rtol, 1e-12), atol=atol, what="numpy")
    assert_close(model.run(backend="onnxruntime", **feeds)["y"], result, rtol, atol=atol,
                 what="onnxruntime")


# Each gradient reaches P through the built-in; P's values stay away from elu's kink at 0.
GRADIENT_MODELS = {
    "silu and swish": "J = sum(silu(x * P) * x) + sum(swish(P) ** 2)",
    "elu": "J = sum(elu(x * P, alpha=0.7) * x) + sum(elu(P) ** 2)",
    "elu far above zero": "J = sum(elu(100.0 + x * P))",
    "var": "J = sum(var(x * P, axis=1) * x[:, 0]) + var(P, correction=1)",
    "std": "J = sum(std(x * P, axis=(0, 1), keepdims=true, correction=1) * P)",
    "tril and triu": "J = sum(tril(x * P, k=1) * x) + sum(triu(x * P, -1) ** 2)",
    "log1p": "J = sum(log1p(P * P) * x)",
    "prod": "J = sum(prod(x * P, axis=1) * x[:, 0]) + prod(P, axis=(0, 1))",
    "cumsum": "J = sum(cumsum(x * P, axis=1) * x) + sum(cumsum(P, 0) ** 2)",
}


@pytest.mark.parametrize("objective", GRADIENT_MODELS.values(), ids=GRADIENT_MODELS)
def test_gradients_match_finite_differences_on_both_backends(objective):
    model = chainrule.compile(source=f"""
    model m(x: f64[3, 4]) {{
        param P: f64[3, 4] = normal(0.0, 1.0)
        {objective}
        return J
    }}""")
    check_gradients(model, x=np.random.default_rng(1).normal(size=(3, 4)))


@pytest.mark.parametrize("row, expected", [
    ([2.0, 0.0, 3.0, 5.0], [0.0, 30.0, 0.0, 0.0]),  # one zero: only its own slope is not 0
    ([2.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]),  # two zeros: every other product holds one
    ([2.0, -1.0, 3.0, 4.0], [-12.0, 24.0, -8.0, -6.0]),
])
def test_the_gradient_of_a_product_is_exact_at_zeros(row, expected):
    model = chainrule.compile(source="""
    model m(x: f64[4]) {
        param P: f64[4] = ones()
        J = prod(x + P - 1.0)  # x itself, at P = 1
        return J
    }""")
    for backend in ("numpy", "onnxruntime"):
        assert_close(model.grad(backend=backend, x=np.array(row))["P"], np.array(expected),
                     1e-15, what=backend)


@pytest.mark.parametrize("blocked", ["floor(x * P) * P", "stop_gradient(x * P) * P"])
def test_floor_and_stop_gradient_pass_no_gradient(blocked):
    """Only the factor outside them carries P's gradient: d/dP of f(x P) P is f(x P)."""
    model = chainrule.compile(source=f"""
    model m(x: f64[3, 4]) {{
        param P: f64[3, 4] = normal(0.0, 1.0)
        J = sum({blocked})
        return J
    }}""")
    x = np.random.default_rng(1).normal(size=(3, 4)) * 3.0
    inner = x * model.params["P"]
    expected = np.floor(inner) if blocked.startswith("floor") else inner
    for backend in ("numpy", "onnxruntime"):
        assert_close(model.grad(backend=backend, x=x)["P"], expected, 1e-12, what=backend)


def test_an_elu_far_above_zero_has_a_finite_gradient():
    """exp overflows past 709 in float64; elu reads it only below 0."""
    model = chainrule.compile(source="""
    model m(x: f64[3]) {
        param P: f64[3] = ones()
        J = sum(elu(1000.0 * P + x))
        return J
    }""")
    for backend in ("numpy", "onnxruntime"):
        assert_close(model.grad(backend=backend, x=np.zeros(3))["P"], np.full(3, 1000.0), 0.0,
                     what=backend)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_causal_mask_over_a_symbolic_length(dtype):
    model = chainrule.compile(source=model_source("x: F[S, S]", "triu(x, k=1)", dtype))
    for length in (1, 4):
        x = np.random.default_rng(length).normal(size=(length, length)).astype(dtype.replace(
            "f", "float"))
        for backend in ("numpy", "onnxruntime"):
            assert_close(model.run(backend=backend, x=x)["y"], np.triu(x, 1), 0.0, what=backend)


@pytest.mark.parametrize("expression, message", [
    ("tril(x)", "rank 2 or more"),
    ("var(x, axis=1.5)", "axis must be an integer"),
    ("elu(x, alpha=true)", "alpha must be a number"),
])
def test_misuse_is_a_located_error(expression, message):
    with pytest.raises(ChainruleError, match=message):
        chainrule.compile(source=model_source("x: F[4]", expression, "f32"))
