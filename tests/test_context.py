"""rk.read / Context.ask / rk.ask: a document prefilled once and questioned many times, with the
embedded SmolLM2 on a 2-device ring."""

import dataclasses
import json
import logging
import os
import re
import types

import jax
import numpy as np
import pytest

import ringkit as rk
from ringkit.context import QUESTION_PIECE
from ringkit.errors import ConfigError, ResourceError, ShapeError, SourceError
from ringkit.tokenize.prompts import context_prompt, tokenize

STORY = ("The harbour master of Port Ellery kept a ledger of every ship. On the first of March "
         "the Gannet arrived from Lisbon with nine crates of oranges. On the fourth the Kestrel "
         "left for Bergen carrying forty barrels of oil. The ledger was kept in a blue box.\n")


@pytest.fixture(scope="module")
def smollm2():
    return rk.load_model(mesh=rk.make_mesh(sp=2, devices=jax.devices()[:2]))


@pytest.fixture
def story(tmp_path):
    (tmp_path / "ledger.txt").write_text(STORY * 3)
    return rk.ingest(tmp_path / "ledger.txt")


def test_prefix_plus_question_is_the_whole_prompt(smollm2, story):
    prompt = context_prompt(story, smollm2, cache=False)
    for q in ("What did the Gannet carry?", "  Where was the ledger kept? "):
        whole = tokenize(story, smollm2, q, cache=False).ids
        assert np.concatenate([prompt.prefix.ids, prompt.question_ids(q)]).tolist() \
            == whole.tolist()


def test_questions_see_the_same_document(smollm2, story, caplog):
    ctx = rk.read(story, model=smollm2, room=64)
    assert ctx.cache.slots >= len(ctx.tokens) + 64 and "sp=2" in repr(ctx)
    assert "device 1: tokens" in repr(ctx) and ">device 1<" in ctx._repr_html_()
    q1, q2 = "What did the Gannet carry?", "Where did the Kestrel go?"
    assert len(ctx.prompt.question_ids(q1)) > QUESTION_PIECE  # both step sizes are used
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        first = ctx.ask(q1, max_new_tokens=12, temperature=0)
    # read() compiled the decode steps while the prefill ran: the first ask compiles none.
    assert not [r for r in caplog.records if "jit(decode_step)" in r.getMessage()]
    pieces = []
    second = ctx.ask(q2, max_new_tokens=12, stream=pieces.append)
    assert "".join(pieces) == second and second != first
    assert ctx.ask(q1, max_new_tokens=12, temperature=0) == first  # rewound to the document
    # The same greedy answer as generating from the whole prompt in one prefill.
    ids = tokenize(story, smollm2, q1, cache=False).ids.tolist()
    assert smollm2.generate(ids, max_new_tokens=12) == first
    assert "orange" in first.lower() or "crate" in first.lower()


def test_bad_input(smollm2, story, tmp_path, monkeypatch):
    ctx = rk.read(story, model=smollm2, room=64)  # shapes as above: nothing new to compile
    with pytest.raises(SourceError, match="question is empty"):
        ctx.ask("   ")
    with pytest.raises(ShapeError, match="room=.*"):
        ctx.ask("What did the Gannet carry?", max_new_tokens=60)
    assert ctx.ask("What did the Gannet carry?", max_new_tokens=4)  # still usable
    q = "What did the Gannet carry?"
    for bad in (dict(max_new_tokens=4.5), dict(max_new_tokens=None), dict(stop=""),
                dict(stop=[None]), dict(stream="yes"), dict(temperature="hot")):
        with pytest.raises(ConfigError):
            ctx.ask(q, **bad)
    for question in (None, 42, b"Why?"):
        with pytest.raises(SourceError, match="must be text"):
            ctx.ask(question)
    with pytest.raises(ConfigError, match="room"):
        rk.read(story, model=smollm2, room=1.5)
    with pytest.raises(ConfigError, match="room=1,000,000,000 .* leaves nothing"):
        rk.read(story, model=smollm2, room=10**9)
    with pytest.raises(ConfigError, match="not both"):
        rk.read(story, model=smollm2, mesh=smollm2.mesh)
    with pytest.raises(ConfigError, match="ask for fewer new tokens"):
        rk.ask(story, q, model=smollm2, max_new_tokens=10**6)
    # rk.ask refuses its arguments before it reads (here: a missing file) and prefills.
    for bad in (dict(max_new_tokens=0), dict(max_new_tokens=-100), dict(stop=""),
                dict(stream=3)):
        with pytest.raises(ConfigError):
            rk.ask(tmp_path / "missing.txt", q, model=smollm2, **bad)
    with pytest.raises(SourceError, match="no such file"):
        rk.read(tmp_path / "missing.txt", model=smollm2)
    with pytest.raises(SourceError, match="question is empty"):
        rk.ask(tmp_path / "missing.txt", "", model=smollm2)
    (tmp_path / "long.txt").write_text("word " * 9000)
    with pytest.raises(ShapeError, match="rope_scaling"):
        rk.read(tmp_path / "long.txt", model=smollm2)
    import ringkit.budget

    monkeypatch.setattr(ringkit.budget, "host_available", lambda: 10_000_000)
    with pytest.raises(ResourceError, match="GB is available.*make_mesh"):
        rk.read(story, model=smollm2)


def test_memory_check_counts_simulated_devices():
    from ringkit.budget import check_memory

    model = types.SimpleNamespace(
        config=rk.ModelConfig.preset("smollm2-135m"), runtime=rk.model.Runtime(rk.make_mesh()),
        mesh=rk.make_mesh(), sp=8)
    check_memory(model, 4096)  # fits this machine
    with pytest.raises(ResourceError):
        check_memory(model, 50_000_000)


def test_cli(smollm2, tmp_path, monkeypatch, capsys):
    from ringkit import cli, context

    monkeypatch.setattr(context, "default_model", lambda mesh=None, dtype=None: smollm2)
    # The story and a room that rounds to read(room=64)'s: the compiled prefill and steps of the
    # tests above serve rk.ask underneath.
    (tmp_path / "note.txt").write_text(STORY * 3)
    assert cli.main(["ask", str(tmp_path / "note.txt"), "What did the Gannet carry?",
                     "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and out.endswith("\n")
    assert cli.main(["info", str(tmp_path / "note.txt"), str(tmp_path / "missing.txt")]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "missing.txt" in out and "tokens:" in out and "per device" in out
    # Errors: one line on stderr, status 2, no traceback.
    assert cli.main(["ask", str(tmp_path / "missing.txt"), "Why?"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ringkit: error: no such file") and err.count("\n") == 1
    assert cli.main(["ask", str(tmp_path / "note.txt"), " "]) == 2
    assert "question is empty" in capsys.readouterr().err
    assert cli.main(["info", str(tmp_path / "note.txt"), "--mesh", "3,1,1,1"]) == 2
    assert "ringkit: error:" in capsys.readouterr().err
    with pytest.raises(SourceError):
        cli.main(["ask", str(tmp_path / "missing.txt"), "Why?", "--debug"])


def _tiny(tokenizer, sp, window=None):
    runtime = rk.model.Runtime(rk.make_mesh(sp=sp, devices=jax.devices()[:sp]))
    config = dataclasses.replace(rk.ModelConfig.preset("tiny"), vocab_size=tokenizer.vocab_size)
    if window:  # local layers but the last (as Gemma 3's pattern)
        config = dataclasses.replace(config, sliding_window=window, layer_types=(
            ("sliding_attention",) * (config.n_layers - 1) + ("full_attention",)))
    return rk.model.Model.init_random(config, runtime, seed=3, tokenizer=tokenizer)


@pytest.mark.parametrize("window", [None, 16])
def test_save_and_load_on_the_same_and_another_ring(smollm2, story, tmp_path, window):
    """With ``window``, local layers keep window caches, which a save keeps and a load on
    another ring lays out afresh."""
    # A tiny random model with SmolLM2's tokenizer: quick to compile; the same seed gives the
    # same weights on every mesh.
    model = _tiny(smollm2.tokenizer, 2, window)
    ctx = rk.read(story, model=model, room=32)
    assert ctx.cache.window_base == (8 if window else 0)
    q = "What did the Gannet carry?"
    answer = ctx.ask(q, max_new_tokens=10)
    if window:  # the question and answer were rewound out of the window caches too
        assert (np.asarray(ctx.cache.window_pos) == np.asarray(ctx._window_pos)).all()
        assert np.asarray(ctx.cache.window_pos).max() == len(ctx.tokens) - 1
    ctx.save(tmp_path / "ledger.ctx")
    with pytest.raises(SourceError, match="already exists"):
        ctx.save(tmp_path / "ledger.ctx")
    assert ctx.ask(q, max_new_tokens=10) == answer  # saving left the context as it was

    again = rk.load_context(tmp_path / "ledger.ctx", model=model)
    assert again.doc.text == story.text and again.tokens.ids.tolist() == ctx.tokens.ids.tolist()
    assert again.tokens.source_of(len(again.tokens) // 2) == ctx.tokens.source_of(
        len(ctx.tokens) // 2)
    assert again.ask(q, max_new_tokens=10) == answer

    # Another ring (sp=4): the cache is laid out afresh; the answer is the same.
    moved = rk.load_context(tmp_path / "ledger.ctx", model=_tiny(smollm2.tokenizer, 4, window))
    assert moved.cache.base * 4 >= len(ctx.tokens) and moved.model.sp == 4
    assert moved.cache.window_base == (4 if window else 0)
    assert moved.ask(q, max_new_tokens=10) == answer


def test_load_context_refuses_what_it_cannot_use(smollm2, story, tmp_path):
    from ringkit.errors import ConfigError, FormatError

    with pytest.raises(SourceError, match="not a context saved"):
        rk.load_context(tmp_path / "nothing.ctx", model=smollm2)
    ctx = rk.read(story, model=smollm2, room=64)
    ctx.save(tmp_path / "a.ctx")
    with pytest.raises(ConfigError, match="another model"):
        rk.load_context(tmp_path / "a.ctx", model=_tiny(smollm2.tokenizer, 2))
    meta_file = tmp_path / "a.ctx" / "context.json"
    meta = json.loads(meta_file.read_text())
    for edit in (dict(next_pos=[-5]), dict(room=10**6), dict(room="64"), dict(model=None),
                 dict(template="no slot")):
        meta_file.write_text(json.dumps({**meta, **edit}))
        with pytest.raises(FormatError, match="context.json is corrupt"):
            rk.load_context(tmp_path / "a.ctx", model=smollm2)
    meta_file.write_text("[1, 2]")
    with pytest.raises(FormatError, match="context format"):
        rk.load_context(tmp_path / "a.ctx", model=smollm2)
    meta_file.write_text(json.dumps(meta))
    data = (tmp_path / "a.ctx" / "arrays.npz").read_bytes()
    (tmp_path / "a.ctx" / "arrays.npz").write_bytes(data[:len(data) // 2])  # cut short
    with pytest.raises(FormatError, match="arrays.npz was changed or damaged"):
        rk.load_context(tmp_path / "a.ctx", model=smollm2)
    (tmp_path / "a.ctx" / "arrays.npz").write_bytes(b"not an npz")
    with pytest.raises(FormatError, match="arrays.npz was changed or damaged"):
        rk.load_context(tmp_path / "a.ctx", model=smollm2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="folder cannot be made"):
        ctx.save(tmp_path / "file" / "b.ctx")


def test_a_saved_context_is_the_one_that_was_saved(smollm2, story, tmp_path, monkeypatch,
                                                  capfd):
    """Edits and damage that still parse are found by the integrity record; a save killed or
    raced midway leaves no half context, and its leftovers go with the next save there."""
    import shutil

    from ringkit import persist
    from ringkit.errors import FormatError

    model = _tiny(smollm2.tokenizer, 2)
    ctx = rk.read(story, model=model, room=32)
    good = ctx.save(tmp_path / "good.ctx")
    work = tmp_path / "work.ctx"

    def damaged(edit, match):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(good, work)
        edit(work)
        with pytest.raises(FormatError, match=match):
            rk.load_context(work, model=model)

    def edit_meta(**changes):
        def edit(path):
            meta = json.loads((path / "context.json").read_text())
            (path / "context.json").write_text(json.dumps({**meta, **changes}))
        return edit

    meta = json.loads((good / "context.json").read_text())
    for changes in (dict(next_pos=[meta["next_pos"][0] - 1]), dict(base=meta["base"] + 1),
                    dict(template="Answer briefly. {question}")):
        damaged(edit_meta(**changes), "context.json was changed after it was saved")

    def edit_text(name, old, new):
        return lambda path: (path / name).write_bytes(
            (path / name).read_bytes().replace(old, new, 1))

    damaged(edit_text("document.json", b"Gannet", b"Gadget"), "document.json was changed")
    ids = np.load(good / "arrays.npz")["ids"]

    def edit_ids(path):
        with np.load(good / "arrays.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["ids"] = np.roll(ids, 1)  # same size, same tokens, another order
        np.savez(path / "arrays.npz", **arrays)

    damaged(edit_ids, "arrays.npz was changed")
    capfd.readouterr()
    damaged(lambda path: (path / "cache" / "manifest.ocdbt").unlink(),
            "the cache file cache/manifest.ocdbt is missing")
    data = max((p for p in (good / "cache").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size).relative_to(good)
    damaged(lambda path: (path / data).write_bytes((path / data).read_bytes()[:-7]),
            f"the cache file {data.as_posix()} holds")
    assert "Traceback" not in capfd.readouterr().err  # no orbax noise on stderr

    # A save killed midway (its process gone) left a hidden folder: the next save removes it;
    # one whose process still runs stays.
    dead = tmp_path / ".new.ctx.saving-999999999-x1"
    live = tmp_path / f".new.ctx.saving-{os.getpid()}-x2"
    for folder in (dead, live):
        (folder / "cache").mkdir(parents=True)
    ctx.save(tmp_path / "new.ctx")
    assert not dead.exists() and live.exists()
    # Interrupted here: nothing is left; raced: the other save's context stays whole.
    monkeypatch.setattr(persist.np, "savez", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ctx.save(tmp_path / "cut.ctx")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if "cut.ctx" in p.name) == []
    other = tmp_path / "raced.ctx"
    monkeypatch.setattr(persist.integrity, "remove_leftovers",
                        lambda path: shutil.copytree(good, other))
    with pytest.raises(SourceError, match="another save may have made it"):
        ctx.save(other)
    monkeypatch.undo()
    assert rk.load_context(other, model=model).tokens.ids.tolist() == ids.tolist()
    os.symlink(tmp_path / "nowhere", tmp_path / "link.ctx")
    with pytest.raises(SourceError, match="is a symlink"):
        ctx.save(tmp_path / "link.ctx")


def test_a_question_too_long_says_so(smollm2, story):
    """A question longer than the room (or the whole context) asks for a shorter question, not
    for fewer new tokens."""
    model = _tiny(smollm2.tokenizer, 2)
    ctx = rk.read(story, model=model, room=32)
    with pytest.raises(ShapeError, match=r"question is \d+ tokens; this context keeps 32 .*: "
                                         r"shorten the question or read .*room="):
        ctx.ask("Why? " * 40)
    with pytest.raises(ShapeError, match="fewer new tokens"):
        ctx.ask("Why?", max_new_tokens=64)
    with pytest.raises(ConfigError, match=r"question is [\d,]+ tokens: .* fills the whole 4,096-"
                                          r"token context .*shorten the question"):
        rk.ask(story, "Why? " * 2100, model=model)


def test_cli_errors_advise_flags(smollm2, tmp_path, monkeypatch, capsys):
    """Under ``ringkit``, an error's advice names the command's flags, never Python arguments or
    calls; each flag it names exists."""
    import ringkit.budget
    from ringkit import cli, context

    monkeypatch.setattr(context, "default_model", lambda mesh=None, dtype=None: smollm2)
    (tmp_path / "note.txt").write_text(STORY * 3)
    (tmp_path / "long.txt").write_text("word " * 9000)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "app.py").write_text("print('hi')\n")
    (repo / ".env").write_text("TOKEN=abc\n")
    note, q = str(tmp_path / "note.txt"), "What did the Gannet carry?"
    python = re.compile(r"\b[a-z_]+=[\w'\"(\[{]|ringkit\.\w|rk\.\w|\w\(\.\.\.")
    flags = set(re.findall(r"--[a-z-]+", cli._parser().format_help()))
    for sub in ("ask", "info", "needle", "ruler"):
        flags |= set(re.findall(r"--[a-z-]+", cli._parser()._subparsers._group_actions[0]
                                .choices[sub].format_help()))

    def error(argv, expect):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ringkit: error:") and err.count("\n") == 1, err
        assert expect in err, err
        assert not python.search(err), err
        assert set(re.findall(r"--[a-z-]+", err)) <= flags, err

    error(["ask", str(tmp_path / "long.txt"), q], "--rope-scaling yarn:2")
    error(["ask", note, q, "--max-new-tokens", "100000"], "--max-new-tokens N")
    error(["ask", note, q, "--fps", "0"], "--fps 0.0 must be")
    error(["ask", note, q, "--fit", "outline"], "--fit outline reads")
    error(["needle", "--lengths", "64", "--needles", "2", "--no-keys"], "leave out --no-keys")
    error(["needle", "--lengths", "100000"], "--rope-scaling yarn:FACTOR")
    error(["ruler", "--tasks", "qa_1", "--lengths", "512"], "--squad path/to/")
    error(["needle", "--lengths", "64", "--out", str(tmp_path)], "--out ")
    monkeypatch.setattr(ringkit.budget, "host_available", lambda: 10_000_000)
    error(["ask", note, q], "--mesh 1,1,1,N")
    monkeypatch.undo()
    monkeypatch.setattr(context, "default_model", lambda mesh=None, dtype=None: smollm2)
    assert cli.main(["info", str(repo)]) == 0
    out = capsys.readouterr().out
    assert ".env: may hold secrets: named like a credentials file (--include-secrets reads it)" \
        in out
    assert cli.main(["info", str(repo), "--include-secrets"]) == 0
    assert ".env" not in capsys.readouterr().out.split("skipped", 1)[-1]
    # The same errors in Python name the arguments.
    with pytest.raises(ShapeError, match=r"rope_scaling=ringkit\.model\.RopeScaling"):
        rk.read(tmp_path / "long.txt", model=smollm2)
    # A mesh string that starts with '-' is a value, not a flag.
    assert cli.main(["info", note, "--mesh", "-1,1,1,1"]) == 0
