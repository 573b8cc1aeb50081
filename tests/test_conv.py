"""Convolution and pooling: the DSL built-ins against plain-numpy references (tests/
support/conv_reference.py, loops over windows) in float32 and float64, numpy against onnxruntime, float64
gradients and second derivatives against finite differences, max pooling's tie rule, exact
output types with a symbolic batch, located errors, and the ONNX export.

Every op also has its cases in tests/op_cases.py, which the registry, semantics, gradient,
onnxruntime and compiled-backend tests run; random configurations here cover the options more
widely.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule
from chainrule import ChainruleError
from chainrule.backends import get_backend
from chainrule.ir.types import numpy_dtype
from chainrule.passes.optimizers import OptimizerSpec
from op_cases import Arg, Case, conv_window, forward_graph, pool_window
from support import conv_reference as reference
from support.backend_checks import TOLERANCES, check_against_interpreter_twice, check_standard
from support.builtin_checks import BATCH, check_builtin, model_source, random_feeds
from support.numeric import assert_close
from support.op_checks import (check_against_reference, check_derivative_rule, check_gradients,
                               check_on_onnxruntime)

RANDOM_CONFIGS = settings(max_examples=25, derandomize=True, deadline=None)


def conv(strides, pads, dilations=(1, 1), groups=1):
    return lambda x, w, b=None: with_bias(reference.conv(x, w, strides, pads, dilations, groups),
                                          b)


def conv_transpose(strides, pads, output_padding, dilations=(1, 1), groups=1):
    return lambda x, w, b=None: with_bias(reference.conv_transpose(
        x, w, strides, pads, dilations, groups, output_padding), b)


def with_bias(y, b):
    return y if b is None else y + b.reshape((-1,) + (1,) * (y.ndim - 2))


def max_pool(kernel, strides, pads, ceil_mode=False):
    return lambda x: reference.max_pool(x, kernel, strides, pads, ceil_mode)


def avg_pool(kernel, strides, pads, ceil_mode=False, count_include_pad=True):
    return lambda x: reference.avg_pool(x, kernel, strides, pads, ceil_mode, count_include_pad)


def numpy_pad(widths, **options):
    return lambda x: np.pad(x, widths, **options)


# (signature, expression, output shape with B, reference). Pads are written out by hand here,
# each spatial axis' begin, then each one's end; PyTorch's padding="same" puts an odd total's
# extra pad at the end.
CASES = [
    ("x: F[B, 3, 7, 6], w: F[4, 3, 3, 3]", "conv2d(x, w)", "[B, 4, 5, 4]",
     conv((1, 1), (0, 0, 0, 0))),
    ("x: F[B, 3, 7, 6], w: F[4, 3, 3, 3], b: F[4]", "conv2d(x, w, b, stride=2, padding=1)",
     "[B, 4, 4, 3]", conv((2, 2), (1, 1, 1, 1))),
    ("x: F[B, 3, 7, 6], w: F[4, 3, 3, 2]",
     "conv2d(x, w, stride=(2, 1), padding=(1, 2), dilation=(2, 1))", "[B, 4, 3, 9]",
     conv((2, 1), (1, 2, 1, 2), (2, 1))),
    ("x: F[B, 3, 7, 6], w: F[4, 3, 2, 4]", 'conv2d(x, w, padding="same")', "[B, 4, 7, 6]",
     conv((1, 1), (0, 1, 1, 2))),
    ("x: F[B, 3, 7, 6], w: F[4, 3, 3, 3]", 'conv2d(x, w, padding="same", dilation=2)',
     "[B, 4, 7, 6]", conv((1, 1), (2, 2, 2, 2), (2, 2))),
    ("x: F[B, 3, 7, 6], w: F[4, 3, 3, 3]", 'conv2d(x, w, padding="valid", stride=3)',
     "[B, 4, 2, 2]", conv((3, 3), (0, 0, 0, 0))),
    ("x: F[B, 4, 6, 5], w: F[6, 2, 3, 3], b: F[6]", "conv2d(x, w, bias=b, padding=1, groups=2)",
     "[B, 6, 6, 5]", conv((1, 1), (1, 1, 1, 1), groups=2)),
    ("x: F[B, 3, 6, 5], w: F[6, 1, 3, 3]", "conv2d(x, w, padding=1, groups=3)", "[B, 6, 6, 5]",
     conv((1, 1), (1, 1, 1, 1), groups=3)),  # depthwise, two filters per channel
    ("x: F[B, 3, 5, 5], w: F[3, 1, 3, 3]", "conv2d(x, w, none, 2, 0, 1, 3)", "[B, 3, 2, 2]",
     conv((2, 2), (0, 0, 0, 0), groups=3)),  # depthwise, options by position as in PyTorch
    ("x: F[B, 2, 9], w: F[4, 2, 3], b: F[4]", "conv1d(x, w, b, stride=2, padding=2, dilation=2)",
     "[B, 4, 5]", conv((2,), (2, 2), (2,))),
    ("x: F[B, 4, 8], w: F[4, 2, 4]", 'conv1d(x, w, padding="same", groups=2)', "[B, 4, 8]",
     conv((1,), (1, 2), (1,), groups=2)),
    ("x: F[B, 3, 4, 3], w: F[3, 2, 3, 3], b: F[2]",
     "conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)", "[B, 2, 8, 6]",
     conv_transpose((2, 2), (1, 1, 1, 1), (1, 1))),
    ("x: F[B, 4, 3, 3], w: F[4, 1, 2, 3]", "conv_transpose2d(x, w, stride=(2, 1), padding=(0, 1), "
     "output_padding=(1, 0), groups=2, dilation=(1, 2))", "[B, 2, 7, 5]",
     conv_transpose((2, 1), (0, 1, 0, 1), (1, 0), (1, 2), groups=2)),
    ("x: F[B, 2, 5], w: F[2, 3, 3]", "conv_transpose1d(x, w, stride=3)", "[B, 3, 15]",
     conv_transpose((3,), (0, 0), (0,), (1,))),
    ("x: F[B, 3, 7, 6]", "max_pool2d(x, 2)", "[B, 3, 3, 3]",
     max_pool((2, 2), (2, 2), (0, 0, 0, 0))),
    ("x: F[B, 3, 7, 6]", "max_pool2d(x, 3, stride=2, padding=1)", "[B, 3, 4, 3]",
     max_pool((3, 3), (2, 2), (1, 1, 1, 1))),
    ("x: F[B, 3, 7, 6]", "max_pool2d(x, 2, ceil_mode=true)", "[B, 3, 4, 3]",
     max_pool((2, 2), (2, 2), (0, 0, 0, 0), True)),
    # ceil mode drops a last window that would start in the end padding (PyTorch's rule)
    ("x: F[B, 3, 5, 7]", "max_pool2d(x, (2, 2), stride=3, padding=1, ceil_mode=true)",
     "[B, 3, 2, 3]", max_pool((2, 2), (3, 3), (1, 1, 1, 1), True)),
    ("x: F[B, 2, 7, 6]", "max_pool2d(x, (3, 2), stride=(2, 1), padding=(1, 1))", "[B, 2, 4, 7]",
     max_pool((3, 2), (2, 1), (1, 1, 1, 1))),
    ("x: F[B, 3, 7, 6]", "avg_pool2d(x, 2)", "[B, 3, 3, 3]",
     avg_pool((2, 2), (2, 2), (0, 0, 0, 0))),
    ("x: F[B, 3, 7, 6]", "avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=false)",
     "[B, 3, 4, 3]", avg_pool((3, 3), (2, 2), (1, 1, 1, 1), count_include_pad=False)),
    # the last window along the width overhangs the end pad: it divides by less than 9
    ("x: F[B, 3, 7, 6]", "avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=true)", "[B, 3, 4, 4]",
     avg_pool((3, 3), (2, 2), (1, 1, 1, 1), True)),
    ("x: F[B, 3, 5, 7]",
     "avg_pool2d(x, 2, stride=3, padding=1, ceil_mode=true, count_include_pad=false)",
     "[B, 3, 2, 3]", avg_pool((2, 2), (3, 3), (1, 1, 1, 1), True, False)),
    ("x: F[B, 2, 9]", "max_pool1d(x, 3, stride=2, ceil_mode=true)", "[B, 2, 4]",
     max_pool((3,), (2,), (0, 0), True)),
    ("x: F[B, 2, 9]", "avg_pool1d(x, 4, padding=2)", "[B, 2, 3]", avg_pool((4,), (4,), (2, 2))),
    ("x: F[B, 3, 5, 4]", "global_avg_pool(x)", "[B, 3, 1, 1]",
     lambda x: x.mean(axis=(2, 3), keepdims=True)),
    ("x: F[B, 3, 5, 4]", "flatten(x)", "[B, 60]", lambda x: x.reshape(BATCH, -1)),
    ("x: F[B, 3, 5, 4]", "flatten(x, start_axis=2)", "[B, 3, 20]",
     lambda x: x.reshape(BATCH, 3, -1)),
    ("x: F[B, 3, 5, 4]", "flatten(x, 0)", "[60*B]", lambda x: x.reshape(-1)),
    ("x: F[B, 3, 5, 4]", "pad(x, (1, 2))", "[B, 3, 5, 7]",
     numpy_pad(((0, 0), (0, 0), (0, 0), (1, 2)))),
    ("x: F[B, 3, 5, 4]", "pad(x, (1, 2, 0, 3), value=-1.5)", "[B, 3, 8, 7]",
     numpy_pad(((0, 0), (0, 0), (0, 3), (1, 2)), constant_values=-1.5)),
    ("x: F[B, 3, 5, 4]", 'pad(x, (2, 1, 3, 1), mode="reflect")', "[B, 3, 9, 7]",
     numpy_pad(((0, 0), (0, 0), (3, 1), (2, 1)), mode="reflect")),
    ("x: F[B, 3, 5, 4]", 'pad(x, (3, 3), mode="reflect")', "[B, 3, 5, 10]",
     numpy_pad(((0, 0), (0, 0), (0, 0), (3, 3)), mode="reflect")),
    ("x: F[B, 3, 5, 4]", 'pad(x, (3, 0, 1, 4), mode="edge")', "[B, 3, 10, 7]",
     numpy_pad(((0, 0), (0, 0), (1, 4), (3, 0)), mode="edge")),
    ("x: F[B, 3, 5, 4]", 'pad(x, (1, 1, 1, 1, 1, 0), mode="replicate")', "[B, 4, 7, 6]",
     numpy_pad(((0, 0), (1, 0), (1, 1), (1, 1)), mode="edge")),
    ("x: F[B, 3, 5, 4]", "pad(x, (0, 0, 0, 0, 0, 0, 1, 1))", "[B+2, 3, 5, 4]",
     numpy_pad(((1, 1), (0, 0), (0, 0), (0, 0)))),
]


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("signature, expression, shape, compute", CASES,
                         ids=[case[1] for case in CASES])
def test_builtin_matches_its_reference_on_both_backends(signature, expression, shape, compute,
                                                        dtype):
    check_builtin(signature, expression, shape, compute, dtype)


def test_a_symbolic_batch_runs_at_any_size():
    model = chainrule.compile(source=model_source("x: F[B, 3, 7, 6], w: F[4, 3, 3, 3]",
                                           "flatten(max_pool2d(conv2d(x, w, padding=1), 2))",
                                           "f64"))
    assert str(model.graph.outputs[0].type) == "f64[B, 36]"
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 3))
    for batch in (1, 5):
        x = rng.normal(size=(batch, 3, 7, 6))
        expected = reference.max_pool(reference.conv(x, w, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                                      (2, 2), (2, 2), (0, 0, 0, 0), False).reshape(batch, -1)
        for backend in ("numpy", "onnxruntime"):
            assert_close(model.run(backend=backend, x=x, w=w)["y"], expected, 1e-12,
                         what=f"{backend} at batch {batch}")


# ---- gradients --------------------------------------------------------------------------------

GRADIENT_MODELS = {
    "two convolutions": """
    model m(x: f64[B, 3, 7, 6], t: f64[B, 5, 4, 3]) {
        param W1: f64[4, 3, 3, 3] = normal(0.0, 0.3)
        param b1: f64[4] = normal(0.0, 0.3)
        param W2: f64[5, 4, 2, 2] = normal(0.0, 0.3)
        h = tanh(conv2d(x, W1, b1, stride=2, padding=1))
        y = conv2d(h, W2, padding="same")
        J = sum(tanh(y) * t)
        return J
    }""",
    "depthwise and grouped": """
    model m(x: f64[B, 3, 6, 5], t: f64[B, 4, 3, 5]) {
        param W1: f64[6, 1, 2, 3] = normal(0.0, 0.3)
        param W2: f64[4, 3, 3, 1] = normal(0.0, 0.3)
        h = tanh(conv2d(x, W1, padding="same", dilation=(2, 1), groups=3))
        y = conv2d(h, W2, stride=(2, 1), padding=(1, 0), groups=2)
        J = sum(tanh(y) * t)
        return J
    }""",
    "1-d": """
    model m(x: f64[B, 4, 9], t: f64[B, 2, 6]) {
        param W1: f64[4, 2, 3] = normal(0.0, 0.3)
        param W2: f64[4, 1, 2] = normal(0.0, 0.3)
        h = max_pool1d(tanh(conv1d(x, W1, stride=2, padding=2, groups=2)), 2, stride=1)
        y = conv_transpose1d(h, W2, stride=2, output_padding=1, groups=2)
        J = sum(avg_pool1d(tanh(y), 3, stride=2, ceil_mode=true, padding=1) * t)
        return J
    }""",
    "transposed": """
    model m(x: f64[B, 4, 3, 3], t: f64[B, 2, 7, 5]) {
        param W: f64[4, 1, 2, 3] = normal(0.0, 0.3)
        param b: f64[2] = normal(0.0, 0.3)
        y = conv_transpose2d(x, W, b, stride=(2, 1), padding=(0, 1), output_padding=(1, 0),
                             groups=2, dilation=(1, 2))
        J = sum(tanh(y) * t)
        return J
    }""",
    "pools and pads": """
    model m(x: f64[B, 2, 7, 6]) {
        param W: f64[3, 2, 3, 3] = normal(0.0, 0.5)
        h = conv2d(pad(x, (1, 1, 2, 0), mode="reflect"), W)
        p = max_pool2d(h, 3, stride=2, padding=1, ceil_mode=true)
        q = avg_pool2d(pad(h, (0, 1, 1, 0), mode="edge"), 2, ceil_mode=true,
                       count_include_pad=false)
        r = avg_pool2d(pad(h, (1, 1, 0, 1), value=0.5), 3, stride=2, ceil_mode=true)
        J = sum(tanh(flatten(p * q + r + global_avg_pool(h))) ** 2)
        return J
    }""",
}


SECOND_ORDER = {
    # The input gradient is a conv_transpose and the weight gradient a conv_weight_grad; the
    # gradient of their norms differentiates both again.
    "conv": """
    model m(x: f64[2, 3, 6, 6]) {
        param W: f64[4, 3, 3, 3] = normal(0.0, 0.5)
        L = sum(tanh(conv2d(x, W, stride=2, padding=1, dilation=(1, 2))) ** 2)
        gx = grad(L, x)
        gW = grad(L, W)
        J = sum(gx * gx) + sum(gW * gW)
        return J
    }""",
    "grouped transposed conv": """
    model m(x: f64[2, 4, 3, 3]) {
        param W: f64[4, 2, 2, 3] = normal(0.0, 0.5)
        L = sum(tanh(conv_transpose2d(x, W, stride=2, padding=(0, 1), output_padding=1,
                                      groups=2)) ** 2)
        gx = grad(L, x)
        gW = grad(L, W)
        J = sum(gx * gx) + sum(gW * gW)
        return J
    }""",
    "pools": """
    model m(x: f64[2, 2, 6, 6]) {
        param W: f64[3, 2, 3, 3] = normal(0.0, 0.5)
        h = tanh(conv2d(x, W, padding=1))
        L = sum(max_pool2d(h, 2) ** 2) + sum(avg_pool2d(h, 3, stride=2, padding=1,
                                                           ceil_mode=true) ** 3)
        gW = grad(L, W)
        J = sum(gW * gW)
        return J
    }""",
}


@pytest.mark.parametrize("source", [*GRADIENT_MODELS.values(), *SECOND_ORDER.values()],
                         ids=[*GRADIENT_MODELS, *(f"second order, {k}" for k in SECOND_ORDER)])
def test_gradients_match_finite_differences_on_both_backends(source):
    model = chainrule.compile(source=source)
    check_gradients(model, **random_feeds(model.graph, np.random.default_rng(2)))


TIES = """
model m(x: f64[1, 1, 4, 5]) {
    param P: f64[1, 1, 4, 5] = ones()
    J = sum(max_pool2d(x * P, 2, stride=1, padding=1))
    return J
}
"""


def test_max_pool_gives_a_tie_to_the_first_maximum_in_row_major_order():
    model = chainrule.compile(source=TIES)
    x = np.ones((1, 1, 4, 5))
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 2.0  # tied in the window over rows 2-3, columns 2-3
    # Each window's cotangent goes to its first maximum, row by row: with padding 1 the 2x2
    # windows start at rows and columns -1, 0, 1, ...; padding never wins.
    expected = np.zeros((4, 5))
    for row in range(-1, 4):
        for column in range(-1, 5):
            window = [(r, c) for r in (row, row + 1) for c in (column, column + 1)
                      if 0 <= r < 4 and 0 <= c < 5]
            best = max(x[0, 0][p] for p in window)
            expected[next(p for p in window if x[0, 0][p] == best)] += 1.0
    assert expected[2, 3] == 4 and expected[3, 2] == 3  # (2, 3) wins the window they share
    for backend in ("numpy", "onnxruntime"):  # d/dP of x * P is x times the windows won
        np.testing.assert_array_equal(model.grad(backend=backend, x=x)["P"][0, 0],
                                      expected * x[0, 0])
    graph, _ = model.grad_graph()
    check_against_interpreter_twice(graph, {"x": x}, model.params)


# ---- each path of the numpy kernels -----------------------------------------------------------

# The numpy backend picks a path per shape (backends/numpy_convolution.py): a 1x1 kernel reads
# its columns off the input; conv_transpose, the input's gradient, folds tap by tap when
# depthwise, and at stride 1 is the convolution by the flipped weight when it has 8 channels
# out or more (the forward conv 8 in), else folds. The three ops on each, padded and
# dilated, strided, and padded past the kernel, against the reference and through the
# gradient checks.
PATH_CASES = {
    "pointwise": ((2, 4, 5, 6), (6, 4, 1, 1), 1),
    "pointwise grouped": ((2, 4, 5, 6), (6, 2, 1, 1), 2),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), 3),
    "depthwise, many channels": ((2, 8, 6, 5), (8, 1, 3, 3), 8),
    "columns": ((3, 2, 6, 5), (4, 2, 3, 2), 1),
    "columns grouped": ((2, 8, 6, 5), (6, 4, 3, 3), 2),
    "columns, many channels": ((2, 9, 6, 5), (3, 9, 3, 3), 1),
}


@pytest.mark.parametrize("strides, pads, dilations", [
    ((1, 1), (1, 2, 1, 0), (2, 1)), ((2, 1), (1, 0, 1, 2), (1, 2)),
    ((1, 1), (3, 0, 0, 3), (1, 1))], ids=["padded", "strided", "padded past the kernel"])
@pytest.mark.parametrize("path", PATH_CASES)
def test_each_convolution_path_matches_the_reference(path, strides, pads, dilations):
    x_shape, w_shape, groups = PATH_CASES[path]
    attrs = conv_window(strides, pads, dilations, groups)
    out = tuple((n + pads[i] + pads[2 + i] - d * (k - 1) - 1) // s + 1 for i, (n, k, s, d)
                in enumerate(zip(x_shape[2:], w_shape[2:], strides, dilations)))
    cases = [Case("conv", (Arg(x_shape), Arg(w_shape)), attrs),
             Case("conv_weight_grad", (Arg(x_shape), Arg((x_shape[0], w_shape[0]) + out)),
                  {"kernel": w_shape[2:], **attrs}),
             Case("conv_transpose", (Arg((x_shape[0], w_shape[0]) + out), Arg(w_shape)),
                  {**attrs, "output_padding": (0, 0)})]
    for case in cases:
        check_case(case)


@pytest.mark.parametrize("kernel, strides, pads, ceil_mode, shape", [
    ((2, 2), (2, 2), (0, 0, 0, 0), False, (2, 3, 6, 4)),   # windows tile the input
    ((2, 2), (2, 2), (0, 0, 0, 0), False, (2, 3, 7, 5)),   # a last row and column unread
    ((2, 2), (3, 2), (1, 0, 1, 1), True, (1, 2, 7, 6)),    # apart, padded, ceil mode
    ((3, 3), (2, 1), (1, 1, 1, 1), False, (2, 2, 6, 5)),   # overlapping
], ids=["tiled", "untiled", "apart", "overlapping"])
def test_the_max_pool_gradient_goes_to_each_windows_first_maximum(kernel, strides, pads,
                                                                  ceil_mode, shape):
    x = np.random.default_rng(3).integers(0, 3, shape).astype(np.float64)  # many ties
    window = pool_window(kernel, strides, pads, ceil_mode)
    g = np.random.default_rng(4).normal(
        size=reference.REFERENCES["max_pool"](x, **window).shape)
    expected = reference.REFERENCES["max_unpool"](g, x, **window)
    graph = forward_graph(Case("max_unpool", (Arg(g.shape), Arg(x.shape)), window))
    # An inf cotangent too: it reaches its window's maximum, and the rest of the window stays
    # 0 (inf times a mask of 0 would be NaN).
    infinite = g.copy()
    infinite.flat[0] = np.inf
    expected_infinite = reference.REFERENCES["max_unpool"](infinite, x, **window)
    # Exact where windows do not overlap: each position then takes one window's gradient.
    disjoint = all(s >= k for s, k in zip(strides, kernel))
    for backend in ("numpy", "onnxruntime"):
        run = get_backend(backend).run
        result = run(graph, {"a0": g, "a1": x}, {})["out"]
        assert_close(result, expected, rtol=0 if disjoint else 1e-6, atol=0, what=backend)
        result = run(graph, {"a0": infinite, "a1": x}, {})["out"]
        assert np.isnan(result).sum() == 0, backend
        np.testing.assert_array_equal(np.isinf(result), np.isinf(expected_infinite))


# ---- random configurations of each op ---------------------------------------------------------

@st.composite
def conv_cases(draw_from):
    rank = draw_from(st.sampled_from([1, 2]))
    groups = draw_from(st.sampled_from([1, 2, 3]))
    channels, outputs = groups * draw_from(st.integers(1, 2)), groups * draw_from(st.integers(1, 2))
    kernel = tuple(draw_from(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw_from(st.integers(1, 3)) for _ in range(rank))
    dilations = tuple(draw_from(st.integers(1, 2)) for _ in range(rank))
    pads = tuple(draw_from(st.integers(0, 2)) for _ in range(2 * rank))
    spans = [d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True)]
    spatial = tuple(draw_from(st.integers(max(1, s - pads[i] - pads[rank + i]), 7))
                    for i, s in enumerate(spans))
    batch = draw_from(st.integers(1, 2))
    op = draw_from(st.sampled_from(["conv", "conv_transpose", "conv_weight_grad"]))
    attrs = conv_window(strides, pads, dilations, groups)
    x = Arg((batch, channels) + spatial)
    if op == "conv":
        return Case(op, (x, Arg((outputs, channels // groups) + kernel)), attrs)
    windows = tuple((n + pads[i] + pads[rank + i] - spans[i]) // strides[i] + 1
                    for i, n in enumerate(spatial))
    if op == "conv_weight_grad":
        return Case(op, (x, Arg((batch, outputs) + windows)), {"kernel": kernel, **attrs})
    extra = tuple(draw_from(st.integers(0, s - 1)) for s in strides)
    full = [(n - 1) * s + span + e
            for n, s, span, e in zip(spatial, strides, spans, extra, strict=True)]
    if any(f - pads[i] - pads[rank + i] < 1 for i, f in enumerate(full)):
        pads = (0,) * 2 * rank
        attrs = conv_window(strides, pads, dilations, groups)
    return Case(op, (x, Arg((channels, outputs // groups) + kernel)),
                {**attrs, "output_padding": extra})


@st.composite
def pool_cases(draw_from):
    rank = draw_from(st.sampled_from([1, 2]))
    kernel = tuple(draw_from(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw_from(st.integers(1, 3)) for _ in range(rank))
    pads = tuple(draw_from(st.integers(0, k // 2)) for k in kernel + kernel)
    spatial = tuple(draw_from(st.integers(max(1, k - pads[i] - pads[rank + i]), 7))
                    for i, k in enumerate(kernel))
    x = Arg((draw_from(st.integers(1, 2)), draw_from(st.integers(1, 3))) + spatial)
    attrs = pool_window(kernel, strides, pads, draw_from(st.booleans()))
    op = draw_from(st.sampled_from(["max_pool", "avg_pool", "max_pool_take"]))
    if op == "avg_pool":
        return Case(op, (x,), {**attrs, "count_include_pad": draw_from(st.booleans())})
    return Case(op, (x, x) if op == "max_pool_take" else (x,), attrs)


def check_case(case: Case) -> None:
    """The op case through the checks every op case gets: values against the reference,
    float64 gradients against finite differences, and the gradient graph in float32 and float64
    on onnxruntime against numpy."""
    check_against_reference(case, np.random.default_rng(4))
    check_derivative_rule(case)
    for dtype in ("f32", "f64"):
        check_on_onnxruntime(case, dtype)


@pytest.mark.slow
@RANDOM_CONFIGS
@given(case=conv_cases())
def test_random_convolutions(case):
    check_case(case)


@RANDOM_CONFIGS
@given(case=pool_cases())
def test_random_poolings(case):
    check_case(case)


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("signature, expression, message", [
    ("x: f32[B, 3, 8, 8], w: f32[4, 2, 3, 3]", "conv2d(x, w)",
     "conv2d(): conv of x [B, 3, 8, 8] with w [4, 2, 3, 3]: w's second dim is the input "
     "channels per group, 3 / groups=1 = 3, not 2"),
    ("x: f32[B, 3, 8, 8], w: f32[4, 1, 3, 3]", "conv2d(x, w, groups=2)",
     "conv2d(): conv: groups=2 does not divide the 3 input channels"),
    ("x: f32[B, 4, 8, 8], w: f32[3, 2, 3, 3]", "conv2d(x, w, groups=2)",
     "conv2d(): conv: groups=2 does not divide the 3 output channels"),
    ("x: f32[B, 1, 2, 5], w: f32[1, 1, 3, 3]", "conv2d(x, w)",
     "conv2d(): conv's kernel spans 3 along spatial axis 0 (size 3, dilation 1), more than the "
     "padded input's 2"),
    ("x: f32[B, 1, 5, 5], w: f32[1, 1, 3, 3]", "conv2d(x, w, dilation=3)",
     "conv2d(): conv's kernel spans 7 along spatial axis 0 (size 3, dilation 3), more than the "
     "padded input's 5"),
    ("x: f32[B, 1, 8, 8], w: f32[1, 1, 3, 3]", 'conv2d(x, w, padding="full")',
     'conv2d(): padding must be an integer, a tuple of integers, "same" or "valid", not "full"'),
    ("x: f32[B, 1, 8, 8], w: f32[1, 1, 3, 3]", 'conv2d(x, w, padding="same", stride=2)',
     'conv2d(): padding="same" needs stride 1, got stride (2, 2)'),
    ("x: f32[B, 1, 8, 8], w: f32[1, 1, 3, 3]", "conv2d(x, w, stride=(1, 2, 3))",
     "conv2d(): stride takes one integer or 2 (one per spatial axis), got (1, 2, 3)"),
    ("x: f32[B, 1, 8, 8], w: f32[1, 1, 3, 3]", "conv2d(x, w, stride=0)",
     "conv2d(): conv's strides must be positive, got [0, 0]"),
    ("x: f32[B, 1, 8, 8], w: f32[2, 1, 3, 3], b: f32[3]", "conv2d(x, w, b)",
     "conv2d(): bias must be [2], one value per output channel, got f32[3]"),
    ("x: f32[B, 1, 8, 8], w: f32[2, 1, 3]", "conv2d(x, w)",
     "conv2d(): w must be [out_channels, in_channels / groups, kH, kW], got f32[2, 1, 3]"),
    ("x: f32[B, 1, 8], w: f32[2, 1, 3, 3]", "conv2d(x, w)",
     "conv2d(): conv over 2 spatial axes takes [batch, channels, height, width], got "
     "f32[B, 1, 8]"),
    ("x: f32[B, C, 8, 8], w: f32[2, 1, 3, 3]", "conv2d(x, w)",
     "conv2d(): conv needs a fixed number of channels and a size or a symbol for each spatial "
     "dim, got f32[B, C, 8, 8]"),
    ("x: f32[B, 1, 8, 8], w: f64[2, 1, 3, 3]", "conv2d(x, w)",
     "conv2d(): conv needs operands of one dtype, got f32[B, 1, 8, 8] and f64[2, 1, 3, 3]"),
    ("x: f32[B, 2, 4, 4], w: f32[2, 1, 3, 3]", "conv_transpose2d(x, w, stride=2, "
     "output_padding=2)", "conv_transpose2d(): conv_transpose needs an output padding >= 0 "
     "and below the stride per spatial axis, got [2, 2] for strides [2, 2]"),
    ("x: f32[B, 3, 4, 4], w: f32[2, 1, 3, 3]", "conv_transpose2d(x, w)",
     "conv_transpose2d(): conv_transpose of x [B, 3, 4, 4] with w [2, 1, 3, 3]: w's first dim "
     "is the input channels, 3, not 2"),
    ("x: f32[B, 2, 4, 4], w: f32[2, 1, 3, 3]", 'conv_transpose2d(x, w, padding="same")',
     "conv_transpose2d(): padding must be an integer or a tuple of integers"),
    ("x: f32[B, 1, 8, 8]", "max_pool2d(x, 2, padding=2)",
     "max_pool2d(): max_pool's pads must be at most half the kernel size, so that every window "
     "holds some of the input; got pads [2, 2, 2, 2] for kernel [2, 2]"),
    ("x: f32[B, 1, 2, 8]", "max_pool2d(x, 3, padding=(0, 1))",
     "max_pool2d(): max_pool's kernel (3) is larger than the padded input (2) along spatial "
     "axis 0"),
    ("x: f32[B, 1, 8, 8]", "avg_pool2d(x)", "avg_pool2d() is missing argument 'kernel'"),
    ("x: f32[B, 1, 8, 8]", "avg_pool2d(x, 2, ceil_mode=1)",
     "avg_pool2d(): ceil_mode must be true or false"),
    ("x: f32[B, 8]", "max_pool1d(x, 2)",
     "max_pool1d(): max_pool over 1 spatial axes takes [batch, channels, length], got f32[B, 8]"),
    ("x: f32[B, 8]", "global_avg_pool(x)",
     "global_avg_pool(): x must be [batch, channels, *spatial], got f32[B, 8]"),
    ("x: f32[B, 8]", "flatten(x, start_axis=2)",
     "flatten(): start_axis 2 is out of range for f32[B, 8]"),
    ("x: f32[B, 8]", "pad(x, (1, 2, 3))",
     "pad(): pads are pairs (begin, end) >= 0 from the last axis backwards, at most 2 of them "
     "for f32[B, 8]; got (1, 2, 3)"),
    ("x: f32[B, 3]", 'pad(x, (3, 0), mode="reflect")',
     "pad(): mode=\"reflect\" pads less than the size of the axis it pads; got pads (3, 0) for "
     "axis 1 of f32[B, 3]"),
    ("x: f32[B, 3]", 'pad(x, (1, 1), mode="wrap")',
     'pad(): mode must be one of "constant", "reflect", "edge", "replicate", not "wrap"'),
    ("x: f32[B, 3]", 'pad(x, (1, 1), mode=none)',
     'pad(): mode must be one of "constant", "reflect", "edge", "replicate", not none'),
    ("x: f32[B, 3]", 'pad(x, (1, 1), mode="edge", value=1)',
     'pad(): value is the padding of mode="constant", not of mode="edge"'),
    ("x: f32[B, 3]", 'relu("x")', '"x" cannot be used as a tensor'),
    ("x: f32[B, 3]", "x + none", "unexpected 'none'; expected an expression"),
    ("x: f32[B, 3, 8, 8], w: f32[2, 3, 3, 3]", "conv2d(none, w)",
     "none cannot be used as a tensor"),
])
def test_errors_are_located_at_the_call(signature, expression, message):
    source = f"model m({signature}) {{\n    y = {expression}\n    return y\n}}\n"
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=source)
    error = info.value
    assert error.message == message
    assert (error.line, error.col) == (2, 13 if message.startswith("unexpected") else 9)


def test_string_and_none_literals_are_values_of_call_options():
    source = """
    def block(x, w, mode, b) {
        return conv2d(pad(x, (1, 1, 1, 1), mode=mode), w, bias=b)
    }
    model m(x: f64[B, 1, 5, 5], w: f64[2, 1, 3, 3], b: f64[2]) {
        y = block(x, w, "reflect", none) + block(x, w, "edge", b) + sum(x, axis=none)
        return y
    }
    """
    model = chainrule.compile(source=source)
    rng = np.random.default_rng(5)
    x, w, b = rng.normal(size=(2, 1, 5, 5)), rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2)
    expected = sum(reference.conv(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode=mode), w,
                                  (1, 1), (0, 0, 0, 0), (1, 1), 1) for mode in ("reflect", "edge"))
    expected = expected + b.reshape(2, 1, 1) + x.sum()
    assert_close(model.run(x=x, w=w, b=b)["y"], expected, 1e-12)


# ---- the ONNX export and the numpy backends ---------------------------------------------------

LENET = """
model lenet(x: {dtype}[B, 1, 8, 8], y: i64[B]) {{
    param W1: {dtype}[6, 1, 3, 3] = he()
    param b1: {dtype}[6] = zeros()
    param W2: {dtype}[16, 6, 3, 3] = he()
    param b2: {dtype}[16] = zeros()
    param W3: {dtype}[10, 16] = glorot()
    h1 = max_pool2d(relu(conv2d(x, W1, b1, padding=1)), 2)
    h2 = avg_pool2d(relu(conv2d(h1, W2, b2, padding="same")), 2)
    logits = flatten(global_avg_pool(pad(h2, (1, 0, 0, 1)))) @ W3.T
    J = cross_entropy(logits, y)
    return J, logits
}}
"""


def lenet_feeds(dtype: str, batch: int = 6) -> dict:
    rng = np.random.default_rng(6)
    return {"x": rng.normal(size=(batch, 1, 8, 8)).astype(numpy_dtype(dtype)),
            "y": rng.integers(0, 10, batch)}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_a_small_cnn_exports_standard_onnx_and_matches_numpy(dtype):
    model = chainrule.compile(source=LENET.format(dtype=dtype))
    proto = model.to_onnx(grad=True)
    check_standard(proto)
    used = {node.op_type for node in proto.graph.node}
    if dtype == "f32":  # onnxruntime runs these in float32 only, so float64 composes them
        assert {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Pad"} <= used
    else:
        assert not {"Conv", "ConvTranspose", "AveragePool"} & used
    feeds = lenet_feeds(dtype)
    expected = model.grad(**feeds)
    actual = model.grad(backend="onnxruntime", **feeds)
    rtol, atol = TOLERANCES[dtype]
    for name in expected:
        assert_close(actual[name], expected[name], 10 * rtol, atol=atol, what=name)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_the_compiled_train_step_matches_the_interpreter(dtype):
    model = chainrule.compile(source=LENET.format(dtype=dtype))
    graph, _ = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    feeds = {**lenet_feeds(dtype), "opt.lr": np.asarray(0.01, numpy_dtype(dtype))}
    check_against_interpreter_twice(graph, feeds, model.params)


def test_the_gradients_of_pooling_need_opset_16():
    model = chainrule.compile(source=LENET.format(dtype="f32"))
    check_standard(model.to_onnx(opset=13))
    with pytest.raises(ChainruleError, match="avg_unpool needs opset 16 or newer, not 13") as info:
        model.to_onnx(grad=True, opset=13)
    assert info.value.line == 9  # the avg_pool2d, whose gradient is lowered first


def test_the_jvp_of_a_convolution_is_the_convolution_of_the_tangent():
    model = chainrule.compile(source="""
    model m(x: f64[2, 3, 6, 5], v: f64[2, 3, 6, 5], w: f64[4, 3, 3, 3]) {
        d = jvp(conv2d(x, w, stride=2, padding=1), x, v)
        return d
    }""")
    rng = np.random.default_rng(7)
    x, v, w = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(2, 3, 6, 5)), rng.normal(
        size=(4, 3, 3, 3))
    expected = reference.conv(v, w, (2, 2), (1, 1, 1, 1), (1, 1), 1)
    for backend in ("numpy", "onnxruntime"):
        for level in ("O0", "O2"):
            assert_close(model.run(backend=backend, opt_level=level, x=x, v=v, w=w)["d"],
                         expected, 1e-12, what=f"{backend} {level}")
