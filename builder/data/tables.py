"""Spreadsheet-shaped FAQ files: CSV, TSV and XLSX in any of the encodings Korean shops save
them in, the header mapped to the Alpaca columns; and the rows every format turns into.

    table = read_table(path, path.read_bytes(), path.name)   # -> FaqTable of Rows

CSV/TSV/XLSX in UTF-8, UTF-8 with BOM, UTF-16 (Excel's "Unicode text") or CP949/EUC-KR; the
header is mapped to instruction / input / output through `COLUMN_ALIASES`."""

import csv
import io
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import UserError

# Accepted header names for each Alpaca column, compared after NFC, trimming and lower-casing.
# Alpaca instruction/input/output; question/answer; 질문/답변; Dolly instruction/context/response;
# prompt/completion.
COLUMN_ALIASES = {
    "instruction": ("instruction", "question", "질문", "prompt"),
    "input": ("input", "context", "맥락", "입력"),
    "output": ("output", "answer", "답변", "response", "completion"),
}
ACCEPTED_HEADERS = (
    "instruction,input,output | question,answer | 질문,답변 | "
    "instruction,context,response | prompt,completion"
)


def place(file: str, unit: str, number: int, pair: int = 0) -> str:
    """"line 14", "record 3 pair 2", "sub/a.json record 3": where a row or record is."""
    where = f"{unit} {number}" + (f" pair {pair}" if pair else "")
    return f"{file} {where}" if file else where


@dataclass
class Row:
    line: int  # line in the source file where the record starts (header is line 1), or the
    # record number in a JSON list (see `unit`)
    instruction: str
    input: str
    output: str
    file: str = ""  # the file inside a FAQ folder; "" when the input is one file
    unit: str = "line"  # what `line` counts: "line" (CSV/TSV/XLSX/JSONL) or "record" (JSON)
    pair: int = 0  # which question/answer pair of a conversation record; 0 = not a conversation

    def where(self) -> str:
        return place(self.file, self.unit, self.line, self.pair)

    def plain(self) -> bool:
        """True when `line` alone says where the row is (one table file)."""
        return not self.file and self.unit == "line" and not self.pair


@dataclass
class FaqTable:
    """A FAQ file read into rows, plus what was learned while reading it."""

    path: Path
    encoding: str
    delimiter: str
    columns_found: list[str]
    column_map: dict[str, str]  # Alpaca column -> header in the file
    extra_columns: list[str]
    rows: list[Row] = field(default_factory=list)
    blank_lines: list[int] = field(default_factory=list)
    # Only for JSON, JSONL and folders ("" for a table file):
    format: str = ""  # "alpaca", "dolly", "sharegpt" or "folder"
    left_out: list[dict] = field(default_factory=list)  # records that gave no row: where, reason
    categories: dict[str, int] = field(default_factory=dict)  # Dolly category -> rows
    conversations: dict = field(default_factory=dict)  # records, pairs, contexts cut
    files: list[dict] = field(default_factory=list)  # a folder's files: file, format, rows
    files_skipped: list[str] = field(default_factory=list)  # a folder's other files


# what a spreadsheet runs as a formula when a cell starts with it (CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def excel_safe(value):
    """A cell Excel shows as text: a leading ' before = + - @ (the sign that it is text; Excel
    drops it when it saves the file again, `clean_cell` when it reads one of ours)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def clean_cell(value) -> str:
    """NFC (macOS sends decomposed Hangul), unified newlines, trimmed; the ' that `excel_safe`
    put before a formula sign is taken off again."""
    if value is None:
        return ""
    text = str(value)
    if text == "nan":  # pandas' empty cell in xlsx
        return ""
    if text.startswith("'") and text[1:].startswith(FORMULA_START):
        text = text[1:]
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return text.strip()


def decode(raw: bytes, name: str) -> tuple[str, str]:
    """Bytes -> (text, encoding name), trying what Korean users actually save."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    if b"\x00" in raw[:4096]:
        raise UserError(
            f"{name}: this is not a text table (it contains binary data). "
            "Save the FAQ as CSV (UTF-8) or XLSX and try again."
        )
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8"), "utf-8-sig"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        # cp949 is a superset of EUC-KR: what Korean Excel saves as "CSV"
        return raw.decode("cp949"), "cp949"
    except UnicodeDecodeError:
        raise UserError(
            f"{name}: the text is neither UTF-8 nor CP949/EUC-KR, so it cannot be read. "
            "Save it again as 'CSV UTF-8' and try again."
        ) from None


def guess_delimiter(text: str, suffix: str) -> str:
    if suffix == ".tsv":
        return "\t"
    first_line = text.split("\n", 1)[0]
    counts = {d: first_line.count(d) for d in (",", "\t", ";")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def map_columns(headers: list[str], name: str, fix: str = "") -> tuple[dict[str, int], list[str]]:
    """Header cells -> {alpaca column: index}, extra headers. Raises on missing columns."""
    normalized = [clean_cell(h).lower() for h in headers]
    mapping: dict[str, int] = {}
    for column, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in normalized:
                mapping[column] = normalized.index(alias)
                break
    missing = [c for c in ("instruction", "output") if c not in mapping]
    if missing:
        found = ", ".join(repr(clean_cell(h)) for h in headers if clean_cell(h)) or "none"
        role = {"instruction": "question", "output": "answer"}
        fix = fix or f"The first row must be a header; accepted headers: {ACCEPTED_HEADERS}."
        raise UserError(
            f"{name}: no {' and no '.join(role[m] for m in missing)} column. "
            f"Found columns: {found}. {fix}"
        )
    used = set(mapping.values())
    extra = [clean_cell(h) for i, h in enumerate(headers) if i not in used and clean_cell(h)]
    return mapping, extra


def read_records(path: Path, raw: bytes, name: str) -> tuple[list[tuple[int, list]], str, str]:
    """Raw file -> [(start line, cells)], encoding, delimiter. The header is the first record."""
    if raw.startswith(b"PK\x03\x04"):  # a zip: xlsx, whatever the file is called
        return read_xlsx(path, name), "xlsx", "xlsx"
    text, encoding = decode(raw, name)
    if not text.strip():
        raise UserError(
            f"{name} is empty. Expected a table whose first row is a header: {ACCEPTED_HEADERS}."
        )
    delimiter = guess_delimiter(text, path.suffix.lower())
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records, end_line = [], 0
    try:
        for cells in reader:
            records.append((end_line + 1, cells))
            end_line = reader.line_num
    except csv.Error as err:
        raise UserError(
            f"{name} line {end_line + 1}: the CSV cannot be parsed ({err}). "
            "Check the quotes on that line."
        ) from None
    return records, encoding, delimiter


def read_xlsx(path: Path, name: str, max_unzipped_mb: float = 100) -> list[tuple[int, list]]:
    import zipfile

    import pandas as pd

    # A small xlsx can unpack to gigabytes (a zip bomb): check the sizes its members declare
    # before openpyxl unpacks them (zipfile never inflates a member past its declared size).
    try:
        with zipfile.ZipFile(path) as archive:
            unzipped_mb = sum(member.file_size for member in archive.infolist()) / 2**20
    except zipfile.BadZipFile:
        unzipped_mb = 0.0  # broken: pandas below says so
    if unzipped_mb > max_unzipped_mb:
        raise UserError(
            f"{name}: 압축을 풀면 너무 큽니다 ({unzipped_mb:.0f} MB > {max_unzipped_mb:g} MB) "
            f"/ this Excel file unpacks to {unzipped_mb:.0f} MB, over the {max_unzipped_mb:g} MB "
            "limit: save the FAQ sheet alone as .xlsx or CSV UTF-8."
        )
    try:
        frame = pd.read_excel(path, header=None, dtype=str, keep_default_na=False)
    except Exception as err:  # openpyxl raises many kinds for a broken file
        raise UserError(
            f"{name}: this looks like an Excel file but it cannot be read ({err}). "
            "Open it in Excel and save it again as .xlsx or CSV UTF-8."
        ) from None
    return [(i + 1, list(row)) for i, row in enumerate(frame.itertuples(index=False))]


def read_table(path: Path, raw: bytes, name: str) -> FaqTable:
    """A CSV/TSV/XLSX file whose first row is a header."""
    records, encoding, delimiter = read_records(path, raw, name)
    records = [(line, cells) for line, cells in records if any(clean_cell(c) for c in cells)]
    if not records:
        raise UserError(f"{name} is empty. Expected a header row: {ACCEPTED_HEADERS}.")
    header_line, headers = records[0]
    mapping, extra = map_columns(headers, name)
    table = FaqTable(
        path=path,
        encoding=encoding,
        delimiter={",": "comma", "\t": "tab", ";": "semicolon"}.get(delimiter, delimiter),
        columns_found=[clean_cell(h) for h in headers],
        column_map={c: clean_cell(headers[i]) for c, i in mapping.items()},
        extra_columns=extra,
    )
    for line, cells in records[1:]:

        def cell(column: str) -> str:
            i = mapping.get(column)
            return clean_cell(cells[i]) if i is not None and i < len(cells) else ""

        table.rows.append(Row(line, cell("instruction"), cell("input"), cell("output")))
    if not table.rows:
        raise UserError(
            f"{name} has a header (line {header_line}) but no data rows. "
            "Add one question and answer per row under the header."
        )
    return table
