"""The `ai.onnx.ml` ops that scikit-learn's converters (skl2onnx) write for linear models,
MLPs and their preprocessing, each composed of chainrule's ops.

A classifier's coefficients and intercepts become trainable params named after its node, so
an imported LogisticRegression trains as a PyTorch linear layer would. Class labels must be
integers (chainrule holds no strings). ZipMap's output, a sequence of maps, is a kind of value
chainrule cannot hold: it stands for its input, the [N, C] tensor of probabilities, columns
in the order of the class labels, and the import says so in a note.
"""
from __future__ import annotations

import numpy as np

from ..ir.errors import printable
from ..ir.types import is_float
from .context import Unsupported, converter

ML_DOMAIN = "ai.onnx.ml"
# The ops of that domain this module converts; a node of the domain with another op type is
# refused by its domain.
ML_OPS = frozenset({"LinearClassifier", "LinearRegressor", "Normalizer", "Scaler",
                    "ArrayFeatureExtractor", "ZipMap", "Binarizer"})
# What each post_transform does to a linear model's scores; SOFTMAX_ZERO and PROBIT are not
# composed (skl2onnx writes neither for the models above).
POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC")


def _float_input(ctx, index: int = 0):
    x = ctx.input(index)
    if not is_float(x.type.dtype):
        x = ctx.emit("cast", x, dtype="f32")  # the ML ops compute integer features as floats
    return x


def _hint(ctx, attribute: str) -> str:
    """The name of a value made from one of the node's attributes: `Scaler.offset`."""
    return f"{ctx.node.name or ctx.node.op_type}.{attribute}"


def _linear(ctx, x):
    """x @ coefficientsᵀ + intercepts, with coefficients [targets, features] as params."""
    features = x.type.shape[-1]
    coefficients = np.asarray(ctx.attr("coefficients", []), np.float32)
    if not isinstance(features, int) or not coefficients.size or \
            coefficients.size % features:
        raise Unsupported(f"{coefficients.size} coefficients for {features} features")
    targets = coefficients.size // features
    dtype = np.float64 if x.type.dtype == "f64" else np.float32
    weight = ctx.importer.add_param(_hint(ctx, "coefficients"),
                                    coefficients.reshape(targets, features).T.astype(dtype),
                                    trainable=True)
    scores = ctx.emit("matmul", x, weight)
    intercepts = np.asarray(ctx.attr("intercepts", []), dtype)
    if intercepts.size:
        if intercepts.size not in (1, targets):
            raise Unsupported(f"{intercepts.size} intercepts for {targets} targets")
        bias = ctx.importer.add_param(_hint(ctx, "intercepts"),
                                      np.broadcast_to(intercepts, (targets,)).copy(),
                                      trainable=True)
        scores = ctx.emit("add", scores, bias)
    return scores


@converter("LinearRegressor")
def _linear_regressor(ctx):
    ctx.require_attr("post_transform", ("NONE",), "NONE")
    x = ctx.require_rank(_float_input(ctx), 2, 2)
    scores = _linear(ctx, x)
    targets = ctx.positive_attr("targets", 1)
    if scores.type.shape[-1] != targets:
        raise Unsupported(f"coefficients for {scores.type.shape[-1]} targets, where the node "
                          f"says targets={targets}")
    return [scores]


@converter("LinearClassifier")
def _linear_classifier(ctx):
    """The label (the class of the highest score) and the scores after post_transform; one
    score column with two labels is binary: the scores are [-s, s]."""
    if ctx.attr("classlabels_strings") is not None:
        raise Unsupported("string class labels (chainrule holds numbers only)")
    labels = np.asarray(ctx.attr("classlabels_ints", []), np.int64)
    ctx.attr("multi_class", 0)  # onnxruntime reads the scores the same either way
    transform = ctx.require_attr("post_transform", POST_TRANSFORMS, "NONE")
    scores = _linear(ctx, ctx.require_rank(_float_input(ctx), 2, 2))
    columns = scores.type.shape[-1]
    if columns == 1 and len(labels) == 2:
        scores = ctx.emit("concat", ctx.emit("neg", scores), scores, axis=1)
    elif columns != len(labels) or columns < 2:
        raise Unsupported(f"{len(labels)} class labels for {columns} score columns")
    if transform == "SOFTMAX":
        scores = ctx.emit("softmax", scores, axis=1)
    elif transform == "LOGISTIC":
        scores = ctx.emit("sigmoid", scores)
    best = ctx.emit("argmax", scores, axis=1, keepdims=False)
    if not np.array_equal(labels, np.arange(len(labels))):
        best = ctx.emit("take", ctx.known_tensor(labels, _hint(ctx, "classlabels_ints")), best,
                        axis=0)
    return [best, scores]


@converter("Binarizer")
def _binarizer(ctx):
    """1 where x is above the threshold, else 0, in x's dtype."""
    x = ctx.input(0)
    above = ctx.emit("greater", x, ctx.constant(ctx.float_attr("threshold", 0.0), x))
    return [ctx.emit("cast", above, dtype=x.type.dtype)]


@converter("Normalizer")
def _normalizer(ctx):
    """Each row over its max (signed, as the spec and onnxruntime take it), L1 or L2 norm; a
    row whose norm is 0 stays as it is."""
    norm = ctx.require_attr("norm", ("MAX", "L1", "L2"), "MAX")
    x = ctx.require_rank(_float_input(ctx), 2, 2)
    if norm == "MAX":
        size = ctx.emit("max", x, axes=(1,), keepdims=True)
    elif norm == "L1":
        size = ctx.emit("sum", ctx.emit("abs", x), axes=(1,), keepdims=True)
    else:
        size = ctx.emit("sqrt", ctx.emit("sum", ctx.emit("mul", x, x), axes=(1,),
                                         keepdims=True))
    # Dividing a zero row by 1 leaves it, with a gradient that is not NaN.
    zero = ctx.emit("equal", size, ctx.constant(0.0, x))
    return [ctx.emit("div", x, ctx.emit("where", zero, ctx.constant(1.0, x), size))]


@converter("Scaler")
def _scaler(ctx):
    """(x - offset) * scale, each one value or one per feature."""
    x = _float_input(ctx)
    dtype = np.float64 if x.type.dtype == "f64" else np.float32
    result = x
    for name, op in (("offset", "sub"), ("scale", "mul")):
        values = np.asarray(ctx.attr(name, []), dtype)
        if values.size:
            result = ctx.emit(op, result, ctx.known_tensor(values, _hint(ctx, name)))
    return [result]


@converter("ArrayFeatureExtractor")
def _array_feature_extractor(ctx):
    """data[..., indices] with the indices flattened; a 1-d data gives one row, as
    onnxruntime does."""
    data, indices = ctx.input(0), ctx.input(1)
    if indices.type.dtype != "i64":
        raise Unsupported(f"indices of dtype {indices.type.dtype}")
    if indices.type.rank != 1:
        indices = ctx.emit("reshape", indices, shape=(-1,))
    picked = ctx.emit("take", data, indices, axis=data.type.rank - 1)
    if data.type.rank == 1:
        picked = ctx.emit("unsqueeze", picked, axes=(0,))
    return [picked]


@converter("ZipMap")
def _zip_map(ctx):
    if ctx.attr("classlabels_strings") is not None:
        raise Unsupported("string class labels (chainrule holds numbers only)")
    labels = ctx.attr("classlabels_int64s", [])
    probabilities = ctx.require_rank(ctx.input(0), 2, 2)
    ctx.importer.notes.append(printable(
        f"{ctx.node.output[0]}: ZipMap's map from class label to probability is read as the "
        f"tensor of probabilities, {probabilities.type}, its columns in the order of the "
        f"labels {list(labels)}"))
    return [probabilities]
