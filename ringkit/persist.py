"""Prefilled contexts on disk: the format behind ``Context.save(path)`` and
``ringkit.load_context(path)`` (which live in ``ringkit.context``).

A saved context is a directory::

    context.json    format version, model identity, mesh, cache bookkeeping, the question
                    template, and the integrity record: SHA-256 digests of itself, of
                    document.json and of arrays.npz, and the size of every cache file
    document.json   the document's text segments, skipped paths, files
    arrays.npz      prompt tokens (ids, modality, provenance) and the document's frames
    cache/          the KV cache and slot positions (and the local layers' window caches' own),
                    written by orbax from their shards

What a saved context guarantees: ``load_context`` gives the context that was saved or a clear
``FormatError``, never a different one. An edited or damaged file (metadata, token ids,
document, a cache file missing or cut short) is found by the integrity record before anything is
read; the cache's slot positions are checked against the metadata after. A save is written to
a hidden sibling (``.NAME.saving-PID-*``) and renamed into place at the end, so a kill at any
moment leaves either no context or the whole one; a later save beside it removes what a killed
one left. (The cache's values are not hashed: that would read gigabytes per save.)

Reloaded on a mesh with the same 'sp', every device reads its own cache shards (no gather).
On another 'sp' the cache is read on the host and laid out for the new ring: exact, but it holds
one full copy of the cache in host memory while it does.

Example::

    ctx = ringkit.read("hamlet.txt")
    ctx.save("hamlet.ctx")
    # ... after a kernel restart ...
    ctx = ringkit.load_context("hamlet.ctx")
    ctx.ask("Who kills Polonius?")
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, SingleDeviceSharding

from ringkit import integrity
from ringkit.attention.decode import LAYER_SPEC, SLOT_SPEC, SPARE_SLOTS, room_slots, window_slots
from ringkit.attention.layouts import layout_positions
from ringkit.errors import ConfigError, FormatError, SourceError
from ringkit.inputs.document import Document, FramesSegment, Skipped, TextSegment, VideoText
from ringkit.model.batch import padded_length
from ringkit.model.kvcache import KVCache
from ringkit.tokenize.prompts import ContextPrompt, Tokens, document_sources

FORMAT = 3  # 2: the integrity record; 3: local layers' window caches (reads 2 too)
_READS = (2, 3)
_ARRAYS, _META, _DOC, _CACHE = "arrays.npz", "context.json", "document.json", "cache"


def _checkpointer():
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise ConfigError("saving a context needs orbax: pip install orbax-checkpoint") from e
    return ocp.StandardCheckpointer()


# -- the document ---------------------------------------------------------------------------

def _doc_json(doc) -> dict:
    segments = [dict(kind="text", text=s.text, source=s.source, span=s.span, title=s.title)
                if isinstance(s, TextSegment) else
                dict(kind="frames", source=s.source, first=s.first, count=s.count)
                for s in doc.segments]
    return dict(segments=segments, files=list(doc.files),
                skipped=[[s.path, s.reason] for s in doc.skipped],
                video_text=[dataclasses.asdict(t) for t in doc.video_text])


def _doc_from(data: dict, frames, frame_times):
    segments: list[TextSegment | FramesSegment] = []
    for s in data["segments"]:
        if s["kind"] == "text":
            span = tuple(s["span"]) if s["span"] is not None else None
            segments.append(TextSegment(s["text"], s["source"], span, s["title"]))
        else:
            segments.append(FramesSegment(s["source"], s["first"], s["count"]))
    return Document(segments=segments, files=list(data["files"]),
                    skipped=[Skipped(p, r) for p, r in data["skipped"]],
                    frames=frames, frame_times=frame_times,
                    video_text=[VideoText(**t) for t in data.get("video_text", [])])


# -- save -----------------------------------------------------------------------------------

def _model_identity(model) -> dict:
    cfg = model.config
    return dict(name=cfg.name, source=getattr(model, "source", None),
                n_layers=cfg.n_layers, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                vocab_size=cfg.vocab_size, weights_dtype=model.runtime.weights_dtype,
                layout=model.runtime.layout, tokenizer=model.tokenizer.digest,
                rope_scaling=repr(cfg.rope_scaling), context_length=cfg.context_length)


def save_context(ctx, path) -> pathlib.Path:
    """Write ``ctx`` (a ``ringkit.Context``) to the directory ``path`` (which must not exist).

    The write goes to a temporary sibling first and is renamed at the end: an interrupted save
    leaves no half-written context behind.
    """
    path = pathlib.Path(path).expanduser().absolute()
    if path.exists() or path.is_symlink():
        what = "already exists" if path.exists() else "is a symlink (to nothing)"
        raise SourceError(f"{path} {what}: choose a new path or remove it first")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder should be, a read-only disk
        raise SourceError(f"cannot save to {path}: its folder cannot be made ({e.strerror or e})"
                          ) from None
    ctx._rewind()
    cache, tokens, doc = ctx.cache, ctx.tokens, ctx.doc
    # One process: write a temporary sibling and rename it. Several (multi-host): every process
    # writes its shards to the final path (orbax commits the cache atomically itself) and
    # process 0 writes the rest.
    single = jax.process_count() == 1
    if single:
        integrity.remove_leftovers(path)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{integrity.saving_prefix(path)}{os.getpid()}-",
                                            dir=path.parent))
    else:
        tmp = path
    try:
        with _checkpointer() as ckpt:
            arrays = dict(k=list(cache.k), v=list(cache.v), slot_pos=ctx._slot_pos)
            if cache.window_base:
                arrays["window_pos"] = ctx._window_pos
            ckpt.save(tmp / _CACHE, arrays)
            ckpt.wait_until_finished()
        if jax.process_index() != 0:
            return path
        segment = tokens.segment if tokens.segment is not None else np.zeros(0, np.uint32)
        np.savez(tmp / _ARRAYS, ids=tokens.ids, vision=tokens.vision, segment=segment,
                 has_segment=np.bool_(tokens.segment is not None),
                 frames=doc.frames, frame_times=doc.frame_times)
        (tmp / _DOC).write_text(json.dumps(_doc_json(doc)))
        meta = dict(format=FORMAT, model=_model_identity(ctx.model),
                    mesh=dict(ctx.model.mesh.shape), sp=ctx.model.sp, base=cache.base,
                    slots=cache.slots, window_base=cache.window_base,
                    window_slots=cache.window_pos.shape[1] if cache.window_base else 0,
                    next_pos=[int(p) for p in ctx._next_pos], rows=cache.rows, room=ctx.room,
                    template=ctx.prompt.template, prefill_seconds=ctx.prefill_seconds,
                    fitted=ctx.fitted,
                    digests={name: integrity.file_digest(tmp / name) for name in (_ARRAYS, _DOC)},
                    cache_files=integrity.file_sizes(tmp / _CACHE, tmp) if single else None)
        meta["digest"] = integrity.meta_digest(meta)
        (tmp / _META).write_text(json.dumps(meta, indent=1))
        if single:
            try:
                os.rename(tmp, path)  # a directory onto a name nothing holds: atomic
            except OSError as e:
                raise SourceError(f"cannot save to {path}: {e.strerror or e} (another save may "
                                  "have made it meanwhile); choose a new path") from None
    except BaseException:
        if single:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- load -----------------------------------------------------------------------------------

def read_meta(path: pathlib.Path) -> dict:
    """The checked metadata of the context saved at ``path`` (its ``context.json``)."""
    if not (path / _META).is_file():
        what = "does not exist" if not path.exists() else f"has no {_META}"
        raise SourceError(f"{path} {what}: it is not a context saved by Context.save")
    try:
        meta = json.loads((path / _META).read_text())
    except (OSError, ValueError) as e:
        raise FormatError(f"{path / _META} is unreadable or corrupt ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") not in _READS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise FormatError(f"{path} was saved in context format {found}; this "
                          f"ringkit reads formats {', '.join(map(str, _READS))}: read the "
                          "source again")
    problem = _meta_problem(meta)
    if problem:
        raise FormatError(f"{path / _META} is corrupt ({problem}): read the source again")
    problem = integrity.problem(path, meta, _META, (_ARRAYS, _DOC))
    if problem:
        raise FormatError(f"{path} is not the context that was saved ({problem}): read the "
                          "source again")
    return meta


# What must match between the model that prefilled a context and the one that reads it.
_MODEL_KEYS = ("name", "n_layers", "n_kv_heads", "head_dim", "vocab_size", "weights_dtype",
               "layout", "tokenizer", "rope_scaling", "context_length")


def _meta_problem(meta: dict) -> str | None:
    """What is wrong with a context's metadata (edited or damaged), or None."""
    whole = lambda x, low=0: isinstance(x, int) and not isinstance(x, bool) and x >= low
    model = meta.get("model")
    if not isinstance(model, dict) or not all(
            k in model for k in (*_MODEL_KEYS, "source")):
        return "its model description is missing or incomplete"
    for key, low in (("sp", 1), ("base", 1), ("slots", 1), ("rows", 1), ("room", 1)):
        if not whole(meta.get(key), low):
            return f"{key}={meta.get(key)!r} is not a whole number >= {low}"
    next_pos = meta.get("next_pos")
    if not isinstance(next_pos, list) or not next_pos or not all(
            whole(p, 1) and p + meta["room"] <= meta["slots"] for p in next_pos):
        return (f"next_pos={next_pos!r:.60} must hold each row's length (1 or more) with room "
                f"for {meta['room']} tokens in {meta['slots']} slots")
    window_base, window_all = meta.get("window_base", 0), meta.get("window_slots", 0)
    if not whole(window_base) or not whole(window_all) or (
            window_base > 0) != (window_all > window_base):
        return (f"window_base={window_base!r} and window_slots={window_all!r} must both be 0 "
                "or whole numbers with more slots than base")
    if meta["rows"] > len(next_pos):
        return f"rows={meta['rows']} but next_pos has {len(next_pos)} entries"
    if not isinstance(meta.get("template"), str) or "{question}" not in meta["template"]:
        return "its question template is missing"
    return None


def _check_model(model, saved: dict, path) -> None:
    mine = _model_identity(model)
    diff = [f"{k}: saved {saved[k]!r}, given {mine[k]!r}" for k in _MODEL_KEYS
            if saved[k] != mine[k]]
    if diff:
        raise ConfigError(f"{path} was prefilled by another model ({'; '.join(diff)}): pass "
                          f"that model, e.g. ringkit.load_context(path, model=ringkit.load_model("
                          f"{saved['source']!r}))")


def relayout_cache(arrays, slot_pos, *, sp: int, base: int, layout: str, extra: int):
    """Lay a cache read on the host out for a ring of ``sp`` devices.

    ``arrays``: ``[b, kv, slots, hd]`` each (keys and values of every layer, in any previous
    layout); ``slot_pos [b, slots]`` their positions (-1 = empty). Returns ``(arrays, slot_pos)``
    in the prefill layout for ``sp``: ``base`` slots per device in ``layout`` order, then
    ``extra`` empty ones (numpy).
    """
    b, total = slot_pos.shape[0], base * sp
    order = layout_positions(total, sp, layout)
    source = np.full((b, total), -1)  # the old slot of every natural position (-1: none)
    for r in range(b):
        filled = np.flatnonzero(slot_pos[r] >= 0)
        source[r, slot_pos[r, filled]] = filled
    source = source[:, order]  # ... of every new slot, in layout order
    pos = np.where(source >= 0, order[None, :], -1).astype(np.int32).reshape(b, sp, base)
    pos = np.pad(pos, ((0, 0), (0, 0), (0, extra)), constant_values=-1)

    def lay(a):
        a = np.asarray(a)
        out = np.zeros((b, a.shape[1], total, a.shape[3]), a.dtype)
        for r in range(b):
            ok = source[r] >= 0
            out[r][:, ok] = a[r][:, source[r, ok]]
        out = out.reshape(b, a.shape[1], sp, base, a.shape[3])
        out = np.pad(out, ((0, 0), (0, 0), (0, 0), (0, extra), (0, 0)))
        return out.reshape(b, a.shape[1], sp * (base + extra), a.shape[3])

    return [lay(a) for a in arrays], pos.reshape(b, -1)


def relayout_window(a, *, sp_saved: int, base_saved: int, sp: int, window: int, extra: int,
                    axis: int, fill):
    """Lay a local layer's window cache (or its positions) read on the host out for a ring of
    ``sp`` devices: window slot ``j`` sits on device ``j // window_slots(window, sp)``
    (``ringkit.attention.decode.window_cache``), followed by ``extra`` empty slots."""
    a = np.asarray(a)
    lead, rest = a.shape[:axis], a.shape[axis + 1:]
    kept = a.reshape(lead + (sp_saved, -1) + rest)
    kept = np.take(kept, np.arange(base_saved), axis=axis + 1)  # each device's window slots
    kept = np.take(kept.reshape(lead + (-1,) + rest), np.arange(window), axis=axis)
    per = window_slots(window, sp)
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, per * sp - window)
    kept = np.pad(kept, widths, constant_values=fill).reshape(lead + (sp, per) + rest)
    widths = [(0, 0)] * (a.ndim + 1)
    widths[axis + 1] = (0, extra)
    kept = np.pad(kept, widths, constant_values=fill)
    return kept.reshape(lead + (sp * (per + extra),) + rest)


def restore(path: pathlib.Path, meta: dict, model):
    """The document, prompt and KV cache saved at ``path`` (whose metadata ``read_meta`` gave),
    laid out for ``model``'s mesh: ``(doc, prompt, cache)``. A model other than the one that
    prefilled it is refused with a ``ConfigError``; damage found on the way is a
    ``FormatError``. ``ringkit.load_context`` builds the ``Context`` from them.
    """
    saved = meta["model"]
    _check_model(model, saved, path)
    try:
        with np.load(path / _ARRAYS) as z:
            arrays = {name: z[name] for name in z.files}
        doc = _doc_from(json.loads((path / _DOC).read_text()), arrays["frames"],
                        arrays["frame_times"])
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        raise FormatError(f"{path} is corrupt or incomplete ({type(e).__name__}: {e}): read the "
                          "source again") from e
    segment = arrays["segment"] if bool(arrays["has_segment"]) else None
    tokens = Tokens(arrays["ids"], arrays["vision"], segment, document_sources(doc))

    dtype = jnp.dtype(saved["weights_dtype"])
    rows, slots = len(meta["next_pos"]), meta["slots"]
    shape = (rows, saved["n_kv_heads"], slots, saved["head_dim"])
    same_ring = meta["sp"] == model.sp
    shards = model.mesh.shape["dp"] * model.mesh.shape["fsdp"]
    if rows % shards:
        raise ConfigError(f"the context holds {rows} rows, which the mesh's batch axes "
                          f"(dp * fsdp = {shards}) do not divide: use a mesh with dp * fsdp "
                          f"dividing {rows}")
    # The same ring: every device restores its own shards. Another: restore on the host.
    host = SingleDeviceSharding(jax.devices()[0])
    layer = NamedSharding(model.mesh, LAYER_SPEC) if same_ring else host
    slot = NamedSharding(model.mesh, SLOT_SPEC) if same_ring else host
    # Local layers saved as window caches (``KVCache.window_pos``) stay window caches.
    window_base, window_all = meta.get("window_base", 0), meta.get("window_slots", 0)
    windowed = model.config.local_layers if window_base else (False,) * saved["n_layers"]
    window_shape = (rows, saved["n_kv_heads"], window_all, saved["head_dim"])
    kv_target = [jax.ShapeDtypeStruct(window_shape if local else shape, dtype, sharding=layer)
                 for local in windowed]
    target = dict(k=kv_target, v=kv_target,
                  slot_pos=jax.ShapeDtypeStruct((rows, slots), jnp.int32, sharding=slot))
    if window_base:
        target["window_pos"] = jax.ShapeDtypeStruct((rows, window_all), jnp.int32,
                                                    sharding=slot)
    try:
        with _checkpointer() as ckpt:
            restored = ckpt.restore(path / _CACHE, target)
    except Exception as e:  # orbax raises several kinds for missing or damaged files
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise FormatError(f"{path / _CACHE} could not be read ({type(e).__name__}"
                          f"{': ' + first if first else ''}): read the source again") from None
    k, v, slot_pos, base = restored["k"], restored["v"], restored["slot_pos"], meta["base"]
    filled = np.asarray(slot_pos).max(axis=1) + 1  # each row's prompt length
    if filled[:meta["rows"]].tolist() != meta["next_pos"][:meta["rows"]]:
        raise FormatError(f"{path / _CACHE} does not match {_META} (rows of "
                          f"{filled.tolist()} tokens, not {meta['next_pos']}): read the source "
                          "again")
    window_pos = restored.get("window_pos")
    if not same_ring:
        sp = model.sp
        base = padded_length(int(max(meta["next_pos"])), sp, saved["layout"]) // sp
        extra = room_slots(meta["room"], sp) + SPARE_SLOTS  # as ``Model.prefill``
        full = [i for i, local in enumerate(windowed) if not local]
        laid, pos = relayout_cache([k[i] for i in full] + [v[i] for i in full],
                                   np.asarray(slot_pos), sp=sp, base=base,
                                   layout=saved["layout"], extra=extra)
        layer = NamedSharding(model.mesh, LAYER_SPEC)
        k, v = list(k), list(v)
        for j, i in enumerate(full):
            k[i] = jax.device_put(laid[j], layer)
            v[i] = jax.device_put(laid[len(full) + j], layer)
        slot_pos = jax.device_put(pos, NamedSharding(model.mesh, SLOT_SPEC))
        if window_base:
            window = model.config.sliding_window
            move = lambda a, axis, fill: relayout_window(
                a, sp_saved=meta["sp"], base_saved=window_base, sp=sp, window=window,
                extra=extra, axis=axis, fill=fill)
            for i, local in enumerate(windowed):
                if local:
                    k[i] = jax.device_put(move(k[i], 2, 0), layer)
                    v[i] = jax.device_put(move(v[i], 2, 0), layer)
            window_pos = jax.device_put(move(window_pos, 1, -1),
                                        NamedSharding(model.mesh, SLOT_SPEC))
            window_base = window_slots(window, sp)
    next_pos = np.asarray(meta["next_pos"], np.int32)
    cache = KVCache(tuple(k), tuple(v), slot_pos, base=base, appended=0, next_pos=next_pos,
                    rows=meta["rows"], window_pos=window_pos, window_base=window_base)
    return doc, ContextPrompt(tokens, meta["template"], model.tokenizer), cache


