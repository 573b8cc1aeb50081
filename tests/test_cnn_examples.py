"""The convolutional examples: numpy against onnxruntime (forward, gradient, training step),
gradcheck, and LeNet's accuracy on the digits with the CLI's defaults."""
import pytest

import chainrule
from chainrule.train import TrainConfig, Trainer
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_backends_agree, digits
from support.paths import ROOT

CNN_EXAMPLES = [ROOT / "examples" / "lenet_digits.nn", ROOT / "examples" / "resnet_block.nn"]


@pytest.mark.parametrize("path", CNN_EXAMPLES, ids=lambda p: p.stem)
def test_both_backends_agree_forward_gradient_and_train_step(path):
    batch = {name: array[:16] for name, array in digits("test").items()}
    assert_backends_agree(path, batch, training_modes=(False, True))


@pytest.mark.parametrize("path", CNN_EXAMPLES, ids=lambda p: p.stem)
def test_gradcheck_passes_on_both_backends(path):
    result = chainrule_cli("gradcheck", path, "--random-inputs", "--dim", "B=4", "--samples", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_lenet_learns_the_digits_better_than_the_mlp(backend):
    trainer = Trainer(chainrule.compile(str(CNN_EXAMPLES[0])), TrainConfig(backend=backend))
    trainer.fit(digits("train"))  # the CLI's defaults: 20 epochs, batch 32, Adam, lr 0.001
    assert trainer.evaluate(digits("test"))["acc"] >= 0.986


def test_viz_draws_the_convolutional_ops():
    from chainrule.viz import to_dot
    model = chainrule.compile(str(CNN_EXAMPLES[0]))
    graph, _ = model.compile_graph(grad=True)
    dot = to_dot(graph, "dJ/d")
    for op in ("conv", "max_pool", "conv_transpose", "conv_weight_grad", "max_unpool"):
        assert f'label="{op}"' in dot, op
