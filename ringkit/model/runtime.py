"""``Runtime``: how a model runs (mesh, dtypes, ring layout, layer loop), apart from what it is
(``ModelConfig``)."""

from __future__ import annotations

import dataclasses

from jax.sharding import Mesh

from ringkit.attention.kernels import IMPLS
from ringkit.attention.layouts import check_layout
from ringkit.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How the model runs (not what it is): mesh, dtypes, ring layout, layer loop.

    ``dtype`` is the prefill compute dtype (float32 default; bfloat16 runs matmuls at the fast
    bf16 rate with float32 accumulation). ``param_dtype`` is how weights are stored (default:
    ``dtype``); decode steps compute in it. On CPU keep float32 weights with bfloat16 compute:
    XLA:CPU's bfloat16 matrix-vector products (every decode step) are ~9x slower than float32.
    ``scan_layers`` compiles one layer and loops over stacked weights; ``remat`` recomputes layer
    activations in the backward pass.
    """

    mesh: Mesh
    dtype: str = "float32"
    param_dtype: str | None = None
    layout: str = "zigzag"
    impl: str = "auto"
    scan_layers: bool = True
    remat: bool = False
    block_q: int | None = None
    block_k: int | None = None

    def __post_init__(self):
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in (("float32", "bfloat16", "float16")
                             + ((None,) if name == "param_dtype" else ())):
                raise ConfigError(f"Runtime {name} must be float32, bfloat16 or float16, got "
                                  f"{value!r:.40}")
        check_layout(self.layout)
        if self.impl not in IMPLS:
            raise ConfigError(f"unknown impl {self.impl!r}; choose one of {IMPLS}")

    @property
    def sp(self) -> int:
        return self.mesh.shape["sp"]

    @property
    def weights_dtype(self) -> str:
        return self.param_dtype or self.dtype
