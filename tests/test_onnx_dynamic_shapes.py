"""Shape arithmetic over symbolic dims, as exporters write it, imported without --dim: each
pattern folds into dim expressions (`B*4`, `S+1`, `S//2`) or runs as the ops that take them
(arange, fill, broadcast_to, reshape and slice with symbolic shapes), and the import computes
what onnxruntime computes on the original model at two sizes. Then every dynamic-shape fixture
(tests/fixtures/onnx/dynamic/, made by make_dynamic_fixtures.py) at both of its batches."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule.ir import print_graph
from chainrule.onnx_import import UnsupportedModel
from support.numeric import assert_close
from support.onnx_models import model_of
from support.paths import ROOT

DYNAMIC = ROOT / "tests" / "fixtures" / "onnx" / "dynamic"
FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
# Two sizes of the symbolic dims: B=3, S=5 and B=2, S=7.
SIZES = ({"B": 3, "S": 5}, {"B": 2, "S": 7})


def session(model) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def assert_matches_onnxruntime(proto, feeds_at, sizes=SIZES, tolerance=1e-6):
    """The model imported once, without --dim, against onnxruntime on the original at each of
    the sizes (`feeds_at(B=..., S=...)` makes the inputs), on both backends."""
    model = chainrule.import_onnx(proto)
    reference = session(proto)
    for size in sizes:
        feeds = feeds_at(**size)
        expected = reference.run(None, feeds)
        ir_feeds = {model.onnx_names[name]: array for name, array in feeds.items()}
        for backend in ("numpy", "onnxruntime"):
            results = model.run(backend=backend, **ir_feeds)
            for info, value in zip(reference.get_outputs(), expected, strict=True):
                ours = results[model.onnx_names[info.name]]
                assert ours.shape == value.shape, (backend, size, info.name)
                assert_close(ours, value, tolerance, what=f"{info.name} ({backend}, {size})")
    return model


def floats(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def ints(*values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), f"c{values}")


def shape_dim(source, axis, name):
    """Nodes computing `name` = Shape(source)[axis] as a 1-element i64 tensor, as exporters do."""
    return [helper.make_node("Shape", [source], [f"{name}_shape"]),
            helper.make_node("Gather", [f"{name}_shape", f"at_{axis}"], [f"{name}_0d"]),
            helper.make_node("Unsqueeze", [f"{name}_0d", "axis_0"], [name])]


def indices(*axes):
    return [numpy_helper.from_array(np.array(a, dtype=np.int64), f"at_{a}") for a in axes] + \
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "axis_0")]


X_BS16 = [("x", FLOAT, ["B", "S", 16])]


def x_bs16(B, S):
    return {"x": floats(B, S, 16)}


# ---- arithmetic on dims folds into reshape targets --------------------------------------------

def test_the_batch_times_the_heads_folds_into_a_reshape():
    # nn.MultiheadAttention: [B, S, 16] -> [B*4, S, 4], and back through Shape of the result.
    nodes = shape_dim("x", 0, "b") + shape_dim("x", 1, "s") + [
        helper.make_node("Mul", ["b", "four"], ["heads"]),
        helper.make_node("Concat", ["heads", "s", "four"], ["split_shape"], axis=0),
        helper.make_node("Reshape", ["x", "split_shape"], ["split"]),
        helper.make_node("Relu", ["split"], ["act"]),
        helper.make_node("Shape", ["act"], ["act_shape"]),
        helper.make_node("Gather", ["act_shape", "at_0"], ["bh"]),
        helper.make_node("Div", ["bh", "four_0d"], ["b_again"]),
        helper.make_node("Unsqueeze", ["b_again", "axis_0"], ["b_again_1"]),
        helper.make_node("Concat", ["b_again_1", "s", "sixteen"], ["merge_shape"], axis=0),
        helper.make_node("Reshape", ["act", "merge_shape"], ["y"])]
    constants = indices(0, 1) + [numpy_helper.from_array(np.array([4], np.int64), "four"),
                                 numpy_helper.from_array(np.array(4, np.int64), "four_0d"),
                                 numpy_helper.from_array(np.array([16], np.int64), "sixteen")]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", "S", 16])], constants)
    model = assert_matches_onnxruntime(proto, x_bs16)
    assert "f32[4*B, S, 4]" in print_graph(model.graph)


def test_sums_differences_and_quotients_of_dims_fold_into_slice_bounds():
    # x[:, S//2 - 1 : S - 1]: Sub, Div and Add of dims become the slice op's bounds.
    nodes = shape_dim("x", 1, "s") + [
        helper.make_node("Sub", ["s", "one"], ["end"]),
        helper.make_node("Div", ["s", "two"], ["half"]),
        helper.make_node("Add", ["half", "minus_one"], ["start"]),
        helper.make_node("Slice", ["x", "start", "end", "one"], ["y"])]
    constants = indices(1) + [numpy_helper.from_array(np.array([v], np.int64), name)
                              for name, v in (("one", 1), ("two", 2), ("minus_one", -1))]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", None, 16])], constants)
    assert_matches_onnxruntime(proto, x_bs16)


def test_size_mod_and_reduce_prod_of_a_symbolic_shape_fold():
    # Size(x) // 16 rows of 16, checked against ReduceProd of the shape; Mod of the product
    # by 16 is 0 whatever B and S are, so the Where keeps the first shape.
    nodes = [helper.make_node("Size", ["x"], ["count"]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("ReduceProd", ["shape"], ["product"], keepdims=0),
             helper.make_node("Div", ["count", "sixteen_0d"], ["rows_0d"]),
             helper.make_node("Mod", ["product", "sixteen_0d"], ["rest"]),
             helper.make_node("Equal", ["rest", "zero_0d"], ["divides"]),
             helper.make_node("Unsqueeze", ["rows_0d", "axis_0"], ["rows"]),
             helper.make_node("Concat", ["rows", "sixteen"], ["flat_shape"], axis=0),
             helper.make_node("Where", ["divides", "flat_shape", "never"], ["target"]),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    constants = indices() + [
        numpy_helper.from_array(np.array(16, np.int64), "sixteen_0d"),
        numpy_helper.from_array(np.array([16], np.int64), "sixteen"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_0d"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "never")]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, [None, 16])], constants)
    assert_matches_onnxruntime(proto, x_bs16)


def test_flatten_with_symbolic_dims_on_both_sides_keeps_them_as_products():
    proto = model_of([helper.make_node("Flatten", ["x"], ["y"], axis=2)],
                     [("x", FLOAT, ["B", 4, "S"])], [("y", FLOAT, [None, "S"])])
    model = assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 4, S)})
    assert "f32[4*B, S]" in print_graph(model.graph)


# ---- comparisons decide what is provable ------------------------------------------------------

def test_equal_and_where_replace_minus_ones_in_a_shape_as_transformers_writes_them():
    # transformers' Expand: Where(Equal(shape, -1), ones, shape), over [B, 1, 1, S+1] for a
    # mask with a class token in front; S+1 == -1 is false whatever S is.
    nodes = shape_dim("mask", 0, "b") + shape_dim("mask", 1, "s") + [
        helper.make_node("Add", ["s", "one"], ["s1"]),
        helper.make_node("Concat", ["b", "one", "one", "s1"], ["shape"], axis=0),
        helper.make_node("Equal", ["shape", "minus_ones"], ["unknown"]),
        helper.make_node("Where", ["unknown", "ones", "shape"], ["target"]),
        helper.make_node("Pad", ["mask", "pads"], ["with_token"]),
        helper.make_node("Unsqueeze", ["with_token", "axes_1_2"], ["mask4"]),
        helper.make_node("Expand", ["mask4", "target"], ["y"])]
    constants = indices(0, 1) + [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([0, 1, 0, 0], np.int64), "pads"),
        numpy_helper.from_array(np.array([-1] * 4, np.int64), "minus_ones"),
        numpy_helper.from_array(np.array([1] * 4, np.int64), "ones"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes_1_2")]
    proto = model_of(nodes, [("mask", FLOAT, ["B", "S"])], [("y", FLOAT, ["B", 1, 1, None])],
                     constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"mask": floats(B, S)})


def test_orderings_max_and_min_of_dims_fold_where_they_are_provable():
    # Max(S, 0) is S, Min(S+1, S) is S, S < S+1 and S+2 >= S: x[:, 0:S] whole.
    nodes = shape_dim("x", 1, "s") + [
        helper.make_node("Add", ["s", "one"], ["s1"]),
        helper.make_node("Add", ["s", "two"], ["s2"]),
        helper.make_node("Max", ["s", "zero"], ["at_least"]),
        helper.make_node("Min", ["s1", "at_least"], ["end"]),
        helper.make_node("Less", ["s", "s1"], ["less"]),
        helper.make_node("GreaterOrEqual", ["s2", "s"], ["greater"]),
        helper.make_node("And", ["less", "greater"], ["both"]),
        helper.make_node("Where", ["both", "end", "one"], ["chosen"]),
        helper.make_node("Slice", ["x", "zero", "chosen", "one"], ["y"])]
    constants = indices(1) + [numpy_helper.from_array(np.array([v], np.int64), name)
                              for name, v in (("zero", 0), ("one", 1), ("two", 2))]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", "S", 16])], constants)
    assert_matches_onnxruntime(proto, x_bs16)


def test_what_only_the_run_can_decide_is_reported_with_the_node_the_dims_and_a_hint():
    # B == 1 holds for some batches only.
    nodes = shape_dim("x", 0, "b") + [
        helper.make_node("Equal", ["b", "one"], ["single"], name="is_single"),
        helper.make_node("Where", ["single", "one", "b"], ["rows"]),
        helper.make_node("Concat", ["rows", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"])]
    constants = indices(0) + [numpy_helper.from_array(np.array([v], np.int64), name)
                              for name, v in (("one", 1), ("minus_one", -1))]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, None)], constants)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    [problem] = caught.value.problems
    assert (problem.op_type, problem.node) == ("Equal", "is_single")
    assert problem.reason == "Equal of the dims B, 1 cannot be decided when the model is imported"
    assert problem.hint == "fix the dim with --dim B=2"
    chainrule.import_onnx(proto, dims={"B": 2})  # and the hint does fix it


# ---- the ops whose shapes the dims become -----------------------------------------------------

def test_expand_of_a_class_token_to_the_batch_becomes_broadcast_to():
    # ViT: the class token [1, 1, 16] expanded to [B, 1, 1] and put in front of the patches.
    nodes = shape_dim("x", 0, "b") + [
        helper.make_node("Concat", ["b", "ones"], ["target"], axis=0),
        helper.make_node("Expand", ["token", "target"], ["tokens"]),
        helper.make_node("Concat", ["tokens", "x"], ["y"], axis=1)]
    constants = indices(0) + [numpy_helper.from_array(np.array([1, 1], np.int64), "ones"),
                              numpy_helper.from_array(floats(1, 1, 16), "token")]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", None, 16])], constants)
    assert_matches_onnxruntime(proto, x_bs16)


def test_tile_by_the_batch_repeats_a_constant_for_each_row():
    # A learned [2, 16] block tiled B times along its first axis and once along the other.
    nodes = shape_dim("x", 0, "b") + [
        helper.make_node("Concat", ["b", "one"], ["repeats"], axis=0),
        helper.make_node("Tile", ["block", "repeats"], ["tiled"]),
        helper.make_node("Reshape", ["tiled", "row_shape"], ["rows"]),
        helper.make_node("Add", ["x", "rows"], ["y"])]
    constants = indices(0) + [numpy_helper.from_array(np.array([1], np.int64), "one"),
                              numpy_helper.from_array(np.array([-1, 2, 16], np.int64),
                                                      "row_shape"),
                              numpy_helper.from_array(floats(2, 16), "block")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, 16])], [("y", FLOAT, ["B", 2, 16])],
                     constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, 16)})


def test_constant_of_shape_of_a_dim_expression_becomes_fill():
    # ones((B, S+1)) added to a padded x.
    nodes = shape_dim("x", 0, "b") + shape_dim("x", 1, "s") + [
        helper.make_node("Add", ["s", "one"], ["s1"]),
        helper.make_node("Concat", ["b", "s1"], ["shape"], axis=0),
        helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.5], np.float32))),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Add", ["padded", "ones"], ["y"])]
    constants = indices(0, 1) + [numpy_helper.from_array(np.array([1], np.int64), "one"),
                                 numpy_helper.from_array(np.array([0, 0, 0, 1], np.int64),
                                                         "pads")]
    proto = model_of(nodes, [("x", FLOAT, ["B", "S"])], [("y", FLOAT, ["B", None])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, S)})


def test_range_over_a_dim_becomes_arange_with_its_start_and_delta():
    # Position ids 0..S-1 as transformers write them, 1, 3, ..., 2S-1 (count (2S-1)/2
    # rounded up) and S..2S-1 (after S cached positions), added to x as floats.
    nodes = shape_dim("x", 1, "s") + [
        helper.make_node("Range", ["zero", "s_0d", "one"], ["positions"]),
        helper.make_node("Mul", ["s_0d", "two"], ["twice"]),
        helper.make_node("Range", ["one", "twice", "two"], ["odd"]),
        helper.make_node("Range", ["s_0d", "twice", "one"], ["after_cache"]),
        helper.make_node("Add", ["positions", "odd"], ["both"]),
        helper.make_node("Add", ["both", "after_cache"], ["all"]),
        helper.make_node("Cast", ["all"], ["all_f"], to=FLOAT),
        helper.make_node("Add", ["x", "all_f"], ["y"])]
    constants = indices(1) + [numpy_helper.from_array(np.array(v, np.int64), name)
                              for name, v in (("zero", 0), ("one", 1), ("two", 2))]
    proto = model_of(nodes, [("x", FLOAT, ["B", "S"])], [("y", FLOAT, ["B", "S"])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, S)})


def test_position_embeddings_sliced_to_the_sequence_and_gathered():
    # BERT: position_ids[:, 0:S] of a [1, 32] buffer, then embeddings through Gather.
    nodes = shape_dim("ids", 1, "s") + [
        helper.make_node("Slice", ["buffer", "zero", "s", "one"], ["positions"]),
        helper.make_node("Gather", ["table", "ids"], ["tokens"]),
        helper.make_node("Gather", ["table", "positions"], ["placed"]),
        helper.make_node("Add", ["tokens", "placed"], ["y"])]
    constants = indices(1) + [
        numpy_helper.from_array(np.arange(32, dtype=np.int64)[None], "buffer"),
        numpy_helper.from_array(floats(32, 8), "table"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one")]
    proto = model_of(nodes, [("ids", INT64, ["B", "S"])], [("y", FLOAT, ["B", "S", 8])],
                     constants)
    rng = np.random.default_rng(1)
    assert_matches_onnxruntime(proto, lambda B, S: {"ids": rng.integers(0, 32, (B, S))})


def causal_attention(mask_nodes):
    """Scaled dot-product self-attention of x [B, S, 16] with the causal mask `causal` [S, S]
    (bool) that `mask_nodes` build, the scale computed from the last dim as exporters do."""
    return shape_dim("x", 1, "s") + mask_nodes + [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["scores"]),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Slice", ["x_shape", "minus_one", "end"], ["width"]),
        helper.make_node("Cast", ["width"], ["width_f"], to=FLOAT),
        helper.make_node("Sqrt", ["width_f"], ["root"]),
        helper.make_node("Div", ["scores", "root"], ["scaled"]),
        helper.make_node("Where", ["causal", "scaled", "lowest"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "x"], ["y"])]


ATTENTION_CONSTANTS = indices(1) + [
    numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    numpy_helper.from_array(np.array([2 ** 62], np.int64), "end"),
    numpy_helper.from_array(np.array(-1e9, np.float32), "lowest"),
    numpy_helper.from_array(np.array(0, np.int64), "zero"),
    numpy_helper.from_array(np.array(1, np.int64), "one")]


def test_a_causal_mask_from_range_and_less_or_equal():
    # transformers: keep column j of row i where j <= i.
    mask = [helper.make_node("Range", ["zero", "s_0d", "one"], ["positions"]),
            helper.make_node("Unsqueeze", ["positions", "axis_0"], ["columns"]),
            helper.make_node("Unsqueeze", ["positions", "axis_1"], ["rows"]),
            helper.make_node("LessOrEqual", ["columns", "rows"], ["causal"])]
    constants = ATTENTION_CONSTANTS + [
        numpy_helper.from_array(np.array([1], np.int64), "axis_1")]
    proto = model_of(causal_attention(mask), X_BS16, [("y", FLOAT, ["B", "S", 16])],
                     constants)
    assert_matches_onnxruntime(proto, x_bs16, tolerance=1e-5)


def test_a_causal_mask_from_trilu_of_ones_over_the_sequence():
    mask = [helper.make_node("Concat", ["s", "s"], ["square"], axis=0),
            helper.make_node("ConstantOfShape", ["square"], ["ones"],
                             value=numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("Trilu", ["ones"], ["lower"], upper=0),
            helper.make_node("Cast", ["lower"], ["causal"], to=TensorProto.BOOL)]
    proto = model_of(causal_attention(mask), X_BS16, [("y", FLOAT, ["B", "S", 16])],
                     ATTENTION_CONSTANTS)
    assert_matches_onnxruntime(proto, x_bs16, tolerance=1e-5)


@pytest.mark.skipif(onnx.defs.onnx_opset_version() < 23,
                    reason="the Attention op is from opset 23, newer than the installed onnx")
def test_onnx_attention_over_a_symbolic_sequence_with_a_causal_mask():
    # Opset 23's Attention, as newer exporters write scaled dot-product attention: on 3-D
    # inputs [B, S, 8] split into 2 heads, and on 4-D ones with a mask of the model's own.
    nodes = [helper.make_node("Attention", ["x", "x", "x"], ["causal"], is_causal=1,
                              q_num_heads=2, kv_num_heads=2),
             helper.make_node("Attention", ["heads", "heads", "heads", "mask"], ["masked"],
                              is_causal=1)]
    proto = model_of(nodes, [("x", FLOAT, ["B", "S", 8]), ("heads", FLOAT, ["B", 2, "S", 4]),
                             ("mask", TensorProto.BOOL, ["S", "S"])],
                     [("causal", FLOAT, ["B", "S", 8]), ("masked", FLOAT, ["B", 2, "S", 4])],
                     opset=23)
    rng = np.random.default_rng(3)
    assert_matches_onnxruntime(proto, lambda B, S: {
        "x": floats(B, S, 8), "heads": floats(B, 2, S, 4), "mask": rng.random((S, S)) > 0.3},
        tolerance=1e-5)


def test_gather_nd_indexes_symbolic_leading_dims():
    # The dynamo exporter's mask lookup: mask[b, s] at indices [..., 2].
    nodes = [helper.make_node("GatherND", ["mask", "where"], ["picked"]),
             helper.make_node("Cast", ["picked"], ["y"], to=FLOAT)]
    proto = model_of(nodes, [("mask", TensorProto.BOOL, ["B", "S"]),
                             ("where", INT64, [4, 2])], [("y", FLOAT, [4])])
    rng = np.random.default_rng(2)
    assert_matches_onnxruntime(proto, lambda B, S: {
        "mask": rng.random((B, S)) > 0.5,
        "where": np.stack([rng.integers(0, B, 4), rng.integers(-S, S, 4)], axis=1)})


def test_resize_with_sizes_from_the_shape_resizes_only_the_spatial_axes():
    # UNet's Upsample: sizes = Concat(Shape(x)[:2], [8, 8]) over x [B, 2, 4, 4].
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "two"], ["kept"]),
             helper.make_node("Concat", ["kept", "spatial"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                              coordinate_transformation_mode="pytorch_half_pixel",
                              cubic_coeff_a=-0.75, nearest_mode="floor")]
    constants = [numpy_helper.from_array(np.array(v, np.int64), name)
                 for name, v in (("zero", [0]), ("two", [2]), ("spatial", [8, 8]))]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, 4, 4])], [("y", FLOAT, ["B", 2, 8, 8])],
                     constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, 4, 4)}, tolerance=1e-5)


def test_nearest_resize_by_a_whole_scale_repeats_symbolic_spatial_axes():
    # Upsample(scale_factor=2) of a fully convolutional net, as the TorchScript exporter writes
    # it (scales, asymmetric, floor), and sizes computed from the shape (half-pixel, round).
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["by_scales"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Mul", ["shape", "doubled"], ["sizes"]),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["by_sizes"], mode="nearest")]
    constants = [numpy_helper.from_array(np.array([1, 1, 2, 3], np.float32), "scales"),
                 numpy_helper.from_array(np.array([1, 1, 2, 2], np.int64), "doubled")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("by_scales", FLOAT, ["B", 2, None, None]),
                      ("by_sizes", FLOAT, ["B", 2, None, None])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, S, S + 1)})


def test_the_last_chunk_of_an_odd_symbolic_axis_ends_at_the_axis():
    # torch.chunk(x, 2, dim=1), as the TorchScript exporter writes it: slices of c = (S+1)//2
    # ending at c and 2*c, which runs one past the axis for odd S, where Slice clamps it.
    nodes = shape_dim("x", 1, "s") + [
        helper.make_node("Add", ["s", "one"], ["s_plus_one"]),
        helper.make_node("Div", ["s_plus_one", "two"], ["c"]),
        helper.make_node("Mul", ["c", "two"], ["two_c"]),
        helper.make_node("Slice", ["x", "zero", "c", "one"], ["first"]),
        helper.make_node("Slice", ["x", "c", "two_c", "one"], ["second"]),
        helper.make_node("Concat", ["second", "first"], ["swapped"], axis=1),
        helper.make_node("Add", ["swapped", "x"], ["y"])]
    constants = indices(1) + [numpy_helper.from_array(np.array([v], np.int64), name)
                              for name, v in (("zero", 0), ("one", 1), ("two", 2))]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", "S", 16])], constants)
    model = assert_matches_onnxruntime(proto, x_bs16)
    assert "f32[B, S, 16]" in print_graph(model.graph)


def test_position_ids_counted_in_int32_along_the_sequence():
    # RoBERTa's position ids: cumsum(ids != pad) in int32 (torch's `.int()`), then `.long()`.
    nodes = [helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["is_token"]),
             helper.make_node("Cast", ["is_token"], ["counted"], to=TensorProto.INT32),
             helper.make_node("CumSum", ["counted", "one"], ["running"]),
             helper.make_node("Mul", ["running", "counted"], ["masked"]),
             helper.make_node("Cast", ["masked"], ["wide"], to=INT64),
             helper.make_node("Add", ["wide", "pad"], ["positions"])]
    constants = [numpy_helper.from_array(np.array(1, np.int64), "pad"),
                 numpy_helper.from_array(np.array(1, np.int64), "one")]
    proto = model_of(nodes, [("ids", INT64, ["B", "S"])], [("positions", INT64, ["B", "S"])],
                     constants)
    rng = np.random.default_rng(3)
    assert_matches_onnxruntime(proto, lambda B, S: {"ids": rng.integers(0, 4, (B, S))})


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumulative_sums_along_a_symbolic_axis(reverse, exclusive):
    nodes = [helper.make_node("CumSum", ["x", "one"], ["y"], reverse=reverse,
                              exclusive=exclusive)]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", "S", 16])],
                     [numpy_helper.from_array(np.array(1, np.int64), "one")])
    assert_matches_onnxruntime(proto, x_bs16, tolerance=1e-5)


def test_max_pooling_in_ceil_mode_over_symbolic_spatial_dims():
    # SqueezeNet's and GoogLeNet's MaxPool2d(3, 2, ceil_mode=True), over odd and even sizes.
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                              ceil_mode=1)]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 2, None, None])])
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, S + 4, S + 3)})


@pytest.mark.parametrize("transform", ["pytorch_half_pixel", "half_pixel", "align_corners",
                                       "asymmetric"])
def test_linear_resize_of_symbolic_spatial_axes_computes_its_weights_at_run_time(transform):
    # Upsample(scale_factor=2, mode="bilinear") of a fully convolutional net over H and W.
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                              coordinate_transformation_mode=transform, cubic_coeff_a=-0.75)]
    constants = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 2, None, None])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, S, S + 1)},
                               tolerance=1e-5)


@pytest.mark.parametrize("mode, nearest_mode", [
    ("linear", "round_prefer_floor"), ("nearest", "round_prefer_floor"),
    ("nearest", "round_prefer_ceil"), ("nearest", "floor"), ("nearest", "ceil")])
def test_resize_to_another_tensors_symbolic_size(mode, nearest_mode):
    # interpolate(x, size=skip.shape[-2:]): sizes from Shape(skip), no whole ratio to x's.
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Slice", ["x_shape", "zero", "two"], ["kept"]),
             helper.make_node("Shape", ["skip"], ["skip_shape"]),
             helper.make_node("Slice", ["skip_shape", "two", "four"], ["spatial"]),
             helper.make_node("Concat", ["kept", "spatial"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["resized"], mode=mode,
                              nearest_mode=nearest_mode),
             helper.make_node("Add", ["resized", "skip"], ["y"])]
    constants = [numpy_helper.from_array(np.array([v], np.int64), name)
                 for name, v in (("zero", 0), ("two", 2), ("four", 4))]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"]),
                             ("skip", FLOAT, ["B", 2, "H2", "W2"])],
                     [("y", FLOAT, ["B", 2, "H2", "W2"])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, S, S - 1),
                                                    "skip": floats(B, 2, 2 * S + 1, S + 3)},
                               tolerance=1e-5)


def test_a_cubic_resize_of_a_symbolic_axis_says_what_would_import():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic",
                              exclude_outside=1)]
    constants = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 2, None, None])], constants)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    (problem,) = caught.value.problems
    assert "Resize of axis 2 from H to 2*H, axis 3 from W to 2*W" in problem.note
    assert "but in nearest or linear or cubic mode with no antialias or exclude_outside" in \
        problem.note
    assert "--dim H=2 --dim W=2" in problem.note


# ---- dims the inputs declare ------------------------------------------------------------------

def test_a_dim_param_expression_is_parsed_and_an_unnamed_dim_gets_a_symbol():
    # The dynamo exporter writes `2*s0`; a dim with no name at all is still a dim of its own.
    nodes = [helper.make_node("Concat", ["x", "x"], ["twice"], axis=0),
             helper.make_node("Add", ["twice", "doubled"], ["y"]),
             helper.make_node("Shape", ["loose"], ["loose_shape"]),
             helper.make_node("Reshape", ["loose", "loose_shape"], ["z"])]
    proto = model_of(nodes, [("x", FLOAT, ["s0", 4]), ("doubled", FLOAT, ["2*s0", 4]),
                             ("loose", FLOAT, [None, 3])],
                     [("y", FLOAT, ["2*s0", 4]), ("z", FLOAT, [None, 3])])
    model = assert_matches_onnxruntime(proto, lambda B, S: {
        "x": floats(B, 4), "doubled": floats(2 * B, 4), "loose": floats(S, 3)})
    declared = {value.name: value.type.shape for value in model.graph.inputs}
    assert str(declared[model.onnx_names["doubled"]][0]) == "2*s0"
    assert declared[model.onnx_names["loose"]][0] == "loose_0"


@pytest.mark.parametrize("dim_param, symbol", [("batch-size", "batch_size"),
                                               ("batch size", "batch_size"),
                                               ("sequence.length", "sequence_length")])
def test_a_dim_param_that_is_a_name_stays_one_symbol(dim_param, symbol):
    # A name with no arithmetic in it (a "-" between letters, not " - ") is one symbol.
    proto = model_of([helper.make_node("Relu", ["x"], ["y"])], [("x", FLOAT, [dim_param, 4])],
                     [("y", FLOAT, [dim_param, 4])])
    model = chainrule.import_onnx(proto)
    assert model.graph.inputs[0].type.shape == (symbol, 4)
    fixed = chainrule.import_onnx(proto, dims={symbol: 3})
    assert fixed.graph.inputs[0].type.shape == (3, 4)


def test_an_unnamed_dim_is_tied_to_the_dim_an_op_says_it_equals():
    # Broadcasting ties the unnamed batch of `loose` to B, and that of `bias` to 4: each then
    # takes the dim it is tied to everywhere, the input's own type and a shape folded before.
    nodes = [helper.make_node("Shape", ["loose"], ["loose_shape"]),
             helper.make_node("Add", ["x", "loose"], ["summed"]),
             helper.make_node("Reshape", ["summed", "loose_shape"], ["same"]),
             helper.make_node("Add", ["same", "bias"], ["y"])]
    proto = model_of(nodes, [("x", FLOAT, ["B", 4]), ("loose", FLOAT, [None, 4]),
                             ("bias", FLOAT, [None])], [("y", FLOAT, ["B", 4])])
    model = assert_matches_onnxruntime(proto, lambda B, S: {
        "x": floats(B, 4), "loose": floats(B, 4), "bias": floats(4)})
    declared = {value.name: value.type.shape for value in model.graph.inputs}
    assert declared[model.onnx_names["loose"]] == ("B", 4)
    assert declared[model.onnx_names["bias"]] == (4,)
    assert "shape=[B, 4]" in print_graph(model.graph)
    with pytest.raises(chainrule.ChainruleError, match=r"axis 0 has size 3, not 4"):
        model.run(**{model.onnx_names["x"]: floats(2, 4), model.onnx_names["loose"]: floats(2, 4),
                     model.onnx_names["bias"]: floats(3)})


def test_named_dims_are_not_tied_by_an_op():
    # Names are the exporter's word that dims may differ: [B, 4] + [N, 4] stays an error.
    proto = model_of([helper.make_node("Add", ["x", "other"], ["y"])],
                     [("x", FLOAT, ["B", 4]), ("other", FLOAT, ["N", 4])],
                     [("y", FLOAT, ["B", 4])])
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    [problem] = caught.value.problems
    assert "do not broadcast" in problem.reason


# ---- the fixtures -----------------------------------------------------------------------------

FIXTURES = sorted(path.stem for path in DYNAMIC.glob("*.npz"))


@pytest.mark.parametrize("name", FIXTURES)
def test_every_dynamic_fixture_imports_without_dims_and_matches_onnxruntime_at_both_batches(
        name):
    path = str(DYNAMIC / f"{name}.onnx")
    with np.load(DYNAMIC / f"{name}.npz", allow_pickle=False) as data:
        batches = [{key.removeprefix(prefix): data[key] for key in data.files
                    if key.startswith(prefix)} for prefix in ("input/", "alt/input/")]
    model = chainrule.import_onnx(path)
    reference = session(path)
    for feeds in batches:
        expected = dict(zip((o.name for o in reference.get_outputs()),
                            reference.run(None, feeds), strict=True))
        ir_feeds = {model.onnx_names[key]: value for key, value in feeds.items()}
        for backend in ("numpy", "onnxruntime"):
            results = model.run(backend=backend, **ir_feeds)
            for output, value in expected.items():
                assert_close(results[model.onnx_names[output]], value, 1e-4,
                             what=f"{name} {output} ({backend})")


# ---- vision: UNets over symbolic H and W --------------------------------------------------------

def halved_twice_and_upsampled():
    """x [B, 2, H, W] pooled to the skip [B, 2, H//2, W//2], pooled again and up-sampled by 2
    to [B, 2, 2*(H//4), 2*(W//4)]: equal to the skip's size only where H and W allow it."""
    nodes = [helper.make_node("MaxPool", ["x"], ["skip"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["skip"], ["low"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["low", "", "scales"], ["up"], mode="nearest")]
    constants = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    return nodes, constants


def test_a_skip_concat_of_dims_that_may_agree_names_the_result_by_the_simpler():
    # A UNet's torch.cat([up(h), skip], 1): 2*(H//4) and H//2 agree when 4 divides H, and the
    # run checks that they do.
    nodes, constants = halved_twice_and_upsampled()
    nodes.append(helper.make_node("Concat", ["up", "skip"], ["y"], axis=1))
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 4, None, None])], constants)
    model = assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, 4 * S, 4 * S + 4)})
    assert str(model.graph.outputs[0].type) == "f32[B, 4, H//2, W//2]"


def test_pads_computed_from_symbolic_dims_pad_an_up_sampled_map_to_its_skip():
    # The UNet of the PyTorch tutorials: diff = skip.size(2) - up.size(2) (H//2 - 2*(H//4), a
    # whole number at least -1/2, so at least 0), then F.pad(up, [diff // 2, diff - diff // 2])
    # on both spatial axes, then the skip concat.
    nodes, constants = halved_twice_and_upsampled()
    for axis, name in ((2, "h"), (3, "w")):
        nodes += [helper.make_node("Shape", ["skip"], [f"skip_{name}"], start=axis, end=axis + 1),
                  helper.make_node("Shape", ["up"], [f"up_{name}"], start=axis, end=axis + 1),
                  helper.make_node("Sub", [f"skip_{name}", f"up_{name}"], [f"diff_{name}"]),
                  helper.make_node("Div", [f"diff_{name}", "two"], [f"begin_{name}"]),
                  helper.make_node("Sub", [f"diff_{name}", f"begin_{name}"], [f"end_{name}"])]
    nodes += [helper.make_node("Concat", ["zeros", "begin_h", "begin_w", "zeros", "end_h",
                                          "end_w"], ["pads"], axis=0),
              helper.make_node("Pad", ["up", "pads", "one"], ["padded"]),
              helper.make_node("Concat", ["padded", "skip"], ["y"], axis=1)]
    constants += [numpy_helper.from_array(np.array([0, 0], np.int64), "zeros"),
                  numpy_helper.from_array(np.array([2], np.int64), "two"),
                  numpy_helper.from_array(np.array(1.5, np.float32), "one")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 4, None, None])], constants)
    # H//2 odd (a row of padding at the end), W//2 even (none), then the other way round.
    model = assert_matches_onnxruntime(
        proto, lambda B, S: {"x": floats(B, 2, 4 * S + 2, 4 * S)} if S == 5 else
        {"x": floats(B, 2, 4 * S, 4 * S + 3)})
    assert str(model.graph.outputs[0].type) == "f32[B, 4, H//2, W//2]"


def test_pads_from_symbolic_dims_that_may_be_negative_say_so():
    # Padding H up to 2, which only an H of at most 2 allows.
    nodes = [helper.make_node("Shape", ["x"], ["h"], start=1, end=2),
             helper.make_node("Sub", ["two", "h"], ["short"]),
             helper.make_node("Concat", ["zeros", "zeros", "zeros", "zeros", "short", "zeros"],
                              ["pads"], axis=0),
             helper.make_node("Pad", ["x", "pads"], ["y"], name="pad_to_two")]
    constants = [numpy_helper.from_array(np.array([2], np.int64), "two"),
                 numpy_helper.from_array(np.array([0], np.int64), "zeros")]
    proto = model_of(nodes, [("x", FLOAT, ["B", "H", "W"])], [("y", FLOAT, None)], constants)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(proto)
    (problem,) = caught.value.problems
    assert problem.node == "pad_to_two"
    assert "may be negative" in problem.note and "--dim H=" in problem.note


@pytest.mark.parametrize("split, keepdims", [(2, 1), (None, 0), ((1, 3), 1)])
def test_a_split_to_a_sequence_and_its_items_become_slices(split, keepdims):
    # ShuffleNet's x.chunk(2, dim=1) as the dynamo exporter writes it unoptimised.
    inputs = ["x"] if split is None else ["x", "split"]
    nodes = [helper.make_node("SplitToSequence", inputs, ["parts"], axis=1, keepdims=keepdims),
             helper.make_node("SequenceAt", ["parts", "first"], ["a"]),
             helper.make_node("SequenceAt", ["parts", "last"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["y"])]
    constants = [numpy_helper.from_array(np.array(0, np.int64), "first"),
                 numpy_helper.from_array(np.array(-1, np.int64), "last")]
    if split is not None:
        constants.append(numpy_helper.from_array(np.array(split, np.int64), "split"))
    proto = model_of(nodes, [("x", FLOAT, ["B", 4, "S"])], [("y", FLOAT, None)], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 4, S)})


@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_an_average_pool_not_counting_padding_over_a_symbolic_length_exports(ceil_mode):
    # AvgPool1d(3, 2, padding=1, count_include_pad=False) of an audio net over a dynamic
    # length: onnxruntime's AveragePool divides by what each window covers.
    nodes = [helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3], strides=[2],
                              pads=[1, 1], count_include_pad=0, ceil_mode=ceil_mode)]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "S"])], [("y", FLOAT, None)])
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, 2 * S)})


def test_an_add_of_dims_that_may_agree_reshapes_to_the_simpler_and_the_run_checks_it():
    # A feature pyramid's lateral(skip) + interpolate(low, scale_factor=2).
    nodes, constants = halved_twice_and_upsampled()
    nodes.append(helper.make_node("Add", ["up", "skip"], ["y"]))
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 2, None, None])], constants)
    model = assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, 4 * S, 4 * S + 4)})
    assert str(model.graph.outputs[0].type) == "f32[B, 2, H//2, W//2]"
    with pytest.raises(chainrule.ChainruleError, match="reshape"):
        model.run(x=floats(1, 2, 6, 8))  # H//2 is 3, 2*(H//4) is 2


@pytest.mark.parametrize("transform", ["pytorch_half_pixel", "half_pixel", "align_corners",
                                       "asymmetric"])
def test_a_cubic_resize_to_a_symbolic_size_computes_its_taps_at_run_time(transform):
    # ViT's interpolate_pos_encoding: the 3x3 grid of position embeddings, bicubic to the
    # image's patch grid (H//8, W//8), sizes computed from the image's shape.
    nodes = [helper.make_node("Shape", ["image"], ["hw"], start=2, end=4),
             helper.make_node("Div", ["hw", "eight"], ["grid"]),
             helper.make_node("Concat", ["kept", "grid"], ["sizes"], axis=0),
             helper.make_node("Resize", ["table", "", "", "sizes"], ["y"], mode="cubic",
                              coordinate_transformation_mode=transform, cubic_coeff_a=-0.75)]
    constants = [numpy_helper.from_array(np.array([1, 4], np.int64), "kept"),
                 numpy_helper.from_array(np.array([8], np.int64), "eight")]
    proto = model_of(nodes, [("table", FLOAT, [1, 4, 3, 3]), ("image", FLOAT, ["B", 3, "H", "W"])],
                     [("y", FLOAT, [1, 4, None, None])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"table": floats(1, 4, 3, 3),
                                                    "image": floats(B, 3, 8 * S - 16, 8 * S + 1)},
                               tolerance=1e-5)


def test_a_reshape_back_over_a_computed_length_solves_its_minus_one_exactly():
    # A ViT over a dynamic image: tokens [B, S+1, 4] (S patches and the class token)
    # flattened to [B*(S+1), 4] and back with -1: the -1 is B, not a quotient of sums.
    nodes = [helper.make_node("Concat", ["cls", "x"], ["tokens"], axis=1),
             helper.make_node("Shape", ["tokens"], ["length"], start=1, end=2),
             helper.make_node("Reshape", ["tokens", "flat"], ["rows"]),
             helper.make_node("Concat", ["minus_one", "length", "four"], ["back"], axis=0),
             helper.make_node("Reshape", ["rows", "back"], ["y"])]
    constants = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
                 (("flat", [-1, 4]), ("minus_one", [-1]), ("four", [4]))]
    proto = model_of(nodes, [("cls", FLOAT, ["B", 1, 4]), ("x", FLOAT, ["B", "S", 4])],
                     [("y", FLOAT, None)], constants)
    model = assert_matches_onnxruntime(proto, lambda B, S: {"cls": floats(B, 1, 4),
                                                            "x": floats(B, S, 4)})
    assert str(model.graph.outputs[0].type) == "f32[B, S+1, 4]"


def test_a_float_power_of_constants_folds_into_a_shape():
    # transformers' ViT interpolate_pos_encoding: the grid side is int(num_positions ** 0.5).
    # Constant nodes, as the TorchScript exporter writes them (float initializers are params).
    nodes = [helper.make_node("Constant", [], ["positions"],
                              value=numpy_helper.from_array(np.array(9.0, np.float32))),
             helper.make_node("Constant", [], ["half"],
                              value=numpy_helper.from_array(np.array(0.5, np.float32))),
             helper.make_node("Pow", ["positions", "half"], ["root"]),
             helper.make_node("Cast", ["root"], ["side_0d"], to=INT64),
             helper.make_node("Unsqueeze", ["side_0d", "axis_0"], ["side"]),
             helper.make_node("Concat", ["minus_one", "side", "side"], ["grid"], axis=0),
             helper.make_node("Reshape", ["x", "grid"], ["y"])]
    constants = [numpy_helper.from_array(np.array([0], np.int64), "axis_0"),
                 numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 9])], [("y", FLOAT, None)], constants)
    model = assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 9)})
    assert str(model.graph.outputs[0].type) == "f32[B, 3, 3]"


@pytest.mark.parametrize("scale", [0.5, 1.5, 0.25])
def test_a_resize_by_a_fractional_scale_of_a_symbolic_axis_has_a_dim_for_its_size(scale):
    # interpolate(x, scale_factor=0.5, mode="bilinear") over H and W, as dynamo writes it.
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")]
    constants = [numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")]
    proto = model_of(nodes, [("x", FLOAT, ["B", 2, "H", "W"])],
                     [("y", FLOAT, ["B", 2, None, None])], constants)
    assert_matches_onnxruntime(proto, lambda B, S: {"x": floats(B, 2, S, 2 * S + 1)},
                               tolerance=1e-5)


# ---- attention and language models ------------------------------------------------------------

def test_an_int32_range_over_the_sequence_finds_the_last_token_as_transformers_does():
    # GPT2ForSequenceClassification's last non-pad token: argmax of
    # arange(S, dtype=int32) * (input_ids != pad).int(), all in int32.
    int32 = [numpy_helper.from_array(np.array(v, np.int32), name)
             for name, v in (("zero", 0), ("step", 1))]
    nodes = [helper.make_node("Shape", ["ids"], ["shape"]),
             helper.make_node("Gather", ["shape", "at_1"], ["length"]),
             helper.make_node("Cast", ["length"], ["length_i32"], to=TensorProto.INT32),
             helper.make_node("Range", ["zero", "length_i32", "step"], ["positions"],
                              name="positions"),
             helper.make_node("Equal", ["ids", "pad"], ["is_pad"]),
             helper.make_node("Not", ["is_pad"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["kept_i32"], to=TensorProto.INT32),
             helper.make_node("Mul", ["positions", "kept_i32"], ["scored"]),
             helper.make_node("ArgMax", ["scored"], ["last"], axis=-1, keepdims=0)]
    constants = indices(1) + int32 + [numpy_helper.from_array(np.array(0, np.int64), "pad")]
    proto = model_of(nodes, [("ids", INT64, ["B", "S"])], [("last", INT64, ["B"])], constants)

    def ids_at(B, S):
        ids = np.random.default_rng(S).integers(1, 50, (B, S))
        ids[np.arange(S)[None, :] >= S - np.arange(B)[:, None]] = 0  # row i has i pads
        return {"ids": ids}
    assert_matches_onnxruntime(proto, ids_at)


def test_cross_entropy_over_the_sequence_axis_trains_as_a_question_answering_head():
    # BertForQuestionAnswering scores each of the S tokens as the answer's start: the classes
    # of the loss are a symbolic axis.
    weight = numpy_helper.from_array(floats(4), "w")
    proto = model_of([helper.make_node("MatMul", ["x", "w"], ["start"])],
                     [("x", FLOAT, ["B", "S", 4])], [("start", FLOAT, ["B", "S"])], [weight])
    model = chainrule.import_onnx(proto, loss="cross_entropy", targets="label")
    rng = np.random.default_rng(1)
    for size in SIZES:
        x = rng.standard_normal((size["B"], size["S"], 4)).astype(np.float32)
        label = rng.integers(0, size["S"], size["B"])
        logits = x @ numpy_helper.to_array(weight)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
        picked = probabilities[np.arange(size["B"]), label]
        hot = np.eye(size["S"])[label]
        expected_grad = np.einsum("bs,bsk->k", (probabilities - hot) / size["B"], x)
        feeds = {model.onnx_names["x"]: x, "label": label}
        for backend in ("numpy", "onnxruntime"):
            grads = model.grad(backend=backend, **feeds)
            assert_close(grads["loss"], -np.log(picked).mean(), 1e-5, what="loss")
            assert_close(grads[model.onnx_names["w"]], expected_grad, 1e-5, what="dw")


def test_a_query_that_may_attend_to_nothing_has_a_finite_gradient():
    # torch's exported scaled dot-product attention replaces the NaN of a row whose scores are
    # all -inf (a left-padded row under a causal mask) with Where(IsNaN(p), 0, p); the
    # gradient of that softmax must be 0 there, not NaN * 0.
    DOUBLE = TensorProto.DOUBLE
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((4, 4))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"]),
             helper.make_node("Transpose", ["x"], ["k"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "k"], ["scores"]),
             helper.make_node("Where", ["allowed", "zero", "minus_inf"], ["bias"]),
             helper.make_node("Add", ["scores", "bias"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("IsNaN", ["p"], ["nan"]),
             helper.make_node("Where", ["nan", "zero", "p"], ["weights"]),
             helper.make_node("MatMul", ["weights", "x"], ["y"])]
    constants = [numpy_helper.from_array(weight, "w"),
                 numpy_helper.from_array(np.array(0.0), "zero"),
                 numpy_helper.from_array(np.array(-np.inf), "minus_inf")]
    proto = model_of(nodes, [("x", DOUBLE, ["B", "S", 4]), ("allowed", TensorProto.BOOL,
                                                             ["B", "S", "S"])],
                     [("y", DOUBLE, ["B", "S", 4])], constants)
    x = rng.standard_normal((2, 3, 4))
    causal = np.tril(np.ones((3, 3), bool))
    allowed = np.stack([causal, causal & (np.arange(3) >= 1)])  # row 0 of batch 1: nothing
    target = rng.standard_normal((2, 3, 4))
    model = chainrule.import_onnx(proto, loss="mse", targets="target")
    feeds = {model.onnx_names["x"]: x, model.onnx_names["allowed"]: allowed, "target": target}
    expected, = session(proto).run(None, {"x": x, "allowed": allowed})
    for backend in ("numpy", "onnxruntime"):
        ours = model.run(backend=backend, **feeds)[model.onnx_names["y"]]
        assert_close(ours, expected, 1e-12, what=f"y ({backend})")
    w = model.onnx_names["w"]
    gradient = model.grad(**feeds)[w]

    def loss_at(value):
        model.set_params({w: value})
        return float(model.run(**feeds)["loss"])
    differences = np.zeros_like(weight)
    for index in np.ndindex(weight.shape):
        step = np.zeros_like(weight)
        step[index] = 1e-6
        differences[index] = (loss_at(weight + step) - loss_at(weight - step)) / 2e-6
    assert_close(gradient, differences, 1e-6, what="dw")



def test_a_dim_param_over_the_names_of_torch_export_dims_is_an_expression():
    # dynamic_shapes={"attn_mask": {0: 4 * B}} with Dim("B"): the dynamo exporter writes the
    # dim_param `4*B` (and `S + 1`, `2*S - 1` as sympy prints them), over the user's names.
    nodes = [helper.make_node("Concat", ["x", "x", "x", "x"], ["heads"], axis=0),
             helper.make_node("Add", ["heads", "mask"], ["masked"]),
             helper.make_node("Slice", ["longer", "start", "end", "axis"], ["trimmed"]),
             helper.make_node("Add", ["masked", "trimmed"], ["y"])]
    constants = [numpy_helper.from_array(np.array([v], np.int64), name)
                 for name, v in (("start", 1), ("end", 2 ** 62), ("axis", 1))]
    proto = model_of(nodes, [("x", FLOAT, ["B", "S"]), ("mask", FLOAT, ["4*B", "S"]),
                             ("longer", FLOAT, [1, "S + 1"])],
                     [("y", FLOAT, ["4*B", "S"])], constants)
    model = assert_matches_onnxruntime(proto, lambda B, S: {
        "x": floats(B, S), "mask": floats(4 * B, S), "longer": floats(1, S + 1)})
    declared = [tuple(map(str, v.type.shape)) for v in model.graph.inputs]
    assert declared == [("B", "S"), ("4*B", "S"), ("1", "S+1")]


def test_an_output_read_through_an_identity_keeps_the_outputs_name():
    # The unoptimised dynamo exporter ends BertForQuestionAnswering with
    # Identity(squeeze) -> start: the results are keyed by the graph's output names.
    nodes = [helper.make_node("Relu", ["x"], ["hidden"]),
             helper.make_node("Identity", ["hidden"], ["y"]),
             helper.make_node("Neg", ["hidden"], ["z"])]
    proto = model_of(nodes, X_BS16, [("y", FLOAT, ["B", "S", 16]), ("z", FLOAT, ["B", "S", 16])])
    model = assert_matches_onnxruntime(proto, x_bs16)
    assert [v.name for v in model.graph.outputs] == ["y", "z"]
    assert sorted(model.run(x=floats(2, 3, 16))) == ["y", "z"]
