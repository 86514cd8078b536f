"""``ingest``: any source (a path or a list of them) -> one ``Document``, kinds in their order."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from ringkit.errors import (
    FormatError, MissingDependencyError, SourceError, UnsupportedError, is_whole)
from ringkit.inputs.book import BOOK_SUFFIXES, decode_text, looks_binary, read_book
from ringkit.inputs.document import Document, Skipped, TextSegment, VideoText, printable_path
from ringkit.inputs.ocr import OnScreenText
from ringkit.inputs.pdf import read_pdf
from ringkit.inputs.repo import MAX_FILE_BYTES, read_repo
from ringkit.inputs.secrets import redact, redaction_note
from ringkit.inputs.subtitles import SUBTITLE_SUFFIXES, embedded, read_subtitles, sidecars
from ringkit.inputs.video import check_sampling, is_animated, read_image, read_video

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
# Not ".ts": MPEG transport streams share it with TypeScript sources, which are far more common.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg")
SUPPORTED = ("a directory or git checkout, and files: "
             + ", ".join(BOOK_SUFFIXES + (".pdf",) + VIDEO_SUFFIXES + SUBTITLE_SUFFIXES
                         + IMAGE_SUFFIXES)
             + ", or any other UTF-8 text file")


def _read_one(source, *, max_file_bytes: int, include_secrets: bool, fps: float,
              max_frames: int | None, backend: str, subtitles: bool,
              ocr: bool | str) -> Document:
    if not isinstance(source, (str, os.PathLike)) or isinstance(os.fspath(source), bytes):
        raise SourceError(f"a source is a path (str or pathlib.Path), not "
                          f"{type(source).__name__}: {source!r:.80}")
    name = printable_path(str(source))
    if not name.strip():
        raise SourceError("a source path is empty; give a file or directory (\".\" for the "
                          "current directory)")
    path = pathlib.Path(os.fspath(source)).expanduser()
    if not path.exists():
        if path.is_symlink():
            raise SourceError(f"{name} is a symlink that leads nowhere (broken, or a loop)")
        raise SourceError(f"no such file or directory: {name}")
    if path.is_dir():
        return read_repo(path, max_file_bytes=max_file_bytes, include_secrets=include_secrets,
                         name=name)
    if not path.is_file():
        raise SourceError(f"{name} is not a regular file (a pipe, socket or device); save what "
                          "it holds to a file and read that")
    doc = _read_file(path, name, fps=fps, max_frames=max_frames, backend=backend,
                     subtitles=subtitles, ocr=ocr)
    return doc if include_secrets else _redacted(doc, name)


def _redacted(doc: Document, name: str) -> Document:
    """``doc`` with tokens of known shapes in its text redacted (``ringkit.inputs.secrets``),
    noted in ``doc.skipped``."""
    kinds: list[str] = []
    for i, seg in enumerate(doc.segments):
        if isinstance(seg, TextSegment):
            text, found = redact(seg.text)
            if found:
                doc.segments[i] = dataclasses.replace(seg, text=text)
                kinds += [k for k in found if k not in kinds]
    if kinds:
        doc.skipped.append(Skipped(name, redaction_note(kinds)))
    return doc


def _read_file(path: pathlib.Path, name: str, *, fps: float, max_frames: int | None,
               backend: str, subtitles: bool, ocr: bool | str) -> Document:
    suffix = path.suffix.lower()
    try:
        if suffix in VIDEO_SUFFIXES or suffix in IMAGE_SUFFIXES:
            return _read_visual(path, name, fps=fps, max_frames=max_frames, backend=backend,
                                subtitles=subtitles, ocr=ocr)
        if suffix in SUBTITLE_SUFFIXES:
            return read_subtitles(path, name)
        if path.stat().st_size == 0:
            raise SourceError(f"{name} is empty")
        if suffix in BOOK_SUFFIXES:
            return read_book(path, name)
        if suffix == ".pdf":
            return read_pdf(path, name)
        data = path.read_bytes()  # any other file: text (code, data) or refused
    except PermissionError:
        raise SourceError(f"{name} cannot be read (permission denied)") from None
    if looks_binary(data):
        raise SourceError(f"{name} is binary; supported: {SUPPORTED}")
    text = decode_text(data, name)
    if not text.strip():
        raise SourceError(f"{name} holds no text")
    return Document(segments=[TextSegment(text, name, (1, text.count("\n") + 1))])


def _read_visual(path: pathlib.Path, name: str, *, fps: float, max_frames: int | None,
                 backend: str, subtitles: bool, ocr: bool | str) -> Document:
    """A video or image: its frames, then its subtitles (videos), then its on-screen text (with
    ``ocr``, read from the decoded pictures during the decode), and a ``VideoText`` record."""
    onscreen, state = None, "off"
    if ocr:
        try:
            onscreen, state = OnScreenText(name), "read"
        except MissingDependencyError:
            if ocr != "auto":
                raise
            state = "missing"  # said in the summary, and by the prompt if no text is left
    subtitle_lines = 0
    try:
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES or (suffix == ".gif" and is_animated(path)):
            # An animated GIF is a clip: its frames sampled like a video's (by PyAV).
            doc = read_video(path, name, fps=fps, max_frames=max_frames,
                             backend=backend if suffix in VIDEO_SUFFIXES else "av",
                             onscreen=onscreen)
        else:
            doc = read_image(path, name, onscreen=onscreen)
        if subtitles and suffix in VIDEO_SUFFIXES:
            inside: list = embedded(path, name) if backend == "av" else []
            found = Document(segments=inside)
            for sub in sidecars(path):  # one bad sidecar costs its own text, not the video
                sub_name = str(pathlib.Path(name).parent / sub.name)
                try:
                    found.extend(read_subtitles(sub, sub_name))
                except (SourceError, FormatError) as e:
                    doc.skipped.append(Skipped(sub_name, str(e)))
            subtitle_lines = sum(s.text.count("\n") + 1 for s in found.segments
                                 if isinstance(s, TextSegment))
            doc.extend(found)
        if onscreen is not None and (segment := onscreen.segment()) is not None:
            doc.segments.append(segment)
    finally:
        if onscreen is not None:
            onscreen.close()
    stats = onscreen.stats if onscreen is not None else {}
    doc.video_text.append(VideoText(
        name, subtitle_lines, state, frames=stats.get("frames", 0),
        frames_read=stats.get("read", 0), ocr_lines=stats.get("lines", 0)))
    return doc


def ingest(source, *, max_file_bytes: int = MAX_FILE_BYTES, include_secrets: bool = False,
           fps: float = 1.0, max_frames: int | None = None, backend: str = "av",
           subtitles: bool = True, ocr: bool | str = False) -> Document:
    """Read books, source trees, text files, videos and images (a path or a list, kept in order).

    Args:
      source: a path (str or ``os.PathLike``) or a list of paths. Directories are read as
        repositories (``ringkit.inputs.repo``); files by their suffix: books (.txt, .md, .html,
        .epub; .pdf, a segment per page, with ``pip install 'ringkit[pdf]'``), videos (.mp4,
        .mkv, .webm, ...) and images (.png, .jpg, ...; an animated GIF as a clip) as 256 x 256
        frames (``ringkit.inputs.video``), any other UTF-8 text as text.
      max_file_bytes: files in a repository above this size are skipped (listed in
        ``doc.skipped``).
      include_secrets: also read ``.env`` files, private keys and credentials.
      fps: video frames kept per second (the first frame at or after each 1/fps s).
      max_frames: instead of ``fps``, LWM's uniform sampling of this many frames per video.
      backend: video decoder, ``"av"`` (PyAV, default) or ``"decord"``.
      subtitles: read a video's text subtitle streams and its sidecar subtitle files
        (``talk.srt``, ``talk.en.vtt`` beside ``talk.mp4``), each as a timestamped text segment
        after its frames (``ringkit.inputs.subtitles``); .srt / .vtt files given directly are
        always read so.
      ocr: also read the on-screen text of videos' kept frames and of images (Tesseract,
        ``pip install 'ringkit[ocr]'``; ``ringkit.inputs.ocr``), as a timestamped text segment,
        from the decoded pictures (not the 256 x 256 crops). ``"auto"``: read it where Tesseract
        is installed, and record that it was not elsewhere (``doc.video_text``) instead of
        raising. ``ringkit.read`` and ``ringkit.ask`` pass ``"auto"`` for text-only models.

    Returns a ``Document``: ``doc.text``, ``doc.segments`` (text with provenance),
    ``doc.files``, ``doc.skipped``, ``doc.frames`` / ``doc.frame_times``.

    In a list, a source that cannot be read is recorded in ``doc.skipped`` with the reason and
    the others are kept; a single bad source, or a list where nothing could be read, raises a
    ``RingkitError`` (``SourceError``, ``FormatError`` or ``UnsupportedError``).

    Example::

        doc = rk.ingest(["README.md", "ringkit/"])
        print(doc)                 # Document(57 text segments, 412,330 characters, ...)
        doc.skipped[:3]            # [Skipped(path='.env', reason='may hold secrets ...'), ...]
    """
    check_sampling(fps, max_frames)  # whatever the sources: a bad option is refused up front
    if ocr not in (True, False, "auto"):
        raise SourceError(f"ocr must be True, False or 'auto', got {ocr!r:.40}")
    if not is_whole(max_file_bytes, 1):
        raise SourceError(f"max_file_bytes must be a whole number of bytes >= 1, got "
                          f"{max_file_bytes!r:.40}")
    options: dict[str, Any] = dict(
        max_file_bytes=max_file_bytes, include_secrets=include_secrets, fps=fps,
        max_frames=max_frames, backend=backend, subtitles=subtitles, ocr=ocr)
    if isinstance(source, (str, os.PathLike)):
        return _read_one(source, **options)
    if isinstance(source, bytes) or not hasattr(source, "__iter__"):
        raise SourceError(f"a source is a path (str or pathlib.Path) or a list of them, not "
                          f"{type(source).__name__}: {source!r:.80}")
    sources = list(source)
    if not sources:
        raise SourceError("nothing to read: the list of sources is empty")
    doc, errors = Document(), []
    for item in sources:
        try:
            doc.extend(_read_one(item, **options))
        except (SourceError, FormatError, UnsupportedError) as e:
            errors.append(e)
            doc.skipped.append(Skipped(str(item), str(e)))
    if not doc.segments and not len(doc.frames):
        first = errors[0] if errors else None
        raise SourceError("none of the sources could be read: "
                          + "; ".join(str(e) for e in errors)) from first
    return doc



