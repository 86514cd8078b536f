"""``KVCache``: every layer's keys and values after a prefill, sharded along the sequence on
'sp', and what decode steps need to extend them (``ringkit.attention.decode``)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ringkit.attention import decode


@dataclasses.dataclass
class KVCache:
    """Keys and values of every layer, sharded along the sequence on 'sp'.

    ``k, v``: one ``[b, kv_heads, slots, hd]`` array per layer; ``slot_pos [b, slots]`` (-1 =
    empty or padding);
    ``base`` prefill slots per device; ``appended`` tokens added since; ``next_pos [b]`` the RoPE
    position of each row's next token.

    Local (sliding-window) layers keep only the prompt's last ``window`` tokens when that is
    fewer than a device's chunk (``window_base`` > 0): their arrays are
    ``[b, kv_heads, window_slots, hd]`` with positions in ``window_pos [b, window_slots]``,
    ``window_base`` prefill slots per device (``ringkit.attention.decode.window_cache``); the
    layers are the model's ``config.local_layers``.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    slot_pos: jax.Array
    base: int
    appended: int
    next_pos: np.ndarray
    rows: int  # the caller's rows; any after them pad the batch to the mesh's batch axes
    window_pos: jax.Array | None = None
    window_base: int = 0

    def room(self, sp: int) -> int:
        """Tokens that can still be appended (the window caches have the same room)."""
        return decode.capacity(self.slots, sp, self.base) - self.appended

    @property
    def slots(self) -> int:
        """Slots per row over all devices (prefill chunks, room to append, spares)."""
        return self.slot_pos.shape[1]

    def nbytes_per_device(self) -> int:
        """Bytes of keys and values held by one device."""
        return sum(a.addressable_shards[0].data.nbytes for a in self.k + self.v)
