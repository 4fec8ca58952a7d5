"""Guards answer sharing: a greedy answer to the same prompt is generated once and replayed or
followed word for word, with its flags and ids; stopped, sampled and failed answers are never
shared as if whole."""

import threading
import time
from types import SimpleNamespace

import pytest
from fixtures import make_tiny_gemma

from builder.answering.engines.shared import SharedAnswers

QUESTION = "배송 언제 와요?"
WAIT_S = 10  # the most a test waits for another thread


class Scripted:
    """A greedy engine that answers every prompt with the same scripted deltas, `pause_s`
    apart, counting its generations. `end_flags` are set when an answer ends on its own;
    `fail_at` raises before that delta."""

    name = "scripted"
    context_length = 512

    def __init__(self, pause_s=0.005, end_flags=None, fail_at=None):
        self.pause_s, self.end_flags, self.fail_at = pause_s, end_flags or {}, fail_at
        self.calls = 0
        self.lock = threading.Lock()

    def deltas(self, prompt: str) -> list[str]:
        return [f"[{prompt}] ", "주문 후 ", "2~3일 ", "걸려요", "."]

    def encode(self, prompt: str) -> list[int]:
        return list(prompt.encode())

    def stream(self, prompt, *, max_new_tokens=256, temperature=0.0, top_p=0.9,
               stop_event=None, flags=None, logits_processor=None, generated_ids=None):
        with self.lock:
            self.calls += 1
        for i, delta in enumerate(self.deltas(prompt)[:max_new_tokens]):
            time.sleep(self.pause_s)
            if i == self.fail_at:
                raise RuntimeError("the engine failed")
            if generated_ids is not None:
                generated_ids.append(100 + i)
            yield delta
            if stop_event is not None and stop_event.is_set():
                return
        for name, value in self.end_flags.items():
            setattr(flags, name, value)


class Reader(threading.Thread):
    """One customer reading a stream in a thread: `.deltas` as they come, `.error` raised."""

    def __init__(self, engine, prompt=QUESTION, **options):
        super().__init__(daemon=True)
        self.engine, self.prompt, self.options = engine, prompt, options
        self.flags = SimpleNamespace(cut=False, runaway=False)
        self.ids, self.deltas, self.error = [], [], None

    def run(self):
        try:
            for delta in self.engine.stream(self.prompt, flags=self.flags,
                                            generated_ids=self.ids, **self.options):
                self.deltas.append(delta)
        except RuntimeError as err:  # the scripted engine's failure
            self.error = err

    def text(self) -> str:
        self.join(WAIT_S)
        assert not self.is_alive(), "the reader never finished"
        return "".join(self.deltas)


def wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def whole(engine, prompt=QUESTION, **options) -> tuple[str, SimpleNamespace, list[int]]:
    flags, ids = SimpleNamespace(cut=False, runaway=False), []
    text = "".join(engine.stream(prompt, flags=flags, generated_ids=ids, **options))
    return text, flags, ids


EXPECTED = "[배송 언제 와요?] 주문 후 2~3일 걸려요."


def test_a_finished_answer_is_replayed_without_generating():
    inner = Scripted()
    engine = SharedAnswers(inner, size=4)
    first = whole(engine)
    deltas = list(engine.stream(QUESTION))
    second = whole(engine)
    assert first[0] == EXPECTED and second == first and inner.calls == 1
    assert deltas == inner.deltas(QUESTION)  # the same delta boundaries
    assert first[2] == [100, 101, 102, 103, 104]
    # another prompt, or another token limit, is another answer
    assert whole(engine, "반품 되나요?")[0].startswith("[반품 되나요?]") and inner.calls == 2
    assert whole(engine, max_new_tokens=2)[0] == "[배송 언제 와요?] 주문 후 " and inner.calls == 3


def test_the_engines_own_attributes_show_through():
    engine = SharedAnswers(Scripted(), size=4)
    assert engine.name == "scripted" and engine.context_length == 512
    assert engine.encode("가") == list("가".encode())
    assert not hasattr(engine, "batch")  # the chatbot checks for it before batching
    engine.pause_s = 0  # set on the engine that reads it
    assert engine.inner.pause_s == 0 and "pause_s" not in vars(engine)


def test_flags_the_engine_set_are_replayed():
    inner = Scripted(end_flags={"cut": True, "runaway": True})
    engine = SharedAnswers(inner, size=4)
    leader = Reader(engine)
    leader.start()
    wait_until(lambda: leader.deltas)
    follower = Reader(engine)
    follower.start()
    assert leader.text() == follower.text() == EXPECTED
    replayed = whole(engine)
    for flags in (leader.flags, follower.flags, replayed[1]):
        assert (flags.cut, flags.runaway) == (True, True)
    assert follower.ids == leader.ids == replayed[2] == [100, 101, 102, 103, 104]
    assert inner.calls == 1
    assert whole(SharedAnswers(Scripted(), size=4))[1] == SimpleNamespace(cut=False,
                                                                          runaway=False)


def test_a_follower_gets_the_leaders_deltas_as_they_come():
    inner = Scripted()
    engine = SharedAnswers(inner, size=4)
    leader = engine.stream(QUESTION)  # read here, one delta at a time
    shown = [next(leader)]
    follower = Reader(engine)
    follower.start()
    wait_until(lambda: len(follower.deltas) == 1)
    shown.append(next(leader))
    wait_until(lambda: len(follower.deltas) == 2)  # before the leader's answer is finished
    assert follower.deltas == shown
    shown += list(leader)
    assert follower.text() == "".join(shown) == EXPECTED and inner.calls == 1


def test_many_customers_at_once_share_one_generation():
    inner = Scripted(pause_s=0.02)
    engine = SharedAnswers(inner, size=4)
    readers = [Reader(engine) for _ in range(8)]
    for reader in readers:
        reader.start()
    assert [reader.text() for reader in readers] == [EXPECTED] * 8 and inner.calls == 1


def test_a_stopped_leader_leaves_followers_the_whole_answer_and_keeps_nothing():
    inner = Scripted()
    engine = SharedAnswers(inner, size=4)
    leader = engine.stream(QUESTION)
    shown = next(leader) + next(leader)
    follower = Reader(engine)
    follower.start()
    wait_until(lambda: len(follower.deltas) == 2)
    leader.close()  # the customer left
    assert follower.text() == EXPECTED and follower.ids == [100, 101, 102, 103, 104]
    assert shown == "".join(follower.deltas[:2]) and inner.calls == 2
    # the follower generated it again whole: that answer is kept
    assert whole(engine)[0] == EXPECTED and inner.calls == 2

    # a leader stopped by its stop_event, with no follower: nothing is kept
    engine, stop = SharedAnswers(inner := Scripted(), size=4), threading.Event()
    stopped = ""
    for delta in engine.stream(QUESTION, stop_event=stop):
        stopped += delta
        stop.set()
    assert stopped == "[배송 언제 와요?] " and inner.calls == 1
    assert whole(engine)[0] == EXPECTED and inner.calls == 2


def test_a_followers_stop_ends_that_follower_only():
    inner = Scripted()
    engine = SharedAnswers(inner, size=4)
    leader = engine.stream(QUESTION)
    first = next(leader)
    stop = threading.Event()
    stopped, closed = Reader(engine, stop_event=stop), engine.stream(QUESTION)
    stopped.start()
    assert next(closed) == first
    wait_until(lambda: len(stopped.deltas) == 1)
    stop.set()
    closed.close()
    assert stopped.text() == first and stopped.ids == []
    assert first + "".join(leader) == EXPECTED
    assert whole(engine)[0] == EXPECTED and inner.calls == 1  # the leader's answer is kept


def test_an_error_reaches_every_follower_and_nothing_is_kept():
    inner = Scripted(fail_at=3)
    engine = SharedAnswers(inner, size=4)
    leader = engine.stream(QUESTION)
    next(leader)
    follower = Reader(engine)
    follower.start()
    wait_until(lambda: follower.deltas)
    with pytest.raises(RuntimeError, match="the engine failed"):
        list(leader)
    follower.join(WAIT_S)
    assert isinstance(follower.error, RuntimeError) and "failed" in str(follower.error)
    assert inner.calls == 1
    with pytest.raises(RuntimeError):
        whole(engine)
    assert inner.calls == 2


def test_sampled_answers_and_logits_processors_are_never_shared():
    inner = Scripted()
    engine = SharedAnswers(inner, size=4)
    for _ in range(2):
        assert whole(engine, temperature=0.7)[0] == EXPECTED
        assert whole(engine, logits_processor=[lambda ids, scores: scores])[0] == EXPECTED
    assert inner.calls == 4
    off = SharedAnswers(inner := Scripted(), size=0)
    assert whole(off)[0] == whole(off)[0] == EXPECTED and inner.calls == 2


def test_the_least_recently_asked_answer_is_dropped_first():
    inner = Scripted(pause_s=0)
    engine = SharedAnswers(inner, size=2)
    for prompt in ("A", "B", "A", "C"):  # kept: A, C (A was asked again after B)
        whole(engine, prompt)
    assert inner.calls == 3
    whole(engine, "A")
    assert inner.calls == 3
    whole(engine, "B")
    assert inner.calls == 4


def test_the_transformers_engine_answers_the_same_without_generating_again(tmp_path):
    from builder.answering.engines.transformers import TransformersEngine

    inner = TransformersEngine.load(make_tiny_gemma(tmp_path / "tiny"), end_ids={1},
                                    stop_markers=("### 질문",), repetition_penalty=1.1)
    generate, calls = inner.model.generate, []

    def counting(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    inner.model.generate = counting
    engine = SharedAnswers(inner, size=4)
    prompt = "### 질문:\n배송 언제 와요?\n\n### 답변:\n"
    first, second = whole(engine, prompt, max_new_tokens=12), whole(engine, prompt,
                                                                    max_new_tokens=12)
    assert first[0] and second == first and len(first[2]) == 12 and first[1].cut
    assert len(calls) == 1
    assert whole(engine, prompt, max_new_tokens=12, temperature=0.7)[2] and len(calls) == 2
