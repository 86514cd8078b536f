"""Videos and images -> uint8 frames ``[T, 256, 256, 3]`` with timestamps (LWM's preprocessing).

Each kept frame is scaled so its shorter side is 256 (by the decoder's own scaler, from the
decoded picture: no full-resolution RGB copy is made) and centre-cropped to 256 x 256. With PyAV,
the scaling runs on a second thread while decoding goes on (both release the GIL), so an hour
of video costs about the larger of the two rather than their sum.

Sampling: ``fps`` keeps the first frame at or after every ``1 / fps`` seconds (default 1.0);
``max_frames`` instead keeps LWM's uniform ``linspace(0, n - 1, max_frames)`` frame indices.
The output array is preallocated from the stream's duration, so an hour at 1 fps holds ~700 MB
and nothing else of that size.

On-screen text: an ``onscreen`` reader (``ringkit.inputs.ocr.OnScreenText``) gets every kept frame
as well, in grey at ``ocr_size`` (up to 1080p), from the same decoded picture: the model's crop
would cut text near a 16:9 frame's edges and shrink small type.

Backends: PyAV (``backend="av"``, default) and decord (``backend="decord"``, optional). A video
whose decoding breaks off after some frames keeps them and records the break in ``doc.skipped``;
one that yields no frame raises ``FormatError``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import pathlib
import queue
import threading

import numpy as np

from ringkit.errors import (
    FormatError,
    MissingDependencyError,
    SourceError,
    UnsupportedError,
    advice,
)
from ringkit.inputs.document import FRAME_SIZE, Document, FramesSegment, Skipped
from ringkit.inputs.ocr import ocr_size
from ringkit.progress import bar

BACKENDS = ("av", "decord")


MAX_ASPECT = 16  # longest side over shortest that an image keeps (its middle) before scaling


def scaled_size(width: int, height: int, size: int = FRAME_SIZE) -> tuple[int, int]:
    """``(w, h)`` with the shorter side ``size`` and the aspect ratio kept."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def center_crop(rgb: np.ndarray, size: int | tuple[int, int] = FRAME_SIZE) -> np.ndarray:
    """Centre crop of ``[h, w, 3]``: ``size x size``, or ``size = (height, width)``."""
    size_h, size_w = (size, size) if isinstance(size, int) else size
    h, w = rgb.shape[:2]
    top, left = (h - size_h) // 2, (w - size_w) // 2
    return rgb[top:top + size_h, left:left + size_w]


def _rgb(im) -> np.ndarray:
    """uint8 RGB ``[h, w, 3]`` of a Pillow image, turned upright by its EXIF orientation (a
    phone's photo), 16-bit greyscale scaled to 8 bits (Pillow's own conversion clips it)."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        grey = np.asarray(im, np.float64)
        if im.mode == "F" and grey.size and grey.max() <= 1.0:
            grey = grey * 255.0  # a float image in [0, 1]
        elif im.mode.startswith("I;16") or (im.mode == "I" and grey.size and grey.max() > 255):
            grey = grey / 257.0  # 16-bit samples
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


class _Frames:
    """A growable, preallocated ``[n, 256, 256, 3]`` uint8 buffer with timestamps."""

    def __init__(self, expected: int):
        self.data = np.empty((max(1, expected), FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
        self.times: list[float] = []

    def add(self, rgb: np.ndarray, t: float):
        n = len(self.times)
        if n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[n] = center_crop(rgb)
        self.times.append(t)

    def result(self):
        n = len(self.times)
        # A view when the estimate was close (no second copy of an hour of frames at the peak).
        data = self.data[:n] if n >= 0.9 * len(self.data) else self.data[:n].copy()
        return data, np.asarray(self.times, np.float64)


def check_sampling(fps, max_frames):
    """``fps`` a positive finite number, or ``max_frames`` a positive integer."""
    if max_frames is not None:
        if not isinstance(max_frames, int) or max_frames < 1:
            raise SourceError(f"max_frames={max_frames!r} must be a positive integer")
        return
    if not (isinstance(fps, (int, float)) and fps > 0 and math.isfinite(fps)):
        raise SourceError(f"{advice('fps=', '--fps ')}{fps!r} must be a positive number of "
                          "frames per second")


def _uniform(n: int, max_frames: int) -> set[int]:
    return set(np.linspace(0, n - 1, min(max_frames, n)).round().astype(int).tolist())


# Frame threading costs more than it saves on small pictures: a 320x180 H.264 hour took ~15%
# more CPU and 10% more time with it; from 640x360 up it is faster.
_THREADED_DECODE_PIXELS = 640 * 360


def _scale(reformatter, frame, size: tuple[int, int], fmt: str = "rgb24") -> np.ndarray:
    """``frame`` (a PyAV VideoFrame) as uint8 RGB ``[h, w, 3]`` (``fmt="gray"``: ``[h, w]``) at
    ``size = (w, h)``: FFmpeg's bilinear scaler on the calling thread. The one scaling step of
    frames and images alike."""
    return reformatter.reformat(frame, width=size[0], height=size[1], format=fmt,
                                threads=1).to_ndarray()


def _read_text(onscreen, reformatter, frame, t: float) -> None:
    """Feed ``frame`` (a PyAV VideoFrame) to ``onscreen`` in grey at its OCR size."""
    onscreen.add(_scale(reformatter, frame, ocr_size(frame.width, frame.height), "gray"), t)


class _Scaler:
    """Scales and crops kept frames into a ``_Frames`` on a worker thread (bounded queue), and
    feeds them to ``onscreen`` (an OCR reader) there too when one is given.

    Only the worker touches ``out`` and ``onscreen`` until ``close``; an error on the worker is
    raised by the next ``put`` or by ``close``.
    """

    def __init__(self, out: _Frames, depth: int = 8, onscreen=None):
        from av.video.reformatter import VideoReformatter

        self.out, self.error, self.onscreen = out, None, onscreen
        # One scaler context per output format for all frames (a frame's own ``to_ndarray``
        # builds a new one each time, with its own threads: 2-3x the cost), on this thread only.
        self._reformatter, self._grey = VideoReformatter(), VideoReformatter()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="ringkit-scale", daemon=True)
        self._thread.start()

    def _run(self):
        while (item := self._queue.get()) is not None:
            if self.error is None:
                frame, size, t = item
                try:
                    self.out.add(_scale(self._reformatter, frame, size), t)
                    if self.onscreen is not None:
                        _read_text(self.onscreen, self._grey, frame, t)
                except BaseException as e:  # re-raised on the caller's thread
                    self.error = e

    def put(self, frame, size, t: float):
        if self.error is not None:
            raise self.error
        self._queue.put((frame, size, t))

    def close(self):
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error


def _count_frames(path: pathlib.Path) -> int:
    """Frames in the first video stream, counted from its packets (demuxed, not decoded)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError:
        return 0  # the decode that follows says what is wrong


def _read_av(path: pathlib.Path, name: str, fps: float, max_frames: int | None, onscreen):
    import av

    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as e:
        raise FormatError(f"{name} is not a readable video (corrupt or not a video: {e})") from None
    except av.FFmpegError as e:
        raise FormatError(f"{name} cannot be opened as a video: {e}") from None
    broke = None
    with container:
        if not container.streams.video:
            raise SourceError(f"{name} has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        if codec is None or codec.codec is None:
            raise UnsupportedError(f"{name}: its video codec is not supported by this FFmpeg")
        if (codec.width or 0) * (codec.height or 0) >= _THREADED_DECODE_PIXELS:
            stream.thread_type = "AUTO"
        else:
            codec.thread_count = 1  # the scaler thread has the other core
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        n_total = stream.frames or int(round(duration * rate))
        if max_frames is not None:
            # Uniform indices need the true count; a container that does not store it (mkv,
            # webm) with a variable frame rate can hold far fewer frames than duration x rate.
            n_total = stream.frames or _count_frames(path) or n_total
            keep = _uniform(max(n_total, 1), max_frames)
            expected, last = len(keep), max(keep)
        else:  # no more than the video holds: fps=1e9 must not preallocate terabytes
            expected = min(int(duration * fps) + 1, n_total + 1)
        out = _Frames(expected)
        scaler = _Scaler(out, onscreen=onscreen)
        next_t, size = 0.0, None
        label = f"decoding {pathlib.Path(name).name}" + (
            " and reading its on-screen text" if onscreen is not None else "")
        # Reading text costs ~0.05-0.1 s a frame: a bar from a few seconds of it.
        with bar(expected, label, "frame", threshold=300 if onscreen is None else 30) as progress:
            try:
                for index, frame in enumerate(container.decode(stream)):
                    t = float(frame.time) if frame.time is not None else index / rate
                    if max_frames is not None:
                        if index > last:
                            break  # every uniform index is kept: no need to decode the rest
                        if index not in keep:
                            continue
                    elif t + 1e-6 < next_t:
                        continue
                    else:
                        next_t = (math.floor(t * fps + 1e-6) + 1) / fps
                    size = size or scaled_size(frame.width, frame.height)
                    scaler.put(frame, size, t)
                    progress.update()
            except av.FFmpegError as e:
                broke = e
            finally:
                scaler.close()
    if broke is not None:
        broke = f"decoding stopped after {len(out.times)} kept frames: {broke}"
    frames, times = out.result()
    return frames, times, broke


def _read_decord(path: pathlib.Path, name: str, fps: float, max_frames: int | None,
                 onscreen):
    try:
        # decord's wheel bundles zlib 1.2.3: loaded before Tesseract's libraries, it takes over
        # their PNG coding and the next OCR aborts the process. Loaded after them, both work.
        with contextlib.suppress(ImportError):
            import tesserocr  # noqa: F401
        import decord
    except ImportError:
        raise MissingDependencyError(
            "backend='decord' needs decord: pip install decord (or use the default backend='av')"
        ) from None
    try:
        probe = decord.VideoReader(str(path))
        h, w = probe[0].shape[:2] if len(probe) else (0, 0)
        n, rate = len(probe), probe.get_avg_fps() or 25.0
        del probe
    except decord.DECORDError as e:
        raise FormatError(f"{name} is not a readable video: {e}") from None
    if n == 0:
        raise FormatError(f"{name} has no video frames")
    sw, sh = scaled_size(w, h)
    reader = decord.VideoReader(str(path), width=sw, height=sh)
    # decord scales inside its decoder, one size per reader: OCR needs a second one.
    text_reader = (decord.VideoReader(str(path), width=ocr_size(w, h)[0],
                                      height=ocr_size(w, h)[1]) if onscreen is not None else None)
    if max_frames is not None:
        indices = sorted(_uniform(n, max_frames))
    else:
        times = np.arange(0, n / rate, 1 / fps)
        indices = sorted(set(np.minimum(np.ceil(times * rate - 1e-6), n - 1).astype(int).tolist()))
    out = _Frames(len(indices))
    with bar(len(indices), f"decoding {pathlib.Path(name).name}", "frame",
             threshold=300) as progress:
        for start in range(0, len(indices), 64):  # bounded memory: 64 frames per batch
            chunk = indices[start:start + 64]
            for i, rgb in zip(chunk, reader.get_batch(chunk).asnumpy()):
                out.add(rgb, i / rate)
            if text_reader is not None:
                for i, rgb in zip(chunk, text_reader.get_batch(chunk).asnumpy()):
                    onscreen.add(rgb, i / rate)
            progress.update(len(chunk))
    frames, times = out.result()
    return frames, times, None


def read_video(path: pathlib.Path, name: str | None = None, *, fps: float = 1.0,
               max_frames: int | None = None, backend: str = "av", onscreen=None) -> Document:
    """One video as a ``Document`` of frames (see the module docstring for the sampling);
    ``onscreen``, an ``ringkit.inputs.ocr.OnScreenText``, reads each kept frame's text."""
    name = name or str(path)
    check_sampling(fps, max_frames)
    if backend not in BACKENDS:
        raise SourceError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    reader = _read_av if backend == "av" else _read_decord
    if backend == "av" and importlib.util.find_spec("av") is None:
        raise MissingDependencyError(
            "reading videos needs PyAV: pip install 'ringkit[video]' (or pip install av)")
    frames, times, broke = reader(path, name, fps, max_frames, onscreen)
    if not len(frames):
        raise FormatError(f"{name} has no decodable video frames"
                          + (f" ({broke})" if broke else ""))
    doc = Document(segments=[FramesSegment(name, 0, len(frames))], frames=frames,
                   frame_times=times)
    if broke:
        doc.skipped.append(Skipped(f"{name}@{times[-1]:.1f}s", broke))
    return doc


def is_animated(path: pathlib.Path) -> bool:
    """Whether an image file holds several frames (an animated GIF); False if Pillow cannot
    tell (``read_image`` then says what is wrong)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return bool(getattr(im, "is_animated", False))
    except Exception:  # noqa: BLE001 (unreadable: read_image raises the user-facing error)
        return False


def read_image(path: pathlib.Path, name: str | None = None, *, onscreen=None) -> Document:
    """One image as a single 256 x 256 frame (time 0), scaled by the same scaler as video frames;
    ``onscreen`` (an ``ringkit.inputs.ocr.OnScreenText``) reads its text at ``ocr_size``.

    Pillow decodes it (any format it reads; alpha is dropped); FFmpeg's scaler (bilinear, as for
    frames) brings the shorter side to 256, then the centre crop: a picture gives the same frame
    whether it comes as an image or inside a (lossless) video.
    """
    name = name or str(path)
    try:
        import av
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError(
            "reading images needs Pillow and PyAV: pip install 'ringkit[video]'") from None
    from av.video.reformatter import VideoReformatter

    try:
        with Image.open(path) as im:
            rgb = _rgb(im)
    except UnidentifiedImageError:
        raise FormatError(f"{name} is not a readable image") from None
    except Image.DecompressionBombError as e:
        raise FormatError(f"{name} is too large to decode safely ({e}); scale it down first, "
                          "e.g. to 4096 pixels on its longer side") from None
    except OSError as e:
        raise FormatError(f"{name} is not a readable image (corrupt or truncated: {e})") from None
    # A banner or a strip: keep the middle (the crop keeps at most a square of it anyway) so
    # the scaled image stays within FFmpeg's limits.
    h, w = rgb.shape[:2]
    keep_w, keep_h = min(w, MAX_ASPECT * h), min(h, MAX_ASPECT * w)
    rgb = np.ascontiguousarray(center_crop(rgb, (keep_h, keep_w)))
    w, h = scaled_size(rgb.shape[1], rgb.shape[0])
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    frames = center_crop(_scale(VideoReformatter(), frame, (w, h)))[None].copy()
    if onscreen is not None:
        _read_text(onscreen, VideoReformatter(), frame, 0.0)
    return Document(segments=[FramesSegment(name, 0, 1)], frames=frames,
                    frame_times=np.zeros((1,), np.float64))
