"""Guards the owner's figures (builder/owner/charts.py): the numbers counted from a conversation
log, and the PNG drawn from them."""

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from builder.answering.guard import Reply
from builder.answering.knowledge import Entry
from builder.owner.charts import draw, stats, summary
from builder.owner.log import ConversationLog


def hit(line: int, question: str):
    return SimpleNamespace(entry=Entry(line - 2, line, question, "", "답변입니다."))


SHIPPING, REFUND = hit(2, "배송비는 얼마인가요?"), hit(5, "환불은 어떻게 하나요?")


@pytest.fixture
def log(tmp_path):
    """A log of 9 answers: 6 today (4 answered, 2 declined; 2 👍, 1 👎), 2 answered 3 days
    ago, 1 declined 40 days ago (outside a 30-day window)."""
    log = ConversationLog(str(tmp_path / "conversations.db"), b"test-salt", run="shop")
    answers = [(SHIPPING, REFUND), (SHIPPING,), (SHIPPING,), (REFUND,)]
    for n, sources in enumerate(answers):
        log.record("page", f"c{n}", sources[0].entry.question, "",
                   Reply(text="답변입니다.", sources=list(sources)), reply_id=f"r{n}")
    for n in range(2):
        log.record("api", "c9", "내일 날씨는?", "", Reply(text="죄송합니다.", declined=True))
    log.feedback("r0", 1)
    log.feedback("r1", 1)
    log.feedback("r3", -1)
    now = datetime.now(UTC)
    for age, declined in ((3, False), (3, False), (40, True)):
        turn = log.record("kakao", "c8", "배송비?", "", Reply(text="답", declined=declined,
                                                          sources=[] if declined else [SHIPPING]))
        with log.engine.begin() as conn:
            conn.execute(log.turns.update().where(log.turns.c.id == turn)
                         .values(at=now - timedelta(days=age)))
    return log


def test_stats_count_questions_per_day_shares_feedback_and_the_entries_asked(log):
    """Per day (stacked answered/declined), the shares, 👍/👎, the top entries by first source."""
    numbers = stats(log, days=30)
    assert (numbers["questions"], numbers["answered"], numbers["declined"]) == (8, 6, 2)
    assert numbers["answered_share"] == pytest.approx(0.75)
    assert numbers["declined_share"] == pytest.approx(0.25)
    assert (numbers["likes"], numbers["dislikes"]) == (2, 1)
    assert len(numbers["per_day"]) == 30
    today = datetime.now().astimezone().date()
    by_day = {d["day"]: (d["answered"], d["declined"]) for d in numbers["per_day"]}
    assert by_day[today.isoformat()] == (4, 2)
    assert by_day[(today - timedelta(days=3)).isoformat()] == (2, 0)
    assert sum(a + d for a, d in by_day.values()) == 8  # the 40-day-old answer is out
    assert numbers["per_day"][-1]["day"] == numbers["to"] == today.isoformat()
    # an answer counts its first source only: the entry the question was matched to
    assert numbers["top_entries"] == [
        {"line": 2, "question": "배송비는 얼마인가요?", "count": 5},
        {"line": 5, "question": "환불은 어떻게 하나요?", "count": 1}]
    short = stats(log, days=1)
    assert (short["questions"], len(short["per_day"])) == (6, 1)
    assert "질문 questions **8**" in summary(numbers) and "(75%)" in summary(numbers)


def test_stats_list_the_most_asked_open_groups_and_an_empty_log_is_all_zeros(tmp_path, log):
    """The unanswered ranking comes from the inbox groups, most asked first, at most 10."""
    seen = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
    groups = [SimpleNamespace(question=f"질문 {n}", count=n, last_seen=seen) for n in range(1, 13)]
    numbers = stats(log, groups=groups)
    unanswered = numbers["unanswered"]
    assert numbers["open_groups"] == 12 and "open groups **12**" in summary(numbers)
    assert [g["count"] for g in unanswered] == list(range(12, 2, -1))
    assert unanswered[0] == {"question": "질문 12", "count": 12, "last_seen": "2025-05-01T09:30+00:00"}
    empty = stats(ConversationLog(str(tmp_path / "empty.db"), b"s"), days=7)
    assert (empty["questions"], empty["answered_share"], empty["top_entries"]) == (0, 0.0, [])
    assert [d["answered"] + d["declined"] for d in empty["per_day"]] == [0] * 7
    assert "질문이 없습니다" in summary(empty)


def test_draw_writes_a_whole_png_and_leaves_no_temp_file(tmp_path, log):
    """A complete PNG (IEND at its end) in place, nothing else in its folder; an empty log too."""
    groups = [SimpleNamespace(question="포장 선물 되나요?", count=3,
                              last_seen=datetime.now(UTC))]
    out = draw(stats(log, groups=groups), tmp_path / "charts" / "inbox.png")
    data = out.read_bytes()
    assert out == tmp_path / "charts" / "inbox.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND" and len(data) > 20_000
    assert [p.name for p in out.parent.iterdir()] == ["inbox.png"]
    empty = draw(stats(ConversationLog(str(tmp_path / "e.db"), b"s")), tmp_path / "empty.png")
    assert empty.read_bytes()[-8:-4] == b"IEND"
