"""Memory of N shops: one `builder serve` for all of them (one base model, N adapters) against
N single-run servers (each its own copy of the base), for N = 1, 2, 5.

    python bench/shops_memory.py runs/demo            # a run with adapter/ (the embedded model)
    python bench/shops_memory.py runs/demo --sizes 1 2 5 10

The N shops are copies of the run (its FAQ, template and config copied, its adapter linked:
what is measured is the server, not the answers). Each server is asked one question per shop
(so every shop is loaded), then its resident memory is read from /proc/PID/status (VmRSS,
and VmHWM, the peak). Writes bench/results/shops_memory.json.
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_bench import start_serve  # (bench/ is not a package)
QUESTION = "배송비는 얼마예요?"


def shop_copies(run: Path, n: int, root: Path) -> list[Path]:
    shops = []
    for i in range(n):
        shop = root / f"shop{i + 1}"
        if not shop.exists():
            shop.mkdir(parents=True)
            for name in ("template.yaml", "config.yaml", "meta.json"):
                shutil.copy(run / name, shop / name)
            shutil.copytree(run / "knowledge", shop / "knowledge")
            (shop / "adapter").symlink_to((run / "adapter").resolve())
        shops.append(shop)
    return shops


def start(args: list[str]):
    return start_serve(args, ROOT / "bench" / "results" / "shops_memory-serve.log")


def ask(url: str, model: str) -> None:
    import httpx

    response = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": QUESTION}]})
    response.raise_for_status()


def memory_mb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024)
    return fields


def measure(shops: list[Path]) -> dict:
    """One server for every shop, then one server per shop (all running at once)."""
    proc, url = start([str(s) for s in shops] + ["--memory-gb", "64"])
    try:
        for shop in shops:
            ask(url, shop.name)
        together = memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    procs = []
    try:
        for shop in shops:
            procs.append(start([str(shop), "--use", "adapter"]))
            ask(procs[-1][1], shop.name)
        each = [memory_mb(p.pid) for p, _ in procs]
    finally:
        for p, _ in procs:
            p.terminate()
            p.wait(timeout=60)
    return {"shops": len(shops), "one_server_mb": together,
            "separate_servers_mb": {"VmRSS": sum(m["VmRSS"] for m in each),
                                    "VmHWM": sum(m["VmHWM"] for m in each),
                                    "each_VmRSS": [m["VmRSS"] for m in each]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a trained run with adapter/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 5])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="shops-memory-") as tmp:
        for n in args.sizes:
            result = measure(shop_copies(args.run_dir, n, Path(tmp)))
            results.append(result)
            print(json.dumps(result), flush=True)
    print("| shops | one server (RSS MB) | separate servers (RSS MB, summed) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['shops']} | {r['one_server_mb']['VmRSS']} | "
              f"{r['separate_servers_mb']['VmRSS']} |")
    out = ROOT / "bench" / "results" / "shops_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": str(args.run_dir), "results": results}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
