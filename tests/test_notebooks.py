"""The notebooks under notebooks/ run top to bottom on CPU (a fresh kernel each, 1 device unless
the notebook sets its own), with outputs cleared in git and markdown before every code cell.

The default run checks each notebook's form. Executing them is CI's second command,
``pytest -m notebooks -n 2`` (``.ci/run``): each has 5 minutes with the embedded model; on 2
cores they took 37-86 s each, 2m47s for the five."""

import pathlib

import jax
import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need nbclient (pip install "
                               "-e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_explained(path):
    """Outputs cleared in git and markdown before every code cell (the default run checks this;
    running them is slow)."""
    nb = nbformat.read(path, as_version=4)
    assert any(c.cell_type == "code" for c in nb.cells)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs left in git"
            assert i > 0 and nb.cells[i - 1].cell_type == "markdown", f"cell {i}: no markdown"
            assert "def " not in cell.source and "class " not in cell.source, (
                f"cell {i}: library code belongs in ringkit, not in a notebook")


@pytest.mark.notebooks
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
    nb = nbformat.read(path, as_version=4)
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the kernel sees this machine's devices
    monkeypatch.setenv("RINGKIT_PROGRESS", "0")
    # The kernels share the run's persistent compilation cache (tests/conftest.py).
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
