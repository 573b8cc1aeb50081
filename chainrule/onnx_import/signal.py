"""DFT and STFT as matmuls by constant DFT matrices: ONNX writes a complex tensor as a last
axis of two (real, imaginary) and a real one as a last axis of one, so a transform along an
axis is the input, with that axis moved next to the last and the two merged, times one real
matrix whose rows are the input's (position, part) and whose columns the output's. No IR op of
its own: the matmul differentiates, and exports as the standard MatMul onnxruntime runs. A
matrix is O(n^2) where an FFT is O(n log n); the node tests' lengths are tens."""
from __future__ import annotations

import numpy as np

from ..ir.types import numpy_dtype
from .context import Unsupported, converter


def dft_matrix(length: int, size: int, parts: int, inverse: bool, onesided: bool) -> np.ndarray:
    """The real matrix taking `size` input positions of `parts` parts (1 real, 2 complex),
    interleaved, to the transform of `length` points, interleaved: its real and imaginary
    parts; for an inverse of a one-sided spectrum (irfft), the real signal only. Input
    positions past `length` are dropped; missing ones are zeros (ONNX pads or truncates)."""
    if inverse and onesided:
        return _irfft_matrix(length, size, parts)
    outputs = length // 2 + 1 if onesided else length
    j, k = np.arange(size)[:, None], np.arange(outputs)[None, :]
    angle = 2 * np.pi * (j * k % length) / length
    kept = (j < length) / (length if inverse else 1)
    sign = 1 if inverse else -1
    cos, sin = np.cos(angle) * kept, np.sin(angle) * kept
    # (re + i im)(cos + sign i sin): re cos - sign im sin, and i (sign re sin + im cos).
    matrix = np.zeros((size, parts, outputs, 2))
    matrix[:, 0, :, 0], matrix[:, 0, :, 1] = cos, sign * sin
    if parts == 2:
        matrix[:, 1, :, 0], matrix[:, 1, :, 1] = -sign * sin, cos
    return matrix.reshape(size * parts, outputs * 2)


def _irfft_matrix(length: int, size: int, parts: int) -> np.ndarray:
    """The real signal of `length` points from the first `size` bins of a spectrum whose
    other half mirrors them (conjugated): bins 0 and length/2 count once, the others twice,
    and the imaginary parts of those two drop out, as numpy's irfft has it."""
    k, t = np.arange(size)[:, None], np.arange(length)[None, :]
    angle = 2 * np.pi * (k * t % length) / length
    weight = np.where((k == 0) | (2 * k == length), 1.0, 2.0) * (2 * k <= length) / length
    matrix = np.zeros((size, parts, length))
    matrix[:, 0] = weight * np.cos(angle)
    if parts == 2:
        matrix[:, 1] = -weight * np.sin(angle)
    return matrix.reshape(size * parts, length)


def transformed(ctx, x, axis: int, length: int | None, inverse: bool, onesided: bool):
    """`x`'s DFT along `axis` (not its last, the parts), ONNX's way."""
    rank = x.type.rank
    size, parts = x.type.shape[axis], x.type.shape[-1]
    if parts not in (1, 2) or axis == rank - 1:
        raise Unsupported(f"{ctx.node.op_type} of {x.type} along axis {axis} (the last axis "
                          f"holds 1 real or 2 complex parts, and the transform runs along "
                          f"another)")
    if not isinstance(size, int):
        raise Unsupported(f"{ctx.node.op_type} along the symbolic axis {size}")
    if inverse and onesided:
        length = 2 * (size - 1) if length is None else length
    elif onesided and parts == 2:
        raise Unsupported(f"{ctx.node.op_type} one-sided of a complex signal")
    length = size if length is None else length
    if length < 1:
        raise Unsupported(f"{ctx.node.op_type} of length {length}")
    perm = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = ctx.emit("transpose", x, perm=tuple(perm)) if perm != list(range(rank)) else x
    flat = ctx.emit("reshape", moved, shape=(0,) * (rank - 2) + (size * parts,))
    matrix = dft_matrix(length, size, parts, inverse, onesided)
    ctx.require_size(x.type.dtype, matrix.shape)
    weights = ctx.known_tensor(matrix.astype(numpy_dtype(x.type.dtype)), "dft_matrix")
    product = ctx.emit("matmul", flat, weights)
    out_parts = 1 if inverse and onesided else 2
    result = ctx.emit("reshape", product, shape=(0,) * (rank - 2) +
                      (matrix.shape[1] // out_parts, out_parts))
    back = tuple(int(i) for i in np.argsort(perm))
    return ctx.emit("transpose", result, perm=back) if perm != list(range(rank)) else result


@converter("DFT")
def _dft(ctx):
    x = ctx.input(0)
    default_axis = 1 if ctx.importer.opset < 20 else -2
    axis = ctx.static_int(2, "DFT's axis", None) if ctx.importer.opset >= 20 else \
        ctx.attr("axis", default_axis)
    axis = ctx.axis(default_axis if axis is None else axis, x.type.rank)
    length = ctx.static_int(1, "DFT's dft_length", None)
    return [transformed(ctx, x, axis, length, bool(ctx.attr("inverse", 0)),
                        bool(ctx.attr("onesided", 0)))]


@converter("STFT")
def _stft(ctx):
    """Frames of the signal [batch, length, parts], taken by a gather of constant positions,
    windowed, and transformed along the frame: [batch, frames, bins, 2]."""
    signal = ctx.require_rank(ctx.input(0), 3, 3, "signal")
    step = ctx.static_int(1, "STFT's frame_step")
    window = ctx.input(2) if ctx.has_input(2) else None
    frame = ctx.static_int(3, "STFT's frame_length", None)
    if frame is None:
        if window is None or not isinstance(window.type.shape[0], int):
            raise Unsupported("STFT with neither a frame_length nor a window of known length")
        frame = window.type.shape[0]
    size = signal.type.shape[1]
    if not isinstance(size, int) or step < 1 or not 1 <= frame <= size:
        raise Unsupported(f"STFT of {signal.type} in frames of {frame} every {step}")
    starts = np.arange(0, size - frame + 1, step)
    positions = ctx.known_tensor(starts[:, None] + np.arange(frame)[None, :], "stft_positions")
    frames = ctx.emit("take", signal, positions, axis=1)  # [batch, frames, frame, parts]
    if window is not None:
        if window.type.dtype != signal.type.dtype:  # onnx 1.16's own case has an f64 window
            window = ctx.emit("cast", window, dtype=signal.type.dtype)
        frames = ctx.emit("mul", frames, ctx.emit("unsqueeze", window, axes=(1,)))
    return [transformed(ctx, frames, 2, frame, False, bool(ctx.attr("onesided", 1)))]
