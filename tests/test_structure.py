"""The package's structure: no import circles between ringkit's modules.

The graph is read from the source (every ``import`` / ``from ... import``, at module level or
inside a function, since an import inside a function that closes a circle only hides it until
that function runs). A package's ``__init__`` is a node of its own: ``from ringkit.model import
load_model`` depends on ``ringkit/model/__init__.py``, ``from ringkit.attention import
blockwise`` on ``ringkit/attention/blockwise.py``.
"""

import ast
import pathlib

import ringkit

ROOT = pathlib.Path(ringkit.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = ("ringkit",) + path.relative_to(ROOT).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _targets(module: str, node, mods) -> list[str]:
    """The ringkit modules an import statement in ``module`` loads (the deepest that exist)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module if mods[module].name == "__init__.py" else module.rpartition(".")[0]
            up = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(up + ([node.module] if node.module else []))
        # ``from package import submodule`` depends on the submodule, not on what the package's
        # __init__ re-exports; ``from package import name`` on the __init__.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    found = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name.startswith("ringkit") and name != module:
            found.append(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_targets(module, node, mods))
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circles():
    found = circles(import_graph())
    assert not found, "import circles (break them with a leaf module): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_no_circles_between_subpackages():
    """Nor one package importing another that imports it back (``model/`` <-> ``tokenize/``)."""
    unit = lambda m: ".".join(m.split(".")[:2])  # ringkit.model.weights.hf -> ringkit.model
    graph = {}
    for module, targets in import_graph().items():
        graph.setdefault(unit(module), set()).update(
            unit(t) for t in targets if unit(t) != unit(module))
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, set())
    found = circles(graph)
    assert not found, "circles between packages: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_circle_finder_finds_circles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
    graph = import_graph()
    assert "ringkit.attention.kernels" in graph["ringkit.attention.spec"]
    graph["ringkit.attention.sizes"].add("ringkit.attention.spec")  # a circle made on purpose
    assert any({"ringkit.attention.sizes", "ringkit.attention.spec"} <= set(c)
               for c in circles(graph))


def test_ruff_passes():
    """The lint rules in pyproject.toml ([tool.ruff.lint]) hold on every Python file and notebook."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("ruff", reason="ruff comes with the dev extras: pip install -e '.[dev]'")
    root = ROOT.parent
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", "--output-format",
                          "concise", "ringkit", "tests", "benchmarks", "examples", "notebooks"],
                         cwd=root, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_public_modules_type_check(tmp_path):
    """mypy passes on the public modules ([tool.mypy] files in pyproject.toml)."""
    import subprocess
    import sys

    import pytest

    pytest.importorskip("mypy", reason="mypy comes with the dev extras: pip install -e '.[dev]'")
    run = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                         cwd=ROOT.parent, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
