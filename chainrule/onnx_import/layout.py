"""The ONNX op table, shapes and indexing: reshapes, slices, gathers, padding and friends.

Their shape-like inputs (a Reshape's shape, a Slice's bounds) must be known at import time;
folding.py computes them when an exporter builds them from `Shape` chains. A symbolic dim in a
target shape becomes ONNX's own 0 (copy the input dim) or -1 (whatever is left).
"""
from __future__ import annotations

import math

import numpy as np

from ..dsl.builtins import BUILTINS
from ..ir.shapes import TO_END, TO_START
from .context import Unsupported, converter


def _static_shape(ctx, index, what):
    """A shape input that may hold symbolic dims, as a list of ints and dim names."""
    known = ctx.importer.static_value(ctx.node.input[index])
    if known is None:
        raise Unsupported(f"{what} (input '{ctx.node.input[index]}') must be a constant, not "
                          f"a value computed at run time")
    return [d if isinstance(d, str) else int(d) for d in known.array.ravel().tolist()]


def _reshape_target(x, target, allowzero):
    """ONNX's target shape in the reshape op's terms: symbolic dims as 0 or -1."""
    if allowzero and 0 in target:
        raise Unsupported("Reshape with allowzero=1 and a 0 dim (empty tensors)")
    result = []
    for axis, dim in enumerate(target):
        if isinstance(dim, str):
            same = axis < x.type.rank and x.type.shape[axis] == dim
            result.append(0 if same else -1)
        else:
            result.append(dim)
    if result.count(-1) > 1:
        raise Unsupported(f"Reshape to {target}: more than one dim is unknown; give the "
                          f"symbolic dims sizes with --dim")
    return tuple(result)


@converter("Reshape")
def _reshape(ctx):
    x = ctx.input(0)
    target = _reshape_target(x, _static_shape(ctx, 1, "Reshape's shape"),
                             ctx.attr("allowzero", 0))
    return [ctx.emit("reshape", x, shape=target)]


@converter("Flatten")
def _flatten(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 1) % (x.type.rank + 1)
    before, after = x.type.shape[:axis], x.type.shape[axis:]
    sizes = [math.prod(dims) if all(isinstance(d, int) for d in dims) else -1
             for dims in (before, after)]
    if sizes == [-1, -1]:
        if len(before) != 1:
            raise Unsupported(f"Flatten of {x.type} at axis {axis}: both sides have "
                              f"symbolic dims")
        sizes[0] = 0  # the one symbolic dim before the axis is kept
    return [ctx.emit("reshape", x, shape=tuple(sizes))]


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
            raise Unsupported(f"Squeeze without axes of {x.type} (which symbolic dims are 1?)")
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
    axis = ctx.attr("axis", 0) % x.type.rank
    size = x.type.shape[axis]
    sizes = ctx.static_ints(1, "Split's sizes")
    count = ctx.attr("num_outputs", len(ctx.node.output))
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
    starts = ctx.static_ints(1, "Slice's starts")
    ends = ctx.static_ints(2, "Slice's ends")
    axes = ctx.static_ints(3, "Slice's axes", tuple(range(len(starts))))
    steps = ctx.static_ints(4, "Slice's steps", (1,) * len(starts))
    clamp = lambda v: min(max(v, TO_START), TO_END)  # noqa: E731  int64's ends stay in range
    return [ctx.emit("slice", x, starts=tuple(map(clamp, starts)), ends=tuple(map(clamp, ends)),
                     axes=tuple(axes), steps=tuple(steps))]


def _indices(ctx, index, size):
    """Gather's indices: constant ones with negatives counted from the end (as ONNX does)."""
    known = ctx.importer.static_value(ctx.node.input[index])
    if known is None or known.symbolic:
        return ctx.input(index)
    indices = known.array.astype(np.int64)
    if isinstance(size, int):
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise Unsupported(f"indices {indices.ravel().tolist()[:8]} are out of range for an "
                              f"axis of size {size}")
        indices = np.where(indices < 0, indices + size, indices)
    return ctx.known_tensor(indices, ctx.node.input[index])


@converter("Gather")
def _gather(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 0) % x.type.rank
    return [ctx.emit("take", x, _indices(ctx, 1, x.type.shape[axis]), axis=axis)]


@converter("GatherElements")
def _gather_elements(ctx):
    x = ctx.input(0)
    axis = ctx.attr("axis", 0) % x.type.rank
    return [ctx.emit("gather_elements", x, _indices(ctx, 1, x.type.shape[axis]), axis=axis)]


def _broadcast_target(x, target):
    """Expand's bidirectional broadcast as broadcast_to's target (-1 keeps x's dim)."""
    rank = max(len(target), x.type.rank)
    dims = [1] * (rank - x.type.rank) + list(x.type.shape)
    target = [1] * (rank - len(target)) + list(target)
    result = []
    for axis, (have, want) in enumerate(zip(dims, target, strict=True)):
        keep = axis >= rank - x.type.rank
        if want == 1 or want == have:
            result.append(-1 if keep else 1)
        elif have == 1 and not isinstance(want, str):
            result.append(want)
        else:
            raise Unsupported(f"Expand of {x.type} to {target}")
    return tuple(result)


@converter("Expand")
def _expand(ctx):
    x = ctx.input(0)
    target = _broadcast_target(x, _static_shape(ctx, 1, "Expand's shape"))
    if all(d == -1 for d in target) and len(target) == x.type.rank:
        return [x]
    return [ctx.emit("broadcast_to", x, shape=target)]


@converter("Tile")
def _tile(ctx):
    x = ctx.input(0)
    repeats = ctx.static_ints(1, "Tile's repeats")
    for axis, count in enumerate(repeats):
        if count != 1:
            x = ctx.emit("concat", *([x] * count), axis=axis)
    return [x]


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


@converter("Pad")
def _pad(ctx):
    x = ctx.input(0)
    mode = ctx.require_attr("mode", tuple(PAD_MODES), "constant")
    pads = ctx.static_ints(1, "Pad's pads")
    value = ctx.static(2, "Pad's constant value")
    axes = ctx.static_ints(3, "Pad's axes", tuple(range(x.type.rank)))
    axes = [a % x.type.rank for a in axes]
    if any(p < 0 for p in pads):
        raise Unsupported("negative pads (cropping)")
    begins, ends = pads[:len(axes)], pads[len(axes):]
    # The DSL's pad takes PyTorch's pairs, from the last axis backwards.
    by_axis = {axis: (b, e) for axis, b, e in zip(axes, begins, ends, strict=True)}
    pairs = []
    for axis in reversed(range(x.type.rank)):
        pairs += by_axis.get(axis, (0, 0))
    fill = 0.0 if value is None or value.size == 0 else float(value.reshape(()))
    return [BUILTINS["pad"].compose(ctx, x, tuple(pairs), PAD_MODES[mode], fill)]


@converter("ConstantOfShape")
def _constant_of_shape(ctx):
    """A shape with symbolic dims (or too large to fold): a fill that reads each dim off an
    input that declares it, as the DSL's zeros((B, 4)) does."""
    from onnx import numpy_helper
    shape = _static_shape(ctx, 0, "ConstantOfShape's shape")
    value = ctx.attr("value")
    array = numpy_helper.to_array(value).reshape(()) if value is not None else \
        np.float32(0)
    scalar = ctx.known_tensor(np.asarray(array), ctx.node.output[0])
    sources = [ctx.importer.dim_source(dim) for dim in shape if isinstance(dim, str)]
    return [ctx.emit("fill", scalar, *(source for source, _ in sources),
                     shape=tuple(-1 if isinstance(d, str) else d for d in shape),
                     axes=tuple(axis for _, axis in sources))]
