"""Numbers: central finite differences, relative comparisons, the digits data, and the two
backends' agreement on an example."""
from __future__ import annotations

import numpy as np

from .paths import ROOT


def central_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, f(x) a float64 scalar."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    out = grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        plus = f()
        flat[i] = saved - eps
        minus = f()
        flat[i] = saved
        out[i] = (plus - minus) / (2 * eps)
    return grad


def assert_close(actual, expected, rtol, atol=0.0, what="", scale=None):
    """max |actual - expected| <= rtol * scale + atol; scale defaults to max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if scale is None:
        scale = max(np.max(np.abs(expected), initial=0.0), 1e-12)
    error = np.max(np.abs(actual - expected), initial=0.0)
    assert error <= rtol * scale + atol, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def digits(part: str, name: str = "digits") -> dict:
    """The digits data shipped in examples/data: `train` or `test`, as `name` holds them
    ("digits": x f32[N, 64]; "digits_rows": x f32[N, 8, 8])."""
    with np.load(ROOT / "examples" / "data" / f"{name}_{part}.npz") as data:
        return {"x": data["x"], "y": data["y"]}


def assert_backends_agree(path, batch: dict, training_modes=(False,), optimizer="adam") -> None:
    """An example on numpy and onnxruntime: forward and gradient at -O0 and -O2 (in each of
    `training_modes`), and three training steps of `optimizer`. Adam's first steps move each
    param by about lr times its gradient's sign, so a gradient that is zero but for rounding
    (attention's key bias: softmax ignores a shift every key shares) makes the backends differ
    by a whole lr; sgd's steps keep the gradients' agreement."""
    import chainrule
    model = chainrule.compile(str(path))
    for opt_level in ("O0", "O2"):
        numpy_run = model.run(opt_level=opt_level, **batch)
        onnx_run = model.run(backend="onnxruntime", opt_level=opt_level, **batch)
        for name in numpy_run:
            assert_close(onnx_run[name], numpy_run[name], 1e-4, what=name)
        for training in training_modes:
            numpy_grad = model.grad(opt_level=opt_level, training=training, **batch)
            onnx_grad = model.grad(backend="onnxruntime", opt_level=opt_level,
                                   training=training, **batch)
            for name in numpy_grad:
                assert_close(onnx_grad[name], numpy_grad[name], 1e-4, what=name)
    steps = {}
    for backend in ("numpy", "onnxruntime"):
        trained = chainrule.compile(str(path))
        for _ in range(3):
            trained.train_step(lr=0.01, optimizer=optimizer, backend=backend, **batch)
        steps[backend] = trained.params
    for name in steps["numpy"]:
        assert_close(steps["onnxruntime"][name], steps["numpy"][name], 1e-4, what=name)
