"""LWM (Large World Model) checkpoints: the ``params`` msgpack stream (the ``vqgan`` pickle
beside it is read by ``ringkit.tokenize.vqgan_file``).

``params`` is a concatenation of msgpack records ``[key_path, flax_bytes]`` where ``flax_bytes``
is ``flax.serialization.to_bytes(array)``: msgpack ExtType 1 holding ``[shape, dtype, raw]``
(float32 or bfloat16). Layers are stacked under ``transformer/h/scan_decoder`` (``scan_layers``)
or stored per layer under ``transformer/h/<i>``. Dense kernels are ``(in, out)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np

from ringkit.errors import ConfigError, FormatError
from ringkit.model.config import ModelConfig
from ringkit.tokenize.text import Tokenizer

_TOP = {
    ("transformer", "wte", "embedding"): "embed",
    ("transformer", "vte", "embedding"): "vision_embed",
    ("transformer", "ln_f", "kernel"): "final_norm",
    ("lm_head", "kernel"): "lm_head",
    ("vision_head", "kernel"): "vision_head",
}
_LAYER = {
    ("attention", "wq", "kernel"): "wq", ("attention", "wk", "kernel"): "wk",
    ("attention", "wv", "kernel"): "wv", ("attention", "wo", "kernel"): "wo",
    ("attention_norm", "kernel"): "attn_norm", ("ffn_norm", "kernel"): "mlp_norm",
    ("feed_forward", "w1", "kernel"): "w_gate", ("feed_forward", "w3", "kernel"): "w_up",
    ("feed_forward", "w2", "kernel"): "w_down",
}
_DTYPES = {"float32": np.float32, "bfloat16": None, "float16": np.float16}


def _array(record: bytes, key) -> np.ndarray:
    def ext(code, data):
        if code != 1:
            raise FormatError(f"tensor {'/'.join(key)}: unknown msgpack extension {code}")
        shape, dtype, raw = msgpack.unpackb(data, raw=False)
        if dtype not in _DTYPES:
            raise FormatError(f"tensor {'/'.join(key)} has unsupported dtype {dtype!r}")
        if dtype == "bfloat16":
            import ml_dtypes

            np_dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            np_dtype = np.dtype(_DTYPES[dtype])
        if len(raw) != np_dtype.itemsize * int(np.prod(shape)):
            raise FormatError(f"tensor {'/'.join(key)} has {len(raw)} bytes, not {shape} of "
                              f"{dtype}: the file is truncated or corrupt")
        return np.frombuffer(raw, np_dtype).reshape(shape)

    value = msgpack.unpackb(record, raw=False, ext_hook=ext)
    if not isinstance(value, np.ndarray):
        raise FormatError(f"record {'/'.join(key)} does not hold a flax-serialized array")
    return value


def read_params(path) -> dict[tuple[str, ...], np.ndarray]:
    """Every tensor of an LWM ``params`` file, keyed by its flax path."""
    path = Path(path)
    out = {}
    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=0)
            for record in unpacker:
                if not (isinstance(record, list) and len(record) == 2):
                    raise FormatError(f"{path} is not an LWM params stream (bad record)")
                key, payload = tuple(record[0]), record[1]
                out[key] = _array(payload, key)
            if unpacker.tell() != path.stat().st_size:  # a record cut short ends iteration
                raise FormatError(f"{path} ends inside a record: the file is truncated")
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as err:
        if isinstance(err, FormatError):
            raise
        raise FormatError(f"{path} is not a readable LWM params file ({err}); it may be "
                          "truncated or corrupt") from None
    if not out:
        raise FormatError(f"{path} holds no tensors")
    return out


def canonical_from_params(tensors: dict) -> dict:
    """LWM flax paths -> ringkit's canonical tree (layers stacked, q/k/v/o split into heads
    later by ``reshape_heads``)."""
    canonical, per_layer = {}, {}
    for key, value in tensors.items():
        key = key[1:] if key[0] == "params" else key
        if key in _TOP:
            canonical[_TOP[key]] = value
        elif key[:2] == ("transformer", "h") and key[3:] in _LAYER:
            name = _LAYER[key[3:]]
            if key[2] == "scan_decoder":
                per_layer.setdefault(None, {})[name] = value
            else:
                per_layer.setdefault(int(key[2]), {})[name] = value
        else:
            raise ConfigError(f"unexpected tensor {'/'.join(key)} in the LWM checkpoint")
    if None in per_layer:
        canonical["layers"] = per_layer[None]
    elif per_layer:
        n = len(per_layer)
        canonical["layers"] = {name: np.stack([per_layer[i][name] for i in range(n)])
                               for name in per_layer[0]}
    return canonical


def reshape_heads(canonical: dict, config: ModelConfig) -> dict:
    layers = dict(canonical["layers"])
    L, d, h, kv, hd = (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads,
                       config.head_dim)
    for name, heads in (("wq", h), ("wk", kv), ("wv", kv)):
        if layers[name].shape != (L, d, heads * hd):
            raise ConfigError(f"LWM tensor {name} has shape {layers[name].shape}, but the config "
                              f"needs {(L, d, heads * hd)}")
        layers[name] = layers[name].reshape(L, d, heads, hd)
    layers["wo"] = layers["wo"].reshape(L, h, hd, d)
    return dict(canonical, layers=layers)


def config_from_lwm(values: dict, name: str = "lwm") -> ModelConfig:
    """A ``ModelConfig`` from LWM's config fields (``VideoLLaMAConfig`` names)."""
    try:
        d, heads = int(values["hidden_size"]), int(values["num_attention_heads"])
        return ModelConfig(
            name=name, vocab_size=int(values["vocab_size"]), d_model=d,
            n_layers=int(values["num_hidden_layers"]), n_heads=heads,
            n_kv_heads=int(values.get("num_key_value_heads", heads)), head_dim=d // heads,
            ffn_dim=int(values["intermediate_size"]),
            max_position=int(values["max_sequence_length"]), rope_theta=float(values["theta"]),
            norm_eps=float(values.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(values.get("tie_word_embeddings", False)),
            rope_convention="interleaved",
            vision_vocab_size=int(values.get("vision_vocab_size", 0) or 0))
    except KeyError as err:
        raise ConfigError(f"LWM config lacks {err}") from None
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise ConfigError(f"LWM config has a bad value ({err}); it needs whole numbers for "
                          "hidden_size, num_attention_heads, num_hidden_layers, "
                          "intermediate_size, vocab_size, max_sequence_length and a theta"
                          ) from None


def _find_config(folder: Path) -> ModelConfig | None:
    for name in ("config.json", "manifest.json"):
        path = folder / name
        if path.exists():
            try:
                values = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise FormatError(f"cannot read {path}: {e}") from None
            values = values.get("lm_config", values) if isinstance(values, dict) else {}
            if isinstance(values, dict) and "hidden_size" in values and "theta" in values:
                return config_from_lwm(values, name=folder.name or "lwm")
    return None


def read_lwm(params_path, config: ModelConfig | None):
    """``(config, canonical weights, tokenizer or None)`` of an LWM checkpoint."""
    params_path = Path(params_path)
    folder = params_path.parent
    canonical = canonical_from_params(read_params(params_path))
    config = config or _find_config(folder)
    if config is None:
        raise ConfigError(
            f"{folder} has no config.json and LWM checkpoints do not record RoPE theta; pass "
            "config='lwm-7b' (LWM-Text-1M, theta 5e7), config='lwm-7b-vision', or a "
            "ringkit.model.ModelConfig (theta 1e7 for the 128K/256K models)")
    if "vision_embed" in canonical and not config.has_vision:
        config = config.replace(vision_vocab_size=canonical["vision_embed"].shape[0])
    if config.rope_convention != "interleaved":
        config = config.replace(rope_convention="interleaved")
    tokenizer = None
    if (folder / "tokenizer.model").exists():
        tokenizer = Tokenizer.from_sentencepiece(folder / "tokenizer.model")
    return config, reshape_heads(canonical, config), tokenizer
