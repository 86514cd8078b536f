"""Rotary position embeddings: exact tables at any position, both pair conventions, scaling.

Angles ``position * inv_freq`` are reduced modulo 2 pi in float64 on the host, so the float32
``cos`` / ``sin`` are accurate at millions of positions (a float32 product ``position * inv_freq``
is off by ~0.06 rad at position 1M; LWM even forms it in bfloat16). In a jitted model the tables
are looked up by position: ``pos = hi * 4096 + lo`` and ``cos(a + b) = cos a cos b - sin a sin b``
with two small tables, so traced positions (decode steps) stay exact too.

Scaling to run beyond the trained context: ``linear`` (positions / factor), ``ntk`` (NTK-aware:
theta * factor ** (d / (d - 2))), ``yarn`` (per-frequency blend of the two, plus an attention
temperature, by default 0.1 ln(factor) + 1, applied to cos and sin, as in the YaRN paper and HF)
and ``llama3`` (Llama 3.1's: long wavelengths divided by the factor, short ones kept, a smooth
blend between, set by ``low_freq_factor`` and ``high_freq_factor``); ``factors`` divides each
frequency by its own number (llama.cpp stores Llama 3's scaling so, as ``rope_freqs``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp
import numpy as np

from ringkit.errors import ConfigError

ROPE_CONVENTIONS = ("half", "interleaved")
SCALING_KINDS = ("linear", "ntk", "yarn", "llama3", "factors")
_SPLIT = 4096  # positions = hi * _SPLIT + lo


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling by ``factor`` (>= 1) of kind "linear", "ntk" or "yarn".

    ``original_max_position`` is the trained context (YaRN needs it; ``load_model`` fills it from
    the model's config when it is None). ``beta_fast`` and ``beta_slow`` bound YaRN's ramp, in rotations over that context.

    Example: ``RopeScaling("yarn", 4.0, original_max_position=8192)`` runs SmolLM2 at 32K.
    """

    kind: str
    factor: float
    original_max_position: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # YaRN's temperature; None: 0.1 ln(factor) + 1
    low_freq_factor: float = 1.0   # llama3
    high_freq_factor: float = 4.0  # llama3
    divisors: tuple[float, ...] | None = None  # factors: each frequency divided by its own

    def __post_init__(self):
        if self.kind not in SCALING_KINDS:
            raise ConfigError(f"unknown RoPE scaling {self.kind!r}; choose one of {SCALING_KINDS}")
        number = lambda x: isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
        if not number(self.factor) or not 1.0 <= self.factor < math.inf:
            raise ConfigError(f"RoPE scaling factor must be a finite number >= 1, got "
                              f"{self.factor!r}")
        position = self.original_max_position
        if position is not None and (not number(position) or position < 1 or position % 1):
            raise ConfigError(f"original_max_position must be a whole number of tokens >= 1, "
                              f"got {position!r}")
        if not (number(self.beta_fast) and number(self.beta_slow)
                and self.beta_fast > self.beta_slow > 0):
            raise ConfigError(f"YaRN needs beta_fast > beta_slow > 0, got {self.beta_fast!r}, "
                              f"{self.beta_slow!r}")
        if self.attention_factor is not None and not (number(self.attention_factor)
                                                      and 0 < self.attention_factor < math.inf):
            raise ConfigError(f"attention_factor must be a positive number, got "
                              f"{self.attention_factor!r}")
        if self.kind == "factors" and not (
                isinstance(self.divisors, tuple) and self.divisors
                and all(number(x) and 0 < x < math.inf for x in self.divisors)):
            raise ConfigError("'factors' scaling needs divisors: a tuple of positive numbers, "
                              "one per frequency (head_dim / 2)")
        if not (number(self.low_freq_factor) and number(self.high_freq_factor)
                and self.high_freq_factor > self.low_freq_factor > 0):
            raise ConfigError(f"llama3 scaling needs high_freq_factor > low_freq_factor > 0, got "
                              f"{self.high_freq_factor!r}, {self.low_freq_factor!r}")


def inv_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies ``float64 [head_dim // 2]`` after scaling."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
    if scaling is not None and scaling.kind == "ntk":
        theta = theta * scaling.factor ** (head_dim / (head_dim - 2))
    inv = theta ** -exponents
    if scaling is None or scaling.kind == "ntk":
        return inv
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "factors":  # llama.cpp's rope_freqs tensor (Llama 3's scaling, stored)
        if len(scaling.divisors) != len(inv):
            raise ConfigError(f"'factors' scaling has {len(scaling.divisors)} divisors for "
                              f"{len(inv)} frequencies (head_dim {head_dim})")
        return inv / np.asarray(scaling.divisors, np.float64)
    if scaling.original_max_position is None:
        raise ConfigError(f"{scaling.kind} scaling needs original_max_position (the trained "
                          "context); ringkit.load_model fills it in from the model")
    if scaling.kind == "llama3":
        return _llama3(inv, scaling)
    # YaRN: dimensions that turn many times over the trained context keep their frequency,
    # those that turn less than once are interpolated, a linear ramp blends the ones between.
    def correction_dim(rotations):
        return (head_dim * math.log(scaling.original_max_position / (rotations * 2 * math.pi))
                / (2 * math.log(theta)))

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), head_dim - 1)
    high = high + 0.001 if high == low else high
    ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0.0, 1.0)
    return inv / scaling.factor * ramp + inv * (1.0 - ramp)


def _llama3(inv: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    """Llama 3.1's frequencies: wavelengths longer than original / low_freq_factor are divided
    by the factor, those shorter than original / high_freq_factor kept, a blend between."""
    original, factor = scaling.original_max_position, scaling.factor
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelength = 2 * math.pi / inv
    smooth = (original / wavelength - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    out = np.where(wavelength > original / low, inv / factor, inv)
    middle = (wavelength >= original / high) & (wavelength <= original / low)
    return np.where(middle, blended, out)


def attention_factor(scaling: RopeScaling | None) -> float:
    """YaRN's temperature on cos and sin (1.0 for other kinds)."""
    if scaling is None or scaling.kind != "yarn":
        return 1.0
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)
    return 1.0 if scaling.factor <= 1.0 else 0.1 * math.log(scaling.factor) + 1.0


@functools.lru_cache(maxsize=32)
def _tables(head_dim: int, theta: float, scaling: RopeScaling | None, limit: int):
    """cos/sin of ``lo * inv_freq`` (``[4096, F]``) and of ``hi * 4096 * inv_freq``."""
    inv = inv_frequencies(head_dim, theta, scaling)
    two_pi = 2 * np.pi
    lo = np.mod(np.arange(_SPLIT, dtype=np.float64)[:, None] * inv, two_pi)
    step = np.mod(_SPLIT * inv, two_pi)  # reduce before multiplying: hi * step stays small
    hi = np.mod(np.arange(limit // _SPLIT + 1, dtype=np.float64)[:, None] * step, two_pi)
    f32 = lambda a: a.astype(np.float32)
    return f32(np.cos(lo)), f32(np.sin(lo)), f32(np.cos(hi)), f32(np.sin(hi))


@dataclasses.dataclass(frozen=True)
class Rope:
    """RoPE for heads of size ``head_dim`` with base ``theta``, valid for positions < ``limit``.

    Example::

        rope = Rope(64, 100_000.0, limit=8192)
        q = rope.apply(q, positions)        # q [batch, seq, heads, 64], positions [batch, seq]
    """

    head_dim: int
    theta: float
    limit: int
    convention: str = "half"
    scaling: RopeScaling | None = None

    def __post_init__(self):
        if self.convention not in ROPE_CONVENTIONS:
            raise ConfigError(
                f"RoPE convention {self.convention!r} is not one of {ROPE_CONVENTIONS}")
        if self.head_dim % 2 or self.head_dim <= 0:
            raise ConfigError(f"RoPE head_dim must be even and positive, got {self.head_dim}")

    def cos_sin(self, positions):
        """``cos, sin`` float32 ``[*positions.shape, head_dim // 2]`` for integer positions."""
        lo_cos, lo_sin, hi_cos, hi_sin = (
            jnp.asarray(t) for t in _tables(self.head_dim, self.theta, self.scaling, self.limit))
        positions = jnp.asarray(positions, jnp.int32)
        hi, lo = positions // _SPLIT, positions % _SPLIT
        hc, hs = jnp.take(hi_cos, hi, axis=0, mode="clip"), jnp.take(hi_sin, hi, axis=0, mode="clip")
        lc, ls = jnp.take(lo_cos, lo, axis=0), jnp.take(lo_sin, lo, axis=0)
        scale = attention_factor(self.scaling)
        return (hc * lc - hs * ls) * scale, (hs * lc + hc * ls) * scale

    def apply(self, x, positions):
        """Rotate ``x [..., seq, heads, head_dim]`` by ``positions [..., seq]``; same dtype out."""
        cos, sin = (t[..., None, :] for t in self.cos_sin(positions))  # [..., seq, 1, d/2]
        xf = x.astype(jnp.float32)
        if self.convention == "half":
            x1, x2 = jnp.split(xf, 2, axis=-1)
            out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
        else:
            pairs = xf.reshape(*xf.shape[:-1], self.head_dim // 2, 2)
            xe, xo = pairs[..., 0], pairs[..., 1]
            out = jnp.stack([xe * cos - xo * sin, xo * cos + xe * sin], axis=-1)
            out = out.reshape(xf.shape)
        return out.astype(x.dtype)
