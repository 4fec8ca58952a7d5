"""The customer's channels on `builder serve`: the web chat and its widget (webchat.py) and a
KakaoTalk channel (kakao.py). Each is a thin door: it reads its platform's request, asks the
same grounding step as the API (one queue in front of the engine, the conversation's earlier
questions for follow-ups), stores the answer in the conversation log under its channel name
and the customer's pseudonym, and writes its platform's reply.

A channel module has one entry, `mount(app, channel: Channel)`, which adds its routes to the
API's FastAPI app; `builder serve` mounts the ones asked for.
"""

from collections import deque
from dataclasses import dataclass, field
from threading import Lock
from time import monotonic


@dataclass
class Channel:
    """What every channel gets from the server."""

    bot: object  # builder.answering.chatbot.Chatbot
    model: str  # the served name (the run folder's)
    conversations: object | None  # builder.owner.log.ConversationLog, or None
    gate: object  # () -> builder.doors.api_job.Gate: the API's queue, made in the server's loop
    shop: str = ""  # the shop's name, as customers know it
    max_tokens: int = 256  # the longest answer a channel asks for
    settings: dict = field(default_factory=dict)  # a channel's own (secret path, callback hosts)


class Histories:
    """Each customer's recent questions (for follow-ups), kept in memory for `ttl_s` seconds
    after their last one: a messenger sends one message at a time, not the conversation."""

    def __init__(self, keep: int = 6, ttl_s: float = 1800.0):
        self.keep, self.ttl_s = keep, ttl_s
        self._lock = Lock()
        self._recent: dict[str, tuple[float, deque]] = {}

    def earlier(self, customer: str) -> list[str]:
        """The customer's questions before this one, oldest first ([] after `ttl_s`)."""
        with self._lock:
            seen = self._recent.get(customer)
            if seen is None or monotonic() - seen[0] > self.ttl_s:
                return []
            return list(seen[1])

    def add(self, customer: str, question: str) -> None:
        with self._lock:
            now = monotonic()
            for key in [k for k, (at, _) in self._recent.items() if now - at > self.ttl_s]:
                del self._recent[key]  # (a customer who left frees their place)
            _, questions = self._recent.get(customer, (now, deque(maxlen=self.keep)))
            questions.append(question)
            self._recent[customer] = (now, questions)
