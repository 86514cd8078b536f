"""A float64 numpy forward pass of the LLaMA/LWM transformer: the tests' ground truth.

Written from the equations (not from ringkit's modules): dense causal attention with an explicit
mask, RoPE from exact float64 angles, both pair conventions.
"""

import numpy as np

from ringkit.model.rope import attention_factor, inv_frequencies


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x, positions, cfg):
    """x [b, s, h, d] float64, positions [b, s]."""
    inv = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    ang = positions[..., None].astype(np.float64) * inv  # [b, s, d/2]
    cos, sin = (f(ang)[:, :, None] * attention_factor(cfg.rope_scaling) for f in (np.cos, np.sin))
    if cfg.rope_convention == "half":
        x1, x2 = np.split(x, 2, axis=-1)
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    xe, xo = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = xe * cos - xo * sin, xo * cos + xe * sin
    return out


def params64(variables):
    """Flax variables -> float64 numpy dict with stacked layers."""
    p = variables["params"]
    f64 = lambda a: np.asarray(a, np.float64)
    if "layers" in p:
        layers = {k: f64(v) for k, v in p["layers"]["block"].items()}
    else:
        n = len([k for k in p if k.startswith("layers_")])
        layers = {k: np.stack([f64(p[f"layers_{i}"]["block"][k]) for i in range(n)])
                  for k in p["layers_0"]["block"]}
    top = {k: f64(v) for k, v in p.items() if not k.startswith("layers")}
    return top, layers


def reference_logits(variables, cfg, ids, *, attention_mask=None, positions=None,
                     segment_ids=None, vision_mask=None, head="text"):
    """Logits ``float64 [b, s, vocab]``; rows with mask 0 are not meaningful."""
    top, layers = params64(variables)
    ids = np.asarray(ids)
    b, s = ids.shape
    mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask) > 0
    if positions is None:
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    seg = np.zeros((b, s), np.int64) if segment_ids is None else np.asarray(segment_ids)
    vm = np.zeros((b, s), bool) if vision_mask is None else np.asarray(vision_mask, bool)
    x = top["embed"][np.where(vm, 0, ids)]
    if "vision_embed" in top:
        x = np.where(vm[..., None], top["vision_embed"][np.where(vm, ids, 0)], x)
    visible = (np.tril(np.ones((s, s), bool))[None] & mask[:, None, :]
               & (seg[:, :, None] == seg[:, None, :]))  # [b, q, k]
    g = cfg.n_heads // cfg.n_kv_heads
    for i in range(cfg.n_layers):
        w = {k: v[i] for k, v in layers.items()}
        n = _rms(x, w["attn_norm"], cfg.norm_eps)
        q = _rope(np.einsum("bsd,dhk->bshk", n, w["wq"]), positions, cfg)
        k = _rope(np.einsum("bsd,dhk->bshk", n, w["wk"]), positions, cfg)
        v = np.einsum("bsd,dhk->bshk", n, w["wv"])
        k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
        sc = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(cfg.head_dim)
        sc = np.where(visible[:, None], sc, -np.inf)
        sc = sc - np.max(np.where(np.isfinite(sc), sc, -1e300), axis=-1, keepdims=True)
        p = np.exp(sc)
        p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
        x = x + np.einsum("bhqk,bkhd,hde->bqe", p, v, w["wo"])
        m = _rms(x, w["mlp_norm"], cfg.norm_eps)
        gate, up = m @ w["w_gate"], m @ w["w_up"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w["w_down"]
    h = _rms(x, top["final_norm"], cfg.norm_eps)
    if head == "vision":
        return h @ top["vision_head"]
    return h @ (top["embed"].T if cfg.tie_embeddings else top["lm_head"])
