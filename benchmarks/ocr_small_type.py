"""Small type on a 720p frame: how often Tesseract reads a sentence exactly, three ways.

For each type size, ``--lines`` random sentences ("The <thing> code is <7 digits>.") are drawn
at a random place of a dark 1280 x 720 picture (light text, as on a slide), then read:

- ``native``: the whole frame at its own size, one Tesseract pass (ringkit before issue 25);
- ``frame2x``: the whole frame enlarged 2x (the obvious fix: all frames cost more);
- ``ringkit``: ``ringkit.inputs.ocr.OnScreenText`` (lines under ``SMALL_LINE`` pixels read again
  alone, enlarged ``LINE_UPSCALE`` times).

Counts sentences not read exactly (after ``_clean``) and the median seconds per frame, with
ratios against ``native`` in the same run. Writes ``benchmarks/results/ocr-small-type-<stamp>``
``.json`` and ``.md``::

    python benchmarks/ocr_small_type.py            # about 2 minutes
"""

import argparse
import json
import pathlib
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ringkit.inputs.ocr import LINE_UPSCALE, SMALL_LINE, OnScreenText, _clean

HERE = pathlib.Path(__file__).parent
THINGS = ["cellar door", "garden gate", "north tower", "boat house", "blue locker", "old safe"]


def picture(rng, size: int) -> tuple[np.ndarray, str]:
    sentence = (f"The {THINGS[rng.integers(len(THINGS))]} code is "
                f"{rng.integers(1_000_000, 10_000_000)}.")
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (1280, 720), (24, 32, 48))
    draw = ImageDraw.Draw(img)
    width = draw.textlength(sentence, font=font)
    xy = (float(rng.uniform(12, 1268 - width)), float(rng.uniform(12, 708 - size)))
    draw.text(xy, sentence, fill=(245, 245, 245), font=font)
    return np.asarray(img), sentence


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 12, 14, 15, 16, 18, 20, 30])
    ap.add_argument("--lines", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import tesserocr

    reader = OnScreenText("benchmark", min_confidence=0)
    api = reader._api

    def whole(img: np.ndarray, scale: float) -> str:
        image = Image.fromarray(img)
        if scale != 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.BILINEAR)
        api.SetPageSegMode(tesserocr.PSM.AUTO)
        api.SetImage(image)
        return _clean(api.GetUTF8Text())

    ways = {"native": lambda img: whole(img, 1.0), "frame2x": lambda img: whole(img, 2.0),
            "ringkit": lambda img: reader._lines(Image.fromarray(img))[0]}
    rng = np.random.default_rng(args.seed)
    rows = []
    for size in args.sizes:
        pictures = [picture(rng, size) for _ in range(args.lines)]
        row = {"size": size}
        for name, read in ways.items():
            wrong, seconds = 0, []
            for img, sentence in pictures:
                t0 = time.perf_counter()
                text = read(img)
                seconds.append(time.perf_counter() - t0)
                wrong += text != sentence
            row[name] = {"wrong": wrong, "median_s": statistics.median(seconds)}
        rows.append(row)
        print(size, {k: v for k, v in row.items() if k != "size"}, flush=True)

    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"ocr-small-type-{stamp}"
    meta = {"lines": args.lines, "seed": args.seed, "frame": [1280, 720],
            "SMALL_LINE": SMALL_LINE, "LINE_UPSCALE": LINE_UPSCALE,
            "tesseract": tesserocr.tesseract_version().splitlines()[0]}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Small type at 720p: sentences not read exactly, of {args.lines} per size", "",
             "| type px | native | frame 2x | ringkit | s/frame native | frame 2x | ringkit |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["native"]["median_s"]
        lines.append(
            f"| {r['size']} | {r['native']['wrong']} | {r['frame2x']['wrong']} | "
            f"{r['ringkit']['wrong']} | {base:.3f} | {r['frame2x']['median_s'] / base:.2f}x | "
            f"{r['ringkit']['median_s'] / base:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
