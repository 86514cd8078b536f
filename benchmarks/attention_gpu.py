"""The Pallas GPU kernels on a real GPU: their tests run natively, then throughput against cuDNN
and XLA.

    PYTHONPATH=. python3 benchmarks/attention_gpu.py --out results/    # on a GPU machine

0. The Mosaic GPU forward's smoke test (``gpu_checks.mosaic_smoke``) in processes of their own,
   one per Pallas lowering ("lane", the library's default, and "warpgroup"), side by side: a
   lowering that fails or hangs is left out of everything below; each process's output is kept
   in ``--out`` as ``mosaic-smoke-LOWERING.log``.
1. Correctness on the GPU: the kernels' tests, natively (``tests/test_pallas_gpu.py`` and
   ``tests/test_pallas_mgpu.py``, slow cases included): forward, dq, dk/dv against the float64
   reference and ``impl="xla"``; float32 and bf16; causal, GQA, segments, zigzag folds.
2. The same-run bf16 matmul rate (8192^3), the ceiling the kernels are judged against.
3. A sweep at 32K (``--sweep-seq``, capped at ``--sweep-budget`` seconds; 0 skips it): cuDNN's
   forward, the yardstick of every line that follows; the Mosaic GPU forward's key tiles, stages
   and lowering (``pallas_mgpu.MosaicSizes``); the Triton forward's tiles and launches; then the
   dq and dk/dv kernels timed apart, per tile and launch.
4. With the best sizes, for S = 8K..64K (bf16, batch 1, 16 heads, head_dim 128, causal): medians
   (timed as ``gpu_timing.py`` says) of
   - the kernels alone on heads-major inputs (``pallas_gpu.fold_block`` / ``grad_block``), the
     forward both with Triton and with Mosaic GPU,
   - ``ringkit.ring_attention(impl="pallas")`` as a user calls it (sp = 1, layout permutes and
     head transposes included), and ``impl="xla"`` where it runs in reasonable time,
   - ``jax.nn.dot_product_attention(implementation="cudnn")``, and with ``--yardsticks`` the
     forward of JAX's own Pallas flash attentions, Triton (``ops.gpu.attention.mha``) and Mosaic
     GPU (``ops.gpu.attention_mgpu``: does a Hopper-specific kernel pay?).
   Flops: forward ``4 * b * h * S^2 * d / 2`` (causal triangle), backward 2.5x that.
``--order-grid 256,1024,...`` replaces 3-4 by the default kernels under each launch order
(``gpu_order.GROUP_PROGRAMS``; 10**9 = heads fastest), per S, with cuDNN.
Writes ``attention-gpu-<timestamp>.json`` and ``.md`` into ``--out``. ``--interpret`` runs the
same script on CPU in interpret mode at toy sizes (a dry run before spending GPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

import jax
import jax.numpy as jnp

import ringkit as rk
from ringkit.attention import gpu_order, pallas_mgpu

# This script's folder is on sys.path.
import gpu_timing as gt
from gpu_checks import mosaic_smoke
from gpu_timing import (backward_part, flops_forward, kernel_bwd_time, kernel_fwd_time,
                        matmul_rate, try_time, user_times)

# The Mosaic forward's Pallas lowerings whose smoke test passed (pallas_mgpu.LOWERINGS); the
# library runs the first, "lane", under BlockSizes(gpu_forward="mosaic").
MOSAIC = ("lane", "warpgroup")


SWEEP_FWD = [  # (block_q, block_k, warps, stages); the first is the default
    (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 4, 3),
    (128, 64, 8, 2),
    # 256-row tiles halve the K/V each row streams; on an H200 at 32K (256, 64, 8, 3) ran 7%
    # above the default, the 16-warp ones below it (benchmarks/README.md).
    (256, 64, 8, 3), (256, 64, 16, 2), (256, 128, 16, 2),
]
# The Mosaic GPU forward: (block_k, stages), each under every lowering that passed its smoke
# test. 128-key tiles past 3 stages, and 256-key tiles, exceed an H100's shared memory.
SWEEP_MOSAIC = [(128, 2), (128, 3), (64, 2), (64, 3), (64, 4)]
# The backward's two kernels, timed one by one: tiles of the dq kernel and of the dk/dv kernel,
# each under every launch (warps, stages); the backward takes the best dq and dk/dv pair sharing
# one launch (both kernels take BlockSizes' num_warps_bwd, num_stages_bwd). 128 x 128 tiles past
# 2 stages exceed an H100's shared memory.
SWEEP_DQ = [(128, 64), (128, 128), (64, 64), (128, 32)]
SWEEP_DKV = [(64, 128), (32, 128), (64, 64)]
SWEEP_LAUNCH_BWD = [(8, 3), (8, 2), (4, 3), (4, 2)]


def kernel_tests(log) -> dict:
    """The kernels' tests, run natively on this GPU (``tests/test_pallas_gpu.py`` and
    ``tests/test_pallas_mgpu.py``, the slow cases too): ``{ok, summary}``."""
    root = pathlib.Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
         "tests/test_pallas_gpu.py", "tests/test_pallas_mgpu.py"],
        cwd=root, capture_output=True, text=True,
        env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    summary = (run.stdout.strip().splitlines() or ["(no output)"])[-1]
    log(f"kernel tests on this GPU: {summary}")
    if run.returncode:
        log(run.stdout[-4000:] + run.stderr[-2000:])
    return dict(ok=run.returncode == 0, summary=summary)


def sweep(key, s, repeats, log, interpret, deadline):
    """Best forward and backward BlockSizes at sequence length ``s`` (kernels alone). Stops
    early past ``deadline``, keeping the defaults for what it has not finished."""
    f, runs = flops_forward(s), []
    defaults = rk.attention.gpu_defaults(gt.D, 2)  # bf16
    mosaic_blocks = rk.attention.gpu_defaults(gt.D, 2, "mosaic")
    mosaic = pallas_mgpu.MosaicSizes(mosaic_blocks.block_k, mosaic_blocks.num_stages,
                                     (MOSAIC or ("lane",))[0])  # a lowering that passed

    # cuDNN at the sweep's length first: if a configuration below hangs and the run is cut off,
    # the sweep's lines still carry a same-run yardstick.
    cudnn = None if interpret else try_time(log, f"sweep cudnn S={s}", lambda: user_times(
        key, s, "cudnn", repeats, backward=False)[0])
    if cudnn:
        runs.append(dict(part="cudnn_fwd", seconds=cudnn))
        log(f"sweep cudnn fwd S={s}: {f / cudnn / 1e12:.0f} TFLOP/s")
    vs_cudnn = lambda t: f" ({cudnn / t:.2f}x cuDNN)" if cudnn else ""

    def fastest_forward(part, candidates, start):
        """Time each ``(config, sizes)``; the fastest ``(seconds, sizes)``, else ``start``."""
        best = (None, start)
        for cfg, blocks in candidates:
            if time.time() > deadline:
                break
            t = try_time(log, f"sweep {part} {cfg}", kernel_fwd_time, key, s, blocks, repeats)
            if t:
                runs.append(dict(part=part, config=list(cfg), seconds=t))
                log(f"sweep {part} S={s} {cfg}: {f / t / 1e12:.0f} TFLOP/s{vs_cudnn(t)}")
                best = (t, blocks) if best[0] is None or t < best[0] else best
        return best

    mosaic_best = fastest_forward("mosaic_fwd", [  # (block_k, stages, lowering)
        ((*cfg, lowering), pallas_mgpu.MosaicSizes(*cfg, lowering))
        for cfg in (SWEEP_MOSAIC[:1] if interpret else SWEEP_MOSAIC) for lowering in MOSAIC],
        mosaic)
    fwd_best = fastest_forward("fwd", [  # (block_q, block_k, warps, stages)
        (cfg, dataclasses.replace(defaults, block_q=cfg[0], block_k=cfg[1], num_warps=cfg[2],
                                  num_stages=cfg[3]))
        for cfg in (SWEEP_FWD[:2] if interpret else SWEEP_FWD)], defaults)

    bwd_best = (None, defaults)
    for launch in SWEEP_LAUNCH_BWD[:1] if interpret else SWEEP_LAUNCH_BWD:
        best = {}  # part -> (seconds, tiles)
        for part, fields, tiles_list in (("dq", ("block_q_dq", "block_k_dq"), SWEEP_DQ),
                                         ("dkv", ("block_q_dkv", "block_k_dkv"), SWEEP_DKV)):
            for tiles in tiles_list[:1] if interpret else tiles_list:
                if time.time() > deadline:
                    break
                blocks = dataclasses.replace(defaults, **dict(zip(fields, tiles)),
                                             num_warps_bwd=launch[0], num_stages_bwd=launch[1])
                t = try_time(log, f"sweep {part} {tiles} {launch}", backward_part, key, s,
                             blocks, part, repeats)
                if t:
                    runs.append(dict(part=part, tiles=list(tiles), launch=list(launch), seconds=t))
                    log(f"sweep {part} S={s} tiles {tiles} launch {launch}: {t * 1e3:.2f} ms")
                    best[part] = min(best.get(part, (t, tiles)), (t, tiles))
        if len(best) == 2:
            (tq, (bq, bk)), (tk, (bqd, bkd)) = best["dq"], best["dkv"]
            log(f"backward dq {bq}x{bk}, dk/dv {bqd}x{bkd}, launch {launch}: "
                f"{2.5 * f / (tq + tk) / 1e12:.0f} TFLOP/s")
            if bwd_best[0] is None or tq + tk < bwd_best[0]:
                bwd_best = (tq + tk, dataclasses.replace(
                    defaults, block_q_dq=bq, block_k_dq=bk, block_q_dkv=bqd, block_k_dkv=bkd,
                    num_warps_bwd=launch[0], num_stages_bwd=launch[1]))
    return runs, {"fwd": fwd_best, "bwd": bwd_best, "mosaic": mosaic_best}


def order_grid(key, seqs, groups, repeats, log):
    """Forward and backward kernels (default sizes) under each launch order, with cuDNN, per S."""
    blocks = rk.attention.gpu_defaults(gt.D, 2)  # bf16
    rows, default_group = [], gpu_order.GROUP_PROGRAMS
    for s in seqs:
        reps = max(3, repeats if s <= 16384 else repeats // 2)
        f = flops_forward(s)
        try:
            c_fwd, c_both = user_times(key, s, "cudnn", reps)
        except Exception as e:
            log(f"cudnn S={s} failed: {type(e).__name__}: {str(e)[:200]}")
            c_fwd = c_both = None
        row = dict(seq=s, cudnn_fwd_s=c_fwd, cudnn_fwdbwd_s=c_both, orders=[])
        line = [f"S={s:6d} cudnn fwd {f / c_fwd / 1e12:4.0f} bwd "
                f"{2.5 * f / (c_both - c_fwd) / 1e12:4.0f} |" if c_fwd else f"S={s:6d} |"]
        for group in groups:
            gpu_order.GROUP_PROGRAMS = group
            try:
                t_f = try_time(log, f"fwd S={s} group {group}", kernel_fwd_time, key, s, blocks,
                               reps)
                t_b = try_time(log, f"bwd S={s} group {group}", kernel_bwd_time, key, s, blocks,
                               reps)
            finally:
                gpu_order.GROUP_PROGRAMS = default_group
            row["orders"].append(dict(group=group, fwd_s=t_f, bwd_s=t_b))
            line.append(f"g{group}: fwd {f / t_f / 1e12 if t_f else 0:4.0f} "
                        f"bwd {2.5 * f / t_b / 1e12 if t_b else 0:4.0f}")
        log(" ".join(line))
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", default="8192,16384,32768,65536")
    ap.add_argument("--xla-max", type=int, default=16384, help="longest S timed with impl='xla'")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    ap.add_argument("--sweep-seq", type=int, default=32768)
    ap.add_argument("--sweep-budget", type=float, default=200,
                    help="seconds the sweep may take before it keeps what it has")
    ap.add_argument("--yardsticks", action="store_true",
                    help="also time the forward of JAX's own Pallas flash attentions: Triton "
                         "(ops.gpu.attention) and Mosaic GPU (ops.gpu.attention_mgpu, Hopper)")
    ap.add_argument("--interpret", action="store_true", help="dry run on CPU in interpret mode")
    ap.add_argument("--head-dim", type=int, default=128, help="head_dim of the timed attention")
    ap.add_argument("--no-smoke", action="store_true",
                    help="skip the Mosaic forward's smoke test (trust both lowerings)")
    ap.add_argument("--no-checks", action="store_true", help="skip the correctness checks")
    ap.add_argument("--order-grid", default="",
                    help="comma-separated GROUP_PROGRAMS values: time the default kernels under "
                         "each launch order at every S (and cuDNN), instead of sweep and table")
    args = ap.parse_args()
    gt.configure(args.head_dim, args.interpret)
    H, D, INTERPRET = gt.H, gt.D, gt.INTERPRET
    lines = []

    start = time.time()

    def log(msg):  # each line stamped with the seconds since the start: where a run's time went
        msg = f"[{time.time() - start:5.0f} s] {msg}"
        print(msg, flush=True)
        lines.append(msg)

    dev = jax.devices()[0]
    log(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, "
        f"{len(jax.devices())} device(s), CUDA runtime {pallas_mgpu.cuda_runtime_version()}")
    key = jax.random.key(int(time.time()))
    result = dict(device=dev.device_kind, jax=jax.__version__, heads=H, head_dim=D,
                  when=datetime.datetime.now().isoformat(timespec="seconds"))
    x = jnp.zeros((1, 8192, H, D), jnp.bfloat16)
    result["default"] = rk.attention.describe(
        x, x, x, mesh=rk.make_mesh(sp=1, devices=jax.devices()[:1]),
        interpret="gpu" if INTERPRET else None, impl="pallas")
    log(f"head_dim {D}, bf16, no block_sizes: {result['default']}")
    global MOSAIC
    if not (INTERPRET or args.no_smoke):
        smoke = mosaic_smoke(MOSAIC, log_dir=args.out)
        result["mosaic_smoke"] = {lw: dict(ok=ok, message=msg) for lw, (ok, msg) in smoke.items()}
        passed = [lw for lw in MOSAIC if smoke[lw][0]]
        for lowering, (ok, msg) in smoke.items():
            log(f"Mosaic forward smoke test, {lowering} lowering (own process): {msg}"
                + ("" if ok else "; the run goes on without it"))
        MOSAIC = tuple(passed)
    try:
        if not (args.no_checks or INTERPRET):  # on CPU the default test suite runs them
            result["correctness"] = kernel_tests(log)
    except Exception:
        log("correctness check crashed:\n" + traceback.format_exc())
    result["matmul_tflops_start"] = rate = matmul_rate(key)
    log(f"bf16 matmul 8192^3: {rate:.0f} TFLOP/s")
    write(result, lines, args.out)

    if args.order_grid:
        result["order_grid"] = order_grid(key, [int(x) for x in args.seqs.split(",")],
                                          [int(x) for x in args.order_grid.split(",")],
                                          args.repeats, log)
        return write(result, lines, args.out)
    runs, best = sweep(key, args.sweep_seq, args.repeats, log, INTERPRET,
                       time.time() + args.sweep_budget)
    result["sweep"] = dict(seq=args.sweep_seq, runs=runs)
    write(result, lines, args.out)
    blocks, bwd_blocks, mosaic = best["fwd"][1], best["bwd"][1], best["mosaic"][1]
    result["best"] = dict(forward=dataclasses.asdict(blocks),
                          backward=dataclasses.asdict(bwd_blocks),
                          mosaic_forward=dataclasses.asdict(mosaic))
    log(f"best forward {blocks}; best backward {bwd_blocks}; best Mosaic forward {mosaic}")
    # The ring as a user calls it: forward tiles from the forward sweep, the rest from the backward.
    ring_blocks = dataclasses.replace(bwd_blocks, block_q=blocks.block_q, block_k=blocks.block_k,
                                      num_warps=blocks.num_warps, num_stages=blocks.num_stages)

    table = []
    for s in (int(x) for x in args.seqs.split(",")):
        reps = max(3, args.repeats if s <= 16384 else args.repeats // 2)
        row = dict(seq=s, fwd_flop=flops_forward(s))
        try:
            row["kernel_fwd_s"] = kernel_fwd_time(key, s, blocks, reps)
            if MOSAIC and not INTERPRET:  # the Mosaic interpreter is too slow for 16 heads
                row["mosaic_fwd_s"] = try_time(log, f"mosaic fwd S={s}", kernel_fwd_time, key,
                                               s, mosaic, reps)
            row["kernel_bwd_s"] = kernel_bwd_time(key, s, bwd_blocks, reps)
            if not INTERPRET:
                row["cudnn_fwd_s"], row["cudnn_fwdbwd_s"] = user_times(key, s, "cudnn", reps)
            row["ring_fwd_s"], row["ring_fwdbwd_s"] = user_times(key, s, "pallas", reps,
                                                                 ring_blocks)
            # What a user gets with no block_sizes at all (on Hopper: the Mosaic forward).
            row["ring_default_fwd_s"], row["ring_default_fwdbwd_s"] = user_times(
                key, s, "pallas", reps)
            if "lane" in MOSAIC and not INTERPRET:  # the ring runs the library's lowering
                mosaic_ring = dataclasses.replace(ring_blocks, block_k=mosaic.block_k,
                                                  num_stages=mosaic.stages,
                                                  gpu_forward="mosaic")
                times = try_time(log, f"ring mosaic S={s}", lambda: user_times(
                    key, s, "pallas", reps, mosaic_ring, backward=False))
                row["ring_mosaic_fwd_s"] = times[0] if times else None
            for impl in ("jax-pallas", "jax-mgpu") if args.yardsticks else ():
                try:
                    row[impl.replace("-", "") + "_fwd_s"], _ = user_times(key, s, impl, reps,
                                                                          backward=False)
                except Exception as e:
                    log(f"{impl} at S={s} failed: {type(e).__name__}: {str(e)[:200]}")
            if s <= args.xla_max:
                row["xla_fwd_s"], row["xla_fwdbwd_s"] = user_times(
                    key, s, "xla", 3, backward=s <= args.xla_max // 2)
        except Exception:
            log(f"S={s} crashed:\n" + traceback.format_exc()[-1500:])
        table.append(row)
        f = row["fwd_flop"]
        tf = lambda name, mult=1.0: (f"{mult * f / row[name] / 1e12:6.0f}"
                                     if row.get(name) else "     -")
        row["cudnn_bwd_s"] = (row["cudnn_fwdbwd_s"] - row["cudnn_fwd_s"]
                              if "cudnn_fwdbwd_s" in row else None)
        log(f"S={s:6d} TFLOP/s  kernel fwd {tf('kernel_fwd_s')} mosaic {tf('mosaic_fwd_s')} "
            f"bwd {tf('kernel_bwd_s', 2.5)} | "
            f"cudnn fwd {tf('cudnn_fwd_s')} bwd {tf('cudnn_bwd_s', 2.5)} | ring(pallas) fwd "
            f"{tf('ring_fwd_s')} fwd+bwd {tf('ring_fwdbwd_s', 3.5)} mosaic fwd "
            f"{tf('ring_mosaic_fwd_s')} | ring(default) fwd {tf('ring_default_fwd_s')} fwd+bwd "
            f"{tf('ring_default_fwdbwd_s', 3.5)} | ring(xla) fwd "
            f"{tf('xla_fwd_s')} fwd+bwd {tf('xla_fwdbwd_s', 3.5)} | jax's pallas fwd: triton "
            f"{tf('jaxpallas_fwd_s')} mosaic {tf('jaxmgpu_fwd_s')}")
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
