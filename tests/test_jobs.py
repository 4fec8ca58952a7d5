"""Guards builder/doors/jobs.py: upload checks, the left-out rows table, run lists, the job's log and errors."""

import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import pytest

from builder.doors import jobs, uploads
from builder.evaluation import report as eval_report
from builder.errors import UserError

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "embedded-cpu.yaml"


def test_an_upload_over_the_cap_gets_a_korean_and_english_message(tmp_path):
    big = tmp_path / "faq.csv"
    big.write_bytes(b"x" * (3 * 2**20))
    with pytest.raises(UserError, match=r"faq.csv: 파일이 너무 큽니다 \(3.0 MB > 2 MB\).*too large"):
        uploads.check_upload(big, max_mb=2)
    assert uploads.check_upload(big, max_mb=5) == big
    with pytest.raises(UserError, match="upload a FAQ file"):
        uploads.check_upload(None, max_mb=5)


def test_an_xlsx_that_unpacks_past_the_limit_is_refused_before_it_is_opened(tmp_path):
    bomb = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("xl/worksheets/sheet1.xml", "w") as sheet:
            for _ in range(101):
                sheet.write(bytes(2**20))  # 101 MB of zeros, ~100 KB compressed
    assert bomb.stat().st_size < 2**20
    with pytest.raises(UserError, match=r"bomb.xlsx: 압축을 풀면 너무 큽니다.*unpacks to 101 MB, "
                                         r"over the 100 MB limit"):
        uploads.prepare_upload(bomb, tmp_path / "runs", max_mb=5)


def test_left_out_rows_name_their_line_and_reason():
    report = {"dropped": [
        {"line": 4, "reason": "empty answer"},
        {"line": 9, "reason": "duplicate", "duplicate_of": 2},
        {"line": 12, "reason": "conflict", "lines": [5, 12]},
    ]}
    rows = uploads.dropped_table(report)
    assert [r[0] for r in rows] == [4, 9, 12]
    assert rows[0][1] == "답변 없음 / empty answer"
    assert "same as line 2" in rows[1][2] and "5, 12" in rows[2][2]


def test_runs_with_a_model_and_prepared_folders_are_listed_newest_first(tmp_path):
    for name, files in {"old": ["adapter/adapter_config.json"], "new": ["merged/config.json"],
                        "empty": ["config.yaml"], "data-1": ["report.json"]}.items():
        for file in files:
            (tmp_path / name / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / file).write_text("{}")
    os.utime(tmp_path / "old", (1, 1))
    assert uploads.list_runs(tmp_path) == [tmp_path / "new", tmp_path / "old"]
    assert uploads.list_prepared(tmp_path) == [tmp_path / "data-1"]
    assert uploads.list_runs(tmp_path / "missing") == []
    first = uploads.new_dir(tmp_path, "app")
    first.mkdir()
    second = uploads.new_dir(tmp_path, "app")  # within the same second: a suffix
    assert first.name.startswith("app-") and second != first and not second.exists()


def test_only_folders_inside_the_runs_root_or_the_owners_run_are_accepted(tmp_path):
    root = tmp_path / "runs"
    (root / "app-1").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert uploads.check_folder(root / "app-1", root) == str((root / "app-1").resolve())
    assert uploads.check_folder("", root) == ""  # the caller says "pick one first"
    for outside in (tmp_path / "elsewhere", root / ".." / "elsewhere", root / "link", "/etc"):
        with pytest.raises(UserError, match="밖의 폴더는 쓸 수 없습니다 / only folders inside"):
            uploads.check_folder(outside, root)
    owner_run = tmp_path / "elsewhere"  # `--run DIR`: exactly that folder, nothing beside it
    assert uploads.check_folder(owner_run, root, also=owner_run) == str(owner_run.resolve())
    with pytest.raises(UserError, match="only folders inside"):
        uploads.check_folder(tmp_path, root, also=owner_run)


class Chunks:
    """A pipe that hands out the given byte chunks, like a subprocess's stdout."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)

    def read1(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_the_log_keeps_lines_and_only_the_latest_state_of_a_progress_bar():
    job = jobs.TrainingJob("runs", CONFIG)
    hangul = "학습".encode()
    job._read_output(Chunks(b"loading\n 10%|#  | 1/10\r 20%|##", b" | 2/10\r", b" 30%|### | 3/10\n",
                            hangul[:2], hangul[2:] + b" done\n", b"tail without newline"))
    assert list(job._log) == ["loading", " 30%|### | 3/10", "학습 done", "tail without newline"]


def test_a_folder_that_is_not_prepared_is_refused_and_stop_without_a_run_says_so(tmp_path):
    job = jobs.TrainingJob(tmp_path, CONFIG)
    with pytest.raises(UserError, match="not a prepared data folder"):
        job.start(tmp_path / "nothing")
    assert "no training run" in job.stop()
    assert job.status().state == "idle"


def test_a_failing_run_ends_failed_with_the_cli_error_line(tmp_path):
    from fixtures import make_prepared

    prepared = make_prepared(tmp_path, 12)
    job = jobs.TrainingJob(tmp_path / "runs", CONFIG)
    job.start(prepared, ["model.name=no-such-model"])
    with pytest.raises(UserError, match="already in progress"):
        job.start(prepared)
    deadline = time.monotonic() + 120
    while job.status().state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    status = job.status()
    assert status.state == "failed"
    assert status.message.startswith("error: unknown model 'no-such-model'"), status.log_tail


def test_stop_during_training_saves_the_best_adapter_and_skips_the_merge(tmp_path):
    from fixtures import make_prepared, make_tiny_gemma

    prepared = make_prepared(tmp_path, 30)
    tiny = make_tiny_gemma(tmp_path / "tiny-gemma")
    job = jobs.TrainingJob(tmp_path / "runs", CONFIG)
    run_dir = job.start(prepared, [f"model.name={tiny}", "train.max_steps=500",
                                   "train.eval_steps=1", "train.batch_size=2"])
    deadline = time.monotonic() + 120
    while job.status().step < 2:
        assert job.status().state == "running", job.status().log_tail
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert "stopping" in job.stop()
    while job.status().state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    status = job.status()
    assert (status.state, status.exit_code) == ("stopped", 0), status.log_tail
    assert "Traceback" not in status.log_tail, status.log_tail
    assert "best adapter saved" in status.message and 2 <= status.step < 500
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and not (run_dir / "merged").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["stopped_by_user"] is True


# A stopped job, with a fake training command instead of `builder train`

NO_MERGE = [sys.executable, "-c", "raise SystemExit('error: the merge must not run')"]


def stopped_job(tmp_path, after_stop: str, *, started=True, stop_timeout=120.0) -> jobs.JobStatus:
    """Run a fake `builder train` that waits for RUN/STOP, then runs `after_stop` (Python with
    `run` the run folder); the stop is requested as it starts. The job's status once it ended."""
    job = jobs.TrainingJob(tmp_path, CONFIG, stop_timeout=stop_timeout)
    run_dir = tmp_path / "app-1"
    run_dir.mkdir()
    if started:
        (run_dir / "config.yaml").write_text("")  # training has begun: a stop creates RUN/STOP
    script = ("import json, sys, time\nfrom pathlib import Path\nrun = Path(sys.argv[1])\n"
              "while not (run / 'STOP').exists():\n    time.sleep(0.1)\n" + after_stop)
    job._run_dir, job._state, job._stop_requested = run_dir, "running", time.monotonic()
    job._work([sys.executable, "-c", script, str(run_dir)], NO_MERGE)
    return job.status()


SAVED = "(run / 'adapter').mkdir()\n(run / 'metrics.json').write_text(json.dumps({}))\n"


def test_a_stop_before_the_first_evaluation_says_the_adapter_was_not_evaluated(tmp_path):
    status = stopped_job(tmp_path, SAVED.replace("{}", "{'adapter_evaluated': False}"))
    assert (status.state, status.exit_code) == ("stopped", 0), status
    assert "첫 평가 전에 멈춰" in status.message
    assert "stopped before the first evaluation" in status.message
    assert "never evaluated (validation loss unknown)" in status.message
    assert "best adapter" not in status.message


def test_a_stop_after_an_evaluation_says_the_best_adapter_was_saved(tmp_path):
    status = stopped_job(tmp_path, SAVED.replace("{}", "{'adapter_evaluated': True}"))
    assert (status.state, status.exit_code) == ("stopped", 0), status
    assert "stopped, best adapter saved; merge it with `builder merge" in status.message


def test_a_clean_stop_without_metrics_says_nothing_was_saved(tmp_path):
    status = stopped_job(tmp_path, "sys.exit(0)\n")
    assert (status.state, status.exit_code) == ("stopped", 0), status
    assert "nothing saved" in status.message and "adapter saved" not in status.message


def test_a_stop_while_loading_ends_the_run_with_nothing_saved(tmp_path):
    status = stopped_job(tmp_path, "", started=False)  # no config.yaml: SIGTERM, no STOP file
    assert (status.state, status.exit_code) == ("stopped", -signal.SIGTERM), status
    assert "nothing saved" in status.message


def test_a_crash_after_a_stop_request_is_a_failure(tmp_path):
    status = stopped_job(tmp_path, "print('error: could not save the adapter'); sys.exit(1)\n")
    assert (status.state, status.exit_code) == ("failed", 1), status
    assert status.message == "error: could not save the adapter"


def test_a_kill_while_the_adapter_is_saved_is_a_failure(tmp_path):
    status = stopped_job(tmp_path, "time.sleep(60)\n", stop_timeout=1.0)  # never ends: killed
    assert (status.state, status.exit_code) == ("failed", -signal.SIGKILL), status
    assert status.message == f"exit code {-signal.SIGKILL}; see the log below"


def test_a_redrawn_loss_chart_replaces_the_previous_png(tmp_path):
    job = jobs.TrainingJob(tmp_path, CONFIG)
    job._run_dir = tmp_path / "app-1"
    job._run_dir.mkdir()
    charts, history, drawn = tmp_path / "charts", [], []
    for step in range(1, 5):
        history.append({"step": step, "loss": 2.0 / step})
        (job._run_dir / "progress.json").write_text(json.dumps({"log_history": history}))
        drawn.append(job.loss_chart(charts))
    assert len(set(drawn)) == 4  # a new name per drawing, so the page fetches it again
    assert sorted(charts.iterdir()) == drawn and drawn[-1].name == "app-1-loss-4.png"
    assert job.loss_chart(charts) == drawn[-1] and drawn[-1].is_file()  # unchanged: kept
    # a superseded chart goes once it is old enough that no session is still sending it
    for old in drawn:
        os.utime(old, (time.time() - jobs.CHART_KEEP_S - 1,) * 2)
    history.append({"step": 5, "loss": 0.3})
    (job._run_dir / "progress.json").write_text(json.dumps({"log_history": history}))
    latest = job.loss_chart(charts)
    assert list(charts.iterdir()) == [latest] and latest.name == "app-1-loss-5.png"


def test_loss_charts_drawn_from_several_threads_are_whole_pngs(tmp_path):
    """Sessions polling the page at once each get a whole chart, never one another session is
    still drawing or has just deleted."""
    import threading

    job = jobs.TrainingJob(tmp_path, CONFIG)
    job._run_dir = tmp_path / "app-1"
    job._run_dir.mkdir()
    charts, history, done, got, errors = tmp_path / "charts", [], threading.Event(), [], []

    def write(step):
        history.append({"step": step, "loss": 2.0 / step})
        temp = job._run_dir / "progress.json.tmp"
        temp.write_text(json.dumps({"log_history": history}))
        os.replace(temp, job._run_dir / "progress.json")  # as training writes it

    def train():
        for step in range(2, 12):
            time.sleep(0.1)
            write(step)
        time.sleep(0.1)
        done.set()

    def poll():
        try:
            while not done.is_set():
                path = job.loss_chart(charts)
                time.sleep(0.05)  # the page copies the file once the event returned
                got.append((path, path.read_bytes()))
        except Exception as error:  # noqa: BLE001  (reported below, with its thread's result)
            errors.append(error)

    write(1)
    job.loss_chart(charts)  # matplotlib imported once, before the race
    threads = [threading.Thread(target=train)] + [threading.Thread(target=poll) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(got) > 6 and len({path for path, _ in got}) > 1
    for path, data in got:  # a PNG ends with its IEND chunk
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), path
    assert not [p for p in charts.iterdir() if not p.name.endswith(".png")]  # no temp left


# A run's evaluation, as `builder eval` writes it


def write_eval(run: Path, *, questions: bool = True, chart: bool = True) -> dict:
    """RUN/eval/report.json shaped like builder.evaluation.evaluate's (three systems, its own verdict)
    and a chart.png; the report."""
    from PIL import Image

    from builder.evaluation.evaluate import SYSTEM_LABELS
    from builder.evaluation.scores import verdict

    test = {"base": {"fact_accuracy": 0.25, "chrf": 20.5},
            "tuned": {"fact_accuracy": 0.5, "chrf": 48.25},
            "retrieval": {"fact_accuracy": 0.875, "chrf": 61.0}}
    trained = {"base": {"fact_accuracy": 0.3}, "tuned": {"fact_accuracy": 0.9},
               "retrieval": {"fact_accuracy": 1.0}}
    asked = {s: {"paraphrase_facts": p, "off_topic_declined": 1.0, "unanswerable_declined": u,
                 "invented_shown": n, "runaway": r}
             for s, p, u, n, r in (("base", 0.1, 0.2, 3, 2), ("tuned", 0.6, 0.8, 1, 1),
                                   ("retrieval", 0.7, 0.9, 0, 0))}
    report = {"systems": dict(SYSTEM_LABELS), "splits": {"test": test, "train_sample": trained},
              "questions": asked if questions else {},
              "retrieval": {"test_split": {"hit@1": 0.75, "hit@3": 1.0, "questions": 8}},
              "summary": {m: {s: v[m] for s, v in test.items()} for m in ("fact_accuracy", "chrf")}}
    report["verdict"] = verdict(report)
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / "report.json").write_text(json.dumps(report, ensure_ascii=False),
                                              encoding="utf-8")
    if chart:
        Image.new("RGB", (40, 20), "white").save(run / "eval" / "chart.png")
    return report


def test_eval_summary_reads_three_systems_their_figures_the_verdict_and_the_chart(tmp_path):
    from builder.evaluation.report import FIGURES

    report = write_eval(tmp_path)
    summary = eval_report.read_summary(tmp_path)
    assert not summary.running and summary.chart == tmp_path / "eval" / "chart.png"
    assert list(summary.systems) == ["base", "tuned", "retrieval"]
    rows = {label: (values, kind) for label, values, kind in summary.rows}
    # every figure the report has, in FIGURES' order (the question kinds it lacks are left out)
    shown = [f[2] for f in FIGURES if f[1] in ("fact_accuracy", "paraphrase_facts",
                                                  "off_topic_declined", "unanswerable_declined")]
    assert [label for label, _, _ in summary.rows][:len(shown)] == shown
    assert "near misses declined" not in rows
    assert rows[FIGURES[0][2]] == ([0.25, 0.5, 0.875], "share")
    assert rows["trained questions: facts right"] == ([0.3, 0.9, 1.0], "share")
    assert rows["paraphrased questions: facts right"] == ([0.1, 0.6, 0.7], "share")
    assert rows["test split: chrF (0-100)"] == ([20.5, 48.25, 61.0], "score")
    assert rows["runaway answers cut"] == ([2, 1, 0], "count")
    assert summary.retrieval["test_split"]["hit@1"] == 0.75
    assert summary.verdict == report["verdict"] and any("below the retrieval-only" in line
                                                        for line in summary.verdict)


def test_eval_summary_without_question_figures_or_with_an_older_report(tmp_path):
    write_eval(tmp_path, questions=False, chart=False)
    summary = eval_report.read_summary(tmp_path)
    labels = [label for label, _, _ in summary.rows]
    assert "test split: facts right (entries never trained)" in labels and summary.chart is None
    assert not any("paraphrased" in label or "runaway" in label for label in labels)

    older = {"summary": {"chrf": {"base": 11.5, "tuned": 47.25},
                         "exact_match": {"base": 0.0, "tuned": 0.3}}}
    (tmp_path / "eval" / "report.json").write_text(json.dumps(older))
    summary = eval_report.read_summary(tmp_path)
    assert summary.systems == {"base": "base", "tuned": "tuned"} and summary.verdict == []
    assert summary.rows == [("test split: chrf", [11.5, 47.25], "score"),
                            ("test split: exact_match", [0.0, 0.3], "score")]


def test_eval_running_marker_and_a_missing_or_half_written_report(tmp_path):
    assert eval_report.read_summary(None) == eval_report.read_summary("") == eval_report.EvalSummary(
        False, {}, [], {}, [], None)
    assert eval_report.read_summary(tmp_path) == eval_report.EvalSummary(False, {}, [], {}, [], None)
    (tmp_path / eval_report.EVAL_RUNNING).touch()
    assert eval_report.read_summary(tmp_path).running and not eval_report.read_summary(tmp_path).systems
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text('{"systems": {"ba')  # being written
    assert eval_report.read_summary(tmp_path).running and not eval_report.read_summary(tmp_path).systems
    write_eval(tmp_path)  # an eval again while the last one's report is there
    summary = eval_report.read_summary(tmp_path)
    assert summary.running and len(summary.systems) == 3


# A run's FAQ update, without retraining

NEW_ROW = ["선물용 보자기 포장도 해 주시나요?", "", "네, 선물용 보자기 포장은 한 상품당 2,900원에 해 드려요."]


def make_faq(path: Path, n_rows: int, extra_rows=()) -> Path:
    import csv

    from fixtures import sample_rows

    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        writer.writerows([[r["instruction"], r["input"], r["output"]] for r in sample_rows(n_rows)])
        writer.writerows(extra_rows)
    return path


def test_an_updated_faq_replaces_the_knowledge_and_the_loaded_bot_answers_from_it(tmp_path,
                                                                                 monkeypatch):
    import shutil
    from types import SimpleNamespace

    import builder.answering.chatbot
    from builder.answering.knowledge import Knowledge

    run = tmp_path / "runs" / "shop"
    run.mkdir(parents=True)
    shutil.copy(CONFIG, run / "config.yaml")
    shutil.copy(ROOT / "prompts" / "korean.yaml", run / "template.yaml")
    loads = []  # a bot stand-in: only its knowledge matters here, the model is not loaded
    monkeypatch.setattr(builder.answering.chatbot, "load_chatbot", lambda run_dir, use="auto", **_:
                        loads.append(run_dir) or SimpleNamespace(
                            trained=True, knowledge=Knowledge.load(Path(run_dir) / "knowledge")))
    bots = uploads.ChatbotCache()

    result = uploads.index_upload(make_faq(tmp_path / "faq.csv", 12), run, 1, bots)
    assert (result["entries"], result["grounded"]) == (12, True)
    bot = bots.get(run)
    assert len(bot.knowledge.entries) == 12

    updated = make_faq(tmp_path / "faq-new.csv", 12, [NEW_ROW, ["주소가 어디인가요?", "", ""]])
    result = uploads.index_upload(updated, run, 1, bots)
    assert result["entries"] == 13 and len(result["report"]["dropped"]) == 1
    assert bots.get(run) is bot and len(loads) == 1  # the same bot, not loaded again ...
    hits = bot.knowledge.search(NEW_ROW[0], 3)  # ... answering from the new knowledge
    assert (hits[0].entry.line, hits[0].entry.answer) == (14, NEW_ROW[2])
    assert len(Knowledge.load(run / "knowledge").entries) == 13

    with pytest.raises(UserError, match="upload a FAQ file"):
        uploads.index_upload(None, run, 1, bots)
    with pytest.raises(UserError, match="pick the run whose FAQ to update"):
        uploads.index_upload(updated, "", 1, bots)
    with pytest.raises(UserError, match="too large"):
        uploads.index_upload(updated, run, 0.0001, bots)
    (tmp_path / "runs" / "bare").mkdir()
    with pytest.raises(UserError, match="is not a run folder"):
        uploads.index_upload(updated, tmp_path / "runs" / "bare", 1, bots)
    assert len(bot.knowledge.entries) == 13


def test_a_faq_update_beside_answers_never_gives_them_a_half_replaced_knowledge(tmp_path,
                                                                               monkeypatch):
    """/index_faq and /chat at once: every bot the chat loads has a whole knowledge, old or new."""
    import shutil
    import threading
    from types import SimpleNamespace

    import builder.answering.chatbot
    from builder.answering.knowledge import Knowledge

    run = tmp_path / "runs" / "shop"
    run.mkdir(parents=True)
    shutil.copy(CONFIG, run / "config.yaml")
    shutil.copy(ROOT / "prompts" / "korean.yaml", run / "template.yaml")
    monkeypatch.setattr(builder.answering.chatbot, "load_chatbot", lambda run_dir, use="auto", **_:
                        SimpleNamespace(trained=True,
                                        knowledge=Knowledge.load(Path(run_dir) / "knowledge")))
    bots = uploads.ChatbotCache()
    files = [make_faq(tmp_path / "faq-12.csv", 12), make_faq(tmp_path / "faq-30.csv", 30)]
    uploads.index_upload(files[0], run, 1, bots)
    done, errors, sizes = threading.Event(), [], set()

    def update():
        try:
            for n in range(4):
                uploads.index_upload(files[(n + 1) % 2], run, 1, bots)
        finally:
            done.set()

    def chat():
        n = 0
        while not done.is_set():
            n += 1
            try:  # another engine each time: the chat loads the run again, as a new run does
                knowledge = bots.get(run, use=("auto", "gguf")[n % 2]).knowledge
                sizes.add((len(knowledge.entries), knowledge.dense.shape[0]))
                knowledge.search("배송비는 얼마인가요?", 3)
            except Exception as error:  # noqa: BLE001  (reported below)
                errors.append(error)

    threads = [threading.Thread(target=update), threading.Thread(target=chat)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sizes and sizes <= {(12, 12), (30, 30)}, sizes


def test_reloading_knowledge_leaves_other_runs_and_bots_without_knowledge_alone(tmp_path,
                                                                               monkeypatch):
    from types import SimpleNamespace

    import builder.answering.chatbot

    bots = uploads.ChatbotCache()
    assert bots.reload_knowledge(tmp_path) is False  # nothing loaded: the next load reads it
    kept = object()
    monkeypatch.setattr(builder.answering.chatbot, "load_chatbot", lambda run_dir, use="auto", **_:
                        SimpleNamespace(trained=True, knowledge=kept if Path(run_dir).name ==
                                        "grounded" else None))
    (tmp_path / "grounded").mkdir()
    (tmp_path / "plain").mkdir()
    bot = bots.get(tmp_path / "grounded")
    assert bots.reload_knowledge(tmp_path / "plain") is False and bot.knowledge is kept
    bot = bots.get(tmp_path / "plain")  # a template without {faq}: no knowledge to reload
    assert bots.reload_knowledge(tmp_path / "plain") is False and bot.knowledge is None


def test_a_killed_evals_marker_does_not_say_running_forever(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    marker = tmp_path / eval_report.EVAL_RUNNING
    me = {"pid": os.getpid(), "process_start": eval_report.process_start(os.getpid())}
    marker.write_text(json.dumps(me))
    assert eval_report.read_summary(tmp_path).running  # a live eval (this process)
    # an eval killed with SIGKILL: its marker stays, its process is gone
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    marker.write_text(json.dumps({"pid": child.pid,
                                  "process_start": eval_report.process_start(child.pid)}))
    assert eval_report.read_summary(tmp_path).running
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not eval_report.read_summary(tmp_path).running
    # the PID taken again by another process: its start time is not the eval's
    marker.write_text(json.dumps({**me, "process_start": "1"}))
    assert not eval_report.read_summary(tmp_path).running


def test_the_pages_bot_follows_an_update_made_elsewhere(tmp_path, monkeypatch):
    """An inbox answer from the command line (another process) reaches the page's loaded bot
    within seconds, as it reaches `builder serve`."""
    import shutil
    import time

    import builder.answering.chatbot
    from builder.answering.chatbot import Chatbot
    from builder.answering.knowledge import Knowledge
    from builder.config import Config
    from builder.owner.live import add_rows, knowledge_lock
    from builder.prompts import load_template

    run = tmp_path / "runs" / "shop"
    run.mkdir(parents=True)
    shutil.copy(CONFIG, run / "config.yaml")
    shutil.copy(ROOT / "prompts" / "korean.yaml", run / "template.yaml")
    bots = uploads.ChatbotCache()
    uploads.index_upload(make_faq(tmp_path / "faq-12.csv", 12), run, 1, bots)
    monkeypatch.setattr(builder.answering.chatbot, "load_chatbot", lambda run_dir, use="auto", **_:
                        Chatbot(None, load_template("korean"), rag=Config().rag,
                                knowledge=Knowledge.load(Path(run_dir) / "knowledge")))
    bot = bots.get(run)
    with knowledge_lock(run):
        add_rows(run, [("강아지 간식도 파나요?", "", "강아지 간식은 팔지 않아요.")])
    deadline = time.monotonic() + 10
    while len(bot.knowledge.entries) != 13:
        assert time.monotonic() < deadline, "the page's bot did not follow the update"
        time.sleep(0.1)
    assert bots.get(run) is bot and bot.knowledge.exact("강아지 간식도 파나요?").entry.answer == \
        "강아지 간식은 팔지 않아요."
    bots.get(tmp_path / "runs" / "shop", use="gguf")  # another load stops the old follower
    assert bot.knowledge.entries[-1].question == "강아지 간식도 파나요?"
