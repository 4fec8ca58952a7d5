"""Guards builder/answering/engines/llamacpp_batch.py: concurrent answers of the llama.cpp engine
generated together are, token for token, the answers it generates one at a time; a reader that
leaves frees its sequence; the stop event, the token limit, sampling, an overlong prompt and the
kept prefix states work as on the one-at-a-time path. (A tiny random Gemma3 exported to f16:
seconds.)"""

import threading

import pytest
from fixtures import sample_rows

from builder.errors import UserError
from builder.prompts import load_template

OPTIONS = {"end_ids": {1, 106}, "stop_markers": ("### 질문",), "repetition_penalty": 1.1}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from fixtures import make_tiny_gemma

    from builder.deploy.gguf import convert, stage

    folder = tmp_path_factory.mktemp("batching")
    merged = make_tiny_gemma(folder / "merged")
    out = folder / "tiny-f16.gguf"
    convert(stage(merged, folder / "staging", load_template("korean")), out, "f16",
            log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def one(tiny_gguf):
    from builder.answering.engines.llamacpp import GgufEngine

    return GgufEngine.load(tiny_gguf, parallel=1, **OPTIONS)


@pytest.fixture(scope="module")
def batched(tiny_gguf):
    from builder.answering.engines.llamacpp import GgufEngine

    return GgufEngine.load(tiny_gguf, parallel=4, n_ctx=2048, **OPTIONS)


def prompts() -> list[str]:
    """FAQ prompts of different lengths: one FAQ entry, three, and one over 512 tokens (read
    in several chunks) among them."""
    rows = sample_rows(30)
    template = load_template("korean")

    def faq(part):
        return "\n\n".join(f"질문: {r['instruction']}\n답변: {r['output']}" for r in part)

    return [template.render(rows[0]["instruction"], "", faq(rows[:1])),
            template.render(rows[5]["instruction"] + " 알려주세요", "", faq(rows[3:6])),
            template.render("환불은 언제 되나요?", "", faq(rows[6:26])),
            template.render(rows[8]["instruction"], "주문번호 HR-2026", faq(rows[8:10])),
            template.render("안녕하세요", ""),
            template.render(rows[12]["instruction"], "", faq(rows[10:14]))]


def alone(engine, prompt: str, **options) -> tuple[list[int], str]:
    ids: list[int] = []
    text = "".join(engine.stream(prompt, generated_ids=ids, **options))
    return ids, text


def together(engine, asks: list[tuple[str, dict]], timeout: float = 120) -> list:
    """Each (prompt, options) streamed by its own thread, all started at once."""
    out: list = [None] * len(asks)
    start = threading.Barrier(len(asks))

    def ask(i):
        start.wait()
        out[i] = alone(engine, asks[i][0], **asks[i][1])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a stream never ended"
    return out


def test_concurrent_greedy_answers_are_the_answers_generated_one_at_a_time(one, batched):
    """Six prompts on four sequences (two wait for a free one) give the ids and text each
    gives alone; the long prompt is read in chunks beside the answers generating."""
    asks = [(prompt, {"max_new_tokens": n}) for prompt, n in zip(prompts(), (40, 24, 32, 48, 16, 30))]
    assert len(batched.encode(asks[2][0])) > 512
    expected = [alone(one, prompt, **options) for prompt, options in asks]
    assert together(batched, asks) == expected
    assert all(ids and text for ids, text in expected)
    assert batched.parallel == 4 and not batched.batcher.running
    assert sorted(batched.batcher.free) == [0, 1, 2, 3]


def test_a_reader_that_leaves_frees_its_sequence_and_the_others_finish_the_same(one, tiny_gguf):
    from builder.answering.engines.llamacpp import GgufEngine

    engine = GgufEngine.load(tiny_gguf, parallel=2, n_ctx=1024, **OPTIONS)
    first, second, third = prompts()[:2] + prompts()[3:4]
    left = engine.stream(first, max_new_tokens=200)
    shown = [next(left), next(left)]  # two deltas read, then the reader goes
    assert len(engine.batcher.running) == 1
    left.close()
    # the third prompt only gets a sequence once the closed stream gave its own back
    answers = together(engine, [(second, {"max_new_tokens": 30}), (third, {"max_new_tokens": 30})])
    assert answers == [alone(one, second, max_new_tokens=30), alone(one, third, max_new_tokens=30)]
    assert "".join(shown) == alone(one, first, max_new_tokens=200)[1][:len("".join(shown))]
    assert not engine.batcher.running and sorted(engine.batcher.free) == [0, 1]


def test_the_stop_event_and_the_token_limit_end_a_batched_answer_as_alone(one, batched):
    from builder.answering.guard import Reply

    prompt = prompts()[1]
    flags, alone_flags = Reply(), Reply()
    ids = alone(batched, prompt, max_new_tokens=5, flags=flags)[0]
    assert ids == alone(one, prompt, max_new_tokens=5, flags=alone_flags)[0] and len(ids) == 5
    assert flags.cut and alone_flags.cut and not flags.runaway
    # a stop event set before the first token: one token, as alone
    stopped = threading.Event()
    stopped.set()
    flags = Reply()
    ids = alone(batched, prompt, max_new_tokens=50, stop_event=stopped, flags=flags)[0]
    assert len(ids) == 1 and len(alone(one, prompt, max_new_tokens=50, stop_event=stopped)[0]) == 1
    assert not flags.cut
    # set while the answer streams: it ends within a few tokens, short of the limit
    stop, ids, flags = threading.Event(), [], Reply()
    for _ in batched.stream(prompt, max_new_tokens=200, stop_event=stop, generated_ids=ids,
                            flags=flags):
        stop.set()
    assert 1 <= len(ids) < 50 and not flags.cut
    assert not batched.batcher.running


def test_sampling_gives_text_and_a_tiny_top_p_is_greedy(one, batched):
    prompt = prompts()[0]
    asks = [(prompt, {"max_new_tokens": 12, "temperature": 0.8, "top_p": 0.9})] * 3
    for ids, text in together(batched, asks):
        assert len(ids) == 12 and text.strip() and "\ufffd" not in text
        assert all(0 <= i < batched.llama.n_vocab() for i in ids)
    # top-p keeps only the likeliest token: the greedy answer, whatever the temperature
    greedy = alone(one, prompt, max_new_tokens=12)
    assert alone(batched, prompt, max_new_tokens=12, temperature=0.8, top_p=1e-9) == greedy


def test_a_prompt_longer_than_a_sequence_is_refused_through_the_stream(batched):
    long_prompt = "배송비는 얼마인가요? " * 800
    with pytest.raises(UserError, match="at most 2048"):
        "".join(batched.stream(long_prompt, max_new_tokens=8))
    assert not batched.batcher.running


def test_a_warmed_prompt_is_read_from_its_kept_state_and_answers_the_same(one, tiny_gguf):
    """A kept state is continued, or cut back only within the model's sliding window (the
    tiny model's is 64 tokens): a state keeps only the window's cells before its end."""
    from builder.answering.engines.llamacpp import GgufEngine

    engine = GgufEngine.load(tiny_gguf, parallel=2, n_ctx=1024, **OPTIONS)
    prompt = prompts()[1]
    faq_block = prompt[:prompt.index("### 질문")]
    assert engine.warm(faq_block) and len(engine.encode(faq_block)) > engine.prefixes.window
    assert len(engine.prefixes.states) == 1 and engine.prefixes.restored == 0
    expected = alone(one, prompt, max_new_tokens=20)
    assert alone(engine, prompt, max_new_tokens=20) == expected
    assert engine.prefixes.restored == 1
    # the answer's own state (prompt and answer) would be cut back further than the window:
    # the same prompt again starts from the FAQ block's, and answers the same (so does the
    # one-at-a-time path, which keeps its answers' states too)
    assert len(engine.prefixes.states) == 2
    assert alone(engine, prompt, max_new_tokens=20) == expected == alone(one, prompt,
                                                                         max_new_tokens=20)
    assert engine.prefixes.restored == 2


def test_a_failure_in_the_scheduler_reaches_the_readers_and_the_next_answer_is_served(
        batched, one, monkeypatch):
    import builder.answering.engines.llamacpp_batch as batch_module

    real, failures = batch_module.pick, []

    def pick_once_failing(*args):
        if not failures:
            failures.append(1)
            raise FloatingPointError("logits were NaN")
        return real(*args)

    monkeypatch.setattr(batch_module, "pick", pick_once_failing)
    prompt = prompts()[0]
    with pytest.raises(FloatingPointError):
        alone(batched, prompt, max_new_tokens=6)
    assert batched.batcher.thread is None and len(batched.batcher.free) == 4
    assert alone(batched, prompt, max_new_tokens=6) == alone(one, prompt, max_new_tokens=6)


def test_a_prompt_that_cuts_back_a_context_begun_from_a_kept_state_is_read_again(tiny_gguf):
    """The tiny model's sliding window is 64 tokens. A kept state longer than that holds the
    window's cells only: a later prompt sharing just the template's start with the context it
    began must not reuse cells that were never there."""
    from builder.answering.engines.llamacpp import GgufEngine

    fresh = GgufEngine.load(tiny_gguf, parallel=1, **OPTIONS)
    prompt, then = prompts()[1], prompts()[0]
    expected = alone(fresh, then, max_new_tokens=6)
    engine = GgufEngine.load(tiny_gguf, parallel=1, **OPTIONS)
    faq_block = prompt[:prompt.index("### 질문")]
    assert engine.warm(faq_block) and len(engine.encode(faq_block)) > engine.prefixes.window
    engine.llama.reset()  # (a context that holds something else)
    alone(engine, prompt, max_new_tokens=20)  # begun from the warmed state
    assert engine.prefixes.restored == 1
    assert alone(engine, then, max_new_tokens=6) == expected
