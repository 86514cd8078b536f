"""Canonical weights -> sharded Flax variables, each device receiving only its own shards.

Every loader (GGUF, HF safetensors, LWM msgpack) produces the same *canonical* tree of host
arrays (numpy or memory maps) with layers stacked on a leading axis::

    {"embed": [vocab, d], "final_norm": [d], "lm_head": [d, vocab] (untied only),
     "vision_embed": [vv, d], "vision_head": [d, vv] (vision models only),
     "layers": {"attn_norm": [L, d], "wq": [L, d, heads, hd], "wk"/"wv": [L, d, kv, hd],
                "wo": [L, heads, hd, d], "mlp_norm": [L, d], "w_gate"/"w_up": [L, d, ffn],
                "w_down": [L, ffn, d]}}

``place`` checks it against the model's own parameter shapes (missing, unexpected or misshapen
tensors are named) and builds each global array with ``jax.make_array_from_callback``: a device
gets a slice of the host array cast to the run dtype, never a full copy of the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ringkit.errors import ConfigError, ShapeError
from ringkit.model.config import ModelConfig
from ringkit.model.runtime import Runtime
from ringkit.model.transformer import Transformer, param_shardings


def abstract_variables(config: ModelConfig, runtime: Runtime):
    """The model's variables as ``ShapeDtypeStruct``s (no memory), e.g. to check 7B shapes."""
    module = Transformer(config, runtime)
    batch = runtime.mesh.shape["dp"] * runtime.mesh.shape["fsdp"]
    ids = jax.ShapeDtypeStruct((batch, 2 * runtime.sp), jnp.int32)
    aux = dict(positions=ids, segment_ids=None, vision_mask=None)
    return jax.eval_shape(lambda i, a: module.init(jax.random.key(0), i, a), ids, aux)


def _flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _canonical_name(path: tuple[str, ...]) -> tuple[str, int | None]:
    """Variable path -> (canonical name such as "layers/wq", layer index if unscanned)."""
    names = [p for p in path if p not in ("params", "block")]
    if names[0].startswith("layers_"):
        return "layers/" + names[-1], int(names[0].split("_")[1])
    return "/".join(names), None


def place(canonical: dict, config: ModelConfig, runtime: Runtime):
    """Shard ``canonical`` host arrays onto ``runtime.mesh`` as the model's variables.

    Raises ``ConfigError`` for a missing or unexpected tensor and ``ShapeError`` (naming the
    tensor and both shapes) for a tensor of the wrong shape.
    """
    abstract = abstract_variables(config, runtime)
    shardings = param_shardings(abstract, runtime.mesh)
    sources = {"/".join(p): a for p, a in _flat(canonical)}
    expected = {_canonical_name(p)[0] for p, _ in _flat(abstract)}
    unexpected = sorted(set(sources) - expected)
    if unexpected:
        raise ConfigError(
            f"checkpoint has tensors the {config.name} model does not use: {unexpected[:5]}; "
            "check that the checkpoint matches the configuration")
    dtype = jnp.dtype(runtime.weights_dtype)

    def build(path, leaf, sharding):
        label, layer = _canonical_name(tuple(getattr(p, "key", str(p)) for p in path))
        src = sources.get(label)
        if src is None:
            raise ConfigError(f"checkpoint is missing tensor {label!r} of shape {leaf.shape}")
        shape = tuple(src.shape[1:]) if layer is not None else tuple(src.shape)
        if shape != tuple(leaf.shape):
            raise ShapeError(
                f"tensor {label!r} has shape {shape} in the checkpoint but the {config.name} "
                f"model needs {tuple(leaf.shape)}")

        def shard(index):
            part = src[layer] if layer is not None else src
            return np.asarray(part[index]).astype(dtype)

        return jax.make_array_from_callback(leaf.shape, sharding, shard)

    return jax.tree_util.tree_map_with_path(build, abstract, shardings)


def stack_layers(per_layer: list[dict]) -> dict:
    """``[{name: array}] * L`` -> ``{name: [L, ...]}`` (host arrays)."""
    return {name: np.stack([layer[name] for layer in per_layer]) for name in per_layer[0]}
