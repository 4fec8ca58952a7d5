"""Chat speed: first-token latency and tokens/s of streamed greedy answers.

    python bench/chat_bench.py              # the embedded gemma-3-270m as a fake run (temp folder)
    python bench/chat_bench.py runs/NAME    # a trained run's merged model
    python bench/chat_bench.py --bf16       # also time bf16 weights on CPU (why chat upcasts them)

Goals: first token <= 0.5 s (median over the questions), >= 10 tokens/s. Each answer goes
through `Chatbot.stream` exactly as the chat does: greedy, max_new_tokens 64, with the end ids
suppressed by a logits processor so every answer is long enough to time (a stop marker can still
end one early: the table shows each count). First token = call to the first non-empty delta;
tokens/s = generated tokens / (call to the end), prompt processing included. For reference it
also times a bare model.generate of 64 tokens, and records the load average: other processes on a
2-core machine slow everything down.
Writes bench/results/chat_bench.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from builder.answering.chatbot import Chatbot, load_chatbot  # noqa: E402

QUESTIONS = [
    "배송은 보통 며칠 걸리나요?",
    "주문을 취소하고 싶은데 어떻게 하나요?",
    "교환이나 반품은 언제까지 가능한가요?",
    "회원 등급별 혜택이 궁금합니다.",
    "영수증이나 세금계산서를 발급받을 수 있나요?",
]
MAX_NEW_TOKENS = 64
GOAL_FIRST_TOKEN_S = 0.5
GOAL_TOKENS_PER_S = 10.0


def fake_run_dir(folder: Path) -> Path:
    """A run folder whose merged/ is the embedded base model (files linked, end ids [1, 106])."""
    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    (folder / "merged").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (folder / "merged" / name).symlink_to(source / name)
    generation = json.loads((source / "generation_config.json").read_text())
    generation["eos_token_id"] = [1, 106]
    (folder / "merged" / "generation_config.json").write_text(json.dumps(generation))
    from builder.prompts import load_template
    from builder.run import Run

    run = Run(folder)
    run.write_template(load_template("korean"))
    run.write_meta({"base_model": "embedded:gemma-3-270m", "base_model_path": str(source),
                    "template": "korean"})
    return folder


def time_answer(bot: Chatbot, question: str, suppress_end) -> dict:
    ids: list[int] = []
    first_token_s = None
    started = time.perf_counter()
    for delta in bot.stream(question, max_new_tokens=MAX_NEW_TOKENS, generated_ids=ids,
                            logits_processor=[suppress_end]):
        if first_token_s is None and delta:
            first_token_s = time.perf_counter() - started
    seconds = time.perf_counter() - started
    return {"question": question, "first_token_s": round(first_token_s or seconds, 3),
            "tokens": len(ids), "seconds": round(seconds, 3),
            "tokens_per_s": round(len(ids) / seconds, 2)}


def bare_generate_rate(bot: Chatbot) -> float:
    """tokens/s of a bare model.generate (no streamer, no stop checks): what the chat path adds."""
    encoded = bot.engine.tokenizer(bot.template.render(QUESTIONS[0]), return_tensors="pt").to(bot.engine.device)
    started = time.perf_counter()
    output = bot.engine.model.generate(**encoded, max_new_tokens=MAX_NEW_TOKENS,
                                min_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return (output.shape[1] - encoded["input_ids"].shape[1]) / (time.perf_counter() - started)


def measure(bot: Chatbot, dtype_name: str) -> dict:
    import torch

    def suppress_end(input_ids, scores):
        scores[:, sorted(bot.engine.end_ids)] = -torch.inf
        return scores

    bot.answer(QUESTIONS[0], max_new_tokens=8)  # warm up: first-call allocations and caches
    rows = [time_answer(bot, q, suppress_end) for q in QUESTIONS]
    first = statistics.median(r["first_token_s"] for r in rows)
    rate = sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)
    result = {
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews timings
        "dtype": dtype_name,
        "questions": rows,
        "median_first_token_s": round(first, 3),
        "max_first_token_s": max(r["first_token_s"] for r in rows),
        "tokens_per_s": round(rate, 2),
        "first_token_pass": first <= GOAL_FIRST_TOKEN_S,
        "tokens_per_s_pass": rate >= GOAL_TOKENS_PER_S,
        "bare_generate_tokens_per_s": round(bare_generate_rate(bot), 2),
    }
    print_table(result)
    return result


def print_table(result: dict) -> None:
    # the question goes last: Hangul is double width in a terminal and would skew the columns
    print(f"\n{result['dtype']}\n  {'first token':>11} {'tokens':>6} {'tok/s':>6}  question")
    for r in result["questions"]:
        print(f"  {r['first_token_s']:>9.3f} s {r['tokens']:>6} {r['tokens_per_s']:>6.1f}  "
              f"{r['question']}")
    verdict = {True: "PASS", False: "MISS"}
    print(f"  first token (median) {result['median_first_token_s']:.3f} s "
          f"(max {result['max_first_token_s']:.3f} s), goal <= {GOAL_FIRST_TOKEN_S} s: "
          f"{verdict[result['first_token_pass']]}")
    print(f"  tokens/s {result['tokens_per_s']:.1f}, goal >= {GOAL_TOKENS_PER_S}: "
          f"{verdict[result['tokens_per_s_pass']]} (bare model.generate: "
          f"{result['bare_generate_tokens_per_s']:.1f}; load average {result['load_average_1min']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?",
                        help="a run folder with merged/ (default: the embedded model)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 weights on CPU")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else fake_run_dir(Path(tmp) / "run")

        # Load
        started = time.perf_counter()
        bot = load_chatbot(run_dir, use="merged")
        load_s = time.perf_counter() - started
        device = str(bot.engine.device)
        print(f"{run_dir} on {device} ({torch.get_num_threads()} threads): "
              f"loaded in {load_s:.1f} s")

        # Measure
        runs = [measure(bot, str(bot.engine.model.dtype).removeprefix("torch."))]
        if args.bf16 and bot.engine.model.dtype != torch.bfloat16:
            bot.engine.model.to(torch.bfloat16)
            runs.append(measure(bot, "bfloat16"))

    out = ROOT / "bench" / "results" / "chat_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "run_dir": args.run_dir or "embedded:gemma-3-270m (fake run)",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "load_s": round(load_s, 2),
        "max_new_tokens": MAX_NEW_TOKENS,
        "end_ids_suppressed": True,
        "goals": {"first_token_s": GOAL_FIRST_TOKEN_S, "tokens_per_s": GOAL_TOKENS_PER_S},
        "runs": runs,
    }
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
