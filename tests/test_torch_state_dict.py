"""A layered `.nn` model that mirrors a PyTorch module loads the module's state_dict by name
and gives its eval-mode outputs, through the Python API and the command line, on both
backends. The modules, their state_dicts and outputs come from
tests/fixtures/torch_state_dict/make_state_dicts.py (which needs torch; these tests do not),
beside the mirroring `.nn` files."""
from __future__ import annotations

import numpy as np
import pytest

import chainrule
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "torch_state_dict"
NAMES = ["residual_mlp", "small_cnn"]
BACKENDS = ["numpy", "onnxruntime"]
# torch's count of training batches, which it reads only for momentum=None; not saved.
SKIPPED_BUFFER = "num_batches_tracked"


def load(path) -> dict:
    with np.load(path, allow_pickle=False) as arrays:
        return dict(arrays)


def state_dict(name: str) -> dict:
    return load(FIXTURES / f"{name}.npz")


def torch_io(name: str) -> dict:
    return load(FIXTURES / f"{name}-io.npz")


def mirror(name: str) -> chainrule.Model:
    return chainrule.compile(str(FIXTURES / f"{name}.nn"))


@pytest.mark.parametrize("name", NAMES)
def test_the_mirrors_params_and_state_are_the_modules_parameters_and_buffers(name):
    model, io = mirror(name), torch_io(name)
    params = [p.value.name for p in model.graph.params if p.trainable]
    state = [p.value.name for p in model.graph.params if not p.trainable]
    buffers = list(io["meta/buffers"])
    assert params == list(io["meta/parameters"])
    assert state == [key for key in buffers if not key.endswith(f".{SKIPPED_BUFFER}")]
    assert list(state_dict(name)) == list(model.params)


def test_the_only_buffers_left_out_are_batch_norms_batch_counts():
    buffers = set(torch_io("small_cnn")["meta/buffers"])
    left_out = buffers - set(state_dict("small_cnn"))
    assert left_out == {f"features.1.{SKIPPED_BUFFER}", f"features.5.{SKIPPED_BUFFER}"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_mirror_with_the_state_dict_loaded_gives_torchs_outputs(name, backend):
    model, io = mirror(name), torch_io(name)
    model.set_params(state_dict(name))
    logits = model.run(backend=backend, x=io["x"])["logits"]
    assert_close(logits, io["torch/logits"], 1e-5, what=f"{name} on {backend}")


@pytest.mark.parametrize("name", NAMES)
def test_without_the_state_dict_the_outputs_differ_from_torchs(name):
    """The agreement above is the loaded values' doing, not the initial ones'."""
    io = torch_io(name)
    logits = mirror(name).run(x=io["x"])["logits"]
    assert np.max(np.abs(logits - io["torch/logits"])) > 1e-2


def test_the_cnns_loaded_running_statistics_are_what_inference_reads():
    model, io = mirror("small_cnn"), torch_io("small_cnn")
    model.set_params({key: value for key, value in state_dict("small_cnn").items()
                      if "running" not in key})
    logits = model.run(x=io["x"])["logits"]
    assert np.max(np.abs(logits - io["torch/logits"])) > 1e-2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_command_line_runs_the_mirror_on_the_state_dict(name, backend, tmp_path):
    result = chainrule_cli("run", FIXTURES / f"{name}.nn", "--params", FIXTURES / f"{name}.npz",
                           "--inputs", FIXTURES / f"{name}-io.npz", "--backend", backend,
                           "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    outputs = load(tmp_path / "out.npz")
    assert_close(outputs["logits"], torch_io(name)["torch/logits"], 1e-5,
                 what=f"{name} on {backend}")
