"""Model configuration and its building blocks (RoPE)."""

from ringkit.model.config import PRESETS, ModelConfig
from ringkit.model.rope import Rope, RopeScaling, attention_factor, inv_frequencies

__all__ = ["PRESETS", "ModelConfig", "Rope", "RopeScaling", "attention_factor", "inv_frequencies"]
