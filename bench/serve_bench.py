"""Serving under load: 20 concurrent clients x 5 questions against `builder serve`, with and
without each speed-up, side by side in one run on the same machine.

    python bench/serve_bench.py runs/NAME                          # every configuration
    python bench/serve_bench.py runs/NAME --configs gguf gguf+batched+shared
    python bench/serve_bench.py runs/NAME --clients 4 --questions 2   # a quick look
    python bench/serve_bench.py runs/NAME --warm                   # builder serve --warm (GGUF)

Configurations (CONFIGS): the transformers engine one answer at a time without and with prompt
lookup, then with shared answers too; the GGUF engine one answer at a time (--parallel 1, the
default on CPU) and batched (--parallel 8), each without and with shared answers. Each starts
`builder serve RUN --port FREE` on 127.0.0.1, first asks 5 questions alone (first-token latency
of an idle server; asked with max_tokens + 1, so what they leave in the shared answers is not
reused under load), then lets every client ask its questions one after another, all clients at
once, streamed. A client told 429 waits Retry-After (at most 5 s) and asks again, as a real
client does; the 429s are counted. Errors (anything else than 200, a broken stream, an empty
answer) must be 0. Questions are the 40 paraphrases of data/sample_questions.csv (an FAQ
question asked word for word is answered from the FAQ without generating): 100 asks over 40
questions, so each is asked 2-3 times, by different clients, as on a shop's busy evening.
Tokens are counted with the run's tokenizer on the answers.

Reported per configuration: requests answered, 429s, errors, p50/p95 first-token and total
latency (under load: queueing included), tokens/s (all answers' tokens / wall time) and per
answer (tokens / generation time after the first token). Goals (issue): the GGUF server's p95
total latency <= 5 s with 0 errors and 0 refusals under 20 clients; first token <= 0.3 s alone
with --warm. Writes bench/results/serve_bench.json.
"""

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_P95_S = 5.0
GOAL_FIRST_TOKEN_S = 0.3
NO_SHARING = ["--set", "rag.shared_answers=0"]
CONFIGS = {  # name: (builder serve --use, its flags)
    "transformers": ("merged", NO_SHARING + ["--set", "rag.prompt_lookup_tokens=0"]),
    "transformers+lookup": ("merged", NO_SHARING),
    "transformers+lookup+shared": ("merged", []),
    "gguf": ("gguf", NO_SHARING + ["--parallel", "1"]),
    "gguf+batched": ("gguf", NO_SHARING + ["--parallel", "8"]),
    "gguf+shared": ("gguf", ["--parallel", "1"]),
    "gguf+batched+shared": ("gguf", ["--parallel", "8"]),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def questions() -> list[str]:
    with (ROOT / "data" / "sample_questions.csv").open(encoding="utf-8", newline="") as f:
        return [r["question"] for r in csv.DictReader(f) if r["kind"] == "paraphrase"]


def start_server(run_dir: Path, use: str, flags: list[str], max_queue: int, log_path: Path,
                 warm: bool = False):
    return start_serve([str(run_dir), "--max-queue", str(max_queue), "--use", use, *flags]
                       + (["--warm"] if warm else []), log_path)


def start_serve(args: list[str], log_path: Path):
    """`builder serve ARGS --port FREE` on loopback, once /health answers: (process, URL)."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", *args, "--port",
                             str(port)], cwd=ROOT, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            sys.exit(f"builder serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
            return proc, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"builder serve did not start in 300 s:\n{log_path.read_text()}")
            time.sleep(0.5)


def ask(url: str, model: str, question: str, max_tokens: int) -> dict:
    """One streamed answer: first-token and total seconds, its text; retried after a 429."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "stream": True}
    refused = 0
    while True:
        begun = time.perf_counter()
        first, parts = None, []
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body,
                              timeout=httpx.Timeout(600, connect=10)) as response:
                if response.status_code == 429:
                    refused += 1
                    time.sleep(min(5.0, float(response.headers.get("retry-after", 1))))
                    continue
                if response.status_code != 200:
                    return {"error": f"{response.status_code}: {response.read()[:200]!r}",
                            "refused": refused}
                for line in response.iter_lines():
                    if not line.startswith("data:") or line.strip() == "data: [DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        return {"error": str(event["error"]), "refused": refused}
                    delta = event["choices"][0]["delta"].get("content") or ""
                    if delta and first is None:
                        first = time.perf_counter() - begun
                    parts.append(delta)
        except httpx.HTTPError as err:
            return {"error": f"{type(err).__name__}: {err}", "refused": refused}
        text = "".join(parts)
        if not text:
            return {"error": "empty answer", "refused": refused}
        return {"first_s": first, "total_s": time.perf_counter() - begun, "text": text,
                "refused": refused}


def under_load(url: str, model_of, asked: list[str], args) -> tuple[list[dict], float]:
    """Every client at once, each asking its questions one after another (client i asks
    model_of(i)): (the results, wall seconds)."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(args.questions):
            result = ask(url, model_of(i), asked[(i * args.questions + j) % len(asked)],
                         args.max_tokens)
            with lock:
                results.append(result)

    begun = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - begun


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(round(q * (len(values) - 1))))], 3)


def bench_config(run_dir: Path, name: str, args, tokenizer) -> dict:
    model = run_dir.resolve().name
    use, flags = CONFIGS[name]
    log_path = ROOT / "bench" / "results" / f"serve_bench-{name}.log"
    proc, url = start_server(run_dir, use, flags, args.max_queue, log_path,
                             warm=args.warm and use == "gguf")
    asked = questions()
    try:
        # Alone: an idle server's first token
        alone = [ask(url, model, q, args.max_tokens + 1) for q in asked[:5]]

        results, wall = under_load(url, lambda i: model, asked, args)
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    answered = [r for r in results if "error" not in r]
    tokens = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in answered]
    decode = [n / (r["total_s"] - r["first_s"]) for n, r in zip(tokens, answered)
              if r["first_s"] is not None and r["total_s"] > r["first_s"] and n > 1]
    alone_first = [r["first_s"] for r in alone if r.get("first_s") is not None]
    return {
        "config": name, "flags": flags,
        "requests": len(results), "answered": len(answered),
        "429s": sum(r["refused"] for r in results),
        "errors": len(results) - len(answered),
        "error_examples": [r["error"] for r in results if "error" in r][:3],
        "warm": args.warm and use == "gguf",
        "first_token_s": {"alone_p50": percentile(alone_first, 0.5),
                          "alone": [round(s, 3) for s in alone_first],
                          "p50": percentile([r["first_s"] for r in answered if r["first_s"]], .5),
                          "p95": percentile([r["first_s"] for r in answered if r["first_s"]], .95)},
        "total_s": {"p50": percentile([r["total_s"] for r in answered], 0.5),
                    "p95": percentile([r["total_s"] for r in answered], 0.95)},
        "tokens": sum(tokens), "wall_s": round(wall, 1),
        "tokens_per_s": round(sum(tokens) / wall, 1) if wall else None,
        "tokens_per_s_per_answer_p50": percentile(decode, 0.5),
    }


def table(results: dict) -> str:
    """The configurations side by side (markdown)."""
    rows = [("answered", lambda r: f"{r['answered']}/{r['requests']}"), ("429s", lambda r: r["429s"]),
            ("errors", lambda r: r["errors"]),
            ("first token alone p50 s", lambda r: r["first_token_s"]["alone_p50"]),
            ("first token p50 / p95 s", lambda r: f"{r['first_token_s']['p50']} / "
                                                  f"{r['first_token_s']['p95']}"),
            ("total p50 / p95 s", lambda r: f"{r['total_s']['p50']} / {r['total_s']['p95']}"),
            ("tokens/s (all answers)", lambda r: r["tokens_per_s"]),
            ("tokens/s per answer p50", lambda r: r["tokens_per_s_per_answer_p50"])]
    names = list(results)
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, value in rows:
        lines.append(f"| {label} | " + " | ".join(str(value(results[n])) for n in names) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run with merged/ and (for gguf) gguf/")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--questions", type=int, default=5, help="per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=32, help="builder serve --max-queue")
    parser.add_argument("--warm", action="store_true",
                        help="builder serve --warm for the GGUF engine (every FAQ entry read "
                        "before serving)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.run_dir / "merged")
    report = {"run": str(args.run_dir), "clients": args.clients, "questions": args.questions,
              "max_tokens": args.max_tokens, "max_queue": args.max_queue,
              "cpu_cores": os.cpu_count(), "load_before": os.getloadavg(), "configs": {}}
    for name in args.configs:
        print(f"--- {name}: {args.clients} clients x {args.questions} questions ...", flush=True)
        result = bench_config(args.run_dir, name, args, tokenizer)
        report["configs"][name] = result
        print(json.dumps(result, ensure_ascii=False, indent=2), flush=True)
    report["table"] = table(report["configs"])
    print(report["table"])
    goals = {}
    for name, result in report["configs"].items():
        if name.startswith("gguf"):
            goals[name] = {"p95_total_s": result["total_s"]["p95"],
                           "met": bool(result["total_s"]["p95"] is not None and
                                       result["total_s"]["p95"] <= GOAL_P95_S and
                                       result["errors"] == 0 and result["429s"] == 0)}
    report["goal"] = {"p95_total_s": GOAL_P95_S, "first_token_alone_s": GOAL_FIRST_TOKEN_S,
                      "configs": goals}
    report["load_after"] = os.getloadavg()
    out = ROOT / "bench" / "results" / "serve_bench.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
