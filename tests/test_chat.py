"""Guards builder/answering/chatbot.py: answers stop where they end, stream safely, load runs, decline and guard facts."""

import json
import shutil
import threading
from pathlib import Path

import pytest

from builder.answering.chatbot import Chatbot, load_chatbot, ready
from builder.answering.decoding import answer_deltas, fit_prompt, partial_marker_length, visible_answer
from builder.answering.engines.transformers import TransformersEngine, load_dtype
from builder.doors.terminal import GOODBYE, chat_loop
from builder.errors import UserError
from fixtures import PLAIN_TEMPLATE, link_embedded_merged, sample_knowledge, write_run

MARKERS = ("### 질문", "### 참고", "### 답변")
KOREAN_TEMPLATE = Path(__file__).parents[1] / "prompts" / "korean.yaml"
QUESTION = "배송은 보통 며칠 걸리나요?"


# The cut rules as pure functions


def test_visible_answer_cuts_before_the_first_stop_marker():
    assert visible_answer("배송은 2일 걸립니다.\n\n### 질문:\n환불은요?", MARKERS) == "배송은 2일 걸립니다."
    assert visible_answer("답입니다 ### 참고: x ### 질문", MARKERS) == "답입니다"
    assert visible_answer("### 답변: 처음부터 표시", MARKERS) == ""


def test_visible_answer_holds_back_what_may_become_a_marker_or_a_character():
    for tail in ("#", "##", "###", "### ", "### 질", "\n\n### 참"):
        assert visible_answer("배송은 2일입니다.\n" + tail, MARKERS) == "배송은 2일입니다."
    assert visible_answer("1번 #해시태그", MARKERS) == "1번 #해시태그"  # diverged: not a marker
    assert visible_answer("가나\ufffd", MARKERS) == "가나"  # last Hangul still missing bytes
    assert visible_answer("  앞뒤 공백  \n", MARKERS) == "앞뒤 공백"
    assert partial_marker_length("abc ### 질", MARKERS) == len("### 질")
    assert partial_marker_length("abc", MARKERS) == 0


def byte_tokens(*pieces: str | bytes):
    """A fake byte-level tokenizer over `pieces`: ids 10, 11, ... and a UTF-8 decode like
    SentencePiece byte fallback (an incomplete character decodes to U+FFFD)."""
    vocab = {10 + i: p.encode() if isinstance(p, str) else p for i, p in enumerate(pieces)}

    def decode(ids):
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    return list(vocab), decode


def test_deltas_never_show_a_marker_nor_anything_after_it():
    ids, decode = byte_tokens("배송은 ", "2일", "입니다.", "\n\n", "###", " 질", "문", ":\n환불은?")
    deltas = list(answer_deltas(ids, decode, MARKERS, end_ids={1}))
    assert "".join(deltas) == "배송은 2일입니다."
    assert not any("#" in d or "환불" in d for d in deltas)


def test_deltas_hold_a_split_hangul_character_until_its_last_byte():
    bytes_of_il = "일".encode()  # 3 bytes, one token each (byte fallback)
    ids, decode = byte_tokens("배송은 2", bytes_of_il[:1], bytes_of_il[1:2], bytes_of_il[2:], "입니다.")
    deltas = list(answer_deltas(ids, decode, MARKERS, end_ids={1}))
    assert deltas == ["배송은 2", "일", "입니다."]
    assert not any("\ufffd" in d for d in deltas)


def test_deltas_release_a_held_hash_once_it_is_not_a_marker():
    ids, decode = byte_tokens("가격은 ", "#", "1", " 상품", "\n")
    assert list(answer_deltas(ids, decode, MARKERS, end_ids={1})) == ["가격은", " #1", " 상품"]


def test_deltas_stop_at_an_end_id_and_drop_trailing_whitespace():
    ids, decode = byte_tokens("답입니다.", "\n", "\n", "다음 글")
    sequence = ids[:3] + [106] + ids[3:]
    assert list(answer_deltas(sequence, decode, MARKERS, end_ids={1, 106})) == ["답입니다."]


# Prompts longer than the model's context


def char_encode(question: str, context: str) -> list[str]:
    """A stand-in tokenizer: one token per character of a two-block template."""
    return list(f"Q:{question}" + (f"|C:{context}" if context.strip() else ""))


def fitted(encode, question, context, budget) -> str:
    """The prompt text of what fit_prompt keeps."""
    return "".join(encode(*fit_prompt(encode, question, context, budget)))


def test_a_prompt_that_fits_is_left_whole():
    assert fitted(char_encode, "질문", "참고", 9) == "Q:질문|C:참고"


def test_the_context_is_cut_first_from_its_end():
    prompt = fitted(char_encode, "배송은 며칠?", "가나다라마바사", 15)
    assert prompt == "Q:배송은 며칠?|C:가나다"
    # no room for any of the context: the block goes, the question stays whole
    assert fitted(char_encode, "배송은 며칠?", "가나다라마바사", 10) == "Q:배송은 며칠?"


def test_then_the_question_loses_its_middle_keeping_its_end():
    question = "안녕하세요 " + "긴 설명 " * 50 + "배송은 며칠 걸리나요?"
    prompt = fitted(char_encode, question, "참고 " * 100, 32)
    assert len(prompt) == 32 and "|C:" not in prompt
    assert prompt.startswith("Q:안녕하세") and prompt.endswith("배송은 며칠 걸리나요?")
    assert "…" in prompt


# A tiny random gemma3 (real tokenizer) in run folders: fast


def script_logits(free: int, forced: list[int]):
    """A logits processor: the model picks the first `free` tokens, then `forced` ones in turn
    (the last one repeats)."""
    import torch

    start = []

    def process(input_ids, scores):
        if not start:  # the first call sees the prompt only
            start.append(input_ids.shape[1])
        step = input_ids.shape[1] - start[0]
        if step < free:
            return scores
        token = forced[min(step - free, len(forced) - 1)]
        forced_scores = torch.full_like(scores, float("-inf"))
        forced_scores[:, token] = 0.0
        return forced_scores

    return process


def write_run_files(run: Path, base_path: Path) -> None:
    write_run(run, PLAIN_TEMPLATE, meta={"base_model": "embedded:gemma-3-270m",
                                         "base_model_path": str(base_path),
                                         "template": "korean-plain", "end_token_ids": [1, 106]})


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """(run with merged/ saved in bf16 and adapter/, run with adapter/ only)."""
    import torch
    from fixtures import make_tiny_gemma
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("chat-tiny")
    base = make_tiny_gemma(tmp / "base")
    full, adapter_only = tmp / "full", tmp / "adapter-only"
    for run in (full, adapter_only):
        run.mkdir()
        write_run_files(run, base)

    model = AutoModelForCausalLM.from_pretrained(base)
    model.generation_config.eos_token_id = [1, 106]
    model.to(torch.bfloat16).save_pretrained(full / "merged")  # as merge writes it on a GPU
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, full / "merged" / name)

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model.float(), lora).save_pretrained(full / "adapter")
    shutil.copytree(full / "adapter", adapter_only / "adapter")
    return full, adapter_only


@pytest.fixture(scope="module")
def tiny_bot(tiny_runs):
    return load_chatbot(tiny_runs[0])


def test_load_prefers_merged_upcasts_bf16_on_cpu_and_collects_end_ids(tiny_runs, tiny_bot):
    import torch

    saved = json.loads((tiny_runs[0] / "merged" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    assert tiny_bot.engine.model.dtype == torch.float32
    assert not hasattr(tiny_bot.engine.model, "peft_config")
    assert tiny_bot.engine.end_ids == {1, 106}
    assert tiny_bot.template.name == "korean-plain" and tiny_bot.knowledge is None


def only_tokens(token_ids: list[int]):
    """A logits processor that lets the model choose among `token_ids` only (Korean text, so a
    random model's answer is never empty)."""
    import torch

    def process(input_ids, scores):
        allowed = torch.full_like(scores, float("-inf"))
        allowed[:, token_ids] = scores[:, token_ids]
        return allowed

    return process


def korean_only(tokenizer):
    ids = tokenizer("배송은 2일 걸립니다 환불 가능합니다", add_special_tokens=False)["input_ids"]
    hangul = [i for i in ids if any("가" <= ch <= "힣" for ch in tokenizer.convert_ids_to_tokens(i))]
    return only_tokens(sorted(set(hangul)))


def test_load_uses_base_plus_adapter_without_merged(tiny_runs):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bot = load_chatbot(tiny_runs[1])
    assert hasattr(bot.engine.model, "peft_config")
    ids: list[int] = []
    answer = bot.answer(QUESTION, max_new_tokens=5, generated_ids=ids,
                        logits_processor=[korean_only(bot.engine.tokenizer)])
    assert answer and 1 <= len(ids) <= 5

    # the same logits as the base model with the adapter applied by hand, and not the base's
    meta = json.loads((tiny_runs[1] / "meta.json").read_text())
    prompt = torch.tensor([bot.engine.encode(bot.prompt(bot.ground(QUESTION)))])
    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(prompt).logits
        expected = PeftModel.from_pretrained(base, tiny_runs[1] / "adapter").eval()(prompt).logits
        got = bot.engine.model(prompt).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(base_logits, expected, atol=1e-3)


def one_shot(bot, question, context="", **options) -> str:
    """The engine's answer from one generate() call without a streamer, to the same prompt."""
    prompt = bot.prompt(bot.ground(question, context), options.get("max_new_tokens", 256))
    return bot.engine.generate_text(prompt, **options)


def with_template(bot, template, **kwargs) -> Chatbot:
    """`bot`'s model behind another template (its stop markers) and knowledge."""
    rag = kwargs.get("rag")
    engine = TransformersEngine(bot.engine.model, bot.engine.tokenizer, end_ids=bot.engine.end_ids,
                                stop_markers=template.stop_markers,
                                repetition_penalty=rag.repetition_penalty if rag else 1.0)
    return Chatbot(engine, template, **kwargs)


def test_stream_joins_to_the_one_shot_answer(tiny_bot):
    for question, context in ((QUESTION, ""), ("환불 되나요?", "구매 후 7일 이내 환불 가능")):
        options = dict(max_new_tokens=24, logits_processor=[korean_only(tiny_bot.engine.tokenizer)])
        streamed = list(tiny_bot.stream(question, context, **options))
        answer = "".join(streamed)
        assert len(streamed) > 1 and any("가" <= ch <= "힣" for ch in answer), streamed
        assert answer == one_shot(tiny_bot, question, context, **options)


def test_a_long_question_and_context_leave_room_for_the_answer(tiny_bot):
    assert tiny_bot.engine.context_length == 1024  # the tiny model's max_position_embeddings
    question = "안녕하세요. " + "주문한 상품에 대해 " * 400 + "배송은 며칠 걸리나요?"
    context = "구매 후 7일 이내 환불 가능. " * 400
    for q, c in ((QUESTION, context), (question, ""), (question, context)):
        prompt = tiny_bot.engine.encode(tiny_bot.prompt(tiny_bot.ground(q, c), 100))
        assert 1024 - 100 - 10 < len(prompt) <= 1024 - 100  # cut, and no more than needed
        text = tiny_bot.engine.tokenizer.decode(prompt, skip_special_tokens=True)
        assert prompt[0] == tiny_bot.engine.tokenizer.bos_token_id and text.endswith("### 답변:\n")
        if q == QUESTION:  # the context is cut from its end; the question stays whole
            assert QUESTION in text and "### 참고:\n구매 후 7일 이내 환불 가능." in text
        else:  # the context goes; the question keeps its start and its end
            assert "### 참고" not in text and "안녕하세요." in text
            assert "배송은 며칠 걸리나요?" in text and len(text) < len(question)
    ids: list[int] = []
    # 100 different syllables (가 개 갸 ...): a repeated one would be cut by the runaway check
    tokenizer = tiny_bot.engine.tokenizer
    syllables = [chr(0xAC00 + 28 * i) for i in range(399)]  # the syllables without a final
    known = [s for s in syllables if tokenizer.convert_tokens_to_ids(s) != tokenizer.unk_token_id]
    forced = [script_logits(0, [tokenizer.convert_tokens_to_ids(s) for s in known[:100]])]
    answer = tiny_bot.answer(question, context, max_new_tokens=100, generated_ids=ids,
                             logits_processor=forced)
    assert answer == "".join(known[:100]) and len(ids) == 100
    with pytest.raises(UserError, match="max_new_tokens=1020 leaves no room"):
        tiny_bot.answer(QUESTION, max_new_tokens=1020)


def test_load_dtype_is_fp16_on_gpus_without_bf16(tiny_runs, monkeypatch):
    import torch

    merged, gpu = tiny_runs[0] / "merged", torch.device("cuda")
    for supported, expected in ((True, torch.bfloat16), (False, torch.float16)):  # A100 / T4, V100
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        assert load_dtype(merged, gpu) == expected
    assert load_dtype(merged, torch.device("cpu")) == torch.float32  # saved bf16: upcast on CPU


def test_stop_event_and_closing_early_stop_the_generate_thread(tiny_bot):
    ga = tiny_bot.engine.tokenizer.convert_tokens_to_ids("가")
    always_ga = [script_logits(0, [ga])]

    stop = threading.Event()
    stop.set()
    ids: list[int] = []
    answer = tiny_bot.answer(QUESTION, stop_event=stop, logits_processor=always_ga, generated_ids=ids)
    assert answer == "가"
    assert ids == [ga]  # checked after the first token

    ids = []
    deltas = tiny_bot.stream(QUESTION, max_new_tokens=200, logits_processor=always_ga,
                             generated_ids=ids)
    assert next(deltas) == "가"
    deltas.close()
    assert not [t for t in threading.enumerate() if t.name == "chat-generate"]
    assert len(ids) < 200


def test_sampling_runs_and_honours_max_new_tokens(tiny_bot):
    ids: list[int] = []
    tiny_bot.answer(QUESTION, temperature=0.8, top_p=0.9, max_new_tokens=6, generated_ids=ids)
    assert 1 <= len(ids) <= 6


def test_load_errors_name_the_folder_and_the_command(tmp_path, tiny_runs):
    with pytest.raises(UserError, match=r"no such run folder.*builder train"):
        load_chatbot(tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"neither merged/ nor adapter/.*builder merge"):
        load_chatbot(empty)
    with pytest.raises(UserError, match=rf"{tiny_runs[1]}: no merged model.*builder merge"):
        load_chatbot(tiny_runs[1], use="merged")

    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_runs[1], no_template)
    (no_template / "template.yaml").unlink()
    with pytest.raises(UserError, match=r"template.yaml: missing"):
        load_chatbot(no_template)


# The terminal loop with scripted input


class ScriptedBot:
    def __init__(self, interrupt_after_first=False):
        self.questions: list[str] = []
        self.closed = 0
        self.interrupt = interrupt_after_first
        self.sources: list = []  # knowledge hits a grounded bot puts in the reply
        self.histories: list = []  # the earlier questions each question came with

    def stream(self, question, history=(), reply=None):
        self.questions.append(question)
        self.histories.append(list(history))
        try:
            yield "배송은 "
            if self.interrupt:
                raise KeyboardInterrupt
            yield "2일입니다."
            if reply is not None and self.sources:
                reply.sources = self.sources
        finally:
            self.closed += 1


def run_loop(bot, inputs):
    answers = iter(inputs)
    prompts, out = [], []

    def read(prompt):
        prompts.append(prompt)
        item = next(answers)
        if isinstance(item, BaseException):
            raise item
        return item

    chat_loop(bot, read=read, write=lambda text="", end="\n", flush=False: out.append(text + end))
    return prompts, "".join(out)


def test_chat_loop_asks_again_on_empty_input_and_ends_on_종료():
    bot = ScriptedBot()
    prompts, out = run_loop(bot, ["", "   ", QUESTION, "종료", "never read"])
    assert prompts == ["질문> "] * 4
    assert bot.questions == [QUESTION]
    assert "배송은 2일입니다.\n" in out
    assert out.endswith(GOODBYE + "\n")


def test_chat_loop_names_the_faq_entries_a_grounded_answer_used():
    from builder.answering.knowledge import Entry, Hit

    bot = ScriptedBot()
    bot.sources = [Hit(Entry(3, 5, "배송은 며칠 걸리나요?", "", "1~2일"), 0.03, 1.0, 0.9)]
    _, out = run_loop(bot, [QUESTION, "종료"])
    assert "배송은 2일입니다.\n참고한 FAQ: 5행 배송은 며칠 걸리나요?\n" in out


@pytest.mark.parametrize("last", ["exit", "QUIT", EOFError(), KeyboardInterrupt()])
def test_chat_loop_ends_with_a_goodbye(last):
    bot = ScriptedBot(interrupt_after_first=True)  # Ctrl-C mid-answer stops only that answer
    prompts, out = run_loop(bot, [QUESTION, last])
    assert len(prompts) == 2 and bot.closed == 1
    assert "배송은 " in out and "2일" not in out
    assert out.endswith(GOODBYE + "\n")


# The real embedded gemma-3-270m (untrained: poor answers, real Korean text): slow


@pytest.fixture(scope="module")
def embedded_bot(tmp_path_factory):
    """A run folder whose merged/ is the embedded base model (files linked, end ids [1, 106])."""
    run = tmp_path_factory.mktemp("chat-embedded")
    write_run_files(run, link_embedded_merged(run))
    return load_chatbot(run)


@pytest.mark.slow
@pytest.mark.parametrize("end_id", [1, 106])
def test_stream_ends_at_the_end_token_with_nothing_after_it(embedded_bot, end_id):
    ga = embedded_bot.engine.tokenizer.convert_tokens_to_ids("가")
    # the model writes 4 tokens, then must emit the end id, then would write "가가가..."
    ids: list[int] = []
    deltas = list(embedded_bot.stream(QUESTION, max_new_tokens=20, generated_ids=ids,
                                      logits_processor=[script_logits(4, [end_id, ga])]))
    assert len(ids) == 5 and ids[-1] == end_id
    text_before_end = embedded_bot.engine.tokenizer.decode(ids[:4], skip_special_tokens=True)
    assert "".join(deltas) == visible_answer(text_before_end, MARKERS) != ""
    assert not any("가가" in d or "<" in d for d in deltas)


@pytest.mark.slow
def test_max_new_tokens_is_honoured(embedded_bot):
    import torch

    def suppress_end(input_ids, scores):  # so only max_new_tokens can end it
        scores[:, sorted(embedded_bot.engine.end_ids)] = -torch.inf
        return scores

    ids: list[int] = []
    answer = embedded_bot.answer(QUESTION, max_new_tokens=12, generated_ids=ids,
                                 logits_processor=[suppress_end])
    assert 1 <= len(ids) <= 12
    assert len(embedded_bot.engine.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 12


@pytest.mark.slow
def test_streamed_korean_answer_joins_to_the_non_streamed_one(embedded_bot):
    streamed = list(embedded_bot.stream(QUESTION, max_new_tokens=32))
    assert len(streamed) > 1
    answer = "".join(streamed)
    assert any("가" <= ch <= "힣" for ch in answer)
    assert answer == one_shot(embedded_bot, QUESTION, max_new_tokens=32)


# ---------------------------------------------------------------------------------------------
# The doors: `builder ask` and `builder chat` through main(argv)


def test_cli_ask_prints_the_library_answer(tiny_runs, tiny_bot, capsys):
    from builder.doors.cli import main

    expected = tiny_bot.answer("배송비는 얼마인가요?", max_new_tokens=8)
    assert main(["ask", str(tiny_runs[0]), "배송비는 얼마인가요?", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["ask", str(tiny_runs[0].parent / "nope"), "질문"]) == 2
    assert "builder train" in capsys.readouterr().err


def test_cli_chat_loop_ends_on_종료(tiny_runs, monkeypatch, capsys):
    from builder.doors.cli import main

    answers = iter(["", "배송비는?", "종료"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", str(tiny_runs[0]), "--db", str(tiny_runs[0].parent / "chat-log.db")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 3 and next(answers, None) is None  # all three lines were read
    # the answer went into the conversation log --db named
    from builder.owner.log import ConversationLog

    rows = ConversationLog.for_run(tiny_runs[0], str(tiny_runs[0].parent / "chat-log.db")).rows()
    assert [(r["channel"], r["question"]) for r in rows] == [("terminal", "배송비는?")]
    assert rows[0]["answer"] and rows[0]["answer"] in out


# ---------------------------------------------------------------------------------------------
# The grounded path: retrieval, the decline gate, the fact guard and the runaway check, on the
# tiny model with a knowledge of 30 sample FAQ rows


OFF_TOPIC = "파이썬으로 리스트 정렬하는 코드 짜줘"
ON_TOPIC = ["배송비 얼마임?", "원두 개봉했는데 반품돼?", "택배사 어디 씀?"]


@pytest.fixture(scope="module")
def knowledge():
    return sample_knowledge(30)  # the gate here: a shared content noun


@pytest.fixture(scope="module")
def grounded_bot(tiny_bot, knowledge):
    from builder.config import RagConfig
    from builder.prompts import load_template

    return with_template(tiny_bot, load_template("korean"), knowledge=knowledge, rag=RagConfig())


def forcing(tokenizer, text: str, end_id: int = 1):
    """A logits processor that makes the model write `text`, then the end token."""
    return script_logits(0, tokenizer(text, add_special_tokens=False)["input_ids"] + [end_id])


def test_an_off_topic_question_is_declined_without_generating(grounded_bot, monkeypatch):
    from builder.answering.guard import Reply

    def generate(*args, **kwargs):
        raise AssertionError("generate was called for a question the FAQ does not cover")

    monkeypatch.setattr(grounded_bot.engine.model, "generate", generate)
    reply = Reply()
    assert list(grounded_bot.stream(OFF_TOPIC, reply=reply)) == [grounded_bot.rag.decline_message]
    assert reply.text == grounded_bot.rag.decline_message
    assert reply.gated and reply.declined and reply.sources == [] and not reply.fallback
    [batched] = grounded_bot.reply_batch([(OFF_TOPIC, "")])
    assert batched.text == grounded_bot.rag.decline_message and batched.gated


def test_an_faq_question_asked_word_for_word_gets_its_own_answer(grounded_bot, monkeypatch):
    from builder.answering.guard import Reply

    entry = grounded_bot.knowledge.entries[0]
    monkeypatch.setattr(grounded_bot.engine.model, "generate", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("generate was called for an FAQ question asked word for word")))
    reply = Reply()
    assert list(grounded_bot.stream(entry.question, entry.context, reply=reply)) == [entry.answer]
    assert reply.exact and not reply.declined and [h.entry for h in reply.sources] == [entry]
    [batched] = grounded_bot.reply_batch([(entry.question, entry.context)])
    assert batched.exact and batched.text == entry.answer
    grounded_bot.exact_answers = False  # the model itself answers (the eval measures both)
    try:
        with pytest.raises(AssertionError, match="generate was called"):
            grounded_bot.reply(entry.question, entry.context)
    finally:
        grounded_bot.exact_answers = True


def test_a_made_up_price_is_never_shown(grounded_bot):
    from builder.answering.guard import Reply

    question = ON_TOPIC[0]
    best = grounded_bot.knowledge.search(question, grounded_bot.rag.k)[0].entry
    assert best.question == "배송비는 얼마인가요?"
    made_up = forcing(grounded_bot.engine.tokenizer, "배송비는 9,999원입니다. 감사합니다.")
    reply = Reply()
    deltas = list(grounded_bot.stream(question, reply=reply, max_new_tokens=40,
                                      logits_processor=[made_up]))
    assert "9,999" in reply.generated and not any("9,999" in d for d in deltas)
    assert reply.guarded and reply.fallback and reply.invented == [("9999", "원")]
    assert reply.text == "".join(deltas) == best.answer
    assert [h.entry for h in reply.sources] == [best] and not reply.declined


def test_an_answer_copying_an_entrys_context_line_is_never_shown(grounded_bot):
    from builder.answering.guard import Reply

    question = "이대로 주문하면 배송비 붙어요?"
    hits = grounded_bot.knowledge.search(question, grounded_bot.rag.k)
    with_context = next(h.entry for h in hits if h.entry.context)
    echo = forcing(grounded_bot.engine.tokenizer, with_context.context + ")")
    reply = Reply()
    deltas = list(grounded_bot.stream(question, reply=reply, max_new_tokens=60,
                                      logits_processor=[echo]))
    assert reply.generated.startswith(with_context.context)
    assert "".join(deltas) == reply.text == hits[0].entry.answer and reply.fallback


def test_a_copied_answer_streams_as_it_comes_and_a_made_up_turn_is_finished_from_it(grounded_bot):
    from builder.answering.guard import Reply

    question = ON_TOPIC[0]
    best = grounded_bot.knowledge.search(question, grounded_bot.rag.k)[0].entry
    head = best.answer.split(" ")[:3]  # "기본 배송비는 3,000원이며,"
    copied = forcing(grounded_bot.engine.tokenizer, best.answer)
    reply = Reply()
    deltas = list(grounded_bot.stream(question, reply=reply, max_new_tokens=80,
                                      logits_processor=[copied]))
    # token by token as the model copies, not sentence by sentence
    assert len(deltas) > len(best.answer.split()) and deltas[0] == head[0][:len(deltas[0])]
    assert "".join(deltas) == reply.text == best.answer and not reply.guarded
    # the model starts copying, then turns to a price no entry states: the entry's own rest
    turn = forcing(grounded_bot.engine.tokenizer, " ".join(head) + " 오늘은 9,999원입니다.")
    reply = Reply()
    deltas = list(grounded_bot.stream(question, reply=reply, max_new_tokens=80,
                                      logits_processor=[turn]))
    assert "".join(deltas) == reply.text == best.answer and "9,999" not in reply.text
    assert reply.guarded and reply.fallback and reply.invented == [("9999", "원")]


def test_the_guard_keeps_the_checked_sentences_before_an_invented_one(grounded_bot):
    made_up = forcing(grounded_bot.engine.tokenizer, "기본 배송비는 3,000원입니다. 제주는 9,999원입니다.")
    reply = grounded_bot.reply(ON_TOPIC[0], max_new_tokens=40, logits_processor=[made_up])
    assert reply.text == "기본 배송비는 3,000원입니다."
    assert reply.guarded and not reply.fallback and reply.invented == [("9999", "원")]
    # the same answer without a made-up fact is shown whole
    clean = forcing(grounded_bot.engine.tokenizer, "기본 배송비는 3,000원입니다. 제주는 3,000원이 더 붙어요.")
    reply = grounded_bot.reply(ON_TOPIC[0], max_new_tokens=40, logits_processor=[clean])
    assert reply.text == "기본 배송비는 3,000원입니다. 제주는 3,000원이 더 붙어요."
    assert not reply.guarded and not reply.fallback and reply.invented == []


def test_a_looping_answer_is_cut(grounded_bot):
    import torch

    cycle = grounded_bot.engine.tokenizer("배송은 내일", add_special_tokens=False)["input_ids"]
    start = []

    def loop(input_ids, scores):  # the model writes the same few tokens over and over
        start.append(start[0] if start else input_ids.shape[1])
        forced = torch.full_like(scores, float("-inf"))
        forced[:, cycle[(input_ids.shape[1] - start[0]) % len(cycle)]] = 0.0
        return forced

    ids: list[int] = []
    reply = grounded_bot.reply(ON_TOPIC[0], max_new_tokens=60, logits_processor=[loop],
                               generated_ids=ids)
    assert reply.runaway and 16 <= len(ids) < 60, len(ids)
    assert reply.generated.startswith("배송은 내일배송은 내일")
    # words from no entry are not an answer: the best entry's own answer is shown instead
    assert reply.fallback and reply.text == reply.sources[0].entry.answer
    assert "배송은 내일" not in reply.text


def test_an_answer_from_no_entry_is_replaced_by_the_best_entry(grounded_bot, tmp_path):
    import torch

    question = ON_TOPIC[0]
    nowhere = "오늘 날씨가 맑고 바람이 붑니다."  # no number to catch, no words from any entry
    forced_ids = grounded_bot.engine.tokenizer(nowhere, add_special_tokens=False)["input_ids"] + [1]
    said: list = []

    def say(input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, forced_ids[min(len(said), len(forced_ids) - 1)]] = 0.0
        said.append(1)
        return forced

    reply = grounded_bot.reply(question, max_new_tokens=40, logits_processor=[say])
    assert reply.generated == nowhere and reply.fallback and not reply.invented, reply
    assert reply.text == reply.sources[0].entry.answer
    assert reply.guarded and reply.why  # (what the conversation log stores for the owner)


def test_an_answer_that_copies_an_entrys_question_is_replaced_by_the_best_entry(grounded_bot):
    question = ON_TOPIC[0]
    best = grounded_bot.knowledge.search(question, grounded_bot.rag.k)[0].entry
    echo = forcing(grounded_bot.engine.tokenizer, best.question)  # the FAQ line, not its answer
    reply = grounded_bot.reply(question, max_new_tokens=40, logits_processor=[echo])
    assert reply.generated == best.question and reply.fallback and reply.guarded
    assert reply.text == best.answer and [h.entry for h in reply.sources] == [best]


def test_reply_batch_gives_the_replies_of_reply(grounded_bot):
    items = [(q, "") for q in ON_TOPIC] + [(OFF_TOPIC, ""),
                                           ("오늘 출고될까요?", "결제 완료 시각: 화요일 오후 2시 10분")]
    batched = grounded_bot.reply_batch(items, max_new_tokens=12, batch_size=3)
    for (question, context), got in zip(items, batched):
        expected = grounded_bot.reply(question, context, max_new_tokens=12)
        assert got.text == expected.text, question
        for flag in ("declined", "gated", "guarded", "fallback", "runaway"):
            assert getattr(got, flag) == getattr(expected, flag), (question, flag)
        assert [h.entry for h in got.sources] == [h.entry for h in expected.sources], question
    assert batched[3].gated and not any(r.gated for r in batched[:3] + batched[4:])


def test_format_sources_names_the_faq_lines(grounded_bot):
    from builder.doors.terminal import format_sources
    from builder.answering.guard import Reply

    hits = grounded_bot.ground(ON_TOPIC[1]).hits
    text = format_sources(Reply(sources=hits))
    assert text.startswith("참고한 FAQ: ") and text.count(" · ") == len(hits) - 1
    for hit in hits:
        assert f"{hit.entry.line}행 {hit.entry.question}" in text
    assert "22행 원두를 개봉했는데 반품되나요?" in text  # sample row 20, under the header
    assert format_sources(Reply()) == ""


def test_a_grounded_run_loads_its_knowledge(tiny_runs, knowledge, tmp_path):
    from builder.config import Config, RagConfig

    run = tmp_path / "grounded"
    run.mkdir()
    (run / "merged").symlink_to(tiny_runs[0] / "merged")
    shutil.copy(tiny_runs[0] / "meta.json", run / "meta.json")
    shutil.copy(KOREAN_TEMPLATE, run / "template.yaml")
    meta = json.loads((run / "meta.json").read_text())
    meta["config"] = Config(rag=RagConfig(k=2)).to_dict()
    (run / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="builder index"):
        load_chatbot(run)
    knowledge.save(run / "knowledge")
    bot = load_chatbot(run)
    assert bot.template.grounded and bot.rag.k == 2
    assert bot.knowledge.entries == knowledge.entries
    reply = bot.reply(OFF_TOPIC)
    assert reply.gated and reply.text == bot.rag.decline_message


def less_fitting(bot):
    """An on-topic question, its k hits, and those after the first that cover it less."""
    for question in ON_TOPIC:  # a question whose second entry covers less of it than the first
        hits = bot.knowledge.search(question, bot.rag.k)
        worse = [h for h in hits[1:] if bot.knowledge.coverage(question, h.entry)
                 < bot.knowledge.coverage(question, hits[0].entry)]
        if worse and bot.knowledge.relevant(question, hits):
            return question, hits, worse
    raise AssertionError("no question here has a less fitting second entry")


@pytest.mark.parametrize("entries", ["fitting", "all"])
def test_an_answer_copied_from_an_entry_that_fits_less_shows_the_best_entry(grounded_bot,
                                                                            monkeypatch, entries):
    import dataclasses

    from builder.answering.guard import Reply

    bot = grounded_bot
    monkeypatch.setattr(bot, "rag", dataclasses.replace(bot.rag, prompt_entries=entries))
    question, hits, worse = less_fitting(bot)
    reply = Reply()
    copy = forcing(bot.engine.tokenizer, worse[0].entry.answer)
    deltas = list(bot.stream(question, reply=reply, max_new_tokens=80, logits_processor=[copy]))
    assert reply.generated.startswith(worse[0].entry.answer[:10])
    assert "".join(deltas) == reply.text == hits[0].entry.answer
    # all k in the prompt: a copy of one that fits less; only the fitting ones: words from none
    assert reply.fallback and reply.why == {
        "all": "an entry fitting the question less than the best",
        "fitting": "words from no entry's answer"}[entries]
    assert [h.entry for h in reply.sources] == [hits[0].entry]


def test_the_prompt_carries_the_entries_that_fit_the_question_as_well_as_the_best(
        grounded_bot, monkeypatch):
    import dataclasses

    bot = grounded_bot
    question, hits, worse = less_fitting(bot)
    fitting = [h.entry for h in hits if h not in worse]
    prompts, generate = [], bot.engine.stream

    def recording(prompt, **kwargs):
        prompts.append(prompt)
        yield from generate(prompt, **kwargs)

    monkeypatch.setattr(bot.engine, "stream", recording)
    copy = forcing(bot.engine.tokenizer, hits[0].entry.answer)
    reply = bot.reply(question, max_new_tokens=80, logits_processor=[copy])
    assert prompts[-1] == bot.template.render(question, "", bot.template.render_faq(fitting))
    assert reply.text == hits[0].entry.answer and not reply.fallback
    assert [h.entry for h in reply.sources] == fitting  # the entries the answer was given
    monkeypatch.setattr(bot, "rag", dataclasses.replace(bot.rag, prompt_entries="all"))
    bot.reply(question, max_new_tokens=4)
    assert prompts[-1] == bot.template.render(question, "",
                                              bot.template.render_faq([h.entry for h in hits]))


def test_ready_loads_what_the_first_answer_would_wait_for(tiny_bot, knowledge):
    from builder.config import RagConfig
    from builder.answering.knowledge import Knowledge
    from builder.prompts import load_template

    fresh = Knowledge.build(knowledge.entries, calibrate=False)
    bot = with_template(tiny_bot, load_template("korean"), knowledge=fresh, rag=RagConfig())
    assert not fresh._per_entry and fresh._exact is None
    ready(bot)
    assert {"terms", "nouns"} <= set(fresh._per_entry) and fresh._exact is not None


def test_a_preference_pairs_prompt_is_token_for_token_what_the_engine_was_given(grounded_bot,
                                                                                monkeypatch):
    """builder prefer records each pair's prompt: it is the prompt the model's sampled answer
    came from (the fitting entries, not all k retrieved), token for token."""
    from builder.config import load_config
    from builder.training.pairs import build_pairs
    from fixtures import sample_rows

    engine, given = grounded_bot.engine, []
    generate = engine.model.generate

    def recording(**kwargs):  # the ids the model really reads, row by row (left padding off)
        for row, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            given.append([t for t, m in zip(row, mask) if m])
        return generate(**kwargs)

    monkeypatch.setattr(engine.model, "generate", recording)
    cfg = load_config(None, ["prefer.samples=2", "prefer.max_new_tokens=6"])
    try:
        pairs, counts = build_pairs(grounded_bot, sample_rows(3), [], cfg, log=lambda *_: None)
    finally:
        grounded_bot.exact_answers = True  # build_pairs asks for the model's own answers
    assert pairs, counts  # a random model misses the references' facts
    shorter = 0  # pairs whose prompt carries fewer entries than were retrieved
    for pair in pairs:
        assert engine.encode(pair["prompt"]) in given
        kb = grounded_bot.knowledge
        fitting = kb.fitting(pair["question"], kb.search(pair["question"], grounded_bot.rag.k))
        faq = grounded_bot.template.render_faq([h.entry for h in fitting])
        assert pair["prompt"] == grounded_bot.template.render(pair["question"], "", faq)
        shorter += len(fitting) < grounded_bot.rag.k
    assert shorter  # where all k and the fitting ones differ, the pair has the fitting ones
