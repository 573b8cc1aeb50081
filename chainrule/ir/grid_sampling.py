"""grid_sample as a composition of primitive ops: what the op computes, written once against the
`ops` face of compositions.py (`ops.emit(op, *inputs, **attrs)`, `ops.constant(value, like)`).

Its derivative rule differentiates this composition through the rules of its parts, and the
ONNX export writes it where onnxruntime has no GridSample for the dtype, rank or opset. Along
each spatial axis a point's coordinate is denormalised, padded (clamped or reflected into the
image, for nearest and linear modes), and split into taps: the nearest index, the two of
linear interpolation or the four of Keys' cubic convolution (a = -0.75), each with its weight.
Every combination of one tap per axis reads a row of x's channels by one flat index (`take`),
weighted by the product of the taps' weights. A tap outside the image reads 0 (zeros padding)
or the clamped or reflected index; cubic mode pads its taps, not its coordinates, as PyTorch
and onnxruntime do.
"""
from __future__ import annotations

import itertools

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
        result = read if result is None else ops.emit("add", result, read)
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
        coordinate = _round_half_to_even(ops, coordinate)
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


def _round_half_to_even(ops, coordinate):
    """numpy's rint from floor: floor(c + 1/2), one less at a tie that rounded to odd."""
    def number(value):
        return ops.constant(value, coordinate)
    rounded = ops.emit("floor", ops.emit("add", coordinate, number(0.5)))
    tie = ops.emit("equal", ops.emit("sub", rounded, coordinate), number(0.5))
    half = ops.emit("mul", rounded, number(0.5))
    odd = ops.emit("not_equal", ops.emit("floor", half), half)
    return ops.emit("sub", rounded, ops.emit("cast", ops.emit("logical_and", tie, odd),
                                             dtype=coordinate.type.dtype))


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
