"""The ring's block step as Pallas kernels for TPUs (Mosaic).

Drop-in replacements for ``blockwise.fold_block`` and ``blockwise.grad_block`` with the same
heads-major shapes as ``pallas_gpu`` (one device; GQA folded into rows, KV never repeated):

  q, o, do   [b, h, r, d]   r = n * g rows, row = pos * g + j; q arrives multiplied by the scale
  k, v       [b, h, nk, d]
  m, l, lse  [b, h, r]      float32
  q_pos [n], k_pos [nk]     global positions; seg_q [b, n], seg_k [b, nk] (or None)

The grid is (batch, head, tile, visit): a program owns one row tile (forward, dq) or one key tile
(dk, dv) and the innermost axis walks the tiles of the other side that it must see. Which tiles
those are is decided in XLA from position bounds and handed to the kernel as scalar-prefetched
lists (SMEM): per owned tile, the visible tiles in order, then the last one repeated. The block
index maps read those lists, so a repeated index is not fetched again and a hidden tile is never
fetched; the kernel computes only the first ``count`` visits, with the mask only on tiles the
diagonal cuts (or where segments need it).

Softmax statistics are kept lane-dense as ``[rows, 128]`` (the value repeated along lanes), the
layout Mosaic broadcasts and stores without relayouts; the wrappers convert to and from the
``[b, h, r]`` carry. Tiles: rows in multiples of 8, keys in multiples of 128 (lane-dense key
positions), or a whole dimension.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ringkit.attention import blockwise
from ringkit.attention.bounds import tile_kinds
from ringkit.attention.sizes import BlockSizes, tpu_defaults
from ringkit.errors import ConfigError

LANES = 128


def _tile(block: int, n: int, align: int, what: str) -> int:
    """``n`` itself if it fits in ``block``; else the largest power of two <= ``block`` dividing
    ``n`` and a multiple of ``align``."""
    if n <= block:
        return n
    t = block
    while t > align and n % t:
        t //= 2
    if t % align or n % t:
        raise ConfigError(
            f"the TPU kernel tiles {what} in multiples of {align}, but {what} = {n} has no such "
            f"tile up to {block}; pad the sequence (ringkit.pad_for_ring) or pass BlockSizes "
            f"with a tile >= {n}")
    return t


def _dot(a, b, contract_a: int, contract_b: int):
    """2-D matmul, float32 accumulation; float32 operands at full precision (not bf16 passes)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _lanes(x):
    """[..., r] -> [..., r, 128], the value repeated along lanes."""
    return jnp.broadcast_to(x[..., None], (*x.shape, LANES))


# ---------------------------------------------------------------------------------------------
# Visit lists (XLA, outside the kernels).


def _visits(kind):
    """Per owned tile (rows of ``kind [owned, other]``): the visible other tiles in order, the
    last repeated to the end (a repeated block index is not fetched again), their kinds (SKIP on
    the repeats) and how many there are. Flattened for SMEM: ``[owned * other]``, ``[owned]``."""
    visible = kind != blockwise.SKIP
    n_other = kind.shape[1]
    order = jnp.argsort(~visible, axis=1, stable=True).astype(jnp.int32)
    count = visible.sum(axis=1).astype(jnp.int32)
    last = jnp.take_along_axis(order, jnp.maximum(count - 1, 0)[:, None], axis=1)
    live = jnp.arange(n_other)[None, :] < count[:, None]
    tiles = jnp.where(live, order, last)
    kinds = jnp.where(live, jnp.take_along_axis(kind, tiles, axis=1), blockwise.SKIP)
    return tiles.reshape(-1), kinds.astype(jnp.int32).reshape(-1), count


def _on_visible(kinds_ref, index, has_seg, fold):
    """Run ``fold(masked)`` for a visible visit: unmasked on FULL tiles unless segments need it."""
    kind = kinds_ref[index]
    if has_seg:
        pl.when(kind != blockwise.SKIP)(lambda: fold(True))
        return
    pl.when(kind == blockwise.FULL)(lambda: fold(False))
    pl.when(kind == blockwise.DIAGONAL)(lambda: fold(True))


def _mask(qp_ref, kp_ref, sq_ref, sk_ref, causal_tile: bool, window=None):
    """Visibility ``[rows, keys]`` from positions ``[rows, 1]`` / ``[1, keys]`` (or None)."""
    mask = (qp_ref[...] >= kp_ref[...]) if causal_tile else None
    if causal_tile and window is not None:
        mask = mask & (qp_ref[...] - kp_ref[...] < window)
    if sq_ref is not None:
        same = sq_ref[...] == sk_ref[...]
        mask = same if mask is None else mask & same
    return mask


# ---------------------------------------------------------------------------------------------
# Kernels. Blocks: rows [br, d], keys [bk, d], positions [br, 1] / [1, bk], statistics [br, 128].


def _fold_kernel(tiles_ref, kinds_ref, count_ref, *refs, causal, window, has_seg, fresh, final,
                 n_visits):
    del tiles_ref, count_ref  # used by the index maps; kinds say what to compute
    it = iter(refs)
    q_ref, k_ref, v_ref, qp_ref, kp_ref = (next(it) for _ in range(5))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    carry_in = () if fresh else (next(it), next(it), next(it))
    *out_refs, acc_sc, m_sc, l_sc = it
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _start():
        if fresh:
            acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)
            m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
            l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        else:
            for sc, ref in zip((acc_sc, m_sc, l_sc), carry_in):
                sc[...] = ref[...]

    def fold(masked):
        v = v_ref[...]
        s = _dot(q_ref[...], k_ref[...], 1, 1)  # [br, bk]
        mask = _mask(qp_ref, kp_ref, sq_ref, sk_ref, causal and masked, window)
        if mask is not None:
            s = jnp.where(mask, s, -jnp.inf)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))  # [br, 128]
        # Rows with nothing visible yet keep a -inf max; only a mask can leave them so.
        m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next) if mask is not None else m_next
        p = jnp.exp(s - m_safe[:, :1])
        alpha = jnp.exp(m_prev - m_safe)
        l_sc[...] = alpha * l_sc[...] + p.sum(axis=1, keepdims=True)
        acc_sc[...] = alpha[:, :1] * acc_sc[...] + _dot(p.astype(v.dtype), v, 1, 0)
        m_sc[...] = m_next

    _on_visible(kinds_ref, i * n_visits + j, has_seg, fold)

    @pl.when(j == n_visits - 1)
    def _end():
        acc, m, l = acc_sc[...], m_sc[...], l_sc[...]
        if final:
            out_ref, lse_ref = out_refs
            seen = m != -jnp.inf  # no visible key; a NaN row stays NaN
            safe_l = jnp.where(seen, l, 1.0)
            out_ref[...] = jnp.where(seen[:, :1], acc / safe_l[:, :1], 0.0).astype(out_ref.dtype)
            lse_ref[...] = jnp.where(seen, m + jnp.log(safe_l), -jnp.inf)
        else:
            for ref, x in zip(out_refs, (acc, m, l)):
                ref[...] = x


def _dq_kernel(tiles_ref, kinds_ref, count_ref, *refs, causal, window, has_seg, n_visits):
    del tiles_ref, count_ref
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref = (next(it) for _ in range(8))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    dq_in, dq_out, dq_sc = it
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _start():
        dq_sc[...] = dq_in[...]

    def fold(masked):
        k = k_ref[...]
        s = _dot(q_ref[...], k, 1, 1)
        mask = _mask(qp_ref, kp_ref, sq_ref, sk_ref, causal and masked, window)
        if mask is not None:
            s = jnp.where(mask, s, -jnp.inf)
        p = jnp.exp(s - lse_ref[...][:, :1])
        ds = p * (_dot(do_ref[...], v_ref[...], 1, 1) - delta_ref[...][:, :1])
        dq_sc[...] += _dot(ds.astype(k.dtype), k, 1, 0)

    _on_visible(kinds_ref, i * n_visits + j, has_seg, fold)

    @pl.when(j == n_visits - 1)
    def _end():
        dq_out[...] = dq_sc[...]


def _dkv_kernel(tiles_ref, kinds_ref, count_ref, *refs, causal, window, has_seg, n_visits):
    del tiles_ref, count_ref
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref = (next(it) for _ in range(8))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    dk_in, dv_in, dk_out, dv_out, dk_sc, dv_sc = it
    jk, i = pl.program_id(2), pl.program_id(3)  # owned key tile, visit over row tiles

    @pl.when(i == 0)
    def _start():
        dk_sc[...], dv_sc[...] = dk_in[...], dv_in[...]

    def fold(masked):
        q, do = q_ref[...], do_ref[...]
        s = _dot(q, k_ref[...], 1, 1)  # [br, bk]
        mask = _mask(qp_ref, kp_ref, sq_ref, sk_ref, causal and masked, window)
        if mask is not None:
            s = jnp.where(mask, s, -jnp.inf)
        p = jnp.exp(s - lse_ref[...][:, :1])
        dv_sc[...] += _dot(p.astype(do.dtype).T, do, 1, 0)
        ds = p * (_dot(do, v_ref[...], 1, 1) - delta_ref[...][:, :1])
        dk_sc[...] += _dot(ds.astype(q.dtype).T, q, 1, 0)

    _on_visible(kinds_ref, jk * n_visits + i, has_seg, fold)

    @pl.when(i == n_visits - 1)
    def _end():
        dk_out[...], dv_out[...] = dk_sc[...], dv_sc[...]


# ---------------------------------------------------------------------------------------------
# Wrappers.


def _blocks(blocks: BlockSizes | None, head_dim: int, dtype) -> BlockSizes:
    return (blocks or BlockSizes()).filled(tpu_defaults(head_dim, jnp.dtype(dtype).itemsize))


def _positions(q_pos, k_pos, seg_q, seg_k, groups):
    """Row positions ``[r, 1]``, key positions ``[1, nk]``, segments ``[b, r, 1]`` / ``[b, 1, nk]``
    (sublane-major rows and lane-major keys: their compare is the tile's mask, no relayout)."""
    q_rows = jnp.repeat(q_pos.astype(jnp.int32), groups)
    k_pos = k_pos.astype(jnp.int32)
    segs = None
    if seg_q is not None:
        segs = (jnp.repeat(seg_q.astype(jnp.int32), groups, axis=1)[:, :, None],
                seg_k.astype(jnp.int32)[:, None, :])
    return q_rows, k_pos, segs


def _call(kernel, grid, visits, in_specs, out_specs, out_shape, scratch, args, aliases,
          interpret, name):
    params = pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=grid, in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=scratch)
    # Aliases count the three prefetched lists among the inputs.
    aliases = {i + 3: o for i, o in aliases.items()}
    return pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=out_shape, input_output_aliases=aliases,
        compiler_params=params, interpret=_interpret(interpret), name=name,
    )(*visits, *args)


def _interpret(interpret):
    # Pallas' generic interpreter (the kernel discharged to XLA ops). The TPU-specific one
    # (pltpu.InterpretParams) runs kernels through host callbacks, which deadlock the CPU
    # collectives of a ring over more than two simulated devices.
    return bool(interpret)


def fold_block(q, k, v, carry, ids: blockwise.MaskIds, spec: blockwise.TileSpec, *,
               final_dtype=None, blocks: BlockSizes | None = None, interpret=False):
    """Fold the KV block ``k, v`` into ``carry = (o, m, l)`` (None: a fresh carry).

    Same contract as ``blockwise.fold_block`` (and ``pallas_gpu.fold_block``); with
    ``final_dtype`` the kernel also finishes the softmax and returns ``(out, lse)``.
    """
    q_pos, k_pos, seg_q, seg_k = ids
    b, h, r, d = q.shape
    nk = k.shape[2]
    blocks = _blocks(blocks, d, q.dtype)
    br, bk = (_tile(blocks.block_q, r, 8, "rows per device"),
              _tile(blocks.block_k, nk, LANES, "keys per device"))
    q_rows, k_pos, segs = _positions(q_pos, k_pos, seg_q, seg_k, spec.groups)
    visits = _visits(tile_kinds(q_rows, k_pos, br, bk, spec.causal, spec.window))
    n_rt, n_kt = r // br, nk // bk
    has_seg, fresh, final = segs is not None, carry is None, final_dtype is not None

    row = lambda bi, hi, i, j, t, *_: (bi, hi, i, 0)
    key = lambda bi, hi, i, j, t, *_: (bi, hi, t[i * n_kt + j], 0)
    in_specs = [pl.BlockSpec((None, None, br, d), row), pl.BlockSpec((None, None, bk, d), key),
                pl.BlockSpec((None, None, bk, d), key),
                pl.BlockSpec((br, 1), lambda bi, hi, i, j, *_: (i, 0)),
                pl.BlockSpec((1, bk), lambda bi, hi, i, j, t, *_: (0, t[i * n_kt + j]))]
    args = [q, k, v, q_rows[:, None], k_pos[None, :]]
    if has_seg:
        in_specs += [pl.BlockSpec((None, br, 1), lambda bi, hi, i, j, *_: (bi, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda bi, hi, i, j, t, *_: (bi, 0, t[i * n_kt + j]))]
        args += list(segs)
    stat_spec = pl.BlockSpec((None, None, br, LANES), row)
    o_spec = pl.BlockSpec((None, None, br, d), row)
    aliases = {}
    if not fresh:
        if not final:
            aliases = {len(args) + n: n for n in range(3)}
        in_specs += [o_spec, stat_spec, stat_spec]
        args += [carry[0], _lanes(carry[1]), _lanes(carry[2])]
    stat_shape = jax.ShapeDtypeStruct((b, h, r, LANES), jnp.float32)
    if final:
        out_specs = [o_spec, stat_spec]
        out_shape = [jax.ShapeDtypeStruct((b, h, r, d), final_dtype), stat_shape]
    else:
        out_specs = [o_spec, stat_spec, stat_spec]
        out_shape = [jax.ShapeDtypeStruct((b, h, r, d), jnp.float32), stat_shape, stat_shape]
    scratch = [pltpu.VMEM((br, d), jnp.float32), pltpu.VMEM((br, LANES), jnp.float32),
               pltpu.VMEM((br, LANES), jnp.float32)]
    kernel = functools.partial(_fold_kernel, causal=spec.causal, window=spec.window,
                               has_seg=has_seg, fresh=fresh, final=final, n_visits=n_kt)
    outs = _call(kernel, (b, h, n_rt, n_kt), visits, in_specs, out_specs,
                 out_shape, scratch, args, aliases, interpret, "ring_fold_tpu")
    return (outs[0], *(x[..., 0] for x in outs[1:]))


def grad_block(q, k, v, do, lse, delta, grads, ids: blockwise.MaskIds,
               spec: blockwise.TileSpec, *, blocks: BlockSizes | None = None, interpret=False):
    """Add this KV block's share to ``grads = (dq, dk, dv)``; contract of ``blockwise.grad_block``."""
    q_pos, k_pos, seg_q, seg_k = ids
    b, h, r, d = q.shape
    nk = k.shape[2]
    blocks = _blocks(blocks, d, q.dtype)
    q_rows, k_pos, segs = _positions(q_pos, k_pos, seg_q, seg_k, spec.groups)
    has_seg = segs is not None
    lse = _lanes(jnp.where(lse == -jnp.inf, 0.0, lse))  # empty rows: all scores -inf, p = 0
    delta = _lanes(delta)
    dq, dk, dv = grads
    common = [q, k, v, do, lse, delta, q_rows[:, None], k_pos[None, :]] + (list(segs) if has_seg
                                                                           else [])

    def specs(br, bk, row_of, key_of):
        """Input specs of both backward kernels: row blocks at ``row_of``, key blocks at
        ``key_of`` (index-map functions of the grid and the visit lists)."""
        rows = lambda *a: (a[0], a[1], row_of(*a), 0)
        keys = lambda *a: (a[0], a[1], key_of(*a), 0)
        out = [pl.BlockSpec((None, None, br, d), rows), pl.BlockSpec((None, None, bk, d), keys),
               pl.BlockSpec((None, None, bk, d), keys), pl.BlockSpec((None, None, br, d), rows),
               pl.BlockSpec((None, None, br, LANES), rows),
               pl.BlockSpec((None, None, br, LANES), rows),
               pl.BlockSpec((br, 1), lambda *a: (row_of(*a), 0)),
               pl.BlockSpec((1, bk), lambda *a: (0, key_of(*a)))]
        if has_seg:
            out += [pl.BlockSpec((None, br, 1), lambda *a: (a[0], row_of(*a), 0)),
                    pl.BlockSpec((None, 1, bk), lambda *a: (a[0], 0, key_of(*a)))]
        return out

    # dq: owned row tiles, visiting key tiles.
    br, bk = (_tile(blocks.block_q_dq, r, 8, "rows per device"),
              _tile(blocks.block_k_dq, nk, LANES, "keys per device"))
    n_rt, n_kt = r // br, nk // bk
    visits = _visits(tile_kinds(q_rows, k_pos, br, bk, spec.causal, spec.window))
    in_specs = specs(br, bk, lambda bi, hi, i, j, *_: i,
                     lambda bi, hi, i, j, t, *_: t[i * n_kt + j])
    dq_spec = pl.BlockSpec((None, None, br, d), lambda bi, hi, i, *_: (bi, hi, i, 0))
    args = common + [dq]
    kernel = functools.partial(_dq_kernel, causal=spec.causal, window=spec.window,
                               has_seg=has_seg, n_visits=n_kt)
    dq = _call(kernel, (b, h, n_rt, n_kt), visits, in_specs + [dq_spec], dq_spec,
               jax.ShapeDtypeStruct(dq.shape, jnp.float32), [pltpu.VMEM((br, d), jnp.float32)],
               args, {len(args) - 1: 0}, interpret, "ring_grad_dq_tpu")

    # dk, dv: owned key tiles, visiting row tiles (the transposed kinds).
    br, bk = (_tile(blocks.block_q_dkv, r, 8, "rows per device"),
              _tile(blocks.block_k_dkv, nk, LANES, "keys per device"))
    n_rt, n_kt = r // br, nk // bk
    visits = _visits(tile_kinds(q_rows, k_pos, br, bk, spec.causal, spec.window).T)
    in_specs = specs(br, bk, lambda bi, hi, jk, i, t, *_: t[jk * n_rt + i],
                     lambda bi, hi, jk, i, *_: jk)
    kv_spec = pl.BlockSpec((None, None, bk, d), lambda bi, hi, jk, *_: (bi, hi, jk, 0))
    args = common + [dk, dv]
    kernel = functools.partial(_dkv_kernel, causal=spec.causal, window=spec.window,
                               has_seg=has_seg, n_visits=n_rt)
    shape = jax.ShapeDtypeStruct(dk.shape, jnp.float32)
    dk, dv = _call(kernel, (b, h, n_kt, n_rt), visits, in_specs + [kv_spec] * 2, [kv_spec] * 2,
                   [shape, shape], [pltpu.VMEM((bk, d), jnp.float32)] * 2, args,
                   {len(args) - 2: 0, len(args) - 1: 1}, interpret, "ring_grad_dkv_tpu")
    return dq, dk, dv
