"""The ONNX op table, sampling an image at points: GridSample, and AffineGrid's points."""
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
