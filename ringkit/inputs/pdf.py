"""PDF books and papers: the text layer of every page, through ``pypdf`` (the ``pdf`` extra).

Each page with text becomes one segment whose source is ``"<file>#page=<n>"`` (1-based, the
PDF fragment syntax viewers open), so answers and the token map point at pages. Pages without a
text layer (blank, or scanned images) are listed together in ``doc.skipped``; a PDF with no text
at all is refused with a hint to OCR it first. A page whose text cannot be extracted is skipped
with the reason, and the other pages are kept. Encrypted PDFs open when their user password is
empty (the common "no printing" lock); others are refused with the fix. pypdf's own warnings
("EOF marker not found", repaired cross-references) are not printed: a PDF that fails to read
names them in its error, one that reads despite them is simply read.

Example::

    doc = rk.ingest("paper.pdf")
    doc.segments[0].source   # 'paper.pdf#page=1'
"""

from __future__ import annotations

import contextlib
import logging
import pathlib

from ringkit.errors import FormatError, MissingDependencyError, SourceError
from ringkit.inputs.document import Document, Skipped, TextSegment
from ringkit.progress import bar


def _ranges(pages: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, start = [], None
    for i, p in enumerate(pages):
        start = p if start is None else start
        if i + 1 == len(pages) or pages[i + 1] != p + 1:
            out.append(f"{start}-{p}" if p > start else f"{p}")
            start = None
    return ", ".join(out)


def _page_text(raw: str) -> str:
    # Lines as the PDF laid them out, without trailing blanks or leading/trailing empty lines.
    return "\n".join(line.rstrip() for line in raw.splitlines()).strip("\n")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


@contextlib.contextmanager
def _pypdf_warnings():
    """pypdf's warnings while reading one file, collected (for the error) rather than printed."""
    logger, handler = logging.getLogger("pypdf"), _Collect()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _with(warnings: list[str]) -> str:
    return f"; pypdf: {'; '.join(warnings[:3])}" if warnings else ""


def read_pdf(path: pathlib.Path, name: str | None = None) -> Document:
    """One PDF as a ``Document``: a segment per page with text (see the module docstring)."""
    with _pypdf_warnings() as warnings:
        return _read_pdf(path, name, warnings)


def _read_pdf(path: pathlib.Path, name: str | None, warnings: list[str]) -> Document:
    name = name or str(path)
    try:
        import pypdf
        from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError
    except ImportError:
        raise MissingDependencyError(
            "reading PDFs needs pypdf: pip install 'ringkit[pdf]' (or pip install pypdf)") from None
    locked = SourceError(f"{name} is encrypted with a password; decrypt it first (e.g. qpdf "
                         "--password=... --decrypt in.pdf out.pdf) and ingest the result")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise locked from None
        pages = reader.pages
        n_pages = len(pages)
    except DependencyError as e:
        raise MissingDependencyError(
            f"{name} is encrypted with AES, which pypdf reads with the cryptography package: "
            f"pip install cryptography ({e})") from None
    except FileNotDecryptedError:
        raise locked from None
    except SourceError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as e:
        # pypdf raises its own errors for most damage and plain Python ones for the rest.
        raise FormatError(f"{name} is not a readable PDF (corrupt or truncated: {e}"
                          f"{_with(warnings)})") from None
    if n_pages == 0:
        raise SourceError(f"{name} has no pages")
    doc, empty = Document(), []
    with bar(n_pages, f"reading {pathlib.Path(name).name}", "page", threshold=50) as progress:
        for number in range(1, n_pages + 1):
            where = f"{name}#page={number}"
            try:
                text = _page_text(pages[number - 1].extract_text() or "")
            except (PyPdfError, ValueError, KeyError, TypeError, AttributeError,
                    IndexError, ZeroDivisionError) as e:
                doc.skipped.append(Skipped(where, f"its text could not be extracted ({e}"
                                                  f"{_with(warnings)})"))
                text = None
            if text is not None and not text.strip():
                empty.append(number)
            elif text:
                doc.segments.append(TextSegment(text, where, (1, text.count("\n") + 1)))
            progress.update()
    if not doc.segments:
        raise SourceError(
            f"{name} holds no extractable text"
            + (f" ({len(doc.skipped)} pages failed: {doc.skipped[0].reason})" if doc.skipped
               else ": it may be scanned images; OCR it first (e.g. ocrmypdf in.pdf out.pdf) "
                    "and ingest the result"))
    if empty:
        doc.skipped.append(Skipped(
            f"{name}#pages", f"{'pages' if len(empty) > 1 else 'page'} {_ranges(empty)} of "
            f"{n_pages} {'have' if len(empty) > 1 else 'has'} no text layer (blank, or scanned "
            "images that need OCR)"))
    return doc
