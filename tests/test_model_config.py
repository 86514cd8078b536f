"""ModelConfig presets: real parameter counts, validation with clear messages."""

import pytest

from ringkit.errors import ConfigError
from ringkit.model import PRESETS, ModelConfig, RopeScaling


def test_presets_have_the_published_sizes():
    assert ModelConfig.preset("smollm2-135m").param_count() == 134_515_008  # 134.5M
    assert ModelConfig.preset("lwm-7b").param_count() == 6_738_415_616  # LLaMA-2-7B
    vision = ModelConfig.preset("lwm-7b-vision")
    assert vision.has_vision and vision.param_count() == 6_738_415_616 + 2 * 8448 * 4096
    # The counts their model cards and safetensors indexes give.
    assert ModelConfig.preset("llama-3.1-8b").param_count() == 8_030_261_248
    assert ModelConfig.preset("llama-3.2-1b").param_count() == 1_235_814_400
    assert ModelConfig.preset("qwen2.5-7b-1m").param_count() == 7_615_616_512
    assert ModelConfig.preset("qwen3-8b").param_count() == 8_190_735_360
    assert ModelConfig.preset("mistral-7b-v0.1").param_count() == 7_241_732_096
    assert ModelConfig.preset("gemma-3-1b").param_count() == 999_885_952
    # The 4B and 27B: published totals less the image side they share (one SigLIP tower of
    # 416,866,032, a 1152 x d_model projector and its 1152-wide norm): both totals agree.
    image = lambda d: 416_866_032 + 1152 * d + 1152
    assert ModelConfig.preset("gemma-3-4b").param_count() == 4_300_079_472 - image(2560)
    assert ModelConfig.preset("gemma-3-27b").param_count() == 27_432_406_640 - image(5376)
    assert ModelConfig.preset("gemma-3-27b").context_length == 131072
    assert ModelConfig.preset("gemma-3-27b").local_layers.count(False) == 10
    assert ModelConfig.preset("llama-3.1-8b").context_length == 131072
    assert set(PRESETS) >= {"smollm2-135m", "lwm-7b", "lwm-7b-vision", "tiny"}


def test_context_length_follows_scaling():
    cfg = ModelConfig.preset("smollm2-135m")
    assert cfg.context_length == 8192
    scaled = cfg.replace(rope_scaling=RopeScaling("yarn", 4.0, original_max_position=8192))
    assert scaled.context_length == 32768


def test_invalid_configs_say_what_is_wrong():
    base = ModelConfig.preset("tiny")
    with pytest.raises(ConfigError, match="n_heads=4 must be a multiple of n_kv_heads=3"):
        base.replace(n_kv_heads=3)
    with pytest.raises(ConfigError, match="head_dim=15 must be even"):
        base.replace(head_dim=15)
    with pytest.raises(ConfigError, match="d_model must be a positive integer"):
        base.replace(d_model=0)
    with pytest.raises(ConfigError, match="rope_convention 'neox'"):
        base.replace(rope_convention="neox")
    with pytest.raises(ConfigError, match="unknown model preset 'llama-70b'; available"):
        ModelConfig.preset("llama-70b")
