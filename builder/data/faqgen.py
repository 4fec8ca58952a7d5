"""Question/answer pairs from a shop's documents -> an Alpaca FAQ CSV that `prepare` reads as is.

    builder generate data/docs --out faq.csv --dry-run     # chunks, requests, tokens; no request
    builder generate data/docs --out faq.csv --endpoint https://api.openai.com/v1 --model NAME

Each chunk of `builder.data.docs` goes to an OpenAI-compatible chat endpoint once, with
prompts/qa_from_docs_ko.txt and a JSON schema (response_format; a server that refuses it is
asked the plain way and the reply read tolerantly). A reply that cannot be read is asked again,
then reported by chunk. Every reply is cached as soon as it arrives, keyed by the rendered
prompt (chunk + template + pairs asked), the model and the endpoint (hashed: the URL is never
written), under $BUILDER_CACHE or a .builder-cache folder beside the output, so a killed run
continues and never pays for a chunk twice. Pairs whose
question repeats one before it (data.py's normalisation, end punctuation aside) or whose answer
states a number the chunk does not (`facts.invented`) are left out and reported. The CSV
(instruction,input,output,source,reviewed) is written complete or not at all; `source` names the
file and chunk, `reviewed` is left empty for the owner's y once a row is checked, and `prepare`
trains on neither and counts the rows not yet checked (`builder.data.review`).
"""

import hashlib
import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from builder.data.prepare import duplicate_key
from builder.data.review import REVIEW_COLUMN, SOURCE_COLUMN
from builder.data.lengths import TOKENS_PER_CHAR_ESTIMATE
from builder.data.docs import Chunk, read_chunks
from builder.errors import UserError
from builder.facts import invented
from builder.data.paraphrases import CONNECT_TIMEOUT_S, FENCE, READ_TIMEOUT_S, ask, write_rows

PROMPT_FILE = Path(__file__).resolve().parents[2] / "prompts" / "qa_from_docs_ko.txt"
COLUMNS = ("instruction", "input", "output", SOURCE_COLUMN, REVIEW_COLUMN)  # reviewed: empty
TEMPERATURE = 0.3  # faithful answers over varied ones
RETRIES = 3  # 429 / 5xx / timeout tries after the first, waiting Retry-After or 1, 2, 4 s
BACKOFF_S = 1.0
MALFORMED_TRIES = 3  # asks per chunk before its unreadable reply is reported
PAIRS_PER_CHARS = 120  # one pair asked per ~120 characters of chunk, 1 to MAX_PAIRS
MAX_PAIRS = 10
ANSWER_CHARS_ESTIMATE = 150  # characters a question + answer pair takes in the reply (with JSON)
SCHEMA = {
    "type": "object",
    "properties": {"pairs": {"type": "array", "items": {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"], "additionalProperties": False}}},
    "required": ["pairs"], "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema",
                   "json_schema": {"name": "faq_pairs", "strict": True, "schema": SCHEMA}}


@dataclass
class DocsResult:
    path: Path | None  # the CSV written; None for --dry-run
    chunks: list[Chunk]
    rows: int = 0  # rows written
    requests: int = 0  # requests sent (dry run: that would be sent)
    cached: int = 0  # chunks answered from the cache
    tokens_in: int = 0  # estimated prompt tokens of those requests
    tokens_out: int = 0  # estimated reply tokens
    failed: list[str] = field(default_factory=list)  # "doc.md#3: why", chunks without pairs
    duplicates: list[str] = field(default_factory=list)  # "doc.md#4: 'question' (as doc.md#1)"
    unfaithful: list[str] = field(default_factory=list)  # "doc.md#2: 'question' states 9,900원"
    empty_docs: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Prompt, reply, checks


def load_prompt() -> str:
    text = PROMPT_FILE.read_text(encoding="utf-8")
    for name in ("{n}", "{source}", "{chunk}"):
        assert name in text, f"{PROMPT_FILE}: the placeholder {name} is missing"
    return text


def render_prompt(template: str, chunk: Chunk, n: int) -> str:
    # str.replace, not str.format: the prompt's JSON example has braces
    return (template.replace("{n}", str(n)).replace("{source}", chunk.source)
            .replace("{chunk}", chunk.text))


def pairs_wanted(chunks: list[Chunk], rows: int | None) -> list[int]:
    """Pairs to ask of each chunk: by its length, or --rows shared out by length."""
    if rows is None:
        return [min(MAX_PAIRS, max(1, round(len(c.text) / PAIRS_PER_CHARS))) for c in chunks]
    total = sum(len(c.text) for c in chunks)
    return [min(MAX_PAIRS * 2, max(1, math.ceil(rows * len(c.text) / total))) for c in chunks]


QUESTION_KEYS = ("question", "질문", "q", "instruction")
ANSWER_KEYS = ("answer", "답변", "a", "output", "response")


def parse_pairs(reply: str) -> list[tuple[str, str]] | None:
    """(question, answer) pairs of a reply: {"pairs": [...]} or a bare list of
    {question, answer} objects, in ```json fences or after a sentence. None if unreadable."""
    text = reply.strip()
    fenced = FENCE.search(text)
    text = fenced.group(1).strip() if fenced else text
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    if isinstance(found, dict):
        found = next((v for v in found.values() if isinstance(v, list)), None)
    if not isinstance(found, list):
        return None
    pairs = []
    for item in found:
        if not isinstance(item, dict):
            return None
        lowered = {str(k).lower(): v for k, v in item.items()}
        question = next((lowered[k] for k in QUESTION_KEYS if k in lowered), None)
        answer = next((lowered[k] for k in ANSWER_KEYS if k in lowered), None)
        if not isinstance(question, str) or not isinstance(answer, str):
            return None
        pairs.append((" ".join(question.split()), " ".join(answer.split())))
    return pairs


def question_key(question: str) -> str:
    """data.py's duplicate key, with spaces and end punctuation aside: near-identical questions."""
    return re.sub(r"[\s?!.~]+", "", duplicate_key(question))


def shown_facts(found: set[tuple[str, str]]) -> str:
    return ", ".join(sorted(value + ("" if unit in ("", "tel", "ratio") else unit)
                            for value, unit in found))


# ---------------------------------------------------------------------------------------------
# Cache: one file per answered request, written whole


def cache_dir(out: Path) -> Path:
    root = os.environ.get("BUILDER_CACHE")
    return (Path(root) if root else out.resolve().parent / ".builder-cache") / "generate"


def cache_key(endpoint: str, model: str, prompt: str) -> str:
    """Two servers may serve different models under one name: the endpoint is part of the key.
    It goes in hashed with the rest (a URL can hold a password) and is never written."""
    text = f"{endpoint.rstrip('/')}\0{model}\0{prompt}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def shown_url(url: str) -> str:
    """The endpoint as messages show it: without a user:password@ or a ?query that may hold
    a key."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def read_cached(folder: Path, key: str) -> str | None:
    try:
        return json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))["reply"]
    except (OSError, ValueError, KeyError):
        return None


def write_cached(folder: Path, key: str, chunk: Chunk, model: str, reply: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"model": model, "source": chunk.source, "chunk_sha256": chunk.sha256, "reply": reply}
    handle, temp = tempfile.mkstemp(prefix=f".{key}.", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        json.dump(entry, f, ensure_ascii=False)
    os.replace(temp, folder / f"{key}.json")


# ---------------------------------------------------------------------------------------------
# The stage


def generate_from_docs(docs: list[str | Path], out: str | Path, *, endpoint: str | None = None,
                       model: str | None = None, rows: int | None = None, chunk_tokens: int = 400,
                       api_key_env: str = "OPENAI_API_KEY", dry_run: bool = False,
                       timeout_s: float = READ_TIMEOUT_S, api_key: str | None = None,
                       max_tokens: int | None = None, log=print) -> DocsResult:
    """Ask the endpoint for pairs from each chunk of `docs`; write the Alpaca CSV `out`.
    The key is `api_key` when given (the web page's field), else $api_key_env. `max_tokens`
    caps each reply (None: the server's limit; a cut-off reply is asked again, then reported)."""
    import httpx
    from tqdm import tqdm

    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out}: give a .csv file name, e.g. --out faq.csv")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'faq.csv'}")
    if rows is not None and rows < 1:
        raise UserError(f"--rows {rows}: ask for at least 1 row, or leave --rows out")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: give at least 1, or leave --max-tokens out")
    if not dry_run:
        if not endpoint or not model:
            raise UserError("give --endpoint URL and --model NAME (e.g. --endpoint "
                            "https://api.openai.com/v1 --model gpt-4o-mini), or use --dry-run")
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(f"--endpoint {shown_url(endpoint)}: give a URL such as "
                            "http://127.0.0.1:8000/v1")

    # Read and plan
    chunks, empty_docs = read_chunks(docs, chunk_tokens)
    if not chunks:
        raise UserError(f"no text in the documents ({'; '.join(empty_docs)})")
    template = load_prompt()
    wanted = pairs_wanted(chunks, rows)
    prompts = [render_prompt(template, c, n) for c, n in zip(chunks, wanted)]
    folder = cache_dir(out)
    keys = [cache_key(endpoint or "", model or "", p) for p in prompts]
    # a cached reply is one that was read; parsed again, in case the parser changed since
    replies: list[list[tuple[str, str]] | None] = [
        parse_pairs(r) if model and (r := read_cached(folder, k)) is not None else None
        for k in keys]
    to_ask = [i for i, r in enumerate(replies) if r is None]
    result = DocsResult(path=None, chunks=chunks, empty_docs=empty_docs,
                        cached=len(chunks) - len(to_ask))
    tokens = [round(len(p) * TOKENS_PER_CHAR_ESTIMATE) for p in prompts]
    result.requests = len(to_ask)
    result.tokens_in = sum(tokens[i] for i in to_ask)
    result.tokens_out = sum(round(wanted[i] * ANSWER_CHARS_ESTIMATE * TOKENS_PER_CHAR_ESTIMATE)
                            for i in to_ask)
    if dry_run:
        for chunk, n, reply, count in zip(chunks, wanted, replies, tokens):
            state = "cached" if reply is not None else f"~{count} tokens"
            log(f"{chunk.source}  {len(chunk.text)} chars, {n} pairs asked, {state}  "
                f"[{chunk.heading[:50]}]")
        if to_ask:
            target = shown_url(endpoint) if endpoint else "ENDPOINT"
            log(f"--- the request for {chunks[to_ask[0]].source}, as it would be sent "
                f"(POST {target}/chat/completions, JSON schema "
                f"response_format) ---\n{prompts[to_ask[0]]}\n---")
        return result

    # Ask, caching each reply as it arrives
    key = api_key if api_key is not None else os.environ.get(api_key_env) or ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = endpoint.rstrip("/") + "/chat/completions"
    optional = {"response_format": RESPONSE_FORMAT}  # emptied if the server refuses it
    timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
    bar = tqdm(total=len(chunks), initial=result.cached, unit="chunk", desc="generate",
               file=sys.stderr, disable=None)
    try:
        with httpx.Client(headers=headers, timeout=timeout) as client:
            for i in to_ask:
                for _ in range(MALFORMED_TRIES):
                    reply = ask(client, url, model, prompts[i], api_key_env, bool(key),
                                temperature=TEMPERATURE, optional=optional, retries=RETRIES,
                                backoff_s=BACKOFF_S, max_tokens=max_tokens)
                    replies[i] = parse_pairs(reply)
                    if replies[i] is not None:
                        write_cached(folder, keys[i], chunks[i], model, reply)
                        break
                else:
                    shown = " ".join(reply.split())[:80]
                    result.failed.append(f"{chunks[i].source}: no readable JSON in "
                                         f"{MALFORMED_TRIES} replies (last: {shown!r})")
                bar.update(1)
    except UserError as error:
        done = sum(r is not None for r in replies)
        message = (f"{error} [{done} of {len(chunks)} chunks are saved in {folder}; "
                   "the same command continues from there]")
        raise UserError(message.replace(key, "***") if key else message) from None
    finally:
        bar.close()

    # Check the pairs: empty, repeated, or stating a number the chunk does not
    seen: dict[str, str] = {}
    csv_rows = []
    for chunk, pairs in zip(chunks, replies):
        if pairs == []:
            result.failed.append(f"{chunk.source}: the reply held no pairs")
        for question, answer in pairs or []:
            if not question or not answer:
                result.failed.append(f"{chunk.source}: a pair without "
                                     f"{'question' if not question else 'answer'} left out")
                continue
            made_up = invented(answer, [chunk.text])
            if made_up:
                result.unfaithful.append(f"{chunk.source}: {question[:40]!r} states "
                                         f"{shown_facts(made_up)}, not in the chunk")
                continue
            if question_key(question) in seen:
                result.duplicates.append(f"{chunk.source}: {question[:40]!r} "
                                         f"(as {seen[question_key(question)]})")
                continue
            seen[question_key(question)] = chunk.source
            csv_rows.append((question, "", answer, chunk.source, ""))
    csv_rows = csv_rows[:rows] if rows else csv_rows

    # Write, whole or not at all
    if not csv_rows:
        why = "; ".join(result.failed + result.unfaithful) or "nothing returned"
        raise UserError(f"no usable pairs from {shown_url(url)} for any of {len(chunks)} chunks ({why}); "
                        f"check that --model {model} follows {PROMPT_FILE.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(csv_rows, out, header=COLUMNS, excel=True)  # reviewed in a spreadsheet
    result.path, result.rows = out, len(csv_rows)
    return result


def summary(result: DocsResult) -> str:
    """What the CLI prints after a run (or a dry run)."""
    files = len({c.source.rsplit("#", 1)[0] for c in result.chunks})
    lines = [f"  {line}" for line in result.empty_docs]
    plan = (f"{len(result.chunks)} chunks from {files} documents: {result.requests} requests "
            f"({result.cached} answered from the cache), about {result.tokens_in:,} prompt + "
            f"{result.tokens_out:,} reply tokens (0.6 tokens per character, estimated)")
    if result.path is None:
        return "\n".join(lines + [plan, "dry run: no request was sent"])
    for title, entries in (("not answered", result.failed),
                           ("left out, a number not in the chunk", result.unfaithful),
                           ("left out, repeated question", result.duplicates)):
        if entries:
            lines.append(f"{title}: {len(entries)}")
            lines += [f"  {entry}" for entry in entries]
    lines += [plan, f"wrote {result.rows} question/answer rows -> {result.path}",
              (f"next: check each row against its document (fix or delete a wrong one, write y "
               f'in its "{REVIEW_COLUMN}" column), then builder prepare {result.path} --out '
               "runs/data")]
    return "\n".join(lines)
