"""Text tokenizers (HF ``tokenizers``, no torch) and chat templates (Jinja, as HF renders them).

Built from whatever a checkpoint carries: GGUF tokenizer fields (``from_gguf_fields``), an HF
``tokenizer.json`` (``from_hf_dir``) or a SentencePiece ``tokenizer.model`` (``from_sentencepiece``,
see ``ringkit.tokenize.spm``).

Example::

    tok = model.tokenizer
    ids = tok.encode("The capital of France is")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    tok.decode(ids)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from ringkit.errors import FormatError, UnsupportedError
from ringkit.tokenize.chat import LWM_CHAT_TEMPLATE, render
from ringkit.tokenize.spm import read_sentencepiece, spm_bpe_tokenizer
from ringkit.tokenize.store import digest

# llama.cpp pre-tokenizer names -> the split regex their merges were learned with.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTE_LEVEL_PRE = {
    "default": [_GPT2_SPLIT], "gpt2": [_GPT2_SPLIT], "gpt-2": [_GPT2_SPLIT],
    "smollm": [r"\p{N}", _GPT2_SPLIT],  # digits one per token, then GPT-2's split
    "llama3": [_LLAMA3_SPLIT], "llama-bpe": [_LLAMA3_SPLIT], "llama-v3": [_LLAMA3_SPLIT],
    "smaug-bpe": [_LLAMA3_SPLIT], "dbrx": [_LLAMA3_SPLIT],
}


_CHUNK_CHARS = 1 << 16
_MARKUP = re.compile(r"</?[A-Za-z_|][^\s<>]*>")  # <think>, </tool_call>, <|fim_pad|>
_WORD_GAP = re.compile(r"(?<=[^\W\d_]) (?=[^\W\d_])")  # a space between two letters


def _word_chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of about ``size`` characters, each cut before a space that sits between
    two letters ("word| word"): GPT-2-style splits end a letter run at a space and start a new
    piece there."""
    chunks, start = [], 0
    while start < len(text):
        cut = _WORD_GAP.search(text, start + size)
        end = cut.start() if cut else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@dataclasses.dataclass
class Tokenizer:
    """A text tokenizer with the special tokens and chat template of its model."""

    backend: tokenizers.Tokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    add_bos: bool = False
    chat_template: str | None = None
    extra_eos_tokens: tuple[str, ...] = ()

    # -- ids -----------------------------------------------------------------------------------
    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation (the eos token and any the model adds)."""
        ids = [self._id(t) for t in (self.eos_token, *self.extra_eos_tokens)]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    # -- encode / decode -----------------------------------------------------------------------
    def encode(self, text: str, *, add_bos: bool | None = None,
               literal: bool | Sequence[tuple[int, int]] = False) -> list[int]:
        """Token ids of ``text``: special-token strings in it become their ids, except in
        ``literal`` text (True: all of it; or ``(start, end)`` character spans): text from a
        document or a user, where ``<|im_end|>`` is just text.

        A long text is cut into chunks where the pre-tokenizer starts a new piece anyway and the
        chunks are encoded in parallel (all cores), giving the same ids as one encode: a
        million-token book takes ~1/3 the time. Tokenizers whose pieces could cross such a cut
        encode in one call.
        """
        cuts = self._template_specials(text, [(0, len(text))] if literal is True else literal)
        if cuts is not None:
            ids = self._encode_between(text, cuts)[0].tolist()
        else:
            ids = [i for part in self._encode_parts(text, offsets=False) for i in part[1].ids]
        add = self.add_bos if add_bos is None else add_bos
        if add and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def encode_with_offsets(self, text: str, *, literal: Sequence[tuple[int, int]] = ()
                            ) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, starts)``: int64 ``[n]`` token ids of ``text`` (no BOS) and the character
        offset in ``text`` where each token starts. ``literal``: ``(start, end)`` character spans
        (a document inside its chat template) whose special-token strings are text.

        The tokenizer itself cuts its input at special tokens before anything else, so encoding
        the pieces between the template's special tokens, with special tokens off, is what one
        call gives for text without them.
        """
        cuts = self._template_specials(text, literal)
        return self._encode_piece(text) if cuts is None else self._encode_between(text, cuts)

    def _encode_between(self, text: str, cuts) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, starts)`` of ``text`` cut at the template's special tokens ``cuts``: those
        become their ids, and the pieces between them are encoded with special tokens off."""
        ids, starts, pos = [], [], 0
        for start, end, token_id in cuts + [(len(text), len(text), None)]:
            piece_ids, piece_starts = self._encode_piece(text[pos:start], special=False)
            special = [] if token_id is None else [token_id]
            ids += [piece_ids, np.asarray(special, np.int64)]
            starts += [piece_starts + pos, np.asarray([start] if special else [], np.int64)]
            pos = end
        return np.concatenate(ids), np.concatenate(starts)

    @functools.cached_property
    def _markup(self) -> frozenset[str]:
        """Added tokens not flagged special that are control markup all the same (Qwen3's
        ``<think>``, ``</tool_call>``): a document's copy of one is text too."""
        return frozenset(t.content for t in self.backend.get_added_tokens_decoder().values()
                         if not t.special and _MARKUP.fullmatch(t.content))

    @functools.cached_property
    def _special_strings(self) -> re.Pattern | None:
        """The special tokens' strings and markup, longest first (as the tokenizer matches
        them)."""
        specials = sorted({t.content for t in self.backend.get_added_tokens_decoder().values()
                           if t.special} | self._markup, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, specials))) if specials else None

    @functools.cached_property
    def _literal_backend(self) -> tokenizers.Tokenizer:
        """``backend`` with the markup tokens flagged special, so that encoding with special
        tokens off reads them as text too (the same ids otherwise)."""
        if not self._markup:
            return self.backend
        spec = json.loads(self.backend.to_str())
        for token in spec.get("added_tokens") or []:
            if token["content"] in self._markup:
                token["special"] = True
        return tokenizers.Tokenizer.from_str(json.dumps(spec))

    def _template_specials(self, text: str, literal) -> list[tuple[int, int, int]] | None:
        """``(start, end, id)`` of the special tokens outside the ``literal`` spans, or None when
        no literal span holds one (then one plain encode is exact)."""
        if not literal or self._special_strings is None:
            return None
        inside = lambda m: any(a < m.end() and m.start() < b for a, b in literal)
        found = list(self._special_strings.finditer(text))
        if not any(map(inside, found)):
            return None
        return [(m.start(), m.end(), self.backend.token_to_id(m.group())) for m in found
                if not inside(m)]

    def _encode_piece(self, text: str, *, special: bool = True):
        """``encode_with_offsets`` of text that holds no template special token; ``special=False``
        reads special-token strings as text."""
        ids, starts = [], []
        backend = self.backend if special else self._literal_backend
        previous = backend.encode_special_tokens
        backend.encode_special_tokens = not special
        try:
            for offset, enc in self._encode_parts(text, offsets=True, backend=backend):
                ids.append(np.asarray(enc.ids, np.int64))
                starts.append(np.asarray([a for a, _ in enc.offsets], np.int64) + offset)
        finally:
            backend.encode_special_tokens = previous
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(ids), np.concatenate(starts)

    def _encode_parts(self, text: str, *, offsets: bool, backend=None):
        """``[(char offset, Encoding)]`` of ``text``, chunked where that is exact (``encode``)."""
        backend = backend or self.backend
        if len(text) <= 2 * _CHUNK_CHARS or not self._cuts_before_words:
            return [(0, backend.encode(text, add_special_tokens=False))]
        chunks = _word_chunks(text)
        fast = getattr(backend, "encode_batch_fast", None)
        batch = backend.encode_batch if offsets or fast is None else fast
        starts = np.cumsum([0] + [len(c) for c in chunks[:-1]])
        return list(zip(starts.tolist(), batch(chunks, add_special_tokens=False)))

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of everything that decides ids and prompts: vocabulary, merges, pre-tokenizer,
        special tokens, BOS rule and chat template (keys of the token store)."""
        return digest(self.backend.to_str(), str(self.bos_token), str(self.eos_token),
                      str(self.add_bos), self.chat_template or "", *self.extra_eos_tokens)

    @functools.cached_property
    def _cuts_before_words(self) -> bool:
        """Whether every pre-token boundary of ``backend`` falls before " word" after a letter
        (GPT-2-style byte-level splits, digits split or not), with no normalizer and no added
        token that holds a space: then chunks cut there encode exactly as the whole text."""
        spec = json.loads(self.backend.to_str())
        if spec.get("normalizer") is not None or any(
                " " in t.get("content", "") for t in spec.get("added_tokens") or []):
            return False
        pre = spec.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        known = {r for rs in _BYTE_LEVEL_PRE.values() for r in rs}

        def splits_words(step):  # a step that ends pieces at a space before a letter
            return (step.get("type") == "ByteLevel" and step.get("use_regex", True)) or (
                step.get("type") == "Split" and step.get("pattern", {}).get("Regex") in known)

        harmless = lambda step: step.get("type") in ("ByteLevel", "Digits") or splits_words(step)
        return any(map(splits_words, steps)) and all(map(harmless, steps))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # -- chat ----------------------------------------------------------------------------------
    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True,
                            tokenize: bool = False, **variables):
        """Render ``messages`` (``[{"role": ..., "content": ...}]`` or one user string) with the
        model's chat template; ``tokenize=True`` returns ids instead of text. ``variables`` reach
        the template; ``enable_thinking`` is False unless given (Qwen3 then answers without a
        ``<think>`` block: an answer, not a transcript of reasoning, fits ``ask``)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        variables.setdefault("enable_thinking", False)
        template = self.chat_template or LWM_CHAT_TEMPLATE
        text = render(template, messages=messages, add_generation_prompt=add_generation_prompt,
                      bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                      add_bos=self.add_bos, **variables)
        return self.encode(text, add_bos=False) if tokenize else text

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_gguf_fields(cls, fields: dict) -> "Tokenizer":
        """Build from GGUF ``tokenizer.ggml.*`` fields (byte-level BPE or SentencePiece BPE)."""
        kind = fields.get("tokenizer.ggml.model")
        if "tokenizer.ggml.tokens" not in fields:
            raise FormatError("the GGUF file carries no tokenizer (tokenizer.ggml.tokens)")
        tokens = list(fields["tokenizer.ggml.tokens"])
        types = list(fields.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        if kind == "gpt2":
            pre = fields.get("tokenizer.ggml.pre", "default")
            backend = _byte_level(tokens, fields.get("tokenizer.ggml.merges") or [], pre)
        elif kind == "llama":
            backend = spm_bpe_tokenizer(tokens, list(fields["tokenizer.ggml.scores"]), types,
                                        add_dummy_prefix=fields.get(
                                            "tokenizer.ggml.add_space_prefix", True))
        else:
            raise UnsupportedError(
                f"GGUF tokenizer model {kind!r} is not supported; ringkit reads 'gpt2' "
                "(byte-level BPE) and 'llama' (SentencePiece BPE)")
        _add_special(backend, tokens, types)
        name = lambda key: (tokens[fields[key]] if fields.get(key) is not None
                            and 0 <= fields[key] < len(tokens) else None)
        return cls(backend, bos_token=name("tokenizer.ggml.bos_token_id"),
                   eos_token=name("tokenizer.ggml.eos_token_id"),
                   add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", kind == "llama")),
                   chat_template=fields.get("tokenizer.chat_template"))

    @classmethod
    def from_hf_dir(cls, path) -> "Tokenizer":
        """Build from an HF model directory (``tokenizer.json``, ``tokenizer_config.json``)."""
        path = Path(path)
        config = _read_json(path / "tokenizer_config.json") if (
            path / "tokenizer_config.json").exists() else {}
        if (path / "tokenizer.json").exists():
            try:
                backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as err:
                raise FormatError(f"{path / 'tokenizer.json'} is not a valid tokenizer: {err}") from err
        elif (path / "tokenizer.model").exists():
            return cls.from_sentencepiece(path / "tokenizer.model", config=config)
        else:
            raise FormatError(f"{path} has neither tokenizer.json nor tokenizer.model")
        template = config.get("chat_template")
        if template is None and (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text()
        gen = _read_json(path / "generation_config.json") if (
            path / "generation_config.json").exists() else {}
        extra = gen.get("eos_token_id")
        extra = [extra] if isinstance(extra, int) else list(extra or [])
        extra_tokens = tuple(backend.id_to_token(i) for i in extra if backend.id_to_token(i))
        bos = _token_str(config.get("bos_token"))
        add_bos = config.get("add_bos_token")
        if add_bos is None:  # Llama 3 adds its BOS in tokenizer.json's post-processor
            add_bos = bos is not None and _post_processor_starts_with(backend, bos)
        return cls(backend, bos_token=bos, eos_token=_token_str(config.get("eos_token")),
                   add_bos=bool(add_bos),
                   chat_template=template if isinstance(template, str) else None,
                   extra_eos_tokens=extra_tokens)

    @classmethod
    def from_sentencepiece(cls, path, *, config: dict | None = None) -> "Tokenizer":
        """Build from a SentencePiece BPE ``tokenizer.model`` (LLaMA / LWM)."""
        backend, bos, eos = read_sentencepiece(path)
        config = config or {}
        return cls(backend, bos_token=_token_str(config.get("bos_token")) or bos,
                   eos_token=_token_str(config.get("eos_token")) or eos,
                   add_bos=bool(config.get("add_bos_token", True)),
                   chat_template=config.get("chat_template"))


def _post_processor_starts_with(backend: tokenizers.Tokenizer, token: str) -> bool:
    """Whether ``backend``'s post-processor puts ``token`` before a single text."""
    spec = json.loads(backend.to_str()).get("post_processor") or {}
    steps = spec.get("processors", []) if spec.get("type") == "Sequence" else [spec]
    for step in steps:
        if step.get("type") == "TemplateProcessing" and step.get("single"):
            return step["single"][0].get("SpecialToken", {}).get("id") == token
    return False


def _token_str(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FormatError(f"cannot read {path}: {err}") from err


def _byte_level(tokens: list[str], merges: Sequence[str], pre: str) -> tokenizers.Tokenizer:
    if pre not in _BYTE_LEVEL_PRE:
        raise UnsupportedError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {sorted(_BYTE_LEVEL_PRE)}")
    alphabet = _byte_alphabet()
    letters = set(alphabet.values())
    # Control tokens such as <|im_start|> are spelled in plain text; keep them as they are.
    vocab = {t if set(t) <= letters else "".join(alphabet[b] for b in t.encode()): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    backend = tokenizers.Tokenizer(models.BPE(vocab, pairs, ignore_merges=False))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _BYTE_LEVEL_PRE[pre]]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend


def _add_special(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    """GGUF token types: 3 = control (special), 4 = user-defined (matched whole, not special)."""
    special = [AddedToken(t, special=True, normalized=False)
               for t, k in zip(tokens, types) if k == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)
