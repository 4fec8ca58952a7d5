"""The customer's web chat and the widget that puts it on the shop's own site.

    builder serve runs/NAME --web-chat --shop-name "하루커피"   # http://127.0.0.1:8000/chat

    <!-- on the shop's page: a chat bubble at the bottom right -->
    <script src="https://BOT-HOST/widget.js" data-title="하루커피 상담" data-color="#6b4f3a"
            async></script>

GET /chat: a small page (HTML, CSS and plain JavaScript, all from this server: no CDN, no
font service) titled with the shop's name; `?embed=1` is the widget's panel (no header).
POST /chat/api/answer {"messages": [{"role", "content"}, ...], "session": "..."} streams the
answer as server-sent events: {"type": "delta", "text"} as it is written, then one
{"type": "done", "id", "sources": [{"line", "question"}], "declined", "related": [...]} (or
{"type": "error", "message"}). POST /chat/api/feedback {"id", "value": 1 | -1} is the 👍/👎.
GET /widget.js: the bubble and its panel (an iframe on /chat?embed=1, so the shop's CSS and
ours never meet and no CORS is needed).

The browser holds no key: these routes are open, as a shop's chat is, and answer through the
API's queue (a full queue is 429, as on /v1). The request is read as the API reads a chat
request (the question is the last user message, at most 1,000 characters; a short follow-up
is read with the earlier ones); the web chat sends no context. The session is the page's
random id (kept in sessionStorage); the log stores it only as a pseudonym, channel "web".

Settings (Channel.settings):
  greeting  the first message, default "안녕하세요, {shop}입니다. 무엇이 궁금하세요?"
  examples  questions offered as buttons under the greeting, default the FAQ's first three
"""

import asyncio
import html
import json
import re
import uuid
from pathlib import Path

from builder.answering.grounding import follow_up
from builder.answering.related import related_questions
from builder.doors.api import _error_response, _failure, _read_json, _sse
from builder.doors.api_job import END, Job
from builder.doors.api_request import ApiError, read_feedback, read_request
from builder.errors import UserError

STATIC = Path(__file__).with_name("static")
SESSION = re.compile(r"[A-Za-z0-9_-]{8,64}")  # the page sends 32 hex digits
FIELDS = ("messages", "session")
N_EXAMPLES, N_RELATED = 3, 3
# what a browser may load for the page: this server only (the widget's iframe may sit anywhere)
CHAT_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
               "img-src 'self' data:; base-uri 'none'; form-action 'none'")


def mount(app, channel) -> None:
    """Add /chat, its assets, its answer and feedback routes and /widget.js to `app`."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, Response, StreamingResponse
    from starlette.background import BackgroundTask

    greeting, examples = _settings(channel)
    assets = {name: (STATIC / name).read_text(encoding="utf-8")
              for name in ("chat.html", "chat.css", "chat.js", "widget.js")}

    @app.get("/chat")
    async def chat_page(embed: str = ""):
        page = render_page(assets["chat.html"], channel.shop, greeting,
                           examples(channel.bot), embed == "1")
        return HTMLResponse(page, headers={"Content-Security-Policy": CHAT_POLICY,
                                           "Cache-Control": "no-cache",
                                           "Referrer-Policy": "no-referrer"})

    def asset(name: str, media_type: str):
        async def serve():
            return Response(assets[name], media_type=media_type,
                            headers={"Cache-Control": "no-cache"})
        return serve

    app.get("/chat/chat.css")(asset("chat.css", "text/css; charset=utf-8"))
    app.get("/chat/chat.js")(asset("chat.js", "text/javascript; charset=utf-8"))
    app.get("/widget.js")(asset("widget.js", "text/javascript; charset=utf-8"))

    @app.post("/chat/api/answer")
    async def answer(request: Request):
        try:
            asked = read_chat(await _read_json(request), channel)
            reply_id = f"chatcmpl-{uuid.uuid4().hex}"
            job = Job(channel.bot, channel.gate(), asked, channel.conversations, reply_id,
                      channel="web")
        except ApiError as err:
            return _error_response(err)

        async def leave():  # after the stream, also when the customer closed the page first
            job.cancel()

        return StreamingResponse(_events(job, channel), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(leave))

    @app.post("/chat/api/feedback")
    async def feedback(request: Request):
        try:
            reply_id, value = read_feedback(await _read_json(request))
            if channel.conversations is None:
                raise ApiError(404, "this server keeps no conversation log", code="no_log")
            if not await asyncio.to_thread(channel.conversations.feedback, reply_id, value):
                raise ApiError(404, f"no answer {reply_id!r} in the log", param="id",
                               code="not_found")
        except ApiError as err:
            return _error_response(err)
        return {"id": reply_id, "value": value}


# Reading


def read_chat(body, channel) -> dict:
    """The page's request as the API's job request (question, earlier questions, the session
    as the customer), or an ApiError that names the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object with messages and session")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:  # (a context, a model, options: the page sends none, the server picks them)
        raise ApiError(400, f"unknown field {unknown[0]!r}: the web chat takes only "
                       f"{' and '.join(FIELDS)}", param=unknown[0], code="unknown_field")
    session = body.get("session")
    if not isinstance(session, str) or not SESSION.fullmatch(session):
        raise ApiError(400, "session must be the page's id: 8 to 64 letters, digits, - or _",
                       param="session", code="invalid_value")
    if not isinstance(body.get("messages"), list):
        raise ApiError(400, "messages must be a non-empty list of {role, content}",
                       param="messages")
    asked = read_request({"model": channel.model, "messages": body["messages"],
                          "user": session, "stream": True}, channel.model, channel.max_tokens)
    asked["options"]["max_new_tokens"] = channel.max_tokens
    return asked


def _settings(channel):
    """The greeting and a function giving the example questions, from the channel's settings
    (checked once, when the server starts)."""
    settings = channel.settings
    greeting = settings.get("greeting")
    if greeting is None:
        greeting = f"안녕하세요, {channel.shop}입니다. 무엇이 궁금하세요?"
    if not isinstance(greeting, str) or not greeting.strip():
        raise UserError("the web chat's greeting must be a non-empty text")
    chosen = settings.get("examples")
    if chosen is not None and (not isinstance(chosen, list) or not all(
            isinstance(q, str) and q.strip() for q in chosen)):
        raise UserError("the web chat's examples must be a list of questions (texts)")

    def examples(bot) -> list[str]:  # the FAQ's first questions: the knowledge can change
        if chosen is not None:
            return [q.strip() for q in chosen]
        entries = bot.knowledge.entries if bot.knowledge is not None else []
        return [e.question for e in entries[:N_EXAMPLES]]

    return greeting.strip(), examples


# Writing


def render_page(template: str, shop: str, greeting: str, examples: list[str],
                embed: bool) -> str:
    """The chat page: the shop's name escaped as HTML, the page's settings as JSON that no
    text can end early (every "<" written as \\u003c)."""
    config = json.dumps({"shop": shop, "greeting": greeting, "examples": examples},
                        ensure_ascii=False).replace("<", "\\u003c")
    return (template.replace("{{title}}", html.escape(shop))
            .replace("{{body_class}}", "embed" if embed else "")
            .replace("{{config}}", config))


async def _events(job: Job, channel):
    """The answer's deltas, then its sources, related questions and id in one last event."""
    try:
        while (item := await job.deltas.get()) is not END:
            yield _sse({"type": "delta", "text": item})
        if job.error is not None:
            yield _sse({"type": "error", "message": str(_failure(job.error))})
            return
        reply, asked = job.reply, job.request
        # a short follow-up's neighbours are those of the question it follows ("제주도는요?")
        earlier = follow_up(asked["question"], asked["history"])
        near = f"{earlier} {asked['question']}" if earlier else asked["question"]
        # e5 over the FAQ: a few ms, but off the server's loop
        related = await asyncio.to_thread(related_questions, channel.bot.knowledge, near,
                                          reply, N_RELATED)
        yield _sse({"type": "done", "id": job.reply_id, "declined": reply.declined,
                    "sources": [{"line": h.entry.line, "question": h.entry.question}
                                for h in reply.sources], "related": related})
    finally:
        job.cancel()  # a no-op once done; when the customer left, the generation stops
