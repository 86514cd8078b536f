"""RULER: what is a model's real context size? Thirteen tasks beyond the single needle.

``ruler`` builds each task's samples offline at every requested length (the prompt plus the
tokens the task may generate fits the length), answers them greedily and scores them as RULER
does: the share of expected strings found in the answer (``all``), or whether any reference
answer is found (``part``, the QA tasks), on a 0-100 scale. The prompt is RULER's: the task's
template inside the model template (``template="base"``: none; ``"chat"``: the model's chat
template), then the answer prefix with its leading space. RULER's published tables average all
13 tasks (500 samples each) per length; a model's effective length is the longest length up to
which that mean stays above 85.6 (Llama-2-7B's score at 4K). Results say whether they are
comparable (``RulerResults.comparable``) and what is missing.

Example::

    r = ringkit.eval.ruler(model, tasks=["niah", "vt"], length=[4096, 8192], samples=10)
    r.scores()              # task x length
    r.effective_length()    # e.g. 4096
    r.plot()
    ringkit.eval.ruler_prompt("vt", None, 4096).text    # one sample's prompt, no model run
"""

from __future__ import annotations

import re
import warnings
import zlib

import numpy as np

from ringkit.context import resolve_model
from ringkit.errors import ConfigError, ShapeError, advice
from ringkit.eval.common import (CellPrompt, Template, answer_cells, check_counts, grid_values,
                                 heatmap, html_table, load_done, pandas, tokenizer_of,
                                 write_jsonl)
from ringkit.eval.haystack import haystack_text
from ringkit.eval.ruler_qa import load_qa
from ringkit.eval.ruler_tasks import TASKS, Env, task_names

THRESHOLD = 85.6
SOURCE = "NVIDIA/RULER scripts/data (synthetic.yaml, synthetic/*.py, template.py)"
PUBLISHED_SAMPLES = 500  # RULER's scripts/config_tasks.sh: NUM_SAMPLES
COLUMNS = ("task", "length", "sample", "tokens", "size", "outputs", "answer", "score", "seconds")
QA_DATASET = {"qa_1": "squad", "qa_2": "hotpotqa"}


def score_answer(outputs, answer: str, metric: str) -> float:
    """RULER's string match on a 0-100 scale: ``all`` averages over ``outputs``, ``part`` takes
    the best (any reference answer found scores 100)."""
    hits = [o.lower() in answer.lower() for o in outputs]
    return 100.0 * (sum(hits) / len(hits) if metric == "all" else float(any(hits)))


def build_sample(task: str, tok, template: Template, env: Env, *, index: int,
                 seed: int) -> dict:
    """Sample ``index`` of ``task`` at ``env.length``: the prompt ``ids`` (and ``text``) with
    the most haystack that leaves room for the task's answer, and the ``outputs`` expected in
    the answer."""
    spec = TASKS[task]
    budget = env.length - spec.tokens_to_generate
    limit = spec.limit(env) if hasattr(spec, "limit") else None
    entropy = [seed, zlib.crc32(task.encode()), env.length, index]

    def make(size: int):
        sample = spec.sample(np.random.default_rng(entropy), size, env, index)
        return template.encode(tok, sample.message, sample.answer_prefix), sample

    def fits(size: int) -> bool:
        return len(make(size)[0]) <= budget

    if not fits(1):
        raise ShapeError(f"length {env.length:,} leaves no room for a {task} prompt and its "
                         f"{spec.tokens_to_generate}-token answer: use a longer length")
    lo, hi = 1, 2  # lo fits; grow hi until it doesn't (or passes the task's limit)
    while (limit is None or hi <= limit) and fits(hi):
        lo, hi = hi, hi * 2
    hi = hi if limit is None else min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    ids, sample = make(lo)
    if limit is not None and lo == limit:
        what = ("RULER's word list (wonderwords' nouns, adjectives and verbs; past it RULER "
                "draws from its english_words.json, which ringkit does not ship)"
                if task == "cwe" else f"the {spec.dataset} file's documents")
        raise ShapeError(f"{task} cannot fill {env.length:,} tokens: {what} run out at "
                         f"{len(ids) + spec.tokens_to_generate:,}; use lengths up to that"
                         + ("" if task == "cwe" else ", or a bigger file"))
    return dict(ids=ids, text=template.text(sample.message, sample.answer_prefix),
                outputs=list(sample.outputs), size=lo)


def ruler_protocol(template: str, haystack: str) -> dict:
    """The protocol a run's rows follow: RULER's prompts (``comparable``: either template);
    its mean is comparable to RULER's tables once all 13 tasks ran (``RulerResults``)."""
    differences = ["sentences split by ringkit's splitter (RULER: NLTK's sent_tokenize)"]
    if haystack != "PaulGrahamEssays.json":
        differences.insert(0, f"essay haystack {haystack} (RULER: Paul Graham's essays)")
    return dict(name="ruler", source=SOURCE, template=template, comparable=True,
                differences=differences)


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

    def interval(self):
        """Half-width of a conservative 95% interval of ``averages()`` at each length (a
        Series): each task's variance bounded by ``m (100 - m)`` (a 0-100 score with mean
        ``m``), ``m`` shrunk toward 50 as Agresti and Coull do, so that a task whose few
        samples all agree still counts as uncertain."""
        g = self.frame.groupby(["length", "task"])["score"]
        n = g.count()
        p = (g.sum() / 100 + 2) / (n + 4)
        per_task = (1e4 * p * (1 - p) / n).groupby(level=0)
        return 1.96 * per_task.sum().pow(0.5) / per_task.count()

    def missing(self) -> list[str]:
        """RULER's tasks this run lacks (its mean is over the rest)."""
        return [t for t in TASKS if t not in set(self.frame["task"])]

    @property
    def comparable(self) -> bool:
        """Whether the mean sits beside RULER's tables: RULER's prompts and all 13 tasks (the
        sampling error is ``interval()``; RULER's tables use 500 samples per task)."""
        return not self.missing() and self.config.get("protocol", {}).get("comparable", False)

    def caveats(self) -> list[str]:
        """What keeps this run's mean from RULER's published one, if anything."""
        out = []
        missing = self.missing()
        if missing:
            qa = [t for t in missing if t in QA_DATASET]
            out.append(f"{13 - len(missing)} of RULER's 13 tasks (missing {', '.join(missing)}"
                       + ("; the QA tasks need qa_files" if qa else "") + ")")
        counts = self.frame.groupby(["task", "length"]).size()
        if len(counts) and counts.min() < PUBLISHED_SAMPLES:
            out.append(f"{counts.min()} samples per task (RULER: {PUBLISHED_SAMPLES}; the "
                       f"mean's 95% interval is up to +-{self.interval().max():.1f} points)")
        return out

    def summary(self) -> str:
        c = self.config
        counts = self.frame.groupby(["task", "length"]).size()
        per = (f"{counts.min()}" if counts.min() == counts.max()
               else f"{counts.min()}-{counts.max()}")
        half = self.interval()
        means = ", ".join(f"{n:,}: {s:.1f} +- {half[n]:.1f}"
                          for n, s in self.averages().items())
        tasks = self.frame["task"].nunique()
        caveats = self.caveats()
        verdict = ("comparable to RULER's tables" if self.comparable and not caveats else
                   ("comparable to RULER's tables, with " if self.comparable
                    else "not comparable to RULER's tables: ") + "; ".join(caveats))
        return (f"RULER ({c.get('template', 'chat')} template): {c['model']}, {tasks} task(s), "
                f"{per} sample(s) per task, seed {c['seed']}; mean score by length {means}; "
                f"effective length {self._effective()} (threshold {THRESHOLD}); {verdict}")

    def plot(self, ax=None, *, title: str | None = None):
        """The task x length heatmap (matplotlib); returns the axes."""
        return heatmap(self.scores(), ax, vmax=100, xlabel="length (tokens)", ylabel="task",
                       title=title or f"{self.config['model']}: RULER, effective length "
                                      f"{self._effective()}")

    def to_jsonl(self, path) -> None:
        """One JSON object per sample (with the run's config), the format ``resume`` reads."""
        write_jsonl(path, self.frame.to_dict("records"), self.config)

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self.scores().round(1).to_string()}"

    def _repr_html_(self) -> str:
        return html_table(self.summary(), self.scores(), vmax=100, digits=1)


def _check_qa(tasks: list[str], qa_files: dict) -> None:
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
    _check_qa(tasks, qa_files)


def ruler_prompt(task: str, tokenizer=None, length: int = 4096, *, index: int = 0,
                 seed: int = 0, template: str = "chat", haystack="shakespeare",
                 qa_files: dict | None = None) -> CellPrompt:
    """The prompt and expected answers of one ``ruler`` sample, without running a model: what
    ``ruler`` with the same settings feeds the model for ``(task, length, index)``.

    Args:
      task: one task name (``"vt"``, ``"niah_single_2"``, ...).
      tokenizer: a ringkit tokenizer or model (default: the embedded SmolLM2's tokenizer).
      The rest as for ``ruler``.

    Returns a ``CellPrompt``: ``.text`` (template, task, answer prefix), ``.ids``, ``.answers``
    (RULER's ``outputs``), ``.protocol``.

    Example::

        p = ringkit.eval.ruler_prompt("niah_single_2", None, 4096, template="base")
        print(p.text[-120:], p.answers)
    """
    tok = tokenizer_of(tokenizer)
    names = task_names(task)
    if len(names) != 1:
        raise ConfigError(f"ruler_prompt builds one task's prompt, got {names}")
    task = names[0]
    check_counts(index=index, seed=seed)
    qa_files = dict(qa_files or {})
    _check_qa([task], qa_files)
    hay_name, essay, qa = _inputs([task], haystack, qa_files)
    (length,) = grid_values(length, int, "length")
    if length < 1:
        raise ConfigError(f"length must be >= 1 token, got {length}")
    env = Env(essay, length, qa, tok)
    b = build_sample(task, tok, Template.for_model(tok, template), env, index=index, seed=seed)
    return CellPrompt(b["text"], b["ids"], tuple(b["outputs"]), ruler_protocol(template, hay_name))


def _inputs(names: list[str], haystack, qa_files: dict) -> tuple[str, list[str], dict]:
    """The haystack's name, its words as RULER splits the essay (whitespace runs made one
    space, then split on spaces), and the QA data ``names`` need."""
    hay_name, text = haystack_text(haystack)
    qa = {QA_DATASET[t]: load_qa(QA_DATASET[t], qa_files[t]) for t in names if t in QA_DATASET}
    return hay_name, re.sub(r"\s+", " ", text).split(" "), qa


def ruler(model=None, *, tasks="all", length=4096, samples: int = 10, seed: int = 0, mesh=None,
          haystack="shakespeare", qa_files: dict | None = None, resume=None,
          batch: int = 4, template: str = "chat") -> RulerResults:
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
      haystack: the essay haystack: ``"shakespeare"``, a path to a text file (RULER's own
        ``PaulGrahamEssays.json`` too), or a text.
      qa_files: local data for the QA tasks, ``{"qa_1": squad_path, "qa_2": hotpotqa_path}``.
      resume: a JSONL path: samples already in it (same settings) are not run again; new ones
        are appended as they finish.
      batch: samples of one task and length answered together.
      template: ``"chat"`` (default: the model's chat template; RULER's ``lwm-chat`` for a
        checkpoint with none) or ``"base"`` (none, as RULER runs base models).

    Returns ``RulerResults`` (``.frame``, ``.scores()``, ``.effective_length()``, ``.plot()``,
    ``.comparable``, ``.caveats()``). A run that lacks some of the 13 tasks, or whose mean is
    less certain than +-5 points, warns that it is not comparable to RULER's tables.

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
    shell = Template.for_model(tok, template)
    hay_name, essay, qa = _inputs(names, haystack, qa_files)
    config = dict(model=model.config.name, tokenizer=tok.digest, haystack=hay_name, seed=seed,
                  qa={t: str(p) for t, p in sorted(qa_files.items()) if t in names},
                  template=template, protocol=ruler_protocol(template, hay_name))
    envs = {n: Env(essay, n, qa, tok) for n in lengths}
    cells = [(t, n, i) for t in names for n in lengths for i in range(samples)]

    def build(cell):
        t, n, i = cell
        return build_sample(t, tok, shell, envs[n], index=i, seed=seed)

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
    results = RulerResults(frame, config)
    if results.missing() or results.interval().max() > 5:
        warnings.warn("this RULER run is not comparable to RULER's tables: "
                      + "; ".join(results.caveats()), stacklevel=2)
    return results
