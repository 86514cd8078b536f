"""Shared test helpers: random attention inputs and error measures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def lower_for_h100(fn, *args) -> str:
    """StableHLO text of ``fn`` lowered for CUDA on this GPU-less machine, as if for an H100:
    jax >= 0.11 asks which GPU a Triton kernel is for when there is none to ask."""
    h100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132,
                                       platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                  abstract_device=h100)):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def qkv(rng, batch, seq, q_heads, kv_heads, head_dim, dtype=np.float32):
    """Random ``q [b, s, hq, d]``, ``k, v [b, s, hkv, d]`` as numpy arrays of ``dtype``."""
    shape_q, shape_kv = (batch, seq, q_heads, head_dim), (batch, seq, kv_heads, head_dim)
    return tuple(rng.standard_normal(s).astype(np.float32).astype(dtype)
                 for s in (shape_q, shape_kv, shape_kv))


def segments(rng, batch, seq, n_max=4):
    """Packed-document segment ids ``int32 [b, s]``: sorted runs, like concatenated documents."""
    return np.sort(rng.integers(0, n_max, (batch, seq)), axis=1).astype(np.int32)


def rel_err(x, ref):
    """max |x - ref| / max |ref|, in float64."""
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def f64(*xs):
    return tuple(jnp.asarray(np.asarray(x, np.float32), jnp.float64) for x in xs)


# A ring case for the Pallas kernels in interpret mode:
# (sp, batch, seq, q_heads, kv_heads, head_dim, causal, layout, segments, BlockSizes).


def ring_case_id(case):
    sp, b, s, hq, hkv, d, causal, layout, seg, blocks = case
    return (f"sp{sp}-b{b}-s{s}-g{hq // hkv}-d{d}-{'causal' if causal else 'full'}-{layout}"
            f"{'-seg' if seg else ''}-{blocks.block_q}x{blocks.block_k}")


def native(backend: str) -> bool:
    """Whether this process runs on ``backend`` ('gpu' or 'tpu'). The Pallas tests run their
    kernels natively there and in interpret mode elsewhere (JAX's ``INTERPRET`` pattern), so a
    GPU or TPU machine checks the real kernels with ``pytest``."""
    import jax

    return jax.default_backend() == backend


def native_mosaic() -> bool:
    """Whether the Mosaic GPU forward runs natively here (a Hopper GPU)."""
    return native("gpu") and str(getattr(jax.devices()[0], "compute_capability", "")).startswith(
        "9.")


def interpret_for(backend: str) -> str | None:
    """``ring_attention``'s ``interpret=``: None where ``backend`` is this machine, else it."""
    return None if native(backend) else backend


def check_pallas_ring(case, rng, backend: str, window=None):
    """``ring_attention(impl='pallas')`` forward and gradients against the float64 reference and
    against ``impl='xla'``, each within 1e-5: natively on ``backend``, else in interpret mode
    (``window``: a sliding window on all three)."""
    import ringkit as rk
    from ringkit.attention import attention_reference

    sp, b, s, hq, hkv, d, causal, layout, seg, blocks = case
    if len(jax.devices()) < sp:
        pytest.skip(f"sp={sp} needs {sp} devices, this machine has {len(jax.devices())}")
    mosaic = blocks is not None and blocks.gpu_forward == "mosaic"
    if mosaic and native("gpu") and not native_mosaic():
        pytest.skip("the Mosaic GPU forward needs a Hopper GPU (compute capability 9.x)")
    interpret = interpret_for(backend)
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    q, k, v = qkv(rng, b, s, hq, hkv, d)
    seg_ids = segments(rng, b, s) if seg else None
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)

    def run(impl, **kw):
        fn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, causal=causal, layout=layout,
                                               segment_ids=seg_ids, impl=impl, window=window,
                                               **kw)
        # Native float32: XLA's own dots at full precision too (TF32 is a GPU's default).
        with jax.default_matmul_precision("highest"):
            out, pull = jax.vjp(fn, q, k, v)
            # Each result before the next dispatch: JAX's Mosaic GPU interpreter runs a kernel's
            # warpgroups as computations of their own on the same CPU device, and work queued
            # behind it meanwhile can deadlock it (jax 0.10).
            jax.block_until_ready(out)
            return jax.block_until_ready((out, *pull(cot)))

    got = run("pallas", interpret=interpret, block_sizes=blocks)
    xla = run("xla")
    out_ref, pull_ref = jax.vjp(
        lambda q, k, v: attention_reference(q, k, v, causal=causal, segment_ids=seg_ids,
                                            window=window),
        *f64(q, k, v))
    ref = (out_ref, *pull_ref(jnp.asarray(cot, jnp.float64)))
    for name, g, x, r in zip(("out", "dq", "dk", "dv"), got, xla, ref):
        assert rel_err(g, r) < 1e-5, (name, rel_err(g, r))
        assert rel_err(g, x) < 1e-5, (name, rel_err(g, x))
