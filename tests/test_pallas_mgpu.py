"""The Mosaic GPU forward (``BlockSizes(gpu_forward="mosaic")``), natively on a Hopper GPU;
elsewhere JAX's Mosaic GPU interpreter runs its warpgroups, barriers and TMA copies, against the
XLA tiles and the float64 reference; the GPU path (wgmma, layouts, shared-memory tiling) is lowered for CUDA without a GPU;
bad options; which GPU forward the ring picks by default."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.attention import blockwise, pallas_gpu, pallas_mgpu
from ringkit.attention.layouts import device_positions
from ringkit.errors import ConfigError
from helpers import check_pallas_ring, native_mosaic, lower_for_h100, rel_err, ring_case_id

# Natively on the backend when this machine has it, else in interpret mode (JAX's pattern).
INTERPRET = not native_mosaic()

MOSAIC = rk.BlockSizes(block_k=64, gpu_forward="mosaic")

# A deadlocked interpreter blocks in C, where pytest's default (signal) timeout cannot act: the
# thread method ends the run with every thread's stack instead of hanging CI.
pytestmark = pytest.mark.timeout(300, method="thread")

# Device 1 of a 4-device zigzag ring holds positions [128, 256) and [768, 896): two programs of
# two 64-row warpgroups. The key blocks give warpgroups of one program different loop ends.
Q_POS = device_positions(1, 256, 4, "zigzag")
K_BLOCKS = {
    "own": Q_POS,  # 64-key tiles: the first warpgroup ends one tile before the second
    "partly-hidden": jnp.arange(192, 448, dtype=jnp.int32),  # one warpgroup sees no key at all
    "all-hidden": jnp.arange(1024, 1280, dtype=jnp.int32),  # nothing to fetch: carry unchanged
}


def _inputs(rng, n=256, d=64, heads=2):
    q = jnp.asarray(rng.standard_normal((1, heads, n, d)) / 8, jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((1, heads, n, d)), jnp.float32) for _ in range(2))
    seg = jnp.asarray(np.sort(rng.integers(0, 3, (1, n)), 1), jnp.int32)
    rows = (1, heads, n)
    carry = (jnp.asarray(rng.standard_normal(q.shape), jnp.float32),
             jnp.asarray(rng.standard_normal(rows), jnp.float32),
             jnp.asarray(rng.random(rows) + 0.5, jnp.float32))
    return q, k, v, seg, carry


# Interpret mode takes ~10 s a call: the default run keeps three of the six.
DEFAULT_FOLDS = {("own", False), ("partly-hidden", True), ("all-hidden", False)}
FOLD_CASES = [pytest.param(keys, final, marks=() if (keys, final) in DEFAULT_FOLDS
                           else pytest.mark.slow)
              for keys in K_BLOCKS for final in (False, True)]


@pytest.mark.parametrize("keys,final", FOLD_CASES)
def test_fold_matches_the_xla_tiles(keys, final, rng):
    """Float32 in interpret mode: the kernel's loop bounds, hand-back of unread slots, masks and
    carry against ``blockwise`` within 1e-5 (a running carry in; segments on the own block)."""
    q, k, v, seg, carry = _inputs(rng)
    k_pos = K_BLOCKS[keys]
    seg_q, seg_k = (seg, seg) if keys == "own" else (None, None)
    spec = blockwise.TileSpec(True, 1, 64, 64)
    ids = blockwise.MaskIds(Q_POS, k_pos, seg_q, seg_k)
    want = blockwise.fold_block(q, k, v, carry, ids, spec)
    if final:
        want = blockwise.finish(*want, jnp.float32)
    got = pallas_mgpu.fold_block(q, k, v, carry, ids, spec,
                                 final_dtype=jnp.float32 if final else None,
                                 sizes=pallas_mgpu.MosaicSizes(block_k=64), interpret=INTERPRET)
    assert len(got) == len(want)
    for g_, w in zip(got, want):
        finite = np.isfinite(np.asarray(w))
        assert np.array_equal(finite, np.isfinite(np.asarray(g_)))
        assert rel_err(np.where(finite, g_, 0), np.where(finite, w, 0)) < 1e-5
    if keys == "all-hidden" and not final:  # o and l pass through untouched (m goes to base 2)
        for i in (0, 2):
            np.testing.assert_array_equal(got[i], carry[i])


@pytest.mark.slow
def test_fresh_gqa_fold_and_a_changed_key(rng):
    """A fresh causal fold with GQA rows (group of 2) finished in the kernel; it reads the block:
    one changed key changes the output."""
    q, k, v, _, _ = _inputs(rng, n=128)
    q = jnp.concatenate([q, q[:, :, ::-1] * 2], axis=2)  # 256 rows = 128 positions x 2
    pos = jnp.arange(128, dtype=jnp.int32)
    spec = blockwise.TileSpec(True, 2, 64, 64)
    fresh = (jnp.zeros(q.shape, jnp.float32), jnp.full(q.shape[:3], -jnp.inf, jnp.float32),
             jnp.zeros(q.shape[:3], jnp.float32))
    ids = blockwise.MaskIds(pos, pos)
    want = blockwise.finish(*blockwise.fold_block(q, k, v, fresh, ids, spec),
                            jnp.float32)
    run = lambda k: pallas_mgpu.fold_block(q, k, v, None, blockwise.MaskIds(pos, pos), spec,
                                           final_dtype=jnp.float32, interpret=INTERPRET)
    got = run(k)
    for g_, w in zip(got, want):
        assert rel_err(g_, w) < 1e-5
    assert rel_err(run(k.at[:, :, 5].add(1.0))[0], got[0]) > 1e-4


@pytest.mark.parametrize("case", [
    (1, 1, 128, 4, 2, 64, True, "zigzag", False, MOSAIC),
    pytest.param((1, 2, 256, 2, 2, 128, False, "contiguous", True, MOSAIC),
                 marks=pytest.mark.slow),
], ids=ring_case_id)
def test_ring_with_the_mosaic_forward(case, rng):
    """``ring_attention`` forward and gradients (Triton backward) against the float64 reference
    and ``impl='xla'`` within 1e-5, on one device: JAX's Mosaic GPU interpreter cannot simulate
    several devices at once (see ``pallas_mgpu.plan``)."""
    check_pallas_ring(case, rng, "gpu")


@pytest.mark.slow
def test_bfloat16_matches_the_triton_forward(rng):
    """bf16 probabilities into the second matmul, as on the GPU: close to the Triton kernel."""
    q, k, v, seg, _ = _inputs(rng, d=128)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    spec = blockwise.TileSpec(True, 1, 64, 64)
    args = (q, k, v, None, blockwise.MaskIds(Q_POS, Q_POS, seg, seg), spec)
    # A float32 output from bf16 inputs leaves the kernel by plain stores, not Q's slot.
    got = pallas_mgpu.fold_block(*args, final_dtype=jnp.float32, interpret=INTERPRET)
    want = pallas_gpu.fold_block(*args, final_dtype=jnp.float32, interpret=INTERPRET)
    assert got[0].dtype == jnp.float32
    assert rel_err(got[0], want[0]) < 2e-2 and rel_err(got[1], want[1]) < 1e-3


@pytest.mark.parametrize("block_k,stages,lowering", [
    (128, 2, "lane"), (128, 3, "lane"), (64, 4, "lane"), (128, 2, "warpgroup")])
def test_lowers_for_cuda_without_a_gpu(block_k, stages, lowering):
    """The GPU path (wgmma on swizzled tiles, register layouts, TMA, shared-memory budget) goes
    through Pallas' Mosaic GPU lowering on CPU: fresh and final, a carry in and out, segments and
    GQA rows. Under "warpgroup" Mosaic infers every layout here, on CPU, for an H100."""
    b, h, n, g, d = 1, 2, 512, 2, 128
    spec = blockwise.TileSpec(True, g, 64, 64)
    sizes = pallas_mgpu.MosaicSizes(block_k, stages, lowering)
    pos = jnp.arange(n, dtype=jnp.int32)
    q = jax.ShapeDtypeStruct((b, h, n * g, d), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((b, h, n, d), jnp.bfloat16)
    seg = jax.ShapeDtypeStruct((b, n), jnp.int32)

    def both(q, k, v, seg):
        out, lse = pallas_mgpu.fold_block(q, k, v, None, blockwise.MaskIds(pos, pos), spec,
                                          final_dtype=jnp.bfloat16, sizes=sizes)
        carry = (out.astype(jnp.float32), lse, jnp.exp(lse))
        ids = blockwise.MaskIds(pos, pos, seg, seg)
        carry = pallas_mgpu.fold_block(q, k, v, carry, ids, spec, sizes=sizes)
        return pallas_mgpu.fold_block(q, k, v, carry, ids, spec,
                                      final_dtype=jnp.float32, sizes=sizes)

    text = lower_for_h100(both, q, k, k, seg)
    assert text.count("custom_call @mosaic_gpu") == 3


def test_bad_options():
    x = jnp.zeros((1, 1, 128, 64), jnp.float32)
    pos = jnp.arange(128, dtype=jnp.int32)
    spec = blockwise.TileSpec(True, 1, 64, 64)
    with pytest.raises(ConfigError, match="bfloat16 or float16.*gpu_forward unset"):
        pallas_mgpu.fold_block(x, x, x, None, blockwise.MaskIds(pos, pos), spec)
    with pytest.raises(ConfigError, match="head_dim a multiple of 64 up to 256, got 48"):
        pallas_mgpu.plan(jnp.bfloat16, 48, 128, 128)
    with pytest.raises(ConfigError, match="245760 bytes .* head_dim 192 .*over the"):
        pallas_mgpu.plan(jnp.bfloat16, 192, 128, 256, pallas_mgpu.MosaicSizes(128, 2))
    assert pallas_mgpu.plan(jnp.bfloat16, 128, 128, 384, pallas_mgpu.MosaicSizes(256, 4)) == (
        128, 3)  # key tiles shrink to divide the keys; no more stages than tiles
    with pytest.raises(ConfigError, match="gpu_forward='quick' must be one of"):
        rk.BlockSizes(gpu_forward="quick")
    with pytest.raises(ConfigError, match="lowering='auto' must be one of .'lane', 'warpgroup'"):
        pallas_mgpu.MosaicSizes(lowering="auto")
    with pytest.raises(ConfigError, match="block_k=32 must be 64, 128 or 256"):
        pallas_mgpu.MosaicSizes(block_k=32)

    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    qkv = jnp.zeros((1, 128, 2, 64), jnp.float32)
    one = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    line = rk.attention.describe(qkv, qkv, qkv, mesh=one, impl="pallas", interpret="gpu",
                                 block_sizes=MOSAIC)
    assert "Mosaic GPU forward 2x64 rows x 64 keys, 2 stages; Triton backward" in line
    one_head = qkv[:, :, :1]  # 64 positions per device, no GQA: 64 rows
    with pytest.raises(ConfigError, match="multiple of 128 and keys .* got 64 rows and 64 keys"):
        rk.ring_attention(one_head, one_head, one_head, mesh=mesh, impl="pallas",
                          interpret="gpu", block_sizes=MOSAIC)
    wide = jnp.zeros((1, 256, 2, 64), jnp.float32)  # 128 rows per device
    with pytest.raises(ConfigError, match="interpreter runs one device at a time.*sp=1"):
        rk.ring_attention(wide, wide, wide, mesh=mesh, impl="pallas", interpret="gpu",
                          block_sizes=MOSAIC)
    with pytest.raises(ConfigError, match="picks a GPU kernel.*Pallas TPU"):
        rk.ring_attention(qkv, qkv, qkv, mesh=mesh, impl="pallas", interpret="tpu",
                          block_sizes=MOSAIC)


@pytest.mark.parametrize("blocks, capability, dtype, head_dim, rows, want", [
    (rk.BlockSizes(), "9.0", jnp.bfloat16, 128, 4096, "mosaic"),  # Hopper, where it was timed
    (rk.BlockSizes(), "9.0", jnp.float16, 64, 4096, "mosaic"),
    (rk.BlockSizes(block_k=64, num_stages=3), "9.0", jnp.bfloat16, 128, 4096, "mosaic"),
    (rk.BlockSizes(), "8.0", jnp.bfloat16, 128, 4096, "triton"),  # an A100 has no wgmma
    (rk.BlockSizes(), "10.0", jnp.bfloat16, 128, 4096, "triton"),  # nor a Blackwell
    (rk.BlockSizes(), None, jnp.bfloat16, 128, 4096, "triton"),  # not a CUDA device
    (rk.BlockSizes(), "9.0", jnp.float32, 128, 4096, "triton"),  # Mosaic takes 16-bit only
    (rk.BlockSizes(), "9.0", jnp.bfloat16, 256, 4096, "triton"),  # untimed head dim
    (rk.BlockSizes(), "9.0", jnp.bfloat16, 128, 4000, "triton"),  # rows not a multiple of 128
    (rk.BlockSizes(block_q=64), "9.0", jnp.bfloat16, 128, 4096, "triton"),  # Triton's own knobs
    (rk.BlockSizes(num_warps=4), "9.0", jnp.bfloat16, 128, 4096, "triton"),
    (rk.BlockSizes(block_k=256, num_stages=4), "9.0", jnp.bfloat16, 128, 4096, "triton"),  # smem
])
def test_the_ring_picks_the_mosaic_forward_where_it_was_faster(blocks, capability, dtype,
                                                               head_dim, rows, want):
    assert rk.attention.auto_gpu_forward(blocks, capability, dtype, head_dim, rows,
                                         rows) == want


def test_interpret_mode_keeps_the_triton_forward_unless_asked():
    one = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    qkv = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
    line = rk.attention.describe(qkv, qkv, qkv, mesh=one, impl="pallas", interpret="gpu")
    assert "Mosaic" not in line and "Triton forward and backward" in line
