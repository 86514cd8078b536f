"""rk.ingest on images: Pillow decodes, FFmpeg's scaler scales as for video frames; 16-bit
greyscale, EXIF orientation, animated GIFs, extreme shapes and sizes, bad files."""

import numpy as np
import pytest

import ringkit as rk
from ringkit.errors import FormatError

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'ringkit[video]')")


def test_images(tmp_path):
    from PIL import Image

    img = np.zeros((300, 600, 3), np.uint8)
    img[:, 300:] = 200
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("caption\n")
    doc = rk.ingest([tmp_path / "notes.txt", tmp_path / "a.png"])
    assert doc.frames.shape == (1, 256, 256, 3) and doc.text == "caption\n"
    assert doc.frames[0, :, :100].max() < 10 and doc.frames[0, :, -100:].min() > 190
    # The same preprocessing as frames: a picture as an image and inside a lossless video.
    picture = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    picture[:, :100] = 255
    Image.fromarray(picture).save(tmp_path / "p.png")
    with av.open(str(tmp_path / "p.mov"), "w") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = 500, 300, "rgb24"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")),
                       *stream.encode()]:
            out.mux(packet)
    np.testing.assert_array_equal(rk.ingest(tmp_path / "p.png").frames,
                                  rk.ingest(tmp_path / "p.mov").frames)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    with pytest.raises(FormatError, match="not a readable image"):
        rk.ingest(tmp_path / "bad.png")


def test_images_as_they_are_meant_to_be_seen(tmp_path, monkeypatch):
    """16-bit greyscale scaled to 8 bits, EXIF orientation applied, extreme shapes and sizes
    read or refused with a ringkit error."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (300, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
    frame = rk.ingest(tmp_path / "deep.png").frames[0]
    assert frame[:, :20].mean() < 60 and frame[:, -20:].mean() > 195  # a ramp, not all white
    assert abs(frame.mean() - 127.5) < 10
    upright = np.zeros((200, 400, 3), np.uint8)
    upright[:100] = (255, 0, 0)  # red on top
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    Image.fromarray(np.rot90(upright, 1)).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    frame = rk.ingest(tmp_path / "phone.jpg").frames[0].astype(int)
    assert frame[:60, :, 0].mean() > 200 and frame[-60:, :, 0].mean() < 50
    clip = [Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)) for i in range(5)]
    clip[0].save(tmp_path / "clip.gif", save_all=True, append_images=clip[1:],
                 duration=[200, 300, 500, 1000, 200], loop=0)  # frames at 0, .2, .5, 1, 2 s
    doc = rk.ingest(tmp_path / "clip.gif")  # a clip: one frame per second, like a video
    np.testing.assert_allclose(doc.frame_times, [0, 1, 2], atol=1e-6)
    assert [round(float(f.mean()) / 50) for f in doc.frames] == [0, 3, 4]
    clip[2].save(tmp_path / "still.gif")
    assert len(rk.ingest(tmp_path / "still.gif").frames) == 1
    Image.fromarray(np.full((2, 6000, 3), 90, np.uint8)).save(tmp_path / "banner.png")
    assert rk.ingest(tmp_path / "banner.png").frames.shape == (1, 256, 256, 3)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40 x 40 is then a "decompression bomb"
    with pytest.raises(FormatError, match="too large to decode safely"):
        rk.ingest(tmp_path / "huge.png")


def test_small_type_on_a_720p_slide_is_read_as_written(tmp_path, rng):
    """A title and two lines of 14-15 pixel type on a 1280 x 720 image: every line read exactly,
    in order (Tesseract alone ran small words together and misread digits: "codeis 2767167")."""
    pytest.importorskip("tesserocr", reason="OCR needs pip install 'ringkit[ocr]'")
    from PIL import Image, ImageDraw, ImageFont

    things = ["cellar door", "garden gate", "boat house", "blue locker", "old safe", "east wing"]
    lines = [f"The {things[i]} code is {rng.integers(10**6, 10**7)}."
             for i in rng.permutation(len(things))[:2]]
    img = Image.new("RGB", (1280, 720), (24, 32, 48))
    draw = ImageDraw.Draw(img)
    draw.text((100, 80), "SITE ACCESS", fill=(245, 245, 245), font=ImageFont.load_default(44))
    x = float(rng.integers(20, 800))
    for i, (line, size) in enumerate(zip(lines, (14, 15))):
        draw.text((x, 300 + 60 * i), line, fill=(245, 245, 245),
                  font=ImageFont.load_default(size))
    img.save(tmp_path / "slide.png")
    doc = rk.ingest(tmp_path / "slide.png", ocr=True)
    assert doc.text == f"[00:00:00] SITE ACCESS / {lines[0]} / {lines[1]}"
