"""Chat speed: first-token latency and tokens/s of streamed greedy answers.

    python bench/chat_bench.py              # the embedded gemma-3-270m as a fake run (temp folder)
    python bench/chat_bench.py runs/NAME    # a trained run's merged model
    python bench/chat_bench.py --bf16       # also time bf16 weights on CPU (why chat upcasts them)

Goals: first token <= 0.5 s (median over the questions), >= 10 tokens/s. Each answer goes
through `Chatbot.stream` exactly as the chat does: greedy, max_new_tokens 64, with the end ids
suppressed by a logits processor so every answer is long enough to time (a stop marker can still
end one early: the table shows each count; a logits processor also turns prompt lookup off, so
these are one token a step). First token = call to the first non-empty delta;
tokens/s = generated tokens / (call to the end), prompt processing included. For reference it
also times a bare model.generate of 64 tokens, and records the load average: other processes on a
2-core machine slow everything down.

Prompt lookup: the same questions answered as the bot answers them (greedy, up to 256 tokens,
ending where the model ends), each with prompt-lookup decoding off and then on, side by side:
tokens/s from the call to the end and from the first delta to the end (decoding alone), and
whether both answers are the same ids. The fake run answers from the sample FAQ.
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
LOOKUP_QUESTIONS = QUESTIONS + ["제주도는 배송비가 더 나오나요?", "포인트는 언제 적립되나요?",
                                "비회원도 주문할 수 있나요?"]
SAMPLE_FAQ = ROOT / "data" / "sample_faq.csv"
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
    sample_knowledge().save(run.knowledge_dir)  # the template answers from an FAQ
    return folder


def sample_knowledge():
    import csv

    from builder.answering.knowledge import Entry, Knowledge

    with SAMPLE_FAQ.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    entries = [Entry(i, i + 2, r["instruction"], r["input"], r["output"])
               for i, r in enumerate(rows)]
    return Knowledge.build(entries, calibrate=False)


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


# Prompt lookup: the same answers with and without it


def time_natural_answer(bot: Chatbot, question: str) -> dict:
    ids: list[int] = []
    first = None
    started = time.perf_counter()
    for delta in bot.stream(question, max_new_tokens=256, generated_ids=ids):
        if first is None and delta:
            first = time.perf_counter() - started
    seconds = time.perf_counter() - started
    first = first if first is not None else seconds
    return {"ids": ids, "seconds": seconds, "decode_seconds": seconds - first}


def compare_lookup(bot: Chatbot, tokens: int) -> dict:
    """Each question answered without, then with prompt lookup (alternating, so both see the
    same load); questions the bot settles without generating are left out."""
    rows = []
    for question in LOOKUP_QUESTIONS:
        if bot.ground(question).settled:
            continue
        row = {"question": question}
        for name, on in (("plain", False), ("lookup", True)):
            bot.engine.prompt_lookup_tokens = tokens if on else 0
            row[name] = time_natural_answer(bot, question)
        row["identical"] = row["plain"]["ids"] == row["lookup"]["ids"]
        row["tokens"] = len(row["plain"]["ids"])
        for name in ("plain", "lookup"):
            timed = row[name]
            timed["tokens_per_s"] = round(len(timed.pop("ids")) / timed["seconds"], 2)
            timed["seconds"] = round(timed["seconds"], 3)
            timed["decode_seconds"] = round(timed["decode_seconds"], 3)
        rows.append(row)
    bot.engine.prompt_lookup_tokens = tokens
    total = {name: {key: round(sum(r[name][key] for r in rows), 3)
                    for key in ("seconds", "decode_seconds")} for name in ("plain", "lookup")}
    tokens_total = sum(r["tokens"] for r in rows)
    for timed in total.values():
        timed["tokens_per_s"] = round(tokens_total / timed["seconds"], 2)
        timed["decode_tokens_per_s"] = round(
            (tokens_total - len(rows)) / max(timed["decode_seconds"], 1e-9), 2)
    result = {"prompt_lookup_tokens": tokens,
              "load_average_1min": round(os.getloadavg()[0], 2), "questions": rows,
              "tokens": tokens_total, "identical": all(r["identical"] for r in rows),
              "total": total,
              "speedup": round(total["plain"]["seconds"] / total["lookup"]["seconds"], 2),
              "decode_speedup": round(total["plain"]["decode_seconds"]
                                      / max(total["lookup"]["decode_seconds"], 1e-9), 2)}
    print_lookup_table(result)
    return result


def print_lookup_table(result: dict) -> None:
    print(f"\nprompt lookup ({result['prompt_lookup_tokens']} tokens), "
          f"natural greedy answers\n  {'tokens':>6} {'plain tok/s':>11} {'lookup tok/s':>12}"
          f"  same  question")
    for r in result["questions"]:
        print(f"  {r['tokens']:>6} {r['plain']['tokens_per_s']:>11.1f} "
              f"{r['lookup']['tokens_per_s']:>12.1f}  {'yes' if r['identical'] else 'NO':>4}  "
              f"{r['question']}")
    plain, lookup = result["total"]["plain"], result["total"]["lookup"]
    print(f"  all {result['tokens']} tokens: {plain['tokens_per_s']:.1f} -> "
          f"{lookup['tokens_per_s']:.1f} tokens/s ({result['speedup']:.2f}x); decoding alone "
          f"{plain['decode_tokens_per_s']:.1f} -> {lookup['decode_tokens_per_s']:.1f} "
          f"({result['decode_speedup']:.2f}x); identical: {result['identical']} "
          f"(load average {result['load_average_1min']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?",
                        help="a run folder with merged/ (default: the embedded model)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 weights on CPU")
    parser.add_argument("--lookup-tokens", type=int, default=10,
                        help="prompt_lookup_tokens of the comparison (default 10)")
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else fake_run_dir(Path(tmp) / "run")

        # Load
        started = time.perf_counter()
        bot = load_chatbot(run_dir, use="merged")
        bot.engine = getattr(bot.engine, "inner", bot.engine)  # every answer generated, timed
        load_s = time.perf_counter() - started
        device = str(bot.engine.device)
        print(f"{run_dir} on {device} ({torch.get_num_threads()} threads): "
              f"loaded in {load_s:.1f} s")

        # Measure
        runs = [measure(bot, str(bot.engine.model.dtype).removeprefix("torch."))]
        lookup = compare_lookup(bot, args.lookup_tokens)
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
        "prompt_lookup": lookup,
    }
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
