"""Every dtype on the onnxruntime backend: arrays numpy holds through ml_dtypes cross a session's
edge as their carriers, and the export computes an op onnxruntime has no kernel of at a dtype in
the nearest wider one; both agree with the numpy backend."""
import numpy as np
import pytest

import chainrule
from chainrule.backends import get_backend
from chainrule.ir.types import numpy_dtype


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
