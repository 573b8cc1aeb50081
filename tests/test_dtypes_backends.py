"""Every dtype on the onnxruntime backend: arrays numpy holds through ml_dtypes cross a session's
edge as their carriers, and the export computes an op onnxruntime has no kernel of at a dtype in
the nearest wider one; both agree with the numpy backend."""
import dataclasses

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends import get_backend
from chainrule.backends.onnx_widening import kernels
from chainrule.ir import OPS, OpDef
from chainrule.ir.types import INT_DTYPES, numpy_dtype
from op_cases import CASES, FORWARD_CASES, Arg, draw, forward_graph, in_dtype
from support import cli
from support.onnxruntime_kernel_table import merged, registered_kernels, supported


def compiled(signature: str, body: str, outputs: str = "y") -> chainrule.Model:
    return chainrule.compile(source=f"model m({signature}) {{\n{body}\n    return {outputs}\n}}\n")


def bf16(values) -> np.ndarray:
    return np.asarray(values, numpy_dtype("bf16"))


def test_bf16_arrays_are_fed_to_and_fetched_from_onnxruntime_as_bf16():
    model = compiled("x: bf16[3], z: f32[2]", "    y = concat(x, bf16(z))")
    x, z = bf16([1.5, -3.0, 2.0 ** -120]), np.asarray([0.1, 7e30], np.float32)
    result = model.run(backend="onnxruntime", x=x, z=z)["y"]
    assert result.dtype == numpy_dtype("bf16")
    np.testing.assert_array_equal(result, model.run(backend="numpy", x=x, z=z)["y"])


def test_a_step_runner_holds_bf16_state_between_steps():
    model = compiled("x: f32[3], s: bf16[3]", "    t = bf16(x)\n    u = f32(s)", "t, u")
    graph, _ = model.compile_graph()
    runner = get_backend("onnxruntime").step_runner(graph, {"s": "t"})
    runner.load({"s": bf16([1.0, 2.0, 3.0])})
    first = runner.step({"x": np.asarray([4.0, 5.0, 6.0], np.float32)})
    np.testing.assert_array_equal(first["u"], [1.0, 2.0, 3.0])
    second = runner.step({"x": np.asarray([7.0, 8.0, 9.0], np.float32)})
    np.testing.assert_array_equal(second["u"], [4.0, 5.0, 6.0])
    held = runner.values()["s"]
    assert held.dtype == numpy_dtype("bf16")
    np.testing.assert_array_equal(held, bf16([7.0, 8.0, 9.0]))


def test_the_kernel_table_holds_only_kernels_this_onnxruntime_registered():
    # The committed table is the intersection of what each supported release registers; one
    # it lets through that this release lacks would fail to load. (Regenerate it with
    # `python tests/support/onnxruntime_kernel_table.py OTHER_PYTHON`.)
    registered = merged([registered_kernels()])
    for op, segments in kernels().items():
        for since, until, constraints, combos in segments:
            for opset in {since, min(until, since + 10)}:
                found = supported(registered.get(op, []), opset)
                assert found is not None and found[0] == constraints, (op, opset)
                missing = {tuple(c) for c in combos} - found[1]
                assert not missing, (op, opset, sorted(missing))


# ---- every elementwise, reduction and matmul op at every dtype it takes ------------------------
EXERCISED_DTYPES = ("f16", "bf16", "i8", "i32", "u8", "u64")
# What onnxruntime cannot compute exactly in any dtype it has a kernel for: a u64 mean (the sum
# of u64s overflows every integer dtype) and a u64 power (its exponent may pass the i64 range).
GAPS = {("mean", "u64"), ("pow", "u64")}
# A dtype's spacing near 1 bounds the difference of results that each backend rounds once from
# f32 (ops whose numpy kernel and ONNX op compute differently, a mean, a softmax, round twice).
TOLERANCES = {"f16": 2 ** -9, "bf16": 2 ** -6}


def exercised(op: OpDef) -> bool:
    return bool({"elementwise", "reduction"} & set(op.traits)) or op.name in ("matmul", "gemm")


def cases_at(dtype: str) -> list:
    """Each exercised op's first case, its f64 and f32 operands in `dtype`, where its type rule
    takes that dtype."""
    first = {}
    for case in [*CASES, *FORWARD_CASES]:
        if exercised(OPS[case.op]):
            first.setdefault(case.op, case)
    taken = []
    for case in first.values():
        case = in_dtype(case, dtype)
        try:
            forward_graph(case)
        except ChainruleError:
            continue
        taken.append(pytest.param(case, id=case.id))
    return taken


def values(arg: Arg, rng, signed: bool) -> np.ndarray:
    """Small integers (negative ones only where `signed`), or normal floats, in the argument's
    dtype and domain."""
    if arg.dtype in INT_DTYPES:
        least = -5 if signed and arg.domain == "any" and arg.dtype[0] == "i" else 1
        return rng.integers(least, 8, arg.shape).astype(numpy_dtype(arg.dtype))
    if arg.dtype in ("f16", "bf16"):
        return draw(dataclasses.replace(arg, dtype="f32"), rng).astype(numpy_dtype(arg.dtype))
    return draw(arg, rng)


def numpy_result(graph, feeds):
    """The numpy backend's output in the dtype the graph declares, or None where it fails (not
    this file's subject: onnxruntime's is)."""
    try:
        result = get_backend("numpy").run(graph, feeds, {})["out"]
    except (ChainruleError, TypeError, ValueError):
        return None
    return np.asarray(result).astype(numpy_dtype(graph.outputs[0].type.dtype))


@pytest.mark.parametrize("dtype", EXERCISED_DTYPES)
def test_every_elementwise_reduction_and_matmul_op_runs_on_onnxruntime_as_on_numpy(dtype):
    rng = np.random.default_rng(26)
    failures = []
    for param in cases_at(dtype):
        case = param.values[0]
        graph = forward_graph(case)
        declared = graph.outputs[0].type.dtype
        # An integer to a negative power has no integer result.
        feeds = {f"a{i}": values(arg, rng, signed=case.op != "pow")
                 for i, arg in enumerate(case.args)}
        try:
            actual = get_backend("onnxruntime").run(graph, feeds, {})["out"]
        except ChainruleError as error:
            if (case.op, dtype) not in GAPS:
                failures.append(f"{case.id}: {error}")
            continue
        if (case.op, dtype) in GAPS:
            failures.append(f"{case.id} runs: remove it from GAPS")
        if actual.dtype != numpy_dtype(declared):
            failures.append(f"{case.id}: dtype {actual.dtype}, declared {declared}")
            continue
        expected = numpy_result(graph, feeds)
        if expected is None:
            continue
        tolerance = TOLERANCES.get(declared, 0)
        close = np.isclose(actual.astype(np.float64), expected.astype(np.float64),
                           rtol=tolerance, atol=tolerance, equal_nan=True)
        if not close.all():
            failures.append(f"{case.id}: {actual.ravel()[:4]} where numpy gives "
                            f"{expected.ravel()[:4]}")
    assert not failures, "\n".join(failures)


def test_u64_extremes_are_ordered_and_small_integer_sums_wrap_as_numpys():
    # onnxruntime has no u64 ReduceMax or ArgMax (ordered as shifted i64s), and no u8 ReduceSum
    # (computed in i32 and cast back, which wraps).
    model = compiled("x: u64[4], z: u8[3]",
                     "    top = max(x)\n    at = argmax(x, 0)\n    total = sum(z)",
                     "top, at, total")
    feeds = {"x": np.asarray([2 ** 63, 2 ** 64 - 1, 0, 2 ** 63 - 1], np.uint64),
             "z": np.asarray([200, 100, 7], np.uint8)}
    results = model.run(backend="onnxruntime", **feeds)
    assert results["top"] == 2 ** 64 - 1 and results["top"].dtype == np.uint64
    assert results["at"] == 1
    assert results["total"] == (200 + 100 + 7) % 256 and results["total"].dtype == np.uint8


# ---- the command line --------------------------------------------------------------------------
HALF_AND_INT_MODEL = """model m(h: f16[4], k: i16[4]) {
    b = bf16(h)
    y = exp(b) * b + 1
    g = h * h
    top = maximum(k, k * 3)
    return y, g, top
}
"""


def test_run_on_onnxruntime_takes_f16_and_int_inputs_and_computes_bf16_as_numpy(tmp_path):
    (tmp_path / "m.nn").write_text(HALF_AND_INT_MODEL)
    np.save(tmp_path / "h.npy", np.asarray([0.5, 1.0, -2.0, 3.0], np.float16))
    np.save(tmp_path / "k.npy", np.asarray([1, -2, 300, 4], np.int16))
    printed = {}
    for backend in ("numpy", "onnxruntime"):
        result = cli.ok(cli.chainrule("run", "m.nn", "--input", "h=h.npy", "--input", "k=k.npy",
                              "--backend", backend, cwd=tmp_path))
        printed[backend] = result.stdout.replace(f"({backend})", "")
    assert "bfloat16[4]" in printed["onnxruntime"] and "int16[4]" in printed["onnxruntime"]
    assert printed["onnxruntime"] == printed["numpy"]


def test_an_exported_bf16_and_int16_model_loads_in_onnxruntime(tmp_path):
    import onnxruntime

    (tmp_path / "m.nn").write_text(HALF_AND_INT_MODEL)
    cli.ok(cli.chainrule("export", "m.nn", "-o", "m.onnx", cwd=tmp_path))
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"),
                                           providers=["CPUExecutionProvider"])
    h = np.asarray([0.5, 1.0, -2.0, 3.0], np.float16)
    # Only numpy's own dtypes: onnxruntime's binding cannot fetch the bf16 output.
    g, top = session.run(["g", "top"], {"h": h, "k": np.asarray([1, -2, 300, 4], np.int16)})
    np.testing.assert_array_equal(g, h * h)
    np.testing.assert_array_equal(top, [3, -2, 900, 12])
