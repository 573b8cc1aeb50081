"""The Python API keeps its word: one spelling for a file and one for text, public names
importable from `chainrule` alone, and a start that loads only what a call needs."""
import subprocess
import sys

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
