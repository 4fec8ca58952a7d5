"""Guards builder/evaluation/evaluate.py: Korean metrics, the answer loss, the eval/ folder, tuned beats base."""

import csv
import json
import shutil
import time
import unicodedata
from pathlib import Path

import pytest

from builder.config import load_config
from builder.errors import UserError
from builder.evaluation.evaluate import evaluate
from builder.evaluation.metrics import (bleu, chrf, corpus_bleu, corpus_chrf, exact_match, morphemes,
                                        normalize, rouge_l)
from builder.evaluation.report import format_summary
from fixtures import make_prepared, make_tiny_gemma, sample_rows, write_run

ROOT = Path(__file__).parents[1]
ANSWER = "배송은 주문 후 보통 2일 걸립니다."
PARAPHRASE = "배송이 주문 후 보통 2일 걸려요."  # other 조사 (은 -> 이) and 어미 (ㅂ니다 -> 어요)
UNRELATED = "영업시간은 오전 10시부터입니다."


# ---------------------------------------------------------------------------------------------
# Metrics on Korean pairs


def test_identical_answers_score_perfectly():
    assert chrf(ANSWER, ANSWER) == pytest.approx(100)
    assert rouge_l(ANSWER, ANSWER) == pytest.approx(1)
    assert bleu(ANSWER, ANSWER) == pytest.approx(100)
    assert exact_match(ANSWER, ANSWER) == 1
    assert bleu("네.", "네.") == pytest.approx(100)  # shorter than a 4-gram: still perfect
    assert corpus_chrf([ANSWER, UNRELATED], [ANSWER, UNRELATED]) == pytest.approx(100)
    assert corpus_bleu([ANSWER, UNRELATED], [ANSWER, UNRELATED]) == pytest.approx(100)


def test_unrelated_answers_score_near_zero():
    assert chrf("배송은 2일 걸립니다.", UNRELATED) < 20
    assert chrf(ANSWER, UNRELATED) < 20
    assert rouge_l(ANSWER, UNRELATED) < 0.3  # only 은 and ㅂ니다 shared
    assert bleu(ANSWER, UNRELATED) < 10
    assert exact_match(ANSWER, UNRELATED) == 0


def test_a_paraphrase_with_other_particles_scores_in_between():
    scores = {
        "chrf": (chrf(PARAPHRASE, ANSWER), chrf(UNRELATED, ANSWER), 100),
        "rouge_l": (rouge_l(PARAPHRASE, ANSWER), rouge_l(UNRELATED, ANSWER), 1),
        "bleu": (bleu(PARAPHRASE, ANSWER), bleu(UNRELATED, ANSWER), 100),
    }
    for name, (paraphrase, unrelated, perfect) in scores.items():
        assert unrelated < paraphrase < perfect, (name, scores[name])
    assert rouge_l(PARAPHRASE, ANSWER) > 0.6  # content morphemes all match
    assert exact_match(PARAPHRASE, ANSWER) == 0


def test_morphemes_split_particles_and_endings_and_drop_punctuation():
    assert morphemes("배송은 2일 걸립니다.")[:4] == ["배송", "은", "2", "일"]
    assert "." not in morphemes(ANSWER)
    assert morphemes("") == morphemes("   ") == []


def test_exact_match_normalises_unicode_whitespace_and_trailing_punctuation():
    nfd = unicodedata.normalize("NFD", ANSWER)
    assert nfd != ANSWER and exact_match(nfd, ANSWER) == 1
    assert exact_match("배송은  주문 후\n보통 2일 걸립니다 . ", ANSWER) == 1
    assert exact_match("배송은 주문 후 보통 2일 걸립니다!!", ANSWER) == 1
    assert exact_match("배송은 주문 후 보통 3일 걸립니다.", ANSWER) == 0
    assert normalize(" 가격은 3,000원입니다... ") == "가격은 3,000원입니다"
    assert chrf(nfd, ANSWER) == pytest.approx(100)  # NFD jamo would otherwise be other characters
    assert rouge_l(nfd, ANSWER) == pytest.approx(1)


def test_an_empty_answer_scores_zero():
    for metric in (chrf, rouge_l, bleu, exact_match):
        assert metric("", ANSWER) == 0, metric.__name__
    assert corpus_chrf(["", ""], [ANSWER, UNRELATED]) == 0
    assert corpus_bleu(["", ""], [ANSWER, UNRELATED]) == 0


# ---------------------------------------------------------------------------------------------
# The loss of the reference answer on a tiny random gemma3


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_gemma(tmp_path_factory.mktemp("eval-tiny-gemma"))


def test_answer_loss_is_the_masked_cross_entropy_of_answer_and_eos(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.evaluation.evaluate import answer_loss
    from builder.prompts import load_template

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = load_template("korean")
    for row in [sample_rows(1)[0], {"instruction": "환불 되나요?", "input": "구매 후 7일 이내",
                                    "output": "네, 7일 이내 환불됩니다."}]:
        nll, n_tokens = answer_loss(model, tokenizer, template, row)

        # by hand: full logits, labels -100 on the prompt, shifted by one
        prompt = tokenizer(template.render(row["instruction"], row["input"]))["input_ids"]
        answer = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        with torch.no_grad():
            logits = model(ids).logits
        expected = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
        assert n_tokens == len(answer)
        assert nll / n_tokens == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# The stage on a tiny random model: eval/ is written, re-runs replace it, errors say what to run


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    """A run folder as `builder train` leaves it: meta.json, template.yaml, a random adapter/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from builder.training.sft import file_sha256

    tmp = tmp_path_factory.mktemp("eval-tiny-run")
    prepared = make_prepared(tmp, 30)
    from builder.answering.indexing import entries_from_prepared
    from builder.answering.knowledge import Knowledge

    cfg = load_config(None, [f"model.name={tiny_model}", "train.min_val_rows=4"])
    run = write_run(tmp / "run", "korean", knowledge=Knowledge.build(
        entries_from_prepared(prepared)), meta={
        "base_model": str(tiny_model), "base_model_path": str(tiny_model), "backend": "hf",
        "template": "korean", "data_dir": str(prepared), "seed": 123, "end_token_ids": [1, 106],
        "data_sha256": file_sha256(prepared / "train.csv", prepared / "test.csv"),
        "config": cfg.to_dict()})
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora).save_pretrained(run / "adapter")
    return run


def test_evaluate_writes_the_eval_folder(tiny_run):
    lines = []
    report = evaluate(tiny_run, train_sample=4, max_new_tokens=6, log=lines.append)
    eval_dir = tiny_run / "eval"
    assert sorted(p.name for p in eval_dir.iterdir()) == ["answers.csv", "chart.png", "report.json", "report.md"]
    assert json.loads((eval_dir / "report.json").read_text(encoding="utf-8")) == report
    assert report["rows"] == {"test": 3, "train_sample": 4, "questions": 0}
    assert report["tuned_weights"] == "adapter" and report["data_matches_run"] is True
    assert report["grounded"] and set(report["systems"]) == {"base", "tuned", "retrieval"}
    for split in ("test", "train_sample"):
        figures = report["splits"][split]
        assert set(figures) == {"base", "tuned", "retrieval"}
        assert figures["base"]["ppl"] > 1000  # a random model knows nothing
        assert figures["retrieval"]["exact_match"] == 1.0  # its own FAQ question: the entry itself
        # asked word for word, every system shows the entry's own answer; the model's own
        # answers to the same questions (no lookup) are scored beside them
        n = report["rows"][split]
        assert [figures[s]["exact"] for s in ("base", "tuned", "retrieval")] == [n, n, n]
        assert "model_fact_accuracy" in figures["tuned"]
        assert 0 <= figures["tuned"]["model_guard_fallbacks"] <= n
    assert set(report["summary"]["chrf"]) == {"base", "tuned", "retrieval"}
    assert report["retrieval"]["test_split"]["hit@1"] == 1.0
    with (eval_dir / "answers.csv").open(encoding="utf-8-sig", newline="") as f:
        answers = list(csv.DictReader(f))
    assert [a["split"] for a in answers] == ["test"] * 3 + ["train_sample"] * 4
    assert {"base_answer", "tuned_answer", "retrieval_answer", "tuned_flags",
            "retrieval_sources"} <= set(answers[0])
    # the sample comes from rows the run trained on, never from the test split
    test_questions = {a["question"] for a in answers[:3]}
    assert not test_questions & {a["question"] for a in answers[3:]}
    assert "retrieval only" in (eval_dir / "report.md").read_text(encoding="utf-8")
    assert (eval_dir / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert lines[-1].startswith(f"wrote {eval_dir}")
    assert "trained questions: facts right" in format_summary(report)
    assert "facts right when generated (no word-for-word lookup" in format_summary(report)
    assert answers[0]["tuned_flags"].split()[0] == "exact" and "tuned_model_answer" in answers[0]
    assert not (tiny_run / "eval.running").exists()


def test_a_question_file_scores_declines_paraphrases_and_caches_base_answers(tiny_run, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    faq = sample_rows(30)
    questions = tmp_path / "questions.csv"
    questions.write_text(
        "question,expected,kind,line\n"
        f"{faq[0]['instruction']},\"3,000원\",paraphrase,2\n"
        "파이썬으로 리스트 정렬하는 코드 짜줘,,off_topic,\n"
        "대한민국 수도가 어디야?,,off_topic,\n", encoding="utf-8")
    lines = []
    report = evaluate(tiny_run, train_sample=0, max_new_tokens=4, limit=1, questions=questions,
                      log=lines.append)
    q = report["questions"]
    assert q["retrieval"]["paraphrase_facts"] == 1.0 and q["retrieval"]["off_topic_declined"] == 1.0
    assert q["tuned"]["off_topic_declined"] == 1.0  # the gate declines before generating
    assert q["tuned"]["invented_in_declines"] == 0 and q["tuned"]["counts"]["off_topic"] == 2
    assert report["retrieval"]["paraphrases"]["hit@1"] == 1.0
    assert not any("from the cache" in line for line in lines)
    again = []
    evaluate(tiny_run, train_sample=0, max_new_tokens=4, limit=1, questions=questions,
             log=again.append)
    assert any("from the cache" in line for line in again)  # same base, template, questions


def test_the_judge_grades_every_systems_answers_in_the_report_and_answers_csv(tiny_run, tmp_path,
                                                                              monkeypatch):
    from fixtures import ScriptedJudge

    from builder.evaluation.judge import JudgeSpec
    from builder.evaluation.report import figure_rows

    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    questions = tmp_path / "questions.csv"
    questions.write_text(
        "question,expected,kind,line,earlier\n"
        "제주도는요?,\"3,000원\",follow_up,2;7,배송비는 얼마인가요?\n"
        "대한민국 수도가 어디야?,,off_topic,,\n", encoding="utf-8")
    judge = ScriptedJudge()
    try:
        report = evaluate(tiny_run, train_sample=0, max_new_tokens=4, limit=1,
                          questions=questions, log=lambda *_: None,
                          judge=JudgeSpec(judge.url, "judge-model", "NO_SUCH_KEY_VAR"))
    finally:
        judge.close()
    assert report["questions"]["retrieval"]["counts"]["follow_up"] == 1
    # the follow-up was asked after its earlier question: the retrieval baseline answers it
    assert report["questions"]["retrieval"]["follow_up_facts"] == 1.0
    systems = report["judge"]["systems"]
    assert set(systems) == {"base", "tuned", "retrieval"} and "grades" not in report["judge"]
    assert all(v["judged"] == 3 and v["unjudged"] == 0 for v in systems.values())  # 1 test + 2
    assert sum(report["judge"]["pairwise"].values()) == 3 and report["judge"]["model"] == "judge-model"
    with (tiny_run / "eval" / "answers.csv").open(encoding="utf-8-sig") as f:
        answers = list(csv.DictReader(f))
    assert answers[1]["retrieval_judge_faithful"] == "True" and answers[1]["context"] == (
        "배송비는 얼마인가요?")
    labels = [label for label, _, _ in figure_rows(report)]
    assert "judge agrees with the fact checks" in labels and "follow-ups: facts right" in labels
    assert judge.url not in (tiny_run / "eval" / "report.md").read_text(encoding="utf-8")


def test_a_bad_question_file_names_the_line(tmp_path):
    from builder.evaluation.scores import read_questions

    bad = tmp_path / "q.csv"
    bad.write_text("question,expected,kind\n배송비?,,paraphrase\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2: a paraphrase question needs an expected fact"):
        read_questions(bad)
    bad.write_text("질문,답\n배송비?,3000원\n", encoding="utf-8")
    with pytest.raises(UserError, match="question and expected"):
        read_questions(bad)


def test_evaluate_again_replaces_eval_and_honours_limit(tiny_run):
    (tiny_run / "eval").mkdir(exist_ok=True)
    (tiny_run / "eval" / "stale.txt").write_text("old")
    report = evaluate(tiny_run, train_sample=0, max_new_tokens=4, limit=2, log=lambda *_: None)
    assert report["rows"] == {"test": 2, "train_sample": 0, "questions": 0}
    assert "train_sample" not in report["splits"] and report["summary"]
    assert not (tiny_run / "eval" / "stale.txt").exists()
    assert not [p for p in tiny_run.iterdir() if p.name.startswith(".eval")]  # no staging left
    assert "trained questions" not in format_summary(report)


def test_eval_removes_the_staging_folders_a_killed_eval_left(tiny_run):
    """evaluate removes the .eval-* folders a killed eval left, not one a running eval writes."""
    from fixtures import left_staging

    stale, live = left_staging(tiny_run, ".eval-")
    evaluate(tiny_run, train_sample=0, max_new_tokens=2, limit=1, log=lambda *_: None)
    assert not any(p.exists() for p in stale) and live.is_dir()
    shutil.rmtree(live)


def test_evaluate_errors_name_the_missing_piece_and_the_command(tiny_run, tmp_path):
    with pytest.raises(UserError, match="no meta.json.*builder train"):
        evaluate(tmp_path)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_run, bare, ignore=shutil.ignore_patterns("adapter", "eval"))
    with pytest.raises(UserError, match="neither adapter/ nor merged/.*builder train"):
        evaluate(bare)
    with pytest.raises(UserError, match="no prepared data folder.*--data"):
        evaluate(tiny_run, data_dir=tmp_path / "nowhere")


def test_the_tuned_model_is_released_before_the_base_model_loads(tiny_run, monkeypatch):
    import weakref

    import builder.answering.chatbot
    import builder.evaluation.evaluate

    real_load, real_base_bot = (builder.answering.chatbot.load_chatbot,
                                builder.evaluation.evaluate._base_bot)
    tuned_models, tuned_alive = [], []

    def load(*args, **kwargs):
        bot = real_load(*args, **kwargs)
        tuned_models.append(weakref.ref(bot.engine.model))
        return bot

    def base_bot(*args, **kwargs):
        tuned_alive.append(tuned_models[0]() is not None)
        return real_base_bot(*args, **kwargs)

    monkeypatch.setattr(builder.answering.chatbot, "load_chatbot", load)
    monkeypatch.setattr(builder.evaluation.evaluate, "_base_bot", base_bot)
    report = evaluate(tiny_run, train_sample=1, max_new_tokens=2, limit=1, log=lambda *_: None)
    assert tuned_alive == [False]  # one model in memory at a time
    assert report["rows"] == {"test": 1, "train_sample": 1, "questions": 0}


def test_the_base_model_loads_in_fp16_on_a_gpu_without_bf16(tiny_model, tmp_path, monkeypatch):
    import torch
    import transformers

    from builder.evaluation.evaluate import _base_bot
    from builder.run import Run

    class Loading(Exception):
        pass

    def from_pretrained(path, dtype=None, **kwargs):
        raise Loading(dtype)

    run = Run(tmp_path / "run")
    run.write_meta({"base_model_path": str(tiny_model)})
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    for supported, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        with pytest.raises(Loading) as loading:
            _base_bot(run, None, None, None, None, {1}, torch.device("cuda"))
        assert loading.value.args[0] == expected


def test_eval_asks_an_engine_url_through_the_same_grounding(tiny_run, tmp_path):
    """`builder eval --engine URL`: the completion server answers as the tuned bot, from the
    prompts every door gives it; the base model and the baseline answer beside it."""
    from fixtures import ScriptedEngine

    from builder.doors.cli import main

    run = tmp_path / "remote"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    engine = ScriptedEngine()
    engine.pieces = ["택배는 ", "1~2일 걸려요."]
    try:
        assert main(["eval", str(run), "--engine", engine.url, "--train-sample", "2",
                     "--limit", "2", "--max-new-tokens", "8"]) == 0
    finally:
        engine.close()
    report = json.loads((run / "eval" / "report.json").read_text(encoding="utf-8"))
    assert report["tuned_weights"] == "remote engine (scripted-gemma)"
    assert set(report["systems"]) == {"base", "tuned", "retrieval"}
    assert "loss" not in report["splits"]["test"]["tuned"]  # no model here to score it with
    assert "loss" in report["splits"]["test"]["base"]
    # the split questions asked without the word-for-word lookup went to the engine
    with (run / "eval" / "answers.csv").open(encoding="utf-8-sig", newline="") as f:
        answers = list(csv.DictReader(f))
    assert len(engine.requests) == 4 and {r["model"] for r in engine.requests} == {"scripted-gemma"}
    for answer in answers[:4]:
        assert any(f"### 질문:\n{answer['question']}\n" in r["prompt"] for r in engine.requests)


@pytest.mark.parametrize("flags, message", [
    (["--train-sample", "-1"], "--train-sample -1"),
    (["--limit", "-1"], "--limit -1"),
    (["--limit", "0"], "--limit 0"),
])
def test_cli_eval_refuses_negative_counts(tiny_run, capsys, flags, message):
    from builder.doors.cli import main

    assert main(["eval", str(tiny_run), *flags]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The embedded gemma-3-270m trained on the sample FAQ: slow


@pytest.fixture(scope="module")
def trained_run(embedded_run, tmp_path_factory):
    """The session's embedded run (24 sample FAQ rows, 8 steps x 4 grounded rows, merged), in a
    folder of its own for the eval/ it gets: merged/ linked file by file, the rest copied."""
    run = tmp_path_factory.mktemp("eval-embedded") / "run"
    shutil.copytree(embedded_run, run, ignore=shutil.ignore_patterns("merged", "checkpoints"))
    (run / "merged").mkdir()
    for path in (embedded_run / "merged").iterdir():
        (run / "merged" / path.name).symlink_to(path)
    return run


@pytest.mark.slow
def test_the_tuned_model_beats_the_base_model(trained_run):
    started = time.perf_counter()
    report = evaluate(trained_run, limit=8, train_sample=0, max_new_tokens=64)
    print(f"eval: {time.perf_counter() - started:.0f} s\n{format_summary(report)}")
    summary = report["summary"]
    assert report["tuned_weights"] == "merged"
    # test questions are FAQ questions word for word: every system shows the entry's answer
    assert summary["chrf"]["tuned"] == summary["chrf"]["base"] == 100.0, summary["chrf"]
    assert report["splits"]["test"]["tuned"]["exact"] == report["rows"]["test"]
    # the model itself: the base model already copies from the retrieved entries (loss ~0.2),
    # the tuned one must do it far more surely
    assert summary["loss"]["tuned"] < summary["loss"]["base"] / 2, summary["loss"]


def test_cached_base_answers_are_keyed_by_all_the_code_that_decides_them():
    """A change to any module the base model's answers go through makes the eval answer again."""
    from builder.evaluation.cache import ANSWERING_CODE, PACKAGE

    answering = {str(p.relative_to(PACKAGE)) for p in (PACKAGE / "answering").rglob("*.py")
                 if p.name != "__init__.py"}
    # not on the base model's path: other engines, and rewrites (the gate's figures are keyed)
    # (indexing.py: where entries come from; the knowledge's entries_sha256 keys them)
    # (shared.py: the served answers many customers share, not the eval's batches)
    # (loading.py and adapters.py: how the served engines are built; the base model's is
    # built by the eval itself)
    elsewhere = {"answering/engines/llamacpp.py", "answering/engines/llamacpp_batch.py",
                 "answering/engines/shared.py", "answering/engines/remote.py",
                 "answering/engines/loading.py", "answering/engines/adapters.py",
                 "answering/rewrite.py", "answering/indexing.py",
                 "answering/related.py"}  # (the buttons under an answer, not the answer)
    assert answering - elsewhere <= set(ANSWERING_CODE)
    assert all((PACKAGE / name).is_file() for name in ANSWERING_CODE)
