"""The embedded SmolLM2-135M-Instruct: parity with transformers, sharding invariance, decoding.

transformers (torch CPU) is a test-only reference; it reads the same GGUF through its own
dequantization and q/k un-permutation, so the loader is checked too.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

import ringkit as rk
from ringkit.generate import generate_ids
from ringkit.model import Model, Runtime, embedded_model_path
from ringkit.model.weights.gguf import read_gguf
from ringkit.model.weights.place import place
from ringkit.tokenize.text import Tokenizer

ROOT = Path(__file__).resolve().parents[1]

try:
    GGUF = embedded_model_path()
except rk.errors.MissingDependencyError as err:
    pytestmark = pytest.mark.skip(reason=str(err))
    GGUF = None


@pytest.fixture(scope="module")
def smol():
    """Meshes -> Model, all sharing one read of the GGUF."""
    config, canonical, fields = read_gguf(GGUF)
    tokenizer = Tokenizer.from_gguf_fields(fields)
    built = {}

    def get(sp=1, tp=1):
        if (sp, tp) not in built:
            mesh = rk.make_mesh(tp=tp, sp=sp, devices=jax.devices()[:sp * tp])
            rt = Runtime(mesh)
            built[sp, tp] = Model(config, place(canonical, config, rt), tokenizer, rt)
        return built[sp, tp]

    return get


@pytest.fixture(scope="module")
def prompts(smol):
    """Three prompts of about 300, 1000 and 2000 tokens (project text and a chat prompt)."""
    tok = smol().tokenizer
    readme = (ROOT / "README.md").read_text()
    code = (ROOT / "ringkit" / "attention" / "ring.py").read_text()
    chat = tok.apply_chat_template(
        "Summarise this code in one sentence:\n" + (ROOT / "ringkit" / "model" /
                                                   "transformer.py").read_text(), tokenize=True)
    rows = [tok.encode(readme)[:300], tok.encode(code)[:1000], chat[-2000:]]
    assert [len(r) for r in rows] == [300, 1000, 2000]
    return rows


@pytest.fixture(scope="module")
def hf_model():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.set_num_threads(2)
    # transformers parses the GGUF twice (config, then weights) and rebuilds gguf's name map once
    # per tensor: ~25 of its ~35 s. Both are pure, so they are memoized for this one load.
    import functools

    import gguf

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        mp.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    return model.eval()


def _packed_logits(model, rows):
    """Logits of several prompts packed into one sequence (segments, positions restarting at 0
    in each): one compile instead of one per length, and a check of segments and positions."""
    packed = np.concatenate(rows)
    segments = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    positions = np.concatenate([np.arange(len(r)) for r in rows])
    got = model.logits(packed, segment_ids=segments[None], positions=positions[None])[0]
    return [got[segments == i] for i in range(len(rows))]


def _assert_logits_match(hf_model, rows, got):
    import torch

    for row, logits in zip(rows, got):
        with torch.no_grad():
            ref = hf_model(torch.tensor([row])).logits[0].numpy()
        assert np.abs(ref).max() > 10  # logits of order 10
        assert np.abs(logits - ref).max() <= 1e-3, len(row)


def _hf_greedy(hf_model, row, n):
    import torch

    with torch.no_grad():
        out = hf_model.generate(torch.tensor([row]), max_new_tokens=n, do_sample=False,
                                eos_token_id=None, pad_token_id=0)
    return out[0, len(row):].tolist()


def test_logits_and_greedy_match_transformers(smol, prompts, hf_model):
    """The two shorter prompts; the longest (2000 tokens, ~1 min on 2 cores) is in the slow set."""
    rows = prompts[:2]
    _assert_logits_match(hf_model, rows, _packed_logits(smol(sp=8), rows))
    # Greedy: one at a time in transformers, as one padded batch here (one compile of the decode
    # step, not one per length).
    ref_new = [_hf_greedy(hf_model, row, 32) for row in rows]
    assert generate_ids(_no_eos(smol(sp=4)), rows, max_new_tokens=32) == ref_new


def _no_eos(model):
    """The model with a tokenizer that never stops early (to compare 32 full tokens)."""
    class Tok:
        eos_ids = ()

    return Model(model.config, model.variables, Tok(), model.runtime)


MESHES = ((2, 1), (4, 1), (8, 1), (1, 3))


def test_sharding_invariance(smol, prompts):
    """Logits on every mesh. Greedy generations: sp=4 against transformers above, every mesh in
    the slow test below (each mesh's decode step takes ~20 s to compile)."""
    row = prompts[0]
    ref = np.asarray(smol(sp=1).logits(row)[0])
    for sp, tp in MESHES:
        got = smol(sp=sp, tp=tp).logits(row)[0]
        # A host array: un-permuting the layout on the devices replicated [b, S, vocab] on each.
        assert isinstance(got, np.ndarray), type(got)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), (sp, tp)


@pytest.mark.slow
def test_longest_prompt_matches_transformers_on_every_mesh(smol, prompts, hf_model):
    """The longest prompt: logits on sp=8 and transformers' greedy tokens on sp=1, then the same
    tokens on every mesh."""
    row = prompts[2]
    _assert_logits_match(hf_model, [row], _packed_logits(smol(sp=8), [row]))
    ref_gen = generate_ids(_no_eos(smol(sp=1)), [row], max_new_tokens=24)[0]
    assert ref_gen == _hf_greedy(hf_model, row, 24)
    for sp, tp in MESHES:
        assert generate_ids(_no_eos(smol(sp=sp, tp=tp)), [row], max_new_tokens=24)[0] == ref_gen


def test_generate_text(smol):
    model = smol(sp=4)
    pieces = []
    answer = model.generate("What is the capital of France?", max_new_tokens=24,
                            stream=lambda piece, row: pieces.append(piece))
    assert "Paris" in answer
    assert "".join(pieces).startswith(answer)
    # A batch with prompts of different lengths gives the same greedy answers as one at a time.
    questions = ["What is the capital of France?", "Name a colour of the sky on a clear day."]
    batch = model.generate(questions, max_new_tokens=24)
    assert batch == [answer, model.generate(questions[1], max_new_tokens=24)]
    # Stop strings cut the answer; sampling with a seed is reproducible.
    cut = model.generate("Count from 1 to 10.", max_new_tokens=24, stop=["5"])
    assert "5" not in cut and len(cut) > 0
    kw = dict(max_new_tokens=24, temperature=0.8, top_p=0.9, seed=7)
    assert model.generate("Tell me a word.", **kw) == model.generate("Tell me a word.", **kw)
