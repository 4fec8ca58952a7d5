"""The eval stage: what a shop owner needs to know before customers talk to the bot.

    builder eval RUN_DIR [--data PREPARED_DIR] [--questions data/sample_questions.csv]
    builder eval runs/demo --train-sample 10 --max-new-tokens 96 --questions data/sample_questions.csv
    builder eval runs/demo --use gguf                       # the exported GGUF answers
    builder eval runs/demo --engine http://127.0.0.1:8001/v1 # a completion server answers

Three systems answer the same questions: the fine-tuned bot (any engine `builder chat` can use:
merged/, base + adapter/, the GGUF, an engine URL), the base model with the same grounding,
template, gate and guard, and a retrieval-only baseline (the best FAQ entry's answer verbatim,
or the decline message when the gate finds nothing). All three look the questions up through
the same grounding step as every door. Asked: every test question (entries in the knowledge the
model never trained on: the "new FAQ row" case), a seeded sample of trained questions, and,
with --questions (builder.evaluation.scores), paraphrases, off-topic and unanswerable questions.

Scores (builder.evaluation.scores): fact accuracy, declines, invented facts, runaway answers,
retrieval hit@1/hit@3, chrF / ROUGE-L / BLEU on Kiwi morphemes, exact match, and the
reference's loss under each model (transformers engines; the loss prompt is the one the model
is given). Answers are generated in batches where the engine batches; the base model's answers
are cached (same base model, template, knowledge, questions, settings and answering code give
the same answers). Writes RUN/eval/ (report.json, answers.csv, report.md, chart.png; rendered
by builder.evaluation.report), complete or absent.
"""

import csv
import gc
import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError
from builder.evaluation.cache import cache_key, cached_replies, save_replies
from builder.evaluation.metrics import METRIC_NOTES
from builder.evaluation.report import EVAL_RUNNING, answer_table, markdown, plot, process_start
from builder.evaluation.scores import (
    loss_summary,
    read_questions,
    retrieval_hits,
    score_questions,
    score_split,
    verdict,
)
from builder.run import Run, staging_dir

SYSTEMS = ("base", "tuned", "retrieval")
SYSTEM_LABELS = {"base": "base + retrieval", "tuned": "fine-tuned + retrieval",
                 "retrieval": "retrieval only"}

# ---------------------------------------------------------------------------------------------
# Loss of the reference answer, exactly as training computed it


def answer_loss(model, tokenizer, template, row: dict, max_length: int = 512) -> tuple[float, int]:
    """(summed NLL in nats, number of answer tokens) of row["output"] + EOS after the prompt.

    Tokens and cut are builder.training.rows' (prompt with BOS, answer + EOS without special tokens);
    only the answer positions are scored, so only their logits are computed.
    """
    import torch
    import torch.nn.functional as F

    from builder.training.rows import tokenize_row

    example = tokenize_row(tokenizer, template, row, max_length, tokenizer.eos_token_id)
    ids = torch.tensor([example["input_ids"]], device=next(model.parameters()).device)
    n_answer = sum(example["completion_mask"])
    with torch.inference_mode():
        # the last n_answer + 1 positions; position t predicts token t + 1
        logits = model(input_ids=ids, logits_to_keep=n_answer + 1).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, -n_answer:], reduction="sum").item(), n_answer


# ---------------------------------------------------------------------------------------------
# The questions and the three systems


@dataclass
class Plan:
    """What one eval asks, of which run, with which engine."""

    run: Run
    meta: dict
    data_dir: Path
    rows: dict  # {"test": [row], "train_sample": [row]}
    asked: list  # the question file's questions
    items: list  # (question, context) of every row, then of every asked question
    settings: dict  # as written into the report
    max_new_tokens: int
    batch_size: int
    use: str = "auto"
    engine: str = "local"
    engine_model: str | None = None
    judge: object = None  # builder.evaluation.judge.JudgeSpec


def _pick_rows(meta: dict, dataset, train_sample: int, limit: int | None) -> dict[str, list[dict]]:
    from builder.config import config_from_dict
    from builder.training.rows import split_validation

    # only rows the run trained on: the validation rows carved from train were never learned
    trained, _ = split_validation(dataset["train"], config_from_dict(meta["config"]))
    n = min(train_sample, len(trained))
    picked = sorted(random.Random(meta.get("seed", 0)).sample(range(len(trained)), n))
    return {"test": [dict(r) for r in dataset["test"]][:limit],
            "train_sample": [dict(trained[i]) for i in picked]}


def _base_inputs(run: Run, tuned) -> dict:
    """What the base model shares with the tuned bot: its tokenizer, end tokens, device,
    template and knowledge (taken before the tuned model is dropped)."""
    from builder.answering.engines.transformers import TransformersEngine, load_tokenizer

    engine = getattr(tuned.engine, "inner", tuned.engine)  # (not the answers it shares)
    shared = {"template": tuned.template, "knowledge": tuned.knowledge, "rag": tuned.rag}
    if isinstance(engine, TransformersEngine):
        return {**shared, "tokenizer": engine.tokenizer, "end_ids": set(engine.end_ids),
                "device": engine.device}
    import torch  # a GGUF or an engine URL: the tokenizer training saved, this machine's device

    model_dir, adapter_dir = run.weights("auto")
    has_own = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
    return {**shared, "tokenizer": load_tokenizer(adapter_dir if has_own else model_dir),
            "end_ids": None, "device": torch.device("cuda" if torch.cuda.is_available()
                                                    else "cpu")}


def _base_bot(run: Run, template, knowledge, rag, tokenizer, end_ids, device):
    """The base model behind the tuned bot's tokenizer, template, end tokens and knowledge."""
    from transformers import AutoModelForCausalLM

    from builder.answering.chatbot import Chatbot
    from builder.answering.engines.transformers import TransformersEngine, end_token_ids, load_dtype

    path = run.base_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype(path, device))
    model = model.to(device).eval()
    if end_ids is None:
        end_ids = set(run.meta().get("end_token_ids") or []) | end_token_ids(
            model.generation_config, tokenizer)
    base = TransformersEngine(model, tokenizer, end_ids=end_ids,
                              stop_markers=template.stop_markers,
                              repetition_penalty=rag.repetition_penalty if rag else 1.0)
    return Chatbot(base, template, knowledge=knowledge, rag=rag)


def engine_label(bot) -> str:
    """Which weights answered: merged, adapter, the GGUF file, or a remote engine's model."""
    engine = bot.engine
    if engine.name == "transformers":
        return "adapter" if hasattr(engine.model, "peft_config") else "merged"
    if engine.name == "gguf":
        return f"gguf ({engine.path.name})" if engine.path else "gguf"
    return f"remote engine ({engine.model})"  # never the URL: it can carry credentials


def _free_memory(device) -> None:
    """Give a dropped model's memory back before the next one loads (an 8B model is ~16 GB)."""
    import torch

    gc.collect()  # a model's modules and hooks hold reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def retrieval_replies(bot, items: list[tuple[str, str]]) -> list:
    """The baseline: the best entry's answer verbatim, or the decline message under the gate,
    through the bot's own grounding step (what the bot answers before its model is trained)."""
    from builder.answering.guard import Reply, combine

    replies = []
    for item in items:
        g = bot.ground(*item)
        replies.append(combine(Reply(), [bot.faq_reply(p, Reply()) for p in g.parts])
                       if g.parts else bot.faq_reply(g, Reply()))
    return replies


def _losses(bot, rows: dict, max_length: int) -> dict | None:
    """{split: [(nll, tokens)]}: each reference under the model, after the prompt it is given
    (the grounding's entries, as the model would be asked without the word-for-word lookup);
    None for an engine without the model here (a GGUF, an engine URL)."""
    engine = bot.engine
    if engine.name != "transformers":
        return None
    out = {}
    for split, split_rows in rows.items():
        out[split] = []
        for row in split_rows:
            if bot.grounder is not None:
                g = bot.grounder.ground(row["instruction"], row.get("input") or "", exact=False)
                row = {**row, "faq": g.faq}
            out[split].append(answer_loss(engine.model, engine.tokenizer, bot.template, row,
                                          max_length))
    return out


# ---------------------------------------------------------------------------------------------
# The stage


def evaluate(run_dir, *, data_dir=None, train_sample: int = 20, max_new_tokens: int = 128,
             limit: int | None = None, questions=None, batch_size: int = 8, use: str = "auto",
             engine: str = "local", engine_model: str | None = None, judge=None,
             log=print) -> dict:
    """Score base, tuned and retrieval-only answers; writes RUN/eval/; returns the report.
    `judge`: a builder.evaluation.judge.JudgeSpec, an LLM grading every answer too."""
    from builder.training.rows import load_prepared

    run = Run(run_dir)
    if train_sample < 0:
        raise UserError(f"--train-sample {train_sample}: give 0 or more training questions")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give 1 or more test questions (or leave it out for all)")
    run.require_model()
    meta, data_dir = run.meta(), run.data_dir(data_dir)
    asked = read_questions(questions) if questions else []
    rows = _pick_rows(meta, load_prepared(data_dir), train_sample, limit)
    items = [(r["instruction"], r.get("input") or "") for split in rows.values() for r in split]
    # a follow-up is asked after its earlier question, as a conversation would
    items += [(q["question"], "", (q["earlier"],) if q.get("earlier") else ()) for q in asked]
    settings = {"max_new_tokens": max_new_tokens, "train_sample": train_sample, "limit": limit,
                "questions": str(questions) if questions else None, "decoding": "greedy",
                "batch_size": batch_size, "sample_seed": meta.get("seed", 0),
                "metrics": METRIC_NOTES}
    plan = Plan(run, meta, data_dir, rows, asked, items, settings, max_new_tokens, batch_size,
                use, engine, engine_model, judge)
    log(f"evaluating {run.path}: {len(rows['test'])} test, {len(rows['train_sample'])} training "
        f"and {len(asked)} file questions; up to {max_new_tokens} new tokens, {batch_size} at a time")

    running = run.path / EVAL_RUNNING  # the page shows "evaluation running" while it exists
    # the process that writes it: a killed eval leaves the file, and the page checks the PID
    running.write_text(json.dumps({"pid": os.getpid(), "process_start": process_start(
        os.getpid()), "started": time.time()}))
    try:
        return _evaluate(plan, log)
    finally:
        running.unlink(missing_ok=True)


def _answers(plan: Plan, log) -> tuple[dict, list, dict, object, str, float]:
    """Every system's replies, the tuned model's own answers to the split questions, the
    losses, the tuned bot's knowledge and grounding (for the scores), its weights and time."""
    from builder.answering.chatbot import load_chatbot
    from builder.embedded import cache_root

    options = dict(max_new_tokens=plan.max_new_tokens, batch_size=plan.batch_size)
    max_length = plan.meta["config"]["model"]["max_seq_length"]
    # The tuned bot, then the retrieval-only baseline, then the base model (one model at a time)
    started = time.perf_counter()
    tuned = load_chatbot(plan.run.path, plan.use, engine=plan.engine,
                         engine_model=plan.engine_model)
    weights = engine_label(tuned)
    replies = {"tuned": tuned.reply_batch(plan.items, **options)}
    # the model's own answers to the split questions, without the FAQ lookup of questions asked
    # word for word (which answers every one of them with its entry)
    n_split = sum(map(len, plan.rows.values()))
    model_alone = []
    if tuned.knowledge is not None and n_split:
        tuned.exact_answers = False
        model_alone = tuned.reply_batch(plan.items[:n_split], **options)
        tuned.exact_answers = True
    losses = {"tuned": _losses(tuned, plan.rows, max_length)}
    tuned_s = time.perf_counter() - started
    if tuned.knowledge is not None:
        replies["retrieval"] = retrieval_replies(tuned, plan.items)
    shared = _base_inputs(plan.run, tuned)
    del tuned
    _free_memory(shared["device"])
    base = _base_bot(plan.run, **shared)
    key = cache_key(plan.meta, base, plan.items, plan.max_new_tokens)
    cache = cache_root() / "eval-base" / f"{key}.json"
    cached = cached_replies(cache, base.knowledge)
    if cached is not None and len(cached) == len(plan.items):
        log(f"base model answers: from the cache ({cache.name})")
        replies["base"] = cached
    else:
        replies["base"] = base.reply_batch(plan.items, **options)
        save_replies(cache, replies["base"])
    losses["base"] = _losses(base, plan.rows, max_length)
    return replies, model_alone, losses, base, weights, tuned_s


def _judge(plan: Plan, replies: dict, rows: dict, asked: list, decline: str, log) -> dict:
    """The judge's grades of every answer, with the fact checks it is compared with."""
    from builder.evaluation.judge import judge_replies
    from builder.evaluation.scores import answered_right
    from builder.facts import fact_recall

    truth = [(lambda r, ref=row["output"]: None if fact_recall(r.text, ref) is None
              else not r.declined and fact_recall(r.text, ref) == 1.0)
             for split in rows.values() for row in split]
    truth += [(lambda r, q=q: answered_right(q, r)) if q["expected"]
              else (lambda r: r.declined) for q in asked]
    facts_right = {s: [check(r) for check, r in zip(truth, rs)] for s, rs in replies.items()}
    log(f"judge: {plan.judge.model} grades {len(plan.items)} answers of {len(replies)} systems")
    # a follow-up is shown to the judge after its earlier question, as the customer asked it
    asked_as = [" / ".join([*(item[2] if len(item) > 2 else ()), item[0]]) for item in plan.items]
    return judge_replies(plan.judge, asked_as, replies, facts_right, decline, log)


def _evaluate(plan: Plan, log) -> dict:
    from builder.data.prepare import replace_dir
    from builder.data.tables import excel_safe
    from builder.training.sft import file_sha256

    started = time.perf_counter()
    replies, model_alone, losses, base, weights, tuned_s = _answers(plan, log)
    knowledge, rag = base.knowledge, base.rag
    del base
    wall = time.perf_counter() - started
    run_dir, meta, data_dir, rows, asked = plan.run.path, plan.meta, plan.data_dir, plan.rows, \
        plan.asked

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
        for split, figures in loss_summary(losses[system] or {}).items():
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
        "settings": plan.settings,
        "rows": {**{split: len(r) for split, r in rows.items()}, "questions": len(asked)},
        "systems": {s: SYSTEM_LABELS[s] for s in systems},
        "splits": splits,
        "questions": {s: score_questions(asked, asked_replies[s], decline) for s in systems}
        if asked else {},
        "retrieval": retrieval_hits(knowledge, rag, asked, rows["test"]) if knowledge else {},
        "wall_time_s": round(wall, 1),
        "tuned_answers_s": round(tuned_s, 1),
    }
    if plan.judge is not None:
        report["judge"] = _judge(plan, replies, rows, asked, decline, log)
    report["summary"] = {m: {s: v[m] for s, v in splits.get("test", {}).items() if m in v}
                         for m in ("fact_accuracy", "chrf", "rouge_l", "bleu", "exact_match",
                                   "loss", "ppl")}
    report["verdict"] = verdict(report)

    # Write eval/ into a staging folder, then swap it in
    staging = staging_dir(run_dir, ".eval-")  # and a killed eval's go
    try:
        answers = answer_table(rows, by_split, asked, asked_replies, systems, model_alone)
        for system, grades in (report.get("judge") or {}).pop("grades", {}).items():
            for record, grade in zip(answers, grades):
                record[f"{system}_judge_faithful"] = "" if grade is None else grade["faithful"]
                record[f"{system}_judge_helpful"] = "" if grade is None else grade["helpful"]
        (staging / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2),
                                             encoding="utf-8")
        # utf-8-sig: Excel, which most shops open a CSV with, then shows Hangul right
        with (staging / "answers.csv").open("w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(answers[0]) if answers else ["split"])
            writer.writeheader()
            writer.writerows({k: excel_safe(v) for k, v in record.items()} for record in answers)
        (staging / "report.md").write_text(markdown(report, answers), encoding="utf-8")
        plot(report, staging / "chart.png")
        staging.chmod(0o755)
        replace_dir(staging, run_dir / "eval")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {run_dir / 'eval'} in {wall:.0f} s")  # the door prints format_summary(report)
    return report


