"""Publishing to the Hugging Face Hub: a prepared data folder or a trained model, with its card.

    push_dataset("runs/data", "OWNER/NAME")                  # Parquet splits + CSVs + dataset card
    push_model("runs/NAME", "OWNER/NAME", what="merged")     # merged/ (or adapter/) + model card
    push_gguf("runs/NAME", "OWNER/NAME-GGUF")                 # gguf/ (builder export) + its card

This module owns the token lookup (the token is never printed, logged, written or put in an
error), the repo id check, the upload folder (Parquet shards written deterministically, so the
same data re-pushed makes no new commit), keeping a repo private when asked, both cards, and
turning every network or auth failure into a `UserError` that says what to do. huggingface_hub
reads HF_ENDPOINT when it is imported, so it is imported inside the functions.
"""

import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError

log = logging.getLogger(__name__)

# OWNER/NAME: letters, digits, "-", "_", "."; no "--" or ".." (the Hub's rule); name <= 96 chars.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
PREPARED_FILES = ("train.csv", "test.csv", "dataset", "report.json")
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
NO_TOKEN = (
    "no Hugging Face token found: set HF_TOKEN (a write token from "
    "https://huggingface.co/settings/tokens) or run `hf auth login`"
)


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str | None  # the repo's head after the push
    changed: bool  # False when the repo already held exactly these files
    made_private: bool = False  # True when the repo was public and this push made it private


def resolve_token(token: str | None = None) -> str | None:
    """The explicit token, else huggingface_hub's: $HF_TOKEN, then the saved `hf auth login`."""
    from huggingface_hub import get_token

    return token or get_token()


def check_repo_id(repo_id: str) -> str:
    bad = "--" in repo_id or ".." in repo_id or repo_id.endswith((".git", "."))
    if not REPO_ID.match(repo_id or "") or bad:
        raise UserError(f"{repo_id!r} is not a Hub repo id: expected OWNER/NAME, e.g. "
                        "my-shop/faq-ko (letters, digits, '-', '_' and '.'; no '--' or '..')")
    return repo_id


# ---------------------------------------------------------------------------------------------
# Talking to the Hub


@contextmanager
def _hub_errors(repo_id: str, token: str):
    """Turn huggingface_hub/httpx failures into UserErrors whose message never holds the token."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        from httpx2 import HTTPError  # huggingface_hub 2.x
    except ImportError:
        from httpx import HTTPError  # huggingface_hub 1.x (the GPU set)

    try:
        yield
    except UserError as error:  # already says what to do; its cause must not be re-read below
        raise UserError(str(error).replace(token, "***")) from None
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, (HfHubHTTPError, HTTPError)):
            cause = cause.__cause__ or cause.__context__  # LFS uploads wrap errors in RuntimeError
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(cause, HfHubHTTPError) and status in (401, 403):
            message = "the Hugging Face token was refused: set HF_TOKEN or run `hf auth login`"
            message += f" (with a token that may write to {repo_id.split('/')[0]}/)"
        elif isinstance(cause, RepositoryNotFoundError):
            message = f"{repo_id} was not found on {constants.ENDPOINT}"
        elif isinstance(cause, HfHubHTTPError):
            detail = cause.server_message or cause
            message = f"the Hub refused the upload to {repo_id} ({status}): {detail}"
        elif isinstance(cause, HTTPError):
            reason = type(cause).__name__
            message = f"cannot reach {constants.ENDPOINT}: check the network ({reason})"
        elif isinstance(error, OfflineModeIsEnabled):
            message = "HF_HUB_OFFLINE is set: unset it to push to the Hub"
        elif isinstance(error, ValueError) and "README.md" in str(error):
            message = f"the Hub rejected the card's metadata: {error}"
        else:
            raise
        raise UserError(message.replace(token, "***")) from None


def _make_private(api, repo_id: str, repo_type: str, url: str) -> None:
    """Turn an existing public repo private, or refuse the push while nothing is uploaded yet."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.update_repo_settings(repo_id, private=True, repo_type=repo_type)
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise UserError(
            f"{repo_id} already exists and is public, and making it private was refused "
            f"({status}: {error.server_message or 'no reason given'}): nothing was uploaded. "
            f"Make it private at {url}/settings (or use a token that may change its settings), "
            "or push it as a public repo on purpose") from None
    log.warning("%s was public: made it private before uploading", repo_id)


def _commit(repo_id: str, repo_type: str, files: dict, message: str, private: bool, token: str,
            stale: str) -> PushResult:
    """Create or reuse the repo and put `files` ({path in repo: local Path or bytes}) in one commit.

    Remote files matching the glob `stale` that are not in `files` are deleted in the same commit
    (old shards). Unchanged files are skipped by huggingface_hub; if nothing changed, no commit.
    A public repo asked to be private is made private before anything is uploaded.
    """
    # Not HfApi.upload_folder: push_model's files do not lie in one folder (its README replaces
    # the adapter's, and copying the weights would cost GBs), and with hf_xet installed (the
    # default) upload_folder switches to a multi-commit upload that splits big folders into
    # "part N" commits and skips the card's metadata check. create_commit makes one commit and,
    # like upload_folder, skips unchanged files and makes no empty commit.
    import fnmatch

    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi(token=token)
    with _hub_errors(repo_id, token):
        # private=None rather than False: a new repo then follows the owner's default visibility
        url = api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
        repo = api.repo_info(repo_id, repo_type=repo_type)
        made_private = private and not repo.private  # create_repo leaves an existing repo as is
        if made_private:
            _make_private(api, repo_id, repo_type, str(url))
        head = repo.sha
        remote = api.list_repo_files(repo_id, repo_type=repo_type)
        old = [p for p in remote if fnmatch.fnmatch(p, stale) and p not in files]
        operations = [CommitOperationDelete(p) for p in old]
        operations += [CommitOperationAdd(p, str(f) if isinstance(f, Path) else f)
                       for p, f in files.items()]
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    return PushResult(repo_id=repo_id, url=str(url), commit=info.oid, changed=info.oid != head,
                      made_private=made_private)


# ---------------------------------------------------------------------------------------------
# Dataset


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


def push_dataset(prepared_dir, repo_id: str, *, private: bool = False,
                 token: str | None = None) -> PushResult:
    """Upload a prepared data folder as a dataset repo in one commit; a no-op if nothing changed."""
    check_repo_id(repo_id)
    prepared_dir = Path(prepared_dir)
    for name in PREPARED_FILES:
        if not (prepared_dir / name).exists():
            raise UserError(f"{prepared_dir / name} is missing: {prepared_dir} is not a prepared "
                            "data folder; make one with `builder prepare FAQ_FILE --out DIR`")
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)

    from datasets import load_from_disk

    report = json.loads((prepared_dir / "report.json").read_text(encoding="utf-8"))
    dataset = load_from_disk(str(prepared_dir / "dataset"))
    with tempfile.TemporaryDirectory(prefix="builder-push-") as staging:
        staging = Path(staging)
        files: dict = {}
        for split in SPLITS:
            path_in_repo = f"data/{split}-00000-of-00001.parquet"
            (staging / path_in_repo).parent.mkdir(parents=True, exist_ok=True)
            dataset[split].to_parquet(str(staging / path_in_repo))  # same rows -> same bytes
            files[path_in_repo] = staging / path_in_repo
        for name in ("train.csv", "test.csv"):
            files[name] = prepared_dir / name
        files["README.md"] = dataset_card(repo_id, report).encode()
        sizes = report.get("split", {})
        message = (f"Upload {report.get('source_file', 'FAQ')} "
                   f"({sizes.get('train')} train / {sizes.get('test')} test)")
        return _commit(repo_id, "dataset", files, message, private, token, stale="data/*")


# ---------------------------------------------------------------------------------------------
# Model


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
                  "facts. `builder.chat.Chatbot` answers a question asked exactly as in the "
                  "FAQ with its entry's answer; otherwise it retrieves, declines questions that "
                  "share no content noun with the entries, fall under dense similarity "
                  f"{gate.get('dense_threshold')} or whose best entry holds under "
                  f"{gate.get('coverage_floor') or 0:.0%} of their words, and never shows a "
                  "number that is in none of the retrieved entries. Update the FAQ without "
                  "retraining with "
                  "`builder index RUN FAQ_FILE`.", ""]
    if evaluation:
        systems = list(report.get("systems") or ("base", "tuned"))
        lines += ["## Evaluation (test split)", "", "| metric | " + " | ".join(systems) + " |",
                  "|---|" + "---|" * len(systems)]
        lines += [f"| {m} | " + " | ".join(str(v.get(s)) for s in systems) + " |"
                  for m, v in evaluation.items()]
        lines += [""] + [f"- {line}" for line in report.get("verdict", [])] + [""]
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


def push_model(run_dir, repo_id: str, *, what: str = "merged", private: bool = False,
               token: str | None = None) -> PushResult:
    """Upload run_dir/merged/ (or run_dir/adapter/) with a generated model card in one commit."""
    if what not in ("merged", "adapter"):
        raise UserError(f"what must be 'merged' or 'adapter', not {what!r}")
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    folder = run_dir / what
    if not folder.is_dir() or not any(folder.iterdir()):
        make = (f"builder merge {run_dir}" if what == "merged"
                else f"builder train DATA_DIR --out {run_dir}")
        raise UserError(f"{folder} is missing: make it with `{make}`")
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)

    card = model_card(run_dir, what, repo_id=repo_id)
    files: dict = {p.relative_to(folder).as_posix(): p
                   for p in sorted(folder.rglob("*")) if p.is_file()}
    knowledge = run_dir / "knowledge"  # the FAQ the model answers from goes with it
    if knowledge.is_dir():
        files.update((f"knowledge/{p.relative_to(knowledge).as_posix()}", p)
                     for p in sorted(knowledge.rglob("*")) if p.is_file())
    files["README.md"] = card.encode()  # replaces the stub card peft writes into adapter/
    message = f"Upload {what} model from {run_dir.name}"
    return _commit(repo_id, "model", files, message, private, token, stale="*.safetensors")


# ---------------------------------------------------------------------------------------------
# GGUF (builder export)


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


def push_gguf(run_dir, repo_id: str, *, private: bool = False,
              token: str | None = None) -> PushResult:
    """Upload RUN/gguf/ (the kept GGUF files, Modelfile, report.json) with its own card."""
    check_repo_id(repo_id)
    run_dir = Path(run_dir)
    folder = run_dir / "gguf"
    ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if not ggufs:
        raise UserError(f"{folder}: no GGUF; make one with `builder export {run_dir} "
                        "--format gguf`")
    token = resolve_token(token)
    if not token:
        raise UserError(NO_TOKEN)
    files: dict = {p.name: p for p in ggufs}
    files.update((name, folder / name) for name in ("Modelfile", "report.json")
                 if (folder / name).is_file())
    files["README.md"] = gguf_card(run_dir, repo_id=repo_id).encode()
    message = f"Upload GGUF ({', '.join(p.name for p in ggufs)}) from {run_dir.name}"
    return _commit(repo_id, "model", files, message, private, token, stale="*.gguf")
