"""The embedded SmolLM2 under the published protocols: LWM's needle and RULER's synthetic tasks.

    python benchmarks/published_evals.py --samples 32         # both, a new stamp
    python benchmarks/published_evals.py --stamp 2026-12-06T222441 --what needle   # resume

LWM's needle (``style="lwm"``, ``template="base"``: LWM's eval_needle.py prompt) at 1K-8K x 5
depths x 3 trials, and RULER's 11 synthetic tasks at 4K (``template="chat"``, the model's chat
template, as RULER runs chat models) with ``--samples`` per task. 1 CPU device, float32, greedy.
Each run resumes from its JSONL (``results/needle-lwm-<stamp>.jsonl``,
``results/ruler-4k-<stamp>.jsonl``), so an interrupted run loses at most one batch; the summary
(``results/published-evals-<stamp>.md``) states each run's protocol, what differs from the
original, and whether its number sits beside the published ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import warnings

import ringkit as rk

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"


def needle(model, stamp: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    path = RESULTS / f"needle-lwm-{stamp}.jsonl"
    r = rk.eval.needle(model, lengths=[1024, 2048, 4096, 8192], depths=[0, 0.25, 0.5, 0.75, 1],
                       trials=3, style="lwm", template="base", resume=path)
    r.plot().figure.savefig(path.with_suffix(".png"), bbox_inches="tight", dpi=120)
    p = r.config["protocol"]
    table = "```\n" + r.table().rename(index=lambda d: f"{d:.0%}").round(2).to_string() + "\n```"
    by_length = r.frame.groupby("length")["score"].mean().round(2).to_dict()
    return (f"## LWM's needle ({p['source']})\n\n`{path.name}`: {r.summary()}\n\n"
            f"Score by length: {by_length}; prompt tokens {r.frame['tokens'].min()}-"
            f"{r.frame['tokens'].max()}.\n\n{table}\n\nComparable to LWM's heatmaps: "
            f"{p['comparable']}. Differences: {'; '.join(p['differences'])}.\n")


def ruler(model, stamp: str, samples: int) -> str:
    path = RESULTS / f"ruler-4k-{stamp}.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = rk.eval.ruler(model, tasks="all", length=4096, samples=samples, template="chat",
                          resume=path)
    p = r.config["protocol"]
    table = "```\n" + r.scores().round(1).to_string() + "\n```"
    return (f"## RULER's synthetic tasks at 4K ({p['source']})\n\n`{path.name}`: {r.summary()}"
            f"\n\n{table}\n\nMean {r.averages().iloc[0]:.1f} +- {r.interval().iloc[0]:.1f} "
            f"(95%) over {r.frame['task'].nunique()} tasks, {samples} samples each. Comparable "
            f"to RULER's tables: {r.comparable}. Differences: {'; '.join(p['differences'])}. "
            f"Warnings: {[str(w.message) for w in caught]}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", choices=["needle", "ruler", "both"], default="both")
    ap.add_argument("--samples", type=int, default=32, help="RULER samples per task")
    ap.add_argument("--stamp", default=datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S"))
    args = ap.parse_args()
    model = rk.load_model(mesh=rk.make_mesh("1,1,1,1"))
    parts = [f"# Published protocols, embedded {model.config.name}, 1 CPU device, float32\n"]
    if args.what in ("needle", "both"):
        parts.append(needle(model, args.stamp))
    if args.what in ("ruler", "both"):
        parts.append(ruler(model, args.stamp, args.samples))
    out = RESULTS / f"published-evals-{args.stamp}-{args.what}.md"
    out.write_text("\n".join(parts))
    print("\n".join(parts))
    print(json.dumps({"written": str(out)}))


if __name__ == "__main__":
    main()
