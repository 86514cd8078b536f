"""Context reuse: what a second question costs against the first (issue 5's target).

    python benchmarks/context.py                      # an 8K-token Shakespeare excerpt, 1 device
    python benchmarks/context.py --tokens 4096 --repeats 3

Reads an excerpt of about ``--tokens`` tokens with ``rk.read`` (prefill; it also compiles the decode
steps), then asks questions with the same ``max_new_tokens`` (greedy; an answer may end early at
end-of-sequence). Reports the read, the first ask and the median of the later asks, each as wall
time; the ratio of a later ask to the first ask and to read + first ask; and, as the baseline
without the prefilled context, the same question read again and asked once everything is
compiled. Writes
benchmarks/results/context-<timestamp>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics
import time

import ringkit as rk
from ringkit.eval.haystack import haystack_text, sentences

HERE = pathlib.Path(__file__).resolve().parent
QUESTIONS = ["Who speaks first in this passage?", "Name two characters who appear here.",
             "What is the mood of this scene?", "Where does this scene take place?"]


def excerpt(tok, tokens: int) -> str:
    parts, used = [], 0
    for s in sentences(haystack_text("shakespeare")[1])[20000:]:
        n = len(tok.encode(" " + s, add_bos=False))
        if used + n > tokens:
            break
        parts.append(s)
        used += n
    return " ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192 - 1024 - 64)  # 8K with the default room
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="later asks timed")
    args = ap.parse_args()
    model = rk.load_model(mesh=rk.make_mesh(sp=1))
    text = excerpt(model.tokenizer, args.tokens)
    t0 = time.perf_counter()
    ctx = rk.read(rk.Document([rk.inputs.TextSegment(text, "shakespeare excerpt")]), model=model,
                  cache=False)
    read_s = time.perf_counter() - t0

    def ask(q):
        t = time.perf_counter()
        ctx.ask(q, max_new_tokens=args.max_new_tokens)
        return time.perf_counter() - t

    first = ask(QUESTIONS[0])
    later = [ask(QUESTIONS[1 + i % (len(QUESTIONS) - 1)]) for i in range(args.repeats)]
    med = statistics.median(later)
    # The same question without the prefilled context: read again (compiled by now) and ask.
    t0 = time.perf_counter()
    ctx = rk.read(rk.Document([rk.inputs.TextSegment(text, "shakespeare excerpt")]), model=model,
                  cache=False)
    again = ask(QUESTIONS[1]) + time.perf_counter() - t0
    result = dict(tokens=len(ctx.tokens), read_s=read_s, first_ask_s=first, later_ask_s=later,
                  reread_and_ask_s=again, later_over_first=med / first,
                  later_over_read_and_first=med / (read_s + first),
                  later_over_reread_and_ask=med / again, max_new_tokens=args.max_new_tokens)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"context-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    md = (f"# context reuse {stamp}\n\n{result['tokens']:,}-token context, 1 device, "
          f"{args.max_new_tokens} new tokens per ask: read {read_s:.1f} s (compiles the prefill "
          f"and the decode steps), first ask {first:.1f} s, later asks median {med:.1f} s = "
          f"{result['later_over_first']:.0%} of the first ask, "
          f"{result['later_over_read_and_first']:.0%} of read + first ask; the same question "
          f"read again and asked (compiled): {again:.1f} s, so a question on the prefilled "
          f"context costs {result['later_over_reread_and_ask']:.0%} of one without it.\n")
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
