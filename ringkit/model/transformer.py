"""The LLaMA-family transformer (LWM's VideoLLaMA when the config has a vision vocabulary).

Pre-norm blocks: ``x += Wo attn(rope(Wq n), rope(Wk n), Wv n)`` with ``n = RMSNorm(x)``, then
``x += W_down(silu(W_gate m) * W_up m)`` with ``m = RMSNorm(x)``. Attention is ring attention over
the mesh axis 'sp' in prefill (the sequence arrives already permuted into the ring layout) and the
sharded-KV decode (``ringkit.attention.decode``) when a cache is given.

Parameters (one name per tensor, the layer axis first when layers are scanned)::

    embed [vocab, d]   vision_embed [vision_vocab, d]   final_norm [d]
    lm_head [d, vocab] (absent when tied)                vision_head [d, vision_vocab]
    layers: attn_norm [d]  wq [d, heads, hd]  wk, wv [d, kv_heads, hd]  wo [heads, hd, d]
            mlp_norm [d]   w_gate, w_up [d, ffn]          w_down [ffn, d]

``PARAM_AXES`` gives each tensor's logical axes; ``param_shardings`` maps them to the mesh and
refuses a tensor it has no rule for.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ringkit.attention.decode import decode_attention
from ringkit.attention.ring import ring_attention_permuted
from ringkit.errors import ConfigError
from ringkit.mesh import logical_to_spec
from ringkit.model.config import ModelConfig
from ringkit.model.rope import Rope

PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "vision_embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "vision_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("norm",),
    "mlp_norm": ("norm",),
    "wq": ("embed", "heads", "head_dim"),
    "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"),
    "wo": ("heads", "head_dim", "embed"),
    "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
}
_RULES_EXTRA = (("norm", None),)
ACTIVATION = ("batch", "seq", None)        # prefill: the sequence is sharded over 'sp'
DECODE_ACTIVATION = ("batch", None, None)  # decode: a few new tokens, replicated over 'sp'


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How the model runs (not what it is): mesh, dtypes, ring layout, layer loop.

    ``dtype`` is the compute and parameter dtype (float32 default; bfloat16 halves memory).
    ``scan_layers`` compiles one layer and loops over stacked weights; ``remat`` recomputes layer
    activations in the backward pass.
    """

    mesh: Mesh
    dtype: str = "float32"
    layout: str = "zigzag"
    impl: str = "xla"
    scan_layers: bool = True
    remat: bool = False
    block_q: int | None = None
    block_k: int | None = None

    @property
    def sp(self) -> int:
        return self.mesh.shape["sp"]


def _constrain(x, mesh: Mesh, names):
    return lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names)))


def _rms_norm(x, scale, eps, dtype):
    xf = x.astype(jnp.float32)
    y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(dtype)


class Block(nn.Module):
    """One decoder layer. ``mode`` is "prefill" (ring attention, returns this layer's k, v) or
    "decode" (attends and extends this layer's sharded KV cache)."""

    config: ModelConfig
    runtime: Runtime
    collect_kv: bool = False

    def _param(self, name, shape, init):
        return self.param(name, init, shape, self.runtime.dtype)

    @nn.compact
    def __call__(self, x, aux, cache):
        cfg, rt = self.config, self.runtime
        d, h, kv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim
        dense, ones = nn.initializers.normal(0.02), nn.initializers.ones
        attn_norm = self._param("attn_norm", (d,), ones)
        wq = self._param("wq", (d, h, hd), dense)
        wk = self._param("wk", (d, kv, hd), dense)
        wv = self._param("wv", (d, kv, hd), dense)
        wo = self._param("wo", (h, hd, d), dense)
        mlp_norm = self._param("mlp_norm", (d,), ones)
        w_gate = self._param("w_gate", (d, f), dense)
        w_up = self._param("w_up", (d, f), dense)
        w_down = self._param("w_down", (f, d), dense)

        rope = Rope(hd, cfg.rope_theta, cfg.context_length, cfg.rope_convention, cfg.rope_scaling)
        n = _rms_norm(x, attn_norm, cfg.norm_eps, rt.dtype)
        q = rope.apply(jnp.einsum("bsd,dhk->bshk", n, wq), aux["positions"])
        k = rope.apply(jnp.einsum("bsd,dhk->bshk", n, wk), aux["positions"])
        v = jnp.einsum("bsd,dhk->bshk", n, wv)
        kv_out = None
        if cache is None:
            attn = ring_attention_permuted(
                q, k, v, mesh=rt.mesh, causal=True, segment_ids=aux["segment_ids"],
                layout=rt.layout, impl=rt.impl, block_q=rt.block_q, block_k=rt.block_k)
            kv_out = (k, v) if self.collect_kv else None
        else:
            attn, ck, cv = decode_attention(
                q, k, v, cache["k"], cache["v"], cache["layer"], aux["slot_pos"],
                aux["positions"], aux["counter"], aux["base"], mesh=rt.mesh)
            cache = dict(k=ck, v=cv, layer=cache["layer"] + 1)
        names = ACTIVATION if cache is None else DECODE_ACTIVATION
        x = x + jnp.einsum("bshk,hkd->bsd", attn, wo)
        x = _constrain(x, rt.mesh, names)
        m = _rms_norm(x, mlp_norm, cfg.norm_eps, rt.dtype)
        gate = jnp.einsum("bsd,df->bsf", m, w_gate)
        up = jnp.einsum("bsd,df->bsf", m, w_up)
        x = x + jnp.einsum("bsf,fd->bsd", nn.silu(gate) * up, w_down)
        return _constrain(x, rt.mesh, names), cache, kv_out


class _ScanBody(nn.Module):
    """``Block`` as (carry, per-layer input) -> (carry, per-layer output) for ``nn.scan``."""

    config: ModelConfig
    runtime: Runtime
    collect_kv: bool = False

    @nn.compact
    def __call__(self, carry, _):
        x, aux, cache = carry
        block = Block(self.config, self.runtime, self.collect_kv, name="block")
        x, cache, kv_out = block(x, aux, cache)
        return (x, aux, cache), kv_out


class Transformer(nn.Module):
    """The full model on token ids in ring-layout order.

    Call with ``ids [b, s]`` int32 and ``aux``, a dict of ``positions [b, s]`` (RoPE positions),
    ``segment_ids [b, s]`` or None (-1 marks padding) and ``vision_mask [b, s]`` (bool) or None.
    Prefill: ``cache=None``; with ``collect_kv`` the second output is every layer's
    ``(k, v) [layers, b, s, kv, hd]``. Decode: ``cache = dict(k=, v=, layer=0)`` with
    ``[layers, b, slots, kv, hd]`` arrays, and ``aux`` adds ``slot_pos``, ``counter``, ``base``
    (``ringkit.attention.decode``); the second output is the extended cache.
    ``gather [b, t]`` keeps only those positions' final hidden states (the ones to score).

    Returns ``(hidden [b, t, d], kv or cache)``; ``logits`` applies a head.
    """

    config: ModelConfig
    runtime: Runtime
    collect_kv: bool = False

    def setup(self):
        cfg, rt = self.config, self.runtime
        init = nn.initializers.normal(0.02)
        self.embed = self.param("embed", init, (cfg.vocab_size, cfg.d_model), rt.dtype)
        if cfg.has_vision:
            self.vision_embed = self.param(
                "vision_embed", init, (cfg.vision_vocab_size, cfg.d_model), rt.dtype)
            self.vision_head = self.param(
                "vision_head", init, (cfg.d_model, cfg.vision_vocab_size), rt.dtype)
        if not cfg.tie_embeddings:
            self.lm_head = self.param("lm_head", init, (cfg.d_model, cfg.vocab_size), rt.dtype)
        self.final_norm = self.param("final_norm", nn.initializers.ones, (cfg.d_model,), rt.dtype)
        body = _ScanBody
        if rt.remat:
            body = nn.remat(body, prevent_cse=not rt.scan_layers)
        if rt.scan_layers:
            scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                              length=cfg.n_layers)
            self.layers = scanned(cfg, rt, self.collect_kv)
        else:
            self.layers = [body(cfg, rt, self.collect_kv, name=f"layers_{i}")
                           for i in range(cfg.n_layers)]

    def embed_tokens(self, ids, vision_mask):
        """``[b, s, d]``: the vision embedding where ``vision_mask``, the text one elsewhere."""
        if vision_mask is None or not self.config.has_vision:
            return jnp.take(self.embed, ids, axis=0)
        text = jnp.take(self.embed, jnp.where(vision_mask, 0, ids), axis=0)
        vision = jnp.take(self.vision_embed, jnp.where(vision_mask, ids, 0), axis=0)
        return jnp.where(vision_mask[..., None], vision, text)

    def __call__(self, ids, aux, cache=None, gather=None):
        rt = self.runtime
        names = ACTIVATION if cache is None else DECODE_ACTIVATION
        x = _constrain(self.embed_tokens(ids, aux.get("vision_mask")), rt.mesh, names)
        carry = (x, aux, cache)
        if rt.scan_layers:
            carry, kv = self.layers(carry, None)
        else:
            outs = []
            for layer in self.layers:
                carry, kv = layer(carry, None)
                outs.append(kv)
            kv = None if outs[0] is None else jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        x, _, cache = carry
        if gather is not None:
            x = jnp.take_along_axis(x, gather[..., None], axis=1)
        h = _rms_norm(x, self.final_norm, self.config.norm_eps, rt.dtype)
        return h, (kv if cache is None else cache)

    def logits(self, h, head: str = "text"):
        """Float32 logits ``[b, t, vocab]`` of final hidden states ``h`` (``head``: text/vision)."""
        if head == "vision":
            w = self.vision_head
        else:
            w = self.embed.T if self.config.tie_embeddings else self.lm_head
        return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)


def param_axes(path: tuple[str, ...], ndim: int) -> tuple[str | None, ...]:
    """Logical axes of the parameter at ``path`` (with 'layers' first when stacked)."""
    name = path[-1]
    if name not in PARAM_AXES:
        raise ConfigError(
            f"parameter {'/'.join(path)} has no logical-axis rule; add it to "
            "ringkit.model.transformer.PARAM_AXES")
    axes = PARAM_AXES[name]
    if ndim == len(axes) + 1:
        return ("layers",) + axes
    if ndim != len(axes):
        raise ConfigError(f"parameter {'/'.join(path)} has {ndim} dims; its rule {axes} has "
                          f"{len(axes)}")
    return axes


def param_shardings(shapes, mesh: Mesh):
    """``NamedSharding`` for every parameter of a params tree (arrays or ShapeDtypeStructs)."""
    from ringkit.mesh import LOGICAL_AXIS_RULES

    rules = LOGICAL_AXIS_RULES + _RULES_EXTRA

    def one(path, leaf):
        names = tuple(getattr(p, "key", getattr(p, "name", str(p))) for p in path)
        spec = logical_to_spec(param_axes(names, len(leaf.shape)), rules)
        return NamedSharding(mesh, _fit(spec, leaf.shape, mesh))

    return jax.tree_util.tree_map_with_path(one, shapes)


def _fit(spec: PartitionSpec, shape, mesh: Mesh) -> PartitionSpec:
    """Replicate a dimension its mesh axes do not divide (e.g. 9 heads on tp=2)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = 1
        for a in names:
            size *= mesh.shape[a]
        out.append(axes if dim % size == 0 else None)
    return PartitionSpec(*out)
