"""Ops the importer reads beyond ONNX's own node tests: older opsets' spellings, what each
refuses, and which ONNX op the export writes back for each opset and dtype."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import chainrule
from chainrule.backends.onnx_backend import export_onnx
from chainrule.onnx_import import UnsupportedModel
from support.onnx_models import model_of, run_both


def _grid_sample_model(opset, **attrs):
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sample", **attrs)
    return model_of([node], [("x", TensorProto.FLOAT, [2, 3, 4, 5]),
                             ("grid", TensorProto.FLOAT, [2, 3, 2, 2])],
                    [("y", TensorProto.FLOAT, [2, 3, 3, 2])], opset=opset)


def _sampling_inputs():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
            "grid": rng.uniform(-1.3, 1.3, size=(2, 3, 2, 2)).astype(np.float32)}


@pytest.mark.parametrize("mode, as_opset_20", [("bilinear", "linear"), ("bicubic", "cubic"),
                                               ("nearest", "nearest")])
def test_grid_sample_reads_opset_16s_mode_names(mode, as_opset_20):
    older = chainrule.import_onnx(_grid_sample_model(16, mode=mode, padding_mode="border"))
    newer = chainrule.import_onnx(_grid_sample_model(20, mode=as_opset_20,
                                                     padding_mode="border"))
    (node,) = [n for n in older.graph.nodes if n.op == "grid_sample"]
    assert node.attrs == {"mode": as_opset_20, "padding_mode": "border", "align_corners": False}
    inputs = _sampling_inputs()
    np.testing.assert_array_equal(older.run(**inputs)["y"], newer.run(**inputs)["y"])


def test_grid_sample_refuses_a_mode_it_does_not_know():
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(_grid_sample_model(20, mode="area"))
    (problem,) = caught.value.problems
    assert problem.reason == ("attribute mode='area' (supported: 'bilinear', 'bicubic', "
                              "'nearest', 'linear', 'cubic')")


def _exported_ops(source, opset):
    graph = chainrule.compile(source=source).graph
    return {node.op_type for node in export_onnx(graph, opset=opset).graph.node}


SAMPLE = "model m(x: {dtype}[B, 2, {spatial}], g: {dtype}[B, 3, {points}]) {{\n" \
         "  return grid_sample(x, g, mode=\"{mode}\")\n}}\n"


@pytest.mark.parametrize("dtype, spatial, points, mode, opset, native", [
    ("f32", "4, 5", "2, 2", "cubic", 16, True),
    ("f64", "4, 5", "2, 2", "linear", 18, False),  # onnxruntime's GridSample-16 is float32 only
    ("f64", "4, 5", "2, 2", "linear", 20, True),
    ("f32", "3, 4, 5", "2, 2, 3", "linear", 18, False),  # opset 16's GridSample is 2-D
    ("f32", "3, 4, 5", "2, 2, 3", "nearest", 20, True),
    ("f32", "3, 4, 5", "2, 2, 3", "cubic", 20, False),  # onnxruntime has no volumetric cubic
])
def test_grid_sample_exports_as_gridsample_where_onnxruntime_runs_it(dtype, spatial, points,
                                                                      mode, opset, native):
    ops = _exported_ops(SAMPLE.format(dtype=dtype, spatial=spatial, points=points, mode=mode),
                        opset)
    assert ("GridSample" in ops) == native
    assert native or "Gather" in ops  # the composition reads rows by a flat index


def test_top_k_refuses_a_k_longer_than_its_axis():
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="top")
    k = numpy_helper.from_array(np.array([5], np.int64), "k")
    proto = model_of([node], [("x", TensorProto.FLOAT, [2, 4])],
                     [("values", TensorProto.FLOAT, None), ("indices", TensorProto.INT64, None)],
                     [k])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    assert [p.reason for p in caught.value.problems] == ["TopK of k=5 along an axis of 4"]


def test_top_k_imports_its_values_and_indices_with_ties_lowest_first():
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="top", largest=0)
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    proto = model_of([node], [("x", TensorProto.FLOAT, [2, 4])],
                     [("values", TensorProto.FLOAT, None), ("indices", TensorProto.INT64, None)],
                     [k])
    model = chainrule.import_onnx(proto)
    x = np.array([[3.0, 1.0, 1.0, 2.0], [0.5, 4.0, -1.0, 0.0]], np.float32)
    results = model.run(x=x)
    np.testing.assert_array_equal(results[model.onnx_names["indices"]], [[1, 2], [2, 3]])
    np.testing.assert_array_equal(results[model.onnx_names["values"]], [[1.0, 1.0], [-1.0, 0.0]])


@pytest.mark.parametrize("time_axis", [0, 1])
def test_reverse_sequence_reverses_each_entrys_steps_and_clamps_lengths(time_axis):
    node = helper.make_node("ReverseSequence", ["x", "lengths"], ["y"], name="reverse",
                            time_axis=time_axis, batch_axis=1 - time_axis)
    shape = [5, 4, 2] if time_axis == 0 else [4, 5, 2]
    proto = model_of([node], [("x", TensorProto.FLOAT, shape),
                              ("lengths", TensorProto.INT64, [4])],
                     [("y", TensorProto.FLOAT, shape)])
    x = np.arange(40, dtype=np.float32).reshape(shape)
    lengths = np.array([5, 0, 3, 9])  # 0 keeps all, past the 5 steps reverses all
    by_batch = np.moveaxis(x, time_axis, 0)
    expected = by_batch.copy()
    for batch, length in enumerate(np.clip(lengths, 0, 5)):
        expected[:length, batch] = by_batch[:length, batch][::-1]
    result = run_both(chainrule.import_onnx(proto), x=x, lengths=lengths)["y"]
    np.testing.assert_array_equal(result, np.moveaxis(expected, 0, time_axis))


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("transform", ["half_pixel", "output_half_pixel"])
def test_roi_align_matches_onnxs_reference_for_regions_inside_across_and_outside(mode,
                                                                                  transform):
    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], name="align", mode=mode,
                            coordinate_transformation_mode=transform, output_height=3,
                            output_width=2, sampling_ratio=2, spatial_scale=0.5)
    proto = model_of([node], [("x", TensorProto.FLOAT, [2, 3, 6, 7]),
                              ("rois", TensorProto.FLOAT, [4, 4]),
                              ("batch", TensorProto.INT64, [4])],
                     [("y", TensorProto.FLOAT, [4, 3, 3, 2])], opset=16)
    rng = np.random.default_rng(0)
    inputs = {"x": rng.normal(size=(2, 3, 6, 7)).astype(np.float32),
              "rois": np.array([[1, 2, 9, 11], [-4, -3, 3, 2], [10, 9, 20, 18],
                                [30, 30, 40, 40]], np.float32),  # the last one outside
              "batch": np.array([0, 1, 1, 0])}
    expected = ReferenceEvaluator(proto).run(None, inputs)[0]
    result = run_both(chainrule.import_onnx(proto), **inputs)["y"]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_roi_align_reads_a_nan_region_as_zeros():
    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], name="align",
                            output_height=2, output_width=2, sampling_ratio=1)
    proto = model_of([node], [("x", TensorProto.FLOAT, [1, 1, 4, 4]),
                              ("rois", TensorProto.FLOAT, [1, 4]),
                              ("batch", TensorProto.INT64, [1])],
                     [("y", TensorProto.FLOAT, [1, 1, 2, 2])], opset=16)
    result = run_both(chainrule.import_onnx(proto), x=np.ones((1, 1, 4, 4), np.float32),
                      rois=np.array([[np.nan, 0, 2, 2]], np.float32), batch=np.array([0]))
    np.testing.assert_array_equal(result["y"], 0.0)


def _deform_conv_model(**attrs):
    node = helper.make_node("DeformConv", ["x", "w", "offset", "b", "mask"], ["y"],
                            name="deform", kernel_shape=[2, 3], **attrs)
    return model_of([node], [("x", TensorProto.FLOAT, [2, 4, 5, 6]),
                             ("w", TensorProto.FLOAT, [6, 2, 2, 3]),
                             ("offset", TensorProto.FLOAT, [2, 24, 3, 3]),
                             ("b", TensorProto.FLOAT, [6]),
                             ("mask", TensorProto.FLOAT, [2, 12, 3, 3])],
                    [("y", TensorProto.FLOAT, [2, 6, 3, 3])], opset=19)


DEFORM = {"group": 2, "offset_group": 2, "strides": [2, 1], "dilations": [1, 2],
          "pads": [1, 0, 0, 1]}


def test_deform_conv_matches_onnxs_reference_with_groups_strides_and_dilations():
    proto = _deform_conv_model(**DEFORM)
    rng = np.random.default_rng(1)
    inputs = {"x": rng.normal(size=(2, 4, 5, 6)), "w": rng.normal(size=(6, 2, 2, 3)),
              "offset": rng.normal(scale=1.5, size=(2, 24, 3, 3)),
              "b": rng.normal(size=6), "mask": rng.uniform(size=(2, 12, 3, 3))}
    inputs = {name: value.astype(np.float32) for name, value in inputs.items()}
    expected = ReferenceEvaluator(proto).run(None, inputs)[0]
    result = run_both(chainrule.import_onnx(proto), **inputs)["y"]
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5)


def test_deform_conv_without_offsets_is_the_convolution():
    deformed = chainrule.import_onnx(_deform_conv_model(**DEFORM))
    plain = chainrule.import_onnx(model_of(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", kernel_shape=[2, 3],
                          **{k: v for k, v in DEFORM.items() if k != "offset_group"})],
        [("x", TensorProto.FLOAT, [2, 4, 5, 6]), ("w", TensorProto.FLOAT, [6, 2, 2, 3]),
         ("b", TensorProto.FLOAT, [6])], [("y", TensorProto.FLOAT, [2, 6, 3, 3])]))
    rng = np.random.default_rng(2)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((2, 4, 5, 6), (6, 2, 2, 3), (6,)))
    result = deformed.run(x=x, w=w, b=b, offset=np.zeros((2, 24, 3, 3), np.float32),
                          mask=np.ones((2, 12, 3, 3), np.float32))["y"]
    np.testing.assert_allclose(result, plain.run(x=x, w=w, b=b)["y"], rtol=1e-5, atol=1e-5)
