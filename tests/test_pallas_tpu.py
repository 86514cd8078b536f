"""The Pallas TPU (Mosaic) kernels, natively on a TPU and in interpret mode elsewhere, against the float64 reference and
the XLA tiles, forward and gradients; the visit lists that skip hidden tiles; Mosaic lowering
checked without a TPU; tile rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.attention import attention_reference, blockwise, pallas_tpu
from ringkit.attention.bounds import tile_kinds
from ringkit.attention.layouts import device_positions
from ringkit.errors import ConfigError
from helpers import check_pallas_ring, native, f64, qkv, rel_err, ring_case_id

# Natively on the backend when this machine has it, else in interpret mode (JAX's pattern).
INTERPRET = not native("tpu")

# Key tiles are lane-dense (multiples of 128); rows go down to 8.
SMALL = rk.BlockSizes(block_q=64, block_k=128, block_q_dq=32, block_k_dq=128, block_q_dkv=64,
                      block_k_dkv=128)
WIDE = rk.BlockSizes(block_q=128, block_k=256, block_q_dq=128, block_k_dq=128, block_q_dkv=32,
                     block_k_dkv=128)

# (sp, batch, seq, q_heads, kv_heads, head_dim, causal, layout, segments, blocks)
CASES = [
    (2, 1, 512, 4, 2, 64, True, "zigzag", False, SMALL),
    (2, 2, 256, 3, 1, 48, False, "contiguous", True, SMALL),
    (4, 1, 1024, 2, 2, 128, True, "contiguous", True, WIDE),
    (1, 1, 512, 2, 1, 64, True, "zigzag", False, WIDE),
]


# The default run keeps the first case; the rest run with ``pytest -m slow`` (interpret mode is slow on CPU).
DEFAULT = (0,)


@pytest.mark.parametrize("case", [c if i in DEFAULT else pytest.param(c, marks=pytest.mark.slow)
                                  for i, c in enumerate(CASES)], ids=ring_case_id)
def test_interpret_matches_reference_and_xla(case, rng):
    check_pallas_ring(case, rng, "tpu")


def test_visit_lists_skip_hidden_tiles():
    """Per row tile: the visible key tiles in order, then the last repeated (no new fetch)."""
    kind = jnp.array([[1, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [1, 1, 1, 2]], jnp.int32)
    tiles, kinds, count = pallas_tpu._visits(kind)
    assert count.tolist() == [1, 2, 0, 4]
    assert tiles.reshape(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 2, 3]]
    assert kinds.reshape(4, 4).tolist() == [[1, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [1, 1, 1, 2]]
    # A zigzag device's own block under a causal mask: every tile kind, and the visits per row
    # tile are exactly its non-hidden tiles.
    q_rows = jnp.repeat(device_positions(1, 512, 2, "zigzag"), 2)
    k_pos = device_positions(1, 512, 2, "zigzag")
    kind = tile_kinds(q_rows, k_pos, 64, 128, True)
    assert set(np.unique(np.asarray(kind))) == {blockwise.SKIP, blockwise.FULL, blockwise.DIAGONAL}
    _, _, count = pallas_tpu._visits(kind)
    assert count.tolist() == np.count_nonzero(np.asarray(kind) != blockwise.SKIP, axis=1).tolist()


def test_fold_into_a_running_carry_and_grads(rng):
    """The device's own zigzag block folded into a non-fresh carry, and its gradients, against the
    XLA tiles; GQA 3, segments with padding (-1)."""
    sp, n, g, d = 2, 256, 3, 64
    spec = blockwise.TileSpec(True, g, 64, 64)
    q_pos = k_pos = device_positions(1, n, sp, "zigzag")
    shape_q, shape_k, rows = (2, 2, n * g, d), (2, 2, n, d), (2, 2, n * g)
    q = jnp.asarray(rng.standard_normal(shape_q) / 8, jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal(shape_k), jnp.float32) for _ in range(2))
    seg_q = jnp.asarray(np.sort(rng.integers(-1, 2, (2, n)), 1), jnp.int32)
    seg_k = jnp.asarray(np.sort(rng.integers(-1, 2, (2, n)), 1), jnp.int32)
    carry = (jnp.asarray(rng.standard_normal(shape_q), jnp.float32),
             jnp.asarray(rng.standard_normal(rows), jnp.float32),
             jnp.asarray(rng.random(rows) + 0.5, jnp.float32))
    for segs in ((None, None), (seg_q, seg_k)):
        args = (q, k, v, carry, blockwise.MaskIds(q_pos, k_pos, *segs), spec)
        want = blockwise.fold_block(*args)
        got = pallas_tpu.fold_block(*args, blocks=SMALL, interpret=INTERPRET)
        for g_, w in zip(got, want):
            assert rel_err(g_, w) < 1e-5
    other = pallas_tpu.fold_block(q, k.at[:, :, 0].add(1.0), *args[2:], blocks=SMALL,
                                  interpret=INTERPRET)
    assert rel_err(other[0], got[0]) > 1e-4  # the kernel saw the block

    do = jnp.asarray(rng.standard_normal(shape_q), jnp.float32)
    lse = jnp.asarray(rng.standard_normal(rows), jnp.float32).at[0, 0, :5].set(-jnp.inf)
    delta = jnp.asarray(rng.standard_normal(rows), jnp.float32)
    grads = tuple(jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in (q, k, v))
    ids = blockwise.MaskIds(q_pos, k_pos, seg_q, seg_k)
    gargs = (q, k, v, do, lse, delta, grads, ids, spec)
    got = pallas_tpu.grad_block(*gargs, blocks=WIDE, interpret=INTERPRET)
    for g_, w, before in zip(got, blockwise.grad_block(*gargs), grads):
        assert rel_err(g_, w) < 1e-5
        assert rel_err(g_, before) > 1e-3  # the block added something


def test_bfloat16(rng):
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    q, k, v = qkv(rng, 1, 512, 4, 2, 64, jnp.bfloat16)
    out = rk.ring_attention(q, k, v, mesh=mesh, impl="pallas", interpret="tpu", block_sizes=SMALL)
    ref = attention_reference(*f64(q, k, v))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_kernels_lower_to_mosaic_without_a_tpu(dtype):
    """Lowering for TPU runs Pallas' Mosaic lowering (block shapes, scalar prefetch, scratch) on
    CPU, before any TPU sees the kernels."""
    b, h, n, d, g = 1, 2, 512, 128, 2
    spec = blockwise.TileSpec(True, g, 128, 128)
    pos = jnp.arange(n, dtype=jnp.int32)
    q = jax.ShapeDtypeStruct((b, h, n * g, d), dtype)
    k = jax.ShapeDtypeStruct((b, h, n, d), dtype)
    seg = jax.ShapeDtypeStruct((b, n), jnp.int32)

    def both(q, k, v, seg):
        carry = pallas_tpu.fold_block(q, k, v, None, blockwise.MaskIds(pos, pos, seg, seg), spec)
        out, lse = pallas_tpu.fold_block(q, k, v, carry, blockwise.MaskIds(pos, pos), spec,
                                         final_dtype=dtype)
        grads = (carry[0], jnp.zeros(k.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32))
        ids = blockwise.MaskIds(pos, pos, seg, seg)
        return pallas_tpu.grad_block(q, k, v, out, lse, lse, grads, ids, spec)

    text = jax.jit(both).trace(q, k, k, seg).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 4  # forward twice, dq, dk/dv


def test_tile_rules_and_describe():
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    x = jnp.zeros((1, 1040, 2, 64), jnp.float32)  # 520 keys per device: no 128-multiple tile
    with pytest.raises(ConfigError, match="multiples of 128.*keys per device = 520"):
        rk.ring_attention(x, x, x, mesh=mesh, impl="pallas", interpret="tpu")
    line = rk.attention.describe(x, x, x, mesh=mesh, impl="pallas", interpret="tpu")
    assert "Pallas TPU (Mosaic) kernels in interpret mode" in line and "128x512" in line
    # A whole small dimension is always a legal tile.
    y = jnp.asarray(np.random.default_rng(0).standard_normal((1, 200, 2, 64)), jnp.float32)
    out = rk.ring_attention(y, y, y, mesh=mesh, impl="pallas", interpret="tpu")
    assert rel_err(out, attention_reference(*f64(y, y, y), causal=True)) < 1e-5
