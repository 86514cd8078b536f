"""The model: configuration, RoPE, the transformer, checkpoint loading and decoding state."""

from ringkit.model.config import PRESETS, ModelConfig
from ringkit.model.load import embedded_model_path, load_model
from ringkit.model.kvcache import KVCache
from ringkit.model.model import Model
from ringkit.model.rope import Rope, RopeScaling, attention_factor, inv_frequencies
from ringkit.model.runtime import Runtime
from ringkit.model.transformer import Transformer

__all__ = [
    "KVCache", "Model", "PRESETS", "ModelConfig", "Rope", "RopeScaling", "Runtime", "Transformer",
    "attention_factor", "embedded_model_path", "inv_frequencies", "load_model",
]
