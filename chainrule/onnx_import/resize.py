"""The ONNX op table, Resize: separable along its axes, so each resized axis is a gather of
each output's nearest input positions (clamped at the edges) and a weighted sum, with
positions and weights computed here with numpy from the known shapes, scales and sizes. They
follow ONNX's own definition (onnx/reference/ops/op_resize.py): source coordinates per
coordinate_transformation_mode, weighted by the nearest, linear or cubic kernel. Axes left as
they are (the batch, the channels) may be symbolic. A resized axis of symbolic size
(a fully convolutional net's H and W, an `interpolate(size=other.shape[-2:])`) is resized
by nearest-neighbour repeats where its scale is whole, else with positions and weights
computed when the model runs, in nearest and linear modes."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..ir import dims
from ..ir.types import UNKNOWN, numpy_dtype
from .context import Unsupported, converter, dim_hint
from .folding import FOLD_LIMIT, shape_of
from .layout import broadcast_repeat

TRANSFORMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
              "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
# The transforms that map a whole scale's output i to input (i + 1/2)/scale - 1/2.
HALF_PIXEL = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel")


def _nearest(mode):
    def coefficients(ratio, scale):
        if ratio == 1.0:  # on an input position: that one
            return np.array([0.0, 1.0])
        below = {"round_prefer_floor": ratio <= 0.5, "round_prefer_ceil": ratio < 0.5,
                 "floor": True, "ceil": False}[mode]
        return np.array([float(below), float(not below)])
    return coefficients


def _linear(antialias):
    def coefficients(ratio, scale):
        if not antialias:
            return np.array([1.0 - ratio, ratio])
        scale = min(scale, 1.0)  # downsampling widens the kernel
        start = int(np.floor(-1 / scale) + 1)
        taps = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
        weights = np.clip(1 - np.abs(taps), 0, 1)
        return weights / weights.sum()
    return coefficients


def _cubic(a, antialias):
    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0

    def coefficients(ratio, scale):
        if not antialias:
            return np.array([kernel(ratio + 1), kernel(ratio), kernel(1 - ratio),
                             kernel(2 - ratio)])
        scale = min(scale, 1.0)
        start = int(np.floor(-2 / scale) + 1)
        weights = np.array([kernel(scale * (i - ratio)) for i in range(start, 2 - start)])
        return weights / weights.sum()
    return coefficients


def _source_positions(transform, size_in, size_out, scale, roi):
    """Each output position's coordinate in the input, and which fall outside the crop."""
    y = np.arange(size_out, dtype=np.float64)
    width = scale * size_in  # the output width before rounding
    outside = np.zeros(size_out, dtype=bool)
    if transform == "align_corners":
        x = np.zeros(size_out) if width == 1 else y * (size_in - 1) / (width - 1)
    elif transform == "asymmetric":
        x = y / scale
    elif transform == "tf_crop_and_resize":
        start, end = roi
        x = np.full(size_out, (end - start) * (size_in - 1) / 2) if width == 1 else \
            y * (end - start) * (size_in - 1) / (width - 1)
        x = x + start * (size_in - 1)
        outside = (x < 0) | (x > size_in - 1)
    elif transform == "pytorch_half_pixel":
        x = np.full(size_out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif transform == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric: the centre of the input on the centre of the output
        offset = size_in / 2 * (1 - size_out / width)
        x = offset + (y + 0.5) / scale - 0.5
    return x, outside


def _axis_weights(size_in, size_out, scale, roi, coefficients, transform, exclude_outside):
    """For one axis: each output's input positions and their weights [out, taps], and the
    outputs to extrapolate."""
    x, outside = _source_positions(transform, size_in, size_out, scale, roi)
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)  # in (0, 1]: the left neighbour preferred
    weights = np.array([coefficients(float(r), scale) for r in ratios])
    taps = weights.shape[1]
    # The `taps` input positions nearest x (ties to the smaller), as ONNX picks them.
    pad = math.ceil(taps / 2)
    padded = x + pad
    base = np.floor(padded)
    fraction = padded - base
    if taps % 2 == 0:
        shift = np.where(fraction == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        shift = np.where(fraction <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    positions = (base + shift).astype(np.int64)[:, None] + np.arange(taps)[None, :] - pad
    if exclude_outside:
        weights = np.where((positions < 0) | (positions >= size_in), 0.0, weights)
        totals = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(totals == 0, 1.0, totals)
    return np.clip(positions, 0, size_in - 1), weights, outside


# What a resized axis of symbolic size can be resized by, its positions computed at run time.
RUN_TIME_MODES = ("nearest", "linear", "cubic")
RUN_TIME_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
RUN_TIME_CASES = (f", but in {' or '.join(RUN_TIME_MODES)} mode with no antialias or "
                  f"exclude_outside, a {' or '.join(RUN_TIME_TRANSFORMS)} transform, and an "
                  f"output size that is a dim, not {UNKNOWN}")


def _resized_at_run_time(ctx, x, axis, size_out, scale, mode, transform, nearest_mode,
                         cubic_coeff_a):
    """x resized along `axis` (symbolic sizes in or out) as onnxruntime does it: each output
    y's source coordinate, clamped to the input, and its nearest input position or its two
    neighbours weighted linearly; or, unclamped, its four neighbours (each clamped to the
    input) weighted by the cubic kernel. Clamped coordinates are at least 0, where a cast to
    integers rounds down."""
    dtype, size_in = x.type.dtype, x.type.shape[axis]

    def length(dim):
        return ctx.emit("cast", ctx.known_tensor(shape_of([dim]), "length"), dtype=dtype)

    def number(value):
        return ctx.constant(value, dtype)

    length_in, length_out = length(size_in), length(size_out)
    last = ctx.emit("sub", length_in, number(1.0))
    y = ctx.emit("cast", ctx.emit("arange", n=size_out), dtype=dtype)
    if transform == "align_corners":
        spacing = ctx.emit("maximum", ctx.emit("sub", length_out, number(1.0)), number(1.0))
        source = ctx.emit("div", ctx.emit("mul", y, last), spacing)
    else:
        # ONNX's scale: the one given, else the sizes' ratio, computed in floats.
        scale = number(scale) if scale is not None else ctx.emit("div", length_out, length_in)
        if transform == "asymmetric":
            source = ctx.emit("div", y, scale)
        else:
            source = ctx.emit("sub", ctx.emit("div", ctx.emit("add", y, number(0.5)), scale),
                              number(0.5))
        if transform == "pytorch_half_pixel":  # one output takes the input's first
            source = ctx.emit("where", ctx.emit("greater", length_out, number(1.0)), source,
                              number(-0.5))
    clamped = ctx.emit("minimum", ctx.emit("maximum", source, number(0.0)), last)
    trailing = tuple(range(1, x.type.rank - axis))
    if mode == "cubic":
        return _cubic_at_run_time(ctx, x, axis, source, last, trailing, cubic_coeff_a)

    def at(positions):
        return ctx.emit("take", x, positions, axis=axis)

    def down(value):  # value >= 0
        return ctx.emit("cast", value, dtype="i64")

    if mode == "nearest":
        if nearest_mode in ("round_prefer_floor", "round_prefer_ceil"):
            halfway = ctx.emit("add", clamped, number(0.5))
            nearest = down(halfway)
            if nearest_mode == "round_prefer_floor":  # a tie goes down
                tie = ctx.emit("equal", ctx.emit("cast", nearest, dtype=dtype), halfway)
                nearest = ctx.emit("sub", nearest, ctx.emit("cast", tie, dtype="i64"))
        else:
            nearest = down(clamped)
            if nearest_mode == "ceil":
                above = ctx.emit("greater", clamped, ctx.emit("cast", nearest, dtype=dtype))
                nearest = ctx.emit("add", nearest, ctx.emit("cast", above, dtype="i64"))
        return at(nearest)
    below = down(clamped)
    above = ctx.emit("minimum", ctx.emit("add", below, ctx.constant(1, "i64")),
                     ctx.emit("cast", last, dtype="i64"))
    weight = ctx.emit("sub", clamped, ctx.emit("cast", below, dtype=dtype))
    if trailing:
        weight = ctx.emit("unsqueeze", weight, axes=trailing)
    return ctx.emit("add", ctx.emit("mul", at(below), ctx.emit("sub", number(1.0), weight)),
                    ctx.emit("mul", at(above), weight))


def _cubic_at_run_time(ctx, x, axis, source, last, trailing, a):
    """The cubic kernel's four taps around each source coordinate (a bicubic interpolation
    of a ViT's position embeddings to a symbolic grid). Coordinates exceed -1, so
    `cast(source + 1) - 1` is their floor; a tap past either end reads the end."""
    dtype = x.type.dtype

    def number(value):
        return ctx.constant(value, dtype)

    def polynomial(t, coefficients):  # Horner's rule, highest power first
        result = number(coefficients[0])
        for coefficient in coefficients[1:]:
            result = ctx.emit("add", ctx.emit("mul", result, t), number(coefficient))
        return result

    one = ctx.constant(1, "i64")
    below = ctx.emit("sub", ctx.emit("cast", ctx.emit("add", source, number(1.0)),
                                     dtype="i64"), one)
    ratio = ctx.emit("sub", source, ctx.emit("cast", below, dtype=dtype))
    near = (a + 2, -(a + 3), 0.0, 1.0)              # |t| <= 1
    far = (a, -5 * a, 8 * a, -4 * a)                # 1 <= |t| <= 2
    distances = (ctx.emit("add", ratio, number(1.0)), ratio,
                 ctx.emit("sub", number(1.0), ratio), ctx.emit("sub", number(2.0), ratio))
    end = ctx.emit("cast", last, dtype="i64")
    result = None
    for offset, distance, kernel in zip((-1, 0, 1, 2), distances, (far, near, near, far),
                                        strict=True):
        position = ctx.emit("add", below, ctx.constant(offset, "i64"))
        position = ctx.emit("minimum", ctx.emit("maximum", position, ctx.constant(0, "i64")),
                            end)
        weight = polynomial(distance, kernel)
        if trailing:
            weight = ctx.emit("unsqueeze", weight, axes=trailing)
        term = ctx.emit("mul", ctx.emit("take", x, position, axis=axis), weight)
        result = term if result is None else ctx.emit("add", result, term)
    return result


def _by_axis(values, axes, rank, fill):
    full = list(fill)
    for axis, value in zip(axes, values, strict=True):
        full[axis] = value
    return full


def _target(ctx, shape, axes, rank):
    """The output size and scale of every axis. An axis left as it is may be symbolic (the
    batch): its size is its own and its scale 1."""
    scales = ctx.static(2, "Resize's scales")
    sizes = ctx.static_dims(3, "Resize's sizes", ())
    policy = ctx.require_attr("keep_aspect_ratio_policy", ("stretch", "not_larger",
                                                           "not_smaller"), "stretch")
    if sizes:
        sizes = ctx.require_length(sizes, len(axes), "Resize's sizes")
        wanted = _by_axis(sizes, axes, rank, shape)
        factors = [_ratio(out, size) for out, size in zip(wanted, shape, strict=True)]
        if policy == "stretch":
            return wanted, factors
        resized = [a for a in axes if wanted[a] != shape[a]]
        _require_known(ctx, shape, wanted, resized)
        pick = min if policy == "not_larger" else max
        scale = pick(factors[a] for a in resized) if resized else 1.0
        return ([int(scale * shape[a] + 0.5) if a in resized else shape[a]
                 for a in range(rank)],
                [scale if a in resized else 1.0 for a in range(rank)])
    if scales is None or scales.size == 0:
        raise Unsupported("Resize needs scales or sizes")
    scales = ctx.require_length(scales.astype(np.float32).ravel().tolist(), len(axes),
                                "Resize's scales")
    if not all(0 < scale < math.inf for scale in scales):
        raise Unsupported(f"Resize's scales {list(scales)} (each must be positive and finite)")
    factors = _by_axis(scales, axes, rank, [1.0] * rank)
    wanted = [size if factor == 1.0 else int(factor * size) if isinstance(size, int) else
              _scaled(size, factor) for factor, size in zip(factors, shape, strict=True)]
    return wanted, factors


def _scaled(size, factor: float):
    """floor(size * factor) for a symbolic size, as a dim where the float factor is exactly a
    fraction of a small power of two (`interpolate(scale_factor=0.5)` makes `H//2`)."""
    exact = Fraction(factor)
    if exact.denominator > 1024:
        return UNKNOWN
    return dims.floordiv(dims.mul(size, exact.numerator), exact.denominator)


def _ratio(size_out, size_in) -> float | None:
    """An axis's scale from its sizes: 1 where they are the same dim, a whole number where
    one is a multiple of the other (`2*H` of `H`), None where symbolic sizes say no more."""
    if size_out == size_in:
        return 1.0
    if isinstance(size_out, int) and isinstance(size_in, int):
        return size_out / size_in
    if UNKNOWN in (size_out, size_in):
        return None
    multiple = dims.floordiv(size_out, size_in)
    if isinstance(multiple, int) and multiple > 0 and dims.mul(multiple, size_in) == size_out:
        return float(multiple)
    return None


def _repeats(transform, nearest_mode, scale) -> bool:
    """Whether nearest-neighbour resizing by `scale` repeats each element `scale` times: a
    whole scale s maps output i = s*j + r to input j + r/s (asymmetric), which floor takes to
    j, or to j + (r + 1/2)/s - 1/2, strictly within half a step of j (the half-pixel modes),
    which every rounding takes to j."""
    if scale is None or not float(scale).is_integer() or scale < 1:
        return False
    if transform == "asymmetric":
        return nearest_mode == "floor"
    return transform in HALF_PIXEL and nearest_mode.startswith("round")


def _require_known(ctx, shape, wanted, axes, unless="") -> None:
    """The resized axes' sizes, in and out: the interpolation weights are computed here."""
    symbolic = [a for a in axes if not (isinstance(shape[a], int) and
                                        isinstance(wanted[a], int))]
    if symbolic:
        described = ", ".join(f"axis {a} from {shape[a]} to {wanted[a]}" for a in symbolic)
        raise Unsupported(f"Resize of {described} (the sizes of a resized axis must be "
                          f"known{unless})", hint=dim_hint([shape[a] for a in symbolic] +
                                                   [wanted[a] for a in symbolic]))


@converter("Resize")
def _resize(ctx):
    x = ctx.input(0)
    shape, rank = x.type.shape, x.type.rank
    # The modes first: each unsupported one is reported, whatever the input.
    mode = ctx.require_attr("mode", ("nearest", "linear", "cubic"), "nearest")
    transform = ctx.require_attr("coordinate_transformation_mode", TRANSFORMS, "half_pixel")
    antialias = bool(ctx.attr("antialias", 0))
    nearest_mode = ctx.require_attr("nearest_mode", NEAREST_MODES, "round_prefer_floor")
    if x.type.dtype not in ("f32", "f64"):
        raise Unsupported(f"Resize of {x.type.dtype} tensors (chainrule interpolates floats)")
    axes = ctx.attr("axes")
    axes = list(range(rank)) if axes is None else ctx.axes(axes, rank)
    # Read in every mode, though only cubic uses it: exporters write it whatever the mode.
    cubic_coeff_a = ctx.float_attr("cubic_coeff_a", -0.75)
    if mode == "nearest":
        if antialias:
            raise Unsupported("Resize with antialias in nearest mode")
        coefficients = _nearest(nearest_mode)
    elif mode == "linear":
        coefficients = _linear(antialias)
    else:
        coefficients = _cubic(cubic_coeff_a, antialias)
    exclude_outside = bool(ctx.attr("exclude_outside", 0))
    extrapolation = ctx.float_attr("extrapolation_value", 0.0)
    roi = ctx.static(1, "Resize's roi")
    if roi is not None and roi.size:
        roi = np.array(ctx.require_length(roi.astype(np.float64).ravel(), 2 * len(axes),
                                          "Resize's roi"))
        roi = list(zip(_by_axis(roi[:len(axes)], axes, rank, [0.0] * rank),
                       _by_axis(roi[len(axes):], axes, rank, [1.0] * rank), strict=True))
    elif transform == "tf_crop_and_resize":
        raise Unsupported("Resize in tf_crop_and_resize mode without a roi")
    else:
        roi = [(0.0, 1.0)] * rank
    sizes, scales = _target(ctx, list(shape), axes, rank)
    crops = {axis: roi[axis] if transform == "tf_crop_and_resize" else (0.0, 1.0)
             for axis in axes}
    # ONNX leaves an axis alone where its scale is 1, its size stays and nothing is cropped.
    resized = [axis for axis in axes if not (
        scales[axis] is not None and math.isclose(scales[axis], 1.0) and
        sizes[axis] == shape[axis] and np.allclose(crops[axis], (0.0, 1.0)))]
    # A symbolic axis resized by repeating its elements needs no weights computed here;
    # other symbolic axes have theirs computed at run time.
    symbolic = {axis for axis in resized
                if not (isinstance(shape[axis], int) and isinstance(sizes[axis], int))}
    repeated = {axis for axis in symbolic if not isinstance(shape[axis], int) and
                mode == "nearest" and _repeats(transform, nearest_mode, scales[axis])}
    at_run_time = {axis for axis in symbolic - repeated if UNKNOWN not in (
        shape[axis], sizes[axis]) and mode in RUN_TIME_MODES and not antialias and
        transform in RUN_TIME_TRANSFORMS and not exclude_outside}
    _require_known(ctx, shape, sizes, [axis for axis in resized
                                       if axis not in repeated | at_run_time], RUN_TIME_CASES)
    ctx.require_size(x.type.dtype, sizes)
    if any(sizes[axis] == 0 for axis in resized):  # nothing to interpolate
        return [ctx.empty(x, [sizes[a] if a in resized else d for a, d in enumerate(shape)])]

    outside = None
    for axis in resized:
        if axis in repeated:
            x = broadcast_repeat(ctx, x, int(scales[axis]), axis, each=True)
            continue
        if axis in at_run_time:
            x = _resized_at_run_time(ctx, x, axis, sizes[axis], scales[axis], mode, transform,
                                     nearest_mode, cubic_coeff_a)
            continue
        size_in, size_out, scale = shape[axis], sizes[axis], scales[axis]
        if size_in == 0:
            raise Unsupported(f"Resize of an empty axis {axis} to size {size_out} (there is "
                              f"nothing to interpolate from)")
        if size_out > FOLD_LIMIT:  # each output position's weights are computed here
            raise Unsupported(f"Resize to size {size_out:,} along axis {axis} (at most "
                              f"{FOLD_LIMIT:,})")
        crop = crops[axis]
        positions, weights, extrapolated = _axis_weights(size_in, size_out, scale, crop,
                                                         coefficients, transform,
                                                         exclude_outside)
        x = _interpolated(ctx, x, axis, positions, weights)
        if extrapolated.any():
            mask = ctx.known_tensor(extrapolated.reshape((-1,) + (1,) * (rank - 1 - axis)),
                                    "extrapolated")
            outside = mask if outside is None else ctx.emit("logical_or", outside, mask)
    if outside is not None:
        x = ctx.emit("where", outside, ctx.constant(extrapolation, x), x)
    return [x]



def _interpolated(ctx, x, axis, positions, weights):
    """Along `axis`, each output the weighted sum of x at its input positions [out, taps]."""
    taken = ctx.emit("take", x, ctx.known_tensor(positions, "positions"), axis=axis)
    spread = weights.reshape(weights.shape + (1,) * (x.type.rank - 1 - axis))
    weighted = ctx.emit("mul", taken, ctx.known_tensor(
        spread.astype(numpy_dtype(x.type.dtype)), "weights"))
    return ctx.emit("sum", weighted, axes=(axis + 1,), keepdims=False)
