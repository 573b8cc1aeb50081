"""A plain reference for grid_sample, written point by point from PyTorch's grid_sampler (which
ONNX's GridSample follows): each output point's coordinates are unnormalised, clamped or
reflected into the image for nearest and linear modes, and interpolated from the pixels around
them; a pixel outside the image reads 0 (zeros padding) or its clamped or reflected index."""
from __future__ import annotations

import itertools
import math

import numpy as np

CUBIC_A = -0.75


def _reflect(coordinate, low, high):
    if low == high:
        return 0.0
    span = high - low
    distance = abs(coordinate - low)
    flips, extra = math.floor(distance / span), math.fmod(distance, span)
    return low + extra if flips % 2 == 0 else high - extra


def _bounds(size, align_corners):
    return (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)


def _padded(coordinate, size, padding_mode, align_corners):
    if padding_mode == "reflection":
        coordinate = _reflect(coordinate, *_bounds(size, align_corners))
    if padding_mode in ("border", "reflection"):
        coordinate = min(max(coordinate, 0.0), size - 1.0)
    return coordinate


def _pixel(image, index, padding_mode, align_corners):
    """image[index], an index per axis, padded as the mode says."""
    position = []
    for i, size in zip(index, image.shape, strict=True):
        if padding_mode == "zeros":
            if not 0 <= i < size:
                return 0.0
        else:
            i = int(_padded(float(i), size, padding_mode, align_corners))
        position.append(i)
    return image[tuple(position)]


def _weights(fraction, mode):
    if mode == "linear":
        return {0: 1 - fraction, 1: fraction}
    def keys(t):
        t = abs(t)
        if t <= 1:
            return ((CUBIC_A + 2) * t - (CUBIC_A + 3)) * t * t + 1
        return ((CUBIC_A * t - 5 * CUBIC_A) * t + 8 * CUBIC_A) * t - 4 * CUBIC_A
    return {offset: keys(fraction - offset) for offset in (-1, 0, 1, 2)}


def _sample(image, coordinates, mode, padding_mode, align_corners):
    if mode == "nearest":
        index = [int(np.rint(c)) for c in coordinates]
        return _pixel(image, index, padding_mode, align_corners)
    floors = [math.floor(c) for c in coordinates]
    per_axis = [_weights(c - f, mode) for c, f in zip(coordinates, floors, strict=True)]
    total = 0.0
    for offsets in itertools.product(*(sorted(w) for w in per_axis)):
        weight = math.prod(w[o] for w, o in zip(per_axis, offsets, strict=True))
        index = [f + o for f, o in zip(floors, offsets, strict=True)]
        total += weight * _pixel(image, index, padding_mode, align_corners)
    return total


def grid_sample(x, grid, mode, padding_mode, align_corners):
    rank = x.ndim - 2
    sizes = x.shape[2:]
    out = np.zeros((x.shape[0], x.shape[1]) + grid.shape[1:-1], x.dtype)
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for point in np.ndindex(*grid.shape[1:-1]):
            normalised = grid[(n, *point)][::-1]  # innermost axis first in the grid
            coordinates = []
            for value, size in zip(normalised, sizes, strict=True):
                value = float(value)
                c_ = ((value + 1) / 2 * (size - 1) if align_corners
                      else ((value + 1) * size - 1) / 2)
                if mode == "nearest":
                    c_ = float(np.rint(c_))
                if mode != "cubic":
                    c_ = _padded(c_, size, padding_mode, align_corners)
                coordinates.append(c_)
            assert len(coordinates) == rank
            out[(n, c, *point)] = _sample(x[n, c], coordinates, mode, padding_mode,
                                          align_corners)
    return out
