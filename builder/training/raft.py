"""Training rows for grounded answers (RAFT-style): a question worded the way customers type it,
the FAQ entries retrieved for it, and the answer to learn: the right entry's answer, or the
shop's decline message when the entries shown do not answer it.

    rows = grounded_rows(train_rows, knowledge, template, rag, seed=123)
    # [{"instruction": "배송비 얼마임?", "input": "", "faq": "질문: ...", "output": "...",
    #   "kind": "answer" | "near_miss" | "off_topic", "entry": 0}, ...]

Per FAQ row, one training row:
- its question is the original wording only `rag.original_share` of the time, else one of its
  rule-made rewrites (builder.answering.rewrite) or, when `builder generate --paraphrases` wrote them,
  an LLM paraphrase: a model that only sees exact copies answers only exact copies;
- its context is what retrieval returns for that wording, with the row's own entry put in
  (at a random place) when retrieval missed it, so the model learns to pick the right entry
  among neighbours;
- `rag.near_miss_share` of rows are near misses: the own entry (and any entry with the same
  answer) is left out of the context and the answer is the decline message, so the model
  learns to decline a question its context does not answer rather than copy a neighbour.
Off-topic questions from the shipped list (`rag.off_topic_share` of the row count) are added
with their retrieved context and the decline message.
"""

import random

from builder.facts import key_facts
from builder.answering.gate import off_topic_questions
from builder.answering.knowledge import Entry, Hit, Knowledge
from builder.answering.rewrite import rewrites


def row_key(question: str, context: str, answer: str) -> tuple:
    return (" ".join(question.split()), " ".join(context.split()), " ".join(answer.split()))


def find_entry(knowledge: Knowledge, row: dict) -> Entry | None:
    wanted = row_key(row["instruction"], row.get("input") or "", row["output"])
    for entry in knowledge.entries:
        if row_key(entry.question, entry.context, entry.answer) == wanted:
            return entry
    return None


def with_entry(hits: list[Hit], entry: Entry, k: int, rng: random.Random) -> list[Entry]:
    """The retrieved entries, with `entry` among them (replacing the last when it was missed)."""
    entries = [h.entry for h in hits]
    if entry.id in {e.id for e in entries}:
        return entries
    entries = entries[: k - 1]
    entries.insert(rng.randrange(len(entries) + 1), entry)
    return entries


def question_variants(question: str, paraphrases: dict[str, list[str]]) -> list[str]:
    return rewrites(question) + paraphrases.get(question, [])


def grounded_rows(rows, knowledge: Knowledge, template, rag, *, seed: int,
                  paraphrases: dict[str, list[str]] | None = None,
                  off_topic: bool = True) -> list[dict]:
    """Training (or validation) rows with retrieved context for `rows` of the prepared split."""
    rng = random.Random(seed)
    paraphrases = paraphrases or {}
    # Pick each row's wording and role first, then embed all the questions in one batch
    plans = []
    for row in rows:
        question = row["instruction"]
        if rng.random() >= rag.original_share:
            question = rng.choice(question_variants(question, paraphrases))
        plans.append((row, question, rng.random() < rag.near_miss_share))
    pool = off_topic_questions()
    n_off = min(len(pool), max(1, round(len(rows) * rag.off_topic_share))) if off_topic and rows else 0
    off_topic_picked = rng.sample(pool, n_off)
    knowledge.prime([question for _, question, _ in plans] + off_topic_picked)

    out = []
    for row, question, near_miss in plans:
        entry = find_entry(knowledge, row)
        if entry is None:  # the knowledge was rebuilt from another file: train it as it is
            entry = Entry(-1, None, row["instruction"], row.get("input") or "", row["output"])
        if near_miss:
            # leave out every entry that answers it too (same answer, or sharing a key fact):
            # a near miss whose context does answer the question teaches declining answers
            facts = key_facts(entry.answer)
            same = {e.id for e in knowledge.entries
                    if e.answer == entry.answer or facts & key_facts(e.answer)} | {entry.id}
            shown = [h.entry for h in knowledge.search(question, rag.k, exclude=same)]
            answer, kind = rag.decline_message, "near_miss"
        else:
            shown = with_entry(knowledge.search(question, rag.k), entry, rag.k, rng)
            answer, kind = row["output"], "answer"
        out.append({"instruction": question, "input": row.get("input") or "",
                    "faq": template.render_faq(shown), "output": answer, "kind": kind,
                    "entry": entry.id})
    for question in off_topic_picked:
        shown = [h.entry for h in knowledge.search(question, rag.k)]
        out.append({"instruction": question, "input": "", "faq": template.render_faq(shown),
                    "output": rag.decline_message, "kind": "off_topic", "entry": -1})
    rng.shuffle(out)
    return out
