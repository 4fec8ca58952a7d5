"""An LLM as a second opinion in the eval: each answer graded for faithfulness to the FAQ
entries it was given and for helpfulness, and the fine-tuned bot's answers compared pairwise
with the base model's.

    builder eval runs/demo --questions data/sample_questions.csv \\
        --judge http://127.0.0.1:8000/v1 --judge-model NAME   # key from $OPENAI_API_KEY

Any OpenAI-compatible chat endpoint judges (vLLM, llama.cpp's server, a hosted API); the key
is read from the environment (--judge-api-key-env) and never printed or written, nor is the
URL (it can carry credentials): the report names the judge's model only. The prompts are
prompts/judge_ko.txt and prompts/judge_pair_ko.txt. The fact checks stay the ground truth:
the report shows how often the judge agrees with them. A reply the judge garbles, refuses or
does not send in time leaves that answer unjudged (counted); after FAILURES_IN_A_ROW failed
requests the judge is given up on and the eval goes on without it.
"""

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from builder.errors import UserError

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"
GRADE_PROMPT = PROMPTS / "judge_ko.txt"
PAIR_PROMPT = PROMPTS / "judge_pair_ko.txt"
FAILURES_IN_A_ROW = 3
HELPFUL_ENOUGH = 4  # a helpfulness grade that counts as a right answer when compared with facts


@dataclass
class JudgeSpec:
    url: str  # the endpoint's base, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 1


def check_spec(url: str | None, model: str | None, api_key_env: str) -> JudgeSpec:
    """The judge's flags checked before any answer is generated."""
    import httpx

    if not (url and model):
        raise UserError("--judge URL and --judge-model NAME go together")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env or ""):
        # never echoed: a key pasted here by mistake must not reach the terminal or a log
        raise UserError("--judge-api-key-env takes the NAME of an environment variable that "
                        "holds the key (e.g. OPENAI_API_KEY), not the key itself")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise UserError("--judge must be an http(s) URL of an OpenAI-compatible endpoint, "
                        "e.g. http://127.0.0.1:8000/v1")
    for path, names in ((GRADE_PROMPT, ("question", "entries", "answer", "decline")),
                        (PAIR_PROMPT, ("question", "entries", "answer_a", "answer_b"))):
        load_prompt(path, names)
    return JudgeSpec(url, model, api_key_env)


def load_prompt(path: Path, names: tuple[str, ...]) -> str:
    text = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                     if not line.startswith("#")).strip()
    missing = [n for n in names if "{" + n + "}" not in text]
    if missing:
        raise UserError(f"{path}: the placeholder(s) {', '.join(missing)} are missing")
    return text


def render(template: str, **values: str) -> str:
    # str.replace, not format: the prompt's JSON example has braces
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def _first_json(text: str) -> dict | None:
    for match in JSON_OBJECT.finditer(text or ""):
        try:
            value = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def parse_grade(text: str) -> dict | None:
    """{"faithful": bool, "helpful": 1-5} from the judge's reply; None when it gives neither
    (a refusal, prose, a grade out of range)."""
    value = _first_json(text)
    if value is None:
        return None
    faithful, helpful = value.get("faithful"), value.get("helpful")
    if isinstance(faithful, str) and faithful.lower() in ("true", "false"):
        faithful = faithful.lower() == "true"
    try:
        helpful = int(helpful)
    except (TypeError, ValueError):
        return None
    if not isinstance(faithful, bool) or not 1 <= helpful <= 5:
        return None
    return {"faithful": faithful, "helpful": helpful}


def parse_choice(text: str) -> str | None:
    value = _first_json(text)
    better = str(value.get("better", "")).strip().upper() if value else ""
    return {"A": "A", "B": "B", "TIE": "tie"}.get(better)


def entries_text(reply) -> str:
    lines = [f"- 질문: {h.entry.question} / 답변: {h.entry.answer}" for h in reply.sources]
    return "\n".join(lines) or "없음"


class Judge:
    """One judge endpoint; `grade` and `compare` return None for an answer left unjudged."""

    def __init__(self, spec: JudgeSpec, decline_message: str, log=print):
        import os

        import httpx

        self.spec, self.decline, self.log = spec, decline_message, log
        key = os.environ.get(spec.api_key_env) or ""
        self.has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(headers=headers,
                                   timeout=httpx.Timeout(spec.timeout_s, connect=10))
        self.grade_prompt = load_prompt(GRADE_PROMPT, ("question", "entries", "answer", "decline"))
        self.pair_prompt = load_prompt(PAIR_PROMPT, ("question", "entries", "answer_a", "answer_b"))
        self.failures = 0  # requests failed in a row
        self.error = ""  # why the judge was given up on

    @property
    def gave_up(self) -> bool:
        return self.failures >= FAILURES_IN_A_ROW

    def _ask(self, prompt: str) -> str | None:
        from builder.data.paraphrases import ask

        if self.gave_up:
            return None
        url = self.spec.url.rstrip("/") + "/chat/completions"
        try:
            text = ask(self.client, url, self.spec.model, prompt, self.spec.api_key_env,
                       self.has_key, temperature=0.0, retries=self.spec.retries, backoff_s=0.5,
                       max_tokens=200)
        except UserError as error:
            self.failures += 1
            if self.gave_up:  # the message without the URL: it can carry credentials
                self.error = str(error).replace(url, "the judge").replace(self.spec.url,
                                                                            "the judge")
                self.log(f"judge: given up after {self.failures} failed requests: {self.error}")
            return None
        self.failures = 0
        return text

    def grade(self, question: str, reply) -> dict | None:
        text = self._ask(render(self.grade_prompt, question=question, entries=entries_text(reply),
                                answer=reply.text, decline=self.decline))
        return parse_grade(text) if text is not None else None

    def compare(self, question: str, tuned, base, swap: bool) -> str | None:
        """"tuned", "base", "tie" or None."""
        if tuned.text.strip() == base.text.strip():
            return "tie"
        a, b = (base, tuned) if swap else (tuned, base)
        sources = tuned if tuned.sources else base
        text = self._ask(render(self.pair_prompt, question=question, entries=entries_text(sources),
                                answer_a=a.text, answer_b=b.text))
        choice = parse_choice(text) if text is not None else None
        if choice in ("A", "B"):
            return "tuned" if (choice == "A") != swap else "base"
        return choice


def judge_replies(spec: JudgeSpec, questions: list[str], replies: dict[str, list],
                  facts_right: dict[str, list], decline_message: str, log=print) -> dict:
    """Grades of every system's answers, the pairwise tuned-vs-base verdicts, and how often the
    judge agrees with the fact checks (`facts_right`: per system, True/False per answer, None
    where the answer has no fact to check)."""
    judge = Judge(spec, decline_message, log)
    out = {"model": spec.model, "systems": {}, "grades": {}}
    for system, system_replies in replies.items():
        grades = [judge.grade(q, r) for q, r in zip(questions, system_replies)]
        judged = [g for g in grades if g is not None]
        pairs = [(g["faithful"] and g["helpful"] >= HELPFUL_ENOUGH, ok)
                 for g, ok in zip(grades, facts_right.get(system, [])) if g and ok is not None]
        out["grades"][system] = grades
        out["systems"][system] = {
            "judged": len(judged), "unjudged": len(grades) - len(judged),
            "faithful": round(sum(g["faithful"] for g in judged) / len(judged), 4) if judged else None,
            "helpful": round(sum(g["helpful"] for g in judged) / len(judged), 2) if judged else None,
            "agrees_with_facts": round(sum(j == bool(ok) for j, ok in pairs) / len(pairs), 4)
            if pairs else None, "compared_with_facts": len(pairs)}
    if "tuned" in replies and "base" in replies:
        rng = random.Random(0)  # which answer is shown first, so position bias cancels out
        verdicts = [judge.compare(q, t, b, rng.random() < 0.5)
                    for q, t, b in zip(questions, replies["tuned"], replies["base"])]
        out["pairwise"] = {name: verdicts.count(name) for name in ("tuned", "base", "tie")}
        out["pairwise"]["unjudged"] = verdicts.count(None)
    out["gave_up"] = judge.error
    judge.client.close()
    return out
