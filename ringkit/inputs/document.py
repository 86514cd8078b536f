"""``Document``: what ingest read, in order, with where every piece came from."""

from __future__ import annotations

import dataclasses

import numpy as np

FRAME_SIZE = 256  # frames are uint8 [256, 256, 3], LWM's VQGAN input


@dataclasses.dataclass(frozen=True)
class TextSegment:
    """A piece of text and its provenance: ``source`` (a path, relative inside a repository),
    ``span`` (``(first_line, last_line)``, 1-based and inclusive, or None) and ``title`` (a
    chapter or file header shown to the model, or None)."""

    text: str
    source: str
    span: tuple[int, int] | None = None
    title: str | None = None


@dataclasses.dataclass(frozen=True)
class FramesSegment:
    """Frames ``first .. first + count - 1`` of ``doc.frames`` (with ``doc.frame_times``), read
    from ``source`` (a video or an image)."""

    source: str
    first: int
    count: int


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A path ingest left out on purpose, and why (a binary, a secret, a symlink out of the root)."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class VideoText:
    """How a video or image became text for text-only models: ``subtitle_lines`` read from its
    subtitles, and its on-screen text: ``ocr`` is "read" (``frames`` seen, ``frames_read`` by
    Tesseract, the others repeating the last picture, ``ocr_lines`` kept), "off", or "missing"
    (asked for with ``ocr="auto"`` where Tesseract is not installed)."""

    source: str
    subtitle_lines: int = 0
    ocr: str = "off"
    frames: int = 0
    frames_read: int = 0
    ocr_lines: int = 0


@dataclasses.dataclass
class Document:
    """Ordered segments read from one or more sources.

    ``doc.text`` joins every text segment; ``doc.files`` lists the relative paths a repository
    contributed; ``doc.skipped`` the ``(path, reason)`` pairs left out; ``doc.frames`` is uint8
    ``[T, 256, 256, 3]`` (T = 0 for text-only sources) with ``doc.frame_times`` in seconds;
    ``doc.video_text`` says how each video or image became text (``VideoText``).

    Example::

        doc = rk.ingest(["notes.md", "src/"])
        print(len(doc.text), doc.files[:3], doc.skipped[:3])
    """

    segments: list[TextSegment | FramesSegment] = dataclasses.field(default_factory=list)
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)
    frames: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, FRAME_SIZE, FRAME_SIZE, 3), np.uint8))
    frame_times: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0,), np.float64))
    video_text: list[VideoText] = dataclasses.field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.segments if isinstance(s, TextSegment))

    def extend(self, other: "Document") -> None:
        """Append ``other``'s segments, files, skips and frames after this document's."""
        offset = len(self.frames)
        self.segments.extend(dataclasses.replace(s, first=s.first + offset)
                             if isinstance(s, FramesSegment) else s for s in other.segments)
        self.skipped.extend(other.skipped)
        self.files.extend(other.files)
        self.video_text.extend(other.video_text)
        if len(other.frames):
            self.frames = np.concatenate([self.frames, other.frames])
            self.frame_times = np.concatenate([self.frame_times, other.frame_times])

    def __repr__(self):
        n_text = sum(isinstance(s, TextSegment) for s in self.segments)
        return (f"Document({n_text} text segments, {len(self.text):,} characters, "
                f"{len(self.files)} files, {len(self.frames)} frames, {len(self.skipped)} skipped)")


def printable_path(path: str) -> str:
    """A path as text: the bytes of a file name that are not UTF-8 (which Python keeps as lone
    surrogates, and no tokenizer or terminal takes) written as ``\\xe9``."""
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return path.encode("utf-8", "backslashreplace").decode("utf-8")
