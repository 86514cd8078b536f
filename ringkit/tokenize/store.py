"""A token store: a tokenized prompt on disk, cached by content, so reading a book again is instant.

One entry is a directory named by a SHA-256 key (format version, tokenizer, VQGAN when frames
were encoded, and the exact input) holding three uint32 memmaps of ``n`` entries and a JSON
header::

    ids.u32       token ids
    vision.u32    1 where the id indexes the vision vocabulary, else 0
    segment.u32   index into ``doc.segments`` each token came from (NO_SEGMENT: prompt scaffolding)
    meta.json     {"format", "tokens", "counts", "segments": [provenance of each segment]}

Entries are written to a temporary directory and renamed into place, so a crash never leaves a
half-written entry that a later read would trust; ``meta.json`` records the arrays' SHA-256,
checked on every read (an edited or damaged entry is a miss, rewritten by the next ``put``), and
a ``put`` removes temporary directories that crashed writers left (older than an hour). The
root is ``$RINGKIT_CACHE/tokens`` (default ``~/.cache/ringkit/tokens``).

Example::

    store = TokenStore.default()
    key = store.key("text", tokenizer.digest, prompt_text)
    tokens = store.get(key) or store.put(key, compute_tokens(), segments)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

FORMAT = 3  # 2: special-token strings in documents are text; 3: arrays' digest in meta.json
STALE_SECONDS = 3600  # a temporary directory this old belongs to a writer that died
NO_SEGMENT = 2**32 - 1
_FILES = ("ids", "vision", "segment")


def cache_root() -> Path:
    """``$RINGKIT_CACHE/tokens``, or ``~/.cache/ringkit/tokens``."""
    base = os.environ.get("RINGKIT_CACHE") or Path.home() / ".cache" / "ringkit"
    return Path(base) / "tokens"


def digest(*parts) -> str:
    """SHA-256 over ``parts`` (str, bytes or numpy arrays), each length-prefixed."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(f"{part.dtype}{part.shape}".encode())
            data = memoryview(part).cast("B")
        else:
            data = part.encode() if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Entry:
    """A stored tokenization: ``ids``, ``vision``, ``segment`` (uint32 ``[n]``, memmaps when read
    back) and ``meta`` (its JSON header)."""

    ids: np.ndarray
    vision: np.ndarray
    segment: np.ndarray
    meta: dict


@dataclasses.dataclass(frozen=True)
class TokenStore:
    """Tokenized prompts under ``root``, one directory per key."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).expanduser())  # str paths too

    @classmethod
    def default(cls) -> "TokenStore":
        return cls(cache_root())

    @staticmethod
    def key(*parts) -> str:
        return digest(f"ringkit-tokens-v{FORMAT}", *parts)

    def get(self, key: str) -> Entry | None:
        """The entry stored under ``key``, memory-mapped read-only, or None (absent or
        unreadable: a damaged entry is treated as a miss and rewritten by ``put``)."""
        path = self.root / key
        try:
            meta = json.loads((path / "meta.json").read_text())
            n = int(meta["tokens"])
            if meta.get("format") != FORMAT:
                return None
            arrays = [np.memmap(path / f"{name}.u32", np.uint32, "r", shape=(n,)) if n else
                      np.zeros(0, np.uint32) for name in _FILES]
            if any((path / f"{name}.u32").stat().st_size != 4 * n for name in _FILES if n):
                return None  # longer than recorded: appended to
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if meta.get("digest") != digest(*arrays):
            return None  # edited or damaged since it was written
        return Entry(*arrays, meta)

    def put(self, key: str, ids, vision, segment, meta: dict) -> Entry:
        """Store arrays of equal length ``n`` and ``meta`` under ``key``; returns the stored
        entry. A store that cannot be written (read-only disk, full) is skipped silently: the
        arrays are returned as they are, since caching is an optimisation."""
        arrays = [np.asarray(a).astype(np.uint32) for a in (ids, vision, segment)]
        meta = {**meta, "format": FORMAT, "tokens": len(arrays[0]), "digest": digest(*arrays)}
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_stale()
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.root))
            for name, a in zip(_FILES, arrays):
                a.tofile(tmp / f"{name}.u32")
            (tmp / "meta.json").write_text(json.dumps(meta))
            target = self.root / key
            if target.exists():  # a damaged or older entry
                shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            return Entry(*arrays, meta)
        return self.get(key) or Entry(*arrays, meta)

    def _remove_stale(self) -> None:
        """Remove temporary directories that writers killed midway left behind."""
        now = time.time()
        for tmp in self.root.glob(".*-*"):
            try:
                if tmp.is_dir() and now - tmp.stat().st_mtime > STALE_SECONDS:
                    shutil.rmtree(tmp, ignore_errors=True)
            except OSError:
                pass
