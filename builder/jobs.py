"""What the web app (builder/webapp.py) does besides drawing: uploads, previews, the run list,
the loaded chatbot, a run's FAQ update and evaluation, and the one background training job.

    job = TrainingJob("runs", "configs/embedded-cpu.yaml")
    job.start("runs/data-20250101-120000", ["train.max_steps=20"])  # -> runs/app-20250101-120500
    job.status()   # JobStatus(state="running", step=3, max_steps=20, ...)
    job.stop()     # graceful: creates RUN/STOP; killed if still running after `stop_timeout` s

Training and merging run as the same commands a user types (`python -m builder train ...`, then
`python -m builder merge ...`) in a subprocess: the page stays responsive, and a crash or a
kill cannot take the app down. An updated FAQ file becomes a run's knowledge as `builder index`
makes it (index_upload), and the loaded bot answers from it at once. A run's evaluation is what
`builder eval` wrote to RUN/eval/; RUN/eval.running says one is under way. Nothing here imports
gradio.
"""

import atexit
import codecs
import csv
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

from builder.errors import UserError

BUSY = "이미 학습이 진행 중입니다 / a training run is already in progress"
LOG_LINES = 200  # lines of subprocess output kept for the page


# ---------------------------------------------------------------------------------------------
# Data uploads


def new_dir(runs_root: str | Path, prefix: str) -> Path:
    """runs_root/PREFIX-YYYYmmdd-HHMMSS, with -2, -3 ... when that name is taken."""
    base = Path(runs_root) / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_upload(faq_file: str | Path | None, max_mb: float) -> Path:
    """The uploaded file's path, or a bilingual UserError when missing or over the size cap."""
    if not faq_file:
        raise UserError("FAQ 파일을 먼저 올려 주세요 / upload a FAQ file (CSV, TSV or XLSX) first")
    path = Path(faq_file)
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise UserError(
            f"{path.name}: 파일이 너무 큽니다 ({size_mb:.1f} MB > {max_mb:g} MB). "
            f"/ the file is too large ({size_mb:.1f} MB, the limit is {max_mb:g} MB): "
            "split it or remove unused columns."
        )
    return path


def prepare_upload(faq_file, runs_root: str | Path, max_mb: float) -> tuple[dict, Path]:
    """Check an uploaded FAQ file and prepare it into a new runs_root/data-<timestamp>."""
    from builder.data import prepare

    path = check_upload(faq_file, max_mb)
    out_dir = new_dir(runs_root, "data")
    return prepare(path, out_dir), out_dir


REASONS_KO = {
    "empty question and answer": "질문·답변 없음",
    "empty question": "질문 없음",
    "empty answer": "답변 없음",
    "duplicate": "중복",
    "conflict": "충돌 (같은 질문, 다른 답변)",
}


def dropped_table(report: dict) -> list[list]:
    """report["dropped"] as rows of [line, reason (Korean / English), detail]."""
    rows = []
    for d in report["dropped"]:
        reason = f"{REASONS_KO.get(d['reason'], d['reason'])} / {d['reason']}"
        if "duplicate_of" in d:
            detail = f"{d['duplicate_of']}번 줄과 같음 (same as line {d['duplicate_of']})"
        elif "lines" in d:
            detail = "줄 / lines " + ", ".join(map(str, d["lines"]))
        else:
            detail = ""
        rows.append([d["line"], reason, detail])
    return rows


def preview_rows(prepared_dir: str | Path, n: int = 20) -> list[list[str]]:
    """The first n rows of train.csv (instruction, input, output)."""
    with (Path(prepared_dir) / "train.csv").open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)  # header
        return [row for _, row in zip(range(n), reader)]


# ---------------------------------------------------------------------------------------------
# Run folders


def _newest_first(paths) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def list_prepared(runs_root: str | Path) -> list[Path]:
    """Prepared data folders (with report.json) in runs_root, newest first."""
    root = Path(runs_root)
    return _newest_first(p.parent for p in root.glob("*/report.json")) if root.is_dir() else []


def check_folder(folder: str | Path | None, runs_root: str | Path,
                 also: str | Path | None = None) -> str | None:
    """folder, resolved, if it lies in runs_root or is `also` (the --run folder the owner named).

    A visitor types these paths, so anything else on the disk is refused; empty passes through
    (the caller says what to pick)."""
    if not folder:
        return folder
    path = Path(folder).resolve()  # "..", and links that lead out of runs_root, are resolved away
    if path.is_relative_to(Path(runs_root).resolve()) or (also and path == Path(also).resolve()):
        return str(path)
    raise UserError(f"{folder}: {runs_root} 밖의 폴더는 쓸 수 없습니다 / only folders inside the runs "
                    f"folder {runs_root} can be used here")


def has_model(run_dir: Path) -> bool:
    return (run_dir / "merged" / "config.json").is_file() or (
        run_dir / "adapter" / "adapter_config.json").is_file()


def list_runs(runs_root: str | Path) -> list[Path]:
    """Run folders in runs_root that hold a merged model or an adapter, newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    return _newest_first(p for p in root.iterdir() if p.is_dir() and has_model(p))


def read_progress(run_dir: Path | None) -> dict:
    """RUN/progress.json written on every training log; {} before the first one."""
    try:
        return json.loads((run_dir / "progress.json").read_text())
    except (TypeError, OSError, ValueError):  # no run yet, not written yet, or half-written
        return {}


EVAL_RUNNING = "eval.running"  # `builder eval` keeps RUN/eval.running while it works
# shown after builder.evaluate.FIGURES (shares of questions): (section, key, label, kind)
MORE_FIGURES = [("summary", "chrf", "test split: chrF (0-100)", "score"),
                ("questions", "invented_shown", "answers shown with an invented fact", "count"),
                ("questions", "runaway", "runaway answers cut", "count")]


@dataclass
class EvalSummary:
    """What the page shows of RUN/eval/: the systems, one row per figure, the verdict."""

    running: bool  # RUN/eval.running exists: an eval is under way (rows are the last one's)
    systems: dict  # {system: label} in the report's order; {} when there is no report
    rows: list  # [(label, [value per system], kind)]; kind: "share" (0-1), "count" or "score"
    retrieval: dict  # {"test_split" | "paraphrases": {"hit@1", "hit@3", "questions"}}
    verdict: list  # plain sentences
    chart: Path | None


def eval_summary(run_dir: str | Path | None) -> EvalSummary:
    """RUN/eval/report.json and chart.png, and whether RUN/eval.running says an eval is under
    way. An older report (a "summary" of base and tuned only) shows its summary rows."""
    from builder.evaluate import FIGURES

    if not run_dir:
        return EvalSummary(False, {}, [], {}, [], None)
    running = (Path(run_dir) / EVAL_RUNNING).exists()
    try:
        report = json.loads((Path(run_dir) / "eval" / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no eval yet, or one being swapped in
        report = {}
    if not isinstance(report, dict) or not report.get("summary"):
        return EvalSummary(running, {}, [], {}, [], None)
    summary = report["summary"]  # {metric: {system: x}}, test split
    systems = report.get("systems") or {s: s for s in ("base", "tuned", "retrieval")
                                         if any(s in v for v in summary.values())}
    tables = {"questions": report.get("questions") or {}, **(report.get("splits") or {}),
              "summary": {s: {m: v.get(s) for m, v in summary.items()} for s in systems}}
    if report.get("splits"):
        figures = [(section, key, label, "share") for section, key, label in FIGURES] + MORE_FIGURES
    else:  # an older report: its summary is all there is
        figures = [("summary", m, f"test split: {m}", "score") for m in summary]
    rows = []
    for section, key, label, kind in figures:
        values = [tables.get(section, {}).get(s, {}).get(key) for s in systems]
        if any(v is not None for v in values):
            rows.append((label, values, kind))
    chart = Path(run_dir) / "eval" / "chart.png"
    return EvalSummary(running, dict(systems), rows, report.get("retrieval") or {},
                       list(report.get("verdict") or []), chart if chart.is_file() else None)


class ChatbotCache:
    """One loaded Chatbot at a time (a model is ~1 GB in fp32), reloaded when the run or the
    engine (use="auto": transformers, "gguf": llama.cpp) changes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._run_dir: Path | None = None
        self._use = "auto"
        self._bot = None

    def get(self, run_dir: str | Path, use: str = "auto"):
        from builder.llamacpp import load_chatbot

        if not run_dir:
            raise UserError("대화할 실행(run)을 먼저 고르세요 / pick a trained run first")
        run_dir = Path(run_dir).resolve()
        with self._lock:
            if (self._run_dir, self._use) != (run_dir, use):
                self._bot, self._run_dir = None, None  # free the old model before loading
                self._bot = load_chatbot(run_dir, use)
                self._run_dir, self._use = run_dir, use
            return self._bot

    def reload_knowledge(self, run_dir: str | Path) -> bool:
        """After RUN/knowledge was rebuilt: the loaded bot of that run answers from it at once
        (the model stays loaded). False when that run's bot is not loaded or has no knowledge."""
        from builder.knowledge import Knowledge

        run_dir = Path(run_dir).resolve()
        with self._lock:
            if self._run_dir != run_dir or getattr(self._bot, "knowledge", None) is None:
                return False
            self._bot.knowledge = Knowledge.load(run_dir / "knowledge")
            return True


def index_upload(faq_file, run_dir: str | Path | None, max_mb: float, bots: ChatbotCache) -> dict:
    """An updated FAQ file becomes the run's knowledge (builder.knowledge.index_run, as
    `builder index`), and the loaded bot of that run uses it for the next question.

    index_run's result, plus "grounded": whether the run's template uses the FAQ at all."""
    from builder.knowledge import index_run
    from builder.prompts import parse_template

    if not run_dir:
        raise UserError("FAQ를 바꿀 실행(run)을 먼저 고르세요 / pick the run whose FAQ to update first")
    path = check_upload(faq_file, max_mb)
    result = index_run(run_dir, path, log=lambda *_: None)
    bots.reload_knowledge(run_dir)
    template = Path(run_dir) / "template.yaml"
    grounded = template.is_file() and parse_template(template.read_text(encoding="utf-8"),
                                                     str(template)).grounded
    return {**result, "grounded": grounded}


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

        The page shows one chart: the one a new drawing supersedes is deleted."""
        from builder.train import plot_loss

        history = read_progress(self._run_dir).get("log_history", [])
        if not history:
            return None
        path = Path(out_dir) / f"{self._run_dir.name}-loss-{len(history)}.png"  # new name, new URL
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            plot_loss(history, path)
            for old in path.parent.glob("*-loss-*.png"):
                if old != path:
                    old.unlink(missing_ok=True)
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


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # it has just exited
        pass
