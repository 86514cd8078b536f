"""RULER's task generators (Hsieh et al., 2024), built offline.

Each task turns ``(rng, size)`` into a ``Sample``: the user's message, the start of the answer
(RULER steers the answer with it) and the strings a correct answer contains. ``size`` is the
task's unit of haystack (essay words, noise lines, distractor needles, list words, documents);
``ruler.py`` picks the largest size that fits the requested length. Texts, answer prefixes
(their leading spaces included), value formats, worked examples and distractor choices follow
NVIDIA/RULER's ``scripts/data/synthetic/{constants,niah,variable_tracking,
common_words_extraction,freq_words_extraction,qa}.py``; the essay haystack is a public-domain
text (Shakespeare by default) where RULER uses Paul Graham's essays (``haystack=`` takes RULER's
``PaulGrahamEssays.json``), sentences are split by ringkit's splitter where RULER calls NLTK's,
and the words come from ``wonderwords``, RULER's own word lists.
"""

from __future__ import annotations

import dataclasses
import functools
import string
import uuid

import numpy as np

from ringkit.errors import ConfigError, MissingDependencyError
from ringkit.eval.haystack import sentences

# Texts and answer prefixes as in RULER's scripts/data/synthetic/constants.py (the prefixes'
# leading spaces are RULER's: the prompt is the template, then the prefix, nothing between).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {kind} are hidden within the following text. Make sure to "
                 "memorize it. I will quiz you about the {kind} afterwards.\n{context}\n"
                 "What are all the special magic {kind} for {query} mentioned in the provided "
                 "text?")
NIAH_PREFIX = " The special magic {kind} for {query} mentioned in the provided text are"
DEPTHS = np.round(np.linspace(0, 100, 40)).astype(int)  # where essay needles may sit, in %


@dataclasses.dataclass(frozen=True)
class Env:
    """What a task may draw on besides its random numbers."""

    essay: list          # words of the essay haystack (RULER: re.sub(r"\s+", " ", text).split(" "))
    length: int          # the requested length in tokens (CWE and FWE scale with it)
    qa: dict             # dataset name -> QaData, for the QA tasks the user gave files for
    tok: object = None   # the model's tokenizer (vt sizes its worked example with it)


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

    def sample(self, rng, size: int, env: Env, index: int = 0) -> Sample:
        key, value = _value(self.keys), _value(self.values)
        n_keys = max(self.n_keys, self.n_queries)
        keys = _distinct(rng, n_keys, key)
        values = [[value(rng) for _ in range(self.n_values)] for _ in keys]
        needles = [NIAH_NEEDLE.format(kind=self.values, key=k, value=v)
                   for k, vs in zip(keys, values) for v in vs]
        rng.shuffle(needles)
        if self.haystack == "essay":  # the essay's first ``size`` words, needles between sentences
            words = env.essay * (-(-size // len(env.essay)))
            sents = sentences(" ".join(words[:size]).strip())
            cuts = ([0] + sorted(int(len(sents) * d / 100)
                                 for d in rng.choice(DEPTHS, len(needles), replace=False))
                    + [len(sents)])
            parts = []
            for i, needle in enumerate(needles + [None]):
                parts.append(" ".join(sents[cuts[i]:cuts[i + 1]]))
                if needle is not None:
                    parts.append(needle)
            context = " ".join(parts)
        else:
            if self.haystack == "noise":
                lines = [NOISE] * size
            else:
                lines = [NIAH_NEEDLE.format(kind=self.values, key=key(rng), value=value(rng))
                         for _ in range(size)]
            at = rng.choice(max(size, len(needles)), len(needles), replace=False)
            for i, needle in zip(sorted(at, reverse=True), needles):
                lines.insert(int(i), needle)
            context = "\n".join(lines)
        asked = [int(i) for i in rng.choice(n_keys, self.n_queries, replace=False)]
        queries = [keys[i] for i in asked]
        query = (queries[0] if len(queries) == 1
                 else ", ".join(queries[:-1]) + ", and " + queries[-1])
        kind, template, prefix = self.values, NIAH_TEMPLATE, NIAH_PREFIX
        if self.n_queries * self.n_values == 1:  # RULER's singular wording for one answer
            kind = kind[:-1]
            template, prefix = (_singular(t) for t in (template, prefix))
        return Sample(template.format(kind=kind, context=context, query=query),
                      prefix.format(kind=kind, query=query),
                      tuple(v for i in asked for v in values[i]))


def _singular(text: str) -> str:
    return (text.replace("Some", "A").replace("are all", "is").replace("are", "is")
            .replace("answers", "answer"))


VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following "
               "text.\n\n{context}\nQuestion: Find all variables that are assigned the value "
               "{value} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, "
             "{n} variables are assigned the value {value}, they are: ")
VT_EXAMPLE_TOKENS = 500  # RULER sizes its worked example to fit 500 tokens


@dataclasses.dataclass(frozen=True)
class VariableTracking:
    """``VAR ABCDE = 12345`` then ``VAR FGHIJ = VAR ABCDE `` for ``hops`` hops, among noise lines
    at distinct positions; the answer names every variable in the first chain. A worked example
    (three-letter names, noise to fill 500 tokens) comes first, as in RULER."""

    chains: int = 1
    hops: int = 4
    tokens_to_generate: int = 30
    metric: str = "all"

    def _text(self, rng, size: int, letters: int) -> tuple[str, list[str]]:
        """The task's text with its answer prefix (``size`` noise lines), and the answer."""
        alphabet = np.array(list(string.ascii_uppercase))
        names = _distinct(rng, self.chains * (self.hops + 1),
                          lambda r: "".join(r.choice(alphabet, letters)))
        lines = [NOISE] * size
        first = None
        for c in range(self.chains):
            chain = names[c * (self.hops + 1):(c + 1) * (self.hops + 1)]
            number = str(int(rng.integers(10_000, 99_999)))
            first = first or (chain, number)
            steps = [f"VAR {chain[0]} = {number}"] + [
                f"VAR {chain[j + 1]} = VAR {chain[j]} " for j in range(self.hops)]
            at = sorted(rng.choice(max(len(lines), len(steps)), len(steps), replace=False))
            for j, (i, step) in enumerate(zip(at, steps)):
                lines.insert(int(i) + j, step)
        chain, number = first
        context = "\n".join(lines).replace(". \n", ".\n")
        return (VT_TEMPLATE.format(context=context, value=number)
                + VT_PREFIX.format(n=self.hops + 1, value=number)), chain

    def _example(self, rng, tok) -> str:
        """The worked example: its text, the answer after a space, a newline."""
        size = _example_size(self, tok)
        text, chain = self._text(rng, size, 3)
        return f"{text} {' '.join(chain)}\n"

    def sample(self, rng, size: int, env: Env, index: int = 0) -> Sample:
        example = self._example(rng, env.tok)
        text, answer = self._text(rng, size, 5)
        at = text.rindex(VT_PREFIX[:10])
        return Sample(example + "\n" + text[:at], text[at:], tuple(answer))


_EXAMPLE_SIZES: dict = {}


def _example_size(task: VariableTracking, tok) -> int:
    """Noise lines in vt's worked example: the most that keep it within 500 tokens (RULER's
    binary search, once per tokenizer)."""
    key = (task, tok.digest if tok is not None else None)
    if key not in _EXAMPLE_SIZES:
        if tok is None:
            _EXAMPLE_SIZES[key] = 5
        else:
            def tokens(n):
                text, _ = task._text(np.random.default_rng(0), n, 3)
                return len(tok.encode(text, add_bos=False, literal=True))

            lo, hi = 5, 6
            while tokens(hi) <= VT_EXAMPLE_TOKENS:
                lo, hi = hi, hi * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if tokens(mid) <= VT_EXAMPLE_TOKENS else (lo, mid)
            _EXAMPLE_SIZES[key] = lo
    return _EXAMPLE_SIZES[key]


CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than "
                "others. Memorize the ones that appear most often.\n{context}\nQuestion: What are "
                "the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"


@dataclasses.dataclass(frozen=True)
class CommonWords:
    """A numbered list where ``common`` words appear ``often`` times and the rest ``rarely``;
    name the common ones. Below 4K tokens RULER uses 6 and 1 repeats; one worked example first
    (its template, prefix and answer, then a newline)."""

    common: int = 10
    often: int = 30
    rarely: int = 3
    tokens_to_generate: int = 120
    metric: str = "all"

    def _list(self, rng, n_words: int, often: int, rarely: int) -> tuple[str, list[str]]:
        pool = _list_words()
        words = [pool[int(i)] for i in rng.choice(len(pool), n_words, replace=False)]
        common = words[:self.common]
        listed = common * often + words[self.common:] * rarely
        rng.shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), common

    def limit(self, env: Env) -> int:
        """RULER's word list runs out here; past it RULER draws from english_words.json, a
        list ringkit does not ship (``build_sample`` then says how far the length can go)."""
        return len(_list_words()) - self.common

    def sample(self, rng, size: int, env: Env, index: int = 0) -> Sample:
        short = env.length < 4096
        often, rarely, ex = (6, 1, (20, 3, 1)) if short else (self.often, self.rarely, (40, 10, 3))
        example, answer = self._list(rng, *ex)
        context, common = self._list(rng, self.common + size, often, rarely)
        shown = (CWE_TEMPLATE.format(context=example) + CWE_PREFIX + " "
                 + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer)) + "\n")
        return Sample(shown + CWE_TEMPLATE.format(context=context), CWE_PREFIX, tuple(common))


FWE_TEMPLATE = ("Read the following coded text and track the frequency of each coded word. Find "
                "the three most frequently appeared coded words. {context}\nQuestion: Do not "
                "provide any explanation. Please ignore the dots '....'. What are the three most "
                "frequently appeared words in the above coded text?")
FWE_PREFIX = (" Answer: According to the coded text above, the three most frequently appeared "
              "words are:")


@dataclasses.dataclass(frozen=True)
class FrequentWords:
    """Coded words (6 random letters) drawn with Zipf frequencies (``alpha``); name the three
    most frequent after the top one, which is noise (``...``)."""

    alpha: float = 2.0
    word_length: int = 6
    tokens_to_generate: int = 50
    metric: str = "all"

    def sample(self, rng, size: int, env: Env, index: int = 0) -> Sample:
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
    """Documents (the question's own, then other paragraphs of its article, then any others;
    shuffled) and a question; the answer must contain one of the reference answers. Sample
    ``i`` asks the file's question ``i``, as RULER does. Data: SQuAD (qa_1) or HotpotQA (qa_2)."""

    dataset: str  # "squad" | "hotpotqa"
    tokens_to_generate: int = 32
    metric: str = "part"

    def limit(self, env: Env) -> int:
        return len(env.qa[self.dataset].documents) - 1

    def sample(self, rng, size: int, env: Env, index: int = 0) -> Sample:
        data = env.qa[self.dataset]
        q = data.questions[index % len(data.questions)]
        own = list(q["documents"])
        related = [d for d in q.get("related", ()) if d not in own]
        if size > len(related):  # the whole article, then documents from anywhere
            taken = set(own) | set(related)
            others = [i for i in range(len(data.documents)) if i not in taken]
            extra = rng.choice(len(others), min(size - len(related), len(others)), replace=False)
            chosen = own + related + [others[int(i)] for i in extra]
        else:
            chosen = own + [related[int(i)] for i in rng.choice(len(related), size,
                                                                replace=False)]
        rng.shuffle(chosen)
        context = "\n\n".join(f"Document {n + 1}:\n{data.documents[i]}"
                               for n, i in enumerate(chosen))
        return Sample(QA_TEMPLATE.format(context=context, query=q["question"]), " Answer:",
                      tuple(q["answers"]))


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
    if not isinstance(tasks, (str, list, tuple)):
        raise ConfigError(f"tasks must be a task name or a list of them, got {tasks!r:.60}")
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
