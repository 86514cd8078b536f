"""The ring's block step as Pallas kernels for GPUs (the Triton backend).

Drop-in replacements for ``blockwise.fold_block`` and ``blockwise.grad_block``, with the same
heads-major shapes (one device; GQA folded into rows, so KV is never repeated):

  q, o, do   [b, h, r, d]   r = n * g rows, row = pos * g + j; q arrives multiplied by the scale
  k, v       [b, h, nk, d]
  m, l, lse  [b, h, r]      float32
  q_pos [n], k_pos [nk]     global positions; seg_q [b, n], seg_k [b, nk] (or None)

Each program owns one tile of rows (forward, dq) or of keys (dk, dv) and loops over the other
side. Tile visibility is decided outside the kernel from position bounds (``bounds``): per row
tile, the loop runs over the visible key tiles in three runs, masked, unmasked, masked (the first
is empty under a plain causal mask; a sliding window cuts tiles at both ends). For sorted
positions (both ring layouts hold sorted positions on every device) that computes exactly the
visible tiles and never touches a hidden one; for any other order it stays exact and merely
computes some masked tiles.

Scores, softmax statistics and accumulators are float32; matmul operands keep the input dtype
(bf16 operands run on the tensor cores). Inside the kernels the running max and lse are kept in
base 2, so each score costs one fused multiply-add and one ``exp2``; the carry stays in natural
units, as ``blockwise`` keeps it. Triton needs power-of-two tiles: head dims that are not a
power of two are zero-padded on the way in.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from ringkit.attention import blockwise
from ringkit.attention.gpu_order import LaunchOrder
from ringkit.attention.bounds import LN2, LOG2E, key_bounds, row_bounds, row_inputs
from ringkit.attention.sizes import BlockSizes, gpu_defaults
from ringkit.errors import ConfigError


def _fit(block: int, n: int, what: str) -> int:
    """The largest power of two <= ``block`` dividing ``n``; refuse below 16."""
    while block > 16 and n % block:
        block //= 2
    if n % block:
        raise ConfigError(
            f"the GPU kernel tiles {what} in powers of two >= 16, but {what} = {n} has none; "
            "pad the sequence to a multiple of 16 per device (ringkit.pad_for_ring)")
    return block





def _dot(a, b, contract_a: int, contract_b: int):
    """2-D matmul contracting the given dims, float32 accumulation (IEEE for float32 operands:
    Triton's default there is TF32, ~1e-3 off)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _visible(qp, kp, sq, sk, causal: bool, keys_first=False, window=None):
    """Visibility ``[rows, keys]`` of a tile (``keys_first``: ``[keys, rows]``, built in that
    order rather than transposed), or None when every pair is visible."""
    if keys_first:
        qx, kx = (lambda x: x[None, :]), (lambda x: x[:, None])
    else:
        qx, kx = (lambda x: x[:, None]), (lambda x: x[None, :])
    mask = (qx(qp) >= kx(kp)) if causal else None
    if causal and window is not None:
        mask = mask & (qx(qp) - kx(kp) < window)
    if sq is not None:
        same = qx(sq) == kx(sk)
        mask = same if mask is None else mask & same
    return mask


def _three_runs(step, bounds, carry):
    """Masked, unmasked and masked runs of tiles (``bounds.row_bounds``/``key_bounds``); under a
    plain causal mask the first run is empty."""
    first, full_from, full_to, end = bounds
    carry = lax.fori_loop(first, full_from, step(True), carry)
    carry = lax.fori_loop(full_from, full_to, step(False), carry)
    return lax.fori_loop(full_to, end, step(True), carry)


# ---------------------------------------------------------------------------------------------
# Kernels. Refs carry one (batch, head) slice: rows [block, d] or the device's whole KV [nk, d].


def _fold_kernel(*refs, order, causal, window, has_seg, fresh, final, block_k):
    it = iter(refs)
    q_ref, k_ref, v_ref, qp_ref, kp_ref = (next(it) for _ in range(5))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    bound_refs = tuple(next(it) for _ in range(4))
    carry_in = () if fresh else (next(it), next(it), next(it))
    out_refs = tuple(it)

    i = order(pl.program_id(0))[2]
    q, qp = q_ref[...], qp_ref[...]
    sq = sq_ref[...] if has_seg else None
    rows, d = q.shape
    if fresh:
        carry = (jnp.zeros((rows, d), jnp.float32), jnp.full((rows,), -jnp.inf, jnp.float32),
                 jnp.zeros((rows,), jnp.float32))
    else:
        o_in, m_in, l_in = carry_in
        carry = (o_in[...], m_in[...] * LOG2E, l_in[...])  # running max in base 2 inside

    def step(masked):
        def body(j, carry):
            o, m2, l = carry
            keys = pl.ds(j * block_k, block_k)
            s = _dot(q, k_ref[keys, :], 1, 1)  # [rows, block_k]
            mask = _visible(qp, kp_ref[keys], sq, sk_ref[keys] if has_seg else None,
                            causal and masked, window=window)
            if mask is not None:
                s = jnp.where(mask, s, -jnp.inf)
            m_new = jnp.maximum(m2, s.max(axis=1) * LOG2E)
            # Rows with nothing visible yet keep a -inf max; only a mask can leave them so.
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new) if mask is not None else m_new
            p = jnp.exp2(s * LOG2E - m_safe[:, None])
            alpha = jnp.exp2(m2 - m_safe)
            v = v_ref[keys, :]
            o = alpha[:, None] * o + _dot(p.astype(v.dtype), v, 1, 0)
            return o, m_new, alpha * l + p.sum(axis=1)

        return body

    o, m2, l = _three_runs(step, [ref[i] for ref in bound_refs], carry)
    if final:
        out_ref, lse_ref = out_refs
        seen = m2 != -jnp.inf  # no visible key; a NaN row stays NaN
        safe_l = jnp.where(seen, l, 1.0)
        out_ref[...] = jnp.where(seen[:, None], o / safe_l[:, None], 0.0).astype(out_ref.dtype)
        lse_ref[...] = jnp.where(seen, (m2 + jnp.log2(safe_l)) * LN2, -jnp.inf)
    else:
        for ref, x in zip(out_refs, (o, m2 * LN2, l)):
            ref[...] = x


def _dq_kernel(*refs, order, causal, window, has_seg, block_k):
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref = (next(it) for _ in range(8))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    *bound_refs, dq_in, dq_out = it

    i = order(pl.program_id(0))[2]
    q, do, qp = q_ref[...], do_ref[...], qp_ref[...]
    lse2, delta = lse_ref[...] * LOG2E, delta_ref[...]
    sq = sq_ref[...] if has_seg else None

    def step(masked):
        def body(j, dq):
            keys = pl.ds(j * block_k, block_k)
            k, v = k_ref[keys, :], v_ref[keys, :]
            s = _dot(q, k, 1, 1)
            mask = _visible(qp, kp_ref[keys], sq, sk_ref[keys] if has_seg else None,
                            causal and masked, window=window)
            if mask is not None:
                s = jnp.where(mask, s, -jnp.inf)
            p = jnp.exp2(s * LOG2E - lse2[:, None])
            ds = p * (_dot(do, v, 1, 1) - delta[:, None])
            return dq + _dot(ds.astype(k.dtype), k, 1, 0)

        return body

    dq_out[...] = _three_runs(step, [ref[i] for ref in bound_refs], dq_in[...])


def _dkv_kernel(*refs, order, causal, window, has_seg, block_r):
    it = iter(refs)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qp_ref, kp_ref = (next(it) for _ in range(8))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    *bound_refs, dk_in, dv_in, dk_out, dv_out = it

    j = order(pl.program_id(0))[2]
    k, v, kp = k_ref[...], v_ref[...], kp_ref[...]
    sk = sk_ref[...] if has_seg else None

    def step(masked):
        # Transposed scores [keys, rows]: dk and dv then come out of plain products.
        def body(i, grads):
            dk, dv = grads
            rows = pl.ds(i * block_r, block_r)
            q, do = q_ref[rows, :], do_ref[rows, :]
            st = _dot(k, q, 1, 1)
            mask = _visible(qp_ref[rows], kp, sq_ref[rows] if has_seg else None, sk,
                            causal and masked, keys_first=True, window=window)
            if mask is not None:
                st = jnp.where(mask, st, -jnp.inf)
            pt = jnp.exp2(st * LOG2E - (lse_ref[rows] * LOG2E)[None, :])
            dv = dv + _dot(pt.astype(do.dtype), do, 1, 0)
            dst = pt * (_dot(v, do, 1, 1) - delta_ref[rows][None, :])
            return dk + _dot(dst.astype(q.dtype), q, 1, 0), dv

        return body

    dk_out[...], dv_out[...] = _three_runs(step, [ref[j] for ref in bound_refs],
                                           (dk_in[...], dv_in[...]))


# ---------------------------------------------------------------------------------------------
# Wrappers: pallas_call set-up shared by the three kernels.


def _blocks(blocks: BlockSizes | None, head_dim: int, dtype) -> BlockSizes:
    blocks = blocks or BlockSizes()
    return blocks.filled(gpu_defaults(head_dim, jnp.dtype(dtype).itemsize, blocks.gpu_forward))


def _pad_head_dim(*xs):
    """Zero-pad the last dim to a power of two (zeros change no score and no output column)."""
    d = xs[0].shape[-1]
    padded = max(16, 1 << (d - 1).bit_length())
    if padded == d:
        return xs
    return tuple(None if x is None else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, padded - d)])
                 for x in xs)


def _specs(b_idx, shape_tail):
    """BlockSpec over [b, h, ...] with the batch and head dims squeezed."""
    return pl.BlockSpec((None, None, *shape_tail), b_idx)


def _call(kernel, grid, in_specs, out_specs, out_shape, args, aliases, launch, interpret, name):
    warps, stages = launch
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        input_output_aliases=aliases, interpret=interpret, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
    )(*args)


def fold_block(q, k, v, carry, ids: blockwise.MaskIds, spec: blockwise.TileSpec, *,
               final_dtype=None, blocks: BlockSizes | None = None, interpret=False):
    """Fold the KV block ``k, v`` into ``carry = (o, m, l)`` (None: a fresh carry).

    Same contract as ``blockwise.fold_block``. With ``final_dtype`` the kernel also finishes the
    softmax and returns ``(out [b, h, r, d] in final_dtype, lse [b, h, r])`` like
    ``blockwise.finish``, saving a pass over the carry on the ring's last step.
    """
    q_pos, k_pos, seg_q, seg_k = ids
    b, h, r, d = q.shape
    blocks = _blocks(blocks, d, q.dtype)
    if blocks.gpu_forward == "mosaic":
        raise ConfigError("pallas_gpu.fold_block runs the Triton forward; the Mosaic forward is "
                          "pallas_mgpu.fold_block (ring_attention picks it from BlockSizes)")
    nk = k.shape[2]
    br, bk = _fit(blocks.block_q, r, "rows per device"), _fit(blocks.block_k, nk, "keys per device")
    q_rows, seg_rows = row_inputs(q_pos, seg_q, spec.groups)
    bounds = row_bounds(q_rows, k_pos.astype(jnp.int32), br, bk, spec.causal, spec.window)
    has_seg, fresh = seg_q is not None, carry is None
    q, k, v, o_in = _pad_head_dim(q, k, v, None if fresh else carry[0])
    dp = q.shape[-1]

    n_tiles = r // br
    order = LaunchOrder(n_tiles, b, h, heavy_last_tile=True)
    row = lambda p: (*order(p), 0)  # (batch, head, tile, 0)
    whole = lambda p: (*order(p)[:2], 0, 0)
    row_vec = lambda p: order(p)
    in_specs = [_specs(row, (br, dp)), _specs(whole, (nk, dp)), _specs(whole, (nk, dp)),
                pl.BlockSpec((br,), lambda p: order(p)[2:]), pl.BlockSpec((nk,), lambda p: (0,))]
    args = [q, k, v, q_rows, k_pos.astype(jnp.int32)]
    if has_seg:
        in_specs += [pl.BlockSpec((None, br), lambda p: order(p)[::2]),
                     pl.BlockSpec((None, nk), lambda p: (order(p)[0], 0))]
        args += [seg_rows, seg_k.astype(jnp.int32)]
    in_specs += [pl.BlockSpec((n_tiles,), lambda p: (0,))] * 4
    args += bounds
    carry_specs = [_specs(row, (br, dp)), _specs(row_vec, (br,)), _specs(row_vec, (br,))]
    if final_dtype is None:
        out_specs = carry_specs
        out_shape = [jax.ShapeDtypeStruct((b, h, r, dp), jnp.float32),
                     jax.ShapeDtypeStruct((b, h, r), jnp.float32),
                     jax.ShapeDtypeStruct((b, h, r), jnp.float32)]
    else:
        out_specs = carry_specs[:2]
        out_shape = [jax.ShapeDtypeStruct((b, h, r, dp), final_dtype),
                     jax.ShapeDtypeStruct((b, h, r), jnp.float32)]
    aliases = {}
    if not fresh:
        aliases = {len(args) + i: i for i in range(3)} if final_dtype is None else {}
        in_specs += carry_specs
        args += [o_in, carry[1], carry[2]]
    kernel = functools.partial(_fold_kernel, order=order, causal=spec.causal, window=spec.window,
                               has_seg=has_seg, fresh=fresh, final=final_dtype is not None, block_k=bk)
    outs = _call(kernel, order.grid, in_specs, out_specs, out_shape, args, aliases,
                 blocks.launch(), interpret, "ring_fold")
    first = outs[0][..., :d] if dp != d else outs[0]
    return (first, *outs[1:])


@dataclasses.dataclass(frozen=True)
class GradInputs:
    """The backward's inputs, padded and laid out for the kernels (shared by the dq and dk/dv
    launches): heads-major ``q, do [b, h, r, d]``, ``k, v [b, h, nk, d]``, ``lse, delta
    [b, h, r]``, per-row positions ``q_rows [r]`` and key positions ``k_pos [nk]``, and per-row
    and key segments (None: one segment)."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    do: jax.Array
    lse: jax.Array
    delta: jax.Array
    q_rows: jax.Array
    k_pos: jax.Array
    seg_rows: jax.Array | None
    seg_k: jax.Array | None
    spec: blockwise.TileSpec

    @property
    def has_seg(self) -> bool:
        return self.seg_rows is not None

    @property
    def args(self) -> tuple:
        """The kernels' array operands, in their ref order (segments only when present)."""
        head = (self.q, self.k, self.v, self.do, self.lse, self.delta, self.q_rows, self.k_pos)
        return head + ((self.seg_rows, self.seg_k) if self.has_seg else ())

    @property
    def shape(self):  # (b, h, r, nk, padded head dim)
        return (*self.q.shape[:3], self.k.shape[2], self.q.shape[3])


def grad_block(q, k, v, do, lse, delta, grads, ids: blockwise.MaskIds,
               spec: blockwise.TileSpec, *, blocks: BlockSizes | None = None, interpret=False):
    """Add this KV block's share to ``grads = (dq, dk, dv)``; contract of ``blockwise.grad_block``.

    Two launches: dq (one program per row tile) and dk/dv (one per key tile), each recomputing
    the scores, so a tile pair costs 7 matmuls where the counted flops assume 5. Adding dq from
    the dk/dv kernel with float32 atomics saves two, but Pallas' Triton atomics are
    acquire-release: on an H100 that backward ran at a third of this one's rate
    (benchmarks/README.md).
    """
    q_pos, k_pos, seg_q, seg_k = ids
    d = q.shape[-1]
    blocks = _blocks(blocks, d, q.dtype)
    q_rows, seg_rows = row_inputs(q_pos, seg_q, spec.groups)
    lse = jnp.where(lse == -jnp.inf, 0.0, lse)  # empty rows: all scores -inf, p = 0
    q, k, v, do, dq, dk, dv = _pad_head_dim(q, k, v, do, *grads)
    g = GradInputs(q, k, v, do, lse, delta, q_rows, k_pos.astype(jnp.int32), seg_rows,
                   None if seg_k is None else seg_k.astype(jnp.int32), spec)
    launch = blocks.launch(backward=True)
    dq = grad_dq(g, dq, blocks, launch, interpret)
    dk, dv = grad_dkv(g, dk, dv, blocks, launch, interpret)
    if dq.shape[-1] != d:
        dq, dk, dv = dq[..., :d], dk[..., :d], dv[..., :d]
    return dq, dk, dv


def grad_dq(g: GradInputs, dq, blocks: BlockSizes, launch, interpret):
    """dq += this block's share: one program per row tile, looping over key tiles."""
    b, h, r, nk, dp = g.shape
    q_rows, k_pos = g.q_rows, g.k_pos
    br, bk = (_fit(blocks.block_q_dq, r, "rows per device"),
              _fit(blocks.block_k_dq, nk, "keys per device"))
    bounds = row_bounds(q_rows, k_pos, br, bk, g.spec.causal, g.spec.window)
    order = LaunchOrder(r // br, b, h, heavy_last_tile=True)
    row = lambda p: (*order(p), 0)  # (batch, head, tile, 0)
    row_vec = lambda p: order(p)
    whole = lambda p: (*order(p)[:2], 0, 0)
    specs = [_specs(row, (br, dp)), _specs(whole, (nk, dp)), _specs(whole, (nk, dp)),
             _specs(row, (br, dp)), _specs(row_vec, (br,)), _specs(row_vec, (br,)),
             pl.BlockSpec((br,), lambda p: order(p)[2:]), pl.BlockSpec((nk,), lambda p: (0,))]
    if g.has_seg:
        specs += [pl.BlockSpec((None, br), lambda p: order(p)[::2]),
                  pl.BlockSpec((None, nk), lambda p: (order(p)[0], 0))]
    specs += [pl.BlockSpec((r // br,), lambda p: (0,))] * 4 + [_specs(row, (br, dp))]
    args = [*g.args, *bounds, dq]
    kernel = functools.partial(_dq_kernel, order=order, causal=g.spec.causal,
                               window=g.spec.window, has_seg=g.has_seg, block_k=bk)
    return _call(kernel, order.grid, specs, _specs(row, (br, dp)),
                 jax.ShapeDtypeStruct(dq.shape, jnp.float32), args, {len(args) - 1: 0},
                 launch, interpret, "ring_grad_dq")


def grad_dkv(g: GradInputs, dk, dv, blocks: BlockSizes, launch, interpret):
    """dk, dv += this block's share: one program per key tile, looping over row tiles."""
    b, h, r, nk, dp = g.shape
    q_rows, k_pos = g.q_rows, g.k_pos
    br, bk = (_fit(blocks.block_q_dkv, r, "rows per device"),
              _fit(blocks.block_k_dkv, nk, "keys per device"))
    bounds = key_bounds(q_rows, k_pos, br, bk, g.spec.causal, g.spec.window)
    order = LaunchOrder(nk // bk, b, h, heavy_last_tile=False)
    key = lambda p: (*order(p), 0)  # (batch, head, key tile, 0)
    whole = lambda p: (*order(p)[:2], 0, 0)
    whole_vec = lambda p: (*order(p)[:2], 0)
    specs = [_specs(whole, (r, dp)), _specs(key, (bk, dp)), _specs(key, (bk, dp)),
             _specs(whole, (r, dp)), _specs(whole_vec, (r,)), _specs(whole_vec, (r,)),
             pl.BlockSpec((r,), lambda p: (0,)), pl.BlockSpec((bk,), lambda p: order(p)[2:])]
    if g.has_seg:
        specs += [pl.BlockSpec((None, r), lambda p: (order(p)[0], 0)),
                  pl.BlockSpec((None, bk), lambda p: order(p)[::2])]
    specs += [pl.BlockSpec((nk // bk,), lambda p: (0,))] * 4 + [_specs(key, (bk, dp))] * 2
    args = [*g.args, *bounds, dk, dv]
    kernel = functools.partial(_dkv_kernel, order=order, causal=g.spec.causal,
                               window=g.spec.window, has_seg=g.has_seg, block_r=br)
    shape = jax.ShapeDtypeStruct(dk.shape, jnp.float32)
    return _call(kernel, order.grid, specs, [_specs(key, (bk, dp))] * 2, [shape, shape], args,
                 {len(args) - 2: 0, len(args) - 1: 1}, launch, interpret, "ring_grad_dkv")
