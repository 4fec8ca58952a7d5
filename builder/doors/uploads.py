"""What the page does with files and folders: FAQ uploads checked and prepared, the left-out rows
as a table, the prepared folders and runs it lists, paths kept under the runs root, an updated
FAQ indexed into a run, and the one loaded chatbot it chats with."""

import csv
import threading
import time
from pathlib import Path

from builder.errors import UserError


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
    from builder.data.prepare import prepare

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


def answers(run_dir: Path) -> bool:
    """The run can answer: it holds a model, or (still training) its FAQ's knowledge."""
    from builder.run import Run

    return has_model(run_dir) or ((run_dir / "template.yaml").is_file() and
                                  Run(run_dir).has_knowledge())


def list_runs(runs_root: str | Path) -> list[Path]:
    """Run folders in runs_root that can answer (a model, or the knowledge of one still
    training), newest first."""
    root = Path(runs_root)
    if not root.is_dir():
        return []
    return _newest_first(p for p in root.iterdir() if p.is_dir() and answers(p))


class ChatbotCache:
    """One loaded Chatbot at a time (a model is ~1 GB in fp32), reloaded when the run or the
    engine (use="auto": transformers, "gguf": llama.cpp) changes.

    Its lock is the page's knowledge lock: a run is loaded (its knowledge read) and a run's
    knowledge is replaced (index_upload) under it, so a chat never reads a knowledge folder
    that is being swapped, half old and half new."""

    def __init__(self):
        self.lock = threading.Lock()
        self._run_dir: Path | None = None
        self._use = "auto"
        self._bot = None
        self._following = threading.Event()  # set: the loaded bot stops following its run

    def get(self, run_dir: str | Path, use: str = "auto"):
        from builder.answering.chatbot import load_chatbot

        if not run_dir:
            raise UserError("대화할 실행(run)을 먼저 고르세요 / pick a trained run first")
        run_dir = Path(run_dir).resolve()
        with self.lock:
            if (self._run_dir, self._use) != (run_dir, use):
                self._following.set()
                self._bot, self._run_dir = None, None  # free the old model before loading
                self._bot = load_chatbot(run_dir, use, faq_first=True)
                self._run_dir, self._use = run_dir, use
                from builder.owner.live import follow, follow_model

                self._following = threading.Event()
                if self._bot.knowledge is not None:  # an answer from `builder inbox` or
                    follow(self._bot, run_dir, stop=self._following)  # `builder index`
                if not self._bot.trained:  # still training: the FAQ answers meanwhile
                    follow_model(self._bot, run_dir, use, stop=self._following)
            return self._bot

    def loaded(self, run_dir: str | Path):
        """The loaded Chatbot when it is that run's and answers from knowledge, else None (a
        run without a FAQ slot keeps answering without one). The caller holds `lock`."""
        if self._run_dir != Path(run_dir).resolve():
            return None
        return self._bot if getattr(self._bot, "knowledge", None) is not None else None

    def knowledge(self, run_dir: str | Path):
        """The run's knowledge: the loaded bot's when it is that run's, else read from
        RUN/knowledge (under the lock: never half replaced); None when the run has none."""
        from builder.answering.knowledge import Knowledge
        from builder.run import Run

        run = Run(Path(run_dir).resolve())
        with self.lock:
            if self._run_dir == run.path and getattr(self._bot, "knowledge", None) is not None:
                return self._bot.knowledge
            return Knowledge.load(run.knowledge_dir) if run.has_knowledge() else None

    def reload_knowledge(self, run_dir: str | Path) -> bool:
        """After RUN/knowledge was rebuilt: the loaded bot of that run answers from it at once
        (the model stays loaded). False when that run's bot is not loaded or has no knowledge.
        The caller holds `lock`. The new knowledge is read whole, then put in place in one
        step: an answer being grounded keeps the knowledge it started with."""
        from builder.answering.knowledge import Knowledge

        run_dir = Path(run_dir).resolve()
        if self._run_dir != run_dir or getattr(self._bot, "knowledge", None) is None:
            return False
        self._bot.knowledge = Knowledge.load(run_dir / "knowledge")
        return True


def index_upload(faq_file, run_dir: str | Path | None, max_mb: float, bots: ChatbotCache) -> dict:
    """An updated FAQ file becomes the run's knowledge (builder.answering.indexing.index_run, as
    `builder index`), and the loaded bot of that run uses it for the next question.

    index_run's result, plus "grounded": whether the run's template uses the FAQ at all.
    The knowledge is written and reloaded under the bots' knowledge lock: a chat that loads
    the run meanwhile waits, and one updates at a time."""
    from builder.answering.indexing import index_run
    from builder.prompts import parse_template

    if not run_dir:
        raise UserError("FAQ를 바꿀 실행(run)을 먼저 고르세요 / pick the run whose FAQ to update first")
    path = check_upload(faq_file, max_mb)
    with bots.lock:
        result = index_run(run_dir, path, log=lambda *_: None)
        bots.reload_knowledge(run_dir)
    template = Path(run_dir) / "template.yaml"
    grounded = template.is_file() and parse_template(template.read_text(encoding="utf-8"),
                                                     str(template)).grounded
    return {**result, "grounded": grounded}
