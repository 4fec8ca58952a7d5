"""Guards builder/training/raft.py: grounded rows show the right entry; near misses and off-topic decline."""

import random
from dataclasses import replace

import pytest

from builder.config import RagConfig
from builder.answering.knowledge import Entry, Hit, Knowledge
from builder.prompts import load_template
from builder.training.raft import find_entry, grounded_rows, with_entry
from fixtures import sample_rows

N_ROWS = 30
RAG = RagConfig()
TEMPLATE = load_template("korean")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return sample_rows(N_ROWS)


@pytest.fixture(scope="module")
def kb(rows) -> Knowledge:
    entries = [Entry(i, i + 2, r["instruction"], r["input"], r["output"])
               for i, r in enumerate(rows)]
    return Knowledge.build(entries, calibrate=False)


@pytest.fixture(scope="module")
def grounded(rows, kb) -> list[dict]:
    return grounded_rows(rows, kb, TEMPLATE, RAG, seed=7)


def block(entry: Entry) -> str:
    return TEMPLATE.render_faq([entry])


def test_one_row_per_faq_row_plus_off_topic_rows(grounded, rows):
    kinds = [r["kind"] for r in grounded]
    assert kinds.count("off_topic") == round(N_ROWS * RAG.off_topic_share) == 3
    assert kinds.count("answer") + kinds.count("near_miss") == N_ROWS
    assert 0 < kinds.count("near_miss") < kinds.count("answer")
    assert sorted(r["entry"] for r in grounded if r["kind"] != "off_topic") == list(range(N_ROWS))
    for row in grounded:  # each shows rag.k entries and keeps the customer's context
        assert row["faq"].count("질문: ") == RAG.k, row
        if row["kind"] != "off_topic":
            assert row["input"] == rows[row["entry"]]["input"]


def test_answer_rows_show_their_own_entry_and_answer_it(grounded, kb, rows):
    answers = [r for r in grounded if r["kind"] == "answer"]
    for row in answers:
        entry = kb.entries[row["entry"]]
        assert block(entry) in row["faq"], row
        assert row["output"] == entry.answer == rows[row["entry"]]["output"]


def test_near_miss_rows_hide_their_entry_and_decline(grounded, kb):
    near_misses = [r for r in grounded if r["kind"] == "near_miss"]
    for row in near_misses:
        entry = kb.entries[row["entry"]]
        assert block(entry) not in row["faq"] and entry.answer not in row["faq"], row
        assert row["output"] == RAG.decline_message


def test_off_topic_rows_decline_questions_from_the_shipped_list(grounded, rows, kb):
    from builder.answering.gate import off_topic_questions

    pool = set(off_topic_questions())
    for row in (r for r in grounded if r["kind"] == "off_topic"):
        assert row["instruction"] in pool and row["entry"] == -1
        assert row["output"] == RAG.decline_message and row["faq"]
    without = grounded_rows(rows[:5], kb, TEMPLATE, RAG, seed=7, off_topic=False)
    assert len(without) == 5 and "off_topic" not in {r["kind"] for r in without}


def test_original_share_decides_whether_the_faq_wording_is_kept(rows, kb):
    kept = grounded_rows(rows, kb, TEMPLATE, replace(RAG, original_share=1.0), seed=3)
    rewritten = grounded_rows(rows, kb, TEMPLATE, replace(RAG, original_share=0.0), seed=3)
    for out, same in ((kept, True), (rewritten, False)):
        for row in out:
            if row["kind"] != "off_topic":
                assert (row["instruction"] == rows[row["entry"]]["instruction"]) is same, row


def test_rows_are_deterministic_for_a_seed(rows, kb, grounded):
    assert grounded_rows(rows, kb, TEMPLATE, RAG, seed=7) == grounded
    assert grounded_rows(rows, kb, TEMPLATE, RAG, seed=8) != grounded


def test_find_entry_ignores_spacing_and_with_entry_puts_a_missed_entry_in(kb, rows):
    row = dict(rows[4], instruction="  " + rows[4]["instruction"].replace(" ", "  "))
    assert find_entry(kb, row) == kb.entries[4]
    assert find_entry(kb, dict(rows[4], output="다른 답변")) is None

    hits = [Hit(kb.entries[i], 0.0, 0.0, 0.0) for i in (0, 1, 2)]
    assert with_entry(hits, kb.entries[1], 3, random.Random(0)) == kb.entries[:3]  # already there
    for seed in range(5):
        shown = with_entry(hits, kb.entries[9], 3, random.Random(seed))
        assert len(shown) == 3 and kb.entries[9] in shown and kb.entries[2] not in shown
