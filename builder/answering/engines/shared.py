"""Answer sharing: customers who ask a shop the same question in the same words get one
generation between them.

    engine = SharedAnswers(TransformersEngine.load(...), size=256)
    for delta in engine.stream(prompt, max_new_tokens=256): ...   # as the inner engine's

Greedy decoding (temperature 0) gives the same answer to the same prompt every time, so a
greedy answer is generated once per (prompt, max_new_tokens):

- a finished answer is kept (the `size` most recently asked): it is replayed, delta by delta,
  with the flags the engine set (cut, runaway) and its generated ids, without generating;
- an answer being generated right now is followed: the second customer gets each delta as the
  first one's generation yields it, instead of waiting for a generation of their own;
- otherwise the caller leads: the inner engine generates and every delta is published. An
  answer that ended on its own (an end token, a stop marker, the loop check, the token limit)
  is kept; one whose leader was stopped (its stop_event, or its reader left early) is not, and
  a follower that still needs the rest generates it again (or follows whoever does), showing
  only the text beyond what it already showed. A failed generation raises its error in every
  follower and is not kept.

Sampled answers (temperature > 0), a caller's logits processor and options this wrapper does
not know are passed straight to the inner engine, as is everything when `size` is 0. Every
other attribute (name, encode, decode, context_length, batch, warm, model, ...) is the inner
engine's, read and set. A follower goes at its leader's pace, which is its reader's: the
chatbot reads a stream as fast as it is generated.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import closing

log = logging.getLogger(__name__)

RUNNING, DONE, DROPPED, FAILED = "running", "done", "dropped", "failed"
OWN_FIELDS = ("inner", "size", "_lock", "_kept", "_running")
POLL_S = 0.05  # how often a waiting follower looks at its own stop_event (about one token)


class _Answer:
    """One greedy answer, being generated or finished: the deltas so far, and once it ended
    the flags the engine set, its generated ids, or the error that ended it."""

    def __init__(self, lock: threading.Lock):
        self.changed = threading.Condition(lock)  # notified at each delta and at the end
        self.deltas: list[str] = []
        self.state = RUNNING
        self.flags: dict = {}
        self.ids: list[int] = []
        self.error: BaseException | None = None


class _Flags:
    """The flags object the leader hands the inner engine: what the engine sets is recorded
    for the followers and set on the leader's own flags at once."""

    def __init__(self, flags):
        object.__setattr__(self, "_caller", flags)
        object.__setattr__(self, "recorded", {})

    def __setattr__(self, name, value):
        self.recorded[name] = value
        if self._caller is not None:
            setattr(self._caller, name, value)

    def __getattr__(self, name):
        if name in self.recorded:
            return self.recorded[name]
        return getattr(self._caller, name)


class SharedAnswers:
    """An engine whose greedy answers are generated once per (prompt, max_new_tokens) and
    shared between the callers who ask for them, at the same time or later."""

    def __init__(self, inner, size: int = 256):
        self.inner, self.size = inner, size
        self._lock = threading.Lock()  # guards the two tables and every answer's fields
        self._kept: OrderedDict[tuple, _Answer] = OrderedDict()  # least recently asked first
        self._running: dict[tuple, _Answer] = {}

    def __getattr__(self, name):
        if name == "inner":  # not set yet (a copy being made): never recurse
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        """The wrapper's own fields are its own; any other (a bench turning prompt lookup
        off) is set on the inner engine, which reads it."""
        if name in OWN_FIELDS:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    def stream(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
               top_p: float = 0.9, stop_event: threading.Event | None = None, flags=None,
               logits_processor: list | None = None, generated_ids: list[int] | None = None,
               **other) -> Iterator[str]:
        """Yield the answer as text deltas, as the inner engine's stream does, setting the
        same `flags` and filling `generated_ids` with the answer's ids (those of a stopped
        replay or follow are left out). `stop_event` and closing the stream end this
        caller's answer only."""
        if self.size <= 0 or temperature > 0 or logits_processor or other:
            yield from self.inner.stream(
                prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                stop_event=stop_event, flags=flags, logits_processor=logits_processor,
                generated_ids=generated_ids, **other)
            return
        key = (prompt, max_new_tokens)
        shown = ""  # what this caller has yielded: an answer joined again starts past it
        while True:
            answer, leading = self._join(key)
            if leading:
                source = self._lead(answer, key, top_p, stop_event, flags, generated_ids)
            else:
                source = self._follow(answer, stop_event, flags, generated_ids)
            with closing(_beyond(shown, source)) as pieces:
                for piece in pieces:
                    shown += piece
                    yield piece
            if leading or answer.state != DROPPED or _is_set(stop_event):
                return
            # its leader stopped before the end: generate it again, or follow who does

    def _join(self, key: tuple) -> tuple[_Answer, bool]:
        """(the answer to follow, False), or (a new answer this caller generates, True)."""
        with self._lock:
            if (answer := self._kept.get(key)) is not None:
                self._kept.move_to_end(key)
                return answer, False
            if (answer := self._running.get(key)) is not None:
                return answer, False
            answer = self._running[key] = _Answer(self._lock)
            return answer, True

    def _lead(self, answer: _Answer, key: tuple, top_p: float, stop_event, flags,
              generated_ids: list[int] | None) -> Iterator[str]:
        """Generate the answer with the inner engine, publishing each delta as it comes."""
        recorder, ids = _Flags(flags), []
        state, error = DROPPED, None
        prompt, max_new_tokens = key
        try:
            deltas = self.inner.stream(prompt, max_new_tokens=max_new_tokens, temperature=0.0,
                                       top_p=top_p, stop_event=stop_event, flags=recorder,
                                       generated_ids=ids)
            with closing(deltas):
                for delta in deltas:
                    with answer.changed:
                        answer.deltas.append(delta)
                        answer.changed.notify_all()
                    yield delta
            # the engine ends at the next token once stop_event is set: not the whole answer
            state = DROPPED if _is_set(stop_event) else DONE
        except Exception as err:  # (a reader leaving early raises GeneratorExit: dropped)
            state, error = FAILED, err
            raise
        finally:
            if generated_ids is not None:
                generated_ids.extend(ids)
            self._settle(answer, key, state, recorder.recorded, ids, error)

    def _settle(self, answer: _Answer, key: tuple, state: str, flags: dict, ids: list[int],
                error: BaseException | None) -> None:
        """Mark the answer ended, keep it when it is whole, and wake its followers."""
        with self._lock:
            answer.state, answer.flags, answer.ids, answer.error = state, flags, ids, error
            if self._running.get(key) is answer:
                del self._running[key]
            if state == DONE:
                self._kept[key] = answer
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
            answer.changed.notify_all()

    def _follow(self, answer: _Answer, stop_event, flags,
                generated_ids: list[int] | None) -> Iterator[str]:
        """Yield an answer's deltas as its leader publishes them (all at once when it is
        finished); at its end, its flags and ids. A dropped answer just ends here."""
        taken = 0
        while True:
            with answer.changed:
                while (taken == len(answer.deltas) and answer.state == RUNNING
                       and not _is_set(stop_event)):
                    answer.changed.wait(POLL_S)  # wakes at least every POLL_S to see stop_event
                new, state = answer.deltas[taken:], answer.state
            for delta in new:
                if _is_set(stop_event):
                    return
                taken += 1
                yield delta
            if _is_set(stop_event):
                return
            if state != RUNNING:
                break
        if state == FAILED:
            raise answer.error
        if state == DONE:
            for name, value in answer.flags.items():
                if flags is not None:
                    setattr(flags, name, value)
            if generated_ids is not None:
                generated_ids.extend(answer.ids)


def _beyond(shown: str, deltas: Iterator[str]) -> Iterator[str]:
    """The deltas' text past its first len(shown) characters: what a caller that has already
    shown `shown` still needs. Greedy decoding gives the same answer again, so the text starts
    with `shown`; if it does not (different hardware, numerical noise), the rest still comes,
    from the same length on, and the difference is logged."""
    text = ""
    with closing(deltas):
        for delta in deltas:
            start = len(text)
            text += delta
            if len(text) <= len(shown):
                continue
            if start <= len(shown) and shown and not text.startswith(shown):
                log.warning("an answer generated again differs from the one shown: %r vs %r",
                            text[:len(shown)], shown)
            yield text[max(start, len(shown)):]


def _is_set(event: threading.Event | None) -> bool:
    return event is not None and event.is_set()
