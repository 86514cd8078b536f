"""Token rows -> padded, ring-layout batches (host side, numpy).

Prompts of different lengths are left-padded to a common length ``L`` (so every row's last token
sits at ``L - 1`` and decoding appends in lockstep), then right-padded so the sequence splits into
the ring layout's chunks with a tile size that keeps the kernels efficient. Padding has segment id
-1 and is never attended to by a real token; RoPE positions count real tokens only.
``int_array`` checks the integer inputs a model is given (ids, positions, masks) as given.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ringkit.attention.layouts import chunks_per_device, layout_positions
from ringkit.errors import ShapeError

_TILES = (256, 128, 64, 32, 16, 8)


def padded_length(n: int, sp: int, layout: str) -> int:
    """Smallest length >= n that splits into the layout's chunks, preferring chunk sizes that are
    multiples of a large tile when that costs at most 1/8 extra tokens."""
    parts = sp * chunks_per_device(layout)
    for tile in _TILES:
        m = parts * tile
        total = -(-n // m) * m
        if total - n <= max(n // 8, 0) or tile == _TILES[-1]:
            return total
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class Batch:
    """A padded batch in ring-layout order (all ``[b, S]``) and what is needed to undo it."""

    ids: np.ndarray          # int32 token ids
    positions: np.ndarray    # int32 RoPE positions (0 at each row's first real token)
    segment_ids: np.ndarray  # int32, -1 on padding
    vision_mask: np.ndarray | None
    order: np.ndarray        # int32 [S]: layout slot j holds natural index order[j]
    length: int              # L: common (left-padded) length of the real rows
    lengths: np.ndarray      # int32 [b]: real tokens per row (0 for added padding rows)

    @property
    def last_slot(self) -> int:
        """Layout slot of natural index L - 1 (every row's last prompt token)."""
        return int(np.flatnonzero(self.order == self.length - 1)[0])


def pack(rows: Sequence[Sequence[int]], *, sp: int, layout: str, vision_rows=None,
         row_multiple: int = 1) -> Batch:
    """Left-pad ``rows`` to a common length, right-pad for the ring, permute into ``layout``.

    ``row_multiple``: add all-padding rows so the batch divides the mesh's batch axes
    (dp * fsdp); they come last and their outputs are to be dropped."""
    if len(rows) == 0 or any(len(r) == 0 for r in rows):
        raise ShapeError("every prompt must have at least one token (got an empty one)")
    lengths = np.array([len(r) for r in rows], np.int32)
    length = int(lengths.max())
    total = padded_length(length, sp, layout)
    b = -(-len(rows) // row_multiple) * row_multiple
    lengths = np.concatenate([lengths, np.zeros(b - len(rows), np.int32)])
    ids = np.zeros((b, total), np.int32)
    seg = np.full((b, total), -1, np.int32)
    pos = np.zeros((b, total), np.int32)
    vm = np.zeros((b, total), bool) if vision_rows is not None else None
    for r, row in enumerate(rows):
        start = length - len(row)
        ids[r, start:length] = np.asarray(row, np.int32)
        seg[r, start:length] = 0
        pos[r, start:length] = np.arange(len(row), dtype=np.int32)
        if vm is not None:
            vm[r, start:length] = np.asarray(vision_rows[r], bool)
    order = layout_positions(total, sp, layout)
    take = lambda x: None if x is None else np.ascontiguousarray(x[:, order])
    return Batch(take(ids), take(pos), take(seg), take(vm), order, length, lengths)


def int_array(x, what: str, *, ndim: tuple[int, ...] = (1, 2), low: int | None = None,
              high: int | None = None) -> np.ndarray:
    """``x`` as an int32 array, refused with a ``ShapeError`` naming ``what`` where it is not
    whole numbers of ``ndim`` dimensions within ``[low, high)``: checked before the cast, so that
    an id of 2**32 or 1.7 is not silently wrapped or truncated to another one."""
    try:
        a = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ShapeError(f"{what} must be a rectangular array of whole numbers ({e})") from None
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ShapeError(f"{what} must be whole numbers, got an array of {a.dtype}")
    if a.ndim not in ndim:
        raise ShapeError(f"{what} must have {' or '.join(map(str, ndim))} dimensions, got shape "
                         f"{a.shape}")
    lo = np.iinfo(np.int32).min if low is None else low
    hi = np.iinfo(np.int32).max + 1 if high is None else high
    if a.size and (a.min() < lo or a.max() >= hi):
        bad = a.min() if a.min() < lo else a.max()
        raise ShapeError(f"{what} holds {int(bad)}, outside [{lo}, {hi})")
    return a.astype(np.int32)
