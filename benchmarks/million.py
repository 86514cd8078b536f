"""A million tokens on one GPU: the embedded model's shape, random weights, bf16, Pallas kernels.

For each length (default 128K, 256K, 512K, 1M): SmolLM2-135M's shape (30 layers, 9 query / 3 KV
heads of 64) with random weights (a GPU machine without network may lack the GGUF; the JSON says
which weights ran) on one device, bfloat16 weights and compute: the prefill compiled ahead, then
timed (seconds, model and attention TFLOP/s), ``--decode`` greedy steps after it (median
ms/token), and the device's peak memory against ``rk.plan``'s. Then, when the embedded GGUF is
installed, ``rk.read`` + ``ask`` of a real text on the device, and the device's logits for it
against the same model's on the host CPU (bf16 tolerance). Writes
``benchmarks/results/million-<stamp>.json``::

    python benchmarks/million.py                  # on a GPU: one command, under 10 minutes
    python benchmarks/million.py --dry-run        # the same code at tiny sizes on CPU (CI)
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE))


def attention_flops(cfg, n: int) -> float:
    """Causal QK^T and PV over all layers (the useful half of the square)."""
    return cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * n * (n + 1) / 2


def one_length(cfg, n: int, decode: int, device, dtype: str) -> dict:
    import jax
    import numpy as np

    import ringkit as rk
    from long_context import precompile
    from ringkit.model.model import Model
    from ringkit.model.runtime import Runtime

    cfg = cfg.replace(max_position=max(cfg.max_position, n + decode + 1))
    mesh = rk.make_mesh(sp=1, devices=[device])
    model = Model.init_random(cfg, Runtime(mesh, dtype=dtype, param_dtype=dtype))
    plan = rk.plan(model, n, mesh, new_tokens=decode + 1,
                   device="h100" if device.platform == "gpu" else None)
    prompt = np.random.default_rng(n).integers(10, cfg.vocab_size, n).tolist()
    compile_s = precompile(model, prompt, decode + 1)
    t0 = time.perf_counter()
    logits, cache = model.prefill([prompt], max_new_tokens=decode + 1)
    logits.block_until_ready()
    prefill_s = time.perf_counter() - t0
    token, steps = np.asarray(logits).argmax(-1), []
    for _ in range(decode):
        t0 = time.perf_counter()
        token = np.asarray(model.step(cache, token)).argmax(-1)
        steps.append(time.perf_counter() - t0)
    stats = device.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    row = dict(tokens=n, compile_s=compile_s, prefill_s=prefill_s,
               model_tflops=plan.prefill_flops / prefill_s / 1e12,
               attention_tflops=attention_flops(cfg, n) / prefill_s / 1e12,
               decode_ms=float(np.median(steps[1:] or steps)) * 1e3,
               peak_device_bytes=peak, plan_peak=plan.peak,
               peak_over_plan=None if peak is None else peak / plan.peak)
    del model, cache, logits
    jax.clear_caches()
    return row


def real_text_check(device, dtype: str, tokens: int) -> dict:
    """``rk.read`` + ``ask`` of a Shakespeare excerpt with the embedded weights on ``device``,
    and its logits against the host CPU's (None when the GGUF is not installed)."""
    import jax
    import numpy as np

    import ringkit as rk
    from ringkit.errors import MissingDependencyError
    from ringkit.eval.haystack import haystack_text

    try:
        gpu = rk.load_model(mesh=rk.make_mesh(sp=1, devices=[device]), dtype=dtype,
                            param_dtype=dtype)
    except MissingDependencyError as e:
        return {"skipped": str(e)}
    cpu = rk.load_model(mesh=rk.make_mesh(sp=1, devices=jax.devices("cpu")[:1]), dtype=dtype,
                        param_dtype=dtype)
    text = max(haystack_text("shakespeare"), key=len)
    ids = gpu.tokenizer.encode(text[:tokens * 5])[:tokens]
    a, b = np.asarray(gpu.logits([ids]), np.float32), np.asarray(cpu.logits([ids]), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "excerpt.txt"
        path.write_text(text[:tokens * 4])
        t0 = time.perf_counter()
        ctx = rk.read(path, model=gpu)
        answer = ctx.ask("Who speaks first in this text?", max_new_tokens=32, temperature=0)
    return dict(weights="embedded SmolLM2-135M-Instruct GGUF", tokens=len(ids),
                max_abs_logit_diff=float(np.abs(a - b).max()),
                relative=float(np.abs(a - b).max() / np.abs(b).max()),
                argmax_agree=float((a.argmax(-1) == b.argmax(-1)).mean()),
                read_ask_s=time.perf_counter() - t0, prompt_tokens=len(ctx.tokens),
                answer=answer)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+",
                    default=[131072, 262144, 524288, 1048576])
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--layers", type=int, help="fewer layers than the shape's 30")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes on CPU: 2 layers, 512 and 1,024 tokens, float32")
    ap.add_argument("--out", help="the JSON to write (default benchmarks/results/million-*)")
    args = ap.parse_args(argv)

    import jax

    import ringkit as rk

    device = jax.devices()[0]
    if args.dry_run:
        args.tokens, args.decode, args.layers = [512, 1024], 4, args.layers or 2
    dtype = "float32" if device.platform == "cpu" else "bfloat16"
    cfg = rk.ModelConfig.preset("smollm2-135m")
    cfg = cfg.replace(n_layers=args.layers or cfg.n_layers, name=f"{cfg.name}-shape")
    result = dict(device=str(device), platform=device.platform, dtype=dtype,
                  weights="random (the SmolLM2-135M shape)", layers=cfg.n_layers, rows=[])
    for n in args.tokens:
        result["rows"].append(one_length(cfg, n, args.decode, device, dtype))
        print(json.dumps(result["rows"][-1]), flush=True)
    result["real_text"] = real_text_check(device, dtype, 256 if args.dry_run else 4096)
    print(json.dumps(result["real_text"]), flush=True)
    out = pathlib.Path(args.out) if args.out else (
        HERE / "results" / f"million-{time.strftime('%Y-%m-%dT%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
