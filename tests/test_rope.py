"""RoPE: exact tables at large positions, the two pair conventions, scaling variants."""

import math

import jax
import numpy as np
import pytest

from ringkit.errors import ConfigError
from ringkit.model import Rope, RopeScaling, attention_factor, inv_frequencies


def _angles64(positions, inv):
    return np.asarray(positions, np.float64)[..., None] * inv


def test_tables_exact_at_millions_of_positions(rng):
    rope = Rope(128, 5e7, limit=2**24)
    positions = np.concatenate([rng.integers(0, 2**24, 2000), [0, 1, 4095, 4096, 2**24 - 1]])
    cos, sin = rope.cos_sin(positions)
    ref = _angles64(positions, inv_frequencies(128, 5e7))
    assert np.abs(np.asarray(cos, np.float64) - np.cos(ref)).max() < 1e-6
    assert np.abs(np.asarray(sin, np.float64) - np.sin(ref)).max() < 1e-6
    # The naive float32 product that this avoids is far off at these positions.
    naive = np.asarray(positions, np.float32)[:, None] * inv_frequencies(128, 5e7).astype(np.float32)
    assert np.abs(np.cos(naive.astype(np.float64)) - np.cos(ref)).max() > 1e-3


def test_traced_positions_match_host_positions(rng):
    rope = Rope(64, 1e5, limit=1 << 20)
    positions = rng.integers(0, 1 << 20, (2, 16))
    eager = rope.cos_sin(positions)
    jitted = jax.jit(rope.cos_sin)(positions)
    for a, b in zip(eager, jitted):  # equal up to float32 rounding (XLA may fuse multiply-adds)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-7)


def test_conventions_agree_under_pair_permutation(rng):
    """Interleaved RoPE on x equals rotate-half RoPE on x with its pairs regrouped: the relation
    between llama.cpp's stored q/k weights and HF's."""
    d = 64
    x = rng.standard_normal((1, 10, 3, d)).astype(np.float32)
    pos = np.arange(10)[None] * 37
    half = Rope(d, 1e4, limit=1024, convention="half")
    inter = Rope(d, 1e4, limit=1024, convention="interleaved")
    to_half = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])  # (x0,x1,x2,..) -> evens|odds
    a = np.asarray(inter.apply(x, pos))[..., to_half]
    b = np.asarray(half.apply(x[..., to_half], pos))
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("convention", ["half", "interleaved"])
def test_scores_depend_only_on_relative_position(rng, convention):
    rope = Rope(32, 1e4, limit=1 << 16, convention=convention)
    q, k = (rng.standard_normal((1, 1, 1, 32)).astype(np.float32) for _ in range(2))
    def score(m, n):
        return float((np.asarray(rope.apply(q, np.array([[m]]))) *
                      np.asarray(rope.apply(k, np.array([[n]])))).sum())
    base = score(7, 3)
    for shift in (1, 1000, 50_000):
        assert abs(score(7 + shift, 3 + shift) - base) < 1e-4 * max(1.0, abs(base))
    assert np.linalg.norm(np.asarray(rope.apply(q, np.array([[12345]])))) == pytest.approx(
        np.linalg.norm(q), rel=1e-6)


def test_linear_and_ntk_scaling():
    inv = inv_frequencies(64, 1e4)
    np.testing.assert_allclose(inv_frequencies(64, 1e4, RopeScaling("linear", 4.0)), inv / 4)
    ntk = inv_frequencies(64, 1e4, RopeScaling("ntk", 4.0))
    np.testing.assert_allclose(ntk, inv_frequencies(64, 1e4 * 4.0 ** (64 / 62)))
    assert ntk[0] == inv[0] and ntk[-1] < inv[-1]  # highest frequency kept, lowest stretched


def test_yarn_blends_and_tempers():
    yarn = RopeScaling("yarn", 4.0, original_max_position=8192)
    inv = inv_frequencies(64, 1e5)
    scaled = inv_frequencies(64, 1e5, yarn)
    wavelength_turns = 8192 * inv / (2 * math.pi)  # rotations over the trained context
    fast, slow = wavelength_turns > 32, wavelength_turns < 1
    assert fast.any() and slow.any()
    np.testing.assert_allclose(scaled[fast], inv[fast])           # many turns: unchanged
    np.testing.assert_allclose(scaled[slow], inv[slow] / 4.0)     # < 1 turn: interpolated
    assert np.all(scaled <= inv + 1e-18) and np.all(scaled >= inv / 4.0 - 1e-18)
    assert attention_factor(yarn) == pytest.approx(0.1 * math.log(4.0) + 1.0)
    cos, sin = Rope(64, 1e5, limit=32768, scaling=yarn).cos_sin(np.array([5000]))
    assert np.allclose(np.asarray(cos) ** 2 + np.asarray(sin) ** 2, attention_factor(yarn) ** 2)


def test_bad_rope_settings():
    with pytest.raises(ConfigError, match="unknown RoPE scaling 'dynamic'"):
        RopeScaling("dynamic", 2.0)
    with pytest.raises(ConfigError, match=">= 1"):
        RopeScaling("linear", 0.5)
    with pytest.raises(ConfigError, match="original_max_position"):
        inv_frequencies(64, 1e4, RopeScaling("yarn", 2.0))  # load_model fills it in
    with pytest.raises(ConfigError, match="convention"):
        Rope(64, 1e4, limit=10, convention="neox")
