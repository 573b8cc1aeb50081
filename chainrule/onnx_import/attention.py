"""The ONNX op table, attention: ONNX's Attention op as matmuls, a softmax and an additive
bias of 0 and -inf that masks keys (a causal frontier, a sliding window, padding, the model's
own mask). Where the lengths are known, the causal and window parts are constants built here
with numpy; symbolic lengths (`S`), a mask or per-batch lengths given as inputs make the bias
a run-time value, computed from the positions."""
from __future__ import annotations

import math

import numpy as np

from ..ir import Value
from ..ir.types import DTYPE_OF_ONNX, numpy_dtype
from .context import Unsupported, converter
from .folding import shape_of

# qk_matmul_output_mode: which scores the fourth output shows. Modes 0 and 1 both show them
# after the softcap, as ONNX's reference implementation does.
AFTER_SOFTCAP, WITH_BIAS, AFTER_SOFTMAX = 1, 2, 3


def _known_dims(x, what):
    """x's dims, of which the heads and the head or hidden size must be known: the batch and
    the length may be symbolic."""
    sizes = (x.type.shape[1], x.type.shape[-1]) if x.type.rank == 4 else x.type.shape[-1:]
    if not all(isinstance(d, int) for d in sizes):
        raise Unsupported(f"Attention's {what} of shape {x.type} (only the batch and the "
                          f"length may be symbolic)")
    return x.type.shape


def _split_heads(ctx, x, heads, what):
    """[batch, length, heads * size] -> [batch, heads, length, size]."""
    if heads is None:
        raise Unsupported("Attention on 3-D inputs needs q_num_heads and kv_num_heads")
    _, length, hidden = _known_dims(x, what)
    if hidden % heads:
        raise Unsupported(f"Attention's {what} of width {hidden} into {heads} heads")
    split = ctx.emit("reshape", x, shape=(0, length, heads, hidden // heads))
    return ctx.emit("transpose", split, perm=(0, 2, 1, 3))


def _repeat_heads(ctx, x, repeats):
    """Each head `repeats` times in a row ([h0, h0, h1, h1] for 2), for grouped queries."""
    _, heads, length, size = x.type.shape
    spread = ctx.emit("broadcast_to", ctx.emit("unsqueeze", x, axes=(2,)),
                      shape=(-1, -1, repeats, -1, -1))
    return ctx.emit("reshape", spread, shape=(0, heads * repeats, length, size))


def _as_bias(ctx, allowed, dtype):
    """A bool mask as 0 where allowed and -inf elsewhere."""
    return ctx.emit("where", allowed, ctx.constant(0.0, dtype), ctx.constant(-math.inf, dtype))


class _Bias:
    """The additive bias, summed from its parts: None while nothing masks."""

    def __init__(self, ctx, dtype):
        self.ctx, self.dtype, self.value = ctx, dtype, None

    def add(self, part):
        self.value = part if self.value is None else self.ctx.emit("add", self.value, part)

    def add_constant(self, allowed: np.ndarray):
        if not allowed.all():
            bias = np.where(allowed, 0.0, -np.inf).astype(numpy_dtype(self.dtype))
            self.add(self.ctx.known_tensor(bias, "bias"))


def _mask_bias(ctx, mask, kv_length, dtype):
    """The attn_mask input as a bias, padded with -inf up to the keys' length."""
    if mask.type.dtype == "bool":
        mask = _as_bias(ctx, mask, dtype)
    elif mask.type.dtype != dtype:
        raise Unsupported(f"Attention's attn_mask of dtype {mask.type.dtype} for {dtype} "
                          f"scores")
    width = mask.type.shape[-1]
    if width == kv_length:
        return mask
    if not (isinstance(width, int) and isinstance(kv_length, int)):
        raise Unsupported(f"Attention's attn_mask of shape {mask.type} for {kv_length} keys")
    if width < kv_length:
        pads = [0] * 2 * mask.type.rank
        pads[-1] = kv_length - width
        mask = ctx.emit("pad", mask, pads=tuple(pads), value=-math.inf)
    return mask


@converter("Attention")
def _attention(ctx):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    optional = [ctx.input(i) if ctx.has_input(i) else None for i in range(3, 7)]
    mask, past_key, past_value, lengths = optional
    if (past_key is None) != (past_value is None):
        raise Unsupported("Attention with only one of past_key and past_value")
    dtype = q.type.dtype
    rank = ctx.require_rank(q, 3, 4, "Q").type.rank
    for x, what in ((k, "K"), (v, "V")):
        ctx.require_rank(x, rank, rank, what)
    for x, what in ((past_key, "past_key"), (past_value, "past_value")):
        if x is not None:
            ctx.require_rank(x, 4, 4, what)
    three_d = rank == 3
    q_heads, kv_heads = ctx.positive_attr("q_num_heads"), ctx.positive_attr("kv_num_heads")
    if three_d:
        q, k, v = (_split_heads(ctx, x, heads, what) for x, heads, what in
                   ((q, q_heads, "Q"), (k, kv_heads, "K"), (v, kv_heads, "V")))
    _, q_heads, q_length, head_size = _known_dims(q, "Q")
    if past_key is not None:
        k = ctx.emit("concat", past_key, k, axis=2)
        v = ctx.emit("concat", past_value, v, axis=2)
    present_key, present_value = k, v
    kv_heads, kv_length = _known_dims(k, "K")[1:3]
    if q_heads != kv_heads:
        if q_heads % kv_heads:
            raise Unsupported(f"Attention of {q_heads} query heads over {kv_heads} key heads")
        k, v = (_repeat_heads(ctx, x, q_heads // kv_heads) for x in (k, v))

    scale = ctx.attr("scale")
    scale = 1.0 / math.sqrt(head_size) if scale is None else scale
    if not 0 < scale < math.inf:
        raise Unsupported(f"Attention's scale {scale} (it must be positive and finite)")
    # Q and K are each scaled by sqrt(scale), rounded to their dtype, as ONNX does.
    root = ctx.constant(float(numpy_dtype(dtype).type(math.sqrt(scale))), dtype)
    keys = ctx.emit("transpose", ctx.emit("mul", k, root), perm=(0, 1, 3, 2))
    scores = ctx.emit("matmul", ctx.emit("mul", q, root), keys)
    softcap = ctx.attr("softcap")
    if softcap is not None and softcap > 0:
        cap = ctx.constant(softcap, dtype)
        scores = ctx.emit("mul", ctx.emit("tanh", ctx.emit("div", scores, cap)), cap)

    bias = _Bias(ctx, dtype)
    if mask is not None:
        bias.add(_mask_bias(ctx, ctx.require_rank(mask, 1, what="attn_mask"), kv_length,
                            dtype))
    # Query i of this block attends key j when j - i <= offset: the keys before the block.
    if lengths is not None:
        if past_key is not None:
            raise Unsupported("Attention with both past_key and nonpad_kv_seqlen")
        offset = ctx.emit("reshape", ctx.emit("sub", lengths, _dim_tensor(ctx, q_length)),
                          shape=(-1, 1, 1, 1))
        padded = ctx.emit("less", _positions(ctx, kv_length, "key_positions"),
                          ctx.emit("reshape", lengths, shape=(-1, 1, 1, 1)))
        bias.add(_as_bias(ctx, padded, dtype))
    else:
        offset = 0 if past_key is None else past_key.type.shape[2]
    # Key j is allowed for query i within `size` after (right) or before (left) i + offset;
    # causal is a right window of size 0.
    windows = [("right", 0)] if ctx.attr("is_causal", 0) else []
    for side in ("left", "right"):
        size = ctx.attr(f"{side}_window_size", -1)
        if size >= 0:
            windows.append((side, size))
    known = all(isinstance(d, int) for d in (offset, q_length, kv_length))
    for side, size in windows:
        if known:
            after = np.arange(kv_length)[None, :] - np.arange(q_length)[:, None] - offset
            bias.add_constant(after <= size if side == "right" else -after <= size)
            continue
        if not isinstance(offset, Value):
            offset = _dim_tensor(ctx, offset)
        if side == "right":
            allowed = ctx.emit("less_equal",
                               position_distance(ctx, q_length, kv_length, -size), offset)
        else:
            allowed = ctx.emit("less_equal", offset,
                               position_distance(ctx, q_length, kv_length, size))
        bias.add(_as_bias(ctx, allowed, dtype))

    mode = ctx.require_attr("qk_matmul_output_mode", (0, AFTER_SOFTCAP, WITH_BIAS,
                                                       AFTER_SOFTMAX), 0)
    shown = scores
    if bias.value is not None:
        scores = ctx.emit("add", scores, bias.value)
    if mode == WITH_BIAS:
        shown = scores
    precision = ctx.attr("softmax_precision")
    if precision is not None and DTYPE_OF_ONNX.get(precision) not in ("f32", "f64"):
        raise Unsupported(f"Attention with softmax_precision {precision}")
    if precision is not None and DTYPE_OF_ONNX[precision] != dtype:
        scores = ctx.emit("cast", scores, dtype=DTYPE_OF_ONNX[precision])
    weights = ctx.emit("softmax", scores, axis=-1)
    if bias.value is not None:  # a query no key may reach attends to nothing
        blocked = ctx.emit("equal", ctx.emit("max", bias.value, axes=(-1,), keepdims=True),
                           ctx.constant(-math.inf, bias.value))
        weights = ctx.emit("where", blocked, ctx.constant(0.0, weights), weights)
    if weights.type.dtype != dtype:
        weights = ctx.emit("cast", weights, dtype=dtype)
    if mode == AFTER_SOFTMAX:
        shown = weights
    y = ctx.emit("matmul", weights, v)
    if three_d:
        y = ctx.emit("reshape", ctx.emit("transpose", y, perm=(0, 2, 1, 3)),
                     shape=(0, q_length, -1))
    return [y, present_key, present_value, shown]


def _positions(ctx, length, hint):
    """0, 1, ..., length - 1 as an i64 tensor, length known or symbolic."""
    if isinstance(length, int):
        return ctx.known_tensor(np.arange(length), hint)
    return ctx.emit("arange", n=length)


def position_distance(ctx, q_length, kv_length, shift):
    """[queries, keys]: key j's position less query i's, plus `shift`; a constant for known
    lengths."""
    if isinstance(q_length, int) and isinstance(kv_length, int):
        distance = np.arange(kv_length)[None, :] - np.arange(q_length)[:, None]
        return ctx.known_tensor(distance + shift, "distance")
    keys, queries = _positions(ctx, kv_length, "keys"), _positions(ctx, q_length, "queries")
    distance = ctx.emit("sub", ctx.emit("unsqueeze", keys, axes=(0,)),
                        ctx.emit("unsqueeze", queries, axes=(1,)))
    return ctx.emit("add", distance, ctx.constant(shift, distance)) if shift else distance


def _dim_tensor(ctx, dim):
    """A dim, known or symbolic, as a one-value i64 tensor."""
    return ctx.known_tensor(shape_of([dim]), "length")


def _last_axis(ctx, x, start, end, step=1):
    return ctx.emit("slice", x, starts=(start,), ends=(end,), axes=(-1,), steps=(step,))


@converter("RotaryEmbedding")
def _rotary_embedding(ctx):
    """The first rotary_embedding_dim features of each head turned, pair by pair, by the
    angle whose cosine and sine the caches hold (at position_ids, when given). Pairs are
    the two halves of those features, or neighbours with `interleaved`."""
    x, cos, sin = ctx.input(0), ctx.input(1), ctx.input(2)
    if ctx.has_input(3):
        positions = ctx.input(3)
        cos, sin = (ctx.emit("take", cache, positions, axis=0) for cache in (cos, sin))
    heads = ctx.attr("num_heads")
    if x.type.rank == 4:  # [batch, heads, length, size] -> [batch, length, heads, size]
        heads_last = ctx.emit("transpose", x, perm=(0, 2, 1, 3))
    elif x.type.rank == 3:
        _, length, hidden = x.type.shape
        if not heads or not isinstance(hidden, int) or hidden % heads:
            raise Unsupported(f"RotaryEmbedding of {x.type} into num_heads={heads} heads")
        heads_last = ctx.emit("reshape", x, shape=(0, length, heads, hidden // heads))
    else:
        raise Unsupported(f"RotaryEmbedding of {x.type} (it takes rank 3 or 4)")
    size = heads_last.type.shape[-1]
    if not isinstance(size, int):
        raise Unsupported(f"RotaryEmbedding of {x.type} (the head size must be known)")
    turned = ctx.attr("rotary_embedding_dim", 0) or size
    cos, sin = (ctx.emit("unsqueeze", cache, axes=(2,)) for cache in (cos, sin))
    rotated = _last_axis(ctx, heads_last, 0, turned)
    if ctx.attr("interleaved", 0):
        first, second = (_last_axis(ctx, rotated, start, turned, 2) for start in (0, 1))
    else:
        first, second = (_last_axis(ctx, rotated, start, start + turned // 2)
                         for start in (0, turned // 2))
    real = ctx.emit("sub", ctx.emit("mul", cos, first), ctx.emit("mul", sin, second))
    imaginary = ctx.emit("add", ctx.emit("mul", sin, first), ctx.emit("mul", cos, second))
    if ctx.attr("interleaved", 0):
        pairs = ctx.emit("concat", ctx.emit("unsqueeze", real, axes=(-1,)),
                         ctx.emit("unsqueeze", imaginary, axes=(-1,)), axis=-1)
        rotated = ctx.emit("reshape", pairs, shape=(0, 0, 0, turned))
    else:
        rotated = ctx.emit("concat", real, imaginary, axis=-1)
    if turned < size:
        rotated = ctx.emit("concat", rotated, _last_axis(ctx, heads_last, turned, size),
                           axis=-1)
    if x.type.rank == 4:
        return [ctx.emit("transpose", rotated, perm=(0, 2, 1, 3))]
    return [ctx.emit("reshape", rotated, shape=(0, 0, -1))]


@converter("TensorScatter")
def _tensor_scatter(ctx):
    """A KV cache [B, ..., M, ...] with the update [B, ..., S, ...] written along the sequence
    axis from each row's write index (0 without write_indices), wrapping past M in circular
    mode: each cache position reads the update at its offset from the row's index where that
    offset falls within the update, and keeps the cache elsewhere."""
    past, update = ctx.input(0), ctx.input(1)
    rank = past.type.rank
    axis = ctx.axis(ctx.attr("axis", -2), rank)
    circular = ctx.require_attr("mode", ("linear", "circular"), "linear") == "circular"
    length, written = past.type.shape[axis], update.type.shape[axis]
    if axis == 0 or not isinstance(length, int) or not isinstance(written, int):
        raise Unsupported(f"TensorScatter of {update.type} into {past.type} along axis {axis} "
                          f"(a sequence axis of known sizes after the batch axis)")
    offsets = ctx.known_tensor(np.arange(length)[None, :], "cache_positions")  # [1, M]
    if ctx.has_input(2):  # [B, M]: each position's offset from its row's write index
        starts = ctx.emit("unsqueeze", ctx.input(2), axes=(1,))
        offsets = ctx.emit("sub", offsets, starts)
    if circular:
        wrapped = ctx.emit("add", offsets, ctx.constant(length, offsets))
        offsets = ctx.emit("where", ctx.emit("less", offsets, ctx.constant(0, offsets)),
                           wrapped, offsets)
    inside = ctx.emit("logical_and",
                      ctx.emit("greater_equal", offsets, ctx.constant(0, offsets)),
                      ctx.emit("less", offsets, ctx.constant(written, offsets)))
    clamped = ctx.emit("minimum", ctx.emit("maximum", offsets, ctx.constant(0, offsets)),
                       ctx.constant(written - 1, offsets))
    # [rows, M] laid along the cache's batch and sequence axes, then across its other axes.
    laid_out = tuple(offsets.type.shape[0] if d == 0 else length if d == axis else 1
                     for d in range(rank))

    def spread(value):
        return ctx.emit("broadcast_to", ctx.emit("reshape", value, shape=laid_out),
                        shape=past.type.shape)
    gathered = ctx.emit("gather_elements", update, spread(clamped), axis=axis)
    return [ctx.emit("where", spread(inside), gathered, past)]
