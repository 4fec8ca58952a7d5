"""Guards the web app through its real HTTP API (gradio_client): data report, errors, training, chat, the
conversation log and the inbox, Hub pushes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures import free_port

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "data" / "sample_faq.csv"
MAX_UPLOAD_MB = 0.2  # small, so the size check is cheap to reach
BUSY = "already in progress"


# Helpers shared with test_browser.py


def start_app(tmp: Path, *flags: str, timeout: float = 90,
              env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`python app.py --port FREE --runs-root TMP/runs FLAGS`, once it answers HTTP.

    It inherits HF_ENDPOINT / HF_HUB_DISABLE_XET / HF_HOME from conftest (the loopback Hub), and
    `env` on top; never the caller's HF_TOKEN or page password."""
    port = free_port()
    log = (tmp / f"app-{port}.log").open("w")
    env = {**{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "BUILDER_APP_PASSWORD")},
           **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--runs-root",
         str(tmp / "runs"), *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{Path(log.name).read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                stop_app(proc)
                pytest.fail(f"app.py did not answer in {timeout} s:\n{Path(log.name).read_text()}")
            time.sleep(0.5)


def stop_app(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # closes the server and any training subprocess
    try:
        proc.wait(timeout=60)  # a clean exit takes seconds, more on a loaded 2-core machine
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_faq(path: Path, n_rows: int, extra_rows=()) -> Path:
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[: n_rows + 1]  # header + n rows
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows + list(extra_rows))
    return path


def value(output):
    """A component's value from gradio_client: plain, or inside an update dict."""
    return output.get("value") if isinstance(output, dict) and "__type__" in output else output


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def title_of(message: dict) -> str:
    """A chat message's collapsible title ("" for a plain message)."""
    return (message.get("metadata") or {}).get("title") or ""


def has_hangul(text: str) -> bool:
    return any("가" <= ch <= "힣" for ch in text)


# The app, started once for the module


@pytest.fixture(scope="module")
def app(tmp_path_factory, hub_server):
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("app")
    config = yaml.safe_load((ROOT / "configs" / "embedded-cpu.yaml").read_text(encoding="utf-8"))
    config["train"].update(max_steps=2, eval_steps=1, batch_size=2, grad_accum=1)
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    # its temp folder apart from the runs root: a chart it shows must be copied out of the run
    (tmp / "app-tmp").mkdir()
    proc, url = start_app(tmp, "--config", str(tmp / "tiny.yaml"),
                          "--max-upload-mb", str(MAX_UPLOAD_MB), "--allow-private-endpoints",
                          env={"HF_TOKEN": hub_server.token,  # unused: no --hub-login
                               "TMPDIR": str(tmp / "app-tmp")})
    client = Client(url, verbose=False)
    client.tmp = tmp
    yield client
    stop_app(proc)


@pytest.fixture(scope="module")
def prepared(app):
    """The /prepare outputs for 30 sample rows + an empty answer + a duplicate."""
    from gradio_client import handle_file

    with SAMPLE.open(encoding="utf-8", newline="") as f:
        first = list(csv.reader(f))[1]
    faq = write_faq(app.tmp / "shop_faq.csv", 30, [["주소가 어디인가요?", "", ""], first])
    return app.predict(handle_file(str(faq)), api_name="/prepare")


def test_prepare_shows_the_report_left_out_rows_and_a_preview(prepared):
    error, summary, data_dir, dropped, preview, train_dir, deploy_dir = map(value, prepared)
    assert not error
    assert "32 rows read" in summary and "30 kept" in summary
    assert Path(data_dir).name.startswith("data-") and (Path(data_dir) / "train.csv").is_file()
    assert train_dir == deploy_dir == data_dir
    assert [row[0] for row in dropped["data"]] == [32, 33]  # line numbers (header is line 1)
    assert "답변 없음" in dropped["data"][0][1] and "line 2" in dropped["data"][1][2]
    assert len(preview["data"]) == 20 and all(has_hangul(row[0]) for row in preview["data"])


def test_a_bad_file_shows_a_clear_error_without_a_traceback(app):
    from gradio_client import handle_file

    bad = app.tmp / "bad.csv"
    bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
    error = app.predict(handle_file(str(bad)), api_name="/prepare")[0]
    assert error["visible"] is True
    assert "bad.csv: no question and no answer column" in error["value"]
    assert "Traceback" not in error["value"]


def test_a_file_over_the_size_cap_gets_a_korean_and_english_message(app):
    from gradio_client import handle_file

    big = write_faq(app.tmp / "big.csv", 184)
    with big.open("a", encoding="utf-8") as f:  # pad past the cap with valid rows
        while big.stat().st_size < MAX_UPLOAD_MB * 2**20 * 1.5:
            f.write("질문입니다,,답변입니다\n" * 200)
    error = app.predict(handle_file(str(big)), api_name="/prepare")[0]
    assert "너무 큽니다" in error["value"] and "too large" in error["value"]
    assert f"{MAX_UPLOAD_MB:g} MB" in error["value"]


def test_push_dataset_reads_back_and_a_second_push_is_up_to_date(app, prepared, hub_server):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    data_dir = value(prepared[2])
    result, error = app.predict(hub_server.token, data_dir, "tester/app-faq", False,
                                api_name="/push_dataset")
    assert not value(error), value(error)
    assert "tester/app-faq" in result and "pushed" in result
    files = HfApi().list_repo_files("tester/app-faq", repo_type="dataset")
    assert "data/train-00000-of-00001.parquet" in files and "README.md" in files
    loaded = load_dataset("tester/app-faq", cache_dir=str(app.tmp / "datasets-cache"))
    assert len(loaded["train"]) + len(loaded["test"]) == 30

    again, _ = app.predict(hub_server.token, data_dir, "tester/app-faq", False,
                           api_name="/push_dataset")
    assert "already up to date" in again


def test_a_wrong_token_is_a_clear_error_that_does_not_show_the_token(app, prepared, hub_server):
    wrong = "hf_wrongAPPtokenDoNotShow42"
    result, error = app.predict(wrong, value(prepared[2]), "tester/app-wrong", False,
                                api_name="/push_dataset")
    assert not result and error["visible"] is True
    assert "token was refused" in error["value"] and wrong not in error["value"]
    assert ("dataset", "tester/app-wrong") not in hub_server.repos


def test_an_empty_token_without_hub_login_is_refused_before_any_hub_request(app, prepared,
                                                                            hub_server):
    """On loopback too, the owner's HF_TOKEN is not lent to a visitor unless --hub-login."""
    asked = len(hub_server.requests)
    result, error = app.predict("", value(prepared[2]), "tester/app-fallback", False,
                                api_name="/push_dataset")
    assert not result and error["visible"] is True
    assert "토큰을 입력하세요 / type a Hugging Face token" in error["value"]
    assert "--hub-login" in error["value"]
    assert len(hub_server.requests) == asked  # the Hub was never asked
    assert ("dataset", "tester/app-fallback") not in hub_server.repos


def test_a_request_for_another_host_name_is_refused(app):
    """DNS rebinding: a page on loopback answers only to its own host names."""
    import httpx

    port = app.src.rstrip("/").rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", "192.168.0.7:" + port):
        page = httpx.get(app.src, headers={"Host": host})
        join = httpx.post(app.src + "gradio_api/queue/join", json={}, headers={"Host": host})
        for refused in (page, join):
            assert refused.status_code == 421, (host, refused.status_code)
            assert "--allowed-host" in refused.text and "Traceback" not in refused.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert httpx.get(app.src, headers={"Host": host}).status_code == 200, host


def test_folders_outside_the_runs_root_are_refused(app, hub_server):
    from fixtures import make_prepared

    outside = make_prepared(app.tmp, 12, name="outside-data")  # a real prepared folder
    escape = app.tmp / "runs" / ".." / "outside-data"
    run = app.tmp / "outside-run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}")
    refused = "only folders inside the runs folder"
    for folder in (str(outside), str(escape)):
        result, error = app.predict(hub_server.token, folder, "tester/app-outside", False,
                                    api_name="/push_dataset")
        assert not result and refused in error["value"] and "밖의 폴더" in error["value"], error
    assert ("dataset", "tester/app-outside") not in hub_server.repos
    _, error = app.predict(hub_server.token, str(run), "tester/app-outside", False,
                           api_name="/push_model")
    assert refused in error["value"] and ("model", "tester/app-outside") not in hub_server.repos
    assert refused in app.predict(str(run), "", api_name="/model_card")
    assert refused in app.predict(str(outside), 1, 2, 1e-3, 3, api_name="/start_training")
    _, _, error = app.predict("배송비는 얼마인가요?", [], str(run), "", 32, 0, api_name="/chat")
    assert refused in error["value"], error


def test_a_question_or_context_over_the_length_cap_is_refused(app):
    from builder.config import MAX_CONTEXT_CHARS, MAX_QUESTION_CHARS

    long = "가" * (MAX_QUESTION_CHARS + 1)
    history, _, error = app.predict(long, [], "", "", 32, 0, api_name="/chat")
    assert history == [] and error["visible"] is True
    assert f"질문 question: 너무 깁니다 ({MAX_QUESTION_CHARS + 1}자 > {MAX_QUESTION_CHARS}자) / " \
        f"too long ({MAX_QUESTION_CHARS + 1} characters, the limit is {MAX_QUESTION_CHARS})" \
        in error["value"]
    _, _, error = app.predict("배송비는?", [], "", "나" * (MAX_CONTEXT_CHARS + 1), 32, 0,
                              api_name="/chat")
    assert "참고 context: 너무 깁니다" in error["value"] and "too long" in error["value"]


def test_only_loopback_addresses_count_as_this_machine():
    from builder.doors.page_common import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.168.0.7", "10.0.0.1", "a.com"]))


def test_the_host_names_a_page_answers_to():
    """Its own names at its port; IP addresses only when it listens everywhere; --allowed-host."""
    from builder.doors.page_guard import HostNames

    local = HostNames("127.0.0.1", 7860)
    assert all(map(local.allows, ["127.0.0.1:7860", "localhost:7860", "[::1]:7860"]))
    assert not any(map(local.allows, ["evil.example:7860", "10.0.0.2:7860", "localhost:7861",
                                      "localhost", "", "[::1", "localhost:x"]))
    everywhere = HostNames("0.0.0.0", 7860, ("shop.example", "proxy.lan:8443"))
    assert all(map(everywhere.allows, ["192.168.0.7:7860", "[fe80::1]:7860", "shop.example",
                                       "Shop.Example:443", "proxy.lan:8443", "localhost:7860"]))
    assert not any(map(everywhere.allows, ["evil.example:7860", "192.168.0.7:80", "proxy.lan",
                                           "rebind.shop.example:7860"]))
    assert HostNames("127.0.0.1", 80).allows("localhost")  # the browser leaves :80 out


@pytest.mark.parametrize("door", ["builder app", "app.py"])
def test_both_doors_pass_the_upload_cap_queue_size_open_flag_and_db(door, monkeypatch):
    import app as app_door
    from builder.doors import cli
    from builder.doors import page as webapp

    calls = []
    monkeypatch.setattr(webapp, "launch", lambda *args, **kwargs: calls.append((args, kwargs)))
    flags = ["--host", "0.0.0.0", "--max-upload-mb", "3.5", "--max-queue", "4", "--open",
             "--allowed-host", "shop.example", "--allowed-host", "10.0.0.2:7860",
             "--allow-private-endpoints", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem",
             "--db", "postgresql://shop@db-host/shop"]
    code = cli.main(["app", *flags]) if door == "builder app" else app_door.main(flags)
    assert code == 0 and len(calls) == 1
    args, kwargs = calls[0]
    assert args[0] == "0.0.0.0"
    assert (kwargs["max_upload_mb"], kwargs["max_queue"], kwargs["open_access"]) == (3.5, 4, True)
    assert kwargs["allowed_hosts"] == ["shop.example", "10.0.0.2:7860"]
    assert kwargs["hub_login"] is False and kwargs["allow_private_endpoints"] is True
    assert (kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == ("c.pem", "k.pem")
    assert kwargs["db"] == "postgresql://shop@db-host/shop"
    cli.main(["app", "--hub-login"]) if door == "builder app" else app_door.main(["--hub-login"])
    assert calls[1][1]["hub_login"] is True and calls[1][1]["allowed_hosts"] == []
    assert calls[1][1]["allow_private_endpoints"] is False


# The 채팅 tab: sources under each answer, FAQ update, the run's evaluation


def test_sources_are_a_collapsed_message_with_rows_and_a_declined_answer_has_none():
    from types import SimpleNamespace

    from builder.answering.guard import Reply
    from builder.answering.knowledge import Entry
    from builder.doors.page_common import sources_message

    hits = [SimpleNamespace(entry=Entry(0, 2, "배송비는 얼마인가요?", "", "기본 배송비는 3,000원입니다.")),
            SimpleNamespace(entry=Entry(1, None, "제주도도 되나요?", "", "네" * 200))]
    message = sources_message(Reply(text="3,000원입니다.", sources=hits))
    assert message["role"] == "assistant"
    assert title_of(message).startswith("참고한 FAQ") and message["metadata"]["status"] == "done"
    lines = message["content"].splitlines()
    assert lines[0] == "- **2행** 배송비는 얼마인가요? → 기본 배송비는 3,000원입니다."
    assert lines[1].startswith("- **행 번호 없음 / no row** 제주도도 되나요?") and lines[1].endswith("네…")
    assert sources_message(Reply(text="죄송합니다.", declined=True, sources=hits)) is None
    assert sources_message(Reply(text="답변")) is None  # a run without knowledge


def test_the_eval_markdown_shows_every_system_the_figures_and_the_verdict(tmp_path):
    from test_jobs import write_eval

    from builder.doors.page_common import eval_markdown
    from builder.evaluation import report as eval_report

    assert eval_markdown(eval_report.read_summary(tmp_path), str(tmp_path)).startswith(
        "평가 결과가 아직 없습니다 / no evaluation yet: `builder eval")
    (tmp_path / eval_report.EVAL_RUNNING).touch()
    assert eval_markdown(eval_report.read_summary(tmp_path)) == "⏳ **평가 진행 중 / evaluation running**"
    report = write_eval(tmp_path)
    text = eval_markdown(eval_report.read_summary(tmp_path))
    assert text.startswith("⏳ **평가 진행 중 / evaluation running** — 아래는 이전 결과")
    (tmp_path / eval_report.EVAL_RUNNING).unlink()
    text = eval_markdown(eval_report.read_summary(tmp_path))
    assert "| 항목 figure | base + retrieval | fine-tuned + retrieval | retrieval only |" in text
    assert "| test split: facts right (entries never trained) | 25% | 50% | 88% |" in text
    assert "| test split: chrF (0-100) | 20.5 | 48.25 | 61 |" in text
    assert "| runaway answers cut | 2 | 1 | 0 |" in text
    assert "- 검색 retrieval on test split: hit@1 75%, hit@3 100% (8 questions)" in text
    assert all(f"- {line}" in text for line in report["verdict"]) and report["verdict"]


def make_shop_run(run: Path) -> Path:
    """A run folder that answers from its FAQ: a tiny random gemma as merged/, the Korean
    template, its config; no knowledge/ until one is indexed."""
    from fixtures import make_tiny_gemma, write_run

    from builder.config import load_config

    write_run(run, "korean", config=load_config(ROOT / "configs" / "embedded-cpu.yaml"),
              meta={"base_model": "tiny-gemma", "template": "korean", "end_token_ids": [1, 106]})
    make_tiny_gemma(run / "merged")
    return run


@pytest.fixture(scope="module")
def shop_run(app):
    return make_shop_run(app.tmp / "runs" / "shop")


def index_faq(client, faq: Path, run) -> tuple[str, dict]:
    from gradio_client import handle_file

    result, error = client.predict(handle_file(str(faq)), str(run), api_name="/index_faq")
    return value(result), error


def ask(client, question: str, run, history=()) -> list[dict]:
    history, _, error = client.predict(question, list(history), str(run), "", 16, 0,
                                       api_name="/chat")
    assert not value(error), value(error)
    return history


def test_answers_show_their_faq_rows_and_an_updated_faq_is_used_at_once(app, shop_run):
    from test_jobs import NEW_ROW

    result, error = index_faq(app, write_faq(app.tmp / "shop-30.csv", 30), shop_run)
    assert not value(error) and "FAQ 30개 항목을 색인했습니다" in result
    assert "indexed 30 FAQ entries" in result and "without retraining" in result

    # An answer, then a collapsed "참고한 FAQ" message with the rows it came from
    history = ask(app, "배송비는 얼마인가요?", shop_run)
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"], history
    assert not title_of(history[1])
    sources = history[2]
    assert title_of(sources).startswith("참고한 FAQ") and sources["metadata"]["status"] == "done"
    assert text_of(sources["content"]).startswith("- **2행** 배송비는 얼마인가요? → 기본 배송비는 3,000원")
    assert sources["metadata"]["log"].startswith("2행")

    # An off-topic question is declined, without sources; the earlier sources keep their box
    history = ask(app, "내일 부산 날씨 알려줘", shop_run, history)
    assert [m["role"] for m in history] == ["user", "assistant", "assistant", "user", "assistant"]
    assert "고객센터" in text_of(history[-1]["content"])
    assert not title_of(history[-1]) and title_of(history[2]).startswith("참고한 FAQ")

    # A new row: indexed without retraining, and the loaded bot answers from it at once
    faq = write_faq(app.tmp / "shop-31.csv", 30, [NEW_ROW, ["주소가 어디인가요?", "", ""]])
    result, error = index_faq(app, faq, shop_run)
    assert not value(error) and "FAQ 31개 항목을 색인했습니다 (제외된 행 1개)" in result
    history = ask(app, NEW_ROW[0], shop_run)
    assert title_of(history[-1]), f"the new row's question got no sources: {history}"
    assert history[-1]["metadata"]["log"].startswith("32행")
    assert f"- **32행** {NEW_ROW[0]} → {NEW_ROW[2]}" in text_of(history[-1]["content"])


def test_one_conversation_gets_the_same_answers_through_the_page_the_terminal_and_the_api(
        app, shop_run, monkeypatch, capsys):
    """A question, then a short follow-up ("제주도는요?") that only the conversation explains:
    the page (/chat with its history), `builder chat` and the OpenAI-compatible API answer
    both the same way, and the follow-up is read with the earlier question."""
    from test_serve import serving

    from builder.answering.chatbot import load_chatbot
    from builder.doors.cli import main

    turns = ["배송비 얼마임?", "제주도는요?"]
    # the page
    history = ask(app, turns[0], shop_run)
    page = [text_of(history[1]["content"])]
    history = ask(app, turns[1], shop_run, history)
    page.append(text_of(history[len(history) - 2 if title_of(history[-1]) else -1]["content"]))
    page_sources = history[-1]["metadata"]["log"] if title_of(history[-1]) else ""
    # the terminal
    typed = iter(turns + ["종료"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    capsys.readouterr()
    assert main(["chat", str(shop_run), "--max-new-tokens", "16"]) == 0
    out = capsys.readouterr().out
    # the API, with the conversation as messages
    bot = load_chatbot(shop_run)
    with serving(bot, "shop") as server:
        client, messages, api = server.client(), [], []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            reply = client.chat.completions.create(model="shop", messages=messages, max_tokens=16,
                                                   temperature=0).choices[0].message
            api.append(reply)
            messages.append({"role": "assistant", "content": reply.content})
    assert [r.content for r in api] == page, (page, api)
    for answer in page:
        assert answer in out  # `builder chat` printed the same answers
    follow_up = api[1]
    assert not follow_up.declined and follow_up.sources
    lines = [f"{s['line']}행" for s in follow_up.sources]
    assert page_sources == ", ".join(lines)  # the page names the same FAQ rows
    assert "참고한 FAQ: " + " · ".join(f"{s['line']}행 {s['question']}" for s in follow_up.sources) in out
    # read with the earlier question: the follow-up's prompt carries the earlier question's
    # entry, which it does not carry when asked alone
    with_history = bot.reply(turns[1], history=turns[:1], max_new_tokens=16)
    assert with_history.text == follow_up.content
    assert "질문: 배송비는 얼마인가요?" in with_history.prompt
    alone = bot.reply(turns[1], max_new_tokens=16)
    assert alone.declined or "질문: 배송비는 얼마인가요?" not in alone.prompt


def test_the_faq_update_refuses_bad_files_and_folders_outside_the_runs_root(app, shop_run):
    bad = app.tmp / "bad-update.csv"
    bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
    result, error = index_faq(app, bad, shop_run)
    assert not result and error["visible"] is True and "Traceback" not in error["value"]
    assert "bad-update.csv: no question and no answer column" in error["value"]
    outside = app.tmp / "outside-shop"
    outside.mkdir(exist_ok=True)
    faq = write_faq(app.tmp / "shop-12.csv", 12)
    result, error = index_faq(app, faq, outside)
    assert not result and "밖의 폴더는 쓸 수 없습니다 / only folders inside" in error["value"]
    assert not (outside / "knowledge").exists()
    result, error = index_faq(app, faq, "")
    assert "pick the run whose FAQ to update first" in error["value"]


def test_the_chat_tab_shows_the_runs_eval_and_fills_in_when_it_ends(app):
    import httpx
    from test_jobs import write_eval

    from builder.evaluation.report import EVAL_RUNNING

    run = app.tmp / "runs" / "evaluated"
    run.mkdir()
    text, chart = app.predict(str(run), api_name="/eval_report")
    assert "no evaluation yet" in value(text) and value(chart) is None
    (run / EVAL_RUNNING).touch()  # `builder eval` has started
    text, _ = app.predict(str(run), api_name="/eval_report")
    assert "평가 진행 중 / evaluation running" in value(text)

    report = write_eval(run)  # ... and ended
    (run / EVAL_RUNNING).unlink()
    text, chart = app.predict(str(run), api_name="/eval_report")
    assert "evaluation running" not in value(text)
    header = "| 항목 figure | base + retrieval | fine-tuned + retrieval | retrieval only |"
    assert header in value(text)
    assert "| paraphrased questions: facts right | 10% | 60% | 70% |" in value(text)
    assert all(line in value(text) for line in report["verdict"])
    assert chart["visible"] is True and Path(value(chart)).read_bytes()[:4] == b"\x89PNG"

    text, _ = app.predict(str(app.tmp / "outside-shop"), api_name="/eval_report")
    assert "only folders inside the runs folder" in value(text)

    # the page asks again on a timer, so an eval that ends while it is open fills in
    config = httpx.get(app.src + "config").json()
    timers = {c["id"] for c in config["components"] if c.get("type") == "timer"}
    refresh = next(d for d in config["dependencies"] if d["api_name"] == "eval_report")
    assert {(target, event) for target, event in refresh["targets"]} & {(t, "tick") for t in timers}


def test_the_file_route_serves_the_shown_charts_but_not_the_runs_folder(app):
    """A visitor sees a run's eval chart, never its files (chat.log, data, models) by path."""
    import httpx
    from test_jobs import write_eval

    run = app.tmp / "runs" / "served"
    run.mkdir(parents=True)
    write_eval(run)
    (run / "chat.log").write_text("손님 질문: 제 주소는 서울시 ...\n", encoding="utf-8")
    _, chart = app.predict(str(run), api_name="/eval_report")
    assert chart["visible"] is True and Path(value(chart)).read_bytes()[:4] == b"\x89PNG"
    for path in (run / "chat.log", run / "eval" / "chart.png", run / "eval" / "report.json",
                 app.tmp / "tiny.yaml"):
        got = httpx.get(f"{app.src}gradio_api/file={path}")
        assert got.status_code == 403 and "손님" not in got.text, (path, got.status_code)


def test_the_faq_update_writes_only_runs_inside_the_runs_root_and_never_on_an_open_page(
        tmp_path):
    """The --run folder outside the runs root is only chatted with; an --open page writes none."""
    from builder.doors.page_common import Page
    from builder.errors import UserError

    production, inside = tmp_path / "production", tmp_path / "runs" / "shop"
    production.mkdir()
    inside.mkdir(parents=True)
    page = Page(tmp_path / "runs", production, "configs/embedded-cpu.yaml", 1)
    assert page.inside(production) == str(production.resolve())  # chat and eval read it
    with pytest.raises(UserError, match=r"builder index .*production"):
        page.writable_run(production)
    assert page.writable_run(inside) == str(inside.resolve())
    assert page.writable_run("") == ""  # the caller asks to pick a run
    open_page = Page(tmp_path / "runs", None, "configs/embedded-cpu.yaml", 1, open_page=True)
    with pytest.raises(UserError, match="BUILDER_APP_PASSWORD"):
        open_page.writable_run(inside)


# The conversation log, 👍/👎 and the 인박스 tab


def rows_of(run: Path) -> list[dict]:
    from builder.owner.log import ConversationLog

    return ConversationLog.for_run(run).rows()


def like(client, index: int, liked: bool) -> None:
    """A click on 👍 (liked) or 👎 under the chat message at `index`, as the browser sends it
    (gradio_client sends no event data): in the client's own session, whose reply ids the
    page keeps."""
    import httpx

    config = httpx.get(client.src + "config").json()
    fn = next(d["id"] for d in config["dependencies"] if d["api_name"] == "feedback")
    body = {"data": [None], "fn_index": fn, "session_hash": client.session_hash,
            "event_data": {"index": index, "value": [], "liked": liked}, "trigger_id": None}
    httpx.post(client.src + "gradio_api/queue/join", json=body).raise_for_status()


def wait_for(check, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def inbox_run(app):
    """A run of its own for the log and the inbox (its FAQ gets rows the other tests do not
    expect): the first 30 sample rows indexed through the page."""
    run = make_shop_run(app.tmp / "runs" / "inbox-shop")
    _, error = index_faq(app, write_faq(app.tmp / "inbox-30.csv", 30), run)
    assert not value(error), value(error)
    return run


def test_page_answers_go_into_the_log_under_a_pseudonym_with_their_thumbs(app, inbox_run):
    """Each chat answer is a log row (the session under a pseudonym, never in clear); 👍/👎 on
    the answer reach that row, and the reply ids follow the history's messages."""
    from builder.owner.log import ConversationLog

    app.predict(api_name="/clear_chat")  # this session's reply ids start empty
    history = ask(app, "배송비는 얼마인가요?", inbox_run)
    history = ask(app, "내일 부산 날씨 알려줘", inbox_run, history)
    assert [m["role"] for m in history] == ["user", "assistant", "assistant", "user", "assistant"]
    rows = rows_of(inbox_run)[-2:]
    assert [r["question"] for r in rows] == ["배송비는 얼마인가요?", "내일 부산 날씨 알려줘"]
    first, declined = rows
    assert first["channel"] == "page" and first["answer"] == text_of(history[1]["content"])
    assert first["sources"][0]["line"] == 2 and not first["declined"] and declined["declined"]
    assert first["latency_ms"] is not None and first["reply_id"] and first["feedback"] is None
    log = ConversationLog.for_run(inbox_run)
    assert first["customer"] == log.pseudonym(app.session_hash) != app.session_hash
    stored = b"".join(p.read_bytes() for p in inbox_run.glob("conversations.db*"))
    assert first["reply_id"].encode() in stored  # the file is read: the row is there ...
    assert app.session_hash.encode() not in stored  # ... but not the session in clear

    like(app, 1, True)  # 👍 under the first answer (its sources message is in its group)
    wait_for(lambda: rows_of(inbox_run)[-2]["feedback"] == 1)
    like(app, 4, False)  # 👎 under the declined one
    wait_for(lambda: rows_of(inbox_run)[-1]["feedback"] == -1)
    like(app, 1, False)  # changed its mind
    wait_for(lambda: rows_of(inbox_run)[-2]["feedback"] == -1)
    like(app, 0, True)  # a question, not an answer: nothing
    time.sleep(1)
    assert [r["feedback"] for r in rows_of(inbox_run)[-2:]] == [-1, -1]


def test_a_failing_log_never_stops_the_chat(app, inbox_run):
    """A conversation log that cannot be written: the answer still comes, with a warning in
    the page's output."""
    import shutil

    run = app.tmp / "runs" / "broken-log"
    shutil.copytree(inbox_run, run, ignore=shutil.ignore_patterns("conversations.db*"))
    (run / "conversations.db").mkdir()  # SQLite cannot open a folder
    history = ask(app, "배송비는 얼마인가요?", run)  # (no error shown)
    assert [m["role"] for m in history][:2] == ["user", "assistant"]
    assert text_of(history[1]["content"]) and title_of(history[-1]).startswith("참고한 FAQ")
    output = "".join(p.read_text() for p in app.tmp.glob("app-*.log"))
    assert f"the conversation log of {run.resolve()} failed" in output


def open_groups(client, run) -> dict[str, str]:
    """The inbox tab's open groups of `run`: {question: key}, as its table and dropdown show."""
    table, groups, _, _, _, error = client.predict(str(run), 30, api_name="/inbox")
    assert not value(error), value(error)
    keys = {label.rsplit(" (", 1)[0]: key for label, key in groups["choices"]}
    assert [row[3] for row in value(table)["data"]] == list(keys), (table, groups)
    return keys


def test_the_inbox_tab_answers_maps_and_declines_and_the_chat_uses_it_at_once(app, inbox_run):
    """An answered group leaves the inbox and the page's chat answers its question with the
    owner's answer; a group mapped to an entry gets that entry's answer; a declined one
    leaves; the figures count it all."""
    from test_jobs import NEW_ROW

    app.predict(api_name="/clear_chat")
    gift, courier, weather = "선물 포장도 해 주시나요?", "편의점 택배로도 보내 주시나요?", "내일 서울 날씨 어때요?"
    history = []
    for question in (gift, gift, courier, weather):
        history = ask(app, question, inbox_run, history)
        if question == courier:  # 👎 under its answer: open, whatever the bot said
            like(app, len(history) - (2 if title_of(history[-1]) else 1), False)
    wait_for(lambda: any(r["feedback"] == -1 and r["question"] == courier
                         for r in rows_of(inbox_run)))
    groups = open_groups(app, inbox_run)
    assert {gift, courier, weather} <= set(groups), groups
    detail = app.predict(groups[gift], api_name="/inbox_group")
    assert detail.startswith(f"### {gift}") and "2번 / times" in detail

    # (a) the owner's answer: a new FAQ row, answered from at once, and the time it took
    outputs = app.predict(str(inbox_run), groups[gift], NEW_ROW[2], 30, api_name="/inbox_answer")
    result, table, error = outputs[0], value(outputs[1]), value(outputs[6])
    assert not error and "added a FAQ row" in result and "the update took" in result, outputs
    assert gift not in [row[3] for row in table["data"]]
    history = ask(app, gift, inbox_run)
    assert text_of(history[1]["content"]) == NEW_ROW[2], history
    assert title_of(history[-1]).startswith("참고한 FAQ")

    # (b) the entry that should have answered (line 4: the courier)
    lines = {line: label for label, line in outputs[3]["choices"]}
    assert lines[4] == "4행 택배사는 어디를 이용하나요?"
    result, *_, error = app.predict(str(inbox_run), groups[courier], 4, 30, api_name="/inbox_map")
    assert not value(error) and "line 4 now answers these questions" in result
    history = ask(app, courier, inbox_run)
    assert "CJ대한통운" in text_of(history[1]["content"]), history

    # (c) declining was right
    result, *_, error = app.predict(str(inbox_run), groups[weather], 30, api_name="/inbox_decline")
    assert not value(error) and "decline is right" in result
    assert not {gift, courier, weather} & set(open_groups(app, inbox_run))

    # the figures: numbers in text and the chart, a copy in the page's chart folder
    _, _, _, numbers, chart, _ = app.predict(str(inbox_run), 30, api_name="/inbox")
    rows = rows_of(inbox_run)
    disliked = sum(r["feedback"] == -1 for r in rows)
    assert f"질문 questions **{len(rows)}**" in numbers, numbers
    assert f"싫어요 dislikes **{disliked}**" in numbers and disliked
    assert Path(value(chart)).read_bytes()[:4] == b"\x89PNG"


def test_the_inbox_refuses_runs_outside_the_runs_root_and_empty_choices(app, inbox_run):
    """Its actions write only runs inside the runs root, and say what to pick first."""
    outside = app.tmp / "outside-inbox"
    outside.mkdir(exist_ok=True)
    result, *_, error = app.predict(str(outside), "abc", "답", 30, api_name="/inbox_answer")
    assert not result and "only folders inside the runs folder" in error["value"]
    for outputs, message in (
            (app.predict(str(inbox_run), "", "답", 30, api_name="/inbox_answer"), "pick a group"),
            (app.predict(str(inbox_run), "abc", "  ", 30, api_name="/inbox_answer"),
             "write the answer first"),
            (app.predict(str(inbox_run), "abc", None, 30, api_name="/inbox_map"),
             "pick the entry"),
            (app.predict(str(inbox_run), "nogroup", 30, api_name="/inbox_decline"),
             "no open group nogroup")):
        assert message in outputs[-1]["value"] and "Traceback" not in outputs[-1]["value"]
    assert not (outside / "conversations.db").exists()


def status_of(client) -> dict:
    return client.predict(api_name="/training_status")[5]


def test_stop_right_after_start_ends_the_run(app, prepared):
    assert "training started" in app.predict(value(prepared[2]), 1, 2, 1e-3, 3,
                                             api_name="/start_training")
    assert "stopping" in app.predict(api_name="/stop_training")
    deadline = time.monotonic() + 150
    while (status := status_of(app))["state"] in ("running", "merging"):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    # still loading the model: ended by our SIGTERM, not by a crash
    assert (status["state"], status["exit_code"]) == ("stopped", -signal.SIGTERM), status
    assert "nothing saved" in status["message"] and "Traceback" not in status["log_tail"], status


# Off loopback: a login or an explicit --open, and never the owner's saved Hub login


def test_off_loopback_without_a_login_the_app_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BUILDER_APP_PASSWORD"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0", "--port", str(free_port()),
         "--runs-root", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "BUILDER_APP_PASSWORD" in done.stderr and "--open" in done.stderr, done.stderr


def test_an_open_page_refuses_to_lend_the_hub_login(tmp_path):
    """--hub-login with --open would hand the owner's Hub login to anyone: refused at start."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--host", "0.0.0.0", "--port", str(free_port()),
         "--runs-root", str(tmp_path / "runs"), "--open", "--hub-login"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--hub-login" in done.stderr and "--open" in done.stderr, done.stderr


def test_off_loopback_the_page_needs_its_login_and_removes_its_charts_on_exit(tmp_path, hub_server):
    from gradio_client import Client, handle_file

    password = "pw-" + os.urandom(6).hex()
    env = {"BUILDER_APP_PASSWORD": password, "HF_TOKEN": hub_server.token, "TMPDIR": str(tmp_path)}
    proc, url = start_app(tmp_path, "--host", "0.0.0.0", "--hub-login", env=env)
    try:
        with pytest.raises(Exception, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, auth=("admin", password), verbose=False)
        assert client.predict("", "", api_name="/model_card") == ""
        assert len(list(tmp_path.glob("builder-app-charts-*"))) == 1
        # --hub-login: the owner lends HF_TOKEN to the page's logged-in users on purpose
        faq = write_faq(tmp_path / "faq.csv", 12)
        data_dir = value(client.predict(handle_file(str(faq)), api_name="/prepare")[2])
        result, error = client.predict("", data_dir, "tester/login-lent", False,
                                       api_name="/push_dataset")
        assert "pushed" in result and not value(error), value(error)
    finally:
        stop_app(proc)
    assert proc.returncode == 0
    assert not list(tmp_path.glob("builder-app-charts-*"))  # removed when the app closed
    assert password not in Path(tmp_path / f"app-{url.split(':')[-1].strip('/')}.log").read_text()


@pytest.fixture(scope="module")
def open_app(tmp_path_factory, hub_server):
    """The page on 0.0.0.0 with --open (no login), one waiting request at most, and the
    owner's HF_TOKEN in its environment."""
    from gradio_client import Client

    tmp = tmp_path_factory.mktemp("open-app")
    proc, url = start_app(tmp, "--host", "0.0.0.0", "--open", "--max-queue", "1",
                          env={"HF_TOKEN": hub_server.token})
    client = Client(url, verbose=False)
    client.tmp, client.url = tmp, url
    yield client
    stop_app(proc)


def test_off_loopback_an_empty_token_is_refused_even_with_HF_TOKEN_set(open_app, hub_server):
    from gradio_client import handle_file

    faq = write_faq(open_app.tmp / "faq.csv", 12)
    data_dir = value(open_app.predict(handle_file(str(faq)), api_name="/prepare")[2])
    result, error = open_app.predict("", data_dir, "tester/open-fallback", False,
                                     api_name="/push_dataset")
    assert not result and error["visible"] is True
    assert "토큰을 입력하세요 / type a Hugging Face token" in error["value"]
    assert ("dataset", "tester/open-fallback") not in hub_server.repos
    result, error = open_app.predict(hub_server.token, data_dir, "tester/open-typed", False,
                                     api_name="/push_dataset")
    assert "pushed" in result and not value(error), value(error)


def test_an_open_page_does_not_let_visitors_replace_a_runs_faq(open_app):
    """On an --open page no visitor can replace the knowledge a run answers customers from."""
    import shutil

    run = open_app.tmp / "runs" / "shop"
    run.mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "embedded-cpu.yaml", run / "config.yaml")
    shutil.copy(ROOT / "prompts" / "korean.yaml", run / "template.yaml")
    result, error = index_faq(open_app, write_faq(open_app.tmp / "faq-12.csv", 12), run)
    assert not result and error["visible"] is True
    assert "BUILDER_APP_PASSWORD" in error["value"] and "builder index" in error["value"]
    assert not (run / "knowledge").exists()


def test_an_open_page_shows_no_inbox_and_changes_nothing_from_it(open_app):
    """The inbox holds customers' words and its actions change a run's answers: an --open
    page without a login does neither."""
    run = open_app.tmp / "runs" / "inbox"
    run.mkdir(parents=True)
    *_, error = open_app.predict(str(run), 30, api_name="/inbox")
    assert "BUILDER_APP_PASSWORD" in error["value"] and "customers' questions" in error["value"]
    result, *_, error = open_app.predict(str(run), "abc", "답", 30, api_name="/inbox_answer")
    assert not result and "BUILDER_APP_PASSWORD" in error["value"]
    assert not (run / "inbox").exists() and not (run / "knowledge").exists()


def test_the_document_generator_sends_nothing_to_private_addresses_unless_allowed(
        open_app, pairs_server):
    """SSRF: loopback, private and link-local endpoints are refused without
    --allow-private-endpoints, before any request."""
    from gradio_client import handle_file

    docs = [handle_file(str(ROOT / "data" / "docs" / "shipping_refund_policy.md"))]
    port = pairs_server.url.split(":")[2].split("/")[0]
    for url in (pairs_server.url, f"http://localhost:{port}/v1", f"http://[::1]:{port}/v1",
                f"http://0.0.0.0:{port}/v1", f"http://user:pw@127.0.0.1:{port}/v1",
                "http://169.254.169.254/latest", "http://10.0.0.1/v1", "https://192.168.0.1/v1",
                "http://[::ffff:127.0.0.1]:8000/v1", "http://[fe80::1]/v1"):
        summary, _, error = open_app.predict(docs, url, "scripted", "", None,
                                             api_name="/generate_faq")
        assert error["visible"] is True and not summary, url
        assert "--allow-private-endpoints" in error["value"], (url, error["value"])
        assert "pw@" not in error["value"]
    assert pairs_server.requests == []


def test_endpoint_addresses_the_page_may_send_to():
    """Public addresses pass; this machine, the private network and link-local do not."""
    from builder.doors.page_guard import check_endpoint
    from builder.errors import UserError

    for url in ("http://8.8.8.8/v1", "https://[2606:4700:4700::1111]/v1", "", "not a url"):
        check_endpoint(url, allow_private=False)  # faqgen says what is wrong with the last two
    for url in ("http://127.0.0.1:8000/v1", "http://localhost/v1", "http://100.64.0.1/v1",
                "http://172.16.0.1/v1", "http://224.0.0.1/v1"):
        with pytest.raises(UserError, match="--allow-private-endpoints"):
            check_endpoint(url, allow_private=False)
        check_endpoint(url, allow_private=True)
    with pytest.raises(UserError, match="no-such-host.invalid"):
        check_endpoint("http://no-such-host.invalid/v1", allow_private=False)


def test_a_full_queue_answers_busy_in_korean_and_english(open_app):
    import httpx

    api = open_app.url + "gradio_api/"
    config = httpx.get(open_app.url + "config").json()
    fn = {d["api_name"]: d["id"] for d in config["dependencies"]}
    rows = [[f"질문 {i}번은 무엇인가요?", "", f"답변 {i}번입니다. " * 5] for i in range(3000)]
    faq = write_faq(open_app.tmp / "many.csv", 30, rows)  # ~2 s to prepare
    with faq.open("rb") as f:
        uploaded = httpx.post(api + "upload", files=[("files", ("many.csv", f))]).json()[0]
    upload = {"path": uploaded, "orig_name": "many.csv", "meta": {"_type": "gradio.FileData"}}

    def join(name, data):
        body = {"data": data, "fn_index": fn[name], "session_hash": os.urandom(6).hex(),
                "event_data": None, "trigger_id": None}
        return httpx.post(api + "queue/join", json=body)

    prepared = len(list((open_app.tmp / "runs").glob("data-*/report.json")))
    # one runs, one waits: the queue (max 1) is full
    assert [join("prepare", [upload]).status_code for _ in range(2)] == [200, 200]
    busy = join("clear_chat", [])
    assert busy.status_code == 503
    assert busy.json()["detail"] == "서버가 바쁩니다. 잠시 후 다시 시도하세요 / the page is busy: " \
        "try again in a moment"
    deadline = time.monotonic() + 120  # leave the page idle
    while len(list((open_app.tmp / "runs").glob("data-*/report.json"))) < prepared + 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert join("clear_chat", []).status_code == 200


# Documents -> FAQ rows for review, GGUF export and push, the chat queue


@pytest.fixture
def pairs_server():
    """An OpenAI-compatible chat endpoint that answers every chunk with three pairs (no number,
    so none is unfaithful) and records the requests."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Pairs(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.server.requests.append({"headers": dict(self.headers), "body": body})
            n = len(self.server.requests)
            pairs = {"pairs": [{"question": f"문서 질문 {n}-1 있나요?", "answer": "네, 있습니다."},
                               {"question": f"문서 질문 {n}-2 되나요?", "answer": "네, 됩니다."},
                               {"question": f"문서 질문 {n}-3 하나요?", "answer": "네, 합니다."}]}
            reply = {"choices": [{"index": 0, "message": {
                "role": "assistant", "content": json.dumps(pairs, ensure_ascii=False)}}]}
            data = json.dumps(reply, ensure_ascii=False).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pairs)
    server.requests = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def test_documents_become_rows_to_review_and_the_reviewed_rows_are_prepared(app, pairs_server):
    from gradio_client import handle_file

    docs = [handle_file(str(ROOT / "data" / "docs" / name))
            for name in ("shipping_refund_policy.md", "haru_blend.html")]
    secret = "sk-docs-SECRET-" + os.urandom(4).hex()
    summary, table, error = app.predict(docs, pairs_server.url, "scripted", secret, None,
                                        api_name="/generate_faq")
    assert not value(error), value(error)
    rows = value(table)["data"]
    n = len(pairs_server.requests)
    assert n >= 4 and len(rows) == 3 * n and f"wrote {3 * n} question/answer rows" in summary
    assert rows[0][0] == "문서 질문 1-1 있나요?" and rows[0][2] == "네, 있습니다."
    assert rows[0][3].startswith("shipping_refund_policy.md#")
    assert pairs_server.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    assert secret not in summary

    # the owner edits a row and deletes another before preparing
    reviewed = [list(r) for r in rows[1:]]
    reviewed[0][2] = "네, 됩니다. 고객센터에서도 안내해 드려요."
    outputs = app.predict({"headers": value(table)["headers"], "data": reviewed},
                          api_name="/prepare_generated")
    error, report, data_dir = map(value, outputs[:3])
    assert not error, error
    assert f"{len(reviewed)}" in report and Path(data_dir, "report.json").is_file()
    texts = Path(data_dir, "train.csv").read_text(encoding="utf-8") + \
        Path(data_dir, "test.csv").read_text(encoding="utf-8")
    assert "고객센터에서도 안내해 드려요" in texts and "문서 질문 1-1" not in texts
    assert value(outputs[5]) == value(outputs[6]) == data_dir  # the 학습 and 배포 tabs get it

    # no documents, or no endpoint: one clear line
    _, _, error = app.predict([], pairs_server.url, "scripted", "", None, api_name="/generate_faq")
    assert "upload documents" in error["value"]
    _, _, error = app.predict(docs[:1], "", "", "", None, api_name="/generate_faq")
    assert "give --endpoint URL and --model NAME" in error["value"]
    assert "Traceback" not in error["value"]


@pytest.fixture
def leaky_server():
    """An endpoint whose replies hold an internal page: a 404 body on /error/, a 200 whose
    message is not JSON on /garbled/."""
    import threading
    from http.server import ThreadingHTTPServer

    from fixtures import QuietHandler

    class Leaky(QuietHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            if self.path.startswith("/error/"):
                self.send_body(404, b"<html>INTERNAL-SECRET admin console</html>", "text/html")
                return
            self.send_json(200, {"choices": [{"index": 0, "message": {
                "role": "assistant", "content": "INTERNAL-SECRET (not json); it's \"LEAK-2\")"}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Leaky)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def test_what_an_endpoint_answers_is_never_echoed_on_the_page(app, leaky_server):
    """An endpoint's error page or unreadable reply is not shown in the page's messages."""
    from gradio_client import handle_file

    docs = [handle_file(str(ROOT / "data" / "docs" / "shipping_refund_policy.md"))]
    summary, _, error = app.predict(docs, leaky_server.url + "/error/v1", "scripted", "", None,
                                    api_name="/generate_faq")
    assert "answered HTTP 404" in error["value"] and "chunks are saved" in error["value"]
    assert "INTERNAL-SECRET" not in error["value"] + summary
    summary, _, error = app.predict(docs, leaky_server.url + "/garbled/v1", "scripted", "",
                                    None, api_name="/generate_faq")
    assert "no readable JSON" in error["value"], error["value"]
    assert "INTERNAL-SECRET" not in error["value"] + summary and "LEAK-2" not in error["value"]


def test_the_gguf_export_button_reports_its_verdict(app, shop_run):
    pytest.importorskip("llama_cpp")
    if not (shop_run / "knowledge").is_dir():  # the questions it verifies with are the FAQ's
        index_faq(app, write_faq(app.tmp / "shop-30.csv", 30), shop_run)
    result, error = app.predict(str(shop_run), "f16", api_name="/export_gguf")
    report = json.loads((shop_run / "gguf" / "report.json").read_text(encoding="utf-8"))
    # a random tiny model may not survive f16 greedily: either verdict is shown, no traceback
    f16 = (report.get("quants") or {}).get("f16") or report["refused"]["f16"]
    if f16["refused"]:
        assert "f16 breaks the answers" in error["value"] and "--force" in error["value"]
    else:
        assert not value(error), value(error)
        assert f"{f16['identical']} of 5 answers identical to the merged model" in result
        assert (shop_run / "gguf" / "Modelfile").is_file()
    _, error = app.predict(str(app.tmp / "outside-shop"), "f16", api_name="/export_gguf")
    assert "only folders inside the runs folder" in error["value"]


def test_the_gguf_repo_is_pushed_with_its_own_card(app, tmp_path, hub_server):
    from huggingface_hub import HfApi

    run = make_shop_run(app.tmp / "runs" / "gguf-shop")
    gguf = run / "gguf"
    gguf.mkdir()
    (gguf / "gguf-shop-q8_0.gguf").write_bytes(b"GGUF" + os.urandom(64))
    (gguf / "Modelfile").write_text("FROM ./gguf-shop-q8_0.gguf\n", encoding="utf-8")
    quant = {"file": "gguf-shop-q8_0.gguf", "bytes": 68, "identical": 4, "questions": 5,
             "mean_similarity": 0.97, "verdict": "close"}
    (gguf / "report.json").write_text(json.dumps(
        {"default": quant["file"], "questions": ["q"] * 5, "quants": {"q8_0": quant}}))
    result, error = app.predict(hub_server.token, str(run), "tester/app-gguf", False,
                                api_name="/push_gguf")
    assert not value(error), value(error)
    assert "tester/app-gguf" in result and "pushed" in result
    files = set(HfApi().list_repo_files("tester/app-gguf"))
    assert {"gguf-shop-q8_0.gguf", "Modelfile", "report.json", "README.md"} <= files
    card = Path(HfApi().hf_hub_download("tester/app-gguf", "README.md",
                                        cache_dir=str(tmp_path))).read_text(encoding="utf-8")
    assert "library_name: gguf" in card and "| `gguf-shop-q8_0.gguf` | q8_0 |" in card
    assert "ollama create app-gguf -f Modelfile" in card
    _, error = app.predict(hub_server.token, str(make_shop_run(app.tmp / "runs" / "no-gguf")),
                           "tester/app-gguf", False, api_name="/push_gguf")
    assert "no GGUF; make one with `builder export" in error["value"]


def test_answers_share_one_queued_slot_and_nothing_else_waits_behind_them(tmp_path):
    from builder.doors.page import build_app

    fns = list(build_app(runs_root=tmp_path / "runs").fns.values())
    chat = [f for f in fns if f.concurrency_id == "chat"]
    assert len(chat) == 2 and {f.concurrency_limit for f in chat} == {1}  # button and Enter
    assert {f.show_progress for f in chat} == {"full"}  # the queue position on the chat box
    named = {f.api_name: f for f in fns}
    for name in ("stop_chat", "clear_chat", "training_status", "eval_report", "model_card"):
        assert named[name].concurrency_limit is None, name  # never queued behind an answer


@pytest.mark.slow
def test_train_merge_chat_and_push_the_merged_model(app, prepared, hub_server):
    from huggingface_hub import HfApi

    # Train: a second start while it runs is refused
    data_dir = value(prepared[2])
    started = app.predict(data_dir, 1, 2, 1e-3, 3, api_name="/start_training")
    assert "training started" in started, started
    assert BUSY in app.predict(data_dir, 1, 2, 1e-3, 3, api_name="/start_training")
    deadline, seen_states, charts = time.monotonic() + 360, set(), []
    while True:
        outputs = app.predict(api_name="/training_status")
        status = outputs[5]
        charts.append(value(outputs[1]))  # a path when redrawn, else an unchanged-update
        if status["state"] not in ("running", "merging"):
            break
        seen_states.add(status["state"])
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status["state"] == "done", status["log_tail"]
    assert seen_states <= {"running", "merging"} and status["step"] == status["max_steps"] == 2
    assert status["train_loss"] is not None and status["eval_loss"] is not None
    charts = [c for c in charts if isinstance(c, str)]
    assert charts and Path(charts[-1]).is_file()  # the loss chart drawn from progress.json
    run_dir = Path(status["run_dir"])
    assert run_dir.name.startswith("app-") and (run_dir / "merged" / "config.json").is_file()

    # Chat with it: the question shows at once, then a Korean answer from the FAQ (shown
    # sentence by sentence once the fact guard checked it) and the rows it came from
    job = app.submit("배송비는 얼마인가요?", [], str(run_dir), "", 64, 0, api_name="/chat")
    histories = [out[0] for out in job]
    assert [m["role"] for m in histories[0]] == ["user"], histories[0]
    history = histories[-1]
    answer = text_of(history[1]["content"])
    assert answer and has_hangul(answer) and not title_of(history[1]), history
    assert title_of(history[-1]).startswith("참고한 FAQ"), history
    assert "2행" in history[-1]["metadata"]["log"], history[-1]  # the row that asks exactly this

    # Push the merged model and read it back
    result, error = app.predict(hub_server.token, str(run_dir), "tester/app-model", False,
                                api_name="/push_model")
    assert not value(error), value(error)
    assert "tester/app-model" in result
    files = HfApi().list_repo_files("tester/app-model")
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= set(files)
