"""The outline of a source tree: what each file is for, in far fewer tokens than the files.

A repository is often many times longer than a model's context (this one is ~200K tokens; the
embedded SmolLM2 reads 8K). Its outline keeps every file's path and says what the file holds:

  - detail 2: a Python module's docstring (first paragraph) and its top-level classes and
    functions; a Markdown file's first heading and paragraph; other text files' first lines;
  - detail 1: one line per file (the docstring's or heading's first line);
  - detail 0: the paths alone.

Data files (JSON, CSV, notebooks, ...) are listed by path at every level.

``fit_outline`` picks the most detailed level whose tokens fit a budget. Segments that did not
come from a source tree's files (a book given beside it) are kept whole.

Example::

    doc = rk.ingest("ringkit/")
    small = outline(doc, detail=1)
    print(small.text[:500])
"""

from __future__ import annotations

import ast
import dataclasses
import re

from ringkit.inputs.document import Document, TextSegment
from ringkit.inputs.repo import HEADER

DETAILS = (2, 1, 0)
_FIRST_LINES = 3
_MAX_LINE = 160
# Data, not prose: their first lines say nothing about what they are for; the path does.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".npy", ".npz", ".lock", ".svg", ".ipynb")


def _body(seg: TextSegment) -> str:
    """A file segment's text without its ``===== path =====`` header line."""
    header = HEADER.format(path=seg.source)
    return seg.text[len(header) + 1:] if seg.text.startswith(header) else seg.text


def _clip(line: str) -> str:
    line = " ".join(line.split())
    return line if len(line) <= _MAX_LINE else line[:_MAX_LINE - 3] + "..."


def _paragraph(text: str) -> list[str]:
    """The first paragraph of ``text`` as lines (blank-line delimited)."""
    lines = []
    for line in text.strip().splitlines():
        if not line.strip():
            break
        lines.append(_clip(line))
    return lines


def _python(text: str, detail: int) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return _plain(text, detail)
    doc = ast.get_docstring(tree) or ""
    lines = _paragraph(doc)[: 1 if detail == 1 else None]
    if detail >= 2:
        names = [("class " if isinstance(node, ast.ClassDef) else "def ") + node.name
                 for node in tree.body
                 if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                 and not node.name.startswith("_")]
        if names:
            lines.append(_clip("defines: " + ", ".join(names)))
    return lines


def _markdown(text: str, detail: int) -> list[str]:
    heading = next((line.lstrip("# ").strip() for line in text.splitlines()
                    if line.startswith("#")), "")
    if detail == 1:
        return [_clip(heading)] if heading else _plain(text, 1)
    rest = re.sub(r"^#.*$", "", text, count=1, flags=re.MULTILINE)
    return ([_clip(heading)] if heading else []) + _paragraph(rest)


def _plain(text: str, detail: int) -> list[str]:
    # Lines that say something: not a shebang, not bare punctuation (a JSON file's "{").
    lines = [line for line in text.splitlines()
             if any(c.isalnum() for c in line) and not line.startswith("#!")]
    return [_clip(line) for line in lines[: 1 if detail == 1 else _FIRST_LINES]]


def describe_file(path: str, text: str, detail: int) -> list[str]:
    """Lines that say what the file at ``path`` holds, at ``detail`` 0, 1 or 2."""
    if detail == 0 or path.endswith(DATA_SUFFIXES):
        return []
    if path.endswith((".py", ".pyi")):
        return _python(text, detail)
    if path.endswith((".md", ".rst", ".markdown")):
        return _markdown(text, detail)
    return _plain(text, detail)


def outline(doc: Document, detail: int = 2) -> Document:
    """``doc`` with each source-tree file replaced by its path and a description (see the
    module docstring); other segments, skips and frames are kept."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, got {detail}")
    files = set(doc.files)
    segments = []
    for seg in doc.segments:
        if isinstance(seg, TextSegment) and seg.source in files:
            lines = describe_file(seg.source, _body(seg), detail)
            text = "\n".join([seg.source] + [f"    {line}" for line in lines])
            segments.append(dataclasses.replace(seg, text=text))
        else:
            segments.append(seg)
    return dataclasses.replace(doc, segments=segments)


def fit_outline(doc: Document, count_tokens, budget: int) -> tuple[Document, int] | None:
    """The most detailed outline of ``doc`` whose ``count_tokens(outline)`` is at most
    ``budget``, and its detail level; None when not even the paths fit."""
    for detail in DETAILS:
        small = outline(doc, detail)
        if count_tokens(small) <= budget:
            return small, detail
    return None
