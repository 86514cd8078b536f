"""What is static about a ring-attention call: validation, tile sizes, and the work they imply.

``make_spec`` turns a user's call into a hashable ``RingSpec`` (the jit cache key) or raises a
``RingkitError`` naming the sizes involved. ``tiles_per_device`` counts the tiles each device
computes under a layout, with the kernel's own skip rule.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ringkit.attention import blockwise
from ringkit.attention.layouts import (
    check_layout, check_seq_len, chunks_per_device, layout_positions)
from ringkit.errors import ConfigError, ShapeError, UnsupportedError
from ringkit.mesh import MESH_AXES, require_axes

DEFAULT_BLOCK = 256  # tiles of 256 x 256 keep 8 CPU devices inside the caches (benchmarks/README.md)
IMPLS = ("auto", "xla", "pallas")
INTERPRET = (None, "gpu", "tpu")
KERNELS = {"xla": "XLA blockwise tiles", "gpu": "Pallas GPU (Triton) kernels",
           "tpu": "Pallas TPU (Mosaic) kernels"}


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles and launch settings of the Pallas GPU kernels, in rows by keys.

    A row is one query position of one query head in a GQA group (``rows = seq * q_heads /
    kv_heads`` per KV head), so grouped heads share every KV tile. ``block_q, block_k`` tile the
    forward kernel; ``block_q_dq, block_k_dq`` the dq kernel (default: the forward's);
    ``block_q_dkv, block_k_dkv`` the dk/dv kernel. Powers of two >= 16 (Triton's matmul minimum);
    a tile larger than what a device holds shrinks to fit. ``num_warps=None`` takes 4 up to
    head_dim 64 and 8 above; ``num_stages`` is Triton's software-pipelining depth; the ``_bwd``
    settings (default: the forward's) apply to both backward kernels.

    Example::

        rk.ring_attention(q, k, v, mesh=mesh, impl="pallas",
                          block_sizes=rk.BlockSizes(block_q=128, block_k=128, num_warps=8))
    """

    block_q: int = 128
    block_k: int = 64
    block_q_dkv: int = 64
    block_k_dkv: int = 128
    block_q_dq: int | None = None
    block_k_dq: int | None = None
    num_warps: int | None = None
    num_stages: int = 2
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None

    def __post_init__(self):
        for name in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq",
                     "block_k_dq"):
            value = getattr(self, name)
            if value is None and name.endswith("_dq"):
                continue
            if not isinstance(value, numbers.Integral) or value < 16 or value & (value - 1):
                raise ConfigError(f"BlockSizes.{name}={value!r} must be a power of two >= 16")
        for name in ("num_warps", "num_warps_bwd"):
            if getattr(self, name) not in (None, 1, 2, 4, 8, 16):
                raise ConfigError(f"BlockSizes.{name}={getattr(self, name)!r} must be 1, 2, 4, 8 "
                                  "or 16")
        for name in ("num_stages", "num_stages_bwd"):
            value = getattr(self, name)
            if value is None and name.endswith("_bwd"):
                continue
            if not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"BlockSizes.{name}={value!r} must be a positive integer")

    def launch(self, head_dim: int, backward: bool = False) -> tuple[int, int]:
        """``(num_warps, num_stages)`` of the forward or the backward kernels."""
        warps = self.num_warps or (4 if head_dim <= 64 else 8)
        if backward:
            return self.num_warps_bwd or warps, self.num_stages_bwd or self.num_stages
        return warps, self.num_stages

    @property
    def dq(self) -> tuple[int, int]:
        return self.block_q_dq or self.block_q, self.block_k_dq or self.block_k


def _platform(mesh: Mesh) -> str:
    return mesh.devices.flat[0].platform


def choose_kernel(impl: str, interpret, mesh: Mesh) -> str:
    """Which per-step kernel runs: 'xla', 'gpu' or 'tpu' (decided at call time from the mesh)."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown impl {impl!r}; choose one of {IMPLS}")
    if interpret not in INTERPRET:
        raise ConfigError(f"interpret={interpret!r} must be one of {INTERPRET}")
    platform = _platform(mesh)
    if interpret is not None:
        if impl != "pallas":
            raise ConfigError(f"interpret={interpret!r} runs a Pallas kernel; pass impl='pallas'")
        return interpret
    if impl == "xla" or (impl == "auto" and platform not in ("gpu", "tpu")):
        return "xla"
    if platform in ("gpu", "tpu"):
        return platform
    raise UnsupportedError(
        f"impl='pallas' needs a GPU or TPU, but the mesh holds {platform} devices; use impl='xla' "
        "(or 'auto'), or interpret='gpu' / interpret='tpu' to run a kernel in interpret mode")


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
    kernel: str = "xla"  # 'xla', 'gpu' or 'tpu' (see choose_kernel)
    interpret: bool = False
    blocks: BlockSizes = BlockSizes()

    @property
    def sp(self) -> int:
        return self.mesh.shape["sp"]

    @property
    def tiles(self) -> blockwise.TileSpec:
        return blockwise.TileSpec(self.causal, self.groups, self.block_q, self.block_k)


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


def make_spec(q, k, v, segment_ids, *, mesh, causal, layout, scale, block_q, block_k, impl,
              interpret=None, block_sizes=None):
    """Validate a call and build its ``RingSpec``; every user mistake raises a ``RingkitError``."""
    if not isinstance(mesh, Mesh):
        raise ConfigError(f"mesh must be a jax.sharding.Mesh (ringkit.make_mesh(...)), got {mesh!r}")
    require_axes(mesh, MESH_AXES)
    check_layout(layout)
    kernel = choose_kernel(impl, interpret, mesh)
    if block_sizes is not None and not isinstance(block_sizes, BlockSizes):
        raise ConfigError(f"block_sizes must be a ringkit.BlockSizes, got {block_sizes!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ShapeError(f"{name} must be [batch, seq, heads, head_dim], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ShapeError(f"{name} must be floating point, got {x.dtype}")
    if k.shape != v.shape:
        raise ShapeError(f"k and v shapes differ: k {k.shape}, v {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ShapeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}; cast them to one")
    (b, s, hq, d), hkv = q.shape, k.shape[2]
    if k.shape[:2] != (b, s) or k.shape[3] != d:
        raise ShapeError(
            f"q {q.shape} and k/v {k.shape} must share batch, seq and head_dim "
            "([batch, seq, heads, head_dim])"
        )
    if hq % hkv:
        raise ShapeError(f"q_heads={hq} must be a multiple of kv_heads={hkv} (grouped-query attention)")
    if segment_ids is not None and tuple(segment_ids.shape) != (b, s):
        raise ShapeError(f"segment_ids must be [batch, seq] = {(b, s)}, got {segment_ids.shape}")
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
    return RingSpec(
        mesh=mesh, causal=bool(causal), layout=layout,
        scale=float(1.0 / math.sqrt(d) if scale is None else scale),
        block_q=_block("block_q", block_q, local, chunk), block_k=_block("block_k", block_k, local, chunk),
        groups=hq // hkv, has_segments=segment_ids is not None, kernel=kernel,
        interpret=interpret is not None, blocks=block_sizes or BlockSizes(),
    )


def describe(spec: RingSpec) -> str:
    """One line saying what a ring-attention call runs: kernel, mesh, layout and tiles."""
    if spec.kernel == "gpu":
        b = spec.blocks
        tiles = (f"rows x keys {b.block_q}x{b.block_k} (dq {b.dq[0]}x{b.dq[1]}, dk/dv "
                 f"{b.block_q_dkv}x{b.block_k_dkv}), {b.num_warps or 'auto'} warps, "
                 f"{b.num_stages} stages")
    else:
        tiles = f"tiles {spec.block_q}x{spec.block_k} positions"
    mode = " in interpret mode" if spec.interpret else ""
    return (f"ring attention: {KERNELS[spec.kernel]}{mode} on {_platform(spec.mesh)}, sp={spec.sp}, "
            f"layout={spec.layout}, {'causal' if spec.causal else 'full'}, GQA groups="
            f"{spec.groups}, {tiles}")


def tiles_per_device(seq_len: int, sp: int, layout: str = "zigzag", *, causal: bool = True,
                     block_q: int | None = None, block_k: int | None = None):
    """Number of ``block_q x block_k`` tiles each device computes in one forward ring.

    Uses the kernel's own skip rule (``blockwise.tile_kind``), so ``max / mean`` of the result is
    the causal load imbalance of a layout: ~1.0 for zigzag, ~1.8 for contiguous on 8 devices.
    Returns ``int [sp]``.
    """
    check_seq_len(seq_len, sp, layout)
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
                kind = blockwise.tile_kind(q_min[:, None], q_max[:, None], k_min[None], k_max[None])
                counts[me] += int(np.count_nonzero(kind != blockwise.SKIP))
            else:
                counts[me] += len(q_min) * len(k_min)
    return counts
