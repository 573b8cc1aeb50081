"""Fuzzing the ONNX front end: damaged bytes, and models whose nodes are edited into nonsense
(another op type, a dropped or swapped input, attributes of the wrong kind or value).

Every input must end, within a bound on its work (function calls, counted), in an imported
model that runs (or fails with a ChainruleError when run), or in a ChainruleError when
imported. Any other exception is a bug, and hypothesis shows the input. The suite runs a few derandomized examples; the long run
(docs/internals.md) runs each test's share of its ONNX models.
"""
import numpy as np
import onnx
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper

import chainrule
from chainrule import ChainruleError
from chainrule.cli import random_inputs
from chainrule.onnx_import import SUPPORTED_OPS, UnsupportedModel
from support.fuzzing import fuzz_onnx, within_calls
from support.paths import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "onnx"
# Over a hundred times the most an input here took (about 90,000 calls: the transformer block
# imported and run), far below a blow-up.
CALLS_PER_MODEL = 10_000_000
MODELS = {name: (FIXTURES / f"{name}.onnx").read_bytes()
          for name in ("mlp", "lenet_bn", "transformer_block")}
OP_TYPES = sorted(SUPPORTED_OPS) + ["NoSuchOp", "Loop", "If"]
ATTRIBUTE_VALUES = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True),
                             st.lists(st.integers(-3, 9), max_size=4), st.text(max_size=4),
                             st.sampled_from(["SAME_UPPER", "NOTSET", "reflect", "none"]))


def import_and_run(model_or_bytes, seed: int) -> None:
    """Import, and when that works run the forward pass on random inputs."""
    with within_calls(CALLS_PER_MODEL):
        try:
            model = chainrule.import_onnx(model_or_bytes)
        except UnsupportedModel as error:
            internal = [p for p in error.problems if p.internal]
            assert not internal, f"chainrule failed on a node: {internal[0]}"
            return
        except ChainruleError:
            return
        try:
            inputs = random_inputs(model.graph, {}, seed, {})
            model.run(**inputs)
        except ChainruleError:
            pass


@fuzz_onnx
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_damaged_onnx_bytes_give_a_located_error(tmp_path_factory, name, data):
    original = bytearray(MODELS[name])
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1),
                                         st.integers(0, 255)), min_size=1, max_size=8))
    for position, byte in edits:
        original[position] = byte
    cut = data.draw(st.integers(1, len(original)))
    path = tmp_path_factory.mktemp("onnx") / "damaged.onnx"
    path.write_bytes(bytes(original[:cut]))
    import_and_run(str(path), seed=0)


def edit_node(node, data) -> None:
    edit = data.draw(st.sampled_from(["op_type", "drop_input", "swap_inputs", "attribute",
                                      "clear_attributes", "rename_input"]))
    if edit == "op_type":
        node.op_type = data.draw(st.sampled_from(OP_TYPES))
    elif edit == "drop_input" and node.input:
        del node.input[data.draw(st.integers(0, len(node.input) - 1))]
    elif edit == "swap_inputs" and len(node.input) > 1:
        node.input[0], node.input[1] = node.input[1], node.input[0]
    elif edit == "attribute":
        name = data.draw(st.sampled_from(["axis", "perm", "alpha", "pads", "kernel_shape",
                                          "mode", "transB", "epsilon", "keepdims"]))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute(name, data.draw(ATTRIBUTE_VALUES)))
    elif edit == "clear_attributes":
        del node.attribute[:]
    elif edit == "rename_input" and node.input:
        node.input[0] = data.draw(st.sampled_from(["", "missing", node.output[0]]))


@fuzz_onnx
@given(st.sampled_from(sorted(MODELS)), st.data())
def test_models_with_edited_nodes_import_or_give_a_located_error(name, data):
    model = onnx.load_from_string(MODELS[name])
    nodes = model.graph.node
    for _ in range(data.draw(st.integers(1, 3))):
        try:
            edit_node(nodes[data.draw(st.integers(0, len(nodes) - 1))], data)
        except (ValueError, TypeError):  # onnx's helper refuses some values: nothing to test
            pass
    import_and_run(model, seed=data.draw(st.integers(0, 2**16)))


def test_an_edited_model_that_still_imports_is_checked_by_the_verifier():
    # A sanity check of the fuzzer itself: a harmless edit (Relu for Relu) still imports and
    # runs, so the edits above reach the importer rather than failing before it.
    model = onnx.load_from_string(MODELS["mlp"])
    model.graph.node[1].op_type = "Relu"
    imported = chainrule.import_onnx(model)
    outputs = imported.run(x=np.zeros((2, 64), np.float32))
    assert outputs["logits"].shape == (2, 10)


# Characters that end a line or hide text, among others, for the names below.
# (Any but NUL and the surrogates, which UTF-8 cannot encode.)
NAME_CHARACTERS = st.characters(min_codepoint=1).filter(
    lambda c: not "\ud800" <= c <= "\udfff") | st.sampled_from(
    ["\n", "\r", "\u2028", "\u2029", "\x85", "#", "]", "[", "\\", "'", '"', ":", "\u202e"])


@fuzz_onnx
@given(st.data())
def test_models_with_random_names_decompile_to_the_same_model(data):
    """Every node, value, initializer and graph name of the MLP fixture, and its batch dim's
    name, replaced by random text: the decompiled model compiles and computes what onnxruntime computes on the
    original, and the IR text reads back as the same graph."""
    import onnxruntime

    from chainrule.ir import dsl_names, print_dsl, print_graph
    from chainrule.ir.text import graph_differences, parse_graph

    model = onnx.load_from_string(MODELS["mlp"])
    graph = model.graph
    values = sorted({name for node in graph.node for name in [*node.input, *node.output]}
                    | {info.name for info in graph.input})
    fresh = data.draw(st.lists(st.text(NAME_CHARACTERS, min_size=1, max_size=12),
                               min_size=len(values), max_size=len(values), unique=True))
    renamed = dict(zip(values, fresh, strict=True))
    node_names = data.draw(st.lists(st.text(NAME_CHARACTERS, max_size=12),
                                    min_size=len(graph.node), max_size=len(graph.node),
                                    unique=True))  # onnxruntime refuses two of one name
    for node, name in zip(graph.node, node_names, strict=True):
        node.input[:] = [renamed[name] for name in node.input]
        node.output[:] = [renamed[name] for name in node.output]
        node.name = name
    for info in [*graph.input, *graph.output, *graph.value_info]:
        info.name = renamed.get(info.name, info.name)
    for tensor in graph.initializer:
        tensor.name = renamed[tensor.name]
    graph.name = data.draw(st.text(NAME_CHARACTERS, max_size=12))
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = data.draw(
        st.text(NAME_CHARACTERS, max_size=8))
    x = np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {graph.input[0].name: x})
    imported = chainrule.import_onnx(model)
    assert graph_differences(parse_graph(print_graph(imported.graph)), imported.graph) == []
    printed = chainrule.compile(source=print_dsl(imported.graph))
    names = dsl_names(imported.graph)
    printed.set_params({names[name]: value for name, value in imported.params.items()})
    (result,) = printed.run(**{printed.graph.inputs[0].name: x}).values()
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
