"""How long each FAQ row is in tokens, as training will see it: the embedded gemma tokenizer
counts them in a child process (it loads in ~3 s while the parent reads and checks the file);
before the embedded model is converted, lengths are estimated at 0.6 tokens per Korean
character."""

import json
import statistics
import subprocess
import sys

from builder.data.tables import Row

# Without the embedded tokenizer, lengths are estimated: gemma's tokenizer gives 0.60 tokens
# per Korean character, so 0.6 tokens/char is the documented estimate.
TOKENS_PER_CHAR_ESTIMATE = 0.6
# Run as `python -c` in a child process: loads the embedded tokenizer (~3 s, holding the GIL)
# while the parent reads and checks the file, then counts tokens for the texts sent on stdin.
LENGTH_WORKER = """
import json, sys
from tokenizers import Tokenizer
tokenizer = Tokenizer.from_file(sys.argv[1])
texts = json.loads(sys.stdin.buffer.read())
encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
sys.stdout.write(json.dumps([len(e.ids) for e in encodings]))
"""


def start_length_worker():
    """The token-counting child process, or None before the embedded model is converted."""
    from builder.embedded import cached_tokenizer_file

    tokenizer_file = cached_tokenizer_file()
    if tokenizer_file is None:
        return None
    return subprocess.Popen(
        [sys.executable, "-c", LENGTH_WORKER, str(tokenizer_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )


def count_tokens(worker, texts: list[str]) -> list[int] | None:
    out, _ = worker.communicate(json.dumps(texts, ensure_ascii=False).encode("utf-8"))
    return json.loads(out) if worker.returncode == 0 else None


def row_texts(rows: list[Row]) -> list[str]:
    return ["\n".join(p for p in (r.instruction, r.input, r.output) if p) for r in rows]


def measure_lengths(rows: list[Row], max_length: int, tokens: list[int] | None = None):
    """Token lengths of each row (question + context + answer) -> stats, rows over max_length.
    Without token counts, lengths are estimated from characters."""
    if tokens is not None:
        unit = "tokens (embedded gemma-3 tokenizer)"
    else:
        tokens = [round(len(t) * TOKENS_PER_CHAR_ESTIMATE) for t in row_texts(rows)]
        unit = f"estimated tokens ({TOKENS_PER_CHAR_ESTIMATE} per character)"
    too_long = [
        {"line": r.line, "tokens": n} | ({} if r.plain() else {"where": r.where()})
        for r, n in zip(rows, tokens) if n > max_length
    ]

    def stats(values: list[int]) -> dict:
        if not values:
            return {}
        ordered = sorted(values)
        return {
            "min": ordered[0],
            "mean": round(statistics.fmean(ordered), 1),
            "median": ordered[len(ordered) // 2],
            "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
            "max": ordered[-1],
        }

    return {
        "unit": unit,
        "max_length": max_length,
        "row_tokens": stats(tokens),
        "question_chars": stats([len(r.instruction) for r in rows]),
        "answer_chars": stats([len(r.output) for r in rows]),
    }, too_long
