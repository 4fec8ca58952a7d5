"""Guards builder/doors/channels/webchat.py: the web chat's page and widget, its streamed answers
(sources, related questions, the answer's id), follow-ups, declines, 👍/👎 in the conversation
log under the session's pseudonym, and bad requests, over the tiny grounded run of
tests/test_serve.py."""

import json
import os
import re
from types import SimpleNamespace

import httpx
import pytest
from test_serve import OFF_TOPIC, ON_TOPIC, Server, generating, runs, scripted, shop_bot  # noqa: F401

from builder.doors.api import build_app
from builder.doors.channels import webchat
from builder.errors import UserError

SHOP = "하루커피"
SESSION = "websession" + os.urandom(8).hex()  # distinctive, so a leak is easy to grep


@pytest.fixture(scope="module")
def web(shop_bot, tmp_path_factory):  # noqa: F811 (a fixture by name)
    """The API with the web chat mounted, on a loopback port, logging to its own folder."""
    from builder.owner.log import ConversationLog

    folder = tmp_path_factory.mktemp("webchat-log")
    conversations = ConversationLog.for_run(folder)
    app = build_app(shop_bot, "shop", conversations=conversations, channels=[webchat.mount],
                    shop=SHOP)
    server = Server(app)
    yield SimpleNamespace(url=server.url, log=conversations, folder=folder)
    server.stop()


def by_prompt(tokenizer, answers: dict[str, str]):
    """A logits processor factory: the model writes the answer of the question the prompt
    ends with (the key found last in it), then the end token."""
    makers = {question: scripted(tokenizer, text) for question, text in answers.items()}

    def make():
        chosen = []

        def process(input_ids, scores):
            if not chosen:
                prompt = tokenizer.decode(input_ids[0])
                chosen.append(makers[max(answers, key=prompt.rfind)]())
            return chosen[0](input_ids, scores)

        return process

    return make


def chat(url: str, messages: list, session: str = SESSION) -> list[dict]:
    """The answer's events, in order."""
    with httpx.stream("POST", f"{url}/chat/api/answer", timeout=60,
                      json={"messages": messages, "session": session}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[6:]) for line in response.iter_lines()
                if line.startswith("data: ")]


def asked(question: str, before=()) -> list[dict]:
    """A conversation ending with `question`; `before` is (question, answer) pairs."""
    messages = []
    for q, a in before:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return messages + [{"role": "user", "content": question}]


def text_of(events: list[dict]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


# The page and the widget


def test_the_chat_page_is_the_shops_and_loads_only_from_this_server(web, shop_bot):  # noqa: F811
    """/chat: the shop's name, its greeting and examples, and only this server's files."""
    page = httpx.get(f"{web.url}/chat")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f"<title>{SHOP}</title>" in page.text and 'name="viewport"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    config = json.loads(re.search(r'id="chat-config" type="application/json">(.*?)</script>',
                                  page.text).group(1))
    assert SHOP in config["greeting"]
    assert config["examples"] == [e.question for e in shop_bot.knowledge.entries[:3]]
    named = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert sorted(named) == ["chat/chat.css", "chat/chat.js"]
    assert 'class="embed"' in httpx.get(f"{web.url}/chat?embed=1").text
    for path, kind in (("/chat/chat.js", "text/javascript"), ("/chat/chat.css", "text/css"),
                       ("/widget.js", "text/javascript")):
        served = httpx.get(f"{web.url}{path}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind)
    script = httpx.get(f"{web.url}/chat/chat.js").text
    assert "innerHTML" not in script and "textContent" in script  # answers are text, never HTML


def test_the_shops_name_and_settings_cannot_break_out_of_the_page():
    """Markup in the shop's name or settings stays text: no "<" can end the page's JSON."""
    template = (webchat.STATIC / "chat.html").read_text(encoding="utf-8")
    page = webchat.render_page(template, "<b>Cafe</b> & Co", "</script><script>alert(1)</script>",
                               ["<img src=x>"], embed=False)
    assert "<title>&lt;b&gt;Cafe&lt;/b&gt; &amp; Co</title>" in page
    config = re.search(r'type="application/json">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in config
    assert json.loads(config) == {"shop": "<b>Cafe</b> & Co",
                                  "greeting": "</script><script>alert(1)</script>",
                                  "examples": ["<img src=x>"]}


def test_the_greeting_and_examples_come_from_the_settings_and_bad_ones_are_named(shop_bot):  # noqa: F811
    """Settings "greeting" and "examples" are used; a wrong one is refused, named, at start."""
    from fastapi.testclient import TestClient

    settings = {"greeting": "어서 오세요!", "examples": ["원두 추천해 주세요", "영업시간은요?"]}
    app = build_app(shop_bot, "shop", channels=[webchat.mount], shop=SHOP,
                    channel_settings=settings)
    page = TestClient(app).get("/chat").text
    assert '"greeting": "어서 오세요!"' in page
    assert '"examples": ["원두 추천해 주세요", "영업시간은요?"]' in page
    for bad, named in (({"examples": "영업시간은요?"}, "examples"), ({"greeting": ""}, "greeting"),
                       ({"examples": ["", "x"]}, "examples")):
        with pytest.raises(UserError, match=named):
            build_app(shop_bot, "shop", channels=[webchat.mount], channel_settings=bad)


# Answers


def test_an_answer_streams_then_ends_with_its_sources_related_questions_and_id(web, shop_bot):  # noqa: F811
    """Deltas, then one last event with the sources, related questions, declined and id."""
    from builder.answering.related import related_questions

    answer = "기본 배송비는 3,000원입니다. 30,000원 이상 구매하시면 무료입니다."
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, answer)):
        expected = shop_bot.reply(ON_TOPIC)
        events = chat(web.url, asked(ON_TOPIC))
    *deltas, last = events
    assert deltas and all(e["type"] == "delta" for e in deltas)
    assert text_of(events) == expected.text == answer
    assert last["type"] == "done" and last["declined"] is False
    assert last["sources"][0] == {"line": 2, "question": "배송비는 얼마인가요?"}
    assert last["sources"] == [{"line": h.entry.line, "question": h.entry.question}
                               for h in expected.sources]
    assert last["related"] == related_questions(shop_bot.knowledge, ON_TOPIC, expected, 3)
    assert 1 <= len(last["related"]) <= 3
    assert not {s["question"] for s in last["sources"]} & set(last["related"])
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", last["id"])


def test_a_follow_up_is_read_with_the_earlier_question(web, shop_bot, monkeypatch):  # noqa: F811
    """"제주도는요?" is searched with the earlier user question (not the bot's answer)."""
    searched = []
    search = shop_bot.knowledge.search
    monkeypatch.setattr(shop_bot.knowledge, "search", lambda q, k=3, **kw: searched.append(
        getattr(q, "text", q)) or search(q, k, **kw))
    answer = "제주 지역은 3,000원의 추가 배송비가 있어요."
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, answer)):
        earlier = [("배송비는 얼마인가요?", "기본 배송비는 3,000원입니다.")]
        events = chat(web.url, asked("제주도는요?", earlier))
    last = events[-1]
    assert searched[0] == "배송비는 얼마인가요? 제주도는요?"
    assert not any("3,000원입니다" in s for s in searched)  # the bot's answer is no question
    assert last["declined"] is False and text_of(events) == answer
    assert "제주도도 무료배송 되나요?" in [s["question"] for s in last["sources"]]


def test_a_question_the_faq_does_not_cover_is_declined_without_generating(web, shop_bot):  # noqa: F811
    """An off-topic question: the decline message, declined true, no sources, no model call."""
    calls = []
    with generating(shop_bot, lambda: calls.append(1)):
        events = chat(web.url, asked(OFF_TOPIC))
    last = events[-1]
    assert text_of(events) == shop_bot.rag.decline_message
    assert last["declined"] is True and last["sources"] == [] and calls == []


def test_feedback_lands_in_the_log_under_the_sessions_pseudonym(web, shop_bot):  # noqa: F811
    """Answers logged as "web" under the session's pseudonym only; 👎 is stored; unknown 404."""
    with generating(shop_bot, scripted(shop_bot.engine.tokenizer, "기본 배송비는 3,000원입니다.")):
        first = chat(web.url, asked(ON_TOPIC))[-1]
    second = chat(web.url, asked(OFF_TOPIC, [(ON_TOPIC, "기본 배송비는 3,000원입니다.")]))[-1]
    down = httpx.post(f"{web.url}/chat/api/feedback", json={"id": first["id"], "value": -1})
    assert down.status_code == 200 and down.json() == {"id": first["id"], "value": -1}
    unknown = httpx.post(f"{web.url}/chat/api/feedback", json={"id": "chatcmpl-0", "value": 1})
    assert unknown.status_code == 404 and unknown.json()["error"]["message"]

    rows = {r["reply_id"]: r for r in web.log.rows()}
    row, other = rows[first["id"]], rows[second["id"]]
    assert (row["channel"], row["question"], row["feedback"]) == ("web", ON_TOPIC, -1)
    assert other["channel"] == "web" and other["declined"] and other["feedback"] is None
    assert row["customer"] == other["customer"] == web.log.pseudonym(SESSION)
    stored = b"".join(p.read_bytes() for p in web.folder.glob("conversations.db*"))
    assert stored and SESSION.encode() not in stored and b"127.0.0.1" not in stored


# Bad requests


USER = [{"role": "user", "content": "배송비는?"}]
BAD = [  # (path, body, param)
    ("answer", b'{"messages": [', None),
    ("answer", [USER], None),
    ("answer", {"session": SESSION}, "messages"),
    ("answer", {"messages": "배송비는?", "session": SESSION}, "messages"),
    ("answer", {"messages": [], "session": SESSION}, "messages"),
    ("answer", {"messages": USER}, "session"),
    ("answer", {"messages": USER, "session": "short"}, "session"),
    ("answer", {"messages": USER, "session": "../../etc/passwd"}, "session"),
    ("answer", {"messages": USER, "session": SESSION, "context": "주문번호 1234"}, "context"),
    ("answer", {"messages": USER, "session": SESSION, "model": "gpt-4o"}, "model"),
    ("answer", {"messages": [{"role": "user", "content": "가" * 1001}], "session": SESSION},
     "messages[0].content"),
    ("answer", {"messages": [{"role": "user", "content": "  "}], "session": SESSION},
     "messages[0].content"),
    ("answer", {"messages": USER + [{"role": "assistant", "content": "네"}], "session": SESSION},
     "messages[1].role"),
    ("answer", {"messages": [{"role": "tool", "content": "x"}], "session": SESSION},
     "messages[0].role"),
    ("feedback", b"not json", None),
    ("feedback", {"id": "chatcmpl-1", "value": 5}, "value"),
    ("feedback", {"id": 12, "value": 1}, "id"),
]


@pytest.mark.parametrize("path,body,param", BAD)
def test_a_bad_request_gets_a_400_with_a_clear_message(web, path, body, param):
    """Each bad request: 400, JSON naming what is wrong, never a traceback."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{web.url}/chat/api/{path}", content=content, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and error["param"] == param
    assert "Traceback" not in response.text
