"""`make demo` from a fresh clone, timed to the owner's milestones: the page up, its first
grounded answer (from the FAQ, while training runs), the trained model's first answer.

    python bench/demo_timeline.py                  # clones this checkout into a temp folder
    python bench/demo_timeline.py --keep /tmp/d    # ... into /tmp/d, left there afterwards

The clone has no .venv and no runs/: `make demo` installs (pip's cache is used when the
machine has one), prepares the sample FAQ, opens the page and trains beside it. Every 2 s the
bench asks the page's chat (the page's own /chat endpoint, as a browser does) a paraphrase;
the first answer that is not an error is the first grounded answer, the first one without the
FAQ-only note is the trained model's. Each line of make's output is timestamped into
bench/results/demo_timeline.log. Goals (issue): first answer <= 3 min, trained <= 6 min.
Writes bench/results/demo_timeline.json.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "배송은 보통 며칠 걸리나요?"  # a paraphrase the FAQ answers (not word for word)
FAQ_ONLY_MARK = "FAQ 원문 답변"
GOALS_S = {"first_answer": 180, "trained_answer": 360}


def milestones_from_log(lines: list[tuple[float, str]]) -> dict:
    """When make's output said: the install done, the FAQ prepared, the knowledge indexed,
    training started and ended, the merge done."""
    marks = {"installed": "builder prepare", "knowledge": "answers from its FAQ now",
             "training_started": "loading ", "training_done": "done in ",
             "merged": "merged model"}
    out = {}
    for seconds, line in lines:
        for name, needle in marks.items():
            if name not in out and needle in line:
                out[name] = round(seconds, 1)
    return out


def text_of(content) -> str:
    """A chat message's text (a string, or Gradio's [{"type": "text", "text": ...}])."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(text_of(part) for part in content)
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    return str(content)


def ask(url: str, run: str) -> tuple[str | None, str]:
    """(the answer and what follows it, or None; the error) from the page's chat."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        history, _, error = client.predict(QUESTION, [], run, "", 64, 0, api_name="/chat")
    except Exception as err:  # noqa: BLE001 (the page is not up yet)
        return None, f"{type(err).__name__}"
    if isinstance(error, dict) and error.get("visible"):
        return None, str(error.get("value"))[:120]
    answers = [text_of(m["content"]) for m in history if m["role"] == "assistant"]
    return ("\n".join(answers) or None), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="clone into this folder and leave it")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="demo-timeline-"))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
    begun = time.monotonic()
    lines: list[tuple[float, str]] = []
    log_path = ROOT / "bench" / "results" / "demo_timeline.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["make", "demo"], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def read():
        with log_path.open("w", encoding="utf-8") as log:
            for line in proc.stdout:
                lines.append((time.monotonic() - begun, line.rstrip()))
                log.write(f"{lines[-1][0]:7.1f}  {line}")
                log.flush()

    threading.Thread(target=read, daemon=True).start()
    url, run = "http://127.0.0.1:7860/", str(folder / "runs" / "demo")
    result = {"question": QUESTION, "cpu_cores": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        while time.monotonic() - begun < args.timeout and proc.poll() is None:
            answer, error = ask(url, run)
            seconds = round(time.monotonic() - begun, 1)
            if answer is not None and "first_answer" not in result:
                result["first_answer"] = {"s": seconds, "answer": answer}
                print(f"{seconds:6.1f} s  first answer: {answer[:100]!r}", flush=True)
            if answer is not None and FAQ_ONLY_MARK not in answer:
                result["trained_answer"] = {"s": seconds, "answer": answer}
                print(f"{seconds:6.1f} s  trained answer: {answer[:100]!r}", flush=True)
                break
            if answer is None and "page_up" not in result and error != "ConnectError" and \
                    not error.startswith(("ConnectError", "ConnectionError", "ValueError")):
                result["page_up"] = seconds
            time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    result["make_output"] = milestones_from_log(lines)
    result["goals_s"] = GOALS_S
    result["met"] = {name: name in result and result[name]["s"] <= limit
                     for name, limit in GOALS_S.items()}
    result["load_after"] = os.getloadavg()
    out = ROOT / "bench" / "results" / "demo_timeline.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "make_output"} |
                     {"make_output": result["make_output"]}, ensure_ascii=False, indent=2))
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(0 if all(result["met"].values()) else 1)


if __name__ == "__main__":
    main()
