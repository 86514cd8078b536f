"""Do evaluations give the same answers on one device and on a ring of eight? (issue 6)

    python benchmarks/eval_meshes.py    # needle 1K/2K x 3 depths; RULER niah_single_2, vt at 2K

Runs the same ``ringkit needle`` and ``ringkit ruler`` commands with the embedded SmolLM2 on
mesh 1,1,1,1 (one device) and 1,1,1,8 (eight simulated CPU devices on the sequence axis), each in
its own process, and compares every answer. Writes benchmarks/results/eval-meshes-<stamp>.md
beside the four JSONL files.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
COMMANDS = {
    "needle": ["needle", "--lengths", "1024", "2048", "--depths", "0", "0.5", "1", "--trials",
               "1"],
    "ruler": ["ruler", "--tasks", "niah_single_2", "vt", "--lengths", "2048", "--samples", "2"],
}


def main() -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%S")
    lines = [f"# Evaluation answers on 1 and 8 devices, {stamp}", "",
             "| evaluation | prompts | same answers | wall time sp=1 (s) | sp=8 (s) |",
             "|---|---|---|---|---|"]
    for name, args in COMMANDS.items():
        answers, walls = {}, {}
        for sp in (1, 8):
            out = HERE / "results" / f"eval-meshes-{stamp}-{name}-sp{sp}.jsonl"
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={sp}",
                       RINGKIT_PROGRESS="0")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ringkit", *args, "--mesh", f"1,1,1,{sp}",
                            "--out", str(out)], env=env, check=True)
            walls[sp] = time.perf_counter() - t0
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            key = (lambda r: (r["length"], r["depth"], r["trial"])) if name == "needle" else (
                lambda r: (r["task"], r["length"], r["sample"]))
            answers[sp] = {key(r): r["answer"] for r in rows}
        same = sum(answers[1][k] == answers[8].get(k) for k in answers[1])
        lines.append(f"| {name} | {len(answers[1])} | {same} of {len(answers[1])} | "
                     f"{walls[1]:.0f} | {walls[8]:.0f} |")
        for k in answers[1]:
            if answers[1][k] != answers[8].get(k):
                lines.append(f"|  | differs at {k}: {answers[1][k][:40]!r} vs "
                             f"{answers[8].get(k, '')[:40]!r} | | | |")
    report = "\n".join(lines) + "\n"
    (HERE / "results" / f"eval-meshes-{stamp}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
