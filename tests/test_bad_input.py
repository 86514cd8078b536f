"""Every user mistake raises a RingkitError subclass whose message names the sizes involved."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import ringkit as rk
from ringkit.errors import ConfigError, MeshError, ShapeError, UnsupportedError


@pytest.fixture(scope="module")
def mesh():
    return rk.make_mesh(sp=8)


def _x(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def test_q_heads_not_multiple_of_kv_heads(mesh):
    with pytest.raises(ShapeError, match="q_heads=6 must be a multiple of kv_heads=4"):
        rk.ring_attention(_x(1, 64, 6, 8), _x(1, 64, 4, 8), _x(1, 64, 4, 8), mesh=mesh)


def test_seq_not_dividing_zigzag_points_to_padding(mesh):
    with pytest.raises(ShapeError, match=r"100 must be a multiple of 16.*112 with ringkit.pad_for_ring"):
        rk.ring_attention(_x(1, 100, 2, 8), _x(1, 100, 2, 8), _x(1, 100, 2, 8), mesh=mesh)


def test_shape_and_dtype_mismatches(mesh):
    with pytest.raises(ShapeError, match="must share batch, seq and head_dim"):
        rk.ring_attention(_x(1, 64, 2, 8), _x(1, 32, 2, 8), _x(1, 32, 2, 8), mesh=mesh)
    with pytest.raises(ShapeError, match="k and v shapes differ"):
        rk.ring_attention(_x(1, 64, 2, 8), _x(1, 64, 2, 8), _x(1, 64, 1, 8), mesh=mesh)
    with pytest.raises(ShapeError, match="dtypes differ"):
        rk.ring_attention(_x(1, 64, 2, 8), _x(1, 64, 2, 8), _x(1, 64, 2, 8, dtype=np.float16),
                          mesh=mesh)
    with pytest.raises(ShapeError, match=r"\[batch, seq, heads, head_dim\]"):
        rk.ring_attention(_x(64, 2, 8), _x(64, 2, 8), _x(64, 2, 8), mesh=mesh)
    with pytest.raises(ShapeError, match="floating point"):
        rk.ring_attention(*(np.zeros((1, 64, 2, 8), np.int32),) * 3, mesh=mesh)
    with pytest.raises(ShapeError, match=r"segment_ids must be \[batch, seq\]"):
        rk.ring_attention(*(_x(1, 64, 2, 8),) * 3, mesh=mesh, segment_ids=np.zeros((1, 32), int))
    # Ids the int32 cast would merge or truncate (two documents becoming one) are refused.
    merged = np.repeat(np.array([[0, 2**32]], np.int64), 32, axis=1)
    with pytest.raises(ShapeError, match="fit in int32.*4294967296"):
        rk.ring_attention(*(_x(1, 64, 2, 8),) * 3, mesh=mesh, segment_ids=merged)
    with pytest.raises(ShapeError, match="must be integers"):
        rk.ring_attention(*(_x(1, 64, 2, 8),) * 3, mesh=mesh, segment_ids=np.full((1, 64), .5))
    with pytest.raises(ShapeError, match="must be an array"):
        rk.ring_attention([[0.0]], _x(1, 64, 2, 8), _x(1, 64, 2, 8), mesh=mesh)
    with pytest.raises(ShapeError, match="empty dimension"):
        rk.ring_attention(*(_x(1, 64, 0, 8),) * 3, mesh=mesh)


def test_mesh_without_sp():
    plain = Mesh(np.array(jax.devices()), ("data",))
    with pytest.raises(MeshError, match="missing.*'sp'"):
        rk.ring_attention(*(_x(1, 64, 2, 8),) * 3, mesh=plain)


def test_indivisible_batch_and_heads():
    with pytest.raises(ShapeError, match="batch 3 must be divisible by dp\\*fsdp = 2"):
        rk.ring_attention(*(_x(3, 64, 2, 8),) * 3, mesh=rk.make_mesh("2,1,1,-1"))
    with pytest.raises(ShapeError, match="kv_heads=3 .* divisible by tp=2"):
        rk.ring_attention(_x(2, 64, 6, 8), _x(2, 64, 3, 8), _x(2, 64, 3, 8),
                          mesh=rk.make_mesh("1,1,2,-1"))


def test_bad_options(mesh):
    args = (_x(1, 64, 2, 8),) * 3
    with pytest.raises(ConfigError, match="unknown layout 'striped'"):
        rk.ring_attention(*args, mesh=mesh, layout="striped")
    with pytest.raises(ConfigError, match="unknown impl"):
        rk.ring_attention(*args, mesh=mesh, impl="cuda")
    with pytest.raises(UnsupportedError, match="pallas"):
        rk.ring_attention(*args, mesh=mesh, impl="pallas")
    with pytest.raises(ConfigError, match="block_q=3 .* dividing the per-device sequence length 8"):
        rk.ring_attention(*args, mesh=mesh, block_q=3)
    with pytest.raises(ConfigError, match="must be a jax.sharding.Mesh"):
        rk.ring_attention(*args, mesh="1,1,1,8")
    for scale in (float("nan"), "x", 0.0, -1.0):
        with pytest.raises(ConfigError, match="scale must be a positive finite number"):
            rk.ring_attention(*args, mesh=mesh, scale=scale)
    with pytest.raises(ConfigError, match="causal must be True or False"):
        rk.ring_attention(*args, mesh=mesh, causal="no")


def test_errors_are_ringkit_errors():
    for cls in (ConfigError, MeshError, ShapeError, UnsupportedError):
        assert issubclass(cls, rk.RingkitError)


def test_token_ids_outside_the_vocabulary():
    """An id past the embedding table would give NaN logits, not an error: refused, naming the
    id, where it is and the vocabulary, in logits, prefill and decode steps; a vision id is
    checked against the vision vocabulary."""
    from ringkit.model import Model, ModelConfig, Runtime

    runtime = Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2]))
    model = Model.init_random(ModelConfig.preset("tiny"), runtime, seed=0)
    with pytest.raises(ShapeError, match=r"token id 256 \(row 0, position 2\).*256-id vocab"):
        model.logits([[1, 2, 256]])
    with pytest.raises(ShapeError, match=r"token id -1 \(row 1, position 1\)"):
        model.prefill([[1, 2], [3, -1, 4]], max_new_tokens=2)
    _, cache = model.prefill([[1, 2, 3]], max_new_tokens=3)
    with pytest.raises(ShapeError, match="token id 999"):
        model.step(cache, [[999]])
    assert np.isfinite(model.logits([[0, 255]], attention_mask=[[1, 1]])).all()
    assert np.isfinite(model.logits([[999, 255]], attention_mask=[[0, 1]])[:, 1]).all()

    vision = Model.init_random(ModelConfig.preset("tiny").replace(vision_vocab_size=40),
                               runtime, seed=0)
    with pytest.raises(ShapeError, match=r"token id 40 .*40-id vision vocabulary"):
        vision.logits([[1, 40, 200]], vision_mask=[[False, True, False]])
    assert np.isfinite(vision.logits([[1, 39, 200]], vision_mask=[[False, True, False]])).all()


def test_model_arguments_are_checked_before_any_cast():
    """Ids, positions, masks and segments are checked as given: 2**32 or 1.7 is refused, not
    wrapped or truncated into another valid id; shapes that do not match the ids are named."""
    from ringkit.errors import ConfigError
    from ringkit.model import Model, ModelConfig, Runtime

    model = Model.init_random(ModelConfig.preset("tiny"),
                              Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2])), seed=0)
    ids = np.arange(1, 11)[None]
    for call, message in (
            (lambda: model.logits(ids.astype(np.int64) + 2**32), "outside"),
            (lambda: model.logits(ids + 0.7), "whole numbers"),
            (lambda: model.logits(ids, segment_ids=[[0] * 5 + [2**32] * 5]), "segment_ids"),
            (lambda: model.logits([]), "at least one token"),
            (lambda: model.logits(ids[None]), "1 or 2 dimensions"),
            (lambda: model.logits(ids, positions=np.arange(5)[None]), r"positions has shape"),
            (lambda: model.logits(ids, positions=ids - 3), "positions holds -2"),
            (lambda: model.logits(ids, attention_mask=np.ones((1, 5))), "attention_mask"),
            (lambda: model.logits(ids, vision_mask=np.ones((1, 3), bool)), "vision_mask"),
            (lambda: model.logits([[1, 2], [3]]), "rectangular"),
            (lambda: model.prefill([[1.5, 2]], max_new_tokens=2), "row 0 must be whole"),
            (lambda: model.prefill([1, 2, 3], max_new_tokens=2), r"pass \[ids\] for one"),
            (lambda: model.step(None, np.zeros((1, 0), np.int32)), "at least one per row")):
        with pytest.raises(ShapeError, match=message):
            call()
    for bad in (0, -5, 2.5):
        with pytest.raises(ConfigError, match="max_new_tokens must be a whole number"):
            model.prefill([[1, 2]], max_new_tokens=bad)
    # What is right still runs: a bool or 0/1 float mask, one row as a flat list.
    mask = np.ones((1, 10), bool)
    same = [model.logits(ids, attention_mask=m) for m in (mask, mask.astype(float))]
    assert np.array_equal(same[0], same[1]) and np.array_equal(same[0], model.logits(ids[0]))


def test_generate_read_and_plan_refuse_what_they_cannot_use(tmp_path):
    """Arguments that used to fail deep inside (an int for stream, a string for model, a
    tokenizer-less model, a tp that does not divide the KV heads, negative new tokens) are
    refused up front, saying what to give."""
    from ringkit.errors import ConfigError, FormatError, SourceError
    from ringkit.model import Model, ModelConfig, Runtime

    model = Model.init_random(ModelConfig.preset("tiny"),
                              Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2])), seed=0)
    with pytest.raises(ConfigError, match="no tokenizer"):
        model.generate([[1, 2]], max_new_tokens=2)
    with pytest.raises(ConfigError, match="no tokenizer"):
        rk.read("README.md", model=model)
    with pytest.raises(ConfigError, match="model must be a ringkit.Model"):
        rk.read("README.md", model="tiny")
    with pytest.raises(ShapeError, match="tp=3 does not divide"):
        rk.plan("lwm-7b", "4K", "1,1,3,8")
    with pytest.raises(ConfigError, match="new_tokens must be"):
        rk.plan("lwm-7b", "4K", "1,1,1,8", new_tokens=-5)
    with pytest.raises(ConfigError, match="tokens must be"):
        model.memory(-5)
    assert rk.plan("lwm-7b", np.int64(4096), "1,1,1,8").tokens == 4096
    (tmp_path / "noise.txt").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(SourceError, match="is binary"):
        rk.eval.needle_prompt(None, 1024, 0.5, haystack=tmp_path / "noise.txt")
    with pytest.raises(FormatError):
        (tmp_path / "noise.jsonl").write_text("[1, 2]\n")
        rk.eval.needle_prompt(None, 1024, 0.5, haystack=tmp_path / "noise.jsonl")


def test_small_helpers_name_their_bad_arguments(tmp_path):
    """Layout helpers, RULER and needle prompts, ingest and the planner's mesh search refuse
    what they cannot use with a RingkitError; the length a too-short needle prompt advises
    works."""
    from ringkit.errors import ConfigError, MeshError, SourceError

    q = np.zeros((1, 16, 2, 8), np.float32)
    for call in (lambda: rk.layout_positions(16, 0), lambda: rk.to_layout(q, sp=0),
                 lambda: rk.to_layout(q, sp=2, axis=5), lambda: rk.pad_for_ring(q, q, q, sp=0),
                 lambda: rk.pad_for_ring(q, q[:, :8], q[:, :8], sp=2),
                 lambda: rk.pad_for_ring(q, q, q, np.zeros((1, 3), np.int32), sp=2)):
        with pytest.raises(ShapeError):
            call()
    with pytest.raises(ConfigError, match="tasks must be"):
        rk.eval.ruler(tasks=5)
    with pytest.raises(ConfigError, match="length must be >= 1"):
        rk.eval.ruler_prompt("vt", None, -5)
    with pytest.raises(ConfigError, match="longest"):
        rk.eval.needle_prompt(None, 1024, 0.5, longest=0)
    with pytest.raises(SourceError, match="max_file_bytes"):
        rk.ingest(tmp_path, max_file_bytes="1MB")
    with pytest.raises(MeshError, match="devices must be"):
        rk.plan("lwm-7b", "4K", device="h100").feasible_meshes(0)
    for bad in (dict(dtype="int8"), dict(param_dtype="f32"), dict(layout="zig"),
                dict(impl="cuda")):
        with pytest.raises(ConfigError):
            rk.model.Runtime(rk.make_mesh(sp=1, devices=jax.devices()[:1]), **bad)
    for style in ("lwm", "instructed"):
        with pytest.raises(ShapeError, match="at least") as err:
            rk.eval.needle_prompt(None, 40, 0.5, style=style)
        rk.eval.needle_prompt(None, int(str(err.value).rsplit(" ", 1)[-1]), 0.5, style=style)
