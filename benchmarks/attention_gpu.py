"""The Pallas GPU kernels on a real GPU: correctness, then throughput against cuDNN and XLA.

    PYTHONPATH=. python3 benchmarks/attention_gpu.py --out results/    # on a GPU machine

1. Correctness on the GPU, fresh random inputs: the kernels (forward, dq, dk/dv) against the
   float64 reference (numpy on the host) and against ``impl="xla"`` on the GPU; float32 and bf16;
   causal, GQA, segments, two folds of zigzag KV blocks into one carry.
2. The same-run bf16 matmul rate (8192^3), the ceiling the kernels are judged against.
3. A block-size sweep at 16K (forward and backward), then, with the best sizes, for S = 8K..64K
   (bf16, batch 1, 16 heads, head_dim 128, causal): medians of
   - the kernels alone on heads-major inputs (``pallas_gpu.fold_block`` / ``grad_block``),
   - ``ringkit.ring_attention(impl="pallas")`` as a user calls it (sp = 1, layout permutes and
     head transposes included), and ``impl="xla"`` where it runs in reasonable time,
   - ``jax.nn.dot_product_attention(implementation="cudnn")``, and JAX's own Pallas Triton
     flash attention (``pallas.ops.gpu.attention.mha``, forward) as a same-toolchain yardstick.
   Flops: forward ``4 * b * h * S^2 * d / 2`` (causal triangle), backward 2.5x that.
Writes ``attention-gpu-<timestamp>.json`` and ``.md`` into ``--out``. ``--interpret`` runs the
same script on CPU in interpret mode at toy sizes (a dry run before spending GPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import ringkit as rk
from ringkit.attention import blockwise, pallas_gpu
from ringkit.attention.layouts import device_positions

H, D = 16, 128
INTERPRET = False  # --interpret: the GPU kernels in interpret mode, for a dry run on CPU


def timed(fn, args, repeats):
    """Median seconds of ``fn(*args)`` (jitted, warmed up), synchronised on the outputs."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    jax.block_until_ready(f(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if not np.isfinite(x).all():
        return float("nan")
    return float(np.abs(x - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------------------------------------
# 1. Correctness.


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


def check_correctness(rng, log):
    mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    rows = []
    cases = [  # (b, s, hq, hkv, d, causal, segments, dtype, tolerance)
        (1, 1024, 4, 4, 128, True, False, jnp.float32, 1e-5),
        (2, 512, 8, 2, 64, True, True, jnp.float32, 1e-5),
        (1, 768, 6, 2, 80, False, True, jnp.float32, 1e-5),
        (1, 2048, 8, 8, 128, True, False, jnp.bfloat16, 3e-2),
        (2, 1024, 12, 4, 64, True, True, jnp.bfloat16, 3e-2),
    ]
    for b, s, hq, hkv, d, causal, seg, dtype, tol in cases:
        s = s // 8 if INTERPRET else s  # toy sizes for the CPU dry run
        q = rng.standard_normal((b, s, hq, d)).astype(np.float32)
        k, v = (rng.standard_normal((b, s, hkv, d)).astype(np.float32) for _ in range(2))
        sg = np.sort(rng.integers(0, 3, (b, s)), 1).astype(np.int32) if seg else None
        cot = rng.standard_normal(q.shape).astype(np.float32)
        args = [jnp.asarray(x, dtype) for x in (q, k, v)]
        qd, kd, vd = (np.asarray(x, np.float32) for x in args)  # what the kernel actually sees
        ref = reference_f64(qd, kd, vd, causal, sg, cot)
        results = {}
        for impl in ("pallas", "xla"):
            fn = lambda q, k, v, impl=impl: rk.ring_attention(
                q, k, v, mesh=mesh, causal=causal, segment_ids=sg, impl=impl,
                interpret="gpu" if INTERPRET and impl == "pallas" else None)
            out, pull = jax.vjp(fn, *args)
            results[impl] = (out, *pull(jnp.asarray(cot, dtype)))
        errs = [rel(x, r) for x, r in zip(results["pallas"], ref)]
        vs_xla = [rel(x, r) for x, r in zip(results["pallas"], results["xla"])]
        xla_errs = [rel(x, r) for x, r in zip(results["xla"], ref)]
        ok = all(e <= tol for e in errs)
        rows.append(dict(case=dict(b=b, s=s, hq=hq, hkv=hkv, d=d, causal=causal, segments=seg,
                                   dtype=jnp.dtype(dtype).name),
                         tol=tol, ok=ok, err_out_dq_dk_dv=errs, xla_err=xla_errs,
                         pallas_vs_xla=vs_xla))
        log(f"check b{b} s{s} {hq}q/{hkv}kv d{d} {'causal' if causal else 'full'}"
            f"{' seg' if seg else ''} {jnp.dtype(dtype).name}: vs f64 "
            + " ".join(f"{e:.1e}" for e in errs) + f" (xla {max(xla_errs):.1e}) "
            + ("OK" if ok else f"FAIL > {tol}"))

    # Two zigzag blocks folded into one carry, then finished, against one dense pass.
    sp, n, g = 4, 512, 3
    spec = blockwise.TileSpec(True, g, 128, 128)
    qh = rng.standard_normal((1, 2, n * g, 64)).astype(np.float32) / 8
    ks = [rng.standard_normal((1, 2, n, 64)).astype(np.float32) for _ in range(2)]
    vs = [rng.standard_normal((1, 2, n, 64)).astype(np.float32) for _ in range(2)]
    qp, kps = device_positions(2, n, sp, "zigzag"), [device_positions(j, n, sp, "zigzag")
                                                      for j in (1, 2)]
    carry = None
    for kk, vv, kp in zip(ks, vs, kps):
        carry = pallas_gpu.fold_block(jnp.asarray(qh), jnp.asarray(kk), jnp.asarray(vv), carry,
                                      qp, kp, None, None, spec, interpret=INTERPRET)
    out, _ = blockwise.finish(*carry, jnp.float32)
    kk, vv, kp = np.concatenate(ks, 2), np.concatenate(vs, 2), np.concatenate(kps)
    sc = np.einsum("bhrd,bhkd->bhrk", qh.astype(np.float64), kk)
    vis = np.repeat(np.asarray(qp), g)[:, None] >= np.asarray(kp)[None, :]
    sc = np.where(vis, sc, -np.inf)
    p = np.exp(sc - sc.max(-1, keepdims=True))
    want = np.einsum("bhrk,bhkd->bhrd", p / p.sum(-1, keepdims=True), vv)
    e = rel(out, want)
    rows.append(dict(case="two zigzag folds, GQA 3", err=e, ok=e <= 1e-5))
    log(f"check two zigzag folds into one carry, GQA 3: {e:.1e} {'OK' if e <= 1e-5 else 'FAIL'}")
    return rows


# ---------------------------------------------------------------------------------------------
# 2-3. Throughput.


def matmul_rate(key):
    a = jax.random.normal(key, (8192, 8192), jnp.bfloat16)
    b = jax.random.normal(jax.random.fold_in(key, 1), (8192, 8192), jnp.bfloat16)
    t = timed(lambda a, b: a @ b, (a, b), 20)
    return 2 * 8192 ** 3 / t / 1e12


def flops_forward(s):
    return 4 * H * D * s * s / 2


def kernel_fns(s, blocks):
    """Forward and backward of the kernels alone on heads-major inputs (one KV head per head)."""
    spec = blockwise.TileSpec(True, 1, 128, 128)
    pos = jnp.arange(s, dtype=jnp.int32)

    def fwd(q, k, v):
        return pallas_gpu.fold_block(q, k, v, None, pos, pos, None, None, spec,
                                     final_dtype=q.dtype, blocks=blocks, interpret=INTERPRET)

    def bwd(q, k, v, do, lse, delta):
        zeros = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v))
        return pallas_gpu.grad_block(q, k, v, do, lse, delta, zeros, pos, pos, None, None, spec,
                                     blocks=blocks, interpret=INTERPRET)

    return fwd, bwd


def kernel_inputs(key, s):
    shape = (1, H, s, D)
    q, k, v, do = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.bfloat16)
                   for i in range(4))
    return (q.astype(jnp.float32) / math.sqrt(D)).astype(jnp.bfloat16), k, v, do


def kernel_fwd_time(key, s, blocks, repeats):
    q, k, v, _ = kernel_inputs(key, s)
    return timed(kernel_fns(s, blocks)[0], (q, k, v), repeats)


def kernel_bwd_time(key, s, blocks, repeats):
    q, k, v, do = kernel_inputs(key, s)
    fwd, bwd = kernel_fns(s, blocks)
    out, lse = jax.jit(fwd)(q, k, v)
    delta = jnp.einsum("bhrd,bhrd->bhr", out.astype(jnp.float32), do.astype(jnp.float32))
    return timed(bwd, (q, k, v, do, lse, delta), repeats)


def user_times(key, s, impl, repeats, blocks=None, backward=True):
    """ring_attention (sp=1) or cuDNN as a user calls them: [b, s, h, d] bf16."""
    shape = (1, s, H, D)
    q, k, v, cot = (jax.random.normal(jax.random.fold_in(key, i), shape, jnp.bfloat16)
                    for i in range(4))
    if impl == "cudnn":
        fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                          implementation="cudnn")
    elif impl == "jax-pallas":  # JAX's own Pallas Triton flash attention, a same-run yardstick
        from jax.experimental.pallas.ops.gpu import attention as mha_ops

        fn = lambda q, k, v: mha_ops.mha(q, k, v, None, sm_scale=1 / math.sqrt(D), causal=True,
                                         block_sizes=mha_ops.BlockSizes(block_q=128, block_k=64))
    else:
        mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
        interpret = "gpu" if INTERPRET and impl == "pallas" else None
        fn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, causal=True, impl=impl,
                                               interpret=interpret, block_sizes=blocks)
    t_fwd = timed(fn, (q, k, v), repeats)
    if not backward:
        return t_fwd, None

    def both(q, k, v, cot):
        out, pull = jax.vjp(fn, q, k, v)
        return out, pull(cot)

    return t_fwd, timed(both, (q, k, v, cot), repeats)


SWEEP_FWD = [  # (block_q, block_k, warps, stages)
    (128, 64, 8, 2), (128, 128, 8, 2), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 3),
    (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3), (128, 128, 4, 2),
]
SWEEP_BWD = [  # (block_q_dq, block_k_dq, block_q_dkv, block_k_dkv, warps, stages)
    (128, 128, 64, 128, 8, 2), (64, 64, 64, 64, 4, 3), (128, 64, 64, 128, 8, 2),
    (64, 128, 64, 128, 8, 2), (128, 128, 128, 128, 8, 2), (64, 64, 32, 128, 4, 2),
    (128, 64, 64, 64, 8, 3),
]


def sweep(key, s, repeats, log, interpret):
    """Best forward and backward BlockSizes at sequence length ``s`` (kernels alone)."""
    runs, best = [], {}
    for part, configs in (("fwd", SWEEP_FWD), ("bwd", SWEEP_BWD)):
        for cfg in configs[:2] if interpret else configs:
            if part == "fwd":
                bq, bk, w, st = cfg
                blocks = rk.BlockSizes(block_q=bq, block_k=bk, num_warps=w, num_stages=st)
                fn, mult = kernel_fwd_time, 1.0
            else:
                bq, bk, bqd, bkd, w, st = cfg
                blocks = rk.BlockSizes(block_q_dq=bq, block_k_dq=bk, block_q_dkv=bqd,
                                       block_k_dkv=bkd, num_warps_bwd=w, num_stages_bwd=st)
                fn, mult = kernel_bwd_time, 2.5
            try:
                t = fn(key, s, blocks, repeats)
            except Exception as e:  # a config Triton cannot compile (shared memory, registers)
                log(f"sweep {part} {cfg}: failed: {type(e).__name__}: "
                    f"{str(e).splitlines()[0][:160]}")
                continue
            runs.append(dict(part=part, config=list(cfg), seconds=t))
            log(f"sweep {part} S={s} {cfg}: {mult * flops_forward(s) / t / 1e12:.0f} TFLOP/s")
            if part not in best or t < best[part][0]:
                best[part] = (t, blocks)
    return runs, best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="8192,16384,32768,65536")
    ap.add_argument("--xla-max", type=int, default=16384, help="longest S timed with impl='xla'")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    ap.add_argument("--sweep-seq", type=int, default=16384)
    ap.add_argument("--interpret", action="store_true", help="dry run on CPU in interpret mode")
    args = ap.parse_args()
    global INTERPRET
    INTERPRET = args.interpret
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    dev = jax.devices()[0]
    log(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
        f"{len(jax.devices())} device(s)")
    rng, key = np.random.default_rng(), jax.random.key(int(time.time()))
    result = dict(device=dev.device_kind, jax=jax.__version__, heads=H, head_dim=D,
                  when=datetime.datetime.now().isoformat(timespec="seconds"))
    try:
        result["correctness"] = check_correctness(rng, log)
    except Exception:
        log("correctness check crashed:\n" + traceback.format_exc())
    result["matmul_tflops_start"] = rate = matmul_rate(key)
    log(f"bf16 matmul 8192^3: {rate:.0f} TFLOP/s")
    write(result, lines, args.out)

    runs, best = sweep(key, args.sweep_seq, args.repeats, log, INTERPRET)
    result["sweep"] = dict(seq=args.sweep_seq, runs=runs)
    write(result, lines, args.out)
    if len(best) < 2:
        log("no configuration ran")
        return write(result, lines, args.out)
    blocks, bwd_blocks = best["fwd"][1], best["bwd"][1]
    result["best"] = dict(forward=dataclasses.asdict(blocks), backward=dataclasses.asdict(bwd_blocks))
    log(f"best forward {blocks}; best backward {bwd_blocks}")
    # The ring as a user calls it: forward tiles from the forward sweep, the rest from the backward.
    ring_blocks = dataclasses.replace(bwd_blocks, block_q=blocks.block_q, block_k=blocks.block_k,
                                      num_warps=blocks.num_warps, num_stages=blocks.num_stages)

    table = []
    for s in (int(x) for x in args.seqs.split(",")):
        reps = max(3, args.repeats if s <= 16384 else args.repeats // 2)
        row = dict(seq=s, fwd_flop=flops_forward(s))
        try:
            row["kernel_fwd_s"] = kernel_fwd_time(key, s, blocks, reps)
            row["kernel_bwd_s"] = kernel_bwd_time(key, s, bwd_blocks, reps)
            if not INTERPRET:
                row["cudnn_fwd_s"], row["cudnn_fwdbwd_s"] = user_times(key, s, "cudnn", reps)
            row["ring_fwd_s"], row["ring_fwdbwd_s"] = user_times(key, s, "pallas", reps,
                                                                 ring_blocks)
            try:
                row["jaxpallas_fwd_s"], _ = user_times(key, s, "jax-pallas", reps, backward=False)
            except Exception as e:
                log(f"jax's Pallas mha at S={s} failed: {type(e).__name__}: {str(e)[:200]}")
            if s <= args.xla_max:
                row["xla_fwd_s"], row["xla_fwdbwd_s"] = user_times(
                    key, s, "xla", 3, backward=s <= args.xla_max // 2)
        except Exception:
            log(f"S={s} crashed:\n" + traceback.format_exc()[-1500:])
        table.append(row)
        f = row["fwd_flop"]
        tf = lambda name, mult=1.0: (f"{mult * f / row[name] / 1e12:6.0f}"
                                     if row.get(name) else "     -")
        cudnn_bwd = (row["cudnn_fwdbwd_s"] - row["cudnn_fwd_s"]) if "cudnn_fwdbwd_s" in row else None
        row["cudnn_bwd_s"] = cudnn_bwd
        log(f"S={s:6d} TFLOP/s  kernel fwd {tf('kernel_fwd_s')} bwd {tf('kernel_bwd_s', 2.5)} | "
            f"cudnn fwd {tf('cudnn_fwd_s')} bwd {tf('cudnn_bwd_s', 2.5)} | ring(pallas) fwd "
            f"{tf('ring_fwd_s')} fwd+bwd {tf('ring_fwdbwd_s', 3.5)} | ring(xla) fwd "
            f"{tf('xla_fwd_s')} fwd+bwd {tf('xla_fwdbwd_s', 3.5)} | jax's pallas mha fwd "
            f"{tf('jaxpallas_fwd_s')}")
        result["table"] = table
        write(result, lines, args.out)
    result["table"] = table
    result["matmul_tflops_end"] = matmul_rate(key)
    log(f"bf16 matmul at the end: {result['matmul_tflops_end']:.0f} TFLOP/s")
    write(result, lines, args.out)


STAMP = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")


def write(result, lines, out):
    """(Re)write this run's files: called after every section, so a run cut off by a time limit
    still leaves what it measured."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = STAMP
    (out / f"attention-gpu-{stamp}.json").write_text(json.dumps(result, indent=1))
    (out / f"attention-gpu-{stamp}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/attention-gpu-{stamp}.json", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
