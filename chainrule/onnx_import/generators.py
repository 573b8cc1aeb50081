"""Ops that make a tensor from another's shape alone: EyeLike, ones on a diagonal, built from
positions (arange) so that symbolic dims need no constant."""
from __future__ import annotations

from onnx import TensorProto

from ..ir.types import DTYPE_OF_ONNX
from .context import Unsupported, converter


@converter("EyeLike")
def _eye_like(ctx):
    """1 where column = row + k, else 0, shaped like the 2-d input, in `dtype` (the input's
    when not given)."""
    x = ctx.require_rank(ctx.input(0), 2, 2)
    dtype = ctx.attr("dtype", None)
    if dtype is not None and dtype not in DTYPE_OF_ONNX:
        raise Unsupported(f"EyeLike to {TensorProto.DataType.Name(dtype)}")
    rows, columns = (ctx.emit("arange", n=size) for size in x.type.shape)
    shifted = ctx.emit("add", ctx.emit("unsqueeze", rows, axes=(1,)),
                       ctx.constant(ctx.attr("k", 0), rows))
    diagonal = ctx.emit("equal", shifted, ctx.emit("unsqueeze", columns, axes=(0,)))
    return [ctx.emit("cast", diagonal, dtype=x.type.dtype if dtype is None else
                     DTYPE_OF_ONNX[dtype])]
