"""Shape arithmetic shared by the ops' type rules: broadcasting, reductions, matmul."""
from __future__ import annotations

from .types import UNKNOWN, Dim


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
    for axis, dims in enumerate(zip(*padded)):
        out = dims[0]
        for dim in dims[1:]:
            try:
                out = unify_dims(out, dim)
            except OpTypeError:
                listed = " and ".join(format_shape(s) for s in shapes)
                raise OpTypeError(f"shapes {listed} do not broadcast "
                                  f"(axis {axis - rank}: {out} vs {dim})") from None
        result.append(out)
    return tuple(result)


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
    if not _dims_may_equal(a2[-1], b2[-2]):
        raise OpTypeError(f"matmul of {format_shape(a)} and {format_shape(b)}: "
                          f"inner dims {a2[-1]} and {b2[-2]} differ")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) != 1 else out[:-1]
    return out


def _dims_may_equal(a: Dim, b: Dim) -> bool:
    return a == b or UNKNOWN in (a, b)
