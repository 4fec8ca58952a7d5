"""The owner's inbox: the questions the bot did not answer well, grouped, and what to do about
each group: answer it, map it to an FAQ entry, or agree that declining was right.

    builder inbox runs/demo                                  # the open groups, most asked first
    builder inbox answer runs/demo 3f2a9c1e "네, 5,000원에 판매해요."
    builder inbox map runs/demo 3f2a9c1e 14                  # an FAQ entry (line 14) answers it
    builder inbox decline runs/demo 3f2a9c1e                 # declining was right

    from builder.owner.inbox import inbox, answer
    groups = inbox("runs/demo", log, knowledge)              # [Group], most asked first
    answer("runs/demo", log, groups[0].key, "네, ...", bot=bot)

Open: the answers of the last `days` days that were declined, replaced by the fact guard
(`guarded`), marked 👎 by the customer (`disliked`), or came from an entry that covers the
question poorly (`weak`: under the gate's coverage floor). Questions that ask the same thing
(builder.owner.grouping) form one group.

An action writes its row to RUN/inbox/faq.csv (Alpaca columns; `builder prepare FAQ --add
RUN/inbox/faq.csv` trains on it), swaps the run's knowledge (builder.owner.live) and records
each wording of the group in the log's `resolved` table. A question counts as resolved when it
is the same question (builder.owner.grouping.same_question: its normalised text, or its
meaning) as a resolved one and, for an answer or a mapping, was asked before it: the new row
answers later askings, so a later decline or 👎 of it is a new problem. After "declining is
right" it stays resolved for good. A 👎 or guard-replaced answer also gives a preference pair
(RUN/inbox/pairs.jsonl, for `builder prefer --pairs`): the owner's answer over the bot's.
"""

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from builder.errors import UserError
from builder.owner.grouping import Asked, cluster, cosine, same_question
from builder.run import Run, write_atomic

DAYS = 30
KINDS = ("declined", "guarded", "disliked", "weak")
INBOX_DIR = "inbox"
FAQ_COLUMNS = ("instruction", "input", "output")


@dataclass
class Group:
    key: str  # a short id: the hash of the representative question's normalised text
    question: str  # the most asked wording
    questions: list[str]  # every distinct wording, most asked first
    count: int  # the answers in the group
    last_seen: datetime
    kinds: dict[str, int]  # declined / guarded / disliked / weak -> answers
    answers: list[str]  # what the bot said, distinct, latest first
    best: dict | None  # {"id", "line", "question", "answer"}: the entry behind the latest one
    turns: list[int] = field(default_factory=list)  # the log's row ids


# ---------------------------------------------------------------------------------------------
# Listing


def inbox(run_dir, log, knowledge=None, days: int = DAYS) -> list[Group]:
    """The open groups of the last `days` days, most asked first. `knowledge`: the run's (the
    bot's, when there is one; else read from RUN/knowledge when it exists)."""
    return _open(run_dir, log, knowledge, days)[0]


def _open(run_dir, log, knowledge, days: int):
    """(groups, the log's rows by id, knowledge)."""
    knowledge = knowledge if knowledge is not None else _current(run_dir)
    since = datetime.now(UTC) - timedelta(days=days)
    rows, analysed = {}, {}
    for row in log.rows(since=since):
        kinds = open_kinds(row, knowledge, analysed)
        if kinds:
            rows[row["id"]] = row | {"kinds": kinds}
    asked = _asked(knowledge)
    done = [(r, asked(r["question"])) for r in resolutions(log, since)]
    rows = {i: r for i, r in rows.items() if not resolved_by(r, asked(r["question"]), done)}
    return grouped(rows, knowledge, asked), rows, knowledge


def _current(run_dir):
    from builder.answering.knowledge import Knowledge

    run = Run(run_dir)
    try:
        return Knowledge.load(run.knowledge_dir)
    except UserError:  # a run without knowledge: no coverage, the default embedder
        return None


def _asked(knowledge):
    """Asked.of, once per wording."""
    cache: dict[str, Asked] = {}

    def asked(text: str) -> Asked:
        if text not in cache:
            cache[text] = Asked.of(text, knowledge)
        return cache[text]

    return asked


def open_kinds(row: dict, knowledge, analysed: dict | None = None) -> list[str]:
    """Why an answer is open: declined, guarded, disliked, weak (none: it is fine).
    `analysed`: question -> its Query, kept between calls."""
    from builder.answering.gate import COVERAGE_FLOOR, coverage
    from builder.answering.text import analyse

    kinds = [k for k, hit in (("declined", row["declined"]), ("guarded", row["guarded"]),
                              ("disliked", row["feedback"] == -1)) if hit]
    entry = source_entry(row, knowledge)
    if not row["declined"] and entry is not None:
        analysed = {} if analysed is None else analysed
        query = analysed.get(row["question"])
        if query is None:  # the words only: coverage needs no embedding
            query = analysed[row["question"]] = analyse(row["question"])
            knowledge.lexicon.apply(query)
        floor = knowledge.settings.get("gate", {}).get("coverage_floor", COVERAGE_FLOOR)
        if coverage(knowledge, query, entry) < (floor or 0):
            kinds.append("weak")
    return kinds


def source_entry(row: dict, knowledge):
    """The knowledge's entry the answer's first source names (by id, checked by its question,
    else by its question: the knowledge may have changed since)."""
    if knowledge is None or not row["sources"]:
        return None
    first = row["sources"][0]
    entries = knowledge.entries
    at = first.get("id", -1)
    if 0 <= at < len(entries) and entries[at].question == first["question"]:
        return entries[at]
    return next((e for e in entries if e.question == first["question"]), None)


def resolutions(log, since: datetime) -> list[dict]:
    """The log's resolved rows that can still close a question: every "decline", and the
    answers and mappings made since `since` (older ones only close older askings)."""
    from sqlalchemy import or_, select

    table = log.resolved
    query = select(table).where(or_(table.c.action == "decline", table.c.at >= since))
    with log.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        if row["at"].tzinfo is None:  # SQLite keeps no zone: it was written in UTC
            row["at"] = row["at"].replace(tzinfo=UTC)
    return rows


PICKUP_S = 60  # a running server reads a new knowledge within seconds; a decline later is news


def resolved_by(row: dict, question: Asked, done: list[tuple[dict, Asked]]) -> bool:
    """Closed by what the owner did: any asking after "decline is right"; after an answer or a
    mapping, the askings before it, and declines while the servers were picking it up."""
    def closes(r: dict) -> bool:
        if r["action"] == "decline" or row["at"] <= r["at"]:
            return True
        return row["declined"] and row["feedback"] != -1 and \
            (row["at"] - r["at"]).total_seconds() <= PICKUP_S

    return any(same_question(question, other) and closes(r) for r, other in done)


def grouped(rows: dict[int, dict], knowledge, asked) -> list[Group]:
    """The rows grouped by question (builder.owner.grouping.cluster), most asked first."""
    from builder.answering.text import squeeze

    by_wording: dict[str, list[dict]] = {}
    for row in rows.values():
        by_wording.setdefault(squeeze(row["question"]) or row["question"], []).append(row)
    # most asked first, then most recent: the seed of each group is its most asked wording
    wordings = sorted(by_wording.values(), key=lambda rs: (-len(rs), -rs[-1]["id"]))
    if knowledge is not None:
        knowledge.prime([rs[-1]["question"] for rs in wordings])  # one embedding batch
    groups = []
    for members in cluster([asked(rs[-1]["question"]) for rs in wordings]):
        group_rows = sorted((r for i in members for r in wordings[i]), key=lambda r: r["id"])
        groups.append(make_group([wordings[i][-1]["question"] for i in members], group_rows,
                                 knowledge))
    return sorted(groups, key=lambda g: (-g.count, -g.last_seen.timestamp()))


def make_group(questions: list[str], rows: list[dict], knowledge) -> Group:
    from builder.answering.text import squeeze

    latest = rows[-1]
    entry = source_entry(latest, knowledge) if knowledge is not None else None
    best = None
    if entry is not None:
        best = {"id": entry.id, "line": entry.line, "question": entry.question,
                "answer": entry.answer}
    elif latest["sources"]:  # the entry is no longer in the knowledge
        first = latest["sources"][0]
        best = {"id": first.get("id"), "line": first.get("line"),
                "question": first.get("question"), "answer": None}
    kinds = Counter(k for r in rows for k in r["kinds"])
    return Group(
        key=hashlib.sha256(squeeze(questions[0]).encode()).hexdigest()[:8],
        question=questions[0], questions=questions, count=len(rows),
        last_seen=max(r["at"] for r in rows), kinds={k: kinds[k] for k in KINDS if kinds[k]},
        answers=list(dict.fromkeys(r["answer"] for r in reversed(rows))), best=best,
        turns=[r["id"] for r in rows])


# ---------------------------------------------------------------------------------------------
# Actions


def answer(run_dir, log, group_key: str, text: str, *, bot=None, days: int = DAYS) -> dict:
    """The owner's answer to a group: a new FAQ row (the group's question -> `text`) in
    RUN/inbox/faq.csv and in the run's knowledge, swapped in at once (and into `bot`)."""
    from builder.owner.live import knowledge_lock

    text = text.strip()
    if not text:
        raise UserError("the answer is empty; write what the bot should say")
    with knowledge_lock(run_dir):
        group, rows, knowledge = open_group(run_dir, log, group_key, bot, days)
        row = (group.question, context_of(group, rows), text)
        result = _apply(run_dir, row, bot)
        result["pairs"] = add_pairs(run_dir, group, rows, text)
        record(log, group, "answer", knowledge, answer=text)
    return result


def map_to_entry(run_dir, log, group_key: str, entry_line: int, *, bot=None,
                 days: int = DAYS) -> dict:
    """The group's question becomes another wording of the FAQ entry on `entry_line`: a row
    (question -> that entry's answer, its context) in RUN/inbox/faq.csv and the knowledge."""
    from builder.answering.knowledge import Knowledge
    from builder.owner.live import knowledge_lock

    with knowledge_lock(run_dir):
        group, _, knowledge = open_group(run_dir, log, group_key, bot, days)
        current = Knowledge.load(Run(run_dir).knowledge_dir)  # as it is now, not as the bot's
        entry = next((e for e in current.entries if e.line == entry_line), None)
        if entry is None:
            lines = [e.line for e in current.entries if e.line]
            known = f"lines {min(lines)}-{max(lines)}" if lines else "no lines"
            raise UserError(f"no FAQ entry on line {entry_line} in {Run(run_dir).knowledge_dir} "
                            f"({known}); the line is the row's line in the FAQ file")
        result = _apply(run_dir, (group.question, entry.context, entry.answer), bot)
        record(log, group, "map", knowledge, entry_line=entry_line, answer=entry.answer)
    return result


def decline_is_right(run_dir, log, group_key: str, *, days: int = DAYS) -> None:
    """The bot was right to decline (or to answer as it did): the group leaves the inbox."""
    from builder.owner.live import knowledge_lock

    with knowledge_lock(run_dir):  # one action at a time: the group is looked up once
        group, _, knowledge = open_group(run_dir, log, group_key, None, days)
        record(log, group, "decline", knowledge)


def open_group(run_dir, log, key: str, bot, days: int):
    """(the open group `key`, the log's rows, knowledge), or a UserError."""
    groups, rows, knowledge = _open(run_dir, log, getattr(bot, "knowledge", None), days)
    group = next((g for g in groups if g.key == key), None)
    if group is None:
        raise UserError(f"no open group {key}; `builder inbox {run_dir}` lists them")
    return group, rows, knowledge


def context_of(group: Group, rows: dict[int, dict]) -> str:
    """The context the group's question was most often asked with (mostly none)."""
    contexts = Counter(rows[i]["context"] for i in group.turns
                       if rows[i]["question"] == group.question)
    return contexts.most_common(1)[0][0] if contexts else ""


def _apply(run_dir, row: tuple[str, str, str], bot) -> dict:
    """The row into the knowledge (and `bot`) and RUN/inbox/faq.csv: the action's result. A
    kill between the two is mended by doing the action again (neither adds a row twice)."""
    from builder.owner.live import add_rows

    knowledge, done = add_rows(run_dir, [row])
    path = add_faq_row(run_dir, row)
    if bot is not None:
        bot.knowledge = knowledge
    return {"entries": done["entries"], "seconds": done["seconds"], "row": done["rows"][0],
            "faq": str(path)}


def record(log, group: Group, action: str, knowledge, *, entry_line: int | None = None,
           answer: str | None = None) -> None:
    """Each wording of the group into the log's `resolved` table (with its similarity to the
    group's question), in one transaction."""
    many = len(group.questions) > 1
    asked = [Asked.of(q, knowledge) for q in group.questions] if many else []
    now = datetime.now(UTC)
    values = [{"at": now, "question": q, "action": action, "entry_line": entry_line,
               "answer": answer, "similarity": round(cosine(asked[0], asked[i]), 4) if asked else 1.0}
              for i, q in enumerate(group.questions)]
    with log.engine.begin() as conn:
        conn.execute(log.resolved.insert(), values)


# ---------------------------------------------------------------------------------------------
# RUN/inbox/: the rows and pairs for the next training


def inbox_dir(run_dir) -> Path:
    return Path(run_dir) / INBOX_DIR


def read_faq_rows(path: Path) -> list[tuple[str, str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [(r["instruction"], r["input"] or "", r["output"]) for r in csv.DictReader(f)]


def add_faq_row(run_dir, row: tuple[str, str, str]) -> Path:
    """RUN/inbox/faq.csv with `row` at the end (once), written whole."""
    path = inbox_dir(run_dir) / "faq.csv"
    rows = read_faq_rows(path)
    if row not in rows:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(FAQ_COLUMNS)
        writer.writerows(rows + [row])
        write_atomic(path, out.getvalue())
    return path


def add_pairs(run_dir, group: Group, rows: dict[int, dict], chosen: str) -> int:
    """A pair {prompt: question, context, chosen: the owner's answer, rejected: the bot's}
    for each 👎 answer and each guard-replaced one (the model's own text) of the group, into
    RUN/inbox/pairs.jsonl (whole); how many were added."""
    path = inbox_dir(run_dir) / "pairs.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    have = {(p["prompt"], p.get("context", ""), p["rejected"])
            for p in map(json.loads, filter(str.strip, lines))}
    new = []
    for row in (rows[i] for i in group.turns):
        for rejected, reason in ((row["answer"] if row["feedback"] == -1 else "", "disliked"),
                                 (row["generated"] if row["guarded"] else "", "fact guard")):
            key = (row["question"], row["context"], rejected.strip())
            if key[2] and key[2] != chosen.strip() and key not in have:
                have.add(key)
                new.append(json.dumps({"prompt": key[0], "context": key[1], "chosen": chosen,
                                       "rejected": key[2], "reason": reason},
                                      ensure_ascii=False))
    if new:
        write_atomic(path, "\n".join(lines + new) + "\n")
    return len(new)
