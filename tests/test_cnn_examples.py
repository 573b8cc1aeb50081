"""The convolutional examples: numpy against onnxruntime (forward, gradient, training step),
gradcheck, and LeNet's accuracy on the digits with the CLI's defaults."""
import subprocess
import sys

import numpy as np
import pytest

import chainrule
from chainrule.train import TrainConfig, Trainer
from conftest import ROOT
from helpers import assert_close

CNN_EXAMPLES = [ROOT / "examples" / "lenet_digits.nn", ROOT / "examples" / "resnet_block.nn"]


def digits(part: str) -> dict:
    with np.load(ROOT / "examples" / "data" / f"digits_{part}.npz") as data:
        return {"x": data["x"], "y": data["y"]}


@pytest.mark.parametrize("path", CNN_EXAMPLES, ids=lambda p: p.stem)
def test_both_backends_agree_forward_gradient_and_train_step(path):
    batch = {name: array[:16] for name, array in digits("test").items()}
    model = chainrule.compile(str(path))
    for opt_level in ("O0", "O2"):
        numpy_run = model.run(opt_level=opt_level, **batch)
        onnx_run = model.run(backend="onnxruntime", opt_level=opt_level, **batch)
        for name in numpy_run:
            assert_close(onnx_run[name], numpy_run[name], 1e-4, what=name)
        for training in (False, True):
            numpy_grad = model.grad(opt_level=opt_level, training=training, **batch)
            onnx_grad = model.grad(backend="onnxruntime", opt_level=opt_level,
                                   training=training, **batch)
            for name in numpy_grad:
                assert_close(onnx_grad[name], numpy_grad[name], 1e-4, what=name)
    steps = {}
    for backend in ("numpy", "onnxruntime"):
        trained = chainrule.compile(str(path))
        for _ in range(3):
            trained.train_step(lr=0.01, optimizer="adam", backend=backend, **batch)
        steps[backend] = trained.params
    for name in steps["numpy"]:
        assert_close(steps["onnxruntime"][name], steps["numpy"][name], 1e-4, what=name)


@pytest.mark.parametrize("path", CNN_EXAMPLES, ids=lambda p: p.stem)
def test_gradcheck_passes_on_both_backends(path):
    result = subprocess.run([sys.executable, "-m", "chainrule", "gradcheck", str(path),
                             "--random-inputs", "--dim", "B=4", "--samples", "6"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_lenet_learns_the_digits_better_than_the_mlp(backend):
    trainer = Trainer(chainrule.compile(str(CNN_EXAMPLES[0])), TrainConfig(backend=backend))
    trainer.fit(digits("train"))  # the CLI's defaults: 20 epochs, batch 32, Adam, lr 0.001
    assert trainer.evaluate(digits("test"))["acc"] >= 0.986
