"""The kernel registry: the one place that decides which kernel runs a ring step.

Three per-step kernels fold a KV block into a device's queries (``fold``) and give its
gradients (``grad``): XLA blockwise tiles (``blockwise``; any backend, the CPU's), the Pallas GPU
kernels (``pallas_gpu``: Triton forward and backward, or the Mosaic GPU forward of
``pallas_mgpu`` on Hopper) and the Pallas TPU kernels (``pallas_tpu``). ``choose_kernel`` picks
one from ``impl`` and the mesh, ``auto_gpu_forward`` picks the GPU forward, ``filled_sizes``
gives the tile sizes it runs, and ``fold`` / ``grad`` return the functions a ``RingSpec``
calls. ``spec.describe`` reports the choice.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.sharding import Mesh

from ringkit.attention import blockwise, pallas_gpu
from ringkit.attention.sizes import MOSAIC_HEAD_DIMS, BlockSizes, gpu_defaults, tpu_defaults
from ringkit.errors import ConfigError, UnsupportedError

IMPLS = ("auto", "xla", "pallas")
INTERPRET = (None, "gpu", "tpu")
KERNELS = {"xla": "XLA blockwise tiles", "gpu": "Pallas GPU kernels",
           "tpu": "Pallas TPU (Mosaic) kernels"}


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices: 'cpu', 'gpu' or 'tpu'."""
    return mesh.devices.flat[0].platform


def choose_kernel(impl: str, interpret, mesh: Mesh) -> str:
    """Which per-step kernel runs: 'xla', 'gpu' or 'tpu' (decided at call time from the mesh)."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown impl {impl!r}; choose one of {IMPLS}")
    if interpret not in INTERPRET:
        raise ConfigError(f"interpret={interpret!r} must be one of {INTERPRET}")
    where = platform(mesh)
    if interpret is not None:
        if impl != "pallas":
            raise ConfigError(f"interpret={interpret!r} runs a Pallas kernel; pass impl='pallas'")
        return interpret
    if impl == "xla" or (impl == "auto" and where not in ("gpu", "tpu")):
        return "xla"
    if where in ("gpu", "tpu"):
        return where
    raise UnsupportedError(
        f"impl='pallas' needs a GPU or TPU, but the mesh holds {where} devices; use impl='xla' "
        "(or 'auto'), or interpret='gpu' / interpret='tpu' to run a kernel in interpret mode")


def auto_gpu_forward(blocks: BlockSizes, compute_capability: str | None, dtype, head_dim: int,
                     rows: int, keys: int) -> str:
    """The GPU forward a ring call runs when ``blocks.gpu_forward`` is unset: "mosaic" on
    Hopper (compute capability 9.x) for 16-bit inputs at ``MOSAIC_HEAD_DIMS`` where its tiles
    fit the ``rows`` and ``keys`` per device and the CUDA runtime compiles it correctly, unless
    ``blocks`` sets Triton's own forward knobs (``block_q``, ``num_warps``); else "triton".

    Example::

        >>> auto_gpu_forward(BlockSizes(), "9.0", jnp.bfloat16, 128, 4096, 4096)
        'mosaic'
    """
    if (blocks.block_q is not None or blocks.num_warps is not None
            or not str(compute_capability or "").startswith("9.")
            or head_dim not in MOSAIC_HEAD_DIMS):
        return "triton"
    sizes = blocks.filled(gpu_defaults(head_dim, jnp.dtype(dtype).itemsize, "mosaic"))
    try:
        check_mosaic(dtype, head_dim, rows, keys, sizes, interpret=False)
        _mosaic().check_cuda()
    except (ConfigError, UnsupportedError):
        return "triton"
    return "mosaic"


def filled_sizes(kernel: str, block_sizes, head_dim: int, dtype) -> BlockSizes:
    """``block_sizes`` with every unset field from ``kernel``'s tuned defaults for this head dim
    and dtype (the XLA kernel takes none)."""
    blocks = block_sizes or BlockSizes()
    itemsize = jnp.dtype(dtype).itemsize
    if blocks.gpu_forward == "mosaic" and kernel != "gpu":
        raise ConfigError(f"BlockSizes(gpu_forward='mosaic') picks a GPU kernel, but this call "
                          f"runs the {KERNELS[kernel]}; drop it, or run on a GPU (or "
                          "interpret='gpu')")
    if kernel == "gpu":
        return blocks.filled(gpu_defaults(head_dim, itemsize, blocks.gpu_forward))
    return blocks.filled(tpu_defaults(head_dim, itemsize)) if kernel == "tpu" else blocks


def _mosaic():
    # Mosaic GPU's Python module is imported where a Mosaic kernel is planned or run, not by
    # every CPU import of ringkit.
    from ringkit.attention import pallas_mgpu

    return pallas_mgpu


def _tpu():
    # jax.experimental.pallas.tpu is imported only where the TPU kernels run.
    from ringkit.attention import pallas_tpu

    return pallas_tpu


def check_mosaic(dtype, head_dim: int, rows: int, keys: int, blocks: BlockSizes,
                 interpret: bool) -> None:
    """Raise unless the Mosaic GPU forward can run these shapes with ``blocks`` (filled)."""
    mgpu = _mosaic()
    mgpu.plan(dtype, head_dim, rows, keys, mgpu.MosaicSizes(blocks.block_k, blocks.num_stages),
              interpret=interpret)


def _xla_fold(q, k, v, carry, ids, tiles, final_dtype=None, interpret=False):
    del interpret  # plain XLA
    carry = blockwise.fresh_carry(q) if carry is None else carry
    carry = blockwise.fold_block(q, k, v, carry, ids, tiles)
    return carry if final_dtype is None else blockwise.finish(*carry, final_dtype)


def fold(kernel: str, blocks: BlockSizes):
    """The fold function of ``kernel`` with ``blocks``: ``(q, k, v, carry, ids, tiles,
    final_dtype=None, interpret=False)`` (``ids``: a ``blockwise.MaskIds``) folds a KV block into
    ``carry`` (None: fresh) like ``blockwise.fold_block``; with ``final_dtype`` it returns
    ``(out, lse)`` like ``blockwise.finish``."""
    if kernel == "xla":
        return _xla_fold
    if kernel == "gpu" and blocks.gpu_forward == "mosaic":
        mgpu = _mosaic()
        sizes = mgpu.MosaicSizes(blocks.block_k, blocks.num_stages)
        return lambda *a, final_dtype=None, interpret=False: mgpu.fold_block(
            *a, final_dtype=final_dtype, sizes=sizes, interpret=interpret)
    module = pallas_gpu if kernel == "gpu" else _tpu()
    return lambda *a, final_dtype=None, interpret=False: module.fold_block(
        *a, final_dtype=final_dtype, blocks=blocks, interpret=interpret)


def grad(kernel: str, blocks: BlockSizes):
    """The gradient function of ``kernel`` with ``blocks``: ``(*blockwise.grad_block's
    arguments, interpret=False)``; the GPU backward is Triton's for either forward."""
    if kernel == "xla":
        return lambda *a, interpret=False: blockwise.grad_block(*a)
    module = pallas_gpu if kernel == "gpu" else _tpu()
    return lambda *a, interpret=False: module.grad_block(*a, blocks=blocks, interpret=interpret)
