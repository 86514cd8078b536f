"""A source tree longer than the model's context read as its outline (``fit="auto"``)."""

import dataclasses

import jax
import pytest

import ringkit as rk
from ringkit.errors import ConfigError, FitWarning, ShapeError
from ringkit.inputs.outline import describe_file, outline

MODULE = '''"""Ledger arithmetic: balances carried forward between pages.

Longer notes that only the detailed outline keeps.
"""

import math


class Ledger:
    pass


def carry(balance):
    return balance


def _hidden():
    pass
''' + "\n".join(f"X{i} = {i}  # filler line {i}" for i in range(200))


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "shop"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "ledger.py").write_text(MODULE)
    (root / "README.md").write_text("# The shop\n\nSells oranges and oil.\n\n## More\n\nDetails.\n")
    (root / "prices.json").write_text('{\n  "oranges": 3\n}\n')
    (root / "run.sh").write_text("#!/bin/sh\n# Start the shop's till.\nexec till\n")
    return root


def test_outline_levels(tree):
    doc = rk.ingest(tree)
    two = describe_file("shop/ledger.py", MODULE, 2)
    assert two == ["Ledger arithmetic: balances carried forward between pages.",
                   "defines: class Ledger, def carry"]
    assert describe_file("shop/ledger.py", MODULE, 1) == [two[0]]
    assert describe_file("README.md", "# The shop\n\nSells oranges.\n", 2) == [
        "The shop", "Sells oranges."]
    assert describe_file("run.sh", "#!/bin/sh\n# Start the till.\nexec till\n", 1) == [
        "# Start the till."]
    assert describe_file("prices.json", '{\n  "oranges": 3\n}', 2) == []
    text = outline(doc, 2).text
    assert "shop/ledger.py\n    Ledger arithmetic" in text and "filler" not in text
    assert "prices.json" in text and "oranges\": 3" not in text
    intro, *paths = outline(doc, 0).text.split("\n\n")
    assert intro.startswith("An outline of a source tree of 4 files")
    assert sorted(paths) == sorted(doc.files)


def _small_model(tokenizer, context):
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tokenizer.vocab_size,
                                 max_position=context)
    runtime = rk.model.Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2]))
    return rk.model.Model.init_random(config, runtime, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


def test_a_tree_too_long_is_read_as_its_outline(tree, tokenizer, tmp_path):
    model = _small_model(tokenizer, 512)
    with pytest.warns(FitWarning, match="outline .* the whole source is .* tokens"):
        ctx = rk.read(tree, model=model, room=64, cache=False)
    assert ctx.fitted and "outline" in repr(ctx)
    assert len(ctx.tokens) + 64 <= 512 and "shop/ledger.py" in ctx.doc.text
    assert ctx.ask("What does the shop sell?", max_new_tokens=4) is not None
    with pytest.raises(ShapeError, match="rope_scaling"):
        rk.read(tree, model=model, room=64, fit="whole", cache=False)
    (tmp_path / "book.txt").write_text("word " * 2000)
    with pytest.raises(ShapeError, match="rope_scaling"):  # not a tree: no outline
        rk.read(tmp_path / "book.txt", model=model, room=64, cache=False)
    with pytest.raises(ConfigError, match="source-tree files"):
        rk.read(tmp_path / "book.txt", model=model, room=64, fit="outline", cache=False)
    with pytest.raises(ShapeError, match="paths exceeds"):
        rk.read(tree, model=_small_model(tokenizer, 80), room=64, cache=False)


def test_focus_puts_the_relevant_file_last_and_whole(tree):
    from ringkit.inputs.outline import fit_focused, focused, relevance

    (tree / "shop" / "till.py").write_text('"""The till: rings up sales and prints receipts."""\n'
                                           + "x = 1\n" * 50)
    doc = rk.ingest(tree)
    scores = relevance(doc, "Which file prints the receipts?")
    assert max(scores, key=scores.get) == "shop/till.py"
    assert scores["shop/ledger.py"] == 0  # no word of the question (stop words left out)
    small = focused(doc, "Which file prints the receipts?", 1, 1)
    assert small.segments[-1].source == "shop/till.py"
    assert small.segments[-1].text.startswith("===== shop/till.py =====")  # read whole
    assert "chosen to answer this question: Which file prints" in small.segments[0].text
    count = lambda d: len(d.text.split())
    fitted, detail, whole = fit_focused(doc, "Which file prints the receipts?", count, 260)
    assert (detail, whole) == (2, 1) and count(fitted) <= 260
    # A tighter budget gives up outline detail before the relevant file's text.
    assert fit_focused(doc, "Which file prints the receipts?", count, 225)[1:] == (0, 1)
    assert fit_focused(doc, "receipts", count, 5) is None  # not even the paths fit


def test_relevance_folds_word_forms_and_weighs_tests_down(tmp_path):
    from ringkit.inputs.outline import TEST_WEIGHT, relevance

    (tmp_path / "src").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "src" / "video.py").write_text('"""Read a video file into frames."""\n')
    (tmp_path / "src" / "audio.py").write_text('"""Decode an audio track."""\n')
    (tmp_path / "tests" / "test_video.py").write_text(
        '"""Tests that videos are read into frames, one video at a time."""\n')
    doc = rk.ingest(tmp_path)
    scores = relevance(doc, "Which file reads videos?")  # "reads videos" meets "read", "video"
    assert max(scores, key=scores.get) == "src/video.py" and scores["src/audio.py"] == 0
    assert 0 < scores["tests/test_video.py"] < scores["src/video.py"]
    asked = relevance(doc, "Which test reads videos?")  # a question about tests: full weight
    assert max(asked, key=asked.get) == "tests/test_video.py"
    assert TEST_WEIGHT < 1
