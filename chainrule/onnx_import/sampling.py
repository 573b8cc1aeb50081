"""The ONNX op table, sampling an image at points: GridSample, AffineGrid's points,
RoiAlign's regions and DeformConv's moved taps (the last three compositions in
ir/grid_sampling.py, which the DSL's built-ins build too)."""
from __future__ import annotations

from ..ir import grid_sampling
from ..ir.ops import GRID_SAMPLE_MODES, GRID_SAMPLE_PADDINGS
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
    x, regions, batch = ctx.input(0), ctx.input(1), ctx.input(2)
    ctx.require_rank(x, 4, 4)
    ratio = ctx.attr("sampling_ratio", 0)
    if ratio < 1:
        raise Unsupported("RoiAlign with sampling_ratio=0 (the samples per bin would follow "
                          "each region's size, known only when the model runs)")
    mode = ctx.require_attr("mode", ("avg", "max"), "avg")
    transform = ctx.require_attr("coordinate_transformation_mode",
                                 ("half_pixel", "output_half_pixel"), "half_pixel")
    out_size = (ctx.positive_attr("output_height", 1), ctx.positive_attr("output_width", 1))
    return [grid_sampling.roi_align(ctx, x, regions, batch, out_size, ratio,
                                    ctx.float_attr("spatial_scale", 1.0),
                                    transform == "half_pixel", mode)]


@converter("DeformConv")
def _deform_conv(ctx):
    x, w = ctx.input(0), ctx.input(1)
    ctx.require_rank(x, 4, 4)
    kernel = tuple(w.type.shape[2:])
    if tuple(ctx.attr("kernel_shape", kernel)) != kernel:
        raise Unsupported(f"DeformConv's kernel_shape differs from its weights' {list(kernel)}")
    bias = ctx.input(3) if ctx.has_input(3) else None
    mask = ctx.input(4) if ctx.has_input(4) else None
    return [grid_sampling.deform_conv(
        ctx, x, w, ctx.input(2), bias, mask,
        strides=ctx.require_length(ctx.attr("strides", (1, 1)), 2, "strides"),
        pads=ctx.require_length(ctx.attr("pads", (0, 0, 0, 0)), 4, "pads"),
        dilations=ctx.require_length(ctx.attr("dilations", (1, 1)), 2, "dilations"),
        groups=ctx.positive_attr("group", 1), offset_groups=ctx.positive_attr("offset_group", 1))]
