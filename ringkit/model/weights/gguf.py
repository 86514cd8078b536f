"""llama-architecture GGUF files (llama.cpp's format): config, dequantized weights, tokenizer.

``gguf_file`` reads the container and ``gguf`` dequantizes every supported type to float32 numpy.
llama.cpp stores q/k rows permuted for interleaved RoPE; they are un-permuted here to the HF
(rotate-half) order, so weights from every loader share one layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ringkit.errors import ConfigError, FormatError, UnsupportedError
from ringkit.model.config import ModelConfig
from ringkit.model.rope import RopeScaling
from ringkit.model.weights import gguf_file
from ringkit.model.weights.place import stack_layers

SUPPORTED_ARCHITECTURES = ("llama",)
_LAYER_TENSORS = {  # GGUF name -> (canonical name, transform)
    "attn_norm": "attn_norm", "ffn_norm": "mlp_norm", "attn_q": "wq", "attn_k": "wk",
    "attn_v": "wv", "attn_output": "wo", "ffn_gate": "w_gate", "ffn_up": "w_up",
    "ffn_down": "w_down",
}


def read_metadata(path) -> dict:
    """Every metadata field of the GGUF file at ``path`` as plain Python values (the tokenizer
    and config without the weights)."""
    return gguf_file.read(path, tensors=False)[0]


def config_from_fields(fields: dict, name: str) -> ModelConfig:
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"GGUF architecture {arch!r} is not supported; ringkit runs {SUPPORTED_ARCHITECTURES} "
            "(LLaMA-family decoders)")
    get = lambda key, default=None: fields.get(f"{arch}.{key}", default)
    try:
        d, heads = int(get("embedding_length")), int(get("attention.head_count"))
        kv = int(get("attention.head_count_kv", heads))
        head_dim = int(get("attention.key_length", get("rope.dimension_count", d // heads)))
        ctx = int(get("context_length"))
        scaling = None
        if get("rope.scaling.type") not in (None, "none"):
            kind = {"linear": "linear", "yarn": "yarn"}.get(get("rope.scaling.type"))
            if kind is None:
                raise UnsupportedError(
                    f"GGUF RoPE scaling {get('rope.scaling.type')!r} is not supported (linear, "
                    "yarn)")
            original = int(get("rope.scaling.original_context_length", ctx))
            scaling = RopeScaling(kind, float(get("rope.scaling.factor")), original)
        return ModelConfig(
            name=name, vocab_size=int(get("vocab_size", len(fields["tokenizer.ggml.tokens"]))),
            d_model=d, n_layers=int(get("block_count")), n_heads=heads, n_kv_heads=kv,
            head_dim=head_dim, ffn_dim=int(get("feed_forward_length")), max_position=ctx,
            rope_theta=float(get("rope.freq_base", 10000.0)),
            norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            tie_embeddings=False, rope_scaling=scaling)
    except (TypeError, KeyError) as err:
        raise FormatError(f"GGUF metadata for {name} lacks a required field ({err})") from None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows (pair, 2) -> (2, pair)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor: gguf_file.Tensor) -> np.ndarray:
    import gguf

    try:
        out = gguf.quants.dequantize(tensor.data, tensor.qtype)
    except NotImplementedError:
        raise UnsupportedError(
            f"tensor {tensor.name} uses quantization {tensor.qtype.name}, which gguf "
            "cannot dequantize; supported here: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 "
            "and the K-quants") from None
    return out.reshape(tensor.shape).astype(np.float32, copy=False)


def read_gguf(path) -> tuple[ModelConfig, dict, dict]:
    """``(config, canonical weights, metadata fields)`` of a llama-architecture GGUF file."""
    path = Path(path)
    fields, tensors = gguf_file.read(path)
    config = config_from_fields(fields, name=fields.get("general.name") or path.stem)
    h, kv, hd, d = config.n_heads, config.n_kv_heads, config.head_dim, config.d_model

    def get(name):
        if name not in tensors:
            raise FormatError(f"{path.name} has no tensor {name!r}: not a complete llama GGUF")
        return _dequantize(tensors[name])

    layers = []
    for i in range(config.n_layers):
        w = {canon: get(f"blk.{i}.{src}.weight") for src, canon in _LAYER_TENSORS.items()}
        w["wq"] = _unpermute(w["wq"], h).T.reshape(d, h, hd)
        w["wk"] = _unpermute(w["wk"], kv).T.reshape(d, kv, hd)
        w["wv"] = w["wv"].T.reshape(d, kv, hd)
        w["wo"] = w["wo"].T.reshape(h, hd, d)
        for name in ("w_gate", "w_up", "w_down"):
            w[name] = np.ascontiguousarray(w[name].T)
        layers.append(w)
    canonical = {"embed": get("token_embd.weight"), "final_norm": get("output_norm.weight"),
                 "layers": stack_layers(layers)}
    if "output.weight" in tensors:
        canonical["lm_head"] = np.ascontiguousarray(get("output.weight").T)
    else:
        config = config.replace(tie_embeddings=True)
    if canonical["embed"].shape[0] != config.vocab_size:
        raise ConfigError(f"token_embd has {canonical['embed'].shape[0]} rows but the metadata "
                          f"says vocab_size={config.vocab_size}")
    return config, canonical, fields
