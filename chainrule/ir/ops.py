"""The op registry: one entry per op with its attribute schema, traits and type rule.

Each op's other rules live in the layer that owns them, keyed by the op's name: derivative rules
in `passes.autodiff_rules`, numpy kernels in `backends.numpy_kernels`, ONNX lowerings in
`backends.onnx_lowering`. tests/test_ops_registry.py walks this registry to list the gaps.

Traits that autodiff, backends and the registry tests query: "nondifferentiable" (no derivative
rule; its output carries no gradient), "stochastic" (its value depends on whether the backend
runs in training mode), "expanded" (replaced by a pass before any backend runs: no kernel,
lowering or derivative rule) and "fused" (written by the fuse pass after autodiff: no
derivative rule). "negative_indices" marks an op whose `index_input` may count from the end
(numpy's and ONNX's take and gather_elements), so the feeds check accepts [-size, size) there.
"elementwise", "linear", "reduction", "comparison", "loss" and "constant" describe the op for
readers of the registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .shapes import (OpTypeError, broadcast_shapes, broadcast_to_shape, check_window_attrs,
                     concat_shape, conv_output_dim, dims_may_equal, format_shape, matmul_shape,
                     normalize_axes, normalize_axis, pool_output_dim, reduced_shape,
                     require_same_size, reshaped_shape, shapes_may_equal, sliced_shape,
                     taken_shape)
from .types import DTYPES, UNKNOWN, TensorType, is_float, scalar

REQUIRED = object()


class OneOrMore:
    """The number of inputs of a variadic op (concat): equal to every count of one or more, so
    an arity check written `len(inputs) != op.num_inputs` holds for every op alike."""

    def __eq__(self, count) -> bool:
        return isinstance(count, int) and not isinstance(count, bool) and count >= 1

    def __hash__(self) -> int:
        return hash(OneOrMore)

    def __str__(self) -> str:
        return "one or more"

    __repr__ = __str__


ONE_OR_MORE = OneOrMore()

# Attribute kinds and the Python values they hold.
ATTR_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "dtype": lambda v: v in DTYPES,
    "ints": lambda v: isinstance(v, tuple) and all(ATTR_KINDS["int"](x) for x in v),
    "axes": lambda v: v is None or ATTR_KINDS["ints"](v),
}


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: object = REQUIRED


@dataclass(frozen=True)
class OpDef:
    name: str
    num_inputs: int | OneOrMore
    infer: Callable[..., TensorType]  # (input types..., **attrs) -> output type
    attrs: dict = field(default_factory=dict)
    traits: frozenset = frozenset()
    # For random inputs: (input index, fn(input types, attrs) -> exclusive upper bound).
    index_input: tuple | None = None

    @property
    def differentiable(self) -> bool:
        return "nondifferentiable" not in self.traits


OPS: dict[str, OpDef] = {}


def register(name, num_inputs, infer, attrs=None, traits=(), index_input=None) -> OpDef:
    op = OpDef(name, num_inputs, infer, dict(attrs or {}), frozenset(traits), index_input)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise OpTypeError(f"unknown op '{name}'") from None


def rule_table() -> tuple[dict, Callable]:
    """A layer's table of per-op rules and the decorator that fills it:
    `KERNELS, kernel = rule_table()`, then `@kernel("add", "sub")` over a function."""
    table = {}

    def register_for(*ops):
        def register(fn):
            for op in ops:
                table[op] = fn
            return fn
        return register
    return table, register_for


def complete_attrs(op: OpDef, attrs: dict) -> dict:
    """Attrs with defaults filled in; unknown names, missing required ones and wrong kinds raise."""
    for name in attrs:
        if name not in op.attrs:
            raise OpTypeError(f"op '{op.name}' has no attribute '{name}'")
    full = {}
    for name, spec in op.attrs.items():
        value = attrs.get(name, spec.default)
        if value is REQUIRED:
            raise OpTypeError(f"op '{op.name}' needs attribute '{name}'")
        if not ATTR_KINDS[spec.kind](value):
            raise OpTypeError(f"op '{op.name}': attribute '{name}' must be {spec.kind}, "
                              f"not {value!r}")
        full[name] = value
    return full


def infer_type(op_name: str, input_types, attrs: dict) -> TensorType:
    op = get_op(op_name)
    if len(input_types) != op.num_inputs:
        raise OpTypeError(f"op '{op_name}' takes {op.num_inputs} inputs, got {len(input_types)}")
    return op.infer(*input_types, **complete_attrs(op, attrs))


# ---- type rules -------------------------------------------------------------------------------

def _same_dtype(op, *types):
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        listed = " and ".join(str(t) for t in types)
        raise OpTypeError(f"{op} needs operands of one dtype, got {listed}")
    return types[0].dtype


def _require_float(op, t):
    if not is_float(t.dtype):
        raise OpTypeError(f"{op} needs a float operand, got {t}")


def _require_numeric(op, t):
    if t.dtype == "bool":
        raise OpTypeError(f"{op} needs a numeric operand, got {t}")


def _require_bool(op, t):
    if t.dtype != "bool":
        raise OpTypeError(f"{op} needs a bool operand, got {t}")


# What each elementwise op accepts: the check run on its (first) operand.
OPERAND_CHECKS = {"float": _require_float, "numeric": _require_numeric, "bool": _require_bool,
                  "any": lambda op, t: None}


def _unary(op, operands="float"):
    def infer(x, **attrs):  # attrs such as leaky_relu's alpha do not change the type
        OPERAND_CHECKS[operands](op, x)
        return x
    return infer


def _binary(op, result_dtype=None, operands="numeric"):
    def infer(a, b):
        dtype = _same_dtype(op, a, b)
        OPERAND_CHECKS[operands](op, a)
        return TensorType(result_dtype or dtype, broadcast_shapes(a.shape, b.shape))
    return infer


def _reduction(op, operands="numeric"):
    def infer(x, axes, keepdims):
        OPERAND_CHECKS[operands](op, x)
        return x.with_shape(reduced_shape(x.shape, axes, keepdims))
    return infer


def _index_reduction(op):
    def infer(x, axis, keepdims):
        _require_numeric(op, x)
        return TensorType("i64", reduced_shape(x.shape, (axis,), keepdims))
    return infer


def _infer_clip(x, lo, hi):
    _require_float("clip", x)
    if lo > hi:
        raise OpTypeError(f"clip needs lo <= hi, got lo={lo} and hi={hi}")
    return x


def _infer_where(cond, a, b):
    if cond.dtype != "bool":
        raise OpTypeError(f"where needs a bool condition, got {cond}")
    dtype = _same_dtype("where", a, b)
    return TensorType(dtype, broadcast_shapes(cond.shape, a.shape, b.shape))


def _infer_matmul(a, b):
    dtype = _same_dtype("matmul", a, b)
    _require_numeric("matmul", a)
    return TensorType(dtype, matmul_shape(a.shape, b.shape))


def _infer_transpose(x, perm):
    if sorted(perm) != list(range(x.rank)):
        raise OpTypeError(f"transpose perm {perm} is not a permutation of the {x.rank} axes "
                          f"of {x}")
    return x.with_shape(x.shape[p] for p in perm)


def _along_axis(op):
    def infer(x, axis):
        _require_float(op, x)
        normalize_axis(axis, x.rank)
        return x
    return infer


def _infer_cross_entropy(logits, labels):
    _require_float("cross_entropy", logits)
    if labels.dtype != "i64":
        raise OpTypeError(f"cross_entropy needs i64 class labels, got {labels}")
    if logits.rank == 0 or labels.rank != logits.rank - 1:
        raise OpTypeError(f"cross_entropy needs logits [..., classes] and labels [...], got "
                          f"logits {format_shape(logits.shape)} and labels "
                          f"{format_shape(labels.shape)}")
    if not all(dims_may_equal(a, b) for a, b in zip(logits.shape, labels.shape)):
        raise OpTypeError(f"cross_entropy logits {format_shape(logits.shape)} and labels "
                          f"{format_shape(labels.shape)} disagree on the batch dims")
    return scalar(logits.dtype)


def _infer_mse(pred, target):
    _same_dtype("mse", pred, target)
    _require_float("mse", pred)
    broadcast_shapes(pred.shape, target.shape)
    return scalar(pred.dtype)


def _infer_one_hot(labels, depth, dtype):
    if labels.dtype != "i64":
        raise OpTypeError(f"one_hot needs i64 labels, got {labels}")
    if depth < 1:
        raise OpTypeError(f"one_hot needs a positive number of classes, got {depth}")
    return TensorType(dtype, labels.shape + (depth,))


def _infer_broadcast_like(x, like):
    return x.with_shape(broadcast_to_shape(x.shape, like.shape))


def _infer_broadcast_to(x, shape):
    """numpy.broadcast_to, where -1 keeps the operand's dim (so symbolic dims can stay)."""
    leading = len(shape) - x.rank
    if leading < 0 or any(d == -1 for d in shape[:leading]) or any(d < -1 for d in shape):
        raise OpTypeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(shape)}: "
                          f"the target needs rank >= {x.rank}, sizes, and -1 only where it "
                          f"keeps an operand dim")
    target = [x.shape[i - leading] if d == -1 else d for i, d in enumerate(shape)]
    return x.with_shape(broadcast_to_shape(x.shape, target))


def _infer_fill(value, *sources, shape, axes):
    """The scalar `value` broadcast to `shape`, where each -1 is a dim read off a source at run
    time: the size of axis axes[k] of sources[k] for the k-th -1 (`zeros((B, 4))` reads B off
    an input that declares it). Only the sources' shapes matter, never their values."""
    if value.rank != 0:
        raise OpTypeError(f"fill needs a scalar value, got {value}")
    if any(d < -1 for d in shape):
        raise OpTypeError(f"fill's shape {shape} holds sizes and -1 (a source's dim) only")
    if list(shape).count(-1) != len(sources) or len(axes) != len(sources):
        raise OpTypeError(f"fill needs one source and one axis per -1 in its shape {shape}, "
                          f"got {len(sources)} sources and axes {axes}")
    dims = iter([source.shape[normalize_axis(axis, source.rank)]
                 for source, axis in zip(sources, axes, strict=True)])
    return value.with_shape(next(dims) if d == -1 else d for d in shape)


def _infer_reshape(x, shape):
    return x.with_shape(reshaped_shape(x.shape, shape))


def _infer_reshape_like(x, like):
    require_same_size(x.shape, like.shape, f"reshape of {x} to the shape of {like}")
    return x.with_shape(like.shape)


def _infer_unsqueeze(x, axes):
    rank = x.rank + len(axes)
    inserted = normalize_axes(axes, rank)
    dims = iter(x.shape)
    return x.with_shape(1 if i in inserted else next(dims) for i in range(rank))


def _infer_squeeze(x, axes):
    removed = normalize_axes(axes, x.rank)
    for axis in removed:
        if x.shape[axis] not in (1, UNKNOWN):
            raise OpTypeError(f"squeeze removes axes of size 1, but axis {axis} of "
                              f"{format_shape(x.shape)} has size {x.shape[axis]}")
    return x.with_shape(d for i, d in enumerate(x.shape) if i not in removed)


def _infer_concat(*parts, axis):
    dtype = _same_dtype("concat", *parts)
    return TensorType(dtype, concat_shape([p.shape for p in parts], axis))


def _infer_unconcat(whole, *parts, axis, index):
    """The part of `whole` that concat took from parts[index]; parts only give the sizes."""
    if not 0 <= index < len(parts):
        raise OpTypeError(f"unconcat index {index} is out of range for {len(parts)} parts")
    if not shapes_may_equal(concat_shape([p.shape for p in parts], axis), whole.shape):
        listed = " and ".join(format_shape(p.shape) for p in parts)
        raise OpTypeError(f"unconcat of {format_shape(whole.shape)} into parts {listed} along "
                          f"axis {axis}: the shapes do not concatenate to it")
    return whole.with_shape(parts[index].shape)


def _infer_slice(x, starts, ends, axes, steps):
    return x.with_shape(sliced_shape(x.shape, starts, ends, axes, steps))


def _infer_unslice(sliced, like, starts, ends, axes, steps):
    """Zeros shaped like `like` with `sliced` written where the slice read from."""
    expected = sliced_shape(like.shape, starts, ends, axes, steps)
    if not shapes_may_equal(expected, sliced.shape):
        raise OpTypeError(f"unslice of {format_shape(sliced.shape)} into "
                          f"{format_shape(like.shape)}: that slice has shape "
                          f"{format_shape(expected)}")
    return sliced.with_shape(like.shape)


def _require_indices(op, indices):
    if indices.dtype != "i64":
        raise OpTypeError(f"{op} needs i64 indices, got {indices}")


def _infer_take(x, indices, axis):
    _require_indices("take", indices)
    return x.with_shape(taken_shape(x.shape, indices.shape, axis))


def _infer_scatter_add(updates, indices, like, axis):
    """Zeros shaped like `like`, plus `updates` added at `indices` along `axis` (take's
    transpose: repeated indices accumulate)."""
    _require_indices("scatter_add", indices)
    expected = taken_shape(like.shape, indices.shape, axis)
    if not shapes_may_equal(expected, updates.shape):
        raise OpTypeError(f"scatter_add of updates {format_shape(updates.shape)} at indices "
                          f"{format_shape(indices.shape)} into {format_shape(like.shape)}: "
                          f"updates must have shape {format_shape(expected)}")
    return updates.with_shape(like.shape)


def _check_element_indices(op, data, indices, axis):
    """indices for ONNX's GatherElements and ScatterElements on `data`: i64 of data's rank, and
    no longer than data on the axes other than `axis`, where each index reads its own position."""
    _require_indices(op, indices)
    if indices.rank != data.rank:
        raise OpTypeError(f"{op} needs indices of the operand's rank, got {indices} for "
                          f"{format_shape(data.shape)}")
    axis = normalize_axis(axis, data.rank)
    for other, (size, length) in enumerate(zip(data.shape, indices.shape, strict=True)):
        if other != axis and isinstance(size, int) and isinstance(length, int) and length > size:
            raise OpTypeError(f"{op} of indices {format_shape(indices.shape)} into "
                              f"{format_shape(data.shape)} along axis {axis}: axis {other} of "
                              f"the indices is longer than the operand's")


def _infer_gather_elements(x, indices, axis):
    """x's elements at `indices` along `axis` (numpy.take_along_axis without broadcasting):
    shaped like the indices."""
    _check_element_indices("gather_elements", x, indices, axis)
    return x.with_shape(indices.shape)


def _infer_scatter_elements_add(updates, indices, like, axis):
    """Zeros shaped like `like`, plus `updates` added at `indices` along `axis` (gather_elements'
    transpose: repeated indices accumulate)."""
    _check_element_indices("scatter_elements_add", like, indices, axis)
    if not shapes_may_equal(updates.shape, indices.shape):
        raise OpTypeError(f"scatter_elements_add needs updates shaped like its indices, got "
                          f"{format_shape(updates.shape)} and {format_shape(indices.shape)}")
    return updates.with_shape(like.shape)


def _infer_dropout_mask(x, p, seed):
    _require_float("dropout", x)
    if not 0.0 <= p < 1.0:
        raise OpTypeError(f"dropout probability must lie in [0, 1), got {p}")
    return x


def _infer_numel(x, axes, dtype):
    normalize_axes(axes, x.rank)
    return scalar(dtype)


def _infer_constant(value, dtype):
    if dtype in ("i64", "bool") and not (math.isfinite(value) and float(value).is_integer()):
        raise OpTypeError(f"a {dtype} constant cannot be {value}")
    return scalar(dtype)


def _infer_arange(n):
    if n < 1:
        raise OpTypeError(f"arange needs a positive count, got {n}")
    return TensorType("i64", (n,))


def _infer_cast(x, dtype):
    return x.with_dtype(dtype)


AXES = {"axes": AttrSpec("axes", None), "keepdims": AttrSpec("bool", False)}
AXIS = {"axis": AttrSpec("int", -1)}
SLICE = {name: AttrSpec("ints") for name in ("starts", "ends", "axes", "steps")}

# gelu is the tanh approximation x/2 (1 + tanh(GELU_SCALE (x + GELU_CUBIC x^3))).
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715

# ---- elementwise
for _name in ("exp", "log", "relu", "sigmoid", "tanh", "sqrt", "gelu", "softplus", "erf"):
    register(_name, 1, _unary(_name), traits=("elementwise",))
register("leaky_relu", 1, _unary("leaky_relu"), {"alpha": AttrSpec("float", 0.01)},
         traits=("elementwise",))
register("clip", 1, _infer_clip, {"lo": AttrSpec("float"), "hi": AttrSpec("float")},
         traits=("elementwise",))
register("abs", 1, _unary("abs", "numeric"), traits=("elementwise",))
register("sign", 1, _unary("sign", "numeric"), traits=("elementwise", "nondifferentiable"))
register("neg", 1, _unary("neg", "numeric"), traits=("elementwise", "linear"))
for _name in ("add", "sub"):
    register(_name, 2, _binary(_name), traits=("elementwise", "linear"))
for _name in ("mul", "pow", "maximum", "minimum"):
    register(_name, 2, _binary(_name), traits=("elementwise",))
# Division is of floats: numpy's and ONNX's integer divisions disagree (true vs truncating).
register("div", 2, _binary("div", operands="float"), traits=("elementwise",))
for _name in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"):
    register(_name, 2, _binary(_name, result_dtype="bool", operands="any"),
             traits=("elementwise", "comparison", "nondifferentiable"))
for _name in ("logical_and", "logical_or"):
    register(_name, 2, _binary(_name, operands="bool"),
             traits=("elementwise", "nondifferentiable"))
register("logical_not", 1, _unary("logical_not", "bool"),
         traits=("elementwise", "nondifferentiable"))
register("where", 3, _infer_where, traits=("elementwise",))
register("cast", 1, _infer_cast, {"dtype": AttrSpec("dtype")}, traits=("elementwise",))
register("constant", 0, _infer_constant,
         {"value": AttrSpec("float"), "dtype": AttrSpec("dtype")},
         traits=("constant", "nondifferentiable"))  # no inputs, so nothing to differentiate
register("arange", 0, _infer_arange, {"n": AttrSpec("int")},
         traits=("constant", "nondifferentiable"))

# ---- reductions
register("sum", 1, _reduction("sum"), AXES, traits=("reduction", "linear"))
register("mean", 1, _reduction("mean"), AXES, traits=("reduction", "linear"))
register("max", 1, _reduction("max"), AXES, traits=("reduction",))
register("min", 1, _reduction("min"), AXES, traits=("reduction",))
register("logsumexp", 1, _reduction("logsumexp", "float"), AXES, traits=("reduction",))
for _name in ("argmax", "argmin"):
    register(_name, 1, _index_reduction(_name),
             {"axis": AttrSpec("int"), "keepdims": AttrSpec("bool", False)},
             traits=("reduction", "nondifferentiable"))
register("numel", 1, _infer_numel,
         {"axes": AttrSpec("axes", None), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable",))

# ---- linear algebra and shape; the *_like ops and unconcat, unslice, scatter_add and
# scatter_elements_add are the transposes of broadcasting, reshape, concat, slice, take and
# gather_elements, which derivative rules need.
register("matmul", 2, _infer_matmul, traits=("linear",))
register("transpose", 1, _infer_transpose, {"perm": AttrSpec("ints")}, traits=("linear",))
register("reshape", 1, _infer_reshape, {"shape": AttrSpec("ints")}, traits=("linear",))
register("reshape_like", 2, _infer_reshape_like, traits=("linear",))
register("broadcast_to", 1, _infer_broadcast_to, {"shape": AttrSpec("ints")},
         traits=("linear",))
register("broadcast_like", 2, _infer_broadcast_like, traits=("linear",))
# fill broadcasts a scalar to a shape whose symbolic dims it reads off its other inputs (the
# DSL's constructors): only the value gets a gradient.
register("fill", ONE_OR_MORE, _infer_fill,
         {"shape": AttrSpec("ints"), "axes": AttrSpec("ints", ())}, traits=("linear",))
register("unsqueeze", 1, _infer_unsqueeze, {"axes": AttrSpec("ints")}, traits=("linear",))
register("squeeze", 1, _infer_squeeze, {"axes": AttrSpec("ints")}, traits=("linear",))
register("concat", ONE_OR_MORE, _infer_concat, {"axis": AttrSpec("int", 0)}, traits=("linear",))
register("unconcat", ONE_OR_MORE, _infer_unconcat,
         {"axis": AttrSpec("int"), "index": AttrSpec("int")}, traits=("linear",))
register("slice", 1, _infer_slice, SLICE, traits=("linear",))
register("unslice", 2, _infer_unslice, SLICE, traits=("linear",))
register("take", 2, _infer_take, {"axis": AttrSpec("int", 0)},
         traits=("linear", "negative_indices"),
         index_input=(1, lambda types, attrs: types[0].shape[attrs["axis"]]))
register("scatter_add", 3, _infer_scatter_add, {"axis": AttrSpec("int", 0)},
         traits=("linear",))
register("gather_elements", 2, _infer_gather_elements, {"axis": AttrSpec("int", 0)},
         traits=("linear", "negative_indices"),
         index_input=(1, lambda types, attrs: types[0].shape[attrs["axis"]]))
register("scatter_elements_add", 3, _infer_scatter_elements_add, {"axis": AttrSpec("int", 0)},
         traits=("linear",))

# ---- nn
register("softmax", 1, _along_axis("softmax"), AXIS)
register("log_softmax", 1, _along_axis("log_softmax"), AXIS)
register("cross_entropy", 2, _infer_cross_entropy, traits=("loss",),
         index_input=(1, lambda types, attrs: types[0].shape[-1]))
register("mse", 2, _infer_mse, traits=("loss",))
register("one_hot", 1, _infer_one_hot,
         {"depth": AttrSpec("int"), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable",),
         index_input=(0, lambda types, attrs: attrs["depth"]))


# ---- convolution and pooling: NCHW, as ONNX and PyTorch lay them out. Every dim but the batch is
# a number; pads list each spatial axis' begin, then each one's end (ONNX's order). conv,
# conv_transpose and conv_weight_grad are the three faces of one bilinear form, <conv(x, w), g>,
# so each one's derivatives are the other two; max_unpool and avg_unpool are the transposes of
# the pools, and max_pool_take picks values where max_pool picks the maximum.
SPATIAL_NAMES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _spatial_operand(op, x, rank):
    """x as a convolution or pooling takes it: float [batch, channels, *spatial], with numbers
    for every dim but the batch."""
    _require_float(op, x)
    if x.rank != rank + 2:
        layout = SPATIAL_NAMES.get(rank, f"{rank} spatial dims")
        raise OpTypeError(f"{op} over {rank} spatial axes takes [batch, channels, {layout}], "
                          f"got {x}")
    if not all(isinstance(d, int) for d in x.shape[1:]):
        raise OpTypeError(f"{op} needs fixed channel and spatial sizes (only the batch may be "
                          f"symbolic), got {x}")


def _conv_weight(op, w):
    """The kernel's spatial rank; w is [out, in / groups, *kernel] (for conv_transpose
    [in, out / groups, *kernel]), all numbers."""
    _require_float(op, w)
    if w.rank < 3 or not all(isinstance(d, int) for d in w.shape):
        raise OpTypeError(f"{op} needs a weight of fixed sizes [channels, channels / groups, "
                          f"*kernel], got {w}")
    return w.rank - 2


def _check_groups(op, groups, **channels):
    if groups < 1:
        raise OpTypeError(f"{op} needs groups >= 1, got {groups}")
    for what, count in channels.items():
        if count % groups:
            raise OpTypeError(f"{op}: groups={groups} does not divide the {count} "
                              f"{what.replace('_', ' ')}")


def _conv_spatial(op, sizes, kernel, strides, pads, dilations):
    rank = len(kernel)
    result = []
    for axis, (size, k, stride, dilation) in enumerate(zip(sizes, kernel, strides, dilations,
                                                          strict=True)):
        padded = size + pads[axis] + pads[rank + axis]
        span = dilation * (k - 1) + 1
        if span > padded:
            raise OpTypeError(f"{op}'s kernel spans {span} along spatial axis {axis} (size {k}"
                              f", dilation {dilation}), more than the padded input's {padded}")
        result.append(conv_output_dim(size, k, stride, pads[axis], pads[rank + axis],
                                      dilation))
    return tuple(result)


def _infer_conv(x, w, strides, pads, dilations, groups):
    rank = _conv_weight("conv", w)
    _spatial_operand("conv", x, rank)
    _same_dtype("conv", x, w)
    check_window_attrs("conv", rank, strides, pads, dilations)
    channels, out_channels = x.shape[1], w.shape[0]
    _check_groups("conv", groups, input_channels=channels, output_channels=out_channels)
    if w.shape[1] * groups != channels:
        raise OpTypeError(f"conv of x {format_shape(x.shape)} with w {format_shape(w.shape)}: "
                          f"w's second dim is the input channels per group, {channels} / "
                          f"groups={groups} = {channels // groups}, not {w.shape[1]}")
    spatial = _conv_spatial("conv", x.shape[2:], w.shape[2:], strides, pads, dilations)
    return x.with_shape((x.shape[0], out_channels) + spatial)


def _infer_conv_transpose(x, w, strides, pads, dilations, groups, output_padding):
    rank = _conv_weight("conv_transpose", w)
    _spatial_operand("conv_transpose", x, rank)
    _same_dtype("conv_transpose", x, w)
    check_window_attrs("conv_transpose", rank, strides, pads, dilations)
    if x.shape[1] != w.shape[0]:
        raise OpTypeError(f"conv_transpose of x {format_shape(x.shape)} with w "
                          f"{format_shape(w.shape)}: w's first dim is the input channels, "
                          f"{x.shape[1]}, not {w.shape[0]}")
    _check_groups("conv_transpose", groups, input_channels=x.shape[1])
    if len(output_padding) != rank or not all(
            0 <= p < s for p, s in zip(output_padding, strides, strict=True)):
        raise OpTypeError(f"conv_transpose needs an output padding >= 0 and below the stride "
                          f"per spatial axis, got {list(output_padding)} for strides "
                          f"{list(strides)}")
    spatial = []
    for axis, (size, k, stride, dilation, extra) in enumerate(zip(
            x.shape[2:], w.shape[2:], strides, dilations, output_padding, strict=True)):
        full = (size - 1) * stride + dilation * (k - 1) + 1 + extra
        if full - pads[axis] - pads[rank + axis] < 1:
            raise OpTypeError(f"conv_transpose's pads {list(pads)} remove all of the {full} "
                              f"outputs along spatial axis {axis}")
        spatial.append(full - pads[axis] - pads[rank + axis])
    return x.with_shape((x.shape[0], w.shape[1] * groups) + tuple(spatial))


def _infer_conv_weight_grad(x, g, kernel, strides, pads, dilations, groups):
    """The weight gradient of conv(x, w) for the output cotangent g: shaped like w."""
    rank = len(kernel)
    for operand in (x, g):
        _spatial_operand("conv_weight_grad", operand, rank)
    _same_dtype("conv_weight_grad", x, g)
    check_window_attrs("conv_weight_grad", rank, strides, pads, dilations, kernel)
    _check_groups("conv_weight_grad", groups, input_channels=x.shape[1],
                  output_channels=g.shape[1])
    spatial = _conv_spatial("conv_weight_grad", x.shape[2:], kernel, strides, pads, dilations)
    if not dims_may_equal(x.shape[0], g.shape[0]) or g.shape[2:] != spatial:
        raise OpTypeError(f"conv_weight_grad of x {format_shape(x.shape)}: the output "
                          f"cotangent must be [{x.shape[0]}, channels, "
                          f"{', '.join(map(str, spatial))}], got {format_shape(g.shape)}")
    return x.with_shape((g.shape[1], x.shape[1] // groups) + tuple(kernel))


def _pool_shape(op, x, kernel, strides, pads, ceil_mode):
    rank = len(kernel)
    if rank < 1:
        raise OpTypeError(f"{op} needs a kernel size per spatial axis, got none")
    _spatial_operand(op, x, rank)
    check_window_attrs(op, rank, strides, pads, kernel=kernel)
    if any(2 * p > k for p, k in zip(pads, kernel + kernel, strict=True)):
        raise OpTypeError(f"{op}'s pads must be at most half the kernel size, so that every "
                          f"window holds some of the input; got pads {list(pads)} for kernel "
                          f"{list(kernel)}")
    spatial = []
    for axis, (size, k, stride) in enumerate(zip(x.shape[2:], kernel, strides, strict=True)):
        if k > size + pads[axis] + pads[rank + axis]:
            raise OpTypeError(f"{op}'s kernel ({k}) is larger than the padded input "
                              f"({size + pads[axis] + pads[rank + axis]}) along spatial axis "
                              f"{axis}")
        spatial.append(pool_output_dim(size, k, stride, pads[axis], pads[rank + axis],
                                       ceil_mode))
    return x.shape[:2] + tuple(spatial)


def _pool(op):
    def infer(x, kernel, strides, pads, ceil_mode, **divisor):  # avg_pool's count_include_pad
        return x.with_shape(_pool_shape(op, x, kernel, strides, pads, ceil_mode))
    return infer


def _unpool(op):
    """g, one value per window of x's pooling, spread back to x's shape."""
    def infer(g, x, kernel, strides, pads, ceil_mode, **divisor):
        expected = _pool_shape(op, x, kernel, strides, pads, ceil_mode)
        _same_dtype(op, g, x)
        if not shapes_may_equal(g.shape, expected):
            raise OpTypeError(f"{op} into {format_shape(x.shape)} needs one value per window, "
                              f"{format_shape(expected)}, got {format_shape(g.shape)}")
        return x
    return infer


def _infer_max_pool_take(values, x, kernel, strides, pads, ceil_mode):
    """The values at the positions max_pool(x) takes its maxima from."""
    _same_dtype("max_pool_take", values, x)
    if not shapes_may_equal(values.shape, x.shape):
        raise OpTypeError(f"max_pool_take needs values shaped like x, got "
                          f"{format_shape(values.shape)} and {format_shape(x.shape)}")
    return values.with_shape(_pool_shape("max_pool_take", x, kernel, strides, pads, ceil_mode))


def _infer_pad(x, pads, value):
    _require_float("pad", x)
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise OpTypeError(f"pad of {x} needs {2 * x.rank} pads >= 0 (each axis' begin, then "
                          f"each one's end), got {list(pads)}")
    begins, ends = pads[:x.rank], pads[x.rank:]
    return x.with_shape(d + b + e if isinstance(d, int) else d if b == e == 0 else UNKNOWN
                        for d, b, e in zip(x.shape, begins, ends, strict=True))


CONV = {"strides": AttrSpec("ints"), "pads": AttrSpec("ints"), "dilations": AttrSpec("ints"),
        "groups": AttrSpec("int", 1)}
POOL = {"kernel": AttrSpec("ints"), "strides": AttrSpec("ints"), "pads": AttrSpec("ints"),
        "ceil_mode": AttrSpec("bool", False)}
AVG_POOL = {**POOL, "count_include_pad": AttrSpec("bool", True)}

register("conv", 2, _infer_conv, CONV, traits=("linear",))
register("conv_transpose", 2, _infer_conv_transpose,
         {**CONV, "output_padding": AttrSpec("ints")}, traits=("linear",))
register("conv_weight_grad", 2, _infer_conv_weight_grad, {"kernel": AttrSpec("ints"), **CONV},
         traits=("linear",))
register("max_pool", 1, _pool("max_pool"), POOL)
register("max_unpool", 2, _unpool("max_unpool"), POOL, traits=("linear",))
register("max_pool_take", 2, _infer_max_pool_take, POOL, traits=("linear",))
register("avg_pool", 1, _pool("avg_pool"), AVG_POOL, traits=("linear",))
register("avg_unpool", 2, _unpool("avg_unpool"), AVG_POOL, traits=("linear",))
register("pad", 1, _infer_pad, {"pads": AttrSpec("ints"), "value": AttrSpec("float", 0.0)},
         traits=("linear",))


# dropout(x) is x * dropout_mask(x): the mask is a value, so the gradient reuses it exactly.
def _infer_grad(objective, wrt):
    if objective.rank != 0 or not is_float(objective.dtype):
        raise OpTypeError(f"grad needs a float scalar to differentiate, got {objective}")
    if not is_float(wrt.dtype):
        raise OpTypeError(f"grad with respect to {wrt}: only float values have gradients")
    if wrt.dtype != objective.dtype:
        raise OpTypeError(f"grad of {objective} with respect to {wrt}: dtypes differ")
    return wrt


# Fused ops: the fuse pass (-O2) writes them into finished gradient graphs, so they take no
# derivative rule ("fused" trait); autodiff names them if it ever meets one.
def _infer_relu_grad(x, g):
    _same_dtype("relu_grad", x, g)
    if not shapes_may_equal(x.shape, g.shape):
        raise OpTypeError(f"relu_grad needs equal shapes, got {x} and {g}")
    return g


def _infer_cross_entropy_grad(logits, labels, scale):
    _infer_cross_entropy(logits, labels)
    if scale.rank != 0 or scale.dtype != logits.dtype:
        raise OpTypeError(f"cross_entropy_grad needs a {logits.dtype} scalar scale, got {scale}")
    return logits


def _infer_sum_squares(x):
    _require_float("sum_squares", x)
    return scalar(x.dtype)


def _infer_gemm(a, b, trans_a, trans_b):
    if a.rank != 2 or b.rank != 2:
        raise OpTypeError(f"gemm takes matrices, got {a} and {b}")
    a_shape = a.shape[::-1] if trans_a else a.shape
    b_shape = b.shape[::-1] if trans_b else b.shape
    return _infer_matmul(a.with_shape(a_shape), b.with_shape(b_shape))


def _infer_gemm_acc(a, b, c, alpha, beta, trans_a, trans_b):
    product = _infer_gemm(a, b, trans_a, trans_b)
    if c.dtype != product.dtype or not shapes_may_equal(c.shape, product.shape):
        raise OpTypeError(f"gemm_acc accumulates into a {product}, got {c}")
    for scale in (alpha, beta):
        if scale.rank != 0 or scale.dtype != c.dtype:
            raise OpTypeError(f"gemm_acc needs {c.dtype} scalar alpha and beta, got {scale}")
    return c


register("relu_grad", 2, _infer_relu_grad, traits=("elementwise", "fused"))
register("cross_entropy_grad", 3, _infer_cross_entropy_grad, traits=("fused",),
         index_input=(1, lambda types, attrs: types[0].shape[-1]))
# A cross-entropy and its gradient from one log_softmax (fuse.py): the forward's log-probs are
# the softmax the gradient needs, exp(log_probs).
register("nll", 2, _infer_cross_entropy, traits=("loss", "fused"),
         index_input=(1, lambda types, attrs: types[0].shape[-1]))
register("cross_entropy_grad_from_log_probs", 3, _infer_cross_entropy_grad, traits=("fused",),
         index_input=(1, lambda types, attrs: types[0].shape[-1]))
register("sum_squares", 1, _infer_sum_squares, traits=("reduction", "fused"))
register("gemm", 2, _infer_gemm,
         {"trans_a": AttrSpec("bool", False), "trans_b": AttrSpec("bool", False)},
         traits=("linear", "fused"))
# alpha * op(a) @ op(b) + beta * c: a param's update folded into its gradient's matrix product
# (passes/gemm_epilogue.py), written into c's buffer.
register("gemm_acc", 5, _infer_gemm_acc,
         {"trans_a": AttrSpec("bool", False), "trans_b": AttrSpec("bool", False)},
         traits=("fused",))


# grad(objective, wrt) in a model: a higher-order op that the expand_grad pass replaces by the
# backward graph it stands for, so no backend ever sees it ("expanded" trait).
register("grad", 2, _infer_grad, traits=("expanded",))
register("dropout_mask", 1, _infer_dropout_mask,
         {"p": AttrSpec("float"), "seed": AttrSpec("int")},
         traits=("elementwise", "nondifferentiable", "stochastic"))


# train_or_eval(t, e) is t in training and e otherwise (batch_norm's batch statistics against
# its running ones). Every pipeline chooses the mode before the backends run (select_mode), so
# only autodiff meets it, and its rule keeps the choice open for the gradient too.
def _infer_train_or_eval(train, evaluate):
    if train != evaluate:
        raise OpTypeError(f"train_or_eval needs one type for both modes, got {train} and "
                          f"{evaluate}")
    return train


register("train_or_eval", 2, _infer_train_or_eval, traits=("expanded",))
