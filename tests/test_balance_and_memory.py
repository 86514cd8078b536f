"""Causal load balance of the layouts, skipped tiles, and O(seq / sp) memory per device."""

import jax
import jax.numpy as jnp

import ringkit as rk
from ringkit.attention import tiles_per_device


def test_zigzag_balances_causal_work():
    zig = tiles_per_device(16384, 8, "zigzag")
    con = tiles_per_device(16384, 8, "contiguous")
    assert zig.max() / zig.mean() <= 1.05
    assert 1.7 < con.max() / con.mean() < 1.9
    # Tiles the causal mask hides are never computed: about half of all tiles.
    total = (16384 // 256) ** 2
    assert zig.sum() < 0.55 * total and con.sum() < 0.55 * total
    assert (tiles_per_device(16384, 8, "zigzag", causal=False) == total // 8).all()


def _temp_bytes(fn, *shapes):
    return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def _temps(seq, n_dev, heads=2, d=64):
    """Per-device temp bytes of the compiled forward and forward+backward ring."""
    shape = jax.ShapeDtypeStruct((1, seq, heads, d), jnp.float32)
    mesh = rk.make_mesh(sp=n_dev, devices=jax.devices()[:n_dev])
    attn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh)
    loss = lambda q, k, v: attn(q, k, v).sum()
    return (_temp_bytes(attn, shape, shape, shape),
            _temp_bytes(jax.grad(loss, argnums=(0, 1, 2)), shape, shape, shape))


def test_no_seq_by_seq_array_and_memory_halves_with_sp():
    """Temp memory is far below one [seq/sp, seq/sp] float32 block and halves (within 15%) when
    sp doubles. Exception: the backward from sp=2 to 4, where sp=2 is a single hop that XLA
    compiles without the ring loop's double buffers (smaller than the trend); it still shrinks."""
    seq = 16384
    temps = {sp: _temps(seq, sp) for sp in (2, 4, 8)}
    for sp, (fwd, bwd) in temps.items():
        local_square = (seq // sp) ** 2 * 4
        assert fwd < local_square and bwd < local_square, (sp, fwd, bwd, local_square)
    for small, big in ((2, 4), (4, 8)):
        assert 0.35 < temps[big][0] / temps[small][0] < 0.575, temps
    assert 0.35 < temps[8][1] / temps[4][1] < 0.575, temps
    assert temps[4][1] < 0.8 * temps[2][1], temps
