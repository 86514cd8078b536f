"""``ringkit.bench`` and ``ringkit bench``: what they time and report, and what they refuse."""

import json
import time

import jax
import numpy as np
import pytest

import ringkit as rk
from ringkit import bench, cli
from ringkit.errors import ConfigError, RingkitError, ShapeError
from ringkit.model import Model, ModelConfig, Runtime

pytest.importorskip("pandas")


def test_attention_rows_and_rates():
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    df = bench.attention(seqs=[64, 128], heads=4, kv_heads=2, head_dim=32, dtype="float32",
                         mesh=mesh, repeats=1)
    assert df["seq"].tolist() == [64, 128]
    for s, row in zip((64, 128), df.itertuples()):
        flops = bench.attention_flops(1, 4, s, 32, causal=True)
        assert flops == 4 * 4 * 32 * s * s / 2
        assert row.forward_tflops == pytest.approx(flops / row.forward_s / 1e12)
        assert row.backward_tflops == pytest.approx(3.5 * flops / row.backward_s / 1e12)
        assert row.vs_baseline == pytest.approx(row.forward_tflops / row.baseline_tflops)
        assert row.vs_matmul == pytest.approx(row.forward_tflops / df.attrs["matmul_tflops"])
        assert "sp=2" in row.kernel and "GQA groups=2" in row.kernel
        assert row.baseline == "xla"  # on CPU; cuDNN's for 16-bit inputs on a GPU
    assert df.attrs["mesh"]["sp"] == 2 and df.attrs["dtype"] == "float32"

    short = bench.attention(seqs=[64], heads=2, head_dim=16, dtype="float32", mesh=mesh,
                            repeats=1, backward=False, baseline=False, causal=False)
    assert "backward_s" not in short and "baseline_s" not in short
    assert short["forward_tflops"][0] == pytest.approx(
        4 * 2 * 16 * 64 * 64 / short["forward_s"][0] / 1e12)  # no causal halving


def test_baseline_skipped_where_its_scores_would_not_fit(monkeypatch):
    monkeypatch.setattr(bench, "BASELINE_MAX_BYTES", 64 * 64 * 2 * 4 - 1)  # one byte short
    x = jax.numpy.zeros((1, 64, 2, 16), jax.numpy.float32)
    assert bench._baseline(x, x, x, True, 1.0, 1, jax.devices()[0]) == {}
    monkeypatch.setattr(bench, "BASELINE_MAX_BYTES", 64 * 64 * 2 * 4)
    assert bench._baseline(x, x, x, True, 1.0, 1, jax.devices()[0])["baseline"] == "xla"


def test_model_prefill_and_decode_rates():
    cfg = ModelConfig.preset("tiny")
    model = Model.init_random(cfg, Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2])), seed=0)
    df = bench.model(model, lengths=[24], decode_tokens=3, repeats=1)
    assert df["tokens"].tolist() == [24]
    assert np.allclose(df["prefill_tokens_per_s"] * df["prefill_s"], df["tokens"])
    assert (df["decode_tokens_per_s"] > 0).all()
    assert df.attrs["model"] == cfg.name and df.attrs["mesh"]["sp"] == 2
    with pytest.raises(ShapeError):
        bench.model(model, lengths=[cfg.context_length], decode_tokens=3)


def test_short_calls_are_timed_in_batches():
    """Calls much shorter than a sample are queued back to back: the per-call time stays right
    and the host's wait is paid once per sample, not per call."""
    calls = []

    def short():  # ~2 ms
        calls.append(1)
        time.sleep(0.002)

    seconds = bench.median_seconds(short, repeats=3, min_sample_s=0.04)
    assert 0.0015 < seconds < 0.01
    assert len(calls) >= 2 + 3 * 4  # warm-up, the probe, then at least 4 calls per sample
    calls.clear()
    bench.median_seconds(lambda: calls.append(time.sleep(0.03)), repeats=3, min_sample_s=0.02)
    assert len(calls) == 2 + 3  # long calls: one per sample
    calls.clear()
    bench.median_seconds(short, repeats=3, min_sample_s=0)
    assert len(calls) == 1 + 3  # stateful calls (a decode step takes a cache slot): exact count


def test_bad_input():
    mesh = rk.make_mesh(sp=2, devices=jax.devices()[:2])
    with pytest.raises(ConfigError, match="kv_heads must divide heads"):
        bench.attention(seqs=[64], heads=4, kv_heads=3, mesh=mesh)
    with pytest.raises(ConfigError, match="at least one sequence length"):
        bench.attention(seqs=[], mesh=mesh)
    with pytest.raises(RingkitError, match="63"):  # the mesh's ring cannot split 63 positions
        bench.attention(seqs=[63], heads=2, head_dim=16, dtype="float32", mesh=mesh, repeats=1)
    with pytest.raises(ConfigError, match="repeats"):
        bench.median_seconds(lambda: 0, 0)


def test_cli(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "attention", "--seqs", "128", "--heads", "2", "--head-dim", "16",
                     "--dtype", "float32", "--repeats", "1", "--mesh", "1,1,1,-1", "--no-backward",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "XLA blockwise tiles" in printed and "forward_tflops" in printed
    saved = json.loads(out.read_text())
    assert saved["settings"]["heads"] == 2 and saved["rows"][0]["seq"] == 128
    assert cli.main(["bench", "attention", "--seqs", "64", "--heads", "3", "--kv-heads", "2"]) == 2
    assert "kv_heads must divide heads" in capsys.readouterr().err
    # An existing file is never overwritten, and a missing folder is caught before the run.
    for path, why in ((out, "already exists"), (tmp_path / "no" / "b.json", "does not exist")):
        assert cli.main(["bench", "attention", "--seqs", "128", "--out", str(path)]) == 2
        assert why in capsys.readouterr().err
    assert json.loads(out.read_text()) == saved


def test_million_dry_run(tmp_path):
    """benchmarks/million.py (the GPU run of 128K-1M tokens) runs its same code at tiny sizes
    on CPU: every row timed and planned, the real-text check done or skipped with its reason."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "million.py"
    spec = importlib.util.spec_from_file_location("million", path)
    million = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(million)
    out = million.main(["--dry-run", "--out", str(tmp_path / "m.json")])
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(out))
    assert [r["tokens"] for r in out["rows"]] == [512, 1024]
    for row in out["rows"]:
        assert row["prefill_s"] > 0 and row["decode_ms"] > 0 and row["plan_peak"] > 0
        assert row["attention_tflops"] < row["model_tflops"]
    check = out["real_text"]
    assert "skipped" in check or (check["relative"] < 1e-5 and check["argmax_agree"] == 1.0
                                  and check["answer"])
