"""Ring attention benchmark: ringkit vs the official ringattention 0.1.2, same inputs, same run.

    python benchmarks/attention.py                     # S = 8K, 16K, 32K (about 20 minutes)
    python benchmarks/attention.py --seqs 8192 --repeats 3 --no-peer

On 8 simulated CPU devices: forward and forward+backward medians (causal, batch 1, head_dim 64,
8 heads and 8q/2kv GQA); ringattention run in its own venv (benchmarks/peers/) on the very same
arrays, outputs compared; jax.nn.dot_product_attention on one device where it fits; the f32 matmul
rate of this machine measured at the start and the end of the run; causal work balance per device
for both layouts; per-device temp memory (compiled memory analysis) at sp = 2, 4, 8.
Writes benchmarks/results/attention-<timestamp>.json and .md.
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
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ringkit as rk  # noqa: E402
from ringkit.attention import tiles_per_device  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
PEER_DIR = HERE / "peers"
PEER_PY = PEER_DIR / ".venv-ringattention" / "bin" / "python"
D = 64


class Timer:
    """A compiled function, warmed up once; ``run(n)`` appends n timed runs to ``self.runs``."""

    def __init__(self, fn, args):
        t0 = time.perf_counter()
        self.compiled = jax.jit(fn).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.args = args
        jax.block_until_ready(self.compiled(*args))
        self.runs = []

    def run(self, repeats):
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(self.compiled(*self.args))
            self.runs.append(time.perf_counter() - t0)
        return self


def timed(fn, args, repeats):
    """Compile, warm up once, then ``repeats`` timed runs: (compile seconds, run seconds)."""
    timer = Timer(fn, args).run(repeats)
    return timer.compile_s, timer.runs


def matmul_gflops(n=4096, repeats=5):
    x = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32),
                       jax.devices()[0])
    _, runs = timed(lambda a: a @ a, (x,), repeats)
    return [2 * n**3 / t / 1e9 for t in runs]


def causal_flops(seq, heads):
    """Useful forward flops of causal attention (QK^T and PV over the lower triangle)."""
    return 4 * heads * D * seq * (seq + 1) / 2


def loss_grad(attn):
    return jax.grad(lambda q, k, v, ct: jnp.sum(attn(q, k, v) * ct), argnums=(0, 1, 2))


class RingkitCase:
    """ringkit's forward and forward+backward, compiled once and timed in batches, so its runs
    can sit on both sides of the peer's (this shared machine drifts over minutes)."""

    def __init__(self, q, k, v, ct, mesh, layout):
        attn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh, causal=True, layout=layout)
        self.layout = layout
        self.fwd = Timer(attn, (q, k, v))
        self.fwdbwd = Timer(loss_grad(attn), (q, k, v, ct))
        self.out = np.asarray(self.fwd.compiled(q, k, v))

    def run(self, repeats):
        self.fwd.run(repeats)
        self.fwdbwd.run(repeats)
        return self

    def result(self):
        return {"library": "ringkit", "layout": self.layout, "fwd_s": self.fwd.runs,
                "fwdbwd_s": self.fwdbwd.runs, "compile_fwd_s": self.fwd.compile_s,
                "compile_fwdbwd_s": self.fwdbwd.compile_s}


def bench_peer(inputs_path, chunks, repeats, workdir):
    out_json, out_npy = workdir / "peer.json", workdir / "peer_out.npy"
    cmd = [str(PEER_PY), str(PEER_DIR / "ringattention_bench.py"), "--inputs", str(inputs_path),
           "--sp", "8", "--repeats", str(repeats), "--chunk", chunks, "--out", str(out_json),
           "--save-output", str(out_npy)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out_json.read_text()), np.load(out_npy)


def bench_dense(q, k, v, ct, repeats):
    """jax.nn.dot_product_attention on one device (materialises [heads, seq, seq])."""
    dev = jax.devices()[0]
    q, k, v, ct = (jax.device_put(np.asarray(x), dev) for x in (q, k, v, ct))
    attn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
    c_f, fwd = timed(attn, (q, k, v), repeats)
    c_b, fwdbwd = timed(loss_grad(attn), (q, k, v, ct), repeats)
    return {"library": "jax.nn.dot_product_attention (1 device)", "fwd_s": fwd,
            "fwdbwd_s": fwdbwd, "compile_fwd_s": c_f, "compile_fwdbwd_s": c_b}


def temp_memory(seq, sps=(2, 4, 8)):
    """Per-device temp bytes of the compiled forward and forward+backward at each sp."""
    rows = []
    q = jax.ShapeDtypeStruct((1, seq, 8, D), jnp.float32)
    for sp in sps:
        mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
        attn = lambda q, k, v: rk.ring_attention(q, k, v, mesh=mesh)
        fwd = jax.jit(attn).lower(q, q, q).compile().memory_analysis()
        bwd = jax.jit(loss_grad(attn)).lower(q, q, q, q).compile().memory_analysis()
        rows.append({"sp": sp, "fwd_temp_bytes": int(fwd.temp_size_in_bytes),
                     "fwdbwd_temp_bytes": int(bwd.temp_size_in_bytes)})
    return rows


def med(xs):
    return statistics.median(xs)


def markdown(report):
    lines = [f"Run {report['timestamp']} on {report['machine']}, jax {report['jax']}; "
             f"f32 matmul {med(report['matmul_gflops']):.0f} GFLOP/s (median of start and end).",
             "", "| S | heads q/kv | library | fwd s | fwd+bwd s | fwd GFLOP/s | fwd % of matmul | "
             "fwd+bwd GFLOP/s | speedup fwd | speedup fwd+bwd |", "|---|---|---|---|---|---|---|---|---|---|"]
    mm = med(report["matmul_gflops"])
    for case in report["cases"]:
        peer = next((r for r in case["results"] if r["library"] == "ringattention"), None)
        for r in case["results"]:
            f, fb = med(r["fwd_s"]), med(r["fwdbwd_s"])
            fl = causal_flops(case["seq"], case["heads"][0])
            name = r["library"] + (f" ({r['layout']})" if "layout" in r else "")
            name += f" chunk {r['chunk']}" if "chunk" in r else ""
            sf = f"{med(peer['fwd_s']) / f:.2f}x" if peer else "-"
            sb = f"{med(peer['fwdbwd_s']) / fb:.2f}x" if peer else "-"
            lines.append(f"| {case['seq']} | {case['heads'][0]}/{case['heads'][1]} | {name} | "
                         f"{f:.3f} | {fb:.3f} | {fl / f / 1e9:.0f} | {100 * fl / f / 1e9 / mm:.0f}% | "
                         f"{3.5 * fl / fb / 1e9:.0f} | {sf} | {sb} |")
    lines += ["", "Causal work balance (tiles per device, max / mean):", "",
              "| S | zigzag | contiguous |", "|---|---|---|"]
    for b in report["balance"]:
        lines.append(f"| {b['seq']} | {b['zigzag']:.3f} | {b['contiguous']:.3f} |")
    lines += ["", f"Per-device temp memory at S={report['memory_seq']} (8 heads, d=64):", "",
              "| sp | fwd MiB | fwd+bwd MiB |", "|---|---|---|"]
    for m in report["memory"]:
        lines.append(f"| {m['sp']} | {m['fwd_temp_bytes'] / 2**20:.1f} | "
                     f"{m['fwdbwd_temp_bytes'] / 2**20:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", default="8192,16384,32768")
    p.add_argument("--gqa-seqs", default="8192,16384", help="sequence lengths also run as 8q/2kv")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed runs per batch (ringkit runs one batch before and one after the peer)")
    p.add_argument("--no-peer", action="store_true", help="skip ringattention")
    p.add_argument("--peer-chunks", default="256,512", help="ringattention chunk sizes; best is kept")
    p.add_argument("--contiguous-seqs", default="16384", help="also time the contiguous layout")
    p.add_argument("--memory-seq", type=int, default=16384)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    seqs = [int(s) for s in args.seqs.split(",")]
    gqa = {int(s) for s in args.gqa_seqs.split(",") if s}
    contiguous = {int(s) for s in args.contiguous_seqs.split(",") if s}
    if not args.no_peer and not PEER_PY.exists():
        subprocess.run(["bash", str(PEER_DIR / "setup_ringattention.sh")], check=True)

    mesh = rk.make_mesh(sp=8)
    report = {"timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, 8 simulated devices",
              "jax": jax.__version__, "matmul_gflops": matmul_gflops(), "cases": []}
    print(f"matmul f32: {med(report['matmul_gflops']):.0f} GFLOP/s", flush=True)
    best_chunk = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for seq in seqs:
            for heads in [(8, 8)] + ([(8, 2)] if seq in gqa else []):
                rng = np.random.default_rng(seq + heads[1])
                q = rng.standard_normal((1, seq, heads[0], D), np.float32)
                k, v = (rng.standard_normal((1, seq, heads[1], D), np.float32) for _ in range(2))
                ct = np.random.default_rng(1).standard_normal(q.shape).astype(np.float32)
                case = {"seq": seq, "heads": heads, "results": []}
                layouts = ["zigzag"] + (["contiguous"] if seq in contiguous and heads == (8, 8) else [])
                ours = [RingkitCase(q, k, v, ct, mesh, layout).run(args.repeats)
                        for layout in layouts]
                out = ours[0].out
                if not args.no_peer:
                    np.savez(tmp / "inputs.npz", q=q, k=k, v=v)
                    # Beyond 16K the peer runs only the chunk size that was its best so far.
                    chunks = args.peer_chunks if seq <= 16384 else str(best_chunk.get(
                        heads, args.peer_chunks.split(",")[0]))
                    res, peer_out = bench_peer(tmp / "inputs.npz", chunks, args.repeats, tmp)
                    best_chunk[heads] = res["chunk"]
                    res["max_abs_diff_vs_ringkit"] = float(np.abs(peer_out - out).max())
                    case["results"].append(res)
                    print(f"  outputs differ by at most {res['max_abs_diff_vs_ringkit']:.2e}")
                    ours[0].run(args.repeats)  # ringkit again after the peer: drift hits both
                for timing in ours:
                    res = timing.result()
                    case["results"].insert(len(case["results"]) - (not args.no_peer), res)
                    print(f"S={seq} heads={heads} ringkit {timing.layout}: "
                          f"fwd {med(res['fwd_s']):.3f}s fwd+bwd {med(res['fwdbwd_s']):.3f}s "
                          f"({len(res['fwd_s'])} runs)", flush=True)
                if heads == (8, 8) and 8 * seq * seq * 4 * 4 < 10e9:
                    case["results"].append(bench_dense(q, k, v, ct, args.repeats))
                report["cases"].append(case)
    report["matmul_gflops"] += matmul_gflops()
    report["balance"] = []
    for seq in seqs:
        row = {"seq": seq}
        for layout in rk.attention.LAYOUTS:
            tiles = tiles_per_device(seq, 8, layout)
            row[layout] = float(tiles.max() / tiles.mean())
            row[f"{layout}_tiles"] = tiles.tolist()
        report["balance"].append(row)
    report["memory_seq"] = args.memory_seq
    report["memory"] = temp_memory(args.memory_seq)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"attention-{report['timestamp'].replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    sys.exit(main())
