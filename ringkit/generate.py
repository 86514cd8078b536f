"""Text generation: prefill through ring attention, then sharded-KV decode steps.

Greedy decoding (``temperature=0``) or temperature / top-p sampling with a seed; stops at the
model's end-of-sequence tokens, at any of ``stop`` strings, or after ``max_new_tokens``; streams
text pieces to a callback as they are decoded. Several prompts run as one left-padded batch.

``loop_guard=True`` (the default of ``ringkit.ask``, off for ``generate``) also stops a row that
has fallen into a loop: when a span of ``LOOP_WORDS`` words appears for the third time, the
answer ends before that third copy (``LoopGuard``). A small model that does not know an answer
otherwise repeats itself until ``max_new_tokens``.

Example::

    model = ringkit.load_model()
    model.generate("Name three colours.", max_new_tokens=32)
    model.generate(["Hi!", "What is 2+2?"], temperature=0.7, top_p=0.9, seed=1)
    model.generate("Tell me a story.", stream=lambda piece, row: print(piece, end=""))
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ringkit.errors import ConfigError, is_whole


NUCLEUS_K = 256  # tokens top-p sampling looks at before sorting the whole vocabulary
LOOP_WORDS = 5  # a span of this many words seen a third time ends a guarded answer
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?:;](?=\s)|\n")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings a model's authors recommend (``model.sampling``), and where they say so;
    ``ringkit.ask`` uses them unless given ``temperature`` / ``top_p``."""

    temperature: float
    top_p: float
    source: str


class LoopGuard:
    """Finds where a growing text starts repeating itself.

    ``feed(text)`` returns None, or the character offset to cut ``text`` at once a span of
    ``words`` words (lower-cased, punctuation ignored) appears for the third time: the start of
    its second copy when the text between the copies repeated exactly (a loop: "X X X" keeps
    "X"), else the start of the third (what differs between the copies stays, "X A X B X" keeps
    "X A X B"), moved back to the end of a sentence or line where there is one. No span of
    ``words`` words then appears more than twice. ``hold(text)`` is how much of the text no
    later cut can take back, for streaming: whole sentences or lines.

    Example::

        guard = LoopGuard()
        text = "It is a little word. It is a little word. It is a little word."
        text[:guard.feed(text)]      # 'It is a little word. '
    """

    def __init__(self, words: int = LOOP_WORDS):
        self.n = words
        self._starts: dict[tuple, list[int]] = {}  # span -> character starts of its copies
        self._counted = 0  # complete words whose span (ending there) is counted
        self._run: int | None = None  # start of the repeats since the last new span

    def feed(self, text: str) -> int | None:
        words = list(_WORD.finditer(text))
        if words and words[-1].end() == len(text):
            words.pop()  # the last word may still grow
        lower = [w.group().lower() for w in words]
        for i in range(max(self._counted, self.n - 1), len(words)):
            self._counted = i + 1
            first = i - self.n + 1
            starts = self._starts.setdefault(tuple(lower[first:i + 1]), [])
            starts.append(words[first].start())
            if len(starts) == 1:
                self._run = None  # something new: not (yet) a loop
                continue
            if self._run is None:
                self._run = starts[-1]
            if len(starts) == 3:
                a, b, c = starts
                span = lambda x, y: [w.lower() for w in _WORD.findall(text[x:y])]
                return _sentence_end(text, b if span(a, b) == span(b, c) else c)
        return None

    def hold(self, text: str) -> int:
        """Characters of ``text`` that no later ``feed`` can cut: the sentences or lines that
        end before its last ``words`` words and before a run of repeats that may yet become
        a loop."""
        words = list(_WORD.finditer(text))
        upto = words[-self.n].start() if len(words) >= self.n else 0
        upto = upto if self._run is None else min(upto, self._run)
        return _sentence_end(text, upto, fallback=0)


def _sentence_end(text: str, upto: int, fallback: int | None = None) -> int:
    """The end of the last sentence or line of ``text[:upto]`` (``fallback``, default
    ``upto``, where none ends)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, upto)]
    return ends[-1] if ends else upto if fallback is None else fallback


@jax.jit
def greedy(logits):
    """The most likely token ids ``int32 [b]`` from ``logits [b, vocab]``."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def _cutoff(sorted_logits, total, top_p):
    """The smallest logit of the nucleus, from the largest logits in descending order and the
    log of the whole distribution's normaliser ``total``; +inf where they hold less than
    ``top_p`` of the probability."""
    probs = jnp.exp(sorted_logits - total)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the top token always stays
    enough = jnp.sum(probs, axis=-1, keepdims=True) >= top_p
    low = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(enough | ~keep[:, -1:], low, jnp.inf)


def nucleus(scaled, top_p):
    """``scaled [b, vocab]`` with every logit outside the top-p nucleus set to -inf. The nucleus
    almost always lies in the top ``NUCLEUS_K`` tokens, and XLA:CPU's top_k is ~10x cheaper
    than a sort of the vocabulary, which runs only where they hold too little."""
    total = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    low = _cutoff(jax.lax.top_k(scaled, min(NUCLEUS_K, scaled.shape[-1]))[0], total, top_p)
    low = jax.lax.cond(jnp.isinf(low).any(),
                       lambda: _cutoff(jnp.sort(scaled, axis=-1)[:, ::-1], total, top_p),
                       lambda: low)
    return jnp.where(scaled >= low, scaled, -jnp.inf)


@jax.jit
def sample(logits, key, temperature, top_p):
    """Next token ids ``int32 [b]`` drawn from ``logits [b, vocab]`` at ``temperature`` (> 0)
    from the smallest set of tokens whose probability reaches ``top_p`` (``nucleus``). Greedy
    decoding uses ``greedy``: XLA:CPU's sort of a 49K vocabulary costs ~20 ms a row, a step of
    a small model."""
    scaled = logits / temperature
    masked = jax.lax.cond(top_p < 1, lambda x: nucleus(x, top_p), lambda x: x, scaled)
    return jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)


def _rows(model, prompts, chat: bool | None, system: str | None):
    tok = model.tokenizer
    use_chat = tok.chat_template is not None if chat is None else chat
    rows = []
    for p in prompts:
        if isinstance(p, str):
            if use_chat:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": p}]
                rows.append(tok.apply_chat_template(messages, tokenize=True))
            else:
                rows.append(tok.encode(p))
        else:
            rows.append([int(t) for t in p])
    return rows


def generate_ids(model, rows: Sequence[Sequence[int]], *, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 stop: Sequence[str] = (), stream: Callable[[str, int], None] | None = None,
                 vision_rows=None, loop_guard: bool = False) -> list[list[int]]:
    """Generate from token ``rows``; returns the new ids of each row (stop text cut off)."""
    check_sampling(max_new_tokens, temperature, top_p)
    logits, cache = model.prefill(rows, max_new_tokens=max_new_tokens, vision_rows=vision_rows)
    return decode(model, logits, cache, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, stop=stop, stream=stream, loop_guard=loop_guard)


def sampling_for(model, temperature: float | None, top_p: float | None) -> tuple[float, float]:
    """``(temperature, top_p)``: as given, else what ``model.sampling`` recommends, else greedy.
    ``temperature=0`` is greedy whatever the model recommends."""
    rec = getattr(model, "sampling", None)
    if temperature is None:
        temperature = rec.temperature if rec is not None else 0.0
        top_p = top_p if top_p is not None else rec.top_p if rec is not None else 1.0
    return temperature, 1.0 if top_p is None else top_p


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    numbers = all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                  for x in (temperature, top_p))
    if not numbers or not 0 <= temperature < math.inf or not 0 < top_p <= 1:
        raise ConfigError(f"need a finite temperature >= 0 and 0 < top_p <= 1, got "
                          f"{temperature!r}, {top_p!r}")


def stop_strings(stop) -> tuple[str, ...]:
    """``stop`` (None, a string or strings) as a tuple of non-empty strings."""
    stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
    try:
        stop = tuple(stop)
    except TypeError:
        stop = (stop,)
    if not all(isinstance(s, str) and s for s in stop):
        raise ConfigError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stop


def decode(model, logits, cache, *, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
           stream: Callable[[str, int], None] | None = None,
           loop_guard: bool = False) -> list[list[int]]:
    """Sample from ``logits [b, vocab]`` and step ``cache`` until every row ends: the decode
    loop of ``generate_ids``, also used to answer on top of a prefilled context. With
    ``loop_guard`` a row also ends where it starts repeating itself (``LoopGuard``); its stream
    then runs ``LOOP_WORDS`` words behind, so it never shows what the guard cuts."""
    tok = model.tokenizer
    eos = set(tok.eos_ids)
    filler = next(iter(eos), 0)
    key = jax.random.key(seed)
    b = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(b)]
    shown = [0] * b  # characters of each row's text streamed so far
    guards = [LoopGuard() for _ in range(b)] if loop_guard else None
    done = np.zeros(b, bool)
    for step in range(max_new_tokens):
        tokens = np.asarray(greedy(logits) if temperature == 0 else sample(
            logits, jax.random.fold_in(key, step), jnp.float32(temperature), jnp.float32(top_p)))
        last = step == max_new_tokens - 1
        for r in np.flatnonzero(~done):
            t = int(tokens[r])
            if t in eos:
                done[r] = True
            else:
                out[r].append(t)
            if stream is None and not stop and guards is None:
                continue
            text = tok.decode(out[r])
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut < 0 and guards is not None and (loop := guards[r].feed(text)) is not None:
                cut = len(text[:loop].rstrip())
            if cut >= 0:
                text, done[r] = text[:cut], True
                out[r] = _trim_to_text(tok, out[r], text)
            upto = len(text)
            if guards is not None and not (done[r] or last):
                upto = guards[r].hold(text)
            if text[upto - 1:upto] == "\ufffd":  # half of a character's bytes
                upto = len(text[:upto].rstrip("\ufffd"))
            if stream is not None and upto > shown[r]:
                stream(text[shown[r]:upto], int(r))
                shown[r] = upto
        if done.all() or last:
            break
        logits = model.step(cache, np.where(done, filler, tokens).astype(np.int32))
    return out


def _trim_to_text(tok, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of ``ids`` whose decoding covers ``text`` (drops a stop string)."""
    for n in range(len(ids) + 1):
        if len(tok.decode(ids[:n])) >= len(text):
            return ids[:n]
    return ids


def check_seed(seed) -> None:
    if not is_whole(seed):
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r:.60}")


def _check_generate(model, prompts, stream, seed, system) -> None:
    """Refuse ``generate``'s arguments before any prefill runs."""
    if getattr(model, "tokenizer", None) is None:
        raise ConfigError("this model has no tokenizer to read prompts or write answers with "
                          "(Model.init_random without tokenizer=): pass one, or run token ids "
                          "through model.prefill and model.step")
    if not isinstance(prompts, (str, list, tuple, np.ndarray)) or len(prompts) == 0:
        raise ConfigError("prompts must be a string, a list of strings or a list of token-id "
                          f"lists, got {prompts!r:.60}")
    if not (stream is None or callable(stream)):
        raise ConfigError(f"stream must be a function taking (text_piece, prompt_index), got "
                          f"{stream!r:.60}")
    check_seed(seed)
    if not (system is None or isinstance(system, str)):
        raise ConfigError(f"system must be a string or None, got {system!r:.60}")


def generate(model, prompts, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, stop: Sequence[str] | str = (),
             stream: Callable[[str, int], None] | None = None, chat: bool | None = None,
             system: str | None = None, loop_guard: bool = False):
    """Generate text for one prompt (returns ``str``) or a list of prompts (returns ``list``).

    Args:
      prompts: a string, a list of strings, or token-id lists (used as they are).
      max_new_tokens: at most this many new tokens per prompt.
      temperature, top_p, seed: sampling (``temperature=0`` is greedy and ignores the others).
      stop: strings that end a generation (not included in the result).
      stream: ``callback(text_piece, prompt_index)`` called as text is produced.
      chat: wrap strings in the model's chat template (default: when it has one); ``system`` is
        an optional system message.
      loop_guard: end a row where it starts repeating itself (see ``LoopGuard``); off by
        default, so greedy decoding is exactly greedy.
    """
    _check_generate(model, prompts, stream, seed, system)
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and all(isinstance(t, (int, np.integer)) for t in prompts))
    batch = [prompts] if single else list(prompts)
    stop = stop_strings(stop)
    rows = _rows(model, batch, chat, system)
    ids = generate_ids(model, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, stop=stop, stream=stream, loop_guard=loop_guard)
    texts = [model.tokenizer.decode(r) for r in ids]
    for i, text in enumerate(texts):
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        texts[i] = text if cut < 0 else text[:cut]
    return texts[0] if single else texts
