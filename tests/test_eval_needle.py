"""ringkit.eval.needle: exact-length prompts, reproducible trials, resumable runs, and the grid."""

import dataclasses
import json

import jax
import pytest

import ringkit as rk
from ringkit.errors import ConfigError, FormatError, ShapeError, SourceError
from ringkit.eval.haystack import haystack_documents, haystack_text
from ringkit.eval.common import Prompter
from ringkit.eval.needle import NEEDLE, NEEDLE_UNKEYED, Haystack, build_trial

pytest.importorskip("pandas")
HAY = " ".join(f"Sentence number {i} tells of ships and harbours and the sea." for i in range(3000))


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def _tiny(tokenizer, sp):
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tokenizer.vocab_size)
    runtime = rk.model.Runtime(rk.make_mesh(sp=sp, devices=jax.devices()[:sp]))
    return rk.model.Model.init_random(config, runtime, seed=5, tokenizer=tokenizer)


@pytest.mark.parametrize("length, depth, needles, retrieve", [
    (300, 0.0, 1, 1), (777, 0.5, 1, 1), (1024, 1.0, 3, 2), (2000, 0.25, 4, 4)])
def test_trials_have_the_exact_length_and_hide_their_needles(tokenizer, length, depth, needles,
                                                             retrieve):
    hay = Haystack("text", HAY, tokenizer)
    prompter = Prompter.for_model(tokenizer)
    kw = dict(length=length, depth=depth, trial=1, seed=7, needles=needles, retrieve=retrieve)
    b = build_trial(tokenizer, prompter, hay, **kw)
    assert len(b["ids"]) == length and len(b["numbers"]) == retrieve
    assert build_trial(tokenizer, prompter, hay, **kw) == b  # reproducible from the seed
    assert build_trial(tokenizer, prompter, hay, **{**kw, "trial": 2})["numbers"] != b["numbers"]
    text = tokenizer.decode(b["ids"])
    assert text.count("special magic") == needles + 1  # the needles and the question
    assert all(str(n) in text for n in b["numbers"])
    # The first needle asked for is the one at ``depth`` of the haystack, at a sentence boundary.
    body = text.split("\n\n")[0]
    at = body.find(NEEDLE.format(city=b["cities"][0], number=b["numbers"][0]))
    assert at >= 0 and abs(at / len(body) - depth) < 0.1
    assert body[:at].rstrip().endswith(("sea.", "user")) or at / len(body) < 0.02


@pytest.mark.parametrize("needles, retrieve", [(1, 1), (3, 2)])
def test_instructed_style_says_what_is_hidden_and_starts_the_answer(tokenizer, needles,
                                                                     retrieve):
    hay = Haystack("text", HAY, tokenizer)
    kw = dict(length=900, depth=0.5, trial=0, seed=1, needles=needles, retrieve=retrieve)
    plain = build_trial(tokenizer, Prompter.for_model(tokenizer), hay, **kw)
    b = build_trial(tokenizer, Prompter.for_model(tokenizer), hay, style="instructed", **kw)
    assert len(b["ids"]) == 900 and b["numbers"] == plain["numbers"]
    text = tokenizer.decode(b["ids"])
    assert "hidden within the following text" in text.split("ships")[0]
    ending = (f"The special magic {b['cities'][0]} number is" if retrieve == 1 else
              f"The special magic numbers for {b['cities'][0]} and {b['cities'][1]} are")
    assert text.endswith("assistant\n" + ending)


@pytest.mark.parametrize("style", ["instructed", "plain"])
def test_unkeyed_needle_shares_the_keyed_trial(tokenizer, style):
    hay = Haystack("text", HAY, tokenizer)
    kw = dict(length=800, depth=0.75, trial=2, seed=3, needles=1, retrieve=1, style=style)
    keyed = build_trial(tokenizer, Prompter.for_model(tokenizer), hay, **kw)
    b = build_trial(tokenizer, Prompter.for_model(tokenizer), hay, keys=False, **kw)
    assert len(b["ids"]) == 800 and b["numbers"] == keyed["numbers"] and b["cities"] == [None]
    text = tokenizer.decode(b["ids"])
    assert NEEDLE_UNKEYED.format(number=b["numbers"][0]) in text
    assert b["question"] == "What is the special magic number?" and keyed["cities"][0] not in text
    if style == "instructed":
        assert text.endswith("assistant\nThe special magic number is")


def test_grid_resume_plot_and_sharding(tokenizer, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    model = _tiny(tokenizer, 2)
    # Two lengths in one padded bucket and batches of 4: each mesh compiles once. LWM's
    # protocol (the default): the haystack and needle fill length - 200 tokens.
    kw = dict(lengths=[240, 256], depths=[0, 1], trials=2, haystack=HAY, seed=3)
    r = rk.eval.needle(model, resume=tmp_path / "run.jsonl", **kw)
    assert len(r.frame) == 8 and set(r.frame["length"]) == {240, 256}
    assert (r.frame["tokens"] < r.frame["length"] - 200 + 64).all()
    assert r.table().shape == (2, 2) and 0 <= r.score <= 1
    assert r.plot() is not None and "needle in a haystack" in repr(r)
    assert r.comparable and "LWM's protocol" in repr(r)
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    run = json.loads(lines[0])["run"]
    assert len(lines) == 8 and run["seed"] == 3 and run["style"] == "lwm"
    assert run["template"] == "base" and run["protocol"]["comparable"] is True
    assert run["protocol"]["source"] == "LargeWorldModel/LWM scripts/eval_needle.py"

    # Resumed: nothing runs again; a bigger grid runs only its new cells.
    calls = []
    import ringkit.eval.common as common  # where the evals call generate_ids

    original = common.generate_ids
    monkeypatch.setattr(common, "generate_ids",
                        lambda m, rows, **k: calls.append(len(rows)) or original(m, rows, **k))
    again = rk.eval.needle(model, resume=tmp_path / "run.jsonl", **kw)
    assert calls == [] and again.frame["answer"].tolist() == r.frame["answer"].tolist()
    more = rk.eval.needle(model, resume=tmp_path / "run.jsonl", **{**kw, "trials": 4})
    assert calls == [4, 4] and len(more.frame) == 16

    # A run killed mid-write leaves half a line: it is dropped, and the next rows start clean.
    path = tmp_path / "run.jsonl"
    good = path.read_text()
    path.write_text(good + good.splitlines()[0][:40])
    with pytest.warns(UserWarning, match="dropping its last line"):
        assert len(rk.eval.needle(model, resume=path, **kw).frame) == 8
    assert path.read_text() == good
    path.write_text(good + "not json\n")  # anything else broken is named, not skipped
    with pytest.raises(FormatError, match=f"line {len(good.splitlines()) + 1} of .*run.jsonl"):
        rk.eval.needle(model, resume=path, **kw)
    for bad in (tmp_path, tmp_path / "missing" / "r.jsonl"):
        with pytest.raises(FormatError, match="directory|does not exist"):
            rk.eval.needle(model, resume=bad, **kw)

    # Another ring gives the same answers.
    other = rk.eval.needle(_tiny(tokenizer, 4), **kw)
    assert other.frame["answer"].tolist() == r.frame["answer"].tolist()


def test_bad_input(tokenizer):
    model = _tiny(tokenizer, 1)
    with pytest.raises(ShapeError, match="answer tokens in the 4,096-token context.*up to 4,065"):
        rk.eval.needle(model, lengths=[4096], depths=[0.5], haystack=HAY, style="instructed")
    # LWM's prompts are about 150 tokens shorter than their length.
    with pytest.raises(ShapeError, match="answer tokens in the 4,096-token context.*up to 4,1"):
        rk.eval.needle(model, lengths=[4400], depths=[0.5], haystack=HAY)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        rk.eval.needle(model, lengths=[256], depths=[1.5], haystack=HAY)
    with pytest.raises(ConfigError, match="retrieve <= needles"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], needles=1, retrieve=2, haystack=HAY)
    with pytest.raises(ShapeError, match="longer haystack"):
        rk.eval.needle(model, lengths=[4000], depths=[0.5], haystack=HAY[:8000])
    with pytest.raises(ShapeError, match="no room"):
        rk.eval.needle(model, lengths=[40], depths=[0.5], haystack=HAY)
    with pytest.raises(SourceError, match="at least 50 words"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], haystack="too short")
    with pytest.raises(ConfigError, match="unknown needle style 'chatty'"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], haystack=HAY, style="chatty")
    with pytest.raises(ConfigError, match="without keys cannot be told apart"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], needles=2, keys=False, haystack=HAY)
    with pytest.raises(ConfigError, match="not both"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], haystack=HAY, mesh=model.mesh)
    for bad in (dict(lengths=[-100]), dict(lengths=[256.5]), dict(lengths="x"), dict(lengths="12"),
                dict(depths=["deep"]), dict(trials=1.5), dict(trials=0), dict(batch=0),
                dict(batch=-1), dict(seed=-1), dict(seed="x")):
        with pytest.raises(ConfigError):
            rk.eval.needle(model, **{**dict(lengths=[256], depths=[0.5], haystack=HAY), **bad})
    with pytest.raises(SourceError, match="'nosuchfile.txt': no such file"):
        rk.eval.needle(model, lengths=[256], depths=[0.5], haystack="nosuchfile.txt")


def test_haystack_sources(tmp_path):
    (tmp_path / "hay.txt").write_text(HAY)
    assert haystack_text(tmp_path / "hay.txt") == ("hay.txt", HAY)
    assert haystack_text(str(tmp_path / "hay.txt"))[0] == "hay.txt"
    assert haystack_text(HAY) == ("text", HAY)
    one_line = " ".join(HAY.split())[:3000]  # too long for a file name: text, not an OSError
    assert haystack_text(one_line) == ("text", one_line)
    # The originals' haystacks: RULER's essay JSON, LWM's PG-19-style JSONL (joined as LWM
    # joins them, with nothing between).
    (tmp_path / "PaulGrahamEssays.json").write_text(json.dumps({"text": HAY}))
    assert haystack_text(tmp_path / "PaulGrahamEssays.json") == ("PaulGrahamEssays.json", HAY)
    (tmp_path / "pg19.jsonl").write_text('{"text": "One. "}\n\n{"text": "Two."}\n')
    assert haystack_documents(tmp_path / "pg19.jsonl") == ("pg19.jsonl", ["One. ", "Two."])
    assert haystack_text(tmp_path / "pg19.jsonl")[1] == "One. Two."
    (tmp_path / "bad.jsonl").write_text('{"text": "One."}\n{"title": "x"}\n')
    with pytest.raises(FormatError, match='line 2 of .*bad.jsonl is not a JSON object with a '
                                          'string "text"'):
        haystack_text(tmp_path / "bad.jsonl")


def test_needle_command(tokenizer, tmp_path, monkeypatch, capsys):
    from ringkit import cli, context

    model = _tiny(tokenizer, 1)
    monkeypatch.setattr(context, "default_model", lambda mesh=None, dtype=None: model)
    (tmp_path / "hay.txt").write_text(HAY)
    args = ["needle", "--lengths", "256", "--depths", "0", "1", "--trials", "1",
            "--haystack", str(tmp_path / "hay.txt"), "--out", str(tmp_path / "n.jsonl"),
            "--plot", str(tmp_path / "n.png")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "score" in out and "256" in out
    assert (tmp_path / "n.png").stat().st_size > 1000
    assert len((tmp_path / "n.jsonl").read_text().splitlines()) == 2
    assert cli.main(["needle", "--lengths", "256", "--depths", "2"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    # Output paths are checked before the run.
    assert cli.main([*args[:-1], str(tmp_path / "nodir" / "n.png")]) == 2
    assert "nodir does not exist" in capsys.readouterr().err
