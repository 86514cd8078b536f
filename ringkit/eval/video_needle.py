"""Needle in a video haystack (V-NIAH style): can the model find one frame in an hour?

The haystack is a video sampled at ``fps``: by default a synthetic one of captioned slides
(sentences of a public-domain text, a new slide every ``slide_seconds``) encoded to H.264 once
and decoded like any user video; or a real video of the user's, looped to the length asked for.
One frame of it is replaced by the needle, ``SECRET NUMBER`` and a 7-digit number rendered in
large type, at ``depth`` of the video, and the model is asked for the number.

Vision models (LWM) read the frames as VQGAN tokens; text-only models read the video's
on-screen text, by OCR (``pip install 'ringkit[ocr]'``), as ``[hh:mm:ss] text`` lines, so the
slides' captions are their haystack. Scoring, resuming and the grid are those of ``needle``,
with video minutes in place of token lengths.

Example::

    r = ringkit.eval.video_needle(minutes=[10, 60], depths=[0, .25, .5, .75, 1])
    r.table(), r.plot()
"""

from __future__ import annotations

import fractions
import functools
import hashlib
import pathlib
import textwrap

import numpy as np

from ringkit.context import resolve_model
from ringkit.errors import ConfigError, MissingDependencyError, ShapeError, SourceError
from ringkit.eval.common import answer_cells, heatmap, load_done, pandas
from ringkit.eval.haystack import haystack_text, sentences
from ringkit.eval.needle import NeedleResults
from ringkit.inputs.document import FRAME_SIZE, Document, FramesSegment
from ringkit.inputs.ocr import read_onscreen_text
from ringkit.inputs.sources import VIDEO_SUFFIXES
from ringkit.inputs.video import read_video
from ringkit.progress import bar
from ringkit.tokenize.prompts import tokenize
from ringkit.tokenize.store import cache_root

QUESTION = "What is the secret number shown in the video?"
COLUMNS = ("length", "minutes", "depth", "trial", "frame", "tokens", "numbers", "answer",
           "found", "score", "correct", "seconds")


def _pil():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:
        raise MissingDependencyError("video needles are drawn with Pillow: "
                                     "pip install 'ringkit[video]'") from e
    return Image, ImageDraw, ImageFont


@functools.lru_cache(maxsize=4)
def _font(size: int):
    return _pil()[2].load_default(size=size)


def render_needle(number: int, size: int = FRAME_SIZE) -> np.ndarray:
    """The needle frame: uint8 ``[size, size, 3]``, ``SECRET NUMBER`` over ``number``."""
    Image, ImageDraw, _ = _pil()
    im = Image.new("RGB", (size, size), (250, 250, 240))
    draw = ImageDraw.Draw(im)
    for text, y, points in (("SECRET NUMBER", 0.3, size // 10), (str(number), 0.6, size // 6)):
        draw.text((size / 2, size * y), text, fill=(10, 10, 10), font=_font(points), anchor="mm")
    return np.asarray(im)


def render_slide(text: str, colour, size: int = FRAME_SIZE) -> np.ndarray:
    """A caption slide: ``text`` wrapped in dark type on a light ``colour``."""
    Image, ImageDraw, _ = _pil()
    im = Image.new("RGB", (size, size), tuple(int(c) for c in colour))
    draw = ImageDraw.Draw(im)
    lines = textwrap.wrap(text, 22)[:6]
    draw.multiline_text((size * 0.06, size * 0.1), "\n".join(lines), fill=(20, 20, 30),
                        font=_font(size // 14), spacing=6)
    return np.asarray(im)


def slides_video(path: pathlib.Path, text: str, *, minutes: float, fps: float,
                 slide_seconds: float, seed: int) -> pathlib.Path:
    """Write an H.264 video of caption slides (one sentence of ``text`` each, from a seeded
    start) lasting ``minutes`` at ``fps`` frames per second; returns ``path``."""
    try:
        import av
    except ImportError as e:
        raise MissingDependencyError("the slides haystack is encoded with PyAV: "
                                     "pip install 'ringkit[video]'") from e
    rng = np.random.default_rng([seed, 7])
    sents = [s for s in sentences(text) if 30 <= len(s) <= 130]
    frames = round(minutes * 60 * fps)
    per_slide = max(1, round(slide_seconds * fps))
    start = int(rng.integers(len(sents)))
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out, bar(frames, "encoding the haystack video", "frame",
                                            threshold=600) as progress:
        stream = out.add_stream("libx264", rate=fractions.Fraction(fps).limit_denominator(1000))
        stream.width = stream.height = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        for k in range(0, frames, per_slide):
            colour = 170 + rng.integers(0, 80, 3)
            slide = render_slide(sents[(start + k // per_slide) % len(sents)], colour)
            picture = av.VideoFrame.from_ndarray(slide, format="rgb24")
            for _ in range(min(per_slide, frames - k)):
                out.mux(stream.encode(picture))
            progress.update(min(per_slide, frames - k))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


def _video_path(haystack) -> pathlib.Path | None:
    """The path of a haystack given as a video file, or None for a text haystack."""
    if pathlib.Path(str(haystack)).suffix.lower() not in VIDEO_SUFFIXES:
        return None
    path = pathlib.Path(haystack).expanduser()
    if not path.is_file():
        raise SourceError(f"haystack video {path}: no such file")
    return path


def haystack_frames(haystack, *, minutes: float, fps: float, slide_seconds: float, seed: int,
                    folder: pathlib.Path) -> tuple[str, np.ndarray]:
    """``(name, frames uint8 [T, 256, 256, 3])``, T = minutes x 60 x fps: the slides video
    (written to ``folder`` once) or the user's video, decoded, looped or cut to T frames."""
    count = round(minutes * 60 * fps)
    path = _video_path(haystack)
    if path is None:
        name, text = haystack_text(haystack)
        key = hashlib.sha256(f"{minutes}:{fps}:{slide_seconds}:{seed}:{text}"
                             .encode()).hexdigest()[:16]
        path = folder / f"slides-{key}.mp4"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            slides_video(path, text, minutes=minutes, fps=fps, slide_seconds=slide_seconds,
                         seed=seed)
        name = f"slides of {name}"
    else:
        name = path.name
    frames = read_video(path, name, fps=fps).frames
    return name, np.resize(frames, (count,) + frames.shape[1:])  # loops a short video


class _MemoVQGAN:
    """A VQGAN that encodes each distinct frame once (trials share all but one frame)."""

    def __init__(self, vqgan):
        self.vqgan, self.digest, self._codes = vqgan, vqgan.digest, {}

    def encode(self, frames: np.ndarray) -> np.ndarray:
        keys = [hashlib.sha1(f.tobytes()).digest() for f in frames]
        new = {k: i for i, k in enumerate(keys) if k not in self._codes}
        if new:
            codes = np.asarray(self.vqgan.encode(frames[list(new.values())]))
            self._codes.update(zip(new, codes))
        return np.stack([self._codes[k] for k in keys])


class VideoNeedleResults(NeedleResults):
    """Results of ``video_needle``: as ``NeedleResults``, one row per trial (length in frames,
    minutes, depth, trial, frame index, tokens, numbers, answer, found, score, correct,
    seconds), the grid by video minutes."""

    def table(self):
        """Mean score per depth (rows) and video minutes (columns)."""
        return self.frame.pivot_table(index="depth", columns="minutes", values="score",
                                      aggfunc="mean")

    def plot(self, ax=None, *, title: str | None = None):
        return heatmap(self.table(), ax, vmax=1, xlabel="video minutes", ylabel="needle depth",
                       row_label=lambda d: f"{d:.0%}",
                       title=title or f"{self.config['model']}: video needle {self.score:.2f}")

    def summary(self) -> str:
        c = self.config
        return (f"video needle: {c['model']} reading {c['reads']}, haystack {c['haystack']} at "
                f"{c['fps']} fps, seed {c['seed']}: score {self.score:.3f} over "
                f"{len(self.frame)} trials")


def video_needle(model=None, *, minutes, depths=(0, 0.25, 0.5, 0.75, 1), trials: int = 1,
                 haystack="shakespeare", fps: float = 1.0, slide_seconds: float = 20.0,
                 vqgan=None, seed: int = 0, mesh=None, resume=None, batch: int = 1,
                 max_new_tokens: int = 24, folder=None) -> VideoNeedleResults:
    """Hide one needle frame at each depth of videos of each length in ``minutes``.

    Args:
      model: a ``ringkit.Model``: a vision model (with ``vqgan``) reads the frames, a text-only
        one their on-screen text by OCR (default: the embedded SmolLM2 on ``mesh``).
      minutes: video lengths; each has ``minutes x 60 x fps`` frames.
      depths: where the needle frame sits, as a fraction of the video in [0, 1].
      trials: trials per (minutes, depth), each with its own number.
      haystack: a text (``"shakespeare"``, a path to a text file, or the text) whose sentences
        become caption slides, or a path to a video of yours (looped or cut to length).
      fps: frames sampled per second of video.
      slide_seconds: how long each caption slide stays up.
      vqgan: LWM's VQGAN for vision models (``ringkit.tokenize.vqgan.VQGAN.load(...)``).
      seed: fixes the haystack, the numbers and (greedy) the answers.
      resume: a JSONL path, as for ``needle``.
      folder: where the slides video is written once (default: ringkit's cache).

    Returns ``VideoNeedleResults`` (``.frame``, ``.score``, ``.table()``, ``.plot()``).

    Example::

        r = ringkit.eval.video_needle(minutes=[10], depths=[0, 0.5, 1])
    """
    pd = pandas()
    model = resolve_model(model, mesh)
    minutes, depths = [float(m) for m in minutes], [float(d) for d in depths]
    if not minutes or not depths or trials < 1 or fps <= 0 or slide_seconds <= 0:
        raise ConfigError("need at least one length in minutes, one depth, trials >= 1, and "
                          "fps and slide_seconds > 0")
    if any(not 0 <= d <= 1 for d in depths):
        raise ConfigError(f"depths must lie in [0, 1], got {depths}")
    if any(round(m * 60 * fps) < 1 for m in minutes):
        raise ConfigError(f"minutes {minutes} at {fps} fps leave a video with no frame")
    video = _video_path(haystack)  # a missing video fails before any work
    hay_name = video.name if video else haystack_text(haystack)[0]
    vision = model.config.has_vision
    if vision and vqgan is None:
        raise ConfigError(f"{model.config.name} reads frames as VQGAN codes: pass "
                          "vqgan=ringkit.tokenize.vqgan.VQGAN.load('<checkpoint>/vqgan')")
    vq = _MemoVQGAN(vqgan) if vision else None
    ocr_memo: dict = {}  # trials share all frames but the needle: each slide is read once
    folder = pathlib.Path(folder) if folder else cache_root().parent / "video-needle"
    config = dict(model=model.config.name, haystack=hay_name, seed=seed, fps=fps,
                  slide_seconds=slide_seconds, max_new_tokens=max_new_tokens,
                  reads="frames" if vision else "on-screen text", question=QUESTION)
    videos: dict[float, tuple[str, np.ndarray]] = {}
    cells = [(m, d, t) for m in minutes for d in depths for t in range(trials)]
    limit = model.config.context_length

    def _check_fits(tokens: int, m: float) -> None:
        if tokens + max_new_tokens > limit:
            raise ShapeError(
                f"{m:g} minutes at {fps:g} fps become {tokens:,} tokens or more, beyond the "
                f"{limit:,}-token context of {model.config.name} with the answer: use fewer "
                "minutes, a lower fps, longer slides, a longer-context model, or "
                "rope_scaling=ringkit.model.RopeScaling(...)")

    def build(cell):
        m, d, t = cell
        if m not in videos:
            videos.clear()  # one length's frames at a time (an hour is ~700 MB)
            videos[m] = haystack_frames(haystack, minutes=m, fps=fps, seed=seed,
                                        slide_seconds=slide_seconds, folder=folder)
        name, frames = videos[m]
        rng = np.random.default_rng([seed, round(m * 60 * fps), round(d * 10_000), t])
        number = int(rng.integers(1_000_000, 10_000_000))
        at = round(d * (len(frames) - 1))
        frames = frames.copy()
        frames[at] = render_needle(number)
        if vision:  # fail before encoding an hour of frames the model cannot hold
            per_frame = vq.encode(frames[at:at + 1]).size + 1
            _check_fits(len(frames) * per_frame, m)
        times = np.arange(len(frames)) / fps
        doc = Document(segments=[FramesSegment(name, 0, len(frames))], frames=frames,
                       frame_times=times)
        if not vision:
            text = read_onscreen_text(frames, times, name, memo=ocr_memo)
            if text is not None:
                doc.segments.append(text)
        tokens = tokenize(doc, model, QUESTION, vqgan=vq, cache=False)
        _check_fits(len(tokens), m)
        return dict(ids=tokens.ids.tolist(), vision=tokens.vision.tolist(), numbers=[number],
                    frame=at)

    def score(cell, b, answer):
        found = [str(n) in answer for n in b["numbers"]]
        return dict(length=round(cell[0] * 60 * fps), minutes=cell[0], depth=cell[1],
                    trial=cell[2], frame=b["frame"], tokens=len(b["ids"]), numbers=b["numbers"],
                    answer=answer, found=found, score=float(np.mean(found)),
                    correct=all(found))

    done = load_done(resume, config, lambda row: (row["minutes"], row["depth"], row["trial"]))
    answer_cells(model, cells, group=lambda c: c[0], build=build, score=score,
                 max_new_tokens=lambda c: max_new_tokens, config=config, done=done,
                 resume=resume, batch=batch, label="video needle", vision=vision)
    frame = pd.DataFrame([done[c] for c in cells], columns=list(COLUMNS))
    return VideoNeedleResults(frame, config)
