"""A PDF page's text as a reader sees it: pypdf's extraction, less the text no reader sees.

    reader = PdfReader(path)
    pages = [visible_text(page, reader) for page in reader.pages]

A document can carry words for the model that writes FAQ rows from it (instructions, a phone
number) in text drawn invisibly (render mode 3, or 7: clip only), at font size 0, or in white.
Before pypdf extracts a page's text, the text-showing operators drawn that way are emptied in
its content stream, in memory, and in the forms (Form XObjects) the page draws. White text on a
coloured box is left out as well: telling it from white on white would need the page rendered.
"""

from dataclasses import dataclass, replace

from pypdf.generic import (
    ArrayObject,
    ByteStringObject,
    ContentStream,
    DictionaryObject,
    NameObject,
    StreamObject,
)

SHOWS = (b"Tj", b"TJ", b"'", b'"')
FILL_COLOURS = (b"g", b"rg", b"k", b"sc", b"scn")
STROKE_COLOURS = (b"G", b"RG", b"K", b"SC", b"SCN")
STREAM_KEYS = ("/Length", "/Filter", "/DecodeParms")  # describe the old bytes, not the new


@dataclass
class Ink:
    """The part of the graphics state that decides whether text shows."""

    mode: int = 0  # text render mode (Tr): 0 fill, 1 stroke, 2 both, 3 invisible, +4 clip
    size: float = 1.0  # font size (Tf)
    fill_white: bool = False
    stroke_white: bool = False

    def hidden(self) -> bool:
        if self.mode in (3, 7) or self.size == 0:
            return True
        fills, strokes = self.mode in (0, 2, 4, 6), self.mode in (1, 2, 5, 6)
        return (self.fill_white or not fills) and (self.stroke_white or not strokes)


def white(operands: list) -> bool:
    """A colour operator's operands are white: gray 1, RGB 1 1 1, CMYK 0 0 0 0."""
    if not operands or not all(isinstance(x, (int, float)) for x in operands):
        return False  # a pattern's name: not a plain colour
    if len(operands) == 4:
        return all(x == 0 for x in operands)
    return len(operands) in (1, 3) and all(x == 1 for x in operands)


def follow(ink: Ink, operator: bytes, operands: list) -> None:
    try:
        if operator == b"Tr":
            ink.mode = int(operands[0])
        elif operator == b"Tf":
            ink.size = float(operands[1])
        elif operator in FILL_COLOURS or operator == b"cs":  # cs sets black until a colour
            ink.fill_white = white(operands) if operator != b"cs" else False
        elif operator in STROKE_COLOURS or operator == b"CS":
            ink.stroke_white = white(operands) if operator != b"CS" else False
    except (IndexError, TypeError, ValueError):
        pass  # a malformed operator; pypdf passes over it too


def blank(operator: bytes, operands: list) -> None:
    """Empty what a text-showing operator shows; the operator stays, so positions do too."""
    if operator == b"TJ":
        operands[:] = [ArrayObject()]
    elif operands:
        operands[-1] = ByteStringObject(b"")


def blank_hidden(content: ContentStream, resources, ink: Ink, reader, done: set) -> ContentStream:
    """`content` with its hidden text emptied, following q/Q and the forms it draws."""
    saved: list[Ink] = []
    for operands, operator in content.operations:
        if operator == b"q":
            saved.append(replace(ink))
        elif operator == b"Q":
            ink = saved.pop() if saved else ink
        elif operator in SHOWS:
            if ink.hidden():
                blank(operator, operands)
        elif operator == b"Do" and operands:
            blank_form(resources, operands[0], replace(ink), reader, done)
        else:
            follow(ink, operator, operands)
    return content


def dictionary(value) -> DictionaryObject | None:
    """A PDF value resolved, if it is a dictionary (a stream is one too); None otherwise."""
    value = value.get_object() if value is not None else None
    return value if isinstance(value, DictionaryObject) else None


def blank_form(resources, name, ink: Ink, reader, done: set) -> None:
    """A form drawn with `ink` in effect, its hidden text emptied in place (once per form)."""
    forms = dictionary((dictionary(resources) or {}).get("/XObject"))
    form = dictionary(forms.get(name)) if forms is not None else None
    if not isinstance(form, StreamObject) or form.get("/Subtype") != "/Form" or id(form) in done:
        return
    done.add(id(form))
    content = ContentStream(form, reader, "bytes")  # codes kept for the font to decode
    content.update({NameObject(k): v for k, v in form.items() if k not in STREAM_KEYS})
    forms[NameObject(name)] = blank_hidden(content, form.get("/Resources", resources), ink,
                                           reader, done)


def visible_text(page, reader) -> str:
    """The page's text, less what is drawn invisibly, at size 0 or in white."""
    contents = page.get("/Contents")
    contents = contents.get_object() if contents is not None else None
    if isinstance(contents, (ArrayObject, StreamObject)):
        content = ContentStream(contents, reader, "bytes")  # as pypdf reads it
        page[NameObject("/Contents")] = blank_hidden(content, page.get("/Resources"), Ink(),
                                                     reader, set())
    return page.extract_text() or ""
