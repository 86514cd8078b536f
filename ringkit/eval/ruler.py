"""RULER: what is a model's real context size? Thirteen tasks beyond the single needle.

``ruler`` builds each task's samples offline at every requested length (the prompt with the chat
template, plus the tokens the task may generate, fits the length), answers them greedily and
scores them as RULER does: the share of expected strings found in the answer (``all``), or
whether any reference answer is found (``part``, the QA tasks), on a 0-100 scale. A model's
effective length is the longest length up to which the mean over tasks stays above 85.6
(Llama-2-7B's score at 4K, RULER's threshold).

Example::

    r = ringkit.eval.ruler(model, tasks=["niah", "vt"], length=[4096, 8192], samples=10)
    r.scores()              # task x length
    r.effective_length()    # e.g. 4096
    r.plot()
"""

from __future__ import annotations

import zlib

import numpy as np

from ringkit.context import resolve_model
from ringkit.errors import ConfigError, ShapeError, advice
from ringkit.eval.common import (Prompter, answer_cells, check_counts, grid_values, heatmap,
                                 html_table, load_done, pandas, write_jsonl)
from ringkit.eval.haystack import haystack_text, sentences
from ringkit.eval.ruler_tasks import TASKS, Env, load_qa, task_names

THRESHOLD = 85.6
COLUMNS = ("task", "length", "sample", "tokens", "size", "outputs", "answer", "score", "seconds")
QA_DATASET = {"qa_1": "squad", "qa_2": "hotpotqa"}


def score_answer(outputs, answer: str, metric: str) -> float:
    """RULER's string match on a 0-100 scale: ``all`` averages over ``outputs``, ``part`` takes
    the best (any reference answer found scores 100)."""
    hits = [o.lower() in answer.lower() for o in outputs]
    return 100.0 * (sum(hits) / len(hits) if metric == "all" else float(any(hits)))


def build_sample(task: str, tok, prompter: Prompter, env: Env, *, index: int,
                 seed: int) -> dict:
    """Sample ``index`` of ``task`` at ``env.length``: the prompt ``ids`` with the most haystack
    that leaves room for the task's answer, and the ``outputs`` expected in the answer."""
    spec = TASKS[task]
    budget = env.length - spec.tokens_to_generate
    limit = spec.limit(env) if hasattr(spec, "limit") else None
    entropy = [seed, zlib.crc32(task.encode()), env.length, index]

    def make(size: int):
        sample = spec.sample(np.random.default_rng(entropy), size, env)
        return prompter.wrap(tok, sample.message, sample.answer_prefix), sample

    def fits(size: int) -> bool:
        return len(make(size)[0]) <= budget

    if not fits(1):
        raise ShapeError(f"length {env.length:,} leaves no room for a {task} prompt and its "
                         f"{spec.tokens_to_generate}-token answer: use a longer length")
    lo, hi = 1, 2  # lo fits; grow hi until it doesn't (or hits the task's limit)
    while (limit is None or hi <= limit) and fits(hi):
        lo, hi = hi, hi * 2
    hi = hi if limit is None else min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    ids, sample = make(lo)
    return dict(ids=ids, outputs=list(sample.outputs), size=lo)


class RulerResults:
    """Results of ``ruler``: ``frame`` (a pandas DataFrame, one row per sample: task, length,
    sample, tokens, size, outputs, answer, score 0-100, seconds) and ``config``."""

    def __init__(self, frame, config: dict):
        self.frame, self.config = frame, config

    def scores(self):
        """Mean score per task (rows, in the order run) and length (columns)."""
        table = self.frame.pivot_table(index="task", columns="length", values="score",
                                       aggfunc="mean")
        return table.reindex(list(dict.fromkeys(self.frame["task"])))

    def averages(self):
        """Mean over tasks at each length (a Series)."""
        return self.scores().mean(axis=0)

    def effective_length(self, threshold: float = THRESHOLD) -> int:
        """The longest length up to which every measured length averages above ``threshold``
        (0 when even the shortest does not)."""
        best = 0
        for length, score in self.averages().sort_index().items():
            if score <= threshold:
                break
            best = int(length)
        return best

    def _effective(self) -> str:
        n = self.effective_length()
        return f"{n:,}" if n else f"below {int(self.frame['length'].min()):,}"

    def plot(self, ax=None, *, title: str | None = None):
        """The task x length heatmap (matplotlib); returns the axes."""
        return heatmap(self.scores(), ax, vmax=100, xlabel="length (tokens)", ylabel="task",
                       title=title or f"{self.config['model']}: RULER, effective length "
                                      f"{self._effective()}")

    def to_jsonl(self, path) -> None:
        """One JSON object per sample (with the run's config), the format ``resume`` reads."""
        write_jsonl(path, self.frame.to_dict("records"), self.config)

    def summary(self) -> str:
        c = self.config
        means = ", ".join(f"{n:,}: {s:.1f}" for n, s in self.averages().items())
        tasks = self.frame["task"].nunique()
        return (f"RULER: {c['model']}, {tasks} task(s), {len(self.frame)} sample(s), seed "
                f"{c['seed']}; mean score by length {means}; effective length "
                f"{self._effective()} (threshold {THRESHOLD})")

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self.scores().round(1).to_string()}"

    def _repr_html_(self) -> str:
        return html_table(self.summary(), self.scores(), vmax=100, digits=1)


def _check(model, lengths: list[int], samples: int, tasks: list[str], qa_files: dict) -> None:
    limit = model.config.context_length
    if not lengths or samples < 1 or min(lengths) < 1:
        raise ConfigError(f"need at least one length (each >= 1 token) and samples >= 1, got "
                          f"lengths {lengths}")
    bad = [n for n in lengths if n > limit]
    if bad:
        raise ShapeError(f"lengths {bad} exceed the {limit:,}-token context of "
                         f"{model.config.name}: use lengths up to {limit:,}, or load the model "
                         "with " + advice("rope_scaling=ringkit.model.RopeScaling(...)", "--rope-scaling yarn:FACTOR"))
    unknown = set(qa_files) - set(QA_DATASET)
    if unknown:
        raise ConfigError(f"qa_files takes the keys {sorted(QA_DATASET)}, got {sorted(unknown)}")
    for t in tasks:
        if t in QA_DATASET and t not in qa_files:
            flag = {"qa_1": "--squad", "qa_2": "--hotpotqa"}[t]
            raise ConfigError(f"{t} needs {QA_DATASET[t]} data on disk: pass " + advice(
                f"qa_files={{'{t}': 'path/to/{QA_DATASET[t]}.json'}}",
                f"{flag} path/to/{QA_DATASET[t]}.json") + " (the original release or rows in "
                "the Hugging Face layout)")


def ruler(model=None, *, tasks="all", length=4096, samples: int = 10, seed: int = 0, mesh=None,
          haystack="shakespeare", qa_files: dict | None = None, resume=None,
          batch: int = 4) -> RulerResults:
    """Run RULER ``tasks`` at each ``length`` with ``samples`` samples per cell.

    Args:
      model: a ``ringkit.Model`` (default: the embedded SmolLM2 on ``mesh``).
      tasks: task names (``niah_single_1..3``, ``niah_multikey_1..3``, ``niah_multivalue``,
        ``niah_multiquery``, ``vt``, ``cwe``, ``fwe``, ``qa_1``, ``qa_2``) or groups (``"all"``:
        the 11 synthetic tasks; ``"niah"``: the 8 needle tasks).
      length: one length or several, in the model's tokens; each prompt plus the task's answer
        budget fits it.
      samples: samples per (task, length).
      seed: fixes every sample (and, decoding being greedy, every answer).
      haystack: the essay haystack: ``"shakespeare"``, a path to a text file, or a text.
      qa_files: local data for the QA tasks, ``{"qa_1": squad_path, "qa_2": hotpotqa_path}``.
      resume: a JSONL path: samples already in it (same settings) are not run again; new ones
        are appended as they finish.
      batch: samples of one task and length answered together.

    Returns ``RulerResults`` (``.frame``, ``.scores()``, ``.effective_length()``, ``.plot()``).

    Example::

        r = ringkit.eval.ruler(tasks=["niah_single_1", "vt"], length=[2048, 4096], samples=5)
        print(r.scores(), r.effective_length())
    """
    pd = pandas()
    names = task_names(tasks)
    lengths = sorted(grid_values(length, int, "length"))
    check_counts(samples=samples, batch=batch, seed=seed)
    qa_files = dict(qa_files or {})
    model = resolve_model(model, mesh)
    _check(model, lengths, samples, names, qa_files)
    tok = model.tokenizer
    hay_name, text = haystack_text(haystack)
    essay = sentences(text)
    qa = {QA_DATASET[t]: load_qa(QA_DATASET[t], qa_files[t]) for t in names if t in QA_DATASET}
    config = dict(model=model.config.name, tokenizer=tok.digest, haystack=hay_name, seed=seed,
                  qa={t: str(p) for t, p in sorted(qa_files.items()) if t in names})
    prompter = Prompter.for_model(tok)
    envs = {n: Env(essay, n, qa) for n in lengths}
    cells = [(t, n, i) for t in names for n in lengths for i in range(samples)]

    def build(cell):
        t, n, i = cell
        return build_sample(t, tok, prompter, envs[n], index=i, seed=seed)

    def score(cell, b, answer):
        t, n, i = cell
        return dict(task=t, length=n, sample=i, tokens=len(b["ids"]), size=b["size"],
                    outputs=b["outputs"], answer=answer,
                    score=score_answer(b["outputs"], answer, TASKS[t].metric))

    done = load_done(resume, config, lambda row: (row["task"], row["length"], row["sample"]))
    answer_cells(model, cells, group=lambda c: c[:2], build=build, score=score,
                 max_new_tokens=lambda c: TASKS[c[0]].tokens_to_generate, config=config,
                 done=done, resume=resume, batch=batch, label="ruler")
    frame = pd.DataFrame([done[c] for c in cells], columns=list(COLUMNS))
    return RulerResults(frame, config)
