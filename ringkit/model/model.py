"""``Model``: a loaded transformer on a mesh, with its tokenizer; logits, prefill and decode steps.

The sequence is permuted into the ring layout once per forward pass (``batch.pack``), every layer
runs ring attention on it, and outputs are permuted back. Prefill keeps each layer's keys and
values where they were computed, as a cache sharded over 'sp' (``KVCache``); decode steps attend
that cache in place (``ringkit.attention.decode``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ringkit.attention import decode
from ringkit.attention.layouts import layout_positions
from ringkit.errors import ConfigError, ShapeError, advice, is_whole
from ringkit.generate import Sampling, generate
from ringkit.model.batch import Batch, int_array, pack, padded_length
from ringkit.model.config import ModelConfig
from ringkit.model.kvcache import KVCache
from ringkit.model.memory import estimate, window_kept
from ringkit.model.runtime import Runtime
from ringkit.model.transformer import Transformer, param_shardings, spread
from ringkit.model.weights.place import abstract_variables
from ringkit.progress import Silent, bar, reporting
from ringkit.tokenize.prompts import tokenize

ROWS = P(("dp", "fsdp"), "sp")       # [b, S] inputs of a prefill
STEP = P(("dp", "fsdp"), None)       # [b, t] inputs of a decode step
PREFILL_BAR_TOKENS = 4096             # prefills of at least this many tokens show a bar per layer


class Model:
    """A transformer with weights on a mesh and its tokenizer (``ringkit.load_model`` builds one).

    Attributes: ``config`` (``ModelConfig``), ``tokenizer``, ``mesh``, ``runtime``, ``variables``,
    ``source`` (the checkpoint path it was loaded from; None for the embedded model),
    ``sampling`` (the ``ringkit.generate.Sampling`` its authors recommend, which
    ``ringkit.ask`` uses by default; None: greedy).

    Example::

        model = ringkit.load_model()
        logits = model.logits(model.tokenizer.encode("The capital of France is"))
        print(model.generate("What is the capital of France?", max_new_tokens=16))
    """

    def __init__(self, config: ModelConfig, variables, tokenizer, runtime: Runtime):
        self.config, self.variables, self.tokenizer, self.runtime = (
            config, variables, tokenizer, runtime)
        self.source: str | None = None
        self.sampling: Sampling | None = None  # what its authors recommend
        self._plain = Transformer(config, runtime)
        # Decode steps run the layers unrolled (see ``Transformer``), on ``_decode_variables``.
        self._decoder = Transformer(
            config, dataclasses.replace(runtime, scan_layers=False, remat=False))

    @classmethod
    def init_random(cls, config: ModelConfig, runtime: Runtime, *, seed: int = 0,
                    tokenizer=None) -> "Model":
        """A model with random weights (initialised directly into their shards), for tests and
        benchmarks."""
        module = Transformer(config, runtime)
        shardings = param_shardings(abstract_variables(config, runtime), runtime.mesh)
        ids = jnp.zeros((runtime.mesh.shape["dp"] * runtime.mesh.shape["fsdp"], 2 * runtime.sp),
                        jnp.int32)
        aux = dict(positions=ids, segment_ids=None, vision_mask=None)
        init = jax.jit(lambda key: module.init(key, ids, aux), out_shardings=shardings)
        return cls(config, init(jax.random.key(seed)), tokenizer, runtime)

    @property
    def mesh(self):
        return self.runtime.mesh

    @property
    def sp(self) -> int:
        return self.runtime.sp

    @property
    def _batch_shards(self) -> int:
        return self.mesh.shape["dp"] * self.mesh.shape["fsdp"]

    def __repr__(self):
        return (f"Model({self.config.name}, {self.config.param_count() / 1e6:.1f}M params, "
                f"mesh={dict(self.mesh.shape)}, dtype={self.runtime.dtype}, "
                f"weights={self.runtime.weights_dtype})")

    # -- helpers -------------------------------------------------------------------------------
    def _put(self, x, spec):
        return None if x is None else jax.device_put(x, NamedSharding(self.mesh, spec))

    def check_length(self, n: int) -> None:
        limit = self.config.context_length
        if n > limit and self.config.beyond_context:
            raise ShapeError(
                f"{n} tokens exceed the {limit}-token context ringkit runs {self.config.name} at: "
                f"past it the checkpoint uses {self.config.beyond_context}, which ringkit does "
                "not compute; shorten the input")
        if n > limit:
            raise ShapeError(
                f"{n} tokens exceed the {limit}-token context of {self.config.name}; shorten the "
                "input or load the model with RoPE scaling, e.g. " + advice(
                    f"ringkit.load_model(..., rope_scaling=ringkit.model.RopeScaling('yarn', "
                    f"{-(-n // limit)}.0, original_max_position={self.config.max_position}))",
                    f"--rope-scaling yarn:{-(-n // limit)}"))

    def check_ids(self, ids, vision_mask=None, *, first_row: int = 0) -> None:
        """Refuse token ids ``[rows, seq]`` outside the model's vocabulary (the vision
        vocabulary where ``vision_mask``): an embedding lookup past the table gives NaN, not an
        error. ``first_row`` numbers the rows in the message."""
        ids = np.asarray(ids)
        vision = (np.zeros(ids.shape, bool) if vision_mask is None or not self.config.has_vision
                  else np.asarray(vision_mask, bool))
        for mask, size, what in ((~vision, self.config.vocab_size, "vocabulary"),
                                 (vision, self.config.vision_vocab_size, "vision vocabulary")):
            bad = mask & ((ids < 0) | (ids >= size))
            if bad.any():
                row, pos = (int(i) for i in np.argwhere(bad)[0])
                raise ShapeError(
                    f"token id {int(ids[row, pos])} (row {first_row + row}, position {pos}) is "
                    f"outside the {size:,}-id {what} of {self.config.name}: tokenize with this "
                    "model's tokenizer (model.tokenizer.encode) or load the model the ids were "
                    "made for")

    # -- full-sequence logits ------------------------------------------------------------------
    @functools.cached_property
    def _logits_fn(self):
        def fn(variables, ids, positions, segment_ids, vision_mask, head):
            aux = dict(positions=positions, segment_ids=segment_ids, vision_mask=vision_mask)
            h, _ = self._plain.apply(variables, ids, aux)
            return self._plain.apply(variables, h, head, method=Transformer.logits)

        return jax.jit(fn, static_argnums=5)

    def logits(self, ids, *, attention_mask=None, positions=None, segment_ids=None,
               vision_mask=None, head: str = "text"):
        """Logits, a host ``np.ndarray float32 [batch, seq, vocab]``, for ``ids [batch, seq]`` (or
        one list of ids).

        ``attention_mask [b, s]`` (0 = padding, LWM's left padding included), ``positions`` (default
        ``clip(cumsum(mask) - 1, 0)``), ``segment_ids`` (tokens see their own segment only) and
        ``vision_mask`` (LWM vision tokens) follow LWM's model call. ``head="vision"`` returns the
        vision head's logits. Positions whose mask is 0 hold no meaningful value.
        """
        ids = int_array(ids, "ids", ndim=(1, 2))  # the vocabulary is checked past the padding
        ids = ids[None] if ids.ndim == 1 else ids
        b, s = ids.shape
        if ids.size == 0:
            raise ShapeError(f"ids have shape {ids.shape}: give at least one token")
        if head not in ("text", "vision") or (head == "vision" and not self.config.has_vision):
            raise ConfigError(f"head={head!r}: this model has heads 'text'"
                              + (" and 'vision'" if self.config.has_vision else ""))

        def like_ids(x, what, **kw):  # [b, s] as ids, or one row of s for a single row
            a = int_array(x, what, **kw)
            if a.shape not in ((b, s),) + (((s,),) if b == 1 else ()):
                raise ShapeError(f"{what} has shape {a.shape}; ids have shape {(b, s)}")
            return a.reshape(b, s)

        mask = np.ones((b, s), bool)
        if attention_mask is not None:
            given = np.asarray(attention_mask)
            if given.dtype == bool or (np.issubdtype(given.dtype, np.floating)
                                       and np.isin(given, (0, 1)).all()):
                given = given.astype(np.int32)  # True/False or 1.0/0.0 as 1/0
            mask = like_ids(given, "attention_mask") > 0
        if positions is None:
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        positions = like_ids(positions, "positions", low=0)
        self.check_length(int(np.max(positions)) + 1)
        if vision_mask is not None:
            vm_raw = np.asarray(vision_mask)
            if vm_raw.shape not in ((b, s),) + (((s,),) if b == 1 else ()):
                raise ShapeError(f"vision_mask has shape {vm_raw.shape}; ids have shape "
                                 f"{(b, s)}")
            vision_mask = vm_raw.reshape(b, s).astype(bool)
        # Padding's ids are never attended to, but a NaN embedding (an id past the table)
        # would still reach real tokens through 0 * NaN: padding reads id 0.
        ids = np.where(mask, ids, 0).astype(np.int32)
        self.check_ids(ids, vision_mask)
        seg = (np.zeros((b, s), np.int32) if segment_ids is None
               else like_ids(segment_ids, "segment_ids", low=-1))
        seg = np.where(mask, seg, -1).astype(np.int32)
        total = padded_length(s, self.sp, self.runtime.layout)
        extra_rows = -b % self._batch_shards  # all-padding rows so the batch divides dp*fsdp
        rows = lambda x, fill: np.pad(np.asarray(x), ((0, extra_rows), (0, total - s)),
                                      constant_values=fill)

        order = layout_positions(total, self.sp, self.runtime.layout)
        lay = lambda x: np.ascontiguousarray(x[:, order])
        vm = None if vision_mask is None else self._put(lay(rows(vision_mask, False)), ROWS)
        out = self._logits_fn(
            self.variables, self._put(lay(rows(ids, 0)), ROWS),
            self._put(lay(rows(positions, 0).astype(np.int32)), ROWS),
            self._put(lay(rows(seg, -1)), ROWS), vm, head)
        # The layout's order is undone on the host: a gather along the sharded sequence axis on
        # the devices would replicate the whole [b, S, vocab] on every one of them.
        inverse = np.argsort(order)
        return np.take(np.asarray(out)[:b], inverse[:s], axis=1)

    # -- prefill and decode --------------------------------------------------------------------
    @functools.cached_property
    def _prefill_fn(self):
        mesh = self.mesh

        def fn(variables, ids, positions, segment_ids, vision_mask, last, extra):
            module = Transformer(self.config, self.runtime, collect_kv=extra)
            aux = dict(positions=positions, segment_ids=segment_ids, vision_mask=vision_mask)
            base = ids.shape[1] // self.sp
            windowed = self._windowed(base)
            if windowed:  # local layers keep only the prompt's last window (see Transformer)
                order = layout_positions(ids.shape[1], self.sp, self.runtime.layout)
                aux["window_length"] = jnp.asarray(order)[last] + 1
            gather = jnp.broadcast_to(last, (ids.shape[0], 1))
            h, (k, v) = module.apply(variables, ids, aux, gather=gather)
            logits = module.apply(variables, h, method=Transformer.logits)[:, 0]
            prefill_pos = jnp.where(segment_ids >= 0, positions, -1)
            room = extra + decode.SPARE_SLOTS
            slot_pos = decode.extend_slots(prefill_pos, room, mesh=mesh, spec=decode.SLOT_SPEC,
                                           axis=1, value=-1)
            window_pos = None if not windowed else decode.window_cache(
                prefill_pos, order, aux["window_length"], window=self.config.sliding_window,
                base=base, extra=room, mesh=mesh, spec=decode.SLOT_SPEC, axis=1, value=-1)
            return logits, k, v, slot_pos, window_pos

        # ``last`` (the slot of the prompts' last token) is traced: prompts of any length that
        # pad to the same shape share one executable.
        return jax.jit(fn, static_argnums=(6,))

    def _windowed(self, base: int) -> bool:
        """Whether a prefill of ``base`` slots per device keeps its local layers' caches to the
        window: when the model has local layers and their window takes fewer slots."""
        return window_kept(self.config, self.sp, base) is not None

    def prefill(self, rows, *, max_new_tokens: int, vision_rows=None,
                steps: Sequence[int] | None = None) -> tuple[jax.Array, KVCache]:
        """Run token ``rows`` (lists of ids) through the model, keeping a sharded KV cache with
        room for at least ``max_new_tokens - 1`` appended tokens per row (rounded up by
        ``ringkit.attention.decode.room_slots``, so nearby lengths share one executable).
        Returns ``(last logits [b, vocab], cache)``.

        ``steps``: token counts of the decode steps to compile while the prefill runs (default:
        ``(1,)`` when tokens will be generated), so that the first ``step`` does not wait for a
        compile. On an accelerator the host compiles while the device computes.
        """
        if not is_whole(max_new_tokens, 1):
            raise ConfigError(f"max_new_tokens must be a whole number >= 1, got "
                              f"{max_new_tokens!r}")
        if isinstance(rows, (str, bytes)) or not len(rows) or all(
                isinstance(r, (int, np.integer)) for r in rows):
            raise ShapeError("rows are the prompts, each a list of token ids: pass [ids] for one "
                             f"prompt (got {str(rows)[:40]!r})")
        for r, row in enumerate(rows):
            self.check_ids(int_array(row, f"row {r}", ndim=(1,))[None],
                           None if vision_rows is None else [vision_rows[r]], first_row=r)
        batch: Batch = pack(rows, sp=self.sp, layout=self.runtime.layout,
                            vision_rows=vision_rows, row_multiple=self._batch_shards)
        self.check_length(batch.length + max_new_tokens - 1)  # the last new token is not fed
        extra = decode.room_slots(max_new_tokens - 1, self.sp)  # the last new token is not fed
        steps = ((1,) if max_new_tokens > 1 else ()) if steps is None else steps
        with bar(self.config.n_layers, "prefill", "layer", threshold=PREFILL_BAR_TOKENS,
                 amount=batch.ids.size) as progress, reporting(progress):
            logits, k, v, slot_pos, window_pos = self._prefill_fn(
                self.variables, self._put(batch.ids, ROWS), self._put(batch.positions, ROWS),
                self._put(batch.segment_ids, ROWS), self._put(batch.vision_mask, ROWS),
                jnp.int32(batch.last_slot), extra)
            base = batch.ids.shape[1] // self.sp
            window_base = window_kept(self.config, self.sp, base) or 0
            cache = KVCache(
                k, v, slot_pos, base=base, appended=0, next_pos=batch.lengths.copy(),
                rows=len(rows), window_pos=window_pos, window_base=window_base)
            # The prefill was dispatched asynchronously: compile the decode steps meanwhile.
            for t in steps:
                self._compile_step(cache, t)
            if not isinstance(progress, Silent):
                jax.block_until_ready(logits)  # the bar stays until the last layer is done
        return logits[:len(rows)], cache

    def _compile_step(self, cache: KVCache, t: int) -> None:
        """Compile (or find compiled) the decode step that appends ``t`` tokens to ``cache``:
        later ``step`` calls of that shape reuse it."""
        tokens = jax.ShapeDtypeStruct((len(cache.next_pos), t), jnp.int32,
                                      sharding=NamedSharding(self.mesh, STEP))
        self._step_fn.lower(self._decode_variables, cache.k, cache.v, cache.slot_pos,
                            cache.window_pos, tokens, tokens, jnp.int32(0), jnp.int32(0),
                            jnp.int32(0)).compile()

    @functools.cached_property
    def _step_fn(self):
        mesh = self.mesh

        def decode_step(variables, k, v, slot_pos, window_pos, tokens, positions, counter, base,
                        window_base):
            aux = dict(positions=positions, slot_pos=slot_pos, counter=counter, base=base,
                       window_pos=window_pos, window_base=window_base, vision_mask=None)
            h, cache = self._decoder.apply(
                variables, tokens, aux, cache=dict(k=k, v=v),
                gather=jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1, jnp.int32))
            logits = self._decoder.apply(variables, h, method=Transformer.logits)
            logits = spread(logits, mesh, {2: ("tp", "sp")})[:, 0]  # vocab split over devices
            slot_pos = decode.append_positions(slot_pos, positions, counter, base, mesh=mesh)
            if window_pos is not None:
                window_pos = decode.append_positions(window_pos, positions, counter,
                                                     window_base, mesh=mesh)
            return logits, cache["k"], cache["v"], slot_pos, window_pos

        return jax.jit(decode_step, donate_argnums=(1, 2, 3, 4))

    @functools.cached_property
    def _decode_variables(self):
        """The weights as decode steps read them: one array per layer (unstacked once when the
        layers are scanned) and, with sp > 1, features also split over 'sp' (a 1/sp slice per
        device beside its full copy). An unscanned model on sp = 1 reuses its own weights."""
        if self.sp == 1 and not self.runtime.scan_layers:
            return self.variables

        runtime = self._decoder.runtime
        shardings = param_shardings(abstract_variables(self.config, runtime), self.mesh,
                                    decode=True)
        return unstack_layers(self.variables, self.config.n_layers, shardings)

    def step(self, cache: KVCache, tokens) -> jax.Array:
        """Append ``tokens [b, t]`` to ``cache`` (in place) and return the logits ``[b, vocab]``
        after the last of them."""
        tokens = int_array(tokens, "tokens", ndim=(1, 2))
        tokens = tokens[:, None] if tokens.ndim == 1 else tokens
        if tokens.shape[1] == 0:
            raise ShapeError(f"tokens have shape {tokens.shape}: give at least one per row")
        if tokens.shape[0] != cache.rows:
            raise ShapeError(f"tokens have {tokens.shape[0]} rows but the cache holds "
                             f"{cache.rows} prompts")
        tokens = np.pad(tokens, ((0, len(cache.next_pos) - cache.rows), (0, 0)))
        t = tokens.shape[1]
        if t > cache.room(self.sp):
            raise ShapeError(f"the KV cache has room for {cache.room(self.sp)} more tokens, not "
                             f"{t}; prefill with a larger max_new_tokens")
        positions = cache.next_pos[:, None] + np.arange(t, dtype=np.int32)
        self.check_length(int(positions.max()) + 1)
        self.check_ids(tokens)
        logits, cache.k, cache.v, cache.slot_pos, cache.window_pos = self._step_fn(
            self._decode_variables, cache.k, cache.v, cache.slot_pos, cache.window_pos,
            self._put(tokens, STEP), self._put(positions.astype(np.int32), STEP),
            jnp.int32(cache.appended), jnp.int32(cache.base), jnp.int32(cache.window_base))
        cache.appended += t
        cache.next_pos = cache.next_pos + t
        return logits[:cache.rows]

    def memory(self, tokens: int, *, new_tokens: int = 0, mesh=None, batch: int = 1):
        """The estimated memory per device (``ringkit.model.memory.MemoryEstimate``) of
        prefilling ``tokens`` with room for ``new_tokens``, on this mesh or ``mesh`` (a mesh or
        axis sizes such as ``{"sp": 64}``).

        Example::

            print(model.memory(1_000_000, mesh={"sp": 64}).describe())
        """
        return estimate(self, tokens, new_tokens=new_tokens, mesh=mesh, batch=batch)

    def tokenize(self, doc, question: str | None = None, *, vqgan=None, cache=None):
        """``doc`` (a ``ringkit.Document``) and ``question`` as prompt tokens for this model:
        ``Tokens`` with ``ids``, ``vision`` (modality mask), ``segment`` (provenance),
        ``positions``, ``counts`` and ``summary(model)``, read from or saved to the token store
        (``cache``); see ``ringkit.tokenize.prompts``.

        Example::

            tokens = model.tokenize(rk.ingest("book.txt"), "Who is the narrator?")
            print(tokens.summary(model))
        """
        return tokenize(doc, self, question, vqgan=vqgan, cache=cache)

    def generate(self, prompts, **kwargs):
        """Generate text; see ``ringkit.generate.generate`` for the arguments."""
        return generate(self, prompts, **kwargs)


def unstack_layers(variables, n: int, shardings=None):
    """Params with layers stacked under ``layers/block`` (scanned) -> ``layers_<i>/block``, placed
    with ``shardings`` (a tree for the unstacked variables) where given.

    One small program takes one layer and runs once per layer: a single program returning all
    ``n`` layers took XLA ~14 s to compile for SmolLM2 on 4 devices (270 resharded outputs),
    paid by every first ``generate``.
    """
    params = dict(variables["params"])
    if "layers" not in params:
        return variables if shardings is None else jax.device_put(variables, shardings)
    stacked = params.pop("layers")["block"]
    rest = {**variables, "params": params}
    if shardings is not None:
        layer_shardings = shardings["params"]["layers_0"]["block"]
        shardings = {**shardings, "params": {k: v for k, v in shardings["params"].items()
                                             if not k.startswith("layers_")}}
        rest = jax.device_put(rest, shardings)
    else:
        layer_shardings = None
    take = jax.jit(lambda tree, i: jax.tree.map(
        lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), tree),
        out_shardings=layer_shardings)
    for i in range(n):
        rest["params"][f"layers_{i}"] = {"block": take(stacked, i)}
    return rest
