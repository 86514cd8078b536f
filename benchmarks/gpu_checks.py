"""The Mosaic GPU forward's smoke test, in processes of its own (``attention_gpu.py`` runs it
before anything else): a kernel that deadlocks on a GPU hangs the process it runs in, and must
not take a timed run with it. The kernels' correctness is the tests' (``pytest
tests/test_pallas_gpu.py tests/test_pallas_mgpu.py -m "slow or not slow"`` runs them natively on
a GPU; ``attention_gpu.py`` does that first)."""

from __future__ import annotations

import functools
import math
import os
import pathlib
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np

from ringkit.attention import blockwise, pallas_gpu, pallas_mgpu
from ringkit.attention.layouts import device_positions
from ringkit.attention.ring import _heads_major, _seq_major  # the ring's kernel layout


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if not np.isfinite(x).all():
        return float("nan")
    return float(np.abs(x - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# The Mosaic forward's smoke test: a reference for it.


def reference_f64(q, k, v, causal, seg, cot):
    """Dense attention and its gradients in float64 numpy. q [b,s,hq,d], k/v [b,s,hkv,d]."""
    q, k, v, cot = (np.asarray(x, np.float64) for x in (q, k, v, cot))
    b, s, hq, d = q.shape
    g = hq // k.shape[2]
    kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    sc = np.einsum("bqhd,bkhd->bhqk", q, kr) / math.sqrt(d)
    mask = np.ones((1, 1, s, s), bool)
    if causal:
        mask = mask & np.tril(np.ones((s, s), bool))[None, None]
    if seg is not None:
        mask = mask & (seg[:, None, :, None] == seg[:, None, None, :])
    sc = np.where(mask, sc, -np.inf)
    peak = sc.max(-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    p = np.exp(sc - peak)
    tot = p.sum(-1, keepdims=True)
    p = p / np.where(tot > 0, tot, 1.0)
    out = np.einsum("bhqk,bkhd->bqhd", p, vr)
    do = cot
    dv = np.einsum("bhqk,bqhd->bkhd", p, do)
    dp = np.einsum("bqhd,bkhd->bhqk", do, vr)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", ds, kr) / math.sqrt(d)
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) / math.sqrt(d)
    fold = lambda x: x.reshape(b, s, hq // g, g, d).sum(3)
    return out, dq, fold(dk), fold(dv)


def two_folds(rng, dtype, blocks, interpret, lowering=None):
    """Relative error of folding two zigzag KV blocks into one carry against one dense pass.
    ``lowering`` runs the Mosaic forward (default tiles) under that Pallas lowering instead of
    the kernel ``blocks`` picks."""
    sp, n, g = 4, 512, 3
    spec = blockwise.TileSpec(True, g, 128, 128)
    seen = lambda x: np.asarray(jnp.asarray(x, dtype), np.float32)  # what the kernel sees
    qh = seen(rng.standard_normal((1, 2, n * g, 64)) / 8)
    ks = [seen(rng.standard_normal((1, 2, n, 64))) for _ in range(2)]
    vs = [seen(rng.standard_normal((1, 2, n, 64))) for _ in range(2)]
    qp, kps = device_positions(2, n, sp, "zigzag"), [device_positions(j, n, sp, "zigzag")
                                                      for j in (1, 2)]
    if lowering is None:
        fold = functools.partial(pallas_gpu.fold_block, blocks=blocks, interpret=interpret)
    else:
        fold = functools.partial(pallas_mgpu.fold_block, interpret=interpret,
                                 sizes=pallas_mgpu.MosaicSizes(lowering=lowering))
    carry = None
    for kk, vv, kp in zip(ks, vs, kps):
        carry = fold(jnp.asarray(qh, dtype), jnp.asarray(kk, dtype), jnp.asarray(vv, dtype),
                     carry, blockwise.MaskIds(qp, kp), spec)
    out, _ = blockwise.finish(*carry, jnp.float32)
    kk, vv, kp = np.concatenate(ks, 2), np.concatenate(vs, 2), np.concatenate(kps)
    sc = np.einsum("bhrd,bhkd->bhrk", qh.astype(np.float64), kk)
    vis = np.repeat(np.asarray(qp), g)[:, None] >= np.asarray(kp)[None, :]
    sc = np.where(vis, sc, -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    want = np.einsum("bhrk,bhkd->bhrd", p / p.sum(-1, keepdims=True), vv)
    return rel(out, want)


# ---------------------------------------------------------------------------------------------
# A first run of the Mosaic forward in a process of its own: a kernel that deadlocks on the GPU
# hangs the process it runs in, and must not take the rest of a timed run with it.


def mosaic_smoke(lowerings=("lane",), timeout_s=150, log_dir=None):
    """``{lowering: (ok, message)}`` from ``python gpu_checks.py --smoke LOWERING``, one process
    per lowering, all at once, each under ``timeout_s``. The processes leave the GPU's memory
    unreserved (the caller's JAX already holds most of it). ``log_dir``: each process's whole
    output goes to ``mosaic-smoke-LOWERING.log`` there."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if log_dir is not None:
        pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
    procs = {lw: subprocess.Popen([sys.executable, __file__, "--smoke", lw], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for lw in lowerings}
    deadline, results = time.time() + timeout_s, {}
    for lowering, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            results[lowering] = (False, f"no answer in {timeout_s} s (a hang?)")
        else:
            last = (out.strip().splitlines() or [""])[-1]
            errors = [line for line in err.splitlines() if "Error" in line]
            ok = proc.returncode == 0 and last.startswith("smoke OK")
            results[lowering] = (ok, last if ok or last else
                                 (errors[-1] if errors else err.strip()[-600:]))
        if log_dir is not None:
            pathlib.Path(log_dir, f"mosaic-smoke-{lowering}.log").write_text(
                f"$ gpu_checks.py --smoke {lowering}: exit {proc.returncode}\n"
                f"--- stdout\n{out}\n--- stderr\n{err[-200_000:]}\n")
    return results


def _smoke(lowering="lane", interpret=False):
    """The Mosaic forward under one Pallas lowering, on the GPU, small: a fresh fold and a fold
    into a carry (``two_folds``), and a causal GQA fold that finishes the softmax in the kernel.
    ``interpret=True``: the same on CPU in JAX's Mosaic GPU interpreter (a dry run)."""
    rng = np.random.default_rng(0)
    folds = two_folds(rng, jnp.bfloat16, None, interpret, lowering=lowering)
    b, n, hkv, g, d = 1, 1024, 2, 2, 128
    q = rng.standard_normal((b, n, hkv * g, d)).astype(np.float32)
    k, v = (rng.standard_normal((b, n, hkv, d)).astype(np.float32) for _ in range(2))
    q, k, v = (np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (q, k, v))
    ref = reference_f64(q, k, v, True, None, q)[0]  # [b, n, hq, d]
    # The kernel's layout, as the ring makes it: [b, hkv, n * g, d], each GQA group in rows.
    qh, kh, vh = (jnp.asarray(_heads_major(x, gr), jnp.bfloat16)
                  for x, gr in ((q / math.sqrt(d), g), (k, 1), (v, 1)))
    pos = jnp.arange(n, dtype=jnp.int32)
    out, _ = pallas_mgpu.fold_block(
        qh, kh, vh, None, blockwise.MaskIds(pos, pos), blockwise.TileSpec(True, g, 128, 128),
        final_dtype=jnp.float32, sizes=pallas_mgpu.MosaicSizes(lowering=lowering),
        interpret=interpret)
    final = rel(_seq_major(out, g), ref)
    ok = folds <= 3e-2 and final <= 3e-2
    print(f"smoke {'OK' if ok else 'FAIL'} ({lowering} lowering): two folds into one carry "
          f"{folds:.1e}, a causal GQA fold finished in the kernel {final:.1e}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__" and sys.argv[1:2] == ["--smoke"]:
    _smoke(*sys.argv[2:3])
