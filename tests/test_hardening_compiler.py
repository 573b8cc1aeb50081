"""Hostile model text for the compiler: nesting past what recursion holds, nests of loops and
calls that ask for endless lowering, integers at and past 64 bits, tensors of too many dims, and
model text that is not text.

Each case compiles, or gives a located ChainruleError, with bounded work (function calls
counted, never seconds), on both backends alike.
"""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule import ChainruleError
from chainrule.dsl.lower import MAX_NESTING
from chainrule.ir import limits, parse_graph
from chainrule.ir.limits import MAX_SCAN_NESTING
from chainrule.ir.dsl_printer import print_dsl
from support.cli import chainrule as chainrule_cli
from support.cli import fails
from support.fuzzing import within_calls
from support.paths import EXAMPLES

# Compiling a model of a few dozen lines takes some 100,000 calls; a located refusal of a
# nest that would take forever takes no more than a few times that.
CALLS_FOR_A_REFUSAL = 3_000_000

X = np.array([1.0, 2.0], np.float32)


def error_of(source: str, **options) -> ChainruleError:
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source, **options)
    return caught.value


def model_with_batch() -> str:
    return "model m(x: f32[B, 2]) {\n    y = x * 2\n    return y\n}\n"


def model(body: str, definitions: str = "") -> str:
    return f"{definitions}model m(x: f32[2]) {{\n    y = x\n{body}    return y\n}}\n"


def nested(opening: str, depth: int, inner: str = "y = y + 1.0\n") -> str:
    """`opening {` `depth` times around `inner`; `{i}` in the opening is its level."""
    return ("".join(opening.format(i=i) + " {\n" for i in range(depth)) + inner
            + "}\n" * depth)


def loops(depth: int, length: int = 1, inner: str = "y = y + 1.0\n") -> str:
    return model(nested(f"for k{{i}} in range({length})", depth, inner))


def chained_functions(depth: int, body: str) -> str:
    """g0 returns `body` of a; each g<i> returns g<i-1> of it."""
    return (f"def g0(a) {{\n    b = a\n{body}    return b\n}}\n"
            + "".join(f"def g{i}(a) {{\n    return g{i - 1}(a)\n}}\n" for i in range(1, depth)))


# ---- nesting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, opening", [("loops", "for k{i} in range(1)"),
                                           ("ifs", "if true")])
def test_blocks_nested_past_the_limit_are_a_located_error(kind, opening):
    error = error_of(model(nested(opening, 500)))
    assert error.message == f"{kind} nested {MAX_NESTING + 1} deep here; at most {MAX_NESTING}"
    assert error.line == MAX_NESTING + 3  # the block that goes one past


@pytest.mark.parametrize("command", ["check", "run", "ir"])
def test_deep_nesting_through_the_cli_is_one_line(tmp_path, command):
    path = tmp_path / "deep.nn"
    path.write_text(loops(500))
    result = fails(chainrule_cli(command, path))
    assert f"deep.nn:{MAX_NESTING + 3}:1: error: loops nested {MAX_NESTING + 1} deep here; " \
           f"at most {MAX_NESTING}" in result.stderr


def test_loops_nested_to_the_limit_compile_and_run():
    compiled = chainrule.compile(source=loops(MAX_NESTING))
    for backend in ("numpy", "onnxruntime"):
        np.testing.assert_array_equal(compiled.run(backend=backend, x=X)["y"], X + 1.0)


def test_an_else_if_chain_of_any_length_is_not_nesting():
    chain = "".join(f"if k == {i} {{\n    y = y + {i}.0\n}} else " for i in range(3000))
    source = model(f"    let k = 2999\n    {chain}{{\n    y = -y\n}}\n")
    np.testing.assert_array_equal(chainrule.compile(source=source).run(x=X)["y"], X + 2999.0)


def test_layers_made_inside_layers_past_the_limit_are_a_located_error():
    definitions = "layer L0() {\n    forward(a) {\n        return a\n    }\n}\n" + "".join(
        f"layer L{i}() {{\n    layer inner = L{i - 1}()\n    forward(a) {{\n"
        f"        return inner(a)\n    }}\n}}\n" for i in range(1, 300))
    error = error_of(definitions + "model m(x: f32[2]) {\n    layer l = L299()\n"
                                   "    y = l(x)\n    return y\n}\n")
    assert error.message == f"layers nested {MAX_NESTING + 1} deep here; at most {MAX_NESTING}"


def test_calls_and_loops_nest_together():
    """64 calls deep (the most), and loops inside the last: each opens a block."""
    inner_loops = nested("for k{i} in range(1)", MAX_NESTING - 63, "b = b + 1.0\n")
    source = chained_functions(64, inner_loops) + "model m(x: f32[2]) {\n    y = g63(x)\n" \
                                                  "    return y\n}\n"
    error = error_of(source)
    assert error.message == (f"blocks (64 function calls, {MAX_NESTING - 63} loops) nested "
                             f"{MAX_NESTING + 1} deep here; at most {MAX_NESTING}")


def test_scans_nested_past_the_limit_are_refused():
    error = error_of(loops(MAX_SCAN_NESTING + 1), loops="scan")
    assert error.message.startswith(f"the loop over 'k{MAX_SCAN_NESTING}' would be a scan "
                                    f"nested {MAX_SCAN_NESTING + 1} deep; scans nest at most "
                                    f"{MAX_SCAN_NESTING} deep")


def ir_of_nested_scans(depth: int) -> str:
    """IR text of `depth` scans, each the body of the one around it."""
    lines = ["graph m(%x: f32[2]) {"]
    for level in range(depth):
        outer = f"%in{level - 1}" if level else "%x"
        lines.append(f"  %out{level} = scan({outer}) {{length=1, carried=1, scanned=0, "
                     f"reverse=false}} body(%in{level}: f32[2]) {{")
    lines += ["  %y = neg(%in{}) : f32[2]".format(depth - 1), "  return %y"]
    for level in reversed(range(depth)):
        lines += ["  } : f32[2]", f"  return %out{level}"]
    return "\n".join(lines + ["}", ""])


def test_ir_text_of_scans_nested_past_the_limit_is_a_located_error():
    """The DSL makes no deeper scans, but IR text may: 200 of them overflowed Python's stack in
    the numpy backend, and 1,000 the IR reader."""
    chainrule.compile(source=ir_of_nested_scans(MAX_SCAN_NESTING))
    for depth in (MAX_SCAN_NESTING + 1, 200, 1000):
        error = error_of(ir_of_nested_scans(depth))
        assert error.message == (f"this scan is nested {MAX_SCAN_NESTING + 1} deep; scans nest "
                                 f"at most {MAX_SCAN_NESTING} deep")


def test_scans_nested_to_the_limit_go_through_every_walk(tmp_path):
    """The printer, the IR parser, autodiff, both backends, the ONNX export and import and the
    decompiler all recurse into scan bodies."""
    source = loops(MAX_SCAN_NESTING).replace("return y", "J = sum(y * y)\n    return J, y")
    compiled = chainrule.compile(source=source, loops="scan")
    assert parse_graph(compiled.ir(grad=True)).nodes
    for backend in ("numpy", "onnxruntime"):
        objective, y = compiled.run(backend=backend, x=X).values()
        np.testing.assert_array_equal(y, X + 1.0)
        gradient = compiled.grad(wrt=["x"], backend=backend, x=X)
        np.testing.assert_allclose(gradient["x"], 2 * (X + 1.0))
    path = tmp_path / "m.onnx"
    compiled.to_onnx(path)
    imported = chainrule.import_onnx(path)
    decompiled = chainrule.compile(source=print_dsl(imported.graph))
    for reread in (imported, decompiled):
        np.testing.assert_array_equal(list(reread.run(x=X).values())[1], X + 1.0)


# ---- work: loops and calls that lower without end ---------------------------------------------

def test_nested_loops_that_add_no_node_are_refused_before_unrolling():
    """40 nested range(2) loops would lower their body 2**40 times."""
    with within_calls(CALLS_FOR_A_REFUSAL):
        error = error_of(loops(40, length=2, inner="z = y\n"))
    assert error.message.startswith("17 nested loops unroll 2 × 2 × 2 × ... × 2 × 2 = 131,072 "
                                    "iterations of this one; a model lowers at most 100,000 "
                                    "blocks of statements")
    assert error.line == 19  # the 17th loop


def test_loops_one_after_another_count_together(monkeypatch):
    monkeypatch.setattr(limits, "MAX_LOWERED_BLOCKS", 1000)
    body = "".join(f"    for k{i} in range(400) {{\n        z = y\n    }}\n" for i in range(3))
    error = error_of(model(body), loops="unroll")
    assert error.message.startswith("the model lowers more than 1,000 blocks of statements by "
                                    "here (each unrolled loop iteration")
    assert error.line == 9  # the third loop


def test_functions_that_call_each_other_twice_are_refused(monkeypatch):
    """g<i> calls g<i-1> twice: 2**40 calls of functions that add no node."""
    monkeypatch.setattr(limits, "MAX_LOWERED_BLOCKS", 1000)
    definitions = "def g0(a) {\n    return a\n}\n" + "".join(
        f"def g{i}(a) {{\n    b = g{i - 1}(a)\n    return g{i - 1}(b)\n}}\n" for i in range(1, 40))
    with within_calls(CALLS_FOR_A_REFUSAL):
        error = error_of(model("    y = g39(y)\n", definitions))
    assert error.message.startswith("the model lowers more than 1,000 blocks")


def test_layers_that_make_two_of_the_next_are_refused(monkeypatch):
    monkeypatch.setattr(limits, "MAX_LOWERED_BLOCKS", 1000)
    definitions = "layer L0() {\n    forward(a) {\n        return a\n    }\n}\n" + "".join(
        f"layer L{i}() {{\n    layer p = L{i - 1}()\n    layer q = L{i - 1}()\n"
        f"    forward(a) {{\n        return q(p(a))\n    }}\n}}\n" for i in range(1, 40))
    with within_calls(CALLS_FOR_A_REFUSAL):
        error = error_of(definitions + "model m(x: f32[2]) {\n    layer l = L39()\n"
                                       "    y = l(x)\n    return y\n}\n")
    assert error.message.startswith("the model lowers more than 1,000 blocks")


@pytest.mark.parametrize("mode", ["auto", "scan"])
def test_nested_loops_whose_bodies_cannot_be_scans_are_bounded(monkeypatch, mode):
    """In auto, a loop of more than 16 steps tries a scan, and unrolls when its body turns out
    not to be one. A number carried through the loops is refused only once a scan's body is
    lowered, so each level lowers its body both ways: 21**4 bodies here."""
    monkeypatch.setattr(limits, "MAX_LOWERED_BLOCKS", 1000)
    source = model(nested("for k{i} in range(20)", 4, "c = c + 1\n")).replace(
        "    y = x\n", "    y = x\n    c = 0\n")
    with within_calls(CALLS_FOR_A_REFUSAL):
        error_of(source, loops=mode)


def test_the_examples_lower_well_within_the_limit(monkeypatch):
    monkeypatch.setattr(limits, "MAX_LOWERED_BLOCKS", 1000)
    for path in EXAMPLES:
        chainrule.compile(path)


# ---- integers at and past 64 bits -------------------------------------------------------------

INT64_MAX = "9223372036854775807"
INT64_MIN = f"(-{INT64_MAX} - 1)"
XS = np.arange(12, dtype=np.float32).reshape(2, 6)


def both_backends(expression: str, declared: str = "f32[2, 6]") -> list:
    compiled = chainrule.compile(source=f"model m(x: {declared}) {{\n    y = {expression}\n"
                                        f"    return y\n}}\n")
    return [next(iter(compiled.run(backend=backend, x=XS).values()))
            for backend in ("numpy", "onnxruntime")]


@pytest.mark.parametrize("bounds, reference", [
    (f"0:{INT64_MAX}", XS[:, 0:2**63 - 1]),
    (f"{INT64_MIN}:{INT64_MAX}", XS[:, -2**63:2**63 - 1]),
    (f"{INT64_MAX}:{INT64_MIN}:-1", XS[:, 2**63 - 1:-2**63:-1]),
    (f"{INT64_MAX}::{INT64_MIN}", XS[:, 2**63 - 1::-2**63]),
    (f"1::{INT64_MAX}", XS[:, 1::2**63 - 1]),
    (f"-2:{INT64_MIN}:-2", XS[:, -2:-2**63:-2]),
])
def test_slices_at_the_int64_limits_agree_with_numpy(bounds, reference):
    for result in both_backends(f"x[:, {bounds}]"):
        np.testing.assert_array_equal(result, reference)


@pytest.mark.parametrize("bound", [f"S + {INT64_MAX}", f"S * {INT64_MAX} * 4",
                                   f"S - 1 - {INT64_MAX}", "S * 2**40"])
def test_a_dim_expression_with_a_number_past_a_tensors_size_is_refused(bound):
    """onnxruntime computes `S + 2**63 - 1` in int64, which wraps round, while numpy's Python
    integers do not: the backends would disagree, or one would overflow."""
    error = error_of(f"model m(x: f32[2, S]) {{\n    y = x[:, 0:{bound}]\n    return y\n}}\n")
    assert "a dim computes with numbers up to 2,147,483,648" in error.message
    assert (error.line, error.col) == (2, 16)


def test_a_declared_dim_with_a_number_past_a_tensors_size_is_refused():
    error = error_of("model m(x: f32[S * 4294967296]) {\n    return x\n}\n")
    assert error.message.startswith("the dim 4294967296*S holds the number 4294967296")


@pytest.mark.parametrize("expression", [f"i64(x) + {INT64_MAX}", "i64(x) + (2**53 + 1)",
                                        f"full((2,), {INT64_MAX}, dtype=i64)",
                                        f"i64(x) - {INT64_MAX}", "i64(1e300)"])
def test_an_i64_constant_its_f64_cannot_hold_is_refused(expression):
    """A constant node holds an f64: 2**63 - 1 would round to 2**63, past int64, and 2**53 + 1
    to 2**53."""
    error = error_of(f"model m(x: f32[2, 6]) {{\n    y = {expression}\n    return y\n}}\n")
    assert "is no i64 a constant holds exactly" in error.message
    assert error.line == 2


@pytest.mark.parametrize("expression, reference", [
    ("i64(x) + 2**53", XS.astype(np.int64) + 2**53),
    ("i64(x) * 2**62", XS.astype(np.int64) * 2**62),
    (f"maximum(i64(x), {INT64_MIN})", XS.astype(np.int64)),
])
def test_an_i64_constant_its_f64_holds_is_exact_on_both_backends(expression, reference):
    for result in both_backends(expression):
        np.testing.assert_array_equal(result, reference)


# ---- ranks ------------------------------------------------------------------------------------

def test_a_declared_type_of_too_many_dims_is_a_located_error():
    error = error_of(f"model m(x: f32[{', '.join(['1'] * 70)}]) {{\n    return x\n}}\n")
    assert error.message == f"input 'x' is f32[...] of 70 dims; a tensor has at most " \
                            f"{limits.MAX_RANK}"
    assert (error.line, error.col) == (1, 9)


def test_an_op_that_gives_too_many_dims_is_a_located_error():
    axes = ", ".join(map(str, range(40)))
    error = error_of(f"model m(x: f32[2]) {{\n    y = unsqueeze(x, ({axes}))\n    return y\n}}\n")
    assert error.message == f"unsqueeze gives f32[...] of 41 dims; a tensor has at most " \
                            f"{limits.MAX_RANK}"
    assert error.line == 2


def onnx_model(nodes, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


@pytest.mark.parametrize("rank", [40, 64])
@pytest.mark.parametrize("making", ["Expand", "Reshape", "Constant"])
def test_a_folded_onnx_constant_of_too_many_dims_is_refused_naming_the_node(making, rank):
    """numpy's broadcast stops at 32 dims with a RuntimeError, and numpy 1 makes no array of
    more than 32: the importer refuses such a constant whatever the numpy."""
    ones = [1] * rank
    if making == "Constant":
        value = onnx.TensorProto(name="v", data_type=TensorProto.INT64, dims=ones, int64_data=[1])
        first = helper.make_node("Constant", [], ["c"], name="big", value=value)
        initializers = [ints("one", [1])]
    else:
        first = helper.make_node(making, ["one", "s"], ["c"], name="big")
        initializers = [ints("one", [1]), ints("s", ones)]
    nodes = [first, helper.make_node("Reshape", ["c", "one"], ["flat"]),
             helper.make_node("Cast", ["flat"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "f"], ["y"])]
    with pytest.raises(ChainruleError) as caught:
        chainrule.import_onnx(onnx_model(nodes, initializers))
    notes = [message for _, message in caught.value.notes]
    assert any(f"{rank} dims; a tensor has at most {limits.MAX_RANK}" in note
               for note in notes), notes
    assert any(loc is not None and "big" in str(loc) for loc, _ in caught.value.notes)


# ---- model text that is not text ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["\0", "m\0.nn", b"\0", b"m\0.nn"])
def test_a_path_with_a_nul_byte_is_an_error(path):
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(path)
    assert "NUL byte" in caught.value.message


def test_a_path_given_as_bytes_is_read():
    compiled = chainrule.compile(bytes(EXAMPLES[0]))
    assert compiled.graph.nodes


def test_source_given_as_bytes_compiles():
    compiled = chainrule.compile(source=model("    y = y + 1.0\n").encode())
    np.testing.assert_array_equal(compiled.run(x=X)["y"], X + 1.0)


def test_source_bytes_that_are_not_utf8_are_an_error():
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=b"model m() {\xff", filename="m.nn")
    assert caught.value.message == ("m.nn: the model text is not UTF-8: byte 0xff at offset "
                                    "11 (invalid start byte)")


@pytest.mark.parametrize("source", ["\0", "model m(x: f32[2]) {\n    y = x\0\n    return y\n}\n",
                                    "graph \0"])
def test_a_nul_byte_in_source_is_a_located_error(source):
    error = error_of(source)
    assert error.message == "unexpected character '\\x00'"
    assert error.line >= 1 and error.col >= 1


@pytest.mark.parametrize("value", ["9.223372036854776e+18", "-1e300", "1e300"])
def test_ir_text_of_an_i64_constant_past_int64_is_a_located_error(value):
    """IR text writes a constant's f64 as it likes; the DSL's exactness check does not see it."""
    text = chainrule.compile(source=model("    y = i64(x) + 5\n")).ir()
    error = error_of(text.replace("value=5.0", f"value={value}"), filename="m.cir")
    assert error.message.startswith("an i64 constant lies in [-2**63, 2**63)")
    assert error.line == 3


def test_the_least_i64_reads_back_from_ir_text():
    text = chainrule.compile(source=model("    y = i64(x) + 5\n")).ir()
    result = chainrule.compile(source=text.replace("value=5.0", "value=-9.223372036854776e+18"),
                               filename="m.cir").run(x=X)
    assert result["y"].tolist() == [-2**63 + 1, -2**63 + 2]


def test_an_empty_path_is_an_error_that_says_so():
    with pytest.raises(ChainruleError, match="an empty path names no file"):
        chainrule.compile("")


@pytest.mark.parametrize("size", [-1, 2**63, 10**20, 2.5, True, "8", None])
def test_a_dim_bound_to_no_size_a_dim_can_be_is_refused(size):
    with pytest.raises(ChainruleError, match="dims: B must be a whole number from 0 to"):
        chainrule.compile(str(EXAMPLES[0]), dims={"B": size})


def test_a_dim_bound_by_a_numpy_integer_compiles():
    model = chainrule.compile(source=model_with_batch(), dims={"B": np.int64(3)})
    assert model.graph.inputs[0].type.shape == (3, 2)
