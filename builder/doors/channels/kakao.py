"""KakaoTalk: the shop's Kakao channel answered by `builder serve`, as a Kakao i Open Builder
skill server.

    export BUILDER_KAKAO_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(24))')
    builder serve runs/NAME --host 0.0.0.0 --kakao    # skill URL https://BOT-HOST/kakao/skill/SECRET

POST /kakao/skill/SECRET reads Kakao's skill payload (userRequest.utterance: the question;
userRequest.user.id: the customer's botUserKey; userRequest.callbackUrl: only on a block with
the AI chatbot callback on) and answers in skill response 2.0: one simpleText (at most 1,000
characters, cut after a sentence) and quickReplies with up to 3 FAQ questions near the
question (labels of at most 14 characters; a tap sends the whole question).

Kakao waits 5 s, so every answer is given within `kakao_budget_s` (4 s):
- An FAQ question asked word for word and a question the FAQ says nothing about are settled by
  the grounding step without the model: answered at once, without waiting in the queue.
- Otherwise the model writes the answer through the API's queue. With a callback URL the
  skill replies useCallback at once (`data.text`: "답변을 준비하고 있어요…", for the block's
  callback message) and POSTs the answer to the URL once written (within `kakao_callback_s`;
  the URL lasts about a minute and takes one answer). Without one it waits up to the budget,
  then stops the generation and answers with the best FAQ entry's own answer.

Kakao signs nothing: the path's last segment is the secret, compared in constant time; any
other path under /kakao/skill is an unknown one (404). A middleware takes the secret out of
the path before anything else sees it (the route, the request log line "POST /kakao/skill
200", error pages). Callbacks go only to https hosts under kakao.com, or to the origins in
`kakao_callback_hosts`. The botUserKey stays in memory (the customer's recent questions, for
a follow-up, under a keyed hash) and reaches the conversation log as a pseudonym only.

Settings (Channel.settings):
  kakao_secret          the path's secret (required: 16 to 128 letters, digits, - or _)
  kakao_budget_s        seconds an answer may take, 0.5 to 4.8 (default 4.0; Kakao waits 5)
  kakao_callback_s      seconds a callback answer may take, up to 55 (default 50)
  kakao_callback_hosts  more origins callbacks may go to, e.g. ["http://127.0.0.1:9000"]
"""

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from builder.answering.guard import Reply
from builder.answering.related import related_questions
from builder.config import MAX_QUESTION_CHARS
from builder.doors.api import _error_response, _read_json
from builder.doors.api_job import Job
from builder.doors.api_request import ApiError
from builder.doors.channels import Histories
from builder.errors import UserError

log = logging.getLogger(__name__)

ROUTE = "/kakao/skill"
HIDDEN = ROUTE + "/***"  # a path with a wrong secret, as routed (no route: 404) and logged
VERIFIED = "builder.kakao_secret_ok"  # set in the request's scope by _SecretPath
SECRET = re.compile(r"[A-Za-z0-9_-]{16,128}")  # URL-safe: the path carries it as written
MAX_TEXT = 1000  # simpleText's text
MAX_LABEL = 14  # a quick reply's label
N_RELATED = 3
BUDGET_S, CALLBACK_S = 4.0, 50.0
POST_TIMEOUT_S = 10.0
WAITING = "답변을 준비하고 있어요…"
LATE = "지금은 답변이 늦어지고 있어요. 잠시 후 다시 물어봐 주세요."  # no FAQ entry to fall back on


def mount(app, channel) -> None:
    """Add POST /kakao/skill/SECRET to `app` (the secret: channel.settings["kakao_secret"])."""
    from fastapi import Request
    from starlette.exceptions import HTTPException

    secret = channel.settings.get("kakao_secret") or ""
    if not isinstance(secret, str) or not SECRET.fullmatch(secret):
        raise UserError("the KakaoTalk skill needs a secret of 16 to 128 letters, digits, - or _ "
                        "(make one with: python -c 'import secrets; "
                        "print(secrets.token_urlsafe(24))')")
    skill = KakaoSkill(channel)
    app.add_middleware(_SecretPath, secret=secret)

    @app.post(ROUTE)
    async def kakao_skill(request: Request):
        if not request.scope.get(VERIFIED):  # only _SecretPath's rewrite of the secret path
            raise HTTPException(404)
        try:
            ask = read_skill(await _read_json(request))
        except ApiError as err:
            return _error_response(err)
        return await skill.answer(ask)


class _SecretPath:
    """ASGI middleware: /kakao/skill/SECRET goes on as /kakao/skill, marked verified; any other
    path under /kakao/skill as /kakao/skill/***, which no route serves. What comes after it
    (the API's request log line among them) never sees the secret."""

    def __init__(self, app, secret: str):
        self.app, self.secret = app, secret.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == ROUTE or path.startswith(ROUTE + "/"):
            ok = hmac.compare_digest(path[len(ROUTE) + 1:].encode(), self.secret)
            shown = ROUTE if ok else HIDDEN
            scope = {**scope, "path": shown, "raw_path": shown.encode(), VERIFIED: ok}
        await self.app(scope, receive, send)


# Reading


@dataclass
class Ask:
    """One customer message, as the skill payload carries it."""

    question: str
    user: str  # the botUserKey: kept in memory, stored only as the log's pseudonym
    callback: str = ""  # userRequest.callbackUrl ('' without)


def read_skill(body) -> Ask:
    """The payload's question, customer and callback URL, or an ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the skill payload must be a JSON object")
    for key in ("bot", "action"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ApiError(400, f"{key} must be an object", param=key, code="invalid_type")
    request = body.get("userRequest")
    if not isinstance(request, dict):
        raise ApiError(400, "userRequest must be an object (Kakao's skill payload)",
                       param="userRequest")
    question = request.get("utterance")
    param = "userRequest.utterance"
    if not isinstance(question, str):
        raise ApiError(400, f"{param} must be the customer's message (a string)", param=param,
                       code="invalid_type")
    question = question.strip()
    if not question:
        raise ApiError(400, f"{param} is empty", param=param, code="invalid_value")
    if len(question) > MAX_QUESTION_CHARS:
        raise ApiError(400, f"{param} is {len(question):,} characters; at most "
                       f"{MAX_QUESTION_CHARS:,}", param=param, code="string_above_max_length")
    user = request.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, str) or not 0 < len(user_id) <= 256:
        raise ApiError(400, "userRequest.user.id must be the customer's botUserKey (a string "
                       "of 1 to 256 characters)", param="userRequest.user.id",
                       code="invalid_value")
    callback = request.get("callbackUrl") or ""
    if not isinstance(callback, str) or len(callback) > 2048:
        raise ApiError(400, "userRequest.callbackUrl must be a URL (a string)",
                       param="userRequest.callbackUrl", code="invalid_type")
    return Ask(question, user_id, callback)


def callback_allowed(url: str, origins=frozenset()) -> bool:
    """Whether an answer may be POSTed to `url`: https on a host under kakao.com, or one of
    `origins` ("http://127.0.0.1:9000"); never a URL carrying a user or password."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is no number)
    except ValueError:
        return False
    host = parts.hostname or ""
    if not host or parts.username is not None or parts.password is not None:
        return False
    if parts.scheme == "https" and host.endswith(".kakao.com"):
        return True
    return f"{parts.scheme}://{parts.netloc}".lower() in origins


# Writing


SENTENCE_END = re.compile(r"(?<=[.!?。])\s+|\n+")  # "1.5kg" has no space after its point
NUMBER = re.compile(r"[\d,.]")  # what a number such as "1,234.5" is written with


def fit_text(text: str, limit: int = MAX_TEXT) -> str:
    """`text` within `limit` characters: cut after the last whole sentence when that keeps at
    least half of it, else at the last space with "…" (a number such as "3,000원" has no
    space in it), else before the last number that would be split."""
    text = text.strip()
    if len(text) <= limit:
        return text
    ends = [m.start() for m in SENTENCE_END.finditer(text, 0, limit + 1) if m.start() <= limit]
    if ends and ends[-1] >= limit // 2:
        return text[:ends[-1]]
    cut = text.rfind(" ", 0, limit)
    if cut < limit // 2:
        cut = limit - 1
        while cut > 0 and NUMBER.match(text[cut - 1]) and NUMBER.match(text[cut]):
            cut -= 1  # "1,234,567" is one number: not "1,234,5…"
    return text[:cut].rstrip() + "…"


def label(question: str) -> str:
    """A quick reply's label: the question, cut to MAX_LABEL characters ending in "…"."""
    question = " ".join(question.split())
    return question if len(question) <= MAX_LABEL else question[:MAX_LABEL - 1].rstrip() + "…"


def skill_response(text: str, questions: list[str]) -> dict:
    """Skill response 2.0: the answer as one simpleText, the questions as quick replies."""
    template = {"outputs": [{"simpleText": {"text": fit_text(text)}}]}
    if questions:
        template["quickReplies"] = [{"label": label(q), "action": "message", "messageText": q}
                                    for q in questions]
    return {"version": "2.0", "template": template}


def fallback(grounding, why: str) -> Reply:
    """The best FAQ entry's own answer (each ask's, for a question with two), given when the
    model's answer is not written in time."""
    hits = grounding.hits[:len(grounding.parts) or 1]
    return Reply(text="\n".join(h.entry.answer for h in hits) or LATE, sources=list(hits),
                 fallback=bool(hits), why=why)


# Answering


class KakaoSkill:
    """The skill behind one channel: answers within Kakao's wait, through the API's queue."""

    def __init__(self, channel):
        settings = channel.settings
        self.channel, self.bot = channel, channel.bot
        self.budget_s = _seconds(settings, "kakao_budget_s", BUDGET_S, 0.5, 4.8)
        self.callback_s = _seconds(settings, "kakao_callback_s", CALLBACK_S, 1.0, 55.0)
        hosts = settings.get("kakao_callback_hosts") or []
        if not isinstance(hosts, (list, tuple)) or not all(isinstance(h, str) for h in hosts):
            raise UserError("kakao_callback_hosts must be a list of origins "
                            "(\"https://HOST[:PORT]\")")
        self.origins = frozenset(h.strip().rstrip("/").lower() for h in hosts)
        self.histories = Histories()
        self._key = secrets.token_bytes(32)  # per process: no botUserKey is a key in memory
        self._tasks: set = set()

    async def answer(self, ask: Ask) -> dict:
        """The skill response: the answer, or useCallback when it follows through the URL."""
        begun = time.monotonic()
        who = hmac.new(self._key, ask.user.encode(), hashlib.sha256).hexdigest()
        history = self.histories.earlier(who)
        self.histories.add(who, ask.question)
        grounding = await asyncio.to_thread(self.bot.ground, ask.question, "", history)
        if grounding.settled:  # the FAQ's own answer or the decline: no model, no queue
            reply = await asyncio.to_thread(self.bot.reply, ask.question, "", history=history)
            return await self._shown(ask, grounding, reply, begun)
        job = self._start(ask, history)
        callback = self._callback(ask.callback)
        if job is not None and callback:
            # at once: the answer reaches the customer when written either way, and one that
            # outlasts the budget (a long one, a queue) would leave them 4 s with nothing first
            self._spawn(self._call_back(ask, grounding, job, callback, begun))
            return {"version": "2.0", "useCallback": True, "data": {"text": WAITING}}
        reply = await self._within(job, grounding, begun, self.budget_s)
        return await self._shown(ask, grounding, reply, begun)

    def _start(self, ask: Ask, history: list[str]) -> Job | None:
        """The model's answer through the API's queue (None when the queue is full)."""
        request = {"question": ask.question, "context": "", "history": history,
                   "customer": "", "stream": False,
                   "options": {"max_new_tokens": self.channel.max_tokens, "temperature": 0.0,
                               "top_p": 0.9}}
        try:  # no log for the job: _shown records what the customer was shown
            return Job(self.bot, self.channel.gate(), request, None, channel="kakao")
        except ApiError:
            return None

    async def _within(self, job: Job | None, grounding, begun: float, seconds: float) -> Reply:
        """The job's reply when written within `seconds` of `begun` (time.monotonic), else the
        best entry's own answer and the job stopped."""
        if job is None:
            return fallback(grounding, "kakao: the queue was full")
        left = max(0.0, begun + seconds - time.monotonic())
        done, _ = await asyncio.wait({job.task}, timeout=left)
        if not done:
            job.cancel()
            return fallback(grounding, f"kakao: not written within {seconds:g} s")
        if job.task.cancelled() or job.error is not None or not job.reply.text.strip():
            if job.error is not None:  # the traceback can name the engine's URL: its kind only
                log.warning("a KakaoTalk answer failed (%s); the best entry's answer was given",
                            type(job.error).__name__)
            return fallback(grounding, "kakao: the answer failed")
        return job.reply

    async def _call_back(self, ask: Ask, grounding, job: Job, url: str, begun: float) -> None:
        try:
            reply = await self._within(job, grounding, begun, self.callback_s)
            await _post(url, await self._shown(ask, grounding, reply, begun))
        except Exception:  # a task's failure would otherwise go unseen
            log.exception("a KakaoTalk callback answer failed")

    async def _shown(self, ask: Ask, grounding, reply: Reply, begun: float) -> dict:
        """The skill response for `reply`, with the FAQ questions near the question as quick
        replies; its row goes into the conversation log."""
        # a short follow-up's neighbours are those of the question it follows ("제주도는요?")
        near = f"{grounding.earlier} {ask.question}" if grounding.earlier else ask.question
        related = await asyncio.to_thread(related_questions, self.bot.knowledge, near, reply,
                                          N_RELATED)
        self._spawn(self._record(ask, reply, time.monotonic() - begun))
        return skill_response(reply.text or LATE, related)

    async def _record(self, ask: Ask, reply: Reply, seconds: float) -> None:
        conversations = self.channel.conversations
        if conversations is None:
            return
        try:
            await asyncio.to_thread(conversations.record, "kakao", ask.user, ask.question, "",
                                    reply, seconds)
        except Exception:  # a database down must not take the answers with it
            log.warning("the conversation log failed; the KakaoTalk answer was given",
                        exc_info=True)

    def _callback(self, url: str) -> str:
        """The callback URL when answers may go there ('' otherwise: answered in time)."""
        if url and not callback_allowed(url, self.origins):
            log.warning("a KakaoTalk callback URL on %r is not Kakao's: answered without it "
                        "(kakao_callback_hosts allows more)", urlsplit(url).hostname)
            return ""
        return url

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)


async def _post(url: str, body: dict) -> None:
    """POST the answer to Kakao's callback URL, once (it takes one answer)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=POST_TIMEOUT_S) as client:
            sent = await client.post(url, json=body)
    except httpx.HTTPError as err:  # the URL carries Kakao's one-time token: not logged
        log.warning("a KakaoTalk callback was not delivered (%s)", type(err).__name__)
        return
    if sent.status_code >= 400:
        log.warning("a KakaoTalk callback was refused: %d", sent.status_code)


def _seconds(settings: dict, key: str, default: float, low: float, high: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise UserError(f"{key} must be a number of seconds from {low} to {high}, not {value!r}")
    return float(value)
