"""The HTTP door: a run's grounded chatbot behind an OpenAI-compatible API (FastAPI + uvicorn).

    builder serve runs/NAME                                    # http://127.0.0.1:8000/v1
    BUILDER_API_KEY=... builder serve runs/NAME --host 0.0.0.0 # clients send "Bearer ..."
    builder serve runs/NAME --engine http://GPU-HOST:8001/v1   # vLLM, llama.cpp, Ollama, TGI

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    reply = client.chat.completions.create(
        model="NAME", messages=[{"role": "user", "content": "배송비는 얼마인가요?"}])
    reply.choices[0].message.content, reply.choices[0].message.sources

GET /v1/models, POST /v1/chat/completions (whole, or `stream: true` as server-sent events
ending with `data: [DONE]`), GET /health (no key needed, for load balancers). Every answer is
`Chatbot.stream`'s: retrieval, the decline rule, the fact guard and the stop rules stay here.

- The question is the last user message; the earlier user messages are the conversation a
  short follow-up ("제주도는요?") is read with (builder.answering.grounding), as on the page
  and in `builder chat`. System messages are ignored (the run's template is the prompt); an
  extra `context` field fills the template's context block.
- Replies carry extra fields that standard clients ignore: `sources` ([{"line", "question"}],
  the FAQ rows the answer came from), `declined`, and `faq_only` (true while the run is still
  training: the best FAQ entry's own answer, until the trained model is put in without a
  restart), on the message (whole answers) or on the last chunk (streams).
- Every answer goes into the conversation log (builder.owner.log: RUN/conversations.db, or
  `--db postgresql://...` shared by replicas) with the customer as a pseudonym of the request's
  `user` field; POST /v1/feedback {"id": "chatcmpl-...", "value": 1 | -1} records their 👍/👎.
- Errors are OpenAI's JSON ({"error": {"message", "type", "param", "code"}}) with its status.
- At most `concurrency` answers are generated at once (the GGUF engine's `--parallel`, 8 by
  default, decoded together in one llama.cpp batch; 1 for the transformers engine: on CPU one
  generation takes all cores) and `max_queue` more wait (32); beyond that 429 with
  Retry-After. A client that leaves stops its generation after the current token and frees its
  place. Greedy answers to the same prompt are generated once and shared (`rag.shared_answers`
  kept; a customer asking what another is being answered follows that answer as it comes).
- `--engine URL`: the model runs in an OpenAI-compatible completion server; the builder renders
  the prompt and asks only for its completion (POST URL/completions, streamed, with the
  template's stop markers). The server adds <bos>, as training did.
- The API key is compared in constant time and never logged: uvicorn's access log is off and
  the log line written instead has the method, the path without its query, status and time.
"""

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path

from builder.answering.chatbot import Chatbot, load_chatbot, ready, warm_entries
from builder.answering.engines.remote import EngineError
from builder.answering.guard import Reply
from builder.doors.api_job import END, Gate, Job
from builder.doors.api_request import ApiError, read_feedback, read_request
from builder.errors import UserError

log = logging.getLogger(__name__)
API_KEY_ENV = "BUILDER_API_KEY"
MAX_BODY_BYTES = 256 * 1024  # a chat request with its history is a few kB


# The app


class _Door:
    """ASGI middleware: the API key for /v1/*, and one log line per request (method, path
    without its query, status, seconds), never a header."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    def _authorized(self, scope) -> bool:
        sent = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = sent.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                   self.api_key.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        begun, status = time.monotonic(), [500]

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.api_key is not None and scope["path"].startswith("/v1") \
                    and not self._authorized(scope):
                refused = ApiError(401, "missing or wrong API key (send Authorization: Bearer "
                                   "KEY)", code="invalid_api_key")
                await _error_response(refused)(scope, receive, send_noting_status)
            else:
                await self.app(scope, receive, send_noting_status)
        finally:
            log.info("%s %s %d %.2fs", scope["method"], scope["path"], status[0],
                     time.monotonic() - begun)


def _error_response(err: ApiError):
    from fastapi.responses import JSONResponse

    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _failure(err: BaseException) -> ApiError:
    """What the client is told about an answer that failed (the traceback stays in the log)."""
    if isinstance(err, UserError):
        return ApiError(400, str(err))
    if isinstance(err, EngineError):
        log.error("%s", err)
        return ApiError(502, "the completion engine failed; see the server log",
                        type="server_error", code="engine_error")
    log.error("answer failed", exc_info=err)
    return ApiError(500, "the answer failed; see the server log", type="server_error")


def _finish(reply) -> str:
    """OpenAI's finish_reason: "length" when max_tokens cut the answer short."""
    return "length" if reply.cut else "stop"


def _sources(reply: Reply) -> list[dict]:
    return [{"line": h.entry.line, "question": h.entry.question} for h in reply.sources]


def build_app(bot: Chatbot, model: str, *, api_key: str | None = None, max_queue: int = 8,
              max_tokens_cap: int = 512, concurrency: int = 1, engine: str = "local",
              conversations=None, channels=(), shop: str = "", channel_settings=None,
              gate: Gate | None = None):
    """The FastAPI app serving `bot` as `model`; every answer goes into `conversations` (a
    builder.owner.log.ConversationLog) when given. `channels`: the mount functions of the
    customer channels to add (builder.doors.channels), sharing the API's queue; `gate`: a
    queue shared with other shops' apps (builder.doors.api_shops)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.exceptions import HTTPException

    app = FastAPI(title="builder serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Door, api_key=api_key)
    app.state.gate = gate  # (else made in the server's event loop, on the first request)
    created = int(time.time())

    def gate() -> Gate:
        if app.state.gate is None:
            app.state.gate = Gate(concurrency, max_queue)
        return app.state.gate

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # unknown paths and methods, in OpenAI's shape
        return _error_response(ApiError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def server_error(request, exc):  # a bug: JSON for the client, the traceback logged
        return _error_response(_failure(exc))

    @app.get("/health")
    async def health():
        g = gate()
        # "local" or "remote", never the engine's URL: it can carry credentials
        return {"status": "ok", "model": model, "engine": "local" if engine == "local" else
                "remote", "trained": bot.trained, "running": g.running,
                "waiting": g.waiting, "max_queue": max_queue}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model, "object": "model", "created": created,
                                            "owned_by": "builder"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await _read_json(request)
            head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
                    "model": model}
            job = Job(bot, gate(), read_request(body, model, max_tokens_cap), conversations,
                      head["id"])
        except ApiError as err:
            return _error_response(err)
        if job.request["stream"]:
            async def leave():  # runs after the stream, also when the client left before it began
                job.cancel()

            return StreamingResponse(_events(job, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"},
                                     background=BackgroundTask(leave))
        text = await _whole(job, request)
        if text is None:  # the client left
            return JSONResponse({}, status_code=499)
        if job.error is not None:
            return _error_response(_failure(job.error))
        message = {"role": "assistant", "content": text, "sources": _sources(job.reply),
                   "declined": job.reply.declined, "faq_only": job.reply.faq_only}
        return {**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": message, "finish_reason": _finish(job.reply),
             "logprobs": None}]}

    from builder.doors.channels import Channel

    for mount in channels:
        mount(app, Channel(bot, model, conversations, gate, shop=shop or model,
                           max_tokens=min(256, max_tokens_cap),
                           settings=dict(channel_settings or {})))

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """The customer's 👍/👎 on an answer: {"id": "chatcmpl-...", "value": 1 or -1}."""
        try:
            reply_id, value = read_feedback(await _read_json(request))
            if conversations is None:
                raise ApiError(404, "this server keeps no conversation log", code="no_log")
            if not await asyncio.to_thread(conversations.feedback, reply_id, value):
                raise ApiError(404, f"no answer {reply_id!r} in the log", param="id",
                               code="not_found")
        except ApiError as err:
            return _error_response(err)
        return {"id": reply_id, "value": value}

    return app


async def _read_json(request) -> object:
    """The body as JSON, at most MAX_BODY_BYTES (413 beyond, read no further)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes",
                       code="body_too_large")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes",
                           code="body_too_large")
    try:
        return json.loads(body)
    except ValueError as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})",
                       code="invalid_json") from None
    except RecursionError:  # "[[[[...": deeper than Python's parser goes
        raise ApiError(400, "the request body is JSON nested too deeply to read",
                       code="invalid_json") from None


async def _whole(job: Job, request) -> str | None:
    """The joined answer; None when the client left before it was done (its job is stopped)."""
    parts, getter = [], None
    while True:
        getter = getter or asyncio.ensure_future(job.deltas.get())
        done, _ = await asyncio.wait({getter}, timeout=0.5)
        if not done:
            if await request.is_disconnected():
                getter.cancel()
                job.cancel()
                return None
            continue
        item, getter = getter.result(), None
        if item is END:
            return "".join(parts)
        parts.append(item)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _events(job: Job, head: dict):
    """The answer as chat.completion.chunk events; the last one has the sources."""
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        return _sse({**head, "object": "chat.completion.chunk", **extra, "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        while (item := await job.deltas.get()) is not END:
            yield chunk({"content": item})
        if job.error is not None:
            yield _sse(_failure(job.error).body())
        else:
            yield chunk({}, _finish(job.reply), sources=_sources(job.reply),
                        declined=job.reply.declined, faq_only=job.reply.faq_only)
        yield "data: [DONE]\n\n"
    finally:
        job.cancel()  # a no-op once done; when the client left, its generation stops


# The door's one call


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_serving(host: str, flag_key: str | None, env_key: str | None,
                  concurrency: int | None, max_queue: int, open_: bool) -> str | None:
    """The key the API asks for (None: none), or a UserError for settings that would expose
    the bot by mistake or serve nothing; checked before the run is loaded."""
    key = flag_key if flag_key is not None else env_key
    if key is not None and not key.strip():  # an empty key would turn the check off
        where = "--api-key" if flag_key is not None else f"${API_KEY_ENV}"
        raise UserError(f"the API key is empty ({where}): give a key, or leave it unset on "
                        "loopback")
    if key is None and host not in LOOPBACK and not open_:
        raise UserError(f"serving on {host} without an API key lets anyone who reaches it ask: "
                        f"set ${API_KEY_ENV} (clients send 'Authorization: Bearer KEY'), or "
                        "pass --open to serve it open on purpose")
    if concurrency is not None and concurrency < 1:
        raise UserError(f"--concurrency {concurrency}: give 1 or more answers at once")
    if max_queue < 0:
        raise UserError(f"--max-queue {max_queue}: give 0 or more waiting requests")
    return key


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          engine: str = "local", api_key: str | None = None, max_queue: int = 32,
          max_tokens_cap: int = 512, concurrency: int | None = None, use: str = "auto",
          engine_model: str | None = None, warm: bool = False, open_: bool = False,
          db: str | None = None, shop: str | None = None, channels: dict | None = None,
          settings: list[str] = (), parallel: int | None = None) -> None:
    """Load the run and serve it until Ctrl-C (`warm`: Chatbot.warm first; `open_`: off
    loopback without a key, on purpose; `db`: the conversation log, default RUN's SQLite;
    `channels`: {name: (mount, settings)} of the customer channels to add, as
    builder.doors.commands.channel_settings makes them; `settings`: rag.KEY=VALUE for this
    server; `parallel`: answers the GGUF engine generates together)."""
    import uvicorn

    from builder.owner.live import follow, follow_model
    from builder.owner.log import ConversationLog

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api_key = check_serving(host, api_key, os.environ.get(API_KEY_ENV), concurrency, max_queue,
                            open_)
    if api_key is None and host not in LOOPBACK:
        log.warning("serving on %s without an API key (--open): anyone who reaches it can ask",
                    host)
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel {parallel}: give 1 or more answers generated together")
    bot = load_chatbot(run_dir, use, engine=engine, engine_model=engine_model, faq_first=True,
                       settings=settings, parallel=parallel)
    from builder.answering.engines.llamacpp import default_parallel

    if concurrency is None:  # a remote engine or the GGUF engine batches what arrives
        concurrency = 8 if engine != "local" else (  # together; transformers: one at a time
            (parallel or default_parallel()) if use == "gguf" else 1)
    conversations = ConversationLog.for_run(run_dir, db)
    if bot.knowledge is not None:  # an FAQ row the owner adds (inbox, builder index) reaches
        follow(bot, run_dir)       # the answers within a second or two, without a restart
    if not bot.trained:  # still training: the FAQ answers until the model is there
        log.info("%s has no trained model yet: answering with the FAQ's own answers until it "
                 "is there", run_dir)
        follow_model(bot, run_dir, use, on_change=lambda b: (ready(b), warm and warm_entries(b)),
                     parallel=parallel)
    started = time.perf_counter()
    ready(bot, model=engine == "local")
    log.info("ready to answer in %.1f s (retrieval%s loaded)", time.perf_counter() - started,
             " and model" if engine == "local" else "")
    if warm:
        started = time.perf_counter()
        warmed = warm_entries(bot)
        log.info("warmed %d FAQ entries in %.1f s", warmed, time.perf_counter() - started)
    model = Path(run_dir).resolve().name
    channels = channels or {}
    app = build_app(bot, model, api_key=api_key, max_queue=max_queue,
                    max_tokens_cap=max_tokens_cap, concurrency=concurrency, engine=engine,
                    conversations=conversations, channels=[m for m, _ in channels.values()],
                    shop=shop or "", channel_settings={
                        k: v for _, s in channels.values() for k, v in s.items()})
    log.info("serving %s (engine %s) on http://%s:%d/v1%s", model, engine, host, port,
             " (API key required)" if api_key else "")
    if "web" in channels:
        log.info("web chat: http://%s:%d/chat, widget: <script src=\"http://%s:%d/widget.js\" "
                 "async></script>", host, port, host, port)
    if "kakao" in channels:
        log.info("KakaoTalk skill: POST http://%s:%d/kakao/skill/<$BUILDER_KAKAO_SECRET>", host,
                 port)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
