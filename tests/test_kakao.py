"""Guards builder/doors/channels/kakao.py: the KakaoTalk channel as a Kakao i Open Builder skill
server, over the tiny random gemma3 run of test_serve (its answers scripted), with a local
receiver standing in for Kakao's callback URL."""

import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import httpx
import pytest
from fixtures import QuietHandler
from test_serve import OFF_TOPIC, ON_TOPIC, Server, generating, scripted, wait_for

from builder.doors.api import build_app
from builder.doors.channels import kakao
from builder.owner.log import ConversationLog

SECRET = "kk-" + secrets.token_urlsafe(18)  # distinctive, so a leak is easy to grep
USER = "botuserkey-" + os.urandom(6).hex()
EXACT = "배송비는 얼마인가요?"  # the FAQ's line 2, word for word
ANSWER = "기본 배송비는 3,000원입니다. 30,000원 이상 구매하시면 무료입니다."


@pytest.fixture(scope="module")
def shop_bot(tmp_path_factory):
    """test_serve's grounded run: 30 sample FAQ rows, a tiny random gemma3 (real tokenizer)."""
    from fixtures import make_tiny_gemma, sample_knowledge, write_run

    from builder.answering.chatbot import load_chatbot
    from builder.config import Config

    meta = {"base_model": "tiny-gemma3", "end_token_ids": [1, 106], "config": Config().to_dict()}
    run = write_run(tmp_path_factory.mktemp("kakao") / "shop", "korean", meta=meta,
                    knowledge=sample_knowledge(30))
    merged = make_tiny_gemma(run / "merged")
    config = json.loads((merged / "generation_config.json").read_text())
    (merged / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [1, 106]}))
    return load_chatbot(run)


@contextmanager
def skill_server(bot, conversations=None, **settings):
    app = build_app(bot, "shop", conversations=conversations, channels=[kakao.mount],
                    channel_settings={"kakao_secret": SECRET, **settings})
    server = Server(app)
    try:
        yield server
    finally:
        server.stop()


def payload(utterance, user=USER, callback=None) -> dict:
    """A skill payload as Kakao sends it (a fallback block calling the skill)."""
    request = {"timezone": "Asia/Seoul", "lang": "ko", "utterance": utterance,
               "params": {"surface": "Kakaotalk.plusfriend"},
               "block": {"id": "b-fallback", "name": "폴백 블록"},
               "user": {"id": user, "type": "botUserKey",
                        "properties": {"botUserKey": user, "isFriend": True}}}
    if callback:
        request["callbackUrl"] = callback
    return {"intent": {"id": "b-fallback", "name": "폴백 블록"}, "userRequest": request,
            "bot": {"id": "bot-1", "name": "하루커피"}, "contexts": [],
            "action": {"id": "a-1", "name": "builder", "params": {}, "detailParams": {},
                       "clientExtra": {}}}


def ask(server, utterance, user=USER, callback=None, secret=SECRET):
    """POST the skill payload; (the response, seconds it took)."""
    begun = time.monotonic()
    response = httpx.post(f"{server.url}/kakao/skill/{secret}",
                          json=payload(utterance, user, callback), timeout=30)
    return response, time.monotonic() - begun


def text_of(body: dict) -> str:
    outputs = body["template"]["outputs"]
    assert len(outputs) == 1 and set(outputs[0]) == {"simpleText"}, body
    return outputs[0]["simpleText"]["text"]


class Receiver:
    """Kakao's callback URL on loopback: keeps every body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        receiver = self

        class Handler(QuietHandler):
            def do_POST(self):
                receiver.bodies.append(json.loads(self.rfile.read(
                    int(self.headers["Content-Length"]))))
                self.send_json(200, {"taskId": "t-1", "status": "SUCCESS"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.origin}/v1/skill/callback/{secrets.token_hex(8)}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.close()


def check_quick_replies(body: dict, bot) -> list[str]:
    """The quick replies are FAQ questions in Kakao's shape; their messageTexts."""
    questions = {e.question for e in bot.knowledge.entries}
    quick = body["template"].get("quickReplies", [])
    for button in quick:
        assert set(button) == {"label", "action", "messageText"}, button
        assert button["action"] == "message" and button["messageText"] in questions
        assert len(button["label"]) <= kakao.MAX_LABEL
        if len(button["messageText"]) <= kakao.MAX_LABEL:
            assert button["label"] == button["messageText"]
    return [b["messageText"] for b in quick]


# Answers within Kakao's wait


def test_an_faq_question_is_answered_at_once_even_with_a_callback(shop_bot, receiver):
    """An FAQ question word for word gets its entry's answer in the response, no model run."""
    calls = []
    with generating(shop_bot, lambda: calls.append(1)), \
            skill_server(shop_bot, kakao_callback_hosts=[receiver.origin]) as server:
        response, seconds = ask(server, EXACT, callback=receiver.url)
    assert response.status_code == 200 and seconds < 1.0, seconds
    body = response.json()
    assert body["version"] == "2.0" and "useCallback" not in body
    assert text_of(body) == shop_bot.knowledge.entries[0].answer and calls == []
    related = check_quick_replies(body, shop_bot)
    assert related and EXACT not in related
    time.sleep(0.3)
    assert receiver.bodies == []  # the callback URL was not needed


def test_a_generated_answer_written_within_the_budget_is_the_response(shop_bot):
    """Without a callback URL, a model answer done within the budget is answered directly."""
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, ANSWER)), \
            skill_server(shop_bot) as server:
        response, seconds = ask(server, ON_TOPIC)
    body = response.json()
    assert response.status_code == 200 and seconds < kakao.BUDGET_S, seconds
    assert text_of(body) == ANSWER and "useCallback" not in body
    check_quick_replies(body, shop_bot)


def test_with_a_callback_url_the_answer_follows_there(shop_bot, receiver):
    """useCallback at once, then the answer in skill response 2.0 POSTed once to the URL; a
    URL on a host that is not Kakao's (nor allowed) is never called: answered directly."""
    elsewhere = Receiver()
    try:
        with generating(shop_bot, scripted(shop_bot.engine.tokenizer, ANSWER)), \
                skill_server(shop_bot, kakao_callback_hosts=[receiver.origin]) as server:
            response, seconds = ask(server, ON_TOPIC, callback=receiver.url)
            assert response.status_code == 200 and seconds < 1.0, seconds
            assert response.json() == {"version": "2.0", "useCallback": True,
                                       "data": {"text": kakao.WAITING}}
            wait_for(lambda: receiver.bodies, what="the callback")
            direct, _ = ask(server, ON_TOPIC, user="other-user", callback=elsewhere.url)
        time.sleep(0.3)
        assert len(receiver.bodies) == 1 and elsewhere.bodies == []
    finally:
        elsewhere.close()
    called = receiver.bodies[0]
    assert called["version"] == "2.0" and text_of(called) == ANSWER
    check_quick_replies(called, shop_bot)
    assert text_of(direct.json()) == ANSWER and "useCallback" not in direct.json()


def slowly(make, seconds: float, steps: list):
    """A logits processor factory: `make`'s, taking `seconds` a token; each token appends to
    `steps`."""
    def make_slow():
        process = make()

        def slow(input_ids, scores):
            time.sleep(seconds)
            steps.append(1)
            return process(input_ids, scores)

        return slow

    return make_slow


def test_a_slow_answer_without_a_callback_is_the_best_entry_in_time(shop_bot, tmp_path):
    """A generation slower than the budget is stopped and the best FAQ entry's own answer is
    given within the budget; the log says so."""
    steps: list = []
    best = shop_bot.ground(ON_TOPIC).hits[0].entry
    make = slowly(scripted(shop_bot.engine.tokenizer, ANSWER), 0.2, steps)  # ~5 s in all
    conversations = ConversationLog.for_run(tmp_path)
    with generating(shop_bot, make), \
            skill_server(shop_bot, conversations, kakao_budget_s=1.5) as server:
        response, seconds = ask(server, ON_TOPIC)
        wait_for(lambda: conversations.rows(), what="the log row")
        row = conversations.rows()[0]
        stopped = len(steps)
        time.sleep(0.5)
        assert len(steps) - stopped <= 1  # the generation ended (at most one more token)
    assert response.status_code == 200 and 1.5 <= seconds < 2.2, seconds
    assert text_of(response.json()) == best.answer != ANSWER and stopped < 15
    assert row["channel"] == "kakao" and row["answer"] == best.answer and row["fallback"]
    assert row["why"] == "kakao: not written within 1.5 s" and not row["guarded"]


def test_a_callback_answer_slower_than_its_window_is_the_best_entry(shop_bot, receiver):
    """Past kakao_callback_s the generation stops and the callback gets the best entry's answer."""
    steps: list = []
    best = shop_bot.ground(ON_TOPIC).hits[0].entry
    make = slowly(scripted(shop_bot.engine.tokenizer, ANSWER), 0.2, steps)
    with generating(shop_bot, make), \
            skill_server(shop_bot, kakao_callback_s=1.0,
                         kakao_callback_hosts=[receiver.origin]) as server:
        response, _ = ask(server, ON_TOPIC, callback=receiver.url)
        begun = time.monotonic()
        wait_for(lambda: receiver.bodies, what="the callback")
        waited = time.monotonic() - begun
    assert response.json()["useCallback"] is True and waited < 2.0, waited
    assert text_of(receiver.bodies[0]) == best.answer and len(steps) < 15


def test_a_follow_up_from_the_same_customer_is_read_with_their_earlier_question(shop_bot,
                                                                                 monkeypatch):
    """"제주도는요?" after the shipping fee is looked up with it; another customer's is not."""
    searched = []
    search = shop_bot.knowledge.search
    monkeypatch.setattr(shop_bot.knowledge, "search", lambda q, k=3, **kw: searched.append(
        getattr(q, "text", q)) or search(q, k, **kw))
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, "제주는 3,000원이 더 붙어요.")), \
            skill_server(shop_bot) as server:
        ask(server, EXACT)
        searched.clear()
        first, _ = ask(server, "제주도는요?")
        mine = list(searched)
        searched.clear()
        ask(server, "제주도는요?", user="someone-else")
    assert f"{EXACT} 제주도는요?" in mine
    assert searched and not any("배송비" in query for query in searched)
    assert first.status_code == 200 and text_of(first.json())


def test_a_question_the_faq_does_not_cover_is_declined_at_once(shop_bot, receiver):
    """The decline message in the response, without the model or the callback."""
    calls = []
    with generating(shop_bot, lambda: calls.append(1)), \
            skill_server(shop_bot, kakao_callback_hosts=[receiver.origin]) as server:
        response, seconds = ask(server, OFF_TOPIC, callback=receiver.url)
    assert response.status_code == 200 and seconds < 1.0, seconds
    assert text_of(response.json()) == shop_bot.rag.decline_message and calls == []
    time.sleep(0.3)
    assert receiver.bodies == []


# What Kakao may send, and what it must not reach


def _bad(mutate):
    body = payload(ON_TOPIC)
    mutate(body)
    return body


BAD = [  # (body, param)
    (b'{"userRequest": {', None),
    (b"[" * 3000 + b"]" * 3000, None),
    ([1, 2], None),
    ({"bot": {}}, "userRequest"),
    (_bad(lambda b: b.update(userRequest="배송비")), "userRequest"),
    (_bad(lambda b: b["userRequest"].pop("utterance")), "userRequest.utterance"),
    (_bad(lambda b: b["userRequest"].update(utterance=12)), "userRequest.utterance"),
    (_bad(lambda b: b["userRequest"].update(utterance="   ")), "userRequest.utterance"),
    (_bad(lambda b: b["userRequest"].update(utterance="배송비" * 334)), "userRequest.utterance"),
    (_bad(lambda b: b["userRequest"].pop("user")), "userRequest.user.id"),
    (_bad(lambda b: b["userRequest"]["user"].update(id=5531)), "userRequest.user.id"),
    (_bad(lambda b: b["userRequest"].update(callbackUrl=["x"])), "userRequest.callbackUrl"),
    (_bad(lambda b: b.update(action="builder")), "action"),
]


@pytest.fixture(scope="module")
def server(shop_bot):
    with skill_server(shop_bot) as running:
        yield running


@pytest.mark.parametrize("body,param", BAD)
def test_a_bad_payload_gets_400_with_a_json_error(server, body, param):
    """Not JSON, not Kakao's shape, wrong types, a message over 1,000 characters: 400 JSON."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/kakao/skill/{SECRET}", content=content,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and error["param"] == param
    assert "Traceback" not in response.text and USER not in response.text


def test_a_wrong_or_missing_secret_is_an_unknown_path_and_no_secret_is_logged(server, caplog):
    """Any path under /kakao/skill but the secret's is 404 as an unknown path is; the log
    lines show the path without the secret."""
    caplog.set_level("INFO")
    unknown = httpx.post(f"{server.url}/no/such/path", json=payload(EXACT))
    for path in (f"/kakao/skill/{SECRET[:-1]}", f"/kakao/skill/{SECRET}x", "/kakao/skill",
                 "/kakao/skill/", f"/kakao/skill/{SECRET}/", f"/kakao/skill?s={SECRET}",
                 "/kakao/skill/***"):
        response = httpx.post(f"{server.url}{path}", json=payload(EXACT))
        assert response.status_code == 404, path
        assert response.json() == unknown.json() == {"error": {
            "message": "Not Found", "type": "invalid_request_error", "param": None,
            "code": None}}
    assert ask(server, EXACT)[0].status_code == 200
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith(("builder", "uvicorn", "fastapi", "starlette")))
    assert "POST /kakao/skill 200" in logged and "POST /kakao/skill/*** 404" in logged
    assert SECRET[:-1] not in logged


def test_the_botuserkey_is_never_stored_or_logged(shop_bot, tmp_path, caplog):
    """Answers land in the log as channel "kakao" under the customer's pseudonym; the raw
    botUserKey is in neither the database's bytes nor the server's log."""
    caplog.set_level("INFO")
    conversations = ConversationLog.for_run(tmp_path)
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, ANSWER)), \
            skill_server(shop_bot, conversations) as server:
        for question in (EXACT, ON_TOPIC, OFF_TOPIC):
            assert ask(server, question)[0].status_code == 200
        ask(server, "")  # a bad payload: its error names the field, not the customer
        wait_for(lambda: len(conversations.rows()) == 3, what="three log rows")
        rows = conversations.rows()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("conversations.db*"))
    assert sorted(r["question"] for r in rows) == sorted([EXACT, ON_TOPIC, OFF_TOPIC])
    assert {r["channel"] for r in rows} == {"kakao"}
    assert {r["customer"] for r in rows} == {conversations.pseudonym(USER)}
    assert USER.encode() not in stored and SECRET.encode() not in stored
    # what the server logged (the test's own client logs its URLs, secret and all)
    logged = "\n".join(r.getMessage() for r in caplog.records
                       if r.name.startswith(("builder", "uvicorn", "fastapi", "starlette")))
    assert "POST /kakao/skill 200" in logged and "POST /kakao/skill 400" in logged
    assert USER not in logged and SECRET not in logged


# The pieces


def test_the_text_is_cut_after_a_sentence_and_never_inside_a_number():
    """simpleText stays within 1,000 characters, cut after a sentence or at a space."""
    sentences = "".join(f"{i}번째 주문은 3,000원이고 무게는 1.5kg입니다. " for i in range(60))
    cut = kakao.fit_text(sentences)
    assert len(cut) <= kakao.MAX_TEXT and cut.endswith("입니다.") and sentences.startswith(cut)
    one_sentence = "배송비는 " + "아주 " * 330 + "3,000,000원"
    cut = kakao.fit_text(one_sentence)
    assert len(cut) <= kakao.MAX_TEXT and cut.endswith("아주…")
    digits = "가" * 990 + "1,234,567,890원"
    cut = kakao.fit_text(digits)
    assert len(cut) <= kakao.MAX_TEXT and cut == "가" * 990 + "…"
    assert kakao.fit_text("  짧은 답입니다. ") == "짧은 답입니다."


def test_a_label_fits_kakaos_limit_and_the_button_sends_the_whole_question():
    """Labels of at most 14 characters; messageText is the question as written."""
    long = "여러 번 나눠서 주문했는데 한 번에 묶어서 보내주실 수 있나요?"
    body = kakao.skill_response("답", [long, "환불은 언제 되나요?"])
    first, second = body["template"]["quickReplies"]
    assert first == {"label": "여러 번 나눠서 주문했는…", "action": "message", "messageText": long}
    assert len(first["label"]) == kakao.MAX_LABEL
    assert second["label"] == second["messageText"] == "환불은 언제 되나요?"
    assert "quickReplies" not in kakao.skill_response("답", [])["template"]


def test_callbacks_go_only_to_kakao_or_the_allowed_origins():
    """https under kakao.com, or an origin the owner listed; nothing else."""
    allowed = kakao.callback_allowed
    assert allowed("https://bot-api.kakao.com/v1/skill/callback/abc")
    for url in ("http://bot-api.kakao.com/cb", "https://evilkakao.com/cb",
                "https://kakao.com.evil.example/cb", "https://user@bot-api.kakao.com/cb",
                "https://evil.example#@bot-api.kakao.com/cb", "https://bot-api.kakao.com:x/cb",
                "http://127.0.0.1:9000/cb", "file:///etc/passwd", ""):
        assert not allowed(url), url
    assert allowed("http://127.0.0.1:9000/cb", frozenset({"http://127.0.0.1:9000"}))
    assert not allowed("http://127.0.0.1:9001/cb", frozenset({"http://127.0.0.1:9000"}))


def test_the_channel_refuses_to_start_without_a_usable_secret_or_with_bad_settings(shop_bot):
    """No secret, a short one, one a path cannot carry as written, or a budget Kakao would
    not wait for: refused when the server is built, naming the fix (never the secret)."""
    from builder.errors import UserError

    for settings in ({}, {"kakao_secret": "short"}, {"kakao_secret": "a/b" * 8},
                     {"kakao_secret": SECRET, "kakao_budget_s": 5},
                     {"kakao_secret": SECRET, "kakao_callback_hosts": "http://x"},
                     {"kakao_secret": SECRET, "kakao_callback_hosts": 9000}):
        with pytest.raises(UserError) as err:
            build_app(shop_bot, "shop", channels=[kakao.mount], channel_settings=settings)
        assert SECRET not in str(err.value)
