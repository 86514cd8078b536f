"""Subtitles (SubRip ``.srt``, WebVTT ``.vtt``, a video's own text streams) as timestamped text.

A video's text subtitle streams (SubRip, WebVTT, mov_text, ASS inside the container) and its
sidecar subtitle files (``talk.srt``, ``talk.en.vtt`` beside ``talk.mp4``) are read with it: they
are what a text-only model gets of what the video says. Each cue becomes a line
``[hh:mm:ss] text`` (markup such as ``<i>`` and ``{\\an8}`` removed, a cue repeating the one
before it dropped), one text segment per stream or file.

Example::

    cues = parse(path.read_text())        # [(start_s, end_s, "text"), ...]
    doc = read_subtitles(path)            # one TextSegment of "[00:01:02] text" lines
"""

from __future__ import annotations

import pathlib
import re

from ringkit.errors import SourceError
from ringkit.inputs.book import decode_text
from ringkit.inputs.document import Document, TextSegment

SUBTITLE_SUFFIXES = (".srt", ".vtt")
_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{1,3})")
_ARROW = re.compile(rf"^\s*({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_MARKUP = re.compile(r"<[^>]*>|\{\\[^}]*\}")


def _seconds(match: re.Match, offset: int) -> float:
    h, m, s, frac = match.group(offset + 1, offset + 2, offset + 3, offset + 4)
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000


def parse(text: str) -> list[tuple[float, float, str]]:
    """Cues ``(start_s, end_s, text)`` of SubRip or WebVTT ``text``, in file order."""
    cues = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        lines = block.strip("\n").split("\n")
        at = next((i for i, line in enumerate(lines) if _ARROW.match(line)), None)
        if at is None:
            continue  # a WebVTT header, NOTE or STYLE block, or a stray line
        m = _ARROW.match(lines[at])
        start, end = _seconds(m, 1), _seconds(m, 6)
        body = " ".join(_MARKUP.sub("", line).strip() for line in lines[at + 1:])
        body = re.sub(r"\s+", " ", body).strip()
        if body:
            cues.append((start, end, body))
    return cues


def stamp(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def read_subtitles(path: pathlib.Path, name: str | None = None) -> Document:
    """A subtitle file as one text segment of ``[hh:mm:ss] text`` lines (title "subtitles")."""
    name = name or str(path)
    try:
        text = decode_text(path.read_bytes(), name)
    except OSError as e:
        raise SourceError(f"{name} cannot be read ({e.strerror or e})") from None
    segment = cue_segment(parse(text), name)
    if segment is None:
        raise SourceError(f"{name} holds no subtitle cues (expected SubRip or WebVTT "
                          "'00:00:01,000 --> 00:00:02,000' lines)")
    return Document(segments=[segment])


def cue_segment(cues, source: str) -> TextSegment | None:
    """Cues ``(start_s, end_s, text)`` as one text segment of ``[hh:mm:ss] text`` lines, a cue
    repeating the one before it dropped; None when there are none."""
    lines, previous = [], None
    for start, _, body in cues:
        if body != previous:
            lines.append(f"[{stamp(start)}] {body}")
        previous = body
    if not lines:
        return None
    return TextSegment("\n".join(lines), source, (1, len(lines)), title="subtitles")


def embedded(path: pathlib.Path, name: str) -> list[TextSegment]:
    """The text subtitle streams inside a video file (SubRip, WebVTT, mov_text, ASS), one
    segment each, read with PyAV without decoding the pictures. Bitmap subtitles (DVD, PGS)
    carry no text and are left out."""
    import av

    segments = []
    with av.open(str(path)) as container:
        streams = [s for s in container.streams.subtitles
                   if s.codec_context is not None and s.codec_context.name not in _BITMAP]
        if not streams:
            return []
        cues: dict[int, list] = {s.index: [] for s in streams}
        try:
            for packet in container.demux(*streams):
                if packet.pts is None:
                    continue
                start = float(packet.pts * packet.time_base)
                end = start + float((packet.duration or 0) * packet.time_base)
                for sub in packet.decode():
                    body = _subtitle_text(sub)
                    if body:
                        cues[packet.stream.index].append((start, end, body))
        except av.FFmpegError:
            pass  # keep the cues read before a damaged packet
        for stream in streams:
            language = stream.metadata.get("language")
            label = f"{name} (subtitles #{stream.index}" + (f", {language})" if language else ")")
            segment = cue_segment(sorted(cues[stream.index]), label)
            if segment is not None:
                segments.append(segment)
    return segments


_BITMAP = {"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "xsub"}


def _subtitle_text(sub) -> str:
    raw = getattr(sub, "dialogue", b"") or b""
    if not raw and getattr(sub, "ass", None):
        raw = sub.ass.split(b",", 8)[-1]  # ASS event: ReadOrder,Layer,Style,...,Text
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")
    text = _MARKUP.sub("", text.replace("\\N", " ").replace("\\n", " "))
    return re.sub(r"\s+", " ", text).strip()


def sidecars(video: pathlib.Path) -> list[pathlib.Path]:
    """Subtitle files beside ``video`` with its stem: ``talk.srt``, ``talk.en.vtt``, sorted."""
    stem = video.stem
    return sorted(p for p in video.parent.glob(f"{glob_escape(stem)}*")
                  if p.suffix.lower() in SUBTITLE_SUFFIXES and p.is_file()
                  and (p.stem == stem or p.stem.startswith(stem + ".")))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
