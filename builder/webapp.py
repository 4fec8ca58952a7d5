"""The web page (Gradio, Korean labels): 데이터 -> 학습 -> 채팅 -> 배포, over the library's functions.

    python app.py                     # http://127.0.0.1:7860
    python app.py --run runs/demo     # chat with a trained run first

Each tab is one function (data_tab, train_tab, chat_tab, deploy_tab) and calls what the CLI
calls (builder.data.prepare, builder.faqgen, `builder train` / `builder merge`,
builder.chat.Chatbot or builder.llamacpp.GgufChatbot, builder.export, builder.hub);
builder.jobs holds the logic that is not drawing. Every event has an `api_name`, so
gradio_client can drive the page: /prepare, /generate_faq, /prepare_generated,
/start_training, /stop_training, /training_status, /chat, /stop_chat, /clear_chat, /index_faq,
/eval_report, /push_dataset, /push_model, /push_adapter, /export_gguf, /push_gguf,
/model_card. A UserError shows in the tab's error box, never as a traceback.
The Hugging Face token and an endpoint's API key go from their password fields straight to
builder.hub / builder.faqgen: they are not kept.

In the 데이터 tab documents (.md .txt .html .pdf .docx) become FAQ rows through an
OpenAI-compatible endpoint the user names (`builder generate`); the rows are shown, editable,
and only prepared once reviewed. One answer is generated at a time; a session waiting for its
turn sees its place in the queue on the chat box, and nothing else on the page waits behind an
answer. Pushes show a progress bar (the upload's own progress, file by file).

In the 채팅 tab each answer of a run that answers from its FAQ is followed by a collapsed
"참고한 FAQ" message (the entries and their rows in the FAQ file); "FAQ 업데이트" replaces the
run's knowledge from an updated FAQ file (as `builder index`) and the next question uses it;
the run's evaluation (`builder eval`: RUN/eval/, or RUN/eval.running while it runs) is shown
and read again on a timer, so an eval that ends while the page is open fills in.

Visitors type paths and text, so the page only reads folders under its runs root (and the
--run folder), caps what it queues and the length of a question. Off loopback it needs a login
(BUILDER_APP_PASSWORD) or an explicit --open, and never lends the owner's saved Hub login.
"""

import atexit
import csv
import html
import ipaddress
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from builder import jobs
from builder.errors import UserError
from builder.guard import Reply

CSS = """
.error-box { background: #fdecea; border-left: 4px solid #d93025; padding: 8px 12px;
             border-radius: 6px; color: #5f2120; }
.progress-outer { background: #e8eaed; border-radius: 6px; height: 14px; overflow: hidden; }
.progress-inner { background: #1a73e8; height: 100%; transition: width 0.5s; }
"""
STATE_KO = {"idle": "대기", "running": "학습 중", "merging": "병합 중", "done": "완료",
            "failed": "실패", "stopped": "멈춤"}
REPO_DIR = Path(__file__).resolve().parents[1]
# Local fonts only (no Google Fonts request), Korean first
FONTS = ["Noto Sans KR", "NanumGothic", "Apple SD Gothic Neo", "Malgun Gothic", "sans-serif"]
MONO_FONTS = ["D2Coding", "NanumGothicCoding", "monospace"]
MAX_QUESTION_CHARS = 1000  # a FAQ question is a sentence or two; training rows are 512 tokens
MAX_CONTEXT_CHARS = 4000
PASSWORD_ENV, USER_ENV = "BUILDER_APP_PASSWORD", "BUILDER_APP_USER"  # the page's login
BUSY = "서버가 바쁩니다. 잠시 후 다시 시도하세요 / the page is busy: try again in a moment"
CHAT_CONCURRENCY = 1  # answers generated at once: on CPU one generation takes every core
DOC_TYPES = (".md", ".txt", ".html", ".htm", ".pdf", ".docx")  # what builder.docs reads
GENERATED_COLUMNS = ("instruction", "input", "output", "source")  # builder generate's CSV
NEED_TOKEN = ("Hugging Face 토큰을 입력하세요 / type a Hugging Face token: this page is served "
              "beyond this machine, so it does not use the saved login or HF_TOKEN")


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


def _figure(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "share":
        return f"{value:.0%}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def eval_markdown(summary: jobs.EvalSummary, run_dir: str | None = None) -> str:
    """The run's evaluation: a note while one runs, the figures per system, the verdict."""
    lines = []
    if summary.running:
        lines.append("⏳ **평가 진행 중 / evaluation running**" +
                     (" — 아래는 이전 결과 / below: the previous one" if summary.systems else ""))
    elif not summary.systems:
        return (f"평가 결과가 아직 없습니다 / no evaluation yet: `builder eval {run_dir}`"
                if run_dir else "")
    if summary.systems:
        labels = list(summary.systems.values())
        lines += ["### 평가 evaluation", "", "| 항목 figure | " + " | ".join(labels) + " |",
                  "|---|" + "---:|" * len(labels)]
        lines += [f"| {label} | " + " | ".join(_figure(v, kind) for v in values) + " |"
                  for label, values, kind in summary.rows]
        lines.append("")
        for name, hits in summary.retrieval.items():
            hit1, hit3 = (_figure(hits.get(k), "share") for k in ("hit@1", "hit@3"))
            lines.append(f"- 검색 retrieval, {name.replace('_', ' ')}: hit@1 {hit1}, hit@3 {hit3} "
                         f"({hits.get('questions')} questions)")
        if summary.verdict:
            lines += ["", "**판정 verdict**", ""] + [f"- {line}" for line in summary.verdict]
    return "\n".join(lines)


def eval_view(run_dir: str | None, seen_chart):
    """(markdown, chart update, chart key) of a run's evaluation; the chart is sent again only
    when it changed (seen_chart is the key this session last got)."""
    import gradio as gr

    summary = jobs.eval_summary(run_dir)
    chart = summary.chart
    try:
        key = (str(chart), chart.stat().st_mtime_ns) if chart is not None else None
    except OSError:  # eval/ was replaced in between
        chart = key = None
    if key == seen_chart:
        return eval_markdown(summary, run_dir), gr.skip(), key
    return eval_markdown(summary, run_dir), gr.update(value=chart and str(chart),
                                                      visible=chart is not None), key


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

    def __init__(self, runs_root, run_dir, config_path, max_upload_mb, token_fallback):
        from builder.config import load_config

        self.runs_root = Path(runs_root)
        config_path = Path(config_path)
        if not config_path.is_file() and not config_path.is_absolute():
            config_path = REPO_DIR / config_path  # the shipped configs, wherever the app starts
        self.train_cfg = load_config(config_path).train
        if run_dir is not None and not Path(run_dir).is_dir():
            raise UserError(f"{run_dir}: no such run folder (--run)")
        self.run_dir, self.max_upload_mb = run_dir, max_upload_mb
        self.token_fallback = token_fallback
        self.job = jobs.TrainingJob(self.runs_root, config_path)
        self.bots = jobs.ChatbotCache()
        self.stop_events: dict[str, threading.Event] = {}
        self.chart_dir = Path(tempfile.mkdtemp(prefix="builder-app-charts-"))
        atexit.register(shutil.rmtree, self.chart_dir, ignore_errors=True)
        prepared = jobs.list_prepared(self.runs_root)
        self.default_data = str(prepared[0]) if prepared else ""

    def inside(self, folder):
        return jobs.check_folder(folder, self.runs_root, also=self.run_dir)

    def run_choices(self):
        runs = jobs.list_runs(self.runs_root)
        if self.run_dir is not None and \
                Path(self.run_dir).resolve() not in [r.resolve() for r in runs]:
            runs.insert(0, Path(self.run_dir))
        return [(f"{r.name} ({'merged' if (r / 'merged').is_dir() else 'adapter'})", str(r))
                for r in runs]

    def default_run(self):
        choices = self.run_choices()
        return str(self.run_dir) if self.run_dir else (choices[0][1] if choices else None)

    def runs_update(self, current=None):
        import gradio as gr

        choices = self.run_choices()
        values = [value for _, value in choices]
        value = current if current in values else (values[0] if values else None)
        return gr.update(choices=choices, value=value)


def shown(message: str):
    import gradio as gr

    return gr.update(value=f"⚠️ {message}", visible=True)


def hidden():
    import gradio as gr

    return gr.update(value="", visible=False)


def build_app(*, runs_root="runs", run_dir=None, config_path="configs/embedded-cpu.yaml",
              max_upload_mb=20, token_fallback=False):
    """The whole page as gr.Blocks (not launched).

    token_fallback: an empty token field pushes with HF_TOKEN or the saved login (loopback only)."""
    import gradio as gr

    page = Page(runs_root, run_dir, config_path, max_upload_mb, token_fallback)
    with gr.Blocks(title="한국어 FAQ 챗봇 빌더", analytics_enabled=False) as app:
        gr.Markdown("# 한국어 FAQ 챗봇 빌더\nFAQ 파일 → 데이터 점검 → LoRA 학습 → 채팅 → Hugging Face 배포")
        # the prepared folder goes to the 학습 and 배포 tabs: made here, drawn in their tabs
        train_data = gr.Textbox(label="학습할 데이터 폴더", value=page.default_data,
                                elem_id="train-data-dir", render=False)
        deploy_data = gr.Textbox(label="데이터 폴더", value=page.default_data,
                                 elem_id="deploy-data-dir", render=False)
        data_tab(page, [train_data, deploy_data])
        train_tab(page, train_data)
        chat_tab(page, app)
        deploy_tab(page, app, deploy_data)
    return app


# ---- 1. 데이터: upload a FAQ file, or generate one from documents; report, preview ---------


def data_tab(page: Page, folder_outputs: list) -> None:
    import gradio as gr

    mb = page.max_upload_mb
    with gr.Tab("1. 데이터", id="data"):
        faq_file = gr.File(label=f"FAQ 파일 (CSV · TSV · XLSX, 최대 {mb} MB)",
                           file_types=[".csv", ".tsv", ".txt", ".xlsx"], elem_id="faq-file")
        with gr.Accordion("문서에서 FAQ 만들기 / generate the FAQ from documents "
                          "(builder generate)", open=False):
            docs = gr.File(label=f"문서 (.md .txt .html .pdf .docx, 각 최대 {mb} MB)",
                           file_count="multiple", file_types=list(DOC_TYPES), elem_id="docs-files")
            with gr.Row():
                endpoint = gr.Textbox(label="OpenAI 호환 주소 endpoint",
                                      placeholder="https://api.openai.com/v1",
                                      elem_id="docs-endpoint")
                model = gr.Textbox(label="모델 model", placeholder="gpt-4o-mini",
                                   elem_id="docs-model")
                key = gr.Textbox(label="API 키 (저장되지 않음; 비우면 보내지 않음)", type="password",
                                 elem_id="docs-key")
                rows = gr.Number(None, label="행 수 rows (비우면 자동)", precision=0, minimum=1,
                                 elem_id="docs-rows")
            generate = gr.Button("문서에서 질문·답변 생성", elem_id="docs-generate")
            docs_summary = gr.Textbox(label="생성 결과 / what was generated", lines=6,
                                      interactive=False, elem_id="docs-summary")
            generated = gr.Dataframe(headers=list(GENERATED_COLUMNS), type="array",
                                     label="생성된 행: 고치거나 지운 뒤 준비하세요 / review and edit, "
                                     "then prepare", interactive=True, wrap=True,
                                     elem_id="docs-rows-table")
            use_generated = gr.Button("검토한 행으로 데이터 준비 / prepare these rows",
                                      variant="primary", elem_id="docs-prepare")
        data_error = gr.Markdown(visible=False, elem_id="data-error", elem_classes="error-box")
        data_summary = gr.Textbox(label="점검 결과 / report", lines=8, interactive=False,
                                  elem_id="data-summary")
        data_dir = gr.Textbox(label="준비된 데이터 폴더", value=page.default_data, interactive=False,
                              elem_id="data-dir")
        dropped = gr.Dataframe(headers=["줄 line", "이유 reason", "상세 detail"],
                               label="제외된 행 / left-out rows", interactive=False,
                               elem_id="data-dropped")
        preview = gr.Dataframe(headers=["instruction (질문)", "input (참고)", "output (답변)"],
                               label="학습 데이터 미리보기 (처음 20행)", interactive=False,
                               wrap=True, elem_id="data-preview")

    def prepared(path):
        from builder.data import summary

        try:
            report, out_dir = jobs.prepare_upload(path, page.runs_root, mb)
        except UserError as err:
            return shown(str(err)), "", gr.skip(), [], [], gr.skip(), gr.skip()
        folder = str(out_dir)
        return hidden(), summary(report, out_dir), folder, jobs.dropped_table(report), \
            jobs.preview_rows(out_dir), folder, folder

    def on_generate(paths, url, name, secret, n_rows, progress=gr.Progress(track_tqdm=True)):
        from builder import faqgen

        try:
            progress(0, desc="문서를 읽는 중 / reading the documents")
            files = [jobs.check_upload(p, mb) for p in paths or []]
            if not files:
                raise UserError("문서를 먼저 올려 주세요 / upload documents (.md .txt .html .pdf "
                                ".docx) first")
            out = jobs.new_dir(page.runs_root, "generated") / "faq.csv"
            result = faqgen.generate_from_docs(
                files, out, endpoint=(url or "").strip() or None,
                model=(name or "").strip() or None,
                rows=int(n_rows) if n_rows else None, api_key=secret or "", log=lambda *_: None)
        except UserError as err:
            message = str(err).replace(secret, "***") if secret else str(err)
            return "", [], shown(message)
        return faqgen.summary(result), read_generated(result.path), hidden()

    def on_use_generated(table):
        rows = [[str(c or "") for c in row] for row in (table or []) if any(str(c or "").strip()
                                                                              for c in row)]
        if not rows:
            return shown("준비할 행이 없습니다 / no rows to prepare: generate them first"), \
                *[gr.skip()] * 6
        path = jobs.new_dir(page.runs_root, "reviewed") / "faq.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([list(GENERATED_COLUMNS), *rows])
        return prepared(str(path))

    outputs = [data_error, data_summary, data_dir, dropped, preview, *folder_outputs]
    faq_file.upload(prepared, faq_file, outputs, api_name="prepare")
    generate.click(on_generate, [docs, endpoint, model, key, rows],
                   [docs_summary, generated, data_error], api_name="generate_faq")
    use_generated.click(on_use_generated, generated, outputs, api_name="prepare_generated")


def read_generated(path) -> list[list[str]]:
    """The rows `builder generate` wrote (instruction, input, output, source)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [row for row in reader]


# ---- 2. 학습: knobs, start/stop, live progress, loss chart, log, eval ----------------------


def train_tab(page: Page, train_data) -> None:
    import gradio as gr

    cfg, job = page.train_cfg, page.job
    with gr.Tab("2. 학습", id="train"):
        train_data.render()
        with gr.Row():
            epochs = gr.Number(cfg.epochs, label="에폭 epochs", minimum=0.1, elem_id="train-epochs")
            max_steps = gr.Number(cfg.max_steps, label="최대 단계 max steps (-1 = 에폭 사용)",
                                  precision=0, elem_id="train-max-steps")
            lr = gr.Number(cfg.lr, label="학습률 learning rate", elem_id="train-lr")
            patience = gr.Number(cfg.early_stopping_patience, precision=0, minimum=1,
                                 label="조기 종료 인내 patience (평가 횟수)", elem_id="train-patience")
        with gr.Row():
            start = gr.Button("학습 시작", variant="primary", elem_id="train-start")
            stop = gr.Button("멈추기", variant="stop", elem_id="train-stop")
        train_message = gr.Markdown(elem_id="train-message")
        progress = gr.HTML(progress_html(job.status()), elem_id="train-progress")
        with gr.Row():
            loss_chart = gr.Image(label="손실 loss", type="filepath", interactive=False,
                                  elem_id="train-loss")
            log_tail = gr.Textbox(label="로그 log (마지막 12줄)", lines=14, max_lines=14,
                                  interactive=False, elem_id="train-log")
        eval_table = gr.Markdown(elem_id="train-eval")
        eval_chart = gr.Image(label="평가 evaluation", type="filepath", interactive=False,
                              visible=False, elem_id="train-eval-chart")
        with gr.Accordion("상태 JSON / status", open=False):
            status_json = gr.JSON(elem_id="train-status-json")
        timer = gr.Timer(2.0)

    def on_start(folder, n_epochs, n_steps, rate, wait):
        overrides = [f"train.epochs={n_epochs}", f"train.max_steps={int(n_steps)}",
                     f"train.lr={rate}", f"train.early_stopping_patience={int(wait)}"]
        try:
            run = job.start(page.inside(folder), overrides)
        except UserError as err:
            return f"⚠️ {err}"
        return f"▶️ 학습을 시작했습니다 / training started: `{run}`"

    def on_status(seen):
        status = job.status()
        evaluated = status.run_dir if status.state == "done" else None
        eval_text, eval_image, eval_key = eval_view(evaluated, seen[2])
        loss = job.loss_chart(page.chart_dir)
        # a start/busy message is stale once the job's state changes
        message = "" if seen[1] not in (None, status.state) else gr.skip()
        return (progress_html(status), gr.skip() if loss == seen[0] else loss,
                "\n".join(status.log_tail.splitlines()[-12:]), eval_text, eval_image,
                vars(status), message, (loss, status.state, eval_key))

    start.click(on_start, [train_data, epochs, max_steps, lr, patience], train_message,
                api_name="start_training")
    stop.click(lambda: job.stop(), None, train_message, api_name="stop_training",
               concurrency_limit=None)
    seen = gr.State((None, None, None))  # this session's last (chart, state, eval chart)
    timer.tick(on_status, seen, [progress, loss_chart, log_tail, eval_table, eval_chart,
                                 status_json, train_message, seen],
               api_name="training_status", show_progress="hidden", concurrency_limit=None)


# ---- 3. 채팅: pick a run, stream answers ----------------------------------------------------


def chat_tab(page: Page, app) -> None:
    import gradio as gr

    mb = page.max_upload_mb
    with gr.Tab("3. 채팅", id="chat") as tab:
        with gr.Row():
            chat_run = gr.Dropdown(page.run_choices(), value=page.default_run(),
                                   label="모델 (실행 폴더)", scale=4, allow_custom_value=True,
                                   elem_id="chat-run")
            engine = gr.Radio([("transformers", "auto"), ("GGUF (llama.cpp)", "gguf")],
                              value="auto", label="엔진 engine", scale=2, elem_id="chat-engine")
            refresh = gr.Button("↻ 목록", scale=1, elem_id="chat-refresh")
        chat_error = gr.Markdown(visible=False, elem_id="chat-error", elem_classes="error-box")
        chatbot = gr.Chatbot(label="대화 (다른 사용자가 답을 받는 동안에는 대기 순번이 표시됩니다)",
                             height=420, elem_id="chatbot")
        question = gr.Textbox(label="질문", placeholder="예: 배송은 며칠 걸리나요?",
                              max_length=MAX_QUESTION_CHARS, elem_id="chat-question")
        with gr.Row():
            send = gr.Button("보내기", variant="primary", elem_id="chat-send")
            stop = gr.Button("멈추기", elem_id="chat-stop")
            clear = gr.Button("지우기", elem_id="chat-clear")
        with gr.Accordion("설정", open=False):
            context = gr.Textbox(label="참고 (선택) / optional context", lines=2,
                                 max_length=MAX_CONTEXT_CHARS, elem_id="chat-context")
            max_tokens = gr.Slider(16, 512, 256, step=16, label="최대 새 토큰 max new tokens",
                                   elem_id="chat-max-tokens")
            temperature = gr.Slider(0, 1.5, 0, step=0.05, label="온도 temperature (0 = greedy)",
                                    elem_id="chat-temperature")
        with gr.Accordion("FAQ 업데이트 (재학습 없이) / update the FAQ without retraining",
                          open=False):
            faq_update = gr.File(label=f"새 FAQ 파일 (CSV · TSV · XLSX, 최대 {mb} MB): "
                                 "고른 모델이 다음 질문부터 이 FAQ로 답합니다",
                                 file_types=[".csv", ".tsv", ".txt", ".xlsx"],
                                 elem_id="chat-faq-file")
            faq_update_result = gr.Markdown(elem_id="chat-faq-result")
        with gr.Accordion("평가 evaluation (builder eval)", open=True):
            chat_eval = gr.Markdown(elem_id="chat-eval")
            chat_eval_chart = gr.Image(label="평가 evaluation", type="filepath",
                                       interactive=False, visible=False,
                                       elem_id="chat-eval-chart")
        eval_timer = gr.Timer(5.0)  # an eval that ends while the page is open fills in

    def on_chat(text, history, run, ctx, n_tokens, temp, use="auto", request: gr.Request = None):
        text = (text or "").strip()
        history = [{"role": m["role"], "content": message_text(m["content"]),
                    **({"metadata": m["metadata"]} if (m.get("metadata") or {}).get("title")
                       else {})} for m in history or []]
        if not text:
            yield history, "", hidden()
            return
        error = too_long("질문 question", text, MAX_QUESTION_CHARS) or \
            too_long("참고 context", ctx, MAX_CONTEXT_CHARS)
        if error:
            yield history, gr.skip(), shown(error)
            return
        history.append({"role": "user", "content": text})
        yield history, "", hidden()
        session = request.session_hash if request is not None else ""
        stop_event = page.stop_events.setdefault(session, threading.Event())
        stop_event.clear()
        try:
            bot = page.bots.get(page.inside(run), use=use or "auto")
            answer, reply = "", Reply()
            history.append({"role": "assistant", "content": ""})
            for delta in bot.stream(text, ctx or "", reply=reply, max_new_tokens=int(n_tokens),
                                    temperature=float(temp), stop_event=stop_event):
                answer += delta
                history[-1]["content"] = answer
                yield history, "", hidden()
            if not answer:
                history[-1]["content"] = "(빈 답변 / empty answer)"
            if sources := sources_message(reply):
                history.append(sources)
            yield history, "", hidden()
        except UserError as err:
            yield history, text, shown(str(err))

    def on_stop_chat(request: gr.Request):
        page.stop_events.setdefault(request.session_hash, threading.Event()).set()

    def on_index(path, run):
        try:
            result = jobs.index_upload(path, page.inside(run), mb, page.bots)
        except UserError as err:
            return "", shown(str(err))
        n, left_out = result["entries"], len(result["report"]["dropped"])
        text = (f"✅ FAQ {n}개 항목을 색인했습니다 (제외된 행 {left_out}개): 다음 질문부터 새 FAQ로 "
                f"답합니다 / indexed {n} FAQ entries ({left_out} rows left out): the next "
                "question is answered from them, without retraining")
        if not result["grounded"]:
            text += ("\n\n⚠️ 이 모델의 템플릿에는 FAQ 자리({faq})가 없어 답변에 FAQ를 쓰지 않습니다 "
                     "/ this run's template has no {faq} slot: its answers do not use the FAQ")
        return text, hidden()

    def on_eval(run, seen_chart):
        try:
            run = page.inside(run)
        except UserError as err:
            return f"⚠️ {err}", gr.update(value=None, visible=False), None
        return eval_view(run, seen_chart)

    # One answer is generated at a time (on CPU one generation takes every core): the send
    # button and Enter share that one slot, and a session that waits for it sees its place
    # in the queue on the chat box. Everything else on the page never waits behind an answer.
    chat_inputs = [question, chatbot, chat_run, context, max_tokens, temperature, engine]
    chat_outputs = [chatbot, question, chat_error]
    send.click(on_chat, chat_inputs, chat_outputs, api_name="chat", concurrency_id="chat",
               concurrency_limit=CHAT_CONCURRENCY, show_progress="full")
    question.submit(on_chat, chat_inputs, chat_outputs, api_visibility="private",
                    concurrency_id="chat", concurrency_limit=CHAT_CONCURRENCY)
    stop.click(on_stop_chat, None, None, api_name="stop_chat", concurrency_limit=None)
    clear.click(lambda: ([], ""), None, [chatbot, question], api_name="clear_chat",
                concurrency_limit=None)
    refresh.click(page.runs_update, chat_run, chat_run, api_visibility="private",
                  concurrency_limit=None)
    faq_update.upload(on_index, [faq_update, chat_run], [faq_update_result, chat_error],
                      api_name="index_faq")
    eval_seen = gr.State(None)  # the eval chart this session has: resend only a new one
    gr.on([app.load, chat_run.change, eval_timer.tick], on_eval, [chat_run, eval_seen],
          [chat_eval, chat_eval_chart, eval_seen], api_name="eval_report",
          show_progress="hidden", concurrency_limit=None)
    tab.select(page.runs_update, chat_run, chat_run, api_visibility="private",
               concurrency_limit=None)


# ---- 4. 배포: export GGUF, push to the Hugging Face Hub -----------------------------------


def deploy_tab(page: Page, app, deploy_data) -> None:
    import gradio as gr

    with gr.Tab("4. 배포", id="deploy") as tab:
        empty = "비우면 HF_TOKEN 사용" if page.token_fallback else "필수 required"
        token = gr.Textbox(label=f"Hugging Face 토큰 (저장되지 않음; {empty})",
                           type="password", placeholder="hf_...", elem_id="deploy-token")
        private = gr.Checkbox(label="비공개 저장소 private", elem_id="deploy-private")
        with gr.Row():
            deploy_data.render()
            dataset_repo = gr.Textbox(label="데이터셋 저장소 OWNER/NAME",
                                      elem_id="deploy-dataset-repo")
            push_data = gr.Button("데이터셋 올리기", elem_id="deploy-push-dataset")
        with gr.Row():
            deploy_run = gr.Dropdown(page.run_choices(), value=page.default_run(),
                                     label="모델 (실행 폴더)", allow_custom_value=True,
                                     elem_id="deploy-run")
            model_repo = gr.Textbox(label="모델 저장소 OWNER/NAME", elem_id="deploy-model-repo")
        with gr.Row():
            push_merged = gr.Button("병합 모델 올리기", variant="primary", elem_id="deploy-push-merged")
            push_adapter = gr.Button("어댑터 올리기", elem_id="deploy-push-adapter")
        with gr.Accordion("GGUF 내보내기 (llama.cpp · Ollama) / export GGUF", open=False):
            with gr.Row():
                quant = gr.Dropdown([("f16: 병합 모델과 같은 답", "f16"),
                                     ("q8_0: 절반 크기", "q8_0"),
                                     ("q4_k_m: 1/4 크기, 작은 모델은 망가짐", "q4_k_m")],
                                    value="f16", label="양자화 quant", elem_id="deploy-quant")
                export = gr.Button("GGUF 내보내기", elem_id="deploy-export")
            with gr.Row():
                gguf_repo = gr.Textbox(label="GGUF 저장소 OWNER/NAME", elem_id="deploy-gguf-repo")
                push_gguf = gr.Button("GGUF 올리기", elem_id="deploy-push-gguf")
        deploy_error = gr.Markdown(visible=False, elem_id="deploy-error", elem_classes="error-box")
        deploy_result = gr.Markdown(elem_id="deploy-result")
        card = gr.Code(label="모델 카드 미리보기 (README.md)", language="markdown",
                       interactive=False, elem_id="deploy-card")

    def pushed(result) -> str:
        state = "올렸습니다 / pushed" if result.changed else \
            "이미 최신 상태입니다 / already up to date (nothing pushed)"
        return f"✅ {result.repo_id}: {state} → {result.url}" + \
            (f" (commit `{result.commit[:12]}`)" if result.commit else "")

    def push(what, secret, folder, repo, is_private, progress):
        from builder import hub

        if not secret and not page.token_fallback:
            return "", shown(NEED_TOKEN)
        try:
            folder = page.inside(folder)
            repo = (repo or "").strip()
            progress(0, desc=f"{repo}: 올리는 중 / uploading")  # the upload's own bars follow
            if what == "dataset":
                result = hub.push_dataset(folder, repo, private=is_private, token=secret or None)
            elif what == "gguf":
                result = hub.push_gguf(folder, repo, private=is_private, token=secret or None)
            else:
                result = hub.push_model(folder, repo, what=what, private=is_private,
                                        token=secret or None)
        except UserError as err:
            message = str(err).replace(secret, "***") if secret else str(err)
            return "", shown(message)
        return pushed(result), hidden()

    def pusher(what):
        def on_push(secret, folder, repo, is_private, progress=gr.Progress(track_tqdm=True)):
            return push(what, secret, folder, repo, is_private, progress)
        return on_push

    def on_export(run, chosen, progress=gr.Progress()):
        from builder.export import export

        steps = iter([0.1, 0.5, 0.9])

        def log(line):
            progress(next(steps, 0.95), desc=str(line)[:120])

        try:
            out = export(page.inside(run), chosen, log=log)
        except UserError as err:
            return "", shown(str(err))
        report = json.loads((out.parent / "report.json").read_text(encoding="utf-8"))
        q = report["quants"][chosen]
        return (f"✅ `{out}` ({q['bytes'] / 2**20:.0f} MB): 병합 모델과 같은 답 "
                f"{q['identical']}/{q['questions']}, 유사도 {q['mean_similarity']:.0%} / "
                f"{q['identical']} of {q['questions']} answers identical to the merged model "
                f"({q['verdict']}); Ollama: `ollama create NAME -f {out.parent / 'Modelfile'}`"), \
            hidden()

    def on_card(run, repo):
        from builder import hub

        if not run:
            return ""
        try:
            run = page.inside(run)
        except UserError as err:
            return f"⚠️ {err}"
        what = "merged" if (Path(run) / "merged").is_dir() else "adapter"
        return hub.model_card(run, what, repo_id=(repo or "").strip() or "OWNER/NAME")

    outputs = [deploy_result, deploy_error]
    push_data.click(pusher("dataset"), [token, deploy_data, dataset_repo, private], outputs,
                    api_name="push_dataset")
    push_merged.click(pusher("merged"), [token, deploy_run, model_repo, private], outputs,
                      api_name="push_model")
    push_adapter.click(pusher("adapter"), [token, deploy_run, model_repo, private], outputs,
                       api_name="push_adapter")
    export.click(on_export, [deploy_run, quant], outputs, api_name="export_gguf")
    push_gguf.click(pusher("gguf"), [token, deploy_run, gguf_repo, private], outputs,
                    api_name="push_gguf")
    gr.on([deploy_run.change, model_repo.blur, app.load], on_card, [deploy_run, model_repo],
          card, api_name="model_card", concurrency_limit=None)
    tab.select(page.runs_update, deploy_run, deploy_run, api_visibility="private",
               concurrency_limit=None)


def launch(host="127.0.0.1", port=7860, *, runs_root="runs", run_dir=None,
           config_path="configs/embedded-cpu.yaml", max_upload_mb=20, open_access=False,
           max_queue=20) -> None:
    """Build the page, serve it on host:port, print the URL and block until Ctrl-C.

    Off loopback the page needs a login ($BUILDER_APP_PASSWORD, user $BUILDER_APP_USER or
    "admin") unless open_access; max_queue events may wait, more get the busy message."""
    loopback = is_loopback(host)
    password = os.environ.get(PASSWORD_ENV)
    if not loopback and not password and not open_access:
        raise UserError(f"{host}: 다른 컴퓨터에서도 열리는 주소입니다 / this address is reachable "
                        f"beyond this machine: set {PASSWORD_ENV} for a login, or pass --open to "
                        "serve it to anyone without one")
    auth = (os.environ.get(USER_ENV) or "admin", password) if password else None

    import gradio as gr
    from starlette.exceptions import HTTPException

    app = build_app(runs_root=runs_root, run_dir=run_dir, config_path=config_path,
                    max_upload_mb=max_upload_mb, token_fallback=loopback)
    allowed = [str(Path(runs_root).resolve())] + ([str(Path(run_dir).resolve())] if run_dir else [])
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
               css=CSS, theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS),
               allowed_paths=allowed, footer_links=["api", "gradio"], auth=auth,
               run_history=False,  # the browser must not keep a record of inputs (the token)
               max_file_size=int(4 * max_upload_mb * 2**20),  # over the cap: our message
               app_kwargs={"exception_handlers": {HTTPException: _busy}})
    open_note = "" if loopback or auth else " (open: no login, anyone who reaches it can use it)"
    print(f"builder app: http://{host}:{port}/{open_note}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes the server and ends a training run
    # Ctrl-C too, even when started in the background (a shell then starts it with SIGINT
    # ignored, and Python installs no KeyboardInterrupt handler of its own)
    signal.signal(signal.SIGINT, _interrupt)
    app.block_thread()  # returns once Ctrl-C or SIGTERM has closed the server
    # Python joins every non-daemon thread before it runs the atexit handlers, and a thread
    # the server leaves behind can hang that join (seen on a loaded machine): run the handlers
    # (chart folder, a running training job) now, then leave.
    atexit._run_exitfuncs()
    os._exit(0)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


async def _busy(request, exc):
    """A full queue answers 503 with our bilingual message instead of Gradio's English one."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException

    if exc.status_code == 503 and request.url.path.endswith("/queue/join"):
        exc = HTTPException(503, BUSY)
    return await http_exception_handler(request, exc)
