"""Every dtype on both numpy backends: each elementwise op, reduction and matmul at f16, bf16, i8,
i32, u8 and u64 against numpy's own result computed wide (f64, or i64) and cast, in the dtype its
type says; and gradients of whole models in f16 and bf16 against float64's."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import chainrule
from chainrule.backends import get_backend
from chainrule import ChainruleError
from chainrule.ir import OPS
from chainrule.ir.types import numpy_dtype
from op_cases import CASES, FORWARD_CASES, REFERENCES, draw, forward_graph
from support.paths import ROOT

DTYPES = ("f16", "bf16", "i8", "i32", "u8", "u64")
BACKENDS = ("numpy", "numpy-check")  # compiled, interpreted
# A float dtype's spacing at 1: results may differ from the rounded wide result by a few.
EPSILON = {"f16": 2.0 ** -10, "bf16": 2.0 ** -7}
# Ops whose second operand divides or shifts: drawn from [1, 4) for every dtype.
SMALL_POSITIVE_SECOND = {"int_div", "int_mod", "left_shift", "right_shift", "pow"}


def _takes(case) -> bool:
    try:
        forward_graph(case)
    except ChainruleError:
        return False
    return True


def _in(case, dtype):
    """The case with its operands in `dtype`, but bool conditions."""
    args = tuple(arg if arg.domain == "bool" else
                 dataclasses.replace(arg, dtype=dtype, domain=arg.domain.split(":")[0])
                 for arg in case.args)
    return dataclasses.replace(case, args=args)


RUNNING_AND_MATMUL = ("cumsum", "cumprod", "matmul")


def _first_case_of_each_op():
    seen = {}
    for case in CASES + FORWARD_CASES:
        op = OPS[case.op]
        wanted = op.traits & {"elementwise", "reduction"} or case.op in RUNNING_AND_MATMUL
        # bitcast's result is no value numpy computes wide: test_ops_semantics checks its bits.
        if (wanted and not op.traits & {"fused", "stochastic"} and case.op != "bitcast"
                and case.op not in seen):
            seen[case.op] = case
    return list(seen.values())


def _dtype_of(case) -> str:
    return next(arg.dtype for arg in case.args if arg.domain != "bool")


DTYPE_CASES = [_in(case, dtype) for case in _first_case_of_each_op() for dtype in DTYPES
               if any(arg.domain != "bool" for arg in case.args) and _takes(_in(case, dtype))]


def _draw(arg, position: int, op: str, rng) -> np.ndarray:
    dtype = numpy_dtype(arg.dtype)
    if arg.domain == "bool":
        return rng.random(arg.shape) < 0.5
    if position == 1 and op in SMALL_POSITIVE_SECOND:
        return rng.integers(1, 4, arg.shape).astype(dtype)
    if arg.dtype in EPSILON:  # the op's own domain (asin's inside the unit interval)
        return draw(arg, rng).astype(dtype)
    low = 1 if arg.domain == "positive" or dtype.kind == "u" else -5
    return rng.integers(low, 6, arg.shape).astype(dtype)


def _wide(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array
    return array.astype(np.float64 if array.dtype.kind in "fV" else np.int64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", DTYPE_CASES, ids=lambda c: f"{c.id}-{_dtype_of(c)}")
def test_an_op_computes_in_each_dtype_what_numpy_computes_wide(case, backend):
    graph = forward_graph(case)
    rng = np.random.default_rng(4)
    arrays = [_draw(arg, position, case.op, rng) for position, arg in enumerate(case.args)]
    out = graph.outputs[0]
    expected_dtype = numpy_dtype(out.type.dtype)
    (node,) = graph.nodes
    with np.errstate(all="ignore"):
        wide = np.asarray(REFERENCES[case.op](*map(_wide, arrays), **node.attrs))
        expected = wide.astype(expected_dtype)
    result = get_backend(backend).run(graph, {v.name: a for v, a in
                                              zip(graph.inputs, arrays, strict=True)}, {})["out"]
    assert result.dtype == expected_dtype, f"{case.id}: {result.dtype}, not {expected_dtype}"
    assert result.shape == expected.shape
    if out.type.dtype in EPSILON:
        # A few roundings of the dtype, relative to the result's scale.
        tolerance = 4 * EPSILON[out.type.dtype] * max(1.0, float(np.abs(wide).max()))
        np.testing.assert_allclose(result.astype(np.float64), wide, rtol=0, atol=tolerance,
                                   err_msg=case.id)
    else:
        np.testing.assert_array_equal(result, expected, err_msg=case.id)


def test_the_dtype_cases_cover_every_dtype_and_the_integer_ops():
    covered = {(case.op, _dtype_of(case)) for case in DTYPE_CASES}
    assert {dtype for _, dtype in covered} == set(DTYPES)
    for op in ("add", "sum", "max", "matmul", "cumsum", "int_div", "bitwise_xor"):
        assert (op, "u8") in covered and (op, "i32") in covered, op
    assert ("exp", "bf16") in covered and ("exp", "i32") not in covered


@pytest.mark.parametrize("backend", BACKENDS + ("onnxruntime",))
@pytest.mark.parametrize("dtype", ["i8", "i32", "i64", "u16"])
def test_floor_division_and_remainder_of_integers_are_pythons(dtype, backend):
    model = chainrule.compile(source=f"""
model divide(a: {dtype}[6], b: {dtype}[6]) {{
    return a // b, a % b, int_div(a, b), int_mod(a, b, fmod=true)
}}
""")
    signed = not dtype.startswith("u")
    a = np.array([7, -7, 7, -7, 0, 9] if signed else [7, 8, 9, 0, 1, 250], numpy_dtype(dtype))
    b = np.array([2, 2, -2, -2, 3, 3] if signed else [2, 3, 4, 5, 6, 7], numpy_dtype(dtype))
    floor, remainder, truncated, fmod = model.run(a=a, b=b, backend=backend).values()
    python = [(int(x) // int(y), int(x) % int(y)) for x, y in zip(a, b, strict=True)]
    assert floor.tolist() == [q for q, _ in python] and floor.dtype == a.dtype
    assert remainder.tolist() == [r for _, r in python]
    assert truncated.tolist() == [int(int(x) / int(y)) for x, y in zip(a, b, strict=True)]
    assert (truncated * b + fmod).tolist() == a.tolist()


# ---- gradients in f16 and bf16 ------------------------------------------------------------------

CONV_MODEL = """
model conv(x: f32[B, 2, 6, 6], y: f32[B, 3, 6, 6]) {
    param w: f32[3, 2, 3, 3] = normal(0.0, 0.5)
    param b: f32[3] = normal(0.0, 0.1)
    h = conv2d(x, w, b, padding=1)
    J = mean((tanh(h) - y) ** 2)
    return J
}
"""


def _gradients_in(source: str, dtype: str, params: dict, inputs: dict, backend: str) -> dict:
    model = chainrule.compile(source=source.replace("f32", dtype))
    low = numpy_dtype(dtype)
    model.set_params({name: value.astype(low) for name, value in params.items()})
    return model.grad(backend=backend, **{name: value.astype(low) if value.dtype.kind == "f"
                                          else value for name, value in inputs.items()})


def _model_inputs(name: str, rng) -> tuple[str, dict]:
    if name == "mlp":
        return ((ROOT / "examples" / "mlp.nn").read_text(),
                {"x": rng.random((8, 784)), "y": rng.integers(0, 10, 8)})
    return CONV_MODEL, {"x": rng.normal(size=(4, 2, 6, 6)), "y": rng.normal(size=(4, 3, 6, 6))}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", EPSILON)
@pytest.mark.parametrize("model_name", ["mlp", "conv"])
def test_half_float_gradients_match_float64s_within_the_dtypes_precision(model_name, dtype,
                                                                          backend):
    """The low dtype's gradient against float64's at the same (rounded) params and inputs:
    what differs is the arithmetic alone, which rounds each op's result."""
    rng = np.random.default_rng(5)
    source, inputs = _model_inputs(model_name, rng)
    low = numpy_dtype(dtype)
    params = {name: value.astype(low).astype(np.float64) for name, value in
              chainrule.compile(source=source.replace("f32", "f64")).params.items()}
    inputs = {name: value.astype(low).astype(np.float64) if value.dtype.kind == "f" else value
              for name, value in inputs.items()}
    expected = _gradients_in(source, "f64", params, inputs, "numpy")
    actual = _gradients_in(source, dtype, params, inputs, backend)
    for name in params:
        assert actual[name].dtype == low, name
        error = np.abs(actual[name].astype(np.float64) - expected[name]).max()
        assert error <= 4 * EPSILON[dtype] * np.abs(expected[name]).max(), (name, error)
