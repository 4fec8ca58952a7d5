"""The page's first two tabs, building the bot: 1. 데이터 (upload a FAQ file, or generate one
from documents; the check report and a preview) and 2. 학습 (knobs, start/stop, live progress,
the loss chart, the log)."""

import csv
from pathlib import Path

from builder.doors import uploads
from builder.doors.page_common import (
    DOC_TYPES,
    GENERATED_COLUMNS,
    Page,
    eval_view,
    hidden,
    progress_html,
    shown,
)
from builder.doors.page_guard import check_endpoint, without_bodies
from builder.errors import UserError


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
        from builder.data.prepare import summary

        try:
            report, out_dir = uploads.prepare_upload(path, page.runs_root, mb)
        except UserError as err:
            return shown(str(err)), "", gr.skip(), [], [], gr.skip(), gr.skip()
        folder = str(out_dir)
        return hidden(), summary(report, out_dir), folder, uploads.dropped_table(report), \
            uploads.preview_rows(out_dir), folder, folder

    def on_generate(paths, url, name, secret, n_rows, progress=gr.Progress(track_tqdm=True)):
        from builder.data import faqgen

        try:
            progress(0, desc="문서를 읽는 중 / reading the documents")
            files = [uploads.check_upload(p, mb) for p in paths or []]
            if not files:
                raise UserError("문서를 먼저 올려 주세요 / upload documents (.md .txt .html .pdf "
                                ".docx) first")
            url = (url or "").strip()
            check_endpoint(url, page.private_endpoints)  # before anything is sent
            out = uploads.new_dir(page.runs_root, "generated") / "faq.csv"
            result = faqgen.generate_from_docs(
                files, out, endpoint=url or None, model=(name or "").strip() or None,
                rows=int(n_rows) if n_rows else None, api_key=secret or "", log=lambda *_: None)
        except UserError as err:
            message = without_bodies(str(err))
            return "", [], shown(message.replace(secret, "***") if secret else message)
        return without_bodies(faqgen.summary(result)), read_generated(result.path), hidden()

    def on_use_generated(table):
        rows = [[str(c or "") for c in row] for row in (table or []) if any(str(c or "").strip()
                                                                              for c in row)]
        if not rows:
            return shown("준비할 행이 없습니다 / no rows to prepare: generate them first"), \
                *[gr.skip()] * 6
        path = uploads.new_dir(page.runs_root, "reviewed") / "faq.csv"
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
        eval_text, eval_image, eval_key = eval_view(evaluated, seen[2], page.chart_dir)
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
