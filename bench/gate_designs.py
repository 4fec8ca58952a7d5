"""Which way of reading customers' words answers them best? Each design of the knowledge and its
decline gate is built on each shop's FAQ and asked the shop's question sets; the answers are the
retrieval-only baseline's (the best entry's answer or the decline message, through the same
grounding step as every door), scored per question kind as `builder eval` scores them.

    python bench/gate_designs.py                  # both shops, dev and held-out halves
    python bench/gate_designs.py --half dev       # only the development halves
    python bench/gate_designs.py --designs rules,lexicon+learned

Shops: the sample FAQ (data/sample_faq.csv, data/questions/coffee_*.csv) and a second shop of a
different trade (data/questions/salon_faq.csv, salon_*.csv). Writes
bench/results/gate_designs.json and prints one table per shop and half.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHOPS = {"coffee": ROOT / "data" / "sample_faq.csv",
         "salon": ROOT / "data" / "questions" / "salon_faq.csv"}
DESIGNS = {  # name: (lexicon, gate, learned gate's recall target, dense slack for lexicon words)
    "rules": (False, "rules", None, 0.0),
    "lexicon": (True, "rules", None, 0.0),
    "lexicon+slack": (True, "rules", None, 0.02),
    "learned": (False, "learned", 0.95, 0.0),
    "lexicon+learned": (True, "learned", 0.95, 0.0),
}
KINDS = ("paraphrase", "vocabulary", "follow_up", "two_entry",
         "off_topic", "near_miss", "unanswerable")


def build(faq: Path, lexicon: bool, gate: str, recall: float | None, slack: float):
    from builder.answering import learned_gate
    from builder.answering.chatbot import Chatbot
    from builder.answering.indexing import entries_from_file
    from builder.answering.knowledge import knowledge_for
    from builder.config import RagConfig
    from builder.prompts import load_template

    rag = RagConfig()
    from builder.answering import gate as rules

    rules.LEXICON_SLACK = slack
    rag.synonyms, rag.gate = lexicon, gate
    entries, _ = entries_from_file(faq)
    learned_gate.RECALL = recall or learned_gate.RECALL
    started = time.perf_counter()
    knowledge = knowledge_for(entries, rag, source=faq.name)
    build_s = time.perf_counter() - started
    return Chatbot(None, load_template("korean"), knowledge=knowledge, rag=rag), build_s


def ask(bot, questions: list[dict]) -> dict:
    from builder.evaluation.evaluate import retrieval_replies
    from builder.evaluation.scores import answered_right

    items = [(q["question"], "", (q["earlier"],) if q["earlier"] else ()) for q in questions]
    replies = retrieval_replies(bot, items)
    out = {}
    for kind in KINDS:
        pairs = [(q, r) for q, r in zip(questions, replies) if q["kind"] == kind]
        if not pairs:
            continue
        if pairs[0][0]["expected"]:
            right = [answered_right(q, r) for q, r in pairs]
        else:
            right = [r.declined for _, r in pairs]
        out[kind] = [sum(right), len(right)]
    out["wrong"] = [{"kind": q["kind"], "question": q["question"], "answer": r.text[:60]}
                    for q, r in zip(questions, replies)
                    if (answered_right(q, r) if q["expected"] else r.declined) is False]
    return out


def main(argv=None) -> int:
    from builder.evaluation.scores import read_questions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=("dev", "heldout", "both"), default="both")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--shops", default=",".join(SHOPS))
    parser.add_argument("--show-wrong", action="store_true",
                        help="list the questions each design gets wrong (dev halves only)")
    args = parser.parse_args(argv)
    halves = ("dev", "heldout") if args.half == "both" else (args.half,)
    results = {}
    for shop in args.shops.split(","):
        sets = {h: read_questions(ROOT / "data" / "questions" / f"{shop}_{h}.csv") for h in halves}
        for design in args.designs.split(","):
            bot, build_s = build(SHOPS[shop], *DESIGNS[design])
            gate = bot.knowledge.settings["gate"]
            for half, questions in sets.items():
                figures = ask(bot, questions)
                wrong = figures.pop("wrong")
                results.setdefault(shop, {}).setdefault(half, {})[design] = {
                    **figures, "build_s": round(build_s, 1),
                    "gate": gate.get("learned", {}).get("held_out") or gate.get("measured")}
                if args.show_wrong and half == "dev":
                    for w in wrong:
                        print(f"  [{shop}/{design}] {w['kind']}: {w['question']} -> {w['answer']}")
    for shop, by_half in results.items():
        for half, by_design in by_half.items():
            print(f"\n{shop} ({half})")
            print("| design | " + " | ".join(KINDS) + " | build s |")
            print("|---" * (len(KINDS) + 2) + "|")
            for design, figures in by_design.items():
                cells = [f"{figures[k][0]}/{figures[k][1]}" if k in figures else "-" for k in KINDS]
                print(f"| {design} | " + " | ".join(cells) + f" | {figures['build_s']} |")
    out = ROOT / "bench" / "results" / "gate_designs.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
