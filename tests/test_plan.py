"""ringkit.plan: memory per device, fit, FLOPs and decode reads from shapes alone, for presets,
drawn configs, an HF config.json, the embedded GGUF's metadata and a loaded model (the same
figures as ``ringkit info``), and ``ringkit plan``."""

import json
import math

import pytest

import ringkit as rk
from ringkit import cli
from ringkit.errors import ConfigError, MeshError, ShapeError
from ringkit.model.config import ModelConfig
from ringkit.planner import parse_tokens


def _config(rng) -> ModelConfig:
    kv = int(rng.choice([1, 2, 4, 8]))
    heads = kv * int(rng.choice([1, 3, 4]))
    return ModelConfig(name="drawn", vocab_size=int(rng.integers(1000, 200_000)),
                       d_model=heads * int(rng.choice([32, 64])),
                       n_layers=int(rng.integers(1, 60)), n_heads=heads, n_kv_heads=kv,
                       head_dim=int(rng.choice([64, 80, 128])),
                       ffn_dim=int(rng.integers(1, 50)) * 256, max_position=1 << 21,
                       rope_theta=1e6)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_kv_cache_is_exactly_the_formula(rng, dtype):
    for _ in range(10):
        cfg = _config(rng)
        tp = int(rng.choice([t for t in (1, 2, 4, 8) if cfg.n_kv_heads % t == 0]))
        sp = int(rng.choice([1, 2, 8, 64, 256]))
        tokens = sp * int(rng.integers(1, 8192))
        p = rk.plan(cfg, tokens, {"tp": tp, "sp": sp, "fsdp": int(rng.choice([1, 2]))},
                    dtype=dtype)
        item = 2 if dtype == "bfloat16" else 4
        assert p.kv_cache == (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * tokens * item
                              // (sp * tp))
        assert p.peak == p.weights + 2 * p.kv_cache + p.activations
        assert p.decode_bytes_per_token == p.memory.decode_weights + p.kv_cache
        # Causal attention counted once: doubling tokens more than doubles the FLOPs that grow
        # with them, under 4x (the last token's output head is the same either way).
        twice = rk.plan(cfg, 2 * tokens, p.mesh, dtype=dtype)
        head = 2 * cfg.d_model * cfg.vocab_size
        assert 2 < (twice.prefill_flops - head) / (p.prefill_flops - head) < 4
        assert twice.kv_cache == 2 * p.kv_cache


def test_fits_and_feasible_meshes(rng):
    p = rk.plan("lwm-7b", "1M", "1,1,1,64", device="tpu-v5p")
    assert p.tokens == 1 << 20 and p.fits and p.within_context
    assert p.prefill_seconds > 0 and "fits" in str(p) and len(p.table()) == len(p.rows())
    meshes = p.feasible_meshes(64)
    assert meshes and all(m.fits and m.devices == 64 and m.mesh["dp"] == 1 for m in meshes)
    assert all(32 % m.mesh["tp"] == 0 for m in meshes)
    keys = [(m.prefill_seconds, m.peak) for m in meshes]
    assert keys == sorted(keys)
    # A device too small for the weights fits nowhere; 8 devices of v5e cannot hold 1M of LWM.
    assert rk.plan("lwm-7b", "1M", "1,1,1,8", device=10**9).feasible_meshes() == []
    assert rk.plan("lwm-7b", "1M", "1,1,1,8", device="tpu-v5e").fits is False
    assert rk.plan("lwm-7b", "1M", "1,1,1,8").fits is None  # no device, no verdict
    with pytest.raises(ConfigError, match="needs a device"):
        rk.plan("lwm-7b", "1M").feasible_meshes()
    # Past the model's context the plan is of the shapes, and says so.
    long = rk.plan("llama-3.1-8b", "512K", "1,1,8,32")
    assert not long.within_context and "exceeded" in str(long)
    assert "dual_chunk_attention_config" in str(rk.plan("qwen2.5-7b-1m", "1M", "1,1,4,64"))


def test_plan_of_a_config_file_a_gguf_and_a_model_agree(tmp_path):
    from ringkit.model.load import embedded_model_path
    from ringkit.model.memory import estimate

    try:
        gguf = embedded_model_path()
    except Exception as e:  # noqa: BLE001 - the package is optional outside CI
        pytest.skip(f"the embedded model is not installed: {e}")
    preset = ModelConfig.preset("smollm2-135m")
    from_gguf = rk.plan(str(gguf), 4096, "1,1,1,8")
    assert from_gguf.config.param_count() == preset.param_count()
    hf = {"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9,
          "num_key_value_heads": 3, "num_hidden_layers": 30, "intermediate_size": 1536,
          "vocab_size": 49152, "max_position_embeddings": 8192, "rope_theta": 1e5,
          "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    for source in (tmp_path, tmp_path / "config.json"):
        assert rk.plan(source, 4096, "1,1,1,8").peak == from_gguf.peak
    model = rk.load_model(gguf, mesh=rk.make_mesh(sp=8))
    p = rk.plan(model, 4096, model.mesh, new_tokens=256)
    assert (p.dtype, p.weights_dtype) == (model.runtime.dtype, model.runtime.weights_dtype)
    assert p.peak == estimate(model, 4096, new_tokens=256).prefill_peak  # what info prints


def test_bad_plans_say_what_to_give():
    assert parse_tokens("128K") == 131072 and parse_tokens("1.5M") == 3 << 19
    assert parse_tokens(" 1,000 ") == 1000 and parse_tokens(7) == 7
    for bad in ("", "1Q", "0", -5, 2.5, "1.0000001K", True):
        with pytest.raises(ShapeError, match="tokens"):
            parse_tokens(bad)
    with pytest.raises(MeshError, match="no -1"):
        rk.plan("tiny", 64, "1,1,1,-1")
    with pytest.raises(MeshError, match="axes"):
        rk.plan("tiny", 64, {"seq": 8})
    with pytest.raises(ConfigError, match="h100"):
        rk.plan("tiny", 64, device="a100")
    with pytest.raises(ConfigError, match="HF directory"):
        rk.plan("no-such-model", 64)
    with pytest.raises(ConfigError, match="dtype"):
        rk.plan("tiny", 64, dtype="int8")


def test_cli_plan(capsys):
    assert cli.main(["plan", "--model", "llama-3.1-8b", "--tokens", "128K", "--mesh", "1,1,1,8",
                     "--device", "h100", "--feasible", "8"]) == 0
    out = capsys.readouterr().out
    assert "131,072" in out and "fits" in out and "meshes of 8 devices" in out
    listed = [line for line in out.splitlines() if line.startswith("  1,")]
    assert listed and all(math.prod(map(int, line.split(":")[0].split(","))) == 8
                          for line in listed)
    assert cli.main(["plan", "--model", "lwm-7b", "--tokens", "lots"]) == 2
    assert "ringkit: error: tokens 'lots'" in capsys.readouterr().err


def _close(p, tolerance=0.15):
    assert p.compiled.decode_weights == p.memory.decode_weights  # exact, from the shardings
    assert abs(p.peak / p.compiled_peak - 1) < tolerance, (
        f"plan {p.peak / 1e9:.2f} GB vs XLA {p.compiled_peak / 1e9:.2f} GB on {p.mesh}")


@pytest.mark.parametrize("tokens", ["256K", "1M"])
def test_compiled_peak_agrees_with_the_plan(tokens):
    """The real prefill and decode step compiled with abstract weights (nothing allocated) on
    sp=8: XLA's per-device peak within 15% of the plan. Float32 weights, bfloat16 compute, as
    ringkit runs on a CPU (XLA:CPU computes bfloat16 dots in float32)."""
    p = rk.plan("smollm2-135m", tokens, "1,1,1,8", param_dtype="float32", compile=True)
    _close(p)
    assert "XLA's peak" in str(p)


def test_compiled_peak_of_drawn_configs(rng):
    for _ in range(3):
        cfg = _config(rng).replace(n_layers=int(rng.integers(1, 6)))
        tp = int(rng.choice([t for t in (1, 2) if cfg.n_kv_heads % t == 0]))
        mesh = {"tp": tp, "sp": int(rng.choice([2, 4])) if tp == 2 else 8, "fsdp": 1}
        tokens = int(rng.integers(16_000, 200_000))
        _close(rk.plan(cfg, tokens, mesh, param_dtype="float32",
                       new_tokens=int(rng.integers(0, 300)), compile=True))


def test_window_caches_shrink_the_compiled_prefill():
    """Local layers keep only their window: with five local layers to one global (Gemma 3's
    pattern) or all local (Mistral's), XLA's compiled prefill holds no whole cache of a local
    layer, and the plan agrees with it as for any model."""
    base = ModelConfig(name="g", vocab_size=4096, d_model=512, n_layers=12, n_heads=4,
                       n_kv_heads=2, head_dim=128, ffn_dim=1024, max_position=1 << 18,
                       rope_theta=1e6)
    whole = rk.plan(base, "128K", "1,1,1,8", param_dtype="float32", compile=True)
    for kinds, most in (((("sliding_attention",) * 5 + ("full_attention",)) * 2, 0.55),
                        (None, 0.45)):
        cfg = base.replace(sliding_window=1024, layer_types=kinds)
        p = rk.plan(cfg, "128K", "1,1,1,8", param_dtype="float32", compile=True)
        _close(p, 0.2)
        assert p.compiled.prefill < most * whole.compiled.prefill, (kinds, p.compiled.prefill)


def test_compiled_peak_of_lwm_7b_at_1m_on_64_devices():
    """LWM-7B's shape at 1M tokens on 64 simulated devices (a process of its own)."""
    import os
    import subprocess
    import sys

    code = ("import ringkit as rk\n"
            "for mesh in ('1,1,1,64', '1,1,8,8'):\n"
            "    p = rk.plan('lwm-7b', '1M', mesh, param_dtype='float32', compile=True)\n"
            "    print(p.peak, p.compiled_peak, p.memory.decode_weights, "
            "p.compiled.decode_weights)\n")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=64",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in out.stdout.split("\n")[:2]:
        peak, compiled, decode_plan, decode_xla = map(int, line.split())
        assert decode_plan == decode_xla and abs(peak / compiled - 1) < 0.15, line
    with pytest.raises(MeshError, match="xla_force_host_platform_device_count=64"):
        rk.plan("lwm-7b", "1M", "1,1,1,64", compile=True)  # this process has 8 devices
