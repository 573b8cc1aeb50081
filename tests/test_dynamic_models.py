"""The models people export, with a dynamic batch (and sequence) axis, imported whole.

Each family of tests/fixtures/onnx/dynamic/ (attention, a transformer encoder layer, BERT,
GPT-2, ViT, MobileNet- and ResNet-style CNNs, a UNet), from both of torch's exporters, is
imported without fixing a dim and checked: the forward against onnxruntime on the original
file at two batch sizes (and sequence lengths), every parameter's gradient against torch's
autograd, 20 training steps, the `.nn` round trip, the re-export run in onnxruntime at both
sizes, and predict over the dynamic axis. The fixtures and their expected values come from
tests/fixtures/onnx/make_dynamic_fixtures.py, which needs torch; these tests do not.
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

import chainrule
from chainrule.ir import dsl_names
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close
from support.onnx_fixtures import OnnxFixtures
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx" / "dynamic"
FAMILIES = ("mha", "encoder_layer", "bert", "gpt2", "vit", "mobilenet", "resnet", "unet")
EXPORTERS = ("ts", "dynamo")
NAMES = [f"{family}-{exporter}" for family in FAMILIES for exporter in EXPORTERS]
# f32 forward within 1e-4 relative; gradients within 1e-4 of the largest gradient.
TOLERANCE = 1e-4
BATCHES = ("", "alt/")  # the npz's batch of B=3 (S=5), and its second one (B=2, S=7)

fixtures = OnnxFixtures(FIXTURES)
expected, inputs, meta = fixtures.expected, fixtures.inputs, fixtures.meta
imported, with_loss, loss_feeds = fixtures.imported, fixtures.with_loss, fixtures.loss_feeds
original_outputs = fixtures.original_outputs


@pytest.mark.parametrize("name", NAMES)
def test_every_family_imports_with_its_dims_symbolic(name):
    model = imported(name)
    declared = [d for v in model.graph.inputs for d in v.type.shape if not isinstance(d, int)]
    assert "B" in declared
    if name.split("-")[0] in ("mha", "encoder_layer", "bert", "gpt2"):
        assert "S" in declared


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", NAMES)
def test_the_forward_matches_onnxruntime_on_the_original_file(name, batch, backend):
    ours = imported(name).run(backend=backend, **inputs(name, batch))
    output = meta(name, "output")
    reference = original_outputs(name, batch)[output]
    assert_close(ours[output], reference, TOLERANCE, what=output)
    assert_close(ours[output], expected(name)[f"{batch}output/{output}"], TOLERANCE,
                 what=f"{output} (torch)")


@pytest.mark.parametrize("name", NAMES)
def test_every_parameters_gradient_matches_torch(name):
    model, data = with_loss(name), expected(name)
    grads = model.grad(**loss_feeds(name))
    assert_close(grads["loss"], data["loss"], TOLERANCE, what="loss")
    reference = {k.removeprefix("grad/"): v for k, v in data.items() if k.startswith("grad/")}
    scale = max(np.max(np.abs(v)) for v in reference.values())
    trainable = {p.value.name for p in model.graph.params if p.trainable}
    for initializer, value in reference.items():
        ir_name = model.onnx_names[initializer]
        assert ir_name in trainable, f"{initializer} does not train"
        assert_close(grads[ir_name], value, TOLERANCE, scale=scale, what=initializer)


@pytest.mark.parametrize("name", NAMES)
def test_twenty_training_steps_lower_the_loss(name):
    model = with_loss(name)
    feeds = loss_feeds(name)
    before = float(model.run(**feeds)["loss"])
    losses = [float(model.train_step(lr=0.01, optimizer="adam", **feeds)["loss"])
              for _ in range(20)]
    after = float(model.run(**feeds)["loss"])
    assert np.isfinite(losses).all() and np.isfinite(after)
    assert after < before, (before, losses, after)


@pytest.mark.parametrize("name", NAMES)
def test_the_dsl_round_trip_computes_the_same(name, tmp_path):
    path = tmp_path / "model.nn"
    result = chainrule_cli("import", FIXTURES / f"{name}.onnx", "-o", path)
    assert result.returncode == 0, result.stderr
    recompiled = chainrule.compile(str(path))
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as values:
        recompiled.set_params(dict(values))
    original = imported(name)
    names = dsl_names(original.graph)
    for batch in BATCHES:
        ours = recompiled.run(**{names.get(k, k): v for k, v in inputs(name, batch).items()})
        theirs = original.run(**inputs(name, batch))
        for key, value in theirs.items():
            assert np.array_equal(ours[names.get(key, key)], value), key


@pytest.mark.parametrize("name", NAMES)
def test_one_re_export_runs_in_onnxruntime_at_both_sizes(name):
    model = imported(name)
    session = onnxruntime.InferenceSession(model.to_onnx().SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    output = meta(name, "output")
    for batch in BATCHES:
        (exported,) = [r for info, r in zip(session.get_outputs(),
                                            session.run(None, inputs(name, batch)), strict=True)
                       if info.name == output]
        assert_close(exported, original_outputs(name, batch)[output], TOLERANCE, what=output)


@pytest.mark.parametrize("name", NAMES)
def test_predict_runs_over_the_dynamic_batch_axis(name):
    model = imported(name)
    data = inputs(name)
    output = meta(name, "output")
    predicted = model.predict(data, batch_size=2)[output]
    assert_close(predicted, model.run(**data)[output], 1e-5, what=output)
