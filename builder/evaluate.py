"""The eval stage: what a shop owner needs to know before customers talk to the bot.

    builder eval RUN_DIR [--data PREPARED_DIR] [--questions data/sample_questions.csv]
    builder eval runs/demo --train-sample 10 --max-new-tokens 96 --questions data/sample_questions.csv

Three systems answer the same questions: the fine-tuned bot (merged/, else base + adapter/), the
base model with the same retrieval, template, gate and guard, and a retrieval-only baseline (the
best FAQ entry's answer verbatim, or the decline message when the gate finds nothing). Asked:
every test question (entries in the knowledge the model never trained on: the "new FAQ row"
case), a seeded sample of trained questions, and, with --questions (columns question, expected,
kind, line; `expected` empty = must decline), paraphrases, off-topic and unanswerable questions.

Scores: fact accuracy (the reference's numbers with units and quoted names stated in the answer,
builder.facts), declines on off-topic and unanswerable questions, invented facts (a number in the
answer found in none of the entries it was given), runaway answers, retrieval hit@1/hit@3,
chrF / ROUGE-L / BLEU on Kiwi morphemes, exact match, and the reference's loss under each model.
Answers are generated in batches; the base model's answers are cached (same base model,
template, knowledge, questions, settings and answering code give the same answers). Writes RUN/eval/
(report.json, answers.csv, report.md, chart.png), complete or absent.
"""

import csv
import gc
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

from builder.errors import UserError
from builder.metrics import (LABELS, METRIC_NOTES, METRICS, bleu, chrf, corpus_bleu,  # noqa: F401
                             corpus_chrf, exact_match, morphemes, normalize, rouge_l)

SYSTEMS = ("base", "tuned", "retrieval")
SYSTEM_LABELS = {"base": "base + retrieval", "tuned": "fine-tuned + retrieval",
                 "retrieval": "retrieval only"}
QUESTION_KINDS = ("paraphrase", "off_topic", "unanswerable")

# ---------------------------------------------------------------------------------------------
# Loss of the reference answer, exactly as training computed it


def answer_loss(model, tokenizer, template, row: dict, max_length: int = 512) -> tuple[float, int]:
    """(summed NLL in nats, number of answer tokens) of row["output"] + EOS after the prompt.

    Tokens and cut are builder.train's (prompt with BOS, answer + EOS without special tokens);
    only the answer positions are scored, so only their logits are computed.
    """
    import torch
    import torch.nn.functional as F

    from builder.train import tokenize_row

    example = tokenize_row(tokenizer, template, row, max_length, tokenizer.eos_token_id)
    ids = torch.tensor([example["input_ids"]], device=next(model.parameters()).device)
    n_answer = sum(example["completion_mask"])
    with torch.inference_mode():
        # the last n_answer + 1 positions; position t predicts token t + 1
        logits = model(input_ids=ids, logits_to_keep=n_answer + 1).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, -n_answer:], reduction="sum").item(), n_answer


# ---------------------------------------------------------------------------------------------
# The questions and the three systems


def _read_inputs(run_dir: Path, data_dir) -> tuple[dict, Path]:
    if not (run_dir / "meta.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no meta.json); train one with "
                        f"`builder train PREPARED_DIR --out {run_dir}`")
    if not ((run_dir / "merged" / "config.json").is_file()
            or (run_dir / "adapter" / "adapter_config.json").is_file()):
        raise UserError(f"{run_dir} has neither adapter/ nor merged/: finish training with "
                        f"`builder train PREPARED_DIR --out {run_dir} --resume`")
    meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    data_dir = Path(data_dir or meta.get("data_dir") or "(none recorded)")
    if not (data_dir / "report.json").is_file() or not (data_dir / "dataset").is_dir():
        raise UserError(f"{data_dir}: no prepared data folder there (meta.json records the run's); "
                        "pass --data PREPARED_DIR, made by `builder prepare FAQ_FILE --out DIR`")
    return meta, data_dir


def _pick_rows(meta: dict, dataset, train_sample: int, limit: int | None) -> dict[str, list[dict]]:
    from builder.config import config_from_dict
    from builder.train import split_validation

    # only rows the run trained on: the validation rows carved from train were never learned
    trained, _ = split_validation(dataset["train"], config_from_dict(meta["config"]))
    n = min(train_sample, len(trained))
    picked = sorted(random.Random(meta.get("seed", 0)).sample(range(len(trained)), n))
    return {"test": [dict(r) for r in dataset["test"]][:limit],
            "train_sample": [dict(trained[i]) for i in picked]}


def _base_bot(meta: dict, tokenizer, template, end_ids: set[int], device, knowledge=None,
              rag=None):
    """The base model behind the tuned bot's tokenizer, template, end tokens and knowledge."""
    from transformers import AutoModelForCausalLM

    from builder.chat import Chatbot, load_dtype

    path = meta.get("base_model_path")
    if not path or not Path(path).is_dir():
        raise UserError(f"meta.json: base model folder {path!r} not found; eval compares with it")
    dtype = load_dtype(Path(path), device)  # as chat loads it
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return Chatbot(model, tokenizer, template, end_ids, knowledge=knowledge, rag=rag)


def _free_memory(device) -> None:
    """Give a dropped model's memory back before the next one loads (an 8B model is ~16 GB)."""
    import torch

    gc.collect()  # a model's modules and hooks hold reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def read_questions(path) -> list[dict]:
    """A question file: columns question, expected (empty = must decline), optional kind
    (paraphrase | off_topic | unanswerable) and line (the FAQ file line(s) that answer it, ';')."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such question file (columns question, expected, kind, line)")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"question", "expected"} <= set(reader.fieldnames):
            raise UserError(f"{path}: the header must have the columns question and expected "
                            f"(found: {', '.join(reader.fieldnames or []) or 'none'})")
        rows = list(reader)
    out = []
    for number, row in enumerate(rows, start=2):
        question, expected = (row.get("question") or "").strip(), (row.get("expected") or "").strip()
        if not question:
            raise UserError(f"{path} line {number}: the question is empty")
        kind = (row.get("kind") or "").strip() or ("paraphrase" if expected else "unanswerable")
        if kind not in QUESTION_KINDS:
            raise UserError(f"{path} line {number}: kind {kind!r} is not one of "
                            f"{', '.join(QUESTION_KINDS)}")
        if (kind == "paraphrase") != bool(expected):
            raise UserError(f"{path} line {number}: a paraphrase needs an expected fact; off_topic "
                            "and unanswerable questions leave expected empty (must decline)")
        try:
            lines = [int(x) for x in (row.get("line") or "").replace(",", ";").split(";") if x.strip()]
        except ValueError:
            raise UserError(f"{path} line {number}: line must be FAQ file line numbers like 12;14") from None
        out.append({"question": question, "expected": expected, "kind": kind, "lines": lines})
    if not out:
        raise UserError(f"{path}: no questions under the header")
    return out


def retrieval_replies(knowledge, rag, items: list[tuple[str, str]]) -> list:
    """The baseline: the best entry's answer verbatim, or the decline message under the gate."""
    from builder.guard import Reply

    replies = []
    for question, context in items:
        if (hit := knowledge.exact(question, context)) is not None:
            replies.append(Reply(text=hit.entry.answer, sources=[hit], exact=True,
                                 generated=hit.entry.answer))
            continue
        hits = knowledge.search(question, rag.k)
        if knowledge.relevant(question, hits):
            replies.append(Reply(text=hits[0].entry.answer, sources=hits[:1],
                                 generated=hits[0].entry.answer))
        else:
            replies.append(Reply(text=rag.decline_message, declined=True, gated=True))
    return replies


def _losses(bot, rows: dict, max_length: int) -> dict:
    """{split: [(nll, tokens)]}: each reference under the model, with the context it would get."""
    out = {}
    for split, split_rows in rows.items():
        out[split] = []
        for row in split_rows:
            if bot.knowledge is not None:
                hits = bot.knowledge.search(row["instruction"], bot.rag.k)
                row = {**row, "faq": bot.template.render_faq([h.entry for h in hits])}
            out[split].append(answer_loss(bot.model, bot.tokenizer, bot.template, row, max_length))
    return out


def _cache_key(meta: dict, bot, items, max_new_tokens: int) -> str:
    from builder.train import library_versions

    knowledge = None  # what answers depend on: the entries, the embedder and the gate
    if bot.knowledge is not None:
        settings = bot.knowledge.settings
        knowledge = [settings.get(k) for k in ("entries_sha256", "embedder", "gate")]
    rag = vars(bot.rag) if bot.rag is not None else None
    # the replies are kept as the guard left them: a changed guard gives other replies
    rules = [hashlib.sha256(Path(__file__).with_name(name).read_bytes()).hexdigest()
             for name in ("guard.py", "facts.py", "chat.py", "knowledge.py")]
    blob = json.dumps([meta.get("base_model_path"), bot.template.sha256, knowledge, rag, items,
                       max_new_tokens, sorted(bot.end_ids), library_versions(), rules],
                      ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cached_replies(path: Path, knowledge):
    from builder.guard import Reply

    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    by_id = {e.id: e for e in knowledge.entries} if knowledge is not None else {}
    replies = []
    for record in records:
        ids = record.pop("source_ids")
        reply = Reply(**record)
        reply.invented = [tuple(f) for f in reply.invented]
        reply.sources = [_SourceHit(by_id[i]) for i in ids if i in by_id]
        replies.append(reply)
    return replies


class _SourceHit:
    """A cached reply's source: just the entry (scores are not kept)."""

    def __init__(self, entry):
        self.entry, self.score, self.bm25, self.dense = entry, 0.0, 0.0, 0.0


def _save_replies(path: Path, replies) -> None:
    records = [{"text": r.text, "declined": r.declined, "gated": r.gated, "exact": r.exact,
                "guarded": r.guarded,
                "fallback": r.fallback, "runaway": r.runaway,
                "invented": [list(f) for f in r.invented], "generated": r.generated,
                "source_ids": [h.entry.id for h in r.sources]} for r in replies]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    tmp.rename(path)


# ---------------------------------------------------------------------------------------------
# Scores


def _share(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def _invented_shown(reply, question: str, context: str, decline_message: str) -> bool:
    """The shown answer states a fact found in none of its sources (nor the customer's words)."""
    from builder.facts import invented

    sources = [h.entry.text for h in reply.sources] + [question, context, decline_message]
    return bool(invented(reply.text, sources))


def score_split(rows: list[dict], replies: list, decline_message: str) -> dict:
    """Scores of one system on FAQ rows whose answers are known (test split, training sample)."""
    from builder.facts import fact_recall

    if not rows:
        return {}
    refs = [r["output"] for r in rows]
    hyps = [r.text for r in replies]
    # a declined answer states no fact, whatever numbers the decline message carries
    recalls = [None if fact_recall(r.text, ref) is None else 0.0 if r.declined
               else fact_recall(r.text, ref) for r, ref in zip(replies, refs)]
    with_facts = [x for x in recalls if x is not None]
    return {
        "fact_accuracy": _share(x == 1.0 for x in with_facts),
        "rows_with_facts": len(with_facts),
        "declined": _share(r.declined for r in replies),
        # asked word for word as in the FAQ: the entry's own answer, nothing generated
        "exact": sum(r.exact for r in replies),
        "invented": sum(_invented_shown(r, row["instruction"], row.get("input") or "",
                                        decline_message) for r, row in zip(replies, rows)),
        "chrf": round(corpus_chrf(hyps, refs), 2),
        "rouge_l": round(sum(map(rouge_l, hyps, refs)) / len(refs), 4),
        "bleu": round(corpus_bleu(hyps, refs), 2),
        "exact_match": _share(exact_match(h, ref) for h, ref in zip(hyps, refs)),
    }


def score_questions(questions: list[dict], replies: list, decline_message: str) -> dict:
    """Paraphrase fact accuracy, decline rates, invented facts and runaways on a question file."""
    from builder.facts import states

    def of(kind):
        return [(q, r) for q, r in zip(questions, replies) if q["kind"] == kind]

    paraphrases = of("paraphrase")
    return {
        "paraphrase_facts": _share(not r.declined and states(r.text, q["expected"])
                                   for q, r in paraphrases),
        "paraphrases_declined": _share(r.declined for _, r in paraphrases),
        "off_topic_declined": _share(r.declined for _, r in of("off_topic")),
        "unanswerable_declined": _share(r.declined for _, r in of("unanswerable")),
        "invented_shown": sum(_invented_shown(r, q["question"], "", decline_message)
                              for q, r in zip(questions, replies)),
        "invented_in_declines": sum(r.declined and _invented_shown(r, q["question"], "",
                                                                   decline_message)
                                    for q, r in zip(questions, replies)),
        "invented_before_guard": sum(bool(r.invented) for r in replies),
        "exact": sum(r.exact for r in replies),
        "guard_fallbacks": sum(r.fallback for r in replies),
        "guard_cuts": sum(r.guarded and not r.fallback for r in replies),
        "runaway": sum(r.runaway for r in replies),
        "counts": {kind: len(of(kind)) for kind in QUESTION_KINDS},
    }


def retrieval_hits(knowledge, rag, questions: list[dict], test_rows: list[dict]) -> dict:
    """hit@1 / hit@3 of the retriever: paraphrases against their `line`, test questions
    against their own entry."""
    from builder.raft import find_entry

    def hits_at(pairs):
        found1 = found3 = 0
        for question, is_gold in pairs:
            entries = [h.entry for h in knowledge.search(question, max(3, rag.k))]
            found1 += is_gold(entries[0])
            found3 += any(is_gold(e) for e in entries[:3])
        n = len(pairs)
        return {"hit@1": _share([1] * found1 + [0] * (n - found1)),
                "hit@3": _share([1] * found3 + [0] * (n - found3)), "questions": n}

    out = {}
    labelled = [q for q in questions if q["lines"]]
    if labelled:
        out["paraphrases"] = hits_at([(q["question"], lambda e, q=q: e.line in q["lines"])
                                      for q in labelled])
    pairs = []
    for row in test_rows:
        entry = find_entry(knowledge, row)
        if entry is not None:
            pairs.append((row["instruction"], lambda e, entry=entry: e.id == entry.id))
    if pairs:
        out["test_split"] = hits_at(pairs)
    return out


def _loss_summary(losses: dict) -> dict:
    out = {}
    for split, pairs in losses.items():
        tokens = sum(t for _, t in pairs)
        if tokens:
            loss = sum(n for n, _ in pairs) / tokens
            out[split] = {"loss": round(loss, 4), "ppl": round(math.exp(loss), 3)}
    return out


def verdict(report: dict) -> list[str]:
    """Plain sentences: where the fine-tuned bot is below the retrieval-only baseline, and
    against the targets a shop can live with."""
    lines = []
    checks = [("test split fact accuracy", report["splits"].get("test", {}), "fact_accuracy"),
              ("training sample fact accuracy", report["splits"].get("train_sample", {}),
               "fact_accuracy")]
    if report.get("questions"):
        q = report["questions"]
        checks += [("paraphrase fact accuracy", q, "paraphrase_facts"),
                   ("off-topic decline rate", q, "off_topic_declined"),
                   ("unanswerable decline rate", q, "unanswerable_declined")]
    for label, table, key in checks:
        tuned, baseline = table.get("tuned", {}).get(key), table.get("retrieval", {}).get(key)
        if tuned is not None and baseline is not None and tuned < baseline:
            lines.append(f"The fine-tuned bot is below the retrieval-only baseline on {label}: "
                         f"{tuned:.0%} vs {baseline:.0%}.")
    if report.get("questions") and report["questions"]["tuned"]["runaway"]:
        lines.append(f"{report['questions']['tuned']['runaway']} answers ran away (repeated "
                     "themselves) and were cut.")
    if not lines:
        lines.append("The fine-tuned bot is at or above the retrieval-only baseline on every "
                     "figure measured.")
    return lines


# ---------------------------------------------------------------------------------------------
# The stage


def evaluate(run_dir, *, data_dir=None, train_sample: int = 20, max_new_tokens: int = 128,
             limit: int | None = None, questions=None, batch_size: int = 8, log=print) -> dict:
    """Score base, tuned and retrieval-only answers; writes RUN/eval/; returns the report."""
    from builder.train import load_prepared

    run_dir = Path(run_dir)
    if train_sample < 0:
        raise UserError(f"--train-sample {train_sample}: give 0 or more training questions")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give 1 or more test questions (or leave it out for all)")
    meta, data_dir = _read_inputs(run_dir, data_dir)
    asked = read_questions(questions) if questions else []
    rows = _pick_rows(meta, load_prepared(data_dir), train_sample, limit)
    max_length = meta["config"]["model"]["max_seq_length"]
    items = [(r["instruction"], r.get("input") or "") for split in rows.values() for r in split]
    items += [(q["question"], "") for q in asked]
    log(f"evaluating {run_dir}: {len(rows['test'])} test, {len(rows['train_sample'])} training "
        f"and {len(asked)} file questions; up to {max_new_tokens} new tokens, {batch_size} at a time")

    running = run_dir / "eval.running"  # the page shows "evaluation running" while it exists
    running.write_text(str(time.time()))
    try:
        return _evaluate(run_dir, meta, data_dir, rows, asked, items, max_new_tokens, max_length,
                         train_sample, limit, questions, batch_size, log)
    finally:
        running.unlink(missing_ok=True)


def _evaluate(run_dir, meta, data_dir, rows, asked, items, max_new_tokens, max_length,
              train_sample, limit, questions, batch_size, log) -> dict:
    from builder.chat import Chatbot
    from builder.data import replace_dir
    from builder.embedded import cache_root
    from builder.train import file_sha256

    # The tuned bot, then the retrieval-only baseline, then the base model (one model at a time)
    started = time.perf_counter()
    tuned = Chatbot.load(run_dir)
    weights = "adapter" if hasattr(tuned.model, "peft_config") else "merged"
    replies = {"tuned": tuned.reply_batch(items, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)}
    # the model's own answers to the split questions, without the FAQ lookup of questions asked
    # word for word (which answers every one of them with its entry)
    n_split = sum(map(len, rows.values()))
    model_alone = []
    if tuned.knowledge is not None and n_split:
        tuned.exact_answers = False
        model_alone = tuned.reply_batch(items[:n_split], max_new_tokens=max_new_tokens,
                                        batch_size=batch_size)
        tuned.exact_answers = True
    losses = {"tuned": _losses(tuned, rows, max_length)}
    knowledge, rag = tuned.knowledge, tuned.rag
    tuned_s = time.perf_counter() - started
    if knowledge is not None:
        replies["retrieval"] = retrieval_replies(knowledge, rag, items)
    shared = tuned.tokenizer, tuned.template, set(tuned.end_ids), tuned.device
    del tuned
    _free_memory(shared[-1])
    base = _base_bot(meta, *shared, knowledge=knowledge, rag=rag)
    cache = cache_root() / "eval-base" / f"{_cache_key(meta, base, items, max_new_tokens)}.json"
    cached = _cached_replies(cache, knowledge)
    if cached is not None and len(cached) == len(items):
        log(f"base model answers: from the cache ({cache.name})")
        replies["base"] = cached
    else:
        replies["base"] = base.reply_batch(items, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
        _save_replies(cache, replies["base"])
    losses["base"] = _losses(base, rows, max_length)
    del base
    wall = time.perf_counter() - started

    # Score
    decline = rag.decline_message if rag is not None else ""
    systems = [s for s in SYSTEMS if s in replies]
    by_split, offset = {}, 0
    for split, split_rows in rows.items():
        by_split[split] = {s: replies[s][offset:offset + len(split_rows)] for s in systems}
        offset += len(split_rows)
    asked_replies = {s: replies[s][offset:] for s in systems}
    splits = {split: {s: score_split(rows[split], by_split[split][s], decline) for s in systems}
              for split in rows if rows[split]}
    for system in ("base", "tuned"):
        for split, figures in _loss_summary(losses[system]).items():
            splits[split][system].update(figures)
    offset = 0
    for split, split_rows in rows.items():
        if model_alone and split_rows:
            alone = score_split(split_rows, model_alone[offset:offset + len(split_rows)], decline)
            splits[split]["tuned"]["model_fact_accuracy"] = alone["fact_accuracy"]
            splits[split]["tuned"]["model_guard_fallbacks"] = sum(
                r.fallback for r in model_alone[offset:offset + len(split_rows)])
        offset += len(split_rows)
    data_sha256 = file_sha256(data_dir / "train.csv", data_dir / "test.csv")
    if data_sha256 != meta.get("data_sha256"):
        log(f"note: {data_dir} is not the data this run was trained on (data_sha256 differs)")
    report = {
        "run_dir": str(run_dir.resolve()),
        "base_model": meta["base_model"],
        "tuned_weights": weights,
        "template": meta["template"],
        "grounded": knowledge is not None,
        "data_dir": str(data_dir.resolve()),
        "data_matches_run": data_sha256 == meta.get("data_sha256"),
        "settings": {"max_new_tokens": max_new_tokens, "train_sample": train_sample, "limit": limit,
                     "questions": str(questions) if questions else None, "decoding": "greedy",
                     "batch_size": batch_size, "sample_seed": meta.get("seed", 0),
                     "metrics": METRIC_NOTES},
        "rows": {**{split: len(r) for split, r in rows.items()}, "questions": len(asked)},
        "systems": {s: SYSTEM_LABELS[s] for s in systems},
        "splits": splits,
        "questions": {s: score_questions(asked, asked_replies[s], decline) for s in systems}
        if asked else {},
        "retrieval": retrieval_hits(knowledge, rag, asked, rows["test"]) if knowledge else {},
        "wall_time_s": round(wall, 1),
        "tuned_answers_s": round(tuned_s, 1),
    }
    report["summary"] = {m: {s: v[m] for s, v in splits.get("test", {}).items() if m in v}
                         for m in ("fact_accuracy", "chrf", "rouge_l", "bleu", "exact_match",
                                   "loss", "ppl")}
    report["verdict"] = verdict(report)

    # Write eval/ into a staging folder, then swap it in
    staging = Path(tempfile.mkdtemp(prefix=".eval-", dir=run_dir))
    try:
        answers = _answer_table(rows, by_split, asked, asked_replies, systems, model_alone)
        (staging / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2),
                                             encoding="utf-8")
        # utf-8-sig: Excel, which most shops open a CSV with, then shows Hangul right
        with (staging / "answers.csv").open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(answers[0]) if answers else ["split"])
            writer.writeheader()
            writer.writerows(answers)
        (staging / "report.md").write_text(_markdown(report, answers), encoding="utf-8")
        _plot(report, staging / "chart.png")
        staging.chmod(0o755)
        replace_dir(staging, run_dir / "eval")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {run_dir / 'eval'} in {wall:.0f} s")  # the door prints format_summary(report)
    return report


# ---------------------------------------------------------------------------------------------
# Outputs


def _answer_table(rows: dict, by_split: dict, asked: list[dict], asked_replies: dict,
                  systems: list[str], model_alone: list | None = None) -> list[dict]:
    """One record per question: the texts and, per system, the answer and its flags; for the
    split rows also the tuned model's own answer without the FAQ lookup (`model_alone`)."""
    from builder.facts import fact_recall, states

    def record(split, question, context, reference, replies, ok):
        out = {"split": split, "question": question, "context": context, "reference": reference}
        for s in systems:
            r = replies[s]
            out[f"{s}_answer"] = r.text
            out[f"{s}_correct"] = ok(r)
            out[f"{s}_declined"] = r.declined
            out[f"{s}_sources"] = ";".join(str(h.entry.line or h.entry.id) for h in r.sources)
        tuned = replies.get("tuned")
        if tuned is not None:
            flags = ("exact", "gated", "guarded", "fallback", "runaway")
            out["tuned_flags"] = " ".join(name for name in flags if getattr(tuned, name))
            out["tuned_generated"] = tuned.generated
        return out

    table = []
    alone = iter(model_alone or [])
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            replies = {s: by_split[split][s][i] for s in systems}
            table.append(record(split, row["instruction"], row.get("input") or "", row["output"],
                                replies, lambda r, ref=row["output"]:
                                0.0 if r.declined and fact_recall(r.text, ref) is not None
                                else fact_recall(r.text, ref)))
            if model_alone:
                table[-1]["tuned_model_answer"] = next(alone).text
    for i, q in enumerate(asked):
        replies = {s: asked_replies[s][i] for s in systems}
        if q["expected"]:
            ok = lambda r, q=q: int(not r.declined and states(r.text, q["expected"]))  # noqa: E731
        else:
            ok = lambda r: int(r.declined)  # noqa: E731
        table.append(record(q["kind"], q["question"], "", q["expected"] or "(decline)", replies, ok))
    return table


FIGURES = [  # (section, key, label) shown in the summary, report.md and the chart
    ("test", "fact_accuracy", "test split: facts right (entries never trained)"),
    ("train_sample", "fact_accuracy", "trained questions: facts right"),
    ("questions", "paraphrase_facts", "paraphrased questions: facts right"),
    ("questions", "off_topic_declined", "off-topic questions declined"),
    ("questions", "unanswerable_declined", "unanswerable questions declined"),
]


def _figure(report: dict, section: str, key: str, system: str):
    table = report["questions"] if section == "questions" else report["splits"].get(section, {})
    return table.get(system, {}).get(key)


def _figure_rows(report: dict):
    systems = list(report["systems"])
    for section, key, label in FIGURES:
        values = [_figure(report, section, key, s) for s in systems]
        if any(v is not None for v in values):
            yield label, values
    for split, label in (("train_sample", "trained questions"), ("test", "test questions")):
        table = report["splits"].get(split, {})
        if "model_fact_accuracy" in table.get("tuned", {}):
            tuned = table["tuned"]
            replaced = tuned.get("model_guard_fallbacks")
            yield (f"{label}: facts right when generated (no word-for-word lookup"
                   + (f"; guard replaced {replaced})" if replaced is not None else ")"),
                   [tuned["model_fact_accuracy"] if s == "tuned" else None for s in systems])
        if any("exact" in table.get(s, {}) for s in systems):
            yield (f"{label} asked word for word (FAQ answer shown)",
                   [table.get(s, {}).get("exact") for s in systems])
    q = report.get("questions") or {}
    if q:
        for key, label in (("invented_shown", "answers shown with an invented fact"),
                           ("invented_in_declines", "declined answers with an invented fact"),
                           ("invented_before_guard",
                            "answers the guard stopped for an invented fact"),
                           ("guard_fallbacks", "answers the guard completed or replaced with an "
                                               "FAQ answer"),
                           ("runaway", "runaway answers cut")):
            yield label, [q.get(s, {}).get(key) for s in systems]


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if isinstance(value, float) else str(value)


def format_summary(report: dict) -> str:
    """The figures a shop owner needs, one line each, per system; then the verdict."""
    systems = list(report["systems"])
    width = max(len(label) for label, _ in _figure_rows(report)) if report["systems"] else 40
    lines = [f"{'':<{width}}" + "".join(f"{s:>12}" for s in systems)]
    lines += [f"{label:<{width}}" + "".join(f"{_fmt(v):>12}" for v in values)
              for label, values in _figure_rows(report)]
    for name, hits in report.get("retrieval", {}).items():
        lines.append(f"retrieval on {name.replace('_', ' ')}: hit@1 {_fmt(hits['hit@1'])}, "
                     f"hit@3 {_fmt(hits['hit@3'])} ({hits['questions']} questions)")
    return "\n".join(lines + [""] + report.get("verdict", []))


def _markdown(report: dict, answers: list[dict], examples: int = 4) -> str:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", "<br>")

    systems = list(report["systems"])
    lines = [f"# Evaluation: {report['base_model']}, fine-tuned vs base vs retrieval only", "",
             f"Greedy answers, up to {report['settings']['max_new_tokens']} new tokens; "
             f"data `{report['data_dir']}`; questions `{report['settings']['questions']}`.", "",
             "| | " + " | ".join(report["systems"][s] for s in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    lines += [f"| {label} | " + " | ".join(_fmt(v) for v in values) + " |"
              for label, values in _figure_rows(report)]
    lines.append("")
    for name, hits in report.get("retrieval", {}).items():
        lines.append(f"- retrieval on {name.replace('_', ' ')}: hit@1 {_fmt(hits['hit@1'])}, "
                     f"hit@3 {_fmt(hits['hit@3'])} ({hits['questions']} questions)")
    lines += ["", "## Verdict", ""] + [f"- {v}" for v in report.get("verdict", [])] + [""]
    for split, figures in report["splits"].items():
        metrics = [m for m in ("chrf", "rouge_l", "bleu", "exact_match", "loss", "ppl")
                   if any(m in figures[s] for s in systems)]
        lines += [f"## Text scores, {split.replace('_', ' ')}", "",
                  "| metric | " + " | ".join(systems) + " |", "|---|" + "---:|" * len(systems)]
        lines += [f"| {LABELS[m]} | " + " | ".join(_fmt(figures[s].get(m)) if m == "exact_match"
                                                  else str(figures[s].get(m, "-"))
                                                  for s in systems) + " |" for m in metrics]
        lines.append("")
    wrong = [a for a in answers if a.get("tuned_correct") in (0, 0.0, False)]
    lines += ["## Questions the fine-tuned bot got wrong", ""]
    for row in wrong[:examples * 5]:
        lines.append(f"- **{cell(row['question'])}** ({row['split']}): expected "
                     f"{cell(row['reference'])[:80]} — got {cell(row['tuned_answer'])[:120]}")
    return "\n".join(lines) + "\n"


def _plot(report: dict, path: Path) -> None:
    """Grouped bars per figure (share of questions, 0-100 %), one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(report["systems"])
    figures = [(label, values) for label, values in _figure_rows(report)
               if all(v is None or isinstance(v, float) for v in values)]
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=110)
    colors = {"base": "tab:gray", "tuned": "tab:blue", "retrieval": "tab:orange"}
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        x = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(figures))]
        values = [100 * (v[i] or 0) for _, v in figures]
        bars = ax.bar(x, values, width, label=report["systems"][system], color=colors[system])
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(figures)), [label.replace(": ", ":\n") for label, _ in figures],
                  fontsize=7)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of questions")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("What the bot gets right: fine-tuned vs base vs retrieval only")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
