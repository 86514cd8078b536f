"""A ``Document`` (and a question) -> token ids and modality mask in a model's prompt format.

- Text-only documents: the model's chat template (ChatML for SmolLM2; LWM's "You are a helpful
  assistant. USER: ... ASSISTANT:" where a checkpoint has none), with the question after the
  document in the user turn.
- Documents with frames, for vision models (LWM): LWM's video format, the question first, then
  the segments in order, each frames segment as ``<vision>`` + 257 tokens per frame (256 VQGAN
  codes, then ``<eof>`` = 8192, or ``<eov>`` = 8193 after the last frame) + ``</vision>``; the
  modality mask is True on the codes and markers, which index the vision vocabulary.
- Frames for a text-only model raise: reading a video's subtitles and on-screen text for such
  models is not implemented yet.

Example::

    doc = rk.ingest("notes.md")
    tokens = tokenize(doc, model, "What is the main claim?")
    tokens.ids, tokens.vision, tokens.positions, tokens.counts
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ringkit.errors import ConfigError, SourceError, UnsupportedError
from ringkit.inputs.document import Document, FramesSegment, TextSegment

EOF_ID, EOV_ID = 8192, 8193  # LWM's end-of-frame and end-of-vision ids (vision vocabulary)
SYSTEM = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class Tokens:
    """``ids`` int32 ``[n]`` and ``vision`` bool ``[n]`` (True: an id of the vision vocabulary)."""

    ids: np.ndarray
    vision: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def positions(self) -> np.ndarray:
        return np.arange(len(self.ids), dtype=np.int32)

    @property
    def counts(self) -> dict[str, int]:
        n_vision = int(self.vision.sum())
        return {"text": len(self.ids) - n_vision, "vision": n_vision}


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


def _text_tokens(ids) -> Tokens:
    ids = np.asarray(ids, np.int32)
    return Tokens(ids, np.zeros(len(ids), bool))


def tokenize(doc: Document, model, question: str | None = None, *, vqgan=None) -> Tokens:
    """Token ids and modality mask of ``doc`` (and ``question``) for ``model``'s prompt format.

    ``model`` needs ``.tokenizer`` and ``.config`` (a ``ringkit.Model``). ``vqgan`` (a
    ``ringkit.tokenize.vqgan.VQGAN``) turns frames into codes for vision models. Without a
    question the prompt stops after the document (no generation prompt).
    """
    if question is not None and not question.strip():
        raise SourceError("the question is empty; ask something")
    tok = model.tokenizer
    frames = [s for s in doc.segments if isinstance(s, FramesSegment)]
    if not frames:
        if not doc.text.strip():
            raise SourceError("the document holds no text to read")
        body = doc.text.rstrip()
        content = body if question is None else f"{body}\n\n{question.strip()}"
        return _text_tokens(tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=True,
            add_generation_prompt=question is not None))
    if not model.config.has_vision:
        raise UnsupportedError(
            f"{model.config.name} reads text only, and this document holds {len(doc.frames)} "
            "frames; use a vision model (an LWM vision checkpoint with its vqgan) or ingest only "
            "the text (reading subtitles and on-screen text for text-only models is not "
            "implemented yet)")
    if vqgan is None:
        raise ConfigError("frames become vision tokens through LWM's VQGAN: pass "
                          "vqgan=ringkit.tokenize.vqgan.VQGAN.load('<checkpoint>/vqgan')")
    ids, vision = [], []

    def text(s: str, bos: bool = False):
        piece = tok.encode(s, add_bos=bos)
        ids.extend(piece)
        vision.extend([False] * len(piece))

    text(f"{SYSTEM} USER: " + (f"{question}\n" if question else ""), bos=True)
    for seg in doc.segments:
        if isinstance(seg, TextSegment):
            text(seg.text + "\n")
        else:
            codes = vqgan.encode(doc.frames[seg.first:seg.first + seg.count])
            text("<vision>")
            block = vision_tokens(codes)
            ids.extend(block.tolist())
            vision.extend([True] * len(block))
            text("</vision>")
    if question is not None:
        text(" ASSISTANT:")
    return Tokens(np.asarray(ids, np.int32), np.asarray(vision, bool))
