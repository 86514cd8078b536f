"""Benchmark the official `ringattention==0.1.2` package on ringkit's inputs.

Run with the peer venv (see setup_ringattention.sh), never ringkit's own env:

    benchmarks/peers/.venv-ringattention/bin/python benchmarks/peers/ringattention_bench.py \
        --inputs qkv.npz --sp 8 --repeats 3 --chunk 512 --out ra.json [--save-output out.npy]

Semantics of ringattention's API (read from ringattention/ringattention_jax.py):
  * it always scales logits by 1/sqrt(d) itself (`q @ k^T / sqrt(d)`); no scale argument,
    so q is passed unscaled.
  * causal masking is `blockwise_kwargs["causal_block_size"]`: None = no mask, 1 = ordinary
    token-level causal mask (LWM's setting); chunks fully above the diagonal are skipped.
  * `query_chunk_size`/`key_chunk_size` tile each device's LOCAL shard (S/sp tokens): they
    must divide S/sp (a chunk larger than the shard would crash, so it is clamped to S/sp).
  * sequence is sharded contiguously over the mesh axis; global position = axis_index*S/sp + i.
  * no GQA: if hkv < hq, k/v heads are repeated (jnp.repeat axis=2) inside the jitted
    function, so the gradient still flows back to the hkv-headed k/v.
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time
import types

import numpy as np


def import_ringattention():
    """Import ringattention on jax>=0.8, where `jax.lib.xla_bridge` no longer exists.

    ringattention/__init__.py calls `jax.lib.xla_bridge.get_backend().platform` to pick
    its implementation; we provide a stand-in module backed by the public replacement.
    """
    import jax
    import jax.extend.backend

    if not hasattr(jax.lib, "xla_bridge"):
        shim = types.ModuleType("jax.lib.xla_bridge")
        shim.get_backend = jax.extend.backend.get_backend
        jax.lib.xla_bridge = shim
        sys.modules["jax.lib.xla_bridge"] = shim
    import ringattention

    return ringattention


def ra_version():
    return importlib.metadata.version("ringattention")


def build(ra, mesh, causal, chunk, kv_repeat):
    """Return (fwd, fwdbwd) jax functions of global (q, k, v[, ct]) arrays."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    # Same settings LWM / the ringattention README use for causal LM attention.
    blockwise_kwargs = dict(
        causal_block_size=1 if causal else None,
        deterministic=True,
        dropout_rng=None,
        attn_pdrop=0.0,
        query_chunk_size=chunk,
        key_chunk_size=chunk,
        policy=jax.checkpoint_policies.nothing_saveable,
        dtype=jnp.float32,
        precision=None,
        prevent_cse=True,
    )

    def per_shard(q, k, v):
        # ringattention(q, k, v, attn_bias, segment_ids, cache_idx, axis_name,
        #               float32_logits, blockwise_kwargs)
        return ra.ringattention(q, k, v, None, None, None, "sp", True, blockwise_kwargs)

    spec = P(None, "sp", None, None)  # [b, S, h, d], S split contiguously
    sharded = jax.shard_map(per_shard, mesh=mesh, in_specs=(spec, spec, spec),
                            out_specs=spec, check_vma=False)

    def fwd(q, k, v):
        if kv_repeat > 1:
            k = jnp.repeat(k, kv_repeat, axis=2)
            v = jnp.repeat(v, kv_repeat, axis=2)
        return sharded(q, k, v)

    def loss(q, k, v, ct):
        return jnp.sum(fwd(q, k, v) * ct)

    return fwd, jax.grad(loss, argnums=(0, 1, 2))


def time_fn(fn, args, repeats):
    """AOT-compile, 1 warm-up run, then `repeats` timed runs. Returns (compile_s, times, out)."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times, out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", required=True, help="npz with q [b,S,hq,d], k/v [b,S,hkv,d]")
    p.add_argument("--sp", type=int, default=8, help="devices on the 'sp' mesh axis")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--chunk", default="512",
                   help="query=key chunk size(s), comma list; each is timed, best reported")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--save-output", help="save forward output [b,S,hq,d] (.npy)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Fake `sp` CPU devices; must happen before jax is imported.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={args.sp}"])

    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    ra = import_ringattention()

    data = np.load(args.inputs)
    q, k, v = (np.asarray(data[n], dtype=np.float32) for n in ("q", "k", "v"))
    b, S, hq, d = q.shape
    hkv = k.shape[2]
    if hq % hkv or S % args.sp:
        sys.exit(f"need hq % hkv == 0 and S % sp == 0 (hq={hq} hkv={hkv} S={S} sp={args.sp})")
    kv_repeat = hq // hkv
    local = S // args.sp

    devices = jax.devices()[: args.sp]
    if len(devices) != args.sp:
        sys.exit(f"only {len(devices)} devices available, need {args.sp}")
    mesh = Mesh(np.array(devices), ("sp",))
    sharding = NamedSharding(mesh, P(None, "sp", None, None))
    ct = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
    q, k, v, ct = (jax.device_put(x, sharding) for x in (q, k, v, ct))

    results = []
    saved = False
    for requested in [int(c) for c in args.chunk.split(",")]:
        chunk = min(requested, local)  # chunks tile the local shard
        if local % chunk:
            sys.exit(f"chunk {chunk} does not divide the local shard length {local}")
        fwd, fwdbwd = build(ra, mesh, args.causal, chunk, kv_repeat)
        compile_fwd, fwd_s, out = time_fn(fwd, (q, k, v), args.repeats)
        compile_fwdbwd, fwdbwd_s, _ = time_fn(fwdbwd, (q, k, v, ct), args.repeats)
        if args.save_output and not saved:
            np.save(args.save_output, np.asarray(out))  # gathered: natural sequence order
            saved = True
        res = {
            "library": "ringattention", "version": ra_version(), "jax": jax.__version__,
            "impl": f"{ra.ringattention.__module__}.{ra.ringattention.__name__}",
            "batch": b, "seq": S, "sp": args.sp, "hq": hq, "hkv": hkv, "d": d,
            "causal": args.causal, "chunk": chunk, "chunk_requested": requested,
            "fwd_s": fwd_s, "fwd_median_s": statistics.median(fwd_s),
            "fwdbwd_s": fwdbwd_s, "fwdbwd_median_s": statistics.median(fwdbwd_s),
            "compile_fwd_s": compile_fwd, "compile_fwdbwd_s": compile_fwdbwd,
            "repeated_kv": kv_repeat > 1,
        }
        print(f"[ringattention] S={S} sp={args.sp} chunk={chunk}: "
              f"fwd {res['fwd_median_s']:.3f}s fwd+bwd {res['fwdbwd_median_s']:.3f}s "
              f"(compile fwd {compile_fwd:.1f}s){' [k/v heads repeated]' if kv_repeat > 1 else ''}",
              flush=True)
        results.append(res)

    # Top level = the chunk with the fastest fwd+bwd (give the peer its best setting);
    # every chunk tried is listed under "per_chunk".
    best = dict(min(results, key=lambda r: r["fwdbwd_median_s"]))
    best["per_chunk"] = results
    with open(args.out, "w") as f:
        json.dump(best, f, indent=2)


if __name__ == "__main__":
    main()
