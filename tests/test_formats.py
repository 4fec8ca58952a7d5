"""Guards the formats prepare reads: JSON/JSONL (Alpaca, Dolly, ShareGPT), folders, bad JSON."""

import csv
import json
from pathlib import Path

import pytest

from builder.doors.cli import main
from builder.data.prepare import prepare
from builder.errors import UserError
from builder.data.formats import CONTEXT_CHARS, read_any

QA = [
    ("배송은 얼마나 걸리나요?", "결제 후 1~2일 안에 출고됩니다."),
    ("배송비는 얼마인가요?", "3,000원이며 30,000원 이상 무료입니다."),
    ("교환은 어떻게 하나요?", "받으신 뒤 7일 안에 고객센터로 신청해 주세요."),
    ("환불은 언제 되나요?", "반품 도착 후 3영업일 안에 환불됩니다."),
    ("적립금은 언제 쌓이나요?", "구매 확정 후 결제 금액의 1%가 적립됩니다."),
    ("영업시간이 어떻게 되나요?", "평일 오전 10시부터 오후 6시까지입니다."),
    ("원두는 어떻게 보관하나요?", "밀폐 용기에 담아 서늘한 곳에 두세요."),
    ("카드 결제가 되나요?", "모든 국내 카드와 카카오페이를 받습니다."),
    ("회원 탈퇴는 어디서 하나요?", "마이페이지 아래쪽 회원 탈퇴 메뉴에서 하세요."),
    ("제주도도 배송되나요?", "네, 추가 배송비 3,000원이 붙습니다."),
    ("현금영수증 발급되나요?", "무통장입금 시 주문서에서 신청하세요."),
    ("선물 포장 되나요?", "주문서에서 선물 포장(2,000원)을 고르시면 됩니다."),
]


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def turns(*pairs, human="human", gpt="gpt", key_from="from", key_value="value"):
    """("q", "a"), ... -> ShareGPT turns; a lone string is one human turn."""
    out = []
    for pair in pairs:
        out.append({key_from: human, key_value: pair if isinstance(pair, str) else pair[0]})
        if not isinstance(pair, str):
            out.append({key_from: gpt, key_value: pair[1]})
    return out


# ---------------------------------------------------------------------------------------------
# Alpaca and Dolly


def test_alpaca_json_with_korean_keys(tmp_path):
    path = write_json(tmp_path / "faq.json", [{"질문": q, "답변": a} for q, a in QA])
    table = read_any(path)
    assert table.format == "alpaca" and table.delimiter == "json"
    assert table.column_map == {"instruction": "질문", "output": "답변"}
    assert [(r.instruction, r.output) for r in table.rows] == QA
    assert table.rows[2].where() == "record 3" and table.rows[2].line == 3


def test_jsonl_prompt_completion_and_a_data_wrapper(tmp_path):
    jsonl = write_jsonl(tmp_path / "faq.jsonl", [{"prompt": q, "completion": a} for q, a in QA])
    table = read_any(jsonl)
    assert table.rows[0].where() == "line 1" and table.rows[-1].output == QA[-1][1]
    wrapped = write_json(tmp_path / "wrapped.json", {"version": 2, "data": [
        {"instruction": q, "input": "주문번호 HR-7", "output": a} for q, a in QA[:3]]})
    rows = read_any(wrapped).rows
    assert [(r.line, r.input) for r in rows] == [(1, "주문번호 HR-7"), (2, "주문번호 HR-7"),
                                                 (3, "주문번호 HR-7")]


def test_dolly_context_becomes_input_and_categories_are_counted(tmp_path):
    records = [{"instruction": q, "context": "회원 등급: 골드" if i == 0 else "", "response": a,
                "category": "배송" if "배송" in q else "기타"} for i, (q, a) in enumerate(QA)]
    path = write_jsonl(tmp_path / "dolly.jsonl", records)
    report = prepare(path, tmp_path / "out", seed=3)
    assert report["format"] == "dolly" and report["rows_kept"] == 12
    assert report["categories"] == {"배송": 3, "기타": 9}
    assert report["extra_columns_ignored"] == [] and report["records_left_out"] == []
    with (tmp_path / "out" / "faq.csv").open(encoding="utf-8", newline="") as f:
        knowledge = list(csv.DictReader(f))
    assert list(knowledge[0]) == ["instruction", "input", "output", "line"]  # no category
    assert knowledge[0]["input"] == "회원 등급: 골드" and knowledge[5]["line"] == "6"


# ---------------------------------------------------------------------------------------------
# ShareGPT / KoVicuna


def test_sharegpt_pairs_carry_the_earlier_turns_as_context(tmp_path):
    system = [{"from": "system", "value": "당신은 커피 쇼핑몰 상담원입니다."}]
    path = write_json(tmp_path / "kovicuna.json", [
        {"id": "a1", "conversations": system + turns(QA[0], ("제주도는요?", QA[9][1]))},
        {"id": "a2", "messages": turns(QA[3], human="user", gpt="assistant",
                                       key_from="role", key_value="content")},
    ])
    table = read_any(path)
    assert table.format == "sharegpt"
    assert [(r.where(), r.instruction, r.input, r.output) for r in table.rows] == [
        ("record 1 pair 1", QA[0][0], "", QA[0][1]),
        ("record 1 pair 2", "제주도는요?", f"고객: {QA[0][0]}\n상담원: {QA[0][1]}", QA[9][1]),
        ("record 2 pair 1", QA[3][0], "", QA[3][1]),
    ]
    assert table.left_out == []
    assert table.conversations == {"records": 2, "pairs": 3, "context_chars": CONTEXT_CHARS,
                                   "contexts_cut": 0}


def test_long_conversation_context_is_cut_from_the_oldest_end(tmp_path):
    pairs = [(f"{i}번째 질문입니다. " + "가" * 60, f"{i}번째 답변입니다. " + "나" * 60)
             for i in range(1, 8)]
    path = write_jsonl(tmp_path / "long.jsonl", [{"conversations": turns(*pairs)}])
    table = read_any(path)
    last = table.rows[-1]
    assert last.pair == 7 and len(last.input) <= CONTEXT_CHARS
    assert last.input.endswith(f"상담원: {pairs[5][1]}")  # the latest turns stay
    assert "1번째 질문" not in last.input  # the oldest went first
    assert last.input.split("\n")[0].startswith(("고객: ", "상담원: "))  # whole turns only
    assert table.conversations["contexts_cut"] == sum(
        1 for r in table.rows if len(r.input) > 0 and "1번째 질문" not in r.input)
    assert table.conversations["contexts_cut"] >= 3


def test_broken_conversations_are_reported_with_what_was_kept(tmp_path):
    path = write_json(tmp_path / "chats.json", [
        {"conversations": turns(QA[0], QA[1])},  # fine
        {"conversations": turns(QA[2], "카드는요?", "현금은요?")},  # two questions in a row
        {"conversations": [{"from": "gpt", "value": "안녕하세요!"}] + turns(QA[3])},
        {"conversations": turns(QA[4], "그럼 언제요?")},  # ends without an answer
        {"conversations": [{"from": "bot", "value": "?"}]},
        {"title": "대화 없음"},
    ])
    table = read_any(path)
    assert [r.instruction for r in table.rows] == [QA[0][0], QA[1][0], QA[2][0], QA[4][0]]
    assert [(d["line"], d["pairs_kept"]) for d in table.left_out] == [
        (2, 1), (3, 0), (4, 1), (5, 0), (6, 0)]
    reasons = [d["reason"] for d in table.left_out]
    assert reasons[0] == ("turns 3 and 4 are both questions (human) with no answer between; "
                          "the 1 pair before it kept")
    assert reasons[1].startswith("turn 1 is an answer (gpt) with no question before it")
    assert reasons[2].startswith("it ends with a question (turn 3) that has no answer")
    assert "'bot'" in reasons[3] and "conversations" in reasons[4]


def test_prepare_reports_broken_conversations_by_record(tmp_path, capsys):
    good = [{"conversations": turns((q, a))} for q, a in QA]
    broken = {"conversations": turns(("포인트 조회는요?", "마이페이지에서 보세요."), "그럼 앱은요?")}
    path = write_json(tmp_path / "chats.json", good[:5] + [broken] + good[5:])
    out = tmp_path / "out"
    assert main(["prepare", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["rows_read"] == 13 and report["rows_kept"] == 13
    assert [(d["where"], d["pairs_kept"]) for d in report["records_left_out"]] == [("record 6", 1)]
    printed = capsys.readouterr().out
    assert "records left out or cut short: 1" in printed
    assert "record 6: it ends with a question (turn 3) that has no answer; the 1 pair before " \
           "it kept" in printed


# ---------------------------------------------------------------------------------------------
# Bad JSON


@pytest.mark.parametrize("data, expected", [
    ({"question": "배송?", "answer": "빨라요"}, "the top level is an object with keys 'question'"),
    ("배송은 빨라요", "the top level is a string, not a list of records"),
    (["배송?", "빨라요"], "the top level is a list with no record objects (its first item is a string)"),
    ({"train": [{"q": 1}], "test": [{"q": 2}]}, "holds 2 lists of records ('train', 'test')"),
    ([], "the top level is an empty list"),
], ids=["one-record", "string", "list-of-strings", "two-lists", "empty-list"])
def test_json_that_is_not_a_list_of_records_exits_2(tmp_path, capsys, data, expected):
    path = write_json(tmp_path / "shop.json", data)
    out = tmp_path / "out"
    assert main(["prepare", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "shop.json" in err and '[{"question": "...", "answer": "..."}' in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.json"]  # nothing written


@pytest.mark.parametrize("name, text, expected", [
    ("broken.json", '[\n {"질문": "배송?", "답변": "빨라요"},\n {"질문": "환불?" "답변": "3일"}\n]',
     "broken.json line 3 column 15: not valid JSON (Expecting ',' delimiter)"),
    ("lines.json", '{"질문": "배송?", "답변": "빨라요"}\n{"질문": "환불?", "답변": "3일"}\n',
     "name the file .jsonl"),
    ("list.jsonl", '[\n {"질문": "배송?", "답변": "빨라요"}\n]\n', "name it .json"),
    ("empty.json", "  \n", "empty.json is empty"),
], ids=["missing-comma", "jsonl-named-json", "json-named-jsonl", "empty"])
def test_broken_json_names_the_file_and_the_spot(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert main(["prepare", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_jsonl_line_that_is_not_json_is_reported_by_line(tmp_path):
    records = [{"question": q, "answer": a} for q, a in QA]
    path = write_jsonl(tmp_path / "faq.jsonl", records[:3] + ['{"question": "배송?",'] + records[3:]
                       + ['"그냥 문자열"'])
    report = prepare(path, tmp_path / "out")
    assert report["rows_read"] == 12 and report["rows_kept"] == 12
    assert report["records_left_out"] == [
        {"line": 4, "where": "line 4",
         "reason": "not JSON (Expecting property name enclosed in double quotes, column 20)"},
        {"line": 14, "where": "line 14", "reason": "a string, not a record object"},
    ]


def test_json_records_without_a_question_field(tmp_path):
    path = write_json(tmp_path / "menu.json", [{"이름": "라떼", "가격": 5000}])
    with pytest.raises(UserError) as err:
        read_any(path)
    assert str(err.value).startswith("menu.json: no question and no answer column. "
                                     "Found columns: '이름', '가격'. Each record needs")


# ---------------------------------------------------------------------------------------------
# Folders


def make_folder(root: Path) -> Path:
    """faqs/ with a CSV, an upper-case .JSON, a nested .Jsonl, and files that must be skipped."""
    faqs = root / "faqs"
    faqs.mkdir()
    with (faqs / "basic.Csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("질문", "답변")] + QA[:6])
    write_json(faqs / "0409 (2).JSON", [{"question": q, "answer": a} for q, a in QA[6:]]
               + [{"question": QA[1][0], "answer": QA[1][1]}])  # basic line 3 repeats record 7
    write_jsonl(faqs / "chats" / "kakao.Jsonl", [
        {"conversations": turns(("포인트는 어디서 보나요?", "마이페이지 > 포인트에서 보세요."))},
        {"conversations": turns((QA[2][0], "교환은 안 됩니다."))},  # conflicts with basic line 4
    ])
    write_json(faqs / ".git" / "config.json", [{"question": "숨은 질문", "answer": "숨은 답"}])
    write_json(faqs / "chats" / ".hidden.json", [{"question": "숨은 질문", "answer": "숨은 답"}])
    (faqs / ".DS_Store").write_bytes(b"\x00\x01binary")
    (faqs / "~$basic.xlsx").write_bytes(b"lock")
    (faqs / "notes.txt").write_text("메모", encoding="utf-8")
    return faqs


def test_folder_reads_every_faq_file_and_skips_hidden_ones(tmp_path):
    table = read_any(make_folder(tmp_path))
    assert [f["file"] for f in table.files] == ["0409 (2).JSON", "basic.Csv", "chats/kakao.Jsonl"]
    assert [f["format"] for f in table.files] == ["json (alpaca)", "csv", "jsonl (sharegpt)"]
    assert table.files_skipped == ["notes.txt"]
    assert "숨은 질문" not in {r.instruction for r in table.rows}
    assert [r.where() for r in table.rows][6:10] == ["0409 (2).JSON record 7",
        "basic.Csv line 2", "basic.Csv line 3", "basic.Csv line 4"]
    assert table.rows[-1].where() == "chats/kakao.Jsonl line 2 pair 1"


def test_prepare_on_a_folder_names_file_and_line(tmp_path, capsys):
    faqs = make_folder(tmp_path)
    out = tmp_path / "out"
    assert main(["prepare", str(faqs), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset", "faq.csv", "report.json", "test.csv", "train.csv"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["source_file"] == "faqs" and report["format"] == "folder"
    assert report["rows_read"] == 15 and report["rows_kept"] == 12
    assert report["dropped"] == [
        {"line": 3, "reason": "duplicate", "where": "basic.Csv line 3", "file": "basic.Csv",
         "duplicate_of": 7, "duplicate_of_where": "0409 (2).JSON record 7"},
        {"line": 4, "reason": "conflict", "where": "basic.Csv line 4", "file": "basic.Csv",
         "lines": [4, 2], "lines_where": ["basic.Csv line 4", "chats/kakao.Jsonl line 2 pair 1"]},
        {"line": 2, "reason": "conflict", "where": "chats/kakao.Jsonl line 2 pair 1",
         "file": "chats/kakao.Jsonl", "lines": [4, 2],
         "lines_where": ["basic.Csv line 4", "chats/kakao.Jsonl line 2 pair 1"]},
    ]
    # basic.Csv line 2 shares its line number with the conflicting kakao line 2 and is kept
    with (out / "faq.csv").open(encoding="utf-8", newline="") as f:
        knowledge = list(csv.DictReader(f))
    assert list(knowledge[0]) == ["instruction", "input", "output", "line", "file"]
    assert (QA[0][0], "2", "basic.Csv") in {(r["instruction"], r["line"], r["file"])
                                            for r in knowledge}
    printed = capsys.readouterr().out
    assert "faqs: 15 rows read (3 files), 12 kept" in printed
    assert "left out, duplicate: 1 (basic.Csv line 3)" in printed
    assert "different answers on basic.Csv line 4, chats/kakao.Jsonl line 2 pair 1" in printed
    assert "not read (not a FAQ file type): notes.txt" in printed


def test_folder_source_hash_follows_its_files(tmp_path):
    faqs = make_folder(tmp_path)
    first = prepare(faqs, tmp_path / "a")["source_sha256"]
    assert prepare(faqs, tmp_path / "b")["source_sha256"] == first
    (faqs / "notes.txt").write_text("다른 메모", encoding="utf-8")  # not read: same hash
    assert prepare(faqs, tmp_path / "c")["source_sha256"] == first
    write_jsonl(faqs / "more.jsonl", [{"question": "포장 되나요?", "answer": "네."}])
    assert prepare(faqs, tmp_path / "d")["source_sha256"] != first


@pytest.mark.parametrize("contents, expected", [
    ({}, "(it is empty)"),
    ({".DS_Store": "x", "readme.md": "# 안내", ".git/faq.csv": "질문,답변\n"},
     "(found only: readme.md)"),
])
def test_folder_without_faq_files_is_a_clear_error(tmp_path, capsys, contents, expected):
    faqs = tmp_path / "faqs"
    faqs.mkdir()
    for name, text in contents.items():
        (faqs / name).parent.mkdir(parents=True, exist_ok=True)
        (faqs / name).write_text(text, encoding="utf-8")
    assert main(["prepare", str(faqs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{faqs}: no FAQ files in this folder {expected}" in err and ".jsonl" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_bad_file_in_a_folder_is_named_with_its_path(tmp_path, capsys):
    faqs = make_folder(tmp_path)
    (faqs / "chats" / "bad.json").write_text('[{"질문": "배송?"', encoding="utf-8")
    assert main(["prepare", str(faqs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "faqs/chats/bad.json line 1 column 14: not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_a_generated_faq_file_never_runs_a_formula_and_reads_back_as_written(tmp_path):
    """CSV injection: a cell starting with = + - @ would run in Excel. The generated file
    escapes it with a leading ' (what Excel itself writes), and reading it takes that off."""
    from builder.data.faqgen import COLUMNS
    from builder.data.paraphrases import write_rows
    from builder.data.tables import read_table

    path = tmp_path / "faq.csv"
    rows = [("=HYPERLINK(\"http://evil.example\",\"클릭\")", "", "-5% 할인됩니다.", "doc.md"),
            ("배송비는 얼마인가요?", "", "@3,000원입니다.", "doc.md")]
    write_rows(rows, path, header=COLUMNS, excel=True)
    with path.open(encoding="utf-8", newline="") as f:
        raw = list(csv.reader(f))[1:]
    assert raw[0][0].startswith("'=HYPERLINK") and raw[0][2] == "'-5% 할인됩니다."
    assert raw[1][0] == "배송비는 얼마인가요?" and raw[1][2] == "'@3,000원입니다."
    table = read_table(path, path.read_bytes(), path.name)
    assert [(r.instruction, r.output) for r in table.rows] == [
        ("=HYPERLINK(\"http://evil.example\",\"클릭\")", "-5% 할인됩니다."),
        ("배송비는 얼마인가요?", "@3,000원입니다.")]


def test_json_nested_too_deeply_gets_a_clear_message_not_a_traceback(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / "faq.json"
    path.write_text(deep, encoding="utf-8")
    with pytest.raises(UserError, match="faq.json: JSON nested too deeply to read"):
        read_any(path)
    lines = tmp_path / "faq.jsonl"
    lines.write_text('{"question": "배송비는 얼마인가요?", "answer": "3,000원입니다."}\n' + deep + "\n",
                     encoding="utf-8")
    table = read_any(lines)
    assert len(table.rows) == 1  # the deep line is reported as a broken line, not a crash


def test_links_that_lead_out_of_a_faq_folder_are_skipped_and_named(tmp_path, capsys):
    """A link inside a FAQ folder never reads a file outside it; prepare names each one skipped."""
    faqs = tmp_path / "faqs"
    faqs.mkdir()
    write_json(faqs / "faq.json", [{"question": q, "answer": a} for q, a in QA])
    outside = tmp_path / "elsewhere"
    write_json(outside / "secret.json", [{"question": "비밀 질문", "answer": "비밀 답"}])
    (faqs / "secret.json").symlink_to(outside / "secret.json")
    (faqs / "shared").symlink_to(outside, target_is_directory=True)
    (faqs / "again.json").symlink_to(faqs / "faq.json")  # stays inside: read as usual
    table = read_any(faqs)
    assert "비밀 질문" not in {r.instruction for r in table.rows}
    assert [f["file"] for f in table.files] == ["again.json", "faq.json"]
    assert main(["prepare", str(faqs), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "not read, links that lead outside the folder: secret.json, shared" in printed
