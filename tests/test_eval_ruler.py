"""ringkit.eval.ruler: every task's samples fit their length, hide what they ask for, and are
reproducible; scoring, effective length, QA files, resumable runs and bad input."""

import collections
import dataclasses
import json
import re

import jax
import pytest

import ringkit as rk
from ringkit.errors import ConfigError, ShapeError, SourceError
from ringkit.eval.common import Template
from ringkit.eval.ruler import RulerResults, build_sample, score_answer
from ringkit.eval.ruler_qa import load_qa
from ringkit.eval.ruler_tasks import SYNTHETIC, TASKS, Env, task_names

pd = pytest.importorskip("pandas")
pytest.importorskip("wonderwords")
ESSAY = [f"Sentence {i} tells of ships, harbours and the grey northern sea." for i in range(4000)]


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def _build(tok, task, length, index=0, seed=0, qa=None, template="chat"):
    env = Env(" ".join(ESSAY).split(" "), length, qa or {}, tok)
    return build_sample(task, tok, Template.for_model(tok, template), env, index=index,
                        seed=seed)


@pytest.mark.parametrize("task", SYNTHETIC)
@pytest.mark.parametrize("length", [1000, 3000])
def test_samples_fill_their_length_and_hide_the_answer(tok, task, length):
    b = _build(tok, task, length, index=3, seed=11)
    budget = length - TASKS[task].tokens_to_generate
    assert 0.85 * budget <= len(b["ids"]) <= budget
    text = tok.decode(b["ids"])
    assert all(o in text for o in b["outputs"]) and b["outputs"]
    assert _build(tok, task, length, index=3, seed=11) == b  # a seed fixes the sample
    assert _build(tok, task, length, index=4, seed=11)["outputs"] != b["outputs"]
    assert _build(tok, task, length, index=3, seed=12)["outputs"] != b["outputs"]


def _asked(text: str, start: str = "") -> str:
    """The task itself: from the last ``start`` (past any worked example), or all of it."""
    return text[text.rfind(start):] if start else text


def test_niah_needles_answer_the_question(tok):
    for task in ("niah_multikey_1", "niah_multivalue", "niah_multiquery", "niah_multikey_3"):
        spec = TASKS[task]
        b = _build(tok, task, 2000, index=1)
        text = _asked(tok.decode(b["ids"]))
        needles = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", text)
        query = text.split("What ")[-1]
        asked = [(k, v) for k, v in needles if k in query]
        # Every asked value is in a needle whose key the question names, and nothing else is.
        assert sorted(v for _, v in asked) == sorted(b["outputs"]), task
        assert len({k for k, _ in asked}) == spec.n_queries
        if spec.haystack == "needle":  # distractors share the form, not the keys
            assert len(needles) > 10 * len(asked)


def test_vt_chain_resolves_to_the_answer(tok):
    b = _build(tok, "vt", 3000, index=2)
    text = _asked(tok.decode(b["ids"]), "Memorize and track")
    value = re.search(r"assigned the value (\d+) in the text", text).group(1)
    assign = dict(re.findall(r"VAR (\w+) = (VAR \w+|\d+)", text))
    resolved = set()
    for var in assign:
        v = assign[var]
        while v.startswith("VAR "):
            v = assign[v[4:]]
        if v == value:
            resolved.add(var)
    assert resolved == set(b["outputs"]) and len(resolved) == TASKS["vt"].hops + 1


def test_cwe_and_fwe_answers_are_the_most_frequent_words(tok):
    b = _build(tok, "cwe", 6000, index=0)
    task = _asked(tok.decode(b["ids"]), "Below is a numbered list")
    listed = re.findall(r"\d+\. (\S+)", task.split("Question:")[0])
    counts = collections.Counter(listed)
    top = {w for w, _ in counts.most_common(10)}
    assert top == set(b["outputs"])
    assert min(counts[w] for w in top) == 30 and max(c for w, c in counts.items()
                                                     if w not in top) == 3
    b = _build(tok, "fwe", 3000, index=0)
    words = _asked(tok.decode(b["ids"])).split("coded words. ")[1].split("\nQuestion")[0].split()
    ranked = [w for w, _ in collections.Counter(words).most_common(4)]
    assert ranked[0] == "..." and ranked[1:] == b["outputs"]


def test_scoring_and_effective_length():
    assert score_answer(["Abc", "d"], "it is abc", "all") == 50
    assert score_answer(["Abc", "d"], "it is abc", "part") == 100
    assert score_answer(["x"], "nothing", "part") == 0
    rows = [dict(task=t, length=n, sample=0, score=s) for t, n, s in [
        ("a", 1024, 100), ("b", 1024, 90), ("a", 2048, 90), ("b", 2048, 85),
        ("a", 4096, 100), ("b", 4096, 100)]]
    r = RulerResults(pd.DataFrame(rows), dict(model="m", seed=0))
    assert r.averages().tolist() == [95, 87.5, 100]
    assert r.effective_length() == 4096  # all three above 85.6
    assert r.effective_length(threshold=90) == 1024  # 2048 drops out, so 4096 does not count
    assert r.effective_length(threshold=99) == 0
    assert list(r.scores().index) == ["a", "b"]


def test_qa_files(tok, tmp_path):
    squad = dict(data=[dict(title="t", paragraphs=[
        dict(context=f"Paragraph {i}: the harbour of town {i} was built in year {1500 + i}.",
             qas=[dict(question=f"When was the harbour of town {i} built?",
                       answers=[dict(text=str(1500 + i))]),
                  dict(question="Unanswerable?", answers=[])])
        for i in range(40)])])
    (tmp_path / "squad.json").write_text(json.dumps(squad))
    rows = [dict(question=f"Who founded town {i}?", answer=f"Founder{i}",
                 context=dict(title=[f"Town {i}", f"Other {i}"],
                              sentences=[[f"Founder{i} founded town {i}."], ["Unrelated."]]))
            for i in range(30)]
    (tmp_path / "hotpot.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = dict(squad=load_qa("squad", tmp_path / "squad.json"),
                hotpotqa=load_qa("hotpotqa", tmp_path / "hotpot.jsonl"))
    assert len(data["squad"].questions) == 40 and len(data["hotpotqa"].documents) == 60
    for task in ("qa_1", "qa_2"):
        b = _build(tok, task, 900, qa=data)
        text = tok.decode(b["ids"])
        question = re.search(r"Question: (.*)", text).group(1)
        q = next(q for q in data[TASKS[task].dataset].questions if q["question"] == question)
        gold = data[TASKS[task].dataset].documents[q["documents"][0]]
        assert gold in text and text.count("Document ") > 5 and b["outputs"] == q["answers"]
    with pytest.raises(SourceError, match="does not look like squad"):
        load_qa("squad", tmp_path / "hotpot.jsonl")
    with pytest.raises(SourceError, match="no such file"):
        load_qa("squad", tmp_path / "missing.json")


def _tiny(tok, sp):
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tok.vocab_size)
    runtime = rk.model.Runtime(rk.make_mesh(sp=sp, devices=jax.devices()[:sp]))
    return rk.model.Model.init_random(config, runtime, seed=5, tokenizer=tok)


@pytest.fixture(scope="module")
def tiny2(tok):
    return _tiny(tok, 2)  # one model, so its compiled prefill and decode are shared


def test_run_and_resume(tok, tiny2, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    kw = dict(tasks=["niah_single_1", "fwe"], length=[640], samples=2, haystack=" ".join(ESSAY))
    model = tiny2
    r = rk.eval.ruler(model, resume=tmp_path / "r.jsonl", **kw)
    assert len(r.frame) == 4 and r.scores().shape == (2, 1)
    assert (r.frame["tokens"] <= 640).all() and r.frame["score"].between(0, 100).all()
    assert r.plot() is not None and "RULER" in repr(r)
    import ringkit.eval.common as common  # where the evals call generate_ids

    calls, original = [], common.generate_ids
    monkeypatch.setattr(common, "generate_ids",
                        lambda m, rows, **k: calls.append(len(rows)) or original(m, rows, **k))
    # Resumed on another mesh (the mesh is not part of a run's settings): nothing runs again.
    again = rk.eval.ruler(_tiny(tok, 1), resume=tmp_path / "r.jsonl", **kw)
    assert calls == [] and again.frame["answer"].tolist() == r.frame["answer"].tolist()
    more = rk.eval.ruler(model, resume=tmp_path / "r.jsonl", **{**kw, "samples": 4})
    assert calls == [2, 2] and len(more.frame) == 8  # only the new samples of each task


def test_ruler_command(tok, tiny2, tmp_path, monkeypatch, capsys):
    from ringkit import cli, context

    monkeypatch.setattr(context, "default_model", lambda mesh=None, dtype=None: tiny2)
    (tmp_path / "essay.txt").write_text(" ".join(ESSAY))
    args = ["ruler", "--tasks", "niah_single_1", "--lengths", "640", "--samples", "2",
            "--haystack", str(tmp_path / "essay.txt"), "--out", str(tmp_path / "r.jsonl"),
            "--plot", str(tmp_path / "r.png")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "effective length" in out and "niah_single_1" in out
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2
    assert cli.main(["ruler", "--tasks", "nah", "--lengths", "640"]) == 2
    assert "unknown RULER task 'nah'" in capsys.readouterr().err
    parsed = cli._parser().parse_args(["ruler", "--lengths", "1", "--rope-scaling", "yarn:4"])
    assert parsed.rope_scaling == ("yarn", 4.0)
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["ruler", "--lengths", "1", "--rope-scaling", "yarn"])


def test_bad_input(tok):
    model = _tiny(tok, 1)
    with pytest.raises(ConfigError, match="unknown RULER task 'niah_9'.*niah_single_1"):
        task_names(["niah_9"])
    with pytest.raises(ConfigError, match="unknown RULER task 'nah'.*groups all, niah"):
        rk.eval.ruler(model, tasks=["nah"], length=512)
    with pytest.raises(ShapeError, match="exceed the 4,096-token context.*rope_scaling"):
        rk.eval.ruler(model, tasks="vt", length=[2048, 8192])
    with pytest.raises(ConfigError, match="qa_1 needs squad data.*qa_files"):
        rk.eval.ruler(model, tasks="qa_1", length=1024)
    for bad in (dict(samples=0), dict(samples=1.5), dict(batch=0), dict(length=-5),
                dict(length=[1024, "long"]), dict(seed=-1)):
        with pytest.raises(ConfigError, match="samples|batch|length|seed"):
            rk.eval.ruler(model, tasks="vt", **{"length": 1024, **bad})
    with pytest.raises(ShapeError, match="no room for a niah_single_1 prompt"):
        rk.eval.ruler(model, tasks="niah_single_1", length=150, samples=1)
    assert task_names(["niah", "vt", "niah_single_1"])[-1] == "vt"
    assert task_names("all") == list(SYNTHETIC)
