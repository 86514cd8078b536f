"""Device meshes with LWM's axes ('dp', 'fsdp', 'tp', 'sp') and the logical-axis rules.

Model and attention code name array dimensions logically ('batch', 'seq', 'heads', ...); one small
table maps those names to mesh axes, so changing a parallelism strategy is a one-line edit here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ringkit.errors import ConfigError, MeshError

MESH_AXES = ("dp", "fsdp", "tp", "sp")

# Logical dimension name -> mesh axis (or tuple of axes, or None for replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("dp", "fsdp")),
    ("seq", "sp"),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("head_dim", None),
    ("embed", "fsdp"),
    ("mlp", "tp"),
    ("vocab", "tp"),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the four mesh axes; at most one may be -1 ("all remaining devices").

    Example: ``MeshConfig.parse("1,1,1,-1")`` is pure sequence parallelism (LWM's ``mesh_dim``).
    """

    dp: int = 1
    fsdp: int = 1
    tp: int = 1
    sp: int = -1

    def __post_init__(self):
        sizes = self.sizes
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes):
            raise MeshError(f"mesh sizes must be whole numbers (or -1), got dp,fsdp,tp,sp = "
                            f"{', '.join(repr(s) for s in sizes)}")
        if any(s == 0 or s < -1 for s in sizes):
            raise MeshError(f"mesh sizes must be positive or -1, got dp,fsdp,tp,sp = {_fmt(sizes)}")
        if sum(s == -1 for s in sizes) > 1:
            raise MeshError(
                f"at most one mesh axis may be -1 (fill with the remaining devices), got "
                f"dp,fsdp,tp,sp = {_fmt(sizes)}"
            )

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return (self.dp, self.fsdp, self.tp, self.sp)

    @classmethod
    def parse(cls, spec: str) -> "MeshConfig":
        """Parse LWM's ``"dp,fsdp,tp,sp"`` string, e.g. ``"1,-1,4,1"``."""
        parts = [p.strip() for p in str(spec).split(",")]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) != 4:
            raise MeshError(
                f"mesh string {spec!r} must be four comma-separated integers 'dp,fsdp,tp,sp', "
                "e.g. '1,1,1,-1' (all devices on the sequence axis)"
            )
        return cls(*sizes)

    def resolve(self, n_devices: int) -> tuple[int, int, int, int]:
        """Concrete axis sizes for ``n_devices`` devices (replacing -1)."""
        sizes = list(self.sizes)
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if n_devices % known:
                raise MeshError(
                    f"mesh dp,fsdp,tp,sp = {_fmt(self.sizes)}: the fixed axes multiply to {known}, "
                    f"which does not divide the {n_devices} devices; choose sizes whose product "
                    f"divides {n_devices}"
                )
            sizes[sizes.index(-1)] = n_devices // known
        elif known != n_devices:
            raise MeshError(
                f"mesh dp,fsdp,tp,sp = {_fmt(self.sizes)} needs {known} devices but {n_devices} "
                f"are available; make the product {n_devices} or use -1 for one axis"
            )
        return tuple(sizes)  # type: ignore[return-value]


def _fmt(sizes) -> str:
    return ",".join(str(s) for s in sizes)


def make_mesh(
    spec: str | MeshConfig | None = None,
    *,
    dp: int = 1,
    fsdp: int = 1,
    tp: int = 1,
    sp: int = -1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Build a ``Mesh`` with axes ``('dp', 'fsdp', 'tp', 'sp')``.

    Args:
      spec: LWM's ``"dp,fsdp,tp,sp"`` string or a ``MeshConfig``; overrides the keyword sizes.
      dp, fsdp, tp, sp: axis sizes; one may be -1 to take the remaining devices.
      devices: build the mesh over these devices only (default: all devices of all processes).

    Example::

        mesh = ringkit.make_mesh(sp=8)            # 8 devices on the sequence axis
        mesh = ringkit.make_mesh("1,1,2,-1")      # tensor parallel 2, sequence over the rest
    """
    if spec is None:
        config = MeshConfig(dp, fsdp, tp, sp)
    elif isinstance(spec, MeshConfig):
        config = spec
    elif isinstance(spec, str):
        config = MeshConfig.parse(spec)
    else:
        raise MeshError(f"mesh spec must be a 'dp,fsdp,tp,sp' string or MeshConfig, got {spec!r}")
    if isinstance(devices, jax.Device):
        devices = [devices]
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise MeshError("no devices given to make_mesh")
    if not all(isinstance(d, jax.Device) for d in devices):
        raise MeshError(f"devices must be jax devices (e.g. jax.devices()[:4]), got "
                        f"{devices!r:.80}")
    if len({d.id for d in devices}) != len(devices):
        raise MeshError(f"devices must be distinct; got {[d.id for d in devices]}")
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 4, devices=devices)


def require_axes(mesh: Mesh, axes: Sequence[str] = MESH_AXES) -> None:
    """Raise ``MeshError`` unless ``mesh`` has every axis in ``axes``."""
    missing = [a for a in axes if a not in mesh.axis_names]
    if missing:
        raise MeshError(
            f"the mesh has axes {tuple(mesh.axis_names)} but ringkit needs {tuple(axes)} "
            f"(missing {tuple(missing)}); build it with ringkit.make_mesh(...)"
        )


def logical_to_spec(
    names: Sequence[str | None], rules=LOGICAL_AXIS_RULES
) -> PartitionSpec:
    """Map logical dimension names to a ``PartitionSpec``.

    A mesh axis is used at most once per array: a later dimension that maps to an axis already
    taken stays replicated (e.g. 'embed' of an activation whose 'batch' took 'fsdp'). An unknown
    name is an error, never a silent replication.

    Example: ``logical_to_spec(("batch", "seq", "heads", "head_dim"))`` is
    ``P(('dp', 'fsdp'), 'sp', 'tp', None)``.
    """
    table = dict(rules)
    used: set[str] = set()
    out: list = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise ConfigError(
                f"no sharding rule for logical axis {name!r}; known axes: {sorted(table)}"
            )
        target = table[name]
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        free = tuple(a for a in axes if a not in used)
        used.update(free)
        out.append(None if not free else free[0] if len(free) == 1 else free)
    return PartitionSpec(*out)


def logical_sharding(mesh: Mesh, names: Sequence[str | None], rules=LOGICAL_AXIS_RULES):
    """``NamedSharding`` on ``mesh`` for an array whose dimensions have these logical names."""
    return NamedSharding(mesh, logical_to_spec(names, rules))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Join a multi-host run with JAX's own runtime (``jax.distributed.initialize``).

    Call once per process before touching devices; on TPU VMs and SLURM the arguments are found
    automatically. Afterwards ``make_mesh`` spans the devices of every process.

    Example (two processes on one machine, 4 CPU devices each)::

        ringkit.initialize_distributed("localhost:12355", num_processes=2, process_id=rank)
        mesh = ringkit.make_mesh(sp=8)
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
