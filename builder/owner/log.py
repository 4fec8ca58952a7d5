"""The conversation log: every answer from every door, in SQLite or PostgreSQL (SQLAlchemy).

    log = ConversationLog.for_run("runs/demo")                    # RUN/conversations.db
    log = ConversationLog.for_run("runs/demo", "postgresql://shop@db-host/shop")  # shared
    turn = log.record("api", "user-17", "배송비는?", "", reply, latency_s=0.8, reply_id="chatcmpl-..")
    log.feedback("chatcmpl-..", -1)       # the customer's thumbs down
    log.export("runs/demo/log.jsonl")     # questions, answers, feedback: the next training's input
    log.forget("user-17"); log.prune(keep_days=90)

One row per answer (`turns`): when, the door (page, api, terminal, web, kakao), the customer
under a pseudonym, the question and context, the answer, its sources, whether it was declined
and whether the fact guard stepped in and why, the model's own text when the guard replaced it,
the latency and the customer's feedback. Several `builder serve` replicas share one PostgreSQL
log; SQLite (the default, in the run folder) serves one machine.

Customers are kept under a pseudonym, never as given: HMAC-SHA256 of their id (a messenger's
user key, an API `user`, a page session) with a secret salt: $BUILDER_LOG_SALT (the same for
every replica), else RUN/log-salt (made once, readable by the owner only). No IP, no raw id,
no key is ever stored. Writes are transactions: a row is whole or absent.
"""

import csv
import hashlib
import hmac
import json
import os
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path

from builder.errors import UserError

SALT_ENV = "BUILDER_LOG_SALT"
SALT_FILE = "log-salt"
DB_FILE = "conversations.db"
CHANNELS = ("page", "api", "terminal", "web", "kakao")
EXPORT_COLUMNS = ("id", "at", "channel", "customer", "question", "context", "answer", "sources",
                  "declined", "guarded", "why", "feedback", "latency_ms")


def _tables(metadata):
    from sqlalchemy import (Boolean, Column, DateTime, Float, Integer, SmallInteger, String,
                            Table, Text)

    turns = Table(
        "turns", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False, index=True),
        Column("channel", String(16), nullable=False),
        Column("customer", String(32), nullable=False, index=True),  # pseudonym ('' none)
        Column("reply_id", String(64), index=True),  # what the door handed out for feedback
        Column("question", Text, nullable=False),
        Column("context", Text, nullable=False, default=""),
        Column("answer", Text, nullable=False),
        Column("sources", Text, nullable=False, default="[]"),  # [{"id", "line", "question"}]
        Column("declined", Boolean, nullable=False, default=False),
        Column("gated", Boolean, nullable=False, default=False),
        Column("guarded", Boolean, nullable=False, default=False),
        Column("fallback", Boolean, nullable=False, default=False),
        Column("why", String(200), nullable=False, default=""),
        Column("generated", Text, nullable=False, default=""),  # the model's own text
        Column("latency_ms", Integer),
        Column("feedback", SmallInteger),  # 1 up, -1 down, NULL none
        Column("run", String(200), nullable=False, default=""),
    )
    resolved = Table(  # what the owner did about an inbox group (builder.owner.inbox)
        "resolved", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("at", DateTime(timezone=True), nullable=False),
        Column("question", Text, nullable=False),  # a question of the group, as asked
        Column("action", String(16), nullable=False),  # answer, map, decline
        Column("entry_line", Integer),
        Column("answer", Text),
        Column("similarity", Float),
    )
    return turns, resolved


def engine_url(db: str) -> str:
    """An SQLAlchemy URL: a file path is SQLite; postgresql:// goes through psycopg 3."""
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).resolve()}"


def run_salt(run_dir: Path) -> bytes:
    """$BUILDER_LOG_SALT, else RUN/log-salt (made once, 0600)."""
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path = Path(run_dir) / SALT_FILE
    if not path.is_file():
        temp = path.with_name(f".{SALT_FILE}-{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(temp, path)  # first writer wins; another process's salt is kept
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


class ConversationLog:
    """The log behind one database URL; safe to share between threads."""

    def __init__(self, db: str, salt: bytes, run: str = ""):
        from sqlalchemy import MetaData, create_engine, event

        url = engine_url(db)
        self.engine = create_engine(url, pool_pre_ping=True)
        if url.startswith("sqlite"):  # readers beside one writer; wait for a lock, not fail
            @event.listens_for(self.engine, "connect")
            def _pragmas(connection, _):
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA busy_timeout=10000")
        self.turns, self.resolved = _tables(MetaData())
        self.salt, self.run = salt, run
        try:
            self.turns.metadata.create_all(self.engine)
        except Exception as err:  # noqa: BLE001 (any driver's failure to connect)
            where = self.engine.url.render_as_string(hide_password=True)
            raise UserError(f"the conversation log at {where} cannot be opened: "
                            f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None

    @classmethod
    def for_run(cls, run_dir: str | Path, db: str | None = None) -> "ConversationLog":
        run_dir = Path(run_dir)
        return cls(db or str(run_dir / DB_FILE), run_salt(run_dir), run=run_dir.resolve().name)

    def pseudonym(self, customer: str) -> str:
        """The customer's id as stored: 32 hex digits of HMAC-SHA256 ('' for none)."""
        if not customer:
            return ""
        return hmac.new(self.salt, customer.encode(), hashlib.sha256).hexdigest()[:32]

    # Writing

    def record(self, channel: str, customer: str, question: str, context: str, reply,
               latency_s: float | None = None, reply_id: str | None = None) -> int:
        """Store one answer (a builder.answering.guard.Reply); its row id."""
        if channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
        sources = [{"id": h.entry.id, "line": h.entry.line, "question": h.entry.question}
                   for h in reply.sources]
        row = dict(at=datetime.now(timezone.utc), channel=channel,
                   customer=self.pseudonym(customer), reply_id=reply_id, question=question,
                   context=context or "", answer=reply.text,
                   sources=json.dumps(sources, ensure_ascii=False), declined=reply.declined,
                   gated=reply.gated, guarded=reply.guarded, fallback=reply.fallback,
                   why=(reply.why or "")[:200], generated=reply.generated or "",
                   latency_ms=None if latency_s is None else round(latency_s * 1000),
                   run=self.run)
        with self.engine.begin() as conn:
            return conn.execute(self.turns.insert().values(**row)).inserted_primary_key[0]

    def feedback(self, turn: int | str, value: int) -> bool:
        """The customer's 👍 (1) or 👎 (-1) on an answer, by row id or the door's reply id;
        False when there is no such answer."""
        if value not in (1, -1):
            raise ValueError(f"feedback is 1 or -1, not {value!r}")
        column = self.turns.c.id if isinstance(turn, int) else self.turns.c.reply_id
        with self.engine.begin() as conn:
            done = conn.execute(self.turns.update().where(column == turn).values(feedback=value))
        return done.rowcount > 0

    def forget(self, customer: str) -> int:
        """Delete one customer's conversations (by their id, as the door knew it); how many."""
        key = self.pseudonym(customer)
        if not key:
            return 0
        with self.engine.begin() as conn:
            return conn.execute(self.turns.delete().where(self.turns.c.customer == key)).rowcount

    def prune(self, keep_days: int) -> int:
        """Delete answers older than `keep_days` days; how many."""
        if keep_days < 1:
            raise UserError(f"--keep-days {keep_days}: keep at least 1 day")
        cutoff = datetime.now(timezone.utc) - timedelta(days=keep_days)
        with self.engine.begin() as conn:
            return conn.execute(self.turns.delete().where(self.turns.c.at < cutoff)).rowcount

    # Reading

    def rows(self, since: datetime | None = None, limit: int | None = None) -> list[dict]:
        """Answers, newest last, as dicts (sources parsed)."""
        from sqlalchemy import select

        query = select(self.turns).order_by(self.turns.c.id)
        if since is not None:
            query = query.where(self.turns.c.at >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["sources"] = json.loads(row["sources"] or "[]")
            if row["at"].tzinfo is None:  # SQLite keeps no zone: it was written in UTC
                row["at"] = row["at"].replace(tzinfo=timezone.utc)
        return rows

    def export(self, path: str | Path, fmt: str | None = None) -> int:
        """Questions, answers and feedback as CSV or JSONL (by `fmt` or the suffix), whole or
        not at all; the rows written."""
        from builder.data.tables import excel_safe

        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".").lower()
        if fmt not in ("csv", "jsonl"):
            raise UserError(f"{path}: export as csv or jsonl (--format), not {fmt!r}")
        rows = [{k: row[k] for k in EXPORT_COLUMNS} for row in self.rows()]
        for row in rows:
            row["at"] = row["at"].isoformat(timespec="seconds")
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with temp.open("w", encoding="utf-8", newline="") as f:
                if fmt == "jsonl":
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:  # for Excel: a BOM, formulas written as text, sources as one cell
                    f.write("\ufeff")
                    writer = csv.DictWriter(f, EXPORT_COLUMNS)
                    writer.writeheader()
                    for row in rows:
                        row["sources"] = "; ".join(str(s["line"]) for s in row["sources"])
                        writer.writerow({k: excel_safe(v) for k, v in row.items()})
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
        return len(rows)
