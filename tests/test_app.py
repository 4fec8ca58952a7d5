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


def start_app(tmp: Path, *flags: str, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """`python app.py --port FREE --runs-root TMP/runs FLAGS`, once it answers HTTP.

    It inherits HF_ENDPOINT / HF_HUB_DISABLE_XET / HF_HOME from conftest (the loopback Hub)."""
    port = free_port()
    log = (tmp / f"app-{port}.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
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
                          "--max-upload-mb", str(MAX_UPLOAD_MB))
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
    assert status["state"] == "stopped", status


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
