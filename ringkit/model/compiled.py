"""XLA's own figure for the memory of a prefill and decode, beside ``ringkit.model.memory``'s
estimate: the real programs compiled (never run) with abstract weights on a mesh, and XLA's
memory analysis read back (what ``ringkit.plan(..., compile=True)`` reports).
"""

from __future__ import annotations

import dataclasses
import math

from ringkit.attention import decode
from ringkit.model.batch import padded_length
from ringkit.model.model import ROWS, STEP, Model
from ringkit.model.runtime import Runtime
from ringkit.model.transformer import param_shardings
from ringkit.model.weights.place import abstract_variables


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """XLA's memory analysis of the real programs, bytes per device: ``prefill`` (arguments,
    outputs and temporaries of the compiled prefill), ``decode_weights`` (the per-layer copy
    decode steps read, alive beside it) and ``step`` (a compiled one-token decode step, its
    cache donated). ``peak`` is what a prefill then decode holds at most."""

    prefill: int
    decode_weights: int
    step: int

    @property
    def peak(self) -> int:
        return max(self.prefill + self.decode_weights, self.step)


def compiled_memory(cfg, tokens: int, *, mesh, weights_dtype: str = "float32",
                    dtype: str = "float32", new_tokens: int = 0) -> CompiledMemory:
    """Compile (never run) the prefill of ``tokens`` tokens and a decode step of ``cfg`` on
    ``mesh`` (a ``Mesh``) with abstract weights (``jax.ShapeDtypeStruct``: nothing is
    allocated), and read XLA's memory analysis. Simulated CPU devices serve for any mesh
    (``XLA_FLAGS=--xla_force_host_platform_device_count=64``). XLA:CPU computes bfloat16 dots
    in float32, so bfloat16 weights compiled for a CPU count float32 copies an accelerator
    does not make."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding

    runtime = Runtime(mesh, dtype=dtype, param_dtype=weights_dtype)
    sds = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    abstract = abstract_variables(cfg, runtime)
    variables = jax.tree.map(sds, abstract, param_shardings(abstract, mesh))
    model = Model(cfg, variables, None, runtime)
    sp, rows = mesh.shape["sp"], mesh.shape["dp"] * mesh.shape["fsdp"]
    ids = jax.ShapeDtypeStruct((rows, padded_length(tokens, sp, runtime.layout)), jnp.int32,
                               sharding=NamedSharding(mesh, ROWS))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    extra = decode.room_slots(max(new_tokens, 1) - 1, sp)
    prefill = model._prefill_fn.lower(variables, ids, ids, ids, None, scalar, extra).compile()
    _, k, v, slot_pos, window_pos = jax.tree.map(sds, jax.eval_shape(
        lambda *a: model._prefill_fn(*a, extra), variables, ids, ids, ids, None, scalar),
        prefill.output_shardings)

    step_runtime = model._decoder.runtime
    shapes = abstract_variables(cfg, step_runtime)
    decode_vars = jax.tree.map(sds, shapes, param_shardings(shapes, mesh, decode=True))
    decode_weights = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                         for x in jax.tree.leaves(decode_vars))
    one = jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=NamedSharding(mesh, STEP))
    step = model._step_fn.lower(decode_vars, k, v, slot_pos, window_pos, one, one, scalar,
                                scalar, scalar).compile()
    total = lambda m: (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                       - m.alias_size_in_bytes)
    return CompiledMemory(total(prefill.memory_analysis()), decode_weights,
                          total(step.memory_analysis()))
