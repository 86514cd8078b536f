"""ringkit: long-context analysis with ring attention over a JAX device mesh.

The public API lives here; everything else is an implementation module.
"""

from ringkit import attention, bench, errors, model
from ringkit import eval as eval  # noqa: A004 (rk.eval; the "as" marks it re-exported)
from ringkit.attention import (
    BlockSizes, from_layout, layout_positions, pad_for_ring, ring_attention,
    ring_attention_permuted, to_layout)
from ringkit.context import Context, ask, load_context, read
from ringkit.display import sharding_html
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
    "from_layout", "ingest", "initialize_distributed", "layout_positions", "load_context",
    "load_model", "logical_sharding", "logical_to_spec", "make_mesh", "model", "pad_for_ring",
    "plan", "read", "ring_attention", "ring_attention_permuted", "sharding_html", "to_layout",
]
# ``ringkit.eval`` (needle, RULER) is reached as ``rk.eval``; it stays out of ``__all__`` so that
# ``from ringkit import *`` does not shadow the builtin.
