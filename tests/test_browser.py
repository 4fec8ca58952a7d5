"""Guards the web page in a real browser (Debian's chromium via Playwright): upload a FAQ, read the report, chat."""

import json
import shutil
import time
from itertools import pairwise
from pathlib import Path

import pytest
from test_app import ROOT, has_hangul, start_app, stop_app, write_faq

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"


def make_base_run(run: Path) -> Path:
    """A run folder whose merged/ is the embedded base model (files linked, end ids [1, 106]):
    real Korean text without training."""
    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    (run / "merged").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (run / "merged" / name).symlink_to(source / name)
    generation = json.loads((source / "generation_config.json").read_text())
    generation["eos_token_id"] = [1, 106]
    (run / "merged" / "generation_config.json").write_text(json.dumps(generation))
    shutil.copy(ROOT / "prompts" / "korean.yaml", run / "template.yaml")
    meta = {"base_model": "embedded:gemma-3-270m", "base_model_path": str(source),
            "template": "korean", "end_token_ids": [1, 106]}
    (run / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return run


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
