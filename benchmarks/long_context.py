"""A real end-to-end run at 128K tokens on this CPU: prefill, then decode steps, against the plan.

SmolLM2-135M's shape with fewer layers (``--layers``) and random weights, on ``--sp`` simulated
CPU devices (all in this process's memory), float32 as ringkit runs on a CPU without native
bfloat16: one prefill of ``--tokens`` random ids, then ``--decode`` greedy steps through the
sharded KV cache. Records wall times, tokens/s, and the run's memory: the process's peak RSS
(sampled every 10 ms while the prefill and decode run) above its size before the model was made,
less what compiling the prefill ahead left in XLA's allocator, against ``rk.plan``'s peak per
device x devices (the planner's figure for one host holding every simulated device). Writes ``benchmarks/results/long-context-<stamp>.json``::

    python benchmarks/long_context.py                      # 128K tokens, ~15 minutes here
    python benchmarks/long_context.py --tokens 32768       # a quicker look
    python benchmarks/long_context.py --no-ynn             # XLA:CPU without YNNPACK fusions
"""

import argparse
import os
import sys


# XLA:CPU runs dots and reductions through YNNPACK on a thread pool. With 8 simulated devices on
# 2 cores every worker is busy with a device's program, so the task objects each parallel dot
# enqueues wait in the queue until the program ends: heaptrack counts ~630K of them, 230 MB at
# 32K tokens, growing with the number of attention tiles run. Without these fusions the process
# holds what XLA's buffer assignment says (attention ~1.4x slower here).
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """The largest RSS seen every 10 ms from now until ``stop()``."""

    def __init__(self):
        import threading

        self.peak, self._done = rss_now(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.wait(0.01):
            self.peak = max(self.peak, rss_now())

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, rss_now())


def precompile(model, prompt, max_new_tokens: int) -> float:
    """Compile ``model.prefill``'s program for this prompt ahead of the run (seconds)."""
    import tempfile
    import time

    import jax
    import jax.numpy as jnp

    from ringkit.attention import decode
    from ringkit.model.batch import pack
    from ringkit.model.model import ROWS

    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="rk-long-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    batch = pack([prompt], sp=model.sp, layout=model.runtime.layout,
                 row_multiple=model._batch_shards)
    put = lambda x: model._put(x, ROWS)
    t0 = time.perf_counter()
    model._prefill_fn.lower(model.variables, put(batch.ids), put(batch.positions),
                            put(batch.segment_ids), put(batch.vision_mask),
                            jnp.int32(batch.last_slot),
                            decode.room_slots(max_new_tokens - 1, model.sp)).compile()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=131072)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sp", type=int, default=8)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--no-ynn", action="store_true",
                    help="turn off XLA:CPU's YNNPACK fusions, whose thread-pool tasks pile up "
                         "while more simulated devices than cores run (see benchmarks/README.md)")
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.sp}" + (
        f" {NO_YNN}" if args.no_ynn else "")

    import json
    import pathlib
    import time

    import jax
    import numpy as np

    import ringkit as rk
    from ringkit.model.model import Model
    from ringkit.model.runtime import Runtime

    mesh = rk.make_mesh(sp=args.sp)
    jax.numpy.zeros(8).block_until_ready()  # the runtime up before the baseline
    base = rss_now()
    cfg = rk.ModelConfig.preset("smollm2-135m").replace(
        name=f"smollm2-shape-{args.layers}-layers", n_layers=args.layers,
        max_position=max(8192, args.tokens + args.decode + 1))  # random weights: any length
    model = Model.init_random(cfg, Runtime(mesh, dtype="float32"))
    p = rk.plan(model, args.tokens, mesh, new_tokens=args.decode + 1)
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, cfg.vocab_size, args.tokens).tolist()

    # Compile the prefill ahead (into a compilation cache the call below reads back), so that
    # XLA's compile-time memory is not counted as the run's; then sample the RSS while it runs.
    made = rss_now()
    compile_s = precompile(model, prompt, args.decode + 1)
    # XLA's allocator keeps what the compiler used (~0.9 GB here): not the run's memory.
    compiler = max(0, rss_now() - made)
    sampler = Sampler()
    t0 = time.perf_counter()
    logits, cache = model.prefill([prompt], max_new_tokens=args.decode + 1)
    logits.block_until_ready()
    prefill_s = time.perf_counter() - t0
    token = np.asarray(logits).argmax(-1)
    step_s = []
    for _ in range(args.decode):
        t0 = time.perf_counter()
        logits = model.step(cache, token)
        token = np.asarray(logits).argmax(-1)  # waits for the step
        step_s.append(time.perf_counter() - t0)
    peak = sampler.stop()
    used = peak - base - compiler
    planned = p.peak * p.devices
    result = dict(
        tokens=args.tokens, layers=args.layers, sp=args.sp, decode_steps=args.decode,
        compile_s=compile_s, prefill_s=prefill_s, prefill_tokens_per_s=args.tokens / prefill_s,
        decode_ms_median=float(np.median(step_s[1:] or step_s)) * 1e3,
        decode_first_ms=step_s[0] * 1e3, peak_rss_above_base=peak - base, base_rss=base,
        compiler_rss=compiler, run_rss=used,
        plan_peak_per_device=p.peak, plan_peak_all_devices=planned, rss_over_plan=used / planned,
        plan=str(p), xla_flags=os.environ["XLA_FLAGS"], jax=jax.__version__,
        cpu_count=os.cpu_count())
    print(json.dumps({k: v for k, v in result.items() if k != "plan"}, indent=1))
    print(p)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = pathlib.Path(__file__).parent / "results" / f"long-context-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out, file=sys.stderr)


if __name__ == "__main__":
    main()
