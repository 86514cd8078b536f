"""Sequence layouts over the 'sp' ring: which global positions each device holds.

``contiguous``: device i holds chunk i of p equal chunks. Under a causal mask device p-1 then does
p times the work of device 0.
``zigzag``: the sequence is cut into 2p chunks and device i holds chunks i and 2p-1-i, so every
device holds one early and one late chunk and does the same causal work.

A model permutes its tokens into the layout once per forward pass (``to_layout``), runs every layer
on the permuted sequence with positions ``layout_positions(...)`` (for RoPE), and permutes the
output back (``from_layout``).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from ringkit.errors import ConfigError, ShapeError, is_whole

LAYOUTS = ("zigzag", "contiguous")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    return layout


def chunks_per_device(layout: str) -> int:
    return 2 if check_layout(layout) == "zigzag" else 1


def check_sp(sp) -> None:
    if not is_whole(sp, 1):
        raise ShapeError(f"sp (devices on the ring) must be a whole number >= 1, got {sp!r:.40}")


def check_seq_len(seq_len: int, sp: int, layout: str) -> None:
    """Raise ``ShapeError`` unless ``seq_len`` splits into the layout's equal chunks."""
    check_sp(sp)
    multiple = sp * chunks_per_device(layout)
    if seq_len % multiple:
        padded = -(-seq_len // multiple) * multiple
        raise ShapeError(
            f"sequence length {seq_len} must be a multiple of {multiple} for layout={layout!r} "
            f"on sp={sp} devices ({chunks_per_device(layout)} chunks per device); pad it to "
            f"{padded} with ringkit.pad_for_ring(...), which masks the padding"
        )


@functools.lru_cache(maxsize=64)
def _permutation(seq_len: int, sp: int, layout: str) -> np.ndarray:
    check_seq_len(seq_len, sp, layout)
    if layout == "contiguous":
        return np.arange(seq_len, dtype=np.int32)
    chunk = seq_len // (2 * sp)
    order = [c for i in range(sp) for c in (i, 2 * sp - 1 - i)]
    perm = np.concatenate([np.arange(c * chunk, (c + 1) * chunk) for c in order])
    perm = perm.astype(np.int32)
    perm.setflags(write=False)
    return perm


def layout_positions(seq_len: int, sp: int, layout: str = "zigzag") -> np.ndarray:
    """Global position of each token of the permuted sequence: ``int32 [seq_len]``.

    ``to_layout(x)[:, j] == x[:, layout_positions(...)[j]]``; feed these positions to RoPE.
    """
    return _permutation(seq_len, sp, check_layout(layout))


def to_layout(x, sp: int, layout: str = "zigzag", axis: int = 1):
    """Permute the sequence axis of ``x`` from natural order into ``layout`` for ``sp`` devices.

    Example: ``q_zz = to_layout(q, sp=8)`` for ``q [batch, seq, heads, head_dim]``.
    """
    _check_axis(x, axis)
    if check_layout(layout) == "contiguous":
        check_seq_len(x.shape[axis], sp, layout)
        return x
    return jnp.take(x, _permutation(x.shape[axis], sp, layout), axis=axis)


def from_layout(x, sp: int, layout: str = "zigzag", axis: int = 1):
    """Inverse of ``to_layout``: permuted sequence back to natural order."""
    _check_axis(x, axis)
    if check_layout(layout) == "contiguous":
        check_seq_len(x.shape[axis], sp, layout)
        return x
    inverse = np.argsort(_permutation(x.shape[axis], sp, layout)).astype(np.int32)
    return jnp.take(x, inverse, axis=axis)


def _check_axis(x, axis) -> None:
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise ShapeError(f"expected an array, got {type(x).__name__}")
    if not is_whole(axis, -ndim) or axis >= ndim:
        raise ShapeError(f"axis={axis!r} is not an axis of an array of shape {x.shape}")


def device_positions(device, local_len: int, sp: int, layout: str):
    """Global positions held by ``device`` (an int or a traced axis index): ``int32 [local_len]``."""
    if layout == "contiguous":
        return device * local_len + jnp.arange(local_len, dtype=jnp.int32)
    chunk = local_len // 2
    ar = jnp.arange(chunk, dtype=jnp.int32)
    return jnp.concatenate([device * chunk + ar, (2 * sp - 1 - device) * chunk + ar])


def pad_for_ring(q, k, v, segment_ids=None, *, sp: int, layout: str = "zigzag"):
    """Pad ``q, k, v [batch, seq, heads, head_dim]`` at the end so ``seq`` fits the layout.

    The padding gets segment id -1 (real tokens keep theirs, or 0 when ``segment_ids`` is None), so
    no real token attends to it; -1 is therefore reserved for padding. Returns
    ``(q, k, v, segment_ids, seq)``; cut the attention output back with ``out[:, :seq]``.

    Example::

        q, k, v, seg, n = pad_for_ring(q, k, v, sp=8)
        out = ring_attention(q, k, v, mesh=mesh, segment_ids=seg)[:, :n]
    """
    check_sp(sp)
    q, k, v = (jnp.asarray(x) for x in (q, k, v))
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or k.shape[:2] != q.shape[:2]:
        raise ShapeError(f"q {q.shape}, k {k.shape}, v {v.shape}: need [batch, seq, heads, "
                         "head_dim] each, k and v alike, all of one batch and seq")
    seq = q.shape[1]
    multiple = sp * chunks_per_device(layout)
    pad = -seq % multiple
    if segment_ids is None:
        segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
    elif jnp.shape(segment_ids) != q.shape[:2]:
        raise ShapeError(f"segment_ids have shape {jnp.shape(segment_ids)}; q has [batch, seq] "
                         f"= {q.shape[:2]}")
    if pad == 0:
        return q, k, v, segment_ids, seq

    def padded(x, value=0):
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, pad)
        return jnp.pad(x, widths, constant_values=value)

    return padded(q), padded(k), padded(v), padded(jnp.asarray(segment_ids), -1), seq


def _zigzag_perms(sp: int):
    """Two ring permutations that move natural chunks (2d, 2d + 1) of device d to their zigzag
    owners: chunk c < sp goes to device c (first slot), chunk c >= sp to device 2sp-1-c."""
    owner = lambda c: c if c < sp else 2 * sp - 1 - c
    return ([(d, owner(2 * d)) for d in range(sp)], [(d, owner(2 * d + 1)) for d in range(sp)])


def _even_first(me, a, b):
    """``(a, b)`` on even devices, ``(b, a)`` on odd ones."""
    even = (me % 2) == 0
    return jnp.where(even, a, b), jnp.where(even, b, a)


def relayout_local(x, *, sp: int, inverse: bool = False, axis: int = 1, axis_name: str = "sp"):
    """Per-device natural <-> zigzag exchange, for use inside ``shard_map`` over ``axis_name``.

    Each device's shard of ``x`` is its contiguous slice of the sequence (natural) or its zigzag
    chunk pair; two ``ppermute``s move half a shard each, so no device ever holds more than its
    own share (unlike a global gather). Even devices receive their early chunk through the first
    permutation, odd devices through the second.
    """
    if sp == 1:
        return x
    perm_a, perm_b = _zigzag_perms(sp)
    me = lax.axis_index(axis_name)
    first, second = jnp.split(x, 2, axis=axis)
    if not inverse:
        a = lax.ppermute(first, axis_name, perm_a)
        b = lax.ppermute(second, axis_name, perm_b)
        return jnp.concatenate(_even_first(me, a, b), axis=axis)
    a, b = _even_first(me, first, second)
    back = lambda perm: [(dst, src) for src, dst in perm]
    a = lax.ppermute(a, axis_name, back(perm_a))
    b = lax.ppermute(b, axis_name, back(perm_b))
    return jnp.concatenate([a, b], axis=axis)
