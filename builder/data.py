"""The data stage: a shop's FAQ file -> a validated, de-duplicated, split dataset folder.

    builder prepare data/sample_faq.csv --out runs/data

Reads CSV/TSV/XLSX in UTF-8, UTF-8 with BOM, UTF-16 (Excel's "Unicode text") or CP949/EUC-KR,
maps the header to Alpaca columns (instruction / input / output), cleans every cell (NFC,
trimmed), leaves out empty, duplicate and conflicting rows with their line numbers, and writes
`train.csv`, `test.csv`, `dataset/` (a DatasetDict) and `report.json` into the output folder,
which is either complete or absent.
"""

import csv
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import UserError

ALPACA_COLUMNS = ("instruction", "input", "output")

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

# Without the embedded tokenizer, lengths are estimated: gemma's tokenizer gives 0.60 tokens
# per Korean character, so 0.6 tokens/char is the documented estimate.
TOKENS_PER_CHAR_ESTIMATE = 0.6
MIN_ROWS_TO_SPLIT = 10


@dataclass
class Row:
    line: int  # line in the source file where the record starts (header is line 1)
    instruction: str
    input: str
    output: str


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


# ---------------------------------------------------------------------------------------------
# Reading


def clean_cell(value) -> str:
    """NFC (macOS sends decomposed Hangul), unified newlines, trimmed."""
    if value is None:
        return ""
    text = str(value)
    if text == "nan":  # pandas' empty cell in xlsx
        return ""
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


def map_columns(headers: list[str], name: str) -> tuple[dict[str, int], list[str]]:
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
        raise UserError(
            f"{name}: no {' and no '.join(role[m] for m in missing)} column. "
            f"Found columns: {found}. The first row must be a header; accepted headers: "
            f"{ACCEPTED_HEADERS}."
        )
    used = set(mapping.values())
    extra = [clean_cell(h) for i, h in enumerate(headers) if i not in used and clean_cell(h)]
    return mapping, extra


def read_records(path: Path, raw: bytes) -> tuple[list[tuple[int, list]], str, str]:
    """Raw file -> [(start line, cells)], encoding, delimiter. The header is the first record."""
    name = path.name
    if raw.startswith(b"PK\x03\x04"):  # a zip: xlsx, whatever the file is called
        return read_xlsx(path), "xlsx", "xlsx"
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


def read_xlsx(path: Path, max_unzipped_mb: float = 100) -> list[tuple[int, list]]:
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
            f"{path.name}: 압축을 풀면 너무 큽니다 ({unzipped_mb:.0f} MB > {max_unzipped_mb:g} MB) "
            f"/ this Excel file unpacks to {unzipped_mb:.0f} MB, over the {max_unzipped_mb:g} MB "
            "limit: save the FAQ sheet alone as .xlsx or CSV UTF-8."
        )
    try:
        frame = pd.read_excel(path, header=None, dtype=str, keep_default_na=False)
    except Exception as err:  # openpyxl raises many kinds for a broken file
        raise UserError(
            f"{path.name}: this looks like an Excel file but it cannot be read ({err}). "
            "Open it in Excel and save it again as .xlsx or CSV UTF-8."
        ) from None
    return [(i + 1, list(row)) for i, row in enumerate(frame.itertuples(index=False))]


def read_faq(path: str | Path) -> FaqTable:
    """Read a FAQ file into cleaned rows. Raises UserError for anything the user must fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file. Give the path of your FAQ CSV/TSV/XLSX file.")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(
            f"{path.name} is empty. Expected a table whose first row is a header: "
            f"{ACCEPTED_HEADERS}."
        )
    records, encoding, delimiter = read_records(path, raw)
    records = [(line, cells) for line, cells in records if any(clean_cell(c) for c in cells)]
    if not records:
        raise UserError(f"{path.name} is empty. Expected a header row: {ACCEPTED_HEADERS}.")
    header_line, headers = records[0]
    mapping, extra = map_columns(headers, path.name)
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
            f"{path.name} has a header (line {header_line}) but no data rows. "
            "Add one question and answer per row under the header."
        )
    return table


# ---------------------------------------------------------------------------------------------
# Checks


def duplicate_key(text: str) -> str:
    """Whitespace differences do not make a different question or answer."""
    return " ".join(text.split())


def check_rows(rows: list[Row]) -> tuple[list[Row], list[dict], list[dict]]:
    """-> kept rows, dropped [{line, reason, ...}], conflicts [{question, lines, answers}]."""
    dropped: list[dict] = []
    candidates: list[tuple[tuple, Row]] = []
    for row in rows:
        if not row.instruction and not row.output:
            dropped.append({"line": row.line, "reason": "empty question and answer"})
        elif not row.instruction:
            dropped.append({"line": row.line, "reason": "empty question"})
        elif not row.output:
            dropped.append({"line": row.line, "reason": "empty answer"})
        else:
            key = (duplicate_key(row.instruction), duplicate_key(row.input), duplicate_key(row.output))
            candidates.append((key, row))

    # Exact duplicates: keep the first, drop the rest.
    first_seen: dict[tuple, int] = {}
    unique: list[tuple[tuple, Row]] = []
    for key, row in candidates:
        if key in first_seen:
            dropped.append(
                {"line": row.line, "reason": "duplicate", "duplicate_of": first_seen[key]}
            )
        else:
            first_seen[key] = row.line
            unique.append((key, row))

    # Same question (and context), different answers: the bot cannot learn both; leave all out.
    by_question: dict[tuple, list[Row]] = {}
    for key, row in unique:
        by_question.setdefault(key[:2], []).append(row)
    conflicts = []
    for group in by_question.values():
        if len(group) == 1:
            continue
        conflicts.append(
            {
                "question": group[0].instruction,
                "lines": [r.line for r in group],
                "answers": [r.output for r in group],
            }
        )
        for r in group:
            dropped.append({"line": r.line, "reason": "conflict", "lines": [g.line for g in group]})
    conflicting = {line for c in conflicts for line in c["lines"]}
    kept = [r for _, r in unique if r.line not in conflicting]
    dropped.sort(key=lambda d: d["line"])
    return kept, dropped, conflicts


# Run as `python -c` in a child process: loads the embedded tokenizer (~3 s, holding the GIL)
# while the parent reads and checks the file, then counts tokens for the texts sent on stdin.
LENGTH_WORKER = """
import json, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
texts = json.loads(sys.stdin.buffer.read())
encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
sys.stdout.write(json.dumps([len(e.ids) for e in encodings]))
"""


def start_length_worker():
    """The token-counting child process, or None before the embedded model is converted."""
    from builder.embedded import cached_tokenizer_file

    tokenizer_file = cached_tokenizer_file()
    if tokenizer_file is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", LENGTH_WORKER, str(tokenizer_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )


def count_tokens(worker, texts: list[str]) -> list[int] | None:
    out, _ = worker.communicate(json.dumps(texts, ensure_ascii=False).encode("utf-8"))
    return json.loads(out) if worker.returncode == 0 else None


def row_texts(rows: list[Row]) -> list[str]:
    return ["\n".join(p for p in (r.instruction, r.input, r.output) if p) for r in rows]


def measure_lengths(rows: list[Row], max_length: int, tokens: list[int] | None = None):
    """Token lengths of each row (question + context + answer) -> stats, rows over max_length.
    Without token counts, lengths are estimated from characters."""
    if tokens is not None:
        unit = "tokens (embedded gemma-3 tokenizer)"
    else:
        tokens = [round(len(t) * TOKENS_PER_CHAR_ESTIMATE) for t in row_texts(rows)]
        unit = f"estimated tokens ({TOKENS_PER_CHAR_ESTIMATE} per character)"
    too_long = [
        {"line": r.line, "tokens": n} for r, n in zip(rows, tokens) if n > max_length
    ]

    def stats(values: list[int]) -> dict:
        if not values:
            return {}
        ordered = sorted(values)
        return {
            "min": ordered[0],
            "mean": round(statistics.fmean(ordered), 1),
            "median": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            "max": ordered[-1],
        }

    return {
        "unit": unit,
        "max_length": max_length,
        "row_tokens": stats(tokens),
        "question_chars": stats([len(r.instruction) for r in rows]),
        "answer_chars": stats([len(r.output) for r in rows]),
    }, too_long


# ---------------------------------------------------------------------------------------------
# Split and write


def split_rows(rows: list[Row], test_size: float, seed: int, name: str) -> tuple[list, list]:
    """Seeded split by question, so the same question never lands on both sides."""
    if not 0 < test_size < 1:
        raise UserError(f"--test-size must be between 0 and 1 (got {test_size}); 0.1 means 9:1.")
    n_test = round(len(rows) * test_size)
    if len(rows) < MIN_ROWS_TO_SPLIT or n_test < 1 or n_test >= len(rows):
        raise UserError(
            f"{name}: only {len(rows)} usable rows, too few to split into train and test "
            f"(test size {test_size}). Add rows until there are at least {MIN_ROWS_TO_SPLIT}."
        )
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(duplicate_key(row.instruction), []).append(row)
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    test, train = [], []
    for key in keys:
        (test if len(test) < n_test else train).extend(groups[key])
    return train, test


def write_csv(rows: list[Row], path: Path, *, with_line: bool = False) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ALPACA_COLUMNS + (("line",) if with_line else ()))
        writer.writerows((r.instruction, r.input, r.output) + ((r.line,) if with_line else ())
                         for r in rows)


def save_dataset(train: list[Row], test: list[Row], path: Path) -> None:
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    def to_dataset(rows: list[Row]):
        return Dataset.from_dict({c: [getattr(r, c) for r in rows] for c in ALPACA_COLUMNS})

    DatasetDict({"train": to_dataset(train), "test": to_dataset(test)}).save_to_disk(str(path))


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move a finished folder into place; the old one (if any) goes only after that worked."""
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        staging.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(out_dir)


def build_report(faq_file: Path, table: FaqTable, kept, dropped, conflicts, too_long, lengths,
                 train, test, test_size: float, seed: int) -> dict:
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    return {
        "source_file": faq_file.name,
        "source_sha256": hashlib.sha256(faq_file.read_bytes()).hexdigest(),
        "encoding": table.encoding,
        "delimiter": table.delimiter,
        "columns_found": table.columns_found,
        "column_map": table.column_map,
        "extra_columns_ignored": table.extra_columns,
        "rows_read": len(table.rows),
        "rows_kept": len(kept),
        "rows_dropped": len(dropped),
        "dropped_by_reason": reasons,
        "dropped": dropped,
        "duplicates": sum(1 for d in dropped if d["reason"] == "duplicate"),
        "conflicts": conflicts,
        "too_long": too_long,
        "lengths": lengths,
        "split": {"train": len(train), "test": len(test)},
        "test_size": test_size,
        "seed": seed,
    }


def read_checked(faq_file: str | Path) -> tuple[list[Row], dict]:
    """A FAQ file read and checked as `prepare` does, without splitting or writing:
    (kept rows in file order, {"dropped", "conflicts", "rows_read"})."""
    table = read_faq(faq_file)
    kept, dropped, conflicts = check_rows(table.rows)
    if not kept:
        raise UserError(f"{Path(faq_file).name}: no usable rows (every row was left out: "
                        f"{', '.join(sorted({d['reason'] for d in dropped}))})")
    return kept, {"dropped": dropped, "conflicts": conflicts, "rows_read": len(table.rows)}


def prepare(
    faq_file: str | Path,
    out_dir: str | Path,
    *,
    test_size: float = 0.1,
    seed: int = 42,
    max_length: int = 512,
) -> dict:
    """Validate, clean and split a FAQ file into `out_dir`. Returns the report."""
    faq_file, out_dir = Path(faq_file), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; choose another --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "report.json").exists():
        raise UserError(
            f"{out_dir} already exists and is not a prepared data folder; "
            "choose another --out (it would be overwritten)."
        )
    worker = start_length_worker()
    staging = None
    try:
        table = read_faq(faq_file)
        kept, dropped, conflicts = check_rows(table.rows)
        train, test = split_rows(kept, test_size, seed, faq_file.name)
        # the child counts tokens while this process writes the split
        counted: list = []
        counting = threading.Thread(target=lambda: counted.append(
            count_tokens(worker, row_texts(kept)) if worker is not None else None))
        counting.start()

        # Write everything into a staging folder beside out_dir, then move it into place.
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        write_csv(train, staging / "train.csv")
        write_csv(test, staging / "test.csv")
        write_csv(kept, staging / "faq.csv", with_line=True)  # the shop's knowledge, file order
        save_dataset(train, test, staging / "dataset")
        counting.join()
        lengths, too_long = measure_lengths(kept, max_length, counted[0])
        report = build_report(faq_file, table, kept, dropped, conflicts, too_long, lengths,
                              train, test, test_size, seed)
        (staging / "report.json").write_text(
            json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        os.chmod(staging, 0o755)
        replace_dir(staging, out_dir)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def summary(report: dict, out_dir: str | Path) -> str:
    """A short human summary of a prepare report (Korean and English)."""
    lines = [
        f"{report['source_file']}: {report['rows_read']} rows read "
        f"({report['encoding']}, {report['delimiter']}), {report['rows_kept']} kept "
        f"/ {report['rows_read']}행 중 {report['rows_kept']}행 사용",
    ]
    if report["extra_columns_ignored"]:
        lines.append(f"  ignored columns: {', '.join(report['extra_columns_ignored'])}")
    by_reason: dict[str, list[int]] = {}
    for d in report["dropped"]:
        by_reason.setdefault(d["reason"], []).append(d["line"])
    for reason, lines_ in by_reason.items():
        shown = ", ".join(map(str, lines_[:10])) + (" ..." if len(lines_) > 10 else "")
        lines.append(f"  left out, {reason}: {len(lines_)} (lines {shown})")
    for c in report["conflicts"][:5]:
        lines.append(f"  conflict: {c['question'][:40]!r} has different answers on lines "
                     f"{', '.join(map(str, c['lines']))}; fix one and keep the other")
    if report["too_long"]:
        shown = ", ".join(str(t["line"]) for t in report["too_long"][:10])
        lines.append(
            f"  longer than {report['lengths']['max_length']} {report['lengths']['unit']}: "
            f"{len(report['too_long'])} rows (lines {shown}); they will be cut in training"
        )
    stats = report["lengths"]["row_tokens"]
    lines.append(
        f"  length per row: median {stats['median']}, p95 {stats['p95']}, max {stats['max']} "
        f"{report['lengths']['unit']}"
    )
    split = report["split"]
    lines.append(
        f"split (seed {report['seed']}): train {split['train']} / test {split['test']} "
        f"-> {out_dir}"
    )
    return "\n".join(lines)
