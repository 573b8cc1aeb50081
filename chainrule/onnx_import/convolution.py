"""The ONNX op table, convolution and pooling (NCHW, as chainrule's ops are)."""
from __future__ import annotations

import itertools
import math

import numpy as np

from ..ir.shapes import OpTypeError, check_window_attrs
from ..ir.types import numpy_dtype
from .context import Unsupported, converter

# Pooling by slices emits a slice per position in the window: a window larger than this is
# not a model's pooling, and its graph would take minutes to run.
MAX_SLICED_WINDOW = 4096


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


def _check_window(ctx, rank, strides, pads, dilations=None, kernel=None):
    """The window attributes checked as chainrule's ops check them, before they are used here."""
    try:
        check_window_attrs(ctx.node.op_type, rank, strides, pads, dilations, kernel)
    except OpTypeError as error:
        raise Unsupported(str(error)) from None


def _strides_and_dilations(ctx, x, kernel):
    """The strides and dilations of a window `kernel` over x's spatial axes."""
    rank = len(kernel)
    ctx.require_rank(x, rank + 2, rank + 2)
    strides = tuple(ctx.attr("strides") or (1,) * rank)
    dilations = tuple(ctx.attr("dilations") or (1,) * rank)
    _check_window(ctx, rank, strides, (0,) * 2 * rank, dilations, kernel)
    return strides, dilations


def _window(ctx, x, kernel):
    strides, dilations = _strides_and_dilations(ctx, x, kernel)
    pads = _pads(ctx, x, kernel, strides, dilations)
    _check_window(ctx, len(kernel), strides, pads)
    return strides, dilations, pads


def _kernel(ctx, w):
    ctx.require_rank(w, 3, what="weight")
    shape = w.type.shape[2:]
    if not all(isinstance(d, int) for d in shape):
        raise Unsupported(f"{ctx.node.op_type} with the weight {w.type} (its kernel sizes must "
                          f"be known)")
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and tuple(kernel) != tuple(shape):
        raise Unsupported(f"kernel_shape {list(kernel)} disagrees with the weight's "
                          f"{list(shape)}")
    return tuple(shape)


def _with_bias(ctx, y, index):
    if not ctx.has_input(index):
        return y
    bias = ctx.emit("unsqueeze", ctx.input(index), axes=tuple(range(1, y.type.rank - 1)))
    return ctx.emit("add", y, bias)


def conv_by_attrs(ctx, x, w):
    """x convolved with w by the node's kernel_shape, strides, pads, auto_pad, dilations and
    group (Conv's attributes, which ConvInteger and QLinearConv share)."""
    strides, dilations, pads = _window(ctx, x, _kernel(ctx, w))
    return ctx.emit("conv", x, w, strides=strides, pads=pads, dilations=dilations,
                    groups=ctx.attr("group", 1))


@converter("Conv")
def _conv(ctx):
    return [_with_bias(ctx, conv_by_attrs(ctx, ctx.input(0), ctx.input(1)), 2)]


@converter("ConvTranspose")
def _conv_transpose(ctx):
    """With output_shape or auto_pad SAME, the pads and output padding that give the shape
    asked for (ONNX's rules: SAME_UPPER puts the odd pad at the end)."""
    x, w = ctx.input(0), ctx.input(1)
    kernel = _kernel(ctx, w)
    rank = len(kernel)
    auto_pad = ctx.require_attr("auto_pad", ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"),
                                "NOTSET")
    strides, dilations = _strides_and_dilations(ctx, x, kernel)
    output_padding = list(ctx.require_length(ctx.attr("output_padding") or (0,) * rank, rank,
                                             "output_padding"))
    pads = list(ctx.attr("pads") or (0,) * 2 * rank)
    _check_window(ctx, rank, strides, pads)
    output_shape = ctx.attr("output_shape")
    if output_shape is not None:
        output_shape = ctx.require_length(output_shape, rank, "output_shape")
    if auto_pad == "VALID":
        pads = [0] * 2 * rank
    if auto_pad.startswith("SAME") or output_shape is not None:  # from the known sizes
        sizes = _spatial_sizes(ctx, x)
        full = [s * (size - 1) + (k - 1) * d + 1 for size, k, s, d in
                zip(sizes, kernel, strides, dilations, strict=True)]
    if auto_pad.startswith("SAME"):
        wanted = output_shape or [size * s for size, s in zip(sizes, strides, strict=True)]
        for axis in range(rank):
            total = full[axis] + output_padding[axis] - wanted[axis]
            if total < 0:
                raise Unsupported(f"ConvTranspose to the output shape {list(wanted)}")
            small, large = total // 2, total - total // 2
            pads[axis], pads[rank + axis] = (small, large) if auto_pad == "SAME_UPPER" \
                else (large, small)
    elif output_shape is not None:  # what the pads leave, then output padding at the end
        output_padding = [wanted - (size - pads[axis] - pads[rank + axis]) for axis,
                          (wanted, size) in enumerate(zip(output_shape, full, strict=True))]
    y = ctx.emit("conv_transpose", x, w, strides=strides, pads=tuple(pads),
                 dilations=dilations, groups=ctx.attr("group", 1),
                 output_padding=tuple(output_padding))
    return [_with_bias(ctx, y, 2)]


def _pool(ctx, op, count_include_pad=False):
    """max_pool or avg_pool; windows of strided slices where those ops do not reach."""
    x = ctx.input(0)
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, dilations, pads = _window(ctx, x, kernel)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if _by_slices(kernel, dilations, pads):
        reduction = "max" if op == "max_pool" else "mean"
        return _pool_by_slices(ctx, x, reduction, kernel, strides, dilations, pads, ceil_mode,
                               count_include_pad)
    extra = {"count_include_pad": count_include_pad} if op == "avg_pool" else {}
    return ctx.emit(op, x, kernel=kernel, strides=strides, pads=pads, ceil_mode=ceil_mode,
                    **extra)


def _by_slices(kernel, dilations, pads) -> bool:
    """Whether pooling needs slices: chainrule's pools take no dilations, nor pads over half
    the kernel (a window then may hold no input)."""
    return any(d != 1 for d in dilations) or any(2 * p > k for p, k in
                                                  zip(pads, kernel + kernel, strict=True))


def _pool_by_slices(ctx, x, reduction, kernel, strides, dilations, pads, ceil_mode,
                    count_include_pad):
    """Pooling as ONNX defines it, by hand: x padded, one strided slice per position in the
    window, combined by max or sum (the mean divides by a constant count of the positions
    each window counts: the input's, and the pads' with count_include_pad)."""
    rank = len(kernel)
    if math.prod(kernel) > MAX_SLICED_WINDOW:
        raise Unsupported(f"pooling with kernel {list(kernel)} and dilations {list(dilations)} "
                          f"(chainrule pools such windows by a slice per position, at most "
                          f"{MAX_SLICED_WINDOW:,})")
    sizes = _spatial_sizes(ctx, x)
    outputs, ends = [], []
    for axis, (size, k, stride, dilation) in enumerate(zip(sizes, kernel, strides, dilations,
                                                            strict=True)):
        span, padded = (k - 1) * dilation + 1, size + pads[axis] + pads[rank + axis]
        count = (padded - span) / stride + 1
        output = math.ceil(count) if ceil_mode else math.floor(count)
        if ceil_mode and (output - 1) * stride >= size + pads[axis]:
            output -= 1  # the last window must start inside the input or its pads
        extra = (output - 1) * stride + span - padded
        if output < 1 or extra > 1:  # ONNX would shift the windows to share extra pads out
            raise Unsupported(f"pooling {x.type} with kernel {list(kernel)}, dilations "
                              f"{list(dilations)} and ceil_mode")
        outputs.append(output)
        ends.append(pads[rank + axis] + max(extra, 0))
    begins = list(pads[:rank])
    fill = -math.inf if reduction == "max" else 0.0
    padded = ctx.emit("pad", x, pads=(0, 0, *begins, 0, 0, *ends), value=fill)
    spatial = tuple(range(2, rank + 2))

    def window_part(array_slice, offsets):
        starts = tuple(o * d for o, d in zip(offsets, dilations, strict=True))
        stops = tuple(start + (n - 1) * s + 1 for start, n, s in
                      zip(starts, outputs, strides, strict=True))
        return array_slice(starts, stops)

    combine = "maximum" if reduction == "max" else "add"
    result = None
    for offsets in itertools.product(*(range(k) for k in kernel)):
        part = window_part(lambda starts, stops: ctx.emit(
            "slice", padded, starts=starts, ends=stops, axes=spatial, steps=tuple(strides)),
            offsets)
        result = part if result is None else ctx.emit(combine, result, part)
    if reduction != "mean":
        return result
    counted = np.zeros([b + n + e for b, n, e in zip(begins, sizes, ends, strict=True)])
    inside = tuple(slice(b, b + n) for b, n in zip(begins, sizes, strict=True))
    if count_include_pad:
        inside = tuple(slice(0, b + n + p) for b, n, p in
                       zip(begins, sizes, pads[rank:], strict=True))
    counted[inside] = 1.0
    counts = sum(window_part(lambda starts, stops: counted[tuple(
        slice(a, b, s) for a, b, s in zip(starts, stops, strides, strict=True))], offsets)
        for offsets in itertools.product(*(range(k) for k in kernel)))
    return ctx.emit("div", result, ctx.known_tensor(counts.astype(numpy_dtype(x.type.dtype)),
                                                    "window_counts"))


@converter("MaxPool")
def _max_pool(ctx):
    ctx.require_attr("storage_order", 0, 0)
    if ctx.output_used(1):
        raise Unsupported("MaxPool's Indices output")
    return [_pool(ctx, "max_pool")]


@converter("AveragePool")
def _average_pool(ctx):
    return [_pool(ctx, "avg_pool", count_include_pad=bool(ctx.attr("count_include_pad", 0)))]


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx):
    x = ctx.input(0)
    op = "mean" if ctx.node.op_type == "GlobalAveragePool" else "max"
    return [ctx.emit(op, x, axes=tuple(range(2, x.type.rank)), keepdims=True)]


@converter("LpPool")
def _lp_pool(ctx):
    """(sum of |x|^p over each window)^(1/p): an average over the window, padding included,
    times the window's size (or the sum by slices)."""
    x = ctx.input(0)
    p = ctx.positive_attr("p", 2)
    if ctx.attr("ceil_mode", 0):
        raise Unsupported("LpPool with ceil_mode (its last windows are partial)")
    powers = ctx.emit("pow", ctx.emit("abs", x), ctx.constant(p, x))
    kernel = tuple(ctx.attr("kernel_shape"))
    strides, dilations, pads = _window(ctx, x, kernel)
    if _by_slices(kernel, dilations, pads):
        total = _pool_by_slices(ctx, powers, "sum", kernel, strides, dilations, pads, False,
                                True)
    else:
        mean = ctx.emit("avg_pool", powers, kernel=kernel, strides=strides, pads=pads,
                        ceil_mode=False, count_include_pad=True)
        total = ctx.emit("mul", mean, ctx.constant(math.prod(kernel), x))
    return [ctx.emit("pow", total, ctx.constant(1.0 / p, x))]


@converter("MaxUnpool")
def _max_unpool(ctx):
    """Zeros of the unpooled shape with x written at its indices (MaxPool's flat positions in
    that whole tensor), then padded at the end to output_shape when one is given."""
    x, indices = ctx.input(0), ctx.input(1)
    kernel = tuple(ctx.attr("kernel_shape"))
    rank = len(kernel)
    strides = tuple(ctx.attr("strides") or (1,) * rank)
    pads = tuple(ctx.attr("pads") or (0,) * 2 * rank)
    ctx.require_rank(x, rank + 2, rank + 2)
    _check_window(ctx, rank, strides, pads, kernel=kernel)
    if not all(isinstance(d, int) for d in x.type.shape):
        raise Unsupported(f"MaxUnpool of {x.type} (the sizes must be known)")
    spatial = [(size - 1) * s + k - pads[axis] - pads[rank + axis] for axis, (size, k, s) in
               enumerate(zip(x.type.shape[2:], kernel, strides, strict=True))]
    shape = tuple(x.type.shape[:2]) + tuple(spatial)
    zeros = ctx.emit("broadcast_to", ctx.constant(0.0, x), shape=(math.prod(shape),))
    flat = ctx.emit("scatter_add", ctx.emit("reshape", x, shape=(-1,)),
                    ctx.emit("reshape", indices, shape=(-1,)), zeros, axis=0)
    y = ctx.emit("reshape", flat, shape=shape)
    wanted = ctx.static_ints(2, "MaxUnpool's output_shape")
    if wanted is None or tuple(wanted) == shape:
        return [y]
    if len(wanted) != len(shape) or any(w < s for w, s in zip(wanted, shape, strict=True)):
        raise Unsupported(f"MaxUnpool to the output shape {list(wanted)} from {list(shape)}")
    ends = tuple(w - s for w, s in zip(wanted, shape, strict=True))
    return [ctx.emit("pad", y, pads=(0,) * len(shape) + ends, value=0.0)]


@converter("Col2Im")
def _col2im(ctx):
    """Blocks [N, C * prod(block), L] summed into an image [N, C, *image]: scatter_add of
    every block element to its image position, computed here (the pads' positions go to one
    extra slot, dropped after)."""
    x = ctx.require_rank(ctx.input(0), 3, 3)
    block = ctx.static_ints(2, "Col2Im's block_shape")
    rank = len(block)
    image = ctx.require_length(ctx.static_ints(1, "Col2Im's image_shape"), rank,
                               "Col2Im's image_shape")
    strides = tuple(ctx.attr("strides") or (1,) * rank)
    dilations = tuple(ctx.attr("dilations") or (1,) * rank)
    pads = tuple(ctx.attr("pads") or (0,) * 2 * rank)
    _check_window(ctx, rank, strides, pads, dilations, kernel=block)
    if any(size < 1 for size in image):
        raise Unsupported(f"Col2Im to the image shape {list(image)}")
    columns, length = x.type.shape[1:]
    size, pixels = math.prod(block), math.prod(image)
    if not isinstance(columns, int) or columns % size:
        raise Unsupported(f"Col2Im of {x.type} in blocks {list(block)}")
    channels = columns // size
    counts = [(n + pads[axis] + pads[rank + axis] - d * (k - 1) - 1) // s + 1 for axis,
              (n, k, s, d) in enumerate(zip(image, block, strides, dilations, strict=True))]
    if length != math.prod(counts):
        raise Unsupported(f"Col2Im of {x.type}: {math.prod(counts)} blocks fit the image")
    # Position of (channel, offset in the block, block) along each axis of the image.
    offsets = np.indices(block).reshape(rank, 1, size, 1)
    starts = np.indices(counts).reshape(rank, 1, 1, -1)
    spacing = np.array(dilations).reshape(rank, 1, 1, 1)
    step = np.array(strides).reshape(rank, 1, 1, 1)
    begin = np.array(pads[:rank]).reshape(rank, 1, 1, 1)
    position = starts * step + offsets * spacing - begin  # [rank, 1, size, blocks]
    inside = np.all((position >= 0) & (position < np.array(image).reshape(rank, 1, 1, 1)),
                    axis=0)
    flat = np.ravel_multi_index(tuple(np.clip(position, 0, None)), image, mode="clip")
    target = np.arange(channels).reshape(channels, 1, 1) * pixels + flat  # [C, size, blocks]
    target = np.where(inside, target, channels * pixels).reshape(-1)
    slots = ctx.emit("fill", ctx.constant(0.0, x), shape=(x.type.shape[0], channels * pixels + 1))
    summed = ctx.emit("scatter_add", ctx.emit("reshape", x, shape=(0, -1)),
                      ctx.known_tensor(target, "col2im_positions"), slots, axis=1)
    kept = ctx.emit("slice", summed, starts=(0,), ends=(channels * pixels,), axes=(1,),
                    steps=(1,))
    return [ctx.emit("reshape", kept, shape=(0, channels, *image))]
