"""The LeNet-style train step of examples/lenet_digits.nn, written by hand in numpy, in PyTorch
and in JAX, for bench.py's workload 6 (batch 64, SGD).

Per block: 3x3 convolution with padding 1 and no bias, batch norm in training mode, relu, 2x2
max pooling; then a linear head and softmax cross-entropy. The running statistics are updated
as the model's state is (momentum 0.1, unbiased variance).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

EPS = 1e-5
MOMENTUM = 0.1
BLOCKS = (("C1", "g1", "b1", "m1", "v1"), ("C2", "g2", "b2", "m2", "v2"))


# ---- hand-written numpy -----------------------------------------------------------------------

def _im2col(x, k):
    """[N, C, H, W] padded by k // 2 -> windows [N, H, W, C*k*k]."""
    padded = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    windows = sliding_window_view(padded, (k, k), axis=(2, 3))  # [N, C, H, W, k, k]
    n, c, h, w = x.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n, h, w, c * k * k)


def _col2im(cols, shape, k):
    """The adjoint of _im2col: windows [N, H, W, C*k*k] summed back into [N, C, H, W]."""
    n, c, h, w = shape
    pad = k // 2
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), cols.dtype)
    cols = cols.reshape(n, h, w, c, k, k)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + h, j:j + w] += cols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return out[:, :, pad:pad + h, pad:pad + w]


def hand_lenet_step(params, x, y, lr):
    """One SGD step in place; returns the loss."""
    n = len(y)
    h = x.reshape(n, 1, 8, 8)
    saved = []
    for conv, gamma, beta, mean_name, var_name in BLOCKS:
        weight = params[conv]
        cols = _im2col(h, 3)
        z = (cols @ weight.reshape(len(weight), -1).T).transpose(0, 3, 1, 2)  # [N, O, H, W]
        mean = z.mean(axis=(0, 2, 3), keepdims=True)
        var = z.var(axis=(0, 2, 3), keepdims=True)
        inv = 1.0 / np.sqrt(var + EPS)
        normal = (z - mean) * inv
        a = np.maximum(normal * params[gamma][None, :, None, None]
                       + params[beta][None, :, None, None], 0)
        count = z.size // z.shape[1]
        params[mean_name] *= 1 - MOMENTUM
        params[mean_name] += MOMENTUM * mean.ravel()
        params[var_name] *= 1 - MOMENTUM
        params[var_name] += MOMENTUM * var.ravel() * count / (count - 1)
        c, hh, ww = a.shape[1:]
        blocks = a.reshape(n, c, hh // 2, 2, ww // 2, 2)
        pooled = blocks.max(axis=(3, 5))
        saved.append((h, cols, normal, inv, a, blocks, pooled))
        h = pooled
    flat = h.reshape(n, -1)
    logits = flat @ params["W"].T + params["c"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(probabilities[np.arange(n), y]))
    d_logits = probabilities
    d_logits[np.arange(n), y] -= 1
    d_logits /= n
    grads = {"W": d_logits.T @ flat, "c": d_logits.sum(axis=0)}
    d_h = (d_logits @ params["W"]).reshape(h.shape)
    for (conv, gamma, beta, _, _), (h_in, cols, normal, inv, a, blocks, pooled) in zip(
            reversed(BLOCKS), reversed(saved)):
        # Max pooling: the gradient goes to the first maximum of each window.
        windows = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(*pooled.shape, 4)
        first = np.argmax(windows, axis=-1)
        d_windows = np.zeros_like(windows)
        np.put_along_axis(d_windows, first[..., None], d_h[..., None], axis=-1)
        d_a = d_windows.reshape(*pooled.shape, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(a.shape)
        d_a *= a > 0
        grads[gamma] = (d_a * normal).sum(axis=(0, 2, 3))
        grads[beta] = d_a.sum(axis=(0, 2, 3))
        d_normal = d_a * params[gamma][None, :, None, None]
        d_z = inv * (d_normal - d_normal.mean(axis=(0, 2, 3), keepdims=True)
                     - normal * (d_normal * normal).mean(axis=(0, 2, 3), keepdims=True))
        weight = params[conv]
        d_z_rows = d_z.transpose(0, 2, 3, 1)                       # [N, H, W, O]
        grads[conv] = (d_z_rows.reshape(-1, len(weight)).T
                       @ cols.reshape(-1, cols.shape[-1])).reshape(weight.shape)
        d_cols = d_z_rows @ weight.reshape(len(weight), -1)
        d_h = _col2im(d_cols, h_in.shape, 3)
    for name, grad in grads.items():
        params[name] -= lr * grad
    return loss


# ---- PyTorch ----------------------------------------------------------------------------------

def torch_lenet_step(torch, params, lr):
    functional = torch.nn.functional
    tensors = {k: torch.tensor(v, requires_grad=not k.startswith(("m", "v")))
               for k, v in params.items()}

    def step(x, y):
        h = x.reshape(-1, 1, 8, 8)
        for conv, gamma, beta, mean, var in BLOCKS:
            h = functional.conv2d(h, tensors[conv], padding=1)
            h = functional.batch_norm(h, tensors[mean], tensors[var], tensors[gamma],
                                      tensors[beta], training=True, momentum=MOMENTUM, eps=EPS)
            h = functional.max_pool2d(torch.relu(h), 2)
        logits = h.flatten(1) @ tensors["W"].T + tensors["c"]
        loss = functional.cross_entropy(logits, y)
        loss.backward()
        with torch.no_grad():
            for tensor in tensors.values():
                if tensor.grad is not None:
                    tensor -= lr * tensor.grad
                    tensor.grad = None
        return loss

    return step


# ---- JAX --------------------------------------------------------------------------------------

def jax_lenet_step(jax, params, lr):
    jnp, lax = jax.numpy, jax.lax
    trained = {k: jnp.asarray(v) for k, v in params.items() if not k.startswith(("m", "v"))}
    stats = {k: jnp.asarray(v) for k, v in params.items() if k.startswith(("m", "v"))}

    def loss_fn(p, s, x, y):
        h = x.reshape(-1, 1, 8, 8)
        new_stats = {}
        for conv, gamma, beta, mean_name, var_name in BLOCKS:
            h = lax.conv_general_dilated(h, p[conv], (1, 1), ((1, 1), (1, 1)))
            mean = h.mean(axis=(0, 2, 3))
            var = h.var(axis=(0, 2, 3))
            count = h.size // h.shape[1]
            new_stats[mean_name] = (1 - MOMENTUM) * s[mean_name] + MOMENTUM * mean
            new_stats[var_name] = ((1 - MOMENTUM) * s[var_name]
                                   + MOMENTUM * var * count / (count - 1))
            h = ((h - mean[None, :, None, None]) / jnp.sqrt(var[None, :, None, None] + EPS)
                 * p[gamma][None, :, None, None] + p[beta][None, :, None, None])
            h = jax.nn.relu(h)
            h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        logits = h.reshape(h.shape[0], -1) @ p["W"].T + p["c"]
        log_p = jax.nn.log_softmax(logits, axis=1)
        return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1)), new_stats

    @jax.jit
    def update(p, s, x, y):
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s, x, y)
        return loss, jax.tree_util.tree_map(lambda w, g: w - lr * g, p, grads), new_stats

    state = {"p": trained, "s": stats}

    def step(x, y):
        loss, state["p"], state["s"] = update(state["p"], state["s"], x, y)
        loss.block_until_ready()
        return loss

    return step
