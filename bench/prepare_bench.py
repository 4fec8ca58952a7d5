"""Speed goal of the data stage: a generated 100,000-row FAQ CSV prepared end to end in <= 10 s.

    .venv/bin/python bench/prepare_bench.py [--rows 100000]

Generates varied Korean rows (with some duplicates, conflicts, empty answers and context), then
times `builder.data.prepare.prepare` (read, clean, check, token lengths, split, write CSVs + DatasetDict
+ report). Writes bench/results/prepare_bench.json.
"""

import argparse
import csv
import json
import random
import tempfile
import time
from pathlib import Path

from builder.data.prepare import prepare
from builder.embedded import cached_tokenizer_file

GOAL_S = 10.0
TOPICS = ["배송", "교환", "환불", "결제", "적립금", "회원", "영업시간", "원두", "드립백", "구독"]
ASKS = ["은 어떻게 되나요?", " 관련해서 궁금한 게 있어요.", "은 언제 가능한가요?", "은 얼마인가요?"]
ANSWERS = [
    "{t} 관련 문의는 평일 오전 10시부터 오후 6시까지 고객센터(02-0000-0000)로 연락 주세요.",
    "{t}은 주문 후 마이페이지에서 바로 확인하실 수 있어요. 자세한 내용은 공지사항을 참고해 주세요.",
    "{t}은 상품 수령 후 7일 이내에 신청하실 수 있으며, 개봉한 원두는 어렵습니다.",
]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "input", "output"])
        for i in range(rows):
            topic = rng.choice(TOPICS)
            question = f"{topic}{rng.choice(ASKS)} (문의 {i})"
            answer = rng.choice(ANSWERS).format(t=topic) + f" 참고 번호 {i}."
            context = f"주문번호 HR-{i:08d}" if rng.random() < 0.15 else ""
            roll = rng.random()
            if roll < 0.01:
                answer = ""  # an empty answer
            elif roll < 0.02 and i:
                question = f"{topic}{ASKS[0]} (문의 {i - 1})"  # a duplicate or a conflict
            writer.writerow([question, context, answer])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        faq = Path(tmp) / "faq.csv"
        generate(faq, args.rows)
        started = time.perf_counter()
        report = prepare(faq, Path(tmp) / "out")
        seconds = time.perf_counter() - started
    result = {
        "rows": args.rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(args.rows / seconds),
        "kept": report["rows_kept"],
        "dropped": report["rows_dropped"],
        "length_unit": report["lengths"]["unit"],
        "tokenizer": bool(cached_tokenizer_file()),
        "goal_s": GOAL_S,
        "pass": seconds <= GOAL_S,
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "prepare_bench.json").write_text(json.dumps(result, indent=2))
    print(f"prepared {args.rows:,} rows in {seconds:.2f} s ({result['rows_per_s']:,} rows/s), "
          f"kept {report['rows_kept']:,}, lengths in {result['length_unit']}")
    print(f"goal <= {GOAL_S:.0f} s: {'PASS' if result['pass'] else 'MISS'}")


if __name__ == "__main__":
    main()
