"""Needle in a haystack (LWM's variant): can the model retrieve a number hidden at any depth?

Each trial builds a prompt of exactly ``length`` model tokens: the chat template around a
haystack of whole sentences (the last one cut to the exact length) with ``needles`` needles
``"The special magic {city} number is: {7 digits}."`` at sentence boundaries: the first at
``depth`` of the haystack, the others at random boundaries. The question asks for ``retrieve``
of them; decoding is greedy; a needle counts as found when its number appears in the answer.
``style`` poses the question RULER's way (default), as LWM's own script does, or bare;
``keys=False`` hides one needle with no city ("The special magic number is {7 digits}.").
Every trial's haystack, cities and numbers come from ``(seed, length, depth, trial)`` alone, so a
run is reproducible, cell by cell, and can resume from its JSONL file.

Example::

    results = ringkit.eval.needle(model, lengths=[1024, 2048, 4096], depths=[0, 0.5, 1])
    results.score, results.table()      # overall; depth x length means
    results.plot()                      # the heatmap
    results.to_jsonl("needle.jsonl")
"""

from __future__ import annotations

import numpy as np

from ringkit.context import resolve_model
from ringkit.errors import ConfigError, ShapeError, advice
from ringkit.eval.common import (Prompter, answer_cells, check_counts, grid_values, heatmap,
                                  html_table, load_done, pandas, write_jsonl)
from ringkit.eval.haystack import haystack_text, sentences as split_sentences

CITIES = ("Lisbon", "Bergen", "Kyoto", "Nairobi", "Lima", "Oslo", "Hanoi", "Quito", "Tunis",
          "Perth", "Dakar", "Riga", "Cusco", "Malmo", "Porto", "Accra", "Bilbao", "Tallinn",
          "Recife", "Hobart", "Zagreb", "Medan", "Leeds", "Ghent", "Basra", "Trier", "Split",
          "Nantes", "Aarhus", "Cork")
NEEDLE = "The special magic {city} number is: {number}."
# Without a key (``keys=False``): the single needle FACTS.md checked with transformers.
NEEDLE_UNKEYED = "The special magic number is {number}."
COLUMNS = ("length", "depth", "trial", "tokens", "cities", "numbers", "answer", "found", "score",
           "correct", "seconds")


STYLES = ("instructed", "lwm", "plain")
# LWM's eval_needle.py: the needle on a line of its own, and this after the question.
LWM_INSTRUCTION = ("Don't give information outside the document or repeat your findings. Keep "
                   "your response short and direct.")


def question_for(cities: list[str | None]) -> str:
    if cities == [None]:
        return "What is the special magic number?"
    if len(cities) == 1:
        return f"What is the special magic {cities[0]} number?"
    names = ", ".join(cities[:-1]) + f" and {cities[-1]}"
    return f"What are the special magic numbers for {names}?"


def _instructions(cities: list[str | None], needles: int) -> tuple[str, str]:
    """RULER's way to pose a needle: say up front that numbers are hidden, and start the answer
    with the question's words. ``(before the haystack, start of the answer)``."""
    some = "A special magic number is" if needles == 1 else "Some special magic numbers are"
    before = (f"{some} hidden within the following text. Make sure to memorize "
              f"{'it' if needles == 1 else 'them'}. I will quiz you about the "
              f"{'number' if needles == 1 else 'numbers'} afterwards.\n")
    if cities == [None]:
        return before, "The special magic number is"
    if len(cities) == 1:
        return before, f"The special magic {cities[0]} number is"
    return before, ("The special magic numbers for " + ", ".join(cities[:-1])
                    + f" and {cities[-1]} are")


class Haystack:
    """A haystack's sentences, tokenized on demand (a prompt needs a few hundred of them)."""

    def __init__(self, name: str, text: str, tok):
        self.name, self.tok = name, tok
        self.sentences = split_sentences(text)
        self._ids: dict[int, list[int]] = {}
        # Tokens per character from three samples across the text (a play's cast list alone
        # would overstate it).
        samples = [text[int(f * len(text)):int(f * len(text)) + 8000] for f in (0, 0.45, 0.9)]
        per_char = (sum(len(tok.encode(s, add_bos=False, literal=True)) for s in samples)
                    / max(sum(map(len, samples)), 1))
        self.approx_tokens = int(per_char * len(text))

    def ids(self, i: int) -> list[int]:
        i %= len(self.sentences)
        if i not in self._ids:
            self._ids[i] = self.tok.encode(" " + self.sentences[i], add_bos=False, literal=True)
        return self._ids[i]


def build_trial(tok, prompter: Prompter, hay: Haystack, *, length: int, depth: float,
                trial: int, seed: int, needles: int, retrieve: int,
                style: str = "plain", keys: bool = True) -> dict:
    """One trial's prompt (exactly ``length`` ids) and what it hides."""
    rng = np.random.default_rng([seed, length, int(round(depth * 10_000)), trial])
    cities = [CITIES[i] for i in rng.choice(len(CITIES), needles, replace=False)]
    if not keys:  # drawn all the same: keyed and unkeyed runs share numbers and haystacks
        cities = [None] * needles
    numbers = [int(n) for n in rng.integers(1_000_000, 10_000_000, needles)]
    asked = [int(i) for i in sorted(rng.choice(needles, retrieve, replace=False))]
    if 0 not in asked:  # the needle at ``depth`` is always one of those asked for
        asked[0] = 0
        asked.sort()
    question = question_for([cities[i] for i in asked])
    line = "\n{}\n" if style == "lwm" else " {}"
    text = NEEDLE if keys else NEEDLE_UNKEYED
    needle_ids = [tok.encode(line.format(text.format(city=c, number=n)), add_bos=False)
                  for c, n in zip(cities, numbers)]
    head = list(prompter.head)
    if style == "lwm":
        tail = tok.encode(f" {question} {LWM_INSTRUCTION}{prompter.after_question}",
                          add_bos=False)
    elif style == "instructed":
        before, answer_prefix = _instructions([cities[i] for i in asked], needles)
        head += tok.encode(before, add_bos=False)
        tail = prompter.tail(tok, question, answer_prefix)
    else:
        tail = prompter.tail(tok, question)
    budget = length - len(head) - len(tail) - sum(map(len, needle_ids))
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
    ids = head
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
        return heatmap(self.table(), ax, vmax=1, xlabel="context length (tokens)",
                       ylabel="needle depth", row_label=lambda d: f"{d:.0%}",
                       title=title or f"{self.config['model']}: needle score {self.score:.2f}")

    def to_jsonl(self, path) -> None:
        """One JSON object per trial (with the run's config), the format ``resume`` reads."""
        write_jsonl(path, self.frame.to_dict("records"), self.config)

    def summary(self) -> str:
        c = self.config
        return (f"needle in a haystack ({c.get('style', 'plain')}): {c['model']}, "
                f"{c['needles']} needle(s)"
                f"{' without keys' if c.get('needle') == NEEDLE_UNKEYED else ''}, retrieve "
                f"{c['retrieve']}, haystack {c['haystack']}, seed {c['seed']}: score "
                f"{self.score:.3f} over {len(self.frame)} trials")

    def _shown(self):
        """``table()`` with its depths as percentages, as the heatmap labels them."""
        shown = self.table().rename(index=lambda d: f"{d:.0%}")
        shown.index.name = "depth"
        return shown

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self._shown().round(2).to_string()}"

    def _repr_html_(self) -> str:
        return html_table(self.summary(), self._shown(), vmax=1, digits=2)


def _check(model, lengths, depths, trials, needles, retrieve, hay: Haystack,
           max_new_tokens: int, keys: bool = True) -> None:
    limit = model.config.context_length
    longest = limit - max_new_tokens + 1  # the prompt and the answer (its last token unfed)
    bad = [n for n in lengths if n > longest]
    if bad:
        raise ShapeError(f"lengths {bad} leave no room for {max_new_tokens} answer tokens in "
                         f"the {limit:,}-token context of {model.config.name}: use lengths up "
                         f"to {longest:,}, or load the model with "
                         + advice("rope_scaling=ringkit.model.RopeScaling(...)", "--rope-scaling yarn:FACTOR"))
    if any(n > hay.approx_tokens for n in lengths):
        raise ShapeError(f"the {hay.name} haystack holds about {hay.approx_tokens:,} tokens, "
                         f"fewer than the longest length {max(lengths):,}: use a longer haystack")
    if any(not 0 <= d <= 1 for d in depths):
        raise ConfigError(f"depths must lie in [0, 1], got {list(depths)}")
    if not lengths or not depths or trials < 1 or min(lengths) < 1:
        raise ConfigError(f"need at least one length (each >= 1 token), one depth and "
                          f"trials >= 1, got lengths {lengths}")
    if not 1 <= retrieve <= needles <= len(CITIES):
        got = advice(f"needles={needles}, retrieve={retrieve}",
                     f"--needles {needles}, --retrieve {retrieve}")
        raise ConfigError(f"need 1 <= retrieve <= needles <= {len(CITIES)}, got {got}")
    if not keys and needles > 1:
        raise ConfigError("needles without keys cannot be told apart: "
                          + advice(f"use keys=True for {needles} needles, or needles=1",
                                   f"leave out --no-keys for {needles} needles, or use "
                                   "--needles 1"))


def needle(model=None, *, lengths, depths, trials: int = 3, needles: int = 1, retrieve: int = 1,
           haystack="shakespeare", seed: int = 0, mesh=None, resume=None, batch: int = 4,
           max_new_tokens: int | None = None, style: str = "instructed",
           keys: bool = True) -> NeedleResults:
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
      style: how the question is posed. ``"instructed"`` (default): RULER's way, a line
        before the haystack saying a number is hidden in it, the question after a blank line,
        and the answer started with the question's words ("The special magic Lisbon number
        is"); ``"lwm"``: LWM's eval_needle.py, the needle on a line of its own and "Don't give
        information outside the document or repeat your findings. Keep your response short and
        direct." after the question; ``"plain"``: the haystack, a blank line, the question.
      keys: True (default): LWM's needle, keyed by a city ("The special magic Lisbon number
        is: 4810375."), asked for by its city; False: one needle with no key ("The special
        magic number is 4810375.", asked "What is the special magic number?"), the same numbers
        and haystacks as the keyed run of the same seed.

    Returns ``NeedleResults`` (``.frame``, ``.score``, ``.table()``, ``.plot()``,
    ``.to_jsonl()``).

    Example::

        r = ringkit.eval.needle(lengths=[1024, 2048], depths=[0, 0.5, 1], trials=3)
        r.plot()
    """
    pd = pandas()
    model = resolve_model(model, mesh)
    lengths, depths = grid_values(lengths, int, "lengths"), grid_values(depths, float, "depths")
    check_counts(trials=trials, batch=batch, seed=seed, needles=needles, retrieve=retrieve)
    tok = model.tokenizer
    name, text = haystack_text(haystack)
    hay = Haystack(name, text, tok)
    max_new_tokens = max_new_tokens or 16 + 16 * retrieve
    _check(model, lengths, depths, trials, needles, retrieve, hay, max_new_tokens, keys)
    if style not in STYLES:
        raise ConfigError(f"unknown needle style {style!r}: choose one of {', '.join(STYLES)}")
    config = dict(model=model.config.name, tokenizer=tok.digest, haystack=name, seed=seed,
                  needles=needles, retrieve=retrieve, max_new_tokens=max_new_tokens,
                  needle=NEEDLE if keys else NEEDLE_UNKEYED)
    if style != "plain":  # runs recorded before styles existed were plain
        config["style"] = style
    prompter = Prompter.for_model(tok)
    cells = [(n, d, t) for n in lengths for d in depths for t in range(trials)]

    def build(cell):
        n, d, t = cell
        return build_trial(tok, prompter, hay, length=n, depth=d, trial=t, seed=seed,
                           needles=needles, retrieve=retrieve, style=style, keys=keys)

    def score(cell, b, answer):
        found = [str(x) in answer for x in b["numbers"]]
        return dict(length=cell[0], depth=cell[1], trial=cell[2], tokens=len(b["ids"]),
                    cities=b["cities"], numbers=b["numbers"], answer=answer, found=found,
                    score=sum(found) / len(found), correct=all(found))

    done = load_done(resume, config, lambda row: (row["length"], row["depth"], row["trial"]))
    answer_cells(model, cells, group=lambda c: c[0], build=build, score=score,
                 max_new_tokens=lambda c: max_new_tokens, config=config, done=done,
                 resume=resume, batch=batch, label="needle")
    frame = pd.DataFrame([done[c] for c in cells], columns=list(COLUMNS))
    return NeedleResults(frame, config)
