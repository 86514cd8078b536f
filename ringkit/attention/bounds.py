"""Tile bounds the Pallas kernels share (Triton's, Mosaic's and the TPU's): which key tiles each
row tile sees, computed by XLA outside the kernels from the position bounds, and the per-row
inputs. A leaf: the kernel modules import it, it imports none of them."""

from __future__ import annotations

import jax.numpy as jnp

from ringkit.attention import blockwise

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453  # exp2 and log2 in the kernels


def _runs(kind, n: int):
    """Per row of ``kind [tiles, n]``: ``(first, full_from, full_to, end)``, each int32 [tiles]:
    every visible tile lies in ``first .. end`` and ``full_from .. full_to`` is the first run of
    tiles that need no mask; the rest of ``first .. end`` runs masked. Positions ascend in every
    block (both layouts), so that computes exactly the visible tiles; for any other order it
    stays exact and merely computes some hidden tiles masked."""
    idx = jnp.arange(n)
    seen, full = kind != blockwise.SKIP, kind == blockwise.FULL
    first = jnp.min(jnp.where(seen, idx, n), axis=1)
    end = jnp.maximum(jnp.max(jnp.where(seen, idx + 1, 0), axis=1), first)
    full_from = jnp.min(jnp.where(full, idx, n), axis=1)
    full_to = jnp.min(jnp.where((idx >= full_from[:, None]) & ~full, idx, n), axis=1)
    none = full_from >= full_to  # no unmasked tile: mask the whole visible run
    full_from, full_to = jnp.where(none, end, full_from), jnp.where(none, end, full_to)
    return tuple(x.astype(jnp.int32) for x in (first, full_from, full_to, end))


def tile_kinds(q_rows, k_pos, block_r, block_k, causal, window=None):
    """Tile kinds ``[row tiles, key tiles]`` (all FULL without a causal mask)."""
    q_min, q_max = blockwise.tile_bounds(q_rows, block_r)
    k_min, k_max = blockwise.tile_bounds(k_pos, block_k)
    if not causal:
        return jnp.full((q_min.shape[0], k_min.shape[0]), blockwise.FULL, jnp.int32)
    return blockwise.tile_kind(q_min[:, None], q_max[:, None], k_min[None, :], k_max[None, :],
                               window)


def row_bounds(q_rows, k_pos, block_r, block_k, causal, window=None):
    """Per row tile, the key tiles it sees: ``(first, full_from, full_to, end)`` (``_runs``)."""
    kind = tile_kinds(q_rows, k_pos, block_r, block_k, causal, window)
    return _runs(kind, kind.shape[1])


def key_bounds(q_rows, k_pos, block_r, block_k, causal, window=None):
    """Per key tile, the row tiles that see it: ``(first, full_from, full_to, end)``."""
    kind = tile_kinds(q_rows, k_pos, block_r, block_k, causal, window).T
    return _runs(kind, kind.shape[1])


def row_inputs(q_pos, seg_q, groups):
    """Positions and segments per row (row = pos * g + j)."""
    q_rows = jnp.repeat(q_pos.astype(jnp.int32), groups)
    seg_rows = None if seg_q is None else jnp.repeat(seg_q.astype(jnp.int32), groups, axis=1)
    return q_rows, seg_rows
