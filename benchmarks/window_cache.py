"""Local layers' window caches against whole caches: KV memory and decode time, same run.

    python benchmarks/window_cache.py                       # 8K-32K on 1 device (~10 min)
    python benchmarks/window_cache.py --lengths 16384 --sp 4 --steps 16

A random model shaped as Gemma 3 (five local layers of window 1,024 to one global, 2 KV heads
of 128, float32) prefills one prompt, then decodes ``--steps`` single tokens. Each length runs
twice on the same weights and prompt: as ringkit runs it (local layers keep the last window,
``KVCache.window_pos``) and with whole caches for every layer (the baseline, the behaviour
before). Recorded: the KV cache per device, the median decode step, the prefill time, and that
both give the same greedy tokens with logits within 1e-5. Then XLA's memory analysis of the
compiled prefill (``rk.plan(..., compile=True)``: compiled, never run) at ``--compiled-tokens``
on the same ring, beside the same model without windows (what every layer kept before).
Writes benchmarks/results/window-cache-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys

SP = int(sys.argv[sys.argv.index("--sp") + 1]) if "--sp" in sys.argv else 1
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={SP}").strip()

import datetime  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ringkit as rk  # noqa: E402
from ringkit.model import Model, ModelConfig, Runtime  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
WINDOW = 1024
CONFIG = ModelConfig(
    name="gemma3-shaped", vocab_size=4096, d_model=512, n_layers=6, n_heads=4, n_kv_heads=2,
    head_dim=128, ffn_dim=1024, max_position=1 << 17, rope_theta=1e6, sliding_window=WINDOW,
    layer_types=("sliding_attention",) * 5 + ("full_attention",), rope_local_theta=1e4)


class WholeCaches(Model):
    """The baseline: every layer keeps its whole prefill cache (ringkit before window caches)."""

    def _windowed(self, base: int) -> bool:
        return False


def _run(model, prompt, steps: int):
    t0 = time.perf_counter()
    logits, cache = model.prefill([prompt], max_new_tokens=steps + 1)
    jax.block_until_ready(logits)
    prefill_s = time.perf_counter() - t0
    tokens, seen, times = [], [], []
    for _ in range(steps):
        token = int(np.asarray(logits)[0].argmax())
        tokens.append(token)
        t0 = time.perf_counter()
        logits = model.step(cache, np.array([[token]]))
        jax.block_until_ready(logits)
        times.append(time.perf_counter() - t0)
        seen.append(np.asarray(logits)[0])
    return dict(prefill_s=prefill_s, step_ms=1e3 * statistics.median(times[1:]),
                kv_bytes=cache.nbytes_per_device(), window_base=cache.window_base,
                estimate=model.memory(len(prompt), new_tokens=steps + 1).kv_cache), tokens, seen


def run(lengths, sp: int, steps: int) -> list[dict]:
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    model = Model.init_random(CONFIG, Runtime(mesh), seed=0)
    whole = WholeCaches(CONFIG, model.variables, None, model.runtime)
    rng = np.random.default_rng(0)
    rows = []
    for n in lengths:
        prompt = rng.integers(2, CONFIG.vocab_size, n).tolist()
        _run(model, prompt[:n // 2], 2), _run(whole, prompt[:n // 2], 2)  # compile the steps
        mine, tokens, seen = _run(model, prompt, steps)
        base, base_tokens, base_seen = _run(whole, prompt, steps)
        err = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(seen, base_seen))
        row = dict(tokens=n, sp=sp, window=WINDOW, window_cache=mine, whole_cache=base,
                   same_tokens=tokens == base_tokens, max_rel_err=err,
                   kv_ratio=mine["kv_bytes"] / base["kv_bytes"],
                   step_ratio=mine["step_ms"] / base["step_ms"],
                   prefill_ratio=mine["prefill_s"] / base["prefill_s"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def compiled(tokens: int, sp: int) -> dict:
    """XLA's per-device prefill memory, windows against none, and the plan beside it; float32
    as the timed runs (XLA:CPU turns bfloat16 scatters into float32 copies an accelerator does
    not make)."""
    mesh, f32 = f"1,1,1,{sp}", dict(dtype="float32", param_dtype="float32", compile=True)
    whole = rk.plan(CONFIG.replace(sliding_window=None, layer_types=None), tokens, mesh, **f32)
    mine = rk.plan(CONFIG, tokens, mesh, **f32)
    return dict(tokens=tokens, sp=sp, window_prefill=mine.compiled.prefill,
                whole_prefill=whole.compiled.prefill,
                ratio=mine.compiled.prefill / whole.compiled.prefill,
                plan_vs_xla=mine.peak / mine.compiled_peak)


def _markdown(rows, meta) -> str:
    mb = lambda b: f"{b / 2**20:.0f}"
    lines = [f"# Window caches for local layers, {meta['when']}", "",
             f"{meta['machine']}, jax {meta['jax']}, {rows[0]['sp']} device(s), a random "
             f"{CONFIG.n_layers}-layer model shaped as Gemma 3 (5 local of window {WINDOW} : 1 "
             f"global, {CONFIG.n_kv_heads} KV heads x {CONFIG.head_dim}, float32), batch 1, "
             f"{meta['steps']} greedy steps; decode is the median step.", "",
             "| tokens | KV MiB/device window / whole (ratio) | decode ms/token window / whole "
             "(ratio) | prefill s window / whole | same tokens | max rel. err |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        w, b = r["window_cache"], r["whole_cache"]
        lines.append(
            f"| {r['tokens']:,} | {mb(w['kv_bytes'])} / {mb(b['kv_bytes'])} ({r['kv_ratio']:.3f}) "
            f"| {w['step_ms']:.1f} / {b['step_ms']:.1f} ({r['step_ratio']:.2f}) | "
            f"{w['prefill_s']:.1f} / {b['prefill_s']:.1f} | {r['same_tokens']} | "
            f"{r['max_rel_err']:.1e} |")
    c = meta.get("compiled")
    if c:
        lines += ["", f"XLA's compiled prefill at {c['tokens']:,} tokens on sp={c['sp']}: "
                  f"{mb(c['window_prefill'])} MiB per device with window caches, "
                  f"{mb(c['whole_prefill'])} MiB without windows ({c['ratio']:.2f}x); the "
                  f"plan's peak is {c['plan_vs_xla']:.2f}x XLA's."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--sp", type=int, default=1)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--compiled-tokens", type=int, default=131072)
    ap.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = ap.parse_args(argv)
    when = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    meta = dict(when=when, jax=jax.__version__, steps=args.steps,
                machine=f"{platform.machine()}, {os.cpu_count()} cores")
    rows = run(args.lengths, args.sp, args.steps)
    meta["compiled"] = compiled(args.compiled_tokens, args.sp)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"window-cache-{when}"
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    stem.with_suffix(".md").write_text(_markdown(rows, meta))
    print(_markdown(rows, meta))


if __name__ == "__main__":
    main()
