"""Can the fine-tuned model itself tell whether an FAQ entry answers a question? A measurement
of the "model as judge" gate design against the default rules, on the dev halves of the
question sets (data/questions/*_dev.csv).

    python bench/model_judge.py runs/demo            # a trained run of the sample FAQ
    python bench/model_judge.py RUN --shop salon     # a run trained on data/questions/salon_faq.csv

The judge is the answer's likelihood with and without the question: how many nats per token
the entry's answer gains when the model reads the customer's question rather than an empty one
(pointwise mutual information of question and answer under the tuned model, the retrieved entry
in the prompt both times). Its threshold is set on the FAQ's own questions: a rule rewrite of
each question against its own entry (answerable) and against the best other entry (a near
miss). Two designs use it: "veto" (the rules pass AND the model agrees) and "rescue" (the
rules pass OR the model is sure). Retrieval-only answers are scored as bench/gate_designs.py
scores them. Prints the table and the seconds per question the judge costs.
"""

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("paraphrase", "vocabulary", "off_topic", "near_miss")


def pmi(bot, question: str, entry) -> float:
    """Nats per answer token the question adds to the entry's answer."""
    from builder.evaluation.evaluate import answer_loss

    engine, faq = bot.engine, bot.template.render_faq([entry])
    row = {"output": entry.answer, "input": entry.context, "faq": faq}
    with_q, n = answer_loss(engine.model, engine.tokenizer, bot.template,
                            {**row, "instruction": question})
    without, _ = answer_loss(engine.model, engine.tokenizer, bot.template,
                             {**row, "instruction": ""})
    return (without - with_q) / n


def threshold(bot, sample: int = 60) -> tuple[float, float]:
    """(threshold, balanced accuracy) on rewrites against their own vs the best other entry."""
    from builder.answering.rewrite import rewrites

    kb, rng = bot.knowledge, random.Random(0)
    pos, neg = [], []
    for entry in rng.sample(kb.entries, min(sample, len(kb.entries))):
        question = rng.choice(rewrites(entry.question))
        pos.append(pmi(bot, question, entry))
        other = kb.search(question, 1, exclude={e.id for e in kb.entries
                                                if e.answer == entry.answer})
        neg.append(pmi(bot, question, other[0].entry))
    best = (0.0, 0.0)
    for t in sorted(pos + neg):
        score = (sum(p >= t for p in pos) / len(pos) + sum(n < t for n in neg) / len(neg)) / 2
        best = max(best, (score, t))
    return best[1], best[0]


def main(argv=None) -> int:
    from builder.answering.chatbot import load_chatbot
    from builder.evaluation.scores import answered_right, read_questions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--shop", default="coffee")
    args = parser.parse_args(argv)
    bot = load_chatbot(args.run_dir)
    started = time.perf_counter()
    tau, balanced = threshold(bot)
    print(f"judge threshold {tau:.3f} nats/token (balanced accuracy on the FAQ's own rewrites "
          f"vs near misses {balanced:.2f}); {time.perf_counter() - started:.0f} s to set")
    questions = [q for q in read_questions(ROOT / "data" / "questions" / f"{args.shop}_dev.csv")
                 if q["kind"] in KINDS]
    counts = {d: {k: [0, 0] for k in KINDS} for d in ("rules", "veto", "rescue")}
    spent = []
    for q in questions:
        g = bot.ground(q["question"])
        top = g.hits[0] if g.hits else None
        started = time.perf_counter()
        score = pmi(bot, q["question"], top.entry) if top else float("-inf")
        spent.append(time.perf_counter() - started)
        passes = {"rules": not g.declined, "veto": not g.declined and score >= tau,
                  "rescue": not g.declined or score >= 2 * tau}
        for design, answered in passes.items():
            from builder.answering.guard import Reply

            reply = (Reply(text=top.entry.answer, sources=[top]) if answered and top
                     else Reply(text="", declined=True))
            right = answered_right(q, reply) if q["expected"] else reply.declined
            counts[design][q["kind"]][0] += right
            counts[design][q["kind"]][1] += 1
    print(f"\n{args.shop} (dev), retrieval-only answers; the judge costs "
          f"{sum(spent) / len(spent):.2f} s per question on this machine")
    print("| design | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for design, row in counts.items():
        print(f"| {design} | " + " | ".join(f"{a}/{b}" for a, b in row.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
