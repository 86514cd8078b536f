"""Write small checkpoints in the formats users bring (GGUF, HF safetensors, LWM msgpack)."""

import json

import msgpack
import numpy as np

from model_reference import params64

_HF_LAYER = {
    "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
    "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
    "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
    "w_down": "mlp.down_proj",
}


def hf_state(variables, cfg):
    """HF LlamaForCausalLM tensors ((out, in) layout, rotate-half q/k) as float32 numpy."""
    top, layers = params64(variables)
    d = cfg.d_model
    out = {"model.embed_tokens.weight": top["embed"], "model.norm.weight": top["final_norm"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = top["lm_head"].T
    for i in range(cfg.n_layers):
        for name, hf in _HF_LAYER.items():
            w = layers[name][i]
            if name in ("wq", "wk", "wv"):
                w = w.reshape(d, -1).T
            elif name == "wo":
                w = w.reshape(-1, d).T
            elif name.startswith("w_"):
                w = w.T
            out[f"model.layers.{i}.{hf}.weight"] = w
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def write_hf_dir(folder, variables, cfg, tokenizer, **config_extra):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_position,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    config.update(config_extra)
    (folder / "config.json").write_text(json.dumps(config))
    state = hf_state(variables, cfg)
    names = sorted(state)
    half = len(names) // 2  # two shards, as large checkpoints come
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file({k: state[k] for k in names[:half]}, str(folder / files[0]))
    save_file({k: state[k] for k in names[half:]}, str(folder / files[1]))
    weight_map = {k: files[i >= half] for i, k in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    tokenizer.backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
        "add_bos_token": False, "chat_template": tokenizer.chat_template}))
    return folder


def _permute(w, heads):
    """llama.cpp's q/k row permutation (HF rotate-half rows -> interleaved rows)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_gguf(path, variables, cfg, *, arch="llama", quant_type=None, fields=None,
               extra_tensors=None):
    """A llama GGUF (F32 tensors, one optionally stored as ``quant_type`` raw bytes).

    ``fields`` overrides metadata: ``{key: value}`` (the value's type picks the GGUF type: int
    -> uint32, float -> float32, str -> string) or ``{key: None}`` to leave a field out; an
    ``{arch}`` in a key is the architecture. ``extra_tensors`` adds tensors by name."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    byte_tokens = [chr(b) if 33 <= b <= 126 else f"<0x{b:02X}>" for b in range(cfg.vocab_size)]
    meta = {
        "{arch}.context_length": cfg.max_position,
        "{arch}.embedding_length": cfg.d_model, "{arch}.block_count": cfg.n_layers,
        "{arch}.feed_forward_length": cfg.ffn_dim, "{arch}.attention.head_count": cfg.n_heads,
        "{arch}.attention.head_count_kv": cfg.n_kv_heads,
        "{arch}.rope.freq_base": float(cfg.rope_theta),
        "{arch}.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "{arch}.vocab_size": cfg.vocab_size, "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": byte_tokens,
        "tokenizer.ggml.token_type": [1] * cfg.vocab_size, "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
    }
    meta.update(fields or {})
    kinds = {int: gguf.GGUFValueType.UINT32, float: gguf.GGUFValueType.FLOAT32,
             str: gguf.GGUFValueType.STRING, bool: gguf.GGUFValueType.BOOL}
    for key, value in meta.items():
        if value is None or value == []:  # gguf writes no empty arrays
            continue
        key = key.replace("{arch}", arch)
        if isinstance(value, list):
            sub = kinds[type(value[0])]
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=sub)
        else:
            writer.add_key_value(key, value, kinds[type(value)])
    state = hf_state(variables, cfg)
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        tensors = {
            "attn_norm": state[p + "input_layernorm.weight"],
            "ffn_norm": state[p + "post_attention_layernorm.weight"],
            "attn_q": _permute(state[p + "self_attn.q_proj.weight"], cfg.n_heads),
            "attn_k": _permute(state[p + "self_attn.k_proj.weight"], cfg.n_kv_heads),
            "attn_v": state[p + "self_attn.v_proj.weight"],
            "attn_output": state[p + "self_attn.o_proj.weight"],
            "ffn_gate": state[p + "mlp.gate_proj.weight"],
            "ffn_up": state[p + "mlp.up_proj.weight"],
            "ffn_down": state[p + "mlp.down_proj.weight"],
        }
        for name, w in tensors.items():
            if quant_type is not None and i == 0 and name == "attn_v":
                import gguf as g

                block, size = g.GGML_QUANT_SIZES[quant_type]
                raw = np.zeros((w.shape[0], w.shape[1] // block * size), np.uint8)
                writer.add_tensor(f"blk.{i}.{name}.weight", raw, raw_dtype=quant_type)
            else:
                writer.add_tensor(f"blk.{i}.{name}.weight", w)
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not cfg.tie_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    for name, w in (extra_tensors or {}).items():
        writer.add_tensor(name, np.asarray(w, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def rewrite_lwm_unscanned(src, dst):
    """Re-save an LWM scan_layers=True ``params`` stream with per-layer keys ``h/<i>/...``."""
    records = []
    with open(src, "rb") as f:
        for key, payload in msgpack.Unpacker(f, raw=False):
            if key[:3] != ["transformer", "h", "scan_decoder"]:
                records.append((key, payload))
                continue
            ext = msgpack.unpackb(payload, raw=False, ext_hook=lambda c, d: msgpack.unpackb(d))
            shape, dtype, raw = ext
            per = len(raw) // shape[0]
            for i in range(shape[0]):
                inner = msgpack.packb([shape[1:], dtype, raw[i * per:(i + 1) * per]])
                records.append(([*key[:2], str(i), *key[3:]],
                                msgpack.packb(msgpack.ExtType(1, inner))))
    with open(dst, "wb") as f:
        for key, payload in sorted(records):
            f.write(msgpack.packb([key, payload]))
    return dst
