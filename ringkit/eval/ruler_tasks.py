"""RULER's task generators (Hsieh et al., 2024), built offline.

Each task turns ``(rng, size)`` into a ``Sample``: the user's message, the start of the answer
(RULER steers the answer with it) and the strings a correct answer contains. ``size`` is the
task's unit of haystack (sentences, distractor needles, list words); ``ruler.py`` picks the
largest size that fits the requested length. The prompts follow RULER's templates; the essay
haystack is a public-domain text (Shakespeare by default) where RULER uses Paul Graham's essays,
and the words come from ``wonderwords``, RULER's own word lists.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import string
import uuid

import numpy as np

from ringkit.errors import ConfigError, MissingDependencyError, SourceError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {kind} are hidden within the following text. Make sure to "
                 "memorize it. I will quiz you about the {kind} afterwards.\n{context}\n"
                 "What are all the special magic {kind} for {query} mentioned in the provided "
                 "text?")
NIAH_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"
DEPTHS = np.round(np.linspace(0, 100, 40)).astype(int)  # where essay needles may sit, in %


@dataclasses.dataclass(frozen=True)
class Env:
    """What a task may draw on besides its random numbers."""

    essay: list          # sentences of the essay haystack
    length: int          # the requested length in tokens (CWE and FWE scale with it)
    qa: dict             # dataset name -> QaData, for the QA tasks the user gave files for


@dataclasses.dataclass(frozen=True)
class Sample:
    message: str          # the user's turn
    answer_prefix: str    # the start of the assistant's turn
    outputs: tuple        # what a correct answer contains


@functools.lru_cache(maxsize=1)
def _wonderwords() -> dict[str, list[str]]:
    try:
        import wonderwords
    except ImportError as e:
        raise MissingDependencyError("RULER's words come from wonderwords: "
                                     "pip install 'ringkit[eval]'") from e
    r = wonderwords.RandomWord()
    return {c: sorted(set(r.filter(include_categories=[c]))) for c in ("noun", "adjective",
                                                                        "verb")}


@functools.lru_cache(maxsize=1)
def _list_words() -> list[str]:
    w = _wonderwords()
    words = sorted(set(w["noun"]) | set(w["adjective"]) | set(w["verb"]))
    np.random.default_rng(42).shuffle(words)
    return words


def _distinct(rng, n: int, draw) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        x = draw(rng)
        if x not in out:
            out.append(x)
    return out


def _value(kind: str):
    if kind == "numbers":
        return lambda rng: str(int(rng.integers(1_000_000, 10_000_000)))
    if kind == "uuids":
        return lambda rng: str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
    if kind == "words":  # adjective-noun, as RULER's keys
        adjectives, nouns = _wonderwords()["adjective"], _wonderwords()["noun"]
        return lambda rng: (f"{adjectives[int(rng.integers(len(adjectives)))]}-"
                            f"{nouns[int(rng.integers(len(nouns)))]}")
    raise AssertionError(kind)


@dataclasses.dataclass(frozen=True)
class Niah:
    """Needles ``One of the special magic {values} for {key} is: {value}.`` in a haystack of
    repeated noise, essay sentences, or distractor needles; the question asks for ``queries``
    keys' values (``values`` each)."""

    haystack: str  # "noise" | "essay" | "needle"
    keys: str = "words"
    values: str = "numbers"
    n_keys: int = 1
    n_values: int = 1
    n_queries: int = 1
    tokens_to_generate: int = 128
    metric: str = "all"

    def sample(self, rng, size: int, env: Env) -> Sample:
        key, value = _value(self.keys), _value(self.values)
        n_keys = max(self.n_keys, self.n_queries)
        keys = _distinct(rng, n_keys, key)
        values = [[value(rng) for _ in range(self.n_values)] for _ in keys]
        needles = [NIAH_NEEDLE.format(kind=self.values, key=k, value=v)
                   for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        if self.haystack == "essay":
            essay = env.essay
            start = int(rng.integers(len(essay)))
            sents = [essay[(start + i) % len(essay)] for i in range(size)]
            at = sorted(int(size * d / 100) for d in rng.choice(DEPTHS, len(needles),
                                                                  replace=False))
            for shift, (i, needle) in enumerate(zip(at, needles)):
                sents.insert(i + shift, needle)
            context = " ".join(sents)
        else:
            if self.haystack == "noise":
                lines = [NOISE] * size
            else:
                lines = [NIAH_NEEDLE.format(kind=self.values, key=key(rng), value=value(rng))
                         for _ in range(size)]
            for i, needle in zip(sorted(rng.choice(size + 1, len(needles), replace=False),
                                        reverse=True), needles):
                lines.insert(int(i), needle)
            context = "\n".join(lines)
        asked = sorted(rng.choice(n_keys, self.n_queries, replace=False))
        queries = [keys[i] for i in asked]
        query = (queries[0] if len(queries) == 1
                 else ", ".join(queries[:-1]) + ", and " + queries[-1])
        kind, template, prefix = self.values, NIAH_TEMPLATE, NIAH_PREFIX
        if self.n_queries * self.n_values == 1:  # singular wording for a single answer
            kind = kind[:-1]
            template = (template.replace("Some", "A").replace("are all", "is")
                        .replace("are", "is").replace("answers", "answer"))
            prefix = prefix.replace("are", "is")
        return Sample(template.format(kind=kind, context=context, query=query),
                      prefix.format(kind=kind, query=query),
                      tuple(v for i in asked for v in values[i]))


VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following "
               "text.\n\n{context}\nQuestion: Find all variables that are assigned the value "
               "{value} in the text above.")
VT_PREFIX = ("Answer: According to the chain(s) of variable assignment in the text above, "
             "{n} variables are assigned the value {value}, they are:")


@dataclasses.dataclass(frozen=True)
class VariableTracking:
    """``VAR ABCDE = 12345`` then ``VAR FGHIJ = VAR ABCDE`` for ``hops`` hops, scattered in
    noise; the answer names every variable in the chain. One worked example comes first, as in
    RULER."""

    chains: int = 1
    hops: int = 4
    tokens_to_generate: int = 30
    metric: str = "all"

    def _one(self, rng, size: int) -> tuple[str, str, list[str]]:
        letters = np.array(list(string.ascii_uppercase))
        names = _distinct(rng, self.chains * (self.hops + 1),
                          lambda r: "".join(r.choice(letters, 5)))
        lines = [NOISE] * size
        first = None
        for c in range(self.chains):
            chain = names[c * (self.hops + 1):(c + 1) * (self.hops + 1)]
            number = int(rng.integers(10_000, 100_000))
            first = first or (chain, number)
            steps = [f"VAR {chain[0]} = {number}"] + [
                f"VAR {chain[j + 1]} = VAR {chain[j]}" for j in range(self.hops)]
            at = sorted(int(i) for i in rng.choice(size + 1, len(steps), replace=True))
            for shift, (i, step) in enumerate(zip(at, steps)):
                lines.insert(i + shift, step)
        chain, number = first
        message = VT_TEMPLATE.format(context="\n".join(lines), value=number)
        return message, VT_PREFIX.format(n=self.hops + 1, value=number), chain

    def sample(self, rng, size: int, env: Env) -> Sample:
        example, prefix, chain = self._one(rng, 4)
        message, answer_prefix, answer = self._one(rng, size)
        shown = f"{example}\n{prefix} {' '.join(chain)}\n\n"
        return Sample(shown + message, answer_prefix, tuple(answer))


CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than "
                "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are "
                "the 10 most common words in the above list?")
CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"


@dataclasses.dataclass(frozen=True)
class CommonWords:
    """A numbered list where ``common`` words appear ``often`` times and the rest ``rarely``;
    name the common ones. Below 4K tokens RULER uses 6 and 1 repeats; one worked example first."""

    common: int = 10
    often: int = 30
    rarely: int = 3
    tokens_to_generate: int = 120
    metric: str = "all"

    def _list(self, rng, n_words: int, often: int, rarely: int) -> tuple[str, list[str]]:
        pool = _list_words()
        words = [pool[int(i)] for i in rng.choice(len(pool), min(n_words, len(pool)),
                                                   replace=False)]
        common = words[:self.common]
        listed = common * often + words[self.common:] * rarely
        rng.shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def limit(self, env: Env) -> int:
        return len(_list_words()) - self.common

    def sample(self, rng, size: int, env: Env) -> Sample:
        short = env.length < 4096
        often, rarely, ex = (6, 1, (20, 3, 1)) if short else (self.often, self.rarely, (40, 10, 3))
        example, answer = self._list(rng, *ex)
        context, common = self._list(rng, self.common + size, often, rarely)
        shown = (CWE_TEMPLATE.format(context=example) + "\n" + CWE_PREFIX + " "
                 + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)) + "\n\n")
        return Sample(shown + CWE_TEMPLATE.format(context=context), CWE_PREFIX, tuple(common))


FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find "
                "the three most frequently appeared coded words. {context}\nQuestion: Do not "
                "provide any explanation. Please ignore the dots '....'. What are the three most "
                "frequently appeared words in the above coded text?")
FWE_PREFIX = ("Answer: According to the coded text above, the three most frequently appeared "
              "words are:")


@dataclasses.dataclass(frozen=True)
class FrequentWords:
    """Coded words (6 random letters) drawn with Zipf frequencies (``alpha``); name the three
    most frequent after the top one, which is noise (``...``)."""

    alpha: float = 2.0
    word_length: int = 6
    tokens_to_generate: int = 50
    metric: str = "all"

    def sample(self, rng, size: int, env: Env) -> Sample:
        vocab = max(env.length // 50, 8)
        letters = np.array(list(string.ascii_lowercase))
        words = _distinct(rng, vocab, lambda r: "".join(r.choice(letters, self.word_length)))
        words[0] = "..."
        k = np.arange(1, vocab + 1)
        counts = (size * k ** -self.alpha / _zeta(self.alpha)).astype(int)
        text = [w for w, c in zip(words, counts) for _ in range(c)]
        rng.shuffle(text)
        return Sample(FWE_TEMPLATE.format(context=" ".join(text)), FWE_PREFIX, tuple(words[1:4]))


def _zeta(a: float) -> float:
    k = np.arange(1, 1_000_001, dtype=np.float64)
    return float(np.sum(k ** -a) + 1_000_000 ** (1 - a) / (a - 1))  # with the tail's integral


QA_INSTRUCTION = ("Answer the question based on the given documents. Only give me the answer and "
                  "do not output any other words.")
QA_TEMPLATE = (QA_INSTRUCTION + "\n\nThe following are given documents.\n\n{context}\n\n"
               + QA_INSTRUCTION + "\n\nQuestion: {query}")


@dataclasses.dataclass(frozen=True)
class QuestionAnswering:
    """Documents (the question's own among ``size`` others, shuffled) and a question; the answer
    must contain one of the reference answers. Data: SQuAD (qa_1) or HotpotQA (qa_2) files."""

    dataset: str  # "squad" | "hotpotqa"
    tokens_to_generate: int = 32
    metric: str = "part"

    def limit(self, env: Env) -> int:
        return len(env.qa[self.dataset].documents) - 1

    def sample(self, rng, size: int, env: Env) -> Sample:
        data = env.qa[self.dataset]
        q = data.questions[int(rng.integers(len(data.questions)))]
        others = [i for i in rng.permutation(len(data.documents)) if i not in q["documents"]]
        chosen = list(q["documents"]) + [int(i) for i in others[:size]]
        rng.shuffle(chosen)
        context = "\n\n".join(f"Document {n + 1}:\n{data.documents[i]}"
                              for n, i in enumerate(chosen))
        return Sample(QA_TEMPLATE.format(context=context, query=q["question"]), "Answer:",
                      tuple(q["answers"]))


@dataclasses.dataclass(frozen=True)
class QaData:
    """Questions (each: ``question``, ``answers``, indices of its ``documents``) over a shared
    pool of ``documents``."""

    name: str
    questions: list
    documents: list


def load_qa(dataset: str, path) -> QaData:
    """Read SQuAD or HotpotQA from a local file: the original JSON releases, or JSON/JSONL/
    Parquet rows in the Hugging Face layouts (``squad``/``squad_v2``; ``hotpot_qa``), read with
    ``datasets``. Unanswerable SQuAD questions are dropped."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise SourceError(f"{dataset} data {path}: no such file")
    rows = _rows(path)
    docs: dict[str, int] = {}
    questions = []

    def doc(text: str) -> int:
        return docs.setdefault(text.strip(), len(docs))

    try:
        if dataset == "squad":
            for r in rows:
                answers = sorted({a for a in r["answers"]["text"] if a})
                if answers:
                    questions.append(dict(question=r["question"], answers=answers,
                                          documents=[doc(r["context"])]))
        else:
            for r in rows:
                ctx = r["context"]
                pairs = (zip(ctx["title"], ctx["sentences"]) if isinstance(ctx, dict)
                         else ((t, s) for t, s in ctx))
                ids = [doc(f"{t}\n{''.join(s)}") for t, s in pairs]
                questions.append(dict(question=r["question"], answers=[r["answer"]],
                                      documents=ids))
    except (KeyError, TypeError) as e:
        raise SourceError(f"{path} does not look like {dataset} data (missing {e}): give the "
                          "original JSON release or rows in the Hugging Face layout") from e
    if not questions:
        raise SourceError(f"{path}: no answerable {dataset} questions")
    return QaData(dataset, questions, list(docs))


def _rows(path: pathlib.Path) -> list[dict]:
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"{path} is not valid JSON: {e}") from e
        if isinstance(raw, dict) and "data" in raw:  # SQuAD's release: articles > paragraphs
            return [dict(question=qa["question"], context=p["context"],
                         answers=dict(text=[a["text"] for a in qa.get("answers", [])]))
                    for art in raw["data"] for p in art["paragraphs"] for qa in p["qas"]]
        if isinstance(raw, list):  # HotpotQA's release
            return raw
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError("reading QA files needs datasets: pip install datasets") from e
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
        path.suffix)
    if kind is None:
        raise SourceError(f"{path}: give a .json, .jsonl, .parquet or .csv file")
    return list(datasets.load_dataset(kind, data_files=str(path), split="train"))


TASKS = {
    "niah_single_1": Niah("noise"),
    "niah_single_2": Niah("essay"),
    "niah_single_3": Niah("essay", values="uuids"),
    "niah_multikey_1": Niah("essay", n_keys=4),
    "niah_multikey_2": Niah("needle"),
    "niah_multikey_3": Niah("needle", keys="uuids", values="uuids"),
    "niah_multivalue": Niah("essay", n_values=4),
    "niah_multiquery": Niah("essay", n_queries=4),
    "vt": VariableTracking(),
    "cwe": CommonWords(),
    "fwe": FrequentWords(),
    "qa_1": QuestionAnswering("squad"),
    "qa_2": QuestionAnswering("hotpotqa"),
}
SYNTHETIC = tuple(t for t in TASKS if not t.startswith("qa"))
GROUPS = {"all": SYNTHETIC, "niah": tuple(t for t in TASKS if t.startswith("niah"))}


def task_names(tasks) -> list[str]:
    """Task names from names and group names (``"all"``: the 11 synthetic tasks, ``"niah"``)."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for n in names:
        for t in GROUPS.get(n, (n,)):
            if t not in TASKS:
                raise ConfigError(f"unknown RULER task {t!r}: choose from {', '.join(TASKS)} "
                                  f"or the groups {', '.join(GROUPS)}")
            if t not in out:
                out.append(t)
    if not out:
        raise ConfigError("no RULER task given")
    return out
