"""The Pallas kernels' tile and launch sizes: the ``BlockSizes`` value type and the tuned
defaults per backend (value types only: no kernels, no hardware probes; ``kernels`` picks)."""

from __future__ import annotations

import dataclasses
import numbers

from ringkit.errors import ConfigError

GPU_FORWARDS = ("triton", "mosaic")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiles and launch settings of the Pallas kernels, in rows by keys.

    A row is one query position of one query head in a GQA group (``rows = seq * q_heads /
    kv_heads`` per KV head), so grouped heads share every KV tile. ``block_q, block_k`` tile the
    forward kernel, ``block_q_dq, block_k_dq`` the dq kernel, ``block_q_dkv, block_k_dkv`` the
    dk/dv kernel. Powers of two >= 16 (Triton's matmul minimum; the TPU kernels also need key
    tiles of >= 128). A tile larger than what a device holds shrinks to fit. ``num_warps`` and
    ``num_stages`` (Triton's software-pipelining depth) launch the GPU forward kernel, the
    ``_bwd`` pair both GPU backward kernels; the TPU kernels ignore them.

    ``gpu_forward="mosaic"`` runs the GPU forward as a warp-specialized Mosaic GPU kernel for
    Hopper (``pallas_mgpu``; 16-bit inputs, head_dim a multiple of 64 up to 256) instead of
    Triton's. It takes 128 rows per program (two warpgroups of 64), ``block_k`` keys per tile
    (64, 128 or 256) and ``num_stages`` K/V tiles in flight; ``block_q`` and ``num_warps`` do not
    apply to it. The backward stays on Triton. Left unset, the ring picks Mosaic where it was
    measured faster (``auto_gpu_forward``: Hopper, 16-bit, head_dim 64 or 128, Triton's
    ``block_q`` and ``num_warps`` unset) and Triton elsewhere; ``gpu_forward="triton"`` keeps
    Triton's.

    Every field left ``None`` takes the kernel's tuned default for the head dim and dtype
    (``gpu_defaults`` / ``tpu_defaults``), so ``BlockSizes(num_stages=2)`` changes that alone.

    Example::

        rk.ring_attention(q, k, v, mesh=mesh, impl="pallas",
                          block_sizes=rk.BlockSizes(block_q=64, block_k=128, num_warps=4))
    """

    block_q: int | None = None
    block_k: int | None = None
    block_q_dkv: int | None = None
    block_k_dkv: int | None = None
    block_q_dq: int | None = None
    block_k_dq: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    num_warps_bwd: int | None = None
    num_stages_bwd: int | None = None
    gpu_forward: str | None = None  # 'triton' or 'mosaic'; None: auto_gpu_forward decides

    def __post_init__(self):
        for name in ("block_q", "block_k", "block_q_dkv", "block_k_dkv", "block_q_dq",
                     "block_k_dq"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or value < 16
                                      or value & (value - 1)):
                raise ConfigError(f"BlockSizes.{name}={value!r} must be a power of two >= 16")
        for name in ("num_warps", "num_warps_bwd"):
            if getattr(self, name) not in (None, 1, 2, 4, 8, 16):
                raise ConfigError(f"BlockSizes.{name}={getattr(self, name)!r} must be 1, 2, 4, 8 "
                                  "or 16")
        for name in ("num_stages", "num_stages_bwd"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, numbers.Integral) or value < 1):
                raise ConfigError(f"BlockSizes.{name}={value!r} must be a positive integer")
        if self.gpu_forward not in (None, *GPU_FORWARDS):
            raise ConfigError(f"BlockSizes.gpu_forward={self.gpu_forward!r} must be one of "
                              f"{GPU_FORWARDS}")

    def filled(self, defaults: "BlockSizes") -> "BlockSizes":
        """These sizes with every ``None`` taken from ``defaults``."""
        return BlockSizes(**{f.name: getattr(defaults, f.name) if getattr(self, f.name) is None
                             else getattr(self, f.name) for f in dataclasses.fields(self)})

    def launch(self, backward: bool = False) -> tuple[int, int]:
        """``(num_warps, num_stages)`` of the GPU forward or backward kernels (filled sizes)."""
        warps, stages = ((self.num_warps_bwd, self.num_stages_bwd) if backward
                         else (self.num_warps, self.num_stages))
        if warps is None or stages is None:
            raise ConfigError("BlockSizes.launch needs filled sizes: blocks.filled(gpu_defaults("
                              "head_dim, itemsize))")
        return warps, stages


def gpu_defaults(head_dim: int, itemsize: int, forward: str | None = None) -> BlockSizes:
    """Tuned GPU sizes. 16-bit inputs up to head_dim 128: the best of sweeps on an H100 at
    head_dim 128, the forward's at S = 16K and 32K, the backward kernels' at 32K
    (benchmarks/README.md). float32 tiles take twice the shared memory,
    so they stay smaller; above head_dim 128 the tiles halve for the same reason. The Mosaic
    forward (``forward="mosaic"``) runs 128-key tiles, 2 in flight: the fastest of its sweep on
    an H200 at head_dim 128, S = 32K (benchmarks/README.md)."""
    warps = 4 if head_dim <= 64 else 8
    if itemsize <= 2 and head_dim <= 128:
        blocks = BlockSizes(128, 128, 64, 128, 128, 64, warps, 3, warps, 3, "triton")
    elif head_dim <= 128:
        blocks = BlockSizes(128, 64, 64, 128, 128, 64, warps, 2, warps, 2, "triton")
    else:
        blocks = BlockSizes(64, 64, 32, 64, 64, 64, 8, 2, 8, 2, "triton")
    if forward == "mosaic":  # 64-key tiles past head_dim 128 keep to the shared memory
        blocks = dataclasses.replace(blocks, block_q=128, block_k=128 if head_dim <= 128 else 64,
                                     num_stages=2, gpu_forward="mosaic")
    return blocks


# Head dims at which the Mosaic GPU forward was timed faster than Triton's (benchmarks/README.md).
MOSAIC_HEAD_DIMS = (64, 128)


def tpu_defaults(head_dim: int, itemsize: int) -> BlockSizes:
    """TPU sizes: 128-row by 512-key forward tiles; 128 x 128 backward tiles (not yet tuned on a
    TPU; lane-dense key tiles are what Mosaic needs)."""
    del head_dim, itemsize
    return BlockSizes(128, 512, 128, 128, 128, 128)
