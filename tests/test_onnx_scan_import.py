"""ONNX's Scan and Loop nodes imported onto `scan`: bodies that read outer values, scan axes and
directions, a Loop of fixed trip count, nesting, gradients through an imported body, and the
Loops chainrule refuses, by name. Each model runs on both numpy backends, and as chainrule
exports it again, against onnxruntime on the original model."""
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule.backends import CHECKING_BACKEND
from chainrule.onnx_import import UnsupportedModel
from support.numeric import assert_close, central_difference
from support.onnx_models import model_of

FLOAT, INT64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def info(name, dtype=FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def constant(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


def check_against_onnxruntime(proto, **feeds):
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                        strict=True))
    model = chainrule.import_onnx(proto)
    for backend in ("numpy", CHECKING_BACKEND, "onnxruntime"):
        results = model.run(backend=backend,
                            **{model.onnx_names[name]: a for name, a in feeds.items()})
        for name, array in expected.items():
            assert_close(results[model.onnx_names[name]], array, 1e-6, atol=1e-6,
                         what=f"{name} on {backend}")
    return model


def accumulating_body(name="body"):
    """s' = s + x_t * w (w read from the enclosing graph), y_t = 2 s'."""
    return helper.make_graph(
        [constant("two", np.array(2.0, np.float32)),
         helper.make_node("Mul", ["x_t", "w"], ["xw"]),
         helper.make_node("Add", ["s_in", "xw"], ["s_out"]),
         helper.make_node("Mul", ["s_out", "two"], ["y"])],
        name, [info("s_in", shape=[3]), info("x_t", shape=[3])],
        [info("s_out", shape=[3]), info("y", shape=[3])])


def scan_model(**attrs):
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan",
                            body=accumulating_body(), num_scan_inputs=1, **attrs)
    shape = [3, 5] if attrs.get("scan_input_axes") == [1] else [5, 3]
    return model_of([node], [("s0", FLOAT, [3]), ("xs", FLOAT, shape), ("w", FLOAT, [3])],
                    [("s", FLOAT, None), ("ys", FLOAT, None)])


def scan_feeds(attrs, rng):
    shape = (3, 5) if attrs.get("scan_input_axes") == [1] else (5, 3)
    return {"s0": rng.standard_normal(3).astype(np.float32),
            "xs": rng.standard_normal(shape).astype(np.float32),
            "w": rng.standard_normal(3).astype(np.float32)}


@pytest.mark.parametrize("attrs", [
    {},
    {"scan_input_directions": [1]},
    {"scan_output_directions": [1]},
    {"scan_input_directions": [1], "scan_output_directions": [1]},
    {"scan_input_axes": [1], "scan_output_axes": [1]},
    {"scan_input_axes": [1], "scan_output_axes": [-1], "scan_input_directions": [1]},
], ids=str)
def test_scan_with_its_axes_and_directions_matches_onnxruntime(attrs):
    proto = scan_model(**attrs)
    model = check_against_onnxruntime(proto, **scan_feeds(attrs, np.random.default_rng(0)))
    [scan] = [node for node in model.graph.nodes if node.op == "scan"]
    # The outer value the body reads is the scan's last operand.
    assert scan.inputs[-1].name == model.onnx_names["w"]


def test_a_gradient_through_an_imported_scan_matches_central_differences():
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan",
                            body=accumulating_body(), num_scan_inputs=1,
                            scan_input_directions=[1])
    rng = np.random.default_rng(1)
    w = rng.standard_normal(3)
    proto = model_of([node], [("s0", TensorProto.DOUBLE, [3]), ("xs", TensorProto.DOUBLE, [5, 3])],
                     [("ys", TensorProto.DOUBLE, None)], [numpy_helper.from_array(w, "w")])
    for graph_node in proto.graph.node[0].attribute[0].g.node:
        if graph_node.op_type == "Constant":  # the body's constant as a double
            graph_node.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(2.0), "two"))
    model = chainrule.import_onnx(proto, loss="mse")
    feeds = {model.onnx_names["s0"]: rng.standard_normal(3),
             model.onnx_names["xs"]: rng.standard_normal((5, 3)),
             "y": rng.standard_normal((5, 3))}
    grads = model.grad(**feeds)
    name = model.onnx_names["w"]
    param = model.params[name] = model.params[name].copy()
    numeric = central_difference(lambda: float(model.run(**feeds)[model.objective.name]), param)
    assert_close(grads[name], numeric, 1e-6, atol=1e-9, what="w")


def loop_body(condition_nodes, condition="cond_in"):
    """a' = a + x cast(i) (x read from the enclosing graph), a' stacked at every step."""
    return helper.make_graph(
        [*condition_nodes,
         helper.make_node("Cast", ["i"], ["i_float"], to=FLOAT),
         helper.make_node("Mul", ["x", "i_float"], ["step"]),
         helper.make_node("Add", ["a_in", "step"], ["a_out"]),
         helper.make_node("Identity", ["a_out"], ["stacked"])],
        "loop_body", [info("i", INT64, []), info("cond_in", BOOL, []), info("a_in", shape=[2])],
        [info(condition, BOOL, []), info("a_out", shape=[2]), info("stacked", shape=[2])])


def loop_model(body, condition_input="", trip_count=4):
    node = helper.make_node("Loop", ["M", condition_input, "a0"], ["a", "as"], name="loop",
                            body=body)
    initializers = [numpy_helper.from_array(np.array(trip_count, np.int64), "M")]
    if condition_input:
        initializers.append(numpy_helper.from_array(np.array(True), condition_input))
    return model_of([node], [("a0", FLOAT, [2]), ("x", FLOAT, [2])],
                    [("a", FLOAT, None), ("as", FLOAT, None)], initializers)


@pytest.mark.parametrize("body, condition_input", [
    (loop_body([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "cond_out"), ""),
    (loop_body([], "cond_in"), "keep_going"),
    (loop_body([constant("always", np.array(True))], "always"), ""),
], ids=["identity", "passed_through", "constant_true"])
def test_a_loop_that_never_stops_early_is_a_scan_of_its_trip_count(body, condition_input):
    rng = np.random.default_rng(2)
    model = check_against_onnxruntime(loop_model(body, condition_input),
                                      a0=rng.standard_normal(2).astype(np.float32),
                                      x=rng.standard_normal(2).astype(np.float32))
    [scan] = [node for node in model.graph.nodes if node.op == "scan"]
    assert scan.attrs["length"] == 4


def test_a_loop_whose_body_holds_a_scan_reading_both_scopes():
    # The inner Scan reads `x` from the outer graph and `a_in` from the Loop's body.
    inner = helper.make_graph(
        [helper.make_node("Mul", ["x_t", "x"], ["xx"]),
         helper.make_node("Add", ["xx", "a_in"], ["sa"]),
         helper.make_node("Add", ["s_in", "sa"], ["s_out"])],
        "inner", [info("s_in", shape=[2]), info("x_t", shape=[2])], [info("s_out", shape=[2])])
    outer_body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Scan", ["a_in", "rows"], ["a_out"], body=inner, num_scan_inputs=1),
         helper.make_node("Identity", ["a_out"], ["stacked"])],
        "loop_body", [info("i", INT64, []), info("cond_in", BOOL, []), info("a_in", shape=[2])],
        [info("cond_out", BOOL, []), info("a_out", shape=[2]), info("stacked", shape=[2])])
    node = helper.make_node("Loop", ["M", "", "a0"], ["a", "as"], name="loop", body=outer_body)
    proto = model_of([node], [("a0", FLOAT, [2]), ("x", FLOAT, [2]), ("rows", FLOAT, [3, 2])],
                     [("a", FLOAT, None), ("as", FLOAT, None)],
                     [numpy_helper.from_array(np.array(3, np.int64), "M")])
    rng = np.random.default_rng(3)
    check_against_onnxruntime(proto, a0=rng.standard_normal(2).astype(np.float32),
                              x=rng.standard_normal(2).astype(np.float32),
                              rows=rng.standard_normal((3, 2)).astype(np.float32))


def refusal(proto):
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    (problem,) = caught.value.problems
    assert (problem.op_type, problem.node) == ("Loop", "loop")
    return problem


def test_a_loop_whose_condition_may_turn_false_is_refused_by_name():
    body = loop_body([constant("three", np.array(3, np.int64)),
                      helper.make_node("Less", ["i", "three"], ["more"])], "more")
    assert refusal(loop_model(body)).reason == (
        "a Loop whose condition may turn false at run time (the body computes its condition "
        "'more'; a scan has a fixed length)")


def test_a_loop_of_a_trip_count_computed_at_run_time_needs_it_constant():
    body = loop_body([], "cond_in")
    node = helper.make_node("Loop", ["M", "", "a0"], ["a", "as"], name="loop", body=body)
    proto = model_of([node], [("M", INT64, []), ("a0", FLOAT, [2]), ("x", FLOAT, [2])],
                     [("a", FLOAT, None), ("as", FLOAT, None)])
    assert refusal(proto).needs_constant == "M"


@pytest.mark.parametrize("trip_count, condition", [(0, True), (-3, True), (4, False)])
def test_a_loop_of_no_steps_passes_its_values_through_as_onnxruntime_does(trip_count, condition):
    """A trip count of 0 or less, or a condition false at the start: no step, an empty
    stack."""
    proto = loop_model(loop_body([], "cond_in"), "keep_going", trip_count)
    proto.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(condition),
                                                                "keep_going"))
    model = check_against_onnxruntime(proto, a0=np.array([1.0, 2.0], np.float32),
                                      x=np.array([3.0, 4.0], np.float32))
    assert model.run(a0=np.array([1.0, 2.0], np.float32),
                     x=np.array([3.0, 4.0], np.float32))[model.onnx_names["as"]].shape == (0, 2)


def test_a_body_that_passes_its_inputs_through_stacks_them():
    # Outputs that are the body's own inputs, read through Identity (as ONNX's expanded
    # functions write them): the carried state unchanged, and each step's slice.
    body = helper.make_graph(
        [helper.make_node("Identity", ["s_in"], ["s_out"]),
         helper.make_node("Identity", ["x_t"], ["y"])],
        "body", [info("s_in", shape=[3]), info("x_t", shape=[3])],
        [info("s_out", shape=[3]), info("y", shape=[3])])
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan", body=body,
                            num_scan_inputs=1, scan_output_directions=[1])
    proto = model_of([node], [("s0", FLOAT, [3]), ("xs", FLOAT, [5, 3])],
                     [("s", FLOAT, None), ("ys", FLOAT, None)])
    rng = np.random.default_rng(4)
    check_against_onnxruntime(proto, s0=rng.standard_normal(3).astype(np.float32),
                              xs=rng.standard_normal((5, 3)).astype(np.float32))


def test_an_output_read_only_inside_a_body_is_computed():
    # LayerNormalization computes its Mean output only when something reads it: here only
    # the Loop's body does.
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["a_in", "mean"], ["a_out"]),
         helper.make_node("Identity", ["a_out"], ["stacked"])],
        "loop_body", [info("i", INT64, []), info("cond_in", BOOL, []),
                      info("a_in", shape=[2, 1])],
        [info("cond_out", BOOL, []), info("a_out", shape=[2, 1]), info("stacked", shape=[2, 1])])
    nodes = [helper.make_node("LayerNormalization", ["x", "scale"], ["normalized", "mean"]),
             helper.make_node("Loop", ["M", "", "a0"], ["a", "as"], name="loop", body=body)]
    proto = model_of(nodes, [("x", FLOAT, [2, 3]), ("a0", FLOAT, [2, 1])],
                     [("normalized", FLOAT, None), ("a", FLOAT, None), ("as", FLOAT, None)],
                     [numpy_helper.from_array(np.array(3, np.int64), "M"),
                      numpy_helper.from_array(np.ones(3, np.float32), "scale")])
    rng = np.random.default_rng(5)
    check_against_onnxruntime(proto, x=rng.standard_normal((2, 3)).astype(np.float32),
                              a0=rng.standard_normal((2, 1)).astype(np.float32))


def test_a_body_node_that_cannot_be_imported_is_reported_on_the_scan_by_its_name():
    body = helper.make_graph(
        [helper.make_node("TfIdfVectorizer", ["x_t"], ["y"], name="inside"),
         helper.make_node("Add", ["s_in", "y"], ["s_out"])],
        "body", [info("s_in", shape=[3]), info("x_t", shape=[3])],
        [info("s_out", shape=[3]), info("y", shape=[3])])
    node = helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], name="scan", body=body,
                            num_scan_inputs=1)
    proto = model_of([node], [("s0", FLOAT, [3]), ("xs", FLOAT, [5, 3])], [("s", FLOAT, None)])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert [(p.op_type, p.node, p.reason) for p in caught.value.problems] == [
        ("Scan", "scan", "its body's TfIdfVectorizer node 'inside': op not supported")]
