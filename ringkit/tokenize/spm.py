"""SentencePiece BPE models (LLaMA / LWM ``tokenizer.model``) as HF ``tokenizers`` objects.

The ``.model`` file is a protobuf ``ModelProto``; the few fields needed (pieces with scores and
types, model type, byte fallback, special ids, dummy prefix) are read with a small wire-format
parser, so neither ``sentencepiece`` nor ``protobuf`` is needed. SentencePiece BPE merges the
adjacent pair whose merged piece scores highest, which is BPE with merges ranked by that score.
"""

from __future__ import annotations

import struct
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, normalizers

from ringkit.errors import FormatError, UnsupportedError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of one protobuf message."""
    i, n = 0, len(buf)

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            if i >= n:
                raise FormatError("truncated protobuf varint")
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            yield field, wire, varint()
        elif wire == 1:
            yield field, wire, buf[i:i + 8]
            i += 8
        elif wire == 2:
            size = varint()
            if i + size > n:
                raise FormatError("truncated protobuf field")
            yield field, wire, buf[i:i + size]
            i += size
        elif wire == 5:
            yield field, wire, buf[i:i + 4]
            i += 4
        else:
            raise FormatError(f"unsupported protobuf wire type {wire}")


def parse_model(data: bytes) -> dict:
    """The fields of a SentencePiece ``ModelProto`` that tokenization needs."""
    pieces, trainer, normalizer = [], {}, {}
    for field, _, value in _fields(data):
        if field == 1:
            piece = {"piece": "", "score": 0.0, "type": NORMAL}
            for f, _, v in _fields(value):
                if f == 1:
                    piece["piece"] = v.decode("utf-8")
                elif f == 2:
                    piece["score"] = struct.unpack("<f", v)[0]
                elif f == 3:
                    piece["type"] = v
            pieces.append(piece)
        elif field == 2:
            trainer = {f: v for f, _, v in _fields(value)}
        elif field == 3:
            normalizer = {f: v for f, _, v in _fields(value)}
    if not pieces:
        raise FormatError("no pieces: not a SentencePiece model")
    return {"pieces": pieces, "model_type": trainer.get(3, 1), "byte_fallback": bool(
        trainer.get(35, 0)), "unk_id": trainer.get(40, 0), "bos_id": trainer.get(41, 1),
        "eos_id": trainer.get(42, 2), "add_dummy_prefix": bool(normalizer.get(3, 1)),
        "normalizer": bytes(normalizer.get(1, b"identity")).decode(),
        "remove_extra_whitespaces": bool(normalizer.get(4, 1))}


def spm_bpe_tokenizer(tokens, scores, types, *, add_dummy_prefix: bool = True,
                      byte_fallback: bool | None = None, unk_id: int = 0,
                      normalizer: str = "identity",
                      remove_extra_whitespaces: bool = False) -> tokenizers.Tokenizer:
    """A ``tokenizers`` BPE equivalent to a SentencePiece BPE vocabulary."""
    vocab = {t: i for i, t in enumerate(tokens)}
    if byte_fallback is None:
        byte_fallback = any(k == BYTE for k in types)
    # A piece is a merge of two shorter pieces; rank merges by the merged piece's score.
    ranked = []
    for piece, score, kind in zip(tokens, scores, types):
        if kind not in (NORMAL, USER_DEFINED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    unk = tokens[unk_id] if 0 <= unk_id < len(tokens) else None
    backend = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                              byte_fallback=byte_fallback))
    steps = []
    if normalizer.startswith("nmt_nfkc") or normalizer.startswith("nfkc"):
        # NFKC, plus the whitespace folding of SentencePiece's nmt rules (control chars -> space)
        steps += [normalizers.NFKC(), normalizers.Replace(Regex(r"[\t\n\r\f\v]"), " ")]
    elif normalizer != "identity":
        raise UnsupportedError(f"SentencePiece normalizer {normalizer!r} is not supported "
                               "(identity, nmt_nfkc)")
    if remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if add_dummy_prefix:
        steps.append(normalizers.Prepend("\u2581"))
    steps.append(normalizers.Replace(" ", "\u2581"))
    backend.normalizer = normalizers.Sequence(steps)
    parts = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_dummy_prefix:
        parts.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(parts)
    return backend


def read_sentencepiece(path) -> tuple[tokenizers.Tokenizer, str | None, str | None]:
    """``(tokenizer, bos_token, eos_token)`` of a SentencePiece BPE ``tokenizer.model``."""
    path = Path(path)
    try:
        model = parse_model(path.read_bytes())
    except (OSError, UnicodeDecodeError, struct.error) as err:
        raise FormatError(f"{path} is not a SentencePiece model ({err})") from None
    if model["model_type"] != 2:
        raise UnsupportedError(f"{path} is a SentencePiece model of type {model['model_type']}; "
                               "ringkit reads BPE models (type 2), as LLaMA and LWM use")
    pieces = model["pieces"]
    tokens = [p["piece"] for p in pieces]
    types = [p["type"] for p in pieces]
    backend = spm_bpe_tokenizer(tokens, [p["score"] for p in pieces], types,
                                add_dummy_prefix=model["add_dummy_prefix"],
                                byte_fallback=model["byte_fallback"], unk_id=model["unk_id"],
                                normalizer=model["normalizer"],
                                remove_extra_whitespaces=model["remove_extra_whitespaces"])
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == CONTROL])
    name = lambda i: tokens[i] if 0 <= i < len(tokens) else None
    return backend, name(model["bos_id"]), name(model["eos_id"])
