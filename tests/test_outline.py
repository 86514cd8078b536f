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
    paths = outline(doc, 0).text.split("\n\n")
    assert sorted(paths) == sorted(doc.files)


def _small_model(tokenizer, context):
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tokenizer.vocab_size,
                                 max_position=context)
    runtime = rk.model.Runtime(rk.make_mesh(sp=2, devices=jax.devices()[:2]))
    return rk.model.Model.init_random(config, runtime, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    return rk.load_model(mesh=rk.make_mesh(sp=1, devices=jax.devices()[:1])).tokenizer


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
