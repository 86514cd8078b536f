"""How much memory, how many chips and how long for ``n`` tokens with model ``M``, from shapes
alone: no weights are read and nothing is compiled.

``plan`` takes a model (a preset name, a ``ModelConfig``, an HF directory or its
``config.json``, a ``.gguf`` file's metadata, or a loaded ``ringkit.Model``), a token count and a
mesh, and returns a ``Plan``: bytes per device at the prefill's peak (the same figures as
``ringkit info`` and ``Tokens.summary``, from ``ringkit.model.memory``), whether they fit the
device, the prefill's FLOPs and its time at a stated fraction of the device's peak rate, and the
bytes each decode step reads. ``Plan.feasible_meshes`` lists the meshes of ``n`` devices that fit.

Example::

    p = ringkit.plan("lwm-7b", 1_000_000, "1,1,1,64", device="tpu-v5p")
    print(p)                              # a table: weights, KV cache, activations, peak, fits
    p.feasible_meshes(devices=64)[:3]     # the best meshes of 64 devices for it
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

from ringkit.errors import ConfigError, FormatError, MeshError, ShapeError, advice, is_whole
from ringkit.mesh import MeshConfig, make_mesh
from ringkit.model.compiled import CompiledMemory, compiled_memory
from ringkit.model.config import ModelConfig
from ringkit.model.memory import MemoryEstimate, estimate_shapes
from ringkit.model.model import Model
from ringkit.model.weights import gguf_file
from ringkit.model.weights.gguf import config_from_fields
from ringkit.model.weights.hf import config_from_hf

AXES = ("dp", "fsdp", "tp", "sp")


def _visible_pairs(n: int, window: int | None) -> int:
    """(query, key) pairs a causal mask leaves in ``n`` tokens, within ``window`` if given."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


@dataclasses.dataclass(frozen=True)
class Device:
    """An accelerator as its vendor states it: memory (bytes), dense bf16 rate (FLOP/s) and
    memory bandwidth (bytes/s). ``usable`` is the part of the memory a JAX program gets: on
    GPUs JAX preallocates 75% unless ``XLA_PYTHON_CLIENT_MEM_FRACTION`` says otherwise."""

    name: str
    memory: int
    bf16_flops: float
    bandwidth: float
    usable: float = 1.0


# Vendor data sheets: H100 SXM and H200 SXM (dense bf16 989 TFLOP/s), TPU v4 / v5e / v5p
# (Cloud TPU system architecture pages).
DEVICES = {
    "h100": Device("NVIDIA H100 SXM 80GB", 80 * 10**9, 989e12, 3.35e12, usable=0.75),
    "h200": Device("NVIDIA H200 SXM 141GB", 141 * 10**9, 989e12, 4.8e12, usable=0.75),
    "tpu-v4": Device("TPU v4", 32 * 2**30, 275e12, 1.2e12),
    "tpu-v5e": Device("TPU v5e", 16 * 2**30, 197e12, 819e9),
    "tpu-v5p": Device("TPU v5p", 95 * 2**30, 459e12, 2.765e12),
}
EFFICIENCY = 0.4  # fraction of the peak rate a long prefill is assumed to reach (prefill_seconds)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A prefill of ``tokens`` (plus ``new_tokens`` decoded) of ``config`` on ``mesh``. Memory
    is in bytes per device: ``weights`` (as stored, plus the decode copy), ``kv_cache`` (kept for
    decoding), ``activations`` (one layer's, at the prefill's peak) and ``peak`` (with the KV
    cache's second copy while the prefill splits it per layer; ``ringkit.model.memory``).
    ``fits``: ``peak`` within the device's usable memory (None without a device).
    ``prefill_flops``: matmul FLOPs of the whole prefill (causal attention counted once);
    ``prefill_seconds`` at ``efficiency`` of the devices' peak rate. ``decode_bytes_per_token``:
    what each device reads per decode step (its weights and its slice of the cache).
    ``compiled_peak``: XLA's figure for the same programs (``plan(..., compile=True)``)."""

    config: ModelConfig
    tokens: int
    mesh: dict
    dtype: str
    weights_dtype: str
    device: Device | None
    memory: MemoryEstimate = dataclasses.field(repr=False)
    new_tokens: int = 0
    efficiency: float = EFFICIENCY
    compiled: CompiledMemory | None = dataclasses.field(default=None, repr=False)

    @property
    def compiled_peak(self) -> int | None:
        """XLA's per-device peak of the compiled prefill and decode step (``compile=True``)."""
        return None if self.compiled is None else self.compiled.peak

    @property
    def within_context(self) -> bool:
        """Whether the model runs this many tokens (a plan past it is of the shapes only)."""
        return self.tokens + self.new_tokens <= self.config.context_length

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def weights(self) -> int:
        return self.memory.weights + self.memory.decode_weights

    @property
    def kv_cache(self) -> int:
        return self.memory.kv_cache

    @property
    def activations(self) -> int:
        return self.memory.activations

    @property
    def peak(self) -> int:
        return self.memory.prefill_peak

    @property
    def fits(self) -> bool | None:
        if self.device is None:
            return None
        return self.peak <= self.device.memory * self.device.usable

    @property
    def prefill_flops(self) -> float:
        """Matmul FLOPs of the prefill: projections, MLPs, and attention over the (query, key)
        pairs each layer's mask leaves (causal; a sliding window on local layers)."""
        c, n = self.config, self.tokens
        per_layer = 2 * c.d_model * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim  # q, k, v
        per_layer += 2 * c.n_heads * c.head_dim * c.d_model + 6 * c.d_model * c.ffn_dim  # o, MLP
        pairs = sum(_visible_pairs(n, c.sliding_window if local else None)
                    for local in c.local_layers)
        attention = 4 * c.n_heads * c.head_dim * pairs  # QK^T and PV over the visible pairs
        return c.n_layers * per_layer * n + attention + 2 * c.d_model * c.vocab_size

    @property
    def prefill_seconds(self) -> float | None:
        """At ``efficiency`` of the peak rate of the devices that split the work (sp x tp; a
        batch of one leaves dp and fsdp copies idle)."""
        if self.device is None or math.isnan(self.device.bf16_flops):
            return None
        working = self.mesh.get("sp", 1) * self.mesh.get("tp", 1)
        return self.prefill_flops / (working * self.device.bf16_flops * self.efficiency)

    @property
    def decode_bytes_per_token(self) -> int:
        m = self.memory
        return (m.decode_weights or m.weights) + m.kv_cache

    def rows(self) -> list[tuple[str, str]]:
        gb = lambda b: f"{b / 1e9:,.2f} GB"
        out = [("model", f"{self.config.name} ({self.config.param_count() / 1e9:.2f}B params)"),
               ("tokens", f"{self.tokens:,}" + (f" + {self.new_tokens:,} new"
                                                 if self.new_tokens else "")),
               ("context", f"{self.config.context_length:,} tokens" + (
                   "" if self.within_context else " (exceeded: these are the shapes' figures"
                   + (f"; past it the checkpoint uses {self.config.beyond_context}"
                      if self.config.beyond_context else "") + ")")),
               ("mesh", ",".join(str(self.mesh.get(a, 1)) for a in AXES) + " (dp,fsdp,tp,sp)"),
               ("dtype", f"{self.dtype} compute, {self.weights_dtype} weights and KV cache"),
               ("weights / device", gb(self.weights)),
               ("KV cache / device", gb(self.kv_cache)),
               ("activations / device", gb(self.activations)),
               ("peak / device", gb(self.peak))]
        if self.compiled is not None:
            xla = self.compiled.peak
            out += [("XLA's peak / device", f"{gb(xla)} (compiled; the plan is "
                                            f"{self.peak / xla:.2f}x it)")]
        out += [

               ("prefill", f"{self.prefill_flops / 1e15:,.1f} PFLOP" if self.prefill_flops
                >= 1e15 else f"{self.prefill_flops / 1e12:,.2f} TFLOP"),
               ("decode reads / token / device", gb(self.decode_bytes_per_token))]
        if self.device is not None:
            d = self.device
            out += [("device", f"{d.name}: {d.memory / 1e9:,.0f} GB, {d.usable:.0%} usable"),
                    ("fits", "yes" if self.fits else "no")]
        if self.prefill_seconds is not None and self.device is not None:
            d = self.device
            out += [("prefill time", f"{self.prefill_seconds:,.1f} s at {self.efficiency:.0%} of "
                                     f"{d.bf16_flops / 1e12:,.0f} TFLOP/s per device"),
                    ("decode time / token",
                     f"{self.decode_bytes_per_token / d.bandwidth * 1e3:,.2f} ms at "
                     f"{d.bandwidth / 1e12:,.2f} TB/s")]
        return out

    def table(self):
        """The plan as a pandas DataFrame (one column, a row per figure)."""
        import pandas as pd

        rows = self.rows()
        return pd.DataFrame({"plan": [v for _, v in rows]}, index=[k for k, _ in rows])

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def feasible_meshes(self, devices: int | None = None) -> list["Plan"]:
        """Plans for every mesh of ``devices`` devices (default: this plan's count) that fits
        the device, fastest prefill first, then lowest peak. ``tp`` divides the KV heads and the
        batch of one puts no device on ``dp``."""
        if self.device is None:
            raise ConfigError("feasible_meshes needs a device: "
                              + advice("plan(..., device='h100')", "--device h100"))
        devices = self.devices if devices is None else devices
        if not is_whole(devices, 1):
            raise MeshError(f"devices must be a whole number >= 1, got {devices!r:.40}")
        kv = self.config.n_kv_heads
        plans = []
        for tp in (t for t in range(1, kv + 1) if kv % t == 0 and devices % t == 0):
            for fsdp in (f for f in range(1, devices // tp + 1) if devices // tp % f == 0):
                mesh = {"dp": 1, "fsdp": fsdp, "tp": tp, "sp": devices // (tp * fsdp)}
                p = dataclasses.replace(self, mesh=mesh, memory=_memory(self, mesh))
                if p.fits:
                    plans.append(p)
        return sorted(plans, key=lambda p: (p.prefill_seconds, p.peak))

    def describe_meshes(self, devices: int, top: int = 10) -> str:
        """The ``top`` meshes of ``feasible_meshes(devices)``, a line each."""
        lines = [f"meshes of {devices} devices that fit (dp,fsdp,tp,sp; fastest first):"]
        lines += [f"  {','.join(map(str, q.mesh.values()))}: peak {q.peak / 1e9:,.2f} GB, "
                  f"prefill {q.prefill_seconds:,.1f} s"
                  for q in self.feasible_meshes(devices)[:top]]
        return "\n".join(lines)


def _memory(p: Plan, mesh: dict) -> MemoryEstimate:
    return estimate_shapes(p.config, p.tokens, mesh=mesh, weights_dtype=p.weights_dtype,
                           dtype=p.dtype, new_tokens=p.new_tokens)


def plan(model, tokens, mesh="1,1,1,8", *, dtype: str | None = None,
         param_dtype: str | None = None, device: str | int | Device | None = None,
         new_tokens: int = 0, efficiency: float = EFFICIENCY, compile: bool = False) -> Plan:
    """Plan a prefill of ``tokens`` tokens of ``model`` on ``mesh``, from shapes alone.

    Args:
      model: a preset name (``"lwm-7b"``, ``"llama-3.1-8b"``, ...), a ``ModelConfig``, an HF
        directory or its ``config.json``, a ``.gguf`` file (metadata only), or a loaded
        ``ringkit.Model`` (its own dtypes then, unless given).
      tokens: an int, or a string such as ``"128K"``, ``"1M"`` (K = 1,024, M = 1,048,576).
      mesh: ``"dp,fsdp,tp,sp"`` sizes, a dict of them, or a ``jax.sharding.Mesh``.
      dtype, param_dtype: compute and storage dtypes (default: bfloat16 for both, as on an
        accelerator, or a loaded model's own; on CPU ringkit stores float32).
      device: ``"h100"``, ``"h200"``, ``"tpu-v4"``, ``"tpu-v5e"``, ``"tpu-v5p"``, a memory size
        in bytes, or a ``Device``; None leaves ``fits`` and the times out.
      new_tokens: tokens to decode after the prefill (the cache keeps room for them).
      compile: also compile (not run) the real prefill and decode step with abstract weights on
        this process's devices and report XLA's memory analysis (``compiled_peak``); simulated
        CPU devices serve (``XLA_FLAGS=--xla_force_host_platform_device_count=64`` before JAX
        starts). On a CPU keep ``param_dtype="float32"``, as ringkit runs there: XLA:CPU
        computes bfloat16 dots in float32 and counts copies an accelerator does not make.

    Example::

        print(ringkit.plan("qwen2.5-7b-1m", "256K", "1,1,4,16", device="h100"))
    """
    if isinstance(model, Model):
        config = model.config
        if dtype is None:
            dtype = model.runtime.dtype
            param_dtype = param_dtype or model.runtime.weights_dtype
    else:
        config = model_config(model)
    dtype = dtype or "bfloat16"
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"{name} must be float32, bfloat16 or float16, got {value!r}")
    if not 0 < efficiency <= 1:
        raise ConfigError(f"efficiency must be in (0, 1], got {efficiency!r}")
    tokens = parse_tokens(tokens)
    shape = mesh_sizes(mesh)
    if config.n_kv_heads % shape["tp"]:  # as the model refuses it (ringkit.attention.spec)
        raise ShapeError(f"{config.name} has {config.n_kv_heads} KV heads, which tp="
                         f"{shape['tp']} does not divide; use a tp that divides the KV heads")
    if not is_whole(new_tokens):
        raise ConfigError(f"new_tokens must be a whole number >= 0, got {new_tokens!r}")
    weights_dtype = param_dtype or dtype
    memory = estimate_shapes(config, tokens, mesh=shape, weights_dtype=weights_dtype, dtype=dtype,
                             new_tokens=int(new_tokens))
    p = Plan(config, tokens, shape, dtype, weights_dtype, device_spec(device), memory=memory,
             new_tokens=int(new_tokens), efficiency=efficiency)
    return dataclasses.replace(p, compiled=_compiled(p)) if compile else p


def _compiled(p: Plan) -> CompiledMemory:
    import jax

    have = jax.devices()
    if len(have) < p.devices:
        raise MeshError(
            f"compile=True builds the {p.devices}-device mesh, and this process has "
            f"{len(have)} device(s); on a CPU start Python with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={p.devices}")
    mesh = make_mesh(MeshConfig(*(p.mesh[a] for a in AXES)), devices=have[:p.devices])
    return compiled_memory(p.config, p.tokens, mesh=mesh, weights_dtype=p.weights_dtype,
                           dtype=p.dtype, new_tokens=p.new_tokens)


def model_config(model) -> ModelConfig:
    """The ``ModelConfig`` of a preset name, a config, an HF directory / ``config.json`` or a
    ``.gguf`` file, reading no weights."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str) and not Path(model).exists():
        try:
            return ModelConfig.preset(model)
        except ConfigError as e:
            raise ConfigError(f"{e}; or give an HF directory, its config.json or a .gguf "
                              "file") from None
    path = Path(model)
    if path.suffix == ".gguf":
        fields, tensors = gguf_file.read(path)  # the tensor directory, not the tensors' data
        config = config_from_fields(fields, fields.get("general.name") or path.stem)
        return config.replace(tie_embeddings="output.weight" not in tensors)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FormatError(f"{path}: no config.json; give a preset name, a ModelConfig, an HF "
                          "directory, its config.json or a .gguf file")

    try:
        values = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{file} is not a readable JSON config: {e}") from None
    return config_from_hf(values, file.parent.name)


_SUFFIX = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_tokens(tokens) -> int:
    """``131072``, ``"128K"``, ``"1M"`` or ``"1.5M"`` -> a positive int (K and M binary)."""
    if isinstance(tokens, str):
        m = re.fullmatch(r"\s*([\d_.,]+)\s*([KMG]?)\s*", tokens.upper())
        try:
            if m is None:
                raise ValueError(tokens)
            value = float(m.group(1).replace(",", "").replace("_", "")) * _SUFFIX[m.group(2)]
        except ValueError:
            raise ShapeError(f"tokens {tokens!r}: give a number such as 131072, '128K' or "
                             "'1M'") from None
        tokens = int(value) if value == int(value) else -1
    if isinstance(tokens, np.integer):
        tokens = int(tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ShapeError(f"tokens must be a positive whole number, got {tokens!r}")
    return tokens


def mesh_sizes(mesh) -> dict:
    """Axis sizes of a ``"dp,fsdp,tp,sp"`` string, a dict or a ``Mesh`` (no -1: a plan names
    every axis)."""
    if hasattr(mesh, "shape") and not isinstance(mesh, (str, dict)):
        sizes = dict(mesh.shape)
    elif isinstance(mesh, dict):
        if set(mesh) - set(AXES):
            raise MeshError(f"mesh axes must be among {AXES}, got {sorted(mesh)}")
        sizes = dict(mesh)
    else:
        sizes = dict(zip(AXES, MeshConfig.parse(mesh).sizes))
    sizes = {a: sizes.get(a, 1) for a in AXES}
    if any(not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise MeshError(f"a plan's mesh needs every axis size >= 1 (no -1), got {sizes}")
    return sizes


def device_spec(device) -> Device | None:
    if device is None or isinstance(device, Device):
        return device
    if isinstance(device, int) and device > 0:
        return Device(f"{device / 1e9:,.0f} GB device", device, math.nan, math.nan)
    if isinstance(device, str) and device.lower() in DEVICES:
        return DEVICES[device.lower()]
    if isinstance(device, str) and device.isdigit():
        return device_spec(int(device))
    raise ConfigError(f"device {device!r}: one of {sorted(DEVICES)} or a memory size in bytes")
