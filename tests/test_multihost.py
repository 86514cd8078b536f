"""Two processes x 4 CPU devices form one 8-device mesh (jax.distributed) and match 1 x 8."""

import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

import ringkit as rk

WORKER = pathlib.Path(__file__).parent / "workers" / "multihost_ring.py"


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "multihost.npz"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(pid), "2", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    multi = np.load(out)

    # The same inputs (the worker's seed) on one process with 8 devices.
    mesh = rk.make_mesh(sp=8)
    rng = np.random.default_rng(1234)
    q = rng.standard_normal((2, 256, 6, 64)).astype(np.float32)
    k, v = (rng.standard_normal((2, 256, 2, 64)).astype(np.float32) for _ in range(2))
    seg = np.sort(rng.integers(0, 3, (2, 256)), axis=1).astype(np.int32)

    def loss(q, k, v):
        o = rk.ring_attention(q, k, v, mesh=mesh, segment_ids=seg)
        return (o ** 2).sum(), o

    (_, o), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    for name, single in zip(("out", "dq", "dk", "dv"), (o, *grads)):
        np.testing.assert_allclose(multi[name], np.asarray(single), rtol=1e-6, atol=1e-6,
                                   err_msg=name)
