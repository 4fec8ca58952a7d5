"""A shop's own documents -> chunks of text that each fit one request.

    from builder.data.docs import read_chunks
    chunks = read_chunks(["data/docs"], chunk_tokens=400)   # .txt .md .html .pdf .docx

Each document becomes blocks (headings and paragraphs): Markdown `#` headings, HTML `h1`-`h6`
(script, style, navigation and hidden elements left out, a table row is one paragraph), PDF
pages through pypdf (a short line starting with ■, [, 1. and the like counts as a heading;
text drawn so that no reader sees it is left out, `builder.data.pdftext`), .docx paragraphs
with their Heading styles. Blocks are packed into chunks of at most `chunk_tokens` estimated tokens
(data.py's 0.6 tokens per character), a chunk starting at a heading where it can, and each
chunk carries its headings so that the text reads alone. `builder.data.faqgen` asks for question and
answer pairs chunk by chunk.
"""

import hashlib
import re
import unicodedata
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

from builder.data.formats import leads_outside
from builder.data.lengths import TOKENS_PER_CHAR_ESTIMATE
from builder.errors import UserError

DOCX_MAX_XML_MB = 50  # a Word document's text (word/document.xml), unpacked
DOCX_MAX_RATIO = 100  # unpacked / packed: text compresses ~5-20 times, a zip bomb ~1000 times
DOC_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx")
# a short line that opens with a mark like these reads as a heading in plain text and PDFs
HEADING_LINE = re.compile(r"^\s*(?:[■□▶▷●◆◇※]|\[[^\]]{1,20}\]|【|\d{1,2}[.)]\s|제\s?\d+\s?조)")
MAX_HEADING_CHARS = 40


@dataclass
class Chunk:
    source: str  # "shipping_refund_policy.md#2": file and chunk number, what the CSV's source says
    heading: str  # the headings it sits under, "배송·교환·환불 안내 > 배송"
    text: str  # what the model reads: the headings' lines, then the paragraphs

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def tokens(self) -> int:
        return round(len(self.text) * TOKENS_PER_CHAR_ESTIMATE)


# ---------------------------------------------------------------------------------------------
# Documents -> blocks: (heading level, text), level 0 for a paragraph


def decode_text(raw: bytes, name: str) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    for encoding in ("utf-8-sig", "cp949"):  # cp949: what Korean Windows saves
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            pass
    raise UserError(f"{name}: the text is neither UTF-8 nor CP949/EUC-KR; save it as UTF-8 "
                    "and try again")


def text_blocks(text: str) -> list[tuple[int, str]]:
    """Plain text (and PDF pages): blank lines end paragraphs; a short marked line is a heading."""
    blocks: list[tuple[int, str]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines: list[str] = []
        for line in paragraph.splitlines():
            line = line.strip()
            if HEADING_LINE.match(line) and len(line) <= MAX_HEADING_CHARS:
                if lines:
                    blocks.append((0, "\n".join(lines)))
                    lines = []
                blocks.append((2, line))
            elif line:
                lines.append(line)
        if lines:
            blocks.append((0, "\n".join(lines)))
    return blocks


MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def markdown_blocks(text: str) -> list[tuple[int, str]]:
    blocks: list[tuple[int, str]] = []
    lines: list[str] = []

    def flush():
        if lines:
            blocks.append((0, "\n".join(lines)))
            lines.clear()

    for line in text.splitlines():
        heading = MD_HEADING.match(line)
        if heading:
            flush()
            blocks.append((len(heading[1]), MD_LINK.sub(r"\1", heading[2])))
        elif not line.strip():
            flush()
        else:
            lines.append(MD_LINK.sub(r"\1", line.strip()).replace("**", "").replace("__", ""))
    flush()
    return blocks


# elements without an end tag: hiding one hides no text
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
ZERO = re.compile(r"(?:0+(?:\.0*)?|\.0+)(?:px|pt|em|rem|%)?")


def hides(attrs: list[tuple[str, str | None]]) -> bool:
    """Whether an element's own attributes hide it from a reader: a page can carry words for
    the model (instructions, a phone number) that no customer ever sees. Classes that a style
    sheet hides cannot be told without the style sheet."""
    found = {name: (value or "").strip().lower() for name, value in attrs}
    if "hidden" in found or found.get("aria-hidden") == "true":
        return True
    style = {}
    for declaration in found.get("style", "").split(";"):
        name, _, value = declaration.partition(":")
        style[name.strip()] = value.replace("!important", "").strip()
    return (style.get("display") == "none" or style.get("visibility") in ("hidden", "collapse")
            or any(ZERO.fullmatch(style.get(name, "-")) for name in ("font-size", "opacity")))


class HtmlBlocks(HTMLParser):
    """Headings and paragraphs of a page; scripts, styles, navigation and hidden elements are
    not content."""

    SKIP = {"script", "style", "noscript", "template", "svg", "nav", "head"}
    BLOCK = {"p", "div", "li", "dd", "dt", "tr", "br", "section", "article", "main", "footer",
             "header", "blockquote", "pre", "table", "ul", "ol", "dl", "figcaption", "caption"}

    def __init__(self):
        super().__init__()
        self.blocks: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.skipping = 0
        self.level = 0
        self.hidden: list | None = None  # [tag, depth] of the hidden element being passed over

    def flush(self):
        text = " ".join("".join(self.parts).split()).strip(" |")
        if text:
            self.blocks.append((self.level, text))
        self.parts, self.level = [], 0

    def handle_starttag(self, tag, attrs):
        if self.hidden:  # inside a hidden element only its own tag's nesting counts
            self.hidden[1] += tag == self.hidden[0]
        elif tag not in VOID and hides(attrs):
            self.hidden = [tag, 1]
        elif tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.flush()
            self.level = int(tag[1])
        elif tag in self.BLOCK:
            self.flush()
        elif tag in ("td", "th") and self.parts:
            self.parts.append(" | ")

    def handle_endtag(self, tag):
        if self.hidden:
            self.hidden[1] -= tag == self.hidden[0]
            self.hidden = self.hidden if self.hidden[1] else None
        elif tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) or tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skipping and not self.hidden:
            self.parts.append(data)


def html_blocks(text: str) -> list[tuple[int, str]]:
    parser = HtmlBlocks()
    parser.feed(text)
    parser.close()
    parser.flush()
    return parser.blocks


def pdf_blocks(path: Path, name: str) -> list[tuple[int, str]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    from builder.data.pdftext import visible_text

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise UserError(f"{name}: the PDF is password-protected; save an unprotected copy")
        pages = [visible_text(page, reader) for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as error:
        raise UserError(f"{name}: not a readable PDF ({type(error).__name__}); open it and save "
                        "it again as PDF, or save the text as .txt") from None
    return [block for page in pages for block in text_blocks(page)]


WORD = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def docx_blocks(path: Path, name: str) -> list[tuple[int, str]]:
    """Word paragraphs; a Heading 1-6 (or 제목 1-6) style makes a heading."""
    try:
        with zipfile.ZipFile(path) as archive:
            # a small .docx can unpack to gigabytes (a zip bomb): the size its text declares is
            # checked first (zipfile never inflates a member past its declared size)
            member = archive.getinfo("word/document.xml")
            ratio = member.file_size / max(member.compress_size, 1)
            if member.file_size > DOCX_MAX_XML_MB * 2**20 or (
                    ratio > DOCX_MAX_RATIO and member.file_size > 2**20):
                raise UserError(
                    f"{name}: its text unpacks to {member.file_size / 2**20:.0f} MB "
                    f"({ratio:.0f} times its packed size), over the {DOCX_MAX_XML_MB} MB limit "
                    "or a zip bomb: save the document as .txt or .pdf, or split it")
            root = ElementTree.fromstring(archive.read(member))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError):
        raise UserError(f"{name}: not a readable .docx; save it again from Word, or as .txt"
                        ) from None
    blocks = []
    for paragraph in root.iter(f"{WORD}p"):
        text = "".join(t.text or "" for t in paragraph.iter(f"{WORD}t")).strip()
        style = paragraph.find(f"{WORD}pPr/{WORD}pStyle")
        value = style.get(f"{WORD}val", "") if style is not None else ""
        level = re.fullmatch(r"(?:Heading|heading|제목)\s?([1-6])", value)
        if text:
            blocks.append((int(level[1]) if level else 0, text))
    return blocks


def read_blocks(path: Path, name: str) -> list[tuple[int, str]]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        blocks = pdf_blocks(path, name)
    elif suffix == ".docx":
        blocks = docx_blocks(path, name)
    else:
        text = decode_text(path.read_bytes(), name)
        read = {".md": markdown_blocks, ".markdown": markdown_blocks, ".html": html_blocks,
                ".htm": html_blocks}.get(suffix, text_blocks)
        blocks = read(text)
    return [(level, unicodedata.normalize("NFC", text)) for level, text in blocks]


# ---------------------------------------------------------------------------------------------
# Blocks -> chunks


def split_long(text: str, max_chars: int) -> list[str]:
    """A paragraph over the budget, cut after sentences (a sentence over it, every max_chars)."""
    if len(text) <= max_chars:
        return [text]
    pieces, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text):
        while len(sentence) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def chunk_blocks(blocks: list[tuple[int, str]], name: str, chunk_tokens: int) -> list[Chunk]:
    max_chars = max(1, int(chunk_tokens / TOKENS_PER_CHAR_ESTIMATE))
    sections: list[tuple[list[str], list[str]]] = []  # (heading path, paragraphs)
    path: list[tuple[int, str]] = []
    for level, text in blocks:
        if level:
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, text))
            sections.append(([h for _, h in path], []))
        else:
            if not sections:
                sections.append(([], []))
            sections[-1][1].append(text)

    # Pack: a section joins the chunk before it while both fit; a long one is cut by paragraph
    chunks: list[tuple[str, list[str]]] = []  # (heading, lines)
    for headings, paragraphs in sections:
        if not paragraphs:
            continue
        title = " > ".join(headings)
        lines = [title] if title else []
        room = max(max_chars // 2, max_chars - len(title) - 1)  # the heading line goes first
        for paragraph in (piece for p in paragraphs for piece in split_long(p, room)):
            if len("\n".join(lines + [paragraph])) > max_chars and len(lines) > bool(title):
                chunks.append((title, lines))
                lines = [title] if title else []
            lines.append(paragraph)
        last = chunks[-1][1] if chunks else None
        if last is not None and len("\n".join(last + lines)) <= max_chars:
            last.extend(lines)
        else:
            chunks.append((title, lines))
    return [Chunk(source=f"{name}#{i}", heading=heading, text="\n".join(lines))
            for i, (heading, lines) in enumerate(chunks, start=1)]


def document_files(paths: list[str | Path]) -> tuple[list[tuple[Path, str]], list[str]]:
    """(file, name shown) for every document given: files as named, folders read recursively
    (hidden files and folders skipped); and the names of links in a folder that lead outside
    it, skipped (only what is in the folder goes to the endpoint)."""
    found, outside = [], []
    for given in map(Path, paths):
        if given.is_dir():
            root = given.resolve()
            for path in sorted(given.rglob("*")):
                relative = path.relative_to(given)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if leads_outside(path, root):
                    outside.append(f"{given.name}/{relative.as_posix()}")
                elif path.is_file() and path.suffix.lower() in DOC_SUFFIXES:
                    found.append((path, f"{given.name}/{relative.as_posix()}"))
        elif given.is_file():
            if given.suffix.lower() not in DOC_SUFFIXES:
                raise UserError(f"{given}: cannot read {given.suffix or 'this'} files; give "
                                f"{', '.join(DOC_SUFFIXES)} (save other formats as PDF or .txt)")
            found.append((given, given.name))
        else:
            raise UserError(f"{given}: no such file or folder")
    if not found:
        links = f" (links that lead outside the folder are not read: {', '.join(outside)})" \
            if outside else ""
        raise UserError(f"no documents in {', '.join(map(str, paths))}{links}: give "
                        f"{', '.join(DOC_SUFFIXES)} files or a folder holding them")
    return found, outside


def read_chunks(paths: list[str | Path], chunk_tokens: int = 400) -> tuple[list[Chunk], list[str]]:
    """-> (chunks of every document in order, "NAME: why" for each document without text and
    each link skipped)."""
    if chunk_tokens < 50:
        raise UserError(f"--chunk-tokens {chunk_tokens}: give at least 50 (a few sentences)")
    files, outside = document_files(paths)
    chunks, empty = [], [f"{name}: a link that leads outside the folder, not read"
                         for name in outside]
    for path, name in files:
        found = chunk_blocks(read_blocks(path, name), name, chunk_tokens)
        if not found:
            why = "a scanned PDF needs OCR first" if path.suffix.lower() == ".pdf" else "empty"
            empty.append(f"{name}: no text ({why})")
        chunks += found
    return chunks, empty
