"""Decoding against a KV cache that stays sharded along the sequence on 'sp'.

The cache of every layer is ``[layers, batch, kv_heads, slots, head_dim]`` (heads-major, so a
layer's keys feed the score matmul without a transposed copy) with ``slots`` split evenly over
'sp'. Device ``d`` holds its prefill chunk (``base`` slots, in ring-layout order)
followed by room for appended tokens. Appended token number ``c`` (counting from the end of the
prefill) lives on device ``c % sp`` at local slot ``base + c // sp``, so appends spread over the
ring and nothing is ever resharded.

A decode step never moves the cache: every device attends its own slots and the partial softmaxes
``(max m, sum l, output o)`` are combined by log-sum-exp after one all-gather over 'sp' (tree
attention's combination, in a single collective per layer). ``slot_pos [batch, slots]`` holds each slot's RoPE
position (-1: empty or padding); a query at position ``p`` sees the slots with ``0 <= pos <= p``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from ringkit.errors import ShapeError

_BATCH = ("dp", "fsdp")
CACHE_SPEC = P(None, _BATCH, "tp", "sp", None)  # [layers, b, kv, slots, hd]
LAYER_SPEC = P(_BATCH, "tp", "sp", None)        # one layer's [b, kv, slots, hd]
SLOT_SPEC = P(_BATCH, "sp")                      # [b, slots]
_NEW_SPEC = P(_BATCH, None, "tp", None)          # [b, t, heads, hd], replicated over 'sp'
_POS_SPEC = P(_BATCH, None)                      # [b, t]


def append_index(counter, t: int, sp: int, base: int, slots_local: int):
    """Local slot of each of ``t`` appended tokens on this device, ``slots_local`` (out of range,
    dropped by scatters) where another device owns it. Call inside ``shard_map``."""
    c = counter + jnp.arange(t, dtype=jnp.int32)
    mine = (c % sp) == lax.axis_index("sp")
    return jnp.where(mine, base + c // sp, slots_local)


def capacity(slots: int, sp: int, base: int) -> int:
    """How many tokens can be appended to a cache of ``slots`` after a ``base``-slot prefill."""
    return (slots // sp - base) * sp


def _append_positions_local(slot_pos, q_pos, counter, base, *, sp):
    idx = append_index(counter, q_pos.shape[1], sp, base, slot_pos.shape[1])
    return slot_pos.at[:, idx].set(q_pos, mode="drop")


def append_positions(slot_pos, q_pos, counter, base, *, mesh: Mesh):
    """Record the RoPE positions ``q_pos [b, t]`` of ``t`` appended tokens in ``slot_pos``."""
    fn = functools.partial(_append_positions_local, sp=mesh.shape["sp"])
    return jax.shard_map(fn, mesh=mesh, in_specs=(SLOT_SPEC, _POS_SPEC, P(), P()),
                         out_specs=SLOT_SPEC, check_vma=False)(slot_pos, q_pos, counter, base)


def _decode_local(q, k_new, v_new, cache_k, cache_v, layer, slot_pos, q_pos, counter, base, *,
                  sp, scale):
    b, t, hq, d = q.shape
    kvh = k_new.shape[2]
    g = hq // kvh
    idx = append_index(counter, t, sp, base, cache_k.shape[3])
    # Mixed advanced indexing puts the token axis first: values are [t, b, kv, hd].
    cache_k = cache_k.at[layer, :, :, idx].set(jnp.swapaxes(k_new, 0, 1).astype(cache_k.dtype),
                                               mode="drop")
    cache_v = cache_v.at[layer, :, :, idx].set(jnp.swapaxes(v_new, 0, 1).astype(cache_v.dtype),
                                               mode="drop")
    keys = lax.dynamic_index_in_dim(cache_k, layer, 0, keepdims=False)   # [b, kv, s, hd]
    values = lax.dynamic_index_in_dim(cache_v, layer, 0, keepdims=False)
    qg = (q.astype(jnp.float32) * scale).astype(q.dtype).reshape(b, t, kvh, g, d)
    s = jnp.einsum("btkgd,bksd->bkgts", qg, keys, preferred_element_type=jnp.float32)
    visible = (slot_pos[:, None, :] >= 0) & (slot_pos[:, None, :] <= q_pos[:, :, None])  # [b,t,s]
    s = jnp.where(visible[:, None, None], s, -jnp.inf)
    m = s.max(axis=-1)                                                   # [b, kv, g, t]
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    p = jnp.exp(s - m_safe[..., None])
    l = p.sum(axis=-1)
    o = jnp.einsum("bkgts,bksd->btkgd", p.astype(values.dtype), values,
                   preferred_element_type=jnp.float32)
    # One all-gather of every device's (m, l, o), combined by log-sum-exp on each device: one
    # collective per layer instead of a pmax and two psums.
    packed = jnp.concatenate([m.reshape(b, -1), l.reshape(b, -1), o.reshape(b, -1)], axis=1)
    packed = lax.all_gather(packed, "sp")                                # [sp, b, n]
    n_m = m[0].size
    m_all = packed[:, :, :n_m].reshape((-1,) + m.shape)
    l_all = packed[:, :, n_m:2 * n_m].reshape((-1,) + l.shape)
    o_all = packed[:, :, 2 * n_m:].reshape((-1,) + o.shape)
    top = m_all.max(axis=0)
    weight = jnp.exp(m_all - jnp.where(top == -jnp.inf, 0.0, top))      # 0 where m = -inf
    l = jnp.moveaxis((weight * l_all).sum(axis=0), -1, 1)[..., None]     # [b, t, kv, g, 1]
    o = (jnp.moveaxis(weight, -1, 2)[..., None] * o_all).sum(axis=0)     # [b, t, kv, g, d]
    out = jnp.where(l > 0, o / jnp.where(l > 0, l, 1.0), 0.0)
    return out.reshape(b, t, hq, d).astype(q.dtype), cache_k, cache_v


def decode_attention(q, k_new, v_new, cache_k, cache_v, layer, slot_pos, q_pos, counter, base, *,
                     mesh: Mesh, scale: float | None = None):
    """Attend ``t`` new queries to a sequence-sharded KV cache, appending their keys and values.

    Args:
      q: ``[b, t, q_heads, hd]`` new queries (RoPE applied).
      k_new, v_new: ``[b, t, kv_heads, hd]`` their keys and values.
      cache_k, cache_v: ``[layers, b, kv_heads, slots, hd]``, slots sharded on 'sp'.
      layer: which layer of the cache (int or traced scalar).
      slot_pos: ``int32 [b, slots]`` positions, already including the new tokens
        (``append_positions``).
      q_pos: ``int32 [b, t]`` positions of the new tokens; counter: appended tokens so far
        (scalar); base: prefill slots per device (scalar).

    Returns ``(out [b, t, q_heads, hd], cache_k, cache_v)``; the caches keep their sharding.
    """
    if q.shape[2] % k_new.shape[2]:
        raise ShapeError(f"q_heads={q.shape[2]} must be a multiple of kv_heads={k_new.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    fn = functools.partial(_decode_local, sp=mesh.shape["sp"], scale=scale)
    return jax.shard_map(
        fn, mesh=mesh,
        in_specs=(_NEW_SPEC, _NEW_SPEC, _NEW_SPEC, CACHE_SPEC, CACHE_SPEC, P(), SLOT_SPEC,
                  _POS_SPEC, P(), P()),
        out_specs=(_NEW_SPEC, CACHE_SPEC, CACHE_SPEC), check_vma=False,
    )(q, k_new, v_new, cache_k, cache_v, layer, slot_pos, q_pos, counter, base)


def _extend_local(x, *, extra: int, axis: int, value):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def extend_slots(x, extra_per_device: int, *, mesh: Mesh, spec: P, axis: int, value=0):
    """Give every device's shard of ``x`` ``extra_per_device`` empty slots at the end of ``axis``
    (a local pad: the prefill KV becomes a cache without moving between devices)."""
    fn = functools.partial(_extend_local, extra=extra_per_device, axis=axis, value=value)
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(x)
