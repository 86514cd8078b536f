"""Source trees: a directory or a git checkout read as one document, file by file.

What is read: every text file that git would track (``git ls-files --cached --others
--exclude-standard`` in a checkout; the tree's ``.gitignore`` files through ``pathspec``
elsewhere), in sorted path order, each between a header and a footer line that name its relative path.
What is left out, each with its reason in ``doc.skipped``: vendored and generated folders and
files, binaries, files over ``max_file_bytes``, files that may hold secrets
(``ringkit.inputs.secrets``: credential files by name or path, private keys; tokens of known
shapes are redacted; ``include_secrets=True`` reads them) and symlinks (one pointing out of the root
is never followed; one inside it is read under its target's own path).
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess

from ringkit.errors import SourceError, advice
from ringkit.inputs.book import decode_text, looks_binary
from ringkit.inputs.document import Document, Skipped, TextSegment, printable_path
from ringkit.inputs.secrets import (
    PRIVATE_KEY, matches, reads_it, redact, redaction_note, secret_file)
from ringkit.progress import bar

MAX_FILE_BYTES = 1_000_000
VCS_DIRS = {".git", ".hg", ".svn"}  # left out silently
SKIP_DIRS = {
    "node_modules", "bower_components", "vendor", "third_party",
    "__pycache__", ".venv", "venv", ".tox", ".nox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".ipynb_checkpoints", "dist", "build", "target", ".eggs", ".gradle", "Pods",
    "site-packages", ".idea",
}
GENERATED = ("*.min.js", "*.min.css", "*.map", "*.pyc", "*.pyo", "*.so", "*.o", "*.a",
             "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock",
             "uv.lock", "*.egg-info")
HEADER = "===== {path} ====="
FOOTER = "===== end of {path} ====="  # the path again where the file ends: nearer what follows


def _git_files(root: pathlib.Path) -> list[str] | None:
    """Paths git would track under ``root`` (a checkout or a folder inside one; relative to
    ``root``), or None if git cannot say."""
    if shutil.which("git") is None:
        return None
    inside = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                            capture_output=True, check=False)
    if inside.returncode or inside.stdout.strip() != b"true":
        return None
    # A folder that its enclosing repository ignores (a virtualenv, site-packages) is read on
    # its own terms, not as the nothing that repository would track there.
    if subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "."],
                      capture_output=True, check=False).returncode == 0:
        return None
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False)
    if proc.returncode:
        return None
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _walk_files(root: pathlib.Path) -> list[str]:
    """Paths under ``root`` not ignored by the tree's .gitignore files (nearest file decides)."""
    import pathspec

    out = []
    specs: dict[str, pathspec.GitIgnoreSpec] = {}

    def ignored(rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):  # the nearest .gitignore first
            base = "/".join(parts[:depth])
            spec = specs.get(base)
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            result = spec.check_file(sub)
            if result.include is not None:
                return bool(result.include)
        return False

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = pathlib.Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        gi = pathlib.Path(dirpath) / ".gitignore"
        if gi.is_file():
            specs[rel_dir] = pathspec.GitIgnoreSpec.from_lines(
                gi.read_text(errors="replace").splitlines())
        join = (lambda n: f"{rel_dir}/{n}") if rel_dir else (lambda n: n)
        out += [join(f) for f in filenames if not ignored(join(f), False)]
        keep = []
        for d in dirnames:
            if (pathlib.Path(dirpath) / d).is_symlink():
                out.append(join(d))  # judged by the symlink rules, never walked
            elif d in VCS_DIRS or ignored(join(d), True):
                continue
            elif _vendored(d):
                out.append(join(d) + "/")  # reported once, never walked
            else:
                keep.append(d)
        dirnames[:] = keep
    return out


def _vendored(dirname: str) -> bool:
    return dirname in SKIP_DIRS or dirname.endswith(".egg-info")


def _loops(path: pathlib.Path) -> bool:
    """Whether following ``path``'s symlinks comes back to where it has been."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _skip_reason(root: pathlib.Path, rel: str, include_secrets: bool) -> str | None:
    """Why ``rel`` is left out by name or kind (before reading it), or None."""
    parts = rel.split("/")
    name = parts[-1]
    path = root / rel
    if path.is_symlink():
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # RuntimeError: Python < 3.13's "Symlink loop"
            return ("symlink loop (not followed)" if _loops(path)
                    else "broken symlink (its target does not exist)")
        if not target.is_relative_to(root):
            return "symlink to a path outside the repository (not followed)"
        return f"symlink to {target.relative_to(root).as_posix() or '.'} (read under that path)"
    if matches(name, GENERATED):
        return "generated file"
    if not include_secrets and (why := secret_file(rel)):
        return f"may hold secrets: {why} ({reads_it()})"
    return None


def read_repo(root: pathlib.Path, *, max_file_bytes: int = MAX_FILE_BYTES,
              include_secrets: bool = False, name: str | None = None) -> Document:
    """A source tree as a ``Document``: one segment per file, headed by its relative path."""
    root = root.resolve()
    name = name or str(root)
    paths = _git_files(root)
    if paths is None:
        paths = _walk_files(root)
    doc = Document()
    folders = set()
    ordered = sorted(set(paths))
    with bar(len(ordered), f"reading {pathlib.Path(name).name}", "file",
             threshold=5000) as progress:
        for rel in ordered:
            progress.update()
            parts = rel.rstrip("/").split("/")
            # Vendored and generated folders: one entry per folder, however many files git tracks.
            cut = next((i for i, p in enumerate(parts[:-1] if not rel.endswith("/") else parts)
                        if _vendored(p)), None)
            if cut is not None:
                folder = "/".join(parts[:cut + 1]) + "/"
                if folder not in folders:
                    folders.add(folder)
                    doc.skipped.append(
                        Skipped(printable_path(folder), "vendored or generated folder"))
                continue
            path, shown = root / rel, printable_path(rel)
            if not path.exists() and not path.is_symlink():
                continue  # tracked but deleted in the work tree
            reason = _skip_reason(root, rel, include_secrets)
            if reason is None and path.is_dir():
                continue  # a submodule or nested checkout: listed by git as a directory
            if reason is None:
                size = path.stat().st_size
                if size > max_file_bytes:
                    reason = (f"{size:,} bytes, over "
                              f"{advice('max_file_bytes=', '--max-file-bytes ')}{max_file_bytes:,}")
                elif size == 0:
                    reason = "empty"
            text = None
            if reason is None:
                try:
                    data = path.read_bytes()
                except OSError as e:
                    reason = f"unreadable ({e.strerror or e})"
                else:
                    if looks_binary(data):
                        reason = "binary"
                    else:
                        try:
                            text = decode_text(data, shown)
                        except SourceError as e:
                            reason = str(e).removeprefix(f"{shown} ")
            if text is not None and not include_secrets:
                if PRIVATE_KEY.search(text):
                    reason, text = f"holds a private key ({reads_it()})", None
                else:
                    text, kinds = redact(text)
                    if kinds:
                        doc.skipped.append(Skipped(shown, redaction_note(kinds)))
            if reason is not None:
                doc.skipped.append(Skipped(shown, reason))
                continue
            body = text.rstrip("\n")
            text = f"{HEADER.format(path=shown)}\n{body}\n{FOOTER.format(path=shown)}"
            doc.segments.append(TextSegment(text=text, source=shown,
                                            span=(1, body.count("\n") + 1), title=shown))
            doc.files.append(shown)
    if not doc.segments:
        why = "; ".join(f"{s.path}: {s.reason}" for s in doc.skipped[:5])
        raise SourceError(f"{name} has no readable text files"
                          + (f" ({len(doc.skipped)} skipped: {why})" if why
                             else " (it is empty, or .gitignore rules leave nothing)"))
    return doc
