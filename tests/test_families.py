"""The long-context model families users run (Llama 3.x, Qwen2/2.5, Qwen3, Mistral) against
transformers itself: tiny random checkpoints written by ``save_pretrained`` (no download),
logits at ~1K tokens on sp=8 and greedy tokens through prefill + the sharded decode on a tp=2
mesh. Sizes are drawn per run: odd head counts, one KV head, explicit head_dim, both config
forms (legacy ``rope_theta`` + ``rope_scaling`` and transformers 5's ``rope_parameters``);
sliding windows (Mistral's, Qwen's ``use_sliding_window`` layers) with decode past the window.
Gemma 3 is in test_gemma3.py."""

import json

import jax
import numpy as np
import pytest

import ringkit as rk
from families import VOCAB, assert_same_greedy, word_tokenizer

torch = pytest.importorskip("torch", reason="the transformers reference needs torch (dev extra)")
transformers = pytest.importorskip("transformers")

ROPE = {  # name -> rope parameters (theta added per case)
    "default": {"rope_type": "default"},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 512},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
    "linear": {"rope_type": "linear", "factor": 2.0},
}
FAMILIES = [  # (model type, rope, legacy config form)
    ("llama", "llama3", False), ("llama", "default", True), ("qwen2", "yarn", False),
    ("qwen2", "default", True), ("qwen3", "default", False), ("qwen3", "linear", True),
    ("mistral", "default", False),
]
CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
           "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
           "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
           "mistral": ("MistralConfig", "MistralForCausalLM")}
def _checkpoint(folder, kind, rope, legacy, rng, layers=2):
    """A tiny random checkpoint of ``kind`` written by transformers; returns the torch model."""
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[kind])
    kv = int(rng.choice([1, 2, 2, 3]))
    heads = kv * int(rng.choice([1, 3, 5]))  # odd group sizes, one KV head sometimes
    head_dim = int(rng.choice([8, 16, 24]))
    theta = float(rng.choice([1e4, 5e5, 1e6]))
    params = {**ROPE[rope], "rope_theta": theta}
    sizes = dict(vocab_size=VOCAB, hidden_size=heads * int(rng.choice([8, 12])),
                 intermediate_size=int(rng.choice([64, 96])), num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                 max_position_embeddings=4096, rms_norm_eps=1e-6,
                 tie_word_embeddings=bool(rng.integers(2)))
    config = config_cls(**sizes, rope_parameters=params)
    torch.manual_seed(int(rng.integers(1 << 30)))
    model = model_cls(config).eval()
    with torch.no_grad():  # past the near-zero init, so the attention pattern matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    word_tokenizer(folder)
    if legacy:  # the pre-5 form: rope_theta at the top, scaling in rope_scaling
        values = json.loads((folder / "config.json").read_text())
        rp = values.pop("rope_parameters")
        values["rope_theta"] = rp.pop("rope_theta")
        if rp["rope_type"] != "default":
            values["rope_scaling"] = rp
        (folder / "config.json").write_text(json.dumps(values))
    return model


def _llama3_divisors(rope: dict, theta: float, head_dim: int) -> np.ndarray:
    """llama.cpp's rope_freqs for Llama 3 scaling, as its converter computes them."""
    inv = theta ** -(np.arange(0, head_dim, 2) / head_dim)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    out = []
    for wavelength in 2 * np.pi / inv:
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _gguf(path, reference, kind, rope):
    """The same weights as llama.cpp's converter writes them (arch llama for Llama and Mistral,
    with q/k rows permuted; qwen2, qwen3 as they are)."""
    import gguf

    cfg = reference.config
    arch = "llama" if kind in ("llama", "mistral") else kind
    rp = dict(cfg.rope_parameters)
    w = gguf.GGUFWriter(str(path), arch)
    if rope in ("yarn", "linear"):  # llama.cpp's converter writes these as metadata
        w.add_string(f"{arch}.rope.scaling.type", rope)
        w.add_float32(f"{arch}.rope.scaling.factor", rp["factor"])
        if "original_max_position_embeddings" in rp:
            w.add_uint32(f"{arch}.rope.scaling.original_context_length",
                         rp["original_max_position_embeddings"])
    heads, kv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    for key, value in (("context_length", cfg.max_position_embeddings),
                       ("embedding_length", cfg.hidden_size), ("block_count", cfg.num_hidden_layers),
                       ("feed_forward_length", cfg.intermediate_size),
                       ("attention.head_count", heads), ("attention.head_count_kv", kv),
                       ("attention.key_length", hd), ("attention.value_length", hd),
                       ("rope.dimension_count", hd), ("vocab_size", VOCAB)):
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", rp["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<{i}>" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_eos_token_id(1)

    def permute(x, n):  # HF rotate-half rows -> llama.cpp's interleaved rows
        if arch != "llama":
            return x
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"input_layernorm.weight": "attn_norm.weight",
             "post_attention_layernorm.weight": "ffn_norm.weight",
             "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
             "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
             "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
             "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
             "self_attn.v_proj.bias": "attn_v.bias", "self_attn.q_norm.weight": "attn_q_norm.weight",
             "self_attn.k_norm.weight": "attn_k_norm.weight"}
    state = {k: v.detach().numpy().astype(np.float32) for k, v in reference.state_dict().items()}
    for name, value in state.items():
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            if rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                value = permute(value, heads if "q_proj" in rest else kv)
            w.add_tensor(f"blk.{i}.{names[rest]}", np.ascontiguousarray(value))
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", state["lm_head.weight"])
    if rope == "llama3":
        w.add_tensor("rope_freqs.weight", _llama3_divisors(rp, rp["rope_theta"], hd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("kind, rope, legacy", FAMILIES,
                         ids=[f"{k}-{r}-{'legacy' if f else 'v5'}" for k, r, f in FAMILIES])
def test_family_matches_transformers(kind, rope, legacy, tmp_path, rng):
    reference = _checkpoint(tmp_path, kind, rope, legacy, rng)
    model = rk.load_model(tmp_path, mesh=rk.make_mesh(sp=8))
    ids = rng.integers(2, VOCAB, (1, int(rng.integers(1000, 1500))))
    got = np.asarray(model.logits(ids))
    with torch.no_grad():
        want = reference(torch.tensor(ids)).logits.numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error {err:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0
    # The same weights as llama.cpp writes them.
    from_gguf = rk.load_model(_gguf(tmp_path / "m.gguf", reference, kind, rope),
                              mesh=rk.make_mesh(sp=8))
    assert from_gguf.config.context_length == model.config.context_length
    assert (from_gguf.config.rope_scaling is not None) == (rope != "default")
    assert (from_gguf.config.qkv_bias, from_gguf.config.qk_norm) == (
        kind == "qwen2", kind == "qwen3")
    err = np.abs(np.asarray(from_gguf.logits(ids)) - got).max() / np.abs(got).max()
    assert err < 1e-5, f"GGUF vs HF: relative error {err:.2e}"

    # Greedy tokens through prefill + the sharded decode, KV heads split over tp (one per
    # device; a single KV head cannot be split: tp=1 there).
    tp = model.config.n_kv_heads
    sharded = rk.load_model(tmp_path, mesh=rk.make_mesh(tp=tp, sp=2 if tp > 1 else 4,
                                                        devices=jax.devices()[:2 * tp + 2 * (tp == 1)]))
    assert_same_greedy(sharded, reference, ids[0, :int(rng.integers(200, 400))].tolist(), 16)


WINDOWED = [("mistral", None), ("qwen2", "layer_types"), ("qwen3", "max_window_layers")]


@pytest.mark.parametrize("kind, form", WINDOWED, ids=[k for k, _ in WINDOWED])
def test_sliding_window_matches_transformers(kind, form, tmp_path, rng):
    """Mistral's window on every layer; Qwen2/3's on the layers from ``max_window_layers`` on,
    as transformers 5 writes them (``layer_types``) or as older configs do. The window is drawn
    shorter and longer than a device's chunk on sp=8, and far shorter than the input."""
    reference = _checkpoint(tmp_path, kind, "default", False, rng, layers=3)
    window = int(rng.choice([24, 40, 90, 200]))
    values = json.loads((tmp_path / "config.json").read_text())
    values["sliding_window"] = window
    if kind != "mistral":
        values.update(use_sliding_window=True, max_window_layers=1)
        values["layer_types"] = ["full_attention"] + ["sliding_attention"] * 2
        if form == "max_window_layers":
            del values["layer_types"]
    (tmp_path / "config.json").write_text(json.dumps(values))
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[kind])
    reference = model_cls.from_pretrained(tmp_path).eval()
    assert reference.config.sliding_window == window
    model = rk.load_model(tmp_path, mesh=rk.make_mesh(sp=8))
    assert model.config.local_layers == ((True,) * 3 if kind == "mistral" else (False, True, True))
    ids = rng.integers(2, VOCAB, (1, int(rng.integers(700, 1000))))
    got = np.asarray(model.logits(ids))
    with torch.no_grad():
        want = reference(torch.tensor(ids)).logits.numpy()
        unwindowed = model_cls(config_cls(**{
            **reference.config.to_dict(), "sliding_window": None, "use_sliding_window": False,
            "layer_types": None})).eval()
        unwindowed.load_state_dict(reference.state_dict())
        unwindowed = unwindowed(torch.tensor(ids)).logits.numpy()
    assert np.abs(unwindowed - want).max() / np.abs(want).max() > 1e-3  # the window matters
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error {err:.2e}"
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0
    # Greedy decode past the window: the cache's older slots fall out of local layers' view.
    sharded = rk.load_model(tmp_path, mesh=rk.make_mesh(sp=4, devices=jax.devices()[:4]))
    assert_same_greedy(sharded, reference, ids[0, :window + int(rng.integers(10, 60))], 24)


def test_dual_chunk_attention_is_named_not_ignored(tmp_path, rng):
    """Qwen2.5-1M declares 1,010,000 positions reached with dual chunk attention, which ringkit
    does not compute: the model runs up to the chunk length, and a longer input is refused by
    the field's name."""
    from ringkit.errors import ShapeError

    _checkpoint(tmp_path, "qwen2", "default", False, rng)
    values = json.loads((tmp_path / "config.json").read_text())
    values["dual_chunk_attention_config"] = {"chunk_size": 1024, "local_size": 64,
                                             "original_max_position_embeddings": 1024}
    (tmp_path / "config.json").write_text(json.dumps(values))
    model = rk.load_model(tmp_path)
    assert model.config.context_length == 1024
    model.check_length(1024)
    with pytest.raises(ShapeError, match=r"dual_chunk_attention_config.*up to 4,096"):
        model.logits(rng.integers(2, VOCAB, (1, 1025)))
