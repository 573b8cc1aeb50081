"""Hostile input: no traceback, no silent wrong answer, no lost work.

One test (or one parametrized case) per reproducer of each kind: scalars and empty tensors,
outputs that are inputs, sizes, damaged data files, output paths, non-finite training, labels,
resuming, and overflow.
"""
import io
import os
import signal
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import onnx
import pytest

import chainrule
from chainrule import fileio
from chainrule.fileio import load_npy, load_npz
from chainrule.ir import ChainruleError, limits
from chainrule.train import CHECKPOINT_FILE, CheckpointLock
from support.paths import ROOT
from support.training import edit_meta
from support.cli import chainrule as chainrule_cli
from support.cli import chainrule_process, fails

DIGITS = ROOT / "examples" / "digits_classifier.nn"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"


def error_of(source: str) -> ChainruleError:
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source)
    return caught.value


def write_model(tmp_path, source: str, name="m.nn"):
    path = tmp_path / name
    path.write_text(source)
    return path


# ---- scalars and empty tensors ----------------------------------------------------------------

SCALAR = "model m() {\n    J = f32(1.0)\n    return J\n}\n"


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_a_model_without_inputs_or_params_runs_and_differentiates(backend):
    model = chainrule.compile(source=SCALAR)
    for _ in range(2):  # the second call takes the cached, checked path
        assert model.run(backend=backend) == {"J": np.float32(1.0)}
        assert model.grad(backend=backend) == {"J": np.float32(1.0)}


@pytest.mark.parametrize("command", ["run", "grad"])
def test_a_model_without_inputs_through_the_cli(tmp_path, command):
    result = chainrule_cli(command, write_model(tmp_path, SCALAR))
    assert result.returncode == 0, result.stderr
    assert "J  float32[] = 1" in result.stdout


@pytest.mark.parametrize("source, message, line", [
    ("model m(x: f32[B, 3]) {\n    param W: f32[0] = glorot()\n    J = sum(x)\n    return J\n}",
     "a param with a dim of size 0 holds nothing to learn", 2),
    ("model m(x: f32[B, 0], y: i64[B]) {\n    J = cross_entropy(x, y)\n    return J\n}",
     "cross_entropy over 0 classes is undefined", 2),
    ("model m(x: f32[B, 4]) {\n    e = x[:, 2:2]\n    J = argmax(e, axis=1)\n    return J\n}",
     "argmax over an empty axis is undefined (axis 1 of f32[B, 0] has size 0)", 3),
])
def test_empty_params_and_undefined_reductions_are_refused_at_check_with_a_location(
        source, message, line):
    error = error_of(source)
    assert message in error.message and error.line == line


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_an_empty_batch_gives_the_same_mean_on_every_backend(backend):
    model = chainrule.compile(source="model m(x: f32[B, 3]) {\n    J = mean(x)\n    return J\n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "Mean of empty slice"
        result = model.run(backend=backend, x=np.zeros((0, 3), np.float32))
    assert np.isnan(result["J"]) and result["J"].dtype == np.float32


def test_the_transpose_of_a_scalar_exports():
    model = chainrule.compile(source="model m(x: f32[]) {\n    y = x.T * 2.0\n    return y\n}")
    proto = model.to_onnx()
    onnx.checker.check_model(proto, full_check=True)


# ---- outputs that are inputs ------------------------------------------------------------------

ALIAS = """model m(x: f32[3]) {
    param W: f32[] = ones()
    return W, x
}"""


def test_an_objective_that_is_a_param_keeps_its_value_and_its_gradient(tmp_path):
    out = tmp_path / "g.npz"
    result = chainrule_cli("grad", write_model(tmp_path, ALIAS), "--random-inputs", "-o", out)
    assert result.returncode == 0, result.stderr
    with np.load(out) as saved:
        assert sorted(saved.files) == ["W", "dW/dW"]
        assert saved["W"] == np.float32(1.0) and saved["dW/dW"] == np.float32(1.0)


@pytest.mark.parametrize("grad", [False, True])
def test_outputs_that_are_inputs_export_with_shapes(grad):
    model = chainrule.compile(source=ALIAS.replace("return W, x", "J = sum(W * x)\n    return J, W, x"))
    proto = model.to_onnx(grad=grad)
    onnx.checker.check_model(proto, full_check=True)
    for output in proto.graph.output:
        assert output.type.tensor_type.HasField("shape"), output.name


# ---- sizes ------------------------------------------------------------------------------------

def test_a_huge_dim_is_refused_before_allocation_with_its_size_in_bytes():
    result = fails(chainrule_cli("run", ROOT / "examples" / "mlp.nn", "--random-inputs", "--dim",
                                 f"B={10 ** 12}"))
    # --dim fixes B when compiling, so the first product is refused, with its size.
    assert "matmul gives f32[1000000000000, 256], which holds 256,000,000,000,000 values " \
           "(1,024,000,000,000,000 bytes)" in result.stderr


def test_random_inputs_larger_than_memory_are_refused_before_allocation(tmp_path):
    inputs = ", ".join(f"{name}: f32[B, 1000]" for name in "abcd")
    total = " + ".join(f"sum({name})" for name in "abcd")
    model = write_model(tmp_path, f"model m({inputs}) {{\n    J = {total}\n    return J\n}}\n")
    result = fails(chainrule_cli("run", model, "--random-inputs", "--dim", "B=2000000"))
    assert "the random inputs would take 32,000,000,000 bytes, more than the" in result.stderr


def test_negative_dims_are_usage_errors():
    result = fails(chainrule_cli("run", ROOT / "examples" / "mlp.nn", "--random-inputs",
                                 "--dim", "B=-3"), code=2)
    assert "argument --dim: B: expected a whole number from 0 to" in result.stderr


def test_params_larger_than_memory_are_refused_before_drawing():
    params = "\n".join(f"    param W{i}: f32[46000, 46000] = zeros()" for i in range(4))
    error = error_of(f"model m(x: f32[3]) {{\n{params}\n    J = sum(x)\n    return J\n}}")
    assert "the model's 4 params would take 33,856,000,000 bytes" in error.message


def test_broadcasting_to_ten_billion_values_is_refused():
    error = error_of("model m(x: f32[]) {\n"
                     "    y = broadcast_to(x, (100000, 100000))\n    return y\n}")
    assert "broadcast_to gives f32[100000, 100000], which holds 10,000,000,000 values" \
        in error.message
    assert error.line == 2


def test_the_node_limit_applies_to_the_whole_model(monkeypatch):
    monkeypatch.setattr(limits, "MAX_NODES", 200)
    calls = "\n".join(f"    y{i} = f(x)" for i in range(10))
    source = ("def f(x) {\n    return tanh(tanh(tanh(x)))\n}\n"
              "def g(x) {\n    return f(f(f(f(f(f(f(f(f(f(x))))))))))\n}\n"
              f"model m(x: f32[3]) {{\n{calls.replace('f(x)', 'g(x)')}\n"
              f"    return y9\n}}\n")
    error = error_of(source)
    assert "grows past 200 graph nodes" in error.message


def test_an_npy_header_claiming_a_huge_shape_is_refused(tmp_path):
    path = tmp_path / "big.npy"
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10 ** 6, 10 ** 6)})
    path.write_bytes(buffer.getvalue() + b"\0" * 16)
    with pytest.raises(ChainruleError, match=r"header promises .*\(4,000,000,000,000 bytes\)"):
        load_npy(path)


# ---- damaged data files -----------------------------------------------------------------------

def test_bit_flipped_npz_files_give_one_clean_message(tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(64, dtype=np.float32).reshape(8, 8), y=np.arange(8))
    good = buffer.getvalue()
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    outcomes = set()
    for _ in range(300):
        data = bytearray(good)
        for position in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[position] ^= 1 << int(rng.integers(0, 8))
        path.write_bytes(bytes(data))
        try:
            load_npz(path)
            outcomes.add("read")
        except ChainruleError as error:
            assert str(path) in str(error)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_zip_bomb_is_refused_by_its_declared_size_before_inflating(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(10 ** 7, np.float32))  # 40 MB in about 40 KB
    assert path.stat().st_size < 100_000
    monkeypatch.setattr(limits, "available_memory", lambda: 10 ** 6)
    inflated = []
    original = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read",
                        lambda self, n=-1: inflated.append(n) or original(self, n))
    with pytest.raises(ChainruleError, match="would take 40,000,000 bytes"):
        load_npz(path)
    assert all(0 <= n < 10 ** 5 for n in inflated)  # only the header was read


def test_a_member_whose_zip_size_disagrees_with_its_header_is_refused(tmp_path):
    path = tmp_path / "lie.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 8 + b"\0" * 10 ** 6)
    with pytest.raises(ChainruleError, match="header promises \\[2\\] float32"):
        load_npz(path)


# ---- output paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("option, target", [
    ("-o", "{tmp}"), ("-o", "{tmp}/file/out.npz"), ("--checkpoint", "{tmp}/file"),
    ("--log-jsonl", "{tmp}"), ("-o", "/sys/chainrule-out.npz"),
])
def test_unwritable_outputs_fail_before_any_work(tmp_path, option, target):
    (tmp_path / "file").write_text("")
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, option,
                                 target.format(tmp=tmp_path)))
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot be" in result.stderr


def test_a_directory_given_as_the_model_is_one_line():
    result = fails(chainrule_cli("check", ROOT / "examples"))
    assert result.stderr.strip() == f"{ROOT / 'examples'}: error: a directory, not a file"


# ---- NaN and Inf during training --------------------------------------------------------------

def test_training_stops_at_the_first_non_finite_step_and_keeps_the_checkpoint(tmp_path):
    checkpoint, out = tmp_path / "ckpt", tmp_path / "p.npz"
    assert chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                         "--checkpoint", checkpoint, "-q").returncode == 0
    kept = (checkpoint / CHECKPOINT_FILE).read_bytes()
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "2",
                                 "--resume", checkpoint, "--override", "--optimizer", "sgd",
                                 "--lr", "1e30", "-o", out))
    assert "step 14 (epoch 2, batch 2) made the objective J" in result.stderr
    assert "NaN or Inf; training stopped" in result.stderr and "--check-numerics" in result.stderr
    assert f"the checkpoint in {checkpoint} (epoch 1) is kept" in result.stderr
    assert f"nothing was written to {out}" in result.stderr
    assert not out.exists() and (checkpoint / CHECKPOINT_FILE).read_bytes() == kept


def test_allow_nonfinite_trains_on(tmp_path):
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                           "--optimizer", "sgd", "--lr", "1e30", "--allow-nonfinite", "-q")
    assert result.returncode == 0, result.stderr


def test_a_non_finite_result_names_check_numerics(tmp_path):
    model = write_model(tmp_path, "model m(x: f32[3]) {\n    J = sum(exp(x * 1000.0))\n"
                                  "    return J\n}\n")
    result = chainrule_cli("run", model, "--random-inputs")
    assert result.returncode == 0
    assert "warning: J holds NaN or Inf" in result.stderr and "--check-numerics" in result.stderr
    located = fails(chainrule_cli("run", model, "--random-inputs", "--check-numerics"))
    assert "m.nn:2:" in located.stderr


# ---- resume -----------------------------------------------------------------------------------

@pytest.fixture
def one_epoch(tmp_path):
    checkpoint = tmp_path / "ckpt"
    assert chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                         "--checkpoint", checkpoint, "-q").returncode == 0
    return checkpoint


def test_resume_with_other_settings_lists_the_changes(one_epoch):
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "3",
                                 "--batch-size", "16", "--lr", "0.01", "--resume", one_epoch))
    for change in ("epochs 1 -> 3", "batch size 32 -> 16", "lr 0.001 -> 0.01"):
        assert change in result.stderr
    assert "--override" in result.stderr
    accepted = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "3",
                             "--optimizer", "sgd", "--resume", one_epoch, "--override", "-q")
    assert accepted.returncode == 0, accepted.stderr
    assert "overriding the checkpoint's settings: epochs 1 -> 3; optimizer adam -> sgd" \
        in accepted.stderr
    assert "the optimizer changed, so its state starts afresh" in accepted.stderr


@pytest.mark.parametrize("edit, field", [
    (lambda meta: meta.update(epoch="two"), "'epoch' is 'two'"),
    (lambda meta: meta.pop("rng"), "'rng' is missing"),
    (lambda meta: meta.update(format=99), "'format' is 99"),
    (lambda meta: meta.update(rng={"bit_generator": "PCG64", "state": 5}), "random state"),
])
def test_hand_edited_checkpoint_meta_gets_a_clean_message(one_epoch, edit, field):
    edit_meta(one_epoch, edit)
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                                 "--resume", one_epoch))
    assert field in result.stderr


@pytest.mark.subprocess  # the lock is the process': the second training must be another one
def test_a_second_training_on_one_checkpoint_directory_refuses_to_start(tmp_path):
    checkpoint = tmp_path / "ckpt"
    with CheckpointLock(checkpoint):
        result = fails(chainrule_process("train", DIGITS, "--data", DIGITS_DATA, "--epochs",
                                         "1", "--checkpoint", checkpoint))
    assert f"another training is writing checkpoints here (process {os.getpid()})" \
        in result.stderr
    assert result.stdout == ""


@pytest.mark.subprocess
def test_a_dead_process_does_not_hold_the_lock_and_its_temporary_files_go(tmp_path):
    checkpoint = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from chainrule.train import CheckpointLock\n"
         f"with CheckpointLock({str(checkpoint)!r}):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline().strip() == "held"
    leftover = checkpoint / f".{CHECKPOINT_FILE}.abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                           "--checkpoint", checkpoint, "-q")
    assert result.returncode == 0, result.stderr
    assert not leftover.exists() and (checkpoint / CHECKPOINT_FILE).is_file()


def test_fileio_probe_leaves_nothing_behind(tmp_path):
    fileio.check_writable(tmp_path / "out.npz")
    fileio.check_writable(tmp_path / "new" / "dir", directory=True)
    assert list(tmp_path.iterdir()) == []


# ---- labels computed inside the model ---------------------------------------------------------

COMPUTED_LABELS = """model m(x: f32[B, 3], z: f32[B]) {
    y = i64(z)
    L = cross_entropy(x, y)
    hot = one_hot(y, n=3)
    return L, hot
}"""


@pytest.mark.parametrize("z", [[5.0, 1.0], [-1.0, 0.0]])
def test_computed_labels_out_of_range_are_never_silent(z):
    model = chainrule.compile(source=COMPUTED_LABELS)
    feeds = {"x": np.zeros((2, 3), np.float32), "z": np.array(z, np.float32)}
    with pytest.raises(ChainruleError, match=r"labels must lie in \[0, 3\)") as caught:
        model.run(**feeds)
    assert caught.value.line == 3
    try:  # onnxruntime has no op to refuse them: it fails, located, or the results are NaN
        outputs = model.run(backend="onnxruntime", **feeds)
    except ChainruleError as error:
        assert error.line == 3 and "onnxruntime failed while computing %L" in error.message
    else:
        assert np.isnan(outputs["L"]) and np.isnan(outputs["hot"][0]).all()


def test_onnxruntime_failures_point_at_the_dsl_line():
    model = chainrule.compile(source="model m(x: f32[B, 3], z: f32[B]) {\n    k = i64(z)\n"
                              "    t = take(x, k, axis=1)\n    return t\n}")
    with pytest.raises(ChainruleError, match="onnxruntime failed while computing %t = take") \
            as caught:
        model.run(backend="onnxruntime", x=np.zeros((2, 3), np.float32),
                  z=np.array([7.0, 0.0], np.float32))
    assert caught.value.line == 3



def test_a_graph_onnxruntime_cannot_load_is_one_error_not_a_traceback(tmp_path, monkeypatch):
    """Should the exporter ever write a model onnxruntime refuses, the user reads one line
    that says whose fault it is and how to go on."""
    import onnxruntime

    def refuse(*args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.Fail(
            "[ONNXRuntimeError] : 1 : FAIL : Load model from memory failed: a made-up fault")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    result = fails(chainrule_cli("run", DIGITS, "--random-inputs", "--dim", "B=2", "--backend",
                                 "onnxruntime"))
    assert "onnxruntime could not load the exported graph" in result.stderr
    assert "a made-up fault" in result.stderr and "Traceback" not in result.stderr

# ---- booleans where ONNX has no kernel ---------------------------------------------------------

@pytest.mark.parametrize("expression", ["y < z", "y >= z", "where(y, z, not z)",
                                        "where(y, 1.0, 2.0)"])
def test_boolean_comparisons_and_where_export_and_agree(expression):
    """Found by the long fuzz run: ONNX orders numbers only, and onnxruntime has no boolean
    Where; both are lowered through ops that take bools."""
    model = chainrule.compile(source=f"model m(y: bool[4], z: bool[4]) {{\n    s = {expression}\n"
                              f"    return s\n}}\n")
    onnx.checker.check_model(model.to_onnx(), full_check=True)
    feeds = {"y": np.array([True, True, False, False]), "z": np.array([True, False, True, False])}
    expected = model.run(**feeds)["s"]
    np.testing.assert_array_equal(model.run(backend="onnxruntime", **feeds)["s"], expected)


def test_training_a_model_without_inputs_on_data_is_a_clear_error(tmp_path):
    """Found by the CLI fuzzer: --val-split over no arrays at all."""
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    result = fails(chainrule_cli("train", write_model(tmp_path, SCALAR), "--data",
                                 tmp_path / "d.npz", "--val-split", "0.3"))
    assert "model m has no inputs, so no training data can feed it" in result.stderr
