"""The decompiler: print_dsl(graph) is .nn text that compiles back to the same graph.

Every example and test model, every op case of tests/op_cases.py and the cases below go
graph -> text -> graph; the two graphs must match node for node (ops, inputs, attrs, types,
params, outputs, updates) and compute the same outputs, bit for bit.
"""
import math

import numpy as np
import pytest

import chainrule
from chainrule.api import FRONT_END_PASSES, Model
from chainrule.cli.inputs import random_inputs
from chainrule.dsl import lower_source
from chainrule.ir import (OPS, ChainruleError, Graph, GraphBuilder, InitSpec, Param, SourceLoc,
                          TensorType, Value, print_graph)
from chainrule.ir import dims
from chainrule.ir.dsl_printer import dsl_names, print_dsl
from chainrule.ir.shapes import TO_END, TO_START
from chainrule.passes.manager import run_passes
from op_cases import CASES, Arg, Case, F, draw, ints, labels, pool_window
from support.graphs import structure
from support.paths import EXAMPLES, ROOT

MODELS = EXAMPLES + sorted((ROOT / "tests" / "models").glob("*.nn"))
FUSED = {op for op, spec in OPS.items() if "fused" in spec.traits}


def check_names(original: Graph, printed: Graph) -> None:
    """Inputs and params keep their DSL names; outputs are known by them (an update by
    `<state>.next`)."""
    names = dsl_names(original)
    for before, after in zip(original.inputs + original.param_values(),
                             printed.inputs + printed.param_values(), strict=True):
        assert after.name == names[before.name]
    updates = set(original.updates.values())
    expected = [names[v.name] for v in original.outputs if v.name not in updates]
    expected += [f"{names[state]}.next" for state in original.updates]
    assert [v.name for v in printed.outputs] == expected


def assert_same_outputs(expected: dict, actual: dict) -> None:
    """Output by output, in order (check_names checks their names)."""
    assert len(expected) == len(actual)
    for before, after in zip(expected.values(), actual.values(), strict=True):
        assert before.dtype == after.dtype
        np.testing.assert_array_equal(before, after)  # NaNs match NaNs


def reprinted(model: Model) -> Model:
    """The model printed and compiled again, holding the same param values."""
    printed = chainrule.compile(source=print_dsl(model.graph))
    names = dsl_names(model.graph)
    printed.set_params({names[name]: value for name, value in model.params.items()})
    return printed


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_models_round_trip(path):
    model = chainrule.compile(str(path))
    printed = reprinted(model)
    assert structure(printed.graph) == structure(model.graph)
    check_names(model.graph, printed.graph)
    feeds = random_inputs(model.graph, {}, 0, {})
    assert_same_outputs(model.run(**feeds), printed.run(**feeds))
    assert statements(print_dsl(printed.graph)) == statements(print_dsl(model.graph))


def statements(text: str) -> list[str]:
    """The text without its location comments."""
    return [line.split("  #")[0].rstrip() for line in text.splitlines()]


@pytest.mark.parametrize("name", ["gradient_penalty.nn", "hvp_f64.nn"])
def test_grad_prints_as_grad_before_it_expands(name):
    path = next(p for p in MODELS if p.name == name)
    text = print_dsl(lower_source(path.read_text(), str(path)))
    assert "= grad(" in text
    assert structure(chainrule.compile(source=text).graph) == structure(chainrule.compile(str(path)).graph)


@pytest.mark.parametrize("name", ["mlp.onnx", "lenet_bn.onnx"])
def test_imported_models_round_trip(name):
    """The decompiler's purpose: an imported model as text, its values saved by DSL name."""
    folder = ROOT / "tests" / "fixtures" / "onnx"
    model = chainrule.import_onnx(str(folder / name))
    text = print_dsl(model.graph, header=f"imported from {name}")
    assert text.startswith(f"# imported from {name}\nmodel ")
    first = next(n for n in model.graph.nodes if n.loc and n.loc.node)
    assert f"  # {first.loc.node}\n" in text  # an imported node's comment is its ONNX name
    printed = reprinted(model)
    assert structure(printed.graph) == structure(model.graph)
    check_names(model.graph, printed.graph)
    feeds = random_inputs(model.graph, {}, 0, {})
    assert_same_outputs(model.run(**feeds), printed.run(**feeds))


# ---- hand-built graphs: every op a front end emits -----------------------------------------

def B(*shape, dtype="f64"):
    return Arg(shape, dtype, "bool" if dtype == "bool" else "any")


def constant(value, dtype):
    return Case("constant", (), {"value": value, "dtype": dtype})


EXTRA_CASES = [
    constant(0.1, "f32"), constant(float(np.float32(0.1)), "f32"), constant(-0.0, "f32"),
    constant(math.inf, "f32"), constant(math.nan, "f32"), constant(1e39, "f32"),
    constant(0.30000000000000004, "f32"), constant(0.1, "f64"), constant(-math.inf, "f64"),
    constant(5e-324, "f64"), constant(3.0, "i64"), constant(float(TO_START), "i64"),
    constant(1.0, "bool"), constant(0.0, "bool"),
    Case("arange", (), {"n": 5}),
    Case("cast", (F((3,), "f32"),), {"dtype": "i64"}),
    Case("cast", (B(2, dtype="bool"),), {"dtype": "f32"}),
    Case("cast", (labels((4,), 3),), {"dtype": "bool"}),
    Case("sign", (F((2, 3)),)),
    Case("floor", (F((2, 3)),)),
    Case("stop_gradient", (F((2, 3)),)),
    Case("top_k_indices", (F((3, 5)),), {"k": 2, "axis": 0, "largest": False}),
    *(Case(op, (F((3, 4)), F((4,)))) for op in ("less", "less_equal", "greater",
                                                 "greater_equal", "equal", "not_equal")),
    Case("logical_and", (B(3, dtype="bool"), B(3, dtype="bool"))),
    Case("logical_or", (B(2, 1, dtype="bool"), B(3, dtype="bool"))),
    Case("logical_not", (B(3, dtype="bool"),)),
    *(Case(op, (labels((3, 4), 9), labels((4,), 9))) for op in ("bitwise_and", "bitwise_or",
                                                                 "bitwise_xor")),
    Case("bitwise_not", (labels((3,), 9),)),
    Case("argmax", (F((3, 4)),), {"axis": 1}),
    Case("argmin", (F((3, 4)),), {"axis": -1, "keepdims": True}),
    Case("numel", (F((3, 4)),)),
    Case("numel", (labels((3, 4), 2),), {"axes": (0,), "dtype": "f64"}),
    Case("one_hot", (labels((5,), 4),), {"depth": 4}),
    Case("one_hot", (labels((2, 3), 3),), {"depth": 3, "dtype": "f64"}),
    Case("dropout_mask", (F((3, 4)),), {"p": 0.25, "seed": 7}),
    Case("train_or_eval", (F((2,)), F((2,)))),
    Case("transpose", (F((2, 3, 4)),), {"perm": (2, 1, 0)}),  # x.T
    Case("transpose", (F(()),), {"perm": ()}),
    Case("reshape", (F((1, 1)),), {"shape": ()}),
    Case("sum", (F((2, 3)),), {"axes": (), "keepdims": False}),
    # slices: indexing where it gives these attrs, slice(...) where it does not
    Case("slice", (F((6, 5)),), {"starts": (TO_END,), "ends": (TO_START,), "axes": (1,),
                                 "steps": (-1,)}),
    Case("slice", (F((6, 5)),), {"starts": (-1, 1), "ends": (1, TO_END), "axes": (0, 1),
                                 "steps": (-2, 3)}),
    Case("slice", (F((6, 5)),), {"starts": (1, 0), "ends": (3, 2), "axes": (1, 0),
                                 "steps": (1, 1)}),
    Case("slice", (F((6, 5)),), {"starts": (0,), "ends": (TO_END,), "axes": (0,), "steps": (1,)}),
    Case("slice", (F((6, 5)),), {"starts": (TO_START,), "ends": (2,), "axes": (0,),
                                 "steps": (1,)}),
    Case("slice", (F((6, 5)),), {"starts": (), "ends": (), "axes": (), "steps": ()}),
    Case("concat", (F((2, 3)), F((2, 3)), F((2, 1))), {"axis": -1}),
    # convolution and pooling: PyTorch's built-ins where the pads are symmetric
    Case("conv", (F((2, 3, 5, 6)), F((4, 3, 3, 3))),
         {"strides": (2, 1), "pads": (1, 2, 1, 2), "dilations": (1, 1), "groups": 1}),
    Case("conv", (F((2, 4, 9)), F((2, 2, 3))),
         {"strides": (1,), "pads": (0, 0), "dilations": (2,), "groups": 2}),
    Case("conv", (F((1, 2, 4, 4, 4)), F((3, 2, 2, 2, 2))),
         {"strides": (1, 1, 1), "pads": (0,) * 6, "dilations": (1, 1, 1), "groups": 1}),
    Case("conv_transpose", (F((2, 3, 3, 4)), F((3, 2, 3, 3))),
         {"strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": 1,
          "output_padding": (1, 0)}),
    Case("max_pool", (F((1, 2, 6, 5)),), pool_window((3, 3), (2, 1), (1, 0, 0, 1))),
    Case("avg_pool", (F((1, 2, 6, 5)),),
         pool_window((2, 2), (1, 1), (1, 1, 1, 1), count_include_pad=False)),
    Case("avg_pool", (F((2, 3, 8)),), pool_window((2,), (2,))),
    Case("pad", (F((2, 3, 4, 4)),), {"pads": (0, 0, 1, 2, 0, 0, 3, 0), "value": -math.inf}),
    Case("pad", (F((2, 3)),), {"pads": (0, 0, 0, 0), "value": 1.5}),
    # integer ops
    Case("int_div", (ints((2, 3), "i32", -9, 9), ints((3,), "i32", 1, 4))),
    Case("int_mod", (ints((2, 3), "i32", -9, 9), ints((3,), "i32", 1, 4)), {"fmod": True}),
    Case("bitwise_and", (ints((2, 3), "u8", 0, 256), ints((2, 3), "u8", 0, 256))),
    Case("bitwise_or", (ints((2, 3), "i64", -9, 9), ints((3,), "i64", -9, 9))),
    Case("bitwise_xor", (ints((2, 3), "i16", -9, 9), ints((2, 3), "i16", -9, 9))),
    Case("bitwise_not", (ints((2, 3), "u16", 0, 99),)),
    Case("left_shift", (ints((2, 3), "u8", 0, 256), ints((2, 3), "u8", 0, 9))),
    Case("right_shift", (ints((2, 3), "i32", -99, 99), ints((3,), "i32", 0, 33))),
    Case("bitcast", (F((2, 3)),), {"dtype": "i64"}),
]
ALL_CASES = [case for case in CASES + EXTRA_CASES if case.op in OPS and case.op not in FUSED]


def case_graph(case: Case) -> Graph:
    graph = Graph(f"case_{case.op}")
    for index, arg in enumerate(case.args):
        graph.inputs.append(Value(f"a{index}", TensorType(arg.dtype, arg.shape)))
    out = GraphBuilder(graph).emit(case.op, graph.inputs, case.attrs)
    graph.outputs = [out]
    return graph


def as_model(graph: Graph) -> Model:
    return Model(run_passes(graph, FRONT_END_PASSES), print_graph(graph), "<hand-built>")


def check_round_trip(graph: Graph, feeds: dict) -> str:
    """The graph printed and lowered again: the same graph, and the same outputs. Returns the
    text."""
    text = print_dsl(graph)
    lowered = lower_source(text)
    assert structure(lowered) == structure(graph), text
    check_names(graph, lowered)
    model, printed = as_model(graph), chainrule.compile(source=text)
    names = dsl_names(graph)
    printed.set_params({names[name]: value for name, value in model.params.items()})
    with np.errstate(all="ignore"):  # a constant of 1e39 overflows f32 in both
        assert_same_outputs(model.run(**feeds),
                            printed.run(**{names[name]: v for name, v in feeds.items()}))
    return text


def test_every_op_a_front_end_emits_has_a_case():
    """A newly registered op fails here until it has a spelling and a case below."""
    # grad: test_grad_round_trips; scan: tests/test_scan_dsl.py
    covered = {case.op for case in ALL_CASES} | {"grad", "scan"}
    assert covered == set(OPS) - FUSED


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: case.id)
def test_every_op_round_trips(case):
    rng = np.random.default_rng(0)
    graph = case_graph(case)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(graph.inputs, case.args, strict=True)}
    check_round_trip(graph, feeds)


def spelling(op, args, attrs) -> str:
    """The expression print_dsl writes for one op on inputs a0, a1, ..."""
    text = print_dsl(case_graph(Case(op, tuple(args), attrs)))
    return text.splitlines()[1].split(" = ", 1)[1].split("  #")[0].strip()


@pytest.mark.parametrize("value, dtype, spelled", [
    (0.1, "f32", "f32(0.1)"), (float(np.float32(0.1)), "f32", "f32(0.1)"),
    (0.1, "f64", "f64(0.1)"), (float(np.float32(0.1)), "f64", "f64(0.10000000149011612)"),
    (math.inf, "f32", "f32(1e999)"), (-math.inf, "f64", "f64(-1e999)"),
    (math.nan, "f32", "f32(1e999 - 1e999)"),
    (float(TO_START), "i64", "i64(-9223372036854775807 - 1)"),
    (1.0, "bool", "bool(true)"),
])
def test_constants_spell_their_value_in_their_dtype(value, dtype, spelled):
    assert spelling("constant", (), {"value": value, "dtype": dtype}) == spelled


def test_spellings_read_as_the_dsl_is_written():
    def sliced(starts, ends, axes, steps):
        attrs = {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
        return spelling("slice", [F((6, 5))], attrs)

    assert sliced((TO_END,), (TO_START,), (1,), (-1,)) == "a0[:, ::-1]"
    assert sliced((-1, 1), (1, TO_END), (0, 1), (-2, 3)) == "a0[-1:1:-2, 1::3]"
    assert sliced((1, 0), (3, 2), (1, 0), (1, 1)) == \
        "slice(a0, starts=(1, 0), ends=(3, 2), axes=(1, 0), steps=(1, 1))"
    assert spelling("transpose", [F((2, 3, 4))], {"perm": (2, 1, 0)}) == "a0.T"
    assert spelling("cast", [F((3,))], {"dtype": "f32"}) == "f32(a0)"
    assert spelling("cast", [F((3,))], {"dtype": "f64"}) == "cast(a0, dtype=f64)"
    assert spelling("sum", [F((2, 3))], {"axes": (1,), "keepdims": True}) == \
        "sum(a0, axis=1, keepdims=true)"
    conv = {"strides": (2, 1), "pads": (1, 2, 1, 2), "dilations": (1, 1), "groups": 1}
    assert spelling("conv", [F((2, 3, 5, 6)), F((4, 3, 3, 3))], conv) == \
        "conv2d(a0, a1, stride=(2, 1), padding=(1, 2))"
    conv["pads"] = (1, 0, 1, 1)
    assert spelling("conv", [F((2, 3, 5, 6)), F((4, 3, 3, 3))], conv) == \
        "conv(a0, a1, strides=(2, 1), pads=(1, 0, 1, 1), dilations=(1, 1))"
    assert spelling("max_pool", [F((1, 2, 6, 5))], pool_window((2, 2), (2, 2))) == \
        "max_pool2d(a0, kernel=2)"
    assert spelling("pad", [F((2, 3, 4))], {"pads": (0, 0, 1, 0, 0, 2), "value": 0.0}) == \
        "pad(a0, pads=(1, 2))"
    assert spelling("pad", [F((2, 3))], {"pads": (0, 0, 0, 0), "value": 0.0}) == \
        "constant_pad(a0, pads=(0, 0, 0, 0))"


def test_grad_round_trips():
    graph = Graph("g", [Value("x", TensorType("f64", (3,)))])
    builder = GraphBuilder(graph)
    (x,) = graph.inputs
    objective = builder.emit("sum", [builder.emit("mul", [x, x])], name="objective")
    graph.outputs = [builder.emit("grad", [objective, x], name="dx")]
    text = check_round_trip(graph, {"x": np.array([1.0, -2.0, 0.5])})
    assert "dx = grad(objective, x)" in text


def test_fill_prints_as_full_with_its_dim_expressions():
    graph = Graph("m", [Value("x", TensorType("f32", ("B", 3))),
                        Value("y", TensorType("f32", ("B", "S")))])
    builder = GraphBuilder(graph)
    zero = builder.constant(0.0, "f32", name="zero")
    full = builder.emit("fill", [zero], {"shape": ("B", 4)}, name="full_")
    other = builder.emit("fill", [zero], {"shape": (2, dims.parse("B*S-1"))}, name="other")
    graph.outputs = [full, other]
    rng = np.random.default_rng(0)
    text = check_round_trip(graph, {"x": rng.normal(size=(5, 3)).astype(np.float32),
                                    "y": rng.normal(size=(5, 2)).astype(np.float32)})
    assert "full_ = full((B, 4), zero)" in text
    assert "other = full((2, B*S-1), zero)" in text


def test_state_updates_print_as_update():
    graph = Graph("m", [Value("x", TensorType("f32", (4,)))])
    count = Value("count", TensorType("f32", (4,)))
    graph.params.append(Param(count, InitSpec("uniform", (-0.5, 0.5)), trainable=False))
    builder = GraphBuilder(graph)
    y = builder.emit("mul", [graph.inputs[0], count], name="y")
    after = builder.emit("add", [count, graph.inputs[0]], name="count.next")
    graph.outputs = [y, after]
    graph.updates = {"count": "count.next"}
    text = check_round_trip(graph, {"x": np.arange(4, dtype=np.float32)})
    assert "    state count: f32[4] = uniform(-0.5, 0.5)\n" in text
    assert "count_next = update(count, count + x)" in text
    assert text.endswith("    return y\n}\n")


# ---- names --------------------------------------------------------------------------------------

def test_names_keep_dsl_names_and_sanitise_the_rest():
    f32 = TensorType("f32", (2,))
    graph = Graph("my-model", [Value("x", TensorType("f32", ("batch", 2))),
                               Value("/input:0", f32)])
    for name in ("fc1.weight", "0.weight", "sum", "a.b", "a_b", "model", "batch"):
        graph.params.append(Param(Value(name, f32), InitSpec("zeros")))
    builder = GraphBuilder(graph)
    out = builder.emit("add", [graph.inputs[1], graph.params[0].value],
                       name="/layer/Gemm_output_0")
    graph.outputs = [out]
    assert dsl_names(graph) == {
        "x": "x", "/input:0": "input_0", "fc1.weight": "fc1_weight", "0.weight": "v0_weight",
        "sum": "sum_", "a.b": "a_b_2", "a_b": "a_b", "model": "model_", "batch": "batch_",
        "/layer/Gemm_output_0": "layer_Gemm_output_0"}
    text = print_dsl(graph)
    assert text.startswith("model my_model(x: f32[batch, 2], input_0: f32[2]) {\n")
    check_round_trip(graph, {"x": np.ones((3, 2), np.float32), "/input:0": np.ones(2, np.float32)})


def test_locations_are_trailing_comments():
    graph = Graph("m", [Value("x", TensorType("f32", (2,)))])
    builder = GraphBuilder(graph)
    y = builder.emit("relu", graph.inputs, loc=SourceLoc("model.onnx", 0, 0, node="/fc1/Relu"),
                     name="y")
    z = builder.emit("neg", [y], loc=SourceLoc("m.nn", 3, 9, "t=2"), name="z")
    graph.outputs = [z]
    lines = print_dsl(graph).splitlines()
    assert lines[1].startswith("    y = relu(x) ") and lines[1].endswith("  # /fc1/Relu")
    assert lines[2].startswith("    z = -y ") and lines[2].endswith("  # m.nn:3:9 [t=2]")


# ---- what has no spelling --------------------------------------------------------------------

def unspellable(op, args, attrs=None):
    graph = Graph("m", [Value(f"a{i}", TensorType(dtype, shape))
                        for i, (dtype, shape) in enumerate(args)])
    out = GraphBuilder(graph).emit(op, graph.inputs, attrs or {},
                                   loc=SourceLoc("model.onnx", 0, 0, node="/the/node"))
    graph.outputs = [out]
    with pytest.raises(ChainruleError) as caught:
        print_dsl(graph)
    assert caught.value.loc.node == "/the/node"
    return caught.value.message


def test_fused_ops_are_an_error_that_names_the_op():
    message = unspellable("relu_grad", [("f32", (3,)), ("f32", (3,))])
    assert message.startswith("cannot print as DSL: op 'relu_grad' has no DSL spelling: it is "
                              "a fused op")
    assert "'gemm'" in unspellable("gemm", [("f32", (2, 3)), ("f32", (3, 4))])


def test_updates_out_of_order_are_an_error():
    graph = Graph("m", [Value("x", TensorType("f32", (2,)))])
    builder = GraphBuilder(graph)
    for name in ("a", "b"):
        graph.params.append(Param(Value(name, TensorType("f32", (2,))), InitSpec("zeros"),
                                  trainable=False))
    a_next = builder.emit("add", [graph.params[0].value, graph.inputs[0]], name="a.next")
    b_next = builder.emit("add", [graph.params[1].value, graph.inputs[0]], name="b.next")
    graph.outputs = [graph.inputs[0], b_next, a_next]
    graph.updates = {"b": "b.next", "a": "a.next"}
    with pytest.raises(ChainruleError, match="each state update must be a node's output, in the "
                                             "order of graph.updates"):
        print_dsl(graph)
