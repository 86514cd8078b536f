"""Decoding against a KV cache that stays sharded along the sequence on 'sp'.

Each layer's cache is ``[batch, kv_heads, slots, head_dim]`` (heads-major, so keys feed the score
matmul without a transposed copy) with ``slots`` split evenly over 'sp'. Device ``d`` holds its
prefill chunk (``base`` slots, in ring-layout order) followed by room for appended tokens and one
spare slot. Appended token number ``c`` (counting from the end of the prefill) lives on device
``c % sp`` at local slot ``base + c // sp``, so appends spread over the ring and nothing is ever
resharded.

A decode step never moves the cache: every device attends its own slots and the partial softmaxes
``(max m, sum l, output o)`` are combined by log-sum-exp after one all-gather over 'sp' (tree
attention's combination, in a single collective per layer); the new tokens' own keys and values
(replicated over 'sp') are folded in after it. ``slot_pos [batch, slots]`` holds each slot's
RoPE position (-1: empty or padding); a query at position ``p`` sees the slots with
``0 <= pos <= p``.

A local layer (a sliding window of ``W``) needs only the prompt's last ``W`` tokens: its cache
(``window_cache``) keeps those, ``ceil(W / sp)`` slots per device, followed by the same room
for appended tokens, with its own ``slot_pos``. Decode treats it as any layer's cache.

The cache is read before the new tokens are written, and the write waits on the attention output
through a data dependency: without it XLA cannot prove the read comes first and copies the whole
cache twice per layer and step (measured on CPU: 360 -> 155 ms per SmolLM2 step at 8K).
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
LAYER_SPEC = P(_BATCH, "tp", "sp", None)        # one layer's [b, kv, slots, hd]
SLOT_SPEC = P(_BATCH, "sp")                      # [b, slots]
_NEW_SPEC = P(_BATCH, None, "tp", None)          # [b, t, heads, hd], replicated over 'sp'
_POS_SPEC = P(_BATCH, None)                      # [b, t]
SPARE_SLOTS = 1  # per device, so a fixed-length write (``_write_new``) never runs off the end


def append_index(counter, t: int, sp: int, base: int, slots_local: int):
    """Local slot of each of ``t`` appended tokens on this device, ``slots_local`` (out of range,
    dropped by scatters) where another device owns it. Call inside ``shard_map``."""
    c = counter + jnp.arange(t, dtype=jnp.int32)
    mine = (c % sp) == lax.axis_index("sp")
    return jnp.where(mine, base + c // sp, slots_local)


MIN_ROOM_SLOTS = 16  # per device: short generations all share one cache shape


def room_slots(appended: int, sp: int) -> int:
    """Slots per device a cache keeps for ``appended`` tokens written after the prefill:
    ``ceil(appended / sp)`` rounded up to a power of two (at least ``MIN_ROOM_SLOTS``), so that
    nearby ``max_new_tokens`` (and ``ringkit.ask``'s question-dependent room) share one compiled
    prefill and decode step. At most twice the room asked for; the document's slots dominate.

    >>> room_slots(24, 4), room_slots(100, 1), room_slots(1024, 1)
    (16, 128, 1024)
    """
    need = max(1, -(-appended // sp))
    return max(MIN_ROOM_SLOTS, 1 << (need - 1).bit_length())


def capacity(slots: int, sp: int, base: int) -> int:
    """How many tokens can be appended to a cache of ``slots`` after a ``base``-slot prefill."""
    return (slots // sp - base - SPARE_SLOTS) * sp


def _append_positions_local(slot_pos, q_pos, counter, base, *, sp):
    idx = append_index(counter, q_pos.shape[1], sp, base, slot_pos.shape[1])
    return slot_pos.at[:, idx].set(q_pos, mode="drop")


def append_positions(slot_pos, q_pos, counter, base, *, mesh: Mesh):
    """Record the RoPE positions ``q_pos [b, t]`` of ``t`` appended tokens in ``slot_pos``."""
    fn = functools.partial(_append_positions_local, sp=mesh.shape["sp"])
    return jax.shard_map(fn, mesh=mesh, in_specs=(SLOT_SPEC, _POS_SPEC, P(), P()),
                         out_specs=SLOT_SPEC, check_vma=False)(slot_pos, q_pos, counter, base)


def _after(x, ready):
    """``x`` unchanged, but computed only once ``ready`` (any array) is: ``(r < 0) & (r >= 0)``
    is false for every value, NaN included, and XLA does not fold it away."""
    r = ready.ravel()[0]
    return x + ((r < 0) & (r >= 0)).astype(x.dtype)


def _write_new(cache, new, counter, base, ready, *, sp):
    """Write this device's share of ``t`` new tokens ``new [b, kv, t, hd]`` into ``cache``.

    The tokens it owns are every ``sp``-th one from ``j0`` and go to consecutive local slots; a
    run of ``ceil(t / sp)`` slots is written (one dynamic-update-slice, done in place), its
    entries past the last owned token rewritten with the values already there.
    """
    t = new.shape[2]
    n = -(-t // sp)
    j0 = (lax.axis_index("sp") - counter) % sp
    j = j0 + sp * jnp.arange(n, dtype=jnp.int32)
    start = _after(base + (counter + j0) // sp, ready)
    old = lax.dynamic_slice_in_dim(cache, start, n, axis=2)
    vals = jnp.take(new, jnp.minimum(j, t - 1), axis=2).astype(cache.dtype)
    vals = jnp.where((j < t)[None, None, :, None], vals, old)
    return lax.dynamic_update_slice_in_dim(cache, vals, start, axis=2)


def _decode_local(q, k_new, v_new, cache_k, cache_v, slot_pos, q_pos, counter, base, *,
                  sp, scale, window):
    b, t, hq, d = q.shape
    kvh = k_new.shape[2]
    g = hq // kvh
    qg = (q.astype(jnp.float32) * scale).astype(q.dtype).reshape(b, t, kvh, g, d)
    # This device's slots (the new tokens are not in the cache yet).
    s = jnp.einsum("btkgd,bksd->bkgts", qg, cache_k, preferred_element_type=jnp.float32)
    visible = (slot_pos[:, None, :] >= 0) & (slot_pos[:, None, :] <= q_pos[:, :, None])  # [b,t,s]
    if window is not None:
        visible = visible & (q_pos[:, :, None] - slot_pos[:, None, :] < window)
    s = jnp.where(visible[:, None, None], s, -jnp.inf)
    m = s.max(axis=-1)                                                   # [b, kv, g, t]
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    p = jnp.exp(s - m_safe[..., None])
    l = p.sum(axis=-1)
    o = jnp.einsum("bkgts,bksd->bkgtd", p.astype(cache_v.dtype), cache_v,
                   preferred_element_type=jnp.float32)
    # One all-gather of every device's (m, l, o), combined by log-sum-exp on each device: one
    # collective per layer instead of a pmax and two psums.
    packed = jnp.concatenate([m.reshape(b, -1), l.reshape(b, -1), o.reshape(b, -1)], axis=1)
    packed = lax.all_gather(packed, "sp")                                # [sp, b, n]
    n_m = m[0].size
    m_all = packed[:, :, :n_m].reshape((-1,) + m.shape)
    l_all = packed[:, :, n_m:2 * n_m].reshape((-1,) + l.shape)
    o_all = packed[:, :, 2 * n_m:].reshape((-1,) + o.shape)
    # The new tokens among themselves (causal), the same on every device.
    s_new = jnp.einsum("btkgd,bukd->bkgtu", qg, k_new, preferred_element_type=jnp.float32)
    gap = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]  # consecutive positions
    s_new = jnp.where((gap >= 0) & (gap < (window or t)), s_new, -jnp.inf)
    top = jnp.maximum(m_all.max(axis=0), s_new.max(axis=-1))            # [b, kv, g, t]
    weight = jnp.exp(m_all - top)                                        # 0 where m = -inf
    p_new = jnp.exp(s_new - top[..., None])
    l = (weight * l_all).sum(axis=0) + p_new.sum(axis=-1)
    o = (weight[..., None] * o_all).sum(axis=0) + jnp.einsum(
        "bkgtu,bukd->bkgtd", p_new, v_new.astype(jnp.float32))
    out = jnp.moveaxis(o / l[..., None], 3, 1).reshape(b, t, hq, d).astype(q.dtype)
    # Writes wait for ``out``, which read both caches: they can then happen in place.
    cache_k = _write_new(cache_k, jnp.swapaxes(k_new, 1, 2), counter, base, out, sp=sp)
    cache_v = _write_new(cache_v, jnp.swapaxes(v_new, 1, 2), counter, base, out, sp=sp)
    return out, cache_k, cache_v


def decode_attention(q, k_new, v_new, cache_k, cache_v, slot_pos, q_pos, counter, base, *,
                     mesh: Mesh, scale: float | None = None, window: int | None = None):
    """Attend ``t`` new queries to one layer's sequence-sharded KV cache and to each other
    (causally), then append their keys and values to the cache.

    Args:
      q: ``[b, t, q_heads, hd]`` new queries (RoPE applied), at consecutive positions.
      k_new, v_new: ``[b, t, kv_heads, hd]`` their keys and values.
      cache_k, cache_v: ``[b, kv_heads, slots, hd]``, slots sharded on 'sp'.
      slot_pos: ``int32 [b, slots]`` positions of the cached tokens (before these ``t``).
      q_pos: ``int32 [b, t]`` positions of the new tokens; counter: appended tokens so far
        (scalar); base: prefill slots per device (scalar).
      window: a sliding window (a local layer): a query at ``p`` sees positions
        ``p - window + 1 .. p`` only.

    Returns ``(out [b, t, q_heads, hd], cache_k, cache_v)``; the caches keep their sharding and,
    when donated, their buffers.

    Example::

        out, ck, cv = decode_attention(q, k, v, ck, cv, slot_pos, pos, counter, base, mesh=mesh)
        slot_pos = append_positions(slot_pos, pos, counter, base, mesh=mesh)
    """
    if q.shape[2] % k_new.shape[2]:
        raise ShapeError(f"q_heads={q.shape[2]} must be a multiple of kv_heads={k_new.shape[2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    fn = functools.partial(_decode_local, sp=mesh.shape["sp"], scale=scale, window=window)
    return jax.shard_map(
        fn, mesh=mesh,
        in_specs=(_NEW_SPEC, _NEW_SPEC, _NEW_SPEC, LAYER_SPEC, LAYER_SPEC, SLOT_SPEC,
                  _POS_SPEC, P(), P()),
        out_specs=(_NEW_SPEC, LAYER_SPEC, LAYER_SPEC), check_vma=False,
    )(q, k_new, v_new, cache_k, cache_v, slot_pos, q_pos, counter, base)


def _extend_local(x, *, extra: int, axis: int, value):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def extend_slots(x, extra_per_device: int, *, mesh: Mesh, spec: P, axis: int, value=0):
    """Give every device's shard of ``x`` ``extra_per_device`` empty slots at the end of ``axis``
    (a local pad: the prefill KV becomes a cache without moving between devices)."""
    fn = functools.partial(_extend_local, extra=extra_per_device, axis=axis, value=value)
    return jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(x)


def window_slots(window: int, sp: int) -> int:
    """Prefill slots per device of a local layer's cache (``window_cache``): ``ceil(W / sp)``."""
    return -(-window // sp)


def _window_local(x, natural, length, *, window: int, sp: int, base: int, axis: int, empty):
    """This device's share of the last ``window`` natural indices of the sequence: index
    ``length - window + j`` goes to window slot ``j``, held by device ``j // ceil(W / sp)``.
    Each device scatters what it holds into a window-sized buffer (``empty`` elsewhere) and a
    reduce-scatter over 'sp' gives every device its slots (each filled by exactly one device,
    so the sum is exact)."""
    per = window_slots(window, sp)
    j = natural - (length - window)                                     # [base]
    j = jnp.where((j >= 0) & (j < window), j, per * sp)                 # out of range: dropped
    mine = lax.slice_in_dim(x, 0, base, axis=axis) - empty               # prefill slots only
    shape = list(x.shape)
    shape[axis] = per * sp
    buf = jnp.zeros(shape, x.dtype)
    index = (slice(None),) * axis + (j,)
    buf = buf.at[index].set(mine, mode="drop")
    return lax.psum_scatter(buf, "sp", scatter_dimension=axis, tiled=True) + empty


def window_cache(x, order, length, *, window: int, base: int, extra: int, mesh: Mesh, spec: P,
                 axis: int, value=0):
    """The part of a prefill cache a local layer keeps: the last ``window`` tokens.

    Args:
      x: a layer's prefill keys or values ``[b, kv, slots, hd]`` (``spec`` ``LAYER_SPEC``, ``axis``
        2), or ``slot_pos [b, slots]`` (``SLOT_SPEC``, axis 1, ``value=-1``): per device
        ``base`` prefill slots in ring-layout order, then any others (ignored).
      order: ``int32 [sp * base]`` the natural index of every layout slot (``Batch.order``).
      length: the rows' common length ``L`` (traced or not): rows end at natural index L - 1.
      extra: empty slots per device to add after the window's (room for appended tokens).

    Returns ``x`` for a cache of ``window_slots(window, sp) + extra`` slots per device, slot
    ``j`` of the window (device ``j // window_slots``) holding natural index ``L - window + j``
    (``value`` where there is none), then ``extra`` slots of ``value``.
    """
    sp = mesh.shape["sp"]
    natural = jnp.asarray(order, jnp.int32)

    def local(x, natural, length):
        kept = _window_local(x, natural, length, window=window, sp=sp, base=base, axis=axis,
                             empty=jnp.asarray(value, x.dtype))
        return _extend_local(kept, extra=extra, axis=axis, value=value)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, P("sp"), P()), out_specs=spec,
                         check_vma=False)(x, natural, jnp.asarray(length, jnp.int32))
