"""The recurrent fixtures (tests/fixtures/onnx/recurrent/, made by make_recurrent_fixtures.py
from torch's nn.LSTM, nn.GRU and nn.RNN) agree with themselves: onnxruntime on each .onnx gives
the output its .npz holds, at both batches. The script needs torch; these tests do not."""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx" / "recurrent"
FAMILIES = ("lstm", "lstm2bi", "gru", "gru2bi", "rnn", "rnn_relu_bi", "lstm_h0",
            "lstm_classifier")
NAMES = [f"{family}-{exporter}" for family in FAMILIES for exporter in ("ts", "dynamo")]
BATCHES = ("", "alt/")  # B=3 S=5, and B=2 S=7 (S=5 where the exporter fixed it)


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as data:
        return dict(data)


def session(name: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # some dynamo files declare the example's S on the output
    return onnxruntime.InferenceSession(str(FIXTURES / f"{name}.onnx"), options,
                                        providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_reproduces_the_outputs(name):
    data, run = expected(name), session(name)
    output = str(data["meta/output"])
    for batch in BATCHES:
        prefix = f"{batch}input/"
        feeds = {k.removeprefix(prefix): v for k, v in data.items() if k.startswith(prefix)}
        (got,) = run.run([output], feeds)
        want = data[f"{batch}output/{output}"]
        assert got.shape == want.shape, (batch, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{name} {batch}")

