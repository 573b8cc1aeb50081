"""The op registry: one entry per op with its attribute schema, traits and type rule.

Each op's other rules live in the layer that owns them, keyed by the op's name: derivative rules
in `passes.autodiff_rules`, numpy kernels in `backends.numpy_kernels`, ONNX lowerings in
`backends.onnx_lowering`. `missing_rules()` style checks walk this registry to list the gaps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .shapes import (OpTypeError, broadcast_shapes, format_shape, matmul_shape, normalize_axes,
                     normalize_axis, reduced_shape)
from .types import DTYPES, UNKNOWN, TensorType, is_float, scalar

REQUIRED = object()

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
    num_inputs: int
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


def _unary(op, float_only=True):
    def infer(x):
        (_require_float if float_only else _require_numeric)(op, x)
        return x
    return infer


def _binary(op, result_dtype=None, numeric=True):
    def infer(a, b):
        dtype = _same_dtype(op, a, b)
        if numeric:
            _require_numeric(op, a)
        return TensorType(result_dtype or dtype, broadcast_shapes(a.shape, b.shape))
    return infer


def _reduction(op):
    def infer(x, axes, keepdims):
        _require_numeric(op, x)
        return x.with_shape(reduced_shape(x.shape, axes, keepdims))
    return infer


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


def _infer_softmax(x, axis):
    _require_float("softmax", x)
    normalize_axis(axis, x.rank)
    return x


def _infer_cross_entropy(logits, labels):
    _require_float("cross_entropy", logits)
    if labels.dtype != "i64":
        raise OpTypeError(f"cross_entropy needs i64 class labels, got {labels}")
    if logits.rank == 0 or labels.rank != logits.rank - 1:
        raise OpTypeError(f"cross_entropy needs logits [..., classes] and labels [...], got "
                          f"logits {format_shape(logits.shape)} and labels "
                          f"{format_shape(labels.shape)}")
    if not all(a == b or UNKNOWN in (a, b) for a, b in zip(logits.shape, labels.shape)):
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
    return TensorType(dtype, labels.shape + (depth,))


def _infer_broadcast_like(x, like):
    shape = broadcast_shapes(x.shape, like.shape)
    if shape != like.shape:
        raise OpTypeError(f"cannot broadcast {format_shape(x.shape)} to "
                          f"{format_shape(like.shape)}")
    return x.with_shape(like.shape)


def _infer_unsqueeze(x, axes):
    rank = x.rank + len(axes)
    inserted = normalize_axes(axes, rank)
    dims = iter(x.shape)
    return x.with_shape(1 if i in inserted else next(dims) for i in range(rank))


def _infer_numel(x, axes, dtype):
    normalize_axes(axes, x.rank)
    return scalar(dtype)


def _infer_constant(value, dtype):
    return scalar(dtype)


def _infer_cast(x, dtype):
    return x.with_dtype(dtype)


AXES = {"axes": AttrSpec("axes", None), "keepdims": AttrSpec("bool", False)}

for _name in ("exp", "log", "relu", "sigmoid", "tanh"):
    register(_name, 1, _unary(_name), traits=("elementwise",))
register("neg", 1, _unary("neg", float_only=False), traits=("elementwise", "linear"))
for _name in ("add", "sub"):
    register(_name, 2, _binary(_name), traits=("elementwise", "linear"))
for _name in ("mul", "div", "pow"):
    register(_name, 2, _binary(_name), traits=("elementwise",))
for _name in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal"):
    register(_name, 2, _binary(_name, result_dtype="bool", numeric=False),
             traits=("elementwise", "comparison", "nondifferentiable"))
register("where", 3, _infer_where, traits=("elementwise",))
register("cast", 1, _infer_cast, {"dtype": AttrSpec("dtype")}, traits=("elementwise",))
register("constant", 0, _infer_constant,
         {"value": AttrSpec("float"), "dtype": AttrSpec("dtype")}, traits=("constant",))
register("matmul", 2, _infer_matmul, traits=("linear",))
register("transpose", 1, _infer_transpose, {"perm": AttrSpec("ints")}, traits=("linear",))
register("sum", 1, _reduction("sum"), AXES, traits=("reduction", "linear"))
register("mean", 1, _reduction("mean"), AXES, traits=("reduction", "linear"))
register("softmax", 1, _infer_softmax, {"axis": AttrSpec("int", -1)})
register("cross_entropy", 2, _infer_cross_entropy, traits=("loss",),
         index_input=(1, lambda types, attrs: types[0].shape[-1]))
register("mse", 2, _infer_mse, traits=("loss",))
register("one_hot", 1, _infer_one_hot,
         {"depth": AttrSpec("int"), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable",),
         index_input=(0, lambda types, attrs: attrs["depth"]))
register("broadcast_like", 2, _infer_broadcast_like, traits=("linear",))
register("unsqueeze", 1, _infer_unsqueeze, {"axes": AttrSpec("ints")}, traits=("linear",))
register("numel", 1, _infer_numel,
         {"axes": AttrSpec("axes", None), "dtype": AttrSpec("dtype", "f32")},
         traits=("nondifferentiable",))
