"""The transformer on small random models: logits against a float64 reference on every mesh,
prefill + sharded-KV decode against full-sequence logits, generation, sharding rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ringkit as rk
from ringkit.errors import ConfigError, ShapeError
from ringkit.model import Model, ModelConfig, RopeScaling, Runtime
from ringkit.model.model import unstack_layers
from ringkit.model.transformer import param_shardings
from ringkit.model.weights.place import abstract_variables
from model_reference import reference_logits

TINY = ModelConfig.preset("tiny")
TINY_VISION = TINY.replace(name="tiny-vision", n_kv_heads=4, rope_convention="interleaved",
                           vision_vocab_size=300)
TINY_TIED = TINY.replace(name="tiny-tied", n_heads=6, n_kv_heads=2, tie_embeddings=True,
                         rope_scaling=RopeScaling("yarn", 4.0, original_max_position=1024))


def mesh(sp=1, tp=1):
    return rk.make_mesh(tp=tp, sp=sp, devices=jax.devices()[:sp * tp])


def rel(x, ref, mask=None):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    if mask is not None:
        x, ref = x[mask], ref[mask]
    return float(np.abs(x - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def models():
    """One random model per configuration and mesh, with identical weights across meshes."""
    cache = {}

    def get(cfg, sp=1, tp=1, scan=True, dtype="float32"):
        key = (cfg.name, sp, tp, scan, dtype)
        if key not in cache:
            base = Model.init_random(cfg, Runtime(mesh()), seed=3)
            rt = Runtime(mesh(sp, tp), dtype=dtype, scan_layers=scan)
            variables = jax.tree.map(lambda a: a.astype(dtype), base.variables)
            if not scan:
                variables = unstack_layers(variables, cfg.n_layers)
            shardings = param_shardings(abstract_variables(cfg, rt), rt.mesh)
            cache[key] = Model(cfg, jax.device_put(variables, shardings), None, rt)
        return cache[key]

    return get


def batch_inputs(rng, cfg, b=2, s=45):
    ids = rng.integers(0, cfg.vocab_size, (b, s))
    mask = np.ones((b, s), np.int32)
    mask[1, :7] = 0  # left padding, as LWM batches
    seg = np.zeros((b, s), np.int32)
    seg[0, 20:] = 1  # two packed documents in row 0
    vm = None
    if cfg.has_vision:
        vm = np.zeros((b, s), bool)
        vm[:, 10:30] = True
        ids = np.where(vm, rng.integers(0, cfg.vision_vocab_size, (b, s)), ids)
    return ids, mask, seg, vm


@pytest.mark.parametrize("cfg,sp,tp,scan", [
    (TINY, 1, 1, True), (TINY, 2, 1, True), (TINY, 8, 1, False), (TINY, 2, 2, True),
    (TINY_VISION, 4, 1, True), (TINY_TIED, 4, 2, True),
])
def test_logits_match_float64_reference(models, rng, cfg, sp, tp, scan):
    model = models(cfg, sp, tp, scan)
    ids, mask, seg, vm = batch_inputs(rng, cfg)
    kw = dict(attention_mask=mask, segment_ids=seg, vision_mask=vm)
    got = model.logits(ids, **kw)
    ref = reference_logits(model.variables, cfg, ids, **kw)
    assert got.shape == (2, 45, cfg.vocab_size) and got.dtype == jnp.float32
    assert rel(got, ref, mask > 0) < 1e-5
    if cfg.has_vision:
        got_v = model.logits(ids, head="vision", **kw)
        assert rel(got_v, reference_logits(model.variables, cfg, ids, head="vision", **kw),
                   mask > 0) < 1e-5


@pytest.mark.parametrize("param_dtype", ["bfloat16", "float32"])
def test_bfloat16_compute_is_close(models, rng, param_dtype):
    """bfloat16 matmuls (float32 accumulation), weights stored in bf16 or (CPU default) f32;
    decode steps compute in the stored dtype."""
    base = models(TINY)
    rt = Runtime(mesh(4), dtype="bfloat16", param_dtype=param_dtype)
    shardings = param_shardings(abstract_variables(TINY, rt), rt.mesh)
    model = Model(TINY, jax.device_put(jax.tree.map(lambda a: a.astype(param_dtype),
                                                    base.variables), shardings), None, rt)
    ids, mask, seg, _ = batch_inputs(rng, TINY)
    got = model.logits(ids, attention_mask=mask)
    ref = reference_logits(base.variables, TINY, ids, attention_mask=mask)
    assert rel(got, ref, mask > 0) < 5e-2
    logits, cache = model.prefill([ids[0, :30].tolist()], max_new_tokens=4)
    assert all(a.dtype == jnp.dtype(param_dtype) for a in cache.k + cache.v)
    step = model.step(cache, ids[:1, 30:32])
    assert rel(step[0], ref[0, 31]) < 5e-2


@pytest.mark.parametrize("sp", [1, 4])
def test_prefill_and_decode_equal_full_logits(models, rng, sp):
    """Ragged prompts (left-padded batch), then tokens appended one and three at a time."""
    model = models(TINY_TIED, sp)
    full = [rng.integers(0, 256, 50).tolist(), rng.integers(0, 256, 41).tolist()]
    ref = [np.asarray(model.logits(r)[0]) for r in full]
    n0 = [30, 17]
    logits, cache = model.prefill([r[:n] for r, n in zip(full, n0)], max_new_tokens=20)
    errs = [rel(logits[i], ref[i][n0[i] - 1]) for i in range(2)]
    done = 0
    for t in (1, 1, 3, 1, 3, 1):
        tokens = np.array([full[i][n0[i] + done:n0[i] + done + t] for i in range(2)])
        logits = model.step(cache, tokens)
        done += t
        errs += [rel(logits[i], ref[i][n0[i] + done - 1]) for i in range(2)]
    assert max(errs) < 1e-5
    # The cache stays sharded along the sequence on 'sp' and never grew.
    slots = cache.slots
    assert len(cache.k) == TINY_TIED.n_layers
    assert all(a.sharding.shard_shape(a.shape)[2] == slots // sp for a in cache.k + cache.v)
    assert cache.room(sp) >= 20 - done
    with pytest.raises(ShapeError, match="room"):
        model.step(cache, np.zeros((2, cache.room(sp) + 1), np.int32))


# Steps that add up to a whole cache's room: room_slots' 16 slots per device.
@pytest.mark.parametrize("sp,steps", [(2, (5,) * 5 + (4, 3)), (4, (5,) * 11 + (4, 3, 2))])
def test_decode_fills_the_cache_to_the_last_slot(models, rng, sp, steps):
    """Steps of t > sp tokens up to the cache's capacity: each device writes a fixed-length run
    of slots whose unowned tail must neither run off the end nor clobber a token."""
    model = models(TINY, sp)
    n0, new = 11, sum(steps)
    full = rng.integers(0, 256, n0 + new).tolist()
    ref = np.asarray(model.logits(full)[0])
    logits, cache = model.prefill([full[:n0]], max_new_tokens=new - 9)  # rounded up to `new`
    assert cache.room(sp) == new
    done, errs = n0, [rel(logits[0], ref[n0 - 1])]
    for t in steps:
        logits = model.step(cache, np.array([full[done:done + t]]))
        done += t
        errs.append(rel(logits[0], ref[done - 1]))
    assert cache.room(sp) == 0 and max(errs) < 1e-5


def test_greedy_generation_equals_argmax_chain(models, rng):
    model = models(TINY, 2)
    from ringkit.generate import generate_ids

    rows = [rng.integers(0, 256, 12).tolist(), rng.integers(0, 256, 7).tolist()]

    class NoEos:
        eos_ids = ()

    model.tokenizer = NoEos()
    got = generate_ids(model, rows, max_new_tokens=6)
    for row, new in zip(rows, got):
        seq = list(row)
        for _ in range(6):
            seq.append(int(np.argmax(np.asarray(model.logits(seq)[0, -1]))))
        assert new == seq[len(row):]


def test_nearby_generation_lengths_share_one_prefill(models, rng):
    """max_new_tokens 17..33 on sp=2 round to one cache shape: one prefill and one decode step
    executable, not one per length (each costs seconds to minutes to compile on a real model)."""
    model = models(TINY, 2)
    row = [rng.integers(0, 256, 13).tolist()]
    compiled, rooms = [], set()
    for new in (17, 25, 32):
        _, cache = model.prefill(row, max_new_tokens=new)
        rooms.add(cache.room(2))
        model.step(cache, np.zeros((1, 1), np.int32))
        compiled.append((model._prefill_fn._cache_size(), model._step_fn._cache_size()))
    assert rooms == {32} and compiled[0] == compiled[-1]
    _, cache = model.prefill(row, max_new_tokens=34)  # 33 appended: past the bucket
    assert cache.room(2) == 64


def test_sampling_rules():
    from ringkit.generate import greedy, sample

    logits = jnp.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32)))
    key = jax.random.key(0)
    assert (np.asarray(greedy(logits)) == 0).all()
    top = np.asarray(sample(logits, key, jnp.float32(1.0), jnp.float32(0.4)))
    assert (top == 0).all()  # 0.5 alone reaches top_p = 0.4
    top = np.asarray(sample(logits, key, jnp.float32(1.0), jnp.float32(0.7)))
    assert set(np.unique(top)) == {0, 1}  # 0.5 + 0.3 reaches top_p = 0.7
    draws = np.asarray(sample(logits, key, jnp.float32(1.0), jnp.float32(1.0)))
    freq = np.bincount(draws, minlength=4) / len(draws)
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.04
    again = np.asarray(sample(logits, key, jnp.float32(1.0), jnp.float32(1.0)))
    assert (draws == again).all()  # a seed reproduces a draw


def test_7b_presets_by_shape():
    rt = Runtime(mesh(8))
    for name in ("lwm-7b", "lwm-7b-vision"):
        cfg = ModelConfig.preset(name)
        shapes = abstract_variables(cfg, rt)
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        assert n == cfg.param_count()
        layers = shapes["params"]["layers"]["block"]
        assert layers["wq"].shape == (32, 4096, 32, 128)
        assert layers["w_down"].shape == (32, 11008, 4096)
        assert ("vision_embed" in shapes["params"]) == cfg.has_vision
    # FSDP x TP shardings of a 7B model: no parameter is left without a rule.
    sh = param_shardings(abstract_variables(ModelConfig.preset("lwm-7b"), Runtime(
        rk.make_mesh(fsdp=2, tp=4, sp=1))), rk.make_mesh(fsdp=2, tp=4, sp=1))
    assert sh["params"]["layers"]["block"]["wq"].spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tp", None)


def test_unmatched_parameter_is_an_error():
    shapes = {"params": {"mystery": jax.ShapeDtypeStruct((4, 4), jnp.float32)}}
    with pytest.raises(ConfigError, match="mystery"):
        param_shardings(shapes, mesh())


def test_too_long_prompt_suggests_rope_scaling(models):
    model = models(TINY_TIED, 1)
    with pytest.raises(ShapeError, match="rope_scaling"):
        model.logits(np.zeros(TINY_TIED.context_length + 1, np.int32))


def test_remat_and_scan_give_the_same_gradients(models, rng):
    """Training path: grads through ring attention's custom VJP, with and without remat."""
    base = models(TINY, 2)
    ids = jnp.asarray(rng.integers(0, 256, (1, 32)), jnp.int32)
    aux = dict(positions=jnp.arange(32)[None], segment_ids=None, vision_mask=None)

    def loss(variables, runtime):
        module = rk.model.Transformer(TINY, runtime)
        h, _ = module.apply(variables, ids, aux)
        return module.apply(variables, h, method=rk.model.Transformer.logits).std()

    plain = jax.grad(loss)(base.variables, base.runtime)
    rematted = jax.grad(loss)(base.variables, Runtime(base.mesh, remat=True))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
        assert rel(a, b) < 1e-5
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(plain))


def test_batch_not_dividing_the_batch_axes(models, rng):
    """One prompt on a dp x fsdp mesh: rows are padded for the mesh and dropped again."""
    ref_model = models(TINY, 1)
    rt = Runtime(rk.make_mesh(dp=2, fsdp=2, sp=2))
    shardings = param_shardings(abstract_variables(TINY, rt), rt.mesh)
    model = Model(TINY, jax.device_put(ref_model.variables, shardings), None, rt)
    row = rng.integers(0, 256, 21).tolist()
    got = model.logits(row)
    assert got.shape == (1, 21, TINY.vocab_size)
    assert rel(got, ref_model.logits(row)) < 1e-5
    logits, cache = model.prefill([row, row[:9], row[:15]], max_new_tokens=3)
    assert logits.shape == (3, TINY.vocab_size)
    step = model.step(cache, np.array([[1], [2], [3]]))
    assert step.shape == (3, TINY.vocab_size)
    assert rel(step[0], ref_model.logits(row + [1])[0, -1]) < 1e-5
    with pytest.raises(ShapeError, match="rows"):
        model.step(cache, np.array([[1], [2]]))
