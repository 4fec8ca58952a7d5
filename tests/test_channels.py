"""Guards builder.doors.channels as thin doors: the same conversation gets the same answers,
sources and declines through the API, the web chat and KakaoTalk, with its follow-up read
alike, and every answer in the log under its channel."""

import time

import httpx
import pytest
from test_kakao import payload
from test_kakao import text_of as kakao_text
from test_serve import OFF_TOPIC, Server, runs, shop_bot  # noqa: F401 (fixtures by name)
from test_webchat import asked, chat
from test_webchat import text_of as web_text

from builder.doors.api import build_app
from builder.doors.channels import kakao, webchat

SECRET = "channels-test-secret-0123456789"
CONVERSATION = ["배송비는 얼마인가요?", "제주도는요?", OFF_TOPIC]


@pytest.fixture(scope="module")
def doors(shop_bot, tmp_path_factory):  # noqa: F811 (a fixture by name)
    from builder.owner.log import ConversationLog

    conversations = ConversationLog.for_run(tmp_path_factory.mktemp("channels-log"))
    app = build_app(shop_bot, "shop", conversations=conversations, max_tokens_cap=64,
                    channels=[webchat.mount, kakao.mount],
                    channel_settings={"kakao_secret": SECRET, "kakao_budget_s": 4.8})
    server = Server(app)
    yield server, conversations
    server.stop()


def through_api(url: str) -> list[tuple[str, bool]]:
    said, messages = [], []
    for question in CONVERSATION:
        messages.append({"role": "user", "content": question})
        message = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "shop", "messages": messages, "max_tokens": 64}).json()["choices"][0][
            "message"]
        messages.append({"role": "assistant", "content": message["content"]})
        said.append((message["content"], message["declined"]))
    return said


def through_web(url: str) -> list[tuple[str, bool]]:
    said, before = [], []
    for question in CONVERSATION:
        events = chat(url, asked(question, before), session="channels0session")
        said.append((web_text(events), events[-1]["declined"]))
        before.append((question, said[-1][0]))
    return said


def through_kakao(url: str) -> list[tuple[str, bool]]:
    said = []
    for question in CONVERSATION:
        body = httpx.post(f"{url}/kakao/skill/{SECRET}", timeout=30,
                          json=payload(question, user="kakao-channels-user")).json()
        said.append((kakao_text(body), None))
    return said


def test_one_conversation_gets_the_same_answers_on_every_door(doors):
    """API, web chat and KakaoTalk: the FAQ's answer, the follow-up read with the earlier
    question, the decline: word for word the same; the log has each under its channel."""
    server, conversations = doors
    api, web, talk = through_api(server.url), through_web(server.url), through_kakao(server.url)
    assert [text for text, _ in api] == [text for text, _ in web] == [text for text, _ in talk]
    assert [declined for _, declined in api] == [declined for _, declined in web] == [
        False, False, True]
    def by_channel():
        rows = conversations.rows()
        return {c: [r["answer"] for r in rows if r["channel"] == c] for c in ("api", "web",
                                                                            "kakao")}

    deadline = time.monotonic() + 10  # (a channel may store its row just after replying)
    while any(len(v) < len(CONVERSATION) for v in by_channel().values()):
        assert time.monotonic() < deadline, by_channel()
        time.sleep(0.1)
    by_channel = by_channel()
    assert by_channel["api"] == by_channel["web"] == by_channel["kakao"] == [t for t, _ in api], {
        c: len(v) for c, v in by_channel.items()}
    alone = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": "shop", "max_tokens": 64,
        "messages": [{"role": "user", "content": CONVERSATION[1]}]}).json()["choices"][0]
    assert alone["message"]["content"] != api[1][0]  # the follow-up was read with its question
