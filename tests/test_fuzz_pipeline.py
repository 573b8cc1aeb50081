"""Fuzzing past the front end: whole models through compile, run, grad and export; data files
with damaged bytes; and the CLI with hostile arguments, paths and files.

Every input must finish, within a bound on its work (function calls, counted), either with a
result or with a ChainruleError (the CLI: with exit code 0, 1 or 2 and no traceback). Any other
exception is a bug, and hypothesis shows the input.

The suite runs a few derandomized examples per test; the long run (docs/internals.md) runs
each test's share of its counts of whole models, data files and command lines.
"""
import io
import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import chainrule
from chainrule import ChainruleError
from chainrule.cli import random_inputs
from chainrule.data import read_dataset
from chainrule.fileio import load_npz
from support.cli import chainrule as chainrule_cli
from support.fuzzing import (EXPRESSIONS, fuzz_cli, fuzz_data_files, fuzz_models,
                             within_calls)
from support.paths import EXAMPLES, ROOT

# Bounds on the work of one input, in function calls (tests/support/fuzzing.py): over twenty
# times the most any input here took (about 0.8 million for a model, 1,300 for a data file,
# 75,000 for a command: a training epoch on the digits), far below a blow-up.
CALLS_PER_MODEL = 20_000_000
CALLS_PER_FILE = 1_000_000
CALLS_PER_COMMAND = 10_000_000


# ---- whole models -----------------------------------------------------------------------------

# Scalars, empty dims and every dtype among the inputs and params, so that outputs can be
# scalars, empty, or an input or param returned as it is.
INPUT_TYPES = st.sampled_from(["f32[B, 3]", "f32[3]", "f32[]", "f32[B]", "i64[B]", "f32[0]",
                               "f32[B, 0]", "f64[B, 3]", "bool[B]", "f32[3, 3]"])
PARAM_TYPES = st.sampled_from(["f32[3, 3]", "f32[3]", "f32[]", "f32[0]", "f64[3]", "f32[1]"])
INITS = st.sampled_from(["glorot()", "he()", "zeros()", "ones()", "normal(0.0, 1.0)",
                         "uniform(-1.0, 1.0)"])


@st.composite
def whole_models(draw) -> str:
    inputs = [f"{name}: {draw(INPUT_TYPES)}" for name in ("x", "y")]
    params = [f"    param {name}: {draw(PARAM_TYPES)} = {draw(INITS)}\n" for name in ("W", "v")]
    statements = [f"    s{i} = {draw(EXPRESSIONS)}\n" for i in range(draw(st.integers(1, 3)))]
    names = [f"s{i}" for i in range(len(statements))] + ["x", "y", "W", "v"]
    returned = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    return (f"def f(a, b=1) {{\n    return {draw(EXPRESSIONS)}\n}}\n"
            f"model m({', '.join(inputs)}) {{\n" + "".join(params) + "    let k = 2\n"
            + "".join(statements) + f"    return {', '.join(returned)}\n}}\n")


def through_the_pipeline(text: str) -> None:
    """Compile, run and differentiate on random inputs, and export with the full checker."""
    model = chainrule.compile(source=text)
    inputs = random_inputs(model.graph, {"B": 2}, seed=0, given={})
    model.run(**inputs)
    objective = model.objective.type
    if objective.rank == 0 and objective.dtype in ("f32", "f64"):
        model.grad(**inputs)
        onnx.checker.check_model(model.to_onnx(grad=True), full_check=True)
    onnx.checker.check_model(model.to_onnx(), full_check=True)


@fuzz_models
@given(whole_models())
def test_whole_models_compile_run_grad_and_export(text):
    with within_calls(CALLS_PER_MODEL):
        try:
            through_the_pipeline(text)
        except ChainruleError as error:
            error.render(lambda file: text.splitlines())


@fuzz_models
@given(st.binary(max_size=200), st.sampled_from([b"", b"model m() {\n    J = f32(1.0)\n"]))
def test_bytes_that_are_not_utf8_are_a_file_error(tmp_path_factory, data, prefix):
    path = tmp_path_factory.mktemp("bytes") / "m.nn"
    path.write_bytes(prefix + data)
    with within_calls(CALLS_PER_MODEL):
        try:
            chainrule.compile(str(path))
        except ChainruleError as error:
            assert error.file == str(path)


# ---- damaged data files -----------------------------------------------------------------------

def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.arange(12, dtype=np.float32).reshape(4, 3),
                        y=np.arange(4), s=np.array("text"))
    return buffer.getvalue()


CSV = b"a,b,label\n1,2,0\n3.5,4,1\n5,6e3,2\n"
IDX = bytes([0, 0, 8, 2]) + np.array([2, 3], ">u4").tobytes() + bytes(range(6))
GOOD_FILES = {"d.npz": npz_bytes(), "d.csv": CSV, "t-images-idx3-ubyte": IDX}


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    """One of the good files with bytes flipped, cut off, or inserted."""
    name = draw(st.sampled_from(sorted(GOOD_FILES)))
    data = bytearray(GOOD_FILES[name])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return name, bytes(data)


@fuzz_data_files
@given(damaged())
def test_damaged_data_files_are_read_or_refused_cleanly(tmp_path_factory, file):
    name, data = file
    path = tmp_path_factory.mktemp("data") / name
    path.write_bytes(data)
    with within_calls(CALLS_PER_FILE):
        for read in (read_dataset, lambda p: read_dataset(p, label_column="label"), load_npz):
            try:
                read(path)
            except ChainruleError as error:
                assert str(path) in str(error) or error.file == str(path)


# ---- the command line -------------------------------------------------------------------------

HOSTILE_MODELS = {
    "scalar.nn": "model m() {\n    J = f32(1.0)\n    return J\n}\n",
    "alias.nn": "model m(x: f32[3]) {\n    param W: f32[] = ones()\n    return W, x\n}\n",
    "empty.nn": "model m(x: f32[B, 0]) {\n    J = mean(x)\n    return J\n}\n",
    "transpose.nn": "model m(x: f32[]) {\n    y = x.T\n    return y\n}\n",
    "overflow.nn": "model m(x: f32[B, 3]) {\n    J = sum(exp(x * 1000.0))\n    return J\n}\n",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Models (examples and hostile ones), data files good and bad, and output targets."""
    folder = tmp_path_factory.mktemp("cli")
    for name, text in HOSTILE_MODELS.items():
        (folder / name).write_text(text)
    (folder / "latin1.nn").write_bytes("model m() { J = caf\xe9 }".encode("latin-1"))
    (folder / "a-file").write_text("")
    rng = np.random.default_rng(0)
    np.savez(folder / "digits.npz", x=rng.normal(size=(10, 64)).astype(np.float32),
             y=rng.integers(0, 10, 10).astype(np.int32), extra=np.arange(10))
    np.savez(folder / "bad_labels.npz", x=rng.normal(size=(4, 64)), y=np.array([0, 12, -1, 3]))
    (folder / "corrupt.npz").write_bytes(npz_bytes()[:100])
    (folder / "digits.csv").write_text("a,b\n1,2\n")
    (folder / "new").mkdir()
    return folder


# The small digits models: gradcheck of the GRU or the CNN over a whole data file is honest
# work far past the bound per command.
MODELS = st.sampled_from([str(p) for p in EXAMPLES if p.stem in ("mlp_digits", "digits_classifier")]
                         + list(HOSTILE_MODELS) + ["latin1.nn", "missing.nn", "new"])
COMMANDS = st.sampled_from(["check", "run", "grad", "export", "predict", "train", "gradcheck",
                            "ir", "evaluate"])
OUTPUTS = st.sampled_from(["out.npz", "new", "a-file/out.npz", "/sys/out.npz", "new/deep/o.npz",
                           "out.csv", "out.onnx"])
DATA = st.sampled_from(["digits.npz", "bad_labels.npz", "corrupt.npz", "digits.csv",
                        "missing.npz", "a-file", str(ROOT / "examples" / "data" /
                                                      "digits_test.npz")])
INPUT_OPTIONS = [["--random-inputs"], ["--dim", "B=2"], ["--dim", "B=0"], ["--dim", "B=-4"],
                 ["--dim", f"B={10 ** 12}"], ["--map", "x=extra"], ["--map", "q=x"],
                 ["--strict-inputs"], ["--backend", "onnxruntime"], ["--label-column", "b"],
                 ["-O2"], ["--params", "digits.npz"]]
# Options each command takes, so that most command lines get past argument parsing.
COMMAND_OPTIONS = {
    "check": [["--dim", "B=3"], ["--params", "digits.npz"]],
    "ir": [["--grad"], ["-O2"], ["--emit", "python"], ["--print-memory-plan"],
           ["--passes", "select_mode,autodiff,dce"], ["--time-passes"]],
    "run": INPUT_OPTIONS + [["--outputs", "logits"], ["--outputs", "J"], ["--check-numerics"]],
    "grad": INPUT_OPTIONS + [["--wrt", "W1"], ["--check-numerics"]],
    "gradcheck": INPUT_OPTIONS + [["--samples", "2"], ["--backend", "all"]],
    "predict": [["--outputs", "logits"], ["--outputs", "J"], ["--argmax"], ["--batch-size", "3"],
                ["--map", "x=extra"], ["--strict-inputs"], ["--backend", "onnxruntime"],
                ["--params", "digits.npz"], ["--label-column", "b"], ["--initial-params"],
                ["--initial-params"]],  # twice: without it a .nn model with params is refused
    "train": [["--epochs", "1"], ["--epochs", "0"], ["--batch-size", "3"], ["--lr", "1e30"],
              ["--optimizer", "sgd"], ["--backend", "onnxruntime"], ["--check-numerics"],
              ["--allow-nonfinite"], ["--override"], ["--val-split", "0.3"], ["--map", "y=extra"],
              ["--lr-schedule", "step"], ["--step-every", "1"], ["--resume", "new"],
              # worker counts and addresses that must be refused before Ray starts: a count
              # it would take starts Ray, honest work past the bound per command
              ["--workers", "0"], ["--workers", "1025"], ["--workers", str(10 ** 20)],
              ["--workers", "2", "--address", ".:80"], ["--address", "127.0.0.1:1"],
              ["--workers", "2", "--address", "a" * 64 + ":1"],
              ["--workers", "2", "--address", "host:99999"], ["--address", "ray://\n:1"]],
    "evaluate": [["--outputs", "acc"], ["--outputs", "logits"], ["--batch-size", "3"],
                 ["--map", "x=extra"], ["--backend", "onnxruntime"], ["--params", "digits.npz"],
                 ["--initial-params"], ["--initial-params"], ["--label-column", "b"]],
    "export": [["--grad"], ["--train-step"], ["--optimizer", "adam"], ["--outputs", "logits"],
               ["--opset", "13"], ["--opset", "99"], ["--wrt", "W1"], ["-O2"]],
}
ANY_OPTION = st.sampled_from([option for options in COMMAND_OPTIONS.values()
                              for option in options])
# Each command's numeric options, given values at and past their bounds: each must be taken or
# be a usage error. --epochs gets no huge value, which would be honest work past the bound.
NUMERIC_OPTIONS = {
    "check": ["--seed", "--dim"], "ir": ["--seed", "--dim"],
    "run": ["--seed", "--dim", "--threads"], "grad": ["--seed", "--dim", "--threads"],
    "gradcheck": ["--seed", "--threads", "--samples"],
    "predict": ["--seed", "--threads", "--batch-size"],
    "evaluate": ["--seed", "--threads", "--batch-size"],
    "train": ["--seed", "--threads", "--epochs", "--batch-size", "--lr", "--momentum",
              "--weight-decay", "--clip-grad-norm", "--step-every", "--step-gamma",
              "--warmup-steps", "--early-stop", "--val-split"],
    "export": ["--seed", "--momentum", "--weight-decay", "--clip-grad-norm", "--opset"],
}
HOSTILE_NUMBERS = ["-1", "0", "0.5", "1", "-0.0", "nan", "inf", "-inf", "1e400", "", "x"]
HUGE_NUMBERS = [str(2 ** 64), "99999999999999999999", "5000000000", "1" + "0" * 400]


@st.composite
def hostile_number(draw, command: str) -> list[str]:
    flag = draw(st.sampled_from(NUMERIC_OPTIONS[command]))
    value = draw(st.sampled_from(HOSTILE_NUMBERS + (HUGE_NUMBERS if flag != "--epochs" else [])))
    return [f"{flag}=B={value}" if flag == "--dim" else f"{flag}={value}"]


@st.composite
def command_lines(draw) -> list[str]:
    """Mostly options the command takes (so the command does its work), sometimes any."""
    argv = [draw(COMMANDS), draw(MODELS)]
    reads_data = argv[0] in ("run", "grad", "gradcheck", "train", "predict", "evaluate")
    if draw(st.booleans()) and (reads_data or draw(st.integers(0, 9)) == 0):
        argv += ["--data" if argv[0] in ("train", "predict", "evaluate") else "--inputs",
                 draw(DATA)]
    writes = argv[0] not in ("check", "ir", "gradcheck", "evaluate")
    if draw(st.booleans()) and (writes or draw(st.integers(0, 9)) == 0):
        flag = {"train": draw(st.sampled_from(["-o", "--checkpoint", "--log-jsonl"]))}
        argv += [flag.get(argv[0], "-o"), draw(OUTPUTS)]
    fitting = st.sampled_from(COMMAND_OPTIONS[argv[0]])
    for option in draw(st.lists(fitting | ANY_OPTION if draw(st.integers(0, 9)) == 0
                                else fitting, max_size=3)):
        argv += option
    if draw(st.integers(0, 3)) == 0:
        argv += draw(hostile_number(argv[0]))
    if argv[0] == "train" and "--epochs" not in argv:
        argv += ["--epochs", "1"]
    return argv


@fuzz_cli
@given(command_lines())
def test_the_cli_never_shows_a_traceback(workspace, argv):
    with within_calls(CALLS_PER_COMMAND):
        result = chainrule_cli(*argv, cwd=workspace)
    code, stderr = result.returncode, result.stderr
    assert code in (0, 1, 2), (code, stderr)
    assert "Traceback" not in stderr
    if code == 1:
        assert "error:" in stderr
    for leftover in workspace.rglob("*.tmp"):
        raise AssertionError(f"a temporary file was left behind: {leftover}")
    assert not zipfile.is_zipfile(workspace / "a-file")
