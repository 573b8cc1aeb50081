"""The DSL's built-in functions: how a call's arguments map onto an IR op's inputs and attrs.

An op's own built-in comes from its registry entry (`OpDef.builtin`, with its operands and
attrs): an op needs nothing written here. The entries written here are compositions of ops
(their derivatives then follow from the parts): `stack`, `silu` (or `swish`), `elu`, `var`,
`std`, `tril`, `triu`, `einsum` (matrix products), `layer_norm`, `rms_norm`, `instance_norm`,
`group_norm`, `dropout`, `binary_cross_entropy_with_logits`, `cross_entropy` with probability
targets, and the constructors `zeros`, `ones` and `full` (a fill op), `eye` (from arange),
`zeros_like` and `ones_like` (a broadcast constant). The convolution and pooling built-ins
compose too: the PyTorch-style options become one op's attrs (and a bias an add),
`global_avg_pool` is a mean, `flatten` a reshape, and `pad`'s reflect and edge modes are
slices concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ir import compositions, dims
from ..ir.einsum import einsum
from ..ir.ops import ONE_OR_MORE, OPS, REQUIRED, OpDef
from ..ir.shapes import shapes_may_equal
from ..ir.types import DTYPES

NO_DEFAULT = object()


def _axes(axis):
    """`axis=1`, `axis=(0, 2)` or `axis=none` as the IR's axes attribute."""
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, tuple)):
        raise TypeError("axis must be an integer or a tuple of integers")
    return (axis,) if isinstance(axis, int) else tuple(axis)


def _ints(name):
    def convert(value):
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if isinstance(value, tuple) and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in value):
            return value
        raise TypeError(f"{name} must be an integer or a tuple of integers")
    return convert


def _int(name):
    def convert(value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an integer")
        return value
    return convert


def _float(name):
    def convert(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number")
        return float(value)
    return convert


def _size(name):
    def convert(value):
        if isinstance(value, str):  # a symbolic dim
            raise TypeError(f"{value} is a symbolic dim, known only when the model runs, but "
                            f"{name} must be known when it compiles; bind it (--dim {value}=N) "
                            f"or give a number")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(f"{name} must be a positive integer, not {value!r}")
        return value
    return convert


def _dim(name):
    """A size that may be symbolic: `S`, `S-1`, `4`, `0` (nothing)."""
    def convert(value):
        if dims.is_symbolic(value):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"{name} must be an integer of 0 or more or a dim, not {value!r}")
        return value
    return convert


def _dims(name):
    """Sizes, -1 and 0 as a reshape takes them, and dims (`(B, S*H, -1)`), as a tuple."""
    def convert(value):
        items = value if isinstance(value, tuple) else (value,)
        if not all(dims.is_symbolic(v) or isinstance(v, int) and not isinstance(v, bool)
                   for v in items):
            raise TypeError(f"{name} must be an integer, a dim or a tuple of them")
        return items
    return convert


def _shape(value):
    """`3`, `(B, 4)`, `(B, S-1)`: sizes and symbolic dims (a SymbolicDim, a str, for B; a
    DimExpr for S-1), as a tuple."""
    shape = value if isinstance(value, tuple) else (value,)
    shown = f"({', '.join(map(_shown, shape))}{',' if len(shape) == 1 else ''})"
    for dim in shape:
        if dims.is_symbolic(dim):
            continue
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"a shape holds sizes and dim names, not {_shown(dim)} as in "
                            f"{shown}")
        if isinstance(dim, int) and dim < 0:
            raise TypeError(f"shape {shown} has a size of {dim}; sizes are 0 or more")
    return shape


@dataclass(frozen=True)
class DTypeName:
    """A dtype named as a value, as in `zeros((B, 4), dtype=f64)`."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class StringLiteral:
    """A string given as an option of a call, as in `conv2d(x, w, padding="same")`."""

    text: str

    def __str__(self) -> str:
        return f'"{self.text}"'

    __repr__ = __str__


def _choice(name, *choices):
    def convert(value):
        if not isinstance(value, StringLiteral) or value.text not in choices:
            listed = ", ".join(f'"{choice}"' for choice in choices)
            raise TypeError(f"{name} must be one of {listed}, not {_shown(value)}")
        return value.text
    return convert


def _shown(value) -> str:
    """An option's value as the DSL writes it."""
    return "none" if value is None else str(value)


def _dtype(value):
    if value is None or isinstance(value, DTypeName):
        return None if value is None else value.name
    raise TypeError(f"dtype must be one of {', '.join(DTYPES)}, not {value!r}")


def _bool(name):
    def convert(value):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false")
        return value
    return convert


@dataclass(frozen=True)
class Builtin:
    op: str | None
    tensors: tuple[str, ...]
    # DSL option name -> (default, converter to the IR attribute value, IR attribute name)
    options: dict = field(default_factory=dict)
    # Every positional argument is a tensor input (`concat(a, b, c, axis=1)`).
    variadic: bool = False
    # Options that come before the tensors among the positional arguments (`full(shape, value)`),
    # or after the first `tensors_before_options` of them (`group_norm(x, groups, weight, bias)`).
    leading_options: tuple[str, ...] = ()
    tensors_before_options: int = 0
    # Trailing tensors that may be left out or given as `none` (conv2d's bias); a composition
    # then gets its own default for them.
    optional: tuple[str, ...] = ()
    # For a composition: compose(ops, *inputs, **attrs) -> Value, where ops.emit(op, *inputs,
    # **attrs) and ops.constant(value, like) add nodes, and ops.error(message) reports one.
    compose: Callable | None = None

    @property
    def params(self) -> tuple[str, ...]:
        rest = tuple(name for name in self.options if name not in self.leading_options)
        split = self.tensors_before_options
        return self.tensors[:split] + self.leading_options + self.tensors[split:] + rest


def _option(default, convert: Callable, attr: str):
    return (default, convert, attr)


BUILTINS: dict[str, Builtin] = {}


def builtin(name, op, tensors, options=None, **kind):
    BUILTINS[name] = Builtin(op, tuple(tensors), dict(options or {}), **kind)


def composite(name, tensors, options=None, **kind):
    """Register the decorated function as a built-in made of several ops."""
    def register(compose):
        builtin(name, None, tensors, options, compose=compose, **kind)
        return compose
    return register


# ---- compositions -----------------------------------------------------------------------------

@composite("stack", ("xs",), {"axis": _option(0, _int("axis"), "axis")}, variadic=True)
def _stack(ops, *xs, axis):
    return ops.emit("concat", *(ops.emit("unsqueeze", x, axes=(axis,)) for x in xs), axis=axis)


composite("cross_entropy", ("logits", "labels"))(
    compositions.cross_entropy)


composite("binary_cross_entropy_with_logits", ("logits", "targets"))(
    compositions.binary_cross_entropy_with_logits)


composite("layer_norm", ("x", "gamma", "beta"),
          {"axis": _option(-1, _axes, "axes"), "eps": _option(1e-5, _float("eps"), "eps")})(
    compositions.layer_norm)


EPS_OPTION = {"eps": _option(1e-5, _float("eps"), "eps")}
composite("rms_norm", ("x", "weight"), {**EPS_OPTION, "axis": _option(-1, _axes, "axes")})(
    compositions.rms_norm)
composite("instance_norm", ("x", "weight", "bias"), EPS_OPTION)(compositions.instance_norm)
composite("group_norm", ("x", "weight", "bias"),
          {"groups": _option(NO_DEFAULT, _size("groups"), "groups"), **EPS_OPTION},
          leading_options=("groups",), tensors_before_options=1)(compositions.group_norm)


for _name in ("silu", "swish"):
    composite(_name, ("x",))(compositions.silu)


composite("elu", ("x",), {"alpha": _option(1.0, _float("alpha"), "alpha")})(compositions.elu)


STATISTIC_OPTIONS = {"axis": _option(None, _axes, "axes"),
                     "keepdims": _option(False, _bool("keepdims"), "keepdims"),
                     "correction": _option(0.0, _float("correction"), "correction")}
composite("var", ("x",), STATISTIC_OPTIONS)(compositions.variance)
composite("std", ("x",), STATISTIC_OPTIONS)(compositions.standard_deviation)


@composite("tril", ("x",), {"k": _option(0, _int("k"), "k")})
def _tril(ops, x, k):
    return compositions.triangle(ops, x, k, upper=False)


@composite("triu", ("x",), {"k": _option(0, _int("k"), "k")})
def _triu(ops, x, k):
    return compositions.triangle(ops, x, k, upper=True)


SHAPE_OPTION = {"shape": _option(NO_DEFAULT, _shape, "shape")}


def _dtype_option(default):
    return {"dtype": _option(default, _dtype, "dtype")}


def _cast_to(ops, value, dtype):
    return value if dtype is None or value.type.dtype == dtype else \
        ops.emit("cast", value, dtype=dtype)


@composite("full", ("value",), {**SHAPE_OPTION, **_dtype_option(None)},
           leading_options=("shape",))
def _full(ops, value, shape, dtype=None):
    """The scalar `value` in a tensor of `shape` and of `dtype` (default: the value's; a
    number's is f32). A symbolic dim's size is read at run time off the first model input
    whose type declares it."""
    if value.type.rank:
        ops.error(f"the value must be a scalar, not {value.type}")
    return ops.emit("fill", _cast_to(ops, value, dtype), shape=shape)


@composite("zeros", (), {**SHAPE_OPTION, **_dtype_option(DTypeName("f32"))})
def _zeros(ops, shape, dtype):
    return _full(ops, ops.emit("constant", value=0.0, dtype=dtype), shape)


@composite("ones", (), {**SHAPE_OPTION, **_dtype_option(DTypeName("f32"))})
def _ones(ops, shape, dtype):
    return _full(ops, ops.emit("constant", value=1.0, dtype=dtype), shape)


@composite("eye", (), {"n": _option(NO_DEFAULT, _size("n"), "n"),
                       **_dtype_option(DTypeName("f32"))})
def _eye(ops, n, dtype):
    indices = ops.emit("arange", n=n)
    diagonal = ops.emit("equal", ops.emit("unsqueeze", indices, axes=(1,)), indices)
    return ops.emit("cast", diagonal, dtype=dtype)


@composite("zeros_like", ("x",))
def _zeros_like(ops, x):
    return ops.emit("broadcast_like", ops.constant(0.0, x), x)


@composite("ones_like", ("x",))
def _ones_like(ops, x):
    return ops.emit("broadcast_like", ops.constant(1.0, x), x)


@composite("jvp", ("y", "x", "tangent"))
def _jvp(ops, y, x, tangent):
    """J·tangent, the derivative of y along `tangent` at x, from two reverse passes: u -> uᵀJ
    is linear, so the gradient of <uᵀJ, tangent> with respect to u is J·tangent at any u."""
    if tangent.type.dtype != x.type.dtype or not shapes_may_equal(tangent.type.shape,
                                                                  x.type.shape):
        ops.error(f"the tangent must be shaped like what it perturbs: {x.type}, not "
                  f"{tangent.type}")
    u = _zeros_like(ops, y)
    pullback = ops.emit("grad", ops.emit("sum", ops.emit("mul", y, u)), x)
    return ops.emit("grad", ops.emit("sum", ops.emit("mul", pullback, tangent)), u)
composite("batch_norm", ("x", "gamma", "beta", "running_mean", "running_var"),
          {"momentum": _option(0.1, _float("momentum"), "momentum"),
           "eps": _option(1e-5, _float("eps"), "eps")})(
    compositions.batch_norm)


@composite("dropout", ("x",), {"p": _option(NO_DEFAULT, _float("p"), "p")})
def _dropout(ops, x, p):
    # The mask is a value, so the backward pass multiplies by the very mask the forward used.
    return ops.emit("mul", x, ops.emit("dropout_mask", x, p=p))


# ---- convolution and pooling (NCHW); the option names and positions are PyTorch's -------------

def _optional_ints(name):
    convert = _ints(name)
    return lambda value: None if value is None else convert(value)


def _padding(value):
    if isinstance(value, StringLiteral) and value.text in ("same", "valid"):
        return value.text
    try:
        return _ints("padding")(value)
    except TypeError:
        raise TypeError(f'padding must be an integer, a tuple of integers, "same" or "valid", '
                        f"not {_shown(value)}") from None


def _per_axis(ops, name, values, rank):
    """An option given once for every spatial axis or once per axis, as one value per axis."""
    if len(values) not in (1, rank):
        ops.error(f"{name} takes one integer or {rank} (one per spatial axis), got {values}")
    return values * rank if len(values) == 1 else values


def _conv_pads(ops, padding, kernel, strides, dilations):
    """The conv op's pads (each axis' begin, then each one's end) for a padding option."""
    rank = len(kernel)
    if padding == "valid":
        return (0,) * 2 * rank
    if padding == "same":
        if any(s != 1 for s in strides):
            ops.error(f'padding="same" needs stride 1, got stride {strides}')
        if not all(isinstance(k, int) for k in kernel):
            ops.error(f"the kernel's size must be known for padding=\"same\", got {kernel}")
        # As PyTorch does, an odd total leaves the extra pad at the end.
        totals = [d * (k - 1) for k, d in zip(kernel, dilations, strict=True)]
        return tuple(t // 2 for t in totals) + tuple(t - t // 2 for t in totals)
    return _per_axis(ops, "padding", padding, rank) * 2


def _with_bias(ops, y, bias, rank):
    if bias is None:
        return y
    channels = y.type.shape[1]
    if bias.type.shape != (channels,):
        ops.error(f"bias must be [{channels}], one value per output channel, got {bias.type}")
    return ops.emit("add", y, ops.emit("unsqueeze", bias, axes=tuple(range(1, rank + 1))))


def _conv_weight(ops, w, rank, layout):
    if w.type.rank != rank + 2:
        kernel = ", ".join(("kH", "kW")[-rank:]) if rank <= 2 else f"{rank} kernel sizes"
        ops.error(f"w must be [{layout}, {kernel}], got {w.type}")
    return w.type.shape[2:]


CONV_OPTIONS = {"stride": _option(1, _ints("stride"), "stride"),
                "padding": _option(0, _padding, "padding"),
                "dilation": _option(1, _ints("dilation"), "dilation"),
                "groups": _option(1, _int("groups"), "groups")}


def _conv(rank):
    def compose(ops, x, w, bias=None, *, stride, padding, dilation, groups):
        kernel = _conv_weight(ops, w, rank, "out_channels, in_channels / groups")
        strides = _per_axis(ops, "stride", stride, rank)
        dilations = _per_axis(ops, "dilation", dilation, rank)
        y = ops.emit("conv", x, w, strides=strides, dilations=dilations, groups=groups,
                     pads=_conv_pads(ops, padding, kernel, strides, dilations))
        return _with_bias(ops, y, bias, rank)
    return compose


def _conv_transpose(rank):
    def compose(ops, x, w, bias=None, *, stride, padding, output_padding, groups, dilation):
        _conv_weight(ops, w, rank, "in_channels, out_channels / groups")
        y = ops.emit("conv_transpose", x, w, strides=_per_axis(ops, "stride", stride, rank),
                     pads=_per_axis(ops, "padding", padding, rank) * 2,
                     output_padding=_per_axis(ops, "output_padding", output_padding, rank),
                     dilations=_per_axis(ops, "dilation", dilation, rank), groups=groups)
        return _with_bias(ops, y, bias, rank)
    return compose


POOL_OPTIONS = {"kernel": _option(NO_DEFAULT, _ints("kernel"), "kernel"),
                "stride": _option(None, _optional_ints("stride"), "stride"),
                "padding": _option(0, _ints("padding"), "padding"),
                "ceil_mode": _option(False, _bool("ceil_mode"), "ceil_mode")}
AVG_POOL_OPTIONS = {**POOL_OPTIONS, "count_include_pad": _option(
    True, _bool("count_include_pad"), "count_include_pad")}


def _pool(op, rank):
    """max_pool2d(x, kernel, stride=kernel, padding=0, ceil_mode=false) and the like."""
    def compose(ops, x, kernel, stride, padding, ceil_mode, **divisor):
        kernel = _per_axis(ops, "kernel", kernel, rank)
        strides = kernel if stride is None else _per_axis(ops, "stride", stride, rank)
        return ops.emit(op, x, kernel=kernel, strides=strides, ceil_mode=ceil_mode,
                        pads=_per_axis(ops, "padding", padding, rank) * 2, **divisor)
    return compose


for _rank in (1, 2):
    composite(f"conv{_rank}d", ("x", "w", "bias"), CONV_OPTIONS, optional=("bias",))(
        _conv(_rank))
    composite(f"conv_transpose{_rank}d", ("x", "w", "bias"), {
        "stride": CONV_OPTIONS["stride"],
        "padding": _option(0, _ints("padding"), "padding"),
        "output_padding": _option(0, _ints("output_padding"), "output_padding"),
        "groups": CONV_OPTIONS["groups"], "dilation": CONV_OPTIONS["dilation"],
    }, optional=("bias",))(_conv_transpose(_rank))
    composite(f"max_pool{_rank}d", ("x",), POOL_OPTIONS)(_pool("max_pool", _rank))
    composite(f"avg_pool{_rank}d", ("x",), AVG_POOL_OPTIONS)(_pool("avg_pool", _rank))


@composite("global_avg_pool", ("x",))
def _global_avg_pool(ops, x):
    """The mean over the spatial axes, kept as size 1: [N, C, 1, 1], as PyTorch's
    adaptive_avg_pool2d(x, 1) and ONNX's GlobalAveragePool give."""
    if x.type.rank < 3:
        ops.error(f"x must be [batch, channels, *spatial], got {x.type}")
    return ops.emit("mean", x, axes=tuple(range(2, x.type.rank)), keepdims=True)


@composite("flatten", ("x",), {"start_axis": _option(1, _int("start_axis"), "start_axis")})
def _flatten(ops, x, start_axis):
    """The axes from start_axis on as one (a reshape that copies the axes before it, so a
    symbolic batch stays)."""
    if not -x.type.rank <= start_axis < x.type.rank:
        ops.error(f"start_axis {start_axis} is out of range for {x.type}")
    return ops.emit("reshape", x, shape=(0,) * (start_axis % x.type.rank) + (-1,))


PAD_MODES = ("constant", "reflect", "edge", "replicate")


composite("pad", ("x",), {"pads": _option(NO_DEFAULT, _ints("pads"), "pads"),
                          "mode": _option(StringLiteral("constant"), _choice("mode", *PAD_MODES),
                                          "mode"),
                          "value": _option(0.0, _float("value"), "value")})(
    compositions.pad)


def _text(name):
    def convert(value):
        if not isinstance(value, StringLiteral):
            raise TypeError(f'{name} must be a string, as in "bij,bjk->bik", not '
                            f"{_shown(value)}")
        return value.text
    return convert


composite("einsum", ("operands",), {"spec": _option(NO_DEFAULT, _text("spec"), "spec")},
          variadic=True, leading_options=("spec",))(einsum)


@composite("arange", (), {"n": _option(NO_DEFAULT, _dim("n"), "n"),
                          **_dtype_option(DTypeName("i64"))})
def _arange(ops, n, dtype):
    return _cast_to(ops, ops.emit("arange", n=n), dtype)


# ---- ops by their IR names ----------------------------------------------------------------------
# Every op whose registry entry names a DSL built-in that no composition above defines: its
# operands are the tensors and its attrs the options, under the registry's names (or an
# attr's dsl_name) and with its defaults. The decompiler (ir/dsl_printer.py) writes these calls.

def _optional_int(name):
    convert = _int(name)
    return lambda value: None if value is None else convert(value)


OPTION_CONVERTERS = {"int": _int, "float": _float, "bool": _bool, "ints": _ints, "dim": _dim,
                     "dims": _dims,
                     "axes": lambda name: _axes, "dtype": lambda name: _dtype}


def _op_option(op: OpDef, attr: str):
    spec = op.attrs[attr]
    name = spec.dsl_name or attr
    if attr == "seed" and "stochastic" in op.traits:
        # Left out, a seed comes from the op's place in the graph, as dropout's does.
        return name, _option(None, _optional_int(name), attr)
    default = NO_DEFAULT if spec.default is REQUIRED else spec.default
    if spec.kind == "dtype" and default is not NO_DEFAULT:
        default = DTypeName(default)
    return name, _option(default, OPTION_CONVERTERS[spec.kind](name), attr)


for _op in OPS.values():
    if _op.builtin is not None and _op.builtin not in BUILTINS:
        builtin(_op.builtin, _op.name, _op.operands,
                dict(_op_option(_op, attr) for attr in _op.attrs),
                variadic=_op.num_inputs is ONE_OR_MORE)


@composite("update", ("state", "value"))
def _update(ops, state, value):
    """`value` as what training sets `state` to after each step (as batch_norm moves its
    running statistics); the model outputs it as `<state>.next`. Returns `value`."""
    if value.type != state.type:
        ops.error(f"a state's next value has its type, {state.type}, not {value.type}")
    ops.update_state(state, value)
    return value


# Casts: `f32(x)` converts x to f32, one for every dtype.
CASTS = DTYPES
