"""Loading the embedded model, and what a new max_new_tokens costs.

    python benchmarks/load.py                 # 5 repeats
    python benchmarks/load.py --repeats 9

1. The GGUF file: ringkit's container parser (``ringkit.model.weights.gguf_file``) against
   ``gguf.GGUFReader``, the baseline, for the metadata alone (the tokenizer) and for metadata plus
   every tensor dequantized (the weights); then ``rk.load_model()`` on one device.
2. A prefill and one decode step after one with ``max_new_tokens=20``: with 30 new tokens (the
   same power-of-two room, so the compiled prefill and step are reused) against 80 (a new room,
   compiled afresh). Their ratio is what a notebook pays when it changes ``max_new_tokens``.

Medians over ``--repeats`` (after one warm-up read, so the file is in the page cache). Writes
benchmarks/results/load-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time

HERE = pathlib.Path(__file__).resolve().parent


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def read_with_gguf(path, tensors: bool):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    if tensors:
        for t in reader.tensors:
            gguf.quants.dequantize(t.data, t.tensor_type)
    return fields


def read_with_ringkit(path, tensors: bool):
    import gguf

    from ringkit.model.weights import gguf_file

    fields, found = gguf_file.read(path, tensors=tensors)
    for t in found.values():
        gguf.quants.dequantize(t.data, t.qtype)
    return fields


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import jax
    import numpy as np

    import ringkit as rk
    from ringkit.model.load import embedded_model_path

    path = embedded_model_path()
    read_with_ringkit(path, True)  # warm the page cache
    rows = {}
    for what, tensors in (("metadata", False), ("metadata + tensors", True)):
        base = timed(lambda: read_with_gguf(path, tensors), args.repeats)
        ours = timed(lambda: read_with_ringkit(path, tensors), args.repeats)
        rows[what] = dict(gguf_s=base, ringkit_s=ours, speedup=base / ours)
    mesh = rk.make_mesh(sp=1, devices=jax.devices()[:1])
    rows["load_model"] = dict(ringkit_s=timed(lambda: rk.load_model(mesh=mesh), args.repeats))

    model = rk.load_model(mesh=mesh)
    row = [model.tokenizer.encode("Name three colours of the sea at dawn.")]

    def prefill_and_step(new):
        t = time.perf_counter()
        logits, cache = model.prefill(row, max_new_tokens=new)
        model.step(cache, np.zeros((1, 1), np.int32)).block_until_ready()
        return time.perf_counter() - t

    prefill_and_step(20)  # compiles the room of 20 (32 slots)
    same = statistics.median(prefill_and_step(30) for _ in range(args.repeats))
    fresh = prefill_and_step(80)  # a new room: compiles (once, so timed once)
    rows["new max_new_tokens"] = dict(same_room_s=same, new_room_s=fresh, ratio=fresh / same)

    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"load-{stamp}"
    header = {"machine": f"{jax.devices()[0].platform}, {len(jax.devices())} devices",
              "repeats": args.repeats, "file": path.name, "results": rows}
    out.with_suffix(".json").write_text(json.dumps(header, indent=1))
    lines = [f"# Loading {path.name} ({header['machine']}; medians of {args.repeats})", "",
             "| step | gguf.GGUFReader | ringkit | speedup |", "|---|---|---|---|"]
    for what in ("metadata", "metadata + tensors"):
        r = rows[what]
        lines.append(f"| {what} | {r['gguf_s']:.2f} s | {r['ringkit_s']:.2f} s | "
                     f"{r['speedup']:.1f}x |")
    lines += [f"| rk.load_model() (1 device) | | {rows['load_model']['ringkit_s']:.2f} s | |", "",
              "| prefill + 1 step after max_new_tokens=20 | seconds |", "|---|---|"]
    r = rows["new max_new_tokens"]
    lines += [f"| max_new_tokens=30 (same room, reused) | {r['same_room_s']:.2f} |",
              f"| max_new_tokens=80 (new room, compiled) | {r['new_room_s']:.2f} "
              f"({r['ratio']:.0f}x) |"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
