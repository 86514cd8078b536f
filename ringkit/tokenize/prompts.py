"""A ``Document`` (and a question) -> token ids and modality mask in a model's prompt format.

- Text-only documents: the model's chat template (ChatML for SmolLM2; LWM's "You are a helpful
  assistant. USER: ... ASSISTANT:" where a checkpoint has none), with the question after the
  document in the user turn, led by ``QUESTION_LEAD`` (see there).
- Documents with frames, for vision models (LWM): LWM's video format, the question first, then
  the segments in order, each frames segment as ``<vision>`` + 257 tokens per frame (256 VQGAN
  codes, then ``<eof>`` = 8192, or ``<eov>`` = 8193 after the last frame) + ``</vision>``; the
  modality mask is True on the codes and markers, which index the vision vocabulary.
- For a text-only model a video contributes its text segments (subtitles, on-screen text read
  with ``ingest(..., ocr=True)``, which ``ringkit.read`` asks for) and its frames are left out;
  frames without any text raise, saying what the model could not see and what would.

Every token records the document segment it came from (``Tokens.segment``), and results go to
the token store (``ringkit.tokenize.store``), so the same input tokenizes once.

Example::

    doc = rk.ingest("notes.md")
    tokens = tokenize(doc, model, "What is the main claim?")
    tokens.ids, tokens.vision, tokens.positions, tokens.counts
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ringkit.errors import (
    ConfigError,
    MissingDependencyError,
    SourceError,
    UnsupportedError,
    advice,
)
from ringkit.inputs.document import Document, FramesSegment, TextSegment
from ringkit.inputs.ocr import INSTALL
from ringkit.tokenize.store import NO_SEGMENT, TokenStore

EOF_ID, EOV_ID = 8192, 8193  # LWM's end-of-frame and end-of-vision ids (vision vocabulary)
SYSTEM = "You are a helpful assistant."
# What leads the question after a document: it tells a small model that the question is about
# the text. The embedded 135M gave a code shown in a two-line video transcript in 60 of 60
# answers with it, 43 without; in a ~1.2K-token Shakespeare excerpt 5 of 16 either way
# (``benchmarks/ask_prompt.py``). Bigger models read it as the plain instruction it is.
QUESTION_LEAD = "Question about the text above: "


@dataclasses.dataclass(frozen=True)
class Tokens:
    """A tokenized prompt.

    ``ids`` int32 ``[n]``; ``vision`` bool ``[n]`` (True: an id of the vision vocabulary);
    ``segment`` uint32 ``[n]``, the index in ``doc.segments`` each token came from
    (``NO_SEGMENT`` for the prompt's own text: template, question); ``sources`` the provenance
    of each of ``doc.segments`` (source, and line span or frame range); ``cached`` whether it was
    read back from the token store. ``summary(model)`` says what a run on it will hold.
    """

    ids: np.ndarray
    vision: np.ndarray
    segment: np.ndarray | None = None
    sources: tuple[dict, ...] = ()
    cached: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def positions(self) -> np.ndarray:
        return np.arange(len(self.ids), dtype=np.int32)

    @property
    def counts(self) -> dict[str, int]:
        n_vision = int(self.vision.sum())
        return {"text": len(self.ids) - n_vision, "vision": n_vision}

    @property
    def frames(self) -> int:
        """Frames in the prompt (one ``<eof>`` or ``<eov>`` marker each)."""
        return int(np.count_nonzero(self.vision & ((self.ids == EOF_ID) | (self.ids == EOV_ID))))

    def source_of(self, i: int) -> dict | None:
        """Provenance of token ``i`` (None for the prompt's own text)."""
        seg = None if self.segment is None else int(self.segment[i])
        return None if seg is None or seg == NO_SEGMENT else self.sources[seg]

    def summary(self, model=None, *, mesh=None, max_new_tokens: int = 256) -> str:
        """Tokens by modality and frames; with ``model`` (and optionally another ``mesh``) the
        estimated memory per device of a prefill plus ``max_new_tokens`` of decoding
        (``Model.memory``)."""
        c = self.counts
        lines = [f"{len(self):,} tokens: {c['text']:,} text, {c['vision']:,} vision "
                 f"({self.frames:,} frames) from {len(self.sources)} segments"
                 + (" (read from the token store)" if self.cached else "")]
        if model is not None:
            lines.append(model.memory(len(self), new_tokens=max_new_tokens, mesh=mesh).describe())
        return "\n".join(lines)


def vision_tokens(codes) -> np.ndarray:
    """VQGAN codes ``[T, h, w]`` -> int32 ``[T * (h * w + 1)]``: each frame's codes then
    ``<eof>``, the last frame's marker ``<eov>`` instead."""
    codes = np.asarray(codes, np.int32)
    if codes.ndim != 3 or not len(codes):
        raise SourceError(f"codes must be [frames, h, w] with at least one frame, got {codes.shape}")
    flat = codes.reshape(len(codes), -1)
    markers = np.full((len(codes), 1), EOF_ID, np.int32)
    markers[-1] = EOV_ID
    return np.concatenate([flat, markers], axis=1).reshape(-1)


_SENTINEL = "\x00ringkit-document\x00"


def document_sources(doc: Document) -> tuple[dict, ...]:
    out = []
    for seg in doc.segments:
        if isinstance(seg, TextSegment):
            out.append({"kind": "text", "source": seg.source, "lines": seg.span,
                        "title": seg.title})
        else:
            times = doc.frame_times[seg.first:seg.first + seg.count]
            out.append({"kind": "frames", "source": seg.source,
                        "frames": [seg.first, seg.first + seg.count],
                        "seconds": [float(times[0]), float(times[-1])] if len(times) else None})
    return tuple(out)


def _store(cache) -> TokenStore | None:
    if cache is False:
        return None
    return TokenStore.default() if cache in (None, True) else TokenStore(cache)


def _cached(store, key, sources, compute) -> Tokens:
    """The stored tokens under ``key``, or ``compute()``'s (ids, vision, segment), stored."""
    hit = store.get(key) if store else None
    if hit is not None:
        return Tokens(hit.ids.view(np.int32), hit.vision.astype(bool), hit.segment, sources,
                      cached=True)
    ids, vision, segment = compute()
    if store:
        store.put(key, ids, vision, segment, {"counts": {"vision": int(np.sum(vision))},
                                              "segments": list(sources)})
    return Tokens(np.asarray(ids, np.int32), np.asarray(vision, bool),
                  np.asarray(segment, np.uint32), sources)


def chat_shell(tok, generation_prompt: bool) -> tuple[str, str] | None:
    """The chat template's text before and after the user's content, or None for a template
    that alters its content."""
    shell = tok.apply_chat_template([{"role": "user", "content": _SENTINEL}],
                                    add_generation_prompt=generation_prompt)
    return tuple(shell.split(_SENTINEL)) if shell.count(_SENTINEL) == 1 else None


def _text_prompt(doc: Document, tok, question, store, sources, *, open_end=False) -> Tokens:
    """The chat template around the document (and question), encoded in one piece; each token's
    segment found from its character offset. ``open_end``: stop right after the document (the
    prefix of a ``context_prompt``)."""
    body = doc.text.strip()
    content = body if question is None else f"{body}\n\n{QUESTION_LEAD}{question.strip()}"
    parts = chat_shell(tok, question is not None or open_end)
    if parts is not None:
        before, after = parts
        prompt = before + content + ("" if open_end else after)
        literal = [(len(before), len(before) + len(content))]
    else:  # a template that alters its content: locate the body in the rendered prompt
        if open_end:
            raise UnsupportedError("this model's chat template alters the user's text, so a "
                                   "document cannot be prefilled apart from its question")
        prompt = tok.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=question is not None)
        before = prompt[:max(prompt.find(body), 0)]
        literal = [(len(before), len(before) + len(body))]

    def compute():
        # Special-token strings in the document and question are text: a file that holds
        # "<|im_end|>" must not end the user's turn.
        ids, starts = tok.encode_with_offsets(prompt, literal=literal)
        # Character start of every text segment inside the prompt (doc.text joins with "\n\n").
        lead = len(doc.text) - len(doc.text.lstrip())
        seg_index, seg_start, pos = [], [], len(before) - lead
        for i, seg in enumerate(doc.segments):
            if isinstance(seg, TextSegment):
                seg_index.append(i)
                seg_start.append(pos)
                pos += len(seg.text) + 2
        which = np.searchsorted(np.asarray(seg_start), starts, side="right") - 1
        inside = (starts >= len(before)) & (starts < len(before) + len(body)) & (which >= 0)
        segment = np.where(inside, np.asarray(seg_index, np.int64)[np.maximum(which, 0)],
                           NO_SEGMENT)
        return ids, np.zeros(len(ids), bool), segment

    key = TokenStore.key("text", tok.digest, prompt)
    return _cached(store, key, sources, compute)


def tokenize(doc: Document, model, question: str | None = None, *, vqgan=None,
             cache=None) -> Tokens:
    """Token ids, modality mask and provenance of ``doc`` (and ``question``) in ``model``'s
    prompt format.

    ``model`` needs ``.tokenizer`` and ``.config`` (a ``ringkit.Model``). ``vqgan`` (a
    ``ringkit.tokenize.vqgan.VQGAN``) turns frames into codes for vision models. Without a
    question the prompt stops after the document (no generation prompt). ``cache``: the token
    store to read and fill (``None``/``True``: ``ringkit.tokenize.store.cache_root()``; a path;
    ``False``: none), keyed by the tokenizer, VQGAN and exact input, so the same document and
    question tokenize once.
    """
    check_question(question, optional=True)
    return _prompt(doc, model, question, vqgan, cache, open_end=False)


@dataclasses.dataclass(frozen=True)
class ContextPrompt:
    """A document's prompt cut where a question goes: ``prefix`` (``Tokens``, prefilled once)
    and ``question_ids(q)``, the int32 tokens that follow it for one question, up to the
    generation prompt: ``template`` (text around ``{question}``) tokenized by ``tokenizer``. For
    SmolLM2's ChatML, prefix + question ids equal ``tokenize(doc, model, q).ids``; LWM video
    prompts put the question after the video here (LWM's own put it first, which would leave
    nothing to reuse)."""

    prefix: Tokens
    template: str
    tokenizer: object = dataclasses.field(repr=False, compare=False)

    def question_ids(self, question: str) -> np.ndarray:
        check_question(question)
        question = question.strip()
        at = self.template.index("{question}")
        text = self.template[:at] + question + self.template[at + len("{question}"):]
        ids, _ = self.tokenizer.encode_with_offsets(text, literal=[(at, at + len(question))])
        return ids.astype(np.int32)


def context_prompt(doc: Document, model, *, vqgan=None, cache=None) -> ContextPrompt:
    """``doc``'s prompt for ``model`` split into a reusable prefix and per-question tokens (what
    ``ringkit.read`` prefills once and questions many times)."""
    tok = model.tokenizer
    prefix = _prompt(doc, model, None, vqgan, cache, open_end=True)
    if prefix.counts["vision"]:
        return ContextPrompt(prefix, "\n{question} ASSISTANT:", tok)
    after = chat_shell(tok, True)[1]
    return ContextPrompt(prefix, "\n\n" + QUESTION_LEAD + "{question}" + after, tok)


def check_question(question: str | None, *, optional: bool = False) -> None:
    """A question is a non-empty string (or None, where ``optional``)."""
    if question is None and optional:
        return
    if not isinstance(question, str):
        raise SourceError(f"the question must be text (a str), got {type(question).__name__}: "
                          f"{question!r:.60}")
    if not question.strip():
        raise SourceError("the question is empty; ask something")


def _prompt(doc: Document, model, question, vqgan, cache, *, open_end: bool) -> Tokens:
    tok = model.tokenizer
    store, sources = _store(cache), document_sources(doc)
    frames = [s for s in doc.segments if isinstance(s, FramesSegment)]
    if not frames or not model.config.has_vision:
        # A text-only model reads the text segments (a video's subtitles among them) and
        # leaves the frames out.
        if not doc.text.strip():
            if frames:
                raise _no_text(doc, model.config.name)
            raise SourceError("the document holds no text to read")
        return _text_prompt(doc, tok, question, store, sources, open_end=open_end)
    if vqgan is None:
        raise ConfigError("frames become vision tokens through LWM's VQGAN: pass " + advice(
            "vqgan=ringkit.tokenize.vqgan.VQGAN.load('<checkpoint>/vqgan')",
            "--vqgan <checkpoint>/vqgan"))

    def compute():
        ids, vision, segment = [], [], []

        def text(s: str, seg=NO_SEGMENT, bos: bool = False, literal=()):
            piece = tok.encode(s, add_bos=bos, literal=literal)
            ids.extend(piece)
            vision.extend([False] * len(piece))
            segment.extend([seg] * len(piece))

        head = f"{SYSTEM} USER: "
        text(head + (f"{question}\n" if question else ""), bos=True,
             literal=[(len(head), len(head) + len(question or ""))])
        for i, seg in enumerate(doc.segments):
            if isinstance(seg, TextSegment):
                text(seg.text + "\n", i, literal=True)
            else:
                codes = vqgan.encode(doc.frames[seg.first:seg.first + seg.count])
                text("<vision>", i)
                block = vision_tokens(codes)
                ids.extend(block.tolist())
                vision.extend([True] * len(block))
                segment.extend([i] * len(block))
                text("</vision>", i)
        if question is not None:
            text(" ASSISTANT:")
        return ids, vision, segment

    texts = [s.text if isinstance(s, TextSegment) else f"{s.first}:{s.count}"
             for s in doc.segments]
    key = TokenStore.key("video", tok.digest, vqgan.digest, question or "", "\x00".join(texts),
                         doc.frames, doc.frame_times)
    return _cached(store, key, sources, compute)


def _no_text(doc: Document, model_name: str):
    """The error for frames that reach a text-only model with no text: what it could not see,
    and what to do (install Tesseract, add subtitles, or load a vision model)."""
    names = [t.source for t in doc.video_text] or sorted(
        {s.source for s in doc.segments if isinstance(s, FramesSegment)})
    what = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    stem, name = (names[0].rsplit("/", 1)[-1].rpartition(".")[0] or "talk",
                  names[0].rsplit("/", 1)[-1]) if len(names) == 1 else ("talk", "talk.mp4")
    subs = f"subtitles ({stem}.srt or {stem}.vtt beside {name})"
    vision = advice("model=ringkit.load_model('<LWM vision checkpoint>') and "
                    "vqgan=ringkit.tokenize.vqgan.VQGAN.load('<checkpoint>/vqgan')",
                    "--model <LWM vision checkpoint> --vqgan <checkpoint>/vqgan")
    if any(t.ocr == "missing" for t in doc.video_text):
        return MissingDependencyError(
            f"{model_name} reads text only, and {what} ({len(doc.frames):,} frames) came with no "
            f"subtitles; to read the text on screen, install Tesseract: {INSTALL}")
    read = doc.video_text and all(t.ocr == "read" for t in doc.video_text)
    found = ("no subtitles, and OCR found no text on screen" if read else
             f"no subtitles and no text read from the screen ({advice('ocr=True', '--ocr')} "
             "reads it)")
    return UnsupportedError(
        f"{model_name} reads text only: {what} ({len(doc.frames):,} frames) had {found}, so "
        f"nothing of it reaches the model. Add {subs}, or load a vision model, which sees the "
        f"frames: {vision}")
