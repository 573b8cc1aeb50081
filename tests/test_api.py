"""The Python API keeps its word: one spelling for a file and one for text, public names
importable from `chainrule` alone, a start that loads only what a call needs, and repeated
calls that check their arguments once per signature yet refuse what a first call refuses."""
import math
import subprocess
import sys

import numpy as np
import pytest

import chainrule
from support.paths import ROOT

MLP = ROOT / "examples" / "mlp.nn"
TINY = "model m(x: f32[B, 3]) {\n    s = sum(x)\n    return s\n}\n"


def test_a_path_and_source_text_are_spelled_apart():
    from_file = chainrule.compile(MLP)
    from_text = chainrule.compile(source=MLP.read_text(), filename="mlp.nn")
    assert from_file.filename == str(MLP) and from_text.filename == "mlp.nn"
    assert from_file.ir() == from_text.ir().replace("mlp.nn:", f"{MLP}:")
    assert chainrule.compile(str(MLP)).ir() == from_file.ir()


@pytest.mark.parametrize("call", [
    lambda: chainrule.compile(),
    lambda: chainrule.compile(MLP, source=TINY),
    lambda: chainrule.compile(MLP, filename="other.nn"),
])
def test_ambiguous_calls_are_refused(call):
    with pytest.raises(TypeError, match="source="):
        call()


def test_text_given_as_a_path_is_read_as_a_path_with_a_hint():
    with pytest.raises(chainrule.ChainruleError, match="no such file") as raised:
        chainrule.compile(TINY)
    assert "compile(source=...)" in raised.value.render()


def test_a_path_with_a_nul_byte_is_a_located_error_not_a_value_error():
    with pytest.raises(chainrule.ChainruleError, match="NUL byte") as raised:
        chainrule.compile("\0")
    assert raised.value.loc.file == "\\0"


def test_a_missing_file_is_a_located_error():
    with pytest.raises(chainrule.ChainruleError, match="no such file"):
        chainrule.compile(ROOT / "examples" / "no_such_model.nn")


def fresh_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    return result.stdout.strip()


@pytest.mark.subprocess
def test_the_public_names_are_importable_after_import_chainrule_alone():
    names = ["compile", "import_onnx", "Model", "ChainruleError", "OptimizerSpec", "Trainer",
             "TrainConfig", "History", "InputNote"]
    shown = fresh_python("import chainrule\n"
                         f"print(' '.join(type(getattr(chainrule, n)).__name__ for n in {names!r}))")
    assert shown.split() == ["function", "function"] + ["type"] * 7
    assert set(names) <= set(chainrule.__all__)


HEAVY = ("onnx", "onnxruntime", "ray", "numba", "ml_dtypes")


@pytest.mark.subprocess
def test_importing_chainrule_and_checking_a_model_load_none_of_the_heavy_libraries():
    loaded = fresh_python(
        "import sys, io, contextlib\n"
        "import chainrule\n"
        "before = sorted(m for m in " + repr(HEAVY) + " if m in sys.modules)\n"
        "from chainrule.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['check', 'examples/mlp.nn']) == 0\n"
        "after = sorted(m for m in " + repr(HEAVY) + " if m in sys.modules)\n"
        "print(before, after)")
    assert loaded == "[] []"


@pytest.mark.subprocess
def test_a_bf16_model_loads_ml_dtypes_and_an_f16_one_does_not():
    loaded = fresh_python(
        "import sys, chainrule\n"
        "src = 'model m(x: {}[2]) {{\\n    return sum(f32(x))\\n}}\\n'\n"
        "chainrule.compile(source=src.format('f16')).run(x=[1, 2])\n"
        "before = 'ml_dtypes' in sys.modules\n"
        "chainrule.compile(source=src.format('bf16')).run(x=[1, 2])\n"
        "print(before, 'ml_dtypes' in sys.modules)")
    assert loaded == "False True"


@pytest.mark.subprocess
def test_exporting_loads_onnx_when_it_is_needed():
    loaded = fresh_python(
        "import sys, chainrule\n"
        "chainrule.compile('examples/mlp.nn').to_onnx()\n"
        "print('onnx' in sys.modules)")
    assert loaded == "True"


# ---- repeated calls: checked once per signature, and never less -----------------------------

CLASSIFIER = ("model m(x: f32[B, 3], y: i64[B]) {\n    param W: f32[4, 3] = normal(0.0, 0.1)\n"
              "    o = x @ W.T\n    J = cross_entropy(o, y)\n    return J, o\n}\n")
GOOD = {"x": np.ones((4, 3), np.float32), "y": np.array([0, 1, 2, 3])}
BACKENDS = ["numpy", "onnxruntime"]


def run(model, backend, **inputs):
    return model.run(backend=backend, **inputs)


def train_step(model, backend, **inputs):
    return model.train_step(0.1, "sgd", backend, **inputs)


BAD_INPUTS = {
    "missing": {"x": GOOD["x"]},
    "unknown": {**GOOD, "z": GOOD["y"]},
    "dtype": {**GOOD, "y": np.array([0.5, 1, 2, 3])},
    "fixed dim": {**GOOD, "x": np.ones((4, 2), np.float32)},
    "symbolic dim": {**GOOD, "y": np.array([0, 1, 2])},
    "rank": {**GOOD, "x": np.ones(3, np.float32)},
    "ragged": {**GOOD, "x": [[1.0, 2.0, 3.0], [4.0]]},
    "label range": {**GOOD, "y": np.array([0, 1, 2, 4])},
    "negative label": {**GOOD, "y": np.array([0, -1, 2, 3])},
}
NO_ROWS = {"x": np.ones((0, 3), np.float32), "y": np.zeros(0, np.int64)}


def refusal(call, backend, inputs) -> str:
    with pytest.raises(chainrule.ChainruleError) as raised:
        call(chainrule.compile(source=CLASSIFIER), backend, **inputs)
    return raised.value.message


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, inputs", [(run, inputs) for inputs in BAD_INPUTS.values()]
                         + [(train_step, inputs) for inputs in [*BAD_INPUTS.values(), NO_ROWS]],
                         ids=[f"run-{case}" for case in BAD_INPUTS]
                         + [f"train_step-{case}" for case in [*BAD_INPUTS, "no rows"]])
def test_a_bad_call_after_good_ones_gets_the_first_calls_error(call, inputs, backend):
    expected = refusal(call, backend, inputs)
    model = chainrule.compile(source=CLASSIFIER)
    for _ in range(2):
        call(model, backend, **GOOD)
    with pytest.raises(chainrule.ChainruleError) as raised:
        call(model, backend, **inputs)
    assert raised.value.message == expected
    call(model, backend, **GOOD)  # and the good call still runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_missing_an_input_names_it_rather_than_counting_no_rows(backend):
    assert refusal(train_step, backend, BAD_INPUTS["missing"]).startswith(
        "missing input 'y' (declared i64[B]); given 'x'")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", [run, train_step])
def test_a_repeated_call_still_casts_and_notes_what_it_casts(call, backend):
    model = chainrule.compile(source=CLASSIFIER)
    for _ in range(2):
        call(model, backend, **GOOD)
    with pytest.warns(chainrule.InputNote, match="input 'x': f64 from the argument"):
        call(model, backend, x=GOOD["x"].astype(np.float64), y=GOOD["y"])


@pytest.mark.parametrize("lr", [-0.1, math.nan, math.inf])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_repeated_step_still_checks_its_learning_rate(backend, lr):
    model = chainrule.compile(source=CLASSIFIER)
    for _ in range(2):
        model.train_step(0.1, "sgd", backend, **GOOD)
    with pytest.raises(chainrule.ChainruleError, match="learning rate must be a finite number"):
        model.train_step(lr, "sgd", backend, **GOOD)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_after_a_param_changed_checks_the_param(backend):
    model = chainrule.compile(source=CLASSIFIER)
    for _ in range(2):
        model.run(backend=backend, **GOOD)
    model.params["W"] = np.ones((4, 2), np.float32)
    with pytest.raises(chainrule.ChainruleError,
                       match=r"param 'W' is declared f32\[4, 3\] but given f32\[4, 2\]"):
        model.run(backend=backend, **GOOD)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", [run, train_step])
def test_repeated_calls_check_and_conform_their_arguments_once(call, backend, monkeypatch):
    from chainrule import api, data
    from chainrule.backends import feeds

    counts = {"conform": 0, "check": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapper

    conform = counted("conform", data.conform_arguments)
    for module in (api, data):  # wherever it is called from
        monkeypatch.setattr(module, "conform_arguments", conform)
    monkeypatch.setattr(feeds, "check_feeds", counted("check", feeds.check_feeds))
    model = chainrule.compile(source=CLASSIFIER)
    call(model, backend, **GOOD)
    first = dict(counts)
    for _ in range(3):
        call(model, backend, **GOOD)
    assert counts == first and first["check"] >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_steps_outputs_are_its_own_after_the_next_step(backend):
    from chainrule.train import TrainConfig, Trainer

    trainer = Trainer(chainrule.compile(source=CLASSIFIER), TrainConfig(optimizer="sgd",
                                                                       backend=backend))
    first = trainer.train_step(GOOD, 0.5)
    kept = {name: np.array(array) for name, array in first.items()}
    trainer.train_step(GOOD, 0.5)
    assert all(np.array_equal(first[name], kept[name]) for name in kept)
