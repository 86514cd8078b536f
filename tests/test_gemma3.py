"""Gemma 3 against transformers: tiny random checkpoints written by ``save_pretrained`` (the
text model, its older config form, and the text tower of the multimodal model), sizes drawn
per run; the same weights as a llama.cpp-style GGUF; what a gemma3 GGUF leaves to llama.cpp."""

import json

import jax
import numpy as np
import pytest

import ringkit as rk
from families import VOCAB, assert_same_greedy, word_tokenizer

torch = pytest.importorskip("torch", reason="the transformers reference needs torch (dev extra)")
transformers = pytest.importorskip("transformers")


def _gemma3(folder, form, rng):
    """A tiny random Gemma 3 written by transformers: ``"text"`` (Gemma3ForCausalLM), ``"legacy"``
    (its config rewritten as before transformers 5: rope_local_base_freq, rope_scaling,
    sliding_window_pattern) or ``"multimodal"`` (Gemma3ForConditionalGeneration, whose text
    tower ringkit reads). Returns the torch model that scores text."""
    kv = int(rng.choice([1, 2]))
    heads = kv * int(rng.choice([1, 2, 3]))
    head_dim = int(rng.choice([8, 16, 32]))
    pattern = int(rng.choice([2, 3]))
    layers = int(rng.choice([3, 4, 5]))
    scaling = {"rope_type": "linear", "factor": float(rng.choice([2.0, 8.0]))} if rng.integers(
        2) else {"rope_type": "default"}
    text = dict(vocab_size=VOCAB, hidden_size=heads * int(rng.choice([8, 16])),
                intermediate_size=int(rng.choice([48, 96])), num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                sliding_window=int(rng.choice([24, 40, 90])),
                query_pre_attn_scalar=int(rng.choice([head_dim, 2 * head_dim + 8])),
                final_logit_softcapping=2.0 if form == "text" else None,  # Gemma 2's; 3: None
                max_position_embeddings=8192,
                layer_types=["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                             for i in range(layers)],
                rope_parameters={"sliding_attention": {"rope_type": "default",
                                                       "rope_theta": 10000.0},
                                 "full_attention": {**scaling, "rope_theta": 1e6}})
    torch.manual_seed(int(rng.integers(1 << 30)))
    if form == "multimodal":
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        config = transformers.Gemma3Config(text_config=text, vision_config=vision,
                                           mm_tokens_per_image=4)
        model = transformers.Gemma3ForConditionalGeneration(config).eval()
    else:
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**text)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    word_tokenizer(folder)
    if form == "legacy":
        values = json.loads((folder / "config.json").read_text())
        rp = values.pop("rope_parameters")
        values["rope_theta"] = rp["full_attention"]["rope_theta"]
        values["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
        if scaling["rope_type"] != "default":
            values["rope_scaling"] = scaling
        del values["layer_types"]
        values["sliding_window_pattern"] = pattern
        (folder / "config.json").write_text(json.dumps(values))
    return model


def _gemma3_gguf(path, reference):
    """A gemma3 GGUF as llama.cpp's converter writes one: norms stored as 1 + w, q/k unpermuted,
    the layer kinds as one flag per layer, the softmax scale where it is not 1/sqrt(head_dim)."""
    import gguf

    cfg = reference.config
    w = gguf.GGUFWriter(str(path), "gemma3")
    hd, heads = cfg.head_dim, cfg.num_attention_heads
    for key, value in (("context_length", cfg.max_position_embeddings),
                       ("embedding_length", cfg.hidden_size), ("block_count", cfg.num_hidden_layers),
                       ("feed_forward_length", cfg.intermediate_size),
                       ("attention.head_count", heads),
                       ("attention.head_count_kv", cfg.num_key_value_heads),
                       ("attention.key_length", hd), ("attention.value_length", hd),
                       ("attention.sliding_window", cfg.sliding_window), ("vocab_size", VOCAB)):
        w.add_uint32(f"gemma3.{key}", value)
    rp = cfg.rope_parameters
    w.add_float32("gemma3.rope.freq_base", rp["full_attention"]["rope_theta"])
    w.add_float32("gemma3.rope.freq_base_swa", rp["sliding_attention"]["rope_theta"])
    if rp["full_attention"]["rope_type"] == "linear":
        w.add_string("gemma3.rope.scaling.type", "linear")
        w.add_float32("gemma3.rope.scaling.factor", rp["full_attention"]["factor"])
    w.add_float32("gemma3.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
    if cfg.final_logit_softcapping:
        w.add_float32("gemma3.final_logit_softcapping", cfg.final_logit_softcapping)
    if cfg.query_pre_attn_scalar != hd:
        w.add_float32("gemma3.attention.scale", cfg.query_pre_attn_scalar ** -0.5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<{i}>" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_eos_token_id(1)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    state = {k: v.detach().numpy().astype(np.float32) for k, v in reference.state_dict().items()}
    plus = lambda name, x: x + 1 if name.endswith("norm.weight") else x
    for name, value in state.items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            w.add_tensor(f"blk.{i}.{names[rest[:-len('.weight')]]}.weight",
                         np.ascontiguousarray(plus(name, value)))
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", plus("norm.weight", state["model.norm.weight"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gemma3_gguf_fills_in_llama_cpps_rules():
    """What a gemma3 GGUF does not store, llama.cpp fixes in code; ringkit follows it."""
    from ringkit.model.weights.gguf import config_from_fields

    fields = {"general.architecture": "gemma3", "gemma3.embedding_length": 1152,
              "gemma3.attention.head_count": 4, "gemma3.attention.head_count_kv": 1,
              "gemma3.attention.key_length": 256, "gemma3.context_length": 32768,
              "gemma3.block_count": 26, "gemma3.feed_forward_length": 6912,
              "gemma3.vocab_size": 262144, "gemma3.attention.sliding_window": 512,
              "gemma3.rope.freq_base": 1e6}
    config = config_from_fields(fields, "gemma-3-1b")  # gemma-3-1b's fields
    assert config.local_layers == tuple((i + 1) % 6 != 0 for i in range(26))
    assert config.query_scale == 256 ** -0.5 and config.rope_local_theta == 10000.0
    assert config.embed_scale == 1152 ** 0.5 and config.context_length == 32768
    big = config_from_fields({**fields, "gemma3.block_count": 62, "gemma3.embedding_length": 5376,
                              "gemma3.attention.head_count": 32, "gemma3.attention.key_length": 128,
                              "gemma3.context_length": 131072, "gemma3.rope.scaling.type": "linear",
                              "gemma3.rope.scaling.factor": 8.0}, "gemma-3-27b")
    assert big.query_scale == (5376 / 32) ** -0.5 and big.context_length == 131072


@pytest.mark.parametrize("form", ["text", "legacy", "multimodal"])
def test_gemma3_matches_transformers(form, tmp_path, rng):
    """Gemma 3: (1 + w) pre- and post-norms, GELU, scaled embeddings, q/k norms, the
    query_pre_attn_scalar scale, local layers in a window with their own RoPE base and global
    ones with (sometimes linear-scaled) RoPE; sizes drawn per run. Logits on sp=8 and greedy
    decode past the window against transformers."""
    reference = _gemma3(tmp_path, form, rng)
    model = rk.load_model(tmp_path, mesh=rk.make_mesh(sp=8))
    assert model.config.post_norms and model.config.sliding_window is not None
    assert (model.config.final_softcap is not None) == (form == "text")
    assert len(set(model.config.local_layers)) == 2  # both kinds
    ids = rng.integers(2, VOCAB, (1, int(rng.integers(600, 900))))
    got = np.asarray(model.logits(ids))
    with torch.no_grad():
        want = reference(input_ids=torch.tensor(ids)).logits.numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error {err:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0

    if form == "text":  # the same weights as llama.cpp's converter writes them
        # On sp=4: on sp=8 its program is the HF model's, read back from the tests' persistent
        # compilation cache, and such an executable of a Gemma 3 model crashes XLA:CPU or gives
        # NaN now and then (jax 0.10.2; not Mistral's or Qwen's, nor a Gemma of one layer kind).
        from_gguf = rk.load_model(_gemma3_gguf(tmp_path / "m.gguf", reference),
                                  mesh=rk.make_mesh(sp=4, devices=jax.devices()[:4]))
        assert from_gguf.config.local_layers == model.config.local_layers
        assert from_gguf.config.context_length == model.config.context_length
        err = np.abs(np.asarray(from_gguf.logits(ids)) - got).max() / np.abs(got).max()
        assert err < 1e-5, f"GGUF vs HF: relative error {err:.2e}"

    tp = model.config.n_kv_heads
    sharded = rk.load_model(tmp_path, mesh=rk.make_mesh(tp=tp, sp=2, devices=jax.devices()[:2 * tp]))
    prompt = ids[0, :model.config.sliding_window + int(rng.integers(10, 80))]
    assert_same_greedy(sharded, reference, prompt, 24)


def test_hub_configs_leave_out_gemma3s_defaults():
    """gemma-3-4b's config.json names in its text_config only what differs from
    Gemma3TextConfig's defaults (no heads, vocabulary or RoPE base); the reader fills them as
    transformers does, giving the preset."""
    from ringkit.model.config import ModelConfig
    from ringkit.model.weights.hf import config_from_hf

    values = {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
              "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                              "intermediate_size": 10240, "num_hidden_layers": 34,
                              "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                              "sliding_window": 1024},
              "vision_config": {"model_type": "siglip_vision_model"}}
    config = config_from_hf(values, "gemma-3-4b")
    assert config == ModelConfig.preset("gemma-3-4b").replace(name="gemma-3-4b")
