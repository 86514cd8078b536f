"""The long-context model families users run (Llama 3.x, Qwen2/2.5, Qwen3, Mistral) against
transformers itself: tiny random checkpoints written by ``save_pretrained`` (no download),
logits at ~1K tokens on sp=8 and greedy tokens through prefill + the sharded decode on a tp=2
mesh. Sizes are drawn per run: odd head counts, one KV head, explicit head_dim, both config
forms (legacy ``rope_theta`` + ``rope_scaling`` and transformers 5's ``rope_parameters``)."""

import json

import numpy as np
import pytest

import ringkit as rk

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
VOCAB = 128


def _tokenizer(folder):
    """A word-level tokenizer over <0> ... <VOCAB-1>, eos <1>, saved as HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"<{i}>": i for i in range(VOCAB)}, unk_token="<0>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<1>"}))


def _checkpoint(folder, kind, rope, legacy, rng):
    """A tiny random checkpoint of ``kind`` written by transformers; returns the torch model."""
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[kind])
    kv = int(rng.choice([1, 2, 2, 3]))
    heads = kv * int(rng.choice([1, 3, 5]))  # odd group sizes, one KV head sometimes
    head_dim = int(rng.choice([8, 16, 24]))
    theta = float(rng.choice([1e4, 5e5, 1e6]))
    params = {**ROPE[rope], "rope_theta": theta}
    sizes = dict(vocab_size=VOCAB, hidden_size=heads * int(rng.choice([8, 12])),
                 intermediate_size=int(rng.choice([64, 96])), num_hidden_layers=2,
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
    _tokenizer(folder)
    if legacy:  # the pre-5 form: rope_theta at the top, scaling in rope_scaling
        values = json.loads((folder / "config.json").read_text())
        rp = values.pop("rope_parameters")
        values["rope_theta"] = rp.pop("rope_theta")
        if rp["rope_type"] != "default":
            values["rope_scaling"] = rp
        (folder / "config.json").write_text(json.dumps(values))
    return model


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

    # Greedy tokens through prefill + the sharded decode, KV heads split over tp (one per
    # device; a single KV head cannot be split: tp=1 there).
    import jax

    tp = model.config.n_kv_heads
    sharded = rk.load_model(tmp_path, mesh=rk.make_mesh(tp=tp, sp=2 if tp > 1 else 4,
                                                        devices=jax.devices()[:2 * tp + 2 * (tp == 1)]))
    prompt = ids[0, :int(rng.integers(200, 400))].tolist()
    from ringkit.generate import generate_ids

    (mine,) = generate_ids(sharded, [prompt], max_new_tokens=16)
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                                    eos_token_id=1, pad_token_id=1)[0, len(prompt):].tolist()
    theirs = theirs[:theirs.index(1)] if 1 in theirs else theirs
    assert mine == theirs
