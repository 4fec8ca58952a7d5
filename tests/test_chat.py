"""Guards builder/chat.py: answers stop at end tokens and markers, stream safe deltas, load runs."""

import json
import shutil
import threading
from pathlib import Path

import pytest

from builder.chat import (
    GOODBYE,
    Chatbot,
    answer_deltas,
    chat_loop,
    fit_prompt,
    load_dtype,
    partial_marker_length,
    visible_answer,
)
from builder.errors import UserError

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


def test_a_prompt_that_fits_is_left_whole():
    assert "".join(fit_prompt(char_encode, "질문", "참고", 9)) == "Q:질문|C:참고"


def test_the_context_is_cut_first_from_its_end():
    prompt = "".join(fit_prompt(char_encode, "배송은 며칠?", "가나다라마바사", 15))
    assert prompt == "Q:배송은 며칠?|C:가나다"
    # no room for any of the context: the block goes, the question stays whole
    assert "".join(fit_prompt(char_encode, "배송은 며칠?", "가나다라마바사", 10)) == "Q:배송은 며칠?"


def test_then_the_question_loses_its_middle_keeping_its_end():
    question = "안녕하세요 " + "긴 설명 " * 50 + "배송은 며칠 걸리나요?"
    prompt = "".join(fit_prompt(char_encode, question, "참고 " * 100, 32))
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
    shutil.copy(KOREAN_TEMPLATE, run / "template.yaml")
    meta = {"base_model": "embedded:gemma-3-270m", "base_model_path": str(base_path),
            "template": "korean", "end_token_ids": [1, 106]}
    (run / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


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
    return Chatbot.load(tiny_runs[0])


def test_load_prefers_merged_upcasts_bf16_on_cpu_and_collects_end_ids(tiny_runs, tiny_bot):
    import torch

    saved = json.loads((tiny_runs[0] / "merged" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    assert tiny_bot.model.dtype == torch.float32
    assert not hasattr(tiny_bot.model, "peft_config")
    assert tiny_bot.end_ids == {1, 106}
    assert tiny_bot.template.name == "korean"


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

    bot = Chatbot.load(tiny_runs[1])
    assert hasattr(bot.model, "peft_config")
    ids: list[int] = []
    answer = bot.answer(QUESTION, max_new_tokens=5, generated_ids=ids,
                        logits_processor=[korean_only(bot.tokenizer)])
    assert answer and 1 <= len(ids) <= 5

    # the same logits as the base model with the adapter applied by hand, and not the base's
    meta = json.loads((tiny_runs[1] / "meta.json").read_text())
    prompt = bot._generate_kwargs(QUESTION, "", [])["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=torch.float32).eval()
    with torch.no_grad():
        base_logits = base(prompt).logits
        expected = PeftModel.from_pretrained(base, tiny_runs[1] / "adapter").eval()(prompt).logits
        got = bot.model(prompt).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(base_logits, expected, atol=1e-3)


def test_stream_joins_to_the_one_shot_answer(tiny_bot):
    for question, context in ((QUESTION, ""), ("환불 되나요?", "구매 후 7일 이내 환불 가능")):
        options = dict(max_new_tokens=24, logits_processor=[korean_only(tiny_bot.tokenizer)])
        streamed = list(tiny_bot.stream(question, context, **options))
        answer = "".join(streamed)
        assert len(streamed) > 1 and any("가" <= ch <= "힣" for ch in answer), streamed
        assert answer == tiny_bot.generate_text(question, context, **options)


def test_a_long_question_and_context_leave_room_for_the_answer(tiny_bot):
    assert tiny_bot.context_length == 1024  # the tiny model's max_position_embeddings
    question = "안녕하세요. " + "주문한 상품에 대해 " * 400 + "배송은 며칠 걸리나요?"
    context = "구매 후 7일 이내 환불 가능. " * 400
    for q, c in ((QUESTION, context), (question, ""), (question, context)):
        prompt = tiny_bot._generate_kwargs(q, c, [], max_new_tokens=100)["input_ids"][0].tolist()
        assert 1024 - 100 - 10 < len(prompt) <= 1024 - 100  # cut, and no more than needed
        text = tiny_bot.tokenizer.decode(prompt, skip_special_tokens=True)
        assert prompt[0] == tiny_bot.tokenizer.bos_token_id and text.endswith("### 답변:\n")
        if q == QUESTION:  # the context is cut from its end; the question stays whole
            assert QUESTION in text and "### 참고:\n구매 후 7일 이내 환불 가능." in text
        else:  # the context goes; the question keeps its start and its end
            assert "### 참고" not in text and "안녕하세요." in text
            assert "배송은 며칠 걸리나요?" in text and len(text) < len(question)
    ids: list[int] = []
    always_ga = [script_logits(0, [tiny_bot.tokenizer.convert_tokens_to_ids("가")])]
    answer = tiny_bot.answer(question, context, max_new_tokens=100, generated_ids=ids,
                             logits_processor=always_ga)
    assert answer == "가" * 100 and len(ids) == 100
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
    ga = tiny_bot.tokenizer.convert_tokens_to_ids("가")
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
        Chatbot.load(tmp_path / "missing")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"neither merged/ nor adapter/.*builder merge"):
        Chatbot.load(empty)
    with pytest.raises(UserError, match=rf"{tiny_runs[1]}: no merged model.*builder merge"):
        Chatbot.load(tiny_runs[1], use="merged")

    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_runs[1], no_template)
    (no_template / "template.yaml").unlink()
    with pytest.raises(UserError, match=r"template.yaml: missing"):
        Chatbot.load(no_template)


# The terminal loop with scripted input


class ScriptedBot:
    def __init__(self, interrupt_after_first=False):
        self.questions: list[str] = []
        self.closed = 0
        self.interrupt = interrupt_after_first

    def stream(self, question):
        self.questions.append(question)
        try:
            yield "배송은 "
            if self.interrupt:
                raise KeyboardInterrupt
            yield "2일입니다."
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
    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    run = tmp_path_factory.mktemp("chat-embedded")
    (run / "merged").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (run / "merged" / name).symlink_to(source / name)
    generation = json.loads((source / "generation_config.json").read_text())
    generation["eos_token_id"] = [1, 106]
    (run / "merged" / "generation_config.json").write_text(json.dumps(generation))
    write_run_files(run, source)
    return Chatbot.load(run)


@pytest.mark.slow
@pytest.mark.parametrize("end_id", [1, 106])
def test_stream_ends_at_the_end_token_with_nothing_after_it(embedded_bot, end_id):
    ga = embedded_bot.tokenizer.convert_tokens_to_ids("가")
    # the model writes 4 tokens, then must emit the end id, then would write "가가가..."
    ids: list[int] = []
    deltas = list(embedded_bot.stream(QUESTION, max_new_tokens=20, generated_ids=ids,
                                      logits_processor=[script_logits(4, [end_id, ga])]))
    assert len(ids) == 5 and ids[-1] == end_id
    text_before_end = embedded_bot.tokenizer.decode(ids[:4], skip_special_tokens=True)
    assert "".join(deltas) == visible_answer(text_before_end, MARKERS) != ""
    assert not any("가가" in d or "<" in d for d in deltas)


@pytest.mark.slow
def test_max_new_tokens_is_honoured(embedded_bot):
    import torch

    def suppress_end(input_ids, scores):  # so only max_new_tokens can end it
        scores[:, sorted(embedded_bot.end_ids)] = -torch.inf
        return scores

    ids: list[int] = []
    answer = embedded_bot.answer(QUESTION, max_new_tokens=12, generated_ids=ids,
                                 logits_processor=[suppress_end])
    assert 1 <= len(ids) <= 12
    assert len(embedded_bot.tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 12


@pytest.mark.slow
def test_streamed_korean_answer_joins_to_the_non_streamed_one(embedded_bot):
    streamed = list(embedded_bot.stream(QUESTION, max_new_tokens=32))
    assert len(streamed) > 1
    answer = "".join(streamed)
    assert any("가" <= ch <= "힣" for ch in answer)
    assert answer == embedded_bot.generate_text(QUESTION, max_new_tokens=32)


# ---------------------------------------------------------------------------------------------
# The doors: `builder ask` and `builder chat` through main(argv)


def test_cli_ask_prints_the_library_answer(tiny_runs, tiny_bot, capsys):
    from builder.cli import main

    expected = tiny_bot.answer("배송비는 얼마인가요?", max_new_tokens=8)
    assert main(["ask", str(tiny_runs[0]), "배송비는 얼마인가요?", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["ask", str(tiny_runs[0].parent / "nope"), "질문"]) == 2
    assert "builder train" in capsys.readouterr().err


def test_cli_chat_loop_ends_on_종료(tiny_runs, monkeypatch, capsys):
    from builder.cli import main

    answers = iter(["", "배송비는?", "종료"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    assert main(["chat", str(tiny_runs[0])]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 3 and next(answers, None) is None  # all three lines were read
