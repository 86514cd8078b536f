"""The Pallas GPU (Triton) kernels, natively on a GPU and in interpret mode elsewhere, against the float64 reference and the XLA
tiles, forward and gradients; Triton lowering checked without a GPU; bad options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.attention import attention_reference, blockwise, gpu_order, pallas_gpu
from ringkit.attention.layouts import device_positions
from ringkit.errors import ConfigError, UnsupportedError
from helpers import check_pallas_ring, native, native_mosaic, segments, f64, lower_for_h100, qkv, rel_err, ring_case_id

# Natively on the backend when this machine has it, else in interpret mode (JAX's pattern).
INTERPRET = not native("gpu")

SMALL = rk.BlockSizes(block_q=32, block_k=16, block_q_dkv=16, block_k_dkv=32)
OTHER = rk.BlockSizes(block_q=16, block_k=32, block_q_dkv=32, block_k_dkv=16, block_q_dq=64,
                      block_k_dq=16)

# (sp, batch, seq, q_heads, kv_heads, head_dim, causal, layout, segments, blocks)
CASES = [
    (1, 1, 128, 4, 2, 64, True, "zigzag", False, SMALL),
    (2, 2, 128, 3, 1, 48, False, "contiguous", True, SMALL),  # head_dim padded to 64
    (4, 1, 256, 6, 2, 64, True, "zigzag", True, OTHER),
    (4, 1, 256, 2, 2, 128, True, "contiguous", False, SMALL),
    (8, 1, 256, 8, 1, 64, True, "zigzag", False, OTHER),
]


# The default run keeps cases 0 and 2; the rest run with ``pytest -m slow`` (interpret mode is slow on CPU).
DEFAULT = (0, 2)


@pytest.mark.parametrize("case", [c if i in DEFAULT else pytest.param(c, marks=pytest.mark.slow)
                                  for i, c in enumerate(CASES)], ids=ring_case_id)
def test_interpret_matches_reference_and_xla(case, rng):
    check_pallas_ring(case, rng, "gpu")


@pytest.mark.parametrize("n_tiles,batch,heads", [(64, 1, 16), (4, 2, 3), (256, 1, 5), (1, 3, 7),
                                                  (6, 1, 4)])
@pytest.mark.parametrize("heavy_last_tile", [True, False])
def test_launch_order_runs_every_tile_once_heaviest_first_by_group(n_tiles, batch, heads,
                                                                   heavy_last_tile, monkeypatch):
    monkeypatch.setattr(gpu_order, "GROUP_PROGRAMS", 17 if n_tiles == 6 else 256)
    order = gpu_order.LaunchOrder(n_tiles, batch, heads, heavy_last_tile=heavy_last_tile)
    b, h, t = (np.asarray(x) for x in order(jnp.arange(order.grid[0])))
    assert sorted(zip(b, h, t)) == [(i, j, k) for i in range(batch) for j in range(heads)
                                    for k in range(n_tiles)]
    streams = b * heads + h
    rank = n_tiles - 1 - t if heavy_last_tile else t
    per_group = order.group * n_tiles
    assert per_group >= min(gpu_order.GROUP_PROGRAMS, batch * heads * n_tiles)
    assert order.group == 1 or (order.group - 1) * n_tiles < gpu_order.GROUP_PROGRAMS
    for start in range(0, len(t), per_group):  # a group: its streams only, heaviest tiles first
        group = slice(start, start + per_group)
        assert set(streams[group]) == set(range(start // n_tiles,
                                                min(batch * heads, (start + per_group) // n_tiles)))
        assert np.all(np.diff(rank[group]) >= 0)


def test_fold_into_a_running_carry(rng, monkeypatch):
    """The device's own zigzag KV block (tile kinds of all three sorts) folded into a non-fresh
    carry; the 4 (batch, head) streams launch in groups (2 for the forward, 3 then 1 for the
    backward's kernels)."""
    monkeypatch.setattr(gpu_order, "GROUP_PROGRAMS", 17)
    sp, n, g, d = 4, 128, 3, 64
    spec = blockwise.TileSpec(True, g, 32, 32)
    q_pos = k_pos = device_positions(2, n, sp, "zigzag")
    kinds = blockwise.tile_kind(*(x[:, None] for x in blockwise.tile_bounds(jnp.repeat(q_pos, g), 32)),
                                *(x[None, :] for x in blockwise.tile_bounds(k_pos, 16)))
    assert set(np.unique(np.asarray(kinds))) == {blockwise.SKIP, blockwise.FULL, blockwise.DIAGONAL}
    shape_q, shape_k, rows = (2, 2, n * g, d), (2, 2, n, d), (2, 2, n * g)
    q = jnp.asarray(rng.standard_normal(shape_q) / 8, jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal(shape_k), jnp.float32) for _ in range(2))
    seg_q = jnp.asarray(np.sort(rng.integers(-1, 2, (2, n)), 1), jnp.int32)
    seg_k = jnp.asarray(np.sort(rng.integers(-1, 2, (2, n)), 1), jnp.int32)
    carry = (jnp.asarray(rng.standard_normal(shape_q), jnp.float32),
             jnp.asarray(rng.standard_normal(rows), jnp.float32),
             jnp.asarray(rng.random(rows) + 0.5, jnp.float32))
    args = (q, k, v, carry, blockwise.MaskIds(q_pos, k_pos, seg_q, seg_k), spec)
    want = blockwise.fold_block(*args)
    got = pallas_gpu.fold_block(*args, blocks=SMALL, interpret=INTERPRET)
    for g_, w in zip(got, want):
        assert rel_err(g_, w) < 1e-5
    # The kernel saw the block: a different key changes the result.
    other = pallas_gpu.fold_block(q, k.at[:, :, 0].add(1.0), *args[2:], blocks=SMALL,
                                  interpret=INTERPRET)
    assert rel_err(other[0], got[0]) > 1e-4

    do = jnp.asarray(rng.standard_normal(shape_q), jnp.float32)
    lse = jnp.asarray(rng.standard_normal(rows), jnp.float32).at[0, 0, :5].set(-jnp.inf)
    delta = jnp.asarray(rng.standard_normal(rows), jnp.float32)
    grads = tuple(jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (q, k, v))
    gargs = (q, k, v, do, lse, delta, grads, args[4], spec)
    for g_, w in zip(pallas_gpu.grad_block(*gargs, blocks=OTHER, interpret=INTERPRET),
                     blockwise.grad_block(*gargs)):
        assert rel_err(g_, w) < 1e-5


def test_bfloat16(rng):
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    q, k, v = qkv(rng, 1, 128, 4, 2, 64, jnp.bfloat16)
    out = rk.ring_attention(q, k, v, mesh=mesh, impl="pallas", interpret="gpu", block_sizes=SMALL)
    ref = attention_reference(*f64(q, k, v))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_lower_to_triton_without_a_gpu(dtype):
    """Lowering for CUDA runs Pallas' Triton lowering: non-power-of-two tiles or an op Triton
    lacks fail here, on CPU, before any GPU sees the kernels."""
    b, h, n, d, g = 1, 2, 256, 128, 2
    spec = blockwise.TileSpec(True, g, 128, 128)
    pos = jnp.arange(n, dtype=jnp.int32)
    q = jax.ShapeDtypeStruct((b, h, n * g, d), dtype)
    k = jax.ShapeDtypeStruct((b, h, n, d), dtype)
    seg = jax.ShapeDtypeStruct((b, n), jnp.int32)

    def both(q, k, v, seg):
        ids = blockwise.MaskIds(pos, pos, seg, seg)
        out, lse = pallas_gpu.fold_block(q, k, v, None, ids, spec, final_dtype=dtype)
        carry = pallas_gpu.fold_block(q, k, v, (out.astype(jnp.float32), lse, lse),
                                      blockwise.MaskIds(pos, pos),
                                      spec)
        grads = (carry[0], jnp.zeros(k.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32))
        return pallas_gpu.grad_block(q, k, v, out, lse, lse, grads, ids, spec)

    text = lower_for_h100(both, q, k, k, seg)
    assert text.count("__gpu$xla.gpu.triton") == 4  # forward twice, dq, dk/dv


def test_choice_and_bad_options():
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    x = jnp.zeros((1, 64, 2, 64), jnp.float32)
    assert "XLA" in rk.attention.describe(x, x, x, mesh=mesh)  # auto on CPU
    line = rk.attention.describe(x, x, x, mesh=mesh, impl="pallas", interpret="gpu")
    assert "Pallas GPU kernels in interpret mode" in line and "sp=2" in line
    assert "Triton forward and backward" in line  # the Mosaic forward only on Hopper
    with pytest.raises(UnsupportedError, match="needs a GPU or TPU.*interpret='gpu'"):
        rk.ring_attention(x, x, x, mesh=mesh, impl="pallas")
    with pytest.raises(ConfigError, match="interpret='gpu' runs a Pallas kernel"):
        rk.ring_attention(x, x, x, mesh=mesh, interpret="gpu")
    with pytest.raises(ConfigError, match="block_q/block_k tile the XLA kernel.*block_sizes="):
        rk.ring_attention(x, x, x, mesh=mesh, impl="pallas", interpret="gpu", block_q=16)
    with pytest.raises(ConfigError, match="interpret='cuda' must be one of"):
        rk.ring_attention(x, x, x, mesh=mesh, impl="pallas", interpret="cuda")
    with pytest.raises(ConfigError, match="block_k=48 must be a power of two"):
        rk.BlockSizes(block_k=48)
    with pytest.raises(ConfigError, match="num_warps=3"):
        rk.BlockSizes(num_warps=3)
    with pytest.raises(ConfigError, match="must be a ringkit.BlockSizes"):
        rk.ring_attention(x, x, x, mesh=mesh, block_sizes=(64, 64))
    odd = jnp.zeros((1, 40, 2, 64), jnp.float32)  # 20 keys per device: no power-of-two tile
    with pytest.raises(ConfigError, match="per device = 20"):
        rk.ring_attention(odd, odd, odd, mesh=mesh, impl="pallas", interpret="gpu")


# Sizes a user runs, on a GPU only (the interpreter would take hours): float32 and bf16, causal
# and full, GQA, segments, a padded head dim; the bf16 cases again with the Mosaic forward.
# (batch, seq, q_heads, kv_heads, head_dim, causal, segments, dtype, tolerance, block sizes)
_MOSAIC = rk.BlockSizes(gpu_forward="mosaic")
NATIVE = [
    (1, 1024, 4, 4, 128, True, False, jnp.float32, 1e-5, None),
    (2, 512, 8, 2, 64, True, True, jnp.float32, 1e-5, None),
    (1, 768, 6, 2, 80, False, True, jnp.float32, 1e-5, None),
    (1, 2048, 8, 8, 128, True, False, jnp.bfloat16, 3e-2, None),
    (2, 1024, 12, 4, 64, True, True, jnp.bfloat16, 3e-2, None),
    (1, 2048, 8, 8, 128, True, False, jnp.bfloat16, 3e-2, _MOSAIC),
    (2, 1024, 12, 4, 64, True, True, jnp.bfloat16, 3e-2, _MOSAIC),
    (1, 1024, 4, 2, 128, False, True, jnp.bfloat16, 3e-2, _MOSAIC),
]


@pytest.mark.skipif(not native("gpu"), reason="user-sized kernels run natively, on a GPU only")
@pytest.mark.parametrize("case", NATIVE, ids=lambda c: (
    f"b{c[0]}-s{c[1]}-{c[2]}q{c[3]}kv-d{c[4]}-{'causal' if c[5] else 'full'}"
    f"{'-seg' if c[6] else ''}-{jnp.dtype(c[7]).name}{'-mosaic' if c[9] else ''}"))
def test_user_sizes_on_a_gpu(case, rng):
    """``ring_attention(impl="pallas")`` forward and gradients on one GPU against the float64
    reference of the inputs as the kernel sees them (after the cast to ``dtype``)."""
    b, s, hq, hkv, d, causal, seg, dtype, tol, blocks = case
    if blocks is not None and not native_mosaic():
        pytest.skip("the Mosaic GPU forward needs a Hopper GPU")
    mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    q, k, v = (jnp.asarray(x, dtype) for x in qkv(rng, b, s, hq, hkv, d))
    seg_ids = jnp.asarray(segments(rng, b, s, 3)) if seg else None
    cot = jnp.asarray(rng.standard_normal(q.shape), dtype)
    fn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, causal=causal,
                                           segment_ids=seg_ids, impl="pallas", block_sizes=blocks)
    out, pull = jax.vjp(fn, q, k, v)
    got = (out, *pull(cot))
    out_ref, pull_ref = jax.vjp(
        lambda q, k, v: attention_reference(q, k, v, causal=causal, segment_ids=seg_ids),
        *f64(q, k, v))
    want = (out_ref, *pull_ref(jnp.asarray(np.asarray(cot, np.float32), jnp.float64)))
    for name, g_, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert rel_err(g_, w) < tol, (name, rel_err(g_, w))
