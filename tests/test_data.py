"""Guards the data stage: encodings, header aliases, cleaning, duplicates, conflicts, bad files, split."""

import csv
import json
import math
import unicodedata
from pathlib import Path

import pytest

from builder.doors.cli import main
from builder.data.prepare import prepare, read_faq
from builder.errors import UserError

QA = [
    ("배송은 얼마나 걸리나요?", "", "결제 후 1~2일 안에 출고되고, 보통 출고 다음 날 받으실 수 있어요."),
    ("배송비는 얼마인가요?", "", "3,000원이며 30,000원 이상 구매하시면 무료입니다."),
    ("교환은 어떻게 하나요?", "", "상품을 받으신 뒤 7일 안에 고객센터로 신청해 주세요."),
    ("환불은 언제 되나요?", "", "반품 상품이 도착하면 3영업일 안에 결제 수단으로 환불됩니다."),
    ("적립금은 언제 쌓이나요?", "", "구매 확정 후 결제 금액의 1%가 적립됩니다."),
    ("영업시간이 어떻게 되나요?", "", "평일 오전 10시부터 오후 6시까지이며 주말은 쉽니다."),
    ("주문을 취소하고 싶어요.", "주문번호 HR-001", "출고 전이라면 마이페이지에서 바로 취소하실 수 있어요."),
    ("원두는 어떻게 보관하나요?", "", "밀폐 용기에 담아 서늘하고 어두운 곳에 두세요."),
    ("카드 결제가 되나요?", "", "모든 국내 카드와 카카오페이, 네이버페이를 받습니다."),
    ("회원 탈퇴는 어디서 하나요?", "", "마이페이지 아래쪽의 회원 탈퇴 메뉴에서 하실 수 있어요."),
    ("제주도도 배송되나요?", "", "네, 제주와 도서산간은 추가 배송비 3,000원이 붙습니다."),
    ("현금영수증 발급되나요?", "", "무통장입금 시 주문서에서 신청하시면 발급됩니다."),
]


def write_table(path: Path, header, rows, encoding="utf-8", delimiter=","):
    with path.open("w", encoding=encoding, newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def faq(tmp_path):
    return write_table(tmp_path / "faq.csv", ["instruction", "input", "output"], QA)


def read_split(out: Path) -> list[dict]:
    rows = []
    for name in ("train.csv", "test.csv"):
        with (out / name).open(encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def test_prepare_writes_complete_folder(faq, tmp_path):
    out = tmp_path / "prepared"
    report = prepare(faq, out, seed=7)
    assert sorted(p.name for p in out.iterdir()) == [
        "dataset", "faq.csv", "report.json", "test.csv", "train.csv"]
    assert report["rows_read"] == 12 and report["rows_kept"] == 12
    assert report["split"] == {"train": 10, "test": 2, "method": "train_test_split"}
    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert on_disk["source_sha256"] == report["source_sha256"] and len(report["source_sha256"]) == 64
    assert on_disk["seed"] == 7 and on_disk["source_file"] == "faq.csv"
    from datasets import load_from_disk

    dataset = load_from_disk(str(out / "dataset"))
    assert dataset["train"].column_names == ["instruction", "input", "output"]
    assert len(dataset["train"]) == 10 and len(dataset["test"]) == 2
    assert {r["instruction"] for r in read_split(out)} == {q for q, _, _ in QA}
    # the CSVs hold the dataset's splits, row for row, and no question is in both
    csv_questions = {}
    for split in ("train", "test"):
        with (out / f"{split}.csv").open(encoding="utf-8", newline="") as f:
            csv_questions[split] = [r["instruction"] for r in csv.DictReader(f)]
        assert dataset[split]["instruction"] == csv_questions[split], split
    assert not set(csv_questions["test"]) & set(csv_questions["train"])
    # faq.csv: every kept row (train and test) in the file's order, with its line in the file
    with (out / "faq.csv").open(encoding="utf-8", newline="") as f:
        knowledge = list(csv.DictReader(f))
    assert list(knowledge[0]) == ["instruction", "input", "output", "line"]
    assert [(r["instruction"], r["input"], r["output"], int(r["line"])) for r in knowledge] == [
        (q, i, a, line) for line, (q, i, a) in enumerate(QA, start=2)]


def test_prepare_refuses_an_out_that_is_a_file(faq, tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me", encoding="utf-8")
    assert main(["prepare", str(faq), "--out", str(taken)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert taken.read_text(encoding="utf-8") == "keep me"


def test_split_is_seeded_and_disjoint(tmp_path):
    rows = [(f"질문 {i}번은 무엇인가요?", "", f"답변 {i}번입니다.") for i in range(100)]
    faq = write_table(tmp_path / "big.csv", ["question", "answer"], [(q, a) for q, _, a in rows])
    a = prepare(faq, tmp_path / "a", seed=1)
    prepare(faq, tmp_path / "b", seed=1)
    c = prepare(faq, tmp_path / "c", seed=2, test_size=0.2)
    assert (a["split"]["train"], a["split"]["test"], c["split"]["train"], c["split"]["test"]) == (
        90, 10, 80, 20)
    assert (tmp_path / "a/test.csv").read_bytes() == (tmp_path / "b/test.csv").read_bytes()
    assert (tmp_path / "a/test.csv").read_bytes() != (tmp_path / "c/test.csv").read_bytes()
    train = {r["instruction"] for r in csv.DictReader((tmp_path / "a/train.csv").open())}
    test = {r["instruction"] for r in csv.DictReader((tmp_path / "a/test.csv").open())}
    assert not train & test and len(train | test) == 100


def test_split_is_the_notebooks_train_test_split(tmp_path):
    """No repeated question: exactly sklearn's train_test_split(rows, 0.1, random_state=42)."""
    from sklearn.model_selection import train_test_split

    rows = [(f"질문 {i}번은 무엇인가요?", "", f"답변 {i}번입니다.") for i in range(37)]
    faq = write_table(tmp_path / "faq.csv", ["instruction", "input", "output"], rows)
    assert main(["prepare", str(faq), "--out", str(tmp_path / "out"), "--seed", "42"]) == 0
    expected_train, expected_test = train_test_split(rows, test_size=0.1, random_state=42)

    def on_disk(name):
        with (tmp_path / "out" / name).open(encoding="utf-8", newline="") as f:
            return [(r["instruction"], r["input"], r["output"]) for r in csv.DictReader(f)]

    assert on_disk("train.csv") == expected_train and on_disk("test.csv") == expected_test
    report = json.loads((tmp_path / "out/report.json").read_text(encoding="utf-8"))
    assert report["split"] == {"train": 33, "test": 4, "method": "train_test_split"}


def test_repeated_questions_stay_on_one_side(tmp_path, capsys):
    """A question asked with different contexts: GroupShuffleSplit, never on both sides."""
    rows = []
    for i in range(20):
        for order in range(1 + i % 3):  # some questions once, some two or three times
            rows.append((f"{i}번 상품 배송은 언제 되나요?", f"주문번호 HR-{i:03d}-{order}",
                         f"{i}번 상품은 {order + 1}일 안에 출고됩니다."))
    faq = write_table(tmp_path / "faq.csv", ["instruction", "input", "output"], rows)
    assert main(["prepare", str(faq), "--out", str(tmp_path / "out"), "--seed", "42"]) == 0
    assert "GroupShuffleSplit" in capsys.readouterr().out
    report = json.loads((tmp_path / "out/report.json").read_text(encoding="utf-8"))
    assert report["split"]["method"] == "GroupShuffleSplit"
    assert report["split"]["train"] + report["split"]["test"] == len(rows)
    sides = {}
    for name in ("train.csv", "test.csv"):
        with (tmp_path / "out" / name).open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                sides.setdefault(" ".join(r["instruction"].split()), set()).add(name)
    assert len(sides) == 20 and all(len(s) == 1 for s in sides.values())
    assert any("test.csv" in s for s in sides.values())


def test_cp949_file_is_detected(tmp_path):
    faq = write_table(tmp_path / "excel.csv", ["질문", "답변"], [(q, a) for q, _, a in QA], "cp949")
    table = read_faq(faq)
    assert table.encoding == "cp949"
    assert table.rows[0].instruction == QA[0][0] and table.rows[0].output == QA[0][2]


def test_utf8_bom_file_is_read_without_bom_in_header(tmp_path):
    faq = write_table(tmp_path / "bom.csv", ["instruction", "input", "output"], QA, "utf-8-sig")
    table = read_faq(faq)
    assert table.encoding == "utf-8-sig" and table.column_map["instruction"] == "instruction"
    assert len(table.rows) == len(QA)


def test_utf16_tab_text_from_excel(tmp_path):
    faq = write_table(tmp_path / "unicode.txt", ["question", "answer"],
                      [(q, a) for q, _, a in QA], "utf-16", "\t")
    table = read_faq(faq)
    assert table.encoding == "utf-16" and table.delimiter == "tab"
    assert table.rows[-1].output == QA[-1][2]


def test_nfd_hangul_becomes_nfc_and_duplicates_collapse(tmp_path):
    nfd = unicodedata.normalize("NFD", QA[0][0])
    assert nfd != QA[0][0]
    rows = QA + [(nfd, "", QA[0][2]), ("  " + QA[1][0] + " ", "", QA[1][2].replace(" ", "  "))]
    faq = write_table(tmp_path / "mac.csv", ["instruction", "input", "output"], rows)
    report = prepare(faq, tmp_path / "out")
    assert report["rows_read"] == 14 and report["rows_kept"] == 12 and report["duplicates"] == 2
    dups = [d for d in report["dropped"] if d["reason"] == "duplicate"]
    assert [(d["line"], d["duplicate_of"]) for d in dups] == [(14, 2), (15, 3)]
    texts = {r["instruction"] for r in read_split(tmp_path / "out")}
    assert all(unicodedata.is_normalized("NFC", t) for t in texts)


def test_conflicting_answers_are_left_out_and_listed(tmp_path):
    rows = QA + [(QA[2][0], "", "교환은 불가능합니다.")]
    faq = write_table(tmp_path / "conflict.csv", ["instruction", "input", "output"], rows)
    report = prepare(faq, tmp_path / "out")
    assert report["rows_kept"] == 11
    assert report["conflicts"] == [
        {"question": QA[2][0], "lines": [4, 14], "answers": [QA[2][2], "교환은 불가능합니다."]}
    ]
    assert QA[2][0] not in {r["instruction"] for r in read_split(tmp_path / "out")}


def test_empty_cells_are_reported_with_line_numbers(tmp_path):
    # line 2 has a multi-line answer, so later rows sit on later file lines
    rows = [(QA[0][0], "", "첫 줄\n둘째 줄")] + QA[1:] + [("답이 없는 질문", "", ""),
                                                          ("", "", "질문이 없는 답"), ("", "", "")]
    faq = write_table(tmp_path / "gaps.csv", ["instruction", "input", "output"], rows)
    report = prepare(faq, tmp_path / "out")
    reasons = {d["line"]: d["reason"] for d in report["dropped"]}
    assert reasons == {15: "empty answer", 16: "empty question"}  # the blank row is no row
    assert report["rows_kept"] == 12


def test_header_aliases_and_extra_columns(tmp_path):
    dolly = write_table(tmp_path / "dolly.csv", ["instruction", "context", "response", "category"],
                        [(q, i, a, "faq") for q, i, a in QA])
    table = read_faq(dolly)
    assert table.column_map == {"instruction": "instruction", "input": "context", "output": "response"}
    assert table.extra_columns == ["category"]
    assert table.rows[6].input == "주문번호 HR-001"
    pc = write_table(tmp_path / "pc.tsv", ["Prompt", "Completion"], [(q, a) for q, _, a in QA],
                     delimiter="\t")
    assert read_faq(pc).rows[1].output == QA[1][2]


def test_xlsx_is_read(tmp_path):
    import pandas as pd

    path = tmp_path / "faq.xlsx"
    pd.DataFrame([(q, a) for q, _, a in QA], columns=["질문", "답변"]).to_excel(path, index=False)
    table = read_faq(path)
    assert table.encoding == "xlsx" and len(table.rows) == len(QA)
    assert table.rows[3].output == QA[3][2]


def test_long_rows_are_reported(tmp_path):
    rows = QA + [("아주 긴 답변이 필요한 질문", "", "가" * 400)]
    faq = write_table(tmp_path / "long.csv", ["instruction", "input", "output"], rows)
    report = prepare(faq, tmp_path / "out", max_length=100)
    assert [t["line"] for t in report["too_long"]] == [14]
    assert report["too_long"][0]["tokens"] > 100


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("empty.csv", b"", "is empty"),
        ("blank.csv", b"\n\n  \n", "is empty"),
        ("header_only.csv", "instruction,input,output\n".encode(), "no data rows"),
        ("wrong.csv", "이름,가격\n커피,3000\n".encode(), "no question and no answer column"),
        ("no_answer.csv", "question,comment\n배송?,빠름\n".encode(), "no answer column"),
        ("binary.csv", bytes(range(256)) * 4, "binary data"),
        ("latin.csv", "question,answer\n".encode() + b"\xff\xfe\xfa\x80\x81\n", "neither UTF-8"),
        ("broken.xlsx", b"PK\x03\x04 not really a zip", "cannot be read"),
    ],
)
def test_bad_files_give_one_clear_message_and_write_nothing(tmp_path, capsys, name, content,
                                                            expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "out"
    code = main(["prepare", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and name in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no staging folder left over


def test_wrong_columns_message_lists_found_and_accepted(tmp_path):
    path = write_table(tmp_path / "faq.csv", ["이름", "가격"], [("커피", "3000")])
    with pytest.raises(UserError) as err:
        read_faq(path)
    assert "'이름', '가격'" in str(err.value) and "질문,답변" in str(err.value)


def test_too_small_to_split(tmp_path):
    faq = write_table(tmp_path / "tiny.csv", ["question", "answer"], [(q, a) for q, _, a in QA[:4]])
    with pytest.raises(UserError, match="only 4 usable rows"):
        prepare(faq, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # many rows but one question (different contexts): nothing to put on the test side
    one = write_table(tmp_path / "one.csv", ["instruction", "input", "output"],
                      [("배송은 언제 되나요?", f"주문번호 {i}", f"{i}일 안에 출고됩니다.")
                       for i in range(12)])
    with pytest.raises(UserError, match="1 different question\\)"):
        prepare(one, tmp_path / "out")


def test_rerun_replaces_a_prepared_folder_but_not_a_foreign_one(faq, tmp_path):
    out = tmp_path / "out"
    prepare(faq, out, seed=1)
    prepare(faq, out, seed=2)
    assert json.loads((out / "report.json").read_text())["seed"] == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared data folder"):
        prepare(faq, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_prints_summary(faq, tmp_path, capsys):
    assert main(["prepare", str(faq), "--out", str(tmp_path / "out"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "12 rows read" in out and "train 10 / test 2" in out and "train_test_split" in out and "builder train" in out


def test_shipped_sample_faq_prepares_cleanly(tmp_path):
    sample = Path(__file__).parents[1] / "data" / "sample_faq.csv"
    report = prepare(sample, tmp_path / "out")
    assert report["rows_read"] >= 150 and report["rows_kept"] == report["rows_read"]
    assert report["split"]["test"] == math.ceil(report["rows_kept"] * 0.1)  # as scikit-learn rounds
    assert sum(1 for r in read_split(tmp_path / "out") if r["input"]) >= 10


def test_token_lengths_work_from_a_script_without_a_main_guard(faq, tmp_path):
    import subprocess
    import sys

    from builder.embedded import ensure_embedded_model

    ensure_embedded_model()
    script = f"from builder.data.prepare import prepare; r = prepare({str(faq)!r}, {str(tmp_path / 'o')!r}); " \
             "print(r['lengths']['unit'])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "embedded gemma-3 tokenizer" in done.stdout


def test_rows_from_documents_not_yet_reviewed_are_counted_and_named(tmp_path, capsys):
    """prepare tells the owner how many generated rows (a source column) nobody has checked
    yet and how to mark them; rows marked in the reviewed column, and a plain FAQ, say nothing."""
    marks = ["y", "", "n", "네", "", "o"] + [""] * 6
    rows = [(q, i, a, f"docs/notice.md#{n}", mark)
            for n, ((q, i, a), mark) in enumerate(zip(QA, marks), start=1)]
    faq = write_table(tmp_path / "faq.csv",
                      ["instruction", "input", "output", "source", "reviewed"], rows)
    report = prepare(faq, tmp_path / "out")
    assert report["not_reviewed"] == {"faq.csv": 9}
    assert main(["prepare", str(faq), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "9 rows came from documents and have not been reviewed: check them before training" \
        in printed
    assert 'write y in the "reviewed" column' in printed
    # a file from before the reviewed column: every row with a source counts
    old = write_table(tmp_path / "old.csv", ["instruction", "input", "output", "source"],
                      [r[:4] for r in rows])
    assert prepare(old, tmp_path / "out2")["not_reviewed"] == {"old.csv": 12}
    plain = write_table(tmp_path / "plain.csv", ["instruction", "input", "output"], QA)
    assert "not_reviewed" not in prepare(plain, tmp_path / "out3")


def test_added_files_rows_follow_the_faqs_through_the_same_checks(faq, tmp_path, capsys):
    """--add appends another file's rows (the inbox's answers) after the FAQ's, checks them with
    them (a duplicate, a conflict, an empty answer) and counts the rows of each file."""
    inbox = write_table(tmp_path / "inbox.csv", ["instruction", "input", "output"], [
        ("강아지 간식도 파나요?", "", "네, 강아지 쿠키를 5,000원에 팔아요."),
        QA[1],  # the FAQ's own row again: a duplicate
        ("카드 결제가 되나요?", "", "현금만 받아요."),  # another answer: a conflict
        ("주차 되나요?", "", ""),
    ])
    out = tmp_path / "prepared"
    assert main(["prepare", str(faq), "--out", str(out), "--add", str(inbox)]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["rows_read"] == 16 and report["rows_kept"] == 12
    assert report["from_files"] == [
        {"file": "faq.csv", "rows_read": 12, "rows_kept": 11},
        {"file": str(inbox), "rows_read": 4, "rows_kept": 1}]
    reasons = {(d.get("file", "faq.csv"), d["line"]): d["reason"] for d in report["dropped"]}
    assert reasons == {(str(inbox), 3): "duplicate", ("faq.csv", 10): "conflict",
                       (str(inbox), 4): "conflict", (str(inbox), 5): "empty answer"}
    with (out / "faq.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["instruction"] == "강아지 간식도 파나요?" and rows[-1]["file"] == str(inbox)
    assert rows[-1]["line"] == "2" and rows[0]["file"] == ""
    printed = capsys.readouterr().out
    assert f"rows kept per file: faq.csv 11 of 12, {inbox} 1 of 4" in printed
    assert f"{inbox} line 4" in printed  # the conflict is named in the file it is in
    alone = prepare(faq, tmp_path / "alone")
    assert alone["source_sha256"] != report["source_sha256"] and "from_files" not in alone
