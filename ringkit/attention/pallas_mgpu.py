"""The ring's forward block step as a warp-specialized Mosaic GPU kernel (Hopper, 16-bit inputs).

Same contract as ``pallas_gpu.fold_block``, heads-major with GQA in rows:

  q [b, h, r, d] (scaled), k, v [b, h, nk, d], q_pos [n], k_pos [nk], seg_q [b, n], seg_k [b, nk]
  carry (o [b, h, r, d], m, l [b, h, r]) float32 in natural units, or None for a fresh one

Why a second GPU forward: a Triton program runs a tile's exponentials and the next tile's
matmuls one after the other, which caps the forward near 520 TFLOP/s on an H100 where cuDNN
reaches 600+ (benchmarks/README.md). Here each program owns ``2 * block_q`` rows and runs three
warpgroups: two compute warpgroups of ``block_q`` rows take turns on the tensor cores through a
schedule barrier (one's softmax runs while the other's matmuls do), and a memory warpgroup
streams K/V tiles with TMA into ``stages`` shared-memory slots, handing each over through a
barrier and taking it back once both compute warpgroups are done with it.

Tile visibility is decided outside the kernel, as in ``pallas_gpu``: per warpgroup, a run of
fully visible key tiles without a mask, then masked tiles up to the last visible one. The memory
warpgroup fetches the union of the two warpgroups' tiles; a warpgroup that ends early hands its
remaining slots back unread.

Interpret mode runs JAX's Mosaic GPU interpreter: the warpgroups as threads, the barriers, the TMA
copies, masks, softmax and carry. That interpreter does not model ``wgmma`` from registers or on a
transposed operand, nor layouts, so there the two matmuls are ``jnp`` dots and layout casts are
identities (``_Ops``); the GPU path itself is checked by lowering it for CUDA (tests, no GPU
needed) and on a GPU by the same tests run natively (``tests/test_pallas_mgpu.py``). The interpreter runs the warpgroups as
computations of their own on the CPU device that runs the kernel, so wait for an interpreted
call's result (``jax.block_until_ready``) before dispatching more work: work queued behind it can
deadlock it (jax 0.10), and so can several simulated devices (refused in ``spec.make_spec``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from ringkit.attention import blockwise
from ringkit.attention.bounds import LN2, LOG2E, row_bounds, row_inputs
from ringkit.errors import ConfigError, UnsupportedError

BLOCK_Q = 64  # rows per compute warpgroup: one wgmma M tile
COMPUTE_WGS = 2

# jax 0.10 takes plgpu.load's index as a required argument; jax 0.11 deprecates it (index the ref
# with ``.at`` instead) and warns whenever one is passed, even ``()``.
_LOAD_WANTS_IDX = (inspect.signature(plgpu.load).parameters["idx"].default
                   is inspect.Parameter.empty)


# Pallas' two Mosaic GPU lowerings. "lane": register layouts as the kernel casts them, jax 0.10's
# default and what the kernel was written and interpreted under. "warpgroup": Mosaic infers the
# layouts; jax 0.11's default and what JAX's own Hopper attention runs. Both lower for CUDA from
# the same code and ran within 2% of each other on an H200 (benchmarks/README.md).
LOWERINGS = {"lane": plgpu.LoweringSemantics.Lane,
             "warpgroup": plgpu.LoweringSemantics.Warpgroup}


@dataclasses.dataclass(frozen=True)
class MosaicSizes:
    """Tiles of the Mosaic forward: ``block_k`` keys per K/V tile, ``stages`` shared-memory
    slots in flight, and the Pallas ``lowering`` ("lane" or "warpgroup", see ``LOWERINGS``).
    Rows per program are fixed at 2 x 64 (two compute warpgroups)."""

    block_k: int = 128
    stages: int = 2
    lowering: str = "lane"

    def __post_init__(self):
        if self.block_k not in (64, 128, 256):
            raise ConfigError(f"Mosaic forward block_k={self.block_k!r} must be 64, 128 or 256")
        if self.stages < 2:
            raise ConfigError(f"Mosaic forward stages={self.stages!r} must be at least 2")
        if self.lowering not in LOWERINGS:
            raise ConfigError(f"Mosaic forward lowering={self.lowering!r} must be one of "
                              f"{sorted(LOWERINGS)}")


SMEM_BUDGET = 232448 - 1024  # an H100's shared memory per block, less room for the barriers


def plan(dtype, head_dim: int, rows: int, keys: int, sizes: MosaicSizes | None = None, *,
         interpret=False) -> tuple[int, int]:
    """``(block_k, stages)`` the kernel runs with for rows and keys per device, or a ConfigError
    naming what it cannot take. Key tiles shrink to divide ``keys`` (as the Triton kernel's do);
    a tile and stage count past the shared memory is refused, not shrunk, so a sweep times what
    it asked for. Interpret mode also takes float32, so tests can hold the kernel to the float64
    reference."""
    sizes = sizes or MosaicSizes()
    dtypes = [jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)]
    if jnp.dtype(dtype) not in dtypes + ([jnp.dtype(jnp.float32)] if interpret else []):
        raise ConfigError(f"the Mosaic GPU forward takes bfloat16 or float16 inputs, got {dtype}; "
                          "leave BlockSizes.gpu_forward unset for the Triton forward")
    if head_dim % 64 or head_dim > 256:
        raise ConfigError(f"the Mosaic GPU forward needs head_dim a multiple of 64 up to 256, "
                          f"got {head_dim}; leave BlockSizes.gpu_forward unset for the Triton "
                          "forward")
    if rows % (COMPUTE_WGS * BLOCK_Q) or keys % 64:
        raise ConfigError(
            f"the Mosaic GPU forward needs rows per device (positions x GQA group) a multiple of "
            f"{COMPUTE_WGS * BLOCK_Q} and keys per device a multiple of 64, got {rows} rows and "
            f"{keys} keys; pad the sequence (ringkit.pad_for_ring)")
    block_k = sizes.block_k
    while keys % block_k:
        block_k //= 2
    stages = min(sizes.stages, keys // block_k)  # no more slots than tiles
    # Q's two 64-row tiles and `stages` K and V tiles, all of head_dim columns.
    smem = jnp.dtype(dtype).itemsize * head_dim * (COMPUTE_WGS * BLOCK_Q + 2 * stages * block_k)
    if smem > SMEM_BUDGET and not interpret:
        raise ConfigError(
            f"the Mosaic GPU forward's tiles need {smem} bytes of shared memory at head_dim "
            f"{head_dim} ({block_k}-key tiles, {stages} stages), over the {SMEM_BUDGET} there "
            "are; pass a smaller BlockSizes.block_k or num_stages")
    return block_k, stages


def cuda_runtime_version() -> int | None:
    """The CUDA runtime's version (12090 for 12.9.0), or None where JAX does not say."""
    try:
        # jax 0.10 has no public CUDA-version query; JAX's own attention_mgpu reads it the same way.
        from jax._src.lib import cuda_versions
        return cuda_versions.cuda_runtime_get_version() if cuda_versions else None
    except Exception:
        return None


def check_cuda():
    """JAX's own Mosaic attention refuses masked kernels on CUDA 12.8.0 up to 12.9.1 over a ptxas
    miscompilation; this kernel masks the same way, so it refuses them too."""
    version = cuda_runtime_version()
    if version is not None and 12080 <= version < 12091:
        raise UnsupportedError(
            f"the Mosaic GPU forward does not run on CUDA runtime {version // 1000}."
            f"{version % 1000 // 10}: ptxas 12.8.0-12.9.0 miscompiles masked Mosaic GPU "
            "attention (JAX refuses its own kernel there too); use CUDA >= 12.9.1 or leave "
            "BlockSizes.gpu_forward unset")


# ---------------------------------------------------------------------------------------------
# What differs between the GPU and the interpreter: matmuls, layouts, shared-memory tiling.


@dataclasses.dataclass(frozen=True)
class _Ops:
    interpret: bool

    def layout(self, x, layout):
        return x if self.interpret else plgpu.layout_cast(x, layout)

    def load(self, ref, idx, layout):
        """Global memory straight into registers (positions, segments, the carry: read once per
        tile or program, so the unvectorized path is fine)."""
        if self.interpret:
            return ref[idx]
        extra = ((),) if _LOAD_WANTS_IDX else ()
        return plgpu.load(ref.at[idx], *extra, layout=layout, optimized=False)

    def smem(self, shape, dtype):
        """A [..., rows, 64 x k] 16-bit tile as wgmma and TMA want it: 128-byte swizzled."""
        if self.interpret:
            return plgpu.SMEM(shape, dtype)
        swizzle = 128  # bytes: a 64-element row of 16-bit values
        return plgpu.SMEM(shape, dtype, transforms=(
            plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
            plgpu.SwizzleTransform(swizzle)))

    def scores(self, q_smem, k_smem, issued):
        """``q @ k.T`` [block_q, block_k] float32; ``issued()`` runs once the matmul is queued."""
        if self.interpret:
            s = lax.dot_general(q_smem[...], k_smem[...], (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
            issued()
            return s

        def body(acc_ref):
            # ref.transpose: plgpu.transpose_ref is deprecated in jax 0.11.2 (same transform).
            plgpu.wgmma(acc_ref, q_smem, k_smem.transpose((1, 0)))
            issued()
            return acc_ref[...]

        return pl.run_scoped(body, plgpu.ACC((q_smem.shape[0], k_smem.shape[0]), jnp.float32))

    def accumulate(self, acc, p, v_smem, issued):
        """``acc + p @ v``; ``issued()`` runs once the matmul is queued."""
        if self.interpret:
            out = acc + lax.dot_general(p, v_smem[...], (((1,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)
            issued()
            return out

        def body(acc_ref):
            plgpu.wgmma(acc_ref, p, v_smem)
            issued()

        return pl.run_state(body)(plgpu.ACC.init(acc))


ROW = plgpu.Layout.WGMMA.reduce(1)  # one value per row of a [block_q, *] WGMMA tile
COL = plgpu.Layout.WGMMA.reduce(0)  # one value per column
TILE = plgpu.Layout.WGMMA


def _bcast(x, shape, dim):
    return lax.broadcast_in_dim(x, shape, (dim,))


# ---------------------------------------------------------------------------------------------
# The kernel. Grid (heads, row tiles of 2 x block_q, batch); warpgroup axis "wg".


def _kernel(*refs, ops: _Ops, has_seg, fresh, final, block_k, stages, dtype):
    it = iter(refs)
    q_ref, k_ref, v_ref, qp_ref, kp_ref = (next(it) for _ in range(5))
    sq_ref, sk_ref = (next(it), next(it)) if has_seg else (None, None)
    lead_ref, end_ref = next(it), next(it)
    o_in, m_in, l_in = (None,) * 3 if fresh else (next(it), next(it), next(it))
    outs = [next(it) for _ in range(2 if final else 3)]
    (q_smem, k_smem, v_smem), bars = next(it), next(it)
    q_bar, k_bar, v_bar, k_free, v_free, turn = bars

    b, h = lax.axis_index("batch"), lax.axis_index("heads")
    # Row tiles in reverse: under a causal mask the last rows see the most keys, so launching
    # them first leaves light programs for the tail of the launch.
    t = end_ref.shape[0] // COMPUTE_WGS - 1 - lax.axis_index("rows")
    wg = lax.axis_index("wg")
    bq, d = q_smem.shape[1:]
    steps = jnp.maximum(end_ref[2 * t], end_ref[2 * t + 1])  # tiles the program fetches

    def take_turn():  # the ping-pong: wait until the other compute warpgroup has had its turn
        plgpu.barrier_arrive(turn)
        plgpu.barrier_wait(turn)

    @pl.when(wg < COMPUTE_WGS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        tile = COMPUTE_WGS * t + wg
        rows = pl.ds(tile * bq, bq)
        lead, end = lead_ref[tile], end_ref[tile]
        plgpu.copy_gmem_to_smem(q_ref.at[b, h, rows], q_smem.at[wg], q_bar.at[wg])
        qp = ops.load(qp_ref, rows, ROW)
        sq = ops.load(sq_ref, (b, rows), ROW) if has_seg else None
        if fresh:
            acc = ops.layout(jnp.zeros((bq, d), jnp.float32), TILE)
            m2 = ops.layout(jnp.full((bq,), -jnp.inf, jnp.float32), ROW)
            l = ops.layout(jnp.zeros((bq,), jnp.float32), ROW)
        else:  # running max in base 2 inside the kernel
            acc = ops.load(o_in, (b, h, rows), TILE)
            m2 = ops.load(m_in, (b, h, rows), ROW) * LOG2E
            l = ops.load(l_in, (b, h, rows), ROW)
        plgpu.barrier_wait(q_bar.at[wg])

        @pl.when(end > 0)
        def _():
            plgpu.barrier_wait(k_bar.at[0])

        pl.when(wg == 1)(take_turn)  # warpgroup 0 goes first

        def step(masked):
            def body(j, carry):
                acc, m2, l = carry
                slot = lax.rem(j, jnp.int32(stages))
                keys = pl.ds(j * block_k, block_k)
                # Loaded before the matmul is waited for, so their latency hides behind it.
                kp = ops.load(kp_ref, keys, COL) if masked else None
                sk = ops.load(sk_ref, (b, keys), COL) if has_seg else None
                s = ops.scores(q_smem.at[wg], k_smem.at[slot], take_turn)
                plgpu.barrier_arrive(k_free.at[slot])
                mask = None
                if masked:
                    mask = _bcast(qp, s.shape, 0) >= _bcast(kp, s.shape, 1)
                if has_seg:
                    same = _bcast(sq, s.shape, 0) == _bcast(sk, s.shape, 1)
                    mask = same if mask is None else mask & same
                if mask is not None:
                    s = jnp.where(mask, s, -jnp.inf)
                m_new = jnp.maximum(m2, s.max(axis=1) * LOG2E)
                # Rows with nothing visible yet keep a -inf max; only a mask can leave them so.
                m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new) if mask is not None else m_new
                alpha = jnp.exp2(m2 - m_safe)
                p = jnp.exp2(s * LOG2E - _bcast(m_safe, s.shape, 0))
                l = l * alpha + p.sum(axis=1)
                acc = acc * _bcast(alpha, acc.shape, 0)
                p16 = p.astype(dtype)
                # Pin the softmax before the hand-over, so the rescale cannot sink past the wait
                # below and delay this warpgroup's next matmul (as JAX's kernel does).
                acc, l, m_new, p16 = lax.optimization_barrier((acc, l, m_new, p16))
                plgpu.barrier_arrive(turn)  # softmax done: the other warpgroup may issue
                plgpu.barrier_wait(v_bar.at[slot])
                plgpu.barrier_wait(turn)

                def next_k():  # overlaps the wait for the next K tile with this matmul
                    @pl.when(j + 1 < end)
                    def _():
                        plgpu.barrier_wait(k_bar.at[lax.rem(j + 1, jnp.int32(stages))])

                acc = ops.accumulate(acc, p16, v_smem.at[slot], next_k)
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l

            return body

        carry = lax.fori_loop(0, lead, step(False), (acc, m2, l))
        acc, m2, l = lax.fori_loop(lead, end, step(True), carry)

        @pl.loop(end, steps)
        def _hand_back(j):  # tiles only the other warpgroup reads: free them, keep the turns
            slot = lax.rem(j, jnp.int32(stages))
            # Every warpgroup observes every phase of a barrier it waits on, so the slot's phase
            # parity stays the same for both (the interpreter checks this). Each turn comes
            # before the wait for data, so the busy warpgroup never waits on this one's loads.
            for ready, free in ((k_bar, k_free), (v_bar, v_free)):
                take_turn()
                plgpu.barrier_wait(ready.at[slot])
                plgpu.barrier_arrive(free.at[slot])

        pl.when(wg == 0)(take_turn)

        # Results go straight from registers to global memory, except a 16-bit output tile,
        # which leaves through Q's slot (no longer needed) by TMA.
        if final:
            out_ref, lse_ref = outs
            seen = m2 != -jnp.inf  # no visible key; a NaN row stays NaN
            safe_l = jnp.where(seen, l, 1.0)
            out = jnp.where(_bcast(seen, acc.shape, 0), acc * _bcast(1.0 / safe_l, acc.shape, 0),
                            0.0)
            lse_ref[b, h, rows] = jnp.where(seen, (m2 + jnp.log2(safe_l)) * LN2, -jnp.inf)
            if out_ref.dtype == dtype:
                q_smem[wg] = out.astype(dtype)
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(q_smem.at[wg], out_ref.at[b, h, rows])
                plgpu.wait_smem_to_gmem(0)
            else:
                out_ref[b, h, rows, :] = out.astype(out_ref.dtype)
        else:
            o_ref, m_ref, l_ref = outs
            o_ref[b, h, rows, :] = acc
            m_ref[b, h, rows] = m2 * LN2
            l_ref[b, h, rows] = l

    @pl.when(wg == COMPUTE_WGS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")

        def fetch(j, slot, refill):
            keys = pl.ds(j * block_k, block_k)
            for src, dst, ready, free in ((k_ref, k_smem, k_bar, k_free),
                                          (v_ref, v_smem, v_bar, v_free)):
                if refill:  # both compute warpgroups are done with tile j - stages
                    plgpu.barrier_wait(free.at[slot])
                plgpu.copy_gmem_to_smem(src.at[b, h, keys], dst.at[slot], ready.at[slot])

        for slot in range(stages):
            pl.when(slot < steps)(functools.partial(fetch, slot, slot, False))

        @pl.loop(stages, steps)
        def _refill(j):
            fetch(j, lax.rem(j, jnp.int32(stages)), True)

        for slot in range(stages):  # observe the last hand-back of each slot too (see above)
            @pl.when(slot < steps)
            def _drain():
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])


def fold_block(q, k, v, carry, ids: blockwise.MaskIds, spec: blockwise.TileSpec, *,
               final_dtype=None, sizes: MosaicSizes | None = None, interpret=False):
    """Fold the KV block ``k, v`` into ``carry = (o, m, l)`` (None: a fresh carry).

    Same contract as ``pallas_gpu.fold_block``: with ``final_dtype`` the kernel finishes the
    softmax and returns ``(out [b, h, r, d] in final_dtype, lse [b, h, r])``; otherwise the new
    carry. Needs 16-bit inputs, head_dim a multiple of 64 up to 256, rows per device a multiple
    of 128, keys a multiple of 64 and tiles within the shared memory (``plan``).

    Example (one device, a fresh causal fold finished in one call)::

        out, lse = fold_block(q, k, v, None, blockwise.MaskIds(pos, pos),
                              blockwise.TileSpec(True, 1, 128, 128), final_dtype=q.dtype)
    """
    q_pos, k_pos, seg_q, seg_k = ids
    b, h, r, d = q.shape
    nk, dtype = k.shape[2], q.dtype
    if k.dtype != dtype or v.dtype != dtype:
        raise ConfigError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if spec.window is not None:
        raise ConfigError("the Mosaic GPU forward has no sliding window; the Triton forward "
                          "(pallas_gpu.fold_block) takes TileSpec.window")
    sizes = sizes or MosaicSizes()
    block_k, stages = plan(dtype, d, r, nk, sizes, interpret=interpret)
    if not interpret:
        check_cuda()
    q_rows, seg_rows = row_inputs(q_pos, seg_q, spec.groups)
    k_pos = k_pos.astype(jnp.int32)
    # This kernel's loops start at tile 0: unmasked up to `lead`, then masked (no window here).
    _, full_from, full_to, end = row_bounds(q_rows, k_pos, BLOCK_Q, block_k, spec.causal)
    lead = jnp.where(full_from == 0, full_to, 0)
    has_seg, fresh, final = seg_q is not None, carry is None, final_dtype is not None
    args = [q, k, v, q_rows, k_pos]
    if has_seg:
        args += [seg_rows, seg_k.astype(jnp.int32)]
    args += [lead, end]
    if not fresh:
        args += list(carry)
    if final:
        out_type = (jax.ShapeDtypeStruct((b, h, r, d), final_dtype),
                    jax.ShapeDtypeStruct((b, h, r), jnp.float32))
    else:
        out_type = (jax.ShapeDtypeStruct((b, h, r, d), jnp.float32),
                    jax.ShapeDtypeStruct((b, h, r), jnp.float32),
                    jax.ShapeDtypeStruct((b, h, r), jnp.float32))
    ops = _Ops(bool(interpret))

    def entry(*refs):
        smem = (ops.smem((COMPUTE_WGS, BLOCK_Q, d), dtype), ops.smem((stages, block_k, d), dtype),
                ops.smem((stages, block_k, d), dtype))
        bars = (plgpu.Barrier(num_barriers=COMPUTE_WGS), plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),
                plgpu.Barrier(num_arrivals=COMPUTE_WGS, num_barriers=stages),
                plgpu.Barrier(num_arrivals=COMPUTE_WGS))

        def scoped(smem, bars):
            _kernel(*refs, smem, bars, ops=ops, has_seg=has_seg, fresh=fresh, final=final,
                    block_k=block_k, stages=stages, dtype=dtype)

        pl.run_scoped(scoped, smem, bars, collective_axes="wg")

    interpret_params = None
    if interpret:
        # jax 0.10 exports no Mosaic GPU interpreter parameters: the private import is the only
        # way in, and only interpret mode (CPU tests) reaches it.
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        interpret_params = InterpretGPUParams()
    return plgpu.kernel(
        entry, out_type=out_type, grid=(h, r // (COMPUTE_WGS * BLOCK_Q), b),
        grid_names=("heads", "rows", "batch"), num_threads=COMPUTE_WGS + 1, thread_name="wg",
        # Named, never left to the default: jax 0.10 defaults to Lane lowering, 0.11 to Warpgroup.
        compiler_params=plgpu.CompilerParams(
            approx_math=True, lowering_semantics=LOWERINGS[sizes.lowering]),
        interpret=interpret_params,
    )(*args)
