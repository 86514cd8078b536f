"""Attention: the ring over 'sp', its layouts, the per-device blockwise step, a dense reference."""

from ringkit.attention.layouts import (
    LAYOUTS, from_layout, layout_positions, pad_for_ring, to_layout)
from ringkit.attention.reference import attention_reference
from ringkit.attention.ring import ring_attention, ring_attention_permuted
from ringkit.attention.spec import tiles_per_device

__all__ = [
    "LAYOUTS", "attention_reference", "from_layout", "layout_positions", "pad_for_ring",
    "ring_attention", "ring_attention_permuted", "tiles_per_device", "to_layout",
]
