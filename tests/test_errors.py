"""Every mistake a user can make gets one clear error at the place of the mistake.

One test per class of error, asserting the exact FILE:LINE:COL and message; then the same as the
user sees it on the command line (the location, the source line, a caret; exit code 1, or 2 for
a bad command-line value); then the checks on data given to a model.
"""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.fileio import load_npz
from chainrule.ir import SourceLoc
from chainrule.passes import autodiff_rules
from support.cli import chainrule as chainrule_cli
from support.paths import ROOT


def error_of(source: str) -> ChainruleError:
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=source)
    return info.value


def located(error: ChainruleError) -> tuple:
    return error.file, error.line, error.col, error.message


def model(*body: str, inputs: str = "x: f32[B, 3], y: i64[B]") -> str:
    return f"model m({inputs}) {{\n" + "".join(f"    {line}\n" for line in body) + "}\n"


# ---- one test per class -----------------------------------------------------------------------

@pytest.mark.parametrize("source, line, col, message", [
    (model("h = x +", "return h"), 2, 12, "unexpected end of line; expected an expression"),
    (model("h = x $ 2", "return h"), 2, 11, "unexpected character '$'"),
    (model("h = sum(x", "return h"), 3, 5, "unexpected 'return'"),
    ("model (x: f32[3]) {\n    return x\n}\n", 1, 7, "unexpected '('; expected a name"),
], ids=["end of line", "character", "unclosed bracket", "no model name"])
def test_syntax_errors(source, line, col, message):
    assert located(error_of(source)) == ("<string>", line, col, message)


def test_an_unclosed_bracket_is_shown_where_it_opened():
    error = error_of(model("h = sum(x", "return h"))
    assert error.notes == ((SourceLoc("<string>", 2, 12), "this '(' is not closed"),)


def test_unknown_names_suggest_the_closest_known_one():
    error = error_of(model("hidden = relu(x)", "h = hiden * 2", "return h"))
    assert located(error) == ("<string>", 3, 9, "unknown name 'hiden'; did you mean 'hidden'?")
    error = error_of(model("h = rleu(x)", "return h"))
    assert located(error) == ("<string>", 2, 9, "unknown function 'rleu'; did you mean 'relu'?")


def test_redefinitions_point_at_the_first_definition():
    error = error_of(model("let k = 1", "let k = 2", "return x"))
    assert located(error) == ("<string>", 3, 9,
                              "'k' is already defined (at line 2); a name is assigned once")
    assert error.notes == ((SourceLoc("<string>", 2, 9), "first defined here"),)
    error = error_of("def f(a) {\n  return a\n}\ndef f(b) {\n  return b\n}\n" + model("return x"))
    assert located(error) == ("<string>", 4, 5, "function 'f' is already defined (at line 1); "
                                                "a function is defined once")


@pytest.mark.parametrize("call, col, message", [
    ("relu(x, x)", 17, "relu() takes at most 1 argument (x), got 2"),
    ("sum(x, axes=0)", 16, "sum() has no argument 'axes'; did you mean 'axis'?"),
    ("sum(x, depth=0)", 16, "sum() has no argument 'depth'; it takes (x, axis, keepdims)"),
    ("f(x)", 9, "f() is missing argument 'b'"),
    ("f(x, b=x, b=x)", 19, "argument 'b' is given twice"),
])
def test_wrong_arguments(call, col, message):
    source = "def f(a, b) {\n  return a * b\n}\n" + model(f"h = {call}", "return h")
    assert located(error_of(source)) == ("<string>", 5, col, message)


@pytest.mark.parametrize("inputs, expression, message", [
    ("x: f32[B, 3], w: f32[4]", "x * w", "shapes [B, 3] and [4] do not broadcast (axis -1: 3 vs 4)"),
    ("x: f32[B, 3], w: f32[4, 5]", "x @ w", "matmul of [B, 3] and [4, 5]: inner dims 3 and 4 differ"),
    ("x: f32[3], w: f8e5m2[3]", "x + w",
     "add needs operands of one dtype, got f32[3] and f8e5m2[3]"),
])
def test_shape_and_dtype_mismatches_name_both_types(inputs, expression, message):
    error = error_of(model(f"h = {expression}", "return h", inputs=inputs))
    assert located(error) == ("<string>", 2, 9, message)


def test_gradients_of_integer_values_are_refused():
    compiled = chainrule.compile(source=model("param W: f32[3, 3] = glorot()", "J = cross_entropy(x @ W, y)",
                                       "return J"))
    with pytest.raises(ChainruleError) as info:
        compiled.grad_graph(wrt=["y"])
    # The error points at y's declaration.
    assert located(info.value) == ("<string>", 1, 23, "cannot differentiate with respect to 'y': "
                                   "it is i64[B], and only float values have gradients")


def test_an_op_without_a_derivative_rule_is_named(monkeypatch):
    monkeypatch.delitem(autodiff_rules.VJP_RULES, "relu")
    compiled = chainrule.compile(source=model("param W: f32[3, 3] = glorot()", "h = relu(x @ W)",
                                       "J = sum(h)", "return J"))
    with pytest.raises(ChainruleError) as info:
        compiled.grad_graph()
    assert located(info.value) == ("<string>", 3, 9, "no derivative rule for ops on the path to "
                                   "the objective:\n  <string>:3:9: 'relu' (computing %h)")


def test_recursion_is_refused_with_the_chain_of_calls():
    source = ("def f(a) {\n  return g(a)\n}\ndef g(a) {\n  return f(a)\n}\n"
              + model("h = f(x)", "return h"))
    error = error_of(source)
    assert located(error) == ("<string>", 5, 10, "function 'f' calls itself (f -> g -> f); "
                                                 "recursion is not supported")
    assert error.notes == ((SourceLoc("<string>", 2, 10), "in the call to 'g' here"),
                           (SourceLoc("<string>", 8, 9), "in the call to 'f' here"))
    error = error_of("def f(a=f()) {\n  return a\n}\n" + model("h = f()", "return h"))
    assert located(error)[1:] == (1, 9, "function 'f' calls itself (f -> f); recursion is not "
                                        "supported")


@pytest.mark.parametrize("initialiser, col, message", [
    ("xavier()", 26, "unknown initialiser 'xavier'; known: normal, uniform, zeros, ones, glorot, he"),
    ("normal(0.0)", 26, "normal(mean, std) takes 2 arguments, got 1"),
    ("normal(0.0, -1.0)", 26, "normal's std must not be negative"),
    ("normal(mean=0.0, std=1.0)", 33, "initialiser arguments are positional: write "
                                      "normal(mean, std)"),
    ("uniform(0.0, 1e999)", 39, "initialiser arguments are finite numbers, not inf"),
    ("normal(x, 1.0)", 33, "initialiser arguments are finite numbers, not a tensor (f32[B, 3])"),
])
def test_bad_initialisers(initialiser, col, message):
    error = error_of(model(f"param W: f32[3, 3] = {initialiser}", "return x"))
    assert located(error) == ("<string>", 2, col, message)


@pytest.mark.parametrize("expression, col, message", [
    ("x * 99999999999999999999", 13, "the integer 99999999999999999999 does not fit in 64 bits"),
    ("x * 9 ** 9 ** 9", 13, "9 ** 387420489 gives an integer past 64 bits"),
    ("x * (-8) ** 0.5", 13, "(-8) ** 0.5 is not a real number"),
    # In elementwise ops a float promotes the i64 tensor to f64 (numpy's rule); not in matmul.
    ("y @ 1e999", 9, "the constant inf meets an i64 tensor; convert the tensor with f32(...) "
                     "first"),
])
def test_constants_out_of_range(expression, col, message):
    assert located(error_of(model(f"h = {expression}", "return h"))) == ("<string>", 2, col,
                                                                        message)


# ---- as the command line shows them ----------------------------------------------------------

@pytest.mark.parametrize("body, shown", [
    (["h = relu(xx)", "return h"],
     ["2:14: error: unknown name 'xx'; did you mean 'x'?",
      "        h = relu(xx)",
      "                 ^"]),
    (["param W: f32[3] = glorot(1.0)", "return x"],
     ["2:23: error: glorot() takes 0 arguments, got 1",
      "        param W: f32[3] = glorot(1.0)",
      "                          ^"]),
])
def test_check_prints_the_error_with_its_line_and_a_caret(tmp_path, body, shown):
    path = tmp_path / "bad.nn"
    path.write_text(model(*body))
    result = chainrule_cli("check", path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[:3] == [f"{path}:{shown[0]}", *shown[1:]]


def test_a_gradient_of_an_integer_input_on_the_command_line(tmp_path):
    path = tmp_path / "m.nn"
    path.write_text(model("param W: f32[3, 3] = glorot()", "J = cross_entropy(x @ W, y)",
                          "return J"))
    result = chainrule_cli("grad", path, "--random-inputs", "--wrt", "y")
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (f"{path}:1:23: error: cannot differentiate with "
                                             f"respect to 'y': it is i64[B], and only float "
                                             f"values have gradients")


@pytest.mark.parametrize("args, message", [
    (["--dim", "B=x"], "chainrule run: error: argument --dim: B: expected a whole number"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_command_line_values_exit_2(args, message):
    result = chainrule_cli("run", ROOT / "examples" / "mlp.nn", "--random-inputs", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# ---- data given to a model --------------------------------------------------------------------

DATA_MODEL = model("s = sum(x, axis=1) + f32(y)", "return s")
X = np.zeros((4, 3), np.float32)
Y = np.zeros(4, np.int64)


@pytest.mark.parametrize("inputs, message", [
    ({"x": X}, "missing input 'y' (declared i64[B]); given 'x'"),
    ({"x": X, "y": Y, "z": Y}, "unknown input 'z'; the model's inputs are x, y"),
    ({"x": X.astype(np.float64) + 1e39, "y": Y},
     "input 'x' is f32 but the argument holds f64: it holds numbers too large for f32 (they "
     "would become inf); convert the data, or declare the input f64"),
    ({"x": X, "y": Y + 0.5},
     "input 'y' is i64 but the argument holds f64: it holds numbers with a fractional part, "
     "such as 0.5; convert the data, or declare the input f64"),
    ({"x": X[0], "y": Y},
     "input 'x' is declared f32[B, 3] but given f32[3]: it has 1 axes, not 2"),
    ({"x": np.zeros((4, 2), np.float32), "y": Y},
     "input 'x' is declared f32[B, 3] but given f32[4, 2]: axis 1 has size 2, not 3"),
    ({"x": np.zeros((32, 3), np.float32), "y": np.zeros(31, np.int64)},
     "input 'y' is declared i64[B] but given i64[31]: B is 32 in input 'x' but 31 here"),
], ids=["missing", "extra", "f32 overflow", "fraction", "rank", "fixed dim", "symbolic dim"])
def test_input_arrays_are_checked_against_their_declarations(inputs, message):
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=DATA_MODEL).run(**inputs)
    assert info.value.message == message


def test_input_files_are_checked_on_the_command_line(tmp_path):
    path = tmp_path / "m.nn"
    path.write_text(DATA_MODEL)
    np.savez(tmp_path / "data.npz", x=np.zeros((32, 3), np.float32), y=np.zeros(31, np.int64))
    result = chainrule_cli("run", path, "--inputs", tmp_path / "data.npz")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["chainrule: error: input 'y' is declared i64[B] but given i64[31]: "
                                          "B is 32 in input 'x' but 31 here"]


def test_pickled_objects_in_data_files_are_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=X, y=np.array([{"evil": 1}], dtype=object))
    message = (f"array 'y' in {path} holds Python objects (dtype object), which load only by "
               f"unpickling; chainrule reads data with pickle disabled, so save numeric arrays")
    with pytest.raises(ChainruleError) as info:
        load_npz(path)
    assert info.value.message == message
    model_path = tmp_path / "m.nn"
    model_path.write_text(DATA_MODEL)
    result = chainrule_cli("run", model_path, "--inputs", path)
    assert (result.returncode, result.stderr.splitlines()) == (1, [f"chainrule: error: {message}"])


def test_a_ragged_list_is_not_an_array():
    with pytest.raises(ChainruleError, match=r"^input 'x' is declared f32\[B, 3\] but given "
                                             r"something that is not an array \("):
        chainrule.compile(source=DATA_MODEL).run(x=[[1.0, 2.0, 3.0], [4.0]], y=Y[:2])
