"""Shape arithmetic shared by the ops' type rules: broadcasting, reductions, matmul, reshapes,
slices and concatenation. Symbolic dims flow through as dim expressions (`B*H`, `S-1`,
dims.py); a dim is UNKNOWN only when no expression can describe it (a slice that numpy clamps
at a size it does not know).
"""
from __future__ import annotations

from . import dims
from .types import UNKNOWN, Dim

# Slice bounds meaning "to the end" (forward) and "back past the first element" (backward); ONNX
# recommends exactly these for dims whose size is not known when the graph is built.
TO_END = 2**63 - 1
TO_START = -(2**63)


class OpTypeError(Exception):
    """An op was given operands it cannot take; the caller attaches the node's location."""


def unify_dims(a: Dim, b: Dim) -> Dim:
    """The dim two broadcast operands agree on, following numpy's rules."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if a == UNKNOWN:
        return b
    if b == UNKNOWN:
        return a
    raise OpTypeError(f"dims {a} and {b} do not match")


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    rank = max((len(s) for s in shapes), default=0)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    result = []
    for axis, column in enumerate(zip(*padded)):
        out = column[0]
        for dim in column[1:]:
            try:
                out = unify_dims(out, dim)
            except OpTypeError:
                listed = " and ".join(format_shape(s) for s in shapes)
                raise OpTypeError(f"shapes {listed} do not broadcast "
                                  f"(axis {axis - rank}: {out} vs {dim})") from None
        result.append(out)
    return tuple(result)


def broadcast_to_shape(shape, target) -> tuple[Dim, ...]:
    """`target`, after checking that `shape` broadcasts to it without changing it."""
    if broadcast_shapes(shape, target) != tuple(target):
        raise OpTypeError(f"cannot broadcast {format_shape(shape)} to {format_shape(target)}")
    return tuple(target)


def format_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise OpTypeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def normalize_axes(axes, rank: int) -> tuple[int, ...]:
    """Axes as sorted non-negative ints; None means every axis."""
    if axes is None:
        return tuple(range(rank))
    normalized = tuple(sorted(normalize_axis(a, rank) for a in axes))
    if len(set(normalized)) != len(normalized):
        raise OpTypeError(f"axes {tuple(axes)} repeat an axis")
    return normalized


def reduced_shape(shape, axes, keepdims: bool) -> tuple[Dim, ...]:
    reduced = set(normalize_axes(axes, len(shape)))
    if keepdims:
        return tuple(1 if i in reduced else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in reduced)


def matmul_shape(a, b) -> tuple[Dim, ...]:
    """numpy.matmul's shape rule: 1-D operands are promoted then squeezed, batch dims broadcast."""
    if len(a) == 0 or len(b) == 0:
        raise OpTypeError("matmul needs operands of rank 1 or more, not scalars")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if not dims_may_equal(a2[-1], b2[-2]):
        raise OpTypeError(f"matmul of {format_shape(a)} and {format_shape(b)}: "
                          f"inner dims {a2[-1]} and {b2[-2]} differ")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) != 1 else out[:-1]
    return out


def dims_may_equal(a: Dim, b: Dim) -> bool:
    """Whether a and b can be the same size: equal, or not provably different (`B*H` and `N`
    may be; the run checks them)."""
    return a == b or not dims.provably_different(a, b)


def shapes_may_equal(a, b) -> bool:
    return len(a) == len(b) and all(dims_may_equal(x, y) for x, y in zip(a, b))


# ---- reshape ----------------------------------------------------------------------------------

def reshaped_shape(shape, target) -> tuple[Dim, ...]:
    """The result of reshaping `shape` to `target`, where 0 copies the input dim at the same
    position and one -1 takes whatever is left (ONNX Reshape's rules)."""
    described = f"reshape of {format_shape(shape)} to {format_shape(target)}"
    if any(isinstance(d, int) and d < -1 for d in target) or list(target).count(-1) > 1:
        raise OpTypeError(f"{described}: dims are sizes, 0 (copy the input dim) or one -1")
    if any(isinstance(d, int) and d == 0 and i >= len(shape) for i, d in enumerate(target)):
        raise OpTypeError(f"{described}: a 0 copies the input dim at its position, and the "
                          f"input has only {len(shape)}")
    copied = {i for i, d in enumerate(target) if isinstance(d, int) and d == 0}
    result = [shape[i] if i in copied else d for i, d in enumerate(target)]
    if -1 in result:
        # A copied dim is on both sides of the quotient: it cancels, even when it is 0.
        left = [d for i, d in enumerate(shape) if i not in copied]
        known = [d for i, d in enumerate(result) if d != -1 and i not in copied]
        result[result.index(-1)] = _quotient(left, known, described)
    else:
        require_same_size(shape, result, described)
    return tuple(result)


def require_same_size(shape, target, described: str) -> None:
    """Raise when the element counts provably differ; counts that may agree at run time
    (`[B, 6]` and `[N]`) pass, and the run checks them."""
    if UNKNOWN in shape or UNKNOWN in target:
        return
    have, want = dims.product(shape), dims.product(target)
    if dims.provably_different(have, want):
        raise OpTypeError(f"{described}: {have} elements cannot become {want}")


def _quotient(numerator, denominator, described) -> Dim:
    """prod(numerator) / prod(denominator) as a dim (reshape's -1)."""
    if UNKNOWN in numerator or UNKNOWN in denominator:
        return UNKNOWN
    top, bottom = dims.product(numerator), dims.product(denominator)
    if isinstance(top, int) and isinstance(bottom, int) and (bottom == 0 or top % bottom):
        raise OpTypeError(f"{described}: {top} elements do not divide into "
                          f"{format_shape(denominator)}")
    if bottom == 0:
        raise OpTypeError(f"{described}: a dim of 0 leaves nothing to divide by")
    return dims.floordiv(top, bottom)


# ---- concat, slice, take ----------------------------------------------------------------------

def concat_shape(shapes, axis: int) -> tuple[Dim, ...]:
    """numpy.concatenate's shape rule: the joined dim is the sum of the parts'."""
    listed = " and ".join(format_shape(s) for s in shapes)
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1 or 0 in ranks:
        raise OpTypeError(f"concat needs operands of one rank of at least 1, got {listed}")
    axis = normalize_axis(axis, len(shapes[0]))
    result = []
    for i, parts in enumerate(zip(*shapes)):
        if i == axis:
            result.append(_sum(parts))
            continue
        known = [d for d in parts if d != UNKNOWN]
        if any(not dims_may_equal(known[0], d) for d in known[1:]):
            raise OpTypeError(f"concat along axis {axis} needs equal dims elsewhere, got "
                              f"{listed} (axis {i} differs)")
        # Dims that may agree (a UNet's `2*(H//4)` up-sampled and `H//2` skip) are equal
        # whenever the run gets past the concatenation, which checks them.
        result.append(simplest_dim(known) if known else UNKNOWN)
    return tuple(result)


def simplest_dim(candidates) -> Dim:
    """The one of dims that may agree to name them by: a number, else the shortest."""
    return min(candidates, key=lambda d: (dims.is_symbolic(d), len(str(d))))


def sliced_shape(shape, starts, ends, axes, steps) -> tuple[Dim, ...]:
    """The shape of x[start:end:step] on each of `axes` (Python's slicing rules)."""
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise OpTypeError(f"slice needs as many starts, ends and steps as axes, got "
                          f"{starts}, {ends}, {steps} for axes {axes}")
    if 0 in steps:
        raise OpTypeError("slice steps cannot be 0")
    normalize_axes(axes, len(shape))  # rejects repeated or out-of-range axes
    result = list(shape)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        axis = normalize_axis(axis, len(shape))
        result[axis] = _sliced_dim(shape[axis], start, end, step)
    return tuple(result)


def _sum(parts) -> Dim:
    total = 0
    for part in parts:
        total = dims.add(total, part)
    return total


# Bounds at least this large, or this far below zero, mean "past the end" whatever the size
# (exporters write INT64_MAX, INT32_MAX and the like for an open end).
FAR = 2**31 - 1


def _sliced_dim(dim: Dim, start: Dim, end: Dim, step: int) -> Dim:
    """Python's slice length, `dim` or the bounds being expressions: UNKNOWN where numpy may
    clamp a bound at a size the types cannot compare it with (`x[:, 0:5]` of an axis of S)."""
    if all(isinstance(d, int) for d in (dim, start, end)):
        return len(range(*slice(start, end, step).indices(dim)))
    if dim == UNKNOWN:
        return UNKNOWN
    forward = step > 0
    before_start = 0 if forward else -1
    first = _position(dim, start, None if forward else dims.sub(dim, 1), before_start)
    stop = _position(dim, end, dim if forward else None, before_start)
    if UNKNOWN in (first, stop):
        return UNKNOWN
    span = dims.sub(stop, first) if forward else dims.sub(first, stop)
    return dims.ceildiv(span, abs(step))


def _position(dim: Dim, bound: Dim, clamp_high: Dim | None, before_start: int) -> Dim:
    """A slice bound as a position on an axis of size `dim`, where one of them is symbolic.

    A negative bound counts back from the end (`-1` is `S-1`, `-S` of `S+T` is `T`), and must
    stay at 0 or past it for every size. A huge one (exporters' INT64_MAX for "to the end")
    is the end or `before_start`. `clamp_high` is where numpy clamps a bound past the end: a
    bound provably past it is it; a number that may or may not be is UNKNOWN; a symbolic
    bound on an axis of fixed size is taken to lie within it (`pos[0:T]` of 16 positions is T
    long, and a T past 16 fails where the rows are used)."""
    if isinstance(bound, int) and abs(bound) >= FAR:
        past_end = clamp_high if clamp_high is not None else dim
        return past_end if bound > 0 else before_start
    if dims.at_least(-1, bound):
        from_end = dims.add(dim, bound)
        return from_end if dims.at_least(from_end, 0) else UNKNOWN
    if not dims.at_least(bound, 0):
        return UNKNOWN
    if clamp_high is None or dims.at_least(clamp_high, bound):
        return bound
    if dims.at_least(bound, clamp_high):
        return clamp_high
    return UNKNOWN if isinstance(bound, int) else bound


def taken_shape(shape, indices_shape, axis: int) -> tuple[Dim, ...]:
    """numpy.take's shape rule: the indices' dims replace the axis."""
    if not shape:
        raise OpTypeError("take needs an operand of rank 1 or more, not a scalar")
    axis = normalize_axis(axis, len(shape))
    return tuple(shape[:axis]) + tuple(indices_shape) + tuple(shape[axis + 1:])


def compose_perms(first, then) -> tuple[int, ...]:
    """The permutation of transposing by `first`, then by `then`."""
    return tuple(first[p] for p in then)


def is_identity_perm(perm) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


# ---- sliding windows: convolution and pooling -------------------------------------------------

def check_window_attrs(op: str, rank: int, strides, pads, dilations=None, kernel=None) -> None:
    """The window attrs of a convolution or pooling over `rank` spatial axes: a positive stride
    (and dilation, kernel size) per axis, and pads >= 0, each axis' begin, then each one's end."""
    for name, values in (("kernel sizes", kernel), ("strides", strides),
                         ("dilations", dilations)):
        if values is None:
            continue
        if len(values) != rank:
            raise OpTypeError(f"{op} over {rank} spatial axes needs {rank} {name}, got "
                              f"{list(values)}")
        if any(v < 1 for v in values):
            raise OpTypeError(f"{op}'s {name} must be positive, got {list(values)}")
    if len(pads) != 2 * rank or any(p < 0 for p in pads):
        raise OpTypeError(f"{op} over {rank} spatial axes needs {2 * rank} pads >= 0 (each "
                          f"axis' begin, then each one's end), got {list(pads)}")


def conv_output_dim(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                    dilation: int = 1) -> Dim:
    """How many windows of a convolution fit along one axis of the padded input."""
    if isinstance(size, int):  # the backends' per-call case: plain arithmetic, no polynomials
        return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1
    span = dims.add(size, pad_begin + pad_end - dilation * (kernel - 1) - 1)
    return dims.add(dims.floordiv(span, stride), 1)


def pool_output_dim(size: Dim, kernel: int, stride: int, pad_begin: int, pad_end: int,
                    ceil_mode: bool) -> Dim:
    """How many windows of a pooling fit along one axis. In ceil mode a last, partial window
    counts too, unless it would start past the input and its begin padding (PyTorch's rule,
    and ONNX's from opset 22); over a symbolic size that exception is decided only where it
    cannot arise (no begin padding, and a stride and end padding within the kernel, so that
    the last window starts inside the input), else the dim is UNKNOWN."""
    if not isinstance(size, int):
        span = dims.add(size, pad_begin + pad_end - kernel)
        if not ceil_mode:
            return dims.add(dims.floordiv(span, stride), 1)
        if pad_begin == 0 and stride + pad_end <= kernel:
            return dims.add(dims.ceildiv(span, stride), 1)
        return UNKNOWN
    span = size + pad_begin + pad_end - kernel
    count = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (count - 1) * stride >= size + pad_begin:
        count -= 1
    return count


def pool_end_pad(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                 ceil_mode: bool) -> int:
    """The end padding with which floor-mode windows are the pooling's windows: in ceil mode,
    the end pad plus what the last window overhangs the padded input by."""
    count = pool_output_dim(size, kernel, stride, pad_begin, pad_end, ceil_mode)
    return pad_end + max(0, (count - 1) * stride + kernel - (size + pad_begin + pad_end))


def pool_window_sizes(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                      ceil_mode: bool, count_include_pad: bool) -> tuple[int, ...]:
    """What each average along one axis divides by (PyTorch's divisor): the window's size
    within the padded input, or within the input alone unless count_include_pad. A window's
    divisor over several axes is the product of these."""
    sizes = []
    for index in range(pool_output_dim(size, kernel, stride, pad_begin, pad_end, ceil_mode)):
        start = index * stride - pad_begin
        end = min(start + kernel, size + pad_end)
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        sizes.append(end - start)
    return tuple(sizes)


def conv_output_shape(x_shape, w_shape, strides, pads, dilations) -> tuple[int, ...]:
    """The spatial shape of conv(x, w) for numeric shapes."""
    rank = len(w_shape) - 2
    return tuple(conv_output_dim(n, k, s, b, e, d) for n, k, s, b, e, d in zip(
        x_shape[2:], w_shape[2:], strides, pads[:rank], pads[rank:], dilations, strict=True))
