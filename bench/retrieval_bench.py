"""Retrieval speed and quality on the sample FAQ: load time, time per question, hit@1/hit@3, and
how well the decline gate separates.

    python bench/retrieval_bench.py                       # sample FAQ + data/sample_questions.csv
    python bench/retrieval_bench.py FAQ_FILE QUESTIONS_CSV

Goals: load <= 3 s (Kiwi + BM25 + dense model, after a first build), one question <= 50 ms on
2 cores once loaded (median; search + gate, as the chat does). Builds the knowledge in a temp
folder, then loads it in a fresh child process so the load time counts everything.
Writes bench/results/retrieval_bench.json.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD_AND_ASK = """
import json, statistics, sys, time
started = time.perf_counter()
from builder.answering.knowledge import Knowledge
from builder.answering.text import kiwi
kb = Knowledge.load(sys.argv[1]); kiwi()
load_s = time.perf_counter() - started
from builder.evaluation.scores import read_questions
questions = read_questions(sys.argv[2])
kb.search(questions[0]["question"], 3)  # first call warms caches
times, hit1, hit3, labelled, gate = [], 0, 0, 0, {}
for q in questions:
    t = time.perf_counter()
    hits = kb.search(q["question"], 3)
    relevant = kb.relevant(q["question"], hits)
    times.append(time.perf_counter() - t)
    gate.setdefault(q["kind"], []).append(not relevant)
    if q["lines"]:
        labelled += 1
        lines = [h.entry.line for h in hits]
        hit1 += lines[0] in q["lines"]
        hit3 += bool(set(lines) & set(q["lines"]))
print(json.dumps({"load_s": round(load_s, 2),
                  "median_ms": round(1000 * statistics.median(times), 1),
                  "p95_ms": round(1000 * sorted(times)[int(0.95 * len(times))], 1),
                  "hit@1": f"{hit1}/{labelled}", "hit@3": f"{hit3}/{labelled}",
                  "declined_by_gate": {k: f"{sum(v)}/{len(v)}" for k, v in gate.items()}}))
"""


def main() -> None:
    from builder.answering.indexing import entries_from_file
    from builder.answering.knowledge import Knowledge

    faq = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "data" / "sample_faq.csv")
    questions = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "data" / "sample_questions.csv")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        entries, _ = entries_from_file(faq)
        knowledge = Knowledge.build(entries, source=Path(faq).name)
        knowledge.save(Path(tmp) / "knowledge")
        build_s = time.perf_counter() - started
        out = subprocess.run([sys.executable, "-c", LOAD_AND_ASK, str(Path(tmp) / "knowledge"),
                              questions], capture_output=True, text=True, cwd=ROOT, check=True)
    result = json.loads(out.stdout)
    result.update(build_s=round(build_s, 1), entries=len(entries), gate=knowledge.settings["gate"],
                  load_average=os.getloadavg()[0])
    result["goals"] = {"load <= 3 s": result["load_s"] <= 3,
                       "question <= 50 ms": result["median_ms"] <= 50}
    print(json.dumps(result, ensure_ascii=False, indent=2))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "retrieval_bench.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
