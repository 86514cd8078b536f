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
import math
import dataclasses
import re

from ringkit.inputs.document import Document, TextSegment
from ringkit.inputs.repo import FOOTER, HEADER

DETAILS = (2, 1, 0)
_FIRST_LINES = 3
_MAX_LINE = 160
# Data, not prose: their first lines say nothing about what they are for; the path does.
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".npy", ".npz", ".lock", ".svg", ".ipynb")


def _body(seg: TextSegment) -> str:
    """A file segment's text without its header and footer lines."""
    text = seg.text
    header, footer = HEADER.format(path=seg.source), FOOTER.format(path=seg.source)
    text = text[len(header) + 1:] if text.startswith(header + "\n") else text
    return text[:-len(footer) - 1] if text.endswith("\n" + footer) else text


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
    return dataclasses.replace(doc, segments=[_intro(len(files), detail, 0)] + segments)


def _intro(files: int, detail: int, whole: int, query: str | None = None) -> TextSegment:
    """A first line telling the model what it is reading and, when the outline was fitted
    around a question, which question (small models answer far better given both)."""
    what = "each file's path" + (", then what the file holds" if detail else "")
    text = f"An outline of a source tree of {files:,} files: {what}."
    if query:
        text += f" It was chosen to answer this question: {query}"
    if whole:
        text += (f" The {whole} files most relevant to the question follow in full, each "
                 "between a '===== path =====' and a '===== end of path =====' line.")
    return TextSegment(text=text, source="outline")


def fit_outline(doc: Document, count_tokens, budget: int) -> tuple[Document, int, int] | None:
    """The most detailed outline of ``doc`` whose ``count_tokens(outline)`` is at most
    ``budget``: ``(outline, detail, 0)`` (no file read whole, as ``fit_focused`` says it), or
    None when not even the paths fit."""
    for detail in DETAILS:
        small = outline(doc, detail)
        if count_tokens(small) <= budget:
            return small, detail, 0
    return None


_WORD = re.compile(r"[a-z0-9]+")
# Words of a question that say nothing about which file it is about.
_STOP = frozenset("""a an and are as at be by can code do does file files for from has have how
i in is it its me of on or repo repository that the this to what when where which who why
with""".split())
# Suffixes folded so that a question's "reads videos" meets a file's "read" and "video".
_SUFFIXES = (("ies", "y"), ("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"),
             ("ing", ""), ("ed", ""), ("s", ""))


def _stem(word: str) -> str:
    """A light English stemmer (plurals, -ing, -ed; then a final e), applied to both sides:
    reads/read, videos/video, loading/loaded/loads/load, caching/cache."""
    for suffix, repl in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[:-len(suffix)] + repl
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


TEST_WEIGHT = 0.5
_TEST_PATH = re.compile(r"(^|/)(tests?|testing)/|(^|/)test_[^/]*$|_test\.py$")


def _words(text: str) -> list[str]:
    # Split identifiers too: ring_attention -> ring, attention; camelCase is lowered whole.
    return _WORD.findall(text.lower().replace("_", " "))


def _terms(text: str) -> list[str]:
    return [_stem(w) for w in _words(text)]


def relevance(doc: Document, query: str, *, k1: float = 1.2, b: float = 0.75) -> dict[str, float]:
    """BM25 score of every source-tree file of ``doc`` for ``query``, over what the file says it
    is about: its path (twice) and its detailed outline (docstring, definitions, heading), not
    its whole text, where incidental mentions (examples, tests' inputs) would drown it. Words
    are lightly stemmed; test files count ``TEST_WEIGHT`` unless the query speaks of tests."""
    files = [s for s in doc.segments if isinstance(s, TextSegment) and s.source in set(doc.files)]
    terms = {_stem(w) for w in _words(query) if w not in _STOP}
    if not files or not terms:
        return {s.source: 0.0 for s in files}
    counts, lengths = [], []
    for seg in files:
        about = " ".join(describe_file(seg.source, _body(seg), 2))
        words = _terms(seg.source) * 2 + _terms(about)
        lengths.append(len(words))
        bag: dict[str, int] = {}
        for w in words:
            if w in terms:
                bag[w] = bag.get(w, 0) + 1
        counts.append(bag)
    n, mean = len(files), sum(lengths) / len(files)
    df = {t: sum(t in c for c in counts) for t in terms}
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms}
    # Tests describe the feature they test in the feature's words; unless the question is
    # about tests, the implementation is what it asks for.
    asks_tests = any(t.startswith("test") for t in terms)
    scores = {}
    for seg, bag, length in zip(files, counts, lengths):
        norm = k1 * (1 - b + b * length / max(mean, 1))
        score = sum(idf[t] * f * (k1 + 1) / (f + norm) for t, f in bag.items())
        scores[seg.source] = score * (TEST_WEIGHT if not asks_tests
                                      and _TEST_PATH.search(seg.source) else 1.0)
    return scores


def focused(doc: Document, query: str, detail: int, whole: int, *, scores=None) -> Document:
    """``doc``'s outline at ``detail`` with the files ordered by relevance to ``query``, the
    most relevant last (nearest the question), and the ``whole`` most relevant read whole.
    ``scores``: ``relevance(doc, query)`` when already computed."""
    scores = relevance(doc, query) if scores is None else scores
    ranked = sorted(scores, key=lambda p: (scores[p], p))  # ascending: most relevant last
    keep = set(ranked[len(ranked) - whole:]) if whole else set()
    small = outline(doc, detail)
    originals = {s.source: s for s in doc.segments if isinstance(s, TextSegment)}
    rank = {p: i for i, p in enumerate(ranked)}
    files = [originals[s.source] if s.source in keep else s
             for s in small.segments if isinstance(s, TextSegment) and s.source in scores]
    files.sort(key=lambda s: rank[s.source])
    others = [s for s in small.segments[1:]  # after the outline's introduction
              if not (isinstance(s, TextSegment) and s.source in scores)]
    intro = _intro(len(scores), detail, len(keep), query)
    return dataclasses.replace(small, segments=[intro] + others + files)


def fit_focused(doc: Document, query: str, count_tokens, budget: int,
                max_whole: int = 1) -> tuple[Document, int, int] | None:
    """The richest ``focused`` outline within ``budget`` tokens. The most relevant file read
    whole comes first (it says more than any outline), then the most detailed level that fits
    beside it, then more relevant files whole (up to ``max_whole``) while they fit.

    ``max_whole`` is 1 by default. On 10 which-file questions about this repository,
    SmolLM2-135M named the right path for none of them with up to 8 files read whole (as many as
    fit), and for 1-2 with one (benchmarks/README.md). BM25 ranked the right file
    first for 7 of the 10 either way. Larger models may do better with more.
    Returns ``(document, detail, files read whole)`` or None when not even the paths fit."""
    scores = relevance(doc, query)
    build = lambda detail, whole: focused(doc, query, detail, whole, scores=scores)
    # A file that shares no word with the query is never read whole.
    max_whole = min(max_whole, sum(score > 0 for score in scores.values()))
    for first in ((1, 0) if max_whole else (0,)):
        for detail in DETAILS:
            best = build(detail, first)
            if count_tokens(best) > budget:
                continue
            whole = first
            while whole < max_whole:
                candidate = build(detail, whole + 1)
                if count_tokens(candidate) > budget:
                    break
                best, whole = candidate, whole + 1
            return best, detail, whole
    return None
