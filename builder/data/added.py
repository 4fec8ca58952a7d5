"""Rows added after a FAQ's own: `builder prepare FAQ --add FILE` (repeatable), such as the
owner's answers from the inbox (RUN/inbox/faq.csv, builder.owner.inbox). They go through the
same checks as the FAQ's rows (builder.data.prepare.check_rows); each says which file it came
from, and the report counts the rows read and kept per file."""

import hashlib
from pathlib import Path

from builder.data.formats import read_any
from builder.data.tables import FaqTable, Row
from builder.errors import UserError


def read_added(paths) -> list[tuple[Path, FaqTable]]:
    """The --add files, read as the FAQ is; each row says which file it came from."""
    added = []
    for path in map(Path, paths):
        if path.is_dir():
            raise UserError(f"--add {path} is a folder; give a FAQ file (RUN/inbox/faq.csv)")
        table = read_any(path)
        for row in table.rows:
            row.file = str(path)
        added.append((path, table))
    return added


def from_files(faq_file: Path, table: FaqTable, added, kept: list[Row]) -> list[dict]:
    """Rows read and kept per file: the FAQ's, then each --add file's."""
    kept_by_file: dict[str, int] = {}
    for row in kept:
        kept_by_file[row.file] = kept_by_file.get(row.file, 0) + 1
    ours = {str(p) for p, _ in added}
    first = sum(n for f, n in kept_by_file.items() if f not in ours)
    return [{"file": faq_file.name, "rows_read": len(table.rows), "rows_kept": first}] + [
        {"file": str(p), "rows_read": len(t.rows), "rows_kept": kept_by_file.get(str(p), 0)}
        for p, t in added]


def added_sha256(faq_sha256: str, added: list[tuple[Path, FaqTable]]) -> str:
    """The FAQ's hash alone, or a hash of it and each added file's contents."""
    if not added:
        return faq_sha256
    digest = hashlib.sha256(faq_sha256.encode())
    for path, _ in added:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
