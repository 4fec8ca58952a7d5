"""Preference pairs (prompt, chosen, rejected): the SFT run's own sampled answers judged against
the reference, or a file the owner wrote or edited.

    pairs, counts = build_pairs(bot, rows, off_topic, cfg)   # judged samples of the bot
    read_pairs(Path("pairs.csv"))                             # prompt,chosen,rejected[,context]

An answer that misses a key fact of the reference, states a number found in none of the
retrieved entries, answers an off-topic question or declines although its entry was retrieved
is `rejected`; the reference answer (or the decline message) is `chosen`. The prompt of a pair
is the exact prompt its answer was sampled from (Reply.prompt): the grounding step's entries, as
the engine received them. `preference_figures` measures a policy on held-out pairs: how often
it gives the chosen answer more log-probability than the rejected one."""

import csv
import json
import random
import time
from collections import Counter
from pathlib import Path

from builder.answering.guard import is_decline
from builder.config import Config
from builder.errors import UserError
from builder.facts import fact_recall, invented

REASONS = {
    "missing_fact": "misses a key fact of the reference answer",
    "invented_number": "states a number found in none of the retrieved entries",
    "answered_off_topic": "answers a question it should decline",
    "needless_decline": "declines although the entry that answers it was retrieved",
}
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
SAMPLE_BATCH = 8  # sampled answers generated side by side, in one generate call


def judge(answer: str, *, reference: str | None, sources: list[str], decline_message: str,
          entry_retrieved: bool = True) -> str | None:
    """Why `answer` is worse than the reference (a REASONS key), or None when it is fine.
    `reference` None: an off-topic question, where the decline message is the right answer."""
    declined = is_decline(answer, decline_message)
    if reference is None:
        return None if declined else "answered_off_topic"
    if declined:
        return "needless_decline" if entry_retrieved else None
    if invented(answer, sources + [decline_message]):
        return "invented_number"
    recall = fact_recall(answer, reference)
    if recall is not None and recall < 1:
        return "missing_fact"
    return None


def build_pairs(bot, rows: list[dict], off_topic: list[str], cfg: Config, log=print) -> tuple[
        list[dict], dict]:
    """Sampled answers of `bot` (a builder.answering.chatbot.Chatbot) to FAQ rows (instruction, input,
    output) and off-topic questions, judged into pairs; returns (pairs, counts)."""
    from builder.training.raft import find_entry

    p, rag = cfg.prefer, bot.rag
    decline = rag.decline_message if rag is not None else cfg.rag.decline_message
    # the prompt of each pair is the one its answer was sampled from (Reply.prompt): the grounding
    # step's entries, cut as the engine got them
    bot.exact_answers = False  # the model's own answer, not the FAQ's, for questions word for word
    counts: Counter = Counter()
    pairs, seen = [], set()
    asked = [(r["instruction"], r.get("input") or "", r["output"]) for r in rows]
    asked += [(q, "", None) for q in off_topic]
    started = time.perf_counter()
    todo = []  # the questions the model answers: (question, context, reference, sources)
    for question, context, reference in asked:
        grounding = bot.ground(question, context)
        if grounding.declined:
            counts["gated (declined before generating, no pair)"] += 1
            continue
        if grounding.parts:  # answered in two generations: no one prompt to pair
            counts["skipped (two asks, answered in two parts)"] += 1
            continue
        hits = grounding.hits
        if reference is not None and bot.knowledge is not None:
            entry = find_entry(bot.knowledge, {"instruction": question, "input": context,
                                               "output": reference})
            if entry is None or entry.id not in {h.entry.id for h in hits}:
                counts["skipped (own entry not retrieved)"] += 1  # its answer is not in the
                continue  # prompt: teaching it to give that answer teaches it to invent
        sources = [h.entry.text for h in hits] + [question, context]
        if bot.knowledge is None and reference is not None:
            sources.append(reference)  # no retrieval: the reference is what it may state
        todo.append((question, context, reference, sources))
    # p.samples answers per question, sampled in batches (a question's samples side by side)
    per_chunk = max(1, SAMPLE_BATCH // p.samples) * 4
    for start in range(0, len(todo), per_chunk):
        chunk = todo[start:start + per_chunk]
        replies = bot.reply_batch([(q, c) for q, c, *_ in chunk for _ in range(p.samples)],
                                  max_new_tokens=p.max_new_tokens, batch_size=SAMPLE_BATCH,
                                  temperature=p.temperature, top_p=0.95)
        for number, (question, context, reference, sources) in enumerate(chunk):
            for reply in replies[number * p.samples:(number + 1) * p.samples]:
                prompt = reply.prompt  # exactly what the model was given
                answer = (reply.generated or reply.text).strip()
                reason = judge(answer, reference=reference, sources=sources,
                               decline_message=decline, entry_retrieved=True)
                if reason is None:
                    counts["good answers (no pair)"] += 1
                    continue
                if (prompt, answer) in seen:
                    counts["duplicate rejected answers"] += 1
                    continue
                seen.add((prompt, answer))
                counts[reason] += 1
                pairs.append({"question": question, "context": context, "prompt": prompt,
                              "chosen": reference if reference is not None else decline,
                              "rejected": answer, "reason": reason})
        log(f"  {min(start + per_chunk, len(todo))}/{len(todo)} questions answered "
            f"{p.samples} times, {len(pairs)} pairs, {time.perf_counter() - started:.0f} s")
    return pairs, dict(counts)


def read_pairs(path: Path) -> list[dict]:
    """Rows of a prompt/chosen/rejected CSV or JSONL file (optional context, question, reason),
    with a UserError naming the line and the fix for anything else."""
    if not path.is_file():
        raise UserError(f"{path}: no such pairs file (CSV or JSONL with prompt, chosen, rejected)")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".jsonl":
        for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise UserError(f"{path} line {line_no}: not valid JSON ({err.msg}); write one "
                                "object per line") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {line_no}: expected an object with prompt, "
                                "chosen, rejected")
            rows.append((line_no, row))
    elif path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PAIR_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)}; the header "
                                "must name prompt, chosen, rejected (and optionally context)")
            rows = [(line_no, row) for line_no, row in enumerate(reader, 2)]
    else:
        raise UserError(f"{path}: give a .csv or .jsonl pairs file")
    pairs = []
    for line_no, row in rows:
        for column in PAIR_COLUMNS:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path} line {line_no}: '{column}' is missing or empty; every "
                                "pair needs a prompt, a chosen and a rejected answer")
        if row["chosen"].strip() == row["rejected"].strip():
            raise UserError(f"{path} line {line_no}: chosen and rejected are the same text")
        pairs.append({k: (row.get(k) or "") for k in
                      ("question", "context", "prompt", "chosen", "rejected", "reason")})
    if not pairs:
        raise UserError(f"{path}: no pairs in it")
    return pairs


def render_pairs(pairs: list[dict], template, grounder=None) -> list[dict]:
    """A file's pairs with the prompt the model sees. A row with a `question` (pairs.jsonl as
    this stage writes it) keeps its rendered prompt; otherwise `prompt` is the question and it
    is rendered with the run's template and the FAQ entries the grounding step gives it (the
    model's own answer: no word-for-word lookup), as chat does."""
    out = []
    for pair in pairs:
        if pair["question"]:
            out.append(pair)
            continue
        question, context = pair["prompt"], pair["context"]
        faq = grounder.ground(question, context, exact=False).faq if grounder is not None else ""
        out.append({**pair, "question": question,
                    "prompt": template.render(question, context, faq),
                    "reason": pair["reason"] or "from file"})
    return out


def run_grounder(run_dir):
    """The run's grounding step without its model (None for a run without knowledge)."""
    from builder.answering.grounding import Grounder
    from builder.answering.knowledge import Knowledge
    from builder.run import Run

    run = Run(run_dir)
    template = run.template()
    if not template.grounded:
        return None
    return Grounder(Knowledge.load(run.require_knowledge().knowledge_dir), run.config().rag,
                    template)


def write_pairs(pairs: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair, ensure_ascii=False) + "\n")


def split_pairs(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held out), held out by question: no question has pairs on both sides."""
    questions = sorted({p["question"] for p in pairs})
    random.Random(seed).shuffle(questions)
    n_held = round(len(questions) * fraction) if len(questions) > 1 else 0
    held = set(questions[:n_held])
    return [p for p in pairs if p["question"] not in held], [p for p in pairs if p["question"] in held]


def answer_logps(model, tokenizer, prompt: str, answers: list[str], max_length: int) -> list[float]:
    """Summed log-probability of each answer (+ EOS) after `prompt`, tokenized as training does."""
    import torch
    import torch.nn.functional as F

    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    out = []
    for answer in answers:
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (prompt_ids + answer_ids)[:max_length]
        n = len(ids) - len(prompt_ids)
        if n <= 0:
            out.append(0.0)
            continue
        tensor = torch.tensor([ids], device=next(model.parameters()).device)
        with torch.inference_mode():
            logits = model(input_ids=tensor, use_cache=False).logits[0, -n - 1:-1].float()
        out.append(-F.cross_entropy(logits, tensor[0, -n:], reduction="sum").item())
    return out


def preference_figures(model, tokenizer, pairs: list[dict], max_length: int) -> dict:
    """Share of pairs whose chosen answer is likelier than the rejected one, the mean log-prob
    margin (chosen - rejected, nats) and each pair's margin."""
    if not pairs:
        return {"pairs": 0, "accuracy": None, "logp_margin": None, "margins": []}
    was_training = model.training
    model.eval()
    margins = []
    for pair in pairs:
        chosen, rejected = answer_logps(model, tokenizer, pair["prompt"],
                                        [pair["chosen"], pair["rejected"]], max_length)
        margins.append(chosen - rejected)
    model.train(was_training)
    return {"pairs": len(pairs), "accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
            "logp_margin": round(sum(margins) / len(margins), 4), "margins": margins}


def held_out_summary(before: dict, after: dict, beta: float, method: str) -> dict:
    """Before/after figures on the held-out pairs. For DPO the reward of an answer is
    beta * (log pi - log pi_ref) and the reference is the SFT model (= before), so the held-out
    reward margin is beta times the change of the log-prob margin, and the reward accuracy the
    share of pairs whose margin grew."""
    summary = {"pairs": before["pairs"],
               "before": {k: before[k] for k in ("accuracy", "logp_margin")},
               "after": {k: after[k] for k in ("accuracy", "logp_margin")}}
    if before["pairs"] and method == "dpo":
        deltas = [a - b for a, b in zip(after["margins"], before["margins"])]
        summary["reward_margin"] = round(beta * sum(deltas) / len(deltas), 4)
        summary["reward_accuracy"] = round(sum(d > 0 for d in deltas) / len(deltas), 4)
    return summary
