"""Model configurations: one frozen dataclass, validated on creation, and named presets.

Example::

    cfg = ringkit.model.ModelConfig.preset("smollm2-135m")
    cfg.param_count()        # 134,515,008
"""

from __future__ import annotations

import dataclasses

from ringkit.errors import ConfigError
from ringkit.model.rope import ROPE_CONVENTIONS, RopeScaling


LAYER_TYPES = ("full_attention", "sliding_attention")
ACTIVATIONS = ("silu", "gelu_tanh")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A LLaMA-family decoder (optionally with LWM's vision embedding and head).

    Attention uses ``n_heads`` query heads and ``n_kv_heads`` key/value heads (GQA) of size
    ``head_dim``; the MLP is SwiGLU of width ``ffn_dim``; norms are RMSNorm with ``norm_eps``.
    ``rope_convention`` says how RoPE pairs dimensions: "half" (rotate-half, HF LLaMA) or
    "interleaved" (adjacent pairs, LWM and llama.cpp's stored q/k weights).
    ``vision_vocab_size > 0`` adds LWM's ``vte`` embedding and ``vision_head``.
    ``qkv_bias`` adds biases to the q, k and v projections (Qwen2); ``qk_norm`` an RMSNorm over
    each head's q and k before RoPE (Qwen3). ``sliding_window`` makes layers local: position
    ``i`` attends to keys ``i - sliding_window + 1 .. i`` (Mistral); ``layer_types`` says which
    layers, as Hugging Face spells it ("sliding_attention" / "full_attention" per layer; None:
    every layer local when ``sliding_window`` is set).

    Gemma 3's pieces: ``activation`` "gelu_tanh" (GELU, tanh approximation, in the gated MLP);
    ``post_norms`` RMSNorms on the attention and MLP outputs before the residual adds;
    ``embed_scale`` multiplies the token embeddings (sqrt(d_model)); ``query_scale`` replaces
    the softmax scale 1/sqrt(head_dim) (``query_pre_attn_scalar ** -0.5``); ``rope_local_theta``
    is the RoPE base of the local layers (unscaled; the global layers keep ``rope_theta`` and
    ``rope_scaling``); ``final_softcap`` caps the logits at ``cap * tanh(logits / cap)``. Norm
    weights are scales as stored by ringkit: Gemma's ``(1 + w)`` is added when loading.
    """

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    max_position: int
    rope_theta: float
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    rope_convention: str = "half"
    rope_scaling: RopeScaling | None = None
    vision_vocab_size: int = 0
    qkv_bias: bool = False
    qk_norm: bool = False
    # What the checkpoint uses past ``max_position`` that ringkit does not compute (Qwen2.5-1M's
    # dual chunk attention): longer inputs are refused naming it, not run as another model.
    beyond_context: str | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    activation: str = "silu"
    post_norms: bool = False
    embed_scale: float | None = None
    query_scale: float | None = None
    rope_local_theta: float | None = None
    final_softcap: float | None = None

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                      "ffn_dim", "max_position"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"{self.name}: n_heads={self.n_heads} must be a multiple of "
                f"n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"{self.name}: head_dim={self.head_dim} must be even for RoPE")
        if self.rope_convention not in ROPE_CONVENTIONS:
            raise ConfigError(
                f"{self.name}: rope_convention {self.rope_convention!r} is not one of "
                f"{ROPE_CONVENTIONS}")
        if not self.rope_theta > 0 or not self.norm_eps > 0:
            raise ConfigError(f"{self.name}: rope_theta and norm_eps must be positive")
        if self.vision_vocab_size < 0:
            raise ConfigError(f"{self.name}: vision_vocab_size must be >= 0")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"{self.name}: activation {self.activation!r} is not one of "
                              f"{ACTIVATIONS}")
        for field in ("embed_scale", "query_scale", "rope_local_theta", "final_softcap"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ConfigError(f"{self.name}: {field} must be positive or None, got {value!r}")
        window = self.sliding_window
        if window is not None and (not isinstance(window, int) or window <= 0):
            raise ConfigError(f"{self.name}: sliding_window must be a positive integer or None, "
                              f"got {window!r}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.n_layers or not set(self.layer_types) <= set(
                    LAYER_TYPES):
                raise ConfigError(f"{self.name}: layer_types must name {LAYER_TYPES} for each of "
                                  f"the {self.n_layers} layers, got {self.layer_types!r}")
            if window is None and "sliding_attention" in self.layer_types:
                raise ConfigError(f"{self.name}: layer_types has sliding_attention layers but "
                                  "sliding_window is None")

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: whether it attends within ``sliding_window`` only."""
        if self.sliding_window is None:
            return (False,) * self.n_layers
        if self.layer_types is None:
            return (True,) * self.n_layers
        return tuple(t == "sliding_attention" for t in self.layer_types)

    @property
    def has_vision(self) -> bool:
        return self.vision_vocab_size > 0

    @property
    def context_length(self) -> int:
        """Longest sequence the configured RoPE covers (trained length times any scaling)."""
        if self.rope_scaling is None or self.rope_scaling.kind in ("llama3", "factors"):
            return self.max_position  # Llama 3's max_position is already the scaled context
        return int(self.max_position * self.rope_scaling.factor)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def param_count(self) -> int:
        """Number of parameters (embeddings, layers, final norm, untied heads)."""
        d, h, kv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attention = d * h * hd * 2 + d * kv * hd * 2  # wq, wo; wk, wv
        attention += (h + 2 * kv) * hd * self.qkv_bias + 2 * hd * self.qk_norm
        layer = attention + 3 * d * self.ffn_dim + 2 * d * (2 if self.post_norms else 1)
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        vision = 2 * self.vision_vocab_size * d
        return embed + vision + self.n_layers * layer + d

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named preset; see ``PRESETS``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
        return PRESETS[name]


def _gemma3(name, vocab, d, layers, heads, kv, head_dim, ffn, window, scalar, scaling):
    """A Gemma 3 text config: every 6th layer global, local RoPE base 10,000 (see ModelConfig)."""
    return ModelConfig(
        name=name, vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv,
        head_dim=head_dim, ffn_dim=ffn, max_position=131072 // int(scaling) if scaling else 32768,
        rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True, qk_norm=True,
        rope_scaling=RopeScaling("linear", scaling, 131072 // int(scaling)) if scaling else None,
        sliding_window=window, activation="gelu_tanh", post_norms=True,
        layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(layers)),
        embed_scale=d ** 0.5, query_scale=scalar ** -0.5, rope_local_theta=10_000.0)


PRESETS: dict[str, ModelConfig] = {
    # SmolLM2-135M-Instruct (the embedded default), with q/k in HF rotate-half order.
    "smollm2-135m": ModelConfig(
        name="smollm2-135m", vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
        head_dim=64, ffn_dim=1536, max_position=8192, rope_theta=100_000.0, norm_eps=1e-5,
        tie_embeddings=True),
    # LWM-Text-1M: LLaMA-2-7B shape, RoPE theta 5e7, interleaved pairs as in LWM.
    "lwm-7b": ModelConfig(
        name="lwm-7b", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
        head_dim=128, ffn_dim=11008, max_position=1_048_576, rope_theta=50_000_000.0,
        norm_eps=1e-6, rope_convention="interleaved"),
    # LWM-1M with vision: 8192 VQGAN codes + 256 specials in a separate embedding and head.
    "lwm-7b-vision": ModelConfig(
        name="lwm-7b-vision", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
        n_kv_heads=32, head_dim=128, ffn_dim=11008, max_position=1_048_576,
        rope_theta=50_000_000.0, norm_eps=1e-6, rope_convention="interleaved",
        vision_vocab_size=8448),
    # Llama 3.1 8B and 3.2 1B (128K): GQA 32/8, RoPE theta 5e5 with Llama 3's scaling of an
    # 8K trained context.
    "llama-3.1-8b": ModelConfig(
        name="llama-3.1-8b", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
        n_kv_heads=8, head_dim=128, ffn_dim=14336, max_position=131072, rope_theta=500_000.0,
        norm_eps=1e-5, rope_scaling=RopeScaling("llama3", 8.0, 8192)),
    "llama-3.2-1b": ModelConfig(
        name="llama-3.2-1b", vocab_size=128256, d_model=2048, n_layers=16, n_heads=32,
        n_kv_heads=8, head_dim=64, ffn_dim=8192, max_position=131072, rope_theta=500_000.0,
        norm_eps=1e-5, tie_embeddings=True, rope_scaling=RopeScaling("llama3", 32.0, 8192)),
    # Qwen2.5-7B-Instruct-1M: q/k/v biases, theta 1e7. Its config declares 1,010,000 positions,
    # reached with dual chunk attention past 262,144 (what ringkit runs it at).
    "qwen2.5-7b-1m": ModelConfig(
        name="qwen2.5-7b-1m", vocab_size=152064, d_model=3584, n_layers=28, n_heads=28,
        n_kv_heads=4, head_dim=128, ffn_dim=18944, max_position=262_144,
        rope_theta=10_000_000.0, norm_eps=1e-5, qkv_bias=True,
        beyond_context="dual chunk attention (dual_chunk_attention_config) up to 1,010,000"),
    # Qwen3-8B: per-head q/k RMSNorm, 32K native (40,960 in its config).
    "qwen3-8b": ModelConfig(
        name="qwen3-8b", vocab_size=151936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8,
        head_dim=128, ffn_dim=12288, max_position=40960, rope_theta=1_000_000.0, norm_eps=1e-6,
        qk_norm=True),
    # Mistral 7B v0.1: every layer attends within a 4,096-token window.
    "mistral-7b-v0.1": ModelConfig(
        name="mistral-7b-v0.1", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
        n_kv_heads=8, head_dim=128, ffn_dim=14336, max_position=32768, rope_theta=10_000.0,
        norm_eps=1e-5, sliding_window=4096),
    # Gemma 3 text models (the 4B and 27B without their vision tower): five local layers per
    # global one, global RoPE linear-scaled 8x to 128K (1B: 32K, unscaled).
    "gemma-3-1b": _gemma3("gemma-3-1b", 262144, 1152, 26, 4, 1, 256, 6912, 512, 256, None),
    "gemma-3-4b": _gemma3("gemma-3-4b", 262208, 2560, 34, 8, 4, 256, 10240, 1024, 256, 8.0),
    "gemma-3-27b": _gemma3("gemma-3-27b", 262208, 5376, 62, 32, 16, 128, 21504, 1024, 168, 8.0),
    # A small model for tests.
    "tiny": ModelConfig(
        name="tiny", vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
        ffn_dim=128, max_position=4096, rope_theta=10_000.0),
}
