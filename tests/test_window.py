"""Sliding-window ring attention: exact against the float64 dense reference with the window mask,
on every kernel, and cheaper than full causal attention (fewer tiles, fewer ring hops)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.attention import attention_reference
from ringkit.attention.bounds import key_bounds, row_bounds
from ringkit.attention.layouts import device_positions
from ringkit.attention.spec import ring_hops
from ringkit.errors import ConfigError
from helpers import check_pallas_ring, f64, qkv, rel_err, segments

# (sp, batch, seq, q_heads, kv_heads, head_dim, layout, segments, block, window); the layout
# chunk is seq / sp (contiguous) or seq / 2sp (zigzag): windows shorter and longer than it.
CASES = [
    (1, 1, 96, 4, 2, 32, "zigzag", False, 16, 7),
    (2, 2, 128, 4, 4, 32, "zigzag", True, 16, 20),
    (2, 1, 128, 6, 2, 32, "contiguous", False, 8, 100),
    (4, 1, 256, 4, 1, 64, "zigzag", False, 16, 2),
    (4, 2, 256, 4, 2, 32, "contiguous", True, 32, 33),
    (4, 1, 256, 8, 2, 32, "zigzag", True, 8, 40),
    (8, 1, 256, 4, 2, 32, "zigzag", False, 8, 16),
    (8, 2, 512, 4, 4, 32, "zigzag", True, 16, 45),
    (8, 1, 256, 6, 3, 32, "contiguous", False, 16, 31),
    (8, 1, 512, 4, 2, 32, "zigzag", False, 32, 300),
]


def _id(case):
    sp, b, s, hq, hkv, d, layout, seg, block, w = case
    return f"sp{sp}-s{s}-g{hq // hkv}-{layout}{'-seg' if seg else ''}-blk{block}-w{w}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_xla_matches_reference(case, rng):
    sp, b, s, hq, hkv, d, layout, seg, block, window = case
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    q, k, v = qkv(rng, b, s, hq, hkv, d)
    seg_ids = segments(rng, b, s) if seg else None
    cot = jnp.asarray(rng.standard_normal(q.shape), jnp.float32)
    ring = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, layout=layout, window=window,
                                             segment_ids=seg_ids, block_q=block, block_k=block)
    ref = lambda q, k, v: attention_reference(q, k, v, segment_ids=seg_ids, window=window)
    out, pull = jax.vjp(ring, q, k, v)
    out_ref, pull_ref = jax.vjp(ref, *f64(q, k, v))
    got, want = (out, *pull(cot)), (out_ref, *pull_ref(jnp.asarray(cot, jnp.float64)))
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    assert max(errs) < 1e-5, f"relative errors out, dq, dk, dv = {errs}"
    # The case exercises the window: plain causal attention gives another answer.
    assert rel_err(attention_reference(*f64(q, k, v), segment_ids=seg_ids), out_ref) > 1e-3


GPU_BLOCKS = rk.BlockSizes(block_q=16, block_k=16, block_q_dq=16, block_k_dq=16,
                           block_q_dkv=16, block_k_dkv=16)
TPU_BLOCKS = rk.BlockSizes(block_q=128, block_k=128, block_q_dq=128, block_k_dq=128,
                           block_q_dkv=128, block_k_dkv=128)


@pytest.mark.parametrize("backend, case, window", [
    ("gpu", (1, 1, 128, 2, 2, 64, True, "zigzag", False, GPU_BLOCKS), 40),
    ("gpu", (4, 1, 256, 4, 2, 64, True, "zigzag", True, GPU_BLOCKS), 20),
    ("gpu", (2, 1, 256, 2, 1, 64, True, "contiguous", False, GPU_BLOCKS), 50),
    ("gpu", (8, 1, 512, 4, 2, 64, True, "zigzag", False, GPU_BLOCKS), 100),
    ("tpu", (1, 1, 512, 2, 1, 64, True, "zigzag", False, TPU_BLOCKS), 130),
    ("tpu", (4, 1, 1024, 4, 2, 64, True, "zigzag", True, TPU_BLOCKS), 20),
    ("tpu", (4, 1, 1024, 2, 2, 64, True, "zigzag", False, TPU_BLOCKS), 300),
    ("tpu", (2, 1, 1024, 2, 1, 64, True, "contiguous", False, TPU_BLOCKS), 300),
], ids=lambda x: x if isinstance(x, (str, int)) else (
    f"sp{x[0]}-s{x[2]}-{x[7]}{'-seg' * x[8]}"))
def test_pallas_kernels_match_reference(backend, case, window, rng):
    check_pallas_ring(case, rng, backend, window=window)


def test_ring_hops_reach_only_the_neighbours_a_window_needs():
    # 32K on 8 devices: zigzag chunks of 2,048, contiguous blocks of 4,096.
    assert ring_hops(32768, 8, "zigzag", None) == (7, 0)
    assert ring_hops(32768, 8, "zigzag", 1024) == (1, 1)  # chunk i-1 and the next device's
    # Position i sees i - W + 1 .. i: W = chunk + 1 still stays within the previous chunk.
    assert ring_hops(32768, 8, "zigzag", 2049) == (1, 1)
    assert ring_hops(32768, 8, "zigzag", 2050) == (2, 2)
    assert ring_hops(32768, 8, "contiguous", 4097) == (1, 0)
    assert ring_hops(32768, 8, "contiguous", 4098) == (2, 0)
    assert ring_hops(32768, 8, "zigzag", 16384) == (7, 0)  # the whole ring is cheaper


def test_a_window_cuts_the_tiles_and_says_so():
    full = rk.attention.tiles_per_device(32768, 8, "zigzag")
    local = rk.attention.tiles_per_device(32768, 8, "zigzag", window=1024)
    assert local.sum() * 8 < full.sum()  # ~1/11 of the tiles: 1,024 of ~16K keys on average
    assert local.max() / local.mean() < 1.1  # still balanced
    q = jnp.zeros((1, 32768, 4, 64), jnp.bfloat16)
    k = jnp.zeros((1, 32768, 1, 64), jnp.bfloat16)
    line = rk.attention.describe(q, k, k, mesh=rk.make_mesh(sp=8), window=1024)
    assert "window 1024 (ring hops: 1 forward + 1 backward of 7)" in line


def test_kernel_bounds_cover_exactly_the_window():
    """Per row tile the Pallas kernels loop over first..end with an unmasked run inside."""
    q_rows = device_positions(3, 512, 4, "contiguous")  # positions 1536..2047
    k_pos = device_positions(2, 512, 4, "contiguous")  # the previous device's 1024..1535
    first, full_from, full_to, end = map(np.asarray, row_bounds(q_rows, k_pos, 64, 64, True, 200))
    # Row tile i (1536 + 64i ..) sees keys from 1536 + 64i - 199: key tiles from 5 + i - 4.
    assert first.tolist() == [4, 5, 6, 7, 8, 8, 8, 8]
    assert end.tolist() == [8, 8, 8, 8, 8, 8, 8, 8]
    assert (full_from <= full_to).all() and (first <= full_from).all() and (full_to <= end).all()
    kfirst, _, _, kend = map(np.asarray, key_bounds(q_rows, k_pos, 64, 64, True, 200))
    assert kfirst.tolist() == [8, 8, 8, 8, 0, 0, 0, 0] and kend.tolist() == [8] * 4 + [1, 2, 3, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=0), "positive integer"),
    (dict(window=2.5), "positive integer"),
    (dict(window=True), "positive integer"),
    (dict(window=16, causal=False), "causal=True"),
])
def test_bad_windows_are_refused(kwargs, message):
    q = jnp.zeros((1, 64, 2, 16))
    with pytest.raises(ConfigError, match=message):
        rk.ring_attention(q, q, q, mesh=rk.make_mesh(sp=2, devices=jax.devices()[:2]), **kwargs)


def test_a_window_covering_the_sequence_is_causal(rng):
    mesh = rk.make_mesh(sp=4, devices=jax.devices()[:4])
    q, k, v = qkv(rng, 1, 128, 2, 2, 16)
    np.testing.assert_array_equal(rk.ring_attention(q, k, v, mesh=mesh, window=128),
                                  rk.ring_attention(q, k, v, mesh=mesh))


def test_the_mosaic_forward_refuses_a_window_and_triton_runs_it():
    q = jnp.zeros((1, 256, 2, 64), jnp.bfloat16)
    mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match="Mosaic GPU forward has no sliding window"):
        rk.ring_attention(q, q, q, mesh=mesh, impl="pallas", interpret="gpu", window=64,
                          block_sizes=rk.BlockSizes(gpu_forward="mosaic"))
    line = rk.attention.describe(q, q, q, mesh=mesh, impl="pallas", interpret="gpu", window=64)
    assert "Triton forward and backward" in line and "window 64" in line


@pytest.mark.parametrize("sp, scan", [(1, False), (8, True)])
def test_local_layers_cache_only_the_window(sp, scan, rng):
    """A prefill longer than the window keeps only its last ``window`` tokens for local layers
    (``ceil(window / sp)`` slots per device, then the same room), whether its layers are
    scanned or not; decode steps of one and of several tokens on that cache give the full
    sequence's logits, rows of unequal length included. A window as long as a device's chunk
    keeps the whole cache."""
    from ringkit.attention.decode import window_slots
    from ringkit.model import Model, ModelConfig, Runtime

    window = int(rng.integers(9, 40))
    kinds = ["sliding_attention"] * 3
    kinds[int(rng.integers(3))] = "full_attention"
    cfg = ModelConfig(name="mixed", vocab_size=300, d_model=64, n_layers=3, n_heads=4,
                      n_kv_heads=2, head_dim=16, ffn_dim=128, max_position=2048,
                      rope_theta=10000.0, sliding_window=window, layer_types=tuple(kinds))
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    model = Model.init_random(cfg, Runtime(mesh, scan_layers=scan), seed=int(rng.integers(100)))
    rows = [rng.integers(2, 300, int(n)).tolist() for n in rng.integers(130, 220, 2)]
    new = rng.integers(2, 300, (2, 10))
    _, cache = model.prefill(rows, max_new_tokens=11)
    assert cache.window_base == window_slots(window, sp) < cache.base
    room = cache.slots // sp - cache.base
    for a, local in zip(cache.k, cfg.local_layers):
        assert a.shape[2] == sp * ((cache.window_base if local else cache.base) + room)
    steps = np.stack([np.asarray(model.step(cache, new[:, t:t + 1])) for t in range(6)], 1)
    last = np.asarray(model.step(cache, new[:, 6:]))          # four tokens in one step
    for i, row in enumerate(rows):
        full = np.asarray(model.logits(row + new[i].tolist()))[0]
        want = np.concatenate([full[len(row):len(row) + 6], full[-1:]])
        got = np.concatenate([steps[i], last[i:i + 1]])
        assert rel_err(got, want) < 1e-5, rel_err(got, want)

    wide = Model(dataclasses.replace(cfg, sliding_window=sp * cache.base), model.variables,
                 None, model.runtime)
    _, cache = wide.prefill(rows, max_new_tokens=2)
    assert cache.window_base == 0 and cache.window_pos is None
