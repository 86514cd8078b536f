"""``ringkit.read`` and ``ringkit.ask``: a document prefilled once, then questioned many times.

``read`` ingests a source, tokenizes it in the model's prompt format up to where a question goes
(``ringkit.tokenize.prompts.context_prompt``) and prefills it into a KV cache sharded along the
sequence on 'sp'. ``Context.ask`` feeds the question's tokens on top of that cache, generates the
answer, then rewinds the cache to the document (slot positions and counters restored; the slots
the question and answer used are masked and later overwritten), so every question sees the same
document state and costs only its own tokens.

Example::

    ctx = ringkit.read("hamlet.txt")
    print(ctx)                                  # tokens, mesh, memory per device, sources
    ctx.ask("Who kills Polonius?")
    ctx.ask("Where is the play set?", stream=True)   # prints the answer as it is generated
    ringkit.ask("talk.mp4", "What does the speaker announce?")
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ringkit import persist
from ringkit.budget import check_memory, fit_prompt
from ringkit.display import AnswerPrinter, frame_strip_html, sharding_html, sharding_text
from ringkit.errors import ConfigError, FitWarning, ShapeError, SourceError, advice
from ringkit.generate import check_sampling, check_seed, decode, sampling_for, stop_strings
from ringkit.inputs.document import Document
from ringkit.inputs.ocr import describe
from ringkit.inputs.sources import ingest
from ringkit.mesh import make_mesh
from ringkit.model import load_model
from ringkit.model.load import quick_dtype
from ringkit.model.kvcache import KVCache
from ringkit.model.model import Model
from ringkit.tokenize.prompts import ContextPrompt, check_question, context_prompt

DEFAULT_ROOM = 1024  # question + answer tokens a context keeps room for
QUESTION_PIECE = 8   # question tokens fed per decode step (see ``Context.ask``)
_MODELS: dict = {}


def default_model(mesh=None, dtype: str | None = None):
    """The embedded SmolLM2 on ``mesh`` (default: every device on 'sp') computing in ``dtype``
    (default: ``load_model``'s), loaded once per mesh and dtype."""
    mesh = mesh if mesh is not None else make_mesh()
    key = (tuple(mesh.shape.items()), tuple(d.id for d in mesh.devices.flat), dtype)
    if key not in _MODELS:
        _MODELS[key] = load_model(mesh=mesh, dtype=dtype)
    return _MODELS[key]


def resolve_model(model, mesh, dtype: str | None = None, *, quick: bool = False,
                  text: bool = True):
    """``model``, or the embedded SmolLM2 on ``mesh`` in ``dtype`` when it is None (a model
    comes with its mesh and dtype: not both). ``quick`` (``read``, ``ask``): the default dtype
    is ``ringkit.model.load.quick_dtype()``, bfloat16 compute on a CPU with native bf16.
    ``text``: the caller reads or writes text, so the model needs its tokenizer."""
    if model is None:
        return default_model(mesh, dtype or (quick_dtype() if quick else None))
    if mesh is not None or dtype is not None:
        raise ConfigError(f"pass either model= (already on its mesh, in its dtype) or "
                          f"{'mesh=' if mesh is not None else 'dtype='} (for the default model), "
                          "not both")
    if not isinstance(model, Model):
        raise ConfigError(f"model must be a ringkit.Model, got {model!r:.60}: load one first, "
                          "e.g. model=ringkit.load_model('path/to/checkpoint')")
    if text and model.tokenizer is None:
        raise ConfigError(f"{model.config.name} has no tokenizer (Model.init_random without "
                          "tokenizer=): reading text needs one")
    return model


def _check_stream(stream) -> None:
    if not (stream is None or isinstance(stream, bool) or callable(stream)):
        raise ConfigError(f"stream must be True (print the answer), False or a function that "
                          f"takes each text piece, got {stream!r:.60}")


def _streamer(stream) -> Callable[[str, int], None] | None:
    _check_stream(stream)
    if stream is None or stream is False:
        return None
    if stream is True:
        return AnswerPrinter()
    return lambda piece, row: stream(piece)


@dataclasses.dataclass
class Context:
    """A prefilled document: ``model``, ``doc``, ``prompt`` (its ``ContextPrompt``), ``cache``
    (the sequence-sharded KV cache) and ``room`` (question + answer tokens it can take).
    ``prefill_seconds`` is what reading it cost; ``fitted`` says how a source tree too long for
    the model was read as its outline (None: read whole). Build one with ``ringkit.read``."""

    model: Model
    doc: Document
    prompt: ContextPrompt
    cache: KVCache
    room: int
    prefill_seconds: float
    _slot_pos: jax.Array = dataclasses.field(repr=False)
    _next_pos: np.ndarray = dataclasses.field(repr=False)
    fitted: str | None = None  # how the source was shortened to fit, if it was
    _window_pos: jax.Array | None = dataclasses.field(default=None, repr=False)

    @property
    def tokens(self):
        """The document's prompt tokens (``Tokens``: ids, modality mask, provenance)."""
        return self.prompt.prefix

    def ask(self, question: str, *, max_new_tokens: int = 256, stream=None,
            temperature: float | None = None, top_p: float | None = None, seed: int = 0,
            stop=(), loop_guard: bool = True) -> str:
        """Answer ``question`` about the document.

        ``stream``: True prints the answer as it is generated (in Jupyter, one output updated in
        place), a callable receives each text piece. ``temperature`` / ``top_p``: by default
        what the model's authors recommend (``model.sampling``: the embedded SmolLM2 samples at
        0.2 / 0.9), else greedy; ``temperature=0`` is greedy. Sampling is seeded by ``seed``, so
        the same question gives the same answer. ``loop_guard``: end the answer where it starts
        repeating itself (``ringkit.generate.LoopGuard``) instead of at ``max_new_tokens``.
        The cache is rewound afterwards: the next question sees only the document.
        """
        temperature, top_p = sampling_for(self.model, temperature, top_p)
        check_sampling(max_new_tokens, temperature, top_p)
        check_seed(seed)
        stop, streamer = stop_strings(stop), _streamer(stream)
        ids = self.prompt.question_ids(question)
        need = len(ids) + max_new_tokens - 1
        if len(ids) >= self.room:  # the question alone: fewer new tokens would not help
            whole = len(ids) + len(self.tokens) >= self.model.config.context_length
            raise ShapeError(
                f"the question is {len(ids)} tokens; this context keeps {self.room} for the "
                "question and answer" + ("; with the document it exceeds the "
                f"{self.model.config.context_length}-token context of {self.model.config.name}"
                if whole else "") + ": shorten the question" + ("" if whole else
                f" or read the document again with ringkit.read(..., room={need})"))
        if need > self.room:
            raise ShapeError(
                f"the question ({len(ids)} tokens) and up to {max_new_tokens} answer tokens need "
                f"{need} tokens of room; this context keeps {self.room}: ask for fewer new "
                f"tokens or read it again with ringkit.read(..., room={need})")
        try:
            # The question in pieces of QUESTION_PIECE tokens, then single ones (21 = 8 + 8 + 5
            # x 1): a decode step compiles once per piece size (~20 s for SmolLM2 on CPU), so
            # two sizes, one of them the answer's own, and ``read`` compiles both.
            start = 0
            while start < len(ids):
                size = QUESTION_PIECE if len(ids) - start >= QUESTION_PIECE else 1
                logits = self.model.step(self.cache, ids[None, start:start + size])
                start += size
            out = decode(self.model, logits, self.cache, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p, seed=seed, stop=stop,
                         stream=streamer, loop_guard=loop_guard)
        finally:
            self._rewind()
            close = getattr(streamer, "close", None)
            if close is not None:
                close()
        text = self.model.tokenizer.decode(out[0])
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        return (text if cut < 0 else text[:cut]).rstrip()

    def save(self, path):
        """Write this context to the new directory ``path`` and return it (absolute);
        ``ringkit.load_context(path)`` reads it back, on this mesh or another, or says that
        it was changed or damaged since (see ``ringkit.persist``).

        Example::

            ctx.save("hamlet.ctx")
            ctx = ringkit.load_context("hamlet.ctx")
        """
        return persist.save_context(self, path)

    def _rewind(self) -> None:
        self.cache.slot_pos = jnp.copy(self._slot_pos)
        if self._window_pos is not None:  # appended tokens in the local layers' caches too
            self.cache.window_pos = jnp.copy(self._window_pos)
        self.cache.appended = 0
        self.cache.next_pos = self._next_pos.copy()

    def summary(self) -> str:
        """Tokens by modality, sources, mesh and memory per device."""
        files = sorted({s["source"] for s in self.tokens.sources})
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        note = f"\n{self.fitted}" if self.fitted else ""
        if not self.model.config.has_vision:  # how each video or image reached it as text
            note += "".join(f"\n{describe(t)}" for t in self.doc.video_text)
        runtime = self.model.runtime
        compute = (f"{runtime.dtype} compute" if runtime.dtype == "float32" else
                   f"{runtime.dtype} compute, float32 accumulation")
        return (f"Context: {self.tokens.summary(self.model, max_new_tokens=self.room)}\n"
                f"read from {shown} in {self.prefill_seconds:.1f} s ({compute}); KV cache "
                f"{self.cache.nbytes_per_device() / 1e6:,.0f} MB per device, sharded over "
                f"sp={self.model.sp}; room for {self.room:,} question + answer tokens{note}")

    def __repr__(self) -> str:
        n = len(self.tokens)
        frames = len(self.doc.frames)
        strip = ""
        if frames:
            times = self.doc.frame_times
            strip = (f"\n{frames:,} frames from {times[0]:.0f} s to {times[-1]:.0f} s"
                     if len(times) else f"\n{frames:,} frames")
        return (f"{self.summary()}{strip}\n"
                f"{sharding_text(n, self.model.sp, self.model.runtime.layout)}")

    def _repr_html_(self) -> str:
        import html

        n = len(self.tokens)
        return (f"<pre>{html.escape(self.summary())}</pre>"
                + frame_strip_html(self.doc.frames, self.doc.frame_times)
                + sharding_html(n, self.model.sp, self.model.runtime.layout,
                                self.tokens.vision))


def read(source, *, model=None, mesh=None, dtype: str | None = None, room: int = DEFAULT_ROOM,
         fit: str = "auto", focus: str | None = None, vqgan=None, cache=None,
         ocr: bool | str = "auto", **ingest_options) -> Context:
    """Ingest ``source`` (a path, a list, or a ``Document``) and prefill it for questions.

    Args:
      model: a ``ringkit.Model`` (default: the embedded SmolLM2 on ``mesh``).
      mesh: where the default model runs (default: every device on 'sp').
      dtype: the default model's compute dtype, "float32" or "bfloat16" (default: bfloat16 on
        accelerators and on CPUs with native bf16, where it is faster, else float32).
      room: question + answer tokens each ``ask`` may use.
      fit: what to do with a source longer than the model's context. ``"auto"`` (default)
        reads a source tree that does not fit as its outline (paths, and what each file holds:
        ``ringkit.inputs.outline``), says so in a warning and in ``ctx.fitted``, and refuses
        anything else; ``"whole"`` always reads everything (or refuses); ``"outline"`` reads
        the outline of the tree's files even when the whole would fit.
      focus: a question to fit an outline around (``ringkit.ask`` passes its own): files are
        ordered by their relevance to it (BM25 over paths and outlines), the most relevant
        last, and the most relevant are read whole while they fit
        (``ringkit.inputs.outline.fit_focused``).
      vqgan: LWM's VQGAN, for vision models reading frames.
      cache: the token store (see ``ringkit.tokenize.prompts.tokenize``).
      ocr: read the on-screen text of videos and images (``ringkit.inputs.ocr``). ``"auto"``
        (default): for a text-only model, which would otherwise see nothing of what a video
        shows, read it where Tesseract is installed (with the subtitles, if any); not for a
        vision model, which sees the frames. ``True``: always (raises without Tesseract);
        ``False``: never (``subtitles=False`` leaves the subtitles out).
      ingest_options: passed to ``ringkit.ingest`` (``fps``, ``subtitles``, ``max_file_bytes``,
        ...).

    Returns a ``Context``; ``ctx.ask(question)`` answers. Raises a ``RingkitError`` for a
    missing or unreadable source, a prompt longer than the model's context (the message
    suggests RoPE scaling) or than memory allows.

    Example::

        ctx = ringkit.read(["README.md", "ringkit/"])
        ctx.ask("Which file implements ring attention?")
    """
    if isinstance(room, bool) or not isinstance(room, (int, np.integer)) or room < 1:
        raise ConfigError(f"room (question + answer tokens) must be a whole number >= 1, got "
                          f"{room!r}")
    if fit not in ("auto", "whole", "outline"):
        raise ConfigError(f"fit must be 'auto', 'whole' or 'outline', got {fit!r}")
    model = resolve_model(model, mesh, dtype, quick=True)
    if room >= model.config.context_length:
        raise ConfigError(f"room={room:,} (question + answer tokens) leaves nothing of the "
                          f"{model.config.context_length:,}-token context of "
                          f"{model.config.name} for the document: ask for less room")
    if ocr == "auto":
        ocr = False if model.config.has_vision else "auto"
    doc = source if isinstance(source, Document) else ingest(source, ocr=ocr, **ingest_options)
    prompt = context_prompt(doc, model, vqgan=vqgan, cache=cache)
    doc, prompt, note = fit_prompt(doc, prompt, model, room, fit, vqgan, cache, focus)
    if note and fit == "auto":
        warnings.warn(f"ringkit.read: {note}", FitWarning, stacklevel=2)
    n = len(prompt.prefix)
    model.check_length(n + room)
    check_memory(model, n, room + 1)
    t0 = time.perf_counter()
    vision = [prompt.prefix.vision] if prompt.prefix.counts["vision"] else None
    # The decode steps ``ask`` uses compile while the prefill runs.
    _, kv = model.prefill([prompt.prefix.ids.tolist()], max_new_tokens=room + 1,
                          vision_rows=vision, steps=(QUESTION_PIECE, 1))
    kv.k[0].block_until_ready()
    seconds = time.perf_counter() - t0
    return Context(model, doc, prompt, kv, room, seconds, jnp.copy(kv.slot_pos),
                   kv.next_pos.copy(), fitted=note, _window_pos=_copy(kv.window_pos))


def _copy(x):
    return None if x is None else jnp.copy(x)


def ask(source, question: str, *, model=None, mesh=None, dtype: str | None = None,
        max_new_tokens: int = 256, stream=None, **options) -> str:
    """Ask one question of ``source`` (a book, a source tree, a video, a list, a ``Document``).

    ``stream=True`` prints the answer as it is generated (a callable receives each piece).
    ``options`` go to ``ringkit.read`` (``fit``, ``vqgan``, ``cache``, ``ocr``, ingest options)
    or to ``Context.ask`` (``temperature``, ``top_p``, ``seed``, ``stop``, ``loop_guard``). A
    video reaches a text-only model as its subtitles and on-screen text (``ocr="auto"``).

    Example::

        ringkit.ask("sonnets.txt", "What is the poem's main image?")
        ringkit.ask("talk.mp4", "What does the speaker announce?")   # subtitles + on-screen text
    """
    sampling = {k: options.pop(k) for k in ("temperature", "top_p", "seed", "stop", "loop_guard")
                if k in options}
    # Wrong arguments are refused before the source is read and prefilled.
    check_question(question)
    check_sampling(max_new_tokens, *sampling_for(None, sampling.get("temperature"),
                                                 sampling.get("top_p")))
    stop_strings(sampling.get("stop"))
    _check_stream(stream)
    model = resolve_model(model, mesh, dtype, quick=True)
    asked = len(model.tokenizer.encode(question)) + 32  # + the template's
    room, limit = max_new_tokens + asked, model.config.context_length
    if asked >= limit:
        raise ConfigError(f"the question is {asked - 32:,} tokens: with the chat template it "
                          f"fills the whole {limit:,}-token context of {model.config.name} and "
                          "leaves nothing for the document; shorten the question")
    if room >= limit:
        flag = advice("max_new_tokens=", "--max-new-tokens ")
        raise ConfigError(f"{flag}{max_new_tokens:,} and the question leave nothing of the "
                          f"{limit:,}-token context of {model.config.name} for the document: "
                          f"ask for fewer new tokens ({flag}N, well under {limit - asked:,})")
    ctx = read(source, model=model, room=room, focus=question, **options)
    return ctx.ask(question, max_new_tokens=max_new_tokens, stream=stream, **sampling)


def load_context(path, *, model=None, mesh=None) -> Context:
    """A context saved by ``Context.save``, ready for questions (``ringkit.persist`` has the
    format and what a load checks).

    Args:
      path: the saved context's directory.
      model: the model that prefilled it (default: the embedded model, or the checkpoint the
        context was prefilled from, loaded on ``mesh``). A different model is refused.
      mesh: where the default model runs (default: every device on 'sp'); any 'sp' works.

    Example::

        ctx = ringkit.load_context("hamlet.ctx", mesh=ringkit.make_mesh(sp=8))
        ctx.ask("Where is the play set?")
    """
    path = pathlib.Path(path).expanduser().absolute()
    meta = persist.read_meta(path)
    if model is not None and mesh is not None:
        raise ConfigError("pass either model= (already on its mesh) or mesh= (for the model the "
                          "context was prefilled with), not both")
    model = resolve_model(model, None) if model is not None else _saved_model(
        meta["model"]["source"], mesh)
    doc, prompt, cache = persist.restore(path, meta, model)
    return Context(model, doc, prompt, cache, meta["room"], meta["prefill_seconds"],
                   jnp.copy(cache.slot_pos), cache.next_pos.copy(), fitted=meta.get("fitted"),
                   _window_pos=_copy(cache.window_pos))


def _saved_model(source: str | None, mesh):
    """The model a context was prefilled with: the embedded one, or its checkpoint's."""
    if source is None:
        return default_model(mesh)
    if not pathlib.Path(source).exists():
        raise SourceError(f"the context was prefilled by {source}, which is gone: "
                          "pass model=ringkit.load_model(...) with the same checkpoint")
    return load_model(source, mesh=mesh)
