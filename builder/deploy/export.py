"""The export stage: a run's merged model as GGUF for llama.cpp, Ollama and LM Studio, verified.

    builder export runs/NAME --format gguf                  # f16  -> runs/NAME/gguf/
    builder export runs/NAME --format gguf --quant q8_0     # smaller; checked against f16's answers
    cd runs/NAME/gguf && ollama create NAME -f Modelfile     # then: ollama run NAME

RUN/gguf/ gets NAME-QUANT.gguf, an Ollama `Modelfile` (the run's prompt template as TEMPLATE,
its stop markers and end tokens as `stop`, temperature 0, the run's repetition penalty,
num_ctx) and report.json: for every quant exported, its greedy answers to questions of the
run's FAQ next to the merged model's (transformers), how many are identical, how similar, and
how many ran to the length limit. A quant that breaks the answers (they loop to the limit where
the merged model stops, or hardly resemble its answers) is refused, unless `--force` keeps it
with a warning: gemma-3-270m does not survive 4-bit (q4_k_m). Each GGUF is converted and
verified in a staging folder and only then renamed into place, so a refused (or killed) export
leaves what was kept before, and the `default` report.json names, as it was; report.json's
"quants" lists the kept files, "refused" the last refused try of each quant.

How it converts: llama.cpp's own converter (`convert_hf_to_gguf.py`, with its `conversion/`
package and its vendored `gguf-py`; PyPI's `gguf` does not match it) from the llama-cpp-python
0.3.36 sdist. The first export downloads that sdist once with pip
(`pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36`) and unpacks the three
parts into $BUILDER_CACHE/llama.cpp-convert-0.3.36/ (default ~/.cache/ko-chatbot-builder/);
every later export is offline. Offline from the start: download the sdist elsewhere and point
$BUILDER_LLAMA_CPP_SDIST at the .tar.gz. q8_0 is written by the converter itself; q4_k_m by
`llama_cpp.llama_model_quantize` from a temporary f16.

The converter reads a staging folder, never merged/ itself: the weights linked, the tokenizer
copied, `chat_template.jinja` written (the converter embeds it in the GGUF) and, for a
SentencePiece-style tokenizer (gemma), `tokenizer.model` rebuilt from tokenizer.json:
transformers 5 saves none, and without it the converter writes a gpt2-style vocabulary that
prints `<0xEB>...` for rare Hangul.
"""

import difflib
import hashlib
import json
import shutil
import string
import time
from pathlib import Path

from builder.deploy.gguf import LLAMA_CPP_VERSION, convert, quantize, stage
from builder.errors import UserError
from builder.run import Run, staging_dir, write_atomic

QUANTS = ("f16", "q8_0", "q4_k_m")
QUESTIONS = 5  # FAQ questions asked of both models
MAX_NEW_TOKENS = 96  # per verification answer: FAQ answers are 20-60 tokens
CLOSE = 0.8  # mean similarity (difflib ratio) under which a quant's answers count as broken
STAGING = ".staging-"  # RUN/gguf/.staging-PID...: a conversion under way (or a killed one's)


# ---------------------------------------------------------------------------------------------
# The converter: llama.cpp's own, from the llama-cpp-python sdist, fetched once


# ---------------------------------------------------------------------------------------------
# The staging folder the converter reads


# ---------------------------------------------------------------------------------------------
# Converting and quantizing


# ---------------------------------------------------------------------------------------------
# The Ollama Modelfile


def ollama_template(template) -> str:
    """The run's prompt as an Ollama (Go) TEMPLATE: {faq} is the system message (the FAQ
    entries, as the caller retrieved them), {instruction} the prompt. A grounded template
    given no system message passes the prompt through as it came: `builder serve --engine`
    sends prompts it rendered itself."""
    def go(text: str) -> str:
        out, literal = [], ""
        for piece, field, _, _ in string.Formatter().parse(text):
            literal += piece  # "{{{{" arrives as two pieces of "{"
            if field is not None:
                out.append(literal.replace("{{", '{{ "{{" }}'))
                out.append({"faq": "{{ .System }}", "instruction": "{{ .Prompt }}"}.get(field, ""))
                literal = ""
        return "".join(out) + literal.replace("{{", '{{ "{{" }}')

    body = go(template.prompt) + "{{ .Response }}"
    if template.grounded:
        return "{{ if .System }}" + body + "{{ else }}{{ .Prompt }}{{ .Response }}{{ end }}"
    return body


def stop_words(template, end_tokens) -> list[str]:
    return list(dict.fromkeys([*template.stop_markers, *end_tokens]))


def modelfile(template, gguf_name: str, *, repetition_penalty: float, num_ctx: int,
              end_tokens=("<eos>",), num_predict: int = 256) -> str:
    """An Ollama Modelfile for the GGUF next to it."""
    text = ollama_template(template)
    if '"""' in text:
        raise UserError(f"template {template.name!r}: contains three double quotes in a row, "
                        "which an Ollama Modelfile cannot hold; remove them from the template")
    lines = [f"# {template.name!r} prompt template; the system message is the FAQ block "
             "(entries as builder retrieves them).",
             "# ollama create NAME -f Modelfile && ollama run NAME",
             f"FROM ./{gguf_name}", f'TEMPLATE """{text}"""',
             "PARAMETER temperature 0",
             # Ollama's penalty also counts the last 64 prompt tokens; builder's only the answer
             f"PARAMETER repeat_penalty {repetition_penalty:g}",
             f"PARAMETER num_ctx {num_ctx}", f"PARAMETER num_predict {num_predict}"]
    lines += [f"PARAMETER stop {json.dumps(word, ensure_ascii=False)}"
              for word in stop_words(template, end_tokens)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Verification: greedy answers of the GGUF next to the merged model's


def verification_questions(run_dir: Path, n: int = QUESTIONS) -> list[str]:
    """The first n questions of the run's FAQ (knowledge/), else of its training split."""
    import csv

    entries = run_dir / "knowledge" / "entries.jsonl"
    if entries.is_file():
        with entries.open(encoding="utf-8") as f:
            questions = [json.loads(line)["question"] for line in f if line.strip()]
    else:
        train = Path(_read_report(run_dir / "meta.json").get("data_dir") or run_dir) / "train.csv"
        if not train.is_file():
            raise UserError(f"{run_dir}: no FAQ questions to check the GGUF with (neither "
                            f"knowledge/ nor {train}); index the FAQ with `builder index "
                            f"{run_dir} FAQ_FILE`")
        with train.open(encoding="utf-8", newline="") as f:
            questions = [row["instruction"] for row in csv.DictReader(f)]
    if not questions:
        raise UserError(f"{run_dir}: the FAQ has no questions to check the GGUF with")
    return questions[:n]


def verification_prompts(bot, questions: list[str], max_new_tokens: int) -> list[str]:
    """The prompts the bot gives its engine for these questions: each grounded as every door
    grounds it (the model's own answer, not the FAQ's word-for-word one)."""
    prompts = []
    for question in questions:
        grounding = (bot.grounder.ground(question, exact=False) if bot.grounder is not None
                     else bot.ground(question))
        prompts.append(bot.prompt(grounding, max_new_tokens))
    return prompts


def greedy(bot, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """Each prompt's greedy answer (before the fact guard) and whether it ran to the limit."""
    answers = []
    for prompt in prompts:
        ids: list[int] = []
        begun = time.perf_counter()
        text = "".join(bot.engine.stream(prompt, max_new_tokens=max_new_tokens, temperature=0.0,
                                         generated_ids=ids))
        answers.append({"text": text, "tokens": len(ids),
                        "seconds": round(time.perf_counter() - begun, 2),
                        "ran_to_limit": len(ids) >= max_new_tokens})
    return answers


def compare(reference: list[dict], answers: list[dict]) -> dict:
    """How a quant's answers agree with the merged model's, and the verdict:
    identical, close (warn) or broken (refuse)."""
    similarity = [difflib.SequenceMatcher(None, r["text"], a["text"]).ratio()
                  for r, a in zip(reference, answers)]
    identical = sum(r["text"] == a["text"] for r, a in zip(reference, answers))
    looped = sum(a["ran_to_limit"] and not r["ran_to_limit"] for r, a in zip(reference, answers))
    mean = sum(similarity) / len(similarity) if similarity else 0.0
    tokens, seconds = sum(a["tokens"] for a in answers), sum(a["seconds"] for a in answers)
    if identical == len(answers):
        verdict = "identical"
    elif looped or mean < CLOSE:
        verdict = "broken"
    else:
        verdict = "close"
    return {"questions": len(answers), "identical": identical,
            "mean_similarity": round(mean, 3),
            "ran_to_limit": sum(a["ran_to_limit"] for a in answers),
            "looped_where_merged_stopped": looped, "verdict": verdict,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None}


def verdict_line(quant: str, result: dict) -> str:
    figures = (f"{result['identical']}/{result['questions']} answers identical to the merged "
               f"model, mean similarity {result['mean_similarity']:.0%}, "
               f"{result['looped_where_merged_stopped']} ran to the length limit where it "
               "stopped")
    if result["verdict"] == "identical":
        return f"{quant}: {figures}"
    if result["verdict"] == "close":
        note = " (f16 should be identical: check the conversion)" if quant == "f16" else ""
        return f"warning: {quant} answers differ slightly: {figures}{note}"
    return f"{quant} breaks the answers: {figures}"


# ---------------------------------------------------------------------------------------------
# The stage's one call


def _fingerprint(merged_dir: Path, prompts, max_new_tokens: int) -> str:
    record = merged_dir / "merge.json"
    weights = sorted(merged_dir.glob("*.safetensors"))
    seed = [record.read_text() if record.is_file() else "",
            *[f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights],
            json.dumps(prompts, ensure_ascii=False), str(max_new_tokens)]
    return hashlib.sha256("\n".join(seed).encode()).hexdigest()


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def keep_if_verified(candidate: Path, out: Path, verify) -> dict:
    """Check the converted file where it was written and only then give it its name `out`:
    an interrupted or refused export never leaves an unchecked GGUF under a kept name, and a
    refused re-export leaves the file kept there before as it was. verify(candidate) returns
    its record, with "refused"; a refused (or failed) candidate is deleted."""
    try:
        checked = verify(candidate)
    except BaseException:
        candidate.unlink(missing_ok=True)
        raise
    if checked["refused"]:
        candidate.unlink(missing_ok=True)
    else:
        candidate.replace(out)
    return checked


def _verify(run_dir: Path, gguf: Path, asked: list[str], max_new_tokens: int, report: dict,
            force: bool) -> dict:
    """The GGUF's greedy answers next to the merged model's (cached in report.json while
    merged/ is unchanged), the verdict, and its end tokens (for the Modelfile)."""
    from builder.answering.chatbot import load_chatbot

    bot = load_chatbot(run_dir, "gguf", gguf_file=gguf)
    prompts = verification_prompts(bot, asked, max_new_tokens)
    key = _fingerprint(run_dir / "merged", prompts, max_new_tokens)
    if report.get("merged", {}).get("fingerprint") == key:
        merged = report["merged"]
    else:
        merged = {"fingerprint": key,
                  "answers": greedy(load_chatbot(run_dir, "merged"), prompts, max_new_tokens)}
    answers = greedy(bot, prompts, max_new_tokens)
    llama = bot.engine.llama
    end_tokens = [llama.detokenize([i], special=True).decode("utf-8", errors="replace")
                  for i in sorted(bot.engine.end_ids)]
    del bot, llama  # llama.cpp lets go of the file before it is renamed or deleted
    result = compare(merged["answers"], answers)
    return {"result": result, "answers": answers, "merged": merged, "end_tokens": end_tokens,
            "bytes": gguf.stat().st_size, "refused": result["verdict"] == "broken" and not force}


def export(run_dir, quant: str = "f16", *, fmt: str = "gguf", questions: int = QUESTIONS,
           max_new_tokens: int = MAX_NEW_TOKENS, force: bool = False, log=print) -> Path:
    """Write RUN/gguf/NAME-QUANT.gguf, its Modelfile and report.json; returns the GGUF's path.
    A quant that breaks the answers raises UserError (it is not kept; one exported before
    under its name stays) unless force."""
    from builder.answering.engines.llamacpp import import_llama

    if fmt != "gguf":
        raise UserError(f"--format {fmt}: only gguf is supported")
    if quant not in QUANTS:
        raise UserError(f"--quant {quant}: choose one of {', '.join(QUANTS)}")
    run = Run(run_dir).require()
    run_dir, merged_dir = run.path, run.merged_dir
    if not run.has_merged():
        raise UserError(f"{merged_dir}: no merged model; {run.make('merge')}")
    import_llama()  # fail before converting, not after
    template = run.template()
    if template.grounded:
        run.require_knowledge()
    asked = verification_questions(run_dir, questions)
    gguf_dir = run_dir / "gguf"
    out = gguf_dir / f"{run_dir.resolve().name}-{quant}.gguf"
    report_path = gguf_dir / "report.json"
    report = _read_report(report_path)

    # Convert (q4_k_m through a temporary f16) into a staging folder, verify it there, and only
    # then rename it into place
    begun = time.perf_counter()
    tmp = staging_dir(gguf_dir, STAGING)
    try:
        staging = stage(merged_dir, tmp / "model", template)
        candidate = tmp / out.name
        log(f"converting {merged_dir} to GGUF {quant} with llama.cpp's converter ...")
        if quant == "q4_k_m":
            convert(staging, tmp / "f16.gguf", "f16", log)
            quantize(tmp / "f16.gguf", candidate, quant)
        else:
            convert(staging, candidate, quant, log)
        converted_s = time.perf_counter() - begun
        log(f"verifying {out.name}: greedy answers to {questions} FAQ questions, merged model "
            "vs GGUF")
        checked = keep_if_verified(candidate, out, lambda path: _verify(
            run_dir, path, asked, max_new_tokens, report, force))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = checked["result"]
    entry = {**result, "file": out.name, "bytes": checked["bytes"],
             "convert_s": round(converted_s, 1), "refused": checked["refused"],
             "kept_by_force": force and result["verdict"] == "broken",
             "answers": checked["answers"]}
    line = verdict_line(quant, result)
    if checked["refused"]:
        _record_refusal(report_path, quant, {**entry, "file": None})
        before = f"; the {out.name} exported before stays" if out.is_file() else ""
        raise UserError(f"{line}; this {out.name} was not kept{before} (report: {report_path})."
                        " Export f16 or q8_0 instead, or pass --force to keep it anyway")
    if report.get("merged", {}).get("fingerprint") != checked["merged"]["fingerprint"]:
        report = {"merged": checked["merged"], "quants": {}}  # merged/ changed: start afresh
    report.update(questions=asked, max_new_tokens=max_new_tokens, converter=(
        f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python {LLAMA_CPP_VERSION}"))
    report.setdefault("quants", {})[quant] = entry
    report.get("refused", {}).pop(quant, None)
    report["default"] = out.name

    # The Modelfile for the file just made
    meta = _read_report(run_dir / "meta.json")
    penalty = (meta.get("config") or {}).get("rag", {}).get("repetition_penalty", 1.0)
    from builder.answering.engines.llamacpp import N_CTX

    write_atomic(gguf_dir / "Modelfile", modelfile(
        template, out.name, repetition_penalty=penalty, num_ctx=N_CTX,
        end_tokens=checked["end_tokens"]))
    _write_json(report_path, report)
    log(line if result["verdict"] != "broken" else f"warning: {line}; kept because of --force")
    return out


def _record_refusal(report_path: Path, quant: str, entry: dict) -> None:
    """report.json as it was (what is kept, the default) with this refused quant noted."""
    report = _read_report(report_path)
    report.setdefault("refused", {})[quant] = entry
    _write_json(report_path, report)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
