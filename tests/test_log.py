"""Guards builder/owner/log.py: every answer stored whole, on SQLite and on a real PostgreSQL
server, under pseudonyms only; feedback, export, retention and one customer's deletion."""

import csv
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from builder.answering.guard import Reply
from builder.errors import UserError
from builder.owner.log import ConversationLog, engine_url

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RAW_ID = "kakao-botUserKey-8f3a77c2d1"  # what a messenger hands over: never stored as is


class _Hit:  # what a Reply's sources hold: .entry with id, line, question
    def __init__(self, id, line, question):
        self.entry = type("Entry", (), {"id": id, "line": line, "question": question})


def reply(text="기본 배송비는 3,000원입니다.", **flags) -> Reply:
    r = Reply(text=text, **flags)
    if not r.declined:
        r.sources = [_Hit(0, 2, "배송비는 얼마인가요?")]
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*args, **kwargs):
    """Run a PostgreSQL program as the postgres user (it refuses to run as root)."""
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, args)], check=True,
                          capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL 15 server in a temporary folder on a loopback port; its URL."""
    root = Path(tempfile.mkdtemp(prefix="builder-pg-"))  # (pytest's are the root user's alone)
    data = root / "data"
    shutil.chown(root, "postgres", "postgres")
    port = free_port()
    as_postgres(PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    as_postgres(PG_BIN / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "shop")
        yield f"postgresql://postgres@127.0.0.1:{port}/shop", port
    finally:
        as_postgres(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request, tmp_path, monkeypatch) -> ConversationLog:
    """An empty log on each database; both get the same tests."""
    monkeypatch.delenv("BUILDER_LOG_SALT", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    if request.param == "sqlite":
        return ConversationLog.for_run(run)
    url, _ = request.getfixturevalue("postgres")
    conversations = ConversationLog.for_run(run, url)
    with conversations.engine.begin() as conn:  # each test starts empty
        conn.execute(conversations.turns.delete())
        conn.execute(conversations.resolved.delete())
    return conversations


def test_an_answer_is_stored_whole_with_its_flags_and_feedback(log):
    """What the owner reads later: question, context, answer, sources, flags, latency, 👎."""
    first = log.record("api", RAW_ID, "배송비는?", "장바구니 27,000원", reply(), 0.84,
                       "chatcmpl-1")
    second = log.record("kakao", "", "주차 돼요?", "", reply("죄송합니다.", declined=True,
                                                              gated=True))
    guarded = reply(guarded=True, fallback=True, why="a fact in no entry",
                    generated="배송비는 9,999원입니다.")
    log.record("page", "session-1", "택배비는요?", "", guarded)
    assert second == first + 1
    assert log.feedback("chatcmpl-1", -1) and log.feedback(second, 1)
    assert not log.feedback("chatcmpl-nope", 1)
    rows = log.rows()
    assert [r["channel"] for r in rows] == ["api", "kakao", "page"]
    one = rows[0]
    assert (one["question"], one["context"], one["answer"]) == (
        "배송비는?", "장바구니 27,000원", "기본 배송비는 3,000원입니다.")
    assert one["sources"] == [{"id": 0, "line": 2, "question": "배송비는 얼마인가요?"}]
    assert one["latency_ms"] == 840 and one["feedback"] == -1 and one["reply_id"] == "chatcmpl-1"
    assert rows[1]["declined"] and rows[1]["gated"] and rows[1]["sources"] == []
    assert rows[1]["feedback"] == 1 and rows[1]["customer"] == ""
    assert rows[2]["guarded"] and rows[2]["why"] == "a fact in no entry"
    assert rows[2]["generated"] == "배송비는 9,999원입니다."
    assert all(r["at"].tzinfo is not None and
               abs(r["at"] - datetime.now(timezone.utc)) < timedelta(minutes=1) for r in rows)
    with pytest.raises(ValueError, match="channel"):
        log.record("fax", "", "?", "", reply())


def test_customers_are_pseudonyms_and_one_customers_conversations_can_be_deleted(log):
    """No raw id is stored; the same customer gets the same pseudonym; forget deletes theirs."""
    log.record("kakao", RAW_ID, "배송비는?", "", reply())
    log.record("kakao", RAW_ID, "제주도는요?", "", reply())
    log.record("kakao", "someone-else", "환불은?", "", reply())
    rows = log.rows()
    assert rows[0]["customer"] == rows[1]["customer"] != rows[2]["customer"]
    assert RAW_ID not in json.dumps([r["customer"] for r in rows])
    assert len(rows[0]["customer"]) == 32
    assert log.forget(RAW_ID) == 2 and log.forget("nobody") == 0
    assert [r["question"] for r in log.rows()] == ["환불은?"]


def test_retention_deletes_only_answers_older_than_the_days_kept(log):
    """--keep-days: older rows go, newer ones stay; 0 days is refused."""
    for question in ("오래된 질문", "지난달 질문", "오늘 질문"):
        log.record("api", "", question, "", reply())
    now = datetime.now(timezone.utc)
    with log.engine.begin() as conn:
        for turn, days in ((1, 100), (2, 20)):
            first = conn.execute(log.turns.select().order_by(log.turns.c.id)).all()[turn - 1]
            conn.execute(log.turns.update().where(log.turns.c.id == first.id)
                         .values(at=now - timedelta(days=days)))
    assert log.prune(keep_days=90) == 1
    assert [r["question"] for r in log.rows()] == ["지난달 질문", "오늘 질문"]
    assert log.prune(keep_days=7) == 1
    with pytest.raises(UserError, match="keep at least 1 day"):
        log.prune(keep_days=0)


def test_the_export_is_the_next_trainings_input_in_csv_and_jsonl(log, tmp_path):
    """Both formats hold question, answer and feedback; the CSV opens in Excel safely."""
    log.record("api", RAW_ID, "=HYPERLINK(\"http://x\")", "", reply(), 0.5, "chatcmpl-9")
    log.feedback("chatcmpl-9", -1)
    assert log.export(tmp_path / "log.jsonl") == 1
    row = json.loads((tmp_path / "log.jsonl").read_text(encoding="utf-8"))
    assert row["question"].startswith("=HYPERLINK") and row["feedback"] == -1
    assert row["answer"] == "기본 배송비는 3,000원입니다." and row["sources"][0]["line"] == 2
    assert log.export(tmp_path / "log.csv") == 1
    with (tmp_path / "log.csv").open(encoding="utf-8-sig", newline="") as f:
        cell = next(csv.DictReader(f))
    assert cell["question"].startswith("'=") and cell["sources"] == "2" and cell["feedback"] == "-1"
    with pytest.raises(UserError, match="csv or jsonl"):
        log.export(tmp_path / "log.xlsx")
    assert not (tmp_path / "log.xlsx").exists() and not list(tmp_path.glob(".log*"))


def test_answers_recorded_from_many_threads_are_all_there(log):
    """Several doors write at once (page, API workers): every row arrives, ids distinct."""
    def write(n):
        for i in range(10):
            log.record("api", f"c{n}", f"질문 {n}-{i}", "", reply())

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = log.rows()
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40


def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path):
    """A wrong --db says which one (password hidden), never a traceback."""
    with pytest.raises(UserError) as err:
        ConversationLog(f"postgresql://shop:s3cret@127.0.0.1:{free_port()}/shop", b"salt")
    assert "127.0.0.1" in str(err.value) and "s3cret" not in str(err.value)
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("log.db").startswith("sqlite:///") and engine_url("log.db").endswith("log.db")


def test_the_database_holds_no_raw_customer_id(tmp_path, postgres, monkeypatch):
    """Grep both databases whole (the SQLite file, a pg_dump): no raw id, only pseudonyms."""
    monkeypatch.delenv("BUILDER_LOG_SALT", raising=False)
    url, port = postgres
    run = tmp_path / "run"
    run.mkdir()
    for db in (None, url):
        conversations = ConversationLog.for_run(run, db)
        conversations.record("kakao", RAW_ID, "배송비는?", "", reply())
        conversations.engine.dispose()
    time.sleep(0.1)
    sqlite_bytes = b"".join(p.read_bytes() for p in run.glob("conversations.db*"))
    dump = as_postgres(PG_BIN / "pg_dump", "-h", "127.0.0.1", "-p", port, "shop").stdout
    for stored in (sqlite_bytes.decode("utf-8", "replace"), dump):
        assert "배송비는?" in stored and RAW_ID not in stored
    salt = (run / "log-salt")
    assert salt.stat().st_mode & 0o077 == 0  # the salt is the owner's alone
