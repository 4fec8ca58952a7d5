"""The export stage: a run's merged model as GGUF for llama.cpp, Ollama and LM Studio, verified.

    builder export runs/NAME --format gguf                  # f16  -> runs/NAME/gguf/
    builder export runs/NAME --format gguf --quant q8_0     # smaller; checked against f16's answers
    cd runs/NAME/gguf && ollama create NAME -f Modelfile     # then: ollama run NAME

RUN/gguf/ gets NAME-QUANT.gguf, an Ollama `Modelfile` (the run's prompt template as TEMPLATE,
its stop markers and end tokens as `stop`, temperature 0, the run's repetition penalty,
num_ctx) and report.json: for every quant exported, its greedy answers to questions of the
run's FAQ next to the merged model's (transformers), how many are identical, how similar, and
how many ran to the length limit. A quant that breaks the answers (they loop to the limit where
the merged model stops, or hardly resemble its answers) is refused and deleted, unless
`--force` keeps it with a warning: gemma-3-270m does not survive 4-bit (q4_k_m).

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
import os
import re
import shutil
import string
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from builder.errors import UserError

LLAMA_CPP_VERSION = "0.3.36"
SDIST_ENV = "BUILDER_LLAMA_CPP_SDIST"
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion", "gguf-py")
QUANTS = ("f16", "q8_0", "q4_k_m")
QUESTIONS = 5  # FAQ questions asked of both models
MAX_NEW_TOKENS = 96  # per verification answer: FAQ answers are 20-60 tokens
CLOSE = 0.8  # mean similarity (difflib ratio) under which a quant's answers count as broken


# ---------------------------------------------------------------------------------------------
# The converter: llama.cpp's own, from the llama-cpp-python sdist, fetched once


def converter_dir(log=print) -> Path:
    """$BUILDER_CACHE/llama.cpp-convert-VERSION with the converter, unpacked on first use."""
    from builder.embedded import cache_root

    target = cache_root() / f"llama.cpp-convert-{LLAMA_CPP_VERSION}"
    if all((target / part).exists() for part in CONVERTER_PARTS):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".llama-cpp-sdist-", dir=target.parent) as tmp:
        sdist = os.environ.get(SDIST_ENV) or _download_sdist(Path(tmp), log)
        if not Path(sdist).is_file():
            raise UserError(f"${SDIST_ENV}={sdist}: no such file; point it at "
                            f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz")
        staging = Path(tmp) / "converter"
        prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].split("/")[0] in CONVERTER_PARTS
                       and (m.isfile() or m.isdir())]
            if not members:
                raise UserError(f"{sdist}: no {prefix}convert_hf_to_gguf.py inside; use the "
                                f"llama-cpp-python {LLAMA_CPP_VERSION} sdist")
            for member in members:
                member.name = member.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log(f"llama.cpp converter unpacked to {target}")
    return target


def _download_sdist(folder: Path, log) -> str:
    log(f"downloading the llama-cpp-python {LLAMA_CPP_VERSION} sdist once, for llama.cpp's "
        "converter ...")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
               "--no-deps", "--dest", str(folder), f"llama-cpp-python=={LLAMA_CPP_VERSION}"]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"could not download llama-cpp-python {LLAMA_CPP_VERSION}'s sdist for "
                        f"the GGUF converter ({last}); download it where PyPI is reachable "
                        f"(pip download --no-binary :all: --no-deps llama-cpp-python=="
                        f"{LLAMA_CPP_VERSION}) and set ${SDIST_ENV} to the .tar.gz")
    return str(found[0])


# ---------------------------------------------------------------------------------------------
# The staging folder the converter reads


def needs_sentencepiece(tokenizer_json: dict) -> bool:
    """A SentencePiece-style BPE (byte fallback, spaces as '▁'; gemma, Llama-2, Mistral), whose
    converter path wants tokenizer.model; byte-level BPEs (Llama-3, Qwen) do not."""
    model = tokenizer_json.get("model") or {}
    normalizer = json.dumps(tokenizer_json.get("normalizer"), ensure_ascii=False)
    return model.get("type") == "BPE" and bool(model.get("byte_fallback")) and "▁" in normalizer


def sentencepiece_model(tokenizer_json: dict) -> tuple[bytes, dict]:
    """(tokenizer.model bytes, added_tokens.json) rebuilt from a tokenizer.json.

    Scores fall with the id (SentencePiece BPE merges the highest-scoring pair first, and these
    vocabularies are ordered by merge priority); special added tokens are CONTROL, other added
    tokens USER_DEFINED (and listed in added_tokens.json, which the converter reads for them),
    <0xNN> are BYTE. Spaces are '▁', nothing is prefixed or collapsed, as in tokenizer.json."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    vocab = tokenizer_json["model"]["vocab"]
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    piece_type = pb.ModelProto.SentencePiece
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, len(vocab), True
    for name, field in (("<unk>", "unk_id"), ("<bos>", "bos_id"), ("<eos>", "eos_id"),
                        ("<pad>", "pad_id"), ("<s>", "bos_id"), ("</s>", "eos_id")):
        if name in vocab:
            setattr(spec, field, vocab[name])
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix = "identity", False
    norm.remove_extra_whitespaces, norm.escape_whitespaces = False, True
    user_defined = {}
    byte = re.compile(r"^<0x[0-9A-F]{2}>$")
    for piece, token_id in sorted(vocab.items(), key=lambda item: item[1]):
        entry = model.pieces.add()
        entry.piece, entry.score = piece, 0.0
        info = added.get(token_id)
        if token_id == spec.unk_id:
            entry.type = piece_type.UNKNOWN
        elif info is not None and info.get("special"):
            entry.type = piece_type.CONTROL
        elif info is not None:
            entry.type = piece_type.USER_DEFINED
            user_defined[piece] = token_id
        elif byte.match(piece):
            entry.type = piece_type.BYTE
        else:
            entry.type, entry.score = piece_type.NORMAL, -float(token_id)
    return model.SerializeToString(), user_defined


def stage(merged_dir: Path, staging: Path, template) -> Path:
    """The folder the converter reads: weights and configs linked, tokenizer files copied,
    chat_template.jinja written, tokenizer.model rebuilt where needed."""
    from builder.merge import chat_template

    staging.mkdir(parents=True, exist_ok=True)
    for path in merged_dir.iterdir():
        if path.suffix == ".safetensors" or path.name in (
                "config.json", "generation_config.json", "model.safetensors.index.json"):
            (staging / path.name).symlink_to(path.resolve())
        elif path.name.startswith(("tokenizer", "special_tokens_map", "added_tokens")):
            shutil.copy(path, staging / path.name)
    (staging / "chat_template.jinja").write_text(chat_template(template), encoding="utf-8")
    tokenizer_file = staging / "tokenizer.json"
    if not (staging / "tokenizer.model").is_file() and tokenizer_file.is_file():
        tokenizer_json = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        if needs_sentencepiece(tokenizer_json):
            model, user_defined = sentencepiece_model(tokenizer_json)
            (staging / "tokenizer.model").write_bytes(model)
            (staging / "added_tokens.json").write_text(
                json.dumps(user_defined, ensure_ascii=False), encoding="utf-8")
    return staging


# ---------------------------------------------------------------------------------------------
# Converting and quantizing


def convert(staging: Path, out: Path, outtype: str, log=print) -> None:
    """llama.cpp's converter: staging folder -> out (.gguf) at outtype (f16, q8_0, ...)."""
    script = converter_dir(log) / "convert_hf_to_gguf.py"
    command = [sys.executable, str(script), str(staging), "--outfile", str(out),
               "--outtype", outtype]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise UserError(f"llama.cpp's converter failed on {staging.name} (exit "
                        f"{done.returncode}):\n{tail}")


def quantize(source: Path, out: Path, quant: str) -> None:
    """`llama_model_quantize` (llama.cpp's own k-quants): source GGUF -> out at quant."""
    from builder.llamacpp import import_llama

    llama_cpp = import_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0 or not out.is_file():
        raise UserError(f"llama.cpp could not quantize {source.name} to {quant} (code {code})")


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


def verification_prompts(bot, questions: list[str]) -> list[tuple[str, str]]:
    """(question, FAQ block) pairs, the block retrieved as Chatbot retrieves it ("" for a run
    without knowledge)."""
    if bot.knowledge is None:
        return [(q, "") for q in questions]
    return [(q, bot.template.render_faq(
        [h.entry for h in bot.prompt_hits(q, bot.knowledge.search(q, bot.rag.k))]))
            for q in questions]


def greedy(bot, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
    """Each prompt's greedy answer (before the fact guard) and whether it ran to the limit."""
    answers = []
    for question, faq in prompts:
        ids: list[int] = []
        begun = time.perf_counter()
        text = "".join(bot.generate_stream(question, faq=faq, max_new_tokens=max_new_tokens,
                                           temperature=0.0, generated_ids=ids))
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


def export(run_dir, quant: str = "f16", *, fmt: str = "gguf", questions: int = QUESTIONS,
           max_new_tokens: int = MAX_NEW_TOKENS, force: bool = False, log=print) -> Path:
    """Write RUN/gguf/NAME-QUANT.gguf, its Modelfile and report.json; returns the GGUF's path.
    A quant that breaks the answers raises UserError (the file is deleted) unless force."""
    from builder.chat import Chatbot, _read_template
    from builder.llamacpp import GgufChatbot, import_llama

    if fmt != "gguf":
        raise UserError(f"--format {fmt}: only gguf is supported")
    if quant not in QUANTS:
        raise UserError(f"--quant {quant}: choose one of {', '.join(QUANTS)}")
    run_dir = Path(run_dir)
    merged_dir = run_dir / "merged"
    if not (merged_dir / "config.json").is_file():
        raise UserError(f"{merged_dir}: no merged model; make it with `builder merge {run_dir}`")
    import_llama()  # fail before converting, not after
    template = _read_template(run_dir)
    if template.grounded and not (run_dir / "knowledge" / "index.json").is_file():
        raise UserError(f"{run_dir / 'knowledge'}: missing; this run answers from its FAQ. "
                        f"Build it with `builder index {run_dir} FAQ_FILE`")
    asked = verification_questions(run_dir, questions)
    gguf_dir = run_dir / "gguf"
    gguf_dir.mkdir(exist_ok=True)
    name = run_dir.resolve().name
    out = gguf_dir / f"{name}-{quant}.gguf"
    report_path = gguf_dir / "report.json"
    report = _read_report(report_path)

    # Convert (q4_k_m through a temporary f16)
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=gguf_dir) as tmp:
        staging = stage(merged_dir, Path(tmp) / "model", template)
        partial = Path(tmp) / out.name
        log(f"converting {merged_dir} to GGUF {quant} with llama.cpp's converter ...")
        if quant == "q4_k_m":
            convert(staging, Path(tmp) / "f16.gguf", "f16", log)
            quantize(Path(tmp) / "f16.gguf", partial, quant)
        else:
            convert(staging, partial, quant, log)
        partial.replace(out)
    converted_s = time.perf_counter() - begun

    # Verify: the merged model's greedy answers (cached while merged/ is unchanged), then the GGUF's
    log(f"verifying {out.name}: greedy answers to {questions} FAQ questions, merged model vs GGUF")
    bot = GgufChatbot.load(run_dir, gguf_file=out)
    prompts = verification_prompts(bot, asked)
    key = _fingerprint(merged_dir, prompts, max_new_tokens)
    if report.get("merged", {}).get("fingerprint") == key:
        reference = report["merged"]["answers"]
    else:
        reference = greedy(Chatbot.load(run_dir, use="merged"), prompts, max_new_tokens)
        report = {"merged": {"fingerprint": key, "answers": reference}, "quants": {}}
    answers = greedy(bot, prompts, max_new_tokens)
    end_tokens = [bot.llama.detokenize([i], special=True).decode("utf-8", errors="replace")
                  for i in sorted(bot.end_ids)]
    del bot
    result = compare(reference, answers)
    refused = result["verdict"] == "broken" and not force
    report["questions"] = [q for q, _ in prompts]
    report["max_new_tokens"] = max_new_tokens
    report["converter"] = ("llama.cpp convert_hf_to_gguf.py from llama-cpp-python "
                           f"{LLAMA_CPP_VERSION}")
    report.setdefault("quants", {})[quant] = {
        **result, "file": out.name, "bytes": out.stat().st_size,
        "convert_s": round(converted_s, 1), "refused": refused, "kept_by_force": force and
        result["verdict"] == "broken", "answers": answers}
    line = verdict_line(quant, result)
    if refused:
        out.unlink()
        report["quants"][quant]["file"] = None
        _write_json(report_path, report)
        raise UserError(f"{line}; {out.name} was not kept (report: {report_path}). Export f16 or "
                        f"q8_0 instead, or pass --force to keep it anyway")
    report["default"] = out.name

    # The Modelfile for the file just made
    meta = _read_report(run_dir / "meta.json")
    penalty = (meta.get("config") or {}).get("rag", {}).get("repetition_penalty", 1.0)
    from builder.llamacpp import N_CTX

    (gguf_dir / "Modelfile").write_text(
        modelfile(template, out.name, repetition_penalty=penalty, num_ctx=N_CTX,
                  end_tokens=end_tokens),
        encoding="utf-8")
    _write_json(report_path, report)
    log(line if result["verdict"] != "broken" else f"warning: {line}; kept because of --force")
    return out


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
