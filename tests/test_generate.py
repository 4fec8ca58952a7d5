"""Guards builder/data/paraphrases.py: paraphrases from a loopback OpenAI-compatible server, only for
train.csv questions, the key sent only when set and never shown, and one-line errors."""

import csv
import json
import os
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest

from builder.doors.cli import main
from builder.data.paraphrases import clean_paraphrases, load_prompt, parse_reply, render_prompt
from fixtures import QuietHandler

FENCED_Q = "배송은 얼마나 걸리나요?"
LINES_Q = "반품 배송비는 얼마인가요?"
BROKEN_Q = "적립금은 언제 들어오나요?"
TEST_Q = "해외 배송도 되나요?"
SECRET = "sk-loopbackSECRET" + os.urandom(8).hex()  # distinctive, so a leak is easy to grep

REPLIES = {
    # fenced JSON with a copy of the question, a duplicate, an empty, an overlong one and a test
    # question: only the first two survive
    FENCED_Q: "```json\n" + json.dumps(
        ["배송 얼마나 걸려?", FENCED_Q, "배송기간 얼마임", "배송 얼마나 걸려?", "  ",
         "배송" * 40, TEST_Q], ensure_ascii=False) + "\n```",
    LINES_Q: "다음은 바꿔 쓴 질문입니다:\n1. 반품비 얼마\n- 반품 배송비 얼마에여\n\n반품하면 배송비 얼마?",
    BROKEN_Q: '["적립금 언제 들어와?", "적립',
}


class FakeChat(QuietHandler):
    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if server.status != 200:
            # echoes the header back, as a careless server might: the CLI must still hide it
            echo = self.headers.get("Authorization", "")
            return self.send_json(server.status, {"error": {"message": f"bad request {echo}"}})
        prompt = body["messages"][-1]["content"]
        question = prompt.rsplit("FAQ 질문:", 1)[1].strip()
        content = REPLIES.get(question, "[]")
        self.send_json(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": content}}]})



@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    server.requests, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def write_split(path, questions):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("instruction", "input", "output"))
        writer.writerows((q, "", f"{q}에 대한 답입니다.") for q in questions)


@pytest.fixture
def prepared(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_split(folder / "train.csv", [FENCED_Q, LINES_Q, BROKEN_Q])
    write_split(folder / "test.csv", [TEST_Q])
    (folder / "report.json").write_text("{}", encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("SHOP_LLM_KEY", raising=False)


def generate(folder, url, *extra):
    return main(["generate", "--paraphrases", str(folder), "--endpoint", url,
                 "--model", "qwen-test", *extra])


def read_rows(folder):
    with (folder / "paraphrases.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["question", "paraphrase"]
        return [tuple(row) for row in reader]


# ---------------------------------------------------------------------------------------------
# Pure


def test_shipped_prompt_has_its_placeholders_and_asks_for_json():
    prompt = render_prompt(load_prompt(), FENCED_Q, 4)
    assert "{n}" not in prompt and "{question}" not in prompt
    assert FENCED_Q in prompt and "4" in prompt and "JSON" in prompt


def test_parse_reply_reads_fences_and_lines_and_rejects_broken_json():
    assert parse_reply(REPLIES[FENCED_Q])[0] == "배송 얼마나 걸려?"
    assert parse_reply(REPLIES[LINES_Q]) == ["반품비 얼마", "반품 배송비 얼마에여", "반품하면 배송비 얼마?"]
    assert parse_reply(REPLIES[BROKEN_Q]) is None
    assert parse_reply('{"paraphrases": ["a"]}') is None
    assert parse_reply("   ") is None


def test_clean_drops_copies_duplicates_empties_overlong_and_test_questions():
    items = parse_reply(REPLIES[FENCED_Q])
    assert clean_paraphrases(items, FENCED_Q, 3, frozenset({TEST_Q})) == [
        "배송 얼마나 걸려?", "배송기간 얼마임"]
    assert clean_paraphrases(["a", "b", "c"], "질문이에요", 2) == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Through the CLI


def test_writes_train_paraphrases_only_and_reports_the_unreadable_reply(prepared, chat_server,
                                                                        capsys):
    assert generate(prepared, chat_server.url) == 0
    out = capsys.readouterr().out

    assert read_rows(prepared) == [
        (FENCED_Q, "배송 얼마나 걸려?"), (FENCED_Q, "배송기간 얼마임"),
        (LINES_Q, "반품비 얼마"), (LINES_Q, "반품 배송비 얼마에여"), (LINES_Q, "반품하면 배송비 얼마?"),
    ]
    asked = [r["body"]["messages"][-1]["content"] for r in chat_server.requests]
    assert len(asked) == 3 and not any(TEST_Q in prompt for prompt in asked)
    assert {r["path"] for r in chat_server.requests} == {"/v1/chat/completions"}
    body = chat_server.requests[0]["body"]
    assert body["model"] == "qwen-test" and "temperature" in body
    assert "skipped train.csv line 4" in out
    assert "wrote 5 paraphrases for 2 of 3 questions" in out
    assert "3/3 questions" in out
    # written atomically: no temp file left beside it
    assert sorted(p.name for p in prepared.iterdir()) == [
        "paraphrases.csv", "report.json", "test.csv", "train.csv"]


def test_key_sent_only_when_set_and_never_shown(prepared, chat_server, capsys, monkeypatch):
    assert generate(prepared, chat_server.url, "--api-key-env", "SHOP_LLM_KEY") == 0
    assert all("authorization" not in {k.lower() for k in r["headers"]}
               for r in chat_server.requests)

    chat_server.requests.clear()
    monkeypatch.setenv("SHOP_LLM_KEY", SECRET)
    assert generate(prepared, chat_server.url, "--api-key-env", "SHOP_LLM_KEY") == 0
    assert [r["headers"].get("Authorization") for r in chat_server.requests] == [
        f"Bearer {SECRET}"] * 3
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in (prepared / "paraphrases.csv").read_text(encoding="utf-8")


def test_refused_key_exits_2_naming_the_variable_not_the_key(prepared, chat_server, capsys,
                                                              monkeypatch):
    chat_server.status = 401
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert generate(prepared, chat_server.url) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "401" in err and "OPENAI_API_KEY" in err, err
    assert SECRET not in captured.out + captured.err
    assert not (prepared / "paraphrases.csv").exists()


def test_other_http_errors_show_the_status_but_not_an_echoed_key(prepared, chat_server, capsys,
                                                                  monkeypatch):
    chat_server.status = 500
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert generate(prepared, chat_server.url) == 2
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "bad request" in err, err
    assert SECRET not in err


def test_server_down_names_the_url_and_what_must_run(prepared, capsys):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert generate(prepared, url) == 2
    err = capsys.readouterr().err
    assert f"{url}/chat/completions" in err and "OpenAI-compatible" in err, err
    assert "Traceback" not in err


def test_limit_asks_only_the_first_questions_and_rerun_replaces(prepared, chat_server, capsys):
    assert generate(prepared, chat_server.url) == 0
    assert len(read_rows(prepared)) == 5

    chat_server.requests.clear()
    assert generate(prepared, chat_server.url, "--limit", "1", "--n", "1") == 0
    assert len(chat_server.requests) == 1
    assert read_rows(prepared) == [(FENCED_Q, "배송 얼마나 걸려?")]
    assert "wrote 1 paraphrases for 1 of 1 questions" in capsys.readouterr().out


def test_fails_when_every_reply_is_unreadable(tmp_path, chat_server, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_split(folder / "train.csv", [BROKEN_Q])
    (folder / "report.json").write_text("{}", encoding="utf-8")
    assert generate(folder, chat_server.url) == 2
    assert "no paraphrases" in capsys.readouterr().err
    assert not (folder / "paraphrases.csv").exists()


def test_not_a_prepared_folder_names_it_and_the_prepare_command(tmp_path, chat_server, capsys):
    assert generate(tmp_path, chat_server.url) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "builder prepare" in err, err
    assert chat_server.requests == []
