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
            bq [heads, hd]  bk, bv [kv_heads, hd]   (config.qkv_bias: Qwen2)
            q_norm, k_norm [hd]                     (config.qk_norm: Qwen3, before RoPE)
            post_attn_norm, post_mlp_norm [d]       (config.post_norms: Gemma 3)

Layers that ``config.local_layers`` marks attend within ``config.sliding_window`` (Mistral), with
their own RoPE base where ``config.rope_local_theta`` gives one (Gemma 3). Gemma 3 also norms the
attention and MLP outputs (``post_norms``), gates with GELU, scales the embeddings and caps the
logits (``ModelConfig``).

``PARAM_AXES`` gives each tensor's logical axes; ``param_shardings`` maps them to the mesh and
refuses a tensor it has no rule for.
"""

from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ringkit.attention.decode import (
    LAYER_SPEC, SPARE_SLOTS, decode_attention, extend_slots, window_cache)
from ringkit.attention.layouts import layout_positions
from ringkit.attention.ring import ring_attention_permuted
from ringkit.errors import ConfigError, UnsupportedError
from ringkit.mesh import LOGICAL_AXIS_RULES, logical_to_spec
from ringkit.model.config import ModelConfig
from ringkit.model.runtime import Runtime
from ringkit.model.rope import Rope
from ringkit.progress import tick, ticks_wanted

PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "vision_embed": ("vocab", "embed"),
    "lm_head": ("embed", "vocab"),
    "vision_head": ("embed", "vocab"),
    "final_norm": ("norm",),
    "attn_norm": ("norm",),
    "mlp_norm": ("norm",),
    "post_attn_norm": ("norm",),              # Gemma 3's norms on the attention and MLP outputs
    "post_mlp_norm": ("norm",),
    "wq": ("embed", "heads", "head_dim"),
    "wk": ("embed", "kv_heads", "head_dim"),
    "wv": ("embed", "kv_heads", "head_dim"),
    "wo": ("heads", "head_dim_o", "embed"),  # head_dim of the output projection's input
    "bq": ("heads", "head_dim"),              # Qwen2's q/k/v biases
    "bk": ("kv_heads", "head_dim"),
    "bv": ("kv_heads", "head_dim"),
    "q_norm": ("norm",),                      # Qwen3's per-head q/k RMSNorm
    "k_norm": ("norm",),
    "w_gate": ("embed", "mlp"),
    "w_up": ("embed", "mlp"),
    "w_down": ("mlp", "embed"),
}
_RULES_EXTRA = (("norm", None), ("head_dim_o", None))
# Decode splits the output projection's input, the MLP and the vocabulary over 'sp' too.
_DECODE_RULES = (("head_dim_o", "sp"), ("mlp", ("tp", "sp")), ("vocab", ("tp", "sp")))
ACTIVATION = ("batch", "seq", None)        # prefill: the sequence is sharded over 'sp'
DECODE_ACTIVATION = ("batch", None, None)  # decode: a few new tokens, replicated over 'sp'


def _constrain(x, mesh: Mesh, names):
    return lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names)))


def spread(x, mesh: Mesh, dims: dict[int, tuple[str, ...]]):
    """Constrain ``x`` (batch first) to be split along ``dims`` over the given mesh axes, dropping
    axes whose product does not divide the dimension.

    Decode uses it to split weight matmuls over 'sp' as well as 'tp': every device of the ring
    holds all weights, so each computes a slice of the features and reads only its share of the
    weights (a decode step is bound by reading weights), instead of all of them repeating it.
    """
    spec = [("dp", "fsdp")] + [None] * (x.ndim - 1)
    for dim, axes in dims.items():
        while axes and x.shape[dim] % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        spec[dim] = axes or None
    return lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _mm(spec: str, a, b):
    """Matmul accumulating and returning float32 (bfloat16 operands run at the fast rate: on
    CPUs with bf16 dot instructions a bf16 x bf16 -> f32 product is 2x an f32 one)."""
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _rms_norm(x, scale, eps, dtype):
    xf = x.astype(jnp.float32)
    y = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(dtype)


class Block(nn.Module):
    """One decoder layer. Prefill (``cache`` None): ring attention over the permuted sequence;
    with ``collect_kv`` it also returns this layer's slice of the KV cache. Decode (``cache`` this
    layer's ``dict(k=, v=)``): attends to and extends the sequence-sharded cache."""

    config: ModelConfig
    runtime: Runtime
    collect_kv: int | None = None

    def _param(self, name, shape, init):
        return self.param(name, init, shape, self.runtime.weights_dtype)

    @nn.compact
    def __call__(self, x, aux, cache, local=False):
        """``local``: whether this layer attends within ``config.sliding_window`` only; a
        Python bool, or a traced one in a scan over layers of both kinds (see ``_ScanBody``)."""
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

        decoding = cache is not None
        dt = rt.weights_dtype if decoding else rt.dtype  # decode computes in the stored dtype
        # In decode, split projections over ('tp', 'sp'): see ``spread``.
        split = (lambda y, dims: spread(y, rt.mesh, dims)) if decoding else (lambda y, dims: y)
        rope = _rope(cfg, local)
        w = lambda a: a.astype(dt)
        n = _rms_norm(x, attn_norm, cfg.norm_eps, dt)
        # q, k, v stay whole per device (RoPE pairs features across any split of head_dim).
        q, k, v = (_mm("bsd,dhk->bshk", n, w(wt)) for wt in (wq, wk, wv))  # float32
        if cfg.qkv_bias:
            q, k, v = (t + self._param(name, t.shape[2:], nn.initializers.zeros).astype(t.dtype)
                       for t, name in ((q, "bq"), (k, "bk"), (v, "bv")))
        if cfg.qk_norm:
            q = _rms_norm(q, self._param("q_norm", (hd,), ones), cfg.norm_eps, jnp.float32)
            k = _rms_norm(k, self._param("k_norm", (hd,), ones), cfg.norm_eps, jnp.float32)
        q = rope(q, aux["positions"]).astype(dt)
        k = rope(k, aux["positions"]).astype(dt)
        v = v.astype(dt)
        kv_out = None
        if not decoding:
            def ring(window):
                return ring_attention_permuted(
                    q, k, v, mesh=rt.mesh, causal=True, segment_ids=aux["segment_ids"],
                    layout=rt.layout, impl=rt.impl, block_q=rt.block_q, block_k=rt.block_k,
                    window=window, scale=cfg.query_scale)

            if isinstance(local, bool):
                attn = ring(cfg.sliding_window if local else None)
            else:  # one scanned body for local and global layers: run the one this layer is
                attn = lax.cond(local, lambda: ring(cfg.sliding_window), lambda: ring(None))
            if self.collect_kv is not None:  # this layer's slice of the KV cache, with room
                kv_out = tuple(
                    extend_slots(jnp.swapaxes(a, 1, 2).astype(rt.weights_dtype),
                                 self.collect_kv + SPARE_SLOTS, mesh=rt.mesh, spec=LAYER_SPEC,
                                 axis=2)
                    for a in (k, v))  # [b, kv, slots, hd]
        else:
            # A local layer's cache may hold only the window (``KVCache.window_pos``).
            own = local and aux.get("window_pos") is not None
            attn, ck, cv = decode_attention(
                q, k, v, cache["k"], cache["v"], aux["window_pos" if own else "slot_pos"],
                aux["positions"], aux["counter"], aux["window_base" if own else "base"],
                mesh=rt.mesh, scale=cfg.query_scale,
                window=cfg.sliding_window if local else None)
            cache = dict(k=ck, v=cv)
        names = DECODE_ACTIVATION if decoding else ACTIVATION
        post = (lambda y, name: _rms_norm(y, self._param(name, (d,), ones), cfg.norm_eps,
                                          jnp.float32)) if cfg.post_norms else (lambda y, _: y)
        attn = _mm("bshk,hkd->bsd", split(attn, {2: ("tp",), 3: ("sp",)}), w(wo))
        x = _constrain(x + post(attn, "post_attn_norm"), rt.mesh, names)
        m = _rms_norm(x, mlp_norm, cfg.norm_eps, dt)
        gate = split(_mm("bsd,df->bsf", m, w(w_gate)), {2: ("tp", "sp")})
        up = split(_mm("bsd,df->bsf", m, w(w_up)), {2: ("tp", "sp")})
        act = nn.silu if cfg.activation == "silu" else partial(nn.gelu, approximate=True)
        mlp = _mm("bsf,fd->bsd", (act(gate) * up).astype(dt), w(w_down))
        x = _constrain(x + post(mlp, "post_mlp_norm"), rt.mesh, names)
        if self.collect_kv is not None and ticks_wanted():
            # A prefill: one progress tick per layer, once it is done.
            jax.debug.callback(tick, x[0, 0, 0])
        return x, cache, kv_out


def _rope(cfg: ModelConfig, local):
    """``rope(x, positions)`` for a layer: the local layers' own base where the config gives one
    (unscaled, as Gemma 3's), else the model's RoPE; ``local`` may be traced (``_ScanBody``)."""
    hd = cfg.head_dim
    rope = Rope(hd, cfg.rope_theta, cfg.context_length, cfg.rope_convention, cfg.rope_scaling)
    if cfg.rope_local_theta is None or local is False:
        return rope.apply
    near = Rope(hd, cfg.rope_local_theta, cfg.context_length, cfg.rope_convention, None)
    if local is True:
        return near.apply
    return lambda x, pos: jnp.where(local, near.apply(x, pos), rope.apply(x, pos))


def _keep_window(kv, aux, runtime: Runtime, window: int):
    """A local layer's prefill ``(k, v)`` ``[b, kv, slots, hd]`` -> its window cache
    (``ringkit.attention.decode.window_cache``) of the rows ending at ``aux["window_length"]``."""
    total = aux["positions"].shape[1]
    base = total // runtime.sp
    order = layout_positions(total, runtime.sp, runtime.layout)
    return tuple(window_cache(a, order, aux["window_length"], window=window, base=base,
                              extra=a.shape[2] // runtime.sp - base, mesh=runtime.mesh,
                              spec=LAYER_SPEC, axis=2) for a in kv)


class _ScanBody(nn.Module):
    """``Block`` as (carry, per-layer input) -> (carry, per-layer output) for ``nn.scan``.

    ``local`` is the layer's kind when it is static (every scanned layer alike, or one unrolled
    layer); otherwise the per-layer input is a bool saying it (a model of both kinds scans one
    body that holds both attentions and runs one).

    With window caches (``aux["window_length"]``) a local layer outputs its window cache. In a model
    of both kinds the per-layer input is ``(local, g)``: every layer outputs a window-sized
    cache and a global layer also writes its whole one to slot ``g`` of the carried ``full``
    buffers (``[globals, b, kv, slots, hd]``; a local layer's ``g`` is out of range: dropped),
    so whole caches are held for the global layers only."""

    config: ModelConfig
    runtime: Runtime
    collect_kv: int | None = None
    local: bool | None = False

    @nn.compact
    def __call__(self, carry, per_layer):
        x, aux, cache, full = carry
        local = self.local if self.local is not None else per_layer
        if full is not None:
            local, g = per_layer
        block = Block(self.config, self.runtime, self.collect_kv, name="block")
        x, cache, kv_out = block(x, aux, cache, local)
        if kv_out is not None and "window_length" in aux and local is not False:
            if full is not None:
                full = tuple(buf.at[g].set(a, mode="drop") for buf, a in zip(full, kv_out))
            kv_out = _keep_window(kv_out, aux, self.runtime, self.config.sliding_window)
        return (x, aux, cache, full), kv_out


class Transformer(nn.Module):
    """The full model on token ids in ring-layout order.

    Call with ``ids [b, s]`` int32 and ``aux``, a dict of ``positions [b, s]`` (RoPE positions),
    ``segment_ids [b, s]`` or None (-1 marks padding) and ``vision_mask [b, s]`` (bool) or None.
    Prefill: ``cache=None``; with ``collect_kv=E`` (an int) the second output is the KV cache
    ``(k, v)``, tuples with one ``[b, kv, slots, hd]`` array per layer: the keys and values
    where they were computed, each device's shard followed by E + ``SPARE_SLOTS`` empty slots, in
    the weights' dtype (see ``Runtime``). Decode (unscanned layers only): ``cache = dict(k=, v=)``
    with such tuples, and ``aux`` adds ``slot_pos``, ``counter``, ``base``
    (``ringkit.attention.decode``); the second output is the extended cache.
    ``gather [b, t]`` keeps only those positions' final hidden states (the ones to score).

    With ``aux["window_length"]`` (the rows' common length; ``Model.prefill`` sets it when the
    window is shorter than a device's chunk) local layers return window caches
    (``decode.window_cache``) instead, and no whole cache of a local layer outlives its layer.

    Returns ``(hidden [b, t, d], kv or cache)``; ``logits`` applies a head.
    """

    config: ModelConfig
    runtime: Runtime
    collect_kv: int | None = None

    def setup(self):
        cfg, rt = self.config, self.runtime
        init, pd = nn.initializers.normal(0.02), rt.weights_dtype
        self.embed = self.param("embed", init, (cfg.vocab_size, cfg.d_model), pd)
        if cfg.has_vision:
            self.vision_embed = self.param(
                "vision_embed", init, (cfg.vision_vocab_size, cfg.d_model), pd)
            self.vision_head = self.param(
                "vision_head", init, (cfg.d_model, cfg.vision_vocab_size), pd)
        if not cfg.tie_embeddings:
            self.lm_head = self.param("lm_head", init, (cfg.d_model, cfg.vocab_size), pd)
        self.final_norm = self.param("final_norm", nn.initializers.ones, (cfg.d_model,), pd)
        body = _ScanBody
        if rt.remat:
            body = nn.remat(body, prevent_cse=not rt.scan_layers)
        kinds = cfg.local_layers
        if rt.scan_layers:
            scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                              length=cfg.n_layers)
            alike = len(set(kinds)) == 1
            self.layers = scanned(cfg, rt, self.collect_kv, kinds[0] if alike else None)
            self.layer_kinds = None if alike else jnp.asarray(kinds)
        else:
            self.layers = [body(cfg, rt, self.collect_kv, local, name=f"layers_{i}")
                           for i, local in enumerate(kinds)]
            self.layer_kinds = None

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
        # The residual stream is float32 whatever the weights' dtype.
        x = self.embed_tokens(ids, aux.get("vision_mask"))
        if self.config.embed_scale is not None:  # in the weights' dtype, as transformers does
            x = x * jnp.asarray(self.config.embed_scale, x.dtype)
        x = x.astype(jnp.float32)
        x = _constrain(x, rt.mesh, names)
        if cache is not None:
            # Decode runs unrolled over per-layer weights and caches: sliced out of stacked
            # arrays, each layer's weights and cache would be copied every step.
            if rt.scan_layers:
                raise UnsupportedError("decode steps need a runtime with scan_layers=False "
                                       "(Model.step builds one)")
            ks, vs = list(cache["k"]), list(cache["v"])
            for i, layer in enumerate(self.layers):
                (x, _, c, _), _ = layer((x, aux, dict(k=ks[i], v=vs[i]), None), None)
                ks[i], vs[i] = c["k"], c["v"]
            kv = dict(k=tuple(ks), v=tuple(vs))
        elif rt.scan_layers:
            x, kv = self._scan(x, aux)
        else:
            outs = []
            for layer in self.layers:
                (x, _, _, _), out = layer((x, aux, None, None), None)
                outs.append(out)
            kv = None if outs[0] is None else tuple(zip(*outs))
        if gather is not None:
            x = jnp.take_along_axis(x, gather[..., None], axis=1)
        h = _rms_norm(x, self.final_norm, self.config.norm_eps,
                      rt.dtype if cache is None else rt.weights_dtype)
        return h, kv

    def _scan(self, x, aux):
        """The scanned layers: ``(x, kv)``, kv split into one array per layer."""
        kinds = self.config.local_layers
        mixed = self.layer_kinds is not None
        full, g = None, None
        per_layer = self.layer_kinds
        if mixed and self.collect_kv is not None and "window_length" in aux:
            # Global layers' whole caches go to carried buffers, local layers' windows out.
            globals_ = [i for i, local in enumerate(kinds) if not local]
            g = np.full(len(kinds), len(globals_), np.int32)
            g[globals_] = np.arange(len(globals_))
            b, slots = x.shape[0], aux["positions"].shape[1] + self.runtime.sp * (
                self.collect_kv + SPARE_SLOTS)
            shape = (len(globals_), b, self.config.n_kv_heads, slots, self.config.head_dim)
            sharding = NamedSharding(self.runtime.mesh, PartitionSpec(None, *LAYER_SPEC))
            empty = lambda: lax.with_sharding_constraint(
                jnp.zeros(shape, self.runtime.weights_dtype), sharding)
            full = (empty(), empty())
            per_layer = (self.layer_kinds, jnp.asarray(g))
        (x, _, _, full), kv = self.layers((x, aux, None, full), per_layer)
        if kv is None:
            return x, None
        # [layers, ...] -> one array per layer (a global layer's from ``full`` when carried)
        pick = lambda j, i: (full[j][int(g[i])] if full is not None and not kinds[i]
                             else kv[j][i])
        return x, tuple(tuple(pick(j, i) for i in range(self.config.n_layers)) for j in (0, 1))

    def logits(self, h, head: str = "text"):
        """Float32 logits ``[b, t, vocab]`` of final hidden states ``h`` (``head``: text/vision)."""
        if head == "text" and self.config.tie_embeddings:
            # Contract with the embedding as stored: a transposed copy would cost a full
            # [d, vocab] copy per call (113 MB for SmolLM2, every decode step).
            out = jnp.einsum("btd,vd->btv", h, self.embed, preferred_element_type=jnp.float32)
        else:
            w = self.vision_head if head == "vision" else self.lm_head
            out = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        cap = self.config.final_softcap
        return out if cap is None else jnp.tanh(out / cap) * cap


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


def param_shardings(shapes, mesh: Mesh, *, decode: bool = False):
    """``NamedSharding`` for every parameter of a params tree (arrays or ShapeDtypeStructs).

    ``decode=True`` also splits the feature dimensions (head_dim, mlp, vocab) over 'sp': the
    layout decode steps read (see ``spread``); each device keeps a 1/sp slice beside its
    full copy, so a step never re-slices the weights.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: NamedSharding(mesh, param_spec(path, leaf.shape, dict(mesh.shape),
                                                          decode=decode)), shapes)


def param_spec(path, shape, mesh_shape: dict, *, decode: bool = False) -> PartitionSpec:
    """The ``PartitionSpec`` of the parameter at tree ``path`` with ``shape`` on a mesh of
    ``mesh_shape`` axis sizes (``param_shardings``; ``ringkit.model.memory`` sizes shards with
    it for meshes not at hand)."""
    rules = LOGICAL_AXIS_RULES + _RULES_EXTRA
    if decode:
        rules = rules + _DECODE_RULES  # later rules override earlier ones
    names = tuple(getattr(p, "key", getattr(p, "name", str(p))) for p in path)
    return _fit(logical_to_spec(param_axes(names, len(shape)), rules), shape, mesh_shape)


def _fit(spec: PartitionSpec, shape, mesh_shape: dict) -> PartitionSpec:
    """Drop trailing mesh axes of a dimension they do not divide (e.g. 9 heads on tp=2)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        while names and dim % math.prod(mesh_shape[a] for a in names):
            names = names[:-1]
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*out)
