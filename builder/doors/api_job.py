"""One answer of `builder serve`: its place in the queue in front of the engine, the thread that
generates it, and its row in the conversation log."""

import asyncio
import logging
import math
import threading
import time
from contextlib import closing

from builder.answering.chatbot import Chatbot
from builder.answering.guard import Reply
from builder.doors.api_request import ApiError

log = logging.getLogger(__name__)
END = object()  # the end of a job's deltas


class Gate:
    """At most `concurrency` answers generated at once and `max_queue` waiting."""

    def __init__(self, concurrency: int, max_queue: int):
        self.concurrency, self.max_queue = concurrency, max_queue
        self.running = self.waiting = 0
        self.turns = asyncio.Semaphore(concurrency)
        self.seconds = 2.0  # a running mean of how long an answer takes, for Retry-After

    def admit(self) -> None:
        if self.running + self.waiting >= self.concurrency + self.max_queue:
            retry = math.ceil(self.seconds * (self.waiting + 1) / self.concurrency)
            raise ApiError(429, f"the server is busy ({self.running} answering, {self.waiting} "
                           f"waiting); retry in {retry} s", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": str(retry)})
        self.waiting += 1


class Job:
    """One answer: waits for its turn, then streams deltas from a thread into `deltas`; once
    done, its row goes into the conversation log (`log`, a ConversationLog, or None) under the
    reply id the client was handed (`reply_id`), for its feedback, as `channel`'s (the API,
    the web chat, KakaoTalk: builder.doors.channels share the queue)."""

    def __init__(self, bot: Chatbot, gate: Gate, request: dict, log=None, reply_id: str = "",
                 channel: str = "api"):
        self.bot, self.gate, self.request = bot, gate, request
        self.log, self.reply_id, self.channel = log, reply_id, channel
        self.reply = Reply()
        self.deltas: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()  # set when the client leaves: generation ends
        self.error: BaseException | None = None
        self.started = False
        gate.admit()
        self.task = asyncio.get_running_loop().create_task(self._run())
        self.task.add_done_callback(self._ended)

    def cancel(self) -> None:
        """The client left: leave the queue, or stop generating after the current token."""
        self.stop.set()
        if not self.started:
            self.task.cancel()

    async def _run(self) -> None:
        await self.gate.turns.acquire()  # cancelled here when the client leaves while waiting
        self.gate.waiting -= 1
        self.gate.running += 1
        self.started = True
        begun, loop, finished = time.monotonic(), asyncio.get_running_loop(), asyncio.Event()
        self.begun = begun
        try:
            thread = threading.Thread(target=self._generate, args=(loop, finished),
                                      name="serve-answer", daemon=True)
            thread.start()
            await finished.wait()  # not cancelled: the slot is free only once the thread is done
        finally:
            self.gate.running -= 1
            self.gate.turns.release()
            self.gate.seconds = 0.8 * self.gate.seconds + 0.2 * (time.monotonic() - begun)

    def _ended(self, task) -> None:  # also when cancelled before it began
        if not self.started:
            self.gate.waiting -= 1
        self.deltas.put_nowait(END)

    def _generate(self, loop, finished: asyncio.Event) -> None:
        def hand(callback, *args):
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the server loop is gone (shutdown)
                pass

        request = self.request
        try:
            with closing(self.bot.stream(request["question"], request["context"],
                                         history=request["history"], reply=self.reply,
                                         stop_event=self.stop, **request["options"])) as deltas:
                for delta in deltas:
                    if self.stop.is_set():
                        break
                    hand(self.deltas.put_nowait, delta)
        except BaseException as err:  # handed to the response
            self.error = err
        finally:
            self._record()
            hand(finished.set)

    def _record(self) -> None:
        """The answer's row in the log (also a stopped one: what the customer saw); a log
        that fails never fails the answer."""
        if self.log is None or self.error is not None:
            return
        request = self.request
        try:
            self.log.record(self.channel, request["customer"], request["question"], request["context"],
                            self.reply, time.monotonic() - self.begun, self.reply_id)
        except Exception:  # noqa: BLE001 (a database down must not take the answers with it)
            log.warning("the conversation log failed; the answer was given", exc_info=True)


