"""The cards the Hub shows: a dataset card for a prepared FAQ, a model card for a run's merged
model or adapter, a card for its GGUF, each from what the run folder recorded (meta.json,
metrics.json, knowledge/index.json, eval/report.json rendered by builder.evaluation.report)."""

import json
import re
from pathlib import Path

from builder.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
SPLITS = ("train", "test")
COLUMNS = {
    "instruction": "the customer's question (질문)",
    "input": "optional context for the question (참고); often empty",
    "output": "the shop's answer (답변)",
}

# The Hub's size_categories labels, each with the row count it stays under
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"),
                   (10**6, "100K<n<1M"), (10**7, "1M<n<10M"), (10**8, "10M<n<100M"),
                   (10**9, "100M<n<1B"), (10**10, "1B<n<10B"), (10**11, "10B<n<100B"),
                   (10**12, "100B<n<1T")]
QUESTION = "배송은 얼마나 걸리나요?"  # the sample question in the model card
HUB_IDS = {"embedded:gemma-3-270m": "google/gemma-3-270m"}  # the embedded model's Hub original


def size_category(rows: int) -> str:
    """The Hub's size_categories label for a dataset of `rows` rows, e.g. 150000 -> "100K<n<1M"."""
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "n>1T")


def dataset_card(repo_id: str, report: dict) -> str:
    """README.md for a prepared data folder: YAML for the Hub and load_dataset, then the facts."""
    from huggingface_hub import DatasetCard, DatasetCardData

    split = report.get("split", {})
    total = sum(split.get(s, 0) for s in SPLITS) or report.get("rows_kept", 0)
    data_files = [{"split": s, "path": f"data/{s}-*"} for s in SPLITS]  # what load_dataset reads
    data = DatasetCardData(
        language=["ko"], license="unknown", pretty_name=repo_id.split("/")[1],
        task_categories=["question-answering", "text-generation"],
        size_categories=[size_category(total)],
        configs=[{"config_name": "default", "data_files": data_files}])
    columns = "\n".join(f"| `{c}` | {meaning} |" for c, meaning in COLUMNS.items())
    splits = "\n".join(f"| {s} | {split.get(s, '?')} |" for s in SPLITS)
    body = f"""# {repo_id}

Korean FAQ pairs for fine-tuning a shop's chatbot, validated and split by `builder prepare`.

## Source

| | |
|---|---|
| file | `{report.get("source_file", "?")}` |
| sha256 | `{report.get("source_sha256", "?")}` |
| rows read / kept | {report.get("rows_read", "?")} / {report.get("rows_kept", "?")} |

## Splits

| split | rows |
|---|---|
{splits}

Split at random with seed {report.get("seed", "?")} and test_size {report.get("test_size", "?")}.

## Columns

| column | meaning |
|---|---|
{columns}

Files: `data/{{train,test}}-00000-of-00001.parquet` (what `load_dataset` reads) and the same rows
as UTF-8 CSV in `train.csv` and `test.csv`.

## Load

```python
from datasets import load_dataset

ds = load_dataset("{repo_id}")
print(ds["train"][0])
```
"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _run_template(run_dir: Path, name: str | None):
    """The template the run trained with: its copy in the run folder, else the shipped one."""
    from builder.prompts import load_template, parse_template

    try:
        if (run_dir / "template.yaml").is_file():
            text = (run_dir / "template.yaml").read_text(encoding="utf-8")
            return parse_template(text, "template.yaml")
        return load_template(name) if name else None
    except UserError:
        return None


def model_card(run_dir, what: str = "merged", *, repo_id: str = "OWNER/NAME") -> str:
    """README.md for a run's merged model or adapter, from what the run folder recorded."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "meta.json")
    metrics = _read_json(run_dir / "metrics.json")
    report = _read_json(run_dir / "eval" / "report.json")
    evaluation = report.get("summary", {})
    knowledge = _read_json(run_dir / "knowledge" / "index.json")
    eos = _read_json(run_dir / "merged" / "generation_config.json").get("eos_token_id")
    eos = eos if eos is not None else meta.get("end_token_ids")
    config = run_dir / "config.yaml"
    base = meta.get("base_model")
    base_id = HUB_IDS.get(base, base)
    template = _run_template(run_dir, meta.get("template"))

    data = ModelCardData(
        language=["ko"], library_name="transformers" if what == "merged" else "peft",
        pipeline_tag="text-generation", tags=["korean", "faq", "chatbot", "lora"],
        # the Hub only accepts repo ids here, not local paths
        base_model=base_id if base_id and REPO_ID.match(base_id) else None)
    kind = "16-bit model with the LoRA adapter merged in" if what == "merged" else "LoRA adapter"
    lines = [f"# {repo_id}", "",
             f"A Korean FAQ chatbot: a {kind}, fine-tuned from `{base}` by `builder train`.", ""]

    if base in HUB_IDS:
        base = f"{base} ({HUB_IDS[base]}, dequantized from the Q4_K_M GGUF on PyPI)"
    facts = {"base model": base, "backend": meta.get("backend"),
             "prompt template": meta.get("template"),
             "template sha256": meta.get("template_sha256"),
             "data sha256": meta.get("data_sha256"), "end tokens (eos_token_id)": eos}
    facts.update((re.sub(r"_s$", " (s)", key).replace("_", " "), metrics.get(key)) for key in (
        "train_rows", "val_rows", "answer_tokens_trained", "best_step", "best_eval_loss", "stopped_early",
        "wall_time_s"))
    facts["versions"] = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) or None
    lines += ["## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in facts.items() if v is not None] + [""]
    if meta.get("parent_run"):  # builder prefer: preference-tuned on top of an SFT run
        held = metrics.get("held_out") or {}
        lines += [f"Preference-tuned with {meta.get('method', '?').upper()} on top of the SFT run "
                  f"`{Path(meta['parent_run']).name}` ({(meta.get('pairs') or {}).get('train')} "
                  f"pairs: {(meta.get('pairs') or {}).get('reasons')}); held-out preference "
                  f"accuracy {(held.get('before') or {}).get('accuracy')} -> "
                  f"{(held.get('after') or {}).get('accuracy')}.", ""]
    if meta.get("merge_recipe"):  # builder merge-models
        import yaml

        recipe = meta["merge_recipe"]
        lines += ["## Merge", "", f"Merged with mergekit {recipe.get('mergekit')} "
                  f"(`{recipe.get('method')}`) from {len(recipe.get('runs', []))} runs"
                  + (": a depth up-scaled model that needs further training."
                     if recipe.get("needs_training") else "."), "", "```yaml",
                  yaml.safe_dump(recipe.get("mergekit_config"), sort_keys=False).rstrip(),
                  "```", ""]
    if knowledge:
        gate = knowledge.get("gate", {})
        lines += ["## Knowledge: it answers from the shop's FAQ", "",
                  f"`knowledge/` holds the {knowledge.get('entries')} FAQ entries this model "
                  "answers from (`entries.jsonl`, with each row's line in the FAQ file), a BM25 "
                  f"index over Kiwi morphemes (`bm25/`) and `{knowledge.get('embedder')}` "
                  "embeddings (`dense.npy`). The model was trained with the retrieved entries in "
                  "its prompt (the template's FAQ block) and to answer the decline message when "
                  "they do not answer the question; without them it does not know the shop's "
                  "facts. `builder.answering.chatbot.Chatbot` answers a question asked exactly as in the "
                  "FAQ with its entry's answer; otherwise it retrieves, declines questions that "
                  "share no content noun with the entries, fall under dense similarity "
                  f"{gate.get('dense_threshold')} or whose best entry holds under "
                  f"{gate.get('coverage_floor') or 0:.0%} of their words, and never shows a "
                  "number that is in none of the retrieved entries. Update the FAQ without "
                  "retraining with "
                  "`builder index RUN FAQ_FILE`.", ""]
    if evaluation:
        from builder.evaluation.report import figures_markdown

        if not report.get("systems"):  # an older report: its summary of base and tuned
            report = {**report, "systems": {"base": "base", "tuned": "tuned"}}
        lines += ["## Evaluation (`builder eval`)", "", figures_markdown(report), ""]
    if config.is_file():
        config_text = config.read_text(encoding="utf-8").rstrip()
        lines += ["## Config", "", "```yaml", config_text, "```", ""]

    # How to chat: the training template, and stop at the end tokens (else it runs on)
    if what == "merged":
        load = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
                f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")']
    else:
        load = ["from peft import PeftModel",
                "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'tokenizer = AutoTokenizer.from_pretrained("{base_id}")',
                f'base = AutoModelForCausalLM.from_pretrained("{base_id}")',
                f'model = PeftModel.from_pretrained(base, "{repo_id}")']
    faq = "(the FAQ entries retrieved for the question)" if template and template.grounded else ""
    prompt = template.render(QUESTION, "", faq) if template else f"{QUESTION}\n"
    stop = f", eos_token_id={eos!r}" if eos is not None else ""
    how = (f"Prompts use the `{meta.get('template', '?')}` template the model was trained with; "
           "generation stops at the end tokens.")
    lines += ["## Chat", "", how, "", "```python", *load,
              f"prompt = {prompt!r}",
              'inputs = tokenizer(prompt, return_tensors="pt")',
              f"output = model.generate(**inputs, max_new_tokens=200{stop})",
              'answer = output[0][inputs["input_ids"].shape[1]:]',
              "print(tokenizer.decode(answer, skip_special_tokens=True))", "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def gguf_card(run_dir, *, repo_id: str = "OWNER/NAME") -> str:
    """README.md for a run's GGUF export: the files, how their answers compare with the merged
    model's (RUN/gguf/report.json), and how to run them in Ollama and llama.cpp."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    meta = _read_json(run_dir / "meta.json")
    report = _read_json(run_dir / "gguf" / "report.json")
    base = meta.get("base_model")
    base_id = HUB_IDS.get(base, base)
    data = ModelCardData(
        language=["ko"], library_name="gguf", pipeline_tag="text-generation",
        tags=["korean", "faq", "chatbot", "gguf", "llama.cpp", "ollama"],
        base_model=base_id if base_id and REPO_ID.match(base_id) else None)
    default = report.get("default") or "MODEL.gguf"
    lines = [f"# {repo_id}", "",
             f"A Korean FAQ chatbot as GGUF for llama.cpp, Ollama and LM Studio: `builder export` "
             f"of a model fine-tuned from `{base}`, converted by "
             f"{report.get('converter', 'llama.cpp')}.", "",
             "## Files and answers checked", "",
             f"Greedy answers to {len(report.get('questions') or [])} questions of the shop's "
             "FAQ, each GGUF next to the merged 16-bit model (transformers):", "",
             "| file | quant | size | identical answers | similarity | verdict |",
             "|---|---|---|---|---|---|"]
    for quant, q in (report.get("quants") or {}).items():
        if q.get("file"):
            size = f"{q.get('bytes', 0) / 2**20:.0f} MB"
            lines.append(f"| `{q['file']}` | {quant} | {size} | {q['identical']}/{q['questions']}"
                         f" | {q['mean_similarity']:.0%} | {q['verdict']} |")
    lines += ["", "## Ollama", "", "```sh", f"ollama create {repo_id.split('/')[1]} -f Modelfile",
              f"ollama run {repo_id.split('/')[1]}", "```", "",
              "The Modelfile's TEMPLATE is the prompt the model was trained on; the system "
              "message is the FAQ block (the entries retrieved for the question).", "",
              "## llama.cpp", "", "```sh",
              f"python -m llama_cpp.server --model {default} --port 8001",
              "builder serve RUN_DIR --engine http://127.0.0.1:8001/v1   # retrieval + decline",
              "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# OWNER/NAME: letters, digits, "-", "_", "."; no "--" or ".." (the Hub's rule); name <= 96 chars.
