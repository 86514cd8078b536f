"""Model benchmark: SmolLM2-135M prefill and decode, ringkit vs transformers, same prompts, one run.

    python benchmarks/model.py                     # 2K/8K prefill, decode after 8K, 32K RSS
    python benchmarks/model.py --quick             # 2K only, fewer repeats (a smoke run)
    python benchmarks/model.py --paired            # transformers alternating inside each job

Each measurement runs in its own process (a device count is fixed when JAX starts, and peak RSS
must be per job): transformers fp32 on torch CPU with 2 threads, first and again last (its runs
are pooled); ringkit on 1 CPU device, on 2 (one per core of this machine) and on 8 simulated
devices. Prefill = the prompt's forward pass up to the next-token logits (transformers with
``logits_to_keep=1``, so neither side computes logits it does not need); decode = greedy steps
after an 8K-token prefill, cache already built. ringkit runs in float32 and in bfloat16 (float32
accumulation and residual stream). Medians over repeats, after a warm-up run (compilation
excluded). The f32 matmul rate is measured in the same run. The 32K job prefills a 32K-token
prompt with YaRN scaling (factor 4) on 8 devices and reports its peak RSS.
Writes benchmarks/results/model-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def corpus_ids(tokenizer_encode, n: int) -> list[int]:
    """``n`` tokens of this repository's own text (README, docs, sources), repeated as needed."""
    files = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
             *sorted((ROOT / "ringkit").rglob("*.py"))]
    ids: list[int] = []
    while len(ids) < n:
        for f in files:
            ids += tokenizer_encode(f.read_text())
            if len(ids) >= n:
                break
    return ids[:n]


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------------
# Workers (each prints one JSON line).


def worker_transformers(args):
    import torch
    import transformers

    import ringkit as rk

    torch.set_num_threads(2)
    path = rk.model.embedded_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    from ringkit.model.weights.gguf import read_metadata
    from ringkit.tokenize.text import Tokenizer

    encode = Tokenizer.from_gguf_fields(read_metadata(path)).encode
    out = {}
    with torch.no_grad():
        for n in args.lengths:
            ids = torch.tensor([corpus_ids(encode, n)])
            model(ids, logits_to_keep=1)  # warm-up
            runs = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model(ids, logits_to_keep=1)
                runs.append(time.perf_counter() - t0)
            out[f"prefill_{n}"] = runs
        ids = torch.tensor([corpus_ids(encode, args.decode_context)])
        res = model(ids, logits_to_keep=1, use_cache=True)
        past, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
        runs = []
        for i in range(args.decode_steps + 1):
            t0 = time.perf_counter()
            res = model(nxt, past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
            if i:  # the first step warms up
                runs.append(time.perf_counter() - t0)
        out["decode"] = runs
    out["rss_gb"] = rss_gb()
    return out


def worker_ringkit(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ringkit as rk

    model = rk.load_model(mesh=rk.make_mesh(sp=args.devices), dtype=args.dtype)
    encode = model.tokenizer.encode
    out = {}
    for n in args.lengths:
        row = corpus_ids(encode, n)
        jax.block_until_ready(model.prefill([row], max_new_tokens=1)[0])  # compile + warm-up
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(model.prefill([row], max_new_tokens=1)[0])
            runs.append(time.perf_counter() - t0)
        out[f"prefill_{n}"] = runs
    row = corpus_ids(encode, args.decode_context)
    logits, cache = model.prefill([row], max_new_tokens=args.decode_steps + 2)
    runs = []
    for i in range(args.decode_steps + 1):
        t0 = time.perf_counter()
        tok = np.asarray(jnp.argmax(logits, -1))  # the next token reaches the host, as in generate
        logits = model.step(cache, tok)
        jax.block_until_ready(logits)
        if i:
            runs.append(time.perf_counter() - t0)
    out["decode"] = runs
    out["kv_cache_bytes_per_device"] = cache.nbytes_per_device()
    out["kv_cache_slots"] = cache.slots
    out["rss_gb"] = rss_gb()
    x = jnp.ones((4096, 4096), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(x))
    rate = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        rate.append(2 * 4096**3 / (time.perf_counter() - t0) / 1e9)
    out["matmul_gflops"] = rate
    return out


def worker_paired(args):
    """transformers and ringkit in one process, their runs alternating, so both see the same
    machine (a shared VM's steal time drifts by minutes): per-config ratios from paired runs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    import ringkit as rk

    torch.set_num_threads(2)
    path = rk.model.embedded_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    model = rk.load_model(mesh=rk.make_mesh(sp=args.devices), dtype=args.dtype)
    encode = model.tokenizer.encode
    clock = time.perf_counter

    def timed(fn):
        t0 = clock()
        fn()
        return clock() - t0

    out = {}
    with torch.no_grad():
        for n in args.lengths:
            row = corpus_ids(encode, n)
            ids = torch.tensor([row])
            hf_run = lambda: hf(ids, logits_to_keep=1)
            rk_run = lambda: jax.block_until_ready(model.prefill([row], max_new_tokens=1)[0])
            hf_run(), rk_run()  # warm-up and compilation
            pairs = [(timed(hf_run), timed(rk_run)) for _ in range(args.repeats)]
            out[f"hf_prefill_{n}"], out[f"prefill_{n}"] = map(list, zip(*pairs))
        row = corpus_ids(encode, args.decode_context)
        res = hf(torch.tensor([row]), logits_to_keep=1, use_cache=True)
        past, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
        logits, cache = model.prefill([row], max_new_tokens=args.decode_steps + 2)
        hf_steps, rk_steps = [], []
        for i in range(args.decode_steps + 1):
            t0 = clock()
            res = hf(nxt, past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[:, -1].argmax(-1, keepdim=True)
            t1 = clock()
            tok = np.asarray(jnp.argmax(logits, -1))
            logits = model.step(cache, tok)
            jax.block_until_ready(logits)
            if i:  # the first steps warm up (and compile)
                hf_steps.append(t1 - t0)
                rk_steps.append(clock() - t1)
        out["hf_decode"], out["decode"] = hf_steps, rk_steps
    out["rss_gb"] = rss_gb()
    return out


def worker_rss32k(args):
    import jax

    import ringkit as rk

    scaling = rk.RopeScaling("yarn", 4.0)
    model = rk.load_model(mesh=rk.make_mesh(sp=args.devices), rope_scaling=scaling,
                          dtype=args.dtype)
    row = corpus_ids(model.tokenizer.encode, args.long - 8)  # 8 slots left for decoding
    t0 = time.perf_counter()
    logits, cache = model.prefill([row], max_new_tokens=8)
    jax.block_until_ready(logits)
    seconds = time.perf_counter() - t0
    return {"tokens": len(row), "seconds_incl_compile": seconds, "rss_gb": rss_gb(),
            "kv_cache_bytes_per_device": cache.nbytes_per_device(),
            "next_token": model.tokenizer.decode([int(logits[0].argmax())])}


# ---------------------------------------------------------------------------------------------


def spawn(kind: str, args, devices: int = 1, dtype: str = "float32") -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, __file__, "--worker", kind, "--devices", str(devices), "--dtype", dtype,
           "--repeats", str(args.repeats), "--lengths", *map(str, args.lengths),
           "--decode-context", str(args.decode_context), "--decode-steps",
           str(args.decode_steps), "--long", str(args.long)]
    print(f"# {kind} on {devices} device(s), {dtype} ...", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise SystemExit(f"{kind} worker failed")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t0
    return result


RINGKIT_JOBS = [(1, "float32"), (2, "float32"), (8, "float32"),
                (1, "bfloat16"), (2, "bfloat16"), (8, "bfloat16")]


def _name(devices, dtype):
    return f"ringkit_{devices}_{dtype}"


def summarise(results: dict, args) -> str:
    med = statistics.median
    # transformers runs first and last; its runs are pooled, and the two medians shown, so a
    # drift of the shared machine during the run is visible and shared by both sides.
    first, last = results["transformers"], results.get("transformers_end", {})
    hf = {k: v + last.get(k, []) if isinstance(v, list) else max(v, last.get(k, v))
          for k, v in first.items()}
    jobs = [results[_name(*j)] for j in RINGKIT_JOBS]
    head = " | ".join(f"ringkit {d} dev {t}" for d, t in RINGKIT_JOBS)
    lines = [f"| measure | transformers fp32 (2 threads) | {head} | best fp32 / transformers | "
             "best overall / transformers |", "|---|---|" + "---|" * (len(jobs) + 2)]

    def row(label, values, fmt):
        ref, ours = values[0], values[1:]
        f32 = max(v for v, (_, t) in zip(ours, RINGKIT_JOBS) if t == "float32")
        cells = " | ".join(fmt.format(v) for v in values)
        return f"| {label} | {cells} | {f32 / ref:.2f}x | {max(ours) / ref:.2f}x |"

    for n in args.lengths:
        key = f"prefill_{n}"
        lines.append(row(f"prefill {n} tokens/s", [n / med(r[key]) for r in [hf, *jobs]],
                         "{:.0f}"))
    lines.append(row(f"decode tokens/s after {args.decode_context}",
                     [1 / med(r["decode"]) for r in [hf, *jobs]], "{:.1f}"))
    lines.append("| peak RSS GB | " + " | ".join(f"{r['rss_gb']:.2f}" for r in [hf, *jobs])
                 + " | | |")
    lines.append("| KV cache MiB per device | | " + " | ".join(
        f"{r['kv_cache_bytes_per_device'] / 2**20:.0f}" for r in jobs) + " | | |")
    text = "\n".join(lines)
    if last:
        drift = ", ".join(
            f"{key} {med(first[key]) / med(last[key]):.2f}x"
            for key in [f"prefill_{n}" for n in args.lengths] + ["decode"])
        text += ("\n\ntransformers ran first and last (pooled above); its first-run time over "
                 f"its last-run time: {drift}.")
    rates = ", ".join(f"{med(r['matmul_gflops']):.0f}" for r in jobs)
    text += f"\n\nf32 matmul GFLOP/s measured by each ringkit job, in order: {rates}."
    if "rss32k" in results:
        r = results["rss32k"]
        text += (f"\n\n{r['tokens']}-token prefill (YaRN x4, {args.long_devices} devices, "
                 f"{args.long_dtype}): "
                 f"peak RSS {r['rss_gb']:.2f} GB, {r['seconds_incl_compile']:.0f} s including "
                 f"compilation, KV cache {r['kv_cache_bytes_per_device'] / 2**20:.0f} MiB per "
                 f"device, next token {r['next_token']!r}.")
    return text


def summarise_paired(results: dict, args) -> str:
    med = statistics.median
    lines = ["| ringkit job | " + " | ".join(
        f"prefill {n} tok/s (transformers) | ratio" for n in args.lengths)
        + f" | decode tok/s after {args.decode_context} (transformers) | ratio | peak RSS GB |",
        "|---|" + "---|---|" * (len(args.lengths) + 1) + "---|"]
    measures = [(f"prefill_{n}", n) for n in args.lengths] + [("decode", 1)]
    best = {key: 0.0 for key, _ in measures}
    for d, t in RINGKIT_JOBS:
        r = results.get(_name(d, t))
        if r is None:
            continue
        cells = []
        for key, count in measures:
            ours, theirs = count / med(r[key]), count / med(r["hf_" + key])
            best[key] = max(best[key], ours / theirs)
            fmt = "{:.0f}" if count > 1 else "{:.1f}"
            cells += [f"{fmt.format(ours)} ({fmt.format(theirs)})", f"{ours / theirs:.2f}x"]
        lines.append(f"| {d} dev {t} | " + " | ".join(cells) + f" | {r['rss_gb']:.2f} |")
    lines.append("| best | " + " | ".join(f" | **{best[key]:.2f}x**" for key, _ in measures)
                 + " | |")
    text = "\n".join(lines) + ("\n\nEach job ran transformers fp32 (2 threads) and ringkit in one "
                               "process, alternating run by run; ratios are ringkit / transformers.")
    if "rss32k" in results:
        r = results["rss32k"]
        text += (f"\n\n{r['tokens']}-token prefill (YaRN x4, {args.long_devices} devices, "
                 f"{args.long_dtype}): peak RSS {r['rss_gb']:.2f} GB, "
                 f"{r['seconds_incl_compile']:.0f} s including compilation, KV cache "
                 f"{r['kv_cache_bytes_per_device'] / 2**20:.0f} MiB per device.")
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["transformers", "ringkit", "rss32k", "paired"])
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--decode-context", type=int, default=8192 - 64)  # room to decode
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--long", type=int, default=32768)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--long-dtype", default="float32")
    parser.add_argument("--long-devices", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-32k", action="store_true")
    parser.add_argument("--jobs", nargs="+", metavar="DEVICES:DTYPE",
                        help="ringkit jobs to run, e.g. 1:float32 8:bfloat16 (default: all six)")
    parser.add_argument("--paired", action="store_true",
                        help="transformers inside every ringkit job, runs alternating")
    args = parser.parse_args()
    if args.worker:
        fn = {"transformers": worker_transformers, "ringkit": worker_ringkit,
              "rss32k": worker_rss32k, "paired": worker_paired}[args.worker]
        print(json.dumps(fn(args)))
        return
    if args.quick:
        args.lengths, args.repeats, args.decode_context, args.decode_steps = [2048], 2, 2000, 8
        args.no_32k = True
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"model-{stamp}"
    results = {}
    if args.jobs:
        RINGKIT_JOBS[:] = [(int(j.split(":")[0]), j.split(":")[1]) for j in args.jobs]
    if args.paired:
        jobs = [(_name(d, t), "paired", d, t) for d, t in RINGKIT_JOBS]
    else:
        jobs = [("transformers", "transformers", 1, "float32")]
        jobs += [(_name(d, t), "ringkit", d, t) for d, t in RINGKIT_JOBS]
        jobs.append(("transformers_end", "transformers", 1, "float32"))
    if not args.no_32k:
        jobs.append(("rss32k", "rss32k", args.long_devices, args.long_dtype))
    for name, kind, devices, dtype in jobs:
        results[name] = spawn(kind, args, devices, dtype)
        out.with_suffix(".json").write_text(json.dumps(  # saved after every job
            {"args": vars(args), "results": results}, indent=1))
    summary = (summarise_paired if args.paired else summarise)(results, args)
    print(summary)
    out.with_suffix(".md").write_text(f"# model benchmark {stamp}\n\n{summary}\n")
    print(f"wrote {out}.json/.md")


if __name__ == "__main__":
    main()
