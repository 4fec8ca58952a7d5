"""Guards builder/training/merge.py's chat template: apply_chat_template gives the prompt Chatbot encodes."""

import json
import shutil
from pathlib import Path

import pytest

from builder.answering.chatbot import Chatbot
from builder.answering.engines.transformers import TransformersEngine
from builder.answering.grounding import Grounding
from builder.training.merge import chat_template, merge
from builder.errors import UserError
from builder.prompts import load_template, parse_template
from fixtures import PLAIN_TEMPLATE, left_staging, sample_rows

PROMPTS = Path(__file__).parents[1] / "prompts"
QUESTION = "배송은 보통 며칠 걸리나요?"
CONTEXT = "주문번호 1234, 제주도 배송"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as training leaves it: meta.json, template.yaml, a LoRA adapter over a tiny
    random gemma3 (real tokenizer) saved with its tokenizer."""
    from fixtures import make_tiny_gemma, write_run
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("merge-tiny")
    base = make_tiny_gemma(tmp / "base")
    run = write_run(tmp / "run", "korean", meta={
        "base_model": "tiny-gemma3", "base_model_path": str(base), "backend": "hf",
        "template": "korean", "end_token_ids": [1, 106]})
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(run / "adapter")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / name, run / "adapter" / name)
    merge(run, dtype="fp32", log=lambda *_: None)
    return run


@pytest.fixture(scope="module")
def merged_tokenizer(tiny_run):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_run / "merged")


def faq_block(template, n: int = 3) -> str:
    from builder.answering.knowledge import Entry

    rows = sample_rows(n)
    return template.render_faq([Entry(i, i + 2, r["instruction"], r["input"], r["output"])
                                for i, r in enumerate(rows)])


def messages(faq: str, question: str, context: str = "") -> list[dict]:
    turns = [{"role": "system", "content": faq}] if faq else []
    if context:
        turns.append({"role": "context", "content": context})
    return turns + [{"role": "user", "content": question}]


def test_merge_writes_the_runs_chat_template(tiny_run, merged_tokenizer):
    template = load_template(PROMPTS / "korean.yaml")
    merged = tiny_run / "merged"
    expected = chat_template(template)
    assert (merged / "chat_template.jinja").read_text(encoding="utf-8") == expected
    config = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == expected
    assert merged_tokenizer.chat_template == expected
    # a folder merged before chat templates existed gets one on the (otherwise no-op) re-run
    (merged / "chat_template.jinja").unlink()
    merge(tiny_run, log=lambda *_: None)
    assert (merged / "chat_template.jinja").read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("context", ["", CONTEXT])
def test_apply_chat_template_gives_the_ids_chatbot_generates_from(tiny_run, merged_tokenizer,
                                                                  context):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_run / "merged")
    template = load_template(PROMPTS / "korean.yaml")
    bot = Chatbot(TransformersEngine(model, merged_tokenizer, end_ids={1, 106},
                                     stop_markers=template.stop_markers), template)
    faq = faq_block(bot.template)
    expected = bot.engine.encode(bot.prompt(Grounding(QUESTION, context, faq=faq)))
    got = merged_tokenizer.apply_chat_template(messages(faq, QUESTION, context),
                                               add_generation_prompt=True)["input_ids"]
    assert got == expected
    assert got[0] == merged_tokenizer.bos_token_id and got.count(got[0]) == 1
    # earlier turns do not change it: the model was trained on single questions
    history = [{"role": "user", "content": "환불 되나요?"}, {"role": "assistant", "content": "네."}]
    turns = messages(faq, QUESTION, context)
    longer = turns[:-1] + history + turns[-1:]
    assert merged_tokenizer.apply_chat_template(longer, add_generation_prompt=True)[
        "input_ids"] == expected


@pytest.mark.parametrize("name", ["korean", "alpaca", "plain"])
def test_every_template_renders_as_template_render(merged_tokenizer, name):
    template = (parse_template(PLAIN_TEMPLATE, "plain") if name == "plain"
                else load_template(PROMPTS / f"{name}.yaml"))
    merged_tokenizer.chat_template = chat_template(template)
    faq = faq_block(template) if template.grounded else ""
    for context in ("", CONTEXT, "  \n"):  # whitespace only: the prompt without context
        expected = merged_tokenizer.bos_token + template.render(QUESTION, context, faq)
        got = merged_tokenizer.apply_chat_template(messages(faq, QUESTION, context),
                                                   tokenize=False, add_generation_prompt=True)
        assert got == expected, (name, context)
    # text parts, as OpenAI clients send them, are the same message
    parts = [{"role": "user", "content": [{"type": "text", "text": "배송은 "},
                                          {"type": "text", "text": "며칠?"}]}]
    assert merged_tokenizer.apply_chat_template(parts, tokenize=False) == (
        merged_tokenizer.bos_token + template.render("배송은 며칠?", "", ""))


def test_a_finished_conversation_renders_as_a_training_example(merged_tokenizer):
    from builder.training.rows import tokenize_row

    template = load_template(PROMPTS / "korean.yaml")
    merged_tokenizer.chat_template = chat_template(template)
    faq = faq_block(template)
    row = {"instruction": QUESTION, "input": "", "faq": faq, "output": "보통 2~3일 걸립니다."}
    turns = messages(faq, QUESTION) + [{"role": "assistant", "content": row["output"]}]
    got = merged_tokenizer.apply_chat_template(turns)["input_ids"]
    expected = tokenize_row(merged_tokenizer, template, row, 4096,
                            merged_tokenizer.eos_token_id)["input_ids"]
    assert got == expected and got[-1] == merged_tokenizer.eos_token_id


def test_template_text_that_looks_like_jinja_stays_text(merged_tokenizer):
    text = PLAIN_TEMPLATE.replace("### 답변:", '### 답변 {{{{ x }}}} {{% raw %}} "\\ #}}:')
    template = parse_template(text, "odd")
    merged_tokenizer.chat_template = chat_template(template)
    got = merged_tokenizer.apply_chat_template(messages("", QUESTION), tokenize=False)
    assert got == merged_tokenizer.bos_token + template.render(QUESTION)
    assert '{{ x }} {% raw %} "\\ #}:' in got


def test_push_model_uploads_the_chat_template(tiny_run, hub_server):
    from huggingface_hub import HfApi

    from builder.deploy import hub

    hub.push_model(tiny_run, "tester/faq-chat-template", token=hub_server.token)
    assert "chat_template.jinja" in HfApi().list_repo_files("tester/faq-chat-template")
    uploaded = hub_server.repo("tester/faq-chat-template", "model").head.files
    assert uploaded["chat_template.jinja"].content == (
        tiny_run / "merged" / "chat_template.jinja").read_bytes()
    assert json.loads(uploaded["tokenizer_config.json"].content)["chat_template"]


@pytest.mark.parametrize("damage, problem", [
    ("weights cut short", "adapter_model.safetensors is cut short"),
    ("weights empty", "adapter_model.safetensors is empty or cut short"),
    ("weights missing", "adapter_model.safetensors is missing"),
    ("config empty", "adapter_config.json is empty or cut short"),
])
def test_merge_refuses_an_incomplete_adapter_and_says_train_again(tiny_run, tmp_path, damage,
                                                                   problem):
    """merge refuses an adapter/ whose config or weights are missing, empty or cut short (a
    kill while it was saved), naming the file and how to train it again."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("merged"))
    weights = run / "adapter" / "adapter_model.safetensors"
    if damage == "weights cut short":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "weights empty":
        weights.write_bytes(b"")
    elif damage == "weights missing":
        weights.unlink()
    else:
        (run / "adapter" / "adapter_config.json").write_text("")
    with pytest.raises(UserError) as refused:
        merge(run, log=lambda *_: None)
    assert problem in str(refused.value)
    assert f"train it again with `builder train PREPARED_DIR --out {run}`" in str(refused.value)
    assert not (run / "merged").exists()


def test_merge_removes_the_staging_folders_a_killed_merge_left(tiny_run):
    """merge removes the .merged-* folders a killed merge left (a merged model each), not one
    a running merge is writing."""
    stale, live = left_staging(tiny_run, ".merged-")
    merge(tiny_run, log=lambda *_: None)  # already merged: nothing else to do
    assert not any(p.exists() for p in stale) and live.is_dir()
    shutil.rmtree(live)
