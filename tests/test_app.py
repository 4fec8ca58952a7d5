"""Guards the web app through its real HTTP API (gradio_client): data report, errors, training, chat, Hub pushes."""

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
SAMPLE = ROOT / "data" / "sample_faq.csv"
MAX_UPLOAD_MB = 0.2  # small, so the size check is cheap to reach
BUSY = "already in progress"


# Helpers shared with test_browser.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        proc.wait(timeout=20)
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
    proc, url = start_app(tmp, "--config", str(tmp / "tiny.yaml"),
                          "--max-upload-mb", str(MAX_UPLOAD_MB),
                          env={"HF_TOKEN": hub_server.token})  # on loopback the page may use it
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


def test_an_empty_token_on_loopback_pushes_with_the_owners_HF_TOKEN(app, prepared, hub_server):
    result, error = app.predict("", value(prepared[2]), "tester/app-fallback", False,
                                api_name="/push_dataset")
    assert not value(error), value(error)
    assert "tester/app-fallback" in result
    assert ("dataset", "tester/app-fallback") in hub_server.repos


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
    from builder.webapp import MAX_CONTEXT_CHARS, MAX_QUESTION_CHARS

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
    from builder.webapp import is_loopback

    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.168.0.7", "10.0.0.1", "a.com"]))


@pytest.mark.parametrize("door", ["builder app", "app.py"])
def test_both_doors_pass_the_upload_cap_queue_size_and_open_flag(door, monkeypatch):
    import app as app_door
    from builder import cli, webapp

    calls = []
    monkeypatch.setattr(webapp, "launch", lambda *args, **kwargs: calls.append((args, kwargs)))
    flags = ["--host", "0.0.0.0", "--max-upload-mb", "3.5", "--max-queue", "4", "--open"]
    code = cli.main(["app", *flags]) if door == "builder app" else app_door.main(flags)
    assert code == 0 and len(calls) == 1
    args, kwargs = calls[0]
    assert args[0] == "0.0.0.0"
    assert (kwargs["max_upload_mb"], kwargs["max_queue"], kwargs["open_access"]) == (3.5, 4, True)


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


def test_off_loopback_the_page_needs_its_login_and_removes_its_charts_on_exit(tmp_path, hub_server):
    from gradio_client import Client

    password = "pw-" + os.urandom(6).hex()
    env = {"BUILDER_APP_PASSWORD": password, "HF_TOKEN": hub_server.token, "TMPDIR": str(tmp_path)}
    proc, url = start_app(tmp_path, "--host", "0.0.0.0", env=env)
    try:
        with pytest.raises(Exception, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, auth=("admin", password), verbose=False)
        assert client.predict("", "", api_name="/model_card") == ""
        assert len(list(tmp_path.glob("builder-app-charts-*"))) == 1
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

    # Chat with it: the answer streams in several updates and is Korean
    job = app.submit("배송비는 얼마인가요?", [], str(run_dir), "", 32, 0, api_name="/chat")
    answers = [text_of(out[0][-1]["content"]) for out in job if len(out[0]) == 2]
    assert len(set(answers)) >= 3, answers
    assert answers[-1] and has_hangul(answers[-1]), answers[-1]

    # Push the merged model and read it back
    result, error = app.predict(hub_server.token, str(run_dir), "tester/app-model", False,
                                api_name="/push_model")
    assert not value(error), value(error)
    assert "tester/app-model" in result
    files = HfApi().list_repo_files("tester/app-model")
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= set(files)
