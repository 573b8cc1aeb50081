"""A loop lowered to a scan whose length is 0 when the model runs: as a loop of no iteration,
the carried values come out as they went in and each stacked value is empty, of shape
(0, *step shape). Checked on the numpy interpreter, the compiled numpy backend, onnxruntime
and the exported model alone, forward and backward, with the length 0 from the data or from
--dim."""
import numpy as np
import onnxruntime
import pytest

import chainrule
from support.backend_checks import check_standard
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close, central_difference

SOURCE = """model m(x: f64[B, T, 3], z: f64[B, 3]) {
    param w: f64[3, 3] = glorot()
    h = z
    hs = zeros((B, T, 3), dtype=f64)
    for t in range(T) {
        h = tanh(h @ w + x[:, t])
        hs[:, t] = h
    }
    J = sum(h * z) + sum((z @ w) ** 2) + sum(hs)
    return J, h, hs
}
"""
# No sequence read: the scan steps by its length alone (a Loop in ONNX).
WITHOUT_SEQUENCE = SOURCE.replace("h @ w + x[:, t]", "h @ w")
BACKENDS = ("numpy", "numpy-check", "onnxruntime")


def feeds(length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(2, length, 3)), "z": rng.normal(size=(2, 3))}


def check_without_steps(model, results: dict, z, backend: str) -> None:
    """J, h and hs (in the outputs' order: h's output has a name of its own) of no step."""
    w = model.params["w"]
    expected = [np.sum(z * z) + np.sum((z @ w) ** 2), z, np.zeros((2, 0, 3))]
    for (name, actual), value in zip(results.items(), expected, strict=True):
        assert actual.shape == value.shape, name
        assert_close(actual, value, 1e-12, what=f"{name} on {backend}")


def scan_model(source: str = SOURCE, **options):
    model = chainrule.compile(source=source, loops="scan", **options)
    graph, _ = model.compile_graph()
    assert [node.op for node in graph.nodes if node.op == "scan"] == ["scan"]
    return model


@pytest.mark.parametrize("source", [SOURCE, WITHOUT_SEQUENCE], ids=["sequence", "no-sequence"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scan_of_no_step_passes_the_carried_values_through(source, backend):
    model = scan_model(source)
    inputs = feeds(0)
    check_without_steps(model, model.run(backend=backend, **inputs), inputs["z"], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_model_still_runs_its_steps(backend):
    model = scan_model()
    inputs = feeds(3)
    expected = model.run(backend="numpy", opt_level="O0", **inputs)
    results = model.run(backend=backend, **inputs)
    for name, value in expected.items():
        assert_close(results[name], value, 1e-10, what=f"{name} on {backend}")
    assert results["hs"].shape == (2, 3, 3)


@pytest.mark.parametrize("backend", ("numpy", "onnxruntime"))
def test_the_gradient_of_a_scan_of_no_step_equals_central_differences(backend):
    """The carried value's cotangent passes through the scan; the sequence's is empty."""
    model = scan_model()
    inputs = feeds(0)
    grads = model.grad(wrt=["w", "z", "x"], backend=backend, **inputs)
    assert grads["x"].shape == (2, 0, 3)
    for name in ("w", "z"):
        point = model.params[name] if name in model.params else inputs[name]
        expected = central_difference(lambda: float(model.run(**inputs)["J"]), point)
        assert_close(grads[name], expected, 1e-7, what=f"dJ/d{name} on {backend}")


@pytest.mark.parametrize("opset", (13, 17, 20))
@pytest.mark.parametrize("source", [SOURCE, WITHOUT_SEQUENCE], ids=["sequence", "no-sequence"])
def test_the_exported_model_runs_no_step_and_some_steps_in_onnxruntime(source, opset):
    model = scan_model(source)
    proto = model.to_onnx(opset=opset)
    check_standard(proto)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    for length in (0, 2):
        inputs = feeds(length)
        expected = model.run(**inputs)
        run = dict(zip(names, session.run(None, inputs), strict=True))
        for name in names:
            assert run[name].shape == expected[name].shape, (name, length)
            assert_close(run[name], expected[name], 1e-10, what=f"{name} at T={length}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_length_of_0_from_dims_makes_a_scan_of_no_step(backend):
    model = scan_model(dims={"T": 0})
    inputs = feeds(0)
    check_without_steps(model, model.run(backend=backend, **inputs), inputs["z"], backend)


def test_dim_0_with_loops_scan_on_the_command_line(tmp_path):
    source = tmp_path / "m.nn"
    source.write_text(SOURCE)
    np.savez(tmp_path / "in.npz", **feeds(0))
    for backend in ("numpy", "onnxruntime"):
        result = chainrule_cli("run", source, "--dim", "T=0", "--loops", "scan", "--inputs",
                               tmp_path / "in.npz", "--backend", backend)
        assert result.returncode == 0, result.stderr
        assert "float64[2, 0, 3]" in result.stdout
        assert result.stderr == ""


FROM_1 = SOURCE.replace("range(T)", "range(1, T)").replace("hs[:, t] = h", "")
NEGATIVE_SIZE = pytest.mark.xfail(strict=True, reason=(
    "the gradient's hoisted products reshape to ((T-1)*B, 3), a negative size that "
    "onnxruntime refuses when T is 0"))


def unrolled_from_1(length: int):
    return chainrule.compile(source=FROM_1, loops="unroll", dims={"T": length})


@pytest.mark.parametrize("length", (0, 1, 3))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_range_that_ends_before_it_starts_runs_no_step_as_unrolled(backend, length):
    """range(1, T) with T = 0 is empty, as in Python: its scan's length, T-1, comes to -1."""
    inputs = feeds(length)
    expected = unrolled_from_1(length).run(**inputs)
    actual = scan_model(FROM_1).run(backend=backend, **inputs)
    for (name, value), wanted in zip(actual.items(), expected.values(), strict=True):
        assert value.shape == wanted.shape, name
        assert_close(value, wanted, 1e-12, what=f"{name} on {backend} at T={length}")


@pytest.mark.parametrize("backend, length", [
    *((backend, length) for backend in BACKENDS for length in (0, 1, 3)
      if (backend, length) != ("onnxruntime", 0)),
    pytest.param("onnxruntime", 0, marks=NEGATIVE_SIZE)])
def test_the_gradient_of_a_range_that_ends_before_it_starts(backend, length):
    inputs = feeds(length)
    expected = unrolled_from_1(length).grad(wrt=["w", "z", "x"], **inputs)
    grads = scan_model(FROM_1).grad(wrt=["w", "z", "x"], backend=backend, **inputs)
    for name, value in expected.items():
        assert_close(grads[name], value, 1e-12, 1e-12, what=f"d{name} on {backend} at T={length}")


NESTED = """model m(x: f64[B, T, 3], W: f64[L, 3, 3]) {
    h = sum(x, axis=1) * 0.0 + 1.0
    for l in range(L) {
        for t in range(T) {
            h = tanh(h @ W[l] + x[:, t])
        }
        h = h * 0.5
    }
    J = sum(h ** 2)
    return J
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_inner_scan_of_no_step_in_a_scan_as_unrolled(backend):
    """The inner scan, in the outer one's body, runs no step at each of the outer steps."""
    rng = np.random.default_rng(4)
    inputs = {"x": rng.normal(size=(2, 0, 3)), "W": rng.normal(size=(3, 3, 3))}
    unrolled = chainrule.compile(source=NESTED, loops="unroll", dims={"T": 0, "L": 3})
    model = chainrule.compile(source=NESTED, loops="scan")
    assert_close(model.run(backend=backend, **inputs)["J"], unrolled.run(**inputs)["J"], 1e-12)
    grads = model.grad(wrt=["x", "W"], backend=backend, **inputs)
    for name, value in unrolled.grad(wrt=["x", "W"], **inputs).items():
        assert grads[name].shape == value.shape, name
        assert_close(grads[name], value, 1e-12, 1e-12, what=f"d{name} on {backend}")
