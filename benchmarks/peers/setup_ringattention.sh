#!/usr/bin/env bash
# Create (or refresh) an isolated venv with the official ringattention==0.1.2
# package, for benchmarks/peers/ringattention_bench.py.  Idempotent: re-running
# only installs what is missing.  Usage: bash benchmarks/peers/setup_ringattention.sh
#
# jax/jaxlib are pinned to the SAME version as ringkit's main environment so both
# libraries run on the same XLA.  ringattention is installed with --no-deps; its
# import-time needs are einops, and flax.linen (ringattention_jax.py imports it for
# blockwise_feedforward), whose own import needs msgpack, typing_extensions,
# absl-py, rich and PyYAML.  flax is also --no-deps to keep optax/orbax/tensorstore
# out.  jax 0.10 removed jax.lib.xla_bridge, which ringattention/__init__.py uses;
# the bench script shims that at runtime (site-packages is left untouched).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv-ringattention"
PYTHON="${PYTHON:-python3}"

JAX_VERSION=0.10.2
PIP_QUIET=(-q --disable-pip-version-check)

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# jax brings its normal deps (numpy, scipy, ml_dtypes, opt_einsum).
"$PY" -m pip install "${PIP_QUIET[@]}" "jax==$JAX_VERSION" "jaxlib==$JAX_VERSION" "einops==0.8.2"
# Only what `import flax.linen` really needs (versions match the main env).
"$PY" -m pip install "${PIP_QUIET[@]}" --no-deps \
  "flax==0.12.8" "msgpack==1.2.4" "typing_extensions==4.15.0" "absl-py==2.5.1" \
  "rich==15.0.0" "PyYAML==6.0.3"
"$PY" -m pip install "${PIP_QUIET[@]}" --no-deps "ringattention==0.1.2"

# Smoke test: import through the bench script's shim.
"$PY" - <<PYEOF
import sys
sys.path.insert(0, "$HERE")
import ringattention_bench as b
ra = b.import_ringattention()
import jax
print("[setup] ok: jax", jax.__version__, "ringattention", b.ra_version(),
      "->", ra.ringattention.__name__)
PYEOF
