"""ringkit.eval.video_needle: a needle frame in a decoded haystack video, read by OCR (text-only
models) or as VQGAN codes (vision models); grid, resume and bad input."""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

import ringkit as rk
from ringkit.errors import ConfigError, ShapeError, SourceError
from ringkit.eval.video_needle import QUESTION, render_needle
from ringkit.tokenize.text import Tokenizer

pytest.importorskip("pandas")
pytest.importorskip("av")
LWM = Path(__file__).resolve().parents[2] / "shared" / "lwm-vectors"
HAY = " ".join(f"Slide {i} tells of ships, harbours and the grey northern sea." for i in range(300))


def test_text_model_reads_the_needle_by_ocr(smollm2_tokenizer, tmp_path, monkeypatch):
    pytest.importorskip("tesserocr")
    tok = smollm2_tokenizer
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tok.vocab_size)
    model = rk.model.Model.init_random(
        config, rk.model.Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2])), seed=5,
        tokenizer=tok)
    prompts = []
    import ringkit.eval.common as common  # where the evals call generate_ids

    original = common.generate_ids
    monkeypatch.setattr(common, "generate_ids",
                        lambda m, rows, **k: prompts.extend(rows) or original(m, rows, **k))
    kw = dict(minutes=[0.5], depths=[0, 0.6], haystack=HAY, slide_seconds=5, seed=2,
              folder=tmp_path, max_new_tokens=4)
    r = rk.eval.video_needle(model, resume=tmp_path / "v.jsonl", **kw)
    assert len(r.frame) == 2 and r.frame["length"].tolist() == [30, 30]
    assert r.frame["frame"].tolist() == [0, round(0.6 * 29)]
    assert len(list(tmp_path.glob("slides-*.mp4"))) == 1  # encoded once, decoded per length
    for (_, row), ids in zip(r.frame.iterrows(), prompts):
        text = tok.decode(ids)
        # The OCR'd needle, at its time, among the slides' captions, then the question.
        stamp = f"[00:00:{row['frame']:02d}] SECRET NUMBER / {row['numbers'][0]}"
        assert stamp in text and text.count("harbours") >= 4, text
        assert text.rstrip().endswith("assistant") and QUESTION in text
    assert r.table().shape == (2, 1) and "video needle" in repr(r)
    prompts.clear()
    again = rk.eval.video_needle(model, resume=tmp_path / "v.jsonl", **kw)
    assert prompts == [] and again.frame["answer"].tolist() == r.frame["answer"].tolist()


def _byte_tokenizer():
    backend = tokenizers.Tokenizer(models.BPE(
        vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return Tokenizer(backend)


@pytest.mark.skipif(not (LWM / "vqgan").exists(), reason=f"LWM vectors not found at {LWM}")
def test_vision_model_reads_the_needle_frame_as_codes(tmp_path, monkeypatch):
    from ringkit.tokenize.vqgan import VQGAN

    model = rk.load_model(LWM, mesh=rk.make_mesh(sp=1, devices=jax.devices()[:1]),
                          rope_scaling=rk.model.RopeScaling("linear", 8.0))
    model.tokenizer = _byte_tokenizer()  # the tiny checkpoint ships none
    vq = VQGAN.load(LWM / "vqgan")
    seen = []
    import ringkit.eval.common as common  # where the evals call generate_ids

    original = common.generate_ids
    monkeypatch.setattr(common, "generate_ids", lambda m, rows, **k: seen.append(
        (rows, k["vision_rows"])) or original(m, rows, **k))
    r = rk.eval.video_needle(model, minutes=[3 / 60], depths=[0.5], haystack=HAY, vqgan=vq,
                             slide_seconds=1, folder=tmp_path, max_new_tokens=2)
    (rows, vision), = seen
    ids, mask = np.asarray(rows[0]), np.asarray(vision[0], bool)
    per_frame = vq.encode(render_needle(r.frame["numbers"][0][0])[None]).size + 1
    assert mask.sum() == 3 * per_frame and r.frame["frame"][0] == 1
    needle_codes = vq.encode(render_needle(r.frame["numbers"][0][0])[None]).ravel()
    np.testing.assert_array_equal(ids[mask][per_frame:2 * per_frame - 1], needle_codes)
    assert not np.array_equal(ids[mask][:per_frame - 1], needle_codes)
    with pytest.raises(ShapeError, match="5 minutes at 1 fps become"):
        rk.eval.video_needle(model, minutes=[5], depths=[0.5], haystack=HAY, vqgan=vq,
                             slide_seconds=60, folder=tmp_path)
    with pytest.raises(ConfigError, match="pass vqgan="):
        rk.eval.video_needle(model, minutes=[1], haystack=HAY)


def test_bad_input(smollm2_tokenizer):
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"),
                                 vocab_size=smollm2_tokenizer.vocab_size)
    model = rk.model.Model.init_random(
        config, rk.model.Runtime(rk.make_mesh(sp=1, devices=jax.devices()[:1])), seed=5,
        tokenizer=smollm2_tokenizer)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        rk.eval.video_needle(model, minutes=[1], depths=[-0.1])
    with pytest.raises(ConfigError, match="no frame"):
        rk.eval.video_needle(model, minutes=[0.001], depths=[0.5])
    with pytest.raises(ConfigError, match="trials >= 1"):
        rk.eval.video_needle(model, minutes=[1], trials=0)
    with pytest.raises(SourceError, match="no such file"):
        rk.eval.video_needle(model, minutes=[1], haystack="missing.mp4")
