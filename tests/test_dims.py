"""Dims as expressions (chainrule/ir/dims.py): canonical forms, their text, the type rules that
compute them, and the backends that evaluate them when a model runs at several sizes."""
from __future__ import annotations

import re

import numpy as np
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chainrule
from chainrule.gradcheck import format_rows, gradcheck
from chainrule.ir import ChainruleError, dims, parse_graph, print_graph
from chainrule.ir.verify import verify_all
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close

SYMBOLS = ("B", "S", "H")


# ---- canonical forms --------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("B*2*H", "2*H*B"),
    ("(B+1)*(B-1)", "B*B-1"),
    ("S+S+S", "3*S"),
    ("(B*H)//H", "B"),
    ("(4*S+2)//2", "2*S+1"),
    ("(2*S+1)//2", "S"),
    ("(6*B)%3", "0"),
    ("(4*S+3)%2", "1"),
    ("S-S+4", "4"),
    ("(S//2)//2", "S//4"),
    ("(3*B+1)//2", "B+(B+1)//2"),
    ("(2*B+2)//4", "(B+1)//2"),
    ("(H-2)//2+1", "H//2"),
    ("(2*S-T)//2", "S-T+T//2"),
])
def test_equal_dims_have_one_canonical_form(a, b):
    assert dims.parse(a) == dims.parse(b)
    assert hash(dims.parse(a)) == hash(dims.parse(b))
    assert str(dims.parse(a)) == str(dims.parse(b))


def test_canonical_forms_are_ints_symbols_or_expressions():
    assert dims.parse("2*3") == 6 and type(dims.parse("2*3")) is int
    assert dims.parse("(B*H)//H") == "B" and type(dims.parse("(B*H)//H")) is str
    assert isinstance(dims.parse("B*H"), dims.DimExpr)
    assert dims.parse("B*H") != dims.parse("B*S")


@pytest.mark.parametrize("text, printed", [
    ("B * H", "B*H"), ("s0 + 1", "s0+1"), ("-1 + S", "S-1"), ("(S - 1) // 2 + 1", "(S+1)//2"),
    ("(S-3)//2", "(S+1)//2-2"), ("2*((S+1)//2)", "2*((S+1)//2)"), ("(4*B+S)%2", "S%2"), ("-(S//2)", "-(S//2)"), ("B/2", "B//2"),
    ("batch.size*4", "4*batch.size"),
])
def test_dims_print_as_they_parse(text, printed):
    assert str(dims.parse(text)) == printed
    assert dims.parse(printed) == dims.parse(text)


@pytest.mark.parametrize("text", ["", "B +", "(B", "B ** 2", "2B", "B // 0"])
def test_text_that_is_no_dim_is_refused(text):
    with pytest.raises(dims.NotADim):
        dims.parse(text)


def _expressions():
    leaves = st.one_of(st.integers(1, 9), st.sampled_from(SYMBOLS))

    def extend(children):
        return st.one_of(
            st.tuples(st.sampled_from(["+", "-", "*"]), children, children),
            st.tuples(st.sampled_from(["//", "%"]), children, st.integers(1, 5)))
    return st.recursive(leaves, extend, max_leaves=8)


def _build(tree):
    if not isinstance(tree, tuple):
        return tree
    operator, left, right = tree
    function = {"+": dims.add, "-": dims.sub, "*": dims.mul, "//": dims.floordiv,
                "%": dims.mod}[operator]
    return function(_build(left), _build(right))


def _python(tree, env):
    if isinstance(tree, int):
        return tree
    if isinstance(tree, str):
        return env[tree]
    operator, left, right = tree
    a, b = _python(left, env), _python(right, env)
    return {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "//": int.__floordiv__,
            "%": int.__mod__}[operator](a, b)


@settings(max_examples=300, deadline=None)
@given(_expressions(), st.fixed_dictionaries({s: st.integers(1, 12) for s in SYMBOLS}))
def test_canonical_forms_compute_what_python_does(tree, env):
    dim = _build(tree)
    assert dims.evaluate(dim, env) == _python(tree, env)
    assert dims.evaluate(dims.parse(str(dim)), env) == _python(tree, env)
    assert dims.parse(str(dim)) == dim
    if dims.is_nonnegative(dim):  # a claim for every size, so for this one
        assert _python(tree, env) >= 0
    other = _build(("-", tree, "S"))
    if dims.provably_different(dim, other):
        assert _python(tree, env) != _python(tree, env) - env["S"]


def test_solving_and_substituting():
    assert dims.solve(dims.parse("2*B+1"), 7, {}) == ("B", 3)
    assert dims.solve(dims.parse("B*S"), 12, {"S": 4}) == ("B", 3)
    assert dims.solve(dims.parse("B*B"), 9, {}) is None  # not linear in B
    assert dims.solve(dims.parse("2*B"), 7, {}) is None  # no integer B
    assert dims.substitute(dims.parse("B*H+1"), {"H": 4}) == dims.parse("4*B+1")
    assert dims.provably_different("S", dims.parse("S+1"))
    assert dims.provably_different(dims.parse("6*B"), dims.parse("4*B"))
    assert not dims.provably_different("S", "B")
    assert dims.is_nonnegative(dims.parse("S-1")) and not dims.is_nonnegative(dims.parse("S-2"))
    assert not dims.is_nonnegative(dims.parse("(S-2)//2"))  # -1 when S is 1
    assert dims.is_nonnegative(dims.parse("(S-2)%3"))
    assert dims.solve(dims.parse("B+5"), 3, {}) is None     # B would be -2
    assert dims.solve(dims.parse("N//S"), 3, {"N": 6}) is None


# ---- the type rules ---------------------------------------------------------------------------

def type_of(signature: str, expression: str) -> str:
    model = chainrule.compile(source=f"model m({signature}) {{\n    y = {expression}\n"
                                     f"    return y\n}}\n")
    return str(model.graph.outputs[0].type)


@pytest.mark.parametrize("signature, expression, expected", [
    ("x: f32[B, S, 16]", "reshape(x, (-1, 4))", "f32[4*B*S, 4]"),
    ("x: f32[B, S, 16]", "reshape(x, (B*S, -1))", "f32[B*S, 16]"),
    ("x: f32[B, S, 16]", "reshape(x, (B, S, 4, 4))", "f32[B, S, 4, 4]"),
    ("x: f32[B*S, 16], t: f32[B, S]", "reshape(x, (B, -1, 16))", "f32[B, S, 16]"),
    ("x: f32[B, 3], t: f32[S, 3]", "concat(x, t, x)", "f32[2*B+S, 3]"),
    ("x: f32[B, S, 4]", "x[:, 0:S-1]", "f32[B, S-1, 4]"),
    ("x: f32[B, S, 4]", "x[:, 1:]", "f32[B, S-1, 4]"),
    ("x: f32[B, S, 4]", "x[:, ::2]", "f32[B, (S+1)//2, 4]"),
    ("x: f32[B, S, 4]", "x[:, S-1]", "f32[B, 4]"),
    ("x: f32[B, S+T, 4], t: f32[S]", "x[:, -S:]", "f32[B, S, 4]"),
    ("x: f32[B, S, 4]", "x[:, -1:]", "f32[B, 1, 4]"),
    ("x: f32[B, S, 4]", "x[:, -3:]", "f32[B, ?, 4]"),     # numpy takes min(3, S)
    ("x: f32[B, S, 4]", "x[:, 0:S+1]", "f32[B, S, 4]"),   # numpy clamps at the end
    ("x: f32[B, S, 4]", "x[:, 0:5]", "f32[B, ?, 4]"),
    ("x: f32[16, 4], t: f32[T]", "x[0:T]", "f32[T, 4]"),  # taken to lie within the 16
    ("x: f32[B, 4], t: f32[1, 4]", "x + t", "f32[B, 4]"),
    ("x: f32[B*H, S, 8], w: f32[8, 3]", "x @ w", "f32[B*H, S, 3]"),
    ("x: f32[B, 1, H, W], w: f32[2, 1, 3, 3]", "conv2d(x, w, padding=1)", "f32[B, 2, H, W]"),
    ("x: f32[B, 1, H, W], w: f32[2, 1, 3, 3]", "conv2d(x, w, stride=2)",
     "f32[B, 2, (H+1)//2-1, (W+1)//2-1]"),
    ("x: f32[B, 1, H, W]", "max_pool2d(x, 2)", "f32[B, 1, H//2, W//2]"),
    ("x: f32[B, 1, H, W]", "pad(x, (1, 2, 0, 0))", "f32[B, 1, H, W+3]"),
    ("x: f32[B, 1, H, W]", "avg_pool2d(x, 3, stride=2, padding=1)",
     "f32[B, 1, (H+1)//2, (W+1)//2]"),
    ("x: f32[B, S]", "zeros((B, S-1, 2))", "f32[B, S-1, 2]"),
    ("x: f32[B, S]", "arange(S*2)", "i64[2*S]"),
])
def test_type_rules_compute_dim_expressions(signature, expression, expected):
    assert type_of(signature, expression) == expected


@pytest.mark.parametrize("signature, expression, message", [
    ("x: f32[B, S], t: f32[B, S+1]", "x + t", "do not broadcast"),
    ("x: f32[B, 6]", "reshape(x, (B, 4))", "6*B elements cannot become 4*B"),
    ("x: f32[S, 4], w: f32[S+1, 2]", "x.T @ w", "inner dims S and S+1 differ"),
    ("x: f32[B, S]", "x[:, S]", "index S is out of range for axis 1 of size S"),
])
def test_provably_different_dims_are_type_errors(signature, expression, message):
    with pytest.raises(ChainruleError, match=re.escape(message)):
        type_of(signature, expression)


def test_declared_expression_dims_bind_and_are_checked_when_the_model_runs():
    model = chainrule.compile(source="model m(x: f32[2*B, 3], y: f32[B*S], t: f32[B, S]) {\n"
                                     "    z = zeros((B, S))\n    return sum(x) + sum(z)\n}\n")
    ok = {"x": np.ones((6, 3), np.float32), "y": np.ones(12, np.float32),
          "t": np.ones((3, 4), np.float32)}
    assert model.run(**ok)["add"] == 18.0
    with pytest.raises(ChainruleError, match=r"input 'x' is declared f32\[2\*B, 3\] but given "
                                             r"f32\[7, 3\]: axis 0 has size 7, but 2\*B is 6 "
                                             r"with B=3 \(from input 't'\)"):
        model.run(**{**ok, "x": np.ones((7, 3), np.float32)})
    with pytest.raises(ChainruleError, match=r"axis 0 has size 10, but B\*S is 12 with "
                                             r"B=3 \(from input 't'\), S=4 \(from input 't'\)"):
        model.run(**{**ok, "y": np.ones(10, np.float32)})


@pytest.mark.parametrize("signature", ["x: f32[B+S], y: f32[2*B]", "y: f32[2*B], x: f32[B+S]"])
def test_expression_dims_bind_whatever_order_the_inputs_come_in(signature):
    model = chainrule.compile(source=f"model m({signature}) {{\n    return sum(x) + sum(y)\n}}\n")
    assert model.run(x=np.ones(5, np.float32), y=np.ones(4, np.float32))["add"] == 9.0
    with pytest.raises(ChainruleError, match=r"axis 0 has size 1, which B\+S is for no size of "
                                             r"S with B=2 \(from input 'y'\)"):
        model.run(x=np.ones(1, np.float32), y=np.ones(4, np.float32))


def test_a_size_written_with_a_symbol_only_an_expression_holds_is_refused_at_its_line():
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source="model m(x: f32[2*B]) {\n"
                                 "    return sum(x) + sum(zeros((B, 4)))\n}\n")
    assert (info.value.line, info.value.col) == (2, 25)
    assert "its sizes are written with B, which no input declares as a dim of its own" in \
        info.value.message


def test_a_size_written_with_a_symbol_no_input_binds_is_refused():
    graph = parse_graph("graph g(%x: f32[B, 3]) {\n"
                        "  %v = constant() {value=1.0, dtype=f32} : f32[]\n"
                        "  %f = fill(%v) {shape=[N, 3]} : f32[N, 3]\n  return %f\n}\n")
    (problem,) = verify_all(graph)
    assert "its sizes are written with N, which no input declares as a dim of its own" in problem


# ---- text and backends ------------------------------------------------------------------------

ATTENTION_LIKE = """model heads(x: f32[B, S, 16]) {
    param w: f32[16, 48] = glorot()
    qkv = reshape(x @ w, (B, S, 3, 4, 4))
    q = transpose(qkv[:, :, 0], (0, 2, 1, 3))
    k = transpose(qkv[:, :, 1], (0, 2, 3, 1))
    v = transpose(qkv[:, :, 2], (0, 2, 1, 3))
    scores = softmax(q @ k / 2.0, axis=-1)
    mixed = reshape(transpose(scores @ v, (0, 2, 1, 3)), (B*S, 16))
    tail = mixed[B*S-1:, :] + zeros((1, 16)) + f32(arange(S))[S-1]
    return reshape(mixed, (B, S, 16)), tail
}
"""


def test_ir_text_reads_back_dim_expressions():
    graph = chainrule.compile(source=ATTENTION_LIKE).graph
    text = print_graph(graph)
    assert "shape=[B*S, 16]" in text and "f32[B*S, 16]" in text
    assert "starts=[B*S-1]" in text
    assert print_graph(parse_graph(text)) == text


@pytest.mark.parametrize("batch, sequence", [(2, 5), (3, 7), (1, 1)])
def test_one_export_runs_at_every_batch_size_and_sequence_length(batch, sequence):
    model = chainrule.compile(source=ATTENTION_LIKE)
    session = onnxruntime.InferenceSession(model.to_onnx().SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).normal(size=(batch, sequence, 16)).astype(np.float32)
    reference = model.run(backend="numpy-check", x=x)
    exported = session.run(None, {"x": x})
    for info, value in zip(session.get_outputs(), exported, strict=True):
        assert_close(value, reference[info.name], 1e-5, what=info.name)
        assert_close(model.run(x=x)[info.name], reference[info.name], 1e-6, what=info.name)


def test_exported_types_name_their_dim_expressions():
    proto = chainrule.compile(source=ATTENTION_LIKE).to_onnx()
    dims_of = {info.name: [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
               for info in [*proto.graph.output, *proto.graph.value_info]}
    assert dims_of[proto.graph.output[0].name] == ["B", "S", 16]
    assert dims_of[proto.graph.output[1].name] == [1, 16]


@pytest.mark.parametrize("batch, sequence", [(3, 4), (2, 1)])
def test_gradients_through_dim_expressions_match_finite_differences(batch, sequence):
    model = chainrule.compile(source=ATTENTION_LIKE.replace(
        "return reshape(mixed, (B, S, 16)), tail", "return sum(mixed * mixed) + sum(tail)"))
    x = np.random.default_rng(0).normal(size=(batch, sequence, 16))
    rows = gradcheck(model, {"x": x}, backends=("numpy", "onnxruntime"))
    assert rows and all(row.passed for row in rows), format_rows(rows)


STRIDED_CONV = """model strided(x: f32[B, 2, H, W]) {
    param w: f32[3, 2, 3, 2] = glorot()
    y = conv2d(x, w, stride=(2, 3), padding=1)
    return sum(y * y)
}
"""


@pytest.mark.parametrize("height, width", [(7, 6), (8, 8), (5, 4)])
def test_a_strided_conv_over_symbolic_sizes_has_gradients_at_every_size(height, width):
    # How many rows past the last window no window reads, (H+2-3)%2 and (W+2-2)%3, depends on
    # the size: the gradient pads by as many as there can be and is sliced to x's size.
    model = chainrule.compile(source=STRIDED_CONV)
    x = np.random.default_rng(height).normal(size=(2, 2, height, width))
    rows = gradcheck(model, {"x": x}, backends=("numpy",))
    assert rows and all(row.passed for row in rows), format_rows(rows)
    x = x.astype(np.float32)
    ours, exported = (model.grad(wrt=["w", "x"], backend=backend, x=x)
                      for backend in ("numpy", "onnxruntime"))
    for name in ("w", "x"):
        assert exported[name].shape == ours[name].shape
        assert_close(exported[name], ours[name], 1e-5, what=name)


@pytest.mark.parametrize("backend", ["numpy", "numpy-check", "onnxruntime"])
def test_dims_that_may_be_equal_compile_and_the_run_checks_them_at_the_line(backend):
    model = chainrule.compile(source="model m(x: f32[B, N], w: f32[S, 3]) {\n"
                                     "    y = x @ w\n    return y\n}\n")
    assert str(model.graph.outputs[0].type) == "f32[B, 3]"
    assert model.run(backend=backend, x=np.ones((2, 4), np.float32),
                     w=np.ones((4, 3), np.float32))["y"].shape == (2, 3)
    with pytest.raises(ChainruleError) as info:
        model.run(backend=backend, x=np.ones((2, 4), np.float32), w=np.ones((5, 3), np.float32))
    assert (info.value.line, info.value.col) == (2, 9)
    assert "matmul" in info.value.message


def test_random_inputs_size_expression_dims_from_the_symbols(tmp_path):
    path = tmp_path / "m.nn"
    path.write_text("model m(x: f32[B, S], y: f32[B*S, 2]) {\n"
                    "    return sum(x) + sum(reshape(y, (B, S, 2)))\n}\n")
    result = chainrule_cli("run", path, "--random-inputs", "--dim", "B=2", "--dim", "S=3")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("s, t", [(3, 3), (4, 3), (2, 7), (1, 1)])
def test_exported_floor_division_floors_a_negative_numerator(s, t):
    # (2*S-T)//2 is S-T+T//2 in canonical form: T//2 and the sum are computed at run time,
    # and ONNX's Div truncates where the IR's // floors.
    model = chainrule.compile(source="model m(x: f32[S], y: f32[T]) {\n"
                                     "    return f32(arange((2*S-T)//2 + T))\n}\n")
    session = onnxruntime.InferenceSession(model.to_onnx().SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feeds = {"x": np.ones(s, np.float32), "y": np.ones(t, np.float32)}
    (exported,) = session.run(None, feeds)
    assert exported.shape == ((2 * s - t) // 2 + t,)
    assert model.run(**feeds)[model.graph.outputs[0].name].shape == exported.shape


SPATIAL = """model m(x: f32[B, 2, H, W], t: f32[B, 3, H, W]) {
    param w: f32[3, 2, 3, 3] = glorot()
    y = conv2d(x, w, padding=1)
    p = max_pool2d(y, 2)
    return mse(y, t) + mean(p * p)
}
"""


@pytest.mark.parametrize("height, width", [(4, 6), (7, 5)])
def test_convolution_and_pooling_over_symbolic_spatial_sizes_train_on_both_backends(height,
                                                                                    width):
    model = chainrule.compile(source=SPATIAL)
    rng = np.random.default_rng(height)
    feeds = {"x": rng.normal(size=(2, 2, height, width)).astype(np.float32),
             "t": rng.normal(size=(2, 3, height, width)).astype(np.float32)}
    ours, theirs = model.grad(**feeds), model.grad(backend="onnxruntime", **feeds)
    for name, value in ours.items():
        assert_close(theirs[name], value, 1e-5, what=name)


@pytest.mark.parametrize("pooling, op", [("avg_pool2d(y, 2, ceil_mode=true)", "avg_pool"),
                                         ("avg_pool2d(y, 2)", "avg_unpool")])
def test_what_the_onnx_export_must_size_when_exported_is_refused_at_its_line(pooling, op):
    model = chainrule.compile(source=SPATIAL.replace("max_pool2d(y, 2)", pooling))
    with pytest.raises(ChainruleError) as info:
        model.to_onnx(grad=True)
    assert info.value.line == 4
    assert f"the ONNX form of {op} over the symbolic spatial size H, W" in info.value.message
    assert "--dim H=N" in info.value.message


@pytest.mark.parametrize("a, b, expected", [
    ("2*((S+1)//2)", "S", True),   # torch.chunk's last end: at least the axis
    ("S", "2*((S+1)//2)", False),
    ("S", "2*(S//2)", True),
    ("3*((S+2)//3)", "S", True),
    ("2*(S//2)", "S", False),
    ("(S-1)//2", "0", True),
    ("(S-2)//2", "0", False),
    ("3", "S%4", True),
    ("2", "S%4", False),
])
def test_at_least_bounds_quotients_by_numbers(a, b, expected):
    assert dims.at_least(dims.parse(a), dims.parse(b)) is expected
