"""The page's tabs that use the bot: 3. 채팅 (pick a run, stream answers with their FAQ
sources, each answer into the run's conversation log with its 👍/👎, update the FAQ without
retraining, the run's evaluation) and 4. 배포 (export a GGUF,
push the dataset, the model, the adapter or the GGUF to the Hugging Face Hub, the model card)."""

import json
import logging
import threading
import time
import uuid
from pathlib import Path

from builder.answering.chatbot import FAQ_ONLY_NOTE
from builder.answering.guard import Reply
from builder.config import MAX_CONTEXT_CHARS, MAX_QUESTION_CHARS
from builder.doors import uploads
from builder.doors.page_common import (
    CHAT_CONCURRENCY,
    NEED_TOKEN,
    Page,
    eval_view,
    hidden,
    message_text,
    shown,
    sources_message,
    too_long,
)
from builder.errors import UserError

log = logging.getLogger(__name__)


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

    def on_chat(text, history, run, ctx, n_tokens, temp, use="auto", replies=None,
                request: gr.Request = None):
        text = (text or "").strip()
        history = [{"role": m["role"], "content": message_text(m["content"]),
                    **({"metadata": m["metadata"]} if (m.get("metadata") or {}).get("title")
                       else {})} for m in history or []]
        # one item per history message: [run, reply id] for an answer, else None
        replies = (list(replies or []) + [None] * len(history))[:len(history)]
        if not text:
            yield history, "", hidden(), replies
            return
        error = too_long("질문 question", text, MAX_QUESTION_CHARS) or \
            too_long("참고 context", ctx, MAX_CONTEXT_CHARS)
        if error:
            yield history, gr.skip(), shown(error), replies
            return
        history.append({"role": "user", "content": text})
        replies.append(None)
        yield history, "", hidden(), replies
        session = request.session_hash if request is not None else ""
        stop_event = page.stop_events.setdefault(session, threading.Event())
        stop_event.clear()
        try:
            run = page.inside(run)
            bot = page.bots.get(run, use=use or "auto")
            asked = [m["content"] for m in history[:-1] if m["role"] == "user"]
            answer, reply, begun = "", Reply(), time.monotonic()
            history.append({"role": "assistant", "content": ""})
            replies.append(None)
            for delta in bot.stream(text, ctx or "", history=asked, reply=reply,
                                    max_new_tokens=int(n_tokens), temperature=float(temp),
                                    stop_event=stop_event):
                answer += delta
                history[-1]["content"] = answer
                yield history, "", hidden(), gr.skip()
            if not answer:
                history[-1]["content"] = "(빈 답변 / empty answer)"
            replies[-1] = record(run, session, text, ctx, reply, time.monotonic() - begun)
            if sources := sources_message(reply):
                history.append(sources)
                replies.append(None)
            if reply.faq_only:
                history.append({"role": "assistant", "content": FAQ_ONLY_NOTE})
                replies.append(None)
            yield history, "", hidden(), replies
        except UserError as err:
            yield history, text, shown(str(err)), replies[:len(history)]

    def record(run, session, text, ctx, reply, latency_s):
        """The answer into the run's conversation log; [run, its reply id] for 👍/👎, or None
        when the log failed (the chat goes on without it)."""
        reply_id = uuid.uuid4().hex
        try:
            page.conversation_log(run).record("page", session, text, ctx or "", reply,
                                              latency_s, reply_id=reply_id)
        except Exception:  # any database's failure: the customer gets the answer anyway
            log.warning("the conversation log of %s failed", run, exc_info=True)
            return None
        return [run, reply_id]

    def on_like(replies, like: gr.LikeData):
        """👍/👎 on an answer into its run's log; taking a vote back leaves the last one."""
        index = like.index[0] if isinstance(like.index, (list, tuple)) else like.index
        item = replies[index] if isinstance(index, int) and 0 <= index < len(replies or []) \
            else None
        if item is None or like.liked not in (True, False):
            return
        run, reply_id = item
        try:
            page.conversation_log(run).feedback(reply_id, 1 if like.liked else -1)
        except Exception:  # the page goes on without its log
            log.warning("the conversation log of %s failed", run, exc_info=True)

    def on_stop_chat(request: gr.Request):
        page.stop_events.setdefault(request.session_hash, threading.Event()).set()

    def on_index(path, run):
        try:
            result = uploads.index_upload(path, page.writable_run(run), mb, page.bots)
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
        return eval_view(run, seen_chart, page.chart_dir)

    # One answer is generated at a time (on CPU one generation takes every core): the send
    # button and Enter share that one slot, and a session that waits for it sees its place
    # in the queue on the chat box. Everything else on the page never waits behind an answer.
    replies = gr.State([])  # this session's reply ids, one item per chat message
    chat_inputs = [question, chatbot, chat_run, context, max_tokens, temperature, engine,
                   replies]
    chat_outputs = [chatbot, question, chat_error, replies]
    send.click(on_chat, chat_inputs, chat_outputs, api_name="chat", concurrency_id="chat",
               concurrency_limit=CHAT_CONCURRENCY, show_progress="full")
    question.submit(on_chat, chat_inputs, chat_outputs, api_visibility="private",
                    concurrency_id="chat", concurrency_limit=CHAT_CONCURRENCY)
    stop.click(on_stop_chat, None, None, api_name="stop_chat", concurrency_limit=None)
    clear.click(lambda: ([], "", []), None, [chatbot, question, replies], api_name="clear_chat",
                concurrency_limit=None)
    chatbot.like(on_like, replies, None, api_name="feedback", concurrency_limit=None)
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


def deploy_tab(page: Page, app, deploy_data) -> None:
    import gradio as gr

    with gr.Tab("4. 배포", id="deploy") as tab:
        empty = "비우면 HF_TOKEN 사용" if page.hub_login else "필수 required"
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
        from builder.deploy import hub

        if not secret and not page.hub_login:
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
        from builder.deploy.export import export

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
        from builder.deploy.cards import model_card

        if not run:
            return ""
        try:
            run = page.inside(run)
        except UserError as err:
            return f"⚠️ {err}"
        what = "merged" if (Path(run) / "merged").is_dir() else "adapter"
        return model_card(run, what, repo_id=(repo or "").strip() or "OWNER/NAME")

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
