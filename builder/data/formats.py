"""The file formats `builder prepare` reads: a FAQ file or folder -> one `FaqTable` of cleaned rows.

    from builder.data.formats import read_any
    table = read_any("data/sample_faq.csv")   # or faq.json, chats.jsonl, a folder of them

- CSV/TSV/XLSX in UTF-8, UTF-8 with BOM, UTF-16 (Excel's "Unicode text") or CP949/EUC-KR, the
  header mapped to Alpaca columns (instruction / input / output): builder.data.tables.
- JSON (a list of records, or an object holding one list) and JSONL (one record per line) in
  three shapes: Alpaca (the same field names as the headers), Dolly (context becomes `input`,
  category is counted, not trained), ShareGPT / KoVicuna `conversations` (or `messages`), where
  each question/answer pair is one row and the earlier turns become its context.
- A folder: every .csv .tsv .xlsx .json .jsonl in it and below (any letter case), hidden files
  and folders skipped, and links that lead outside it (named in the report); each row
  remembers its file.

Every row keeps where it came from (`Row.where()`: "line 14", "chats/a.json record 3 pair 2"),
so the checks in `builder.data.prepare` can name it. Whatever the user must fix raises `UserError`.
"""

import json
import os
from pathlib import Path

from builder.data.tables import (
    ACCEPTED_HEADERS,
    FaqTable,
    Row,
    clean_cell,
    decode,
    map_columns,
    place,
    read_table,
)
from builder.errors import UserError

FAQ_SUFFIXES = (".csv", ".tsv", ".xlsx", ".json", ".jsonl")
LINK_OUTSIDE = " (a link that leads outside the folder)"  # after a skipped file's name

# A conversation row's context (its earlier turns) keeps at most this many characters, cut from
# the oldest end: ~240 tokens at 0.6 tokens per Korean character, under half of the default
# 512-token training length, so the question and the answer keep the rest.
CONTEXT_CHARS = 400
QUESTION_ROLES = ("human", "user")
ANSWER_ROLES = ("gpt", "assistant")
SPEAKERS = {"question": "고객", "answer": "상담원"}  # how earlier turns read in the context


# ---------------------------------------------------------------------------------------------
# Tables: CSV, TSV, XLSX


# ---------------------------------------------------------------------------------------------
# JSON and JSONL

RECORDS_EXAMPLE = '[{"question": "...", "answer": "..."}, ...]'


def describe(value) -> str:
    """What a JSON value is, in words, for a message."""
    if isinstance(value, dict):
        keys = ", ".join(repr(k) for k in list(value)[:6]) or "no keys"
        return f"an object with keys {keys}"
    if isinstance(value, list):
        return (f"a list with no record objects (its first item is {describe(value[0])})"
                if value else "an empty list")
    return {str: "a string", bool: "true/false", type(None): "null"}.get(type(value), "a number")


def json_records(text: str, name: str) -> list[tuple[int, object]]:
    """A .json document -> [(record number, record)]: its top-level list, or the one list of
    records inside a top-level object ({"data": [...]})."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise UserError(f"{name}: JSON nested too deeply to read (lists or objects inside each "
                        f"other hundreds of times); a FAQ is one list of records, like "
                        f"{RECORDS_EXAMPLE}.") from None
    except json.JSONDecodeError as err:
        hint = (" It looks like one record per line: name the file .jsonl."
                if err.msg == "Extra data" else " A missing comma, quote or bracket is common.")
        raise UserError(f"{name} line {err.lineno} column {err.colno}: not valid JSON "
                        f"({err.msg}).{hint}") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items()
                 if isinstance(v, list) and any(isinstance(r, dict) for r in v)]
        if len(lists) == 1:
            data = data[lists[0]]
        elif len(lists) > 1:
            raise UserError(
                f"{name}: the top level holds {len(lists)} lists of records "
                f"({', '.join(map(repr, lists))}); keep the FAQ in one list, like "
                f"{RECORDS_EXAMPLE}."
            )
    if not isinstance(data, list) or not any(isinstance(r, dict) for r in data):
        raise UserError(
            f"{name}: the top level is {describe(data)}, not a list of records. Put the FAQ in "
            f'one list, like {RECORDS_EXAMPLE} (or {{"data": [...]}}), or save one record per '
            "line as .jsonl."
        )
    return list(enumerate(data, start=1))


def jsonl_records(text: str, name: str) -> tuple[list[tuple[int, object]], list[dict]]:
    """A .jsonl file -> [(line, record)] and the lines that are not JSON."""
    records, broken = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            broken.append({"line": number, "reason": f"not JSON ({err.msg}, column {err.colno})"})
        except RecursionError:
            broken.append({"line": number, "reason": "JSON nested too deeply to read"})
    if broken and (not records or one_document(text)):
        hint = " This file holds one JSON document: name it .json." if one_document(text) else ""
        raise UserError(f"{name} line {broken[0]['line']}: {broken[0]['reason']}; a .jsonl file "
                        f'needs one {{"question": ..., "answer": ...}} record per line.{hint}')
    return records, broken


def one_document(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except (json.JSONDecodeError, RecursionError):
        return False


def conversation_pairs(turns) -> tuple[list[tuple[str, str]], dict | None]:
    """ShareGPT turns -> the (question, answer) pairs up to the first break, and the break
    ({turn, reason}, turns counted from 1) or None when the conversation alternates throughout."""
    if not isinstance(turns, list):
        return [], {"turn": 0, "reason": f"the conversation is {describe(turns)}, not a list"}
    pairs: list[tuple[str, str]] = []
    question, question_turn = None, 0
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            return pairs, {"turn": number, "reason": f"turn {number} is {describe(turn)}, not "
                           'an object like {"from": "human", "value": "..."}'}
        role = clean_cell(turn.get("from", turn.get("role"))).lower()
        text = clean_cell(turn.get("value", turn.get("content")))
        if role == "system":  # instructions to the model, not a FAQ turn
            continue
        if role in QUESTION_ROLES:
            if question is not None:
                return pairs, {"turn": question_turn, "reason": f"turns {question_turn} and "
                               f"{number} are both questions ({role}) with no answer between"}
            question, question_turn = text, number
        elif role in ANSWER_ROLES:
            if question is None:
                return pairs, {"turn": number, "reason": f"turn {number} is an answer ({role}) "
                               "with no question before it"}
            pairs.append((question, text))
            question = None
        else:
            return pairs, {"turn": number, "reason": f"turn {number} has the speaker {role!r}; "
                           "expected human/gpt, user/assistant or system"}
    if question is not None:
        return pairs, {"turn": question_turn, "reason": f"it ends with a question (turn "
                       f"{question_turn}) that has no answer"}
    if not pairs:
        return pairs, {"turn": 0, "reason": "it has no question and answer turns"}
    return pairs, None


def recent_context(lines: list[str], budget: int) -> tuple[str, bool]:
    """The latest lines that fit in `budget` characters (cut from the oldest end), and whether
    anything was cut. One line longer than the budget keeps its end."""
    kept: list[str] = []
    for line in reversed(lines):
        if sum(len(k) + 1 for k in kept) + len(line) > budget:
            if not kept:
                return "…" + line[len(line) - budget + 1:], True
            return "\n".join(kept), True
        kept.insert(0, line)
    return "\n".join(kept), False


def conversation_rows(table: FaqTable, records, unit: str, file: str) -> None:
    """Each question/answer pair of each record -> one row, the earlier turns as its context."""
    stats = {"records": 0, "pairs": 0, "context_chars": CONTEXT_CHARS, "contexts_cut": 0}
    for number, record in records:
        stats["records"] += 1
        turns = record.get("conversations", record.get("messages"))
        if turns is None:
            pairs, broken = [], {"turn": 0, "reason": 'no "conversations" (or "messages") list'}
        else:
            pairs, broken = conversation_pairs(turns)
        lines: list[str] = []
        for pair, (question, answer) in enumerate(pairs, start=1):
            context, cut = recent_context(lines, CONTEXT_CHARS)
            table.rows.append(Row(number, question, context, answer, file, unit, pair))
            stats["pairs"] += 1
            stats["contexts_cut"] += cut
            lines += [f"{SPEAKERS['question']}: {question}", f"{SPEAKERS['answer']}: {answer}"]
        if broken:
            kept = (f"the {len(pairs)} pair{'s' if len(pairs) > 1 else ''} before it kept"
                    if pairs else "nothing kept")
            table.left_out.append({"line": number, "where": place(file, unit, number),
                                   "reason": f"{broken['reason']}; {kept}", "turn": broken["turn"],
                                   "pairs_kept": len(pairs)})
    table.conversations = stats


def field_rows(table: FaqTable, records, unit: str, file: str, name: str) -> None:
    """Alpaca/Dolly records: their field names are mapped like a table's header."""
    keys: list[str] = []  # every field name, in the order first seen
    for _, record in records:
        keys += [k for k in record if k not in keys]
    fix = ("Each record needs a question and an answer field; accepted names: "
           f'{ACCEPTED_HEADERS} (or a "conversations" list).')
    mapping, extra = map_columns(keys, name, fix)
    category = next((k for k in keys if clean_cell(k).lower() == "category"), None)
    table.columns_found = [clean_cell(k) for k in keys]
    table.column_map = {c: clean_cell(keys[i]) for c, i in mapping.items()}
    table.extra_columns = [e for e in extra if e != clean_cell(category or "")]
    table.format = "dolly" if category or {"context", "response"} & {
        clean_cell(k).lower() for k in keys} else "alpaca"
    for number, record in records:

        def value(column: str) -> str:
            key = keys[mapping[column]] if column in mapping else None
            text = record.get(key)
            return clean_cell(json.dumps(text, ensure_ascii=False)
                              if isinstance(text, (dict, list)) else text)

        table.rows.append(Row(number, value("instruction"), value("input"), value("output"),
                              file, unit))
        if category is not None:
            label = clean_cell(record.get(category)) or "(none)"
            table.categories[label] = table.categories.get(label, 0) + 1


def read_json(path: Path, raw: bytes, name: str, file: str = "") -> FaqTable:
    """A .json list of records or a .jsonl file, in any of the three shapes."""
    text, encoding = decode(raw, name)
    jsonl = path.suffix.lower() == ".jsonl"
    if jsonl:
        records, left_out = jsonl_records(text, name)
        unit = "line"
    else:
        records = json_records(text, name)
        left_out, unit = [], "record"
    for number, record in records:
        if not isinstance(record, dict):
            left_out.append({"line": number, "reason": f"{describe(record)}, not a record object"})
    left_out = sorted(({"line": d["line"], "where": place(file, unit, d["line"]),
                        "reason": d["reason"]} for d in left_out), key=lambda d: d["line"])
    records = [(n, r) for n, r in records if isinstance(r, dict)]
    if not records:
        raise UserError(f"{name} {left_out[0]['where']}: {left_out[0]['reason']}; no line holds "
                        'a record like {"question": ..., "answer": ...}.')
    table = FaqTable(path=path, encoding=encoding, delimiter="jsonl" if jsonl else "json",
                     columns_found=[], column_map={}, extra_columns=[], left_out=left_out)
    if any("conversations" in r or "messages" in r for _, r in records):
        table.format = "sharegpt"
        table.columns_found = list(dict.fromkeys(k for _, r in records for k in r))
        turns = "conversations" if any("conversations" in r for _, r in records) else "messages"
        table.column_map = {"instruction": f"{turns}: human/user", "input": "earlier turns",
                            "output": f"{turns}: gpt/assistant"}
        conversation_rows(table, records, unit, file)
    else:
        field_rows(table, records, unit, file, name)
    table.left_out.sort(key=lambda d: d["line"])
    if not table.rows:
        raise UserError(f"{name}: no record gave a question and an answer "
                        f"({table.left_out[0]['where']}: {table.left_out[0]['reason']}).")
    return table


# ---------------------------------------------------------------------------------------------
# One file or a folder


def read_file(path: Path, name: str, file: str = "") -> FaqTable:
    raw = path.read_bytes()
    is_json = path.suffix.lower() in (".json", ".jsonl") and not raw.startswith(b"PK\x03\x04")
    if not raw.strip():
        expected = RECORDS_EXAMPLE if is_json else f"a table whose first row is a header: " \
                                                   f"{ACCEPTED_HEADERS}"
        raise UserError(f"{name} is empty. Expected {expected}.")
    if is_json:
        return read_json(path, raw, name, file)
    table = read_table(path, raw, name)
    for row in table.rows:
        row.file = file
    return table


def leads_outside(path: Path, root: Path) -> bool:
    """Whether a path inside the folder `root` (resolved) really lies outside it, through a
    link: a FAQ folder holding a link to ~/.ssh/config.json must not read that file."""
    try:
        return not path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop leads nowhere readable
        return True


def faq_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The FAQ files in a folder and below, in name order, and the other (skipped) files.
    Hidden files and folders (.git, .DS_Store) and Office lock files (~$faq.xlsx) are skipped;
    links that lead outside the folder are skipped and listed with LINK_OUTSIDE after them
    (links to folders are never followed; os.walk's default)."""
    root = folder.resolve()
    found, skipped = [], []
    for top, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        links = [Path(top) / d for d in dirs if leads_outside(Path(top) / d, root)]
        for name in sorted(names):
            if name.startswith((".", "~$")):
                continue
            path = Path(top) / name
            if leads_outside(path, root):
                links.append(path)
            else:
                (found if path.suffix.lower() in FAQ_SUFFIXES else skipped).append(path)
        skipped += [Path(f"{link}{LINK_OUTSIDE}") for link in sorted(links)]
    return found, [p.relative_to(folder).as_posix() for p in skipped]


def read_folder(folder: Path) -> FaqTable:
    paths, skipped = faq_files(folder)
    if not paths:
        seen = f" (found only: {', '.join(skipped[:5])})" if skipped else " (it is empty)"
        raise UserError(f"{folder}: no FAQ files in this folder{seen}. Put the FAQ in it as "
                        f"{' '.join(FAQ_SUFFIXES)} files, or give the path of one file.")
    table = FaqTable(path=folder, encoding="", delimiter="folder", columns_found=[],
                     column_map={}, extra_columns=[], format="folder", files_skipped=skipped)
    maps: dict[str, list[str]] = {}
    for path in paths:
        file = path.relative_to(folder).as_posix()
        part = read_file(path, f"{folder.name}/{file}", file)
        table.rows += part.rows
        table.left_out += [{"file": file, **d} for d in part.left_out]
        for label, n in part.categories.items():
            table.categories[label] = table.categories.get(label, 0) + n
        for key, n in part.conversations.items():
            table.conversations[key] = n if key == "context_chars" else \
                table.conversations.get(key, 0) + n
        for column, header in part.column_map.items():
            maps.setdefault(column, []).append(header)
        table.columns_found += [c for c in part.columns_found if c not in table.columns_found]
        table.extra_columns += [c for c in part.extra_columns if c not in table.extra_columns]
        kind = path.suffix.lower().lstrip(".") + (f" ({part.format})" if part.format else "")
        table.files.append({"file": file, "format": kind, "encoding": part.encoding,
                            "delimiter": part.delimiter, "rows": len(part.rows)})
    table.encoding = ", ".join(dict.fromkeys(f["encoding"] for f in table.files))
    table.column_map = {c: " | ".join(dict.fromkeys(h)) for c, h in maps.items()}
    return table


def read_any(path: str | Path) -> FaqTable:
    """A FAQ file or folder -> cleaned rows. Raises UserError for anything the user must fix."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file. Give the path of your FAQ CSV/TSV/XLSX/JSON/JSONL "
                        "file, or of a folder holding them.")
    return read_file(path, path.name)
