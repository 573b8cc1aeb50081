"""The ONNX op table, sampling an image at points: GridSample, AffineGrid's points,
RoiAlign's regions and DeformConv's moved taps."""
from __future__ import annotations

import functools
import itertools

import numpy as np

from ..ir import grid_sampling
from ..ir.ops import GRID_SAMPLE_MODES, GRID_SAMPLE_PADDINGS
from ..ir.types import numpy_dtype
from .context import Unsupported, converter

# Opsets 16 to 19 name the interpolating modes after the 2-D case.
GRID_SAMPLE_MODE_NAMES = {"bilinear": "linear", "bicubic": "cubic",
                          **{mode: mode for mode in GRID_SAMPLE_MODES}}


@converter("GridSample")
def _grid_sample(ctx):
    x, grid = ctx.input(0), ctx.input(1)
    mode = ctx.require_attr("mode", tuple(GRID_SAMPLE_MODE_NAMES), "linear")
    padding_mode = ctx.require_attr("padding_mode", GRID_SAMPLE_PADDINGS, "zeros")
    if x.type.rank < 3:
        raise Unsupported(f"GridSample of a {x.type.rank}-D input (it takes [N, C, *spatial])")
    return [ctx.emit("grid_sample", x, grid, mode=GRID_SAMPLE_MODE_NAMES[mode],
                     padding_mode=padding_mode, align_corners=bool(ctx.attr("align_corners", 0)))]


@converter("AffineGrid")
def _affine_grid(ctx):
    theta = ctx.input(0)
    size = ctx.static_ints(1, "AffineGrid's size")
    if len(size) not in (4, 5):
        raise Unsupported(f"AffineGrid of size {list(size)} (it takes [N, C, H, W] or "
                          f"[N, C, D, H, W])")
    return [grid_sampling.affine_grid(ctx, theta, size, bool(ctx.attr("align_corners", 0)))]


@converter("RoiAlign")
def _roi_align(ctx):
    """Each region's bins, each the mean (or max) of sampling_ratio² bilinear samples, as a
    composition: the samples' taps are computed from the regions when the model runs and read
    as rows of x by flat index. Its max mode takes, per sample, the largest of the four
    weighted corners rather than the interpolated value, as ONNX defines it."""
    x, regions, batch = ctx.input(0), ctx.input(1), ctx.input(2)
    ctx.require_rank(x, 4, 4)
    if not all(isinstance(d, int) for d in x.type.shape[1:]):
        raise Unsupported(f"RoiAlign of {x.type} (its channels and spatial sizes must be known)")
    ratio = ctx.attr("sampling_ratio", 0)
    if ratio < 1:
        raise Unsupported("RoiAlign with sampling_ratio=0 (the samples per bin would follow "
                          "each region's size, known only when the model runs)")
    mode = ctx.require_attr("mode", ("avg", "max"), "avg")
    half_pixel = ctx.require_attr("coordinate_transformation_mode",
                                  ("half_pixel", "output_half_pixel"), "half_pixel") == "half_pixel"
    out_size = (ctx.positive_attr("output_height", 1), ctx.positive_attr("output_width", 1))
    scale = ctx.float_attr("spatial_scale", 1.0)
    channels, height, width = x.type.shape[1:]

    rows = ctx.emit("reshape", ctx.emit("transpose", x, perm=(0, 2, 3, 1)), shape=(-1, channels))
    last_image = ctx.emit("sub", ctx.emit("numel", x, axes=(0,), dtype="i64"),
                          ctx.constant(1, "i64"))
    batch = ctx.emit("minimum", ctx.emit("maximum", batch, ctx.constant(0, batch)), last_image)
    first_row = ctx.emit("mul", batch, ctx.constant(height * width, batch))

    taps, inside = [], None
    for axis, (size, bins) in enumerate(zip((height, width), out_size, strict=True)):
        # The y coordinates (axis 0) of regions' corners are their columns 1 and 3.
        start, end = (_region_column(ctx, regions, column, scale, half_pixel)
                      for column in (1 - axis, 3 - axis))
        extent = ctx.emit("sub", end, start)
        if not half_pixel:  # the legacy mode makes a region at least one pixel wide
            extent = ctx.emit("maximum", extent, ctx.constant(1.0, extent))
        # Sample j of bins · ratio lies (j + 1/2) / ratio bins past the start.
        fractions = ctx.emit("mul", ctx.emit("add", ctx.emit("cast", ctx.emit(
            "arange", n=bins * ratio), dtype=x.type.dtype), ctx.constant(0.5, x)),
            ctx.constant(1.0 / (bins * ratio), x))
        samples = ctx.emit("add", ctx.emit("unsqueeze", start, axes=(1,)), ctx.emit(
            "mul", ctx.emit("unsqueeze", extent, axes=(1,)), fractions))  # [R, bins · ratio]
        axis_taps, axis_inside = _roi_taps(ctx, samples, size)
        stride = width if axis == 0 else 1
        taps.append([(ctx.emit("unsqueeze", ctx.emit("mul", index, ctx.constant(stride, index)),
                               axes=(2 - axis,)),
                      ctx.emit("unsqueeze", weight, axes=(2 - axis,)))
                     for index, weight in axis_taps])
        axis_inside = ctx.emit("unsqueeze", axis_inside, axes=(2 - axis,))
        inside = axis_inside if inside is None else ctx.emit("logical_and", inside, axis_inside)

    first_row = ctx.emit("unsqueeze", first_row, axes=(1, 2))
    mask = ctx.emit("cast", inside, dtype=x.type.dtype)
    corners = []
    for (row_index, row_weight), (column_index, column_weight) in itertools.product(*taps):
        index = ctx.emit("add", first_row, ctx.emit("add", row_index, column_index))
        weight = ctx.emit("mul", mask, ctx.emit("mul", row_weight, column_weight))
        corners.append(ctx.emit("mul", ctx.emit("take", rows, index, axis=0),
                                ctx.emit("unsqueeze", weight, axes=(3,))))  # [R, Y, X, C]
    combine = "add" if mode == "avg" else "maximum"
    samples = functools.reduce(lambda a, b: ctx.emit(combine, a, b), corners)
    (out_height, out_width) = out_size
    samples = ctx.emit("reshape", samples, shape=(-1, out_height, ratio, out_width, ratio,
                                                  channels))
    pooled = ctx.emit("mean" if mode == "avg" else "max", samples, axes=(2, 4), keepdims=False)
    return [ctx.emit("transpose", pooled, perm=(0, 3, 1, 2))]


def _region_column(ctx, regions, column, scale, half_pixel):
    """One corner coordinate of every region [R], in the feature map's pixels."""
    picked = ctx.emit("squeeze", ctx.emit("slice", regions, starts=(column,), ends=(column + 1,),
                                          axes=(1,), steps=(1,)), axes=(1,))
    scaled = ctx.emit("mul", picked, ctx.constant(scale, picked))
    return ctx.emit("sub", scaled, ctx.constant(0.5, picked)) if half_pixel else scaled


def _roi_taps(ctx, samples, size):
    """The two taps [(row or column index i64, weight)] of RoiAlign's bilinear sampling along
    one axis of `size`, and which samples lie within [-1, size]: a sample below 0 reads 0,
    one at or past the last pixel reads the last."""
    def number(value):
        return ctx.constant(value, samples)
    inside = ctx.emit("logical_and", ctx.emit("greater_equal", samples, number(-1.0)),
                      ctx.emit("less_equal", samples, number(float(size))))
    # Outside (or NaN) a sample reads pixel 0, with a weight the mask makes 0.
    position = ctx.emit("where", inside, ctx.emit("maximum", samples, number(0.0)), number(0.0))
    low = ctx.emit("floor", position)
    at_end = ctx.emit("greater_equal", low, number(size - 1.0))
    low = ctx.emit("where", at_end, number(size - 1.0), low)
    high = ctx.emit("where", at_end, low, ctx.emit("add", low, number(1.0)))
    position = ctx.emit("where", at_end, low, position)
    fraction = ctx.emit("sub", position, low)
    return ([(ctx.emit("cast", low, dtype="i64"), ctx.emit("sub", number(1.0), fraction)),
             (ctx.emit("cast", high, dtype="i64"), fraction)], inside)


@converter("DeformConv")
def _deform_conv(ctx):
    """A 2-D convolution whose taps read x at their positions moved by `offset` (and weighed
    by `mask`): each offset group's channels sampled as grid_sample samples (bilinear, zeros
    outside) at every tap of every output position, then the convolution as one grouped
    matmul."""
    x, w, offset = ctx.input(0), ctx.input(1), ctx.input(2)
    ctx.require_rank(x, 4, 4)
    if not all(isinstance(d, int) for d in (*x.type.shape[1:], *w.type.shape)):
        raise Unsupported(f"DeformConv of {x.type} with weights {w.type} (channels, spatial and "
                          f"kernel sizes must be known)")
    channels, height, width = x.type.shape[1:]
    out_channels, group_channels, *kernel = w.type.shape
    strides = ctx.require_length(ctx.attr("strides", (1, 1)), 2, "strides")
    dilations = ctx.require_length(ctx.attr("dilations", (1, 1)), 2, "dilations")
    pads = ctx.require_length(ctx.attr("pads", (0, 0, 0, 0)), 4, "pads")
    if tuple(ctx.attr("kernel_shape", kernel)) != tuple(kernel):
        raise Unsupported(f"DeformConv's kernel_shape differs from its weights' {kernel}")
    groups, offset_groups = ctx.positive_attr("group", 1), ctx.positive_attr("offset_group", 1)
    if channels % offset_groups or group_channels * groups != channels or \
            out_channels % groups:
        raise Unsupported(f"DeformConv of {channels} channels with group={groups}, "
                          f"offset_group={offset_groups} and weights {w.type}")
    taps = kernel[0] * kernel[1]
    out_size = tuple((size + pads[axis] + pads[axis + 2] - dilations[axis] * (k - 1) - 1)
                     // strides[axis] + 1
                     for axis, (size, k) in enumerate(zip((height, width), kernel, strict=True)))
    if tuple(offset.type.shape[1:]) != (offset_groups * taps * 2, *out_size):
        raise Unsupported(f"DeformConv's offset {offset.type} (it takes [N, "
                          f"{offset_groups * taps * 2}, {out_size[0]}, {out_size[1]}])")
    moved = ctx.emit("reshape", offset, shape=(-1, offset_groups, taps, 2, *out_size))
    positions = []  # per axis, [N, offset groups, taps, out height, out width]
    for axis in range(2):
        along = ctx.emit("squeeze", ctx.emit("slice", moved, starts=(axis,), ends=(axis + 1,),
                                             axes=(3,), steps=(1,)), axes=(3,))
        positions.append(ctx.emit("add", along, ctx.known_tensor(
            _tap_positions(axis, kernel, out_size, strides, dilations, pads, x.type.dtype),
            "tap_positions")))
    per_group = channels // offset_groups
    sampled = []
    for group in range(offset_groups):
        image = ctx.emit("slice", x, starts=(group * per_group,),
                         ends=((group + 1) * per_group,), axes=(1,), steps=(1,))
        points = [ctx.emit("reshape", ctx.emit("slice", position, starts=(group,),
                                               ends=(group + 1,), axes=(1,), steps=(1,)),
                           shape=(-1, taps * out_size[0], out_size[1]))
                  for position in positions]
        sampled.append(grid_sampling.sample_at(ctx, image, points, "linear", "zeros", False))
    columns = ctx.emit("concat", *sampled, axis=1) if offset_groups > 1 else sampled[0]
    if ctx.has_input(4):
        columns = ctx.emit("mul", ctx.emit("reshape", columns, shape=(
            -1, offset_groups, per_group, taps, *out_size)), ctx.emit(
            "reshape", ctx.input(4), shape=(-1, offset_groups, 1, taps, *out_size)))
    columns = ctx.emit("reshape", columns, shape=(
        -1, groups, group_channels * taps, out_size[0] * out_size[1]))
    weights = ctx.emit("reshape", w, shape=(groups, out_channels // groups,
                                            group_channels * taps))
    result = ctx.emit("reshape", ctx.emit("matmul", weights, columns),
                      shape=(-1, out_channels, *out_size))
    if ctx.has_input(3):
        result = ctx.emit("add", result, ctx.emit("reshape", ctx.input(3),
                                                  shape=(out_channels, 1, 1)))
    return [result]


def _tap_positions(axis, kernel, out_size, strides, dilations, pads, dtype):
    """The pixel each tap of each output position reads along `axis` before its offset:
    [taps, out height, out width], taps in the kernel's row-major order."""
    tap = np.indices(kernel)[axis].reshape(-1, 1, 1)
    output = np.indices(out_size)[axis][None]
    return (output * strides[axis] - pads[axis] + tap * dilations[axis]).astype(
        numpy_dtype(dtype))
