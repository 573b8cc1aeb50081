"""The examples written with layers, resnet_digits and transformer_digits: numpy against
onnxruntime (forward, gradient, training step; test_tools.py runs gradcheck on every example),
and their accuracy on the digits with the commands their headers give."""
from dataclasses import replace

import pytest

import chainrule
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer
from support.fuzzing import LONG_RUN
from support.numeric import assert_backends_agree, digits
from support.paths import ROOT

RESNET = ROOT / "examples" / "resnet_digits.nn"
TRANSFORMER = ROOT / "examples" / "transformer_digits.nn"
# Each example, the digits as it reads them ("digits" flat, "digits_rows" as 8 rows of 8) and
# the training options of its header's command.
EXAMPLES = {
    # SGD with momentum and a cosine schedule: Adam's run ends between 96% and 99.4% as the
    # numpy and BLAS versions round differently; this one above 99% on each (as measured)
    RESNET: ("digits", TrainConfig(epochs=15, lr=0.05, batch_size=32, schedule="cosine",
                                   optimizer=OptimizerSpec("sgd", momentum=0.9))),
    TRANSFORMER: ("digits_rows", TrainConfig(epochs=30, lr=0.001, batch_size=32)),
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_both_backends_agree_forward_gradient_and_train_step(path):
    data, _ = EXAMPLES[path]
    batch = {name: array[:16] for name, array in digits("test", data).items()}
    assert_backends_agree(path, batch, training_modes=(False, True), optimizer="sgd")


def test_the_resnet_names_its_params_as_torchvision_does():
    names = set(chainrule.compile(str(RESNET)).params)
    for name in ("conv1.weight", "bn1.running_var", "layer1.1.conv2.weight",
                 "layer2.0.downsample.0.weight", "layer4.0.downsample.1.bias", "fc.bias"):
        assert name in names, name
    assert not any(name.startswith("layer1.0.downsample") for name in names)


# Training to an accuracy takes seconds a run: the suite trains each example on numpy, and
# checks a train step of each backend against the other (above); the long run trains them on
# onnxruntime too.
ONNXRUNTIME_TRAINING = pytest.mark.skipif(not LONG_RUN,
                                          reason="the long run's (CHAINRULE_LONG_RUN)")


@pytest.mark.slow
@pytest.mark.parametrize("path, target, backend", [
    (RESNET, 0.985, "numpy"),
    pytest.param(RESNET, 0.985, "onnxruntime", marks=ONNXRUNTIME_TRAINING),
    (TRANSFORMER, 0.97, "numpy"),
    pytest.param(TRANSFORMER, 0.97, "onnxruntime", marks=ONNXRUNTIME_TRAINING),
], ids=["resnet_digits-numpy", "resnet_digits-onnxruntime", "transformer_digits-numpy",
        "transformer_digits-onnxruntime"])
def test_the_example_learns_the_digits(path, target, backend):
    data, config = EXAMPLES[path]
    trainer = Trainer(chainrule.compile(str(path)), replace(config, backend=backend))
    trainer.fit(digits("train", data))
    assert trainer.evaluate(digits("test", data))["acc"] >= target
