"""Gemma 3 in Hugging Face's format: what differs from the LLaMA family that ``hf`` reads.

``gemma3_text`` checkpoints (Gemma3ForCausalLM, e.g. gemma-3-1b) and the text tower of ``gemma3``
ones (Gemma3ForConditionalGeneration, 4B and up: its ``text_config``; the vision tower and
projector are left unread, so images are not run). The differences, as transformers computes them:

- norms: RMSNorm scaled by ``1 + w`` (added here, so ringkit's scales are ``1 + w``), before and
  after attention and the MLP (``post_norms``), and per head on q and k (``qk_norm``);
- GELU (tanh approximation) gating the MLP; embeddings times ``sqrt(hidden_size)``;
- the softmax scale ``query_pre_attn_scalar ** -0.5`` rather than ``head_dim ** -0.5``;
- local layers (``layer_types``; older configs: every ``sliding_window_pattern``-th layer is
  global) attend within ``sliding_window`` with their own RoPE base, unscaled; global layers
  use ``rope_theta`` and any ``rope_scaling`` (transformers 5 keys both by layer type in
  ``rope_parameters``);
- tied embeddings; ``final_logit_softcapping`` caps the logits where set. Gemma 2's attention
  soft-capping (``attn_logit_softcapping``) is not computed: such a checkpoint is refused.
"""

from __future__ import annotations

import math

from ringkit.errors import UnsupportedError

GEMMA_TYPES = ("gemma3_text", "gemma3")
LAYER = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "post_attn_norm",
    "pre_feedforward_layernorm.weight": "mlp_norm",
    "post_feedforward_layernorm.weight": "post_mlp_norm",
    "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo",
    "self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm",
    "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}
NORMS = ("attn_norm", "post_attn_norm", "mlp_norm", "post_mlp_norm", "q_norm", "k_norm",
         "final_norm")  # stored as w, computed as 1 + w
# Where the text model's tensors live: Gemma3ForCausalLM, then Gemma3ForConditionalGeneration
# as transformers 5 and earlier versions save it.
PREFIXES = ("model.", "model.language_model.", "language_model.model.")
# Gemma3TextConfig's defaults (transformers 5.25): hub configs leave out what equals them (the
# 4B's text_config names neither heads nor vocabulary).
DEFAULTS = {"vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216,
            "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": 256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 256, "sliding_window": 4096, "tie_word_embeddings": True,
            "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0}
UNREAD = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
          "multi_modal_projector.")  # the image side of gemma3


def text_values(values: dict) -> dict:
    """The text model's config: ``gemma3``'s ``text_config`` (with the top level's tying)."""
    if values.get("model_type") != "gemma3":
        return values
    text = values.get("text_config")
    if not isinstance(text, dict):
        raise UnsupportedError("a gemma3 config.json without a text_config: not a Gemma 3 "
                               "checkpoint ringkit can read")
    tie = values.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
    return {**text, "model_type": "gemma3_text", "tie_word_embeddings": tie,
            "_name_or_path": values.get("_name_or_path")}


def llama_view(values: dict) -> dict:
    """``values`` as the LLaMA reader takes them: the global layers' RoPE, no GELU name, the
    layer kinds spelt out, Gemma's defaults filled."""
    for field, what in (("attn_logit_softcapping", "soft-capped attention scores (Gemma 2)"),
                        ("use_bidirectional_attention", "bidirectional attention")):
        if values.get(field):
            raise UnsupportedError(f"config.json sets {field} = {values[field]!r} ({what}), "
                                   "which ringkit does not compute; it refuses the checkpoint")
    act = values.get("hidden_activation") or values.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise UnsupportedError(f"Gemma activation {act!r} is not computed (gelu_pytorch_tanh)")
    out = {k: v for k, v in values.items() if k not in ("hidden_activation", "hidden_act")}
    rp = values.get("rope_parameters")
    for key, value in DEFAULTS.items():
        if out.get(key) is None and not (key.startswith("rope") and isinstance(rp, dict)):
            out[key] = value
    if isinstance(rp, dict) and "full_attention" in rp:  # transformers 5: one per layer kind
        local = rp.get("sliding_attention") or {}
        if local.get("rope_type", "default") != "default":
            raise UnsupportedError(f"Gemma local layers' RoPE {local['rope_type']!r} is not "
                                   "computed (default only)")
        if local.get("rope_theta"):
            out["rope_local_base_freq"] = local["rope_theta"]  # the older configs' name
        out["rope_parameters"] = rp = dict(rp["full_attention"])
    # Gemma 3's max_position_embeddings is the context after its linear RoPE scaling (131,072
    # = 8 x 16,384): the scaled length, as Llama 3's is.
    scaling = out.get("rope_scaling") or (rp if isinstance(rp, dict) else None) or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear" and not scaling.get("original_max_position_embeddings"):
        scaling = {**scaling, "original_max_position_embeddings": int(
            out["max_position_embeddings"] // float(scaling["factor"]))}
        out["rope_scaling" if out.get("rope_scaling") else "rope_parameters"] = scaling
    n = int(out["num_hidden_layers"])
    pattern = values.get("sliding_window_pattern") or values.get("_sliding_window_pattern") or 6
    if out.get("layer_types") is None:
        out["layer_types"] = ["full_attention" if (i + 1) % int(pattern) == 0
                              else "sliding_attention" for i in range(n)]
    return out


def gemma_fields(values: dict) -> dict:
    """The ``ModelConfig`` fields that make a LLaMA config Gemma 3's (``values``: ``llama_view``'s)."""
    local_theta = values.get("rope_local_base_freq") or 10000.0
    scalar = values["query_pre_attn_scalar"]  # filled by llama_view
    cap = values.get("final_logit_softcapping")
    return dict(activation="gelu_tanh", post_norms=True, qk_norm=True,
                embed_scale=math.sqrt(int(values["hidden_size"])),
                query_scale=float(scalar) ** -0.5, rope_local_theta=float(local_theta),
                final_softcap=float(cap) if cap else None)


def prefix(names) -> str:
    """Where the text model's tensors start among ``names``."""
    for p in PREFIXES[::-1]:
        if f"{p}embed_tokens.weight" in names:
            return p
    return PREFIXES[0]
