"""Sampling images at points, as compositions of primitive ops written once against the `ops`
face of compositions.py (`ops.emit(op, *inputs, **attrs)`, `ops.constant(value, like)`):
grid_sample's (`sample`), and affine_grid, roi_align and deform_conv, which the DSL's built-ins
and the ONNX importer both build.

grid_sample is an op of its own: its derivative rule differentiates `sample` through the
rules of its parts, and the ONNX export writes `sample` where onnxruntime has no GridSample for
the dtype, rank or opset. Along each spatial axis a point's coordinate is denormalised, padded (clamped or reflected into the
image, for nearest and linear modes), and split into taps: the nearest index, the two of
linear interpolation or the four of Keys' cubic convolution (a = -0.75), each with its weight.
Every combination of one tap per axis reads a row of x's channels by one flat index (`take`),
weighted by the product of the taps' weights. A tap outside the image reads 0 (zeros padding)
or the clamped or reflected index; cubic mode pads its taps, not its coordinates, as PyTorch
and onnxruntime do.
"""
from __future__ import annotations

import itertools

from .compositions import round_half_even
from .shapes import conv_output_dim

CUBIC_A = -0.75  # Keys' cubic convolution kernel, as PyTorch and ONNX use it


def coordinate_bounds(size: int, align_corners: bool) -> tuple[float, float]:
    """The span a normalised coordinate of [-1, 1] covers: the centres of the first and last
    pixels with align_corners, else their outer edges."""
    return (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)


def cubic_weights(fraction):
    """The four Keys weights of the taps at -1, 0, 1 and 2 from the floor, for a point at
    `fraction` past it: plain arithmetic, on floats or on arrays."""
    def near(t):  # |t| <= 1
        return ((CUBIC_A + 2) * t - (CUBIC_A + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((CUBIC_A * t - 5 * CUBIC_A) * t + 8 * CUBIC_A) * t - 4 * CUBIC_A
    return [far(fraction + 1), near(fraction), near(1 - fraction), far(2 - fraction)]


class _Arithmetic:
    """Scalar arithmetic on IR values, so that `cubic_weights` builds nodes as it computes."""

    def __init__(self, ops, value):
        self.ops, self.value = ops, value

    def _operand(self, other):
        return other.value if isinstance(other, _Arithmetic) else \
            self.ops.constant(float(other), self.value)

    def _apply(self, op, a, b):
        return _Arithmetic(self.ops, self.ops.emit(op, a, b))

    def __add__(self, other):
        return self._apply("add", self.value, self._operand(other))

    def __radd__(self, other):
        return self._apply("add", self._operand(other), self.value)

    def __sub__(self, other):
        return self._apply("sub", self.value, self._operand(other))

    def __rsub__(self, other):
        return self._apply("sub", self._operand(other), self.value)

    def __mul__(self, other):
        return self._apply("mul", self.value, self._operand(other))

    def __rmul__(self, other):
        return self._apply("mul", self._operand(other), self.value)


def sample(ops, x, grid, mode, padding_mode, align_corners):
    """grid_sample(x, grid) built from primitive ops."""
    rank = x.type.rank - 2
    coordinates = [_pixel_coordinate(ops, _grid_coordinate(ops, grid, rank, axis), size,
                                     align_corners)
                   for axis, size in enumerate(x.type.shape[2:])]
    return sample_at(ops, x, coordinates, mode, padding_mode, align_corners)


def sample_at(ops, x, coordinates, mode, padding_mode, align_corners):
    """x [N, C, *spatial] read at points given in pixels, one [N, *out] per spatial axis (0
    is the first pixel's centre): [N, C, *out]. align_corners places the reflection's bounds."""
    rank = x.type.rank - 2
    channels, sizes = x.type.shape[1], x.type.shape[2:]
    # x as rows of channels, one row per (batch, pixel): a tap reads a row by its flat index.
    channels_last = ops.emit("transpose", x, perm=(0, *range(2, rank + 2), 1))
    rows = ops.emit("reshape", channels_last, shape=(-1, channels))
    pixels = 1
    for size in sizes:
        pixels *= size
    batch = ops.emit("arange", n=x.type.shape[0])
    batch_start = ops.emit("mul", batch, ops.constant(pixels, batch))
    batch_start = ops.emit("unsqueeze", batch_start, axes=tuple(range(1, rank + 1)))

    axes_taps = []
    stride = pixels
    for coordinate, size in zip(coordinates, sizes, strict=True):
        stride //= size
        axes_taps.append(_taps(ops, coordinate, size, stride, mode, padding_mode, align_corners))

    result = None
    for combination in itertools.product(*axes_taps):
        index, weight, inside = batch_start, None, None
        for tap_index, tap_weight, tap_inside in combination:
            index = ops.emit("add", index, tap_index)
            weight = _combined(ops, "mul", weight, tap_weight)
            inside = _combined(ops, "logical_and", inside, tap_inside)
        if inside is not None:
            weight = _combined(ops, "mul", weight, ops.emit("cast", inside, dtype=x.type.dtype))
        read = ops.emit("take", rows, index, axis=0)  # [batch, *out, channels]
        if weight is not None:
            read = ops.emit("mul", read, ops.emit("unsqueeze", weight, axes=(-1,)))
        result = _combined(ops, "add", result, read)
    return ops.emit("transpose", result, perm=(0, rank + 1, *range(1, rank + 1)))


def _combined(ops, op, a, b):
    """op(a, b), where None stands for the identity (a weight of 1, a tap always inside)."""
    if a is None or b is None:
        return b if a is None else a
    return ops.emit(op, a, b)


def _grid_coordinate(ops, grid, rank, axis):
    """The normalised coordinates along spatial `axis`: the grid lists the innermost first."""
    position = rank - 1 - axis
    last = grid.type.rank - 1
    column = ops.emit("slice", grid, starts=(position,), ends=(position + 1,), axes=(last,),
                      steps=(1,))
    return ops.emit("squeeze", column, axes=(last,))


def _pixel_coordinate(ops, normalised, size, align_corners):
    """A normalised coordinate of [-1, 1] in pixels along an axis of `size`."""
    scale = (size - 1) / 2 if align_corners else size / 2
    return ops.emit("add", ops.emit("mul", normalised, ops.constant(scale, normalised)),
                    ops.constant((size - 1) / 2, normalised))


def _taps(ops, coordinate, size, stride, mode, padding_mode, align_corners):
    """[(flat index offset i64, weight or None, inside-the-image bool or None)] per tap."""
    def number(value):
        return ops.constant(value, coordinate)
    if mode == "nearest":
        coordinate = round_half_even(ops, coordinate)
    if mode != "cubic":
        coordinate = _padded(ops, coordinate, size, padding_mode, align_corners)
    if mode == "nearest":
        return [_tap(ops, coordinate, None, size, stride, padding_mode, align_corners)]
    floor = ops.emit("floor", coordinate)
    fraction = _Arithmetic(ops, ops.emit("sub", coordinate, floor))
    if mode == "linear":
        offsets, weights = (0, 1), [1 - fraction, fraction]
    else:
        offsets, weights = (-1, 0, 1, 2), cubic_weights(fraction)
    return [_tap(ops, ops.emit("add", floor, number(float(offset))) if offset else floor,
                 weight.value, size, stride, padding_mode, align_corners)
            for offset, weight in zip(offsets, weights, strict=True)]


def _tap(ops, position, weight, size, stride, padding_mode, align_corners):
    inside = None
    if padding_mode == "zeros":
        inside = ops.emit("logical_and",
                          ops.emit("greater_equal", position, ops.constant(0.0, position)),
                          ops.emit("less_equal", position, ops.constant(size - 1.0, position)))
    else:
        position = _padded(ops, position, size, padding_mode, align_corners)
    clamped = ops.emit("clip", position, lo=0.0, hi=size - 1.0)
    # A NaN coordinate reads pixel 0, and its NaN weight makes the result NaN.
    clamped = ops.emit("where", ops.emit("not_equal", clamped, clamped),
                       ops.constant(0.0, clamped), clamped)
    index = ops.emit("cast", clamped, dtype="i64")
    if stride != 1:
        index = ops.emit("mul", index, ops.constant(stride, index))
    return index, weight, inside


def _padded(ops, coordinate, size, padding_mode, align_corners):
    """The coordinate moved into the image: clamped (border), or reflected at the bounds and
    then clamped (reflection); as it is for zeros padding."""
    if padding_mode == "reflection":
        low, high = coordinate_bounds(size, align_corners)
        if high == low:  # one pixel, corners aligned: every point reads it
            return ops.emit("mul", coordinate, ops.constant(0.0, coordinate))
        coordinate = _reflected(ops, coordinate, low, high)
    if padding_mode == "zeros":
        return coordinate
    return ops.emit("clip", coordinate, lo=0.0, hi=size - 1.0)


def _reflected(ops, coordinate, low, high):
    """The coordinate folded into [low, high] by reflections at both ends (a triangle wave):
    its distance past `low` in spans, whose parity says which way the last span runs."""
    def number(value):
        return ops.constant(value, coordinate)
    span = high - low
    distance = ops.emit("abs", ops.emit("sub", coordinate, number(low)))
    spans = ops.emit("floor", ops.emit("div", distance, number(span)))
    extra = ops.emit("sub", distance, ops.emit("mul", spans, number(span)))
    half = ops.emit("mul", spans, number(0.5))
    even = ops.emit("equal", ops.emit("floor", half), half)
    return ops.emit("where", even, ops.emit("add", number(low), extra),
                    ops.emit("sub", number(high), extra))


def affine_grid(ops, theta, size, align_corners):
    """The sampling grid of the affine maps theta [N, rank, rank + 1] over an image of `size`
    [N, C, *spatial] (ONNX's AffineGrid, PyTorch's F.affine_grid): each pixel's normalised
    coordinates (x, y[, z], 1), innermost axis first, times theta's rows."""
    spatial = tuple(size[2:])
    rank = len(spatial)
    if theta.type.rank != 3 or tuple(theta.type.shape[1:]) != (rank, rank + 1):
        ops.error(f"affine_grid over {rank} spatial axes needs theta [N, {rank}, {rank + 1}], "
                  f"got {theta.type}")
    if not all(isinstance(d, int) and d > 0 for d in spatial):
        ops.error(f"affine_grid needs spatial sizes of 1 or more, got {list(spatial)}")
    columns = [_pixel_coordinates(ops, theta, spatial, axis, align_corners)
               for axis in reversed(range(rank))]
    ones = ops.emit("fill", ops.constant(1.0, theta), shape=spatial + (1,))
    homogeneous = ops.emit("concat", *columns, ones, axis=-1)
    pixels = ops.emit("reshape", homogeneous, shape=(-1, rank + 1))
    mapped = ops.emit("matmul", pixels, ops.emit("transpose", theta, perm=(0, 2, 1)))
    return ops.emit("reshape", mapped, shape=(theta.type.shape[0], *spatial, rank))


def _pixel_coordinates(ops, like, spatial, axis, align_corners):
    """Every pixel's normalised coordinate along `axis`, as [*spatial, 1]: pixel centres from
    -1 to 1 with align_corners (-1 alone for one pixel), else from -1 + 1/size to 1 - 1/size."""
    size = spatial[axis]
    if align_corners:
        step, start = (2.0 / (size - 1) if size > 1 else 0.0), -1.0
    else:
        step, start = 2.0 / size, -1.0 + 1.0 / size
    positions = ops.emit("cast", ops.emit("arange", n=size), dtype=like.type.dtype)
    line = ops.emit("add", ops.emit("mul", positions, ops.constant(step, like)),
                    ops.constant(start, like))
    others = tuple(a for a in range(len(spatial)) if a != axis)
    placed = ops.emit("unsqueeze", line, axes=others) if others else line
    return ops.emit("unsqueeze", ops.emit("broadcast_to", placed, shape=spatial), axes=(-1,))


def roi_align(ops, x, regions, batch, out_size, ratio, scale, half_pixel, mode):
    """ONNX's RoiAlign (torchvision's roi_align): each region [x1, y1, x2, y2] of image
    batch[r] cut into out_size bins, each the mean (or max) of ratio² bilinear samples. The
    samples' taps are computed from the regions when the model runs and read as rows of x by
    flat index; a sample below 0 reads 0, one at or past the last pixel reads the last, one
    beyond [-1, size] (or NaN) reads nothing. Its max mode takes, per sample, the largest of
    the four weighted corners rather than the interpolated value, as ONNX defines it."""
    if not all(isinstance(d, int) for d in x.type.shape[1:]):
        ops.error(f"roi_align of {x.type}: its channels and spatial sizes must be known")
    if regions.type.rank != 2 or regions.type.shape[1] != 4 or batch.type.dtype != "i64" or \
            batch.type.rank != 1:
        ops.error(f"roi_align takes regions [R, 4] and i64 batch indices [R], got "
                  f"{regions.type} and {batch.type}")
    channels, height, width = x.type.shape[1:]
    rows = ops.emit("reshape", ops.emit("transpose", x, perm=(0, 2, 3, 1)), shape=(-1, channels))
    last_image = ops.emit("sub", ops.emit("numel", x, axes=(0,), dtype="i64"),
                          ops.constant(1, batch))
    batch = ops.emit("minimum", ops.emit("maximum", batch, ops.constant(0, batch)), last_image)
    first_row = ops.emit("mul", batch, ops.constant(height * width, batch))

    taps, inside = [], None
    for axis, (size, bins) in enumerate(zip((height, width), out_size, strict=True)):
        # The y coordinates (axis 0) of the regions' corners are their columns 1 and 3.
        start, end = (_region_column(ops, regions, column, scale, half_pixel)
                      for column in (1 - axis, 3 - axis))
        extent = ops.emit("sub", end, start)
        if not half_pixel:  # the legacy transform makes a region at least one pixel wide
            extent = ops.emit("maximum", extent, ops.constant(1.0, extent))
        # Sample j of bins · ratio lies (j + 1/2) / ratio bins past the start.
        steps = ops.emit("cast", ops.emit("arange", n=bins * ratio), dtype=x.type.dtype)
        fractions = ops.emit("mul", ops.emit("add", steps, ops.constant(0.5, x)),
                             ops.constant(1.0 / (bins * ratio), x))
        samples = ops.emit("add", ops.emit("unsqueeze", start, axes=(1,)), ops.emit(
            "mul", ops.emit("unsqueeze", extent, axes=(1,)), fractions))  # [R, bins · ratio]
        axis_taps, axis_inside = _region_taps(ops, samples, size)
        stride = width if axis == 0 else 1
        taps.append([(ops.emit("unsqueeze", ops.emit("mul", index, ops.constant(stride, index)),
                               axes=(2 - axis,)),
                      ops.emit("unsqueeze", weight, axes=(2 - axis,)))
                     for index, weight in axis_taps])
        inside = _combined(ops, "logical_and", inside,
                           ops.emit("unsqueeze", axis_inside, axes=(2 - axis,)))

    first_row = ops.emit("unsqueeze", first_row, axes=(1, 2))
    mask = ops.emit("cast", inside, dtype=x.type.dtype)
    samples = None
    for (row_index, row_weight), (column_index, column_weight) in itertools.product(*taps):
        index = ops.emit("add", first_row, ops.emit("add", row_index, column_index))
        weight = ops.emit("mul", mask, ops.emit("mul", row_weight, column_weight))
        corner = ops.emit("mul", ops.emit("take", rows, index, axis=0),
                          ops.emit("unsqueeze", weight, axes=(3,)))  # [R, Y, X, C]
        samples = _combined(ops, "add" if mode == "avg" else "maximum", samples, corner)
    out_height, out_width = out_size
    samples = ops.emit("reshape", samples, shape=(-1, out_height, ratio, out_width, ratio,
                                                  channels))
    pooled = ops.emit("mean" if mode == "avg" else "max", samples, axes=(2, 4), keepdims=False)
    return ops.emit("transpose", pooled, perm=(0, 3, 1, 2))


def _region_column(ops, regions, column, scale, half_pixel):
    """One corner coordinate of every region [R], in the feature map's pixels."""
    picked = ops.emit("squeeze", ops.emit("slice", regions, starts=(column,), ends=(column + 1,),
                                          axes=(1,), steps=(1,)), axes=(1,))
    scaled = ops.emit("mul", picked, ops.constant(scale, picked))
    return ops.emit("sub", scaled, ops.constant(0.5, picked)) if half_pixel else scaled


def _region_taps(ops, samples, size):
    """The two taps [(row or column index i64, weight)] of RoiAlign's bilinear sampling along
    one axis of `size`, and which samples lie within [-1, size]."""
    def number(value):
        return ops.constant(value, samples)
    inside = ops.emit("logical_and", ops.emit("greater_equal", samples, number(-1.0)),
                      ops.emit("less_equal", samples, number(float(size))))
    # Outside (or NaN) a sample reads pixel 0, with a weight the mask makes 0.
    position = ops.emit("where", inside, ops.emit("maximum", samples, number(0.0)), number(0.0))
    low = ops.emit("floor", position)
    at_end = ops.emit("greater_equal", low, number(size - 1.0))
    low = ops.emit("where", at_end, number(size - 1.0), low)
    high = ops.emit("where", at_end, low, ops.emit("add", low, number(1.0)))
    position = ops.emit("where", at_end, low, position)
    fraction = ops.emit("sub", position, low)
    return ([(ops.emit("cast", low, dtype="i64"), ops.emit("sub", number(1.0), fraction)),
             (ops.emit("cast", high, dtype="i64"), fraction)], inside)


def deform_conv(ops, x, w, offset, bias, mask, strides, pads, dilations, groups,
                offset_groups):
    """ONNX's DeformConv (torchvision's deform_conv2d), 2-D: a convolution whose taps read x
    at their positions moved by `offset` [N, offset_groups · taps · 2 (y, x), *out] and
    weighed by `mask` [N, offset_groups · taps, *out] (None: 1): each offset group's channels
    sampled as grid_sample samples (bilinear, zeros outside) at every tap of every output
    position, then the convolution as one grouped matmul."""
    if x.type.rank != 4 or not all(isinstance(d, int) for d in (*x.type.shape[1:],
                                                                  *w.type.shape)):
        ops.error(f"deform_conv of {x.type} with weights {w.type}: it takes [N, C, H, W] with "
                  f"known channels, spatial and kernel sizes")
    channels, height, width = x.type.shape[1:]
    out_channels, group_channels, *kernel = w.type.shape
    if channels % offset_groups or group_channels * groups != channels or \
            out_channels % groups:
        ops.error(f"deform_conv of {channels} channels with groups={groups}, "
                  f"offset_groups={offset_groups} and weights {w.type}")
    taps = kernel[0] * kernel[1]
    out_size = tuple(conv_output_dim(size, k, strides[axis], pads[axis], pads[axis + 2],
                                     dilations[axis])
                     for axis, (size, k) in enumerate(zip((height, width), kernel, strict=True)))
    if tuple(offset.type.shape[1:]) != (offset_groups * taps * 2, *out_size):
        ops.error(f"deform_conv's offset {offset.type} must be [N, {offset_groups * taps * 2}, "
                  f"{out_size[0]}, {out_size[1]}]")
    moved = ops.emit("reshape", offset, shape=(-1, offset_groups, taps, 2, *out_size))
    positions = []  # per axis, [N, offset groups, taps, out height, out width]
    for axis in range(2):
        along = ops.emit("squeeze", ops.emit("slice", moved, starts=(axis,), ends=(axis + 1,),
                                             axes=(3,), steps=(1,)), axes=(3,))
        positions.append(ops.emit("add", along, _tap_positions(
            ops, x, axis, kernel, out_size, strides[axis], dilations[axis], pads[axis])))
    per_group = channels // offset_groups
    sampled = []
    for group in range(offset_groups):
        image = ops.emit("slice", x, starts=(group * per_group,),
                         ends=((group + 1) * per_group,), axes=(1,), steps=(1,))
        points = [ops.emit("reshape", ops.emit("slice", position, starts=(group,),
                                               ends=(group + 1,), axes=(1,), steps=(1,)),
                           shape=(-1, taps * out_size[0], out_size[1]))
                  for position in positions]
        sampled.append(sample_at(ops, image, points, "linear", "zeros", False))
    columns = ops.emit("concat", *sampled, axis=1) if offset_groups > 1 else sampled[0]
    if mask is not None:
        columns = ops.emit("mul", ops.emit("reshape", columns, shape=(
            -1, offset_groups, per_group, taps, *out_size)), ops.emit(
            "reshape", mask, shape=(-1, offset_groups, 1, taps, *out_size)))
    columns = ops.emit("reshape", columns, shape=(
        -1, groups, group_channels * taps, out_size[0] * out_size[1]))
    weights = ops.emit("reshape", w, shape=(groups, out_channels // groups,
                                            group_channels * taps))
    result = ops.emit("reshape", ops.emit("matmul", weights, columns),
                      shape=(-1, out_channels, *out_size))
    if bias is not None:
        result = ops.emit("add", result, ops.emit("reshape", bias, shape=(out_channels, 1, 1)))
    return result


def _tap_positions(ops, like, axis, kernel, out_size, stride, dilation, pad):
    """The pixel each tap of each output position reads along `axis` (0: y, 1: x) before its
    offset: [taps, out height, out width], taps in the kernel's row-major order."""
    tap = ops.emit("mul", ops.emit("cast", ops.emit("arange", n=kernel[axis]),
                                   dtype=like.type.dtype), ops.constant(dilation, like))
    # The tap's own row (axis 0) or column (axis 1) in the kernel, for every tap in order.
    tap = ops.emit("reshape", ops.emit("broadcast_to", ops.emit(
        "unsqueeze", tap, axes=(1 - axis,)), shape=tuple(kernel)), shape=(-1, 1, 1))
    out = ops.emit("mul", ops.emit("cast", ops.emit("arange", n=out_size[axis]),
                                   dtype=like.type.dtype), ops.constant(stride, like))
    out = ops.emit("sub", out, ops.constant(pad, like))
    out = ops.emit("unsqueeze", out, axes=(0, 2) if axis == 0 else (0, 1))
    return ops.emit("add", tap, out)
