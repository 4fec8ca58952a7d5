"""The merge stage: a run's LoRA adapter folded into the base model, saved as 16-bit safetensors.

    builder merge runs/demo          # -> runs/demo/merged/

The merge is computed in fp32 and saved in bf16 by default (16-bit: half the size, what the
Hub and GPUs want). On CPU, `builder.answering.chatbot` upcasts it to fp32 on load, because bf16 matrix
work on CPU is about 2.5x slower. `generation_config.json` lists every end token the model can
end an answer with, so generation stops there. Re-running with the same adapter does nothing.
On the Unsloth path, Unsloth's own merged-16-bit save is used.

The merged tokenizer carries a chat template (`chat_template.jinja`, also under "chat_template"
in tokenizer_config.json) that renders the run's own prompt template, so
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` and the chat endpoints
of vLLM, TGI or llama.cpp give the model exactly the prompt it was trained on:

    [{"role": "system", "content": FAQ_BLOCK},    # the {faq} slot: entries as faq_entry writes them
     {"role": "context", "content": "..."},       # optional: the {input} slot (참고)
     {"role": "user", "content": "배송은 며칠 걸리나요?"}]

Only the last user message is the question (the model was trained on single questions); a
final assistant message after it is rendered as the answer followed by EOS, as in training.
"""

import json
import shutil
import string
from pathlib import Path

from builder.errors import UserError
from builder.run import adapter_problem, remove_stale_staging, staging_dir

MERGE_STAGING = ".merged-"  # RUN/.merged-PID...: a merge under way (or a killed one's)

# Message text: a string, or OpenAI-style parts of which the text ones count
_MESSAGE_TEXT = """\
  {%- if message.content is string -%}
    {%- set text = message.content -%}
  {%- else -%}
    {%- set text = message.content | selectattr("type", "equalto", "text")
                   | map(attribute="text") | join("") -%}
  {%- endif -%}"""
_SLOTS = {"faq": "ns.faq", "instruction": "ns.question", "input": "ns.context"}


def _jinja_prompt(prompt: str, source: str) -> str:
    """A template prompt ("...{faq}...{instruction}...") as Jinja lines: literal text as string
    literals (so nothing in it is read as Jinja), slots as the collected message texts."""
    lines = []
    for literal, field, spec, conversion in string.Formatter().parse(prompt):
        if literal:
            lines.append("  {{- " + json.dumps(literal, ensure_ascii=False) + " -}}")
        if field is not None:
            if field not in _SLOTS or spec or conversion:
                raise UserError(f"{source}: {{{field}}} is not a slot a chat template can fill "
                                f"(use {{faq}}, {{instruction}}, {{input}})")
            lines.append("  {{- " + _SLOTS[field] + " -}}")
    return "\n".join(lines)


def chat_template(template) -> str:
    """The Jinja chat template that renders `template` (a builder.prompts.Template) from chat
    messages exactly as Chatbot renders it (see the module docstring), BOS first. Every tag
    trims the template's own whitespace: only the string literals and messages are output."""
    source = f"template {template.name!r}"
    return "\n".join([
        f"{{#- builder: the {template.name!r} prompt template. System messages fill the FAQ "
        "block, a 'context' message the context, the last user message the question. -#}",
        '{%- set ns = namespace(faq="", context="", question="", answer=none) -%}',
        "{%- for message in messages -%}",
        _MESSAGE_TEXT,
        '  {%- if message.role == "system" -%}',
        '    {%- set ns.faq = ns.faq ~ ("\\n\\n" if ns.faq else "") ~ text -%}',
        '  {%- elif message.role == "context" -%}',
        "    {%- set ns.context = text -%}",
        '  {%- elif message.role == "user" -%}',
        "    {%- set ns.question = text -%}",
        "    {%- set ns.answer = none -%}",
        '  {%- elif message.role == "assistant" -%}',
        "    {%- set ns.answer = text -%}",
        "  {%- endif -%}",
        "{%- endfor -%}",
        "{{- bos_token -}}",
        "{#- as Template.render: the context block only when the context has text -#}",
        "{%- if ns.context | trim -%}",
        _jinja_prompt(template.prompt_with_input, source),
        "{%- else -%}",
        _jinja_prompt(template.prompt, source),
        "{%- endif -%}",
        "{#- a conversation ending in an answer is rendered as training saw it: answer, EOS -#}",
        "{%- if ns.answer is not none -%}",
        "  {{- ns.answer -}}",
        "  {{- eos_token -}}",
        "{%- endif -%}",
        "",
    ])


def write_chat_template(model_dir: Path, template) -> None:
    """Put the run's chat template in model_dir: chat_template.jinja (what transformers 5 and
    vLLM read first) and tokenizer_config.json's "chat_template" (older readers, TGI)."""
    text = chat_template(template)
    (model_dir / "chat_template.jinja").write_text(text, encoding="utf-8")
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["chat_template"] = text
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                               encoding="utf-8")


def run_template(run_dir: Path):
    """The template the run trained with (RUN/template.yaml)."""
    from builder.prompts import parse_template

    path = run_dir / "template.yaml"
    if not path.is_file():
        raise UserError(f"{path}: missing; {run_dir} was not written by `builder train`")
    return parse_template(path.read_text(encoding="utf-8"), str(path))


def adapter_fingerprint(adapter_dir: Path) -> str:
    from builder.training.sft import file_sha256

    return file_sha256(*sorted(adapter_dir.glob("adapter_*")))


def read_run(run_dir: Path) -> dict:
    if not (run_dir / "meta.json").is_file():
        raise UserError(
            f"{run_dir} is not a run folder (no meta.json). Train one with: "
            f"builder train PREPARED_DIR --out {run_dir}"
        )
    if not (run_dir / "adapter").is_dir():
        raise UserError(
            f"{run_dir} has no finished adapter (adapter/). Finish the run with: "
            f"builder train PREPARED_DIR --out {run_dir} --resume"
        )
    # a copy or a save cut short would merge as noise, or fail inside peft
    problem = adapter_problem(run_dir / "adapter")
    if problem:
        raise UserError(f"{problem}: the adapter is incomplete (was training stopped while it "
                        f"was saved?); train it again with `builder train PREPARED_DIR --out "
                        f"{run_dir}` (or add --resume while its checkpoints/ are there)")
    return json.loads((run_dir / "meta.json").read_text())


def write_generation_config(merged_dir: Path, end_ids: list[int], tokenizer,
                            repetition_penalty: float = 1.0) -> None:
    """Every end token, so `generate` stops on whichever the model emits, and the run's
    repetition penalty, so an answer that starts to loop is pushed off it."""
    from transformers import GenerationConfig

    path = merged_dir / "generation_config.json"
    config = GenerationConfig.from_pretrained(merged_dir) if path.exists() else GenerationConfig()
    config.eos_token_id = list(end_ids)
    if repetition_penalty > 1:
        config.repetition_penalty = repetition_penalty
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(merged_dir)


def merge_hf(meta: dict, adapter_dir: Path, out: Path, dtype: str) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from builder.training.models import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    model.to(target).save_pretrained(out)
    load_tokenizer(adapter_dir).save_pretrained(out)


def merge_unsloth(meta: dict, adapter_dir: Path, out: Path) -> None:
    import unsloth  # noqa: F401  (before transformers)
    from unsloth import FastLanguageModel

    cfg = meta["config"]
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir),
        max_seq_length=cfg["model"]["max_seq_length"],
        load_in_4bit=cfg["model"]["load_in_4bit"],
    )
    model.save_pretrained_merged(str(out), tokenizer, save_method="merged_16bit")


def merge(run_dir: str | Path, *, dtype: str = "bf16", log=print) -> Path:
    """Write RUN_DIR/merged/ (complete or absent); returns it."""
    run_dir = Path(run_dir)
    remove_stale_staging(run_dir, MERGE_STAGING)  # a killed merge's: a whole model each
    meta = read_run(run_dir)
    adapter_dir, merged_dir = run_dir / "adapter", run_dir / "merged"
    fingerprint = adapter_fingerprint(adapter_dir)
    template = run_template(run_dir)
    record = merged_dir / "merge.json"
    if record.is_file() and json.loads(record.read_text()).get("adapter_sha256") == fingerprint:
        write_chat_template(merged_dir, template)  # cheap; a folder merged before it had none
        log(f"already merged: {merged_dir}")
        return merged_dir

    from builder.training.models import cuda_available, load_tokenizer

    use_unsloth = meta["backend"] == "unsloth" and cuda_available()
    staging = staging_dir(run_dir, MERGE_STAGING)
    try:
        log(f"merging {adapter_dir} into {meta['base_model']} ({'unsloth' if use_unsloth else 'hf'}) ...")
        if use_unsloth:
            merge_unsloth(meta, adapter_dir, staging)
            dtype = "16-bit (unsloth merged_16bit)"
        else:
            merge_hf(meta, adapter_dir, staging, dtype)
        penalty = meta.get("config", {}).get("rag", {}).get("repetition_penalty", 1.0)
        write_generation_config(staging, meta["end_token_ids"],
                                load_tokenizer(staging), penalty)
        write_chat_template(staging, template)
        if (run_dir / "knowledge").is_dir():  # the FAQ it answers from travels with the model
            shutil.copytree(run_dir / "knowledge", staging / "knowledge")
        (staging / "merge.json").write_text(json.dumps({
            "adapter_sha256": fingerprint,
            "base_model": meta["base_model"],
            "dtype": dtype,
            "end_token_ids": meta["end_token_ids"],
        }, indent=2))
        shutil.rmtree(merged_dir, ignore_errors=True)
        staging.rename(merged_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"merged model ({dtype}) -> {merged_dir}; end tokens {meta['end_token_ids']}")
    return merged_dir
