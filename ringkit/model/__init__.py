"""The model: configuration, RoPE, the transformer, checkpoint loading and decoding state."""

from ringkit.model.config import PRESETS, ModelConfig
from ringkit.model.load import embedded_model_path, load_model
from ringkit.model.model import KVCache, Model
from ringkit.model.rope import Rope, RopeScaling, attention_factor, inv_frequencies
from ringkit.model.transformer import Runtime, Transformer

__all__ = [
    "KVCache", "Model", "PRESETS", "ModelConfig", "Rope", "RopeScaling", "Runtime", "Transformer",
    "attention_factor", "embedded_model_path", "inv_frequencies", "load_model",
]
