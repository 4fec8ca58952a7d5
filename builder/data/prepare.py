"""The data stage: a shop's FAQ file or folder -> a validated, de-duplicated, split dataset folder.

    builder prepare data/sample_faq.csv --out runs/data
    builder prepare my_faqs/ --out runs/data     # every CSV/TSV/XLSX/JSON/JSONL inside
    builder prepare data/sample_faq.csv --add runs/demo/inbox/faq.csv --out runs/data2

Reading (CSV/TSV/XLSX, JSON/JSONL in Alpaca, Dolly or ShareGPT shape, folders) is
`builder.data.formats`; this module leaves out empty, duplicate and conflicting rows with their line
(and file, in a folder), splits the rest with scikit-learn (the original notebook's
`train_test_split`, or GroupShuffleSplit where a question repeats), and writes `train.csv`,
`test.csv`, `faq.csv`, `dataset/` (a DatasetDict) and `report.json` into the output folder,
which is either complete or absent. Rows `builder generate` wrote from documents that are not
marked reviewed yet are counted and named (`builder.data.review`). `--add FILE` (repeatable)
appends another file's rows after the FAQ's, through the same checks: the owner's answers from
the inbox (RUN/inbox/faq.csv, builder.owner.inbox); the report counts the rows of each file.
"""

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
from pathlib import Path

from builder.data.added import added_sha256, from_files, read_added
from builder.data.formats import LINK_OUTSIDE, read_any
from builder.data.lengths import count_tokens, measure_lengths, row_texts, start_length_worker
from builder.data.review import unreviewed, warning
from builder.data.tables import FaqTable, Row
from builder.errors import UserError

ALPACA_COLUMNS = ("instruction", "input", "output")

MIN_ROWS_TO_SPLIT = 10

# The readers live in builder.formats; `read_faq` is the name the other stages call.
read_faq = read_any


# ---------------------------------------------------------------------------------------------
# Checks


def duplicate_key(text: str) -> str:
    """Whitespace differences do not make a different question or answer."""
    return " ".join(text.split())


def origin(row: Row, reason: str) -> dict:
    """A dropped row's entry: its line, and where it is when the line alone does not say
    (a file in a folder, a JSON record, a conversation pair)."""
    if row.plain():
        return {"line": row.line, "reason": reason}
    return {"line": row.line, "reason": reason, "where": row.where()} | (
        {"file": row.file} if row.file else {})


def check_rows(rows: list[Row]) -> tuple[list[Row], list[dict], list[dict]]:
    """-> kept rows, dropped [{line, reason, ...}], conflicts [{question, lines, answers}]."""
    order = {id(row): i for i, row in enumerate(rows)}  # rows are told apart by position
    dropped: list[tuple[int, dict]] = []
    candidates: list[tuple[tuple, Row]] = []
    for row in rows:
        if not row.instruction and not row.output:
            dropped.append((order[id(row)], origin(row, "empty question and answer")))
        elif not row.instruction:
            dropped.append((order[id(row)], origin(row, "empty question")))
        elif not row.output:
            dropped.append((order[id(row)], origin(row, "empty answer")))
        else:
            key = (duplicate_key(row.instruction), duplicate_key(row.input), duplicate_key(row.output))
            candidates.append((key, row))

    # Exact duplicates: keep the first, drop the rest.
    first_seen: dict[tuple, Row] = {}
    unique: list[tuple[tuple, Row]] = []
    for key, row in candidates:
        if key in first_seen:
            first = first_seen[key]
            entry = origin(row, "duplicate") | {"duplicate_of": first.line}
            if not (row.plain() and first.plain()):
                entry["duplicate_of_where"] = first.where()
            dropped.append((order[id(row)], entry))
        else:
            first_seen[key] = row
            unique.append((key, row))

    # Same question (and context), different answers: the bot cannot learn both; leave all out.
    by_question: dict[tuple, list[Row]] = {}
    for key, row in unique:
        by_question.setdefault(key[:2], []).append(row)
    conflicts = []
    conflicting: set[int] = set()
    for group in by_question.values():
        if len(group) == 1:
            continue
        places = {} if all(r.plain() for r in group) else {"where": [r.where() for r in group]}
        conflicts.append(
            {
                "question": group[0].instruction,
                "lines": [r.line for r in group],
                "answers": [r.output for r in group],
            } | places
        )
        for r in group:
            entry = origin(r, "conflict") | {"lines": [g.line for g in group]}
            if places:
                entry["lines_where"] = places["where"]
            dropped.append((order[id(r)], entry))
            conflicting.add(order[id(r)])
    kept = [r for _, r in unique if order[id(r)] not in conflicting]
    dropped.sort(key=lambda d: d[0])  # in the order the rows were read
    return kept, [entry for _, entry in dropped], conflicts


# ---------------------------------------------------------------------------------------------
# Split and write


def split_rows(rows: list[Row], test_size: float, seed: int, name: str) -> tuple[list, list, str]:
    """scikit-learn's split -> (train, test, method).

    Without a repeated question this is exactly the original notebook's
    `train_test_split(rows, test_size=0.1, random_state=42)`, rows in the shuffled order it
    returns. Where a question repeats (same text after `duplicate_key`, different contexts),
    GroupShuffleSplit keeps each question on one side; its rows stay in file order."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    if not 0 < test_size < 1:
        raise UserError(f"--test-size must be between 0 and 1 (got {test_size}); 0.1 means 9:1.")
    questions = [duplicate_key(row.instruction) for row in rows]
    n_groups = len(set(questions))
    # scikit-learn rounds the test side up and the train side down (10 rows at 0.1 -> 9:1)
    n_test = math.ceil(n_groups * test_size)
    if len(rows) < MIN_ROWS_TO_SPLIT or n_groups - n_test < 1:
        raise UserError(
            f"{name}: only {len(rows)} usable rows ({n_groups} different question"
            f"{'s' if n_groups > 1 else ''}), too few to "
            f"split into train and test (test size {test_size}). Add rows until there are at "
            f"least {MIN_ROWS_TO_SPLIT} different questions."
        )
    if n_groups == len(rows):
        train, test = train_test_split(rows, test_size=test_size, random_state=seed)
        return train, test, "train_test_split"
    splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    train_index, test_index = next(splitter.split(rows, groups=questions))
    return [rows[i] for i in train_index], [rows[i] for i in test_index], "GroupShuffleSplit"


def write_csv(rows: list[Row], path: Path, *, with_line: bool = False) -> None:
    """Alpaca columns; with_line adds each row's line (and its file, for a folder's rows)."""
    with_file = with_line and any(r.file for r in rows)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ALPACA_COLUMNS + (("line",) if with_line else ())
                        + (("file",) if with_file else ()))
        writer.writerows((r.instruction, r.input, r.output) + ((r.line,) if with_line else ())
                         + ((r.file,) if with_file else ()) for r in rows)


def save_dataset(train: list[Row], test: list[Row], path: Path) -> None:
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    def to_dataset(rows: list[Row]):
        return Dataset.from_dict({c: [getattr(r, c) for r in rows] for c in ALPACA_COLUMNS})

    DatasetDict({"train": to_dataset(train), "test": to_dataset(test)}).save_to_disk(str(path))


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move a finished folder into place; the old one (if any) goes only after that worked.
    Between the two renames only out_dir.old exists: readers fall back to it (a run's
    knowledge: builder.answering.knowledge.readable), and a save killed there leaves it for
    the next save to remove once its own folder is in place."""
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def source_sha256(faq_file: Path, table: FaqTable) -> str:
    if not faq_file.is_dir():
        return hashlib.sha256(faq_file.read_bytes()).hexdigest()
    digest = hashlib.sha256()  # a folder: each file read, by its path and contents
    for f in table.files:
        digest.update(f["file"].encode() + b"\0")
        digest.update(hashlib.sha256((faq_file / f["file"]).read_bytes()).digest())
    return digest.hexdigest()


def format_report(table: FaqTable) -> dict:
    """What reading JSON, JSONL or a folder found; nothing for a table file."""
    if not table.format:
        return {}
    found = {"format": table.format, "records_left_out": table.left_out}
    for key in ("categories", "conversations", "files", "files_skipped"):
        if getattr(table, key):
            found[key] = getattr(table, key)
    return found


def build_report(faq_file: Path, table: FaqTable, kept, dropped, conflicts, too_long, lengths,
                 train, test, split_method: str, test_size: float, seed: int,
                 added: list[tuple[Path, FaqTable]] = ()) -> dict:
    reasons: dict[str, int] = {}
    for d in dropped:
        reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
    return {
        "source_file": faq_file.name,
        "source_sha256": added_sha256(source_sha256(faq_file, table), added),
        "encoding": table.encoding,
        "delimiter": table.delimiter,
        "columns_found": table.columns_found,
        "column_map": table.column_map,
        "extra_columns_ignored": table.extra_columns,
        **format_report(table),
        "rows_read": len(table.rows) + sum(len(t.rows) for _, t in added),
        "rows_kept": len(kept),
        **({"from_files": from_files(faq_file, table, added, kept)} if added else {}),
        "rows_dropped": len(dropped),
        "dropped_by_reason": reasons,
        "dropped": dropped,
        "duplicates": sum(1 for d in dropped if d["reason"] == "duplicate"),
        "conflicts": conflicts,
        "too_long": too_long,
        "lengths": lengths,
        "split": {"train": len(train), "test": len(test), "method": split_method},
        "test_size": test_size,
        "seed": seed,
    } | ({"not_reviewed": counts} if (counts := unreviewed(faq_file, table)) else {})


def read_checked(faq_file: str | Path) -> tuple[list[Row], dict]:
    """A FAQ file read and checked as `prepare` does, without splitting or writing:
    (kept rows in file order, {"dropped", "conflicts", "rows_read"})."""
    table = read_faq(faq_file)
    kept, dropped, conflicts = check_rows(table.rows)
    if table.left_out:  # JSON records and conversation breaks that gave no row
        dropped = table.left_out + dropped
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
    add: list[str | Path] = (),
) -> dict:
    """Validate, clean and split a FAQ file (and the `add` files' rows after its own) into
    `out_dir`. Returns the report."""
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
        added = read_added(add)
        kept, dropped, conflicts = check_rows(table.rows + [r for _, t in added for r in t.rows])
        train, test, split_method = split_rows(kept, test_size, seed, faq_file.name)
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
                              train, test, split_method, test_size, seed, added)
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


def places(entries: list[dict], more: str = " ...", limit: int = 10) -> str:
    """"lines 3, 5" for one table file; "a.csv line 3, b.json record 2" otherwise."""
    shown = [str(e.get("where", e["line"])) for e in entries[:limit]]
    more = more if len(entries) > limit else ""
    if any("where" in e for e in entries):
        return ", ".join(shown) + more
    return "lines " + ", ".join(shown) + more


def format_summary(report: dict) -> list[str]:
    """The lines about what reading JSON, JSONL or a folder found."""
    lines = []
    for f in report.get("files", [])[:20]:
        lines.append(f"  {f['file']}: {f['rows']} rows ({f['format']}, {f['encoding']})")
    if len(report.get("files", [])) > 20:
        lines.append(f"  ... and {len(report['files']) - 20} more files")
    skipped = report.get("files_skipped", [])
    other = [name for name in skipped if not name.endswith(LINK_OUTSIDE)]
    links = [name.removesuffix(LINK_OUTSIDE) for name in skipped if name.endswith(LINK_OUTSIDE)]
    if other:
        lines.append(f"  not read (not a FAQ file type): {', '.join(other[:10])}")
    if links:
        lines.append(f"  not read, links that lead outside the folder: {', '.join(links)} "
                     "(copy the file into the folder to use it)")
    if report.get("categories"):
        counts = ", ".join(f"{label} {n}" for label, n in report["categories"].items())
        lines.append(f"  categories (reported, not trained): {counts}")
    talk = report.get("conversations")
    if talk:
        lines.append(
            f"  conversations: {talk['records']} -> {talk['pairs']} question/answer rows, earlier "
            f"turns as context up to {talk['context_chars']} characters "
            f"({talk['contexts_cut']} cut from the oldest end)")
    left_out = report.get("records_left_out", [])
    if left_out:
        lines.append(f"  records left out or cut short: {len(left_out)}")
    for d in left_out[:10]:
        lines.append(f"    {d['where']}: {d['reason']}")
    return lines


def summary(report: dict, out_dir: str | Path) -> str:
    """A short human summary of a prepare report (Korean and English)."""
    if report.get("format") == "folder":
        read = f"{len(report['files'])} files"
    else:
        read = f"{report['encoding']}, {report['delimiter']}"
        read += f", {report['format']}" if report.get("format") else ""
    lines = [
        f"{report['source_file']}: {report['rows_read']} rows read "
        f"({read}), {report['rows_kept']} kept "
        f"/ {report['rows_read']}행 중 {report['rows_kept']}행 사용",
        *format_summary(report),
    ]
    if report.get("from_files"):
        lines.append("  rows kept per file: " + ", ".join(
            f"{f['file']} {f['rows_kept']} of {f['rows_read']}" for f in report["from_files"]))
    if report["extra_columns_ignored"]:
        lines.append(f"  ignored columns: {', '.join(report['extra_columns_ignored'])}")
    by_reason: dict[str, list[dict]] = {}
    for d in report["dropped"]:
        by_reason.setdefault(d["reason"], []).append(d)
    for reason, entries in by_reason.items():
        lines.append(f"  left out, {reason}: {len(entries)} ({places(entries)})")
    for c in report["conflicts"][:5]:
        at = ", ".join(c["where"]) if "where" in c else "lines " + ", ".join(map(str, c["lines"]))
        lines.append(f"  conflict: {c['question'][:40]!r} has different answers on {at}; "
                     "fix one and keep the other")
    if report["too_long"]:
        lines.append(
            f"  longer than {report['lengths']['max_length']} {report['lengths']['unit']}: "
            f"{len(report['too_long'])} rows ({places(report['too_long'], more='')}); "
            "they will be cut in training"
        )
    stats = report["lengths"]["row_tokens"]
    lines.append(
        f"  length per row: median {stats['median']}, p95 {stats['p95']}, max {stats['max']} "
        f"{report['lengths']['unit']}"
    )
    split = report["split"]
    lines.append(
        f"split (seed {report['seed']}, {split.get('method', 'seeded shuffle')}): "
        f"train {split['train']} / test {split['test']} -> {out_dir}"
    )
    return "\n".join(lines + warning(report.get("not_reviewed", {})))
