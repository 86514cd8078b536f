"""Launch order of the GPU kernels: a 1-D grid of (stream, tile) programs, stream = one (batch,
head), ordered for two things at once.

- Load balance. Under a causal mask the last row tiles carry the most key tiles; started last,
  they would leave the card idle behind a few long programs. Row tiles therefore go out
  heaviest first (the forward and dq: tile n - 1 first; dk/dv: key tile 0 first).
- L2 reuse. With every head's tiles interleaved (heads fastest), the running programs stream all
  heads' K/V at once: at S = 32K that is 16 x 16 MB in bf16, far beyond an H100's 50 MB of L2.

So streams go in groups: a group's programs are tiles of its few streams, heaviest first with
the streams interleaved, and the next group follows. A group holds about GROUP_PROGRAMS
programs (two card-fulls), enough that the heavy-first order inside it still balances the card
(benchmarks/launch_order.py simulates it: within 1% at 8K-64K).

Measured on an H100 (benchmarks/README.md), the order barely matters: at 16K-64K the kernels
ran within 5% of each other under groups of 132 to 4096 programs and heads fastest, about the
run-to-run spread, with no order ahead in every run. So the kernels' gap to cuDNN is not K/V
traffic. The grouped order stays: balanced, and what the GPU correctness checks ran.
"""


from __future__ import annotations

import dataclasses

import jax.numpy as jnp

GROUP_PROGRAMS = 256


@dataclasses.dataclass(frozen=True)
class LaunchOrder:
    """Which ``(batch, head, tile)`` program ``p`` of the 1-D grid owns (see above)."""

    n_tiles: int
    batch: int
    heads: int
    heavy_last_tile: bool  # tile n - 1 is the heaviest (row tiles) rather than tile 0 (key tiles)

    @property
    def streams(self) -> int:
        return self.batch * self.heads

    @property
    def group(self) -> int:
        return max(1, min(self.streams, -(-GROUP_PROGRAMS // self.n_tiles)))

    @property
    def grid(self) -> tuple[int]:
        return (self.streams * self.n_tiles,)

    def __call__(self, p):
        per_group = self.group * self.n_tiles
        g = p // per_group
        size = jnp.minimum(self.group, self.streams - g * self.group)  # the last group may be short
        within = p - g * per_group
        rank = within // size  # 0 = the heaviest tile
        stream = g * self.group + within - rank * size
        tile = self.n_tiles - 1 - rank if self.heavy_last_tile else rank
        return stream // self.heads, stream % self.heads, tile
