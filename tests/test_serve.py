"""Guards builder/doors/api.py: the OpenAI-compatible API, through the official openai client, over a
tiny random gemma3 run (real tokenizer) and over a scripted completion engine."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from builder.answering.chatbot import load_chatbot
from builder.doors.api import build_app
from fixtures import PLAIN_TEMPLATE, ScriptedEngine, free_port, sample_rows

openai = pytest.importorskip("openai")

ROOT = Path(__file__).parents[1]
ON_TOPIC = "배송비 얼마임?"  # best entry: "배송비는 얼마인가요?" (3,000원, 30,000원 이상 무료)
OFF_TOPIC = "파이썬으로 리스트 정렬하는 코드 짜줘"
KEY = "sk-builder-test-" + os.urandom(8).hex()  # distinctive, so a leak is easy to grep


# Run folders: a grounded one (korean template, knowledge/) and a plain one, one tiny model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from builder.config import Config
    from fixtures import make_tiny_gemma, sample_knowledge, write_run

    tmp = tmp_path_factory.mktemp("serve")
    meta = {"base_model": "tiny-gemma3", "end_token_ids": [1, 106], "config": Config().to_dict()}
    grounded = write_run(tmp / "shop", "korean", meta=meta, knowledge=sample_knowledge(30))
    plain = write_run(tmp / "plain", PLAIN_TEMPLATE, meta=meta)
    merged = make_tiny_gemma(grounded / "merged")
    config = json.loads((merged / "generation_config.json").read_text())
    (merged / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [1, 106]}))
    (plain / "merged").symlink_to(merged)
    return grounded, plain


@pytest.fixture(scope="module")
def shop_bot(runs):
    return load_chatbot(runs[0])


@pytest.fixture(scope="module")
def plain_bot(runs):
    return load_chatbot(runs[1])


class Server:
    """uvicorn serving `app` on 127.0.0.1 in a thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, access_log=False,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def client(self, **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "none"),
                             max_retries=0, timeout=60, **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health").json()

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def serving(bot, name="shop", **options):
    server = Server(build_app(bot, name, **options))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shop(shop_bot):
    with serving(shop_bot, max_tokens_cap=64) as server:
        yield server


# What the tiny model writes: scripted through a logits processor added to every generate call


def scripted(tokenizer, text: str, end_id: int = 1):
    """A logits processor factory: the model writes `text`, then the end token."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [end_id]

    def make():
        start = []

        def process(input_ids, scores):
            start.append(start[0] if start else input_ids.shape[1])
            forced = torch.full_like(scores, float("-inf"))
            forced[:, ids[min(input_ids.shape[1] - start[0], len(ids) - 1)]] = 0.0
            return forced

        return process

    return make


def slow_distinct(tokenizer, seconds: float, calls: list):
    """A logits processor factory: distinct Hangul tokens (no loop, no end), `seconds` each;
    every generate call appends its own step counter to `calls`."""
    import torch

    text = " ".join(r["output"] for r in sample_rows(60))
    ids = sorted({i for i in tokenizer(text, add_special_tokens=False)["input_ids"]
                  if any("가" <= ch <= "힣" for ch in tokenizer.convert_ids_to_tokens(i))})
    assert len(ids) > 200

    def make():
        steps = [0]
        calls.append(steps)

        def process(input_ids, scores):
            time.sleep(seconds)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, ids[steps[0] % len(ids)]] = 0.0
            steps[0] += 1
            return forced

        return process

    return make


@contextmanager
def generating(bot, make_processor):
    """Every generate call of `bot` gets a fresh processor from `make_processor` (and no
    shared answers: a scripted model is another model)."""
    shared = bot.engine
    bot.engine = getattr(shared, "inner", shared)
    original = bot.engine.model.generate

    def generate(**kwargs):
        kwargs["logits_processor"].append(make_processor())
        # (one processor call per token, as the processors here count: no prompt lookup,
        # which calls them for every candidate it checks)
        kwargs.pop("prompt_lookup_num_tokens", None)
        return original(**kwargs)

    bot.engine.model.generate = generate
    try:
        yield
    finally:
        del bot.engine.model.generate
        bot.engine = shared


def ask(client, question, model="shop", **options):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], **options)


def ask_streamed(client, question, model="shop", **options):
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], stream=True, **options))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


# Answers


def test_models_and_health(shop):
    assert [m.id for m in shop.client().models.list()] == ["shop"]
    health = shop.health()
    assert health["status"] == "ok" and health["running"] == 0 and health["waiting"] == 0


def test_streamed_and_whole_answers_are_the_grounded_answer_with_its_sources(shop, shop_bot):
    answer = "기본 배송비는 3,000원입니다. 30,000원 이상 구매하시면 무료입니다."
    make = scripted(shop_bot.engine.tokenizer, answer)
    with generating(shop_bot, make):
        expected = shop_bot.reply(ON_TOPIC)
        whole = ask(shop.client(), ON_TOPIC)
        streamed, chunks = ask_streamed(shop.client(), ON_TOPIC)
    assert expected.text == answer and not expected.guarded
    message = whole.choices[0].message
    assert message.content == streamed == answer
    assert whole.choices[0].finish_reason == "stop" and whole.model == "shop"
    sources = [{"line": h.entry.line, "question": h.entry.question} for h in expected.sources]
    assert sources[0] == {"line": 2, "question": "배송비는 얼마인가요?"}
    assert message.sources == sources and message.declined is False
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and last.sources == sources
    assert len(chunks) >= 3  # role, at least one sentence, the end


def test_an_unscripted_answer_streams_as_it_is_whole(runs, plain_bot):
    with serving(plain_bot, "plain") as server:
        whole = ask(server.client(), "환불은 어떻게 하나요?", model="plain", max_tokens=12)
        streamed, chunks = ask_streamed(server.client(), "환불은 어떻게 하나요?", model="plain",
                                        max_tokens=12)
    expected = plain_bot.answer("환불은 어떻게 하나요?", max_new_tokens=12)
    assert whole.choices[0].message.content == streamed == expected
    assert whole.choices[0].message.sources == [] and chunks[-1].sources == []


def test_the_fact_guard_and_the_decline_rule_hold(shop, shop_bot):
    make = scripted(shop_bot.engine.tokenizer, "배송비는 9,999원입니다.")
    with generating(shop_bot, make):
        guarded = ask(shop.client(), ON_TOPIC).choices[0].message
        streamed, _ = ask_streamed(shop.client(), ON_TOPIC)
    best = shop_bot.knowledge.search(ON_TOPIC, 3)[0].entry
    assert guarded.content == streamed == best.answer and "9,999" not in streamed
    assert guarded.sources == [{"line": best.line, "question": best.question}]

    calls = []
    with generating(shop_bot, lambda: calls.append(1)):
        declined = ask(shop.client(), OFF_TOPIC).choices[0].message
    assert declined.content == shop_bot.rag.decline_message and declined.declined is True
    assert declined.sources == [] and calls == []  # declined without generating


def test_a_short_follow_up_is_retrieved_with_the_previous_question(shop, shop_bot, monkeypatch):
    searched, prompts = [], []
    search = shop_bot.knowledge.search
    monkeypatch.setattr(shop_bot.knowledge, "search",
                        lambda q, k=3, **kw: searched.append(getattr(q, "text", q)) or search(q, k, **kw))
    original = shop_bot.engine.model.generate

    def generate(**kwargs):
        prompts.append(shop_bot.engine.tokenizer.decode(kwargs["input_ids"][0]))
        return original(**kwargs)

    monkeypatch.setattr(shop_bot.engine.model, "generate", generate)
    history = [{"role": "system", "content": "You are a helpful assistant."},
               {"role": "user", "content": "배송비는 얼마인가요?"},
               {"role": "assistant", "content": "3,000원입니다."}]
    client = shop.client()
    replies = []
    for follow_up in ("제주도는요?", "제주도나 도서산간 지역은 추가 배송비가 있나요"):
        replies.append(client.chat.completions.create(
            model="shop", max_tokens=4,
            messages=history + [{"role": "user", "content": follow_up}]).choices[0].message)
    assert replies[0].sources and not replies[0].declined
    # the FAQ block has both readings' entries: read with the earlier question first (on the
    # follow-ups of data/questions/*_dev.csv: 8/10 and 7/8 right, 6/10 and 5/8 the other way)
    faq = [line for line in prompts[0].split("\n") if line.startswith("질문: ")]
    assert set(faq[:2]) == {"질문: 제주도도 무료배송 되나요?", "질문: 배송비는 얼마인가요?"}
    assert searched == ["배송비는 얼마인가요? 제주도는요?", "제주도는요?",
                        "제주도나 도서산간 지역은 추가 배송비가 있나요"]
    # the prompt has the question as asked, and no system message
    assert "### 질문:\n제주도는요?\n\n### 답변:\n" in prompts[0]
    assert "helpful" not in prompts[0] and "배송비는 얼마인가요?\n\n### 답변" not in prompts[0]


# Bad requests


def post(server, body, path="/v1/chat/completions", **headers):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content,
                      headers={"Content-Type": "application/json", **headers}, timeout=30)


USER = [{"role": "user", "content": "배송비는?"}]
BAD = [  # (body, status, param, code)
    (b'{"model": "shop", "messages": [', 400, None, "invalid_json"),
    (b"[" * 3000 + b"]" * 3000, 400, None, "invalid_json"),  # nested deeper than json reads
    ([USER], 400, None, None),
    ({"model": "shop"}, 400, "messages", None),
    ({"model": "shop", "messages": []}, 400, "messages", None),
    ({"model": "shop", "messages": ["배송비는?"]}, 400, "messages[0].role", "invalid_value"),
    ({"model": "shop", "messages": [{"role": "tool", "content": "x"}]}, 400,
     "messages[0].role", "invalid_value"),
    ({"model": "shop", "messages": [{"role": "user", "content": 12}]}, 400,
     "messages[0].content", "invalid_type"),
    ({"model": "shop", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400,
     "messages[0].content", "invalid_type"),
    ({"model": "shop", "messages": USER + [{"role": "assistant", "content": "네"}]}, 400,
     "messages[1].role", "invalid_value"),
    ({"model": "shop", "messages": [{"role": "user", "content": "  "}]}, 400,
     "messages[0].content", "invalid_value"),
    ({"model": "shop", "messages": USER, "max_tokens": 65}, 400, "max_tokens", "invalid_value"),
    ({"model": "shop", "messages": USER, "max_completion_tokens": 1000}, 400,
     "max_completion_tokens", "invalid_value"),
    ({"model": "shop", "messages": USER, "max_tokens": "10"}, 400, "max_tokens", "invalid_value"),
    ({"model": "shop", "messages": USER, "temperature": 3}, 400, "temperature", "invalid_value"),
    ({"model": "shop", "messages": USER, "stream": "yes"}, 400, "stream", "invalid_type"),
    ({"model": "shop", "messages": USER, "n": 2}, 400, "n", "invalid_value"),
    ({"messages": USER}, 400, "model", None),
    ({"model": "gpt-4o", "messages": USER}, 404, "model", "model_not_found"),
    # as on the page: a question of 1,000 characters and a context of 4,000 at most
    ({"model": "shop", "messages": [{"role": "user", "content": "배송비" * 334}]}, 400,
     "messages[0].content", "string_above_max_length"),
    ({"model": "shop", "messages": USER, "context": "주문번호 1234 " * 401}, 400, "context",
     "string_above_max_length"),
]


@pytest.mark.parametrize("body,status,param,code", BAD)
def test_a_bad_request_gets_an_openai_error(shop, body, status, param, code):
    response = post(shop, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert (error["param"], error["code"]) == (param, code)
    assert "Traceback" not in response.text


def test_a_body_over_the_cap_gets_413_and_a_stream_of_one_too(shop):
    from builder.doors.api import MAX_BODY_BYTES

    big = {"model": "shop", "messages": [{"role": "user", "content": "가" * MAX_BODY_BYTES}]}
    response = post(shop, big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: read until the cap, then refused
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    response = httpx.post(f"{shop.url}/v1/chat/completions", content=chunks(), timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_the_openai_client_raises_its_own_errors(shop):
    client = shop.client()
    with pytest.raises(openai.NotFoundError) as err:
        ask(client, "배송비는?", model="gpt-4o")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "배송비는?", max_tokens=10_000)
    assert err.value.param == "max_tokens" and "64" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="shop", messages=[], stream=True)
    for path, method, status in (("/v1/completions", "POST", 404),
                                 ("/v1/chat/completions", "GET", 405)):
        response = httpx.request(method, f"{shop.url}{path}")
        assert response.status_code == status and response.json()["error"]["message"]


# The API key


def test_the_api_key_is_enforced_and_never_logged(shop_bot, caplog):
    caplog.set_level("INFO")
    with serving(shop_bot, api_key=KEY) as server:
        with pytest.raises(openai.AuthenticationError) as err:
            server.client(api_key="sk-wrong").models.list()
        assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
        no_key = httpx.get(f"{server.url}/v1/models")
        assert no_key.status_code == 401 and no_key.json()["error"]["type"]
        with pytest.raises(openai.AuthenticationError):
            ask(server.client(api_key=KEY[:-1]), OFF_TOPIC)
        assert [m.id for m in server.client(api_key=KEY).models.list()] == ["shop"]
        assert ask(server.client(api_key=KEY), OFF_TOPIC).choices[0].message.declined
        assert httpx.get(f"{server.url}/health").status_code == 200  # for load balancers
        # a key in the query string is not a key, and is not logged either
        assert httpx.get(f"{server.url}/v1/models?api_key={KEY}").status_code == 401
    # what the server logged (the test's own client logs its URLs too)
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith(("builder", "uvicorn", "fastapi", "starlette")))
    assert "POST /v1/chat/completions 200" in logged and "GET /v1/models 401" in logged
    assert KEY not in logged and KEY[:-1] not in logged


def test_builder_serve_runs_from_the_cli_and_logs_no_key(runs, tmp_path):
    port = free_port()
    log_path = tmp_path / "serve.log"
    secret = "kakao-" + KEY[::-1][:20]
    env = {**os.environ, "BUILDER_API_KEY": KEY, "PYTHONUNBUFFERED": "1",
           "BUILDER_KAKAO_SECRET": secret}
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "builder", "serve", str(runs[0]), "--port", str(port),
             "--max-tokens-cap", "32", "--web-chat", "--shop-name", "하루커피", "--kakao"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        reply = ask(client, OFF_TOPIC, model="shop")
        assert reply.choices[0].message.declined is True
        streamed, _ = ask_streamed(client, OFF_TOPIC, model="shop")
        assert streamed == reply.choices[0].message.content
        with pytest.raises(openai.BadRequestError):
            ask(client, OFF_TOPIC, model="shop", max_tokens=33)
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=f"{url}/v1", api_key="sk-" + KEY[::-1],
                              max_retries=0), OFF_TOPIC, model="shop")
        httpx.get(f"{url}/v1/models?key={KEY}")
        # the customer channels the flags asked for: the web chat (open, titled with the
        # shop's name) and the KakaoTalk skill behind its secret path
        page = httpx.get(f"{url}/chat")
        assert page.status_code == 200 and "하루커피" in page.text
        assert httpx.get(f"{url}/widget.js").status_code == 200
        skill = httpx.post(f"{url}/kakao/skill/{secret}", timeout=30, json={
            "userRequest": {"utterance": OFF_TOPIC, "user": {"id": "kakao-user-1"}}})
        assert skill.status_code == 200 and skill.json()["version"] == "2.0"
        assert httpx.post(f"{url}/kakao/skill/wrong-{secret}", json={}).status_code == 404
    finally:
        process.terminate()
        process.wait(30)
    logged = log_path.read_text()
    assert "POST /v1/chat/completions 200" in logged and "POST /v1/chat/completions 401" in logged
    assert KEY not in logged and KEY[::-1] not in logged and secret not in logged
    assert f"{url}/chat" in logged  # the log says where the web chat is


def test_the_kakao_channel_needs_its_secret(runs, monkeypatch, capsys):
    """--kakao without $BUILDER_KAKAO_SECRET is refused before anything loads."""
    from builder.doors.cli import main

    monkeypatch.delenv("BUILDER_KAKAO_SECRET", raising=False)
    assert main(["serve", str(runs[0]), "--kakao"]) == 2
    assert "BUILDER_KAKAO_SECRET" in capsys.readouterr().err


# Load: the queue and clients that leave


def wait_for(predicate, timeout=20.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_full_queue_gets_429_with_retry_after(plain_bot):
    calls: list = []
    with serving(plain_bot, "plain", max_queue=1) as server, \
            generating(plain_bot, slow_distinct(plain_bot.engine.tokenizer, 0.05, calls)):
        first = server.client().chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "배송은요?"}], stream=True,
            max_tokens=80)
        next(iter(first))
        wait_for(lambda: calls and calls[0][0] > 0, what="the first answer to start")
        waiting = {}
        second = threading.Thread(target=lambda: waiting.update(reply=ask(
            server.client(), "환불은요?", model="plain", max_tokens=3)))
        second.start()
        wait_for(lambda: server.health()["waiting"] == 1, what="the second to queue")
        with pytest.raises(openai.RateLimitError) as err:
            ask(server.client(), "교환은요?", model="plain", max_tokens=3)
        assert err.value.status_code == 429 and err.value.code == "queue_full"
        assert int(err.value.response.headers["retry-after"]) >= 1
        health = server.health()
        assert (health["running"], health["waiting"]) == (1, 1)
        first.close()  # the first client leaves: the second gets its turn
        second.join(30)
        assert waiting["reply"].choices[0].message.content is not None
        wait_for(lambda: server.health()["running"] == 0, what="the queue to empty")
        assert calls[0][0] < 80 and calls[1][0] == 3  # the first stopped, the second finished


def test_a_client_that_leaves_mid_stream_stops_its_generation(plain_bot):
    calls: list = []

    def open_stream(server, max_tokens):
        return server.client().chat.completions.create(
            model="plain", messages=[{"role": "user", "content": "배송은요?"}], stream=True,
            max_tokens=max_tokens)

    with serving(plain_bot, "plain", max_queue=1) as server, \
            generating(plain_bot, slow_distinct(plain_bot.engine.tokenizer, 0.05, calls)):
        stream = open_stream(server, 200)
        pieces = iter(stream)
        next(pieces)
        next(pieces)  # a content delta: generation is under way
        queued = open_stream(server, 5)
        next(iter(queued))  # its first chunk comes while it waits
        wait_for(lambda: server.health()["waiting"] == 1, what="the second to queue")
        queued.close()  # leaves the queue before its turn: never generates
        wait_for(lambda: server.health()["waiting"] == 0, timeout=5, what="the queue to empty")
        assert server.health()["running"] == 1 and len(calls) == 1

        stream.close()
        wait_for(lambda: server.health()["running"] == 0, timeout=5, what="the slot to free")
        stopped_at = calls[0][0]
        time.sleep(0.3)
        assert calls[0][0] == stopped_at < 60  # generation ended, long before 200 tokens
        reply = ask(server.client(), "환불은요?", model="plain", max_tokens=2)
        assert reply.choices[0].message.content is not None and calls[1][0] == 2
        assert len(calls) == 2  # the one that left the queue never generated


# --engine URL: a scripted OpenAI-compatible completion server on loopback


@pytest.fixture
def engine():
    scripted_engine = ScriptedEngine()
    yield scripted_engine
    scripted_engine.close()


def test_an_engine_url_completes_the_rendered_prompt(runs, shop_bot, engine):
    bot = load_chatbot(runs[0], engine=engine.url)
    assert bot.engine.model == "scripted-gemma" and bot.knowledge is not None
    engine.pieces = ["기본 배송비는 ", "3,000", "원입니다.", "\n\n### 질", "문:\n다른 질문"]
    with serving(bot, "shop", engine=engine.url) as server:
        whole = ask(server.client(), ON_TOPIC, max_tokens=40, temperature=0.2)
        streamed, chunks = ask_streamed(server.client(), ON_TOPIC, max_tokens=40)
        assert server.health()["engine"] == "remote"  # never the URL: it can carry a key
    assert whole.choices[0].message.content == streamed == "기본 배송비는 3,000원입니다."
    hits = shop_bot.knowledge.search(ON_TOPIC, shop_bot.rag.k)
    sources = [{"line": h.entry.line, "question": h.entry.question} for h in hits]
    assert whole.choices[0].message.sources == sources == chunks[-1].sources
    sent = engine.requests[0]
    faq = bot.template.render_faq([h.entry for h in hits])
    assert sent["prompt"] == bot.template.render(ON_TOPIC, "", faq)
    assert sent["stop"] == ["### 질문", "### 참고", "### 답변", "### FAQ"]
    assert sent["model"] == "scripted-gemma" and sent["stream"] is True
    # the run's end tokens; no penalty on the prompt's FAQ (a server's counts it)
    assert sent["stop_token_ids"] == [1, 106] and sent["repetition_penalty"] == 1.0
    assert (sent["max_tokens"], sent["temperature"]) == (40, 0.2)
    assert engine.requests[1]["temperature"] == 0.0


def test_an_engine_url_answer_is_guarded_and_declined_like_a_local_one(runs, engine):
    bot = load_chatbot(runs[0], engine=engine.url, engine_model="named")
    engine.pieces = ["배송비는 ", "9,999원입니다."]
    with serving(bot, "shop") as server:
        guarded = ask(server.client(), ON_TOPIC).choices[0].message
        best = bot.knowledge.search(ON_TOPIC, 3)[0].entry
        assert guarded.content == best.answer and "9,999" not in guarded.content
        declined = ask(server.client(), OFF_TOPIC).choices[0].message
        assert declined.declined and len(engine.requests) == 1  # no completion asked
        engine.status = 500
        with pytest.raises(openai.InternalServerError) as err:
            ask(server.client(), ON_TOPIC)
        assert err.value.status_code == 502 and err.value.code == "engine_error"
        with pytest.raises(openai.APIError, match="engine failed"):
            ask_streamed(server.client(), ON_TOPIC)
    assert engine.requests[0]["model"] == "named"


def test_an_engine_url_that_is_not_there_is_named(runs):
    from builder.errors import UserError

    with pytest.raises(UserError, match=r"127\.0\.0\.1:9/v1/models"):
        load_chatbot(runs[0], engine="http://127.0.0.1:9/v1")
    with pytest.raises(UserError, match="local.*or a URL"):
        load_chatbot(runs[0], engine="vllm")


# The real embedded model (minutes on 2 CPU cores)


@pytest.mark.slow
def test_the_embedded_model_streams_the_grounded_answer_it_gives_whole(runs, tmp_path):
    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    run = tmp_path / "embedded"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("merged"))
    (run / "merged").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (run / "merged" / name).symlink_to(source / name)
    generation = json.loads((source / "generation_config.json").read_text())
    (run / "merged" / "generation_config.json").write_text(
        json.dumps({**generation, "eos_token_id": [1, 106]}))
    bot = load_chatbot(run)
    with serving(bot, "embedded") as server:
        for question in ("배송비 얼마임?", "원두 개봉했는데 반품돼?"):
            whole = ask(server.client(), question, model="embedded", max_tokens=48)
            streamed, chunks = ask_streamed(server.client(), question, model="embedded",
                                            max_tokens=48)
            expected = bot.reply(question, max_new_tokens=48)
            assert whole.choices[0].message.content == streamed == expected.text, question
            sources = [{"line": h.entry.line, "question": h.entry.question}
                       for h in expected.sources]
            assert whole.choices[0].message.sources == chunks[-1].sources == sources


def test_serving_settings_that_would_expose_the_bot_or_serve_nothing_are_refused(monkeypatch,
                                                                                 capsys):
    from builder.doors.api import check_serving
    from builder.errors import UserError

    with pytest.raises(UserError, match="without an API key lets anyone"):
        check_serving("0.0.0.0", None, None, None, 8, open_=False)
    assert check_serving("0.0.0.0", None, None, None, 8, open_=True) is None  # on purpose
    assert check_serving("127.0.0.1", None, None, None, 8, open_=False) is None
    with pytest.raises(UserError, match=r"the API key is empty \(--api-key\)"):
        check_serving("127.0.0.1", "  ", "from-env", None, 8, open_=False)
    with pytest.raises(UserError, match=r"empty \(\$BUILDER_API_KEY\)"):
        check_serving("0.0.0.0", None, "", None, 8, open_=True)
    assert check_serving("0.0.0.0", None, "k3y", None, 8, open_=False) == "k3y"
    with pytest.raises(UserError, match="--concurrency 0"):
        check_serving("127.0.0.1", None, None, 0, 8, open_=False)
    with pytest.raises(UserError, match="--max-queue -1"):
        check_serving("127.0.0.1", None, None, None, -1, open_=False)
    # through the command: refused before the run is even looked at
    from builder.doors.cli import main

    monkeypatch.delenv("BUILDER_API_KEY", raising=False)
    assert main(["serve", "no-such-run", "--host", "0.0.0.0"]) != 0
    assert "without an API key lets anyone" in capsys.readouterr().err


def test_an_answer_the_token_limit_cut_says_length_and_shows_no_unfinished_number(shop, shop_bot):
    """finish_reason is "length" when max_tokens cut the answer, and its unfinished sentence
    ("제주는 3") is never shown."""
    answer = "배송비는 3,000원입니다. 제주는 3,000원이 더 붙어요."
    cut_at = len(shop_bot.engine.tokenizer("배송비는 3,000원입니다. 제주는 3",
                                           add_special_tokens=False)["input_ids"])
    make = scripted(shop_bot.engine.tokenizer, answer)
    with generating(shop_bot, make):
        whole = ask(shop.client(), ON_TOPIC, max_tokens=cut_at)
        streamed, chunks = ask_streamed(shop.client(), ON_TOPIC, max_tokens=cut_at)
        done = ask(shop.client(), ON_TOPIC, max_tokens=64)
    assert whole.choices[0].message.content == streamed == "배송비는 3,000원입니다."
    assert whole.choices[0].finish_reason == chunks[-1].choices[0].finish_reason == "length"
    assert done.choices[0].message.content == answer and done.choices[0].finish_reason == "stop"


def test_every_answer_goes_into_the_log_and_its_feedback_follows(shop_bot, tmp_path):
    """The API's answers land in the conversation log (the customer as a pseudonym of `user`,
    never the key or the client's address), and POST /v1/feedback records a 👎."""
    from builder.owner.log import ConversationLog

    run = tmp_path / "run"
    run.mkdir()
    conversations = ConversationLog.for_run(run)
    make = scripted(shop_bot.engine.tokenizer, "기본 배송비는 3,000원입니다.")
    with generating(shop_bot, make), serving(shop_bot, api_key=KEY,
                                             conversations=conversations) as server:
        client = server.client(api_key=KEY)
        whole = ask(client, ON_TOPIC, user="kakao-user-5531")
        streamed, chunks = ask_streamed(client, OFF_TOPIC, user="kakao-user-5531")
        auth = {"Authorization": f"Bearer {KEY}"}
        down = post(server, {"id": whole.id, "value": -1}, path="/v1/feedback", **auth)
        unknown = post(server, {"id": "chatcmpl-0", "value": 1}, path="/v1/feedback", **auth)
        bad = post(server, {"id": whole.id, "value": 5}, path="/v1/feedback", **auth)
        keyless = post(server, {"id": whole.id, "value": 1}, path="/v1/feedback")
    assert down.status_code == 200 and down.json() == {"id": whole.id, "value": -1}
    assert unknown.status_code == 404 and bad.status_code == 400 and keyless.status_code == 401
    rows = conversations.rows()
    assert [(r["channel"], r["question"]) for r in rows] == [("api", ON_TOPIC), ("api", OFF_TOPIC)]
    assert rows[0]["answer"] == whole.choices[0].message.content and rows[0]["feedback"] == -1
    assert rows[0]["reply_id"] == whole.id and rows[1]["reply_id"] == chunks[0].id
    assert rows[1]["declined"] and rows[1]["answer"] == streamed
    assert rows[0]["customer"] == rows[1]["customer"] == conversations.pseudonym("kakao-user-5531")
    assert rows[0]["latency_ms"] >= 0 and rows[0]["sources"][0]["line"] == 2
    stored = b"".join(p.read_bytes() for p in run.glob("conversations.db*"))
    assert b"kakao-user-5531" not in stored and KEY.encode() not in stored
    assert b"127.0.0.1" not in stored
