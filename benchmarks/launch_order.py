"""The GPU kernels' launch order, simulated: load balance and L2 working set, no GPU needed.

    python benchmarks/launch_order.py            # a few seconds; writes results/launch-order-*.md

The forward kernel's programs (one per (batch, head, row tile), causal, one device) are given a
cost of the key tiles they visit plus half a tile of fixed overhead, and handed in launch order
to the first free slot of a card running 132 or 264 programs at once (an H100's 132 SMs, one or
two resident programs each). Reported per order and sequence length:
- makespan / (total cost / slots): 1.00 is perfect balance;
- the most streams (batch x head) among any 264 programs launched one after another, whose K/V
  the running programs read together, and their bytes at head_dim 128 in bf16 (an H100 has
  50 MB of L2).
Orders: ringkit's (`gpu_order.LaunchOrder`: groups of streams, heaviest tiles first in each), heads
fastest (the order before session 10: balanced, every head at once) and tiles fastest (one head
at a time: small working set, unbalanced at 8K).
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import pathlib

import jax.numpy as jnp
import numpy as np

from ringkit.attention.gpu_order import LaunchOrder

HERE = pathlib.Path(__file__).resolve().parent


def makespan_ratio(costs, slots: int) -> float:
    """Greedy list scheduling in launch order; makespan over the ideal total / slots."""
    free = [0.0] * slots
    for c in costs:
        heapq.heappush(free, heapq.heappop(free) + c)
    return max(free) / (sum(costs) / slots)


def orders(n_tiles: int, heads: int):
    """``{name: (stream [P], tile [P])}`` in launch order for batch 1."""
    order = LaunchOrder(n_tiles, 1, heads, heavy_last_tile=True)
    _, h, t = (np.asarray(x) for x in order(jnp.arange(order.grid[0])))
    heads_fast = np.array([(s, n_tiles - 1 - r) for r in range(n_tiles) for s in range(heads)])
    tiles_fast = np.array([(s, n_tiles - 1 - r) for s in range(heads) for r in range(n_tiles)])
    return {f"ringkit (groups of {order.group})": (h, t),
            "heads fastest": tuple(heads_fast.T), "tiles fastest": tuple(tiles_fast.T)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--out", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args()

    lines = [f"# Launch order, simulated ({args.heads} heads, {args.block}-row tiles, causal, "
             "head_dim 128, bf16)", "",
             "| S | order | balance, 132 slots | balance, 264 slots | streams read together | "
             "their K/V |", "|---|---|---|---|---|---|"]
    for s in args.seqs:
        n = s // args.block
        stream_mb = 2 * s * 128 * 2 / 2**20
        for name, (stream, tile) in orders(n, args.heads).items():
            costs = tile + 1.5  # key tiles visited (tile + 1) plus half a tile of overhead
            # Most streams among any 264 consecutive programs (what a card runs at once).
            together = max(len(set(stream[i:i + 264].tolist()))
                           for i in range(0, max(1, len(stream) - 263), 8))
            lines.append(f"| {s:,} | {name} | {makespan_ratio(costs, 132):.3f} | "
                         f"{makespan_ratio(costs, 264):.3f} | {together} | "
                         f"{together * stream_mb:,.0f} MB |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    (args.out / f"launch-order-{stamp}.md").write_text(text)


if __name__ == "__main__":
    main()
