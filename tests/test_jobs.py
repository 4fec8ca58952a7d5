"""Guards builder/jobs.py: upload checks, the left-out rows table, run lists, the job's log and errors."""

import json
import os
import time
from pathlib import Path

import pytest

from builder import jobs
from builder.errors import UserError

ROOT = Path(__file__).parents[1]


def test_an_upload_over_the_cap_gets_a_korean_and_english_message(tmp_path):
    big = tmp_path / "faq.csv"
    big.write_bytes(b"x" * (3 * 2**20))
    with pytest.raises(UserError, match=r"faq.csv: 파일이 너무 큽니다 \(3.0 MB > 2 MB\).*too large"):
        jobs.check_upload(big, max_mb=2)
    assert jobs.check_upload(big, max_mb=5) == big
    with pytest.raises(UserError, match="upload a FAQ file"):
        jobs.check_upload(None, max_mb=5)


def test_left_out_rows_name_their_line_and_reason():
    report = {"dropped": [
        {"line": 4, "reason": "empty answer"},
        {"line": 9, "reason": "duplicate", "duplicate_of": 2},
        {"line": 12, "reason": "conflict", "lines": [5, 12]},
    ]}
    rows = jobs.dropped_table(report)
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
    assert jobs.list_runs(tmp_path) == [tmp_path / "new", tmp_path / "old"]
    assert jobs.list_prepared(tmp_path) == [tmp_path / "data-1"]
    assert jobs.list_runs(tmp_path / "missing") == []
    first = jobs.new_dir(tmp_path, "app")
    first.mkdir()
    second = jobs.new_dir(tmp_path, "app")  # within the same second: a suffix
    assert first.name.startswith("app-") and second != first and not second.exists()


class Chunks:
    """A pipe that hands out the given byte chunks, like a subprocess's stdout."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)

    def read1(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def test_the_log_keeps_lines_and_only_the_latest_state_of_a_progress_bar():
    job = jobs.TrainingJob("runs", ROOT / "configs" / "embedded-cpu.yaml")
    hangul = "학습".encode()
    job._read_output(Chunks(b"loading\n 10%|#  | 1/10\r 20%|##", b" | 2/10\r", b" 30%|### | 3/10\n",
                            hangul[:2], hangul[2:] + b" done\n", b"tail without newline"))
    assert list(job._log) == ["loading", " 30%|### | 3/10", "학습 done", "tail without newline"]


def test_a_folder_that_is_not_prepared_is_refused_and_stop_without_a_run_says_so(tmp_path):
    job = jobs.TrainingJob(tmp_path, ROOT / "configs" / "embedded-cpu.yaml")
    with pytest.raises(UserError, match="not a prepared data folder"):
        job.start(tmp_path / "nothing")
    assert "no training run" in job.stop()
    assert job.status().state == "idle"


def test_a_failing_run_ends_failed_with_the_cli_error_line(tmp_path):
    from fixtures import make_prepared

    prepared = make_prepared(tmp_path, 12)
    job = jobs.TrainingJob(tmp_path / "runs", ROOT / "configs" / "embedded-cpu.yaml")
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
    job = jobs.TrainingJob(tmp_path / "runs", ROOT / "configs" / "embedded-cpu.yaml")
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
    assert status.state == "stopped", status.log_tail
    assert "best adapter saved" in status.message and 2 <= status.step < 500
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and not (run_dir / "merged").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["stopped_by_user"] is True
