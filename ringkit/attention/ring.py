"""Ring attention over the mesh axis 'sp': exact, causal-load-balanced, GQA-aware, differentiable.

Each device keeps its queries; KV blocks travel one hop per step around the ring and every device
folds each arriving block into its queries with an online softmax (``blockwise.fold_block``). The
backward pass is a second ring in which dk, dv travel with k, v and return to their owner with one
final hop. Memory per device is O(seq / sp): nothing [seq, seq]-sized exists, forward or backward.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax

from ringkit.attention import blockwise, kernels
from ringkit.attention.bounds import tile_kinds
from ringkit.attention.layouts import chunks_per_device, device_positions, relayout_local
from ringkit.attention.spec import RingSpec, describe as describe_spec, make_spec
from ringkit.mesh import logical_to_spec

_QKV = logical_to_spec(("batch", "seq", "heads", "head_dim"))  # P(('dp','fsdp'), 'sp', 'tp', None)
_SEG = logical_to_spec(("batch", "seq"))
_LSE = logical_to_spec(("batch", "heads", "seq"))  # lse [b, kv_heads, seq * groups]
_log = logging.getLogger("ringkit.attention")


# ---------------------------------------------------------------------------------------------
# The per-step kernels, chosen by spec.kernel.


def _fold(spec: RingSpec, qh, kh, vh, carry, ids: blockwise.MaskIds, final_dtype=None):
    """Fold one KV block into ``carry`` (None: fresh); with ``final_dtype`` return ``(out, lse)``
    (the Pallas kernels finish inside the kernel, saving a pass over the carry)."""
    return kernels.fold(spec.kernel, spec.blocks)(
        qh, kh, vh, carry, ids, spec.tiles, final_dtype=final_dtype, interpret=spec.interpret)


def _grad(spec: RingSpec, *args):
    return kernels.grad(spec.kernel, spec.blocks)(*args, spec.tiles, interpret=spec.interpret)


# ---------------------------------------------------------------------------------------------
# Per-device bodies (run under shard_map).


def _rotate(tree, sp: int, shift: int = 1):
    """Send every array ``shift`` hops along the ring: device i -> device i + shift."""
    if shift % sp == 0:
        return tree
    perm = [(j, (j + shift) % sp) for j in range(sp)]
    return jax.tree.map(lambda x: lax.ppermute(x, "sp", perm), tree)


def _heads_major(x, groups: int):
    """``[b, n, h * g, d]`` -> ``[b, h, n * g, d]`` (row = position * g + group member)."""
    b, n, hg, d = x.shape
    x = x.reshape(b, n, hg // groups, groups, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b, hg // groups, n * groups, d)


def _seq_major(x, groups: int):
    """Inverse of ``_heads_major``."""
    b, h, ng, d = x.shape
    x = x.reshape(b, h, ng // groups, groups, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b, ng // groups, h * groups, d)


def _split_segments(args, spec: RingSpec):
    if spec.has_segments:
        *qkv, seg = args
        return qkv, seg
    return args, None


def _scaled_queries(q, spec: RingSpec):
    """``[b, n, hq, d]`` -> heads-major ``[b, h, n * g, d]``, times the scale once per call."""
    return (_heads_major(q, spec.groups).astype(jnp.float32) * spec.scale).astype(q.dtype)


def _positions(spec: RingSpec, device, n: int):
    return device_positions(device, n, spec.sp, spec.layout)


def _if_visible(spec, q_pos, k_pos, fn, state, hidden=lambda s: s):
    """``fn(state)``, or ``hidden(state)`` when the mask hides the whole block pair."""
    if not spec.causal:
        return fn(state)
    if spec.window is None:
        seen = q_pos.max() >= k_pos.min()
    else:  # per layout chunk: a zigzag block's two chunks lie far apart
        chunk = q_pos.shape[0] // chunks_per_device(spec.layout)
        seen = (tile_kinds(q_pos, k_pos, chunk, chunk, True, spec.window) != blockwise.SKIP).any()
    return lax.cond(seen, fn, hidden, state)


def _forward_local(*args, spec: RingSpec):
    (q, k, v), seg = _split_segments(args, spec)
    sp, g = spec.sp, spec.groups
    n = q.shape[1]
    me = lax.axis_index("sp")
    qh = _scaled_queries(q, spec)
    kv = (_heads_major(k, 1), _heads_major(v, 1), seg)
    q_pos = _positions(spec, me, n)
    if sp == 1:  # one block, which a device always sees: no carry in or out
        out, lse = _fold(spec, qh, kv[0], kv[1], None, blockwise.MaskIds(q_pos, q_pos, seg, seg),
                         q.dtype)
        return _seq_major(out, g), lse

    def fold(step, kv, carry, final_dtype=None):
        kh, vh, seg_k = kv
        k_pos = _positions(spec, (me - step) % sp, n)
        ids = blockwise.MaskIds(q_pos, k_pos, seg, seg_k)
        fn = lambda c: _fold(spec, qh, kh, vh, c, ids, final_dtype)
        hidden = (lambda c: c) if final_dtype is None else (
            lambda c: blockwise.finish(*c, final_dtype))
        return _if_visible(spec, q_pos, k_pos, fn, carry, hidden)

    forward, backward = spec.ring_hops

    def step(direction):
        def body(t, state):
            kv, carry = state
            incoming = _rotate(kv, sp, direction)  # issued before the fold: transfer and compute
            return incoming, fold(t if direction > 0 else -t, kv, carry)  # overlap

        return body

    own = kv
    kv, carry = lax.fori_loop(0, forward, step(1), (kv, blockwise.fresh_carry(qh)))
    if backward:  # a window: the blocks of the next devices come the other way round
        carry = fold(forward, kv, carry)
        kv, carry = lax.fori_loop(1, backward, step(-1), (_rotate(own, sp, -1), carry))
        out, lse = fold(-backward, kv, carry, q.dtype)
    else:
        out, lse = fold(forward, kv, carry, q.dtype)  # the last block is never sent on
    return _seq_major(out, g), lse


def _backward_local(*args, spec: RingSpec):
    *inputs, o, lse, do = args
    (q, k, v), seg = _split_segments(inputs, spec)
    sp, g = spec.sp, spec.groups
    n = q.shape[1]
    me = lax.axis_index("sp")
    qh, doh = _scaled_queries(q, spec), _heads_major(do, g)
    kh, vh = _heads_major(k, 1), _heads_major(v, 1)
    delta = jnp.einsum("bnhd,bnhd->bnh", o.astype(jnp.float32), do.astype(jnp.float32))
    delta = _heads_major(delta[..., None], g)[..., 0]  # [b, h, n * g]
    q_pos = _positions(spec, me, n)
    dq = jnp.zeros(qh.shape, jnp.float32)
    dkv = (jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32))

    def grads(step, kv, dq, dkv):
        kh, vh, seg_k = kv
        k_pos = _positions(spec, (me - step) % sp, n)
        ids = blockwise.MaskIds(q_pos, k_pos, seg, seg_k)
        fn = lambda gr: _grad(spec, qh, kh, vh, doh, lse, delta, gr, ids)
        dq, dk, dv = _if_visible(spec, q_pos, k_pos, fn, (dq, *dkv))
        return dq, (dk, dv)

    def step(direction):
        def body(t, state):
            kv, dq, dkv = state
            incoming = _rotate(kv, sp, direction)
            dq, dkv = grads(t if direction > 0 else -t, kv, dq, dkv)
            return incoming, dq, _rotate(dkv, sp, direction)  # dk, dv travel with their block

        return body

    forward, backward = spec.ring_hops
    own = (kh, vh, seg)
    kv, dq, dkv = lax.fori_loop(0, forward, step(1), (own, dq, dkv))
    dq, dkv = grads(forward, kv, dq, dkv)
    dk, dv = _rotate(dkv, sp, -forward)  # home: device i holds the gradient of block i - forward
    if backward:
        zeros = (jnp.zeros(kh.shape, jnp.float32), jnp.zeros(vh.shape, jnp.float32))
        kv, dq, dkv = lax.fori_loop(1, backward, step(-1), (_rotate(own, sp, -1), dq, zeros))
        dq, dkv = grads(-backward, kv, dq, dkv)
        dk_back, dv_back = _rotate(dkv, sp, backward)
        dk, dv = dk + dk_back, dv + dv_back
    return ((_seq_major(dq, g) * spec.scale).astype(q.dtype), _seq_major(dk, 1).astype(k.dtype),
            _seq_major(dv, 1).astype(v.dtype))


# ---------------------------------------------------------------------------------------------
# Global (sharded) functions with a custom VJP.


def _in_specs(spec: RingSpec):
    return (_QKV, _QKV, _QKV) + ((_SEG,) if spec.has_segments else ())


def _sharded_forward(spec: RingSpec, *args):
    fn = jax.shard_map(functools.partial(_forward_local, spec=spec), mesh=spec.mesh,
                       in_specs=_in_specs(spec), out_specs=(_QKV, _LSE), check_vma=False)
    return fn(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(spec: RingSpec, *args):
    return _sharded_forward(spec, *args)[0]


def _ring_fwd(spec: RingSpec, *args):
    out, lse = _sharded_forward(spec, *args)
    return out, (args, out, lse)


def _ring_bwd(spec: RingSpec, residuals, dout):
    args, out, lse = residuals
    fn = jax.shard_map(functools.partial(_backward_local, spec=spec), mesh=spec.mesh,
                       in_specs=_in_specs(spec) + (_QKV, _LSE, _QKV), out_specs=(_QKV,) * 3,
                       check_vma=False)
    dq, dk, dv = fn(*args, out, lse, dout)
    return (dq, dk, dv) + ((None,) if spec.has_segments else ())


_ring.defvjp(_ring_fwd, _ring_bwd)


# ---------------------------------------------------------------------------------------------
# Public entry points.


def _args(q, k, v, segment_ids):
    return (q, k, v) + (() if segment_ids is None else (segment_ids.astype(jnp.int32),))


@functools.partial(jax.jit, static_argnums=0)
def _permuted(spec: RingSpec, *args):
    return _ring(spec, *args)


def _relayout(spec: RingSpec, x, inverse=False):
    """Natural <-> layout order of a sequence-sharded array, device to device (no gather)."""
    if spec.layout == "contiguous" or spec.sp == 1:
        return x
    pspec = _SEG if x.ndim == 2 else _QKV
    fn = functools.partial(relayout_local, sp=spec.sp, inverse=inverse)
    return jax.shard_map(fn, mesh=spec.mesh, in_specs=pspec, out_specs=pspec)(x)


@functools.partial(jax.jit, static_argnums=0)
def _natural(spec: RingSpec, *args):
    args = tuple(_relayout(spec, x) for x in args)
    return _relayout(spec, _ring(spec, *args), inverse=True)


def _spec(q, k, v, segment_ids, mesh, causal, layout, impl, interpret, block_q, block_k,
          block_sizes, scale, window):
    spec = make_spec(q, k, v, segment_ids, mesh=mesh, causal=causal, layout=layout, scale=scale,
                     block_q=block_q, block_k=block_k, impl=impl, interpret=interpret,
                     block_sizes=block_sizes, window=window)
    _log_once(spec)
    return spec


@functools.lru_cache(maxsize=64)
def _log_once(spec: RingSpec):
    _log.info(describe_spec(spec))


def describe(q, k, v, *, mesh, causal=True, segment_ids=None, layout="zigzag", impl="auto",
             interpret=None, block_q=None, block_k=None, block_sizes=None, scale=None,
             window=None) -> str:
    """Say what ``ring_attention`` would run for these arguments, without running it.

    Example::

        >>> rk.attention.describe(q, k, v, mesh=rk.make_mesh(sp=8))
        'ring attention: XLA blockwise tiles on cpu, sp=8, layout=zigzag, causal, ...'

    The same line is logged once per distinct call on the ``ringkit.attention`` logger (INFO).
    """
    return describe_spec(_spec(q, k, v, segment_ids, mesh, causal, layout, impl, interpret,
                               block_q, block_k, block_sizes, scale, window))


def ring_attention_permuted(q, k, v, *, mesh, causal=True, segment_ids=None, layout="zigzag",
                            impl="auto", interpret=None, block_q=None, block_k=None,
                            block_sizes=None, scale=None, window=None):
    """``ring_attention`` on sequences already in ``layout`` order (see ``to_layout``).

    For models: permute tokens once per forward pass, use ``layout_positions`` for RoPE, and call
    this in every layer. Arguments and shapes as ``ring_attention``.
    """
    spec = _spec(q, k, v, segment_ids, mesh, causal, layout, impl, interpret, block_q, block_k,
                 block_sizes, scale, window)
    return _permuted(spec, *_args(q, k, v, segment_ids))


def ring_attention(q, k, v, *, mesh, causal=True, segment_ids=None, layout="zigzag", impl="auto",
                   interpret=None, block_q=None, block_k=None, block_sizes=None, scale=None,
                   window=None):
    """Exact attention with the sequence sharded over the mesh axis 'sp'.

    Args:
      q: ``[batch, seq, q_heads, head_dim]`` in natural sequence order (float32 or bfloat16).
      k, v: ``[batch, seq, kv_heads, head_dim]``; ``kv_heads`` divides ``q_heads`` (GQA: query head
        ``h`` reads KV head ``h // (q_heads // kv_heads)``; KV is never repeated).
      mesh: a mesh from ``ringkit.make_mesh``; seq on 'sp', batch on ('dp', 'fsdp'), heads on 'tp'.
      causal: mask future positions.
      segment_ids: optional ``int [batch, seq]``; tokens attend only within their segment.
      layout: ``"zigzag"`` (balanced causal work) or ``"contiguous"``.
      impl: the per-step kernel. ``"auto"`` (default) takes the Pallas kernels on GPU and TPU and
        the XLA tiles on CPU; ``"xla"`` runs anywhere; ``"pallas"`` needs a GPU or TPU unless
        ``interpret`` is given. ``describe(...)`` says which one a call runs.
      interpret: ``"gpu"`` or ``"tpu"`` runs that backend's Pallas kernel in interpret mode (on
        CPU, for tests); needs ``impl="pallas"``.
      block_q, block_k: the XLA kernel's tiles, in positions per device (default: up to 256,
        dividing the layout chunk).
      block_sizes: ``ringkit.BlockSizes`` for the Pallas (GPU and TPU) kernels, in rows by keys.
      scale: softmax scale, default ``1 / sqrt(head_dim)``.
      window: sliding-window attention (needs ``causal``): position ``i`` sees keys
        ``i - window + 1 .. i``, the convention of Hugging Face's ``sliding_window`` (Mistral,
        Gemma's local layers). Tiles and ring hops wholly outside the window are neither
        computed nor sent: a window shorter than a device's chunk needs only the neighbouring
        devices' blocks. ``describe`` states the hops.

    Returns:
      ``[batch, seq, q_heads, head_dim]`` in ``q``'s dtype and natural order. Differentiable.

    Example::

        mesh = ringkit.make_mesh(sp=8)
        out = ringkit.ring_attention(q, k, v, mesh=mesh, causal=True)
        local = ringkit.ring_attention(q, k, v, mesh=mesh, window=4096)  # Mistral's window
    """
    spec = _spec(q, k, v, segment_ids, mesh, causal, layout, impl, interpret, block_q, block_k,
                 block_sizes, scale, window)
    return _natural(spec, *_args(q, k, v, segment_ids))
