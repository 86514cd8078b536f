"""Needle in a haystack: can the model retrieve a number hidden at any depth?

``style="lwm"`` (default) is LWM's own protocol (LargeWorldModel/LWM ``scripts/eval_needle.py``;
``eval_needle_multi.py`` for several needles): each trial's haystack, its first ``length``
tokens, cut to ``length - 200`` (``final_context_length_buffer``) around the needle
``"\nThe special magic {city} number is: {number}\n"``, a city from LWM's 100-entry list, put
at ``depth`` of the haystack and moved back to just after a ``.`` token; the prompt is LWM's
template ``"You are a helpful assistant. USER: {context} {question} Don't give information
outside the document or repeat your findings. Keep your response short and direct. ASSISTANT: "``
character for character (``template="base"``), or the user's part of it in the model's chat
template (``"chat"``). ringkit counts in the model's tokens where LWM trims with tiktoken.

``"instructed"`` (RULER's way of posing a needle) and ``"plain"`` are ringkit's own: prompts of
exactly ``length`` tokens, the needle ``"The special magic {city} number is: {number}."`` at a
sentence boundary. A needle counts as found when its number appears in the greedy answer. Every
trial's haystack, cities and numbers come from ``(seed, length, depth, trial)`` alone (LWM-style
haystacks from ``(seed, trial)``, as LWM's rounds), so a run is reproducible cell by cell and can
resume from its JSONL file; each row's ``run`` records the protocol and whether it is comparable
to LWM's published heatmaps.

Example::

    results = ringkit.eval.needle(model, lengths=[1024, 2048, 4096], depths=[0, 0.5, 1])
    results.score, results.table()      # overall; depth x length means
    results.plot()                      # the heatmap
    ringkit.eval.needle_prompt(None, 2048, 0.5).text   # one cell's prompt, no model run
"""

from __future__ import annotations

import numpy as np

from ringkit.context import resolve_model
from ringkit.errors import ConfigError, ShapeError, advice, is_whole
from ringkit.eval.common import (CellPrompt, Prompter, answer_cells, check_counts, grid_values,
                                 heatmap, html_table, load_done, pandas, tokenizer_of,
                                 write_jsonl)
from ringkit.eval.haystack import Haystack, haystack_documents
from ringkit.eval.lwm_needle import (LWM_MULTI_SOURCE, LWM_NEEDLE, LWM_NEEDLE_UNKEYED,
                                     LWM_SOURCE, build_lwm_trial, lwm_template)

CITIES = ("Lisbon", "Bergen", "Kyoto", "Nairobi", "Lima", "Oslo", "Hanoi", "Quito", "Tunis",
          "Perth", "Dakar", "Riga", "Cusco", "Malmo", "Porto", "Accra", "Bilbao", "Tallinn",
          "Recife", "Hobart", "Zagreb", "Medan", "Leeds", "Ghent", "Basra", "Trier", "Split",
          "Nantes", "Aarhus", "Cork")
NEEDLE = "The special magic {city} number is: {number}."
# Without a key (``keys=False``): the single needle FACTS.md checked with transformers.
NEEDLE_UNKEYED = "The special magic number is {number}."
COLUMNS = ("length", "depth", "trial", "tokens", "cities", "numbers", "answer", "found", "score",
           "correct", "seconds")


STYLES = ("lwm", "instructed", "plain")

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


def build_trial(tok, prompter: Prompter, hay: Haystack, *, length: int, depth: float,
                trial: int, seed: int, needles: int, retrieve: int,
                style: str = "plain", keys: bool = True) -> dict:
    """One trial of ringkit's own styles (``instructed``, ``plain``): the prompt (exactly
    ``length`` ids) and what it hides."""
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
    text = NEEDLE if keys else NEEDLE_UNKEYED
    needle_ids = [tok.encode(" " + text.format(city=c, number=n), add_bos=False)
                  for c, n in zip(cities, numbers)]
    head = list(prompter.head)
    if style == "instructed":
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

    @property
    def comparable(self) -> bool:
        """Whether the run followed LWM's protocol (its numbers sit beside LWM's heatmaps)."""
        return bool(self.config.get("protocol", {}).get("comparable", False))

    def summary(self) -> str:
        c = self.config
        keyless = c.get("needle") in (NEEDLE_UNKEYED, LWM_NEEDLE_UNKEYED)
        protocol = c.get("protocol", {})
        return (f"needle in a haystack ({c.get('style', 'plain')}, {c.get('template', 'chat')} "
                f"template): {c['model']}, {c['needles']} needle(s)"
                f"{' without keys' if keyless else ''}, retrieve {c['retrieve']}, haystack "
                f"{c['haystack']}, seed {c['seed']}: score {self.score:.3f} over "
                f"{len(self.frame)} trials; "
                + (f"LWM's protocol ({protocol['source']})" if self.comparable
                   else "not LWM's protocol: not comparable to its published heatmaps"))

    def _shown(self):
        """``table()`` with its depths as percentages, as the heatmap labels them."""
        shown = self.table().rename(index=lambda d: f"{d:.0%}")
        shown.index.name = "depth"
        return shown

    def __repr__(self) -> str:
        return f"{self.summary()}\n{self._shown().round(2).to_string()}"

    def _repr_html_(self) -> str:
        return html_table(self.summary(), self._shown(), vmax=1, digits=2)


def _check_room(model, lengths, max_new_tokens: int, prompt_tokens) -> None:
    """Every prompt (``prompt_tokens(length)`` ids) and its answer fit the model's context."""
    limit = model.config.context_length
    # The prompt and the answer (its last token unfed); LWM's prompts are shorter than length.
    longest = limit - max_new_tokens + 1 + max(lengths) - prompt_tokens(max(lengths))
    bad = [n for n in lengths if n > longest]
    if bad:
        raise ShapeError(f"lengths {bad} leave no room for {max_new_tokens} answer tokens in "
                         f"the {limit:,}-token context of {model.config.name}: use lengths up "
                         f"to {longest:,}, or load the model with "
                         + advice("rope_scaling=ringkit.model.RopeScaling(...)", "--rope-scaling yarn:FACTOR"))


def _check(model, lengths, depths, trials, needles, retrieve, hay: Haystack,
           max_new_tokens: int, keys: bool = True) -> None:
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


def needle_protocol(style: str, template: str, haystack: str, needles: int,
                    keys: bool) -> dict:
    """Which protocol a run follows, whether its numbers sit beside LWM's published heatmaps
    (the prompt text is LWM's), and how it still differs from LWM's run."""
    if style != "lwm":
        return dict(name=f"ringkit-needle-{style}", source="ringkit", template=template,
                    comparable=False, differences=[
                        "ringkit's own prompt; style='lwm', template='base' follows LWM"])
    differences = []
    if template != "base":
        differences.append("LWM's prompt inside the model's chat template (LWM's text is its "
                           "own template: template='base')")
    if not keys:
        differences.append("a needle with no city (LWM's needles name one)")
    if needles > 1:
        differences.append("the first needle at the grid's depth, the others at uniform random "
                           "depths (LWM: all at depths drawn from its depth grid)")
    if not haystack.endswith(".jsonl"):
        differences.append(f"haystack {haystack} (LWM: PG-19 books, a JSONL file)")
    differences.append("lengths, the 200-token buffer and needle positions counted in the "
                       "model's tokens (LWM trims and inserts with tiktoken's cl100k)")
    differences.append("answers cut at max_new_tokens (LWM generates up to its block size); "
                       "either way decoding is greedy and stops at the end of the turn")
    return dict(name="lwm-needle-multi" if needles > 1 else "lwm-needle",
                source=LWM_MULTI_SOURCE if needles > 1 else LWM_SOURCE, template=template,
                comparable=template == "base" and keys, differences=differences)


def _template_for(style: str, template: str | None) -> str:
    template = template or ("base" if style == "lwm" else "chat")
    if style not in STYLES:
        raise ConfigError(f"unknown needle style {style!r}: choose one of {', '.join(STYLES)}")
    if template not in ("base", "chat"):
        raise ConfigError(f"unknown template {template!r}: choose 'base' or 'chat'")
    return template


class _Builder:
    """Builds any cell's prompt for one run's settings."""

    def __init__(self, tok, hay: Haystack, *, style, template, seed, needles, retrieve, keys,
                 longest):
        self.tok, self.hay, self.style, self.seed = tok, hay, style, seed
        self.kw = dict(needles=needles, retrieve=retrieve, keys=keys)
        self.longest = longest
        if style == "lwm":
            self.template = lwm_template(tok, template)
        else:
            self.prompter = Prompter.for_model(tok, template)

    def __call__(self, length: int, depth: float, trial: int) -> dict:
        cell = dict(length=length, depth=depth, trial=trial, seed=self.seed, **self.kw)
        if self.style == "lwm":
            return build_lwm_trial(self.tok, self.template, self.hay, longest=self.longest,
                                   **cell)
        return build_trial(self.tok, self.prompter, self.hay, style=self.style, **cell)


def needle_prompt(tokenizer=None, length: int = 4096, depth: float = 0.5, *, trial: int = 0,
                  seed: int = 0, style: str = "lwm", template: str | None = None,
                  haystack="shakespeare", needles: int = 1, retrieve: int = 1,
                  keys: bool = True, longest: int | None = None) -> CellPrompt:
    """The prompt and expected answers of one ``needle`` cell, without running a model: what
    ``needle`` with the same settings feeds the model for ``(length, depth, trial)``.

    Args:
      tokenizer: a ringkit tokenizer or model (default: the embedded SmolLM2's tokenizer).
      longest: the run's longest length (fixes where each trial's JSONL round starts, as LWM
        reads rounds of its longest length; default ``length``).
      The rest as for ``needle``.

    Returns a ``CellPrompt``: ``.text``, ``.ids``, ``.answers`` (the hidden numbers asked for),
    ``.protocol``.

    Example::

        p = ringkit.eval.needle_prompt(None, 2048, 0.5, trial=1)
        print(p.text[-200:], p.answers)
    """
    tok = tokenizer_of(tokenizer)
    template = _template_for(style, template)
    check_counts(trial=trial, seed=seed, needles=needles, retrieve=retrieve)
    (length,), (depth,) = grid_values(length, int, "length"), grid_values(depth, float, "depth")
    if not 0 <= depth <= 1 or length < 1 or retrieve > needles:
        raise ConfigError(f"need a length >= 1, a depth in [0, 1] and retrieve <= needles, got "
                          f"length {length}, depth {depth}, retrieve {retrieve} of {needles}")
    if longest is not None and not is_whole(longest, length):
        raise ConfigError(f"longest (the run's longest length) must be a whole number >= the "
                          f"length {length}, got {longest!r:.40}")
    name, documents = haystack_documents(haystack)
    hay = Haystack(name, "".join(documents), tok, documents)
    b = _Builder(tok, hay, style=style, template=template, seed=seed, needles=needles,
                 retrieve=retrieve, keys=keys, longest=longest)(length, depth, trial)
    text = b.get("text") or tok.decode(b["ids"], skip_special_tokens=False)  # ringkit's styles
    return CellPrompt(text, b["ids"], tuple(str(n) for n in b["numbers"]),
                      needle_protocol(style, template, name, needles, keys))


def needle(model=None, *, lengths, depths, trials: int = 3, needles: int = 1, retrieve: int = 1,
           haystack="shakespeare", seed: int = 0, mesh=None, resume=None, batch: int = 4,
           max_new_tokens: int | None = None, style: str = "lwm", template: str | None = None,
           keys: bool = True) -> NeedleResults:
    """Run the needle-in-a-haystack grid ``lengths x depths x trials``.

    Args:
      model: a ``ringkit.Model`` (default: the embedded SmolLM2 on ``mesh``).
      lengths: context lengths in the model's tokens: LWM's ``context_length`` (``style="lwm"``:
        the haystack and needles fill ``length - 200`` tokens, the prompt a few dozen more), or
        the exact prompt length (ringkit's styles).
      depths: where the first needle sits, as a fraction of the haystack in [0, 1].
      trials: trials per (length, depth) cell (LWM's rounds: each its own haystack).
      needles, retrieve: needles hidden per prompt, and how many of them the question asks for.
      haystack: ``"shakespeare"``, a path to a text file, a PG-19-style JSONL file
        (``{"text": ...}`` per line, LWM's haystack: trial ``t`` reads round ``t`` of its
        documents), or a text.
      seed: fixes every haystack, needle and (greedy) answer.
      resume: a JSONL path: trials already in it (same run settings) are not run again, and each
        new trial is appended as it finishes.
      batch: prompts of one length run together (a batch of ``batch`` rows).
      max_new_tokens: the answer's budget (default 48 + 16 per needle asked for with
        ``"lwm"``, 16 + 16 per needle otherwise); decoding stops at the end of the turn.
      style: ``"lwm"`` (default): LWM's eval_needle.py, character for character (see the
        module's docstring); ``"instructed"``: RULER's way, a line before the haystack saying
        a number is hidden in it, the question after a blank line, the answer started with the
        question's words; ``"plain"``: the haystack, a blank line, the question.
      template: ``"base"`` or ``"chat"``: with ``"lwm"``, ``base`` (default) is LWM's prompt
        verbatim and ``chat`` its user part in the model's chat template; with ringkit's
        styles, ``chat`` (default) is the model's chat template and ``base`` none.
      keys: True (default): needles keyed by a city, asked for by its city; False: one needle
        with no key, asked "What is the special magic number?" (not a published protocol).

    Returns ``NeedleResults`` (``.frame``, ``.score``, ``.table()``, ``.plot()``,
    ``.to_jsonl()``); ``.config["protocol"]`` says whether it is comparable to LWM's.

    Example::

        r = ringkit.eval.needle(lengths=[1024, 2048], depths=[0, 0.5, 1], trials=3)
        r.plot()
    """
    pd = pandas()
    model = resolve_model(model, mesh)
    lengths, depths = grid_values(lengths, int, "lengths"), grid_values(depths, float, "depths")
    check_counts(trials=trials, batch=batch, seed=seed, needles=needles, retrieve=retrieve)
    template = _template_for(style, template)
    tok = model.tokenizer
    name, documents = haystack_documents(haystack)
    hay = Haystack(name, "".join(documents), tok, documents)
    if max_new_tokens is None:
        max_new_tokens = (48 if style == "lwm" else 16) + 16 * retrieve
    check_counts(max_new_tokens=max_new_tokens)
    _check(model, lengths, depths, trials, needles, retrieve, hay, max_new_tokens, keys)
    lwm = style == "lwm"
    config = dict(model=model.config.name, tokenizer=tok.digest, haystack=name, seed=seed,
                  needles=needles, retrieve=retrieve, max_new_tokens=max_new_tokens,
                  style=style, template=template,
                  needle=(LWM_NEEDLE if lwm else NEEDLE) if keys else
                  (LWM_NEEDLE_UNKEYED if lwm else NEEDLE_UNKEYED),
                  protocol=needle_protocol(style, template, name, needles, keys))
    if lwm and len(documents) > 1:  # a JSONL file's rounds hold the longest length
        config["longest"] = max(lengths)
    builder = _Builder(tok, hay, style=style, template=template, seed=seed, needles=needles,
                       retrieve=retrieve, keys=keys, longest=max(lengths))
    cells = [(n, d, t) for n in lengths for d in depths for t in range(trials)]

    def score(cell, b, answer):
        found = [str(x) in answer for x in b["numbers"]]
        return dict(length=cell[0], depth=cell[1], trial=cell[2], tokens=len(b["ids"]),
                    cities=b["cities"], numbers=b["numbers"], answer=answer, found=found,
                    score=sum(found) / len(found), correct=all(found))

    done = load_done(resume, config, lambda row: (row["length"], row["depth"], row["trial"]))
    _check_room(model, lengths, max_new_tokens,
                lambda n: len(builder(n, depths[0], 0)["ids"]) if lwm else n)
    answer_cells(model, cells, group=lambda c: c[0], build=lambda c: builder(*c), score=score,
                 max_new_tokens=lambda c: max_new_tokens, config=config, done=done,
                 resume=resume, batch=batch, label="needle")
    frame = pd.DataFrame([done[c] for c in cells], columns=list(COLUMNS))
    return NeedleResults(frame, config)
