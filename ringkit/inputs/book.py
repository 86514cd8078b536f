"""Books and other text files: .txt, .md, .html, .epub, decoded faithfully.

Encodings: a byte-order mark decides; else strict UTF-8; else ``charset_normalizer`` names the
encoding, and text it cannot vouch for is refused with a message rather than decoded into
mojibake. HTML (and EPUB's XHTML chapters) keep their text and paragraph breaks and drop scripts,
styles and markup. An EPUB becomes one segment per spine document, in reading order, titled by
its first heading.
"""

from __future__ import annotations

import codecs
import html.parser
import pathlib
import posixpath
import unicodedata
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile

from ringkit.errors import FormatError, SourceError
from ringkit.inputs.document import Document, TextSegment

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
BOOK_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + (".epub",)

_PREFERRED = ("cp1252", "latin_1", "iso8859_15", "mac_roman", "cp1251", "koi8_r", "shift_jis",
              "euc_jp", "gb18030", "big5", "euc_kr", "cp1250", "iso8859_2")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def looks_binary(data: bytes) -> bool:
    """NUL bytes anywhere (and neither a UTF-16/32 byte-order mark nor the pattern of UTF-16
    without one): not text. ``in`` is a memchr: the whole file costs little."""
    if b"\x00" not in data or any(data.startswith(bom) for bom, _ in _BOMS):
        return False
    return _utf16_without_bom(data) is None


def _utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text written without a byte-order mark, or None.

    Either byte order is tried. A decoding counts only if it holds a line break or a space and
    every character is assigned, not a control (bar tab, newline, carriage return, form feed)
    and not private: binary data and the
    wrong byte order fail this within a few characters (a newline read backwards is the
    unassigned U+0A00). Were both to pass, the one drawing on fewer 256-character blocks wins
    (Russian in UTF-16-LE: blocks 0x00 and 0x04; read as BE, dozens).
    """
    if len(data) % 2 or len(data) < 4:
        return None
    found = []
    for encoding in ("utf-16-le", "utf-16-be"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        chars = set(text)
        # A line break or space is NUL-aligned only in real UTF-16: UTF-8 text with a stray
        # NUL also decodes "cleanly", into CJK ideographs.
        if ("\n" in chars or " " in chars) and all(_is_text(c) for c in chars):
            found.append((len({ord(c) >> 8 for c in chars}), text))
    return min(found, key=lambda f: f[0])[1] if found else None


def _is_text(char: str) -> bool:
    if char in "\t\n\r\f":
        return True
    return unicodedata.category(char) not in ("Cc", "Cn", "Co", "Cs")


def decode_text(data: bytes, name: str) -> str:
    """Bytes of a text file -> str, or a ``SourceError`` saying why it cannot be read faithfully."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as e:
                label = encoding.removesuffix("-sig").upper()
                raise SourceError(
                    f"{name} starts with a {label} byte-order mark but is not valid {label} at "
                    f"byte {e.start} (cut short or corrupt?); re-save it as UTF-8") from None
    if b"\x00" in data:  # no byte-order mark here: UTF-16 without one, or binary
        text = _utf16_without_bom(data)
        if text is None:
            raise SourceError(f"{name} is binary, not text")
        return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    matches = list(charset_normalizer.from_bytes(data))
    if not matches or min(m.chaos for m in matches) > 0.2:
        raise SourceError(
            f"{name} is not UTF-8 and its encoding could not be told with confidence; re-save it "
            "as UTF-8 (e.g. iconv -f <encoding> -t utf-8)")
    # Legacy encodings often decode the same bytes equally cleanly (cp1252's "é" is cp1251's
    # "й"), and charset_normalizer lists one of each family of equal decodings, not always the
    # common one: among the encodings that decode as cleanly as the best, the most widespread
    # wins, each asked for by name.
    floor = min(m.chaos for m in matches)
    for encoding in _PREFERRED:
        match = charset_normalizer.from_bytes(data, cp_isolation=[encoding]).best()
        if match is not None and match.chaos <= floor + 0.01:
            return str(match)
    near = [m for m in matches if m.chaos <= floor + 0.01]
    return str(near[0])


class _TextExtractor(html.parser.HTMLParser):
    """Visible text of an HTML document, blocks separated by blank lines."""

    _SKIP = {"script", "style", "head", "noscript", "template", "svg"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
              "article", "blockquote", "pre", "hr", "table", "ul", "ol", "dd", "dt", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.headings: list[str] = []
        self._skip = 0
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        if tag in ("h1", "h2", "h3") and self._heading is None:
            self._heading = []

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n\n")
        if tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(" ".join("".join(self._heading).split()))
            self._heading = None

    def handle_data(self, data):
        if self._skip:
            return
        self.parts.append(data)
        if self._heading is not None:
            self._heading.append(data)


def html_to_text(markup: str) -> tuple[str, str | None]:
    """``(text, first heading or None)`` of an HTML document."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    blocks = ("".join(parser.parts)).split("\n\n")
    paragraphs = [" ".join(b.split()) for b in blocks]
    text = "\n\n".join(p for p in paragraphs if p)
    return text, (parser.headings[0] if parser.headings else None)


def _segment(text: str, source: str, title=None) -> TextSegment:
    return TextSegment(text=text, source=source, span=(1, text.count("\n") + 1), title=title)


def read_book(path: pathlib.Path, name: str | None = None) -> Document:
    """One text, Markdown, HTML or EPUB file as a ``Document``."""
    name = name or str(path)
    suffix = path.suffix.lower()
    if suffix == ".epub":
        return read_epub(path, name)
    data = path.read_bytes()
    text = decode_text(data, name)
    title = None
    if suffix in HTML_SUFFIXES:
        text, title = html_to_text(text)
    if not text.strip():
        raise SourceError(f"{name} holds no text")
    return Document(segments=[_segment(text, name, title)])


def _xml(zf: zipfile.ZipFile, member: str, name: str) -> ET.Element:
    try:
        return ET.fromstring(zf.read(member))
    except KeyError:
        raise FormatError(f"{name} is not a valid EPUB: {member} is missing") from None
    except ET.ParseError as e:
        raise FormatError(f"{name} is not a valid EPUB: {member} is not well-formed XML ({e})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_epub(path: pathlib.Path, name: str) -> Document:
    """An EPUB's spine documents in reading order, one titled segment each."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FormatError(f"{name} is not a valid EPUB (not a readable zip archive: {e})") from None
    with zf:
        container = _xml(zf, "META-INF/container.xml", name)
        rootfile = next((el.get("full-path") for el in container.iter()
                         if _local(el.tag) == "rootfile" and el.get("full-path")), None)
        if rootfile is None:
            raise FormatError(f"{name} is not a valid EPUB: container.xml names no package file")
        opf = _xml(zf, rootfile, name)
        base = posixpath.dirname(rootfile)
        manifest = {el.get("id"): el.get("href") for el in opf.iter() if _local(el.tag) == "item"}
        spine = [el.get("idref") for el in opf.iter() if _local(el.tag) == "itemref"]
        segments = []
        for idref in spine:
            href = manifest.get(idref)
            if href is None:
                raise FormatError(f"{name} is not a valid EPUB: spine item {idref!r} has no "
                                  "manifest entry")
            path = urllib.parse.unquote(href.split("#")[0])  # hrefs are URLs: "chapter%201.xhtml"
            member = posixpath.normpath(posixpath.join(base, path)) if base else path
            try:
                raw = zf.read(member)
            except KeyError:
                raise FormatError(f"{name} is not a valid EPUB: {member} is missing") from None
            except zipfile.BadZipFile as e:
                raise FormatError(f"{name} is corrupt: {member} cannot be read ({e})") from None
            text, title = html_to_text(decode_text(raw, f"{name}:{member}"))
            if text.strip():
                segments.append(_segment(text, f"{name}#{href}", title))
    if not segments:
        raise SourceError(f"{name} holds no text")
    return Document(segments=segments)

