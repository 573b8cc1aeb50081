"""ONNX's structure beyond single tensors, as the importer reads it: sequences and optionals
(fixed at import time), If, a Loop that carries a sequence, and SequenceMap."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import chainrule
from chainrule.onnx_import import UnsupportedModel
from support.cli import chainrule as chainrule_cli


def tensor_type(dtype=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_type_proto(dtype, shape)


FLOAT_SEQUENCE = helper.make_sequence_type_proto(tensor_type())


def structured_model(nodes, inputs, outputs, initializers=(), opset=18):
    """A model whose inputs and outputs are (name, TypeProto) pairs."""
    graph = helper.make_graph(nodes, "test", [helper.make_value_info(*i) for i in inputs],
                              [helper.make_value_info(*o) for o in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run_both(model, **feeds):
    """The outputs by IR name on numpy, after checking onnxruntime agrees."""
    results = model.run(**feeds)
    exported = model.run(backend="onnxruntime", **feeds)
    for name, array in results.items():
        np.testing.assert_allclose(exported[name], array, rtol=1e-5, atol=1e-6)
    return results


def branch(name, nodes, outputs):
    return helper.make_graph(nodes, name, [], [helper.make_value_info(*o) for o in outputs])


def constant(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


# ---- sequences ----------------------------------------------------------------------------------

def test_a_sequence_is_one_graph_input_and_output_per_tensor():
    nodes = [helper.make_node("SequenceInsert", ["seq", "x", "front"], ["longer"]),
             helper.make_node("SequenceErase", ["longer"], ["out"])]  # drops the last
    front = numpy_helper.from_array(np.array(0, np.int64), "front")
    proto = structured_model(nodes, [("seq", FLOAT_SEQUENCE), ("x", tensor_type(shape=[2]))],
                             [("out", FLOAT_SEQUENCE)], [front])
    model = chainrule.import_onnx(proto, sequences={"seq": [(3,), ("n",)]})
    assert model.onnx_sequences == {"seq": ["seq.0", "seq.1"], "out": ["out.0", "out.1"]}
    a, b, x = (np.arange(size, dtype=np.float32) for size in (3, 4, 2))
    results = run_both(model, **{"seq.0": a, "seq.1": b, "x": x})
    np.testing.assert_array_equal(results["out.0"], x)
    np.testing.assert_array_equal(results["out.1"], a)


def test_a_sequence_input_without_its_shapes_says_how_to_give_them():
    proto = structured_model([helper.make_node("SequenceLength", ["seq"], ["n"])],
                             [("seq", FLOAT_SEQUENCE)], [("n", tensor_type(TensorProto.INT64))])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    [problem] = caught.value.problems
    assert problem.needs_elements == "seq" and "sequences={'seq'" in problem.hint
    assert run_both(chainrule.import_onnx(proto, sequences={"seq": [(1,)] * 3}),
                    **{f"seq.{i}": np.ones(1, np.float32) for i in range(3)})["n"] == 3


def test_the_command_line_refuses_a_sequence_input_in_one_line(tmp_path):
    proto = structured_model([helper.make_node("SequenceLength", ["seq"], ["n"])],
                             [("seq", FLOAT_SEQUENCE)], [("n", tensor_type(TensorProto.INT64))])
    onnx.save(proto, tmp_path / "seq.onnx")
    result = chainrule_cli("check", tmp_path / "seq.onnx")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "the sequence input 'seq' has no element shapes given" in result.stderr


def test_split_to_sequence_then_concat_from_sequence_with_a_new_axis_stacks_the_parts():
    nodes = [helper.make_node("SplitToSequence", ["x"], ["parts"], axis=1, keepdims=0),
             helper.make_node("ConcatFromSequence", ["parts"], ["y"], axis=0, new_axis=1)]
    proto = structured_model(nodes, [("x", tensor_type(shape=[2, 3]))],
                             [("y", tensor_type(shape=[3, 2]))])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"], x.T)


def test_sequence_map_applies_its_body_to_tensors_of_different_shapes():
    body = helper.make_graph([constant("axes", np.array([0], np.int64)),
                              helper.make_node("ReduceSum", ["t", "axes"], ["s"], keepdims=0)],
                             "body",
                             [helper.make_value_info("t", tensor_type())],
                             [helper.make_value_info("s", tensor_type(shape=[]))])
    nodes = [helper.make_node("SequenceMap", ["seq"], ["sums"], body=body),
             helper.make_node("ConcatFromSequence", ["sums"], ["y"], axis=0, new_axis=1)]
    proto = structured_model(nodes, [("seq", FLOAT_SEQUENCE)], [("y", tensor_type(shape=[3]))])
    model = chainrule.import_onnx(proto, sequences={"seq": [(1,), (2,), (4,)]})
    feeds = {f"seq.{i}": np.arange(n, dtype=np.float32) for i, n in enumerate((1, 2, 4))}
    np.testing.assert_array_equal(run_both(model, **feeds)["y"], [0, 1, 6])


def test_a_loop_that_carries_a_sequence_is_unrolled():
    # Each step appends x[:i+1]: the sequence grows, which no scan can carry.
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         constant("one", np.array([1], np.int64)), constant("zero", np.array([0], np.int64)),
         helper.make_node("Add", ["i", "one"], ["end"]),
         helper.make_node("Slice", ["x", "zero", "end"], ["part"]),
         helper.make_node("SequenceInsert", ["seq_in", "part"], ["seq_out"])], "body",
        [helper.make_value_info("i", tensor_type(TensorProto.INT64, [])),
         helper.make_value_info("cond_in", tensor_type(TensorProto.BOOL, [])),
         helper.make_value_info("seq_in", FLOAT_SEQUENCE)],
        [helper.make_value_info("cond_out", tensor_type(TensorProto.BOOL, [])),
         helper.make_value_info("seq_out", FLOAT_SEQUENCE)])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=TensorProto.FLOAT),
             helper.make_node("Loop", ["steps", "", "empty"], ["grown"], body=body),
             helper.make_node("ConcatFromSequence", ["grown"], ["y"], axis=0)]
    steps = numpy_helper.from_array(np.array(3, np.int64), "steps")
    proto = structured_model(nodes, [("x", tensor_type(shape=[4]))],
                             [("y", tensor_type(shape=[6]))], [steps])
    x = np.array([1, 2, 3, 4], np.float32)
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"],
                                  [1, 1, 2, 1, 2, 3])


# ---- optionals ----------------------------------------------------------------------------------

def test_an_optional_input_is_absent_or_what_it_holds():
    optional = helper.make_optional_type_proto(tensor_type(shape=[2]))
    nodes = [helper.make_node("OptionalHasElement", ["maybe"], ["has"])]
    proto = structured_model(nodes, [("maybe", optional)], [("has", tensor_type(
        TensorProto.BOOL, []))])
    absent = chainrule.import_onnx(proto, sequences={"maybe": None})
    assert not run_both(absent)["has"]
    present = chainrule.import_onnx(proto, sequences={"maybe": (2,)})
    assert run_both(present, maybe=np.zeros(2, np.float32))["has"]
    read = structured_model([helper.make_node("OptionalGetElement", ["maybe"], ["y"])],
                            [("maybe", optional)], [("y", tensor_type(shape=[2]))])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(read, sequences={"maybe": None})
    assert "'maybe', an optional that holds nothing" in caught.value.problems[0].reason


# ---- If -----------------------------------------------------------------------------------------

def if_model(then_value, else_value):
    then_branch = branch("then", [constant("a", then_value)], [("a", tensor_type())])
    else_branch = branch("else", [helper.make_node("Mul", ["x", "x"], ["b"])],
                         [("b", tensor_type())])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch,
                            else_branch=else_branch)
    return structured_model([node], [("cond", tensor_type(TensorProto.BOOL, [])),
                                     ("x", tensor_type(shape=list(else_value.shape)))],
                            [("y", tensor_type())])


def test_an_if_on_a_condition_computed_at_run_time_selects_between_its_branches():
    model = chainrule.import_onnx(if_model(np.full(3, 7, np.float32), np.zeros(3)))
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(run_both(model, cond=np.array(True), x=x)["y"], [7, 7, 7])
    np.testing.assert_array_equal(run_both(model, cond=np.array(False), x=x)["y"], x * x)


def test_an_if_whose_branches_differ_in_shape_needs_its_condition_at_import_time():
    proto = if_model(np.full(2, 7, np.float32), np.zeros(3))
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert caught.value.problems[0].needs_constant == "cond"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(False), "cond"))
    del proto.graph.input[0]
    x = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(run_both(chainrule.import_onnx(proto), x=x)["y"], x * x)


# ---- DFT and STFT -------------------------------------------------------------------------------

def dft_model(shape, length=None, **attrs):
    inputs = ["x", "length" if length is not None else ""]
    initializers = [] if length is None else [numpy_helper.from_array(np.array(length), "length")]
    node = helper.make_node("DFT", inputs, ["y"], axis=1, **attrs)
    return structured_model([node], [("x", tensor_type(shape=shape))], [("y", tensor_type())],
                            initializers, opset=19)


def as_complex(array):
    return array[..., 0] + 1j * array[..., 1]


@pytest.mark.parametrize("length", [None, 5, 11])  # as it is, truncated, padded with zeros
def test_dft_matches_numpys_fft_of_a_complex_signal(length):
    x = np.random.default_rng(0).standard_normal((2, 8, 2))
    model = chainrule.import_onnx(dft_model(["batch", 8, 2], length))
    y = run_both(model, x=x.astype(np.float32))["y"]
    np.testing.assert_allclose(as_complex(y), np.fft.fft(as_complex(x), n=length, axis=1),
                               atol=1e-4)


def test_a_one_sided_dft_and_its_inverse_are_numpys_rfft_and_irfft():
    x = np.random.default_rng(1).standard_normal((3, 10, 1)).astype(np.float32)
    spectrum = run_both(chainrule.import_onnx(dft_model([3, 10, 1], onesided=1)), x=x)["y"]
    np.testing.assert_allclose(as_complex(spectrum), np.fft.rfft(x[..., 0], axis=1), atol=1e-4)
    back = chainrule.import_onnx(dft_model([3, 6, 2], onesided=1, inverse=1))
    np.testing.assert_allclose(run_both(back, x=spectrum)["y"], x, atol=1e-5)


def test_stft_is_the_dft_of_each_windowed_frame():
    signal = np.random.default_rng(2).standard_normal((1, 20, 1)).astype(np.float32)
    window = np.hanning(8).astype(np.float32)
    constants = [numpy_helper.from_array(np.array(4), "step"),
                 numpy_helper.from_array(window, "window")]
    node = helper.make_node("STFT", ["signal", "step", "window"], ["y"])
    proto = structured_model([node], [("signal", tensor_type(shape=[1, 20, 1]))],
                             [("y", tensor_type())], constants, opset=17)
    y = run_both(chainrule.import_onnx(proto), signal=signal)["y"]
    frames = np.stack([signal[0, start:start + 8, 0] * window for start in (0, 4, 8, 12)])
    np.testing.assert_allclose(as_complex(y[0]), np.fft.rfft(frames, axis=1), atol=1e-4)


# ---- ops that ONNX defines as functions ---------------------------------------------------------

def test_an_op_imports_as_its_onnx_function(monkeypatch):
    from chainrule.onnx_import import CONVERTERS
    from chainrule.onnx_import.functions import import_function_body
    # Mish, x * tanh(softplus(x)), has a converter, and is a function since opset 18.
    monkeypatch.setitem(CONVERTERS, "Mish", import_function_body)
    proto = structured_model([helper.make_node("Mish", ["x"], ["y"])],
                             [("x", tensor_type(shape=[5]))], [("y", tensor_type(shape=[5]))])
    x = np.linspace(-3, 3, 5).astype(np.float32)
    y = run_both(chainrule.import_onnx(proto), x=x)["y"]
    np.testing.assert_allclose(y, x * np.tanh(np.log1p(np.exp(x))), rtol=1e-5)


@pytest.mark.skipif("SwiGLU" not in {s.name for s in onnx.defs.get_all_schemas()},
                    reason="this onnx has no SwiGLU")
def test_swiglu_imports_as_its_function_with_its_attribute():
    node = helper.make_node("SwiGLU", ["a", "b"], ["y"], alpha=2.0)
    proto = structured_model([node], [("a", tensor_type(shape=[4])), ("b", tensor_type(
        shape=[4]))], [("y", tensor_type(shape=[4]))], opset=28)
    a, b = np.linspace(-2, 2, 4).astype(np.float32), np.arange(4, dtype=np.float32)
    y = run_both(chainrule.import_onnx(proto), a=a, b=b)["y"]
    np.testing.assert_allclose(y, a / (1 + np.exp(-2 * a)) * b, rtol=1e-5)


# ---- the preview training ops -------------------------------------------------------------------

TRAINING = "ai.onnx.preview.training"


@pytest.mark.parametrize("op, state, attrs", [
    ("Adam", ["V", "H"], {"alpha": 0.9, "beta": 0.99, "epsilon": 1e-3,
                          "norm_coefficient_post": 0.1}),
    ("Momentum", ["V"], {"alpha": 0.9, "beta": 0.5, "mode": "nesterov",
                         "norm_coefficient": 0.01}),
    ("Adagrad", ["H"], {"decay_factor": 0.1, "epsilon": 1e-3})])
@pytest.mark.parametrize("step", [0, 3])  # the first step updates otherwise
def test_a_training_op_updates_as_onnxs_reference_does(op, state, attrs, step):
    inputs = ["R", "T", "X", "G", *state]
    node = helper.make_node(op, inputs, ["X_new", *(f"{s}_new" for s in state)],
                            domain=TRAINING, **attrs)
    shapes = {"R": [], "T": []}
    types = [(name, tensor_type(TensorProto.INT64 if name == "T" else TensorProto.FLOAT,
                                shapes.get(name, [3]))) for name in inputs]
    proto = structured_model([node], types, [(name, tensor_type(shape=[3]))
                                             for name in node.output])
    proto.opset_import.append(helper.make_opsetid(TRAINING, 1))
    rng = np.random.default_rng(step)
    feeds = {name: rng.uniform(0.5, 2, 3).astype(np.float32) for name in ["X", "G", *state]}
    feeds.update(R=np.array(0.1, np.float32), T=np.array(step))
    expected = ReferenceEvaluator(proto).run(None, feeds)
    results = run_both(chainrule.import_onnx(proto), **feeds)
    for name, array in zip(node.output, expected, strict=True):
        np.testing.assert_allclose(results[name], array, rtol=1e-5)


def test_binarizer_keeps_the_threshold_itself_at_zero():
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    proto = structured_model([node], [("x", tensor_type(TensorProto.DOUBLE, [4]))],
                             [("y", tensor_type(TensorProto.DOUBLE, [4]))])
    proto.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    y = run_both(chainrule.import_onnx(proto), x=np.array([0.0, 0.5, 0.6, -1.0]))["y"]
    assert y.dtype == np.float64 and y.tolist() == [0, 0, 1, 0]


def test_an_op_whose_result_length_depends_on_values_is_refused_saying_so():
    proto = structured_model([helper.make_node("Unique", ["x"], ["y"])],
                             [("x", tensor_type(shape=[5]))], [("y", tensor_type())])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert "as long as how many distinct values its input holds" in \
        caught.value.problems[0].reason


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter_writes_each_rows_update_from_its_index(mode):
    past = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    update = -np.arange(1, 2 * 2 * 3 + 1, dtype=np.float32).reshape(2, 2, 3)
    starts = np.array([1, 4])  # the second row runs past the end: wrapped, or dropped
    expected = past.copy()
    for row, start in enumerate(starts):
        for step in range(2):
            position = start + step
            if mode == "circular" or position < 5:
                expected[row, position % 5] = update[row, step]
    node = helper.make_node("TensorScatter", ["past", "update", "starts"], ["present"],
                            mode=mode, axis=1)
    proto = structured_model([node], [("past", tensor_type(shape=[2, 5, 3])),
                                      ("update", tensor_type(shape=[2, 2, 3])),
                                      ("starts", tensor_type(TensorProto.INT64, [2]))],
                             [("present", tensor_type(shape=[2, 5, 3]))], opset=24)
    if "TensorScatter" not in {s.name for s in onnx.defs.get_all_schemas()}:
        pytest.skip("this onnx has no TensorScatter")
    present = run_both(chainrule.import_onnx(proto), past=past, update=update,
                       starts=starts)["present"]
    np.testing.assert_array_equal(present, expected)


# ---- scatters that reduce -----------------------------------------------------------------------

@pytest.mark.parametrize("reduction, ufunc", [("mul", np.multiply), ("max", np.maximum),
                                              ("min", np.minimum)])
def test_scatter_elements_reduces_repeated_and_negative_indices_at_run_time(reduction, ufunc):
    data = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    updates = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    indices = np.array([[0, 2, -4], [3, 3, -1]])  # -4 is 0 again; -1 is 3 again
    expected = data.copy()
    ufunc.at(expected, (np.array([[0], [1]]), indices % 4), updates)
    node = helper.make_node("ScatterElements", ["data", "indices", "updates"], ["y"], axis=1,
                            reduction=reduction)
    proto = structured_model([node], [("data", tensor_type(shape=[2, 4])),
                                      ("indices", tensor_type(TensorProto.INT64, [2, 3])),
                                      ("updates", tensor_type(shape=[2, 3]))],
                             [("y", tensor_type(shape=[2, 4]))])
    y = run_both(chainrule.import_onnx(proto), data=data, indices=indices, updates=updates)["y"]
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_scatter_nd_multiplies_rows_into_a_tensor():
    data = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    updates = np.array([[2, 2, 2, 2], [3, 3, 3, 3], [0.5, 1, 1, 1]], np.float32)
    indices = np.array([[1], [1], [0]])
    expected = data.copy()
    np.multiply.at(expected, indices[:, 0], updates)
    node = helper.make_node("ScatterND", ["data", "indices", "updates"], ["y"],
                            reduction="mul")
    proto = structured_model([node], [("data", tensor_type(shape=[3, 4])),
                                      ("indices", tensor_type(TensorProto.INT64, [3, 1])),
                                      ("updates", tensor_type(shape=[3, 4]))],
                             [("y", tensor_type(shape=[3, 4]))])
    y = run_both(chainrule.import_onnx(proto), data=data, indices=indices, updates=updates)["y"]
    np.testing.assert_array_equal(y, expected)


@pytest.mark.skipif("FlexAttention" not in {s.name for s in onnx.defs.get_all_schemas()},
                    reason="this onnx has no FlexAttention")
def test_a_preview_op_imports_as_its_function():
    node = helper.make_node("FlexAttention", ["q", "k", "v"], ["y"], domain="ai.onnx.preview",
                            scale=0.5)
    shape = [1, 2, 3, 4]
    proto = structured_model([node], [(name, tensor_type(shape=shape)) for name in "qkv"],
                             [("y", tensor_type(shape=shape))], opset=26)
    proto.opset_import.append(helper.make_opsetid("ai.onnx.preview", 1))
    feeds = {name: np.random.default_rng(index).standard_normal(shape).astype(np.float32)
             for index, name in enumerate("qkv")}
    [expected] = ReferenceEvaluator(proto).run(None, feeds)
    np.testing.assert_allclose(run_both(chainrule.import_onnx(proto), **feeds)["y"], expected,
                               rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_a_dft():
    from chainrule.gradcheck import gradcheck
    weight = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).reshape(8, 1).astype(np.float32),
                                     "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["scaled"]),
             helper.make_node("DFT", ["scaled"], ["spectrum"], axis=1, onesided=1),
             helper.make_node("ReduceSumSquare", ["spectrum"], ["power"], keepdims=0)]
    proto = structured_model(nodes, [("x", tensor_type(shape=[2, 8, 1]))],
                             [("power", tensor_type(shape=[]))], [weight], opset=19)
    model = chainrule.import_onnx(proto)
    x = np.random.default_rng(5).standard_normal((2, 8, 1))
    rows = gradcheck(model, {"x": x}, backends=("numpy", "onnxruntime"))
    assert rows and all(row.passed for row in rows), rows


def test_eye_like_of_symbolic_dims_is_numpys_eye():
    node = helper.make_node("EyeLike", ["x"], ["y"], k=-1, dtype=TensorProto.DOUBLE)
    proto = structured_model([node], [("x", tensor_type(shape=["rows", "columns"]))],
                             [("y", tensor_type(TensorProto.DOUBLE))])
    model = chainrule.import_onnx(proto)
    for shape in [(3, 4), (5, 2)]:
        y = run_both(model, x=np.zeros(shape, np.float32))["y"]
        np.testing.assert_array_equal(y, np.eye(*shape, k=-1))
        assert y.dtype == np.float64


def test_a_tensor_read_out_of_a_sequence_stays_in_it():
    # SequenceAt names its result; the sequence, concatenated afterwards, still holds the part.
    nodes = [helper.make_node("SplitToSequence", ["x"], ["parts"], axis=1),
             helper.make_node("SequenceAt", ["parts", "last"], ["a"]),
             helper.make_node("ConcatFromSequence", ["parts"], ["joined"], axis=0, new_axis=1)]
    last = numpy_helper.from_array(np.array(-1, np.int64), "last")
    proto = structured_model(nodes, [("x", tensor_type(shape=[2, 3]))],
                             [("a", tensor_type()), ("joined", tensor_type())], [last])
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = chainrule.import_onnx(proto)
    results = run_both(model, x=x)
    np.testing.assert_array_equal(results[model.onnx_names["a"]], x[:, 2:])
    np.testing.assert_array_equal(results[model.onnx_names["joined"]],
                                  np.stack([x[:, i:i + 1] for i in range(3)]))
