"""torch's nn.LSTM, nn.GRU and nn.RNN (1 and 2 layers, bidirectional, from initial states, under
a classifier head), through both of torch's exporters, imported onto `scan`.

Each fixture of tests/fixtures/onnx/recurrent/ imports with its batch (and, where the exporter
kept it, its sequence) dims symbolic and prints as IR text that parses back; the forward, on
numpy and on onnxruntime, matches onnxruntime on the original file at both of the fixture's
batches; the `.nn` file `chainrule import` writes computes the same, bit for bit, and one
re-export of the import runs in onnxruntime; every parameter's gradient matches torch's
autograd; and a few Adam steps lower the loss. The fixtures come from
tests/fixtures/onnx/make_recurrent_fixtures.py, which needs torch; these tests do not.
"""
from __future__ import annotations

import pytest

from chainrule.ir.printer import print_graph
from chainrule.ir.text import graph_differences, parse_graph
from support.onnx_fixtures import OnnxFixtures
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx" / "recurrent"
FAMILIES = ("lstm", "lstm2bi", "gru", "gru2bi", "rnn", "rnn_relu_bi", "lstm_h0",
            "lstm_classifier")
EXPORTERS = ("ts", "dynamo")
NAMES = [f"{family}-{exporter}" for family in FAMILIES for exporter in EXPORTERS]
# The dynamo exporter unrolls nn.RNN over the example's 5 steps: no recurrent node, and S
# fixed in the input itself.
UNROLLED = {"rnn-dynamo", "rnn_relu_bi-dynamo"}
# f32 forward within 1e-4 relative; gradients within 1e-4 of the largest gradient.
TOLERANCE = 1e-4
BATCHES = ("", "alt/")  # the npz's batch of B=3, S=5, and its second one (B=2, S=7)

fixtures = OnnxFixtures(FIXTURES)
imported, inputs = fixtures.imported, fixtures.inputs


@pytest.mark.parametrize("name", NAMES)
def test_every_fixture_imports_onto_scan_with_its_dims_symbolic(name):
    model = imported(name)
    declared = {d for v in model.graph.inputs for d in v.type.shape if not isinstance(d, int)}
    assert declared == ({"B"} if name in UNROLLED else {"B", "S"})
    assert any(node.op == "scan" for node in model.graph.nodes) == (name not in UNROLLED)


@pytest.mark.parametrize("name", NAMES)
def test_every_import_prints_as_ir_text_that_parses_back(name):
    """The unrolled ones too: their slices run to -2**63, the IR text's least integer."""
    graph = imported(name).graph
    assert graph_differences(graph, parse_graph(print_graph(graph))) == []


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", NAMES)
def test_the_forward_matches_onnxruntime_on_the_original_file(name, batch, backend):
    results = imported(name).run(backend=backend, **inputs(name, batch))
    fixtures.assert_forward_matches(name, batch, results, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_the_dsl_round_trip_computes_the_same(name, tmp_path):
    fixtures.assert_dsl_round_trip(name, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_one_re_export_runs_in_onnxruntime_at_both_sizes(name):
    fixtures.assert_re_export_matches(name, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_every_parameters_gradient_matches_torch(name):
    fixtures.assert_gradients_match_torch(name, TOLERANCE)


@pytest.mark.parametrize("name", NAMES)
def test_five_adam_steps_lower_the_loss(name):
    fixtures.assert_training_lowers_the_loss(name, 5)
