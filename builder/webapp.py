"""The web page (Gradio, Korean labels): 데이터 -> 학습 -> 채팅 -> 배포, over the library's functions.

    python app.py                     # http://127.0.0.1:7860
    python app.py --run runs/demo     # chat with a trained run first

Each tab calls what the CLI calls (builder.data.prepare, `builder train` / `builder merge`,
builder.chat.Chatbot, builder.hub); builder.jobs holds the logic that is not drawing. Every
event has an `api_name`, so gradio_client can drive the page: /prepare, /start_training,
/stop_training, /training_status, /chat, /stop_chat, /clear_chat, /index_faq, /eval_report,
/push_dataset, /push_model, /push_adapter, /model_card. A UserError shows in the tab's error
box, never as a traceback.
The Hugging Face token goes from its password field straight to builder.hub: it is not kept.

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
import html
import ipaddress
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


def build_app(*, runs_root="runs", run_dir=None, config_path="configs/embedded-cpu.yaml",
              max_upload_mb=20, token_fallback=False):
    """The whole page as gr.Blocks (not launched).

    token_fallback: an empty token field pushes with HF_TOKEN or the saved login (loopback only)."""
    import gradio as gr

    from builder.config import load_config

    runs_root = Path(runs_root)
    config_path = Path(config_path)
    if not config_path.is_file() and not config_path.is_absolute():
        config_path = REPO_DIR / config_path  # the shipped configs, wherever the app starts
    cfg = load_config(config_path).train
    if run_dir is not None and not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder (--run)")
    job = jobs.TrainingJob(runs_root, config_path)
    bots = jobs.ChatbotCache()
    stop_events: dict[str, threading.Event] = {}  # one per browser session
    chart_dir = Path(tempfile.mkdtemp(prefix="builder-app-charts-"))
    atexit.register(shutil.rmtree, chart_dir, ignore_errors=True)
    prepared = jobs.list_prepared(runs_root)
    default_data = str(prepared[0]) if prepared else ""

    def run_choices():
        runs = jobs.list_runs(runs_root)
        if run_dir is not None and Path(run_dir).resolve() not in [r.resolve() for r in runs]:
            runs.insert(0, Path(run_dir))
        return [(f"{r.name} ({'merged' if (r / 'merged').is_dir() else 'adapter'})", str(r))
                for r in runs]

    def runs_update(current=None):
        choices = run_choices()
        values = [value for _, value in choices]
        value = current if current in values else (values[0] if values else None)
        return gr.update(choices=choices, value=value)

    def shown(message: str):
        return gr.update(value=f"⚠️ {message}", visible=True)

    def inside(folder):
        return jobs.check_folder(folder, runs_root, also=run_dir)

    hidden = gr.update(value="", visible=False)

    with gr.Blocks(title="한국어 FAQ 챗봇 빌더", analytics_enabled=False) as app:
        gr.Markdown("# 한국어 FAQ 챗봇 빌더\nFAQ 파일 → 데이터 점검 → LoRA 학습 → 채팅 → Hugging Face 배포")

        # ---- 1. 데이터: upload, prepare, report, preview ------------------------------------
        with gr.Tab("1. 데이터", id="data"):
            faq_file = gr.File(label=f"FAQ 파일 (CSV · TSV · XLSX, 최대 {max_upload_mb} MB)",
                               file_types=[".csv", ".tsv", ".txt", ".xlsx"], elem_id="faq-file")
            data_error = gr.Markdown(visible=False, elem_id="data-error", elem_classes="error-box")
            data_summary = gr.Textbox(label="점검 결과 / report", lines=8, interactive=False,
                                      elem_id="data-summary")
            data_dir = gr.Textbox(label="준비된 데이터 폴더", value=default_data, interactive=False,
                                  elem_id="data-dir")
            dropped = gr.Dataframe(headers=["줄 line", "이유 reason", "상세 detail"],
                                   label="제외된 행 / left-out rows", interactive=False,
                                   elem_id="data-dropped")
            preview = gr.Dataframe(headers=["instruction (질문)", "input (참고)", "output (답변)"],
                                   label="학습 데이터 미리보기 (처음 20행)", interactive=False,
                                   wrap=True, elem_id="data-preview")

        # ---- 2. 학습: knobs, start/stop, live progress, loss chart, log, eval -----------------
        with gr.Tab("2. 학습", id="train"):
            train_data = gr.Textbox(label="학습할 데이터 폴더", value=default_data,
                                    elem_id="train-data-dir")
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

        # ---- 3. 채팅: pick a run, stream answers ----------------------------------------------
        with gr.Tab("3. 채팅", id="chat") as chat_tab:
            with gr.Row():
                choices = run_choices()
                chat_run = gr.Dropdown(choices, value=str(run_dir) if run_dir else
                                       (choices[0][1] if choices else None),
                                       label="모델 (실행 폴더)", scale=4, allow_custom_value=True,
                                       elem_id="chat-run")
                chat_refresh = gr.Button("↻ 목록", scale=1, elem_id="chat-refresh")
            chat_error = gr.Markdown(visible=False, elem_id="chat-error", elem_classes="error-box")
            chatbot = gr.Chatbot(label="대화", height=420, elem_id="chatbot")
            question = gr.Textbox(label="질문", placeholder="예: 배송은 며칠 걸리나요?",
                                  max_length=MAX_QUESTION_CHARS, elem_id="chat-question")
            with gr.Row():
                send = gr.Button("보내기", variant="primary", elem_id="chat-send")
                chat_stop = gr.Button("멈추기", elem_id="chat-stop")
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
                faq_update = gr.File(label=f"새 FAQ 파일 (CSV · TSV · XLSX, 최대 {max_upload_mb} MB): "
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

        # ---- 4. 배포: push to the Hugging Face Hub ------------------------------------------
        with gr.Tab("4. 배포", id="deploy") as deploy_tab:
            empty = "비우면 HF_TOKEN 사용" if token_fallback else "필수 required"
            token = gr.Textbox(label=f"Hugging Face 토큰 (저장되지 않음; {empty})",
                               type="password", placeholder="hf_...", elem_id="deploy-token")
            private = gr.Checkbox(label="비공개 저장소 private", elem_id="deploy-private")
            with gr.Row():
                deploy_data = gr.Textbox(label="데이터 폴더", value=default_data,
                                         elem_id="deploy-data-dir")
                dataset_repo = gr.Textbox(label="데이터셋 저장소 OWNER/NAME",
                                          elem_id="deploy-dataset-repo")
                push_data = gr.Button("데이터셋 올리기", elem_id="deploy-push-dataset")
            with gr.Row():
                deploy_run = gr.Dropdown(choices, value=chat_run.value, label="모델 (실행 폴더)",
                                         allow_custom_value=True, elem_id="deploy-run")
                model_repo = gr.Textbox(label="모델 저장소 OWNER/NAME", elem_id="deploy-model-repo")
            with gr.Row():
                push_merged = gr.Button("병합 모델 올리기", variant="primary", elem_id="deploy-push-merged")
                push_adapter = gr.Button("어댑터 올리기", elem_id="deploy-push-adapter")
            deploy_error = gr.Markdown(visible=False, elem_id="deploy-error", elem_classes="error-box")
            deploy_result = gr.Markdown(elem_id="deploy-result")
            card = gr.Code(label="모델 카드 미리보기 (README.md)", language="markdown",
                           interactive=False, elem_id="deploy-card")

        # ---- Events: 데이터 ---------------------------------------------------------------
        def on_prepare(path):
            from builder.data import summary

            try:
                report, out_dir = jobs.prepare_upload(path, runs_root, max_upload_mb)
            except UserError as err:
                return shown(str(err)), "", gr.skip(), [], [], gr.skip(), gr.skip()
            rows = jobs.preview_rows(out_dir)
            folder = str(out_dir)
            return hidden, summary(report, out_dir), folder, jobs.dropped_table(report), rows, \
                folder, folder

        faq_file.upload(on_prepare, faq_file, [data_error, data_summary, data_dir, dropped,
                                               preview, train_data, deploy_data],
                        api_name="prepare")

        # ---- Events: 학습 ---------------------------------------------------------------
        def on_start(folder, n_epochs, n_steps, rate, wait):
            overrides = [f"train.epochs={n_epochs}", f"train.max_steps={int(n_steps)}",
                         f"train.lr={rate}", f"train.early_stopping_patience={int(wait)}"]
            try:
                run = job.start(inside(folder), overrides)
            except UserError as err:
                return f"⚠️ {err}"
            return f"▶️ 학습을 시작했습니다 / training started: `{run}`"

        def on_status(seen):
            status = job.status()
            evaluated = status.run_dir if status.state == "done" else None
            eval_text, eval_image, eval_key = eval_view(evaluated, seen[2])
            loss = job.loss_chart(chart_dir)
            # a start/busy message is stale once the job's state changes
            message = "" if seen[1] not in (None, status.state) else gr.skip()
            return (progress_html(status), gr.skip() if loss == seen[0] else loss,
                    "\n".join(status.log_tail.splitlines()[-12:]), eval_text, eval_image,
                    vars(status), message, (loss, status.state, eval_key))

        start.click(on_start, [train_data, epochs, max_steps, lr, patience], train_message,
                    api_name="start_training")
        stop.click(lambda: job.stop(), None, train_message, api_name="stop_training")
        seen = gr.State((None, None, None))  # this session's last (chart, state, eval chart)
        timer.tick(on_status, seen, [progress, loss_chart, log_tail, eval_table, eval_chart,
                                     status_json, train_message, seen],
                   api_name="training_status", show_progress="hidden")

        # ---- Events: 채팅 ---------------------------------------------------------------
        def on_chat(text, history, run, ctx, n_tokens, temp, request: gr.Request):
            text = (text or "").strip()
            history = [{"role": m["role"], "content": message_text(m["content"]),
                        **({"metadata": m["metadata"]} if (m.get("metadata") or {}).get("title")
                           else {})} for m in history or []]
            if not text:
                yield history, "", hidden
                return
            error = too_long("질문 question", text, MAX_QUESTION_CHARS) or \
                too_long("참고 context", ctx, MAX_CONTEXT_CHARS)
            if error:
                yield history, gr.skip(), shown(error)
                return
            history.append({"role": "user", "content": text})
            yield history, "", hidden
            stop_event = stop_events.setdefault(request.session_hash, threading.Event())
            stop_event.clear()
            try:
                bot = bots.get(inside(run))
                answer, reply = "", Reply()
                history.append({"role": "assistant", "content": ""})
                for delta in bot.stream(text, ctx or "", reply=reply, max_new_tokens=int(n_tokens),
                                        temperature=float(temp), stop_event=stop_event):
                    answer += delta
                    history[-1]["content"] = answer
                    yield history, "", hidden
                if not answer:
                    history[-1]["content"] = "(빈 답변 / empty answer)"
                if sources := sources_message(reply):
                    history.append(sources)
                yield history, "", hidden
            except UserError as err:
                yield history, text, shown(str(err))

        def on_stop_chat(request: gr.Request):
            stop_events.setdefault(request.session_hash, threading.Event()).set()

        chat_inputs = [question, chatbot, chat_run, context, max_tokens, temperature]
        send.click(on_chat, chat_inputs, [chatbot, question, chat_error], api_name="chat")
        question.submit(on_chat, chat_inputs, [chatbot, question, chat_error], api_visibility="private")
        chat_stop.click(on_stop_chat, None, None, api_name="stop_chat")
        clear.click(lambda: ([], ""), None, [chatbot, question], api_name="clear_chat")
        chat_refresh.click(runs_update, chat_run, chat_run, api_visibility="private")

        def on_index(path, run):
            try:
                result = jobs.index_upload(path, inside(run), max_upload_mb, bots)
            except UserError as err:
                return "", shown(str(err))
            n, left_out = result["entries"], len(result["report"]["dropped"])
            text = (f"✅ FAQ {n}개 항목을 색인했습니다 (제외된 행 {left_out}개): 다음 질문부터 새 FAQ로 "
                    f"답합니다 / indexed {n} FAQ entries ({left_out} rows left out): the next "
                    "question is answered from them, without retraining")
            if not result["grounded"]:
                text += ("\n\n⚠️ 이 모델의 템플릿에는 FAQ 자리({faq})가 없어 답변에 FAQ를 쓰지 않습니다 "
                         "/ this run's template has no {faq} slot: its answers do not use the FAQ")
            return text, hidden

        def on_eval(run, seen_chart):
            try:
                run = inside(run)
            except UserError as err:
                return f"⚠️ {err}", gr.update(value=None, visible=False), None
            return eval_view(run, seen_chart)

        faq_update.upload(on_index, [faq_update, chat_run], [faq_update_result, chat_error],
                          api_name="index_faq")
        eval_seen = gr.State(None)  # the eval chart this session has: resend only a new one
        gr.on([app.load, chat_run.change, eval_timer.tick], on_eval, [chat_run, eval_seen],
              [chat_eval, chat_eval_chart, eval_seen], api_name="eval_report",
              show_progress="hidden")
        chat_tab.select(runs_update, chat_run, chat_run, api_visibility="private")

        # ---- Events: 배포 ---------------------------------------------------------------
        def pushed(result) -> str:
            state = "올렸습니다 / pushed" if result.changed else \
                "이미 최신 상태입니다 / already up to date (nothing pushed)"
            return f"✅ {result.repo_id}: {state} → {result.url}" + \
                (f" (commit `{result.commit[:12]}`)" if result.commit else "")

        def push(what, secret, folder, repo, is_private):
            from builder import hub

            if not secret and not token_fallback:
                return "", shown(NEED_TOKEN)
            try:
                folder = inside(folder)
                if what == "dataset":
                    result = hub.push_dataset(folder, (repo or "").strip(), private=is_private,
                                              token=secret or None)
                else:
                    result = hub.push_model(folder, (repo or "").strip(), what=what,
                                            private=is_private, token=secret or None)
            except UserError as err:
                message = str(err).replace(secret, "***") if secret else str(err)
                return "", shown(message)
            return pushed(result), hidden

        def on_card(run, repo):
            from builder import hub

            if not run:
                return ""
            try:
                run = inside(run)
            except UserError as err:
                return f"⚠️ {err}"
            what = "merged" if (Path(run) / "merged").is_dir() else "adapter"
            return hub.model_card(run, what, repo_id=(repo or "").strip() or "OWNER/NAME")

        outputs = [deploy_result, deploy_error]
        push_data.click(lambda s, f, r, p: push("dataset", s, f, r, p),
                        [token, deploy_data, dataset_repo, private], outputs, api_name="push_dataset")
        model_inputs = [token, deploy_run, model_repo, private]
        push_merged.click(lambda s, f, r, p: push("merged", s, f, r, p), model_inputs, outputs,
                          api_name="push_model")
        push_adapter.click(lambda s, f, r, p: push("adapter", s, f, r, p), model_inputs, outputs,
                           api_name="push_adapter")
        gr.on([deploy_run.change, model_repo.blur, app.load], on_card, [deploy_run, model_repo],
              card, api_name="model_card")
        deploy_tab.select(runs_update, deploy_run, deploy_run, api_visibility="private")
    return app


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
