"""Blockwise attention on one device: fold one KV block into local queries, tile by tile.

This is the per-step work of the ring. Shapes inside (one device, heads-major, GQA folded into
rows so KV is never repeated):

  q, o, do   [b, h, n * g, d]   h = local KV heads, g = query heads per KV head, row = pos * g + j;
                                q arrives multiplied by the softmax scale
  k, v       [b, h, nk, d]
  m, l, lse  [b, h, n * g]      float32 running max, running sum, log-sum-exp
  ids: MaskIds                  q_pos [n], k_pos [nk] global positions (causal mask);
                                seg_q [b, n], seg_k [b, nk] segment ids (None: one segment)

Tiles are ``block_q`` query positions by ``block_k`` key positions. A tile that the causal mask
(and the sliding window, if any) hides entirely is skipped (never computed); a tile entirely
below the diagonal and inside the window skips the mask. A window of ``W`` lets a query at
position ``i`` see keys ``i - W + 1 .. i`` (Hugging Face's and Mistral's convention).
Scores, softmax statistics and accumulators are float32 whatever the input dtype. Float32 inputs
multiply at full float32 precision on every backend (GPUs would otherwise use TF32 and TPUs bf16
passes, both ~1e-3 off); bf16 inputs take the fast native products.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Branch indices of a tile: hidden by the causal mask, fully visible, cut by the diagonal.
SKIP, FULL, DIAGONAL = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """Static description of the per-device tile loops."""

    causal: bool
    groups: int  # query heads per KV head
    block_q: int
    block_k: int
    window: int | None = None  # sliding window (causal only): keys at most window - 1 back


def tile_bounds(pos, block: int):
    """Min and max position of each tile of ``block`` consecutive entries: two ``[n // block]``."""
    tiles = pos.reshape(-1, block)
    return tiles.min(axis=1), tiles.max(axis=1)


def tile_kind(q_min, q_max, k_min, k_max, window: int | None = None):
    """SKIP / FULL / DIAGONAL of causal tiles with these position bounds (numpy or jax arrays);
    with a ``window``, tiles wholly before it are SKIP and tiles it cuts are DIAGONAL (masked)."""
    xp = jnp if isinstance(q_min, jax.Array) else np
    hidden, full = q_max < k_min, q_min >= k_max
    if window is not None:
        hidden = hidden | (q_min - k_max >= window)
        full = full & (q_max - k_min < window)
    return xp.where(hidden, SKIP, xp.where(full, FULL, DIAGONAL))


def _run_tile(spec: TileSpec, branches, bounds, iq, jk, tc, args):
    """Apply the branch for tile (iq, jk): the switch exists only under a causal mask."""
    if not spec.causal:
        return branches[FULL](tc, *args)
    q_min, q_max, k_min, k_max = bounds
    kind = tile_kind(q_min[iq], q_max[iq], k_min[jk], k_max[jk], spec.window)
    return lax.switch(kind, branches, tc, *args)


def _mask(qp, kp, sq, sk, diagonal: bool, groups: int, window: int | None = None):
    """Visibility ``[b or 1, 1, bq * g, bk]`` of a tile (None when everything is visible)."""
    mask = None
    if diagonal:
        mask = (qp[:, None] >= kp[None, :])[None]
        if window is not None:
            mask = mask & (qp[:, None] - kp[None, :] < window)[None]
    if sq is not None:
        same = sq[:, :, None] == sk[:, None, :]
        mask = same if mask is None else mask & same
    if mask is None:
        return None
    return jnp.repeat(mask, groups, axis=1)[:, None] if groups > 1 else mask[:, None]


def _einsum(spec, a, b):
    """Tile product with float32 accumulation; float32 operands at full precision."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32, precision=precision)


def _scores(qt, kt, mask):
    """Scores ``[b, h, bq * g, bk]`` float32 of pre-scaled queries, -inf where masked."""
    s = _einsum("bhrd,bhkd->bhrk", qt, kt)
    return s if mask is None else jnp.where(mask, s, -jnp.inf)


def _slice(x, start, size, axis):
    return None if x is None else lax.dynamic_slice_in_dim(x, start, size, axis)


class MaskIds(NamedTuple):
    """What decides which scores of a (queries, KV block) pair are visible: the global positions
    of the device's queries ``q_pos [n]`` and of the block's keys ``k_pos [nk]`` (the causal
    mask), and their segment ids ``seg_q [b, n]`` and ``seg_k [b, nk]`` (None: one segment; as
    JAX's ``SegmentIds`` pairs them). Every kernel's ``fold_block`` and ``grad_block`` take one.

    Example::

        ids = MaskIds(jnp.arange(256), jnp.arange(256))        # one causal block, no segments
        carry = fold_block(q, k, v, fresh_carry(q), ids, TileSpec(True, 1, 128, 128))
    """

    q_pos: jax.Array
    k_pos: jax.Array
    seg_q: jax.Array | None = None
    seg_k: jax.Array | None = None


def fresh_carry(q):
    """The empty ``(o, m, l)`` carry for queries ``q [b, h, r, d]``: zeros, -inf, zeros (f32)."""
    rows = q.shape[:3]
    return (jnp.zeros(q.shape, jnp.float32), jnp.full(rows, -jnp.inf, jnp.float32),
            jnp.zeros(rows, jnp.float32))


def fold_block(q, k, v, carry, ids: MaskIds, spec: TileSpec):
    """Fold the KV block ``k, v`` into the running ``carry = (o, m, l)`` of queries ``q``, scores
    masked by ``ids``.

    Online softmax: for each tile, ``m' = max(m, rowmax(s))``, ``l' = l e^(m-m') + rowsum(e^(s-m'))``,
    ``o' = o e^(m-m') + e^(s-m') v``. Rows that have seen no visible key keep ``m = -inf``.
    """
    q_pos, k_pos, seg_q, seg_k = ids
    g, bq, bk = spec.groups, spec.block_q, spec.block_k
    n, nk = q.shape[2] // g, k.shape[2]
    bounds = (*tile_bounds(q_pos, bq), *tile_bounds(k_pos, bk))

    def tile_update(diagonal):
        def update(tc, qt, kt, vt, qp, kp, sq, sk):
            o, m, l = tc
            s = _scores(qt, kt, _mask(qp, kp, sq, sk, diagonal, spec.groups, spec.window))
            m_new = jnp.maximum(m, s.max(axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe[..., None])  # [b, h, bq * g, bk]
            alpha = jnp.exp(m - m_safe)
            l = alpha * l + p.sum(axis=-1)
            pv = _einsum("bhrk,bhkd->bhrd", p.astype(vt.dtype), vt)
            return alpha[..., None] * o + pv, m_new, l

        return update

    branches = [lambda tc, *_: tc, tile_update(False), tile_update(True)]

    def q_tile(iq, carry):
        r0 = iq * bq * g
        qt = _slice(q, r0, bq * g, 2)
        tc = tuple(_slice(x, r0, bq * g, 2) for x in carry)
        qp, sq = _slice(q_pos, iq * bq, bq, 0), _slice(seg_q, iq * bq, bq, 1)

        def kv_tile(jk, tc):
            args = (qt, _slice(k, jk * bk, bk, 2), _slice(v, jk * bk, bk, 2),
                    qp, _slice(k_pos, jk * bk, bk, 0), sq, _slice(seg_k, jk * bk, bk, 1))
            return _run_tile(spec, branches, bounds, iq, jk, tc, args)

        tc = lax.fori_loop(0, nk // bk, kv_tile, tc)
        return tuple(lax.dynamic_update_slice_in_dim(x, t, r0, 2) for x, t in zip(carry, tc))

    return lax.fori_loop(0, n // bq, q_tile, carry)


def finish(o, m, l, dtype):
    """Normalise the carry: output ``[b, h, n * g, d]`` in ``dtype`` and ``lse`` float32.

    Rows that saw no visible key (``m = -inf``) give 0; NaN or inf in the inputs reach the
    output as NaN, as in ``jax.nn.dot_product_attention`` (``l > 0`` would read NaN as empty).
    """
    seen = m != -jnp.inf
    out = jnp.where(seen[..., None], o / jnp.where(seen, l, 1.0)[..., None], 0.0)
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
    return out.astype(dtype), lse


def grad_block(q, k, v, do, lse, delta, grads, ids: MaskIds, spec: TileSpec):
    """Accumulate ``grads = (dq, dk, dv)`` (float32) for the pair (local queries, KV block).

    With ``p = e^(s - lse)``: ``dv += p^T do``, ``ds = p (do v^T - delta)``, ``dq += ds k``,
    ``dk += ds^T q``; ``delta = rowsum(do * o)``. With pre-scaled ``q`` this ``dk`` is final and
    ``dq`` still needs one multiplication by the scale.
    """
    q_pos, k_pos, seg_q, seg_k = ids
    g, bq, bk = spec.groups, spec.block_q, spec.block_k
    n, nk = q.shape[2] // g, k.shape[2]
    bounds = (*tile_bounds(q_pos, bq), *tile_bounds(k_pos, bk))
    lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # empty rows: all scores -inf, p = 0

    def tile_update(diagonal):
        # Transposed scores [b, h, bk, bq * g]: dv and dk then contract over rows without a
        # transposed operand (much faster on CPU); only dq reads ds transposed.
        def update(tc, qt, dot_, lt, dt, kt, vt, qp, kp, sq, sk):
            dqt, dkt, dvt = tc
            mask = _mask(qp, kp, sq, sk, diagonal, spec.groups, spec.window)
            st = _einsum("bhkd,bhrd->bhkr", kt, qt)
            if mask is not None:
                st = jnp.where(jnp.swapaxes(mask, -1, -2), st, -jnp.inf)
            pt = jnp.exp(st - lt[:, :, None, :])  # [b, h, bk, bq * g]
            dvt = dvt + _einsum("bhkr,bhrd->bhkd", pt.astype(dot_.dtype), dot_)
            dpt = _einsum("bhkd,bhrd->bhkr", vt, dot_)
            dst = (pt * (dpt - dt[:, :, None, :])).astype(qt.dtype)
            dkt = dkt + _einsum("bhkr,bhrd->bhkd", dst, qt)
            dqt = dqt + _einsum("bhkr,bhkd->bhrd", dst, kt)
            return dqt, dkt, dvt

        return update

    branches = [lambda tc, *_: tc, tile_update(False), tile_update(True)]

    def kv_tile(jk, grads):
        dq, dk, dv = grads
        c0 = jk * bk
        kt, vt = _slice(k, c0, bk, 2), _slice(v, c0, bk, 2)
        kp, sk = _slice(k_pos, c0, bk, 0), _slice(seg_k, c0, bk, 1)

        def q_tile(iq, state):
            # Only tiles pass through the switch: a full-size dq operand there could be copied.
            dq, dkt, dvt = state
            r0 = iq * bq * g
            tc = (_slice(dq, r0, bq * g, 2), dkt, dvt)
            args = (_slice(q, r0, bq * g, 2), _slice(do, r0, bq * g, 2),
                    _slice(lse, r0, bq * g, 2), _slice(delta, r0, bq * g, 2),
                    kt, vt, _slice(q_pos, iq * bq, bq, 0), kp, _slice(seg_q, iq * bq, bq, 1), sk)
            dqt, dkt, dvt = _run_tile(spec, branches, bounds, iq, jk, tc, args)
            return lax.dynamic_update_slice_in_dim(dq, dqt, r0, 2), dkt, dvt

        state = (dq, _slice(dk, c0, bk, 2), _slice(dv, c0, bk, 2))
        dq, dkt, dvt = lax.fori_loop(0, n // bq, q_tile, state)
        dk = lax.dynamic_update_slice_in_dim(dk, dkt, c0, 2)
        dv = lax.dynamic_update_slice_in_dim(dv, dvt, c0, 2)
        return dq, dk, dv

    return lax.fori_loop(0, nk // bk, kv_tile, grads)
