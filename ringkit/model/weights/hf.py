"""HF checkpoints of the LLaMA family (llama incl. Llama 3.x, mistral, qwen2, qwen3) and Gemma 3
(gemma3_text, gemma3's text tower; its differences in ``hf_gemma``): ``config.json``,
safetensors shards, tokenizer files.

Safetensors are memory-mapped (bfloat16 included), so a tensor's bytes are read only when a
device's shard of it is built. A config that needs remote code is refused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ringkit.errors import ConfigError, FormatError, RingkitError, ShapeError, UnsupportedError
from ringkit.model.config import LAYER_TYPES, ModelConfig
from ringkit.model.rope import RopeScaling
from ringkit.model.weights import hf_gemma
from ringkit.tokenize.text import Tokenizer

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", *hf_gemma.GEMMA_TYPES)
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "F64": np.float64}
_LAYER = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "mlp_norm",
    "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv", "self_attn.o_proj.weight": "wo",
    "mlp.gate_proj.weight": "w_gate", "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}
_BIASES = {"self_attn.q_proj.bias": "bq", "self_attn.k_proj.bias": "bk",
           "self_attn.v_proj.bias": "bv"}                                     # qkv_bias
_QK_NORMS = {"self_attn.q_norm.weight": "q_norm", "self_attn.k_norm.weight": "k_norm"}  # qk_norm


def layer_tensors(config: ModelConfig) -> dict[str, str]:
    """HF per-layer tensor names -> canonical names, for this config's pieces."""
    return {**_LAYER, **(_BIASES if config.qkv_bias else {}),
            **(_QK_NORMS if config.qk_norm else {})}


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Memory-mapped arrays of one ``.safetensors`` file (checked against the file size)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except (ValueError, OSError, RecursionError) as err:  # RecursionError: "[[[[..."
        raise FormatError(f"{path} is not a safetensors file ({err}); it may be truncated or "
                          "corrupt") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path} is not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        try:
            out[name] = _tensor(path, name, info, 8 + n, size)
        except RingkitError:  # some are ValueErrors too
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise FormatError(f"tensor {name} in {path} has a malformed header entry ({err!r:.80})"
                              "; the file is corrupt") from None
    return out


def _tensor(path: Path, name: str, info: dict, data_start: int, size: int) -> np.memmap:
    dtype = _DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise UnsupportedError(f"tensor {name} in {path.name} has dtype {info.get('dtype')}; "
                               f"supported: {sorted(_DTYPES)}")
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    whole = lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0
    if not all(map(whole, (start, end, *shape))):
        raise ValueError("offsets and shape must be whole numbers >= 0")
    if data_start + end > size or end - start != np.dtype(dtype).itemsize * math.prod(shape):
        raise FormatError(f"tensor {name} lies outside {path} ({size} bytes): the file is "
                          "truncated or corrupt")
    if not math.prod(shape):
        return np.zeros(shape, dtype)  # a memmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + start, shape=shape)


def config_from_hf(values: dict, name: str) -> ModelConfig:
    if not isinstance(values, dict):
        raise FormatError(f"{name}: its config.json holds a JSON {type(values).__name__}, not "
                          "a JSON object of settings; is it a model's config.json?")
    if values.get("auto_map") or values.get("trust_remote_code"):
        raise UnsupportedError(
            f"{name} asks for remote code (auto_map); ringkit never runs code from a checkpoint")
    kind = values.get("model_type")
    if kind not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedError(
            f"model_type {kind!r} is not supported; ringkit runs {SUPPORTED_MODEL_TYPES}")
    if values.get("attention_bias") or values.get("mlp_bias"):  # Qwen2's q/k/v biases are run
        raise UnsupportedError(f"{name} sets attention_bias or mlp_bias (biases on every "
                               "projection), which ringkit does not run")
    gemma = kind in hf_gemma.GEMMA_TYPES
    if values.get("hidden_act", "silu") != "silu" and not gemma:
        raise UnsupportedError(f"{name} uses activation {values['hidden_act']!r}; only silu")
    try:
        if gemma:
            values = hf_gemma.llama_view(hf_gemma.text_values(values))
        config = _config(values, name)
        _refuse_unhonoured(values, name, config)
        if gemma:
            config = config.replace(**hf_gemma.gemma_fields(values))
    except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"has a bad value ({e})"
        raise FormatError(f"{name}: config.json {what}; a LLaMA-family config needs "
                          "hidden_size, num_attention_heads, num_hidden_layers, "
                          "intermediate_size and vocab_size") from None
    return config


def _refuse_unhonoured(values: dict, name: str, config: ModelConfig) -> None:
    """Config fields that change what the model computes in ways ringkit does not (yet): the
    checkpoint is refused by field name rather than run as a different model."""
    def refuse(field, what):
        raise UnsupportedError(f"{name}: config.json sets {field} = {values[field]!r} ({what}), "
                               "which ringkit does not compute; it refuses the checkpoint rather "
                               "than run a different model")

    if not set(values.get("layer_types") or ()) <= set(LAYER_TYPES):
        refuse("layer_types", f"layers other than {' and '.join(LAYER_TYPES)}")
    if values.get("quantization_config"):
        refuse("quantization_config", "quantized weights; load the unquantized checkpoint or a "
                                      "GGUF")
    if values.get("partial_rotary_factor", 1) != 1:
        refuse("partial_rotary_factor", "RoPE on part of each head")
    rs = _rope_scaling(values) or {}
    if rs and rs.get("truncate", True) is False:
        raise UnsupportedError(f"{name}: rope_scaling sets truncate = false, which ringkit does "
                               "not compute")


def _rope_parameters(values: dict) -> dict:
    """transformers 5's ``rope_parameters`` (theta and scaling in one dict), or {}."""
    rp = values.get("rope_parameters")
    return rp if isinstance(rp, dict) else {}


def _rope_scaling(values: dict) -> dict | None:
    """The RoPE scaling dict in either form: legacy ``rope_scaling`` or ``rope_parameters``
    with a ``rope_type`` other than default."""
    rs = values.get("rope_scaling") or _rope_parameters(values)
    return rs if rs and rs.get("rope_type", rs.get("type", "default")) != "default" else None


def _yarn_attention_factor(rs: dict, factor: float) -> float | None:
    """YaRN's temperature as transformers computes it: given, or from ``mscale`` and
    ``mscale_all_dim`` (DeepSeek), else None (the default 0.1 ln(factor) + 1)."""
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    if rs.get("mscale") and rs.get("mscale_all_dim"):
        m = lambda scale: 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0
        return m(float(rs["mscale"])) / m(float(rs["mscale_all_dim"]))
    return None


def _config(values: dict, name: str) -> ModelConfig:
    d, heads = int(values["hidden_size"]), int(values["num_attention_heads"])
    if min(d, heads, int(values["num_hidden_layers"]), int(values["vocab_size"])) < 1:
        raise ValueError("sizes must be >= 1")
    ctx = int(values.get("max_position_embeddings", 4096))
    scaling = None
    rs = _rope_scaling(values)
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind not in ("linear", "yarn", "llama3"):
            raise UnsupportedError(f"RoPE scaling {kind!r} is not supported (linear, yarn, "
                                   "llama3)")
        original = int(rs.get("original_max_position_embeddings") or ctx)
        factor = float(rs.get("factor") or ctx / original)  # DeepSeek-style: the ratio
        scaling = RopeScaling(
            kind, factor, original, beta_fast=float(rs.get("beta_fast") or 32.0),
            beta_slow=float(rs.get("beta_slow") or 1.0),
            attention_factor=_yarn_attention_factor(rs, factor) if kind == "yarn" else None,
            low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rs.get("high_freq_factor", 4.0)))
        if kind != "llama3":  # Llama 3's max_position_embeddings is the scaled context already
            ctx = original
    beyond = None
    dca = values.get("dual_chunk_attention_config")
    if dca:  # Qwen2.5-1M: full attention up to its chunk length, DCA (not run here) past it
        reach = int(dca.get("original_max_position_embeddings") or dca["chunk_size"])
        if reach < ctx:
            beyond = f"dual chunk attention (dual_chunk_attention_config) up to {ctx:,}"
            ctx = reach
    return ModelConfig(
        name=name, vocab_size=int(values["vocab_size"]), d_model=d,
        n_layers=int(values["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(values.get("num_key_value_heads") or heads),
        head_dim=int(values.get("head_dim") or d // heads),
        ffn_dim=int(values["intermediate_size"]), max_position=ctx,
        rope_theta=float(values.get("rope_theta") or _rope_parameters(values).get("rope_theta")
                         or 10000.0),
        norm_eps=float(values.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(values.get("tie_word_embeddings", False)), rope_scaling=scaling,
        qkv_bias=values.get("model_type") == "qwen2", qk_norm=values.get("model_type") == "qwen3",
        beyond_context=beyond, **_windows(values, int(values["num_hidden_layers"])))


def _windows(values: dict, n_layers: int) -> dict:
    """``sliding_window`` and ``layer_types`` as transformers reads them: Mistral's window on
    every layer; Qwen2/3's only with ``use_sliding_window``, on the layers ``layer_types`` names
    (configs before transformers 5: from ``max_window_layers`` on)."""
    window = values.get("sliding_window")
    if not window or values.get("use_sliding_window", True) is False:
        return {}
    types = values.get("layer_types")
    if types is None and values.get("max_window_layers") is not None:
        first = int(values["max_window_layers"])
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    if types is not None and "sliding_attention" not in types:
        return {}
    return dict(sliding_window=int(window), layer_types=None if types is None else tuple(types))


class _Lazy:
    """A host array transformed on access (transpose + reshape), so shards read only their
    bytes from the memory map."""

    def __init__(self, src, fn, shape):
        self.src, self.fn, self.shape = src, fn, shape

    def __getitem__(self, index):
        return self.fn(self.src)[index]

    def __array__(self, dtype=None, copy=None):
        out = self.fn(self.src)
        return out if dtype is None else out.astype(dtype)


class _Stack:
    """Per-layer arrays seen as one stacked ``[L, ...]`` array."""

    def __init__(self, layers):
        self.layers = layers
        self.shape = (len(layers),) + tuple(layers[0].shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        first, rest = index[0], index[1:]
        if isinstance(first, (int, np.integer)):
            return np.asarray(self.layers[first])[rest] if rest else np.asarray(self.layers[first])
        return np.stack([np.asarray(self.layers[i])[rest] for i in range(self.shape[0])[first]])


def read_hf(folder) -> tuple[ModelConfig, dict, Tokenizer]:
    """``(config, canonical weights, tokenizer)`` of an HF LLaMA-family directory."""
    folder = Path(folder)
    try:
        values = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"cannot read {folder / 'config.json'}: {err}") from None
    name = (values.get("_name_or_path") if isinstance(values, dict) else None) or folder.name
    config = config_from_hf(values, name=name)
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(read_safetensors(path))
    h, kv, hd, d = config.n_heads, config.n_kv_heads, config.head_dim, config.d_model
    gemma = values.get("model_type") in hf_gemma.GEMMA_TYPES
    top = hf_gemma.prefix(tensors) if gemma else "model."
    plus_one = lambda w: np.asarray(w, np.float32) + 1  # Gemma's norms scale by 1 + w

    def need(name, canon=None):
        if name not in tensors:
            raise FormatError(f"{folder} has no tensor {name!r}")
        if gemma and canon in hf_gemma.NORMS:
            return _Lazy(tensors[name], plus_one, tuple(tensors[name].shape))
        return tensors[name]

    split = {  # (out, in) -> canonical layout
        "wq": lambda w: np.asarray(w).T.reshape(d, h, hd),
        "wk": lambda w: np.asarray(w).T.reshape(d, kv, hd),
        "wv": lambda w: np.asarray(w).T.reshape(d, kv, hd),
        "wo": lambda w: np.asarray(w).T.reshape(h, hd, d),
        "w_gate": lambda w: np.asarray(w).T, "w_up": lambda w: np.asarray(w).T,
        "w_down": lambda w: np.asarray(w).T,
        "bq": lambda b: np.asarray(b).reshape(h, hd), "bk": lambda b: np.asarray(b).reshape(kv, hd),
        "bv": lambda b: np.asarray(b).reshape(kv, hd),
    }
    # The projections are split into heads here, before placement checks the other shapes.
    expected = {"wq": (h * hd, d), "wk": (kv * hd, d), "wv": (kv * hd, d), "wo": (d, h * hd),
                "bq": (h * hd,), "bk": (kv * hd,), "bv": (kv * hd,)}
    names = hf_gemma.LAYER if gemma else layer_tensors(config)
    layers = {}
    for src, canon in names.items():
        per = []
        for i in range(config.n_layers):
            w = need(f"{top}layers.{i}.{src}", canon)
            if canon in expected and tuple(w.shape) != expected[canon]:
                raise ShapeError(f"tensor {top}layers.{i}.{src} has shape {tuple(w.shape)} in "
                                 f"the checkpoint but config.json implies {expected[canon]}")
            if canon in split:
                shape = split[canon](np.empty(w.shape, np.uint8)).shape
                per.append(_Lazy(w, split[canon], shape))
            else:
                per.append(w)
        layers[canon] = _Stack(per)
    canonical = {"embed": need(f"{top}embed_tokens.weight"),
                 "final_norm": need(f"{top}norm.weight", "final_norm"), "layers": layers}
    if "lm_head.weight" in tensors and not config.tie_embeddings:
        w = tensors["lm_head.weight"]
        canonical["lm_head"] = _Lazy(w, lambda x: np.asarray(x).T, tuple(reversed(w.shape)))
    elif not config.tie_embeddings:
        raise FormatError(f"{folder} has no lm_head.weight but tie_word_embeddings is false")
    used = {f"{top}layers.{i}.{src}" for i in range(config.n_layers) for src in names}
    unused = sorted(n for n in set(tensors) - used - {f"{top}embed_tokens.weight",
                                                       f"{top}norm.weight", "lm_head.weight"}
                    if not n.endswith("rotary_emb.inv_freq")  # a buffer some exports keep
                    and not (gemma and n.startswith(hf_gemma.UNREAD)))  # gemma3's image side
    if unused:  # biases, q/k norms, layers beyond num_hidden_layers: never silently skipped
        raise UnsupportedError(
            f"{folder} holds {len(unused)} tensor(s) ringkit would ignore "
            f"({', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}); it refuses the checkpoint "
            "rather than run a different model")
    return config, canonical, Tokenizer.from_hf_dir(folder)


def download(repo_id: str) -> Path:
    """Fetch an HF hub repository's config, weights and tokenizer (never when offline)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConfigError(
            f"{repo_id!r} looks like an HF hub id but HF_HUB_OFFLINE is set; download it on a "
            "machine with network and pass the local directory instead")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError("loading from the HF hub needs huggingface_hub: pip install "
                          "huggingface_hub") from None
    patterns = ["config.json", "generation_config.json", "*.safetensors", "tokenizer*",
                "special_tokens_map.json", "chat_template.jinja"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as err:
        raise ConfigError(f"could not download {repo_id!r} from the HF hub: {err}") from None
