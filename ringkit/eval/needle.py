"""Needle in a haystack (LWM's variant): can the model retrieve a number hidden at any depth?

Each trial builds a prompt of exactly ``length`` model tokens: the chat template around a
haystack of whole sentences (the last one cut to the exact length) with ``needles`` needles
``"The special magic {city} number is: {7 digits}."`` at sentence boundaries: the first at
``depth`` of the haystack, the others at random boundaries. The question asks for ``retrieve``
of them; decoding is greedy; a needle counts as found when its number appears in the answer.
Every trial's haystack, cities and numbers come from ``(seed, length, depth, trial)`` alone, so a
run is reproducible, cell by cell, and can resume from its JSONL file.

Example::

    results = ringkit.eval.needle(model, lengths=[1024, 2048, 4096], depths=[0, 0.5, 1])
    results.score, results.table()      # overall; depth x length means
    results.plot()                      # the heatmap
    results.to_jsonl("needle.jsonl")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np

from ringkit.errors import ConfigError, MissingDependencyError, ShapeError
from ringkit.eval.haystack import haystack_text, sentences as split_sentences
from ringkit.progress import bar

CITIES = ("Lisbon", "Bergen", "Kyoto", "Nairobi", "Lima", "Oslo", "Hanoi", "Quito", "Tunis",
          "Perth", "Dakar", "Riga", "Cusco", "Malmo", "Porto", "Accra", "Bilbao", "Tallinn",
          "Recife", "Hobart", "Zagreb", "Medan", "Leeds", "Ghent", "Basra", "Trier", "Split",
          "Nantes", "Aarhus", "Cork")
NEEDLE = "The special magic {city} number is: {number}."
SYSTEM = "You are a helpful assistant."
COLUMNS = ("length", "depth", "trial", "tokens", "cities", "numbers", "answer", "found", "score",
           "correct", "seconds")


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise MissingDependencyError("evaluation results are pandas DataFrames: "
                                     "pip install 'ringkit[eval]' (pandas, matplotlib)") from e
    return pandas


def question_for(cities: list[str]) -> str:
    if len(cities) == 1:
        return f"What is the special magic {cities[0]} number?"
    names = ", ".join(cities[:-1]) + f" and {cities[-1]}"
    return f"What are the special magic numbers for {names}?"


@dataclasses.dataclass(frozen=True)
class _Prompter:
    """Token ids around the haystack: the chat template's head and the question's tail."""

    head: list[int]
    after_question: str

    @classmethod
    def for_model(cls, tok) -> "_Prompter":
        from ringkit.tokenize.prompts import _chat_shell

        shell = _chat_shell(tok, True) if tok.chat_template is not None else None
        if shell is None:  # LWM's plain prompt
            return cls(tok.encode(f"{SYSTEM} USER:", add_bos=True), " ASSISTANT:")
        before, after = shell
        return cls(tok.encode(before, add_bos=True), after)

    def tail(self, tok, question: str) -> list[int]:
        return tok.encode(f"\n\n{question}{self.after_question}", add_bos=False)


class Haystack:
    """A haystack's sentences, tokenized on demand (a prompt needs a few hundred of them)."""

    def __init__(self, name: str, text: str, tok):
        self.name, self.tok = name, tok
        self.sentences = split_sentences(text)
        self._ids: dict[int, list[int]] = {}
        # Tokens per character from three samples across the text (a play's cast list alone
        # would overstate it).
        samples = [text[int(f * len(text)):int(f * len(text)) + 8000] for f in (0, 0.45, 0.9)]
        per_char = (sum(len(tok.encode(s, add_bos=False)) for s in samples)
                    / max(sum(map(len, samples)), 1))
        self.approx_tokens = int(per_char * len(text))

    def ids(self, i: int) -> list[int]:
        i %= len(self.sentences)
        if i not in self._ids:
            self._ids[i] = self.tok.encode(" " + self.sentences[i], add_bos=False)
        return self._ids[i]


def build_trial(tok, prompter: _Prompter, hay: Haystack, *, length: int, depth: float,
                trial: int, seed: int, needles: int, retrieve: int) -> dict:
    """One trial's prompt (exactly ``length`` ids) and what it hides."""
    rng = np.random.default_rng([seed, length, int(round(depth * 10_000)), trial])
    cities = [CITIES[i] for i in rng.choice(len(CITIES), needles, replace=False)]
    numbers = [int(n) for n in rng.integers(1_000_000, 10_000_000, needles)]
    asked = [int(i) for i in sorted(rng.choice(needles, retrieve, replace=False))]
    if 0 not in asked:  # the needle at ``depth`` is always one of those asked for
        asked[0] = 0
        asked.sort()
    question = question_for([cities[i] for i in asked])
    needle_ids = [tok.encode(" " + NEEDLE.format(city=c, number=n), add_bos=False)
                  for c, n in zip(cities, numbers)]
    tail = prompter.tail(tok, question)
    budget = length - len(prompter.head) - len(tail) - sum(map(len, needle_ids))
    if budget < 1:
        raise ShapeError(f"length {length} leaves no room for a haystack around the prompt and "
                         f"{needles} needles: use a length of at least "
                         f"{length - budget + 64}")
    # Whole sentences from a random start; the exact length comes from the end of the sentence
    # before the start, so every boundary after the first is a sentence's end.
    start = int(rng.integers(0, len(hay.sentences)))
    pieces, used, i = [], 0, start
    while used + len(hay.ids(i)) <= budget:
        pieces.append(hay.ids(i))
        used, i = used + len(pieces[-1]), i + 1
    missing, j = budget - used, start
    while missing > 0:  # the tail of the sentence(s) before the start
        j -= 1
        pieces.insert(0, hay.ids(j)[-missing:])
        missing -= len(pieces[0])
    used = budget
    bounds = np.cumsum([0] + [len(p) for p in pieces])  # sentence boundaries, in tokens
    slots = [int(np.argmin(np.abs(bounds - depth * used)))]
    others = [b for b in range(len(bounds)) if b != slots[0]]
    slots += [int(b) for b in rng.choice(others, needles - 1, replace=len(others) < needles - 1)]
    ids = list(prompter.head)
    for b, piece in enumerate(pieces + [[]]):
        for k in [k for k, s in enumerate(slots) if s == b]:
            ids += needle_ids[k]
        ids += piece
    ids += tail
    assert len(ids) == length, (len(ids), length)
    return dict(ids=ids, cities=[cities[k] for k in asked], numbers=[numbers[k] for k in asked],
                question=question)


class NeedleResults:
    """Results of ``needle``: ``frame`` (a pandas DataFrame, one row per trial: length, depth,
    trial, tokens, cities, numbers, answer, found, score, correct, seconds) and ``config``."""

    def __init__(self, frame, config: dict):
        self.frame, self.config = frame, config

    @property
    def score(self) -> float:
        """Mean score over all trials (a trial scores the fraction of its needles found)."""
        return float(self.frame["score"].mean()) if len(self.frame) else float("nan")

    def table(self):
        """Mean score per depth (rows) and length (columns)."""
        return self.frame.pivot_table(index="depth", columns="length", values="score",
                                      aggfunc="mean")

    def plot(self, ax=None, *, title: str | None = None):
        """The depth x length heatmap (matplotlib); returns the axes."""
        import matplotlib.pyplot as plt

        table = self.table()
        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 + 0.9 * table.shape[1], 0.8 + 0.5 * table.shape[0]))
        image = ax.imshow(table.values, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(table.shape[1]), [f"{c:,}" for c in table.columns])
        ax.set_yticks(range(table.shape[0]), [f"{d:.0%}" for d in table.index])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        for (r, c), v in np.ndenumerate(table.values):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(title or f"{self.config['model']}: needle score {self.score:.2f}")
        ax.figure.colorbar(image, ax=ax, fraction=0.05)
        return ax

    def to_jsonl(self, path) -> None:
        """One JSON object per trial (with the run's config), the format ``resume`` reads."""
        with open(path, "w") as f:
            for row in self.frame.to_dict("records"):
                f.write(json.dumps(_jsonable({**row, "run": self.config}), sort_keys=True) + "\n")

    def summary(self) -> str:
        c = self.config
        return (f"needle in a haystack: {c['model']}, {c['needles']} needle(s), retrieve "
                f"{c['retrieve']}, haystack {c['haystack']}, seed {c['seed']}: score "
                f"{self.score:.3f} over {len(self.frame)} trials")

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self.table().round(2).to_string()}"

    def _repr_html_(self) -> str:
        import html

        return (f"<p>{html.escape(self.summary())}</p>"
                + self.table().style.format("{:.2f}").background_gradient(
                    cmap="RdYlGn", vmin=0, vmax=1).to_html())


def _jsonable(row: dict) -> dict:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _run_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _check(model, lengths, depths, trials, needles, retrieve, hay: Haystack,
           max_new_tokens: int) -> None:
    limit = model.config.context_length
    longest = limit - max_new_tokens + 1  # the prompt and the answer (its last token unfed)
    bad = [n for n in lengths if n > longest]
    if bad:
        raise ShapeError(f"lengths {bad} leave no room for {max_new_tokens} answer tokens in "
                         f"the {limit:,}-token context of {model.config.name}: use lengths up "
                         f"to {longest:,}, or load the model with "
                         "rope_scaling=ringkit.model.RopeScaling(...)")
    if any(n > hay.approx_tokens for n in lengths):
        raise ShapeError(f"the {hay.name} haystack holds about {hay.approx_tokens:,} tokens, "
                         f"fewer than the longest length {max(lengths):,}: use a longer haystack")
    if any(not 0 <= d <= 1 for d in depths):
        raise ConfigError(f"depths must lie in [0, 1], got {list(depths)}")
    if not lengths or not depths or trials < 1:
        raise ConfigError("need at least one length, one depth and trials >= 1")
    if not 1 <= retrieve <= needles <= len(CITIES):
        raise ConfigError(f"need 1 <= retrieve <= needles <= {len(CITIES)}, got "
                          f"needles={needles}, retrieve={retrieve}")


def needle(model=None, *, lengths, depths, trials: int = 3, needles: int = 1, retrieve: int = 1,
           haystack="shakespeare", seed: int = 0, mesh=None, resume=None, batch: int = 4,
           max_new_tokens: int | None = None) -> NeedleResults:
    """Run the needle-in-a-haystack grid ``lengths x depths x trials``.

    Args:
      model: a ``ringkit.Model`` (default: the embedded SmolLM2 on ``mesh``).
      lengths: prompt lengths in the model's tokens (exact).
      depths: where the first needle sits, as a fraction of the haystack in [0, 1].
      trials: trials per (length, depth) cell, each with its own haystack window and needles.
      needles, retrieve: needles hidden per prompt, and how many of them the question asks for.
      haystack: ``"shakespeare"``, a path to a text file, or a text.
      seed: fixes every haystack, needle and (greedy) answer.
      resume: a JSONL path: trials already in it (same run settings) are not run again, and each
        new trial is appended as it finishes.
      batch: prompts of one length run together (a batch of ``batch`` rows).

    Returns ``NeedleResults`` (``.frame``, ``.score``, ``.table()``, ``.plot()``,
    ``.to_jsonl()``).

    Example::

        r = ringkit.eval.needle(lengths=[1024, 2048], depths=[0, 0.5, 1], trials=3)
        r.plot()
    """
    from ringkit.context import default_model
    from ringkit.generate import generate_ids

    pandas = _pandas()
    if model is None:
        model = default_model(mesh)
    elif mesh is not None:
        raise ConfigError("pass either model= (already on its mesh) or mesh= (for the default "
                          "model), not both")
    lengths, depths = [int(n) for n in lengths], [float(d) for d in depths]
    tok = model.tokenizer
    name, text = haystack_text(haystack)
    hay = Haystack(name, text, tok)
    max_new_tokens = max_new_tokens or 16 + 16 * retrieve
    _check(model, lengths, depths, trials, needles, retrieve, hay, max_new_tokens)
    config = dict(model=model.config.name, tokenizer=tok.digest, haystack=name, seed=seed,
                  needles=needles, retrieve=retrieve, max_new_tokens=max_new_tokens,
                  needle=NEEDLE)
    key = _run_key(config)
    done: dict[tuple, dict] = {}
    if resume is not None and pathlib.Path(resume).exists():
        for line in pathlib.Path(resume).read_text().splitlines():
            row = json.loads(line)
            if _run_key(row.pop("run")) == key:
                done[row["length"], row["depth"], row["trial"]] = row
    cells = [(n, d, t) for n in lengths for d in depths for t in range(trials)]
    todo = [c for c in cells if c not in done]
    prompter = _Prompter.for_model(tok)
    out = open(resume, "a") if resume is not None else None
    try:
        with bar(len(todo), "needle", "trial", threshold=1) as progress:
            for n in lengths:
                mine = [c for c in todo if c[0] == n]
                for start in range(0, len(mine), batch):
                    group = mine[start:start + batch]
                    built = [build_trial(tok, prompter, hay, length=n, depth=d, trial=t,
                                         seed=seed, needles=needles, retrieve=retrieve)
                             for _, d, t in group]
                    t0 = time.perf_counter()
                    answers = generate_ids(model, [b["ids"] for b in built],
                                           max_new_tokens=max_new_tokens)
                    seconds = (time.perf_counter() - t0) / len(group)
                    for (_, d, t), b, ans in zip(group, built, answers):
                        answer = tok.decode(ans)
                        found = [str(x) in answer for x in b["numbers"]]
                        row = dict(length=n, depth=d, trial=t, tokens=len(b["ids"]),
                                   cities=b["cities"], numbers=b["numbers"], answer=answer,
                                   found=found, score=sum(found) / len(found),
                                   correct=all(found), seconds=seconds)
                        done[n, d, t] = row
                        if out is not None:
                            out.write(json.dumps(_jsonable({**row, "run": config}),
                                                 sort_keys=True) + "\n")
                            out.flush()
                    progress.update(len(group))
    finally:
        if out is not None:
            out.close()
    frame = pandas.DataFrame([done[c] for c in cells], columns=list(COLUMNS))
    return NeedleResults(frame, config)


