"""Attention: the ring over 'sp', its layouts, the per-device blockwise step, a dense reference."""

from ringkit.attention.layouts import (
    LAYOUTS, from_layout, layout_positions, pad_for_ring, to_layout)
from ringkit.attention.reference import attention_reference
from ringkit.attention.ring import describe, ring_attention, ring_attention_permuted
from ringkit.attention.kernels import auto_gpu_forward
from ringkit.attention.sizes import BlockSizes, gpu_defaults, tpu_defaults
from ringkit.attention.spec import tiles_per_device

__all__ = [
    "LAYOUTS", "BlockSizes", "attention_reference", "auto_gpu_forward", "describe", "from_layout",
    "gpu_defaults", "layout_positions", "pad_for_ring", "ring_attention",
    "ring_attention_permuted", "tiles_per_device", "to_layout", "tpu_defaults",
]
