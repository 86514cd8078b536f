"""Sliding-window ring attention against full causal ring attention, same inputs, same run.

    python benchmarks/window.py                          # 32K-128K, windows 1K and 4K (~20 min)
    python benchmarks/window.py --seqs 32768 --repeats 3 --backward-seqs 32768

On 8 simulated CPU devices (zigzag, batch 1, 8 query / 2 KV heads, head_dim 64, float32): the
forward (and forward+backward where asked) median time of each window beside full causal at the
same length, the tiles each device computes (``tiles_per_device``, the kernel's own skip rule),
the ring hops ``describe`` reports and the KV bytes each device sends per forward pass. Writes
benchmarks/results/window-<timestamp>.json and .md.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ringkit as rk  # noqa: E402
from ringkit.attention import tiles_per_device  # noqa: E402
from ringkit.attention.spec import ring_hops  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SP, HQ, HKV, D = 8, 8, 2, 64


def _median_time(fn, args, repeats: int) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _bytes_sent(seq: int, window) -> int:
    """KV bytes one device sends in a forward pass: one k and one v block per hop."""
    forward, backward = ring_hops(seq, SP, "zigzag", window)
    return (forward + backward) * 2 * (seq // SP) * HKV * D * 4


def run(seqs, windows, repeats: int, backward_seqs) -> list[dict]:
    mesh = rk.make_mesh(sp=SP)
    rng = np.random.default_rng(0)
    rows = []
    for seq in seqs:
        q = jnp.asarray(rng.standard_normal((1, seq, HQ, D)), jnp.float32)
        k, v = (jnp.asarray(rng.standard_normal((1, seq, HKV, D)), jnp.float32)
                for _ in range(2))
        base = {}
        for window in (None, *windows):
            fwd = lambda q, k, v, w=window: rk.ring_attention(q, k, v, mesh=mesh, window=w)
            loss = lambda q, k, v, w=window: rk.ring_attention(
                q, k, v, mesh=mesh, window=w).astype(jnp.float32).sum()
            row = dict(seq=seq, window=window, fwd_s=_median_time(fwd, (q, k, v), repeats))
            if seq in backward_seqs:
                row["fwd_bwd_s"] = _median_time(jax.grad(loss, argnums=(0, 1, 2)), (q, k, v),
                                                repeats)
            tiles = tiles_per_device(seq, SP, "zigzag", window=window)
            row.update(tiles_max=int(tiles.max()), tiles_balance=float(tiles.max() / tiles.mean()),
                       hops=ring_hops(seq, SP, "zigzag", window),
                       bytes_sent=_bytes_sent(seq, window),
                       describe=rk.attention.describe(q, k, v, mesh=mesh, window=window))
            if window is None:
                base = row
            for key in ("fwd_s", "fwd_bwd_s", "tiles_max", "bytes_sent"):
                if key in row:
                    row[f"{key}_vs_full"] = row[key] / base[key]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "describe"}), flush=True)
    return rows


def _markdown(rows, meta) -> str:
    lines = [f"# Sliding-window ring attention, {meta['when']}", "",
             f"{meta['machine']}, jax {meta['jax']}, {SP} simulated devices, zigzag, batch 1, "
             f"{HQ}/{HKV} heads, head_dim {D}, float32, medians of {meta['repeats']}.", "",
             "| S | window | ring hops (fwd + bwd) | tiles/device (max) | KV MB sent/device | "
             "fwd s | fwd vs full | fwd+bwd s | fwd+bwd vs full |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fb = f"{r['fwd_bwd_s']:.2f} | {r['fwd_bwd_s_vs_full']:.3f}" if "fwd_bwd_s" in r else "- | -"
        lines.append(
            f"| {r['seq']} | {r['window'] or 'full causal'} | {r['hops'][0]} + {r['hops'][1]} | "
            f"{r['tiles_max']} ({r['tiles_max_vs_full']:.3f}) | {r['bytes_sent'] / 2**20:.0f} "
            f"({r['bytes_sent_vs_full']:.2f}) | {r['fwd_s']:.2f} | {r['fwd_s_vs_full']:.3f} | "
            f"{fb} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--windows", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward-seqs", type=int, nargs="*", default=[32768])
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = ap.parse_args(argv)
    when = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    meta = dict(when=when, jax=jax.__version__, repeats=args.repeats,
                machine=f"{platform.machine()}, {os.cpu_count()} cores")
    rows = run(args.seqs, args.windows, args.repeats, set(args.backward_seqs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"window-{when}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    (args.out / f"window-{when}.md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
