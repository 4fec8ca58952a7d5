"""Shared builders for the tests: a tiny random gemma3 folder, small prepared dirs, and a scripted
OpenAI-compatible completion server."""

import csv
import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# The Korean template without its {faq} slot: a run that answers without retrieval
PLAIN_TEMPLATE = """name: korean-plain
prompt: |
  ### 질문:
  {instruction}

  ### 답변:
prompt_with_input: |
  ### 질문:
  {instruction}

  ### 참고:
  {input}

  ### 답변:
stop_markers: ["### 질문", "### 참고", "### 답변"]
"""
SAMPLE = Path(__file__).parents[1] / "data" / "sample_faq.csv"


def sample_rows(n: int) -> list[dict]:
    with SAMPLE.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))[:n]


def make_prepared(tmp: Path, n_rows: int, name: str = "data") -> Path:
    from builder.data.prepare import prepare

    faq = tmp / f"{name}.csv"
    with faq.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(sample_rows(n_rows))
    prepare(faq, tmp / name, test_size=0.1, seed=1)
    return tmp / name


def make_tiny_gemma(folder: Path) -> Path:
    """A 2-layer random Gemma3 with the embedded model's real tokenizer (same family, ~9M params)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from builder.embedded import ensure_embedded_model

    embedded = ensure_embedded_model()
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=262144, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=64,
        max_position_embeddings=1024, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    Gemma3ForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(embedded / name, folder / name)
    return folder


class QuietHandler(BaseHTTPRequestHandler):
    """A loopback test server's handler: no request log, and a body sent whole."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def send_body(self, status, body: bytes, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status, payload):
        self.send_body(status, json.dumps(payload, ensure_ascii=False).encode())


class ScriptedEngine:
    """GET /v1/models and a streamed POST /v1/completions that writes `pieces` (ignoring the
    stop strings, as a careless server would); records every completion request."""

    def __init__(self):
        self.requests: list[dict] = []
        self.pieces: list[str] = []
        self.status = 200
        engine = self

        class Handler(QuietHandler):
            def do_GET(self):
                if self.path == "/v1/models":
                    return self.send_body(200, json.dumps({"object": "list", "data": [
                        {"id": "scripted-gemma", "object": "model"}]}).encode())
                self.send_body(404, b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.requests.append(body)
                if self.path != "/v1/completions" or engine.status != 200:
                    return self.send_body(engine.status, b'{"error": {"message": "engine down"}}')
                events = b"".join(
                    b"data: " + json.dumps({"object": "text_completion", "choices": [
                        {"index": 0, "text": piece, "finish_reason": None}]},
                        ensure_ascii=False).encode() + b"\n\n" for piece in engine.pieces)
                self.send_body(200, events + b"data: [DONE]\n\n", "text/event-stream")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ScriptedJudge:
    """POST /v1/chat/completions answering by `behaviour`: good, prose, refuse, slow, down."""

    def __init__(self):
        self.behaviour = "good"
        self.requests: list[dict] = []
        judge = self

        class Handler(QuietHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                prompt = body["messages"][0]["content"]
                if judge.behaviour == "down":
                    return self.send_json(503, {"error": "overloaded"})
                if judge.behaviour == "slow":
                    time.sleep(1.5)
                if judge.behaviour == "prose":
                    text = "이 답변은 꽤 괜찮아 보입니다."
                elif judge.behaviour == "refuse":
                    text = "죄송하지만 이 요청은 평가할 수 없습니다."
                elif "답변 A" in prompt:
                    text = '{"better": "A"}' if "3,000원" in prompt.split("답변 B")[0] else \
                        '{"better": "B"}'
                else:  # faithful when the answer states 3,000원 (the entry's fee)
                    answer = prompt.split("챗봇 답변:")[1].split("챗봇은")[0]
                    good = "3,000원" in answer
                    text = json.dumps({"faithful": good, "helpful": 5 if good else 2,
                                       "reason": "-"}, ensure_ascii=False)
                self.send_json(200, {"choices": [{"message": {"content": text}}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# Run folders, written through builder.run (the same contract the stages keep)


def write_run(folder: Path, template: str = "korean", *, meta: dict | None = None, config=None,
              knowledge=None) -> Path:
    """A run folder: template.yaml (a shipped template's name, or a template's YAML text),
    meta.json, and config.yaml / knowledge/ when given."""
    from builder.prompts import load_template, parse_template
    from builder.run import Run

    run = Run(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.write_template(parse_template(template, "template.yaml") if "\n" in template
                       else load_template(template))
    run.write_meta(meta or {})
    if config is not None:
        run.write_config(config)
    if knowledge is not None:
        knowledge.save(run.knowledge_dir)
    return folder


def link_embedded_merged(run: Path) -> Path:
    """RUN/merged/ as the embedded base model (its files linked), ending at <eos> and
    <end_of_turn>; the embedded model's folder."""
    from builder.embedded import ensure_embedded_model

    source = ensure_embedded_model()
    (run / "merged").mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (run / "merged" / name).symlink_to(source / name)
    generation = json.loads((source / "generation_config.json").read_text())
    (run / "merged" / "generation_config.json").write_text(
        json.dumps({**generation, "eos_token_id": [1, 106]}))
    return source


def sample_knowledge(n_rows: int = 30, calibrate: bool = False):
    """The first n sample FAQ rows as knowledge (line = row + 2, under the header); without
    calibration the gate is a shared content noun and the coverage floor."""
    from builder.answering.knowledge import Entry, Knowledge

    entries = [Entry(i, i + 2, r["instruction"], r["input"], r["output"])
               for i, r in enumerate(sample_rows(n_rows))]
    return Knowledge.build(entries, calibrate=calibrate)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DEAD_PID = 2**31 - 1  # above any pid_max: no process has it


def left_staging(parent: Path, prefix: str) -> tuple[list[Path], Path]:
    """Staging folders as stages leave them: ([one a killed process left, one an older builder
    left (no PID in its name)], one this live process is writing)."""
    import os

    from builder.run import process_start

    stale = [parent / f"{prefix}{DEAD_PID}.1-abcd1234", parent / f"{prefix}x7k2m9qz"]
    live = parent / f"{prefix}{os.getpid()}.{process_start(os.getpid())}-live0001"
    for folder in (*stale, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1024)
    return stale, live
