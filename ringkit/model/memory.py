"""How much memory a prefill and decode of ``n`` tokens needs per device, before running it.

An estimate from shapes alone (no compilation): weights as stored on each device, the decode-side
weight copy, the KV cache, and the largest per-layer activations of the prefill. It is what
``Tokens.summary(model)`` prints, so a user sees whether a million-token prompt fits a mesh before
the model runs.

Example::

    est = estimate(model, 1_000_000, mesh=rk.make_mesh(sp=8))
    print(est.describe())        # "per device on mesh {...}: weights 540 MB, KV cache ..."
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from ringkit.attention.decode import SPARE_SLOTS, room_slots, window_slots
from ringkit.errors import ConfigError, is_whole
from ringkit.mesh import make_mesh
from ringkit.model.runtime import Runtime
from ringkit.model.transformer import param_spec
from ringkit.model.weights.place import abstract_variables


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device. ``kv_cache`` is the cache a decode keeps (a local layer's only its
    window when that is shorter than a device's share); ``prefill_peak`` adds the transient of a
    prefill (the scanned layers' stacked keys and values before they are split per layer, and
    one layer's activations)."""

    mesh: dict
    tokens: int
    weights: int
    decode_weights: int
    kv_cache: int
    activations: int

    @property
    def prefill_peak(self) -> int:
        return self.weights + self.decode_weights + 2 * self.kv_cache + self.activations

    def describe(self) -> str:
        gb = lambda b: f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.0f} MB"
        return (f"about {gb(self.prefill_peak)} per device at the prefill's peak on mesh "
                f"{self.mesh} for {self.tokens:,} tokens: weights {gb(self.weights)} + "
                f"{gb(self.decode_weights)} decode copy, KV cache {gb(self.kv_cache)} + "
                f"{gb(self.kv_cache)} while the prefill splits it per layer, activations "
                f"{gb(self.activations)}")


def estimate(model, tokens: int, *, new_tokens: int = 0, mesh=None,
             batch: int = 1) -> MemoryEstimate:
    """Per-device memory of ``model`` (a ``ringkit.Model``) prefilling ``tokens`` prompt tokens
    with a cache kept for ``new_tokens`` more (rounded up as ``Model.prefill`` rounds them) on
    ``mesh``: a mesh, or axis sizes such as ``{"sp": 64}`` for one not at hand (default: the
    model's own)."""
    rt = model.runtime
    mesh = model.mesh if mesh is None else mesh
    return estimate_shapes(model.config, tokens, mesh=mesh, weights_dtype=rt.weights_dtype,
                           dtype=rt.dtype, scan_layers=rt.scan_layers, new_tokens=new_tokens,
                           batch=batch)


def estimate_shapes(cfg, tokens: int, *, mesh, weights_dtype: str = "float32",
                    dtype: str = "float32", scan_layers: bool = True, new_tokens: int = 0,
                    batch: int = 1) -> MemoryEstimate:
    """``estimate`` from a ``ModelConfig`` and how it would run, without a model: ``mesh`` is a
    mesh or axis sizes (``{"sp": 8, "tp": 2}``), the dtypes as ``ringkit.load_model`` takes them
    (``weights_dtype``: how weights and the KV cache are stored)."""
    for name, value, low in (("tokens", tokens, 1), ("new_tokens", new_tokens, 0),
                             ("batch", batch, 1)):
        if not is_whole(value, low):
            raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r:.40}")
    shape = dict(mesh.shape) if hasattr(mesh, "shape") else dict(mesh)
    sp, tp = shape.get("sp", 1), shape.get("tp", 1)
    fsdp, dp = shape.get("fsdp", 1), shape.get("dp", 1)
    w_item = np.dtype(weights_dtype).itemsize
    c_item = np.dtype(dtype).itemsize
    full = {"dp": dp, "fsdp": fsdp, "tp": tp, "sp": sp}
    weights = _shard_elements(cfg, full, decode=False) * w_item
    # Decode reads per-layer weights: unstacked once when layers are scanned, and with sp > 1
    # features also split over 'sp' (see Model._decode_variables).
    decode_weights = 0 if (sp == 1 and not scan_layers) else (
        _shard_elements(cfg, full, decode=True) * w_item)
    rows = math.ceil(batch / (dp * fsdp))
    local = rows * math.ceil(tokens / sp)  # prompt tokens per device
    room = room_slots(new_tokens - 1, sp) + SPARE_SLOTS if new_tokens else 0  # as Model.prefill
    kv_heads = math.ceil(cfg.n_kv_heads / min(tp, cfg.n_kv_heads))
    per_slot = 2 * kv_heads * cfg.head_dim * w_item  # a key and a value
    # Local layers keep only their window once it is shorter than a device's share.
    kept = window_kept(cfg, sp, math.ceil(tokens / sp))
    n_local = sum(cfg.local_layers) if kept else 0
    kv_cache = per_slot * rows * ((cfg.n_layers - n_local) * (math.ceil(tokens / sp) + room)
                                  + n_local * ((kept or 0) + room))
    heads = math.ceil(cfg.n_heads / tp)
    ffn = math.ceil(cfg.ffn_dim / tp)
    # A layer's attention and its MLP do not hold their temporaries at the same time: the
    # peak is the residual stream with the larger of the two (XLA's buffer assignment agrees,
    # benchmarks/plan_table.py).
    attention = ((heads + 2 * kv_heads) * cfg.head_dim * c_item * 2  # q, k, v, the KV in flight
                 + heads * cfg.head_dim * 4)                         # accumulator (f32)
    mlp = ffn * (2 * 4 + c_item)                                    # gate, up (f32), product
    activations = local * (cfg.d_model * (4 + c_item)              # residual (f32), normed
                           + max(attention, mlp))
    return MemoryEstimate(shape, tokens + new_tokens, weights, decode_weights, kv_cache,
                          activations)


def window_kept(cfg, sp: int, base: int) -> int | None:
    """Prefill slots per device a local layer's cache keeps after a prefill of ``base`` slots
    per device, or None when it keeps them all (no local layers, or a window as long):
    ``Model.prefill`` decides the same way."""
    if cfg.sliding_window is None or not any(cfg.local_layers):
        return None
    kept = window_slots(cfg.sliding_window, sp)
    return kept if kept < base else None


@functools.lru_cache(maxsize=32)
def _param_shapes(cfg) -> tuple:
    """``(path, shape)`` of every parameter of ``cfg``, layers unstacked (no memory)."""
    import jax

    runtime = Runtime(make_mesh(sp=1, devices=jax.devices()[:1]), scan_layers=False)
    leaves = jax.tree_util.tree_flatten_with_path(abstract_variables(cfg, runtime))[0]
    return tuple((path, leaf.shape) for path, leaf in leaves)


def _shard_elements(cfg, mesh_shape: dict, *, decode: bool) -> int:
    """Parameter elements per device under ``param_shardings``'s rules on such a mesh."""
    total = 0
    for path, shape in _param_shapes(cfg):
        spec = tuple(param_spec(path, shape, mesh_shape, decode=decode))
        spec += (None,) * (len(shape) - len(spec))
        split = [math.prod(mesh_shape[a] for a in ((ax,) if isinstance(ax, str) else ax or ()))
                 for ax in spec]
        total += math.prod(d // s for d, s in zip(shape, split))
    return total
