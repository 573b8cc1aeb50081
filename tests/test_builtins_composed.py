"""The built-ins made of other ops (silu and swish, elu, var and std, tril and triu, % and //
on tensors, the norms, einsum) and the
new ops' behaviour in models (floor's and stop_gradient's missing gradients, prod's gradient at
zeros): values against numpy on both backends, gradients against central differences in
float64."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import chainrule
from chainrule import ChainruleError
from support.builtin_checks import check_builtin, model_source
from support.numeric import assert_close
from support.op_checks import check_gradients


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _elu(alpha):
    return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _var(axis=None, keepdims=False, correction=0):
    return lambda x: np.var(x, axis=axis, keepdims=keepdims, ddof=correction)


def _std(axis=None, keepdims=False, correction=0):
    return lambda x: np.std(x, axis=axis, keepdims=keepdims, ddof=correction)


def _standardised(x, axes, eps):
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=axes, keepdims=True) + eps)


def _affine_grid(spatial, align_corners=False):
    def compute(theta):
        axes = [np.linspace(-1, 1, size) if align_corners else (2 * np.arange(size) + 1) / size - 1
                for size in spatial]
        pixels = np.stack([*np.meshgrid(*axes, indexing="ij")[::-1], np.ones(spatial)], axis=-1)
        return np.einsum("...k,njk->n...j", pixels, theta)
    return compute


def _per_channel(value, rank):
    return value.reshape((-1,) + (1,) * (rank - 2))


def _group_norm(groups, eps=1e-5):
    """PyTorch's group_norm, from its definition."""
    def compute(x, weight, bias):
        grouped = x.reshape(x.shape[0], groups, -1)
        normalised = _standardised(grouped, -1, eps).reshape(x.shape)
        return normalised * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return compute


def _instance_norm(eps=1e-5):
    def compute(x, weight, bias):
        normalised = _standardised(x, tuple(range(2, x.ndim)), eps)
        return normalised * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return compute


def _rms_norm(axes=-1, eps=1e-5):
    return lambda x, weight: x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps) * weight


def _einsum(spec):
    return lambda *operands: np.einsum(spec, *operands)


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
    ("x: F[B, 5]", "top_k(x, 2)", "[B, 2]", lambda x: -np.sort(-x, axis=-1)[:, :2]),
    ("t: F[B, 2, 3]", "affine_grid(t, (B, 3, 4, 5))", "[B, 4, 5, 2]", _affine_grid((4, 5))),
    ("t: F[B, 3, 4]", "affine_grid(t, (B, 1, 2, 1, 3), align_corners=true)", "[B, 2, 1, 3, 3]",
     _affine_grid((2, 1, 3), align_corners=True)),
    ("x: F[4, B]", "top_k(x, k=3, axis=0, largest=false)", "[3, B]",
     lambda x: np.sort(x, axis=0)[:3]),
    ("x: F[B, 4], d: F[4]", "x % (d + 3.0)", "[B, 4]", lambda x, d: np.mod(x, d + 3.0)),
    ("x: F[B, 4], d: F[4]", "(5.0 * x) % -(abs(d) + 0.5)", "[B, 4]",
     lambda x, d: np.mod(5.0 * x, -(np.abs(d) + 0.5))),
    ("x: F[B, 4], d: F[4]", "(5.0 * x) // (d + 3.0)", "[B, 4]",
     lambda x, d: np.floor_divide(5.0 * x, d + 3.0)),
    ("x: F[B, 4]", "x % 0.75 + x // 0.75", "[B, 4]", lambda x: np.mod(x, 0.75) + x // 0.75),
    ("x: F[B, 6, 3, 4], w: F[6], c: F[6]", "group_norm(x, 3, w, c)", "[B, 6, 3, 4]",
     _group_norm(3)),
    ("x: F[B, 6, 5], w: F[6], c: F[6]", "group_norm(x, groups=6, weight=w, bias=c, eps=0.1)",
     "[B, 6, 5]", _group_norm(6, 0.1)),
    ("x: F[B, 6], w: F[6], c: F[6]", "group_norm(x, 2, w, c)", "[B, 6]", _group_norm(2)),
    ("x: F[B, 4, 3, 5], w: F[4], c: F[4]", "instance_norm(x, w, c)", "[B, 4, 3, 5]",
     _instance_norm()),
    ("x: F[B, 4, S], w: F[4], c: F[4]", "instance_norm(x, w, c, eps=0.01)", "[B, 4, S]",
     _instance_norm(0.01)),
    ("x: F[B, S, 8], w: F[8]", "rms_norm(x, w)", "[B, S, 8]", _rms_norm()),
    ("x: F[B, 3, 4], w: F[3, 4]", "rms_norm(x, w, eps=1e-3, axis=(1, 2))", "[B, 3, 4]",
     _rms_norm((1, 2), 1e-3)),
    ("a: F[B, 3, 4], b: F[B, 4, 5]", 'einsum("bij,bjk->bik", a, b)', "[B, 3, 5]",
     _einsum("bij,bjk->bik")),
    ("a: F[B, 2, S, 4], b: F[B, 2, 5, 4]", 'einsum("bhqd,bhkd->bhqk", a, b)', "[B, 2, S, 5]",
     _einsum("bhqd,bhkd->bhqk")),
    ("a: F[B, 3], w: F[3, 4], b: F[B, 4]", 'einsum("bi,ij,bj->b", a, w, b)', "[B]",
     _einsum("bi,ij,bj->b")),
    ("a: F[B, 3], w: F[2, 3, 4], b: F[B, 4]", 'einsum("bi, oij, bj -> bo", a, w, b)', "[B, 2]",
     _einsum("bi,oij,bj->bo")),
    ("a: F[3, 4], b: F[4]", 'einsum("ij,j", a, b)', "[3]", _einsum("ij,j")),
    ("a: F[3, 4], b: F[5]", 'einsum("ij,k->kji", a, b)', "[5, 4, 3]", _einsum("ij,k->kji")),
    ("a: F[3, 4, 2], b: F[2, 4, 6]", 'einsum("ijk,kjl->il", a, b)', "[3, 6]",
     _einsum("ijk,kjl->il")),
    ("a: F[3, 4, 2], b: F[1, 2]", 'einsum("ijk,lk->jl", a, b)', "[4, 1]", _einsum("ijk,lk->jl")),
    ("a: F[B, 4], b: F[1, 4]", 'einsum("bi,bi->b", a, b)', "[B]", _einsum("bi,bi->b")),
    ("a: F[3, 4], b: F[3, 4]", 'einsum("ij,ij->", a, b)', "[]", _einsum("ij,ij->")),
    ("a: F[3, 4]", 'einsum("ij->j", a)', "[4]", _einsum("ij->j")),
    ("a: F[3, 4]", 'einsum("ij->ji", a)', "[4, 3]", _einsum("ij->ji")),
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("signature, expression, shape, compute", CASES,
                         ids=[case[1] for case in CASES])
def test_builtin_matches_numpy_on_both_backends(signature, expression, shape, compute, dtype):
    check_builtin(signature, expression, shape, compute, dtype)


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
    "affine_grid and grid_sample": "t = reshape(P[0:2, 0:3] * x[0:2, 0:3], (1, 2, 3))\n"
        "        g = affine_grid(t, (1, 1, 3, 4))\n"
        "        J = sum(affine_grid(t, (1, 2, 2, 2)) ** 2) + "
        "sum(grid_sample(reshape(x, (1, 1, 3, 4)), g * 0.7, mode=\"cubic\") * x)",
    "top_k": "J = sum(top_k(x * P, 2) * x[:, 0:2]) + sum(top_k(P, 2, axis=0, largest=false))",
    "% and //": "J = sum((x * 3.0 % (P + 5.0)) ** 2) + sum((x // P) * P) + sum(2.5 % P)",
    "einsum": 'J = sum(einsum("ij,kj->ik", x * P, P) ** 2) + einsum("ij,ij,ij->", x, P, P)',
    "einsum, one operand": 'J = sum(einsum("ij->ji", P) * x.T) + sum(einsum("ij->i", P * P))',
}


NORM_GRADIENT_MODELS = {
    "group_norm": "h = group_norm(x * P, 2, w, c, eps=0.01)",
    "instance_norm": "h = instance_norm(x * P, w, c)",
    "rms_norm": "h = rms_norm(x * P, w[0:3], axis=-1)",
}


@pytest.mark.parametrize("normalised", NORM_GRADIENT_MODELS.values(), ids=NORM_GRADIENT_MODELS)
def test_norm_gradients_match_finite_differences_on_both_backends(normalised):
    """Every operand's gradient, the mean and variance reaching back through x among them."""
    model = chainrule.compile(source=f"""
    model m(x: f64[2, 4, 3], y: f64[2, 4, 3]) {{
        param P: f64[2, 4, 3] = normal(1.0, 0.5)
        param w: f64[4] = normal(1.0, 0.5)
        param c: f64[4] = normal(0.0, 0.5)
        {normalised}
        J = sum(h * y) + sum(h * h * x)
        return J
    }}""")
    rng = np.random.default_rng(4)
    check_gradients(model, x=rng.normal(size=(2, 4, 3)), y=rng.normal(size=(2, 4, 3)))


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


def test_attention_scores_are_one_matrix_product():
    """Not the [b, h, q, k, d] product a broadcast multiply and a sum would build."""
    model = chainrule.compile(source=model_source("q: F[B, 2, S, 4], k: F[B, 2, S, 4]",
                                                  'einsum("bhqd,bhkd->bhqk", q, k)', "f32"))
    assert [node.op for node in model.graph.nodes] == ["transpose", "matmul"]


def test_remainders_by_infinity_follow_python():
    model = chainrule.compile(source=model_source("x: F[4], d: F[4]", "x % d", "f64"))
    x, d = np.array([2.5, -2.5, 0.0, -2.5]), np.array([np.inf, np.inf, -np.inf, -np.inf])
    expected = [a % b for a, b in zip(x, d, strict=True)]
    for backend in ("numpy", "onnxruntime"):
        np.testing.assert_array_equal(model.run(backend=backend, x=x, d=d)["y"], expected)


@pytest.mark.parametrize("expression, message", [
    ("(i > 0) % (i > 1)", "% of bool tensors"),
    ("(i > 0) // (i > 1)", "// of bool tensors"),
    ('einsum("ii->i", outer)', "repeats a letter"),
    ('einsum("...i->i", outer)', 'no "..."'),
    ('einsum("ij,jk->ik", outer)', "names 2 operands, but 1 are given"),
    ('einsum("i->i", outer)', 'the term "i" has 1 letters for an operand of rank 2'),
    ('einsum("ij,jk->ik", outer, outer[0:3])', 'the axes of "j" differ, 4 and 3'),
    ('einsum("ij->iz", outer)', "each name an operand's axis"),
    ("einsum(1, x)", "spec must be a string"),
    ("group_norm(x, 3, x, x)", "x must be \\[N, C, \\*spatial\\]"),
    ("group_norm(unsqueeze(x, 0), 3, x, x)", "split into 3 groups"),
    ("instance_norm(unsqueeze(x, (0, 2)), x[0:2], x)", "weight must be \\[4\\]"),
    ("group_norm(unsqueeze(x, 0), 0, x, x)", "groups must be a positive integer"),
    ("tril(x)", "rank 2 or more"),
    ("var(x, axis=1.5)", "axis must be an integer"),
    ("elu(x, alpha=true)", "alpha must be a number"),
])
def test_misuse_is_a_located_error(expression, message):
    with pytest.raises(ChainruleError, match=message):
        chainrule.compile(source=model_source("x: F[4], i: i64[4], outer: F[4, 4]", expression,
                                              "f32"))


SAMPLING_MODELS = {
    "roi_align": ("""
    model m(x: f64[2, 3, 6, 7], boxes: f64[3, 4], images: i64[3]) {
        param P: f64[3, 1, 1] = normal(1.0, 0.2)
        param Q: f64[4] = normal(1.0, 0.05)
        y = roi_align(x * P, boxes * Q, images, (3, 2), spatial_scale=0.5, aligned=true)
        z = roi_align(x, boxes, images, 2, sampling_ratio=1, mode="max")
        J = sum(y * y) + sum(z)
        return J, y
    }""", helper.make_node("RoiAlign", ["x", "boxes", "images"], ["y"], output_height=3,
                           output_width=2, sampling_ratio=2, spatial_scale=0.5,
                           coordinate_transformation_mode="half_pixel")),
    "deform_conv2d": ("""
    model m(x: f64[2, 4, 5, 6], offset: f64[2, 24, 3, 2], w: f64[6, 2, 2, 3], b: f64[6],
            mask: f64[2, 12, 3, 2]) {
        param P: f64[24, 1, 1] = normal(1.0, 0.2)
        param Q: f64[6, 1, 1, 3] = normal(1.0, 0.2)
        y = deform_conv2d(x, offset * P, w * Q, b, stride=(2, 1), padding=(1, 0),
                          dilation=(1, 2), mask=mask)
        J = sum(y * y) + sum(deform_conv2d(x, offset, w, stride=(2, 1), padding=(1, 0),
                                           dilation=(1, 2)))
        return J, y
    }""", helper.make_node("DeformConv", ["x", "w", "offset", "b", "mask"], ["y"], group=2,
                           offset_group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 0, 1, 0],
                           kernel_shape=[2, 3])),
}


def _sampling_inputs(rng, model):
    inputs = {}
    for value in model.graph.inputs:
        shape = tuple(value.type.shape)
        if value.type.dtype == "i64":
            inputs[value.name] = rng.integers(0, 2, shape)
        elif value.name == "boxes":  # corners in the image and beyond it, x2 > x1, y2 > y1
            corners = rng.uniform(-3, 12, (shape[0], 2))
            inputs[value.name] = np.concatenate([corners, corners + rng.uniform(1, 8, (
                shape[0], 2))], axis=1)
        else:
            inputs[value.name] = rng.normal(size=shape)
    return inputs


@pytest.mark.parametrize("name", SAMPLING_MODELS)
def test_roi_align_and_deform_conv2d_match_onnx_and_finite_differences(name):
    source, node = SAMPLING_MODELS[name]
    model = chainrule.compile(source=source)
    inputs = _sampling_inputs(np.random.default_rng(3), model)
    onnx_inputs = dict(inputs, **{k: inputs[k] * model.params[p] for k, p in (
        ("boxes", "Q"), ("offset", "P"), ("w", "Q")) if k in inputs})
    if name == "roi_align":
        onnx_inputs["x"] = inputs["x"] * model.params["P"]
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info(
        k, TensorProto.INT64 if v.dtype.kind == "i" else TensorProto.DOUBLE, v.shape)
        for k, v in onnx_inputs.items() if k in node.input],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)])
    reference = ReferenceEvaluator(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 19)]))
    expected = reference.run(None, {k: v for k, v in onnx_inputs.items() if k in node.input})[0]
    for backend in ("numpy", "onnxruntime"):
        # ONNX's reference DeformConv samples through its GridSample, which places points in
        # float32.
        assert_close(model.run(backend=backend, **inputs)["y"], expected, 1e-6, what=backend)
    check_gradients(model, **inputs)
