"""Text generation: prefill through ring attention, then sharded-KV decode steps.

Greedy decoding (``temperature=0``) or temperature / top-p sampling with a seed; stops at the
model's end-of-sequence tokens, at any of ``stop`` strings, or after ``max_new_tokens``; streams
text pieces to a callback as they are decoded. Several prompts run as one left-padded batch.

Example::

    model = ringkit.load_model()
    model.generate("Name three colours.", max_new_tokens=32)
    model.generate(["Hi!", "What is 2+2?"], temperature=0.7, top_p=0.9, seed=1)
    model.generate("Tell me a story.", stream=lambda piece, row: print(piece, end=""))
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ringkit.errors import ConfigError


@jax.jit
def greedy(logits):
    """The most likely token ids ``int32 [b]`` from ``logits [b, vocab]``."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@jax.jit
def sample(logits, key, temperature, top_p):
    """Next token ids ``int32 [b]`` drawn from ``logits [b, vocab]`` at ``temperature`` (> 0)
    from the smallest set of tokens whose probability reaches ``top_p``. Greedy decoding uses
    ``greedy``: XLA:CPU's sort of a 49K vocabulary costs ~20 ms a row, a step of a small model."""
    scaled = logits / temperature

    def nucleus(scaled):
        sorted_logits = jnp.sort(scaled, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p  # the top token always stays
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(scaled >= cutoff, scaled, -jnp.inf)

    masked = jax.lax.cond(top_p < 1, nucleus, lambda x: x, scaled)
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
                 vision_rows=None) -> list[list[int]]:
    """Generate from token ``rows``; returns the new ids of each row (stop text cut off)."""
    check_sampling(max_new_tokens, temperature, top_p)
    logits, cache = model.prefill(rows, max_new_tokens=max_new_tokens, vision_rows=vision_rows)
    return decode(model, logits, cache, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, seed=seed, stop=stop, stream=stream)


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    numbers = all(isinstance(x, (int, float, np.number)) and not isinstance(x, bool)
                  for x in (temperature, top_p))
    if not numbers or not temperature >= 0 or not 0 < top_p <= 1:
        raise ConfigError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature!r}, "
                          f"{top_p!r}")


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
           stream: Callable[[str, int], None] | None = None) -> list[list[int]]:
    """Sample from ``logits [b, vocab]`` and step ``cache`` until every row ends: the decode
    loop of ``generate_ids``, also used to answer on top of a prefilled context."""
    tok = model.tokenizer
    eos = set(tok.eos_ids)
    filler = next(iter(eos), 0)
    key = jax.random.key(seed)
    b = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(b)]
    texts = [""] * b
    done = np.zeros(b, bool)
    for step in range(max_new_tokens):
        tokens = np.asarray(greedy(logits) if temperature == 0 else sample(
            logits, jax.random.fold_in(key, step), jnp.float32(temperature), jnp.float32(top_p)))
        for r in np.flatnonzero(~done):
            t = int(tokens[r])
            if t in eos:
                done[r] = True
                continue
            out[r].append(t)
            if stream is None and not stop:
                continue
            text = tok.decode(out[r])
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text, done[r] = text[:cut], True
            if stream is not None and not text.endswith("\ufffd") and len(text) > len(texts[r]):
                stream(text[len(texts[r]):], int(r))
            texts[r] = text if not text.endswith("\ufffd") else texts[r]
            if done[r]:
                out[r] = _trim_to_text(tok, out[r], text)
        if done.all() or step == max_new_tokens - 1:
            break
        logits = model.step(cache, np.where(done, filler, tokens).astype(np.int32))
    return out


def _trim_to_text(tok, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of ``ids`` whose decoding covers ``text`` (drops a stop string)."""
    for n in range(len(ids) + 1):
        if len(tok.decode(ids[:n])) >= len(text):
            return ids[:n]
    return ids


def generate(model, prompts, *, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, seed: int = 0, stop: Sequence[str] | str = (),
             stream: Callable[[str, int], None] | None = None, chat: bool | None = None,
             system: str | None = None):
    """Generate text for one prompt (returns ``str``) or a list of prompts (returns ``list``).

    Args:
      prompts: a string, a list of strings, or token-id lists (used as they are).
      max_new_tokens: at most this many new tokens per prompt.
      temperature, top_p, seed: sampling (``temperature=0`` is greedy and ignores the others).
      stop: strings that end a generation (not included in the result).
      stream: ``callback(text_piece, prompt_index)`` called as text is produced.
      chat: wrap strings in the model's chat template (default: when it has one); ``system`` is
        an optional system message.
    """
    single = isinstance(prompts, str) or (
        len(prompts) > 0 and all(isinstance(t, (int, np.integer)) for t in prompts))
    batch = [prompts] if single else list(prompts)
    stop = stop_strings(stop)
    rows = _rows(model, batch, chat, system)
    ids = generate_ids(model, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, seed=seed, stop=stop, stream=stream)
    texts = [model.tokenizer.decode(r) for r in ids]
    for i, text in enumerate(texts):
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        texts[i] = text if cut < 0 else text[:cut]
    return texts[0] if single else texts
