"""Shared test helpers: random attention inputs and error measures."""

import jax.numpy as jnp
import numpy as np


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
