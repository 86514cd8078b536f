"""Fuzzing the readers of untrusted files: a ``RingkitError`` or a correct result, never another
exception. Seeded (``derandomize``), so a run is reproducible, and sized to run in seconds."""

import json
import os
import pathlib
import struct
import tempfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra)")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import ringkit as rk  # noqa: E402
from ringkit.errors import RingkitError  # noqa: E402
from ringkit.inputs.book import decode_text, looks_binary  # noqa: E402
from ringkit.model.weights import gguf_file  # noqa: E402
from ringkit.model.weights.gguf import config_from_fields, read_gguf  # noqa: E402
from ringkit.model.weights.hf import read_safetensors  # noqa: E402

FUZZ = settings(derandomize=True, deadline=None, max_examples=150, database=None,
                suppress_health_check=list(HealthCheck))


def _valid_gguf() -> bytes:
    """A small complete llama GGUF: every field and tensor kind the loader reads."""
    import gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "m.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        for key, value in (("context_length", 64), ("embedding_length", 8), ("block_count", 1),
                           ("feed_forward_length", 16), ("attention.head_count", 2),
                           ("attention.head_count_kv", 1), ("vocab_size", 6)):
            w.add_uint32(f"llama.{key}", value)
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["a", "b", "c", "d", "e", "f"])
        w.add_token_types([1] * 6)
        rng = np.random.default_rng(0)
        shapes = {"token_embd": (6, 8), "output_norm": (8,), "blk.0.attn_norm": (8,),
                  "blk.0.ffn_norm": (8,), "blk.0.attn_q": (8, 8), "blk.0.attn_k": (4, 8),
                  "blk.0.attn_v": (4, 8), "blk.0.attn_output": (8, 8),
                  "blk.0.ffn_gate": (16, 8), "blk.0.ffn_up": (16, 8), "blk.0.ffn_down": (8, 16)}
        for name, shape in shapes.items():
            w.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path.read_bytes()


GGUF = _valid_gguf()


def _mutate(data: bytes, edits) -> bytes:
    """Apply ``(kind, position, value)`` edits: overwrite a byte, cut, or insert bytes."""
    out = bytearray(data)
    for kind, where, value in edits:
        at = where % (len(out) + 1)
        if kind == 0 and out:
            out[at % len(out)] = value
        elif kind == 1:
            del out[at:]
        elif kind == 2:
            out[at:at] = bytes([value]) * (1 + value % 9)
        elif kind == 3 and len(out) >= at + 8:  # a plausible little-endian number: sizes, counts
            out[at:at + 8] = struct.pack("<Q", (value * 0x0101010101) % (1 << 64))
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
                 min_size=1, max_size=4)


def _write(data: bytes, suffix: str) -> pathlib.Path:
    fd, name = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return pathlib.Path(name)


@FUZZ
@given(EDITS)
def test_gguf_reader(edits):
    path = _write(_mutate(GGUF, edits), ".gguf")
    try:
        fields, tensors = gguf_file.read(path)
        config_from_fields(fields, "fuzz")
        config, weights, _ = read_gguf(path)
        assert weights["embed"].shape[0] == config.vocab_size
    except RingkitError:
        pass
    finally:
        path.unlink()


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-5, 1 << 40) | st.text(max_size=6),
                       lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "X"]) | JSONISH,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | JSONISH,
    "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2) | JSONISH})


@FUZZ
@given(st.dictionaries(st.text(max_size=8), ENTRY | JSONISH, max_size=3),
       st.binary(max_size=80), EDITS | st.just([]))
def test_safetensors_header_reader(header, data, edits):
    path = _write(_mutate(_safetensors(header, data), edits) if edits else
                  _safetensors(header, data), ".safetensors")
    try:
        for name, array in read_safetensors(path).items():
            info = header[name]
            assert array.shape == tuple(info["shape"])  # what it returns is what was declared
            assert array.nbytes == info["data_offsets"][1] - info["data_offsets"][0]
    except RingkitError:
        pass
    finally:
        path.unlink()


TEXTS = st.text(max_size=200)
ENCODINGS = st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-16", "utf-32", "cp1252",
                             "cp1251", "shift_jis", "gb18030", "latin-1"])


@FUZZ
@given(st.binary(max_size=400) | st.tuples(TEXTS, ENCODINGS).map(
    lambda te: te[0].encode(te[1], errors="replace")), EDITS | st.just([]))
def test_text_decoder(data, edits):
    data = _mutate(data, edits) if edits else data
    try:
        text = decode_text(data, "fuzz.txt")
    except RingkitError:
        return
    assert isinstance(text, str) and "\x00" not in text  # never a NUL in a document
    assert not looks_binary(data) or data.startswith((b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf"))


NAMES = st.sampled_from(["a.py", "b.txt", ".env", "x", "dir", "sub", ".gitignore", "id_rsa",
                         "data.bin", "é.md", "a b.rs", "node_modules", ".git", "README.md"])
NODE = st.tuples(st.lists(NAMES, min_size=1, max_size=3), st.sampled_from(
    ["file", "dir", "link", "binary"]), st.binary(max_size=60) | TEXTS.map(str.encode),
    st.lists(NAMES, min_size=1, max_size=3) | st.sampled_from([[".."], ["."], ["/"]]))


@settings(derandomize=True, deadline=None, max_examples=60, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(NODE, min_size=1, max_size=8), st.booleans())
def test_source_tree_walker(nodes, include_secrets):
    """Random trees of files, folders, binaries, .gitignore rules of random text and symlinks
    anywhere (loops, outside the root, to folders): a Document or a RingkitError."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "tree"
        root.mkdir()
        for parts, kind, content, target in nodes:
            path = root.joinpath(*parts)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if kind == "dir":
                    path.mkdir(exist_ok=True)
                elif kind == "link":
                    os.symlink(root.joinpath(*target) if target != ["/"] else "/", path)
                else:
                    path.write_bytes(content + (b"\0" if kind == "binary" else b""))
            except OSError:
                continue  # a name already taken by another kind: the tree is what it is
        try:
            doc = rk.ingest(root, include_secrets=include_secrets)
        except RingkitError:
            return
        assert doc.segments and all(s.text for s in doc.segments)
        assert len(doc.files) == len(doc.segments)
