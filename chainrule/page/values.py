"""What flowed through each node on one batch: every value of a graph computed by the numpy
interpreter, and summarised small enough to travel in the page (statistics, a few numbers, a
histogram, a heatmap of a matrix), NaN and Inf counted rather than hidden."""
from __future__ import annotations

import math

import numpy as np

from ..backends.numpy_backend import NumpyBackend
from ..ir import Graph

SAMPLE = 8
BINS = 24
HEATMAP_SIDE = 16
# Past this many nodes a page leaves heatmaps out: each is HEATMAP_SIDE² numbers.
HEATMAP_MAX_NODES = 1000


def every_value(graph: Graph, inputs: dict, params: dict) -> dict:
    """Every value `graph` defines, by name, computed on `inputs` by the numpy interpreter
    (the reference backend: no fusion, so each node's own result)."""
    seeing = graph.copy()
    seeing.outputs = [out for node in graph.nodes for out in node.outputs]
    values = NumpyBackend().run(seeing, inputs, params)
    values.update((v.name, np.asarray(inputs[v.name])) for v in graph.inputs)
    values.update((v.name, np.asarray(params[v.name])) for v in graph.param_values())
    return values


def _number(x: float):
    """A float as JSON holds it: short, and NaN and Inf as the strings JSON lacks."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(f"{x:.6g}")


def summary(array: np.ndarray, heatmap: bool = True) -> dict:
    """Shape, dtype, statistics over the finite numbers, NaN/Inf counts, the first few
    numbers, a histogram, and for a matrix a heatmap of block means (None where NaN/Inf)."""
    array = np.asarray(array)
    numbers = _as_float64(array)
    result = {"shape": list(array.shape), "dtype": str(array.dtype), "count": int(array.size),
              "min": None, "max": None, "mean": None, "std": None, "nan": 0, "inf": 0,
              "sample": [], "histogram": None, "heatmap": None}
    if numbers is None or numbers.size == 0:
        return result
    flat = numbers.ravel()
    finite = flat[np.isfinite(flat)]
    result.update(nan=int(np.isnan(flat).sum()), inf=int(np.isinf(flat).sum()),
                  sample=[_number(x) for x in flat[:SAMPLE]])
    if finite.size:
        low, high = float(finite.min()), float(finite.max())
        with np.errstate(over="ignore"):  # the std of numbers near float64's end is inf
            deviation = float(finite.std())
        result.update(min=_number(low), max=_number(high), mean=_number(float(finite.mean())),
                      std=_number(deviation))
        # (A range past float64's, -1e308 to 1e308, has no bins: no histogram.)
        if finite.size > 1 and np.isfinite(high - low):
            counts, _ = np.histogram(finite, bins=BINS, range=(low, high) if high > low
                                     else (low - 0.5, high + 0.5))
            result["histogram"] = {"low": _number(low), "high": _number(high),
                                   "counts": counts.tolist()}
    if heatmap and numbers.ndim == 2 and min(numbers.shape) > 1:
        result["heatmap"] = _heatmap(numbers)
    return result


def _as_float64(array: np.ndarray) -> np.ndarray | None:
    """The numbers as float64, or None for what holds none (strings). ml_dtypes' bfloat16 and
    float8 types are numbers whose dtype kind numpy does not know ('V')."""
    try:
        return array.astype(np.float64)
    except (TypeError, ValueError):
        return None


def _heatmap(matrix: np.ndarray) -> dict:
    rows = min(matrix.shape[0], HEATMAP_SIDE)
    cols = min(matrix.shape[1], HEATMAP_SIDE)
    cells = [[_block_mean(matrix, r, c, rows, cols) for c in range(cols)] for r in range(rows)]
    shown = [x for row in cells for x in row if x is not None]
    return {"rows": rows, "cols": cols, "low": min(shown, default=0.0),
            "high": max(shown, default=0.0), "cells": cells}


def _block_mean(matrix: np.ndarray, r: int, c: int, rows: int, cols: int):
    """The mean of one block of the matrix split into rows x cols; None if it holds NaN/Inf."""
    height, width = matrix.shape
    block = matrix[r * height // rows:(r + 1) * height // rows,
                   c * width // cols:(c + 1) * width // cols]
    return _number(float(block.mean())) if np.isfinite(block).all() else None


def summaries(graph: Graph, inputs: dict, params: dict) -> dict[str, dict]:
    """Each value's summary by name."""
    heatmaps = len(graph.nodes) <= HEATMAP_MAX_NODES
    return {name: summary(array, heatmaps)
            for name, array in every_value(graph, inputs, params).items()}
