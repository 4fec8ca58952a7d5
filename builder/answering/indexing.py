"""Where a run's FAQ entries come from, and `builder index`: an updated FAQ file (plus the rows
the owner added in the inbox, RUN/inbox/faq.csv) becomes the run's knowledge, without training.

    builder index runs/demo data/faq_v2.csv     # index_run(run_dir, faq_file)
"""

import csv
from pathlib import Path

from builder.answering.knowledge import Entry, knowledge_for
from builder.answering.text import squeeze
from builder.errors import UserError
from builder.run import Run, knowledge_lock

INBOX_FAQ = Path("inbox") / "faq.csv"  # the rows the owner wrote in the inbox (builder.owner)


def entries_from_prepared(prepared_dir: str | Path) -> list[Entry]:
    """All kept rows of a prepared folder (train and test), in the FAQ file's order."""
    prepared_dir = Path(prepared_dir)
    faq = prepared_dir / "faq.csv"  # every kept row with its source line
    if faq.is_file():
        with faq.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    else:  # a folder prepared before faq.csv existed: train then test, no lines
        rows = []
        for split in ("train", "test"):
            with (prepared_dir / f"{split}.csv").open(encoding="utf-8", newline="") as f:
                rows += list(csv.DictReader(f))
    return [Entry(i, int(r["line"]) if r.get("line") else None, r["instruction"],
                  r.get("input") or "", r["output"]) for i, r in enumerate(rows)]


def entries_from_file(faq_file: str | Path) -> tuple[list[Entry], dict]:
    """An (updated) FAQ file through the same checks as `builder prepare`; (entries, report)."""
    from builder.data.prepare import read_checked

    rows, report = read_checked(faq_file)
    return [Entry(i, r.line, r.instruction, r.input, r.output) for i, r in enumerate(rows)], report


def inbox_rows(run_dir: str | Path) -> list[tuple[str, str, str]]:
    """(question, context, answer) of the rows the owner wrote in the inbox, in order."""
    path = Path(run_dir) / INBOX_FAQ
    if not path.is_file():
        return []
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [(r["instruction"], r.get("input") or "", r["output"]) for r in csv.DictReader(f)]


def index_run(run_dir: str | Path, faq_file: str | Path, log=print) -> dict:
    """Replace RUN_DIR/knowledge from an updated FAQ file, without retraining; the inbox's rows
    (RUN/inbox/faq.csv) stay in it. One update of a run at a time (`knowledge_lock`)."""
    run = Run(run_dir)
    if not run.config_path.is_file():
        raise UserError(f"{run.path} is not a run folder (no config.yaml); {run.make('train')}")
    from builder.config import load_config

    cfg = load_config(run.config_path)
    entries, report = entries_from_file(faq_file)
    added = inbox_rows(run.path)
    entries, _ = with_rows(entries, added)
    source = Path(faq_file).name + (f" + {INBOX_FAQ.as_posix()}" if added else "")
    with knowledge_lock(run.path):
        knowledge = knowledge_for(entries, cfg.rag, source=source, run_dir=run.path)
        knowledge.save(run.knowledge_dir)
        if run.has_merged():  # the merged model carries a copy
            knowledge.save(run.merged_dir / "knowledge")
    log(f"{run.knowledge_dir}: {len(entries)} FAQ entries from {source} "
        f"({len(report['dropped'])} rows left out), decline gate {knowledge.settings['gate']}")
    return {"entries": len(entries), "report": report, "settings": knowledge.settings,
            "inbox_rows": len(added)}


def with_rows(entries: list, rows: list[tuple[str, str, str]]) -> tuple[list, list[str]]:
    """The entries with each (question, context, answer) row added at the end, or, where an
    entry asks the same (spaces and punctuation aside, same context), given that answer in
    place: a word-for-word question gets the first such entry's answer, so a second entry
    would never be shown. Returns (entries, what happened to each row)."""
    entries, done = list(entries), []
    for question, context, answer in rows:
        key = (squeeze(question), squeeze(context))
        same = next((e for e in entries if (squeeze(e.question), squeeze(e.context)) == key), None)
        if same is None:
            entries.append(Entry(len(entries), None, question, context, answer))
            done.append("added")
        elif same.answer.strip() == answer.strip():
            done.append("already there" + (f" (line {same.line})" if same.line else ""))
        else:
            entries[same.id] = Entry(same.id, same.line, same.question, same.context, answer)
            done.append("answer replaced" + (f" (line {same.line})" if same.line else ""))
    return entries, done
