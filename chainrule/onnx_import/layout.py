"""The ONNX op table, shapes and indexing: reshapes, slices, gathers, padding and friends.

Their shape-like inputs (a Reshape's shape, a Slice's bounds) must be known at import time;
folding.py computes them when an exporter builds them from `Shape` chains, as dim expressions
where they depend on symbolic dims (`[B*4, S, 4]`), which the ops' shape attributes take.
"""
from __future__ import annotations

import numpy as np

from ..ir import compositions, dims
from ..ir.shapes import TO_END, TO_START
from ..ir.types import UNKNOWN, is_float, is_int, numpy_dtype
from .context import Unsupported, converter, dim_hint
from .folding import fill_value, range_values, shape_of


def _reshape_target(target):
    """ONNX's target shape in the reshape op's terms, which are ONNX's own: 0 copies the input
    dim, one -1 takes whatever is left."""
    if target.count(-1) > 1:
        raise Unsupported(f"Reshape to {list(map(str, target))}: more than one dim is -1")
    return target


@converter("Reshape")
def _reshape(ctx):
    x = ctx.input(0)
    target = _reshape_target(ctx.static_dims(1, "Reshape's shape"))
    if ctx.attr("allowzero", 0) and 0 in target:
        return [_reshaped_to_empty(ctx, x, target)]
    return [ctx.emit("reshape", x, shape=target)]


def _reshaped_to_empty(ctx, x, target):
    """allowzero=1 makes a 0 an empty axis, which the reshape op's 0 (copy the input dim)
    cannot say; x must hold nothing then, and the result is that nothing in its new shape."""
    if -1 in target:
        raise Unsupported(f"Reshape with allowzero=1 to {list(map(str, target))}: a -1 beside "
                          f"a 0 is undefined")
    if not any(d == 0 for d in x.type.shape):
        raise Unsupported(f"Reshape of {x.type}, which is not empty, to the empty shape "
                          f"{list(map(str, target))}")
    return ctx.empty(x, target)


@converter("Flatten")
def _flatten(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1)
    axis = axis + x.type.rank if axis < 0 else axis  # ONNX counts -1 as the last axis
    before, after = x.type.shape[:axis], x.type.shape[axis:]
    sizes = [dims.product(part) for part in (before, after)]
    if sizes.count(UNKNOWN) > 1:
        raise Unsupported(f"Flatten of {x.type} at axis {axis}: both sides have dims no name "
                          f"describes")
    return [ctx.emit("reshape", x, shape=tuple(-1 if s == UNKNOWN else s for s in sizes))]


@converter("Transpose")
def _transpose(ctx):
    x = ctx.input(0)
    perm = ctx.attr("perm")
    perm = tuple(range(x.type.rank))[::-1] if perm is None else tuple(perm)
    return [ctx.emit("transpose", x, perm=perm)]


@converter("Squeeze")
def _squeeze(ctx):
    x = ctx.input(0)
    axes = ctx.static_ints(1, "Squeeze's axes")
    if axes is None:
        if not all(isinstance(d, int) for d in x.type.shape):
            raise Unsupported(f"Squeeze without axes of {x.type} (which symbolic dims are 1?)",
                              hint=dim_hint(x.type.shape))
        axes = tuple(i for i, d in enumerate(x.type.shape) if d == 1)
    return [ctx.emit("squeeze", x, axes=axes) if axes else x]


@converter("Unsqueeze")
def _unsqueeze(ctx):
    return [ctx.emit("unsqueeze", ctx.input(0), axes=ctx.static_ints(1, "Unsqueeze's axes"))]


@converter("Concat")
def _concat(ctx):
    return [ctx.emit("concat", *ctx.inputs(), axis=ctx.attr("axis"))]


@converter("Split")
def _split(ctx):
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.type.rank)
    size = x.type.shape[axis]
    sizes = ctx.static_ints(1, "Split's sizes")
    count = ctx.positive_attr("num_outputs", len(ctx.node.output))
    if sizes is None:
        if not isinstance(size, int):
            raise Unsupported(f"Split of the symbolic axis {size} into equal parts")
        part = -(-size // count)  # ONNX: equal parts, the last one smaller
        sizes = [min(part, size - i * part) for i in range(count)]
    outputs, start = [], 0
    for length in sizes:
        outputs.append(ctx.emit("slice", x, starts=(start,), ends=(start + length,),
                                axes=(axis,), steps=(1,)))
        start += length
    return outputs


@converter("Slice")
def _slice(ctx):
    x = ctx.input(0)
    starts = ctx.static_dims(1, "Slice's starts")
    ends = ctx.static_dims(2, "Slice's ends")
    axes = ctx.static_ints(3, "Slice's axes", tuple(range(len(starts))))
    steps = ctx.static_ints(4, "Slice's steps", (1,) * len(starts))
    return [ctx.emit("slice", x, starts=tuple(map(_clamped, starts)),
                     ends=tuple(map(_clamped, ends)), axes=tuple(axes), steps=tuple(steps))]


def _clamped(bound):
    """A slice bound within what the slice op takes: int64's open ends stay in range; a
    symbolic bound (`S`) is taken as it is."""
    return min(max(bound, TO_START), TO_END) if isinstance(bound, int) else bound


def _indices(ctx, index, size):
    """Gather's indices: constant ones with negatives counted from the end (as ONNX does)."""
    known = ctx.importer.static_value(ctx.node.input[index])
    if known is None or known.symbolic:
        return as_index(ctx, ctx.input(index))
    indices = known.array.astype(np.int64)
    if isinstance(size, int):
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise Unsupported(f"indices {indices.ravel().tolist()[:8]} are out of range for an "
                              f"axis of size {size}")
        indices = np.where(indices < 0, indices + size, indices)
    return ctx.known_tensor(indices, ctx.node.input[index])


def as_index(ctx, indices):
    """Indices computed at run time as the IR's index operands take them: ONNX's may be int32
    (torch's `.int()`), the IR's are int64."""
    if indices.type.dtype == "i64":
        return indices
    return ctx.emit("cast", indices, dtype="i64")


@converter("Gather")
def _gather(ctx):
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.type.rank)
    return [ctx.emit("take", x, _indices(ctx, 1, x.type.shape[axis]), axis=axis)]


@converter("GatherElements")
def _gather_elements(ctx):
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), x.type.rank)
    return [ctx.emit("gather_elements", x, _indices(ctx, 1, x.type.shape[axis]), axis=axis)]


@converter("TopK")
def _top_k(ctx):
    x = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", -1), x.type.rank)
    k = ctx.static_int(1, "TopK's k")
    if k < 0 or isinstance(x.type.shape[axis], int) and k > x.type.shape[axis]:
        raise Unsupported(f"TopK of k={k} along an axis of {x.type.shape[axis]}")
    # Sorted or not, the k come best first: ONNX leaves their order open when unsorted.
    ctx.attr("sorted", 1)
    indices = ctx.emit("top_k_indices", x, k=k, axis=axis, largest=bool(ctx.attr("largest", 1)))
    return [ctx.emit("gather_elements", x, indices, axis=axis), indices]


@converter("ReverseSequence")
def _reverse_sequence(ctx):
    """Each batch entry's first sequence_lens[b] steps in reverse, the rest as they are: a
    gather along the time axis at index len − 1 − t for t < len, else t (lengths clamped to
    [0, T], which ONNX requires of them)."""
    x, lengths = ctx.input(0), ctx.input(1)
    time_axis, batch_axis = ctx.attr("time_axis", 0), ctx.attr("batch_axis", 1)
    if {time_axis, batch_axis} != {0, 1} or x.type.rank < 2:
        raise Unsupported(f"ReverseSequence with time_axis={time_axis} and "
                          f"batch_axis={batch_axis} of a rank-{x.type.rank} input (they are "
                          f"axes 0 and 1)")
    if lengths.type.dtype != "i64":
        raise Unsupported(f"ReverseSequence's sequence_lens of {lengths.type.dtype}")
    steps = x.type.shape[time_axis]
    lengths = ctx.emit("minimum", ctx.emit("maximum", lengths, ctx.constant(0, lengths)),
                       ctx.constant(steps, lengths) if isinstance(steps, int) else
                       ctx.emit("numel", x, axes=(time_axis,), dtype="i64"))
    time = ctx.emit("unsqueeze", ctx.emit("arange", n=steps), axes=(1,))  # [T, 1]
    lengths = ctx.emit("unsqueeze", lengths, axes=(0,))  # [1, B]
    reversed_time = ctx.emit("sub", ctx.emit("sub", lengths, ctx.constant(1, lengths)), time)
    index = ctx.emit("where", ctx.emit("less", time, lengths), reversed_time,
                     ctx.emit("broadcast_like", time, reversed_time))  # [T, B]
    if time_axis == 1:
        index = ctx.emit("transpose", index, perm=(1, 0))
    if x.type.rank > 2:
        index = ctx.emit("unsqueeze", index, axes=tuple(range(2, x.type.rank)))
    return [ctx.emit("gather_elements", x, ctx.emit("broadcast_like", index, x), axis=time_axis)]


def _broadcast_target(x, target):
    """Expand's bidirectional broadcast as broadcast_to's target (-1 keeps x's dim)."""
    rank = max(len(target), x.type.rank)
    have_dims = [1] * (rank - x.type.rank) + list(x.type.shape)
    target = [1] * (rank - len(target)) + list(target)
    result = []
    for axis, (have, want) in enumerate(zip(have_dims, target, strict=True)):
        keep = axis >= rank - x.type.rank
        if want == 1 or want == have:
            result.append(-1 if keep else 1)
        elif have == 1:
            result.append(want)
        else:
            shown = ", ".join(map(str, target))
            why = "do not broadcast" if isinstance(have, int) and isinstance(want, int) else \
                "cannot be decided when the model is imported"
            raise Unsupported(f"Expand of {x.type} to [{shown}]: {have} against {want} {why}",
                              hint=dim_hint((have, want)))
    return tuple(result)


@converter("Expand")
def _expand(ctx):
    x = ctx.input(0)
    target = _broadcast_target(x, ctx.static_dims(1, "Expand's shape"))
    if all(d == -1 for d in target) and len(target) == x.type.rank:
        return [x]
    return [ctx.emit("broadcast_to", x, shape=target)]


@converter("Tile")
def _tile(ctx):
    x = ctx.input(0)
    repeats = ctx.require_length(ctx.static_dims(1, "Tile's repeats"), x.type.rank,
                                 "Tile's repeats")
    if any(isinstance(count, int) and count < 0 for count in repeats):
        raise Unsupported(f"Tile's repeats {list(repeats)}: a count is 0 or more")
    if 0 in repeats:
        return [ctx.empty(x, [dims.mul(d, r) for d, r in zip(x.type.shape, repeats,
                                                             strict=True)])]
    # A symbolic dim is 1 or more: the repeats alone must fit.
    ctx.require_size(x.type.dtype, [d * r if isinstance(d, int) and isinstance(r, int) else r
                                    for d, r in zip(x.type.shape, repeats, strict=True)])
    for axis, count in enumerate(repeats):
        x = _repeated(ctx, x, count, axis) if isinstance(count, int) else \
            broadcast_repeat(ctx, x, count, axis, each=False)
    return [x]


def broadcast_repeat(ctx, x, count, axis, each):
    """x `count` times along `axis`, through a broadcast along a new axis merged into it, so
    the count may be symbolic (`B`): the whole axis over again ([a, b, a, b]), or with `each`
    every element in place ([a, a, b, b])."""
    new_axis = axis + 1 if each else axis
    spread = ctx.emit("unsqueeze", x, axes=(new_axis,))
    target = [-1] * spread.type.rank
    target[new_axis] = count
    spread = ctx.emit("broadcast_to", spread, shape=tuple(target))
    shape = list(x.type.shape)
    shape[axis] = dims.mul(count, shape[axis])
    return ctx.emit("reshape", spread, shape=tuple(shape))


def _repeated(ctx, x, count, axis):
    """x `count` times along the axis, by doubling: log2(count) concats, not `count` inputs."""
    result, power = None, x
    while count:
        if count & 1:
            result = power if result is None else ctx.emit("concat", result, power, axis=axis)
        count >>= 1
        if count:
            power = ctx.emit("concat", power, power, axis=axis)
    return result


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@converter("Pad")
def _pad(ctx):
    x = ctx.input(0)
    mode = ctx.require_attr("mode", tuple(PAD_MODES), "constant")
    value = ctx.static(2, "Pad's constant value")
    axes = ctx.static_ints(3, "Pad's axes", tuple(range(x.type.rank)))
    axes = ctx.axes(axes, x.type.rank)
    pads = ctx.require_length(ctx.static_dims(1, "Pad's pads"), 2 * len(axes), "Pad's pads")
    if any(isinstance(p, int) and p < 0 for p in pads):
        raise Unsupported("negative pads (cropping)")
    begins, ends = pads[:len(axes)], pads[len(axes):]
    fill = 0.0 if value is None or value.size == 0 else \
        float(ctx.static_scalar(2, "Pad's constant value"))
    if any(dims.is_symbolic(p) for p in pads):
        return [_pad_by_dims(ctx, x, mode, dict(zip(axes, zip(begins, ends, strict=True),
                                                    strict=True)), fill)]
    # The DSL's pad takes PyTorch's pairs, from the last axis backwards.
    by_axis = {axis: (b, e) for axis, b, e in zip(axes, begins, ends, strict=True)}
    pairs = []
    for axis in reversed(range(x.type.rank)):
        pairs += by_axis.get(axis, (0, 0))
    return [compositions.pad(ctx, x, tuple(pairs), PAD_MODES[mode], fill)]


def _pad_by_dims(ctx, x, mode, by_axis, fill):
    """Constant pads computed from symbolic dims (a UNet's `F.pad` of an up-sampled map to
    its skip's size, `(H//2 - 2*(H//4)) // 2`): each axis' pads are fills of that size
    concatenated before and after x, so every backend and the gradient see plain ops."""
    if mode != "constant":
        raise Unsupported(f"mode={mode!r} with pads computed from symbolic dims "
                          f"({', '.join(map(str, by_axis.values()))})",
                          hint="only constant padding takes computed pads; fix the dims "
                               "with --dim")
    for axis, pair in sorted(by_axis.items()):
        if not all(dims.is_nonnegative(p) for p in pair):
            raise Unsupported(f"pads {pair[0]}, {pair[1]} of axis {axis} may be negative "
                              f"(cropping) for some sizes", hint=dim_hint(pair))
        parts = []
        for pad in pair:
            if pad != 0:
                shape = x.type.shape[:axis] + (pad,) + x.type.shape[axis + 1:]
                parts.append(ctx.emit("fill", ctx.constant(fill, x), shape=shape))
        if parts:
            pieces = [parts[0], x, *parts[1:]] if pair[0] != 0 else [x, *parts]
            x = ctx.emit("concat", *pieces, axis=axis)
    return x


@converter("ConstantOfShape")
def _constant_of_shape(ctx):
    """A shape with symbolic dims (or too large to fold): a fill, as the DSL's zeros((B, 4))
    is."""
    shape = ctx.static_dims(0, "ConstantOfShape's shape")
    scalar = ctx.known_tensor(fill_value(ctx), ctx.node.output[0])
    return [ctx.emit("fill", scalar, shape=shape)]


RANGE_BOUNDS = ("Range's start", "Range's limit", "Range's delta")


@converter("Range")
def _range(ctx):
    """A Range of known bounds folds (folding.py); an integer one over dims (`0` to `S`, `P`
    to `P+S`) counts `(limit - start) / delta` values, rounded up, with the arange op, in
    int64 and then cast to the Range's dtype (int32: `torch.arange(S, dtype=torch.int32)`)."""
    dtype = ctx.type_of(0).dtype
    if not is_int(dtype):
        return [range_values(*(ctx.static_scalar(index, what)
                               for index, what in enumerate(RANGE_BOUNDS)))]
    start, limit, delta = (ctx.require_length(ctx.static_dims(index, what), 1, what)[0]
                           for index, what in enumerate(RANGE_BOUNDS))
    if not (isinstance(delta, int) and delta > 0):
        raise Unsupported(f"Range from {start} to {limit} by {delta} (a Range over dims takes "
                          f"a positive number delta)", hint=dim_hint((start, limit, delta)))
    values = ctx.emit("arange", n=dims.ceildiv(dims.sub(limit, start), delta))
    if delta != 1:
        values = ctx.emit("mul", values, ctx.constant(delta, values))
    if start != 0:
        values = ctx.emit("add", values, ctx.known_tensor(shape_of([start]), "start"))
    return [values if dtype == "i64" else ctx.emit("cast", values, dtype=dtype)]


@converter("Trilu")
def _trilu(ctx):
    """x where a triangular mask of its last two dims holds, else 0: a constant for known
    dims, computed from the positions (arange) for symbolic ones (a causal mask over S)."""
    x = ctx.require_rank(ctx.input(0), 2)
    rows, columns = x.type.shape[-2:]
    k = ctx.static_int(1, "Trilu's k", 0)
    upper = ctx.attr("upper", 1)
    if not isinstance(rows, int) or not isinstance(columns, int):
        if UNKNOWN in (rows, columns):
            raise Unsupported(f"Trilu of {x.type} (its last two dims must be known or named)")
        return [compositions.triangle(ctx, x, k, bool(upper))]
    # Past the matrix's corners, every diagonal keeps all or none of it.
    k = min(max(k, -rows), columns)
    triangle = np.triu if upper else np.tril
    mask = triangle(np.ones((rows, columns), dtype=bool), k)
    zero = ctx.constant(0, x)
    if mask.all():
        return [x]
    if not mask.any():
        return [ctx.emit("broadcast_like", zero, x)]
    return [ctx.emit("where", ctx.known_tensor(mask, ctx.node.output[0]), x, zero)]


def _blocks(ctx, x):
    blocksize = ctx.positive_attr("blocksize")
    if x.type.rank != 4 or not all(isinstance(d, int) for d in x.type.shape[1:]):
        raise Unsupported(f"{ctx.node.op_type} of {x.type} (it takes [N, C, H, W] with known "
                          f"C, H and W)")
    return blocksize, x.type.shape[1:]


@converter("SpaceToDepth")
def _space_to_depth(ctx):
    x = ctx.input(0)
    size, (channels, height, width) = _blocks(ctx, x)
    mode = ctx.require_attr("mode", ("DCR", "CRD"), "DCR")
    blocks = ctx.emit("reshape", x, shape=(0, channels, height // size, size, width // size,
                                           size))
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    return [ctx.emit("reshape", ctx.emit("transpose", blocks, perm=perm),
                     shape=(0, channels * size * size, height // size, width // size))]


@converter("DepthToSpace")
def _depth_to_space(ctx):
    x = ctx.input(0)
    size, (channels, height, width) = _blocks(ctx, x)
    depth = channels // (size * size)
    if ctx.require_attr("mode", ("DCR", "CRD"), "DCR") == "DCR":
        blocks, perm = (0, size, size, depth, height, width), (0, 3, 4, 1, 5, 2)
    else:
        blocks, perm = (0, depth, size, size, height, width), (0, 1, 4, 2, 5, 3)
    spread = ctx.emit("transpose", ctx.emit("reshape", x, shape=blocks), perm=perm)
    return [ctx.emit("reshape", spread, shape=(0, depth, height * size, width * size))]


@converter("Compress")
def _compress(ctx):
    """The slices along the axis (of x flattened, without one) where the known condition
    holds."""
    x = ctx.input(0)
    condition = ctx.static(1, "Compress's condition").astype(bool).ravel()
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = ctx.emit("reshape", x, shape=(-1,)), 0
    axis = ctx.axis(axis, x.type.rank)
    picked = np.flatnonzero(condition)
    size = x.type.shape[axis]
    if isinstance(size, int) and picked.size and picked[-1] >= size:
        raise Unsupported(f"Compress of {x.type} along axis {axis} by a condition of "
                          f"{condition.size} values")
    return [ctx.emit("take", x, ctx.known_tensor(picked, ctx.node.input[1]), axis=axis)]


@converter("OneHot")
def _one_hot(ctx):
    """values[1] where an index (negative ones counted from the end) equals its position
    along the new axis, values[0] elsewhere."""
    indices, values = ctx.input(0), ctx.input(2)
    depth = ctx.static_scalar(1, "OneHot's depth")
    if not np.isfinite(depth) or depth < 1:
        raise Unsupported(f"OneHot's depth {depth} (it must be 1 or more)")
    depth = int(depth)
    rank = indices.type.rank + 1
    axis = ctx.axis(ctx.attr("axis", -1), rank)
    ctx.require_size(values.type.dtype, indices.type.shape + (depth,))
    wrapped = ctx.emit("where", ctx.emit("less", indices, ctx.constant(0, indices)),
                       ctx.emit("add", indices, ctx.constant(depth, indices)), indices)
    positions = np.arange(depth).reshape((depth,) + (1,) * (rank - 1 - axis))
    positions = ctx.known_tensor(positions.astype(numpy_dtype(indices.type.dtype)),
                                 ctx.node.output[0])
    hot = ctx.emit("equal", ctx.emit("unsqueeze", wrapped, axes=(axis,)), positions)

    def value(index):
        part = ctx.emit("slice", values, starts=(index,), ends=(index + 1,), axes=(0,),
                        steps=(1,))
        return ctx.emit("reshape", part, shape=())
    return [ctx.emit("where", hot, value(1), value(0))]


# A scatter's reduction other than add -> the elementwise op combining data with the reduced
# updates, the reduction over the updates landing on one position, and what it starts from.
SCATTER_REDUCTIONS = {"mul": ("mul", "prod", 1.0), "max": ("maximum", "max", -np.inf),
                      "min": ("minimum", "min", np.inf)}
REDUCTIONS = ("none", "add", *SCATTER_REDUCTIONS)


def _scatter_reduced(ctx, data, indices, updates, axis: int, reduction: str):
    """data combined with the updates at indices along `axis` by mul, max or min (repeated
    indices reduce together): each update is laid on a new axis after `axis` at its index,
    the rest of that axis holding the reduction's identity, and reduced over `axis`. It costs
    updates x positions; indices [.., K, ..] broadcast against updates [.., K, .., R...]."""
    combine, reduce, identity = SCATTER_REDUCTIONS[reduction]
    size = data.type.shape[axis]
    if not is_float(data.type.dtype) or not isinstance(size, int):
        raise Unsupported(f"{ctx.node.op_type} with reduction={reduction!r} of {data.type} "
                          f"(it takes floats with a known indexed axis)")
    ctx.require_size(data.type.dtype, (*updates.type.shape[:axis + 1], size,
                                       *updates.type.shape[axis + 1:]))
    indices = ctx.emit("where", ctx.emit("less", indices, ctx.constant(0, indices)),
                       ctx.emit("add", indices, ctx.constant(size, indices)), indices)
    laid = [1] * (indices.type.rank + 1)
    laid[axis + 1] = size
    positions = ctx.known_tensor(np.arange(size).reshape(laid), "positions")
    hit = ctx.emit("equal", ctx.emit("unsqueeze", indices, axes=(axis + 1,)), positions)
    spread = ctx.emit("where", hit, ctx.emit("unsqueeze", updates, axes=(axis + 1,)),
                      ctx.constant(identity, updates))
    reduced = ctx.emit(reduce, spread, axes=(axis,), keepdims=False)
    return ctx.emit(combine, data, reduced)


@converter("ScatterElements")
def _scatter_elements(ctx):
    """data with updates written (or, with reduction add, added) at indices along the axis:
    scatter_elements_add of the updates, and of ones to find where they land. A reduction of
    mul, max or min combines them as _scatter_reduced does."""
    data = ctx.input(0)
    axis = ctx.axis(ctx.attr("axis", 0), data.type.rank)
    indices = _indices(ctx, 1, data.type.shape[axis])
    updates = ctx.input(2)
    reduction = ctx.require_attr("reduction", REDUCTIONS, "none")
    if reduction in SCATTER_REDUCTIONS:
        return [_scatter_reduced(ctx, data, indices, updates, axis, reduction)]
    added = ctx.emit("scatter_elements_add", updates, indices, data, axis=axis)
    if reduction == "add":
        return [ctx.emit("add", data, added)]
    ones = ctx.emit("broadcast_like", ctx.constant(1, updates), updates)
    hit = ctx.emit("scatter_elements_add", ones, indices, data, axis=axis)
    return [ctx.emit("where", ctx.emit("greater", hit, ctx.constant(0, hit)), added, data)]


def _flat_positions(ctx, data, indices):
    """GatherND's and ScatterND's indices [..., k] as positions into data's first k axes
    flattened (negative indices counted from the end), and data so flattened."""
    indices = as_index(ctx, indices)
    depth = ctx.require_rank(indices, 1, what="indices").type.shape[-1]
    leading = data.type.shape[:depth] if isinstance(depth, int) else ()
    if not leading or UNKNOWN in leading:
        raise Unsupported(f"{ctx.node.op_type} of {data.type} at indices {indices.type} (the "
                          f"indexed dims must be known or named)")
    # Symbolic sizes and strides (`[B, S]`, `[S, 1]`) are computed at run time.
    sizes = ctx.known_tensor(shape_of(leading), "sizes")
    wrapped = ctx.emit("where", ctx.emit("less", indices, ctx.constant(0, indices)),
                       ctx.emit("add", indices, sizes), indices)
    strides = shape_of([dims.product(leading[axis + 1:]) for axis in range(len(leading))])
    positions = ctx.emit("sum", ctx.emit("mul", wrapped, ctx.known_tensor(strides, "strides")),
                         axes=(-1,), keepdims=False)
    flat = ctx.emit("reshape", data, shape=(-1,) + tuple(data.type.shape[depth:]))
    return positions, flat


@converter("GatherND")
def _gather_nd(ctx):
    data, indices = ctx.input(0), ctx.input(1)
    ctx.require_attr("batch_dims", 0, 0)
    positions, flat = _flat_positions(ctx, data, indices)
    return [ctx.emit("take", flat, positions, axis=0)]


@converter("ScatterND")
def _scatter_nd(ctx):
    """data with updates written (or added) at indices, through scatter_add on data with its
    indexed axes flattened, as ScatterElements is."""
    data, indices, updates = ctx.input(0), ctx.input(1), ctx.input(2)
    reduction = ctx.require_attr("reduction", REDUCTIONS, "none")
    positions, flat = _flat_positions(ctx, data, indices)
    if reduction in SCATTER_REDUCTIONS:  # one row of the flattened data per update
        rows = ctx.emit("reshape", positions, shape=(-1,) + (1,) * (flat.type.rank - 1))
        values = ctx.emit("reshape", updates, shape=(-1,) + tuple(flat.type.shape[1:]))
        return [ctx.emit("reshape", _scatter_reduced(ctx, flat, rows, values, 0, reduction),
                         shape=data.type.shape)]

    def scattered(values):
        added = ctx.emit("scatter_add", values, positions, flat, axis=0)
        return ctx.emit("reshape", added, shape=data.type.shape)
    added = scattered(updates)
    if reduction == "add":
        return [ctx.emit("add", data, added)]
    hit = scattered(ctx.emit("broadcast_like", ctx.constant(1, updates), updates))
    return [ctx.emit("where", ctx.emit("greater", hit, ctx.constant(0, hit)), added, data)]


@converter("CenterCropPad")
def _center_crop_pad(ctx):
    """Each axis cropped or zero-padded to its size around the centre (the odd element at
    the end)."""
    x = ctx.input(0)
    axes = ctx.attr("axes")
    axes = range(x.type.rank) if axes is None else ctx.axes(axes, x.type.rank)
    sizes = ctx.require_length(ctx.static_ints(1, "CenterCropPad's shape"), len(axes),
                               "CenterCropPad's shape")
    pads = [0] * 2 * x.type.rank
    for axis, size in zip(axes, sizes, strict=True):
        have = x.type.shape[axis]
        if not isinstance(have, int):
            raise Unsupported(f"CenterCropPad of the symbolic axis {axis} of {x.type}")
        if size < have:
            start = (have - size) // 2
            x = ctx.emit("slice", x, starts=(start,), ends=(start + size,), axes=(axis,),
                         steps=(1,))
        elif size > have:
            extra = size - have
            pads[axis], pads[x.type.rank + axis] = extra // 2, extra - extra // 2
    if any(pads):
        x = ctx.emit("pad", x, pads=tuple(pads), value=0.0)
    return [x]



@converter("CumSum")
def _cumulative_sum(ctx):
    """The cumsum op; reverse runs it over the axis flipped, and exclusive over x shifted one
    place along it, a zero coming in (so each sum holds only the elements it should, and an
    inf or a nan stays where it belongs)."""
    return _cumulative(ctx, "cumsum", 0)


@converter("CumProd")
def _cumulative_product(ctx):
    """As CumSum, a one coming in where exclusive shifts x."""
    return _cumulative(ctx, "cumprod", 1)


def _cumulative(ctx, op, identity):
    x = ctx.input(0)
    axis = ctx.axis(ctx.static_int(1, f"{ctx.node.op_type}'s axis"), x.type.rank)

    def flipped(value):
        return ctx.emit("slice", value, starts=(-1,), ends=(TO_START,), axes=(axis,),
                        steps=(-1,))
    total = flipped(x) if ctx.attr("reverse", 0) else x
    if ctx.attr("exclusive", 0):  # the zero joins before the last is cut: never empty
        first = ctx.emit("slice", total, starts=(0,), ends=(1,), axes=(axis,), steps=(1,))
        joined = ctx.emit("concat", ctx.emit("broadcast_like", ctx.constant(identity, first),
                                             first), total, axis=axis)
        total = ctx.emit("slice", joined, starts=(0,), ends=(-1,), axes=(axis,), steps=(1,))
    total = ctx.emit(op, total, axis=axis)
    return [flipped(total) if ctx.attr("reverse", 0) else total]
