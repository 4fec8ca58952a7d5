"""Concurrent answers of the llama.cpp engine, one at a time (parallel=1) and generated
together (parallel=8): total tokens/s, each answer's latency, and whether the greedy answers
are the same token for token.

    .venv/bin/python bench/gguf_batch_bench.py runs/demo [--gguf FILE] [--answers 8]
"""

import argparse
import statistics
import threading
import time

from builder.answering.chatbot import load_chatbot
from builder.answering.engines.llamacpp import GgufEngine


def ask_together(engine, prompts: list[str], max_new_tokens: int) -> tuple[float, list]:
    """Every prompt streamed by its own thread, all started at once: (seconds, [(ids,
    seconds to its first token, seconds to its end)])."""
    out: list = [None] * len(prompts)
    start = threading.Barrier(len(prompts) + 1)

    def ask(i):
        ids, first = [], None
        start.wait()
        began = time.perf_counter()
        for _ in engine.stream(prompts[i], max_new_tokens=max_new_tokens, generated_ids=ids):
            first = first or time.perf_counter() - began
        out[i] = (ids, first, time.perf_counter() - began)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--gguf", help="the GGUF (default: the one the run's export chose)")
    parser.add_argument("--answers", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    bot = load_chatbot(args.run_dir, "gguf", gguf_file=args.gguf)
    entries = bot.knowledge.entries[:args.answers]
    prompts = [bot.prompt(bot.ground(e.question + " 알려주세요"), args.max_new_tokens)
               for e in entries]
    options = {"end_ids": bot.engine.end_ids, "stop_markers": bot.engine.stop_markers,
               "repetition_penalty": bot.engine.repetition_penalty}
    path = bot.engine.path
    del bot
    results = {}
    for parallel in (1, args.answers):
        engine = GgufEngine.load(path, parallel=parallel, **options)
        seconds, out = ask_together(engine, prompts, args.max_new_tokens)
        tokens = sum(len(ids) for ids, _, _ in out)
        latency = sorted(end for _, _, end in out)
        print(f"parallel={parallel}: {len(prompts)} answers, {tokens} tokens in {seconds:.1f} s "
              f"= {tokens / seconds:.1f} tokens/s; latency median "
              f"{statistics.median(latency):.1f} s, max {latency[-1]:.1f} s; first token "
              f"median {statistics.median(first for _, first, _ in out):.1f} s")
        results[parallel] = [ids for ids, _, _ in out]
        del engine
    same = sum(a == b for a, b in zip(*results.values()))
    print(f"greedy answers identical token for token: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
