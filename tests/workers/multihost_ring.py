"""One process of a 2-process x 4-device ring attention run (launched by test_multihost.py).

Usage: python multihost_ring.py PORT PROCESS_ID NUM_PROCESSES OUT.npy
Inputs come from a fixed seed so every process builds the same global arrays.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, pid, nproc, out_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import ringkit as rk  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

rk.initialize_distributed(f"localhost:{port}", num_processes=nproc, process_id=pid)
assert jax.device_count() == 4 * nproc and jax.local_device_count() == 4

mesh = rk.make_mesh(sp=-1)
rng = np.random.default_rng(1234)
q = rng.standard_normal((2, 256, 6, 64)).astype(np.float32)
k, v = (rng.standard_normal((2, 256, 2, 64)).astype(np.float32) for _ in range(2))
seg = np.sort(rng.integers(0, 3, (2, 256)), axis=1).astype(np.int32)

sharding = rk.logical_sharding(mesh, ("batch", "seq", "heads", "head_dim"))
seg_sharding = rk.logical_sharding(mesh, ("batch", "seq"))
to_global = lambda x, s: jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
qg, kg, vg = (to_global(x, sharding) for x in (q, k, v))
segg = to_global(seg, seg_sharding)


def loss(q, k, v, seg):
    out = rk.ring_attention(q, k, v, mesh=mesh, segment_ids=seg)
    return (out ** 2).sum(), out


step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
(_, out), grads = step(qg, kg, vg, segg)
gathered = [np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in (out, *grads)]
if pid == 0:
    np.savez(out_path, out=gathered[0], dq=gathered[1], dk=gathered[2], dv=gathered[3])
jax.distributed.shutdown()
