"""Plain dense attention: the ground truth every kernel and layout is tested against.

It materialises ``[batch, heads, seq, seq]``; use it only for checks on small inputs (in float64
with ``jax.config.update("jax_enable_x64", True)``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp


def attention_reference(q, k, v, *, causal=True, segment_ids=None, scale=None, window=None):
    """Dense softmax attention. ``q [b, s, hq, d]``, ``k, v [b, s, hkv, d]`` -> ``[b, s, hq, d]``.

    Rows with no visible key (possible only with segment ids) give zeros, as the ring does. A
    ``window`` (causal only) lets position ``i`` see keys ``i - window + 1 .. i``.
    """
    b, s, hq, d = q.shape
    groups = hq // k.shape[2]
    k = jnp.repeat(k, groups, axis=2)
    v = jnp.repeat(v, groups, axis=2)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    mask = jnp.ones((1, 1, s, s), bool)
    if causal:
        mask = mask & jnp.tril(jnp.ones((s, s), bool))[None, None]
    if window is not None:
        gap = jnp.arange(s)[:, None] - jnp.arange(s)[None, :]
        mask = mask & (gap < window)[None, None]
    if segment_ids is not None:
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
    scores = jnp.where(mask, scores, -jnp.inf)
    peak = jnp.max(scores, axis=-1, keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    weights = jnp.exp(scores - peak)
    total = weights.sum(axis=-1, keepdims=True)
    weights = weights / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).astype(q.dtype)
