"""The CLI, run as a user runs it (in process: tests/support/cli.py), asserting on output and
files."""
import numpy as np
import onnx
import onnxruntime

from support.cli import chainrule
from support.paths import ROOT

MLP = str(ROOT / "examples" / "mlp.nn")


def test_check_prints_a_summary():
    result = chainrule("check", MLP)
    assert result.returncode == 0, result.stderr
    assert "model mlp ok" in result.stdout
    assert "x: f32[B, 784]" in result.stdout
    assert "W1: f32[256, 784] = normal(0.0, 0.01)  (200,704 values)" in result.stdout
    assert "J: f32[]  (objective)" in result.stdout
    assert "nodes: 16" in result.stdout


def test_ir_prints_forward_and_backward_with_locations():
    forward = chainrule("ir", MLP)
    assert forward.returncode == 0, forward.stderr
    assert "%h = relu(%z) : f32[B, 256]" in forward.stdout
    assert "dJ/d" not in forward.stdout
    backward = chainrule("ir", MLP, "--grad")
    assert "%dJ/dz = mul(%dJ/dh, %dJ/dh.cast) : f32[B, 256]" in backward.stdout
    assert "return %J, %o, %dJ/dW1, %dJ/dW2" in backward.stdout
    assert "mlp.nn:8:9" in backward.stdout


def test_run_needs_inputs_and_says_which():
    result = chainrule("run", MLP)
    assert result.returncode == 1
    assert "x: f32[B, 784], y: i64[B]" in result.stderr
    assert "--random-inputs" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_random_inputs_saves_outputs(tmp_path):
    out = tmp_path / "out.npz"
    result = chainrule("run", MLP, "--random-inputs", "--dim", "B=3", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "o  float32[3, 10]" in result.stdout
    with np.load(out, allow_pickle=False) as saved:
        assert saved["o"].shape == (3, 10) and saved["J"].shape == ()


def test_run_from_data_files_on_both_backends(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(2, 784)).astype(np.float32),
             y=np.array([1, 7]))
    outputs = {}
    for backend in ("numpy", "onnxruntime"):
        out = tmp_path / f"{backend}.npz"
        result = chainrule("run", MLP, "--inputs", tmp_path / "data.npz", "--backend", backend,
                           "-o", out)
        assert result.returncode == 0, result.stderr
        outputs[backend] = dict(np.load(out))
    np.testing.assert_allclose(outputs["numpy"]["o"], outputs["onnxruntime"]["o"], rtol=1e-5,
                               atol=1e-7)


def test_grad_writes_objective_and_gradients_by_name(tmp_path):
    out = tmp_path / "grads.npz"
    result = chainrule("grad", MLP, "--random-inputs", "--dim", "B=8", "-o", out)
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["J", "W1", "W2"]
        assert saved["W1"].shape == (256, 784) and saved["W2"].shape == (10, 256)
        # Random labels lie in range, so the loss is close to log(10) at this init.
        assert abs(float(saved["J"]) - np.log(10)) < 0.1


def test_grad_wrt_selects_params(tmp_path):
    out = tmp_path / "grads.npz"
    result = chainrule("grad", MLP, "--random-inputs", "--wrt", "W2", "-o", out)
    assert result.returncode == 0, result.stderr
    assert sorted(np.load(out).files) == ["J", "W2"]


def test_params_file_replaces_initial_values(tmp_path):
    np.savez(tmp_path / "p.npz", W2=np.zeros((10, 256), np.float32))
    result = chainrule("run", MLP, "--random-inputs", "--params", tmp_path / "p.npz",
                       "-o", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    assert np.all(np.load(tmp_path / "out.npz")["o"] == 0)
    np.savez(tmp_path / "bad.npz", W3=np.zeros((10, 256), np.float32))
    bad = chainrule("run", MLP, "--random-inputs", "--params", tmp_path / "bad.npz")
    assert bad.returncode == 1 and "unknown param(s) W3" in bad.stderr
    np.savez(tmp_path / "shape.npz", W2=np.zeros((10, 255), np.float32))
    wrong = chainrule("run", MLP, "--random-inputs", "--params", tmp_path / "shape.npz")
    assert wrong.returncode == 1 and "param 'W2' is declared f32[10, 256]" in wrong.stderr


def test_export_grad_runs_in_onnxruntime(tmp_path):
    path = tmp_path / "mlp.onnx"
    result = chainrule("export", MLP, "--grad", "-o", path)
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    J, o, dW1, dW2 = session.run(None, {"x": rng.normal(size=(4, 784)).astype(np.float32),
                                       "y": np.array([0, 1, 2, 3])})
    assert dW1.shape == (256, 784) and dW2.shape == (10, 256) and o.shape == (4, 10)


def test_export_outputs_prunes_the_label_input(tmp_path):
    path = tmp_path / "inference.onnx"
    result = chainrule("export", MLP, "--outputs", "o", "-o", path)
    assert result.returncode == 0, result.stderr
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]


def test_dsl_error_prints_location_line_and_caret(tmp_path):
    bad = tmp_path / "bad.nn"
    bad.write_text("model m(x: f32[B, 3]) {\n    param W: f32[4, 5] = normal(0.0, 1.0)\n"
                   "    z = x @ W.T\n    return z\n}\n")
    result = chainrule("check", bad)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"{bad}:3:9: error: matmul of [B, 3] and [5, 4]: inner dims 3 and 5 differ"
    assert lines[1] == "        z = x @ W.T"
    assert lines[2] == "            ^"  # under the x of "x @ W.T"
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2():
    result = chainrule("frobnicate", MLP)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_ir_emits_the_generated_python_and_its_memory_plan(monkeypatch):
    # numpy op by op; test_fused_kernels.py reads the code that calls fused kernels
    monkeypatch.setenv("CHAINRULE_FUSED_KERNELS", "0")
    result = chainrule("ir", MLP, "--grad", "-O2", "--emit", "python", "--print-memory-plan")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("def run(")
    assert "np.matmul(v0, v2.T)  # %z" in result.stdout
    assert "    del " in result.stdout and "= K_gemm_acc(" in result.stdout
    assert "# memory plan for mlp:" in result.stdout
    assert "%dJ/dW1 = gemm_acc: frees %dJ/dz" in result.stdout
    # -O1 neither fuses nor folds the weight decay into the products: its adds reuse buffers
    result = chainrule("ir", MLP, "--grad", "-O1", "--emit", "python", "--print-memory-plan")
    assert ", out=" in result.stdout
    assert "%dJ/dW1 = add: writes into %dJ/dW1.via_pow" in result.stdout


def test_ir_passes_flags():
    result = chainrule("ir", MLP, "--grad", "-O1", "--print-after-all", "--time-passes",
                       "--verify-each")
    assert result.returncode == 0, result.stderr
    for name in ("autodiff", "simplify", "cse", "dce"):
        assert f"# ----- IR after {name}" in result.stdout
    assert "# ----- pass timings -----" in result.stdout
    explicit = chainrule("ir", MLP, "--passes", "autodiff,dce")
    assert "%dJ/dW1 = add" in explicit.stdout
    unknown = chainrule("ir", MLP, "--passes", "autodif")
    assert unknown.returncode == 1 and "unknown pass(es) autodif" in unknown.stderr


def test_print_after_an_unknown_pass_is_a_usage_error():
    result = chainrule("ir", MLP, "--print-after", "nosuchpass")
    assert result.returncode == 2 and "unknown pass(es) nosuchpass" in result.stderr


def test_viz_colours_only_the_backward_graph_even_after_rewrites():
    forward = chainrule("viz", MLP, "-O2")
    assert forward.returncode == 0 and "#fbe3cf" not in forward.stdout  # no backward colour
    backward = chainrule("viz", MLP, "-O2", "--grad")
    assert "#fbe3cf" in backward.stdout and 'label="z\\n[B, 256]"' in backward.stdout
    assert 'fillcolor="#dbe9f6", label="z\\n[B, 256]"' in backward.stdout  # z stays forward


def test_every_command_names_a_function_that_exists():
    """Command modules load when their command runs: a wrong name in the table would surface
    only then."""
    import importlib

    from chainrule.cli.parser import COMMANDS

    for command, path in COMMANDS.items():
        module, function = path.split(".")
        assert callable(getattr(importlib.import_module(f"chainrule.cli.{module}"), function)), \
            command
