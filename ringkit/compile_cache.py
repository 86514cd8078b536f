"""JAX's persistent compilation cache for ringkit's programs: a model's prefill and decode steps
compile once per machine and are read back after a kernel restart or by the next ``ringkit``
command.

``load_model`` turns the cache on, as ``RINGKIT_XLA_CACHE`` says:

- unset: on for GPU and TPU meshes, off for CPU ones (XLA:CPU rejects every cached executable
  on some Intel CPUs and logs an error for each, jax-ml/jax#38445);
- ``1``: on for every backend (on the AMD EPYC CI machine it saves ~12 s of a 4K-token
  ``read``'s 47 s); ``0``: off; any other value: on, in that directory.

A cache the user set up (``jax_compilation_cache_dir``, ``JAX_COMPILATION_CACHE_DIR``) is left
as it is. The default directory is ``$RINGKIT_CACHE/xla/<jax version, backend, host>`` (default
``$RINGKIT_CACHE``: ``~/.cache/ringkit``), one per machine kind, since cached CPU code is
specific to the host's instruction set; it keeps the most recently used 2 GiB. JAX never caches
an executable with a host callback: a prefill that shows a progress bar compiles every time
(``RINGKIT_PROGRESS=0`` hides the bar and lets the prefill be cached too).

Only trust a cache directory that only you can write to: an executable read from it runs as
your code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

import jax

MAX_BYTES = 2 << 30
_OFF, _ON = ("0", "false", "no", "off"), ("1", "true", "yes", "on")
_log = logging.getLogger("ringkit")
_chosen: list[Path | None] = []  # the decision, made once per process


def _host_tag(platform_name: str, device_kind: str) -> str:
    """A short hash of what a cached executable depends on beyond JAX's own key: the host's CPU
    model and instruction-set flags (read from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        cpu = "\n".join(line for line in lines if line.startswith(("model name", "flags"))
                        )[:4096] or cpu
    except OSError:
        pass
    return hashlib.sha256("\0".join([platform_name, device_kind, platform.machine(), cpu])
                          .encode()).hexdigest()[:12]


def directory(setting: str | None, platform_name: str, device_kind: str = "",
              user_dir: str | None = None) -> Path | None:
    """Where ringkit's cache goes for ``RINGKIT_XLA_CACHE=setting`` on this backend, or None
    (off, or the user's own cache is set: ``user_dir``)."""
    setting = (setting or "").strip()
    if user_dir or setting.lower() in _OFF:
        return None
    if not setting and platform_name == "cpu":
        return None
    if setting and setting.lower() not in _ON:
        return Path(setting).expanduser()
    base = Path(os.environ.get("RINGKIT_CACHE") or Path.home() / ".cache" / "ringkit")
    tag = _host_tag(platform_name, device_kind)
    return base.expanduser() / "xla" / f"jax-{jax.__version__}-{platform_name}-{tag}"


def ensure(mesh) -> Path | None:
    """Turn the cache on for programs on ``mesh``'s backend (once per process); return its
    directory, or None where it stays off."""
    if _chosen:
        return _chosen[0]
    device = mesh.devices.flat[0]
    path = directory(os.environ.get("RINGKIT_XLA_CACHE"), device.platform,
                     getattr(device, "device_kind", ""), jax.config.jax_compilation_cache_dir)
    if path is not None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only home: compile as before
            _log.warning("no persistent compilation cache: cannot create %s (%s)", path, e)
            path = None
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
        _log.info("persistent compilation cache: %s", path)
    _chosen.append(path)
    return path


def _has_filelock() -> bool:
    """JAX evicts old entries only with ``filelock`` installed (it comes with huggingface_hub)."""
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True
