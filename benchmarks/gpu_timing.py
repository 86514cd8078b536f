"""What the GPU benchmark times, and how (``attention_gpu.py`` runs the experiments): medians
of jitted, warmed-up calls of the kernels alone on heads-major inputs and of attention as a user
calls it (``ring_attention``, cuDNN, JAX's own Pallas attentions), bf16, batch 1, causal.

``configure`` sets the head dim and interpret mode every function here uses."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import ringkit as rk
from ringkit.attention import blockwise, pallas_gpu, pallas_mgpu
from ringkit.bench import median_seconds

H, D = 16, 128
INTERPRET = False  # the GPU kernels in interpret mode, for a dry run on CPU


def configure(head_dim: int, interpret: bool) -> None:
    global D, INTERPRET
    D, INTERPRET = head_dim, interpret

def timed(fn, args, repeats):
    """Median seconds per call of ``fn(*args)``, jitted and warmed up; each sample queues calls
    until it spans 20 ms (``ringkit.bench.median_seconds``)."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))  # compile outside the timing
    return median_seconds(lambda: f(*args), repeats)


# ---------------------------------------------------------------------------------------------
# 2-3. Throughput.


def matmul_rate(key):
    a = jax.random.normal(key, (8192, 8192), jnp.bfloat16)
    b = jax.random.normal(jax.random.fold_in(key, 1), (8192, 8192), jnp.bfloat16)
    t = timed(lambda a, b: a @ b, (a, b), 20)
    return 2 * 8192 ** 3 / t / 1e12


def flops_forward(s):
    return 4 * H * D * s * s / 2


def kernel_fns(s, blocks):
    """Forward and backward of the kernels alone on heads-major inputs (one KV head per head).
    ``blocks``: BlockSizes, or ``pallas_mgpu.MosaicSizes`` for the Mosaic forward."""
    spec = blockwise.TileSpec(True, 1, 128, 128)
    pos = jnp.arange(s, dtype=jnp.int32)

    def fwd(q, k, v):
        if isinstance(blocks, pallas_mgpu.MosaicSizes):
            return pallas_mgpu.fold_block(q, k, v, None, blockwise.MaskIds(pos, pos), spec,
                                          final_dtype=q.dtype, sizes=blocks, interpret=INTERPRET)
        return pallas_gpu.fold_block(q, k, v, None, blockwise.MaskIds(pos, pos), spec,
                                     final_dtype=q.dtype, blocks=blocks, interpret=INTERPRET)

    def bwd(q, k, v, do, lse, delta):
        zeros = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))
        ids = blockwise.MaskIds(pos, pos)
        return pallas_gpu.grad_block(q, k, v, do, lse, delta, zeros, ids, spec,
                                     blocks=blocks, interpret=INTERPRET)

    return fwd, bwd


def kernel_inputs(key, s):
    shape = (1, H, s, D)
    q, k, v, do = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.bfloat16)
                   for i in range(4))
    return (q.astype(jnp.float32) / math.sqrt(D)).astype(jnp.bfloat16), k, v, do


def kernel_fwd_time(key, s, blocks, repeats):
    q, k, v, _ = kernel_inputs(key, s)
    return timed(kernel_fns(s, blocks)[0], (q, k, v), repeats)


def backward_inputs(key, s, blocks):
    """``(q, k, v, do, lse, delta)`` for the backward kernels, lse from the forward kernel."""
    q, k, v, do = kernel_inputs(key, s)
    out, lse = jax.jit(kernel_fns(s, blocks)[0])(q, k, v)
    delta = jnp.einsum("bhrd,bhrd->bhr", out.astype(jnp.float32), do.astype(jnp.float32))
    return q, k, v, do, lse, delta


def kernel_bwd_time(key, s, blocks, repeats):
    return timed(kernel_fns(s, blocks)[1], backward_inputs(key, s, blocks), repeats)


def user_times(key, s, impl, repeats, blocks=None, backward=True):
    """ring_attention (sp=1) or cuDNN as a user calls them: [b, s, h, d] bf16."""
    shape = (1, s, H, D)
    q, k, v, cot = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.bfloat16)
                    for i in range(4))
    if impl == "cudnn":
        fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                          implementation="cudnn")
    elif impl == "jax-pallas":  # JAX's own Pallas Triton flash attention, a same-run yardstick
        from jax.experimental.pallas.ops.gpu import attention as mha_ops

        fn = lambda q, k, v: mha_ops.mha(q, k, v, None, sm_scale=1 / math.sqrt(D), causal=True,
                                         block_sizes=mha_ops.BlockSizes(block_q=128, block_k=64))
    elif impl == "jax-mgpu":  # JAX's Mosaic GPU (Hopper: wgmma, TMA, two compute warpgroups)
        from jax.experimental.pallas.ops.gpu import attention_mgpu

        config = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2,
                                             causal=True)
        # jax 0.11.2's forward allocates its shared-memory tiles as float16 whatever the input
        # ("src had type bfloat16 and dst had type float16" for bf16), so it runs in float16:
        # the same tiles, bytes and flops.
        q, k, v, cot = (x.astype(jnp.float16) for x in (q, k, v, cot))
        fn = lambda q, k, v: attention_mgpu.attention(q, k, v, config)
    else:
        mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
        interpret = "gpu" if INTERPRET and impl == "pallas" else None
        fn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, causal=True, impl=impl,
                                               interpret=interpret, block_sizes=blocks)
    t_fwd = timed(fn, (q, k, v), repeats)
    if not backward:
        return t_fwd, None

    def both(q, k, v, cot):
        out, pull = jax.vjp(fn, q, k, v)
        return out, pull(cot)

    return t_fwd, timed(both, (q, k, v, cot), repeats)


def backward_part(key, s, blocks, part, repeats):
    """Median seconds of one backward kernel alone, 'dq' or 'dkv'."""
    spec = blockwise.TileSpec(True, 1, 128, 128)
    pos = jnp.arange(s, dtype=jnp.int32)
    launch = blocks.launch(backward=True)

    def run(q, k, v, do, lse, delta):
        g = pallas_gpu.GradInputs(q, k, v, do, lse, delta, pos, pos, None, None, spec)
        zero = jnp.zeros(q.shape, jnp.float32)
        if part == "dq":
            return pallas_gpu.grad_dq(g, zero, blocks, launch, INTERPRET)
        return pallas_gpu.grad_dkv(g, zero, zero, blocks, launch, INTERPRET)

    return timed(run, backward_inputs(key, s, blocks), repeats)


def try_time(log, what, fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # a config Triton cannot compile (shared memory, registers)
        log(f"{what}: failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return None
