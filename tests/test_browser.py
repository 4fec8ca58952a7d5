"""Guards the web page in a real browser (Debian's chromium via Playwright): upload a FAQ, read the report, chat,
update a run's FAQ, see the sources under an answer and an evaluation fill in, 👎 under an
answer, the inbox's groups, an answer from it and its figures; and the customer's web chat
and its widget on a shop's page (`builder serve`'s /chat and /widget.js)."""

import threading
import time
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path

import pytest
from fixtures import PLAIN_TEMPLATE
from test_app import has_hangul, make_shop_run, start_app, stop_app, write_faq
from test_serve import OFF_TOPIC, ON_TOPIC, generating
from test_webchat import by_prompt, runs, shop_bot, web  # noqa: F401 (fixtures by name)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"




def make_base_run(run: Path) -> Path:
    """A run folder whose merged/ is the embedded base model (files linked, end ids [1, 106])
    and a template without a FAQ: real Korean text without training."""
    from fixtures import link_embedded_merged, write_run

    source = link_embedded_merged(run)
    return write_run(run, PLAIN_TEMPLATE, meta={
        "base_model": "embedded:gemma-3-270m", "base_model_path": str(source),
        "template": "korean", "end_token_ids": [1, 106]})


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    run = make_base_run(tmp / "runs" / "base")
    proc, url = start_app(tmp, "--run", str(run))
    yield url, tmp
    stop_app(proc)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium "
                    "chromium-driver); never `playwright install`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Collects each distinct text of the last bot message as the DOM changes
RECORD_ANSWERS = """() => {
  window.answers = [];
  new MutationObserver(() => {
    const bots = document.querySelectorAll('#chatbot .message-row.bot-row');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    if (text && text !== window.answers[window.answers.length - 1]) window.answers.push(text);
  }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
}"""


def last_answer(page) -> str:
    bot_messages = page.locator("#chatbot .message-row.bot-row")
    return bot_messages.last.inner_text() if bot_messages.count() else ""


def test_upload_a_faq_then_chat_with_a_streamed_korean_answer(browser, page_url):
    url, tmp = page_url
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="ko-KR")
    page.goto(url)

    # 데이터: upload, then the report and the preview appear
    faq = write_faq(tmp / "faq.csv", 30)
    page.locator("#faq-file input[type=file]").set_input_files(str(faq))
    summary = page.locator("#data-summary textarea")
    page.wait_for_function(
        "() => document.querySelector('#data-summary textarea').value.includes('rows read')",
        timeout=60_000)
    assert "30 rows read" in summary.input_value()
    assert "배송비는 얼마인가요?" in page.locator("#data-preview").inner_text()
    assert page.locator("#data-error").is_hidden()

    # 채팅: ask, record every redraw of the answer, see it grow and end with Korean text
    page.get_by_role("tab", name="3. 채팅").click()
    page.evaluate(RECORD_ANSWERS)
    page.locator("#chat-question textarea").fill("배송비는 얼마인가요?")
    page.locator("#chat-send").click()
    page.wait_for_function("() => window.answers.length > 0", timeout=90_000)  # model loads first
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # finished when nothing changed for 3 s
        count = page.evaluate("window.answers.length")
        time.sleep(3)
        if page.evaluate("window.answers.length") == count:
            break
    answers = page.evaluate("window.answers")
    assert len(answers) >= 3, f"the answer did not stream: {answers}"
    assert all(b.startswith(a[:-1]) for a, b in pairwise(answers)), answers  # grows
    assert answers[-1] == last_answer(page) and has_hangul(answers[-1]), answers[-1]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def shop_page(tmp_path_factory):
    """The page opened on a run that answers from its FAQ (no knowledge until one is uploaded)."""
    tmp = tmp_path_factory.mktemp("browser-shop")
    run = make_shop_run(tmp / "runs" / "shop")
    proc, url = start_app(tmp, "--run", str(run))
    yield url, tmp, run
    stop_app(proc)


def wait_for_text(page, selector: str, text: str, timeout: float = 30_000) -> None:
    page.wait_for_function("([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                           arg=[selector, text], timeout=timeout)


def test_faq_update_sources_under_the_answer_and_an_eval_filling_in(browser, shop_page):
    from test_jobs import NEW_ROW, write_eval

    from builder.evaluation.report import EVAL_RUNNING

    url, tmp, run = shop_page
    page = browser.new_page(viewport={"width": 1280, "height": 1400}, locale="ko-KR")
    page.goto(url)
    page.get_by_role("tab", name="3. 채팅").click()
    wait_for_text(page, "#chat-eval", "no evaluation yet")

    # FAQ 업데이트: the run's knowledge from an uploaded file
    page.get_by_text("FAQ 업데이트 (재학습 없이)").click()
    faq = write_faq(tmp / "faq.csv", 30, [NEW_ROW])
    page.locator("#chat-faq-file input[type=file]").set_input_files(str(faq))
    wait_for_text(page, "#chat-faq-result", "indexed 31 FAQ entries", timeout=120_000)

    # The answer, then "참고한 FAQ": collapsed, and the row shows when it is opened
    page.locator("#chat-question textarea").fill(NEW_ROW[0])
    page.locator("#chat-send").click()
    title = page.locator("#chatbot").get_by_text("참고한 FAQ")
    title.wait_for(timeout=90_000)
    row = page.locator("#chatbot").get_by_text(f"{NEW_ROW[0]} → {NEW_ROW[2]}")
    assert row.is_hidden()
    title.click()
    row.wait_for(state="visible", timeout=5_000)
    assert "32행" in page.locator("#chatbot").inner_text()

    # `builder eval` starts, then ends: the page fills in on its timer
    (run / EVAL_RUNNING).touch()
    wait_for_text(page, "#chat-eval", "평가 진행 중 / evaluation running", timeout=15_000)
    report = write_eval(run)
    (run / EVAL_RUNNING).unlink()
    wait_for_text(page, "#chat-eval", report["verdict"][0], timeout=15_000)
    assert "retrieval only" in page.locator("#chat-eval").inner_text()
    page.locator("#chat-eval-chart img").wait_for(state="visible", timeout=10_000)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-chat-faq.png"), full_page=True)
    page.close()


def fill_log(run: Path) -> None:
    """A shop's week in the run's conversation log: three open questions (one asked three
    times, one answered from an entry and 👎), fine answers with 👍, one declined days ago."""
    from datetime import UTC, datetime, timedelta

    from builder.answering.guard import Reply
    from builder.answering.knowledge import Hit, Knowledge
    from builder.owner.log import ConversationLog

    entries = {e.line: e for e in Knowledge.load(run / "knowledge").entries}
    log = ConversationLog.for_run(run)
    decline = "죄송합니다. 그 질문에는 답변드리기 어려워요."

    def answered(line):
        return Reply(text=entries[line].answer, sources=[Hit(entries[line], 1.0, 1.0, 1.0)])

    asked = [("선물 포장도 해 주시나요?", Reply(text=decline, declined=True))] * 3 + [
        ("주차 되나요?", Reply(text=decline, declined=True)),
        ("강아지 간식도 파나요?", Reply(text=decline, declined=True))]
    asked += [("배송비는 얼마인가요?", answered(2))] * 4 + [("택배사는 어디를 이용하나요?", answered(4))] * 2
    now = datetime.now(UTC)
    for n, (question, reply) in enumerate(asked):
        turn = log.record("web", f"customer-{n}", question, "", reply)
        with log.engine.begin() as conn:  # spread over the week
            conn.execute(log.turns.update().where(log.turns.c.id == turn)
                         .values(at=now - timedelta(days=n % 6, hours=n)))
        if question == "배송비는 얼마인가요?":
            log.feedback(turn, 1)
    disliked = log.record("kakao", "customer-9", "반품 택배비는 누가 내요?", "", answered(2))
    log.feedback(disliked, -1)


def test_the_inbox_lists_groups_answers_one_and_draws_the_figures(browser, shop_page):
    """The 인박스 tab: the open groups in a table, one picked shows its wordings, the owner's
    answer takes it out and the chat answers with it; 👎 under a chat answer reaches the log;
    the figures are drawn (screenshots: artifacts/browser-inbox*.png)."""
    from builder.answering.indexing import index_run
    from builder.owner.log import ConversationLog

    url, tmp, run = shop_page
    if not (run / "knowledge").is_dir():  # when run alone
        index_run(run, write_faq(tmp / "inbox-faq.csv", 30), log=lambda *_: None)
    fill_log(run)
    page = browser.new_page(viewport={"width": 1280, "height": 1400}, locale="ko-KR")
    page.goto(url)
    page.get_by_role("tab", name="5. 인박스").click()
    wait_for_text(page, "#inbox-table", "선물 포장도 해 주시나요?", timeout=60_000)
    table = page.locator("#inbox-table").inner_text()
    assert table.index("선물 포장도 해 주시나요?") < table.index("주차 되나요?")  # most asked first
    assert "반품 택배비는 누가 내요?" in table and "싫어요 disliked" in table
    wait_for_text(page, "#inbox-numbers", "좋아요 likes 4")
    page.locator("#inbox-chart img").wait_for(state="visible", timeout=30_000)

    # a row picked: its wordings and what the bot said
    page.locator("#inbox-table").get_by_text("선물 포장도 해 주시나요?").filter(visible=True).first.click()
    wait_for_text(page, "#inbox-detail", "고객의 말 / wordings")
    assert "3번 / times" in page.locator("#inbox-detail").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-inbox.png"), full_page=True)
    page.locator("#inbox-chart").screenshot(path=str(ARTIFACTS / "browser-inbox-charts.png"))

    # the owner's answer: the group leaves, and the chat answers with it
    owner = "네, 선물 포장은 한 상품당 2,000원에 해 드려요."
    page.locator("#inbox-answer-text textarea").fill(owner)
    page.locator("#inbox-answer").click()
    wait_for_text(page, "#inbox-result", "added a FAQ row", timeout=60_000)
    assert "선물 포장도 해 주시나요?" not in page.locator("#inbox-table").inner_text()
    page.get_by_role("tab", name="3. 채팅").click()
    page.locator("#chat-question textarea").fill("선물 포장도 해 주시나요?")
    page.locator("#chat-send").click()
    wait_for_text(page, "#chatbot", owner, timeout=90_000)

    # 👎 under that answer reaches its row in the log
    page.locator("#chatbot").get_by_role("button", name="싫어요").last.click()  # ko-KR labels
    deadline = time.monotonic() + 20
    while ConversationLog.for_run(run).rows()[-1]["feedback"] != -1:
        assert time.monotonic() < deadline, ConversationLog.for_run(run).rows()[-1]
        time.sleep(0.3)
    assert ConversationLog.for_run(run).rows()[-1]["channel"] == "page"
    page.screenshot(path=str(ARTIFACTS / "browser-inbox-chat.png"), full_page=True)
    page.close()


# The customer's web chat (builder serve --web-chat) and its widget on the shop's own page

SHOP_PAGE = """<!doctype html>
<html lang="ko"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>하루커피 온라인 스토어</title>
<style>
  body {{ font-family: serif; margin: 40px; background: #faf6f0; }}
  /* the shop's own rules: they must not reach the widget */
  button {{ display: none !important; }}
  iframe {{ border: 8px solid red !important; }}
</style></head>
<body><h1>하루커피 온라인 스토어</h1><p>갓 볶은 원두를 매주 보내 드려요.</p>
<button>shop button</button>
<script src="{bot}/widget.js" data-title="하루커피 상담" data-color="#6b4f3a" async></script>
</body></html>"""
BOT_ANSWERS = {ON_TOPIC: "기본 배송비는 3,000원이며, 30,000원 이상 구매하시면 무료로 배송해 드립니다.",
               "제주도는요?": "제주 지역은 3,000원의 추가 배송비가 있어요."}
DESKTOP, PHONE = {"width": 1280, "height": 800}, {"width": 390, "height": 844}


@contextmanager
def shop_site(bot_url: str):
    """The shop's page with the widget's tag, served on another loopback port (origin)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = SHOP_PAGE.format(bot=bot_url).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body if self.path == "/" else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def ask_in(chat, question: str, n: int):
    """Type `question`, press Enter, wait for the n-th bot turn (0: the greeting) to finish."""
    chat.locator("#question").fill(question)
    chat.locator("#question").press("Enter")
    answer = chat.locator(".turn.bot").nth(n)
    answer.locator(".rating").wait_for(timeout=60_000)
    return answer


def web_rows(server) -> list[dict]:
    return [r for r in server.log.rows() if r["channel"] == "web"]


def test_the_web_chat_widget_on_a_shops_page(browser, web, shop_bot):  # noqa: F811
    """The widget on another site's page: a conversation, a decline, 👎 in the log, phone."""
    # A question, a short follow-up, a related question's button, a declined question, 👎 in
    # the log under one session's pseudonym; the panel closes and opens again with the
    # conversation; on a phone it is full screen; the chat page alone too; nothing is loaded
    # from elsewhere (screenshots: artifacts/webchat-*.png).
    ARTIFACTS.mkdir(exist_ok=True)
    entries = {e.question: e for e in shop_bot.knowledge.entries}
    requests = []
    with shop_site(web.url) as shop_url, \
            generating(shop_bot, by_prompt(shop_bot.engine.tokenizer, BOT_ANSWERS)):
        context = browser.new_context(viewport=DESKTOP, locale="ko-KR")
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.goto(shop_url)
        widget = page.locator("#builder-chat-widget")
        widget.locator(".bubble").click()  # shown although the shop hides every <button>
        panel = widget.locator(".panel")
        panel.wait_for(state="visible")
        box = panel.bounding_box()
        assert abs(box["x"] + box["width"] - 1260) <= 2 and box["y"] + box["height"] <= 800
        chat = page.frame_locator("#builder-chat-widget iframe")
        chat.locator(".turn.bot").first.wait_for(timeout=30_000)
        assert "하루커피" in chat.locator(".turn.bot").first.inner_text()

        # a question, then a short follow-up: read with the first
        first = ask_in(chat, ON_TOPIC, 1)
        assert first.locator(".bubble").inner_text() == BOT_ANSWERS[ON_TOPIC]
        assert first.locator(".sources").inner_text().startswith("참고한 FAQ: 배송비는 얼마인가요?")
        related = first.locator(".choices button")
        assert 1 <= related.count() <= 3
        jeju = ask_in(chat, "제주도는요?", 2)
        assert jeju.locator(".bubble").inner_text() == BOT_ANSWERS["제주도는요?"]
        assert "제주도도 무료배송 되나요?" in jeju.locator(".sources").inner_text()

        # a related question's button asks it: answered from its FAQ row
        suggested = related.first.inner_text()
        related.first.click()
        chat.locator(".turn.bot").nth(3).locator(".rating").wait_for(timeout=60_000)
        assert chat.locator(".turn.user").nth(2).inner_text() == suggested
        assert suggested in entries
        assert suggested in chat.locator(".turn.bot").nth(3).locator(".sources").inner_text()

        declined = ask_in(chat, OFF_TOPIC, 4)
        assert declined.locator(".bubble").inner_text() == shop_bot.rag.decline_message
        assert "declined" in declined.get_attribute("class")

        # 👎 on the follow-up's answer: its row in the log
        jeju.get_by_role("button", name="도움이 안 됐어요").click()
        jeju.locator(".rate[aria-pressed=true]").wait_for(timeout=10_000)
        deadline = time.monotonic() + 20
        while not any(r["feedback"] == -1 for r in web_rows(web)):
            assert time.monotonic() < deadline, web_rows(web)
            time.sleep(0.2)
        rows = web_rows(web)
        assert [r["question"] for r in rows if r["feedback"] == -1] == ["제주도는요?"]
        assert [r["question"] for r in rows] == [ON_TOPIC, "제주도는요?", suggested, OFF_TOPIC]
        assert len({r["customer"] for r in rows}) == 1 and rows[0]["customer"]
        page.screenshot(path=str(ARTIFACTS / "webchat-widget-desktop.png"))

        # closed and opened again: the same conversation
        widget.locator(".close").click()
        panel.wait_for(state="hidden")
        widget.locator(".bubble").click()
        panel.wait_for(state="visible")
        assert chat.locator(".turn.bot").count() == 5

        # a phone: the panel is the whole screen
        phone = browser.new_context(viewport=PHONE, locale="ko-KR", is_mobile=True,
                                    has_touch=True)
        phone.on("request", lambda r: requests.append(r.url))
        page = phone.new_page()
        page.goto(shop_url)
        page.locator("#builder-chat-widget .bubble").click()
        assert page.locator("#builder-chat-widget .panel").bounding_box() == \
            {"x": 0, "y": 0, "width": 390, "height": 844}
        chat = page.frame_locator("#builder-chat-widget iframe")
        chat.locator(".choices button").first.click()  # an example question under the greeting
        chat.locator(".turn.bot").nth(1).locator(".rating").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "webchat-widget-phone.png"))
        phone.close()

        # the chat page alone, on a desktop and on a phone
        for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            alone = browser.new_context(viewport=viewport, locale="ko-KR")
            alone.on("request", lambda r: requests.append(r.url))
            page = alone.new_page()
            page.goto(f"{web.url}/chat")
            assert page.title() == "하루커피"
            ask_in(page, ON_TOPIC, 1)
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            page.screenshot(path=str(ARTIFACTS / f"webchat-page-{name}.png"))
            alone.close()
        context.close()
    elsewhere = [u for u in requests if not u.startswith((web.url + "/", shop_url))]
    assert not elsewhere, elsewhere
