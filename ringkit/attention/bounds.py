"""Tile bounds the Pallas GPU kernels share (Triton's and Mosaic's): which key tiles each row
tile sees, computed by XLA outside the kernels from the position bounds, and the per-row inputs.
A leaf: the kernel modules import it, it imports neither."""

from __future__ import annotations

import jax.numpy as jnp

from ringkit.attention import blockwise

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453  # exp2 and log2 in the kernels


def row_bounds(q_rows, k_pos, block_r, block_k, causal):
    """Per row tile: end of the leading run of fully visible key tiles, and end of visibility."""
    nk_tiles = k_pos.shape[0] // block_k
    if not causal:
        full = jnp.full((q_rows.shape[0] // block_r,), nk_tiles, jnp.int32)
        return full, full
    kind = blockwise.tile_kind(*(b[:, None] for b in blockwise.tile_bounds(q_rows, block_r)),
                               *(b[None, :] for b in blockwise.tile_bounds(k_pos, block_k)))
    lead_full = jnp.cumprod(kind == blockwise.FULL, axis=1).sum(axis=1)
    last_seen = jnp.max(jnp.where(kind != blockwise.SKIP, jnp.arange(nk_tiles) + 1, 0), axis=1)
    return lead_full.astype(jnp.int32), jnp.maximum(last_seen, lead_full).astype(jnp.int32)


def key_bounds(q_rows, k_pos, block_r, block_k, causal):
    """Per key tile: first row tile to mask, and start of the trailing run of fully visible ones."""
    nr_tiles = q_rows.shape[0] // block_r
    if not causal:
        zero = jnp.zeros((k_pos.shape[0] // block_k,), jnp.int32)
        return zero, zero
    kind = blockwise.tile_kind(*(b[None, :] for b in blockwise.tile_bounds(q_rows, block_r)),
                               *(b[:, None] for b in blockwise.tile_bounds(k_pos, block_k)))
    trail_full = jnp.cumprod((kind == blockwise.FULL)[:, ::-1], axis=1).sum(axis=1)
    full_from = nr_tiles - trail_full
    first_seen = jnp.min(jnp.where(kind != blockwise.SKIP, jnp.arange(nr_tiles), nr_tiles), axis=1)
    return jnp.minimum(first_seen, full_from).astype(jnp.int32), full_from.astype(jnp.int32)


def row_inputs(q_pos, seg_q, groups):
    """Positions and segments per row (row = pos * g + j)."""
    q_rows = jnp.repeat(q_pos.astype(jnp.int32), groups)
    seg_rows = None if seg_q is None else jnp.repeat(seg_q.astype(jnp.int32), groups, axis=1)
    return q_rows, seg_rows
