"""The terminal door: `builder chat RUN_DIR` asks, streams the answer, repeats.

    builder chat runs/NAME [--use gguf]       # exit, quit or 종료 ends it

The conversation's earlier questions go with each question, so a short follow-up ("제주는요?")
is understood as on the page and through the API.
"""

import logging
import time
from collections.abc import Callable
from contextlib import closing

from builder.answering.chatbot import FAQ_ONLY_NOTE
from builder.answering.guard import Reply

log = logging.getLogger(__name__)
EXIT_WORDS = ("exit", "quit", "종료")
GOODBYE = "대화를 마칩니다. 안녕히 가세요."


def chat_loop(bot, read: Callable[[str], str] | None = None,
              write: Callable | None = None, options: dict | None = None,
              conversations=None) -> None:
    """Ask, stream the answer, repeat. `write` is called like print: write(text, end=, flush=);
    `options` go to each answer (max_new_tokens, temperature, top_p); each answer goes into
    `conversations` (a builder.owner.log.ConversationLog) when given.

    exit / quit / 종료, Ctrl-D or Ctrl-C at the prompt end the chat; Ctrl-C while an answer
    streams stops only that answer.
    """
    read, write = read or input, write or print  # looked up now, so tests can replace them
    write(f"질문을 입력하세요. 끝내려면 {' / '.join(EXIT_WORDS)}")
    asked: list[str] = []
    while True:
        try:
            question = read("질문> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            break
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            break
        reply, begun = Reply(), time.monotonic()
        try:
            with closing(bot.stream(question, history=asked, reply=reply,
                                    **(options or {}))) as deltas:
                for delta in deltas:  # closing joins the generating thread
                    write(delta, end="", flush=True)
        except KeyboardInterrupt:
            write(" (중단됨)", end="")
        if conversations is not None:
            try:
                conversations.record("terminal", "", question, "", reply,
                                     time.monotonic() - begun)
            except Exception:  # noqa: BLE001 (the chat goes on without its log)
                log.warning("the conversation log failed", exc_info=True)
        asked.append(question)
        write("")
        if reply.sources:
            write(format_sources(reply))
        if reply.faq_only:
            write(FAQ_ONLY_NOTE)
    write(GOODBYE)


def format_sources(reply: Reply) -> str:
    """'참고한 FAQ: 2행 배송비는 얼마인가요? · 7행 제주도도 무료배송 되나요?'"""
    items = [(f"{h.entry.line}행 " if h.entry.line else "") + h.entry.question
             for h in reply.sources]
    return "참고한 FAQ: " + " · ".join(items) if items else ""
