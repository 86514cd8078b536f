"""Ring attention against the float64 dense reference: outputs and gradients, fresh random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.attention import attention_reference
from helpers import f64, qkv, rel_err, segments

# (sp, batch, seq, q_heads, kv_heads, head_dim, causal, layout, segments, block)
CASES = [
    (1, 1, 128, 4, 4, 64, True, "zigzag", False, None),
    (1, 2, 96, 6, 2, 64, False, "contiguous", True, 16),
    (2, 2, 256, 4, 4, 64, True, "zigzag", False, 32),
    (2, 1, 192, 8, 1, 128, True, "contiguous", True, None),
    (4, 1, 256, 6, 2, 64, True, "zigzag", True, 16),
    (4, 2, 120, 3, 1, 64, False, "zigzag", False, None),
    (4, 1, 256, 8, 1, 64, True, "contiguous", False, 32),
    (8, 2, 256, 6, 2, 64, True, "zigzag", True, 8),
    (8, 1, 512, 8, 8, 128, True, "zigzag", False, None),
    (8, 1, 240, 8, 1, 64, True, "zigzag", False, 15),
    (8, 2, 128, 3, 3, 128, False, "contiguous", True, None),
    (8, 1, 384, 16, 2, 64, False, "zigzag", True, 8),
    (8, 2, 256, 4, 4, 64, True, "contiguous", True, 16),
]


def _ids(case):
    sp, b, s, hq, hkv, d, causal, layout, seg, block = case
    return (f"sp{sp}-b{b}-s{s}-g{hq // hkv}-d{d}-{'causal' if causal else 'full'}-{layout}"
            f"{'-seg' if seg else ''}-blk{block}")


def _run(case, rng, dtype):
    sp, b, s, hq, hkv, d, causal, layout, seg, block = case
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    q, k, v = qkv(rng, b, s, hq, hkv, d, dtype)
    seg_ids = segments(rng, b, s) if seg else None
    cot = rng.standard_normal(q.shape).astype(np.float32)

    def ring(q, k, v):
        return rk.ring_attention(q, k, v, mesh=mesh, causal=causal, layout=layout,
                                 segment_ids=seg_ids, block_q=block, block_k=block)

    def ref(q, k, v):
        return attention_reference(q, k, v, causal=causal, segment_ids=seg_ids)

    out, pull = jax.vjp(ring, q, k, v)
    grads = pull(jnp.asarray(cot, out.dtype))
    out_ref, pull_ref = jax.vjp(ref, *f64(q, k, v))
    grads_ref = pull_ref(jnp.asarray(cot, jnp.float64))
    assert out.dtype == dtype and out.shape == q.shape
    return [rel_err(out, out_ref)] + [rel_err(g, gr) for g, gr in zip(grads, grads_ref)]


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float32_matches_reference(case, rng):
    errs = _run(case, rng, np.float32)
    assert max(errs) < 1e-5, f"relative errors out, dq, dk, dv = {errs}"


@pytest.mark.parametrize("case", [CASES[2], CASES[7], CASES[9]], ids=_ids)
def test_bfloat16_matches_reference(case, rng):
    errs = _run(case, rng, jnp.bfloat16)
    assert max(errs) < 1e-2, f"relative errors out, dq, dk, dv = {errs}"


def test_layouts_give_identical_results(rng):
    mesh = rk.make_mesh(sp=8)
    q, k, v = qkv(rng, 1, 256, 4, 2, 64)
    outs = [rk.ring_attention(q, k, v, mesh=mesh, layout=lay) for lay in rk.attention.LAYOUTS]
    assert rel_err(outs[0], outs[1]) < 1e-6


def test_permuted_entry_matches_natural(rng):
    """A model permutes once, calls the permuted entry per layer, and permutes back."""
    sp, layout = 8, "zigzag"
    mesh = rk.make_mesh(sp=sp)
    q, k, v = qkv(rng, 2, 256, 6, 3, 64)
    natural = rk.ring_attention(q, k, v, mesh=mesh, layout=layout)
    qz, kz, vz = (rk.to_layout(x, sp, layout) for x in (q, k, v))
    permuted = rk.ring_attention_permuted(qz, kz, vz, mesh=mesh, layout=layout)
    np.testing.assert_array_equal(np.asarray(rk.from_layout(permuted, sp, layout)), natural)


def test_padding_helper_masks_padding(rng):
    mesh = rk.make_mesh(sp=8)
    q, k, v = qkv(rng, 1, 250, 4, 4, 64)
    qp, kp, vp, seg, n = rk.pad_for_ring(q, k, v, sp=8)
    assert qp.shape[1] % 16 == 0 and n == 250
    out = rk.ring_attention(qp, kp, vp, mesh=mesh, segment_ids=seg)[:, :n]
    ref = attention_reference(*f64(q, k, v), causal=True)
    assert rel_err(out, ref) < 1e-5


def test_tensor_and_data_parallel_axes(rng):
    """Heads on 'tp' and batch on 'dp'/'fsdp' give the same numbers as pure sequence parallelism."""
    q, k, v = qkv(rng, 2, 128, 8, 2, 64)
    ref = attention_reference(*f64(q, k, v), causal=True)
    for spec in ("2,1,2,2", "1,2,1,4", "1,1,2,4"):
        out = rk.ring_attention(q, k, v, mesh=rk.make_mesh(spec))
        assert rel_err(out, ref) < 1e-5, spec


def test_jit_and_grad_compose(rng):
    mesh = rk.make_mesh(sp=4, devices=jax.devices()[:4])
    q, k, v = qkv(rng, 1, 64, 2, 2, 64)

    @jax.jit
    def loss(q, k, v):
        return jnp.sum(rk.ring_attention(q, k, v, mesh=mesh) ** 2)

    g = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: jnp.sum(attention_reference(*a) ** 2), argnums=(0, 1, 2))(
        *f64(q, k, v))
    assert max(rel_err(a, b) for a, b in zip(g, g_ref)) < 1e-5


@pytest.mark.parametrize("impl", ["xla", "gpu", "tpu"])
def test_nan_and_inf_propagate_as_in_dot_product_attention(impl, rng):
    """A NaN in q or an inf in k makes the rows that read it NaN, forward and backward, as in
    ``jax.nn.dot_product_attention`` (an ``l > 0`` test once turned such rows into exact zeros).

    The inf key is not at position 0: there it can be the only key row 0 sees, with score
    -inf, and dpa (which masks with a finite constant) then averages the masked keys' values,
    an artifact of its masking; ringkit outputs 0 for a row that sees nothing, checked last."""
    mesh = rk.make_mesh(sp=4, devices=jax.devices()[:4])
    q, k, v = qkv(rng, 1, 64, 4, 2, 32)
    q, k = np.array(q), np.array(k)
    q[0, rng.integers(64), rng.integers(4), rng.integers(32)] = np.nan
    k[0, rng.integers(1, 64), rng.integers(2), rng.integers(32)] = np.inf
    kw = {} if impl == "xla" else {"impl": "pallas", "interpret": impl}

    def run(fn):
        out, pull = jax.vjp(fn, q, k, v)
        return [np.asarray(x) for x in (out, *pull(jnp.ones_like(out)))]

    got = run(lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, **kw))
    want = run(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want[0]))
    assert np.isnan(got[0]).any() and not np.isnan(got[0]).all()
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        # Skipped tiles never turn NaN, so a gradient holds NaN where dpa's does, not everywhere.
        assert np.isnan(g).any() == np.isnan(w).any(), name
        both = ~np.isnan(g) & ~np.isnan(w)
        np.testing.assert_allclose(g[both], w[both], atol=2e-5, err_msg=name)

    # Row 0 of head 0 sees only key 0, whose score is -inf: it attends to nothing, output 0.
    q, k = np.array(qkv(rng, 1, 64, 4, 2, 32)[0]), np.array(qkv(rng, 1, 64, 4, 2, 32)[1])
    q[0, 0, 0], k[0, 0, 0] = -1.0, np.inf
    out = np.asarray(rk.ring_attention(q, k, v, mesh=mesh, **kw))
    assert (out[0, 0, 0] == 0).all()
