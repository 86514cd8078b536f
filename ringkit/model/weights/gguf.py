"""GGUF files (llama.cpp's format) of the LLaMA family: architectures ``llama`` (Llama 1-3.x,
Mistral), ``qwen2`` (q/k/v biases), ``qwen3`` (per-head q/k norms) and ``gemma3`` (text); config,
dequantized weights, tokenizer.

``gguf_file`` reads the container and ``gguf`` dequantizes every supported type to float32 numpy.
llama.cpp stores a ``llama`` model's q/k rows permuted for interleaved RoPE; they are un-permuted
here to the HF (rotate-half) order, so weights from every loader share one layout (``qwen2`` and
``qwen3`` are stored unpermuted). Llama 3's RoPE scaling arrives as the ``rope_freqs`` tensor
(a divisor per frequency), honoured exactly.

A ``gemma3`` GGUF stores its norms as ``1 + w`` already, but not what llama.cpp fixes in code:
every 6th layer global (``attention.sliding_window_pattern`` where a file has it), local layers'
RoPE base 10,000, the softmax scale ``1/sqrt(head_dim)`` (``1/sqrt(d_model / heads)`` for the
62-layer 27B). Those rules are llama.cpp's and ringkit follows them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ringkit.errors import ConfigError, FormatError, UnsupportedError
from ringkit.model.config import ModelConfig
from ringkit.model.rope import RopeScaling
from ringkit.model.weights import gguf_file
from ringkit.model.weights.place import stack_layers

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")
_LAYER_TENSORS = {  # GGUF name -> canonical name
    "attn_norm.weight": "attn_norm", "ffn_norm.weight": "mlp_norm", "attn_q.weight": "wq",
    "attn_k.weight": "wk", "attn_v.weight": "wv", "attn_output.weight": "wo",
    "ffn_gate.weight": "w_gate", "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
}
_BIASES = {"attn_q.bias": "bq", "attn_k.bias": "bk", "attn_v.bias": "bv"}
_QK_NORMS = {"attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm"}
_GEMMA_NORMS = {"post_attention_norm.weight": "post_attn_norm",
                "post_ffw_norm.weight": "post_mlp_norm"}
GEMMA3_SWA_PATTERN, GEMMA3_LOCAL_THETA = 6, 10000.0  # llama.cpp's, not stored in the file


def read_metadata(path) -> dict:
    """Every metadata field of the GGUF file at ``path`` as plain Python values (the tokenizer
    and config without the weights)."""
    return gguf_file.read(path, tensors=False)[0]


def _field(fields: dict, key: str, kind, default=None, *, positive=True):
    """``fields[key]`` as ``kind`` (int or float), checked; ``default`` when it is absent."""
    value = fields.get(key, default)
    if value is None:
        raise FormatError(f"the GGUF metadata lacks {key}, which a LLaMA-family model needs")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (kind is int and value != int(value)) or not math.isfinite(value):
        raise FormatError(f"GGUF field {key} is {value!r}; it must be a "
                          f"{'whole ' if kind is int else ''}number")
    if positive and not value > 0:
        raise FormatError(f"GGUF field {key} is {value!r}; it must be positive")
    return kind(value)


def config_from_fields(fields: dict, name: str) -> ModelConfig:
    """A ``ModelConfig`` from GGUF metadata, each field checked; a field ringkit would not
    honour (experts, a sliding window, partial RoPE, ...) is refused by name."""
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedError(
            f"GGUF architecture {arch!r} is not supported; ringkit runs {SUPPORTED_ARCHITECTURES} "
            "(LLaMA-family decoders)")
    key = lambda k: f"{arch}.{k}"
    get = lambda k, kind=int, default=None: _field(fields, key(k), kind, default)
    d, heads = get("embedding_length"), get("attention.head_count")
    kv = get("attention.head_count_kv", default=heads)
    head_dim = get("attention.key_length", default=d // heads)
    if heads % kv or head_dim % 2:
        raise FormatError(f"{name}: GGUF head counts {heads} / {kv} (kv) and head size "
                          f"{head_dim} do not make a LLaMA attention")
    _refuse_unhonoured(fields, arch, head_dim)
    ctx = get("context_length")
    scaling = None
    kind = fields.get(key("rope.scaling.type"))
    if kind not in (None, "none"):
        if kind not in ("linear", "yarn"):
            raise UnsupportedError(f"GGUF RoPE scaling {kind!r} ({key('rope.scaling.type')}) is "
                                   "not supported (linear, yarn)")
        factor = get("rope.scaling.factor", float)
        # Gemma 3's context_length is the scaled one (131,072 = 8 x 16,384).
        original = get("rope.scaling.original_context_length",
                       default=int(ctx // factor) if arch == "gemma3" else ctx)
        scaling = RopeScaling(kind, factor, original)
        ctx = original  # the context is original x factor, as for an HF config
    tokens = fields.get("tokenizer.ggml.tokens")
    n_layers = get("block_count")
    gemma = {}
    if arch == "gemma3":
        scalar = d // heads if n_layers == 62 else head_dim  # llama.cpp: the 27B differs
        cap = fields.get(key("final_logit_softcapping"))
        gemma = dict(
            sliding_window=get("attention.sliding_window"), activation="gelu_tanh",
            layer_types=_gemma3_layer_types(fields.get(key("attention.sliding_window_pattern")),
                                            n_layers),
            post_norms=True, embed_scale=math.sqrt(d),
            query_scale=get("attention.scale", float, scalar ** -0.5),
            rope_local_theta=get("rope.freq_base_swa", float, GEMMA3_LOCAL_THETA),
            final_softcap=float(cap) if cap else None)
    return ModelConfig(
        name=name, vocab_size=get("vocab_size", default=len(tokens) if tokens else None),
        d_model=d, n_layers=n_layers, n_heads=heads, n_kv_heads=kv,
        head_dim=head_dim, ffn_dim=get("feed_forward_length"), max_position=ctx,
        rope_theta=get("rope.freq_base", float, 10000.0),
        norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
        tie_embeddings=False, rope_scaling=scaling, qkv_bias=arch == "qwen2",
        qk_norm=arch in ("qwen3", "gemma3"), **gemma)


def _gemma3_layer_types(pattern, n_layers: int) -> tuple[str, ...]:
    """Layer kinds from ``attention.sliding_window_pattern``: a period (every n-th layer global)
    or one flag per layer (True: local); absent, llama.cpp's period of 6."""
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != n_layers:
            raise FormatError(f"attention.sliding_window_pattern has {len(pattern)} flags for "
                              f"{n_layers} layers")
        local = [bool(x) for x in pattern]
    else:
        period = int(pattern or GEMMA3_SWA_PATTERN)
        local = [(i + 1) % period != 0 for i in range(n_layers)]
    return tuple("sliding_attention" if x else "full_attention" for x in local)


def _refuse_unhonoured(fields: dict, arch: str, head_dim: int) -> None:
    """Metadata that changes what the model computes in ways ringkit does not (yet)."""
    def refuse(k, what):
        raise UnsupportedError(f"this GGUF sets {arch}.{k} = {fields[f'{arch}.{k}']!r} "
                               f"({what}), which ringkit does not compute; it refuses the file "
                               "rather than run a different model")

    present = lambda k: fields.get(f"{arch}.{k}") not in (None, 0)
    if present("expert_count"):
        refuse("expert_count", "a mixture of experts")
    if present("attention.sliding_window") and arch != "gemma3":  # no layer kinds stored
        refuse("attention.sliding_window", "sliding-window attention")
    if fields.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        refuse("rope.dimension_count", "RoPE on part of each head")
    if fields.get(f"{arch}.attention.value_length", head_dim) != head_dim:
        refuse("attention.value_length", "values of another size than keys")
    for k in ("attn_logit_softcapping", "final_logit_softcapping"):
        if present(k) and (arch, k) != ("gemma3", "final_logit_softcapping"):
            refuse(k, "soft-capped logits")
    for k in ("rope.scaling.attn_factor", "logit_scale", "embedding_scale", "residual_scale"):
        if fields.get(f"{arch}.{k}", 1) != 1:
            refuse(k, "a scale on activations")


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


def _layer(get, names: dict, i: int, config: ModelConfig, unpermute) -> dict:
    """Layer ``i``'s canonical tensors from ``get`` (GGUF name -> float32 array)."""
    h, kv, hd, d = config.n_heads, config.n_kv_heads, config.head_dim, config.d_model
    w = {canon: get(f"blk.{i}.{src}") for src, canon in names.items()}
    w["wq"] = unpermute(w["wq"], h).T.reshape(d, h, hd)
    w["wk"] = unpermute(w["wk"], kv).T.reshape(d, kv, hd)
    w["wv"] = w["wv"].T.reshape(d, kv, hd)
    w["wo"] = w["wo"].T.reshape(h, hd, d)
    for name in ("w_gate", "w_up", "w_down"):
        w[name] = np.ascontiguousarray(w[name].T)
    if config.qkv_bias:
        w["bq"] = unpermute(w["bq"], h).reshape(h, hd)
        w["bk"] = unpermute(w["bk"], kv).reshape(kv, hd)
        w["bv"] = w["bv"].reshape(kv, hd)
    return w


def read_gguf(path) -> tuple[ModelConfig, dict, dict]:
    """``(config, canonical weights, metadata fields)`` of a GGUF file (see the module)."""
    path = Path(path)
    fields, tensors = gguf_file.read(path)
    config = config_from_fields(fields, name=fields.get("general.name") or path.stem)

    def get(name):
        if name not in tensors:
            raise FormatError(f"{path.name} has no tensor {name!r}: not a complete "
                              f"{fields['general.architecture']} GGUF")
        return _dequantize(tensors[name])

    names = {**_LAYER_TENSORS, **(_BIASES if config.qkv_bias else {}),
             **(_QK_NORMS if config.qk_norm else {}), **(_GEMMA_NORMS if config.post_norms else {})}
    permuted = fields["general.architecture"] == "llama"
    unpermute = (lambda w, heads: _unpermute(w, heads)) if permuted else (lambda w, heads: w)
    try:
        layers = [_layer(get, names, i, config, unpermute) for i in range(config.n_layers)]
    except ValueError as e:  # a tensor whose size does not fit the metadata's shapes
        raise FormatError(f"{path.name}: a tensor's shape does not match the metadata ({e})"
                          ) from None
    canonical = {"embed": get("token_embd.weight"), "final_norm": get("output_norm.weight"),
                 "layers": stack_layers(layers)}
    if "rope_freqs.weight" in tensors:  # Llama 3's scaling: one divisor per frequency
        if config.rope_scaling is not None:
            raise UnsupportedError(f"{path.name} has both rope_freqs and a RoPE scaling type")
        divisors = tuple(float(x) for x in get("rope_freqs.weight").reshape(-1))
        config = config.replace(rope_scaling=RopeScaling(
            "factors", 1.0, config.max_position, divisors=divisors))
    used = {f"blk.{i}.{src}" for i in range(config.n_layers) for src in names}
    unused = sorted(set(tensors) - used - {"token_embd.weight", "output_norm.weight",
                                           "output.weight", "rope_freqs.weight"})
    if unused:  # a bias, a norm, a layer beyond block_count: never skipped
        raise UnsupportedError(
            f"{path.name} holds {len(unused)} tensor(s) ringkit would ignore "
            f"({', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}); it refuses the file "
            "rather than run a different model")
    if "output.weight" in tensors:
        canonical["lm_head"] = np.ascontiguousarray(get("output.weight").T)
    else:
        config = config.replace(tie_embeddings=True)
    if canonical["embed"].shape[0] != config.vocab_size:
        raise ConfigError(f"token_embd has {canonical['embed'].shape[0]} rows but the metadata "
                          f"says vocab_size={config.vocab_size}")
    return config, canonical, fields
