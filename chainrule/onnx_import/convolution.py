"""The ONNX op table, convolution and pooling (NCHW, as chainrule's ops are)."""
from __future__ import annotations

from .context import Unsupported, converter


def _spatial_sizes(ctx, x):
    sizes = x.type.shape[2:]
    if not all(isinstance(d, int) for d in sizes):
        raise Unsupported(f"auto_pad on the symbolic spatial dims of {x.type}")
    return sizes


def _pads(ctx, x, kernel, strides, dilations):
    """The explicit pads (begins, then ends), from `pads` or `auto_pad`."""
    rank = len(kernel)
    auto_pad = ctx.require_attr("auto_pad", ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"),
                                "NOTSET")
    pads = ctx.attr("pads")
    if auto_pad == "NOTSET":
        return tuple(pads) if pads is not None else (0,) * 2 * rank
    if auto_pad == "VALID":
        return (0,) * 2 * rank
    begins, ends = [], []
    for size, k, s, d in zip(_spatial_sizes(ctx, x), kernel, strides, dilations, strict=True):
        output = -(-size // s)
        total = max((output - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return tuple(begins) + tuple(ends)


def _window(ctx, x, kernel):
    rank = len(kernel)
    strides = tuple(ctx.attr("strides") or (1,) * rank)
    dilations = tuple(ctx.attr("dilations") or (1,) * rank)
    return strides, dilations, _pads(ctx, x, kernel, strides, dilations)


def _kernel(ctx, w_shape):
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(w_shape[2:]):
        raise Unsupported(f"kernel_shape {list(kernel)} disagrees with the weight's "
                          f"{list(w_shape[2:])}")
    return tuple(w_shape[2:])


def _with_bias(ctx, y, index):
    if not ctx.has_input(index):
        return y
    bias = ctx.emit("unsqueeze", ctx.input(index), axes=tuple(range(1, y.type.rank - 1)))
    return ctx.emit("add", y, bias)


@converter("Conv")
def _conv(ctx):
    x, w = ctx.input(0), ctx.input(1)
    strides, dilations, pads = _window(ctx, x, _kernel(ctx, w.type.shape))
    y = ctx.emit("conv", x, w, strides=strides, pads=pads, dilations=dilations,
                 groups=ctx.attr("group", 1))
    return [_with_bias(ctx, y, 2)]


@converter("ConvTranspose")
def _conv_transpose(ctx):
    x, w = ctx.input(0), ctx.input(1)
    if ctx.attr("output_shape") is not None:
        raise Unsupported("ConvTranspose's output_shape (give pads and output_padding)")
    kernel = _kernel(ctx, w.type.shape)
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported(f"ConvTranspose with auto_pad={ctx.attr('auto_pad')}")
    strides, dilations, pads = _window(ctx, x, kernel)
    output_padding = tuple(ctx.attr("output_padding") or (0,) * len(kernel))
    y = ctx.emit("conv_transpose", x, w, strides=strides, pads=pads, dilations=dilations,
                 groups=ctx.attr("group", 1), output_padding=output_padding)
    return [_with_bias(ctx, y, 2)]


def _pool(ctx, op, **extra):
    x = ctx.input(0)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, dilations, pads = _window(ctx, x, kernel)
    if any(d != 1 for d in dilations):
        raise Unsupported(f"pooling with dilations {list(dilations)}")
    return ctx.emit(op, x, kernel=kernel, strides=strides, pads=pads,
                    ceil_mode=bool(ctx.attr("ceil_mode", 0)), **extra)


@converter("MaxPool")
def _max_pool(ctx):
    ctx.require_attr("storage_order", 0, 0)
    if ctx.output_used(1):
        raise Unsupported("MaxPool's Indices output")
    return [_pool(ctx, "max_pool")]


@converter("AveragePool")
def _average_pool(ctx):
    return [_pool(ctx, "avg_pool",
                  count_include_pad=bool(ctx.attr("count_include_pad", 0)))]


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx):
    x = ctx.input(0)
    op = "mean" if ctx.node.op_type == "GlobalAveragePool" else "max"
    return [ctx.emit(op, x, axes=tuple(range(2, x.type.rank)), keepdims=True)]
