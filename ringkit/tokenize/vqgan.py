"""LWM's VQGAN in Flax: frames -> 16 x 16 codes per frame (encoder) and codes -> frames (decoder).

The architecture is LWM's (a taming-transformers VQGAN without attention blocks, as released):
NHWC, 3 x 3 SAME convolutions, GroupNorm(32 groups, eps 1e-6), swish; a downsample pads one row
and column at the bottom/right and runs a VALID stride-2 conv; an upsample is nearest x2 then a
conv; codes are ``argmin |z|^2 + |e|^2 - 2 z.e``. Module names follow Flax's creation order, so
LWM's ``vqgan`` file (``ringkit.tokenize.vqgan_file.load_vqgan_params``) loads as it is, and the
configuration is read off the parameters' shapes (the release's 256 px / 5 levels and the test
set's 128 px / 4 levels alike).

Example::

    vq = VQGAN.load("LWM-Chat-1M-Jax/vqgan")
    codes = vq.encode(doc.frames)              # uint8 [T, 256, 256, 3] -> int32 [T, 16, 16]
    frames = vq.decode(codes)                  # float32 [T, 256, 256, 3] in [-1, 1]
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ringkit.errors import FormatError, UnsupportedError
from ringkit.progress import bar
from ringkit.tokenize.store import digest
from ringkit.tokenize.vqgan_file import load_vqgan_params

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
    """Sizes of a VQGAN (what LWM's ``VQGANConfig`` holds, minus the training fields). The
    defaults are the release's shape as FACTS.md states it (256 px, 5 levels, 8192 x 64 codebook;
    hidden 128, 2 res blocks and z 64 assumed); ``VQGAN.load`` reads every size from the file."""

    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)
    num_res_blocks: int = 2
    z_channels: int = 64
    quantized_embed_dim: int = 64
    num_embeddings: int = 8192
    num_channels: int = 3

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_params(cls, params: dict) -> "VQGANConfig":
        """Read the sizes off LWM's parameter tree (``{encoder, decoder, quant_conv, ...}``)."""
        try:
            enc = params["encoder"]
            levels = sorted(int(m.group(1)) for k in enc
                            if (m := re.fullmatch(r"DownsamplingBlock_(\d+)", k)))
            hidden = enc["Conv_0"]["kernel"].shape[-1]
            mult = tuple(enc[f"DownsamplingBlock_{i}"]["ResnetBlock_0"]["Conv_1"]["kernel"]
                         .shape[-1] // hidden for i in levels)
            res = sum(k.startswith("ResnetBlock_") for k in enc["DownsamplingBlock_0"])
            if any(k.startswith("AttnBlock") for part in (enc, params["decoder"])
                   for block in part.values() if isinstance(block, dict) for k in block):
                raise UnsupportedError("this VQGAN has attention blocks; ringkit reads LWM's "
                                       "released architecture, which has none")
            return cls(hidden_channels=hidden, channel_mult=mult, num_res_blocks=res,
                       z_channels=enc["Conv_1"]["kernel"].shape[-1],
                       quantized_embed_dim=params["quantize"]["embeddings"].shape[1],
                       num_embeddings=params["quantize"]["embeddings"].shape[0],
                       num_channels=enc["Conv_0"]["kernel"].shape[-2])
        except (KeyError, TypeError, AttributeError, IndexError) as err:
            raise FormatError(f"not LWM VQGAN parameters: missing or malformed {err}") from None


def _conv(features, kernel=3, name=None, stride=1, padding="SAME"):
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding, name=name,
                   precision=_HIGHEST)


def _norm(name=None):
    return nn.GroupNorm(num_groups=32, epsilon=1e-6, name=name)


class ResnetBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        h = _conv(self.features, name="Conv_0")(nn.swish(_norm("GroupNorm_0")(x)))
        h = _conv(self.features, name="Conv_1")(nn.swish(_norm("GroupNorm_1")(h)))
        if x.shape[-1] != self.features:
            x = _conv(self.features, kernel=1, name="Conv_2")(x)
        return x + h


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(x.shape[-1], stride=2, padding="VALID", name="Conv_0")(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
        return _conv(c, name="Conv_0")(x)


class _Level(nn.Module):
    """``n`` ResnetBlocks, then a resampling (or none)."""

    features: int
    n: int
    resample: str | None  # 'down', 'up' or None

    @nn.compact
    def __call__(self, x):
        for i in range(self.n):
            x = ResnetBlock(self.features, name=f"ResnetBlock_{i}")(x)
        if self.resample == "down":
            x = Downsample(name="Downsample_0")(x)
        elif self.resample == "up":
            x = Upsample(name="Upsample_0")(x)
        return x


class _Mid(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        x = ResnetBlock(self.features, name="ResnetBlock_0")(x)
        return ResnetBlock(self.features, name="ResnetBlock_1")(x)


class Encoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = _conv(c.hidden_channels, name="Conv_0")(x)
        last = len(c.channel_mult) - 1
        for i, mult in enumerate(c.channel_mult):
            x = _Level(c.hidden_channels * mult, c.num_res_blocks, "down" if i < last else None,
                       name=f"DownsamplingBlock_{i}")(x)
        x = _Mid(x.shape[-1], name="MidBlock_0")(x)
        return _conv(c.z_channels, name="Conv_1")(nn.swish(_norm("GroupNorm_0")(x)))


class Decoder(nn.Module):
    config: VQGANConfig

    @nn.compact
    def __call__(self, z):
        c = self.config
        x = _conv(c.hidden_channels * c.channel_mult[-1], name="Conv_0")(z)
        x = _Mid(x.shape[-1], name="MidBlock_0")(x)
        # Created deepest level first, so UpsamplingBlock_0 is the deepest (Flax names by order).
        for n, i in enumerate(reversed(range(len(c.channel_mult)))):
            x = _Level(c.hidden_channels * c.channel_mult[i], c.num_res_blocks + 1,
                       "up" if i > 0 else None, name=f"UpsamplingBlock_{n}")(x)
        return _conv(c.num_channels, name="Conv_1")(nn.swish(_norm("GroupNorm_0")(x)))


def _nearest(z, codebook):
    """Codes ``argmin |z|^2 + |e|^2 - 2 z.e`` of ``z [..., e_dim]``, chunked over rows."""
    dist = (jnp.sum(z * z, -1, keepdims=True) + jnp.sum(codebook * codebook, -1)
            - 2 * jnp.einsum("...d,kd->...k", z, codebook, precision=_HIGHEST))
    return jnp.argmin(dist, -1).astype(jnp.int32)


class VQGAN:
    """LWM's VQGAN with loaded weights. ``encode`` batches over frames; ``decode`` inverts it."""

    def __init__(self, params: dict, config: VQGANConfig | None = None, *, batch: int = 16):
        self.config = config or VQGANConfig.from_params(params)
        self.params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
        self.batch = batch
        self._encoder, self._decoder = Encoder(self.config), Decoder(self.config)

    @classmethod
    def load(cls, path, **kwargs) -> "VQGAN":
        """Read LWM's ``vqgan`` file (restricted unpickling: containers and arrays only)."""
        return cls(load_vqgan_params(path), **kwargs)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the weights (a key of the token store)."""
        flat = jax.tree_util.tree_flatten_with_path(self.params)[0]
        return digest(*[part for path, leaf in flat
                        for part in (jax.tree_util.keystr(path), np.asarray(leaf))])

    @functools.cached_property
    def _encode_fn(self):
        def fn(params, frames):
            x = frames.astype(jnp.float32) / 127.5 - 1.0  # LWM's _process_frame
            h = self._encoder.apply({"params": params["encoder"]}, x)
            z = _conv(self.config.quantized_embed_dim, kernel=1).apply(
                {"params": params["quant_conv"]}, h)
            e = params["quantize"]["embeddings"]
            codes = _nearest(z, e)
            return z, z + (e[codes] - z), codes

        return jax.jit(fn)

    @functools.cached_property
    def _decode_fn(self):
        def fn(params, codes):
            z = params["quantize"]["embeddings"][codes]
            z = _conv(self.config.z_channels, kernel=1).apply({"params": params["post_quant_conv"]},
                                                               z)
            return jnp.clip(self._decoder.apply({"params": params["decoder"]}, z), -1.0, 1.0)

        return jax.jit(fn)

    def _batched(self, fn, x, desc: str):
        outs = []
        with bar(len(x), desc, "frame", threshold=8 * self.batch) as progress:
            for i in range(0, len(x), self.batch):
                outs.append(jax.tree.map(np.asarray, fn(self.params, x[i:i + self.batch])))
                progress.update(min(self.batch, len(x) - i))
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)

    def encode(self, frames, *, return_latents: bool = False):
        """uint8 frames ``[T, H, W, 3]`` -> int32 codes ``[T, H/f, W/f]`` (f = 16 for LWM's
        release); with ``return_latents`` also ``(prequant [T, h, w, e], quantized)``."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != self.config.num_channels:
            raise FormatError(f"frames must be [T, H, W, {self.config.num_channels}], got "
                              f"{frames.shape}")
        z, quantized, codes = self._batched(self._encode_fn, frames, "VQGAN encode")
        return (codes, z, quantized) if return_latents else codes

    def decode(self, codes):
        """int32 codes ``[T, h, w]`` -> float32 frames ``[T, h*f, w*f, 3]`` in [-1, 1]."""
        return self._batched(self._decode_fn, np.asarray(codes, np.int32), "VQGAN decode")
