"""Paraphrases of the training questions from an OpenAI-compatible chat endpoint.

    builder generate --paraphrases runs/data --endpoint http://127.0.0.1:8000/v1 --model NAME

Asks the endpoint (vLLM, llama.cpp's server, or any POST {endpoint}/chat/completions) for N ways
a customer might type each question of the prepared folder's train.csv: short, casual, 반말,
typos, keywords only. The prompt is prompts/paraphrase_ko.txt. The result is
PREPARED_DIR/paraphrases.csv (question,paraphrase), which training reads as extra wordings of
each question. Only train.csv is read: the test questions stay unseen. The API key is read from
an environment variable and never printed, logged or written.
"""

import csv
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

from builder.errors import UserError

PROMPT_FILE = Path(__file__).resolve().parents[2] / "prompts" / "paraphrase_ko.txt"
# varied wordings need sampling; 0.8 keeps them on topic
TEMPERATURE = 0.8
# seconds: a local model on a busy GPU can take a while for one reply; connecting should not
READ_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 10
MAX_WAIT_S = 60  # the longest wait for a rate limit before trying again, in seconds
MAX_LENGTH_RATIO = 3  # a paraphrase longer than 3 x the question is an explanation, not a question


@dataclass
class GenerateResult:
    path: Path  # the paraphrases.csv written
    questions: int  # questions asked
    written: int  # paraphrase rows written
    skipped: list[str] = field(default_factory=list)  # "train.csv line N: why", one per question


# ---------------------------------------------------------------------------------------------
# Prompt and reply


def load_prompt() -> str:
    text = PROMPT_FILE.read_text(encoding="utf-8")
    for name in ("{n}", "{question}"):
        assert name in text, f"{PROMPT_FILE}: the placeholder {name} is missing"
    return text


def render_prompt(template: str, question: str, n: int) -> str:
    # str.replace, not str.format: the prompt's JSON example has brackets a future edit may brace
    return template.replace("{n}", str(n)).replace("{question}", question)


FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def parse_reply(reply: str) -> list[str] | None:
    """The strings of a model reply: a JSON array (possibly in ```json fences), else one per
    line. None when the reply cannot be read (empty, or JSON that is broken or not an array)."""
    text = reply.strip()
    fenced = FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    if text.startswith(("[", "{")):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return None
        return items
    lines = [BULLET.sub("", line).strip().strip('"\'').strip() for line in text.splitlines()]
    # "다음은 ...:" style introductions are not paraphrases
    lines = [line for line in lines if line and not line.endswith(":")]
    return lines or None


def clean_paraphrases(items: list[str], question: str, n: int,
                      unseen: frozenset[str] = frozenset()) -> list[str]:
    """At most n usable paraphrases: no empties, copies of the question, duplicates, test
    questions (`unseen`) or anything over MAX_LENGTH_RATIO x the question's length."""
    question = " ".join(question.split())
    kept: list[str] = []
    for item in items:
        text = " ".join(item.split())
        if (not text or text == question or text in kept or text in unseen
                or len(text) > MAX_LENGTH_RATIO * len(question)):
            continue
        kept.append(text)
    return kept[:n]


# ---------------------------------------------------------------------------------------------
# Reading the prepared folder


def read_questions(csv_path: Path) -> list[tuple[int, str]]:
    """(line, instruction) of each distinct question, in file order (header = line 1)."""
    seen: set[str] = set()
    questions = []
    with csv_path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            question = (row.get("instruction") or "").strip()
            if question and question not in seen:
                seen.add(question)
                questions.append((line, question))
    return questions


def check_prepared(prepared_dir: Path) -> None:
    missing = [name for name in ("train.csv", "report.json") if not (prepared_dir / name).is_file()]
    if missing:
        raise UserError(f"{prepared_dir} is not a prepared folder (no {', '.join(missing)}): "
                        f"run `builder prepare FAQ_FILE --out {prepared_dir}` first")


# ---------------------------------------------------------------------------------------------
# Talking to the endpoint


def retry_wait(response, attempt: int, backoff_s: float) -> float:
    """Seconds to wait before trying again: the server's Retry-After (seconds or an HTTP date)
    when it sends one, else backoff_s doubled per attempt; never more than MAX_WAIT_S."""
    value = response.headers.get("Retry-After", "") if response is not None else ""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            seconds = backoff_s * 2 ** attempt
    return min(max(seconds, 0.0), MAX_WAIT_S)


def ask(client, url: str, model: str, prompt: str, api_key_env: str, has_key: bool, *,
        temperature: float = TEMPERATURE, optional: dict | None = None, retries: int = 0,
        backoff_s: float = 1.0, max_tokens: int | None = None) -> str:
    """The text of one chat completion; UserError for anything that would fail every question.

    `retries`: how often a 429, a 5xx or a timeout is tried again (waiting as `retry_wait`
    says) before it becomes the error. `optional`: body fields the endpoint may not know
    (response_format); when it answers 400/422 with them, the request is sent again without
    them and the dict is emptied, so the caller's next requests go without them too.
    `max_tokens`: the longest reply asked for (None: the server's own limit)."""
    import httpx

    attempts = retries + 1
    for attempt in range(attempts):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}],
                "temperature": temperature} | (optional or {})
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        tries = f" (tried {attempts} times)" if attempts > 1 else ""
        response = None
        try:
            response = client.post(url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise UserError(
                f"cannot reach {url} ({type(error).__name__}): start an OpenAI-compatible server "
                "there (e.g. `vllm serve MODEL` or llama.cpp's `llama-server`) or fix --endpoint"
            ) from None
        except httpx.TimeoutException:
            if attempt + 1 < attempts:
                time.sleep(retry_wait(None, attempt, backoff_s))
                continue
            raise UserError(f"{url} gave no reply within {client.timeout.read:g} s{tries}: is the "
                            "model loaded and the server not overloaded?") from None
        except httpx.HTTPError as error:
            raise UserError(f"request to {url} failed: {type(error).__name__}") from None
        # a server without response_format: ask the plain way (llama-cpp-python's server
        # refuses an unknown response_format with a 500 that names the field)
        if optional and (response.status_code in (400, 422) or (
                response.status_code >= 500 and any(name in response.text for name in optional))):
            optional.clear()
            return ask(client, url, model, prompt, api_key_env, has_key, temperature=temperature,
                       retries=retries, backoff_s=backoff_s, max_tokens=max_tokens)
        if response.status_code == 429 or response.status_code >= 500:
            if attempt + 1 < attempts:
                time.sleep(retry_wait(response, attempt, backoff_s))
                continue
        if response.status_code in (401, 403):
            if has_key:
                raise UserError(f"{url} refused the API key in ${api_key_env} "
                                f"(HTTP {response.status_code}): set {api_key_env} to a key it "
                                "accepts")
            raise UserError(f"{url} asks for an API key (HTTP {response.status_code}): set "
                            f"{api_key_env}, or name another variable with --api-key-env")
        if response.status_code == 429:
            raise UserError(f"{url} answered HTTP 429 (too many requests){tries}: the rate limit "
                            "or quota of this key is used up; wait, or raise the limit, and run "
                            "again")
        if response.status_code >= 400:
            detail = " ".join(response.text.split())[:200]
            hint = " (is --model a model the server serves?)" if response.status_code == 404 else ""
            raise UserError(f"{url} answered HTTP {response.status_code}{hint}{tries}: {detail}")
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise UserError(f"{url} did not answer like an OpenAI chat-completions endpoint "
                            "(no choices[0].message.content): check --endpoint (often ends in "
                            "/v1)") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---------------------------------------------------------------------------------------------
# The stage


def write_rows(rows: list[tuple], path: Path, header: tuple = ("question", "paraphrase"),
               excel: bool = False) -> None:
    """CSV rows under `header` into `path`, atomically: a reader sees the old file or the new.
    `excel`: a file the owner opens in a spreadsheet, its cells never run as formulas."""
    if excel:
        from builder.data.tables import excel_safe

        rows = [tuple(excel_safe(cell) for cell in row) for row in rows]
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def generate_paraphrases(prepared_dir: str | Path, endpoint: str, model: str, *, n: int = 3,
                         api_key_env: str = "OPENAI_API_KEY", limit: int | None = None,
                         log=print) -> GenerateResult:
    """Ask `endpoint` for n paraphrases of each train.csv question; write paraphrases.csv."""
    import httpx

    prepared_dir = Path(prepared_dir)
    check_prepared(prepared_dir)
    if not endpoint.startswith(("http://", "https://")):
        raise UserError(f"--endpoint {endpoint}: give a URL such as http://127.0.0.1:8000/v1")
    if n < 1:
        raise UserError(f"--n {n}: ask for at least 1 paraphrase per question")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: give at least 1 question, or leave --limit out")

    # Questions: train.csv only; test questions are never asked and never written
    questions = read_questions(prepared_dir / "train.csv")
    if not questions:
        raise UserError(f"{prepared_dir / 'train.csv'} has no questions: run `builder prepare` "
                        "again on a FAQ file with rows")
    questions = questions[:limit] if limit else questions
    test_csv = prepared_dir / "test.csv"
    # a paraphrase that happens to be a test question would leak it into training
    unseen = frozenset(q for _, q in (read_questions(test_csv) if test_csv.is_file() else []))

    # Ask
    key = os.environ.get(api_key_env) or ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = endpoint.rstrip("/") + "/chat/completions"
    template = load_prompt()
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        with httpx.Client(headers=headers, timeout=timeout) as client:
            for done, (line, question) in enumerate(questions, start=1):
                reply = ask(client, url, model, render_prompt(template, question, n),
                            api_key_env, has_key=bool(key))
                items = parse_reply(reply)
                kept = clean_paraphrases(items, question, n, unseen) if items is not None else []
                if items is None:
                    skipped.append(f"train.csv line {line}: the reply was neither a JSON array "
                                   "nor one paraphrase per line")
                elif not kept:
                    skipped.append(f"train.csv line {line}: no usable paraphrase in the reply")
                rows.extend((question, p) for p in kept)
                if done % 10 == 0 or done == len(questions):
                    log(f"{done}/{len(questions)} questions, {len(rows)} paraphrases")
    except UserError as error:  # belt and braces: a server that echoes the key must not leak it
        raise UserError(str(error).replace(key, "***") if key else str(error)) from None

    # Write
    if not rows:
        raise UserError(f"no paraphrases from {url} for any of {len(questions)} questions "
                        f"(first: {skipped[0]}); check that --model {model} follows the prompt "
                        f"in {PROMPT_FILE.name}")
    path = prepared_dir / "paraphrases.csv"
    write_rows(rows, path)
    return GenerateResult(path=path, questions=len(questions), written=len(rows), skipped=skipped)
