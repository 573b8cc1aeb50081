"""Hostile command lines: every flag's bad value is a usage error naming the flag, printed with
its command's usage line (exit 2); a bad environment or file is a one-line error (exit 1);
nothing ends in a traceback, and nothing is computed that the command cannot keep.
"""
import argparse
import json

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends.threads import ENV_VAR, MAX_THREADS
from chainrule.cli.parser import COMMANDS, Number, build_parser
from chainrule.fileio import load_npz
from chainrule.train import CHECKPOINT_FILE
from support.cli import chainrule as chainrule_cli
from support.cli import chainrule_process, fails, ok
from support.paths import ROOT

DIGITS = ROOT / "examples" / "digits_classifier.nn"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
ONNX_MLP = ROOT / "tests" / "fixtures" / "onnx" / "mlp.onnx"


def usage_error(result, command: str, flag: str):
    """Exit 2 with argparse's two lines: the command's usage, then its error naming `flag`."""
    fails(result, 2)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: chainrule {command} "), result.stderr
    assert lines[-1].startswith(f"chainrule {command}: error: argument {flag}"), result.stderr
    return lines[-1]


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


# ---- numbers --------------------------------------------------------------------------------

def short(value) -> str:
    """A test id for a value that may be hundreds of digits long."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:12]}...{len(text)}-chars"


BAD_NUMBERS = [
    ("train", "--lr", ["-1", "0", "nan", "inf", "-inf", "", "1e400"]),
    ("train", "--epochs", ["0", "-1", "1.5", "nan", ""]),
    ("train", "--batch-size", ["0", "-3", "1e3"]),
    ("predict", "--batch-size", ["0", "-3"]),
    ("evaluate", "--batch-size", ["0"]),
    ("train", "--momentum", ["-0.1", "1", "1.5", "nan"]),
    ("export", "--momentum", ["1", "inf"]),
    ("train", "--weight-decay", ["-1", "nan", "inf"]),
    ("train", "--clip-grad-norm", ["-1", "nan", "inf"]),
    ("train", "--step-every", ["-1"]),
    ("train", "--step-gamma", ["-0.5", "nan", "inf"]),
    ("train", "--warmup-steps", ["-3"]),
    ("train", "--early-stop", ["-1"]),
    ("train", "--val-split", ["0", "1", "-0.2", "nan"]),
    ("gradcheck", "--samples", ["0", "-1"]),
    ("run", "--threads", ["0", "-1", "5000000000", str(MAX_THREADS + 1), "nan"]),
    ("train", "--threads", ["5000000000"]),
    ("run", "--seed", ["-1", "1.5", "nan", "", "-1" + "0" * 400]),
    ("run", "--threads", ["1" + "0" * 400]),
    ("run", "--dim", ["B=-4", "B=1e3", f"B={2 ** 63}", "B", "=3", "B=nan"]),
]


@pytest.mark.parametrize("command, flag, value", [
    (command, flag, value) for command, flag, values in BAD_NUMBERS for value in values],
    ids=short)
def test_a_bad_number_is_a_usage_error_naming_its_flag(command, flag, value):
    line = usage_error(chainrule_cli(command, DIGITS, f"{flag}={value}"), command, flag)
    given = value.partition("=")[2] if flag == "--dim" and "=" in value else value
    assert repr(given)[:40] in line or "expected NAME=N" in line
    assert len(line) < 200  # a long value is cut short


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_refuses_a_negative_seed_before_drawing_params(command):
    usage_error(chainrule_cli(command, DIGITS, "--seed", "-1"), command, "--seed")


@pytest.mark.parametrize("group", ["b*:weight_decay=nan", "b*:lr_scale=-1", "b*:lr_scale=inf"])
def test_a_param_groups_settings_are_finite_and_not_negative(group):
    result = fails(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--param-group", group),
                   2)
    assert "a setting is a finite number of at least 0" in result.stderr


@pytest.mark.parametrize("seed", [str(2 ** 70), "1" + "0" * 400], ids=short)
def test_a_seed_is_any_non_negative_whole_number(seed):
    ok(chainrule_cli("run", DIGITS, "--random-inputs", "--seed", seed))


def test_no_numeric_option_is_read_without_bounds():
    """Every option that takes a number goes through a Number, whose bounds refuse what numpy
    and onnxruntime would refuse later, with a traceback or a wrong result."""
    unbounded = {(name, action.option_strings[-1])
                 for name, parser in command_parsers().items() for action in parser._actions
                 if action.type in (int, float)}
    # --opset: the supported range is the ONNX backend's, which refuses the others by name.
    # --workers: bounded with the distributed checks.
    assert {flag for _, flag in unbounded} <= {"--opset", "--workers"}, unbounded


def test_numbers_describe_their_bounds():
    assert Number(int, 1, most=8).describe() == "a whole number from 1 to 8"
    assert Number(float, 0, below=1).describe() == "a finite number at least 0 and less than 1"
    assert Number(float, above=0)("1e-3") == 1e-3


@pytest.mark.parametrize("option, value", [
    ("lr", -1.0), ("momentum", 1.5), ("epochs", 0), ("seed", -1), ("dim", ["B=-2"]),
    ("data", ""), ("val_split", 2.0)])
def test_resume_holds_a_recorded_option_to_the_options_bounds(tmp_path, option, value):
    """A checkpoint's options go back through the same types as typed ones: --resume never
    trains with a value the command line would refuse."""
    checkpoint = tmp_path / "ckpt"
    ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1", "--checkpoint",
                     checkpoint, "-q"))
    arrays = load_npz(checkpoint / CHECKPOINT_FILE)
    meta = json.loads(str(arrays["meta"]))
    meta["options"][option] = value
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(checkpoint / CHECKPOINT_FILE, **arrays)
    result = fails(chainrule_cli("train", "--resume", checkpoint, "--epochs", "2", "-q"))
    assert f"the checkpoint's option '{option}' is" in result.stderr


# ---- threads from the environment -----------------------------------------------------------

@pytest.mark.parametrize("value, message", [
    ("many", f"{ENV_VAR}='many' is not a whole number of threads or 'auto'"),
    ("5000000000", f"{ENV_VAR} must be 1 to {MAX_THREADS} threads, not 5000000000"),
    ("0", f"{ENV_VAR} must be 1 to {MAX_THREADS} threads, not 0"),
])
def test_a_bad_thread_count_in_the_environment_is_one_line(monkeypatch, value, message):
    monkeypatch.setenv(ENV_VAR, value)  # a process of its own: the setting lasts for one
    result = fails(chainrule_process("run", DIGITS, "--random-inputs", "--backend",
                                     "onnxruntime"))
    assert result.stderr.strip() == f"chainrule: error: {message}"
    assert result.stdout == ""  # refused before anything ran


# ---- usage lines ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_flag_prints_the_commands_usage(command, tmp_path):
    required = ["-o", tmp_path / "out"] if command in ("export", "import", "report") else []
    result = fails(chainrule_cli(command, DIGITS, *required, "--bogus"), 2)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: chainrule {command} "), result.stderr
    assert lines[-1] == f"chainrule {command}: error: unrecognized arguments: --bogus"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_and_a_missing_file_end_cleanly(command):
    assert ok(chainrule_cli(command, "--help")).stdout.startswith(f"usage: chainrule {command}")
    result = fails(chainrule_cli(command), 2)
    assert result.stderr.strip().splitlines()[-1].startswith((  # train's FILE may come from
        f"chainrule {command}: error: the following arguments are required",  # --resume
        "chainrule: error: train needs a model FILE")), result.stderr


@pytest.mark.parametrize("flag", ["-o", "--params", "--data", "--checkpoint", "--log-jsonl",
                                  "--resume"])
def test_an_empty_path_is_refused_rather_than_ignored(flag):
    """`-o "$UNSET"` would otherwise train and save nothing, or predict from initial params."""
    line = usage_error(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, flag, ""), "train",
                       flag)
    assert "expected a path, got an empty one" in line


def test_a_path_that_is_not_utf8_is_a_file_error(tmp_path):
    result = fails(chainrule_cli("run", tmp_path / "\udcff.nn", "--random-inputs"))
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_import_to_a_path_that_is_not_utf8_writes_a_utf8_model(tmp_path):
    output = tmp_path / "\udcff.nn"  # the byte 0xff, as Python decodes it from argv
    ok(chainrule_cli("import", ONNX_MLP, "-o", output))
    assert "\\udcff.npz" in output.read_bytes().decode("utf-8")
    ok(chainrule_cli("check", output))


@pytest.mark.parametrize("source, options", [
    ("model m(x: f32[B, 3]) {\n    J = mean(x)\n    return J\n}\n", ["--dim", "B=0"]),
    ("model m(x: f32[B, 3]) {\n    param W: f32[3] = ones()\n"
     "    J = sum(exp(x * W * 1000.0))\n    return J\n}\n", []),
])
def test_gradcheck_refuses_an_objective_that_is_not_finite(tmp_path, source, options):
    model = tmp_path / "m.nn"
    model.write_text(source)
    result = fails(chainrule_cli("gradcheck", model, "--random-inputs", *options))
    assert "gradcheck needs a finite objective" in result.stderr
    assert "FAIL" not in result.stdout


# ---- predict ----------------------------------------------------------------------------------

def test_evaluate_refuses_a_models_random_initial_params():
    result = fails(chainrule_cli("evaluate", DIGITS, "--data", DIGITS_DATA), 2)
    assert "its metrics would come from the random initial params" in result.stderr
    assert "--initial-params to evaluate" in result.stderr
    ok(chainrule_cli("evaluate", DIGITS, "--data", DIGITS_DATA, "--initial-params"))


def test_predict_refuses_a_models_random_initial_params(tmp_path):
    out = tmp_path / "p.npz"
    result = fails(chainrule_cli("predict", DIGITS, "--data", DIGITS_DATA, "-o", out), 2)
    assert "--params TRAINED.npz" in result.stderr and "--initial-params" in result.stderr
    assert not out.exists()
    ok(chainrule_cli("predict", DIGITS, "--data", DIGITS_DATA, "--initial-params", "-o", out))
    assert out.exists()


def test_predict_takes_an_onnx_models_own_weights_and_a_model_without_params(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    ok(chainrule_cli("predict", ONNX_MLP, "--data", tmp_path / "x.npz"))
    model = tmp_path / "m.nn"
    model.write_text("model m(x: f32[B, 64]) {\n    y = x * 2.0\n    return y\n}\n")
    ok(chainrule_cli("predict", model, "--data", tmp_path / "x.npz"))


def three_axes(tmp_path, monkeypatch):
    """A model whose output has three axes, and its data file; running it fails the test."""
    def run(*args, **kwargs):
        raise AssertionError("predict ran the model before refusing its options")

    monkeypatch.setattr(chainrule.Model, "predict", run)
    model = tmp_path / "m.nn"
    model.write_text("model m(x: f32[B, 2, 3]) {\n    y = x * 2.0\n    return y\n}\n")
    np.savez(tmp_path / "x.npz", x=np.ones((4, 2, 3), np.float32))
    return model, tmp_path / "x.npz"


def test_predict_to_csv_refuses_a_3d_output_before_computing(tmp_path, monkeypatch):
    model, data = three_axes(tmp_path, monkeypatch)
    out = tmp_path / "out.csv"
    result = fails(chainrule_cli("predict", model, "--data", data, "-o", out), 2)
    assert "output y is f32[B, 2, 3], with 3 axes; a CSV file holds 1-D and 2-D outputs" \
        in result.stderr
    assert result.stdout == "" and not out.exists()


def test_predict_argmax_without_class_scores_is_refused_before_computing(tmp_path, monkeypatch):
    model, data = three_axes(tmp_path, monkeypatch)
    result = fails(chainrule_cli("predict", model, "--data", data, "--argmax"), 2)
    assert "--argmax needs an output that is a 2-D float array" in result.stderr
    assert result.stdout == ""


# ---- an ONNX model without --loss -------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["grad", "--random-inputs"],
    ["gradcheck", "--random-inputs", "--samples", "1"],
    ["train", "--data", DIGITS_DATA, "--map", "x=x", "--epochs", "1"],
])
def test_differentiating_an_onnx_model_without_a_loss_points_at_loss(argv):
    command, *options = argv
    result = fails(chainrule_cli(command, ONNX_MLP, *options))
    assert "the objective 'logits' must be a float scalar" in result.stderr
    assert "--loss (cross_entropy, mse, bce)" in result.stderr


def test_export_with_gradients_without_a_loss_points_at_loss(tmp_path):
    result = fails(chainrule_cli("export", ONNX_MLP, "--grad", "-o", tmp_path / "g.onnx"))
    assert "--loss" in result.stderr


def test_import_onnx_without_a_loss_points_at_loss_in_python():
    model = chainrule.import_onnx(str(ONNX_MLP))
    with pytest.raises(ChainruleError, match="loss= in import_onnx"):
        model.grad(x=np.zeros((2, 64), np.float32))
