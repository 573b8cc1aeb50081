"""The ONNX importer beyond ONNX's own node tests: how it reports what it cannot import, how it
folds shape computations, and the compositions whose edge cases those tests leave out."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule.onnx_import import UnsupportedModel
from chainrule.onnx_import.context import dim_hint
from support.cli import chainrule as chainrule_cli
from support.conformance import Outcome, mismatch, read_known_failures, verdict
from support.onnx_models import model_of, run_both


# ---- what cannot be imported ------------------------------------------------------------------

def test_every_node_that_cannot_be_imported_is_reported_at_once():
    nodes = [helper.make_node("TfIdfVectorizer", ["x"], ["a"], name="no_such_op"),
             helper.make_node("Relu", ["a"], ["b"], name="inherits"),
             helper.make_node("Elu", ["x"], ["c"], name="bad_attribute", alpha=1.0, gamma=2.0),
             helper.make_node("Mine", ["x"], ["d"], name="other_domain", domain="my.ops"),
             helper.make_node("Reshape", ["x", "shape"], ["e"], name="run_time_shape"),
             helper.make_node("Sum", ["b", "c", "d"], ["y"], name="end")]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [2, 3]),
                             ("shape", TensorProto.INT64, [2])],
                     [("y", TensorProto.FLOAT, [2, 3]), ("e", TensorProto.FLOAT, [3, 2])],
                     domains=["my.ops"])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    problems = {p.node: p for p in caught.value.problems}
    assert set(problems) == {"no_such_op", "bad_attribute", "other_domain", "run_time_shape"}
    assert problems["no_such_op"].reason == "op not supported"
    assert problems["bad_attribute"].reason == "attribute gamma not supported"
    assert "domain 'my.ops'" in problems["other_domain"].reason
    # The one that a constant would fix says which value must be known at import time.
    assert problems["run_time_shape"].needs_constant == "shape"
    assert {p.needs_constant for n, p in problems.items() if n != "run_time_shape"} == {None}
    assert caught.value.message == "cannot import 4 nodes of this ONNX model"


def test_a_node_downstream_of_a_failed_one_is_reported_for_its_own_problems():
    nodes = [helper.make_node("TfIdfVectorizer", ["x"], ["a"], name="no_such_op"),
             helper.make_node("Identity", ["a"], ["same_a"], name="passes_a_stand_in_on"),
             helper.make_node("Relu", ["same_a"], ["b"], name="inherits"),
             helper.make_node("Resize", ["b", "", "scales"], ["y"], name="own_attribute",
                              mode="area"),
             helper.make_node("NoSuchIntegerOp", ["shape"], ["flipped"], name="int_op"),
             # Its shape would be a constant if that op were supported: it only inherits.
             helper.make_node("Reshape", ["x", "flipped"], ["z"], name="inherited_shape")]
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    shape = numpy_helper.from_array(np.array([0, 0, -3, -5], np.int64), "shape")
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                     [("y", TensorProto.FLOAT, None), ("z", TensorProto.FLOAT, None)],
                     [scales, shape])
    # The failed nodes' output types, declared as exporters declare intermediate values.
    proto.graph.value_info.extend([
        helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1, 2, 2]),
        helper.make_tensor_value_info("flipped", TensorProto.INT64, [4])])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    problems = {p.node: p.reason for p in caught.value.problems}
    assert problems == {"no_such_op": "op not supported", "int_op": "op not supported",
                        "own_attribute": "attribute mode='area' (supported: 'nearest', "
                                         "'linear', 'cubic')"}


def test_a_node_reading_a_value_of_unknown_type_is_still_reported_for_its_op():
    nodes = [helper.make_node("Mine", ["x"], ["a"], name="other_domain", domain="my.ops"),
             helper.make_node("TfIdfVectorizer", ["a"], ["b"], name="no_such_op"),
             helper.make_node("Relu", ["b"], ["c"], name="inherits"),
             helper.make_node("Elu", ["a"], ["y"], name="bad_attribute", gamma=2.0)]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [2])], [("y", TensorProto.FLOAT, None),
                                                              ("c", TensorProto.FLOAT, None)],
                     domains=["my.ops"])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    problems = {p.node: p.reason for p in caught.value.problems}
    assert problems == {"other_domain": "domain 'my.ops' (chainrule reads the default domain, "
                                        "ai.onnx.ml, ai.onnx.preview.training and "
                                        "ai.onnx.preview)",
                        "no_such_op": "op not supported",
                        "bad_attribute": "attribute gamma not supported"}


def test_every_unsupported_attribute_of_a_node_is_named():
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="two_bad",
                              mode="area", nearest_mode="middle", gamma=1.0)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    proto = model_of([resize], [("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                     [("y", TensorProto.FLOAT, None)], [scales])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert sorted(p.reason.split(" (")[0] for p in caught.value.problems) == [
        "attribute gamma not supported", "attribute mode='area'",
        "attribute nearest_mode='middle'"]
    assert caught.value.message == "cannot import 1 node of this ONNX model"


def test_a_symbolic_dim_problem_hints_at_the_dim_to_fix():
    nodes = [helper.make_node("Shape", ["batch"], ["shape"]),
             helper.make_node("Expand", ["x", "shape"], ["y"], name="to_batch")]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [2, 3]),
                             ("batch", TensorProto.FLOAT, ["B", 3])],
                     [("y", TensorProto.FLOAT, ["B", 3])])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    [problem] = caught.value.problems
    assert problem.reason == ("Expand of f32[2, 3] to [B, 3]: 2 against B cannot be decided "
                              "when the model is imported")
    assert problem.hint == "fix the dim with --dim B=2"
    chainrule.import_onnx(proto, dims={"B": 2})  # and the hint does fix it


def test_a_dim_the_importer_left_unknown_gets_no_dim_hint():
    assert dim_hint(["?", 3]) is None
    assert dim_hint(["?", "S", "B", "S"]) == "fix the dims with --dim B=2 --dim S=2"


def test_an_old_opset_is_converted_with_a_note(tmp_path):
    """Opset 11's ReduceSum takes its axes as an attribute, 13's as an input."""
    proto = model_of([helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)],
                     [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2])],
                     opset=11)
    model = chainrule.import_onnx(proto)
    assert model.notes == ["<test>.onnx: converted from opset 11 to 13 with "
                           "onnx.version_converter"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(model.run(x=x)["y"], x.sum(axis=1))
    onnx.save(proto, tmp_path / "old.onnx")
    result = chainrule_cli("check", tmp_path / "old.onnx")
    assert result.returncode == 0, result.stderr
    assert "note: " in result.stderr and "converted from opset 11 to 13" in result.stderr


def test_a_scan_of_opset_8_is_refused_by_name():
    body = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "body",
                             [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    proto = model_of([helper.make_node("Scan", ["", "x"], ["y"], body=body, num_scan_inputs=0)],
                     [("x", TensorProto.FLOAT, [1, 2])], [("y", TensorProto.FLOAT, [1, 2])],
                     opset=8)
    with pytest.raises(UnsupportedModel, match="Scan at opset 8 .a batch axis and sequence "
                                               "lengths. is not supported"):
        chainrule.import_onnx(proto)


def test_an_opset_newer_than_the_installed_onnx_is_one_clear_error():
    newest = onnx.defs.onnx_opset_version()
    proto = model_of([helper.make_node("Relu", ["x"], ["y"])], [("x", TensorProto.FLOAT, [2])],
                     [("y", TensorProto.FLOAT, [2])], opset=newest + 1)
    with pytest.raises(UnsupportedModel, match=f"opset {newest + 1} is newer than the "
                                               f"installed onnx knows \\({newest}\\)"):
        chainrule.import_onnx(proto)


def test_an_output_declared_other_than_the_graph_computes_is_reported():
    proto = model_of([helper.make_node("Relu", ["x"], ["y"])], [("x", TensorProto.FLOAT, [2])],
                     [("y", TensorProto.DOUBLE, [2])])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert caught.value.problems[0].reason == \
        "declared double[2], but the graph computes f32[2]"


def test_a_damaged_file_is_a_file_error_not_a_traceback(tmp_path):
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x0a\xff\xffnot protobuf at all")
    with pytest.raises(chainrule.ChainruleError) as caught:
        chainrule.import_onnx(str(damaged))
    assert not isinstance(caught.value, UnsupportedModel)
    assert caught.value.render().startswith(f"{damaged}: error: not an ONNX model")


def needed_constants(proto) -> set:
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    return {p.needs_constant for p in caught.value.problems} - {None}


def test_inputs_chainrule_cannot_take_at_run_time_may_still_be_constants():
    # An empty axes input and an int32 one: asked for as constants, which work.
    nodes = [helper.make_node("ReduceSum", ["x", "no_axes"], ["total"], keepdims=0),
             helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [2, 3]),
                             ("no_axes", TensorProto.INT64, [0]),
                             ("axis", TensorProto.INT32, [])],
                     [("total", TensorProto.FLOAT, []), ("y", TensorProto.FLOAT, [2, 3])])
    assert needed_constants(proto) == {"no_axes", "axis"}
    del proto.graph.input[1:]
    proto.graph.initializer.extend([numpy_helper.from_array(np.zeros(0, np.int64), "no_axes"),
                                    numpy_helper.from_array(np.array(1, np.int32), "axis")])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    results = run_both(chainrule.import_onnx(proto), x=x)
    assert results["total"] == 15.0
    np.testing.assert_array_equal(results["y"], np.cumsum(x, axis=1) - x)


def test_a_constant_computed_from_an_input_asks_for_that_input():
    # An expanded function computes a Range's limit from the graph's input: the refusal asks
    # for the input, which a user (or the conformance harness) can make a constant.
    nodes = [helper.make_node("Cast", ["n"], ["limit"], to=TensorProto.INT64),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(
                 np.array(0, np.int64))),
             helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(
                 np.array(1, np.int64))),
             helper.make_node("Range", ["zero", "limit", "one"], ["y"])]
    proto = model_of(nodes, [("n", TensorProto.INT32, [])], [("y", TensorProto.INT64, [None])])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    (problem,) = caught.value.problems
    assert problem.needs_constant == "n"
    assert problem.reason.endswith("computed from input 'n'")


def test_an_int32_tensor_read_as_a_tensor_imports_as_i32():
    proto = model_of([helper.make_node("Equal", ["a", "b"], ["y"])],
                     [("a", TensorProto.INT32, [3]), ("b", TensorProto.INT32, [3])],
                     [("y", TensorProto.BOOL, [3])])
    model = chainrule.import_onnx(proto)
    assert [str(v.type) for v in model.graph.inputs] == ["i32[3]", "i32[3]"]
    a, b = np.array([1, 2, 3], np.int32), np.array([1, 0, 3], np.int32)
    assert model.run(a=a, b=b)["y"].tolist() == [True, False, True]


# ---- malformed nodes: reported by what is wrong, never a converter's crash --------------------

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def constant(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def node(op_type, inputs, **attributes):
    return helper.make_node(op_type, inputs, ["y"], **attributes)


# (node, inputs, initializers, opset, what the reason says); each one crashed a converter.
MALFORMED = {
    "an input of the wrong rank": (
        node("Trilu", ["x"]), [("x", F, [3])], [], 18,
        "Trilu of the input f32[3] (it takes rank 2 or more)"),
    "inputs of differing ranks": (
        node("Attention", ["q", "k", "k"]), [("q", F, [1, 2, 3, 4]), ("k", F, [1, 3, 8])], [],
        23, "Attention of the K f32[1, 3, 8] (it takes rank 4)"),
    "a convolution's input rank against its kernel": (
        node("Conv", ["x", "w"]), [("x", F, [1, 1, 4]), ("w", F, [1, 1, 2, 2])], [], 18,
        "Conv of the input f32[1, 1, 4] (it takes rank 4)"),
    "a float constant where integers belong": (
        node("ReduceSum", ["x", "axes"]), [("x", F, [2, 3])],
        [constant("axes", np.array([np.nan], np.float32))], 18,
        "the reduction axes (input 'axes') must be integers, not float32"),
    "a float shape": (
        node("Reshape", ["x", "shape"]), [("x", F, [2, 3])],
        [constant("shape", np.array([np.inf, 1.0], np.float32))], 18,
        "Reshape's shape (input 'shape') must be integers, not [inf, 1.0]"),
    "several values where one belongs": (
        node("Dropout", ["x", "", "training"]), [("x", F, [2, 3])],
        [constant("training", [True, False])], 18,
        "Dropout's training_mode (input 'training') must be one value, not a tensor of "
        "shape [2]"),
    "an axis of two values": (
        node("CumSum", ["x", "axis"]), [("x", F, [2, 3])], [constant("axis", [0, 1])], 18,
        "CumSum's axis [0, 1] hold 2 values, where 1 are needed"),
    "window attributes of another length than the kernel": (
        node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[1], auto_pad="SAME_UPPER"),
        [("x", F, [1, 1, 4, 4])], [], 18, "MaxPool over 2 spatial axes needs 2 strides"),
    "a symbolic head size": (
        node("RotaryEmbedding", ["x", "cache", "cache"], rotary_embedding_dim=2),
        [("x", F, [1, 2, 3, "H"]), ("cache", F, [3, 1])], [], 23,
        "RotaryEmbedding of f32[1, 2, 3, H] (the head size must be known)"),
    "a list attribute of the wrong length": (
        node("ConvTranspose", ["x", "w"], output_padding=[0, 0]),
        [("x", F, [1, 1, 4]), ("w", F, [1, 1, 2])], [], 18,
        "output_padding [0, 0] hold 2 values, where 1 are needed"),
    "a constant list of the wrong length": (
        node("Pad", ["x", "pads"]), [("x", F, [2, 3])], [constant("pads", [1, 1, 1])], 18,
        "Pad's pads [1, 1, 1] hold 3 values, where 4 are needed"),
    "scales of the wrong length": (
        node("Resize", ["x", "", "scales"]), [("x", F, [1, 1, 2, 2])],
        [constant("scales", np.ones(3, np.float32))], 18,
        "Resize's scales [1.0, 1.0, 1.0] hold 3 values, where 4 are needed"),
    "a block size of 0": (
        node("DepthToSpace", ["x"], blocksize=0), [("x", F, [1, 4, 2, 2])], [], 18,
        "attribute blocksize=0 (it must be 1 or more)"),
    "a kernel size of 0": (
        node("Col2Im", ["x", "image", "block"]), [("x", F, [1, 4, 4])],
        [constant("image", [3, 3]), constant("block", [0, 2])], 18,
        "Col2Im's kernel sizes must be positive, got [0, 2]"),
    "an attribute the op's schema lacks at this opset": (
        node("Attention", ["q", "q", "q"], left_window_size=[1]), [("q", F, [1, 1, 2, 4])],
        [], 23, "attribute left_window_size not supported"),
    "a Cast to no ONNX dtype": (
        node("Cast", ["x"], to=100), [("x", F, [2])], [], 18,
        "Cast to 100, which is no ONNX dtype"),
    "a scale that is not positive": (
        node("Attention", ["q", "q", "q"], scale=-1.0), [("q", F, [1, 1, 2, 4])], [], 23,
        "Attention's scale -1.0 (it must be positive and finite)"),
    "a fill value of two numbers": (
        node("ConstantOfShape", ["shape"],
             value=numpy_helper.from_array(np.ones(2, np.float32))),
        [("x", F, [2])], [constant("shape", [2, 3])], 18,
        "ConstantOfShape's value of shape [2] and dtype float32 (it takes one number)"),
    "a Constant of an unknown data type": (
        helper.make_node("Constant", [], ["y"], value=onnx.TensorProto(data_type=29)),
        [("x", F, [2])], [], 18, "Constant's value has the unknown ONNX data type 29"),
    "an absent input of a variadic op": (
        node("Concat", ["x", ""], axis=0), [("x", F, [2])], [], 18,
        "input 1 (inputs) is required"),
    "a text attribute that is not UTF-8": (
        node("Pad", ["x", "pads"], mode=b"\x80"), [("x", F, [2])],
        [constant("pads", [1, 1])], 18, "attribute mode=b'\\x80' is not UTF-8 text"),
    "repeats past the size limit": (
        node("Tile", ["x", "repeats"]), [("x", F, ["B", 4])],
        [constant("repeats", [2 ** 40, 1])], 18,
        "it would make f32[1099511627776, 4], which holds"),
    "a depth past the size limit": (
        node("OneHot", ["indices", "depth", "values"]), [("indices", I64, [3])],
        [constant("depth", 2 ** 40), constant("values", np.array([0, 1], np.float32))], 18,
        "it would make f32[3, 1099511627776], which holds"),
    "scales past the size limit": (
        node("Resize", ["x", "", "scales"]), [("x", F, [1, 4])],
        [constant("scales", np.array([1, 4.6e18], np.float32))], 18,
        "it would make f32[1, 18400000535877910528], which holds"),
    "a resized axis too long to compute its weights": (
        node("Resize", ["x", "", "", "sizes"]), [("x", F, [1, 4])],
        [constant("sizes", [1, 10 ** 8])], 18, "Resize to size 100,000,000 along axis 1"),
    "a pooling window of too many positions to slice": (
        node("MaxPool", ["x"], kernel_shape=[300, 300], dilations=[1, 2],
             pads=[299, 299, 299, 299]), [("x", F, [1, 1, 4, 4])], [], 19,
        "pooling with kernel [300, 300] and dilations [1, 2]"),
    "a Range that would not end": (
        node("Range", ["start", "limit", "delta"]), [("x", F, [2])],
        [constant("start", 0.0), constant("limit", 5.0), constant("delta", 0.0)], 18,
        "Range from 0.0 to 5.0 by 0.0"),
    "a broadcast too large to fold, run in the graph": (
        node("Expand", ["one", "shape"]), [("x", F, [2])],
        [constant("one", np.ones(1, np.int64)), constant("shape", [60000, 60000])], 18,
        "broadcast_to gives i64[60000, 60000], which holds 3,600,000,000 values"),
}


NEWEST_OPSET = onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("case", [
    pytest.param(case, marks=pytest.mark.skipif(
        MALFORMED[case][3] > NEWEST_OPSET,
        reason=f"the op is from opset {MALFORMED[case][3]}; the installed onnx knows "
               f"{NEWEST_OPSET}")) for case in MALFORMED])
def test_a_malformed_node_is_reported_by_what_is_wrong(case):
    bad_node, inputs, initializers, opset, reason = MALFORMED[case]
    proto = model_of([bad_node], inputs, [("y", F, None)], initializers, opset=opset)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    [problem] = caught.value.problems
    assert not problem.internal
    assert reason in problem.reason


def test_a_name_protobuf_cannot_decode_is_a_file_error(tmp_path):
    proto = model_of([helper.make_node("Relu", ["x"], ["y"], name="Xrelu")],
                     [("x", F, [2])], [("y", F, [2])])
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(proto.SerializeToString().replace(b"Xrelu", b"\x80relu"))
    with pytest.raises(chainrule.ChainruleError) as caught:
        chainrule.import_onnx(str(damaged))
    assert not isinstance(caught.value, UnsupportedModel)
    assert "not an ONNX model (the name b'\\x80relu' is not UTF-8)" in caught.value.render()


def test_tile_repeats_by_doubling():
    # 5 times is 3 concats, not one concat of 5 inputs (2**40 of them would not fit).
    proto = model_of([helper.make_node("Tile", ["x", "repeats"], ["y"])], [("x", F, [2, 3])],
                     [("y", F, [2, 15])], [constant("repeats", [1, 5])])
    model = chainrule.import_onnx(proto)
    assert [n.op for n in model.graph.nodes].count("concat") == 3
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_both(model, x=x)["y"], np.tile(x, (1, 5)))


# ---- folding ----------------------------------------------------------------------------------

def test_a_shape_chain_folds_into_a_reshape_that_keeps_the_symbolic_batch():
    # [B, 2, 3] -> [B, 6], the target computed as Exporters do: Concat(Gather(Shape(x), 0), 6).
    six = numpy_helper.from_array(np.array([6], np.int64), "six")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"]),
             helper.make_node("Unsqueeze", ["batch", "axis"], ["batch_1d"]),
             helper.make_node("Concat", ["batch_1d", "six"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    axis = numpy_helper.from_array(np.array([0], np.int64), "axis")
    proto = model_of(nodes, [("x", TensorProto.FLOAT, ["B", 2, 3])],
                     [("y", TensorProto.FLOAT, ["B", 6])], [six, zero, axis])
    model = chainrule.import_onnx(proto)
    assert [n.op for n in model.graph.nodes] == ["reshape"]
    assert model.graph.outputs[0].type.shape == ("B", 6)
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run_both(model, x=x)["y"], x.reshape(5, 6))


def test_a_constant_used_as_a_tensor_stays_known_for_folding():
    # [2, 0] indexes x and, after the Gather, is also the target of a Reshape.
    nodes = [helper.make_node("Constant", [], ["pair"], value=numpy_helper.from_array(
                 np.array([2, 0], np.int64))),
             helper.make_node("Gather", ["x", "pair"], ["picked"], axis=0),
             helper.make_node("Reshape", ["picked", "pair"], ["y"], allowzero=0)]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [3, 4])],
                     [("y", TensorProto.FLOAT, [2, 4])])
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"], x[[2, 0]])


def test_int64_constants_past_float64_precision_are_refused():
    big = numpy_helper.from_array(np.array([1, 2 ** 60], np.int64), "big")
    proto = model_of([helper.make_node("Add", ["x", "big"], ["y"])],
                     [("x", TensorProto.INT64, [2])], [("y", TensorProto.INT64, [2])], [big])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert "holds values beyond 2**53" in caught.value.problems[0].reason


# ---- compositions at their edges --------------------------------------------------------------

EDGES = np.array([-2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 2.51, -7.0, 3e9, -3e9,
                  2.0 ** 40 + 0.5, 1e30, -1e30, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op_type, reference", [("Floor", np.floor), ("Ceil", np.ceil),
                                                ("Round", np.round)])
def test_rounding_matches_numpy_past_int64_and_at_halves(op_type, reference, dtype):
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    proto = model_of([helper.make_node(op_type, ["x"], ["y"])], [("x", onnx_type, [len(EDGES)])],
                     [("y", onnx_type, [len(EDGES)])])
    x = EDGES.astype(dtype)
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"], reference(x))


@pytest.mark.parametrize("fmod, reference", [(0, np.mod), (1, np.fmod)])
def test_float_mod_by_infinities_and_zero_matches_numpy(fmod, reference):
    x = np.array([5.5, -5.5, 0.0, 3.0, -3.0, 7.0, np.inf, 2.0], np.float64)
    y = np.array([2.0, 2.0, np.inf, -np.inf, np.inf, 0.0, 3.0, -0.75], np.float64)
    proto = model_of([helper.make_node("Mod", ["x", "y"], ["z"], fmod=fmod)],
                     [("x", TensorProto.DOUBLE, [8]), ("y", TensorProto.DOUBLE, [8])],
                     [("z", TensorProto.DOUBLE, [8])])
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = reference(x, y)
    np.testing.assert_allclose(run_both(chainrule.import_onnx(proto), x=x, y=y)["z"], expected,
                               rtol=1e-12)


def test_reduce_prod_of_odd_lengths_multiplies_every_element():
    proto = model_of([helper.make_node("ReduceProd", ["x", "axes"], ["y"], keepdims=0)],
                     [("x", TensorProto.INT64, [7, 3, 5])], [("y", TensorProto.INT64, [3])],
                     [numpy_helper.from_array(np.array([0, -1], np.int64), "axes")])
    x = np.random.default_rng(1).integers(-3, 4, size=(7, 3, 5))
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"],
                                  x.prod(axis=(0, 2)))


# ---- the conformance harness's own verdict ----------------------------------------------------

def test_the_known_failures_list_must_match_what_fails_exactly():
    failing = Outcome(failures={"numpy": "output 0: wrong"})
    assert verdict("case", failing, {"numpy": "a cause"}) == []
    assert verdict("case", failing, {}) == ["case numpy: output 0: wrong (not listed as a "
                                            "known failure)"]
    assert verdict("case", Outcome(), {"onnxruntime": "a cause"}) == [
        "case onnxruntime is listed as a known failure but passes: remove it"]
    assert verdict("case", Outcome(skipped="Sin: op not supported"), {"numpy": "a cause"}) == [
        "case numpy is listed as a known failure but is out of scope (Sin: op not supported)"]


def test_known_failures_may_hold_for_one_onnx_release_only(tmp_path):
    listed = tmp_path / "known.txt"
    listed.write_text("# a comment\n"
                      "test_a numpy: wrong at the edges\n"
                      "test_b onnxruntime onnx==1.16: that release's data differ\n")
    assert read_known_failures(listed, (1, 16)) == {
        ("test_a", "numpy"): "wrong at the edges",
        ("test_b", "onnxruntime"): "that release's data differ"}
    assert read_known_failures(listed, (1, 23)) == {("test_a", "numpy"): "wrong at the edges"}
    listed.write_text("test_a jax: no such backend\n")
    with pytest.raises(ValueError, match="known.txt:1"):
        read_known_failures(listed)


def test_outputs_must_match_in_shape_and_dtype_not_only_in_value():
    expected = np.array([1.0, 2.0], np.float32)
    assert mismatch(expected.astype(np.float64), expected, 1e-3, 1e-7).startswith("dtype")
    assert mismatch(expected[None], expected, 1e-3, 1e-7).startswith("shape")
    assert mismatch(expected + 0.01, expected, 1e-3, 1e-7)
    assert mismatch(np.array([1.0, np.nan], np.float32), np.array([1.0, np.nan], np.float32),
                    1e-3, 1e-7) is None


def test_cumsum_and_einsum_diagonals_keep_infinities_where_they_belong():
    # Sums of masked or shifted copies, not products with 0/1 matrices: inf * 0 would be nan.
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["running"], reverse=1),
             helper.make_node("Einsum", ["m"], ["diagonal"], equation="ii->i")]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [4]), ("m", TensorProto.FLOAT, [2, 2])],
                     [("running", TensorProto.FLOAT, [4]), ("diagonal", TensorProto.FLOAT, [2])],
                     [numpy_helper.from_array(np.array(0, np.int64), "axis")])
    x = np.array([1.0, np.inf, 2.0, 3.0], np.float32)
    m = np.array([[1.0, np.nan], [np.inf, 4.0]], np.float32)
    results = run_both(chainrule.import_onnx(proto), x=x, m=m)
    np.testing.assert_array_equal(results["running"], [np.inf, np.inf, 5.0, 3.0])
    np.testing.assert_array_equal(results["diagonal"], [1.0, 4.0])


# ---- what exporters write -----------------------------------------------------------------------

def test_a_scalar_initializer_stays_a_scalar():
    # The dynamo exporter writes scalar constants as 0-d initializers.
    proto = model_of([helper.make_node("Mul", ["x", "c"], ["y"])],
                     [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 3])],
                     [numpy_helper.from_array(np.array(1.5, np.float32), "c")])
    model = chainrule.import_onnx(proto)
    assert [p.shape for p in model.params.values()] == [()]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_both(model, x=x)["y"], 1.5 * x)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_reads_the_cubic_coefficient_every_exporter_writes(mode):
    # PyTorch writes cubic_coeff_a=-0.75 on every Resize, whatever its mode.
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            cubic_coeff_a=-0.75, coordinate_transformation_mode="asymmetric",
                            nearest_mode="floor")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    proto = model_of([node], [("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                     [("y", TensorProto.FLOAT, [1, 1, 4, 4])], [scales])
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    y = run_both(chainrule.import_onnx(proto), x=x)["y"]
    if mode == "nearest":
        np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))
    else:
        assert y.shape == (1, 1, 4, 4) and y[0, 0, 0, 1] == 1.5


def weight_scale_and_exponent(exponent_shape=(2,)):
    """y = (x @ W * scale) ** exponent: a weight, a 0-d constant and an exponent, as
    exporters fold them in."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Mul", ["h", "scale"], ["g"]),
             helper.make_node("Pow", ["g", "exponent"], ["y"])]
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.normal(size=(3, 2)).astype(np.float32), "W"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
                    numpy_helper.from_array(np.full(exponent_shape, 3.0, np.float32),
                                            "exponent")]
    return model_of(nodes, [("x", TensorProto.FLOAT, [4, 3])],
                    [("y", TensorProto.FLOAT, [4, 2])], initializers)


def trained(model) -> set[str]:
    by_ir = {ir: name for name, ir in model.onnx_names.items()}
    return {by_ir[p.value.name] for p in model.graph.params if p.trainable}


def test_only_weights_train_by_default_and_the_options_override_that():
    proto = weight_scale_and_exponent()
    assert trained(chainrule.import_onnx(proto)) == {"W"}
    assert trained(chainrule.import_onnx(proto, trainable=["W", "scale", "exponent"])) == \
        {"W", "scale", "exponent"}
    assert trained(chainrule.import_onnx(proto, freeze=["W"])) == set()
    assert trained(chainrule.import_onnx(proto, trainable=["scale"], freeze=["W"])) == {"scale"}


def test_one_value_where_a_weight_goes_is_a_weight():
    # nn.PReLU() has a single slope, of shape (1,): a param like any other.
    proto = model_of([helper.make_node("PRelu", ["x", "slope"], ["y"])],
                     [("x", TensorProto.FLOAT, [2, 3])], [("y", TensorProto.FLOAT, [2, 3])],
                     [numpy_helper.from_array(np.array([0.25], np.float32), "slope")])
    assert trained(chainrule.import_onnx(proto)) == {"slope"}


def test_a_constant_exponent_over_negative_inputs_trains_without_nan():
    # Pow's gradient with respect to its exponent is NaN over negative bases: an exponent
    # that trained turned a whole GPT-2 import into NaN after one Adam step.
    model = chainrule.import_onnx(weight_scale_and_exponent(), loss="mse", targets="t")
    x = -np.abs(np.random.default_rng(1).normal(size=(4, 3))).astype(np.float32)
    before = model.params
    for _ in range(3):
        losses = model.train_step(lr=0.01, optimizer="adam", x=x,
                                  t=np.zeros((4, 2), np.float32))
    assert np.isfinite(losses["loss"])
    after = model.params
    assert all(np.all(np.isfinite(array)) for array in after.values())
    weight = model.onnx_names["W"]
    assert not np.array_equal(after[weight], before[weight])


def test_a_one_output_layers_bias_of_shape_one_trains():
    # Linear(4, 1) on a 3-d input, as exported: MatMul then Add of a bias of shape (1,).
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["y"])]
    proto = model_of(nodes, [("x", TensorProto.FLOAT, [2, 3, 4])],
                     [("y", TensorProto.FLOAT, [2, 3, 1])],
                     [numpy_helper.from_array(np.ones((4, 1), np.float32), "w"),
                      numpy_helper.from_array(np.zeros(1, np.float32), "b")])
    model = chainrule.import_onnx(proto)
    assert {p.value.name: p.trainable for p in model.graph.params} == {"w": True, "b": True}
