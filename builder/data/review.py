"""Rows that `builder generate` wrote from documents and nobody has checked yet.

A model wrote those rows: an answer may be wrong, or carry words a document hid for that model.
The generated CSV names each row's document in its `source` column and leaves its `reviewed`
column empty; the owner writes y there for each row checked (and fixes or deletes the others).
`builder prepare` counts the rows with a source and no such mark, and says so.
"""

from pathlib import Path

from builder.data.tables import FaqTable, clean_cell, read_records

SOURCE_COLUMN, REVIEW_COLUMN = "source", "reviewed"
NOT_YET = {"", "n", "no", "x", "false", "0", "아니오", "아니요"}  # what does not mark a row checked


def cell(cells: list, index: int | None) -> str:
    return clean_cell(cells[index]) if index is not None and index < len(cells) else ""


def unreviewed_rows(path: Path, name: str) -> int:
    """Rows of a table file with a source and without a reviewed mark."""
    records, _, _ = read_records(path, path.read_bytes(), name)
    records = [cells for _, cells in records if any(clean_cell(c) for c in cells)]
    header = [clean_cell(h).lower() for h in records[0]] if records else []
    if SOURCE_COLUMN not in header:
        return 0
    source = header.index(SOURCE_COLUMN)
    mark = header.index(REVIEW_COLUMN) if REVIEW_COLUMN in header else None
    return sum(1 for cells in records[1:]
               if cell(cells, source) and cell(cells, mark).lower() in NOT_YET)


def unreviewed(faq_file: Path, table: FaqTable) -> dict[str, int]:
    """{file: rows from documents not marked reviewed} of a FAQ file or folder; read again
    only where a table has a source column (prepare's reading keeps no extra columns)."""
    if SOURCE_COLUMN not in (c.lower() for c in table.extra_columns):
        return {}
    if table.format == "folder":
        files = [(faq_file / f["file"], f["file"]) for f in table.files
                 if not f["format"].startswith("json")]
    else:
        files = [] if table.format else [(faq_file, faq_file.name)]  # JSON: none generated
    found = {name: unreviewed_rows(path, name) for path, name in files}
    return {name: count for name, count in found.items() if count}


def warning(counts: dict[str, int]) -> list[str]:
    """prepare's lines about them; none when every generated row is checked."""
    if not counts:
        return []
    total = sum(counts.values())
    where = ", ".join(f"{name} {n}" for name, n in counts.items()) if len(counts) > 1 else ""
    first = (f"  {total} rows came from documents and have not been reviewed: check them before "
             f"training {f'({where}) ' if where else ''}/ 문서에서 만든 {total}행을 아직 검토하지 "
             "않았습니다")
    how = (f"  (a model wrote them: fix or delete a wrong row, then write y in the "
           f'"{REVIEW_COLUMN}" column of each row you checked)')
    return [first, how]
