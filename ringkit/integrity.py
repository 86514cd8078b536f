"""A saved context's integrity record and its safe writing (``ringkit.persist`` uses them).

The record (in ``context.json``): a SHA-256 of the metadata itself, of named files, and the
size of every cache file. Saves go to a hidden sibling ``.NAME.saving-PID-*`` renamed into place;
a later save removes what a save whose process is gone left.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import pathlib
import shutil


def saving_prefix(path: pathlib.Path) -> str:
    """The name prefix of ``path``'s save in progress (a hidden sibling)."""
    return f".{path.name}.saving-"


def remove_leftovers(path: pathlib.Path) -> None:
    """Remove what saves to ``path`` killed midway left beside it (their process is gone)."""
    for tmp in path.parent.glob(f"{glob.escape(saving_prefix(path))}*"):
        pid = tmp.name[len(saving_prefix(path)):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def file_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_sizes(folder: pathlib.Path, root: pathlib.Path) -> dict[str, int]:
    """Size of every file under ``folder``, by path relative to ``root``."""
    return {p.relative_to(root).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def problem(path: pathlib.Path, meta: dict, meta_name: str, files: tuple[str, ...]
            ) -> str | None:
    """What in the saved directory ``path`` differs from the record in ``meta`` (read from
    ``meta_name``, with digests of ``files``), or None."""
    if meta.get("digest") != meta_digest(meta):
        return f"{meta_name} was changed after it was saved"
    digests = meta.get("digests")
    if not isinstance(digests, dict) or set(digests) != set(files):
        return f"{meta_name} has no digests of {', '.join(files)}"
    for name, want in digests.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if file_digest(path / name) != want:
            return f"{name} was changed or damaged after it was saved"
    for name, size in (meta.get("cache_files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"the cache file {name} is missing"
        if file.stat().st_size != size:
            return f"the cache file {name} holds {file.stat().st_size:,} bytes, not {size:,}"
    return None
