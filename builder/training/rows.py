"""The training rows: a prepared folder's splits, the validation rows carved from train, the
grounded rows (FAQ block + question -> answer) and their tokens with the loss mask.

    builder inspect runs/data [--index N]      # one tokenized example: masked prompt vs answer

A row is tokenized as the chatbot encodes it: the prompt with <bos>, then the answer and the
end token without special tokens; only the answer's tokens carry labels (IGNORE elsewhere)."""

import random
import time
from pathlib import Path

from builder.config import Config
from builder.errors import UserError
from builder.prompts import Template, load_template

IGNORE = -100


def load_prepared(prepared_dir: str | Path):
    """The DatasetDict written by `builder prepare`, with a clear error for anything else."""
    prepared_dir = Path(prepared_dir)
    if not (prepared_dir / "report.json").is_file() or not (prepared_dir / "dataset").is_dir():
        raise UserError(
            f"{prepared_dir} is not a prepared data folder (no report.json / dataset/). "
            f"Make one with: builder prepare FAQ_FILE --out {prepared_dir}"
        )
    from datasets import load_from_disk

    return load_from_disk(str(prepared_dir / "dataset"))


def tokenize_row(tokenizer, template: Template, row: dict, max_length: int, eos_id: int) -> dict:
    """One FAQ row -> input_ids and completion_mask (1 = answer token that is trained)."""
    prompt = template.render(row["instruction"], row.get("input") or "", row.get("faq") or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(row["output"], add_special_tokens=False)["input_ids"]
    # Too long: keep at least half the length for the answer, then cut the prompt's start
    # (after BOS) so the question's end, nearest the answer, stays. The answer is cut before
    # EOS is appended: a cut answer still teaches the model to stop.
    answer_budget = max(max_length // 2, max_length - len(prompt_ids))
    answer_ids = answer_ids[: max(answer_budget - 1, 0)] + [eos_id]
    prompt_budget = max_length - len(answer_ids)
    if len(prompt_ids) > prompt_budget:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - prompt_budget + 1 :]
    return {
        "input_ids": prompt_ids + answer_ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * len(answer_ids),
    }


def split_validation(train_rows, cfg: Config):
    """Carve the validation split from train: val_fraction, at least min_val_rows."""
    n = len(train_rows)
    n_val = max(cfg.train.min_val_rows, round(n * cfg.train.val_fraction))
    if n - n_val < 2:
        raise UserError(
            f"only {n} training rows: too few to hold out {n_val} for validation. "
            "Add rows to the FAQ or lower train.min_val_rows / train.val_fraction."
        )
    order = list(range(n))
    random.Random(cfg.train.seed).shuffle(order)
    return train_rows.select(sorted(order[n_val:])), train_rows.select(sorted(order[:n_val]))


def tokenize_split(rows, tokenizer, template, cfg: Config, eos_id: int):
    # Plain lists, not Dataset.map: map fingerprints its function by pickling the closure, and
    # pickling a 262k-entry tokenizer takes ~25 s per call.
    from datasets import Dataset

    examples = [tokenize_row(tokenizer, template, row, cfg.model.max_seq_length, eos_id) for row in rows]
    return Dataset.from_dict({key: [e[key] for e in examples] for key in ("input_ids", "completion_mask")})


def inspect_example(prepared_dir, cfg: Config, index: int = 0) -> str:
    """One tokenized training example with masked prompt tokens and trained answer tokens apart."""
    from builder.training.models import load_tokenizer, resolve_base_model

    rows = load_prepared(prepared_dir)["train"]
    if not 0 <= index < len(rows):
        raise UserError(f"--index must be between 0 and {len(rows) - 1}")
    tokenizer = load_tokenizer(resolve_base_model(cfg.model.name))
    template = load_template(cfg.train.template)
    row = dict(rows[index])
    if template.grounded:  # the row as training sees it: reworded, with its retrieved entries
        from builder.answering.indexing import entries_from_prepared
        from builder.answering.knowledge import knowledge_for
        from builder.training.raft import grounded_rows

        knowledge = knowledge_for(entries_from_prepared(prepared_dir), cfg.rag,
                                         calibrate=False)
        row = grounded_rows([row], knowledge, template, cfg.rag, seed=cfg.train.seed,
                            off_topic=False)[0]
    example = tokenize_row(tokenizer, template, row, cfg.model.max_seq_length,
                           tokenizer.eos_token_id)
    pieces = [tokenizer.convert_ids_to_tokens(i) for i in example["input_ids"]]
    masked = [p for p, m in zip(pieces, example["completion_mask"]) if not m]
    trained = [p for p, m in zip(pieces, example["completion_mask"]) if m]
    n_prompt, n_answer = len(masked), len(trained)
    return "\n".join([
        f"template: {template.name} ({template.sha256[:12]}), model: {cfg.model.name}",
        f"row {index}: {rows[index]['instruction']!r}"
        + (f" -> asked as {row['instruction']!r} ({row['kind']} row)" if "kind" in row else ""),
        *(["", "FAQ entries retrieved into the prompt (masked, no loss):", row["faq"]]
          if row.get("faq") else []),
        "",
        f"MASKED prompt tokens (label -100, no loss): {n_prompt}",
        "  " + " ".join(f"[{p}]" for p in masked),
        "",
        f"TRAINED answer tokens (labels = ids, loss): {n_answer}",
        "  " + " ".join(f"<<{p}>>" for p in trained),
        "",
        f"total {n_prompt + n_answer} tokens; {n_answer / (n_prompt + n_answer):.0%} carry loss",
    ])


def build_knowledge(prepared_dir: Path, run_dir: Path, cfg: Config, *, reuse: bool, log=print):
    """The run's knowledge: every row of the prepared folder, indexed into RUN/knowledge/."""
    from builder.answering.indexing import entries_from_prepared
    from builder.answering.knowledge import Knowledge, knowledge_for

    folder = run_dir / "knowledge"
    if reuse and (folder / "index.json").is_file():  # a resumed run keeps its rows
        return Knowledge.load(folder)
    started = time.perf_counter()
    entries = entries_from_prepared(prepared_dir)
    knowledge = knowledge_for(entries, cfg.rag, source=str(prepared_dir), run_dir=run_dir)
    knowledge.save(folder)
    log(f"knowledge: {len(entries)} FAQ entries indexed in {time.perf_counter() - started:.0f} s "
        f"(BM25 over Kiwi morphemes + {cfg.rag.embedder}, "
        f"{knowledge.settings['synonyms']['groups']} synonym groups); {gate_line(knowledge)}")
    return knowledge


def read_paraphrases(prepared_dir: Path) -> dict[str, list[str]]:
    """paraphrases.csv written by `builder generate --paraphrases`: {question: [paraphrase]}."""
    import csv

    path = prepared_dir / "paraphrases.csv"
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["question"], []).append(row["paraphrase"])
    return out


def grounded_splits(train_rows, val_rows, knowledge, template: Template, cfg: Config,
                    prepared_dir: Path, log=print) -> tuple[list[dict], list[dict]]:
    """Train and validation rows with retrieved context (builder.training.raft); validation rows are
    other FAQ entries, answered from context: the skill the bot needs, not memorised facts."""
    from builder.training.raft import grounded_rows

    paraphrases = read_paraphrases(prepared_dir)
    seed = cfg.train.seed
    train = grounded_rows(train_rows, knowledge, template, cfg.rag, seed=seed,
                          paraphrases=paraphrases)
    val = grounded_rows(val_rows, knowledge, template, cfg.rag, seed=seed + 1,
                        paraphrases=paraphrases)
    log(f"grounded rows: train {count_kinds(train)}, validation {count_kinds(val)}"
        + (f"; {sum(map(len, paraphrases.values()))} generated paraphrases" if paraphrases else ""))
    return train, val


def count_kinds(rows) -> dict:
    kinds: dict[str, int] = {}
    for row in rows:
        kind = row.get("kind", "answer") if isinstance(row, dict) else "answer"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def gate_line(knowledge) -> str:
    """The decline gate and its figures on the FAQ's own questions, in one line for the log."""
    gate = knowledge.settings["gate"]
    if learned := gate.get("learned"):
        rule = (f"learned gate (logistic regression on {learned['questions']} questions made "
                f"from the FAQ, threshold {learned['threshold']} for "
                f"{learned['recall_target']:.0%} of held-out rewrites; held out: "
                f"{learned['held_out']})")
    else:
        rule = (f"dense similarity >= {gate['dense_threshold']}, a shared content noun and the "
                f"best entry holding >= {gate['coverage_floor']:.0%} of the question's words")
    return f"decline gate: {rule}; on the FAQ's own questions {gate['measured']}"
