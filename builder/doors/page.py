"""The web page (Gradio, Korean labels): 데이터 -> 학습 -> 채팅 -> 배포 -> 인박스, over the library's
functions.

    python app.py                     # http://127.0.0.1:7860
    python app.py --run runs/demo     # chat with a trained run first

Each tab is one function (data_tab and train_tab in page_build.py, chat_tab and deploy_tab in
page_serve.py, inbox_tab in page_inbox.py, what they share in page_common.py) and calls what
the CLI calls (builder.data.prepare.prepare, builder.data.faqgen, `builder train` / `builder
merge`, builder.answering.chatbot.load_chatbot, builder.deploy.export, builder.deploy.hub,
builder.owner.inbox, builder.owner.charts); builder.doors.jobs (the training job) and
builder.doors.uploads hold the logic that is not drawing. Every event has an `api_name`, so
gradio_client can drive the page: /prepare, /generate_faq, /prepare_generated,
/start_training, /stop_training, /training_status, /chat, /stop_chat, /clear_chat, /feedback,
/index_faq, /eval_report, /push_dataset, /push_model, /push_adapter, /export_gguf, /push_gguf,
/model_card, /inbox, /inbox_group, /inbox_answer, /inbox_map, /inbox_decline. A UserError
shows in the tab's error box, never as a traceback.
The Hugging Face token and an endpoint's API key go from their password fields straight to
builder.deploy.hub / builder.data.faqgen: they are not kept.

In the 데이터 tab documents (.md .txt .html .pdf .docx) become FAQ rows through an
OpenAI-compatible endpoint the user names (`builder generate`); the rows are shown, editable,
and only prepared once reviewed. One answer is generated at a time; a session waiting for its
turn sees its place in the queue on the chat box, and nothing else on the page waits behind an
answer. Pushes show a progress bar (the upload's own progress, file by file).

In the 채팅 tab each answer of a run that answers from its FAQ is followed by a collapsed
"참고한 FAQ" message (the entries and their rows in the FAQ file); "FAQ 업데이트" replaces the
run's knowledge from an updated FAQ file (as `builder index`) and the next question uses it;
the run's evaluation (`builder eval`: RUN/eval/, or RUN/eval.running while it runs) is shown
and read again on a timer, so an eval that ends while the page is open fills in. Every answer
goes into the run's conversation log (builder.owner.log, the session under a pseudonym), and
👍/👎 under an answer is stored with it.

The 인박스 tab lists what the bot did not answer well (declined, replaced by the fact guard, 👎,
weakly matched), grouped by question; the owner answers a group (a new FAQ row), names the entry
that should have answered, or agrees the decline was right, and the run's loaded bot answers
from the new knowledge at once. Below it: questions a day, answered and declined, 👍/👎, the
entries asked most, the questions left open.

Visitors type paths and text, so the page only reads folders under its runs root (and the
--run folder), caps what it queues and the length of a question, and serves no file by path but
the charts it shows (copied out of the runs: chat.log, the data and the models stay there). It
replaces the FAQ (or adds to it from the inbox) only of runs inside its runs root, never on an
--open page (page_common.Page.writable_run), and shows no inbox on an --open page. Its document
generator posts only to public addresses unless the owner passed --allow-private-endpoints,
and never shows what the endpoint answered (page_guard). Off loopback
it needs a login (BUILDER_APP_PASSWORD) or an explicit --open. It lends the owner's saved Hub login (HF_TOKEN,
`hf auth login`) to an empty token field only when started with --hub-login (never with --open):
"loopback" also means a proxy or a tunnel on this machine and its other users. It answers only
to its own host names (builder.doors.page_guard), so a web page cannot reach it by DNS rebinding.
"""

import atexit
import os
import signal

from builder.doors.page_build import data_tab, train_tab
from builder.doors.page_common import (
    BUSY,
    CSS,
    FONTS,
    MONO_FONTS,
    Page,
    is_loopback,
)
from builder.doors.page_guard import HostCheck, HostNames
from builder.doors.page_inbox import inbox_tab
from builder.doors.page_serve import chat_tab, deploy_tab
from builder.errors import UserError

PASSWORD_ENV, USER_ENV = "BUILDER_APP_PASSWORD", "BUILDER_APP_USER"  # the page's login


def build_app(*, runs_root="runs", run_dir=None, config_path="configs/embedded-cpu.yaml",
              max_upload_mb=20, hub_login=False, open_page=False, private_endpoints=False,
              db=None):
    """The whole page as gr.Blocks (not launched).

    hub_login: an empty token field pushes with HF_TOKEN or the saved login (the owner's
    explicit --hub-login); open_page: served to anyone without a login (--open);
    private_endpoints: the document generator may post to this machine and the private network;
    db: the conversation log's database (None: each run's RUN/conversations.db)."""
    import gradio as gr

    page = Page(runs_root, run_dir, config_path, max_upload_mb, hub_login=hub_login,
                open_page=open_page, private_endpoints=private_endpoints, db=db)
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
        inbox_tab(page)
    return app


def launch(host="127.0.0.1", port=7860, *, runs_root="runs", run_dir=None,
           config_path="configs/embedded-cpu.yaml", max_upload_mb=20, open_access=False,
           max_queue=20, hub_login=False, allowed_hosts=(), allow_private_endpoints=False,
           ssl_certfile=None, ssl_keyfile=None, db=None) -> None:
    """Build the page, serve it on host:port, print the URL and block until Ctrl-C.

    Off loopback the page needs a login ($BUILDER_APP_PASSWORD, user $BUILDER_APP_USER or
    "admin") unless open_access; max_queue events may wait, more get the busy message.
    hub_login lends HF_TOKEN / the saved login to an empty token field; allowed_hosts are host
    names the page answers to besides its own (builder.doors.page_guard); with ssl_certfile
    and ssl_keyfile it serves https itself; every chat answer goes into the run's conversation
    log (db: a file or postgresql:// URL, else RUN/conversations.db)."""
    loopback = is_loopback(host)
    password = os.environ.get(PASSWORD_ENV)
    if not loopback and not password and not open_access:
        raise UserError(f"{host}: 다른 컴퓨터에서도 열리는 주소입니다 / this address is reachable "
                        f"beyond this machine: set {PASSWORD_ENV} for a login, or pass --open to "
                        "serve it to anyone without one")
    if hub_login and not loopback and not password:
        raise UserError("--hub-login with --open would let anyone who reaches the page push with "
                        f"your Hugging Face login: set {PASSWORD_ENV} for a login, or leave "
                        "--hub-login out (visitors then type their own token)")
    auth = (os.environ.get(USER_ENV) or "admin", password) if password else None

    import gradio as gr
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UserError("give both --ssl-certfile and --ssl-keyfile, or neither")
    app = build_app(runs_root=runs_root, run_dir=run_dir, config_path=config_path,
                    max_upload_mb=max_upload_mb, hub_login=hub_login,
                    open_page=not loopback and not auth,
                    private_endpoints=allow_private_endpoints, db=db)
    names = HostNames(host, port, tuple(allowed_hosts))
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    # no allowed_paths: the file route serves uploads and the charts the page copied into
    # Gradio's cache, never a run folder by its path
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
               css=CSS, theme=gr.themes.Default(font=FONTS, font_mono=MONO_FONTS),
               footer_links=["api", "gradio"], auth=auth,
               ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
               ssl_verify=False,  # only its own start-up check on loopback, under any cert name
               run_history=False,  # the browser must not keep a record of inputs (the token)
               max_file_size=int(4 * max_upload_mb * 2**20),  # over the cap: our message
               app_kwargs={"exception_handlers": {HTTPException: _busy},
                           "middleware": [Middleware(HostCheck, names=names)]})
    open_note = "" if loopback or auth else " (open: no login, anyone who reaches it can use it)"
    scheme = "https" if ssl_certfile else "http"
    print(f"builder app: {scheme}://{host}:{port}/{open_note}", flush=True)
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
