"""The planner's table for long-context shapes, checked against XLA where this machine compiles.

LWM-7B, Llama-3.1-8B and Qwen2.5-7B-1M (presets: shapes only, no weights) at 128K, 512K and 1M
tokens on 8, 32, 64 and 256 devices (tp = min(KV heads, 8), the rest on sp; dp = fsdp = 1):
``ringkit.plan``'s bytes per device with bfloat16 weights and compute (as on an accelerator) and
whether that fits an H100 (75% of 80 GB usable) and a TPU v5p. For every mesh of up to 64
devices, the real prefill and decode step are compiled (never run) on 64 simulated CPU devices
with abstract weights, and XLA's per-device peak is set beside the plan's for float32 weights
with bfloat16 compute (XLA:CPU computes bfloat16 dots in float32, so bfloat16 weights compiled
here would count copies an accelerator does not make). Writes
``benchmarks/results/plan-<stamp>.json`` and ``.md``::

    python benchmarks/plan_table.py        # about 3 minutes
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"  # before JAX starts

import json  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import ringkit as rk  # noqa: E402

HERE = pathlib.Path(__file__).parent
MODELS = ["lwm-7b", "llama-3.1-8b", "qwen2.5-7b-1m"]
TOKENS = ["128K", "512K", "1M"]
DEVICES = [8, 32, 64, 256]


def main():
    rows = []
    for name in MODELS:
        kv = rk.ModelConfig.preset(name).n_kv_heads
        for tokens in TOKENS:
            for n in DEVICES:
                tp = min(kv, 8)
                mesh = {"dp": 1, "fsdp": 1, "tp": tp, "sp": n // tp}
                p = rk.plan(name, tokens, mesh, device="h100")
                row = {"model": name, "tokens": p.tokens, "mesh": mesh,
                       "within_context": p.within_context, "weights": p.weights,
                       "kv_cache": p.kv_cache, "activations": p.activations, "peak": p.peak,
                       "fits_h100": p.fits,
                       "fits_v5p": rk.plan(name, tokens, mesh, device="tpu-v5p").fits,
                       "prefill_pflop": p.prefill_flops / 1e15}
                if n <= 64:
                    t0 = time.perf_counter()
                    f32 = rk.plan(name, tokens, mesh, param_dtype="float32", compile=True)
                    row.update(f32_plan_peak=f32.peak, f32_xla_peak=f32.compiled_peak,
                               compile_s=time.perf_counter() - t0)
                rows.append(row)
                print({k: v for k, v in row.items() if k != "mesh"}, flush=True)

    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"plan-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    gb = lambda b: f"{b / 1e9:,.1f}"
    lines = ["| model | tokens | devices (tp x sp) | weights | KV cache | activations | peak "
             "GB/device (bf16) | H100 | v5p | plan / XLA, f32 weights (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["mesh"]
        check = (f"{gb(r['f32_plan_peak'])} / {gb(r['f32_xla_peak'])} "
                 f"({r['f32_plan_peak'] / r['f32_xla_peak']:.2f}x)" if "f32_xla_peak" in r
                 else "not compiled (256 devices)")
        ctx = "" if r["within_context"] else " *"
        lines.append(
            f"| {r['model']} | {r['tokens']:,}{ctx} | {m['tp'] * m['sp']} ({m['tp']} x "
            f"{m['sp']}) | {gb(r['weights'])} | {gb(r['kv_cache'])} | {gb(r['activations'])} | "
            f"{gb(r['peak'])} | {'yes' if r['fits_h100'] else 'no'} | "
            f"{'yes' if r['fits_v5p'] else 'no'} | {check} |")
    lines.append("\n\\* past the model's context: the figures of its shapes")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
