"""Test set-up: 8 simulated CPU devices (before JAX is imported) and a fresh random seed per run."""

import atexit
import os
import random
import shutil
import tempfile
import zlib

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The token store writes under $RINGKIT_CACHE: a throw-away one, never the user's.
os.environ["RINGKIT_CACHE"] = tempfile.mkdtemp(prefix="ringkit-test-cache-")
atexit.register(shutil.rmtree, os.environ["RINGKIT_CACHE"], ignore_errors=True)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# No progress bars, and so no progress callback compiled into prefills: executables with a host
# callback skip the persistent compilation cache below.
os.environ.setdefault("RINGKIT_PROGRESS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 references; ringkit itself never needs it
# One compilation per distinct program in a run: tests build several models on the same mesh
# (module fixtures, the CLI's default model), each with its own jitted functions, and the
# decode steps take 5-10 s each to compile. A throw-away persistent cache dedupes them.
# Under pytest-xdist the workers share the controller's cache (they inherit its environment),
# which removes it when the run ends.
_compile_cache = os.environ.get("RINGKIT_TEST_XLA_CACHE")
if _compile_cache is None:
    _compile_cache = os.environ["RINGKIT_TEST_XLA_CACHE"] = tempfile.mkdtemp(
        prefix="ringkit-test-xla-cache-")
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _compile_cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Fresh inputs every run; RINGKIT_TEST_SEED=<n> reproduces a failing run.
SEED = int(os.environ.get("RINGKIT_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"ringkit test seed: {SEED} (set RINGKIT_TEST_SEED={SEED} to reproduce)"


@pytest.fixture
def rng(request):
    """A numpy Generator seeded from the run seed and the test's name."""
    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2's tokenizer alone (its GGUF's metadata, no weights)."""
    from ringkit.errors import MissingDependencyError
    from ringkit.model.load import embedded_model_path
    from ringkit.model.weights.gguf import read_metadata
    from ringkit.tokenize.text import Tokenizer

    try:
        path = embedded_model_path()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    return Tokenizer.from_gguf_fields(read_metadata(path))


def pytest_sessionfinish(session):
    """Under xdist, free JAX's executables and arrays before the worker reports that it finished:
    execnet interrupts a worker still busy 5 s after the run ends, and a worker's final garbage
    collection (thousands of compiled programs on 8 simulated devices) can take that long."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import gc

        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _free_models_after_each_module():
    """Drop the embedded models ``rk.read``/``rk.ask`` loaded and JAX's in-memory executables
    when a test module ends. On 8 simulated devices each default model holds its weights once
    per device (~4.3 GB for SmolLM2 in float32): kept for a worker's whole life they added up to
    8 GB per worker, and two workers beside a notebook kernel ran a 24 GB machine out of memory.
    Later modules reload (seconds) and find their programs in the persistent compile cache."""
    yield
    import gc
    import sys

    context = sys.modules.get("ringkit.context")
    if context is not None:
        context._MODELS.clear()
    jax.clear_caches()
    gc.collect()
