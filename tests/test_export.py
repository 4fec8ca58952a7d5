"""Guards builder/deploy/export.py and builder/answering/engines/llamacpp.py: the staging folder (tokenizer.model rebuilt,
chat template), the Ollama Modelfile, the verdict on a quant, the refusal of one that breaks the
answers, and (slow) the embedded model's GGUF answering as the merged model does, also behind
llama.cpp's own OpenAI-compatible server."""

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.deploy.export import compare, modelfile, ollama_template, verdict_line
from builder.deploy.gguf import needs_sentencepiece, sentencepiece_model, stage
from builder.prompts import load_template, parse_template
from fixtures import PLAIN_TEMPLATE, sample_rows

ROOT = Path(__file__).parents[1]


def answer(text, tokens=20, ran_to_limit=False):
    return {"text": text, "tokens": tokens, "seconds": 1.0, "ran_to_limit": ran_to_limit}


@pytest.fixture(scope="module")
def tiny_merged(tmp_path_factory):
    from fixtures import make_tiny_gemma

    return make_tiny_gemma(tmp_path_factory.mktemp("export") / "merged")


# The staging folder


def test_the_rebuilt_tokenizer_model_tokenizes_korean_as_tokenizer_json_does(tiny_merged):
    import sentencepiece
    from tokenizers import Tokenizer

    tokenizer_json = json.loads((tiny_merged / "tokenizer.json").read_text(encoding="utf-8"))
    assert needs_sentencepiece(tokenizer_json)
    model, user_defined = sentencepiece_model(tokenizer_json)
    spm = sentencepiece.SentencePieceProcessor(model_proto=model)
    hf = Tokenizer.from_file(str(tiny_merged / "tokenizer.json"))
    template = load_template("korean")
    texts = [t for row in sample_rows(40) for t in (row["instruction"], row["output"])]
    texts.append(template.render("배송비는 얼마인가요?", "", "무료배송  기준은\t3만 원"))
    for text in texts:
        assert spm.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
    # control tokens stay control, the byte fallback is there, added text tokens are listed
    assert spm.is_control(1) and spm.is_control(106) and spm.is_byte(spm.piece_to_id("<0xEB>"))
    assert user_defined.get("\n") == 107


def test_a_byte_level_tokenizer_gets_no_tokenizer_model():
    byte_level = {"model": {"type": "BPE", "byte_fallback": False, "vocab": {}},
                  "normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}}
    assert not needs_sentencepiece(byte_level)


def test_the_staging_folder_links_the_weights_and_leaves_merged_untouched(tiny_merged, tmp_path):
    from builder.training.merge import chat_template

    before = {p.name: p.stat().st_mtime_ns for p in tiny_merged.iterdir()}
    template = load_template("korean")
    staging = stage(tiny_merged, tmp_path / "staging", template)
    assert (staging / "model.safetensors").is_symlink() and (staging / "config.json").is_symlink()
    assert (staging / "tokenizer.model").stat().st_size > 1_000_000
    assert json.loads((staging / "added_tokens.json").read_text())["\n"] == 107
    assert (staging / "chat_template.jinja").read_text(encoding="utf-8") == chat_template(template)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_merged.iterdir()} == before
    assert not (tiny_merged / "tokenizer.model").exists()


# The Modelfile


def render_go(text: str, system: str, prompt: str) -> str:
    """Ollama's rendering of the TEMPLATEs ollama_template writes (if/else on .System)."""
    if text.startswith("{{ if .System }}"):
        full, plain = text[len("{{ if .System }}"):-len("{{ end }}")].split("{{ else }}")
        text = full if system else plain
    return (text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt)
            .replace("{{ .Response }}", ""))


def test_the_modelfile_renders_the_runs_template_and_stops_at_its_markers():
    template = load_template("korean")
    text = modelfile(template, "shop-f16.gguf", repetition_penalty=1.1, num_ctx=4096,
                     end_tokens=["<eos>", "<end_of_turn>"])
    lines = text.splitlines()
    assert "FROM ./shop-f16.gguf" in lines
    assert {"PARAMETER temperature 0", "PARAMETER repeat_penalty 1.1",
            "PARAMETER num_ctx 4096"} <= set(lines)
    stops = [json.loads(line.split(" ", 2)[2]) for line in lines
             if line.startswith("PARAMETER stop")]
    assert stops == [*template.stop_markers, "<eos>", "<end_of_turn>"]
    go = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert go == ollama_template(template)
    faq = "배송비는 얼마인가요?\n기본 배송비는 3,000원입니다."
    assert render_go(go, faq, "배송비 얼마예요?") == template.render("배송비 얼마예요?", "", faq)
    # builder serve --engine sends prompts it rendered: no system message, passed through
    rendered = template.render("배송비 얼마예요?", "", faq)
    assert render_go(go, "", rendered) == rendered


def test_a_template_without_faq_renders_the_prompt_and_braces_stay_literal():
    plain = parse_template(PLAIN_TEMPLATE.replace("### 답변:", "### 답변 {{{{x}}}}:"), "plain.yaml")
    go = ollama_template(plain)  # the prompt says "{{x}}": Go must print it, not run it
    assert plain.render("질문", "").endswith("### 답변 {{x}}:\n")
    assert "{{ .System }}" not in go and '### 답변 {{ "{{" }}x}}:' in go
    with pytest.raises(UserError, match='three double quotes'):
        modelfile(parse_template(PLAIN_TEMPLATE.replace("### 답변:", '"""'), "q.yaml"),
                  "x.gguf", repetition_penalty=1.0, num_ctx=2048)


# The verdict on a quant


def test_identical_close_and_broken_answers_get_their_verdicts():
    merged = [answer("기본 배송비는 3,000원입니다."), answer("네, 가능합니다.")]
    assert compare(merged, merged)["verdict"] == "identical"
    close = compare(merged, [answer("기본 배송비는 3,000원 입니다."), answer("네, 가능합니다.")])
    assert close["verdict"] == "close" and close["identical"] == 1
    assert verdict_line("q8_0", close).startswith("warning: q8_0 answers differ slightly")
    looped = compare(merged, [merged[0], answer("네 네 네 네", 96, ran_to_limit=True)])
    assert looped["verdict"] == "broken" and looped["looped_where_merged_stopped"] == 1
    unlike = compare(merged, [answer("모르겠어요"), answer("주문 번호를 알려주세요")])
    assert unlike["verdict"] == "broken" and unlike["mean_similarity"] < 0.8
    assert "q4_k_m breaks the answers: 0/2 answers identical" in verdict_line("q4_k_m", unlike)


def test_a_converted_gguf_is_checked_before_it_gets_its_name(tmp_path):
    """A converted GGUF is verified under its temporary name and renamed only when accepted: a
    refused or failed check leaves the file kept before under that name as it was."""
    from builder.deploy.export import keep_if_verified

    out = tmp_path / "gguf" / "shop-f16.gguf"
    candidate = tmp_path / "gguf" / ".staging-1-x" / out.name
    candidate.parent.mkdir(parents=True)
    out.write_bytes(b"GGUF kept")
    checked = []

    def verify(verdict):
        def check(path):
            checked.append((path, path.read_bytes(), out.read_bytes()))
            if verdict == "fails":
                raise UserError("llama.cpp could not load it")
            return {"refused": verdict == "refused"}
        return check

    candidate.write_bytes(b"GGUF new")
    assert keep_if_verified(candidate, out, verify("refused"))["refused"]
    assert out.read_bytes() == b"GGUF kept" and not candidate.exists()
    candidate.write_bytes(b"GGUF new")
    with pytest.raises(UserError, match="could not load"):
        keep_if_verified(candidate, out, verify("fails"))
    assert out.read_bytes() == b"GGUF kept" and not candidate.exists()
    candidate.write_bytes(b"GGUF new")
    assert not keep_if_verified(candidate, out, verify("accepted"))["refused"]
    assert out.read_bytes() == b"GGUF new" and not candidate.exists()
    # every check read the new file while the kept name still held the old one
    assert checked == [(candidate, b"GGUF new", b"GGUF kept")] * 3


def test_the_questions_checked_are_the_faqs_else_the_training_splits(tmp_path):
    from builder.deploy.export import verification_questions
    from fixtures import make_prepared

    run = tmp_path / "plain"
    run.mkdir()
    with pytest.raises(UserError, match="no FAQ questions to check the GGUF with"):
        verification_questions(run)
    data = make_prepared(tmp_path, 20)
    (run / "meta.json").write_text(json.dumps({"data_dir": str(data)}), encoding="utf-8")
    with open(data / "train.csv", encoding="utf-8", newline="") as f:
        first = [row["instruction"] for row in csv.DictReader(f)][:3]
    assert verification_questions(run, 3) == first


# Export on a tiny random model (needs llama-cpp-python): the real converter, scripted answers


def make_grounded_run(run: Path, merged_source: Path, *, link=False) -> Path:
    from builder.config import Config
    from fixtures import sample_knowledge, write_run

    write_run(run, "korean", knowledge=sample_knowledge(30), meta={
        "base_model": "tiny-gemma3", "end_token_ids": [1, 106], "config": Config().to_dict()})
    if link:
        (run / "merged").mkdir()
        for path in merged_source.iterdir():
            if path.is_file() and path.name != "generation_config.json":
                (run / "merged" / path.name).symlink_to(path)
        generation = json.loads((merged_source / "generation_config.json").read_text())
        (run / "merged" / "generation_config.json").write_text(
            json.dumps({**generation, "eos_token_id": [1, 106]}))
    else:
        shutil.copytree(merged_source, run / "merged")
    return run


@pytest.fixture(scope="module")
def tiny_run(tiny_merged, tmp_path_factory):
    pytest.importorskip("llama_cpp")
    return make_grounded_run(tmp_path_factory.mktemp("tiny-run") / "shop", tiny_merged)


def scripted(monkeypatch, gguf_answers=None):
    """greedy(): the merged model's answers are fixed, the GGUF's are gguf_answers (None: the
    same)."""
    import builder.deploy.export as export_module

    merged = [answer(f"답변 {i}번입니다.") for i in range(5)]

    def fake(bot, prompts, max_new_tokens=96):
        return gguf_answers if bot.engine.name == "gguf" and gguf_answers else merged

    monkeypatch.setattr(export_module, "greedy", fake)
    return merged


def test_export_writes_the_gguf_its_modelfile_and_report(tiny_run, monkeypatch):
    from fixtures import left_staging

    from builder.answering.chatbot import load_chatbot
    from builder.deploy.export import export

    scripted(monkeypatch)
    stale, live = left_staging(tiny_run / "gguf", ".staging-")  # a killed export's, a running one's
    out = export(tiny_run, "f16", log=lambda *_: None)
    assert not any(p.exists() for p in stale) and live.is_dir()
    shutil.rmtree(live)
    assert out == tiny_run / "gguf" / "shop-f16.gguf" and out.stat().st_size > 1_000_000
    report = json.loads((tiny_run / "gguf" / "report.json").read_text(encoding="utf-8"))
    assert report["default"] == "shop-f16.gguf"
    assert report["quants"]["f16"]["verdict"] == "identical"
    assert len(report["questions"]) == 5
    assert report["questions"][0] == sample_rows(1)[0]["instruction"]
    modelfile_text = (tiny_run / "gguf" / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./shop-f16.gguf" in modelfile_text
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile_text
    assert not list((tiny_run / "gguf").glob(".staging-*"))

    # llama.cpp reads it: the rebuilt vocabulary tokenizes the prompt as transformers does,
    # Hangul decodes as Hangul, and the chat template is embedded
    from transformers import AutoTokenizer

    engine = load_chatbot(tiny_run, "gguf").engine
    prompt = load_chatbot(tiny_run, "gguf").template.render("제주도 배송비는 얼마인가요? 뷁", "",
                                                             "쌰뜛 같은 드문 글자")
    hf = AutoTokenizer.from_pretrained(tiny_run / "merged")
    assert engine.encode(prompt) == hf(prompt, add_special_tokens=True)["input_ids"]
    assert engine.decode(engine.encode("뷁 쌰뜛")[1:]) == "뷁 쌰뜛"
    assert "### 질문" in engine.llama.metadata.get("tokenizer.chat_template", "")


def test_a_quant_that_breaks_the_answers_is_refused_and_deleted(tiny_run, monkeypatch):
    from builder.deploy.export import export

    looping = [answer("네 네 네 네 네", 96, ran_to_limit=True)] * 5
    scripted(monkeypatch, looping)
    with pytest.raises(UserError) as refused:
        export(tiny_run, "q8_0", log=lambda *_: None)
    assert "q8_0 breaks the answers: 0/5 answers identical" in str(refused.value)
    assert "--force" in str(refused.value)
    assert not (tiny_run / "gguf" / "shop-q8_0.gguf").exists()
    report = json.loads((tiny_run / "gguf" / "report.json").read_text(encoding="utf-8"))
    assert report["refused"]["q8_0"]["verdict"] == "broken" and "q8_0" not in report["quants"]
    assert report["default"] == "shop-f16.gguf"

    warnings = []
    out = export(tiny_run, "q8_0", force=True, log=warnings.append)
    assert out.is_file() and "kept because of --force" in warnings[-1]


def test_a_refused_re_export_leaves_the_kept_default_gguf(tiny_run, monkeypatch):
    """Exporting the default's quant again and having it refused keeps the file `default`
    names, its report entry and its Modelfile."""
    from builder.deploy.export import export
    from builder.run import Run

    gguf = tiny_run / "gguf"
    before = json.loads((gguf / "report.json").read_text(encoding="utf-8"))
    kept = gguf / before["default"]
    quant = kept.stem.rsplit("-", 1)[1]
    kept_bytes, modelfile_text = kept.read_bytes(), (gguf / "Modelfile").read_text()
    scripted(monkeypatch, [answer("네 네 네 네 네", 96, ran_to_limit=True)] * 5)
    with pytest.raises(UserError, match=f"{kept.name} exported before stays"):
        export(tiny_run, quant, log=lambda *_: None)
    assert kept.read_bytes() == kept_bytes and Run(tiny_run).gguf() == kept
    after = json.loads((gguf / "report.json").read_text(encoding="utf-8"))
    assert after["default"] == kept.name and after["quants"] == before["quants"]
    assert after["refused"][quant]["verdict"] == "broken"
    assert (gguf / "Modelfile").read_text() == modelfile_text
    assert not list(gguf.glob(".staging-*"))


def test_the_cli_exports_chats_through_gguf_and_names_what_is_missing(tiny_run, tmp_path, capsys):
    """(after the exports above, which leave tiny_run/gguf/)"""
    from builder.doors.cli import main

    assert main(["export", str(tmp_path)]) == 2
    assert f"{tmp_path / 'merged'}: no merged model" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(tiny_run, bare, ignore=shutil.ignore_patterns("gguf"))
    assert main(["ask", str(bare), "배송비는 얼마인가요?", "--use", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "no exported GGUF; make it with `builder export" in err and "Traceback" not in err
    # the exported one answers (an FAQ question asked word for word: the FAQ's answer)
    question, expected = sample_rows(1)[0]["instruction"], sample_rows(1)[0]["output"]
    assert main(["ask", str(tiny_run), question, "--use", "gguf", "--sources"]) == 0
    assert expected in capsys.readouterr().out
    # builder serve --use gguf loads the same bot; sampling (temperature > 0) runs too
    from builder.answering.chatbot import load_chatbot
    from builder.run import Run

    bot = load_chatbot(tiny_run, "gguf")
    assert bot.engine.name == "gguf" and bot.engine.path == Run(tiny_run).gguf()
    ids = []
    "".join(bot.engine.stream(bot.prompt(bot.ground("배송비는요?"), 8), max_new_tokens=8,
                              temperature=0.7, generated_ids=ids))
    assert 1 <= len(ids) <= 8


def test_kept_prompt_states_give_the_answers_of_reading_each_whole_prompt(tiny_run):
    """(after the exports above, which leave tiny_run/gguf/)"""
    from builder.answering.chatbot import load_chatbot, warm_entries

    # one answer at a time (tests/test_gguf_batching.py: batched), each generated (not shared)
    bot = load_chatbot(tiny_run, "gguf", parallel=1, settings=["rag.shared_answers=0"])
    prefixes = bot.engine.prefixes
    asked = [row["instruction"] + " 궁금해요" for row in sample_rows(4)]  # not word for word

    def answers():
        out = []
        for question in asked:
            ids = []
            bot.reply(question, max_new_tokens=8, generated_ids=ids)
            out.append(ids)
        return out

    prefixes.budget = 0  # nothing kept: every prompt read whole
    read_whole = answers()
    assert not prefixes.states and prefixes.restored == 0
    prefixes.budget = 2**30
    assert warm_entries(bot) == len(bot.knowledge.entries) == len(prefixes.states)
    assert answers() == read_whole
    assert prefixes.restored >= len(asked) - 1  # each started from its entry's state
    # the oldest states go first once the budget is spent
    warmed = len(prefixes.states)
    prefixes.budget = prefixes.size // 2
    bot.reply(asked[0] + "?", max_new_tokens=8)
    assert prefixes.size <= prefixes.budget and len(prefixes.states) < warmed
    assert prefixes.size == sum(map(len, prefixes.states.values()))
    llama = bot.engine.llama
    assert list(prefixes.states)[-1] == tuple(llama.input_ids[:llama.n_tokens])  # the reply's


def test_eval_asks_the_exported_gguf(tiny_run, tiny_merged, tmp_path):
    """(after the exports above) `builder eval --use gguf`: the GGUF answers as the tuned bot,
    through the same grounding; the base model and the baseline answer beside it."""
    from fixtures import make_prepared

    from builder.config import load_config
    from builder.doors.cli import main

    run = tmp_path / "shop"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    meta = json.loads((run / "meta.json").read_text())
    meta.update(base_model_path=str(tiny_merged), template="korean", seed=1,
                data_dir=str(make_prepared(tmp_path, 30)),
                config=load_config(None, ["train.min_val_rows=4"]).to_dict())
    (run / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    assert main(["eval", str(run), "--use", "gguf", "--train-sample", "2", "--limit", "2",
                 "--max-new-tokens", "6"]) == 0
    report = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
    default = json.loads((run / "gguf" / "report.json").read_text(encoding="utf-8"))["default"]
    assert report["tuned_weights"] == f"gguf ({default})"
    assert set(report["systems"]) == {"base", "tuned", "retrieval"}
    assert "loss" not in report["splits"]["test"]["tuned"] and "loss" in report["splits"]["test"]["base"]
    assert report["splits"]["test"]["tuned"]["exact"] == 2  # FAQ questions word for word
    assert "model_fact_accuracy" in report["splits"]["test"]["tuned"]  # the GGUF's own answers


def test_serve_warm_needs_the_gguf_engine(tiny_run):
    from builder.doors.api import serve

    with pytest.raises(UserError, match="--warm reads the FAQ into llama.cpp: add --use gguf"):
        serve(tiny_run, port=0, warm=True, use="merged")


# The embedded model (slow: minutes on 2 CPU cores)


@pytest.fixture(scope="module")
def embedded_base_run(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from builder.embedded import ensure_embedded_model

    return make_grounded_run(tmp_path_factory.mktemp("embedded") / "embedded",
                             ensure_embedded_model(), link=True)


@pytest.mark.slow
def test_the_embedded_models_f16_gguf_answers_as_the_merged_model(embedded_base_run):
    from builder.deploy.export import export

    # the base model runs every answer to the token limit: 48 tokens of each are compared
    out = export(embedded_base_run, "f16", questions=5, max_new_tokens=48)
    report = json.loads((out.parent / "report.json").read_text(encoding="utf-8"))
    f16 = report["quants"]["f16"]
    assert f16["questions"] == 5 and f16["identical"] == 5, report
    merged = [a["text"] for a in report["merged"]["answers"]]
    assert [a["text"] for a in f16["answers"]] == merged and all(merged)


@pytest.mark.slow
def test_builder_serve_in_front_of_llama_cpps_own_server_answers_with_sources(embedded_base_run):
    from test_serve import ask, free_port, serving

    from builder.answering.chatbot import load_chatbot

    gguf = embedded_base_run / "gguf" / "embedded-f16.gguf"
    if not gguf.is_file():  # run alone: export it here (the test above leaves it otherwise)
        from builder.deploy.export import export

        gguf = export(embedded_base_run, "f16", questions=1)
    port = free_port()
    log = (embedded_base_run / "llama-server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "4096", "--model_alias", "shop-gguf"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        import httpx

        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (embedded_base_run / "llama-server.log").read_text()
            try:
                httpx.get(f"{url}/models", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "llama.cpp's server did not start"
                time.sleep(0.5)
        bot = load_chatbot(embedded_base_run, engine=url)
        assert bot.engine.model == "shop-gguf"
        with serving(bot, "embedded") as front:
            reply = ask(front.client(), "배송비 얼마임?", model="embedded", max_tokens=64)
        message = reply.choices[0].message
        assert message.content and not message.declined
        with open(ROOT / "data" / "sample_faq.csv", encoding="utf-8", newline="") as f:
            faq = list(csv.DictReader(f))
        assert any(s["question"] == "배송비는 얼마인가요?" for s in message.sources), message
        assert all(faq[s["line"] - 2]["instruction"] == s["question"] for s in message.sources)
    finally:
        server.terminate()
        server.wait(timeout=30)
