"""The page's one background training job (builder/doors/page.py): train, then merge.

    job = TrainingJob("runs", "configs/embedded-cpu.yaml")
    job.start("runs/data-20250101-120000", ["train.max_steps=20"])  # -> runs/app-20250101-120500
    job.status()   # JobStatus(state="running", step=3, max_steps=20, ...)
    job.stop()     # graceful: creates RUN/STOP; killed if still running after `stop_timeout` s

Training and merging run as the same commands a user types (`python -m builder train ...`, then
`python -m builder merge ...`) in a subprocess: the page stays responsive, and a crash or a
kill cannot take the app down. Uploads, run lists and the loaded chatbot are
builder.doors.uploads. Nothing here imports gradio.
"""

import atexit
import codecs
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from builder.doors.uploads import new_dir
from builder.errors import UserError

BUSY = "이미 학습이 진행 중입니다 / a training run is already in progress"
LOG_LINES = 200  # lines of subprocess output kept for the page
CHART_KEEP_S = 60.0  # a superseded loss chart stays this long: a session may still be sending it


# ---------------------------------------------------------------------------------------------
# Data uploads


# ---------------------------------------------------------------------------------------------
# Run folders


def read_progress(run_dir: Path | None) -> dict:
    """RUN/progress.json written on every training log; {} before the first one."""
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (TypeError, OSError, ValueError):  # no run yet, not written yet, or half-written
        return {}


# ---------------------------------------------------------------------------------------------
# The training job


@dataclass
class JobStatus:
    state: str  # idle | running | merging | done | failed | stopped
    run_dir: str | None
    step: int
    max_steps: int
    train_loss: float | None  # the last logged training loss
    eval_loss: float | None  # the last validation loss
    log_tail: str
    message: str  # what happened, in one line (the error for a failed run)
    elapsed_s: float
    exit_code: int | None  # of the last command (train or merge) once the job ended


class TrainingJob:
    """One `builder train` + `builder merge` at a time, in a subprocess, watched by a thread."""

    def __init__(self, runs_root: str | Path, config_path: str | Path, *, stop_timeout: float = 120.0):
        self.runs_root, self.config_path = Path(runs_root), Path(config_path)
        self.stop_timeout = stop_timeout  # s between the STOP file and a kill
        self._lock = threading.Lock()
        self._chart_lock = threading.Lock()  # one drawing at a time; the others wait for it
        self._state, self._message = "idle", ""
        self._run_dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log: deque[str] = deque(maxlen=LOG_LINES)
        self._current_line = ""  # a progress bar being redrawn with \r
        self._started = self._finished = 0.0
        self._stop_requested: float | None = None
        self._cancelled = False  # stopped with SIGTERM before training began
        self._exit_code: int | None = None
        atexit.register(self.kill)  # a training run never outlives the app

    @property
    def busy(self) -> bool:
        return self._state in ("running", "merging")

    def start(self, prepared_dir: str | Path, overrides: list[str] = ()) -> Path:
        """Start training on a prepared folder; returns the new run folder."""
        from builder.config import load_config

        prepared_dir = Path(prepared_dir)
        with self._lock:
            if self.busy:
                raise UserError(f"{BUSY} ({self._run_dir})")
            if not (prepared_dir / "report.json").is_file():
                raise UserError(f"{prepared_dir}: 준비된 데이터 폴더가 아닙니다 / not a prepared data "
                                "folder; upload a FAQ file in the 데이터 tab first")
            load_config(self.config_path, list(overrides))  # a bad value fails here, not later
            run_dir = new_dir(self.runs_root, "app")
            sets = [arg for item in overrides for arg in ("--set", item)]
            builder = [sys.executable, "-m", "builder"]
            train = [*builder, "train", str(prepared_dir), "--out", str(run_dir),
                     "--config", str(self.config_path), *sets]
            merge = [*builder, "merge", str(run_dir)]
            self._state, self._message, self._run_dir = "running", "", run_dir
            self._log.clear()
            self._current_line, self._stop_requested = "", None
            self._cancelled, self._exit_code = False, None
            self._started, self._finished = time.time(), 0.0
            threading.Thread(target=self._work, args=(train, merge), daemon=True,
                             name="training-job").start()
        return run_dir

    def stop(self) -> str:
        """Ask the run to stop at the next step (RUN/STOP); the watcher kills it after a timeout."""
        with self._lock:
            if not self.busy:
                return "진행 중인 학습이 없습니다 / no training run in progress"
            if self._state == "merging":  # under a minute, and a half-merged model is no use
                return "병합 중이라 곧 끝납니다 / merging: it finishes shortly"
            self._stop_requested = self._stop_requested or time.monotonic()
        return "멈추는 중: 다음 단계에서 멈추고 어댑터를 저장합니다 / stopping at the next step"

    def status(self) -> JobStatus:
        progress = read_progress(self._run_dir)
        history = progress.get("log_history", [])
        losses = [h["loss"] for h in history if "loss" in h]
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        with self._lock:
            tail = list(self._log) + ([self._current_line] if self._current_line else [])
            end = self._finished or (time.time() if self._started else 0.0)
            return JobStatus(
                state=self._state, run_dir=str(self._run_dir) if self._run_dir else None,
                step=progress.get("step", 0), max_steps=progress.get("max_steps", 0),
                train_loss=losses[-1] if losses else None, eval_loss=evals[-1] if evals else None,
                log_tail="\n".join(tail[-40:]), message=self._message,
                elapsed_s=round(end - self._started, 1) if self._started else 0.0,
                exit_code=self._exit_code,
            )

    def loss_chart(self, out_dir: str | Path) -> Path | None:
        """The loss chart drawn from progress.json into out_dir (redrawn only when it changed).

        Every open page polls at once: one session draws (whole: plot_loss writes a temp file
        and renames it), the others wait and get the same file. A superseded chart is deleted
        once it is CHART_KEEP_S old, not at once: another session may just have been handed it
        and Gradio copies it only after the event returned."""
        from builder.training.sft import plot_loss

        run_dir = self._run_dir
        history = read_progress(run_dir).get("log_history", [])
        if not history:
            return None
        path = Path(out_dir) / f"{run_dir.name}-loss-{len(history)}.png"  # new name, new URL
        with self._chart_lock:
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                plot_loss(history, path)
                _delete_older_charts(path)
        return path

    # The watcher thread

    def _work(self, train: list[str], merge: list[str]) -> None:
        code = self._run(train)
        # a stop ends cleanly with exit 0 (or our SIGTERM while loading); a crash or a kill
        # while the adapter is saved is a failure, whoever asked for the stop
        if self._stop_requested is not None and (code == 0 or self._cancelled):
            self._finish("stopped", self._stopped_message(), code)
        elif code != 0:
            self._finish("failed", self._error_line(code), code)
        else:
            with self._lock:
                self._state = "merging"
            code = self._run(merge)
            if code == 0:
                self._finish("done", f"완료 / done: {self._run_dir / 'merged'}", code)
            else:
                self._finish("failed", self._error_line(code), code)

    def _stopped_message(self) -> str:
        """What a stopped run left, from RUN/metrics.json (written with the adapter)."""
        try:
            metrics = json.loads((self._run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "멈춤: 저장된 것이 없습니다 / stopped before training began (nothing saved)"
        merge = f"merge it with `builder merge {self._run_dir}`"
        if metrics.get("adapter_evaluated") is False:
            return ("멈춤: 첫 평가 전에 멈춰, 저장된 어댑터(마지막 단계)는 평가되지 않았습니다 "
                    "(검증 손실 모름) / stopped before the first evaluation: the saved adapter is the "
                    f"last step's and was never evaluated (validation loss unknown); {merge}")
        return f"멈춤: 가장 좋은 어댑터를 저장했습니다 / stopped, best adapter saved; {merge}"

    def _finish(self, state: str, message: str, code: int) -> None:
        with self._lock:
            self._state, self._message, self._finished = state, message, time.time()
            self._exit_code, self._proc = code, None

    def _error_line(self, code: int) -> str:
        errors = [line for line in self._log if line.startswith("error:")]
        return errors[-1] if errors else f"exit code {code}; see the log below"

    def _run(self, command: list[str]) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # its own process group, so a kill reaches everything it started
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        with self._lock:
            self._proc = proc
        reader = threading.Thread(target=self._read_output, args=(proc.stdout,), daemon=True)
        reader.start()
        while proc.poll() is None:
            self._enforce_stop(proc)
            time.sleep(0.5)
        reader.join(timeout=5)
        return proc.returncode

    def _enforce_stop(self, proc: subprocess.Popen) -> None:
        if self._stop_requested is None:
            return
        if time.monotonic() - self._stop_requested > self.stop_timeout:
            _signal_group(proc, signal.SIGKILL)
        elif (self._run_dir / "config.yaml").is_file():
            (self._run_dir / "STOP").touch()  # train deletes a stale STOP before config.yaml
        else:
            self._cancelled = True
            _signal_group(proc, signal.SIGTERM)  # still loading: nothing to save yet

    def kill(self) -> None:
        """Kill a running subprocess at once (the app is exiting)."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)

    def _read_output(self, stream) -> None:
        """Keep the last lines of output; a \\r-redrawn progress bar shows its latest state."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial = ""
        for chunk in iter(lambda: stream.read1(4096), b""):
            *lines, partial = (partial + decoder.decode(chunk)).split("\n")
            # of a bar redrawn many times keep the latest drawing, and a \r that ends it
            redrawn = [s for s in partial.split("\r") if s.strip()]
            partial = (redrawn[-1] if redrawn else "") + ("\r" if partial.endswith("\r") else "")
            with self._lock:
                for line in lines:
                    shown = [s for s in line.split("\r") if s.strip()]
                    if shown:
                        self._log.append(shown[-1].rstrip())
                self._current_line = partial.rstrip()  # \r is whitespace
        with self._lock:
            if self._current_line:
                self._log.append(self._current_line)
            self._current_line = ""


def _delete_older_charts(kept: Path) -> None:
    """The loss charts beside `kept` that are more than CHART_KEEP_S old."""
    now = time.time()
    for old in kept.parent.glob("*-loss-*.png"):
        try:
            if old != kept and now - old.stat().st_mtime > CHART_KEEP_S:
                old.unlink()
        except FileNotFoundError:  # deleted in between
            pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it has just exited
        pass
