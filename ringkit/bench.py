"""Throughput on this machine, as ``ringkit bench`` reports it: ring attention and the model.

Every timing is a median over ``repeats`` samples after warm-up (compilation excluded), and
every rate comes with a yardstick measured in the same call: the machine's matmul rate in the
same dtype, and for attention ``jax.nn.dot_product_attention`` on one device (cuDNN's flash
attention on GPUs for 16-bit inputs, XLA's otherwise). Ratios against them still compare when
the machine is shared or throttled; a lone absolute time does not.

Example::

    rk.bench.attention(seqs=[8192, 32768], mesh=rk.make_mesh(sp=8), dtype="bfloat16")
    rk.bench.model(lengths=[2048, 8192])
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ringkit.attention import describe, ring_attention
from ringkit.context import resolve_model
from ringkit.errors import ConfigError
from ringkit.mesh import make_mesh

# The one-device baseline materialises [batch, heads, S, S] float32 scores, except for 16-bit
# inputs on GPUs (cuDNN's flash attention): beyond this many bytes it is skipped rather than
# exhausting memory.
BASELINE_MAX_BYTES = 4 << 30


def median_seconds(fn: Callable[[], object], repeats: int,
                   min_sample_s: float = 0.02) -> float:
    """Median seconds per call of ``fn()`` over ``repeats`` samples, after a warm-up call.

    A sample queues calls back to back until it spans ``min_sample_s`` and blocks on their
    results once, so a sub-millisecond kernel is not timed together with the host's dispatch
    and wait (on an H100, one call per sample left 8K attention timings of identical code 15%
    apart; benchmarks/README.md). Calls that take longer are timed one per sample, and so is
    every call with ``min_sample_s=0``: then ``fn`` runs exactly ``repeats + 1`` times.
    """
    if repeats < 1:
        raise ConfigError(f"repeats={repeats}: need at least 1")
    jax.block_until_ready(fn())
    calls = 1
    if min_sample_s > 0:  # one probe call sizes the samples
        start = time.perf_counter()
        jax.block_until_ready(fn())
        calls = max(1, math.ceil(min_sample_s / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready([fn() for _ in range(calls)])
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def matmul_tflops(dtype="float32", n: int | None = None, repeats: int = 5) -> float:
    """This machine's ``n x n x n`` matmul rate in TFLOP/s on one device (``n`` default: 4096 on
    accelerators, 1024 on CPU), float32 accumulation."""
    device = jax.devices()[0]
    n = n or (1024 if device.platform == "cpu" else 4096)
    a, b = (jax.device_put(jnp.ones((n, n), dtype) / n, device) for _ in range(2))
    matmul = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / median_seconds(lambda: matmul(a, b), repeats) / 1e12


def attention_flops(batch: int, q_heads: int, seq: int, head_dim: int, causal: bool) -> float:
    """Forward flops of attention (two matmuls, half of them under a causal mask); the backward
    counts 2.5 times as many."""
    return 4 * batch * q_heads * head_dim * seq * seq * (0.5 if causal else 1.0)


def _baseline(q, k, v, causal, flops, repeats, device) -> dict:
    """``jax.nn.dot_product_attention`` on one device: cuDNN's for 16-bit inputs on a GPU, else
    (or where cuDNN refuses the shapes) XLA's while its scores fit ``BASELINE_MAX_BYTES``."""
    b, s, h, _ = q.shape
    impls = ["cudnn"] if device.platform == "gpu" and q.dtype.itemsize == 2 else []
    impls += ["xla"] if b * h * s * s * 4 <= BASELINE_MAX_BYTES else []
    q, k, v = (jax.device_put(x, device) for x in (q, k, v))
    for impl in impls:
        run = jax.jit(lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation=impl))
        try:
            seconds = median_seconds(lambda: run(q, k, v), repeats)
        except (ValueError, NotImplementedError, RuntimeError):
            if impl != "cudnn":
                raise
            continue  # cuDNN does not take every head_dim and dtype: XLA's next, if it fits
        return dict(baseline=impl, baseline_s=seconds, baseline_tflops=flops / seconds / 1e12)
    return {}


def _attention_row(shapes, dtype, seed, options, backward, baseline, repeats, device) -> dict:
    """Timings of one sequence length (see ``attention``)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    keys = jax.random.split(jax.random.key(seed), 3)
    q, k, v = (jax.random.normal(key, shape, dtype) for key, shape in zip(keys, shapes))
    kernel = describe(q, k, v, **options)  # also refuses shapes the mesh does not divide
    sharding = NamedSharding(options["mesh"], P(("dp", "fsdp"), "sp", "tp", None))
    q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))
    (b, s, h, d), causal = q.shape, options["causal"]
    flops = attention_flops(b, h, s, d, causal)
    forward = jax.jit(lambda q, k, v: ring_attention(q, k, v, **options))
    row = dict(seq=s, forward_s=median_seconds(lambda: forward(q, k, v), repeats))
    row["forward_tflops"] = flops / row["forward_s"] / 1e12
    if backward:
        loss = lambda q, k, v: ring_attention(q, k, v, **options).astype(jnp.float32).sum()
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        row["backward_s"] = median_seconds(lambda: grad(q, k, v), repeats)
        row["backward_tflops"] = 3.5 * flops / row["backward_s"] / 1e12
    if baseline:
        row.update(_baseline(q, k, v, causal, flops, repeats, device))
        if "baseline_tflops" in row:
            row["vs_baseline"] = row["forward_tflops"] / row["baseline_tflops"]
    row["kernel"] = kernel
    return row


def attention(*, seqs: Sequence[int] = (8192,), batch: int = 1, heads: int = 16,
              kv_heads: int | None = None, head_dim: int = 128, dtype="bfloat16",
              causal: bool = True, layout: str = "zigzag", impl: str = "auto", mesh=None,
              backward: bool = True, baseline: bool = True, repeats: int = 5, seed: int = 0):
    """Ring attention's speed on ``mesh`` for each sequence length in ``seqs``.

    Inputs are random ``q [batch, S, heads, head_dim]`` and ``k, v [batch, S, kv_heads,
    head_dim]`` already placed with the sequence on 'sp'. Returns a pandas DataFrame, one row
    per length: ``seq``, ``forward_s`` and ``forward_tflops``, ``backward_s`` and
    ``backward_tflops`` (forward plus backward, 3.5x the forward flops), the one-device
    ``baseline`` (``"cudnn"`` or ``"xla"``; NaN where its scores would not fit), ``baseline_s``,
    ``baseline_tflops`` and ``vs_baseline`` (forward rate over the baseline's),
    ``vs_matmul`` (forward rate over ``matmul_tflops``), and ``kernel`` (what ran:
    ``ringkit.attention.describe``). ``df.attrs`` holds the settings and the matmul rate.

    Example::

        df = rk.bench.attention(seqs=[4096], heads=8, head_dim=64, dtype="float32", repeats=3)
        print(df[["seq", "forward_tflops", "vs_baseline"]])
    """
    import pandas as pd

    mesh = mesh if mesh is not None else make_mesh()
    kv_heads = kv_heads or heads
    dtype = jnp.dtype(dtype)
    if not seqs:
        raise ConfigError("give at least one sequence length")
    if min(batch, heads, kv_heads, head_dim, *seqs) < 1 or heads % kv_heads:
        raise ConfigError(f"batch={batch}, heads={heads}, kv_heads={kv_heads}, head_dim="
                          f"{head_dim}, seqs={list(seqs)}: all must be >= 1 and kv_heads must "
                          "divide heads")
    matmul = matmul_tflops(dtype)
    one_device = jax.devices()[0]
    options = dict(mesh=mesh, causal=causal, layout=layout, impl=impl)
    rows = []
    for s in seqs:  # one length's arrays at a time: each row's are freed with its call
        shapes = [(batch, s, heads, head_dim)] + [(batch, s, kv_heads, head_dim)] * 2
        row = _attention_row(shapes, dtype, seed, options, backward, baseline, repeats,
                             one_device)
        row["vs_matmul"] = row["forward_tflops"] / matmul
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs.update(matmul_tflops=matmul, dtype=dtype.name, batch=batch, heads=heads,
                    kv_heads=kv_heads, head_dim=head_dim, causal=causal, layout=layout,
                    impl=impl, mesh=dict(mesh.shape), repeats=repeats,
                    device=f"{one_device.device_kind} ({one_device.platform})")
    return df


def _model_row(model, ids: list[int], decode_tokens: int, repeats: int) -> dict:
    """Prefill and decode speed for one prompt (see ``model``); its KV cache dies with the call."""
    # Room for one warm-up step and decode_tokens timed ones; steps=(): the decode step compiles
    # in the warm-up, not inside the timed prefills.
    run = lambda: model.prefill([ids], max_new_tokens=decode_tokens + 2, steps=())
    prefill = median_seconds(lambda: run()[0], repeats)
    logits, cache = run()
    token = np.argmax(np.asarray(logits), axis=-1)[:, None]
    # One step per sample: each takes a cache slot, and a step's latency, dispatch included, is
    # what generation waits for.
    decode = median_seconds(lambda: model.step(cache, token), decode_tokens, min_sample_s=0)
    return dict(tokens=len(ids), prefill_s=prefill, prefill_tokens_per_s=len(ids) / prefill,
                decode_tokens_per_s=1 / decode)


def model(model=None, *, lengths: Sequence[int] = (1024, 4096), decode_tokens: int = 32,
          repeats: int = 3, mesh=None, seed: int = 0):
    """A model's prefill and decode speed for prompts of each length in ``lengths``.

    ``model``: a ``ringkit.Model`` (default: the embedded SmolLM2 on ``mesh``). Prompts are
    random token ids (speed does not depend on the words). Returns a pandas DataFrame, one row
    per length: ``tokens``, ``prefill_s`` and ``prefill_tokens_per_s`` (the prompt up to its
    next-token logits), ``decode_tokens_per_s`` (one token per step after that prompt, cache
    built). ``df.attrs`` holds the model, mesh, dtype and the same-run matmul rate.

    Example::

        df = rk.bench.model(lengths=[2048], decode_tokens=16)
    """
    import pandas as pd

    model = resolve_model(model, mesh, text=False)
    if not lengths or min(lengths) < 1 or decode_tokens < 1:
        raise ConfigError(f"lengths={list(lengths)}, decode_tokens={decode_tokens}: give at least "
                          "one length, all >= 1, and decode_tokens >= 1")
    for n in lengths:
        model.check_length(n + decode_tokens + 1)  # the warm-up step's token too
    dtype = model.runtime.dtype
    matmul = matmul_tflops(dtype)
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        rows.append(_model_row(model, rng.integers(0, model.config.vocab_size, n).tolist(),
                               decode_tokens, repeats))
    df = pd.DataFrame(rows)
    df.attrs.update(model=model.config.name, mesh=dict(model.mesh.shape),
                    dtype=jnp.dtype(dtype).name, matmul_tflops=matmul, repeats=repeats)
    return df
