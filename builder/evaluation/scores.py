"""The eval's scores: fact accuracy on FAQ rows, declines on off-topic and unanswerable
questions, invented facts, runaways, retrieval hit@k, loss and the verdict against the
retrieval-only baseline; and the question files they are measured on.

A question file (`builder eval --questions FILE.csv`) has the columns question, expected
(empty = must decline; facts an answer needs all of, '|'-separated), optional kind, line (the
FAQ file line(s) that answer it, ';') and earlier (a follow-up's first question). Kinds:
answered ones (paraphrase: the FAQ's words reworded; vocabulary: the customer's own words;
follow_up: a short question after `earlier`; two_entry: needs two entries) and declined ones
(off_topic; unanswerable; near_miss: a detail of an FAQ topic the FAQ does not give).
"""

import csv
import math
from pathlib import Path

from builder.errors import UserError
from builder.evaluation.metrics import corpus_bleu, corpus_chrf, exact_match, rouge_l

ANSWERED_KINDS = ("paraphrase", "vocabulary", "follow_up", "two_entry")
DECLINED_KINDS = ("off_topic", "unanswerable", "near_miss")
QUESTION_KINDS = ANSWERED_KINDS + DECLINED_KINDS


def read_questions(path) -> list[dict]:
    """A question file: columns question, expected (empty = must decline), optional kind
    (QUESTION_KINDS), line (the FAQ file line(s) that answer it, ';') and earlier."""
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
        if (kind in ANSWERED_KINDS) != bool(expected):
            raise UserError(f"{path} line {number}: a {kind} question "
                            + ("needs an expected fact" if kind in ANSWERED_KINDS else
                               "leaves expected empty (must decline)")
                            + f"; answered kinds: {', '.join(ANSWERED_KINDS)}")
        if expected and not any(part.strip() for part in expected.split("|")):
            raise UserError(f"{path} line {number}: expected has no fact between its '|'")
        earlier = (row.get("earlier") or "").strip()
        if (kind == "follow_up") != bool(earlier):
            raise UserError(f"{path} line {number}: "
                            + ("a follow_up needs the earlier question in the column earlier"
                               if kind == "follow_up" else
                               "only a follow_up has an earlier question"))
        try:
            lines = [int(x) for x in (row.get("line") or "").replace(",", ";").split(";") if x.strip()]
        except ValueError:
            raise UserError(f"{path} line {number}: line must be FAQ file line numbers like 12;14") from None
        out.append({"question": question, "expected": expected, "kind": kind, "lines": lines,
                    "earlier": earlier})
    if not out:
        raise UserError(f"{path}: no questions under the header")
    return out


def share(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def _invented_shown(reply, question: str, context: str, decline_message: str) -> bool:
    """The shown answer states a fact found in none of its sources (nor the customer's words)."""
    from builder.facts import invented

    sources = [h.entry.text for h in reply.sources] + [decline_message]
    return bool(invented(reply.text, sources, customer=[question, context]))


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
        "fact_accuracy": share(x == 1.0 for x in with_facts),
        "rows_with_facts": len(with_facts),
        "declined": share(r.declined for r in replies),
        # asked word for word as in the FAQ: the entry's own answer, nothing generated
        "exact": sum(r.exact for r in replies),
        "invented": sum(_invented_shown(r, row["instruction"], row.get("input") or "",
                                        decline_message) for r, row in zip(replies, rows)),
        "chrf": round(corpus_chrf(hyps, refs), 2),
        "rouge_l": round(sum(map(rouge_l, hyps, refs)) / len(refs), 4),
        "bleu": round(corpus_bleu(hyps, refs), 2),
        "exact_match": share(exact_match(h, ref) for h, ref in zip(hyps, refs)),
    }


def answered_right(question: dict, reply) -> bool:
    """Not declined, and every expected fact ('|'-separated) stated."""
    from builder.facts import states

    return not reply.declined and all(states(reply.text, part.strip())
                                      for part in question["expected"].split("|") if part.strip())


def score_questions(questions: list[dict], replies: list, decline_message: str) -> dict:
    """Paraphrase fact accuracy, decline rates, invented facts and runaways on a question file."""
    from builder.facts import states

    def of(kind):
        return [(q, r) for q, r in zip(questions, replies) if q["kind"] == kind]

    paraphrases = of("paraphrase")
    return {
        **{f"{kind}_facts": share(answered_right(q, r) for q, r in of(kind))
           for kind in ANSWERED_KINDS},
        "paraphrases_declined": share(r.declined for _, r in paraphrases),
        "vocabulary_declined": share(r.declined for _, r in of("vocabulary")),
        **{f"{kind}_declined": share(r.declined for _, r in of(kind)) for kind in DECLINED_KINDS},
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
    from builder.training.raft import find_entry

    def hits_at(pairs):
        found1 = found3 = 0
        for question, is_gold in pairs:
            entries = [h.entry for h in knowledge.search(question, max(3, rag.k))]
            found1 += is_gold(entries[0])
            found3 += any(is_gold(e) for e in entries[:3])
        n = len(pairs)
        return {"hit@1": share([1] * found1 + [0] * (n - found1)),
                "hit@3": share([1] * found3 + [0] * (n - found3)), "questions": n}

    out = {}
    # one entry answers each (two-entry questions need two); a follow-up is searched as read
    labelled = [q for q in questions if q["lines"] and q["kind"] != "two_entry"]
    if labelled:
        out["paraphrases"] = hits_at([(f"{q.get('earlier', '')} {q['question']}".strip(),
                                       lambda e, q=q: e.line in q["lines"]) for q in labelled])
    pairs = []
    for row in test_rows:
        entry = find_entry(knowledge, row)
        if entry is not None:
            pairs.append((row["instruction"], lambda e, entry=entry: e.id == entry.id))
    if pairs:
        out["test_split"] = hits_at(pairs)
    return out


def loss_summary(losses: dict) -> dict:
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
                   ("fact accuracy in customers' own words", q, "vocabulary_facts"),
                   ("follow-up fact accuracy", q, "follow_up_facts"),
                   ("two-entry fact accuracy", q, "two_entry_facts"),
                   ("off-topic decline rate", q, "off_topic_declined"),
                   ("unanswerable decline rate", q, "unanswerable_declined"),
                   ("near-miss decline rate", q, "near_miss_declined")]
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
