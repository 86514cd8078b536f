"""ringkit: long-context analysis with ring attention over a JAX device mesh.

The public API lives here; everything else is an implementation module.
"""

from ringkit import attention, bench, errors, eval, model  # noqa: A004 (ringkit.eval)
from ringkit.attention import (
    BlockSizes, from_layout, layout_positions, pad_for_ring, ring_attention,
    ring_attention_permuted, to_layout)
from ringkit.context import Context, ask, load_context, read
from ringkit.errors import RingkitError
from ringkit.inputs import Document, ingest
from ringkit.mesh import (
    LOGICAL_AXIS_RULES, MeshConfig, initialize_distributed, logical_sharding, logical_to_spec,
    make_mesh)
from ringkit.model import Model, ModelConfig, RopeScaling, load_model
from ringkit.planner import Plan, plan

__version__ = "0.1.0"

__all__ = [
    "BlockSizes", "Context", "Document", "LOGICAL_AXIS_RULES", "MeshConfig", "Model",
    "ModelConfig", "Plan", "RingkitError", "RopeScaling", "ask", "attention", "bench", "errors",
    "eval", "from_layout", "ingest", "initialize_distributed", "layout_positions", "load_context",
    "load_model", "logical_sharding", "logical_to_spec", "make_mesh", "model", "pad_for_ring",
    "plan", "read", "ring_attention", "ring_attention_permuted", "to_layout",
]
