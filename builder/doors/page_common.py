"""What the page's tabs share: the page's state (runs root, loaded bot, uploads cap), the limits
on what a visitor may send, and the small renderings (progress, the FAQ sources under an
answer, the evaluation)."""

import atexit
import hashlib
import html
import ipaddress
import os
import shutil
import tempfile
import threading
from pathlib import Path

from builder.doors import jobs, uploads
from builder.errors import UserError
from builder.evaluation import report as eval_report

REPO_DIR = Path(__file__).resolve().parents[2]

CSS = """
.error-box { background: #fdecea; border-left: 4px solid #d93025; padding: 8px 12px;
             border-radius: 6px; color: #5f2120; }
.progress-outer { background: #e8eaed; border-radius: 6px; height: 14px; overflow: hidden; }
.progress-inner { background: #1a73e8; height: 100%; transition: width 0.5s; }
"""


STATE_KO = {"idle": "대기", "running": "학습 중", "merging": "병합 중", "done": "완료",
            "failed": "실패", "stopped": "멈춤"}
# Local fonts only (no Google Fonts request), Korean first
FONTS = ["Noto Sans KR", "NanumGothic", "Apple SD Gothic Neo", "Malgun Gothic", "sans-serif"]
MONO_FONTS = ["D2Coding", "NanumGothicCoding", "monospace"]
BUSY = "서버가 바쁩니다. 잠시 후 다시 시도하세요 / the page is busy: try again in a moment"
CHAT_CONCURRENCY = 1  # answers generated at once: on CPU one generation takes every core
DOC_TYPES = (".md", ".txt", ".html", ".htm", ".pdf", ".docx")  # what builder.data.docs reads
GENERATED_COLUMNS = ("instruction", "input", "output", "source", "reviewed")  # faqgen.COLUMNS
NEED_TOKEN = ("Hugging Face 토큰을 입력하세요 / type a Hugging Face token: this page lends the "
              "owner's saved login or HF_TOKEN only when started with --hub-login")


def message_text(content) -> str:
    """A chat message's text: a string, or (Gradio 6) a list of parts like {"type": "text", ...}."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, list):
        return "".join(message_text(part) for part in content)
    return ""


def progress_html(status: jobs.JobStatus) -> str:
    percent = 100 * status.step / status.max_steps if status.max_steps else 0
    losses = [f"{name} {value:.4f}" for name, value in
              (("train loss", status.train_loss), ("val loss", status.eval_loss)) if value is not None]
    where = f" · {html.escape(status.run_dir)}" if status.run_dir else ""
    return (f'<div class="progress-outer"><div class="progress-inner" style="width:{percent:.0f}%">'
            f"</div></div><p><b>{STATE_KO[status.state]}</b> ({status.state}) · 단계 step "
            f"{status.step}/{status.max_steps or '?'} · {status.elapsed_s:.0f} s"
            f"{' · ' + ' · '.join(losses) if losses else ''}{where}</p>"
            f"<p>{html.escape(status.message)}</p>")


def sources_message(reply) -> dict | None:
    """The FAQ entries an answer was given, as a collapsed "참고한 FAQ" chat message to show
    under it; None for a declined answer or a run that does not answer from a FAQ."""
    if reply.declined or not reply.sources:
        return None
    rows, items = [], []
    for hit in reply.sources:
        entry = hit.entry
        row = f"{entry.line}행" if entry.line else "행 번호 없음 / no row"
        rows.append(row)
        answer = entry.answer if len(entry.answer) <= 120 else entry.answer[:119] + "…"
        items.append(f"- **{row}** {entry.question} → {answer}")
    return {"role": "assistant", "content": "\n".join(items),
            "metadata": {"title": "참고한 FAQ / FAQ entries used", "log": ", ".join(rows),
                         "status": "done"}}  # done: shown collapsed


def eval_markdown(summary: eval_report.EvalSummary, run_dir: str | None = None) -> str:
    """The run's evaluation: a note while one runs, the figures per system, the verdict."""
    lines = []
    if summary.running:
        lines.append("⏳ **평가 진행 중 / evaluation running**" +
                     (" — 아래는 이전 결과 / below: the previous one" if summary.systems else ""))
    elif not summary.systems:
        return (f"평가 결과가 아직 없습니다 / no evaluation yet: `builder eval {run_dir}`"
                if run_dir else "")
    if summary.systems:
        lines += ["### 평가 evaluation", ""]
        lines += eval_report.markdown_table(list(summary.systems.values()), summary.rows,
                                       first="항목 figure")
        lines.append("")
        lines += eval_report.retrieval_lines({"retrieval": summary.retrieval}, "- 검색 ")
        if summary.verdict:
            lines += ["", "**판정 verdict**", ""] + [f"- {line}" for line in summary.verdict]
    return "\n".join(lines)


def eval_view(run_dir: str | None, seen_chart, chart_dir: Path):
    """(markdown, chart update, chart key) of a run's evaluation; the chart is sent again only
    when it changed (seen_chart is the key this session last got). The chart shown is a copy
    in chart_dir: the page serves no file from a run folder."""
    import gradio as gr

    summary = eval_report.read_summary(run_dir)
    chart = summary.chart
    try:
        key = (str(chart), chart.stat().st_mtime_ns) if chart is not None else None
        if key is not None and key != seen_chart:
            chart = shown_copy(chart, chart_dir, key)
    except OSError:  # eval/ was replaced in between
        chart = key = None
    if key == seen_chart:
        return eval_markdown(summary, run_dir), gr.skip(), key
    return eval_markdown(summary, run_dir), gr.update(value=chart and str(chart),
                                                      visible=chart is not None), key


def shown_copy(chart: Path, chart_dir: Path, key) -> Path:
    """chart copied whole into chart_dir, under a name of its path and time (one copy each)."""
    name = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    copy = Path(chart_dir) / f"eval-{name}.png"
    if not copy.is_file():
        handle, temp = tempfile.mkstemp(prefix=".eval-", suffix=".png", dir=chart_dir)
        os.close(handle)
        try:
            shutil.copyfile(chart, temp)
            os.replace(temp, copy)
        finally:
            Path(temp).unlink(missing_ok=True)
    return copy


def too_long(what: str, text: str | None, limit: int) -> str | None:
    """The error for a text over its cap (the API can skip the box's max_length), else None."""
    n = len(text or "")
    if n <= limit:
        return None
    return f"{what}: 너무 깁니다 ({n}자 > {limit}자) / too long ({n} characters, the limit is {limit})"


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: only this machine can reach the page."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Page:
    """What the tabs share: the folders a visitor may use, the training job, the loaded
    chatbot, one stop flag per browser session."""

    def __init__(self, runs_root, run_dir, config_path, max_upload_mb, *, hub_login=False,
                 open_page=False, private_endpoints=False, db=None):
        from builder.config import load_config

        self.runs_root = Path(runs_root)
        config_path = Path(config_path)
        if not config_path.is_file() and not config_path.is_absolute():
            config_path = REPO_DIR / config_path  # the shipped configs, wherever the app starts
        self.train_cfg = load_config(config_path).train
        if run_dir is not None and not Path(run_dir).is_dir():
            raise UserError(f"{run_dir}: no such run folder (--run)")
        self.run_dir, self.max_upload_mb = run_dir, max_upload_mb
        self.hub_login = hub_login  # an empty token field pushes with the owner's login
        self.open_page = open_page  # anyone who reaches it uses it, without a login
        self.private_endpoints = private_endpoints  # the generator may post to private addresses
        self.job = jobs.TrainingJob(self.runs_root, config_path)
        self.bots = uploads.ChatbotCache()
        self.stop_events: dict[str, threading.Event] = {}
        self.db = db  # the conversation log's database (--db); None: RUN/conversations.db
        self._logs: dict[Path, object] = {}  # run folder -> its ConversationLog, opened once
        self._logs_lock = threading.Lock()
        self.chart_dir = Path(tempfile.mkdtemp(prefix="builder-app-charts-"))
        atexit.register(shutil.rmtree, self.chart_dir, ignore_errors=True)
        prepared = uploads.list_prepared(self.runs_root)
        self.default_data = str(prepared[0]) if prepared else ""

    def inside(self, folder):
        return uploads.check_folder(folder, self.runs_root, also=self.run_dir)

    def writable_run(self, folder):
        """The run whose FAQ a visitor may replace (the "FAQ 업데이트"), resolved.

        The knowledge is what the run answers customers from, wherever it is served, so the
        page replaces it only for a visitor the owner let in (on loopback, or with the page's
        login: never on an --open page) and only for a run inside the runs root, where the
        page makes its runs (the --run folder elsewhere is the owner's: `builder index`)."""
        if self.open_page:
            raise UserError("FAQ를 바꾸려면 로그인이 필요합니다 / this page is open to anyone "
                            "(--open), so it does not replace a run's FAQ: set "
                            "BUILDER_APP_PASSWORD for a login, or run `builder index RUN FAQ_FILE`")
        path = self.inside(folder)
        if path and not Path(path).is_relative_to(self.runs_root.resolve()):
            raise UserError(f"{folder}: {self.runs_root} 밖의 실행은 FAQ를 바꿀 수 없습니다 / the "
                            f"page updates the FAQ of runs inside {self.runs_root} only; update "
                            f"this one with `builder index {folder} FAQ_FILE`")
        return path

    def conversation_log(self, run_dir):
        """The run's conversation log (builder.owner.log), opened once per run folder."""
        from builder.owner.log import ConversationLog

        run_dir = Path(run_dir).resolve()
        with self._logs_lock:
            if run_dir not in self._logs:
                self._logs[run_dir] = ConversationLog.for_run(run_dir, self.db)
            return self._logs[run_dir]

    def run_choices(self):
        runs = uploads.list_runs(self.runs_root)
        if self.run_dir is not None and \
                Path(self.run_dir).resolve() not in [r.resolve() for r in runs]:
            runs.insert(0, Path(self.run_dir))
        return [(f"{r.name} ({kind(r)})", str(r)) for r in runs]

    def default_run(self):
        choices = self.run_choices()
        return str(self.run_dir) if self.run_dir else (choices[0][1] if choices else None)

    def runs_update(self, current=None):
        import gradio as gr

        choices = self.run_choices()
        values = [value for _, value in choices]
        value = current if current in values else (values[0] if values else None)
        return gr.update(choices=choices, value=value)


def kind(run_dir: Path) -> str:
    """What a run answers with, for the run lists."""
    if (run_dir / "merged").is_dir():
        return "merged"
    return "adapter" if uploads.has_model(run_dir) else "FAQ 답변, 학습 중 / FAQ only, training"


def shown(message: str):
    import gradio as gr

    return gr.update(value=f"⚠️ {message}", visible=True)


def hidden():
    import gradio as gr

    return gr.update(value="", visible=False)
