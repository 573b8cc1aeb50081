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

import pytest

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
imported, inputs, meta = fixtures.imported, fixtures.inputs, fixtures.meta


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
    results = imported(name).run(backend=backend, **inputs(name, batch))
    fixtures.assert_forward_matches(name, batch, results, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameters_gradient_matches_torch(name):
    fixtures.assert_gradients_match_torch(name, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_twenty_training_steps_lower_the_loss(name):
    fixtures.assert_training_lowers_the_loss(name, 20)


@pytest.mark.parametrize("name", NAMES)
def test_the_dsl_round_trip_computes_the_same(name, tmp_path):
    fixtures.assert_dsl_round_trip(name, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_one_re_export_runs_in_onnxruntime_at_both_sizes(name):
    fixtures.assert_re_export_matches(name, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_predict_runs_over_the_dynamic_batch_axis(name):
    model = imported(name)
    data = inputs(name)
    output = meta(name, "output")
    predicted = model.predict(data, batch_size=2)[output]
    assert_close(predicted, model.run(**data)[output], 1e-5, what=output)
