"""A run still training answers from its FAQ (the best entry's own answer, labelled), and its
model takes over once it is written, without a restart: through the bot, the API and the page's
run list."""

import json
import time

import pytest
from fastapi.testclient import TestClient
from fixtures import make_tiny_gemma, sample_knowledge, sample_rows, write_run

from builder.answering.chatbot import load_chatbot
from builder.config import Config
from builder.doors import uploads
from builder.doors.api import build_app
from builder.errors import UserError
from builder.owner.live import follow_model

PARAPHRASE = "배송비는 얼마예요?"  # not an FAQ question word for word
OFF_TOPIC = "강아지 사료도 파나요?"


@pytest.fixture
def training_run(tmp_path):
    """A run whose knowledge, template and meta are written and whose model is not (yet)."""
    meta = {"base_model": "tiny-gemma3", "end_token_ids": [1, 106], "config": Config().to_dict()}
    return write_run(tmp_path / "runs" / "shop", "korean", meta=meta,
                     knowledge=sample_knowledge(30))


def merge_into_place(run):
    """merged/ appears whole, as `builder merge` renames its staging folder into place."""
    staging = make_tiny_gemma(run / ".merged-staging")
    config = json.loads((staging / "generation_config.json").read_text())
    (staging / "generation_config.json").write_text(json.dumps({**config,
                                                                "eos_token_id": [1, 106]}))
    staging.rename(run / "merged")


def wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_training_run_answers_from_its_faq_until_its_model_takes_over(training_run):
    with pytest.raises(UserError, match="neither merged/ nor adapter/"):
        load_chatbot(training_run)  # asked for the model itself: said as before
    bot = load_chatbot(training_run, faq_first=True)
    assert not bot.trained

    reply = bot.reply(PARAPHRASE)
    best = reply.sources[0].entry
    assert reply.faq_only and not reply.exact and reply.text == best.answer
    assert "배송비" in best.question and reply.prompt == ""  # nothing was generated
    exact = bot.reply(sample_rows(30)[3]["instruction"])
    assert exact.exact and not exact.faq_only
    assert bot.reply(OFF_TOPIC).declined

    client = TestClient(build_app(bot, "shop"))
    assert client.get("/health").json()["trained"] is False
    body = {"model": "shop", "messages": [{"role": "user", "content": PARAPHRASE}]}
    message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["faq_only"] is True and message["content"] == best.answer

    ready = []
    follow_model(bot, training_run, interval_s=0.1, on_change=ready.append)
    time.sleep(0.5)
    assert not bot.trained  # nothing there yet: still the FAQ
    merge_into_place(training_run)
    wait_until(lambda: bot.trained and ready)
    assert ready == [bot]

    generated = bot.reply(PARAPHRASE, max_new_tokens=8)
    assert not generated.faq_only and generated.prompt  # the model answered
    # the same answer a server started on the finished run gives
    fresh = load_chatbot(training_run).reply(PARAPHRASE, max_new_tokens=8)
    assert (generated.text, generated.generated) == (fresh.text, fresh.generated)
    assert client.get("/health").json()["trained"] is True
    message = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["faq_only"] is False


def test_a_model_that_does_not_load_leaves_the_faq_answering(training_run, caplog):
    bot = load_chatbot(training_run, faq_first=True)
    follow_model(bot, training_run, interval_s=0.1)
    (training_run / "merged").mkdir()
    (training_run / "merged" / "config.json").write_text("{}")  # a broken model folder
    wait_until(lambda: "did not load" in caplog.text)
    assert not bot.trained and bot.reply(PARAPHRASE).faq_only


def test_the_page_lists_a_run_in_training_once_it_can_answer(training_run, tmp_path):
    from builder.doors.page_common import kind

    root = training_run.parent
    (root / "empty").mkdir()  # a run that has written nothing yet is not listed
    assert uploads.list_runs(root) == [training_run]
    assert "학습 중" in kind(training_run)
    with pytest.raises(UserError, match="no model and no FAQ knowledge yet"):
        load_chatbot(root / "empty", faq_first=True)
