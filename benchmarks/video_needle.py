"""Needle in a video haystack with the embedded SmolLM2 (issue 6): the OCR path.

    python benchmarks/video_needle.py                       # 10 and 60 minutes x 5 depths
    python benchmarks/video_needle.py --minutes 10 --depths 0 0.5 1 --trials 2

The haystack is the default one of ``ringkit.eval.video_needle``: caption slides of Shakespeare's
sentences (a new one every 20 s) encoded to H.264 once per length, then decoded at 1 fps like
any video. One frame reading "SECRET NUMBER" and a 7-digit number replaces the frame at each
depth; the text-only model reads the video's on-screen text (Tesseract OCR) and is asked for
the number. Records each trial (with the seconds its answer took) and the wall time of the
whole run, including encoding, decoding and OCR, in benchmarks/results/video-needle-<stamp>.*
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import time

import ringkit as rk

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    p.add_argument("--depths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"video-needle-{stamp}"
    model = rk.load_model(mesh=rk.make_mesh("1,1,1,1"))
    walls = {}
    frames = []
    for minutes in args.minutes:  # one length at a time, so each has its own wall time
        t0 = time.perf_counter()
        r = rk.eval.video_needle(model, minutes=[minutes], depths=args.depths,
                                 trials=args.trials, seed=args.seed,
                                 resume=out.with_suffix(".jsonl"))
        walls[minutes] = time.perf_counter() - t0
        frames.append(r.frame)
    import pandas as pd

    results = rk.eval.VideoNeedleResults(pd.concat(frames, ignore_index=True), r.config)
    results.plot().figure.savefig(out.with_suffix(".png"), bbox_inches="tight", dpi=120)
    summary = dict(config=r.config, machine=platform.processor() or platform.machine(),
                   score=results.score, wall_seconds=walls,
                   table=results.table().round(3).to_dict())
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [f"# Video needle, {stamp}", "", results.summary(), "",
             "| minutes | frames | tokens (median) | found | wall time (s) |",
             "|---|---|---|---|---|"]
    for minutes, frame in zip(args.minutes, frames):
        lines.append(f"| {minutes:g} | {int(frame['length'].iloc[0]):,} | "
                     f"{int(frame['tokens'].median()):,} | {int(frame['correct'].sum())} of "
                     f"{len(frame)} | {walls[minutes]:.0f} |")
    lines += ["", "Answers:", ""]
    for _, row in results.frame.iterrows():
        lines.append(f"- {row['minutes']:g} min, depth {row['depth']:.0%} (frame {row['frame']}):"
                     f" {row['numbers'][0]} -> {row['answer'].strip()[:80]!r}")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
