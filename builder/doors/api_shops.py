"""One server, many shops: `builder serve runs/` (or several RUN arguments, or Hub repos).

    builder serve runs/ --keys keys.json               # every run in runs/ is a shop
    client.chat.completions.create(model="shop_a", messages=[...])   # the model picks the shop
    GET /v1/models                                      # the shops this key may ask for
    /shops/shop_a/v1/chat/completions, /shops/shop_a/chat, /shops/shop_a/widget.js,
    /shops/shop_a/kakao/skill/SECRET                    # one shop's API and channels

Each shop is the single-run server's app (builder.doors.api.build_app) over its own bot and
conversation log, made on the shop's first request and forwarded to: the same answers, the
same channels under /shops/NAME/. One queue in front of the engines for all shops (on CPU
one generation takes every core). A key from the keys file (builder.doors.keys) asks only for
its shops: another shop's name is refused with 403, and /v1/models lists its own.
"""

import asyncio
import json
import logging

from builder.doors.api import MAX_BODY_BYTES, _error_response, build_app
from builder.doors.api_job import Gate
from builder.doors.api_request import ApiError
from builder.errors import UserError

log = logging.getLogger(__name__)


class ShopsDoor:
    """The ASGI app of a server for many shops (builder.doors.shops.Shops)."""

    def __init__(self, shops, keys=None, *, max_queue: int = 32, concurrency: int = 1,
                 max_tokens_cap: int = 512, engine: str = "local", channels=(),
                 channel_settings=None):
        self.shops, self.keys = shops, keys  # keys: builder.doors.keys.Keys, or None (open)
        self.gate = Gate(concurrency, max_queue)
        self.options = {"max_queue": max_queue, "max_tokens_cap": max_tokens_cap,
                        "concurrency": concurrency, "engine": engine, "channels": list(channels),
                        "channel_settings": dict(channel_settings or {})}
        self.apps: dict[str, object] = {}  # shop -> its app, over the bot it was made with
        self._loading = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            if path.startswith("/shops/"):
                name, _, rest = path[len("/shops/"):].partition("/")
                inner = dict(scope, path="/" + rest, raw_path=("/" + rest).encode(),
                             root_path=scope.get("root_path", "") + f"/shops/{name}")
                if rest.startswith("v1/"):
                    self._check_key(scope, name)
                return await self._forward(name, inner, receive, send)
            if path == "/health":
                return await _json(send, 200, self._health())
            if path == "/v1/models":
                return await _json(send, 200, self._models(scope))
            if path in ("/v1/chat/completions", "/v1/feedback"):
                body = await _body(receive)
                if path == "/v1/feedback" and not _named(body) and len(self.shops.names()) > 1:
                    return await _json(send, 200, await self._feedback(scope, body))
                name = _model_of(body, self.shops)
                self._check_key(scope, name)
                return await self._forward(name, scope, _replay(body, receive), send)
            raise ApiError(404, f"no route {path}; the API is /v1/chat/completions, "
                           "/v1/models, /health and /shops/NAME/...", code="not_found")
        except ApiError as err:
            await _error_response(err)(scope, receive, send)

    # A shop's app

    async def _forward(self, name: str, scope, receive, send) -> None:
        if name not in self.shops:
            raise ApiError(404, f"no shop {name!r} here; GET /v1/models lists them",
                           param="model", code="model_not_found")
        self.shops.enter(name)  # (before it is loaded: a shop in use is never dropped)
        try:
            try:
                app = await self._app(name)
            except Exception as err:
                log.error("shop %s could not be loaded", name, exc_info=err)
                reason = str(err) if isinstance(err, UserError) else "see the server log"
                raise ApiError(503, f"shop {name!r} cannot answer now: {reason}",
                               type="server_error", code="shop_unavailable") from None
            await app(scope, receive, send)
        finally:
            self.shops.leave(name)

    async def _app(self, name: str):
        """The shop's app over its bot in memory (loaded in a thread, one load at a time;
        a shop in memory is not held up by another one loading)."""
        made = self.apps.get(name)
        if made is not None and self.shops.in_memory_bot(name) is made[0]:
            return made[1]
        async with self._loading:
            bot = await asyncio.to_thread(self.shops.bot, name)
            for other, (kept, _) in list(self.apps.items()):  # (dropped shops leave memory)
                if self.shops.in_memory_bot(other) is not kept:
                    del self.apps[other]
            made = self.apps.get(name)
            if made is None or made[0] is not bot:  # (dropped and loaded again since)
                conversations = await asyncio.to_thread(self.shops.log, name)
                app = build_app(bot, name, api_key=None, conversations=conversations,
                                shop=name, gate=self.gate, **self.options)
                made = self.apps[name] = (bot, app)
            return made[1]

    # Keys

    def _allowed(self, scope) -> set[str]:
        """The shops the request's key may ask for ({"*"}: every one); 401 without one."""
        sent = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, key = sent.partition(" ")
        shops = self.keys.shops_of(key.strip()) if scheme.lower() == "bearer" else None
        if shops is None:
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                           code="invalid_api_key")
        return shops

    def _check_key(self, scope, shop: str) -> None:
        if self.keys is None:
            return
        shops = self._allowed(scope)
        if "*" not in shops and shop not in shops:
            raise ApiError(403, f"this API key may not ask shop {shop!r}", param="model",
                           type="permission_error", code="shop_not_allowed")

    def _models(self, scope) -> dict:
        names = self.shops.names()
        if self.keys is not None:
            allowed = self._allowed(scope)
            names = [n for n in names if "*" in allowed or n in allowed]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "builder"}
                                           for n in names]}

    async def _feedback(self, scope, body: bytes) -> dict:
        """A 👍/👎 without the shop's name: the shop whose log holds the answer (of those the
        key may ask for)."""
        from builder.doors.api_request import read_feedback

        reply_id, value = read_feedback(json.loads(body))
        allowed = self._allowed(scope) if self.keys is not None else {"*"}
        for name in self.shops.names():
            if ("*" in allowed or name in allowed) and await asyncio.to_thread(
                    self.shops.log(name).feedback, reply_id, value):
                return {"id": reply_id, "value": value}
        raise ApiError(404, f"no answer {reply_id!r} in the log", param="id", code="not_found")

    def _health(self) -> dict:
        return {"status": "ok", "shops": len(self.shops.names()),
                "loaded": len(self.shops.loaded()),
                "models_mb": round(self.shops.in_memory() / 2**20),
                "running": self.gate.running, "waiting": self.gate.waiting,
                "max_queue": self.gate.max_queue}


def _named(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return True  # (said by _model_of)
    return not isinstance(data, dict) or bool(data.get("model"))


def _model_of(body: bytes, shops) -> str:
    """The shop a request names in its "model" field (the only shop when there is one)."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})",
                       code="invalid_json") from None
    name = data.get("model") if isinstance(data, dict) else None
    if not name and len(shops.names()) == 1:
        return shops.names()[0]
    if not isinstance(name, str) or not name:
        raise ApiError(400, "say which shop: the request's \"model\" field (GET /v1/models "
                       "lists them)", param="model", code="missing_model")
    return name


async def _body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes",
                           code="body_too_large")
        if not message.get("more_body"):
            return body


def _replay(body: bytes, receive):
    """A receive() that hands the read body over again, then the client's own messages (its
    disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send, status: int, data: dict) -> None:
    body = json.dumps(data, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def serve_shops(places: list[str], *, host: str = "127.0.0.1", port: int = 8000,
                engine: str = "local", api_key: str | None = None, keys_file: str | None = None,
                max_queue: int = 32, max_tokens_cap: int = 512, concurrency: int | None = None,
                use: str = "auto", engine_model: str | None = None, open_: bool = False,
                db: str | None = None, channels: dict | None = None, settings=(),
                parallel: int | None = None, memory_gb: float | None = None) -> None:
    """Serve the shops found in `places` (builder.doors.shops.find_runs) until Ctrl-C."""
    import os

    import uvicorn

    from builder.doors.api import API_KEY_ENV, check_serving
    from builder.doors.keys import Keys
    from builder.doors.shops import Shops, find_runs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    every_shop_key = check_serving(host, api_key, os.environ.get(API_KEY_ENV), concurrency,
                                   max_queue, open_ or bool(keys_file))
    keys = Keys(keys_file, every_shop_key) if (keys_file or every_shop_key) else None
    shops = Shops(find_runs(places), use=use, engine=engine, engine_model=engine_model,
                  settings=settings, parallel=parallel, memory_gb=memory_gb, db=db)
    from builder.answering.engines.llamacpp import default_parallel

    if concurrency is None:  # as for one run: the GGUF engine batches, transformers does not
        concurrency = 8 if engine != "local" else (
            (parallel or default_parallel()) if use == "gguf" else 1)
    channels = channels or {}
    door = ShopsDoor(shops, keys, max_queue=max_queue, concurrency=concurrency,
                     max_tokens_cap=max_tokens_cap, engine=engine,
                     channels=[m for m, _ in channels.values()],
                     channel_settings={k: v for _, s in channels.values() for k, v in s.items()})
    log.info("serving %d shops (%s) on http://%s:%d/v1%s; each loads on its first question",
             len(shops.names()), ", ".join(shops.names()), host, port,
             " (API keys required)" if keys else "")
    uvicorn.run(door, host=host, port=port, access_log=False, log_level="info")
