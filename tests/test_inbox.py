"""Guards the owner's inbox (builder.owner.inbox, grouping, live): open answers grouped by
question, the three actions, the knowledge swapped into a running bot within seconds and safe
against a save killed at any point, and `builder inbox` on the command line."""

import csv
import shutil
import threading
import time

import pytest
from fixtures import left_staging, sample_knowledge, write_run

from builder.answering.guard import Reply
from builder.answering.knowledge import Hit, Knowledge, entries_sha256
from builder.config import Config
from builder.doors.cli import main
from builder.errors import UserError
from builder.owner.grouping import Asked, cluster, same_question
from builder.owner.inbox import answer, decline_is_right, inbox, map_to_entry
from builder.owner.live import add_rows, follow, knowledge_lock, version
from builder.owner.log import ConversationLog
from builder.training.pairs import read_pairs

DECLINE = "죄송합니다. 그 질문에는 답변드리기 어려워요. 고객센터(02-000-0000)로 문의해 주세요."
NEW = "네, 커피박으로 만든 강아지 쿠키를 5,000원에 판매하고 있어요."


@pytest.fixture(scope="module")
def kb():
    return sample_knowledge(30)  # lines 2-31 of the sample FAQ; no lexicon, no calibration


@pytest.fixture
def run(kb, tmp_path, monkeypatch):
    monkeypatch.delenv("BUILDER_DB", raising=False)
    return write_run(tmp_path / "run", config=Config(), knowledge=kb)


@pytest.fixture
def log(run):
    return ConversationLog.for_run(run)


def declined():
    return Reply(text=DECLINE, declined=True, gated=True)


def answered(kb, line, text, **flags):
    entry = next(e for e in kb.entries if e.line == line)
    return Reply(text=text, sources=[Hit(entry, 1.0, 1.0, 1.0)], **flags)


def fill(log, kb):
    """A day of a shop: two wordings of one unanswered question, another one, a 👎, a guard
    replacement, an answer from an entry that covers little of the question, fine answers."""
    for question in ["강아지 간식 팔아요?", "강아지 간식 팔아요?", "강아지 간식도 팔아요?",
                     "주차 되나요?"]:
        log.record("api", "c1", question, "", declined())
    disliked = log.record("page", "c2", "배송비 얼마예요?", "", answered(
        kb, 2, "기본 배송비는 3,000원입니다."))
    log.feedback(disliked, -1)
    log.record("kakao", "c3", "배송비 얼마예요?", "", answered(
        kb, 2, "기본 배송비는 3,000원입니다.", guarded=True, generated="배송비는 9,000원이에요."))
    log.record("web", "c4", "그라인더 환불은 며칠 걸려요?", "", answered(kb, 2, "3,000원입니다."))
    for _ in range(3):
        log.record("api", "c5", "택배사는 어디를 이용하나요?", "", answered(kb, 4, "CJ대한통운입니다."))


def by_question(groups):
    return {g.question: g for g in groups}


# Grouping


def test_questions_asking_the_same_thing_group_and_others_stay_apart(kb):
    """A paraphrase joins its question's group; a question about another thing, or asking
    another thing about the same one, does not."""
    asked = {q: Asked.of(q, kb) for q in [
        "배송비 얼마예요?", "배송비는 얼마인가요?", "반품 배송비는요?", "환불 언제 돼요?",
        "환불은 언제 처리되나요?", "원두 얼마예요?", "원두 어디서 사요?", "주문 취소하고 싶어요",
        "주문 변경하고 싶어요"]}
    same = [("배송비 얼마예요?", "배송비는 얼마인가요?"), ("환불 언제 돼요?", "환불은 언제 처리되나요?")]
    apart = [("배송비 얼마예요?", "반품 배송비는요?"), ("배송비 얼마예요?", "환불 언제 돼요?"),
             ("원두 얼마예요?", "원두 어디서 사요?"), ("주문 취소하고 싶어요", "주문 변경하고 싶어요")]
    for a, b in same:
        assert same_question(asked[a], asked[b]) and same_question(asked[b], asked[a]), (a, b)
    for a, b in apart:
        assert not same_question(asked[a], asked[b]), (a, b)
    texts = list(asked)
    groups = [[texts[i] for i in g] for g in cluster(list(asked.values()))]
    assert ["배송비 얼마예요?", "배송비는 얼마인가요?"] in groups
    assert ["환불 언제 돼요?", "환불은 언제 처리되나요?"] in groups and len(groups) == 7


def test_the_lexicon_makes_a_customers_word_the_faqs(kb, tmp_path):
    """택배비 is 배송비 once the run's knowledge carries the shipped lexicon."""
    from builder.answering.knowledge import knowledge_for

    with_lexicon = knowledge_for(kb.entries, Config().rag, calibrate=False, reuse=kb)
    a, b = Asked.of("배송비 얼마예요?", with_lexicon), Asked.of("택배비 얼마죠?", with_lexicon)
    assert same_question(a, b)
    assert not same_question(Asked.of("배송비 얼마예요?", kb), Asked.of("택배비 얼마죠?", kb))


def test_the_inbox_holds_the_open_answers_grouped_most_asked_first(run, log, kb):
    """Declined, guard-replaced, 👎 and weakly covered answers, grouped by question with their
    kinds, what the bot said and the entry behind the latest; fine answers stay out."""
    fill(log, kb)
    groups = inbox(run, log, kb)
    assert [g.question for g in groups] == ["강아지 간식 팔아요?", "배송비 얼마예요?",
                                            "그라인더 환불은 며칠 걸려요?", "주차 되나요?"]
    dog, fee, grinder, parking = groups
    assert dog.questions == ["강아지 간식 팔아요?", "강아지 간식도 팔아요?"] and dog.count == 3
    assert dog.kinds == {"declined": 3} and dog.answers == [DECLINE] and dog.best is None
    assert fee.kinds == {"guarded": 1, "disliked": 1} and fee.count == 2
    assert fee.answers == ["기본 배송비는 3,000원입니다."]
    assert fee.best == {"id": 0, "line": 2, "question": "배송비는 얼마인가요?",
                        "answer": kb.entries[0].answer}
    assert grinder.kinds == {"weak": 1} and parking.kinds == {"declined": 1}
    rows = {r["id"]: r for r in log.rows()}
    assert [rows[i]["question"] for i in dog.turns] == ["강아지 간식 팔아요?"] * 2 + [
        "강아지 간식도 팔아요?"]
    assert dog.last_seen == rows[dog.turns[-1]]["at"]
    assert len({g.key for g in groups}) == 4 and all(len(g.key) == 8 for g in groups)
    assert [g.key for g in inbox(run, log, kb)] == [g.key for g in groups]  # stable
    assert inbox(run, log, kb, days=0) == []


# The actions


def test_an_answer_becomes_an_faq_row_a_pair_and_the_knowledge_at_once(run, log, kb):
    """The owner's answer is a row in RUN/inbox/faq.csv and an entry of the run's knowledge;
    a 👎 or guard-replaced answer gives a pair `builder prefer --pairs` reads; the group leaves."""
    fill(log, kb)
    fee = by_question(inbox(run, log, kb))["배송비 얼마예요?"]
    done = answer(run, log, fee.key, "  기본 배송비는 3,000원이고 3만 원 이상 무료예요. ")
    assert done["entries"] == 31 and done["row"] == "added" and done["pairs"] == 2
    assert done["seconds"] < 10
    with (run / "inbox" / "faq.csv").open(encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == [["instruction", "input", "output"], [
            "배송비 얼마예요?", "", "기본 배송비는 3,000원이고 3만 원 이상 무료예요."]]
    pairs = read_pairs(run / "inbox" / "pairs.jsonl")
    assert [(p["prompt"], p["chosen"][:9], p["rejected"]) for p in pairs] == [
        ("배송비 얼마예요?", "기본 배송비는 3", "기본 배송비는 3,000원입니다."),
        ("배송비 얼마예요?", "기본 배송비는 3", "배송비는 9,000원이에요.")]
    knowledge = Knowledge.load(run / "knowledge")
    assert knowledge.entries[-1].question == "배송비 얼마예요?" and knowledge.entries[-1].line is None
    assert knowledge.entries[:30] == kb.entries
    assert knowledge.exact("배송비 얼마예요?").entry.answer.startswith("기본 배송비는 3,000원이고")
    assert "배송비 얼마예요?" not in by_question(inbox(run, log))
    with pytest.raises(UserError, match=f"no open group {fee.key}; `builder inbox"):
        answer(run, log, fee.key, "또 답변")
    with pytest.raises(UserError, match="empty"):
        answer(run, log, inbox(run, log)[0].key, "  ")


def test_mapping_makes_the_question_another_wording_of_an_entry(run, log, kb):
    """map: a row with the entry's answer and context; a line no entry has is named."""
    fill(log, kb)
    grinder = by_question(inbox(run, log, kb))["그라인더 환불은 며칠 걸려요?"]
    with pytest.raises(UserError, match="no FAQ entry on line 99 .*lines 2-31"):
        map_to_entry(run, log, grinder.key, 99)
    done = map_to_entry(run, log, grinder.key, 27)  # 환불은 언제 되나요?
    assert done["entries"] == 31 and "pairs" not in done
    entry = Knowledge.load(run / "knowledge").entries[-1]
    assert (entry.question, entry.answer) == ("그라인더 환불은 며칠 걸려요?", kb.entries[25].answer)
    rows = (run / "inbox" / "faq.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 2 and rows[1].startswith("그라인더 환불은 며칠 걸려요?,,")
    assert not (run / "inbox" / "pairs.jsonl").exists()
    assert "그라인더 환불은 며칠 걸려요?" not in by_question(inbox(run, log))


def test_a_resolved_group_leaves_and_what_comes_back(run, log, kb):
    """Every wording of a resolved group leaves. After "declining is right" a later decline of
    the same question stays out; after an answer a later 👎 of it is a new problem."""
    fill(log, kb)
    groups = by_question(inbox(run, log, kb))
    decline_is_right(run, log, groups["강아지 간식 팔아요?"].key)
    answer(run, log, groups["주차 되나요?"].key, "매장 옆 공영주차장을 이용해 주세요.")
    with log.engine.connect() as conn:
        resolved = [dict(r._mapping) for r in conn.execute(log.resolved.select())]
    assert [(r["question"], r["action"]) for r in resolved] == [
        ("강아지 간식 팔아요?", "decline"), ("강아지 간식도 팔아요?", "decline"),
        ("주차 되나요?", "answer")]
    assert resolved[0]["similarity"] == 1.0 and 0.9 < resolved[1]["similarity"] < 1.0
    assert set(by_question(inbox(run, log))) == {"배송비 얼마예요?", "그라인더 환불은 며칠 걸려요?"}

    log.record("api", "c9", "강아지 간식 팔아요?", "", declined())
    later = log.record("api", "c9", "주차 되나요?", "", answered(kb, 11, "공영주차장이요."))
    log.feedback(later, -1)
    after = by_question(inbox(run, log))
    assert "강아지 간식 팔아요?" not in after and after["주차 되나요?"].turns == [later]
    with pytest.raises(UserError, match="no open group nope1234"):
        decline_is_right(run, log, "nope1234")


# Live knowledge


class NoEngine:
    """FAQ answers word for word and declines need no generation."""
    name, encode, context_length = "none", None, None

    def stream(self, prompt, **options):
        raise AssertionError("nothing here should be generated")


def test_a_running_bot_answers_the_new_row_within_seconds(run, log, kb):
    """`follow` swaps the new knowledge into a running bot: the question it declined gets the
    owner's answer a few seconds after `answer` returns, without a restart."""
    from builder.answering.chatbot import Chatbot
    from builder.config import RagConfig
    from builder.prompts import load_template

    bot = Chatbot(NoEngine(), load_template("korean"), knowledge=Knowledge.load(run / "knowledge"),
                  rag=RagConfig())
    assert bot.reply("반려견 간식도 판매하나요?").declined
    log.record("api", "c1", "반려견 간식도 판매하나요?", "", declined())
    stop = threading.Event()
    thread = follow(bot, run, interval_s=0.2, stop=stop)
    try:
        started = time.perf_counter()
        done = answer(run, log, inbox(run, log)[0].key, NEW)
        while bot.reply("반려견 간식도 판매하나요?").text != NEW:
            assert time.perf_counter() - started < 10, "the bot did not answer the new row"
            time.sleep(0.05)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and done["seconds"] < seconds < 10
    assert len(bot.knowledge.entries) == 31
    print(f"inbox answer -> the bot answers it: {seconds:.2f} s (rebuild {done['seconds']} s)")


def test_a_bot_given_to_the_action_answers_from_the_new_knowledge_at_once(run, log, kb):
    """answer(..., bot=bot): the page's own bot has the new row when the call returns."""
    from builder.answering.chatbot import Chatbot
    from builder.config import RagConfig
    from builder.prompts import load_template

    bot = Chatbot(NoEngine(), load_template("korean"), knowledge=kb, rag=RagConfig())
    log.record("api", "c1", "반려견 간식도 판매하나요?", "", declined())
    answer(run, log, inbox(run, log, bot.knowledge)[0].key, NEW, bot=bot)
    assert bot.reply("반려견 간식도 판매하나요?").text == NEW


def test_follow_keeps_the_old_knowledge_while_a_new_one_cannot_be_read(run, kb, caplog):
    """A version that fails to load leaves the bot on the one it has, with a warning, and the
    next good version is taken: nothing is raised into the server."""
    from builder.answering.chatbot import Chatbot
    from builder.config import RagConfig
    from builder.prompts import load_template

    bot = Chatbot(NoEngine(), load_template("korean"), knowledge=kb, rag=RagConfig())
    stop = threading.Event()
    thread = follow(bot, run, interval_s=0.1, stop=stop)
    try:
        broken = run / "knowledge.broken"
        broken.mkdir()
        shutil.copy(run / "knowledge" / "index.json", broken / "index.json")  # nothing else
        shutil.rmtree(run / "knowledge")
        broken.rename(run / "knowledge")
        deadline = time.perf_counter() + 10
        while "not read yet" not in caplog.text:
            assert time.perf_counter() < deadline
            time.sleep(0.05)
        assert bot.knowledge is kb and thread.is_alive()
        with knowledge_lock(run):
            shutil.rmtree(run / "knowledge")
            kb.save(run / "knowledge")
            add_rows(run, [("반려견 간식도 판매하나요?", "", NEW)])
        while len(bot.knowledge.entries) != 31:
            assert time.perf_counter() < deadline
            time.sleep(0.05)
        assert bot.knowledge.entries[-1].answer == NEW and thread.is_alive()
    finally:
        stop.set()
        thread.join(5)


def test_a_save_killed_between_its_two_renames_leaves_a_readable_knowledge(run, kb):
    """knowledge/ gone and knowledge.old there (a kill between replace_dir's renames): loading
    reads knowledge.old, and the next update succeeds and removes it."""
    (run / "knowledge").rename(run / "knowledge.old")
    assert Knowledge.load(run / "knowledge").entries == kb.entries
    assert version(run / "knowledge") is None  # a follower waits for the next version
    from builder.run import Run

    assert Run(run).has_knowledge()  # so a server can start on it too (load_chatbot)
    with knowledge_lock(run):
        knowledge, done = add_rows(run, [("반려견 간식도 판매하나요?", "", NEW)])
    assert done["entries"] == 31 and knowledge.entries[-1].answer == NEW
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("knowledge")) == ["knowledge"]
    assert Knowledge.load(run / "knowledge").entries == knowledge.entries


def test_staging_a_killed_update_left_does_not_stop_the_next(run):
    """A .knowledge-* folder a killed update left is removed by the next one; one a running
    update is writing stays."""
    stale, live = left_staging(run, ".knowledge-")
    with knowledge_lock(run):
        _, done = add_rows(run, [("반려견 간식도 판매하나요?", "", NEW)])
    assert done["entries"] == 31 and not any(p.exists() for p in stale) and live.exists()


def test_a_reader_never_sees_half_an_index_while_saves_swap_versions(kb, tmp_path):
    """Loads made while another thread keeps swapping two versions in each read one version
    whole: its entries, embeddings and index.json agree."""
    from builder.answering.knowledge import Entry

    other = Knowledge(kb.entries[:29] + [Entry(29, None, "반려견 간식도 판매하나요?", "", NEW)],
                      kb.bm25, kb.dense, dict(kb.settings), kb.lexicon)
    other.settings["entries_sha256"] = entries_sha256(other.entries)
    folder = kb.save(tmp_path / "knowledge")
    stop, saves = threading.Event(), []

    def swap():
        while not stop.is_set():
            (other if len(saves) % 2 else kb).save(folder)
            saves.append(1)

    writer = threading.Thread(target=swap)
    writer.start()
    try:
        for _ in range(40):
            loaded = Knowledge.load(folder)
            assert entries_sha256(loaded.entries) == loaded.settings["entries_sha256"]
            assert loaded.dense.shape[0] == len(loaded.entries) == 30
    finally:
        stop.set()
        writer.join()
    assert len(saves) > 5


def test_updates_of_one_run_wait_for_each_other(run):
    """The run's knowledge lock: a second writer waits, and names the lock when it gives up."""
    with (knowledge_lock(run), pytest.raises(UserError, match=r"\.knowledge\.lock: another"),
          knowledge_lock(run, wait_s=0.3)):
        pass
    with knowledge_lock(run, wait_s=0.3):  # released when its holder is done
        pass


# The command line


def test_builder_inbox_lists_answers_maps_and_declines(run, log, kb, capsys):
    """`builder inbox RUN` lists the groups; answer / map / decline act on a key and say what
    they did and how long the update took; a wrong key or line is one clear error."""
    fill(log, kb)
    assert main(["inbox", str(run)]) == 0
    listed = capsys.readouterr().out
    groups = by_question(inbox(run, log))
    dog, fee = groups["강아지 간식 팔아요?"], groups["배송비 얼마예요?"]
    assert "4 open groups," in listed and f"{dog.key}  3x" in listed
    assert "(declined 3)" in listed and "Q: 강아지 간식 팔아요?" in listed
    assert "     강아지 간식도 팔아요?" in listed and "from FAQ line 2: 배송비는 얼마인가요?" in listed

    assert main(["inbox", "answer", str(run), dog.key, NEW]) == 0
    said = capsys.readouterr().out
    assert f"{dog.key}: row added in {run}/inbox/faq.csv; the knowledge has 31 entries" in said
    assert "updated in" in said
    assert f"next training: builder prepare FAQ --add {run}/inbox/faq.csv --out DIR" in said

    assert main(["inbox", "map", str(run), fee.key, "2"]) == 0
    assert "the knowledge has 32 entries" in capsys.readouterr().out
    assert main(["inbox", "decline", str(run), dog.key]) == 2
    assert f"error: no open group {dog.key}" in capsys.readouterr().err
    parking = by_question(inbox(run, log))["주차 되나요?"]
    assert main(["inbox", "decline", str(run), parking.key, "--days", "7"]) == 0
    assert "declining was right" in capsys.readouterr().out
    assert main(["inbox", "--db", str(run / "conversations.db"), str(run)]) == 0
    assert "1 open group," in capsys.readouterr().out


def test_builder_index_keeps_the_inbox_rows_and_waits_for_an_inbox_update(run, log, kb, tmp_path):
    """Re-indexing the FAQ file keeps the rows the owner wrote in the inbox (an inbox answer
    to a question the file has replaces that answer), and waits for the run's lock."""
    from builder.answering.indexing import index_run

    fill(log, kb)
    answer(run, log, by_question(inbox(run, log, kb))["주차 되나요?"].key, "공영주차장을 이용해 주세요.")
    faq = tmp_path / "faq.csv"
    with faq.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([(e.question, e.context, e.answer) for e in kb.entries[:20]])
    done = index_run(run, faq, log=lambda *_: None)
    entries = Knowledge.load(run / "knowledge").entries
    assert done["entries"] == 21 and done["inbox_rows"] == 1
    assert entries[-1].question == "주차 되나요?" and entries[-1].answer == "공영주차장을 이용해 주세요."
    started = threading.Event()

    def index_again():
        started.set()
        index_run(run, faq, log=lambda *_: None)

    with knowledge_lock(run):
        other = threading.Thread(target=index_again)
        other.start()
        started.wait(5)
        time.sleep(0.5)
        assert other.is_alive()  # waiting for the inbox update that holds the lock
    other.join(120)
    assert not other.is_alive()
