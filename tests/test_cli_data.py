"""The new user's path through the CLI: their own data files, prediction, and the rough edges."""
import gzip
import stat

import numpy as np
import pytest

from support.cli import chainrule, fails, ok
from support.paths import ROOT

DIGITS = ROOT / "examples" / "digits_classifier.nn"
MLP = ROOT / "examples" / "mlp.nn"
DATA = ROOT / "examples" / "data"


def write_csv(path, x, labels=None, label_name="digit"):
    header = [f"p{i}" for i in range(x.shape[1])] + ([label_name] if labels is not None else [])
    lines = [",".join(header)]
    for index, row in enumerate(x):
        cells = [f"{v:g}" for v in row] + ([str(labels[index])] if labels is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    """The digits as a user might have them: CSV, int32 labels; test file without labels."""
    folder = tmp_path_factory.mktemp("digits")
    train, test = np.load(DATA / "digits_train.npz"), np.load(DATA / "digits_test.npz")
    write_csv(folder / "train.csv", train["x"], train["y"].astype(np.int32))
    write_csv(folder / "test.csv", test["x"])
    return folder, test["y"]


def test_train_from_csv_then_predict_without_labels(digits_csv, tmp_path):
    folder, truth = digits_csv
    trained = tmp_path / "trained.npz"
    train = ok(chainrule("train", DIGITS, "--data", folder / "train.csv", "--label-column",
                         "digit", "-o", trained))
    assert "input 'y' reads the labels of" in train.stderr
    assert "rounded to f32 (precision only" in train.stderr
    assert "will not be saved" not in train.stderr
    predicted = ok(chainrule("predict", DIGITS, "--params", trained, "--data",
                             folder / "test.csv", "--argmax", "-o", tmp_path / "p.npz"))
    assert "predicted logits for 359 rows" in predicted.stdout
    with np.load(tmp_path / "p.npz") as saved:
        assert saved["logits"].shape == (359, 10)
        accuracy = np.mean(saved["logits.argmax"] == truth)
    assert accuracy > 0.9
    as_csv = ok(chainrule("predict", DIGITS, "--params", trained, "--data",
                          folder / "test.csv", "--argmax", "-o", tmp_path / "p.csv"))
    assert "wrote" in as_csv.stdout
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0].split(",")[-1] == "logits.argmax" and len(lines) == 360
    column = np.array([int(line.split(",")[-1]) for line in lines[1:]])
    np.testing.assert_array_equal(column, saved_argmax(tmp_path / "p.npz"))


def saved_argmax(path):
    with np.load(path) as saved:
        return saved["logits.argmax"]


def test_csv_with_its_label_column_unnamed_gets_a_hint(digits_csv):
    folder, _ = digits_csv
    result = fails(chainrule("train", DIGITS, "--data", folder / "train.csv"))
    assert "one column fewer than the file's 65" in result.stderr
    assert "--label-column" in result.stderr
    assert result.stdout == ""


def test_idx_images_and_labels_train_and_predict(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 10, size=40).astype(np.uint8)
    for name, array in (("t-images-idx3-ubyte.gz", images), ("t-labels-idx1-ubyte.gz", labels)):
        header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        with gzip.open(tmp_path / name, "wb") as file:
            file.write(header + array.tobytes())
    result = ok(chainrule("train", DIGITS, "--data", tmp_path / "t-images-idx3-ubyte.gz",
                          "--epochs", "1", "-o", tmp_path / "p.npz"))
    assert "input 'x' reads the features" in result.stderr
    assert "flattened to [40, 64]" in result.stderr
    assert "u8 from" in result.stderr and "cast to i64 (exact)" in result.stderr
    ok(chainrule("predict", DIGITS, "--params", tmp_path / "p.npz", "--input",
                 f"x={tmp_path / 't-images-idx3-ubyte.gz'}", "--argmax"))


def test_map_extra_arrays_and_strict_inputs(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.normal(size=(5, 64)).astype(np.float32),
             labels=np.arange(5), ids=np.arange(5))
    result = ok(chainrule("grad", DIGITS, "--inputs", tmp_path / "d.npz", "--map",
                          "x=images,y=labels"))
    assert "ignoring array 'ids'" in result.stderr and "W1" in result.stdout
    strict = fails(chainrule("grad", DIGITS, "--inputs", tmp_path / "d.npz", "--map",
                             "x=images", "--map", "y=labels", "--strict-inputs"))
    assert "--strict-inputs: array 'ids'" in strict.stderr
    unknown = fails(chainrule("run", DIGITS, "--inputs", tmp_path / "d.npz", "--map", "q=ids"))
    assert "--map: the model has no input 'q'" in unknown.stderr
    missing = fails(chainrule("run", DIGITS, "--inputs", tmp_path / "d.npz"))
    assert "the model needs input(s) x: f32[B, 64], y: i64[B]" in missing.stderr


def test_run_outputs_needs_no_labels(tmp_path):
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 64), np.float64))
    result = ok(chainrule("run", DIGITS, "--inputs", tmp_path / "x.npz", "--outputs", "logits"))
    assert "logits  float32[3, 10]" in result.stdout
    assert "acc" not in result.stdout


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("label", [12, -1])
def test_out_of_range_labels_give_the_same_error_on_every_backend(tmp_path, backend, label):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 784), np.float32), y=np.array([0, label]))
    result = fails(chainrule("run", MLP, "--inputs", tmp_path / "d.npz", "--backend", backend))
    assert f"input 'y' holds {label}, out of range: labels for cross_entropy over 10 " \
           f"classes lie in [0, 10)" in result.stderr
    assert "mlp.nn:10:9" in result.stderr


def test_a_float_with_a_fraction_is_refused_for_labels_before_training(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 64), np.float32), y=np.array([0, 1.5, 2, 3]))
    result = fails(chainrule("train", DIGITS, "--data", tmp_path / "d.npz"))
    assert "input 'y' is i64 but" in result.stderr and "f64" in result.stderr
    assert "fractional part, such as 1.5" in result.stderr
    assert result.stdout == ""


def test_a_wrong_shape_is_reported_with_the_file_shape_before_training(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((100, 63), np.float32), y=np.zeros(100, np.int64))
    result = fails(chainrule("train", DIGITS, "--data", tmp_path / "d.npz"))
    assert "d.npz: error: input 'x' is declared f32[B, 64] but given f32[100, 63]" \
        in result.stderr
    assert result.stdout == ""


def test_training_without_output_warns_that_nothing_is_saved(tmp_path):
    result = ok(chainrule("train", DIGITS, "--data", DATA / "digits_test.npz", "--epochs", "1"))
    assert "warning: no -o FILE and no --checkpoint DIR" in result.stderr


def test_resuming_a_finished_checkpoint_changes_nothing(tmp_path):
    checkpoint, out = tmp_path / "ckpt", tmp_path / "p.npz"
    ok(chainrule("train", DIGITS, "--data", DATA / "digits_test.npz", "--epochs", "2",
                 "--checkpoint", checkpoint, "-q"))
    saved = (checkpoint / "checkpoint.npz").read_bytes()
    result = ok(chainrule("train", DIGITS, "--data", DATA / "digits_test.npz", "--epochs", "2",
                          "--resume", checkpoint, "-o", out))
    assert "already trained 2 of 2 epochs; nothing to do" in result.stdout
    assert "trained in" not in result.stdout
    assert (checkpoint / "checkpoint.npz").read_bytes() == saved and not out.exists()


def test_outputs_honour_the_umask(tmp_path):
    ok(chainrule("run", MLP, "--random-inputs", "-o", tmp_path / "out.npz", umask=0o027))
    assert stat.S_IMODE((tmp_path / "out.npz").stat().st_mode) == 0o640


def test_missing_model_and_missing_data_are_the_same_kind_of_error(tmp_path):
    model = fails(chainrule("run", tmp_path / "nope.nn", "--random-inputs"))
    data = fails(chainrule("run", MLP, "--inputs", tmp_path / "nope.npz"))
    params = fails(chainrule("run", MLP, "--random-inputs", "--params", tmp_path / "p.npz"))
    for result, name in ((model, "nope.nn"), (data, "nope.npz"), (params, "p.npz")):
        assert result.stderr.strip() == f"{tmp_path / name}: error: no such file"


def test_a_model_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "bad.nn"
    path.write_bytes(b"model m(x: f32[2]) {\n  y = x \xe9\n  return y\n}\n")
    result = fails(chainrule("check", path))
    assert result.stderr.startswith(f"{path}: error: not UTF-8 text: byte 0xe9 at offset 29 (line 2")


def test_version_and_train_help_defaults():
    version = ok(chainrule("--version"))
    assert version.stdout.startswith("chainrule 0.")
    text = " ".join(ok(chainrule("train", "--help")).stdout.split())
    for default in ("passes over the data (default: 20)", "rows per step (default: 32)",
                    "the update rule (default: adam)", "learning rate (default: 0.001)",
                    "(default: constant)", "(default: 0.1)", "--step-every"):
        assert default in text


def test_step_schedule_options_reach_the_trainer(tmp_path):
    log = tmp_path / "log.jsonl"
    ok(chainrule("train", DIGITS, "--data", DATA / "digits_test.npz", "--epochs", "3",
                 "--optimizer", "sgd", "--lr", "0.5", "--lr-schedule", "step", "--step-every",
                 "1", "--step-gamma", "0.0", "--log-jsonl", log, "-q"))
    import json
    losses = [json.loads(line)["train"]["J"] for line in log.read_text().splitlines()]
    # With gamma 0 the learning rate is 0 from the second epoch: the params stop moving.
    assert losses[1] == pytest.approx(losses[2], rel=1e-6)
