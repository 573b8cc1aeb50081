"""The op registry: one entry per op with its attribute schema, traits, type rule and facts.

An entry holds every fact about its op that is not a rule: the names of its operands, the numpy
function and the ONNX op that compute exactly it (where one does), its scalar code for fused
kernels, the DSL built-in that calls it by its attrs, whether its numpy result is a new array,
and which operand it reads as indices. Each layer derives its tables from these facts. The
op's rules live in the layer that owns them, keyed by the op's name: derivative rules in
`passes.autodiff_rules`, numpy kernels in `backends.numpy_kernels`, ONNX lowerings in
`backends.onnx_lowering`, each needed only where no fact already gives it.
tests/test_ops_registry.py walks this registry and prints the checklist of what an op lacks.

Traits that autodiff, backends and the registry tests query: "nondifferentiable" (no derivative
rule; its output carries no gradient), "stochastic" (its value depends on whether the backend
runs in training mode), "expanded" (replaced by a pass before any backend runs: no kernel,
lowering or derivative rule), "fused" (written by the fuse pass after autodiff: no derivative
rule, no DSL spelling) and "fresh_result" (its numpy kernel returns a new array, never a view of
an input or a shared constant, so a backend may overwrite it; an op computed by a numpy ufunc
always does), "multi_result" (a node of it has several outputs, whose types its rule returns
as a tuple) and "structured" (it holds a body graph, `scan`: each layer handles it by hand
rather than through a table of rules). "elementwise", "linear", "reduction", "comparison", "loss" and "constant"
describe the op for readers of the registry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from . import dims
from .graph import Graph, Node
from .scan import infer_scan
from .shapes import (OpTypeError, broadcast_shapes, broadcast_to_shape, check_window_attrs,
                     concat_shape, conv_output_dim, dims_may_equal, format_shape, matmul_shape,
                     normalize_axes, normalize_axis, pool_output_dim, reduced_shape,
                     require_same_size, reshaped_shape, shapes_may_equal, sliced_shape,
                     taken_shape)
from .types import (DTYPES, NARROW_INT_DTYPES, UNKNOWN, TensorType, int_range, int_range_text,
                    is_float, is_int, is_numeric, numpy_dtype, scalar, with_article)

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
    # A size that may be symbolic (`B`, `S-1`: dims.py), known when the model runs.
    "dim": lambda v: ATTR_KINDS["int"](v) or dims.is_symbolic(v),
    "dims": lambda v: isinstance(v, tuple) and all(ATTR_KINDS["dim"](x) for x in v),
    "graph": lambda v: isinstance(v, Graph),  # a body (scan.py)
    # One of a few named choices (grid_sample's mode), which the op's type rule lists.
    "str": lambda v: isinstance(v, str),
}


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: object = REQUIRED
    # The option's name in the DSL built-in that calls the op, where it differs (`axis` for a
    # reduction's axes).
    dsl_name: str | None = None


@dataclass(frozen=True)
class IndexOperand:
    """An operand an op reads as class labels or indices: when it is a graph input, the feeds
    check refuses values out of range the same way before every backend."""

    position: int
    bound: Callable  # (input types, attrs) -> exclusive upper bound: a size or a symbolic dim
    # Whether indices below 0 count from the end (numpy's and ONNX's take, gather_elements),
    # so that [-bound, bound) is the range.
    negatives: bool = False
    # The range as an error states it, with {size}: "cross_entropy over {size} classes".
    described: str = "{op} over {size} items"


@dataclass(frozen=True)
class OpDef:
    name: str
    num_inputs: int | OneOrMore
    infer: Callable[..., TensorType]  # (input types..., **attrs) -> output type
    attrs: dict = field(default_factory=dict)
    traits: frozenset = frozenset()
    operands: tuple = ()                # the inputs' names, as the DSL's keyword arguments
    index_input: IndexOperand | None = None
    numpy: str | None = None            # np.<numpy>(inputs..., attrs) computes exactly the op
                                        # (numpy's axis= for a reduction's axes)
    onnx: str | None = None             # the ONNX op type that computes exactly the op
    scalar: str | None = None           # the op on scalar operands {0}, {1}...: "({0} + {1})"
    builtin: str | None = None          # the DSL built-in that emits the op with its attrs

    @property
    def differentiable(self) -> bool:
        return "nondifferentiable" not in self.traits


OPS: dict[str, OpDef] = {}
OWN_NAME = object()


def _default_operands(num_inputs) -> tuple:
    if num_inputs is ONE_OR_MORE:
        return ("xs",)
    return {0: (), 1: ("x",), 2: ("a", "b")}[num_inputs]


def register(name, num_inputs, infer, attrs=None, *, traits=(), operands=None,
             index_input=None, numpy=None, onnx=None, scalar=None, builtin=OWN_NAME) -> OpDef:
    """Add an op. Its operands are x, or a and b, unless named; its DSL built-in is its name,
    unless fused (the fuse pass writes those) or given (None: an operator or a literal)."""
    if builtin is OWN_NAME:
        builtin = None if "fused" in traits else name
    op = OpDef(name, num_inputs, infer, dict(attrs or {}), frozenset(traits),
               operands or _default_operands(num_inputs), index_input, numpy, onnx, scalar,
               builtin)
    OPS[name] = op
    return op


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise OpTypeError(f"unknown op '{name}'") from None


def is_random(node: Node) -> bool:
    """Whether the node draws random numbers (dropout's mask), itself or in a body it holds:
    its value then differs from one step to the next, and from one run to the next."""
    if "stochastic" in get_op(node.op).traits:
        return True
    body = node.attrs.get("body")
    return body is not None and any(is_random(inner) for inner in body.nodes)


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
    """The result's type; for a multi-result op, the tuple of its results' types."""
    op = get_op(op_name)
    if len(input_types) != op.num_inputs:
        raise OpTypeError(f"op '{op_name}' takes {op.num_inputs} inputs, got {len(input_types)}")
    return op.infer(*input_types, **complete_attrs(op, attrs))


def infer_types(op_name: str, input_types, attrs: dict) -> tuple[TensorType, ...]:
    """Every result's type, for any op."""
    inferred = infer_type(op_name, input_types, attrs)
    return inferred if isinstance(inferred, tuple) else (inferred,)


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
    if not is_numeric(t.dtype):
        raise OpTypeError(f"{op} needs a numeric operand, got {t}")


def _require_int(op, t):
    if not is_int(t.dtype):
        raise OpTypeError(f"{op} needs an integer operand, got {t}")


def _require_float_or_byte(op, t):
    if not (is_float(t.dtype) or t.dtype in ("i8", "u8")):
        raise OpTypeError(f"{op} needs a float or an 8-bit integer operand, got {t}")


def _require_bool(op, t):
    if t.dtype != "bool":
        raise OpTypeError(f"{op} needs a bool operand, got {t}")


# What each elementwise op accepts: the check run on its (first) operand.
OPERAND_CHECKS = {"float": _require_float, "numeric": _require_numeric, "int": _require_int,
                  "float_or_byte": _require_float_or_byte, "bool": _require_bool,
                  "any": lambda op, t: None}


def _unary(op, operands="float"):
    def infer(x, **attrs):  # attrs such as leaky_relu's alpha do not change the type
        OPERAND_CHECKS[operands](op, x)
        return x
    return infer


def _binary(op, result_dtype=None, operands="numeric"):
    def infer(a, b, **attrs):  # attrs such as int_mod's fmod do not change the type
        dtype = _same_dtype(op, a, b)
        OPERAND_CHECKS[operands](op, a)
        return TensorType(result_dtype or dtype, broadcast_shapes(a.shape, b.shape))
    return infer


def _reduction(op, operands="numeric"):
    def infer(x, axes, keepdims):
        OPERAND_CHECKS[operands](op, x)
        return x.with_shape(reduced_shape(x.shape, axes, keepdims))
    return infer


def _require_elements_along(op, x, axis, what="an empty axis"):
    """An op whose result picks one of x's elements along `axis` has none to pick from when
    that axis is empty: refused here when its size says so (a symbol of size 0 is refused by
    the backend at run time)."""
    if x.shape[normalize_axis(axis, x.rank)] == 0:
        raise OpTypeError(f"{op} over {what} is undefined (axis {axis} of {x} has size 0)")


def _index_reduction(op):
    def infer(x, axis, keepdims):
        _require_numeric(op, x)
        _require_elements_along(op, x, axis)
        return TensorType("i64", reduced_shape(x.shape, (axis,), keepdims))
    return infer


def _infer_cumsum(x, axis):
    _require_numeric("cumsum", x)
    normalize_axis(axis, x.rank)
    return x


def _infer_cumprod(x, axis):
    _require_numeric("cumprod", x)
    normalize_axis(axis, x.rank)
    return x


# The bits of the dtypes numpy holds in fewer bits than a byte's (ml_dtypes keeps one per byte).
SUB_BYTE_BITS = {"i4": 4, "u4": 4, "f4e2m1": 4, "i2": 2, "u2": 2}


def _infer_bitcast(x, dtype):
    """x's bits read as `dtype`, which must be as wide (ONNX's BitCast)."""
    for side in (x.dtype, dtype):
        if side in SUB_BYTE_BITS:
            raise OpTypeError(f"bitcast of {x} to {dtype}: {side} packs {SUB_BYTE_BITS[side]}-bit"
                              f" elements, which chainrule holds one per byte")
    if numpy_dtype(x.dtype).itemsize != numpy_dtype(dtype).itemsize:
        raise OpTypeError(f"bitcast of {x} to {dtype}: the dtypes differ in width "
                          f"({numpy_dtype(x.dtype).itemsize * 8} and "
                          f"{numpy_dtype(dtype).itemsize * 8} bits)")
    return x.with_dtype(dtype)


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


def _infer_det(x):
    _require_float("det", x)
    if x.rank < 2 or not isinstance(x.shape[-1], int) or x.shape[-1] < 1 or \
            x.shape[-2] != x.shape[-1]:
        raise OpTypeError(f"det takes square matrices [..., n, n] of a fixed n >= 1, got {x}")
    return x.with_shape(x.shape[:-2])


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
    _require_elements_along("cross_entropy", logits, -1, "0 classes")
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
    if leading < 0 or any(d == -1 for d in shape[:leading]) or any(
            isinstance(d, int) and d < -1 for d in shape):
        raise OpTypeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(shape)}: "
                          f"the target needs rank >= {x.rank}, sizes, and -1 only where it "
                          f"keeps an operand dim")
    target = [x.shape[i - leading] if d == -1 else d for i, d in enumerate(shape)]
    return x.with_shape(broadcast_to_shape(x.shape, target))


def _infer_fill(value, shape):
    """The scalar `value` broadcast to `shape`, whose symbolic dims the run binds from the
    inputs' shapes (`zeros((B, 4))`)."""
    if value.rank != 0:
        raise OpTypeError(f"fill needs a scalar value, got {value}")
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise OpTypeError(f"fill's shape {format_shape(shape)} needs sizes of 0 or more")
    return value.with_shape(shape)


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


def _infer_top_k_indices(x, k, axis, largest):
    """The positions of x's k largest (or smallest) elements along `axis`, best first, ties
    to the lower position (ONNX's TopK, whose values are gather_elements of these)."""
    _require_numeric("top_k_indices", x)
    axis = normalize_axis(axis, x.rank)
    size = x.shape[axis]
    if k < 0 or isinstance(size, int) and k > size:
        raise OpTypeError(f"top_k_indices of {k} along axis {axis} of {x}: k lies in "
                          f"[0, {size}]")
    return TensorType("i64", tuple(k if i == axis else d for i, d in enumerate(x.shape)))


def _infer_dropout_mask(x, p, seed):
    _require_float("dropout", x)
    if not 0.0 <= p < 1.0:
        raise OpTypeError(f"dropout probability must lie in [0, 1), got {p}")
    return x


def _infer_numel(x, axes, dtype):
    normalize_axes(axes, x.rank)
    return scalar(dtype)


def _infer_constant(value, dtype):
    whole = is_int(dtype) or dtype in NARROW_INT_DTYPES
    if (whole or dtype == "bool") and not (math.isfinite(value) and float(value).is_integer()):
        raise OpTypeError(f"a {dtype} constant cannot be {value}")
    if whole:
        least, greatest = int_range(dtype)
        # Compared as floats: the value is an f64, and 2**63 - 1 as one is 2**63, past i64.
        if not float(least) <= value < float(greatest) + 1:
            raise OpTypeError(f"{with_article(dtype)} constant lies in {int_range_text(dtype)}, not at "
                              f"{value}")
    return scalar(dtype)


def _infer_arange(n):
    if isinstance(n, int) and n < 0:
        raise OpTypeError(f"arange needs a count of 0 or more, got {n}")
    return TensorType("i64", (n,))


def _infer_cast(x, dtype, saturate):
    return x.with_dtype(dtype)


def _infer_fake_quantize(x, scale, zero_point, lo, hi):
    _require_float("fake_quantize", x)
    _same_dtype("fake_quantize", x, scale, zero_point)
    if broadcast_shapes(x.shape, scale.shape, zero_point.shape) != tuple(x.shape):
        raise OpTypeError(f"fake_quantize's scale {format_shape(scale.shape)} and zero point "
                          f"{format_shape(zero_point.shape)} must broadcast to x "
                          f"{format_shape(x.shape)}")
    if lo > hi:
        raise OpTypeError(f"fake_quantize needs lo <= hi, got [{lo}, {hi}]")
    return x


AXES = {"axes": AttrSpec("axes", None, dsl_name="axis"), "keepdims": AttrSpec("bool", False)}
AXIS = {"axis": AttrSpec("int", -1)}
# Bounds may be symbolic (`x[:, 0:S-1]`); axes and steps are numbers.
SLICE = {"starts": AttrSpec("dims"), "ends": AttrSpec("dims"), "axes": AttrSpec("ints"),
         "steps": AttrSpec("ints")}

# gelu is the tanh approximation x/2 (1 + tanh(GELU_SCALE (x + GELU_CUBIC x^3))).
GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715

# ---- elementwise. No scalar code for exp, log and tanh: fused_kernels.py says why.
FRESH_ELEMENTWISE = ("elementwise", "fresh_result")
register("exp", 1, _unary("exp"), traits=("elementwise",), numpy="exp", onnx="Exp")
register("log", 1, _unary("log"), traits=("elementwise",), numpy="log", onnx="Log")
register("tanh", 1, _unary("tanh"), traits=("elementwise",), numpy="tanh", onnx="Tanh")
register("sqrt", 1, _unary("sqrt"), traits=("elementwise",), numpy="sqrt", onnx="Sqrt",
         scalar="np.sqrt({0})")
register("relu", 1, _unary("relu"), traits=FRESH_ELEMENTWISE, onnx="Relu")
register("sigmoid", 1, _unary("sigmoid"), traits=FRESH_ELEMENTWISE, onnx="Sigmoid")
# No scalar code, as for exp (backends/fused_kernels.py): numpy's vectorised loops beat the
# scalar C library that a fused kernel would call.
register("sin", 1, _unary("sin"), traits=("elementwise",), numpy="sin", onnx="Sin")
register("cos", 1, _unary("cos"), traits=("elementwise",), numpy="cos", onnx="Cos")
# The rest of the trigonometric and hyperbolic family. onnxruntime runs their ONNX ops in float32
# only, so the lowerings compose the others (backends/onnx_lowering.py).
for _name, _numpy, _onnx in [("tan", "tan", "Tan"), ("asin", "arcsin", "Asin"),
                             ("acos", "arccos", "Acos"), ("atan", "arctan", "Atan"),
                             ("sinh", "sinh", "Sinh"), ("cosh", "cosh", "Cosh"),
                             ("asinh", "arcsinh", "Asinh"), ("acosh", "arccosh", "Acosh"),
                             ("atanh", "arctanh", "Atanh")]:
    register(_name, 1, _unary(_name), traits=("elementwise",), numpy=_numpy, onnx=_onnx)
register("gelu", 1, _unary("gelu"), traits=("elementwise",))
register("softplus", 1, _unary("softplus"), traits=("elementwise",), onnx="Softplus")
register("erf", 1, _unary("erf"), traits=FRESH_ELEMENTWISE, onnx="Erf")
register("leaky_relu", 1, _unary("leaky_relu"), {"alpha": AttrSpec("float", 0.01)},
         traits=("elementwise",))
register("clip", 1, _infer_clip, {"lo": AttrSpec("float"), "hi": AttrSpec("float")},
         traits=("elementwise",))
register("abs", 1, _unary("abs", "numeric"), traits=("elementwise",), numpy="abs", onnx="Abs",
         scalar="np.abs({0})")
register("sign", 1, _unary("sign", "numeric"), traits=("elementwise", "nondifferentiable"),
         numpy="sign", onnx="Sign")
# floor's derivative is 0 wherever it has one, so, as for sign, no gradient flows through it.
register("floor", 1, _unary("floor"), traits=("elementwise", "nondifferentiable"),
         numpy="floor", onnx="Floor", scalar="np.floor({0})")
# ONNX has no log1p: the lowering writes Log(1 + x), exact to rounding where 1 + x is.
register("log1p", 1, _unary("log1p"), traits=("elementwise",), numpy="log1p")
# The identity with no gradient: what it passes on is a constant to autodiff.
register("stop_gradient", 1, lambda x: x, traits=("nondifferentiable",))
register("neg", 1, _unary("neg", "numeric"), traits=("elementwise", "linear"),
         numpy="negative", onnx="Neg", scalar="(-{0})", builtin=None)  # the DSL's -x
LINEAR_ELEMENTWISE = ("elementwise", "linear")
register("add", 2, _binary("add"), traits=LINEAR_ELEMENTWISE, numpy="add", onnx="Add",
         scalar="({0} + {1})")
register("sub", 2, _binary("sub"), traits=LINEAR_ELEMENTWISE, numpy="subtract", onnx="Sub",
         scalar="({0} - {1})")
register("mul", 2, _binary("mul"), traits=("elementwise",), numpy="multiply", onnx="Mul",
         scalar="({0} * {1})")
register("pow", 2, _binary("pow"), traits=("elementwise",), numpy="power", onnx="Pow",
         scalar="({0} ** {1})")
register("maximum", 2, _binary("maximum"), traits=("elementwise",), numpy="maximum",
         onnx="Max", scalar="np.maximum({0}, {1})")
register("minimum", 2, _binary("minimum"), traits=("elementwise",), numpy="minimum",
         onnx="Min", scalar="np.minimum({0}, {1})")
# Division is of floats: numpy's and ONNX's integer divisions disagree (true vs truncating).
register("div", 2, _binary("div", operands="float"), traits=("elementwise",), numpy="divide",
         onnx="Div", scalar="({0} / {1})")
# Integer division truncates toward zero, as C's and ONNX's Div do (numpy's // floors); int_mod
# is its remainder with fmod (the dividend's sign), else Python's % (the divisor's: ONNX's Mod
# with fmod=0). Integers carry no gradient.
INTEGER_ELEMENTWISE = ("elementwise", "nondifferentiable")
register("int_div", 2, _binary("int_div", operands="int"), traits=INTEGER_ELEMENTWISE,
         onnx="Div")
register("int_mod", 2, _binary("int_mod", operands="int"), {"fmod": AttrSpec("bool", False)},
         traits=INTEGER_ELEMENTWISE)
for _name, _numpy, _onnx, _symbol in [("bitwise_and", "bitwise_and", "BitwiseAnd", "&"),
                                      ("bitwise_or", "bitwise_or", "BitwiseOr", "|"),
                                      ("bitwise_xor", "bitwise_xor", "BitwiseXor", "^")]:
    register(_name, 2, _binary(_name, operands="int"), traits=INTEGER_ELEMENTWISE,
             numpy=_numpy, onnx=_onnx, scalar=f"({{0}} {_symbol} {{1}})")
register("bitwise_not", 1, _unary("bitwise_not", "int"), traits=INTEGER_ELEMENTWISE,
         numpy="invert", onnx="BitwiseNot", scalar="(~{0})")
# A shift by a negative amount or by the width or more gives the full shift: 0, or for a right
# shift of a negative number -1 (ONNX's BitShift from opset 28; a right shift is arithmetic).
register("left_shift", 2, _binary("left_shift", operands="int"), traits=INTEGER_ELEMENTWISE,
         operands=("x", "shift"))
register("right_shift", 2, _binary("right_shift", operands="int"), traits=INTEGER_ELEMENTWISE,
         operands=("x", "shift"))
# The comparisons are operators in the DSL (a < b); ONNX has no NotEqual.
for _name, _onnx, _symbol in [("less", "Less", "<"), ("less_equal", "LessOrEqual", "<="),
                              ("greater", "Greater", ">"),
                              ("greater_equal", "GreaterOrEqual", ">="),
                              ("equal", "Equal", "=="), ("not_equal", None, "!=")]:
    register(_name, 2, _binary(_name, result_dtype="bool", operands="any"),
             traits=("elementwise", "comparison", "nondifferentiable"), numpy=_name,
             onnx=_onnx, scalar=f"({{0}} {_symbol} {{1}})", builtin=None)
for _name, _onnx, _word in [("logical_and", "And", "and"), ("logical_or", "Or", "or")]:
    register(_name, 2, _binary(_name, operands="bool"),
             traits=("elementwise", "nondifferentiable"), numpy=_name, onnx=_onnx,
             scalar=f"({{0}} {_word} {{1}})")
register("logical_not", 1, _unary("logical_not", "bool"),
         traits=("elementwise", "nondifferentiable"), numpy="logical_not", onnx="Not",
         scalar="(not {0})")
register("where", 3, _infer_where, traits=FRESH_ELEMENTWISE, operands=("cond", "a", "b"),
         numpy="where", onnx="Where", scalar="({1} if {0} else {2})")
# A quantization and its dequantization in one: (clip(round(x / scale) + zero_point, lo, hi)
# - zero_point) * scale, rounding half to even; ONNX's QuantizeLinear -> DequantizeLinear pair.
# Its gradient is the straight-through estimator's: g where lo <= x / scale + zero_point <= hi.
register("fake_quantize", 3, _infer_fake_quantize, {"lo": AttrSpec("float"),
                                                    "hi": AttrSpec("float")},
         operands=("x", "scale", "zero_point"))
# A float cast to a float8 dtype saturates (ONNX's default): values beyond the dtype's largest
# finite one become it, where saturate=false makes them inf or NaN.
register("cast", 1, _infer_cast, {"dtype": AttrSpec("dtype"), "saturate": AttrSpec("bool", True)},
         traits=FRESH_ELEMENTWISE)
# Not "fresh_result": numpy's result is a view of x's buffer.
register("bitcast", 1, _infer_bitcast, {"dtype": AttrSpec("dtype")},
         traits=("elementwise", "nondifferentiable"))
register("constant", 0, _infer_constant,
         {"value": AttrSpec("float"), "dtype": AttrSpec("dtype")},
         traits=("constant", "nondifferentiable"),  # no inputs, so nothing to differentiate
         builtin=None)  # a literal: f32(0.5)
register("arange", 0, _infer_arange, {"n": AttrSpec("dim")},
         traits=("constant", "nondifferentiable", "fresh_result"))

# ---- loops (scan.py)
register("scan", ONE_OR_MORE, infer_scan,
         {"body": AttrSpec("graph"), "length": AttrSpec("dim"), "carried": AttrSpec("int"),
          "scanned": AttrSpec("int"), "reverse": AttrSpec("bool", False)},
         # Not "fresh_result": a carried value may leave as it came in, or as a view of a
         # sequence's slice or of a body constant.
         traits=("multi_result", "structured"), operands=("operands",),
         builtin=None)  # the DSL writes a `for` over a symbolic range

# ---- reductions
REDUCE = ("reduction", "fresh_result")
register("sum", 1, _reduction("sum"), AXES, traits=REDUCE + ("linear",), numpy="sum")
register("mean", 1, _reduction("mean"), AXES, traits=REDUCE + ("linear",), numpy="mean")
# Not numpy's max and min, which refuse an empty axis: their kernels give ONNX's -inf and +inf.
register("max", 1, _reduction("max"), AXES, traits=REDUCE)
register("min", 1, _reduction("min"), AXES, traits=REDUCE)
register("logsumexp", 1, _reduction("logsumexp", "float"), AXES, traits=("reduction",))
register("prod", 1, _reduction("prod"), AXES, traits=REDUCE, numpy="prod")
register("cumsum", 1, _infer_cumsum, {"axis": AttrSpec("int")}, traits=("fresh_result",))
register("cumprod", 1, _infer_cumprod, {"axis": AttrSpec("int")}, traits=("fresh_result",))
for _name in ("argmax", "argmin"):
    register(_name, 1, _index_reduction(_name),
             {"axis": AttrSpec("int"), "keepdims": AttrSpec("bool", False)},
             traits=("reduction", "nondifferentiable"), numpy=_name)
register("top_k_indices", 1, _infer_top_k_indices,
         {"k": AttrSpec("int"), "axis": AttrSpec("int", -1), "largest": AttrSpec("bool", True)},
         traits=("nondifferentiable", "fresh_result"))
register("numel", 1, _infer_numel,
         {"axes": AttrSpec("axes", None, dsl_name="axis"), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable", "fresh_result"))

# ---- linear algebra and shape; the *_like ops and unconcat, unslice, scatter_add and
# scatter_elements_add are the transposes of broadcasting, reshape, concat, slice, take and
# gather_elements, which derivative rules need.
# An index operand read along `axis`, counting from the end below 0.
AXIS_INDICES = IndexOperand(1, lambda types, attrs: types[0].shape[attrs["axis"]],
                            negatives=True)
# Class labels into the last axis of logits or log-probabilities.
CLASS_LABELS = IndexOperand(1, lambda types, attrs: types[0].shape[-1],
                            described="cross_entropy over {size} classes")
AXES_SPELLED_AXIS = {"axes": AttrSpec("ints", dsl_name="axis")}

register("matmul", 2, _infer_matmul, traits=("linear",), onnx="MatMul")
# onnxruntime's Det is float32 only: float64 exports eliminate (compositions.determinant).
register("det", 1, _infer_det, traits=("fresh_result",), onnx="Det")
register("transpose", 1, _infer_transpose, {"perm": AttrSpec("ints")}, traits=("linear",))
register("reshape", 1, _infer_reshape, {"shape": AttrSpec("dims")}, traits=("linear",))
register("reshape_like", 2, _infer_reshape_like, traits=("linear",), operands=("x", "like"))
register("broadcast_to", 1, _infer_broadcast_to, {"shape": AttrSpec("dims")},
         traits=("linear",))
register("broadcast_like", 2, _infer_broadcast_like, traits=("linear",), operands=("x", "like"))
# fill broadcasts a scalar to a shape (the DSL's constructors).
register("fill", 1, _infer_fill, {"shape": AttrSpec("dims")},
         traits=("linear", "fresh_result"), operands=("value",))
register("unsqueeze", 1, _infer_unsqueeze, AXES_SPELLED_AXIS, traits=("linear",))
register("squeeze", 1, _infer_squeeze, AXES_SPELLED_AXIS, traits=("linear",))
register("concat", ONE_OR_MORE, _infer_concat, {"axis": AttrSpec("int", 0)}, traits=("linear",))
register("unconcat", ONE_OR_MORE, _infer_unconcat,
         {"axis": AttrSpec("int"), "index": AttrSpec("int")}, traits=("linear",),
         operands=("whole", "parts"))
register("slice", 1, _infer_slice, SLICE, traits=("linear",))
register("unslice", 2, _infer_unslice, SLICE, traits=("linear",), operands=("sliced", "like"))
register("take", 2, _infer_take, {"axis": AttrSpec("int", 0)}, traits=("linear",),
         operands=("x", "indices"), index_input=AXIS_INDICES)
register("scatter_add", 3, _infer_scatter_add, {"axis": AttrSpec("int", 0)},
         traits=("linear",), operands=("updates", "indices", "like"))
# numpy's take_along_axis (without broadcasting), ONNX's GatherElements.
register("gather_elements", 2, _infer_gather_elements, {"axis": AttrSpec("int", 0)},
         traits=("linear", "fresh_result"), operands=("x", "indices"),
         index_input=AXIS_INDICES, builtin="take_along_axis")
register("scatter_elements_add", 3, _infer_scatter_elements_add, {"axis": AttrSpec("int", 0)},
         traits=("linear", "fresh_result"), operands=("updates", "indices", "like"))

# ---- nn
register("softmax", 1, _along_axis("softmax"), AXIS, traits=("fresh_result",))
register("log_softmax", 1, _along_axis("log_softmax"), AXIS, traits=("fresh_result",))
register("cross_entropy", 2, _infer_cross_entropy, traits=("loss", "fresh_result"),
         operands=("logits", "labels"), index_input=CLASS_LABELS)
register("mse", 2, _infer_mse, traits=("loss", "fresh_result"), operands=("pred", "target"))
register("one_hot", 1, _infer_one_hot,
         {"depth": AttrSpec("int", dsl_name="n"), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable", "fresh_result"), operands=("labels",),
         index_input=IndexOperand(0, lambda types, attrs: attrs["depth"],
                                  described="one_hot with {size} classes"))


# ---- convolution and pooling: NCHW, as ONNX and PyTorch lay them out. Every dim but the batch is
# a number; pads list each spatial axis' begin, then each one's end (ONNX's order). conv,
# conv_transpose and conv_weight_grad are the three faces of one bilinear form, <conv(x, w), g>,
# so each one's derivatives are the other two; max_unpool and avg_unpool are the transposes of
# the pools, and max_pool_take picks values where max_pool picks the maximum.
SPATIAL_NAMES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _spatial_operand(op, x, rank, operands="float"):
    """x as a convolution or pooling takes it: float (max pooling: or 8-bit integers) [batch,
    channels, *spatial], with numbers for every dim but the batch."""
    OPERAND_CHECKS[operands](op, x)
    if x.rank != rank + 2:
        layout = SPATIAL_NAMES.get(rank, f"{rank} spatial dims")
        raise OpTypeError(f"{op} over {rank} spatial axes takes [batch, channels, {layout}], "
                          f"got {x}")
    if not isinstance(x.shape[1], int) or UNKNOWN in x.shape[2:]:
        raise OpTypeError(f"{op} needs a fixed number of channels and a size or a symbol for "
                          f"each spatial dim, got {x}")


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
        padded = dims.add(size, pads[axis] + pads[rank + axis])
        span = dilation * (k - 1) + 1
        if isinstance(padded, int) and span > padded:
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
        full = dims.add(dims.mul(dims.sub(size, 1), stride), dilation * (k - 1) + 1 + extra)
        kept = dims.sub(full, pads[axis] + pads[rank + axis])
        if isinstance(kept, int) and kept < 1:
            raise OpTypeError(f"conv_transpose's pads {list(pads)} remove all of the {full} "
                              f"outputs along spatial axis {axis}")
        spatial.append(kept)
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


def _pool_shape(op, x, kernel, strides, pads, ceil_mode, operands="float"):
    rank = len(kernel)
    if rank < 1:
        raise OpTypeError(f"{op} needs a kernel size per spatial axis, got none")
    _spatial_operand(op, x, rank, operands)
    check_window_attrs(op, rank, strides, pads, kernel=kernel)
    if any(2 * p > k for p, k in zip(pads, kernel + kernel, strict=True)):
        raise OpTypeError(f"{op}'s pads must be at most half the kernel size, so that every "
                          f"window holds some of the input; got pads {list(pads)} for kernel "
                          f"{list(kernel)}")
    spatial = []
    for axis, (size, k, stride) in enumerate(zip(x.shape[2:], kernel, strides, strict=True)):
        padded = dims.add(size, pads[axis] + pads[rank + axis])
        if isinstance(padded, int) and k > padded:
            raise OpTypeError(f"{op}'s kernel ({k}) is larger than the padded input "
                              f"({padded}) along spatial axis "
                              f"{axis}")
        spatial.append(pool_output_dim(size, k, stride, pads[axis], pads[rank + axis],
                                       ceil_mode))
    return x.shape[:2] + tuple(spatial)


def _pool(op, operands="float"):
    def infer(x, kernel, strides, pads, ceil_mode, **divisor):  # avg_pool's count_include_pad
        return x.with_shape(_pool_shape(op, x, kernel, strides, pads, ceil_mode, operands))
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
    return x.with_shape(dims.add(d, b + e) for d, b, e in zip(x.shape, begins, ends, strict=True))


CONV = {"strides": AttrSpec("ints"), "pads": AttrSpec("ints"), "dilations": AttrSpec("ints"),
        "groups": AttrSpec("int", 1)}
POOL = {"kernel": AttrSpec("ints"), "strides": AttrSpec("ints"), "pads": AttrSpec("ints"),
        "ceil_mode": AttrSpec("bool", False)}
AVG_POOL = {**POOL, "count_include_pad": AttrSpec("bool", True)}

CONVOLVE = ("linear", "fresh_result")
register("conv", 2, _infer_conv, CONV, traits=CONVOLVE, operands=("x", "w"))
register("conv_transpose", 2, _infer_conv_transpose,
         {**CONV, "output_padding": AttrSpec("ints")}, traits=CONVOLVE, operands=("x", "w"))
register("conv_weight_grad", 2, _infer_conv_weight_grad, {"kernel": AttrSpec("ints"), **CONV},
         traits=CONVOLVE, operands=("x", "g"))
# Max pooling takes 8-bit integers too (ONNX's MaxPool of u8 images); averaging takes floats.
register("max_pool", 1, _pool("max_pool", "float_or_byte"), POOL, traits=("fresh_result",))
register("max_unpool", 2, _unpool("max_unpool"), POOL, traits=CONVOLVE, operands=("g", "x"))
register("max_pool_take", 2, _infer_max_pool_take, POOL, traits=CONVOLVE,
         operands=("values", "x"))
register("avg_pool", 1, _pool("avg_pool"), AVG_POOL, traits=CONVOLVE)
register("avg_unpool", 2, _unpool("avg_unpool"), AVG_POOL, traits=CONVOLVE, operands=("g", "x"))
# The DSL's pad(x, pads) takes F.pad's pairs and modes; constant_pad takes the op's attrs.
register("pad", 1, _infer_pad, {"pads": AttrSpec("ints"), "value": AttrSpec("float", 0.0)},
         traits=("linear",), builtin="constant_pad")


# grid_sample reads x [batch, channels, *spatial] at the points of grid [batch, *out, rank],
# each point's coordinates normalised to [-1, 1] and listed innermost axis first (x, y, z), as
# ONNX's GridSample and PyTorch's F.grid_sample take them.
GRID_SAMPLE_MODES = ("nearest", "linear", "cubic")
GRID_SAMPLE_PADDINGS = ("zeros", "border", "reflection")


def _infer_grid_sample(x, grid, mode, padding_mode, align_corners):
    _require_float("grid_sample", x)
    _same_dtype("grid_sample", x, grid)
    for attr, value, choices in [("mode", mode, GRID_SAMPLE_MODES),
                                 ("padding_mode", padding_mode, GRID_SAMPLE_PADDINGS)]:
        if value not in choices:
            listed = ", ".join(f"'{choice}'" for choice in choices)
            raise OpTypeError(f"grid_sample's {attr} is one of {listed}, not '{value}'")
    rank = x.rank - 2
    if rank < 1 or not all(isinstance(d, int) for d in x.shape[1:]):
        raise OpTypeError(f"grid_sample takes x [batch, channels, *spatial] with fixed "
                          f"channels and spatial sizes, got {x}")
    if grid.rank != rank + 2 or grid.shape[-1] != rank:
        raise OpTypeError(f"grid_sample of x {format_shape(x.shape)} needs a grid [batch, "
                          f"{', '.join(['out'] * rank)}, {rank}], got {format_shape(grid.shape)}")
    if not dims_may_equal(x.shape[0], grid.shape[0]):
        raise OpTypeError(f"grid_sample's x {format_shape(x.shape)} and grid "
                          f"{format_shape(grid.shape)} differ in batch size")
    return x.with_shape((grid.shape[0], x.shape[1]) + tuple(grid.shape[1:-1]))


register("grid_sample", 2, _infer_grid_sample,
         {"mode": AttrSpec("str", "linear"), "padding_mode": AttrSpec("str", "zeros"),
          "align_corners": AttrSpec("bool", False)},
         traits=("fresh_result",), operands=("x", "grid"))


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


FUSED = ("fused", "fresh_result")
register("relu_grad", 2, _infer_relu_grad, traits=("elementwise",) + FUSED, operands=("x", "g"))
register("cross_entropy_grad", 3, _infer_cross_entropy_grad, traits=FUSED,
         operands=("logits", "labels", "scale"), index_input=CLASS_LABELS)
# A cross-entropy and its gradient from one log_softmax (fuse.py): the forward's log-probs are
# the softmax the gradient needs, exp(log_probs).
register("nll", 2, _infer_cross_entropy, traits=("loss", "fused"),
         operands=("log_probs", "labels"), index_input=CLASS_LABELS)
register("cross_entropy_grad_from_log_probs", 3, _infer_cross_entropy_grad, traits=("fused",),
         operands=("log_probs", "labels", "scale"), index_input=CLASS_LABELS)
register("sum_squares", 1, _infer_sum_squares, traits=("reduction",) + FUSED)
register("gemm", 2, _infer_gemm,
         {"trans_a": AttrSpec("bool", False), "trans_b": AttrSpec("bool", False)},
         traits=("linear",) + FUSED)
# alpha * op(a) @ op(b) + beta * c: a param's update folded into its gradient's matrix product
# (passes/gemm_epilogue.py), written into c's buffer.
register("gemm_acc", 5, _infer_gemm_acc,
         {"trans_a": AttrSpec("bool", False), "trans_b": AttrSpec("bool", False)},
         traits=FUSED, operands=("a", "b", "c", "alpha", "beta"))


# grad(objective, wrt) in a model: a higher-order op that the expand_grad pass replaces by the
# backward graph it stands for, so no backend ever sees it ("expanded" trait).
register("grad", 2, _infer_grad, traits=("expanded",), operands=("objective", "wrt"))
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


register("train_or_eval", 2, _infer_train_or_eval, traits=("expanded",),
         operands=("train", "evaluate"))
