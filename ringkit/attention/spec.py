"""What is static about a ring-attention call: validation, tile sizes, and the work they imply.

``make_spec`` turns a user's call into a hashable ``RingSpec`` (the jit cache key) or raises a
``RingkitError`` naming the sizes involved. ``tiles_per_device`` counts the tiles each device
computes under a layout, with the kernel's own skip rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ringkit.attention import blockwise, kernels
from ringkit.attention.bounds import tile_kinds
from ringkit.attention.layouts import (
    check_layout, check_seq_len, chunks_per_device, layout_positions)
from ringkit.attention.sizes import BlockSizes
from ringkit.errors import ConfigError, ShapeError
from ringkit.mesh import MESH_AXES, require_axes

DEFAULT_BLOCK = 256  # tiles of 256 x 256 keep 8 CPU devices inside the caches (benchmarks/README.md)



@dataclasses.dataclass(frozen=True)
class RingSpec:
    """Everything static about one ring-attention call (hashable: a jit cache key)."""

    mesh: Mesh
    causal: bool
    layout: str
    scale: float
    block_q: int
    block_k: int
    groups: int
    has_segments: bool
    kernel: str = "xla"  # 'xla', 'gpu' or 'tpu' (kernels.choose_kernel)
    interpret: bool = False  # a Pallas kernel in interpret mode (make_spec's interpret="gpu"/"tpu")
    blocks: BlockSizes = BlockSizes()  # filled for the kernel, head dim and dtype
    window: int | None = None  # sliding window: keys at most window - 1 positions back (causal)
    hops: tuple[int, int] | None = None  # ring hops (forward, backward); None: the full ring

    @property
    def ring_hops(self) -> tuple[int, int]:
        """Hops KV blocks travel forward (from device i - t) and backward (from i + t)."""
        return self.hops or (self.sp - 1, 0)

    @property
    def sp(self) -> int:
        return self.mesh.shape["sp"]

    @property
    def tiles(self) -> blockwise.TileSpec:
        return blockwise.TileSpec(self.causal, self.groups, self.block_q, self.block_k,
                                  self.window)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _block(name: str, value, local_len: int, chunk: int) -> int:
    if value is None:
        block = _largest_divisor(chunk, DEFAULT_BLOCK)
        if block < min(chunk, 32):
            warnings.warn(
                f"the per-device layout chunk of {chunk} tokens has no divisor between 32 and "
                f"{DEFAULT_BLOCK}, so ring attention runs {block}-token tiles, which is slow; pad "
                f"the sequence so the chunk is a multiple of {DEFAULT_BLOCK} (segment id -1 masks "
                "padding, as in ringkit.pad_for_ring)", stacklevel=4)
        return block
    if not isinstance(value, numbers.Integral) or value <= 0 or local_len % value:
        raise ConfigError(
            f"{name}={value!r} must be a positive integer dividing the per-device sequence length "
            f"{local_len}; a divisor of the layout chunk {chunk} (e.g. "
            f"{_largest_divisor(chunk, DEFAULT_BLOCK)}) keeps causal tiles aligned"
        )
    return int(value)


def _positive_number(x) -> bool:
    try:
        return not isinstance(x, (bool, str)) and math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False


def _check_segments(segment_ids, shape: tuple[int, int]) -> None:
    """Integer ``[batch, seq]`` ids that survive the cast to int32 (checked where concrete)."""
    if not (hasattr(segment_ids, "shape") and hasattr(segment_ids, "dtype")):
        raise ShapeError(f"segment_ids must be an integer array [batch, seq], got "
                         f"{type(segment_ids).__name__}")
    if tuple(segment_ids.shape) != shape:
        raise ShapeError(f"segment_ids must be [batch, seq] = {shape}, got {segment_ids.shape}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ShapeError(f"segment_ids must be integers (int32), got {segment_ids.dtype}")
    wide = jnp.iinfo(segment_ids.dtype).max > np.iinfo(np.int32).max or (
        jnp.iinfo(segment_ids.dtype).min < np.iinfo(np.int32).min)
    if wide and not isinstance(segment_ids, jax.core.Tracer) and segment_ids.size:
        low, high = int(segment_ids.min()), int(segment_ids.max())
        if low < np.iinfo(np.int32).min or high > np.iinfo(np.int32).max:
            raise ShapeError(f"segment_ids must fit in int32, got values in [{low}, {high}]; "
                             "renumber the segments")


def _check_window(window, causal, seq_len: int) -> int | None:
    """A positive integer window, or None; a window covering the sequence is plain causal."""
    if window is None:
        return None
    if isinstance(window, (bool, np.bool_)) or not isinstance(window, numbers.Integral) or (
            int(window) <= 0):
        raise ConfigError(f"window must be a positive integer (keys at most window - 1 "
                          f"positions before the query) or None, got {window!r}")
    if not causal:
        raise ConfigError("window needs causal=True: a sliding window keeps the last window "
                          "keys before each query (Mistral's and Gemma's local layers)")
    return None if int(window) >= seq_len else int(window)


@functools.lru_cache(maxsize=256)
def ring_hops(seq_len: int, sp: int, layout: str, window: int | None) -> tuple[int, int]:
    """How far KV blocks must travel so every device sees every key its queries may attend to:
    ``(forward, backward)`` hops, forward bringing the block of device ``i - t`` to device ``i``
    and backward that of ``i + t``. Causal attention needs the whole ring, ``(sp - 1, 0)``; a
    window needs only the neighbours it reaches: ``(1, 0)`` contiguous, ``(1, 1)`` zigzag when
    it is shorter than a chunk. Blocks no device needs are never sent."""
    if window is None or sp == 1:
        return sp - 1, 0
    local = seq_len // sp
    chunk = local // chunks_per_device(layout)
    positions = layout_positions(seq_len, sp, layout).reshape(sp, local)
    needed = [t for t in range(1, sp) if any(
        (tile_kinds(positions[me], positions[(me - t) % sp], chunk, chunk, True, window)
         != blockwise.SKIP).any() for me in range(sp))]
    best = (sp - 1, 0)
    for split in range(sp):  # offsets <= split travel forward, the rest backward
        hops = (max([t for t in needed if t <= split], default=0),
                max([sp - t for t in needed if t > split], default=0))
        if sum(hops) < sum(best):
            best = hops
    return best


def make_spec(q, k, v, segment_ids, *, mesh, causal, layout, scale, block_q, block_k, impl,
              interpret=None, block_sizes=None, window=None):
    """Validate a call and build its ``RingSpec``; every user mistake raises a ``RingkitError``."""
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh (ringkit.make_mesh(...)), got {mesh!r}")
    require_axes(mesh, MESH_AXES)
    check_layout(layout)
    kernel = kernels.choose_kernel(impl, interpret, mesh)
    if kernel != "xla" and (block_q is not None or block_k is not None):
        raise ConfigError(
            f"block_q/block_k tile the XLA kernel (in positions); this call runs the "
            f"{kernels.KERNELS[kernel]}, which take block_sizes=ringkit.BlockSizes(block_q=..., "
            "block_k=...) in rows (positions x GQA group) by keys")
    if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ConfigError(f"block_sizes must be a ringkit.BlockSizes, got {block_sizes!r}")
    if not isinstance(causal, (bool, np.bool_)):
        raise ConfigError(f"causal must be True or False, got {causal!r}")
    if scale is not None and not _positive_number(scale):
        raise ConfigError(f"scale must be a positive finite number (default 1/sqrt(head_dim)), "
                          f"got {scale!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not (hasattr(x, "ndim") and hasattr(x, "dtype") and hasattr(x, "shape")):
            raise ShapeError(f"{name} must be an array (jax or numpy), got {type(x).__name__}")
        if x.ndim != 4:
            raise ShapeError(f"{name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ShapeError(f"{name} must be floating point, got {x.dtype}")
    if k.shape != v.shape:
        raise ShapeError(f"k and v shapes differ: k {k.shape}, v {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ShapeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    (b, s, hq, d), hkv = q.shape, k.shape[2]
    if 0 in q.shape or 0 in k.shape:
        raise ShapeError(f"q {q.shape} and k/v {k.shape} must not have an empty dimension")
    if k.shape[:2] != (b, s) or k.shape[3] != d:
        raise ShapeError(
            f"q {q.shape} and k/v {k.shape} must share batch, seq and head_dim "
            "([batch, seq, heads, head_dim])"
        )
    if hq % hkv:
        raise ShapeError(f"q_heads={hq} must be a multiple of kv_heads={hkv} (grouped-query attention)")
    if segment_ids is not None:
        _check_segments(segment_ids, (b, s))
    batch_shards = mesh.shape["dp"] * mesh.shape["fsdp"]
    if b % batch_shards:
        raise ShapeError(f"batch {b} must be divisible by dp*fsdp = {batch_shards}")
    if hkv % mesh.shape["tp"]:
        raise ShapeError(
            f"kv_heads={hkv} (and q_heads={hq}) must be divisible by tp={mesh.shape['tp']}; "
            "use a tp that divides the KV heads"
        )
    sp = mesh.shape["sp"]
    check_seq_len(s, sp, layout)
    local = s // sp
    chunk = local // chunks_per_device(layout)
    rows = local * (hq // hkv)  # query rows per device and KV head: each GQA group in rows
    window = _check_window(window, causal, s)
    blocks = block_sizes or BlockSizes()
    if window is not None and kernel == "gpu":  # the Mosaic forward takes no window yet
        if blocks.gpu_forward == "mosaic":
            raise ConfigError("the Mosaic GPU forward has no sliding window yet; leave "
                              "BlockSizes.gpu_forward unset (the Triton forward takes window=)")
        blocks = dataclasses.replace(blocks, gpu_forward="triton")
    if kernel == "gpu" and interpret is None and blocks.gpu_forward is None:
        capability = getattr(mesh.devices.flat[0], "compute_capability", None)
        blocks = dataclasses.replace(blocks, gpu_forward=kernels.auto_gpu_forward(
            blocks, capability, q.dtype, d, rows, local))
    blocks = kernels.filled_sizes(kernel, blocks, d, q.dtype)
    if blocks.gpu_forward == "mosaic":
        kernels.check_mosaic(q.dtype, d, rows, local, blocks, interpret=interpret is not None)
        if interpret is not None and mesh.size > 1:
            raise ConfigError(
                f"the Mosaic GPU forward's interpreter runs one device at a time, but the mesh "
                f"has {mesh.size}: JAX's interpreter (jax 0.10) checks every simulated device's "
                "barriers when one of them finishes, so several fail at random. Interpret it on "
                "a one-device mesh (sp=1), or leave BlockSizes.gpu_forward unset")
    return RingSpec(
        mesh=mesh, causal=bool(causal), layout=layout,
        scale=float(1.0 / math.sqrt(d) if scale is None else scale),
        block_q=_block("block_q", block_q, local, chunk), block_k=_block("block_k", block_k, local, chunk),
        groups=hq // hkv, has_segments=segment_ids is not None, kernel=kernel,
        interpret=interpret is not None, blocks=blocks, window=window,
        hops=ring_hops(s, sp, layout, window),
    )


def describe(spec: RingSpec) -> str:
    """One line saying what a ring-attention call runs: kernel, mesh, layout and tiles."""
    if spec.kernel in ("gpu", "tpu"):
        b = spec.blocks
        tiles = (f"rows x keys {b.block_q}x{b.block_k} (dq {b.block_q_dq}x{b.block_k_dq}, dk/dv "
                 f"{b.block_q_dkv}x{b.block_k_dkv})")
        if spec.kernel == "gpu" and b.gpu_forward == "mosaic":
            tiles = (f"Mosaic GPU forward 2x64 rows x {b.block_k} keys, {b.num_stages} stages; "
                     f"Triton backward dq {b.block_q_dq}x{b.block_k_dq}, dk/dv {b.block_q_dkv}x"
                     f"{b.block_k_dkv}, {b.num_warps_bwd} warps x {b.num_stages_bwd} stages")
        elif spec.kernel == "gpu":
            tiles = (f"Triton forward and backward, {tiles}, {b.num_warps} warps x "
                     f"{b.num_stages} stages forward, {b.num_warps_bwd} x {b.num_stages_bwd} "
                     "backward")
    else:
        tiles = f"tiles {spec.block_q}x{spec.block_k} positions"
    mode = " in interpret mode" if spec.interpret else ""
    mask = "causal" if spec.causal else "full"
    if spec.window is not None:
        forward, backward = spec.ring_hops
        mask = (f"causal, window {spec.window} (ring hops: {forward} forward + {backward} "
                f"backward of {spec.sp - 1})")
    return (f"ring attention: {kernels.KERNELS[spec.kernel]}{mode} on "
            f"{kernels.platform(spec.mesh)}, sp={spec.sp}, "
            f"layout={spec.layout}, {mask}, GQA groups={spec.groups}, {tiles}")


def tiles_per_device(seq_len: int, sp: int, layout: str = "zigzag", *, causal: bool = True,
                     block_q: int | None = None, block_k: int | None = None,
                     window: int | None = None):
    """Number of ``block_q x block_k`` tiles (positions) each device's XLA kernel computes in one
    forward ring (the Pallas kernels tile rows by keys with ``BlockSizes``).

    Uses the kernel's own skip rule (``blockwise.tile_kind``), so ``max / mean`` of the result is
    the causal load imbalance of a layout: ~1.0 for zigzag, ~1.8 for contiguous on 8 devices. A
    ``window`` counts only the tiles it reaches. Returns ``int [sp]``.
    """
    check_seq_len(seq_len, sp, layout)
    window = _check_window(window, causal, seq_len)
    local = seq_len // sp
    chunk = local // chunks_per_device(layout)
    bq, bk = _block("block_q", block_q, local, chunk), _block("block_k", block_k, local, chunk)
    positions = layout_positions(seq_len, sp, layout).reshape(sp, local)
    q_bounds = [blockwise.tile_bounds(p, bq) for p in positions]
    k_bounds = [blockwise.tile_bounds(p, bk) for p in positions]
    counts = np.zeros(sp, np.int64)
    for me in range(sp):
        q_min, q_max = q_bounds[me]
        for step in range(sp):
            k_min, k_max = k_bounds[(me - step) % sp]
            if causal:
                kind = blockwise.tile_kind(q_min[:, None], q_max[:, None], k_min[None],
                                           k_max[None], window)
                counts[me] += int(np.count_nonzero(kind != blockwise.SKIP))
            else:
                counts[me] += len(q_min) * len(k_min)
    return counts
