"""The persistent compilation cache ``load_model`` turns on: when it is on, where it goes, and that
a second process reads what the first compiled."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from ringkit import compile_cache


@pytest.mark.parametrize("setting,platform,on", [
    (None, "cpu", False), (None, "gpu", True), (None, "tpu", True), ("", "gpu", True),
    ("0", "gpu", False), ("off", "tpu", False), ("1", "cpu", True), ("yes", "cpu", True)])
def test_when_the_cache_is_on(setting, platform, on, tmp_path, monkeypatch):
    monkeypatch.setenv("RINGKIT_CACHE", str(tmp_path))
    path = compile_cache.directory(setting, platform, "kind")
    assert (path is not None) == on
    if on:  # under $RINGKIT_CACHE/xla, one directory per JAX version, backend and host
        assert path.parent == tmp_path / "xla"
        assert path.name.startswith(f"jax-{jax.__version__}-{platform}-")
        assert path != compile_cache.directory(setting, platform, "another kind")


def test_a_path_setting_and_the_users_own_cache(tmp_path):
    assert compile_cache.directory(str(tmp_path / "x"), "cpu") == tmp_path / "x"
    assert compile_cache.directory("~/x", "gpu") == Path.home() / "x"
    for setting in (None, "1", str(tmp_path)):  # a cache the user set up is left alone
        assert compile_cache.directory(setting, "gpu", user_dir=str(tmp_path / "mine")) is None


_PROGRAM = """
import json, jax, jax.numpy as jnp
import ringkit as rk
from ringkit import compile_cache
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
path = compile_cache.ensure(rk.make_mesh(sp=-1))
f = jax.jit(lambda x: jnp.tanh(jnp.cumsum(x @ x.T, axis=0)).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps(dict(path=str(path), hits=len(hits),
                      max_size=jax.config.jax_compilation_cache_max_size)))
"""


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(RINGKIT_XLA_CACHE=str(tmp_path / "xla"), JAX_PLATFORMS="cpu",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    runs = [json.loads(subprocess.run([sys.executable, "-c", _PROGRAM], env=env, check=True,
                                      capture_output=True, text=True).stdout.splitlines()[-1])
            for _ in range(2)]
    assert runs[0]["path"] == str(tmp_path / "xla")
    assert runs[0]["max_size"] == compile_cache.MAX_BYTES
    assert any((tmp_path / "xla").iterdir())
    assert runs[0]["hits"] == 0 and runs[1]["hits"] >= 1
