"""Guards the preference stage: judging answers into pairs, pair files, DPO/ORPO on a tiny model, the run folder, the Unsloth path."""

import csv
import json
import sys
import types
from pathlib import Path

import pytest

from builder.answering.chatbot import Chatbot, load_chatbot
from builder.doors.cli import main
from builder.config import DECLINE_MESSAGE, RagConfig, load_config
from builder.errors import UserError
from builder.training.prefer import prefer
from builder.training.pairs import build_pairs, judge, preference_figures, read_pairs
from builder.prompts import load_template
from fixtures import make_prepared, make_tiny_gemma, sample_knowledge, sample_rows

SHIPPING = sample_rows(1)[0]  # 배송비는 얼마인가요? -> 3,000원, 30,000원, 5,000원
OFF_TOPIC = "내일 부산 날씨 알려줘"


# ---------------------------------------------------------------------------------------------
# Judging answers: each rejection reason


def test_judge_names_each_reason():
    sources = [f"{SHIPPING['instruction']} {SHIPPING['output']}"]
    reference = SHIPPING["output"]

    def why(answer, reference=reference, retrieved=True):
        return judge(answer, reference=reference, sources=sources,
                     decline_message=DECLINE_MESSAGE, entry_retrieved=retrieved)

    assert why(reference) is None
    assert why("기본 배송비는 3,000원입니다.") == "missing_fact"
    assert why("기본 배송비는 4,000원이며 30,000원 이상 무료, 제주 3,000원, 도서산간 "
               "5,000원입니다.") == "invented_number"
    assert why(DECLINE_MESSAGE) == "needless_decline"
    assert why(DECLINE_MESSAGE, retrieved=False) is None
    assert why("내일 부산은 맑고 25도입니다.", reference=None) == "answered_off_topic"
    assert why(DECLINE_MESSAGE, reference=None) is None


# ---------------------------------------------------------------------------------------------
# Building pairs with a scripted chatbot (no model): same retrieval and template as chat


class ScriptedEngine:
    """An engine without a model: it answers each prompt's question from a script
    ({question: [answers]}) and records every prompt it is given."""

    name = "scripted"
    encode = None
    context_length = None

    def __init__(self, script):
        self.script = {q: list(a) for q, a in script.items()}
        self.options, self.prompts = [], []

    def _answer(self, prompt: str) -> str:
        question = prompt.rsplit("### 질문:\n", 1)[1].split("\n\n###")[0]
        return self.script[question].pop(0)

    def stream(self, prompt, **options):
        self.options.append(options)
        self.prompts.append(prompt)
        yield self._answer(prompt)

    def batch(self, prompts, **options):
        self.options.append(options)
        self.prompts += prompts
        return [(self._answer(prompt), False, False) for prompt in prompts]


def scripted_bot(knowledge, script) -> Chatbot:
    """A grounded Chatbot whose engine answers from a script."""
    return Chatbot(ScriptedEngine(script), load_template("korean"), knowledge=knowledge,
                   rag=RagConfig())


@pytest.fixture(scope="module")
def knowledge():
    return sample_knowledge(30)  # the gate here: a shared content noun


def test_pairs_are_built_from_judged_samples(knowledge):
    rows = sample_rows(2)  # 배송비 (numbers), 오늘 출발 (오후 1시)
    cutoff = rows[1]
    script = {
        SHIPPING["instruction"]: [SHIPPING["output"],  # right: no pair
                                  "기본 배송비는 3,000원입니다.",  # misses facts
                                  "기본 배송비는 3,500원입니다.",  # invents a number
                                  "기본 배송비는 3,500원입니다."],  # the same again: one pair
        cutoff["instruction"]: [DECLINE_MESSAGE] * 4,  # declines though its entry is there
        "하루커피 배송비 알려줘 그리고 내일 날씨도": ["기본 배송비는 3,000원입니다."] * 4,
    }
    bot = scripted_bot(knowledge, script)
    cfg = load_config(None, ["prefer.samples=4"])
    off_topic = ["하루커피 배송비 알려줘 그리고 내일 날씨도", OFF_TOPIC]  # one passes the gate
    pairs, counts = build_pairs(bot, rows, off_topic, cfg, log=lambda *_: None)
    assert counts == {"good answers (no pair)": 1, "missing_fact": 1, "invented_number": 1,
                      "duplicate rejected answers": 7, "needless_decline": 1,
                      "answered_off_topic": 1, "gated (declined before generating, no pair)": 1}
    by_reason = {p["reason"]: p for p in pairs}
    assert by_reason["invented_number"]["rejected"] == "기본 배송비는 3,500원입니다."
    assert by_reason["invented_number"]["chosen"] == SHIPPING["output"]
    assert by_reason["answered_off_topic"]["chosen"] == DECLINE_MESSAGE
    # the prompt is the one the engine was given: the template with the FAQ entries that fit
    # the question (rag.prompt_entries "fitting"), not every retrieved one
    question = SHIPPING["instruction"]
    fitting = knowledge.fitting(question, knowledge.search(question, 3))
    expected = bot.template.render(question, "", bot.template.render_faq([h.entry for h in fitting]))
    assert by_reason["missing_fact"]["prompt"] == expected
    assert {p["prompt"] for p in pairs} <= set(bot.engine.prompts)
    assert all(o["temperature"] > 0 for o in bot.engine.options)  # sampled, not greedy


def test_pair_files_are_checked_with_their_line(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_text("prompt,chosen\n배송비?,3000원\n", encoding="utf-8")
    with pytest.raises(UserError, match="missing column.*rejected"):
        read_pairs(bad)
    bad.write_text("prompt,chosen,rejected\n배송비?,3000원,\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2: 'rejected' is missing or empty"):
        read_pairs(bad)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        read_pairs(jsonl)
    with pytest.raises(UserError, match="give a .csv or .jsonl"):
        (tmp_path / "pairs.txt").write_text("x")
        read_pairs(tmp_path / "pairs.txt")
    assert main(["prefer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


# ---------------------------------------------------------------------------------------------
# DPO and ORPO on a tiny SFT run


def tiny_sets(model_dir):
    # one FAQ entry per prompt: the pairs' sequences stay short (the tiny model's 262k-token
    # vocabulary makes every logit row costly)
    return [f"model.name={model_dir}", "train.batch_size=4", "train.grad_accum=1",
            "train.eval_steps=2", "train.min_val_rows=4", "train.warmup_steps=0",
            "train.max_steps=2", "rag.k=1"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from builder.training.sft import train

    tmp = tmp_path_factory.mktemp("prefer")
    model = make_tiny_gemma(tmp / "tiny")
    prepared = make_prepared(tmp, 20)
    return train(prepared, tmp / "sft", load_config(None, tiny_sets(model)), log=lambda *_: None)


def pairs_csv(path: Path) -> Path:
    """Question-style pairs (prompt = the question): the right answer vs an invented one."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        for row in sample_rows(6):
            writer.writerow({"prompt": row["instruction"], "chosen": row["output"],
                             "rejected": "네, 가능합니다. 9,900원이 추가로 들며 7일 걸립니다."})
    return path


def policy(run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from builder.training.models import load_tokenizer

    meta = json.loads((run / "meta.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=torch.float32)
    return PeftModel.from_pretrained(base, run / "adapter").eval(), load_tokenizer(run / "adapter")


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_tuning_prefers_the_chosen_answer(sft_run, tmp_path, method):
    out = prefer(sft_run, tmp_path / method, pairs_file=pairs_csv(tmp_path / "pairs.csv"),
                 method=method, overrides=["prefer.max_steps=6", "prefer.lr=5e-3",
                                           "prefer.batch_size=2", "prefer.grad_accum=1",
                                           "prefer.val_fraction=0"], log=lambda *_: None)
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert metrics["global_step"] == 6 and len(losses) == 6
    assert all(loss == loss and abs(loss) < 1e6 for loss in losses)  # finite
    assert any("rewards/margins" in h for h in metrics["log_history"])
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 6 and pairs[0]["prompt"].startswith("### FAQ:\n질문: ")
    # chosen log-prob up relative to rejected: the SFT model vs the tuned one, on the pairs
    model, tokenizer = policy(sft_run)
    before = preference_figures(model, tokenizer, pairs, 768)["logp_margin"]
    model, tokenizer = policy(out)
    after = preference_figures(model, tokenizer, pairs, 768)["logp_margin"]
    assert after > before + 1.0, (before, after)


def test_the_preference_run_folder_works_with_merge_and_chat(sft_run, tmp_path, capsys):
    from builder.training.merge import merge

    pairs = pairs_csv(tmp_path / "pairs.csv")
    out = tmp_path / "run2"
    assert main(["prefer", str(sft_run), "--out", str(out), "--pairs", str(pairs),
                 "--set", "prefer.max_steps=2", "--set", "prefer.val_fraction=0.34"]) == 0
    assert "pairs: from file 6" in capsys.readouterr().out
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "config.yaml", "meta.json", "metrics.json", "loss.png", "template.yaml",
                 "knowledge/index.json", "pairs.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "adapter" / "ref").exists()  # TRL's frozen reference copy is not saved
    meta = json.loads((out / "meta.json").read_text())
    parent = json.loads((sft_run / "meta.json").read_text())
    assert meta["parent_run"] == str(sft_run.resolve()) and meta["method"] == "dpo"
    for key in ("base_model_path", "template", "template_sha256", "end_token_ids", "data_dir",
                "data_sha256", "knowledge"):
        assert meta[key] == parent[key], key
    assert meta["config"]["prefer"]["max_steps"] == 2
    held = json.loads((out / "metrics.json").read_text())["held_out"]
    assert held["pairs"] == 2 and held["before"]["accuracy"] is not None
    # the edited pairs.jsonl is taken back as it is, into the same folder
    assert main(["prefer", str(sft_run), "--out", str(out), "--pairs", str(out / "pairs.jsonl"),
                 "--set", "prefer.max_steps=1"]) == 0
    assert len((out / "pairs.jsonl").read_text().splitlines()) == 6
    reply = load_chatbot(out).reply("배송비 얼마임?", max_new_tokens=8)
    assert isinstance(reply.text, str)
    merge(out, log=lambda *_: None)
    assert load_chatbot(out, use="merged").reply("배송비 얼마임?", max_new_tokens=4) is not None
    # the SFT run itself and a foreign folder are refused as --out
    with pytest.raises(UserError, match="the SFT run itself"):
        prefer(sft_run, sft_run, pairs_file=pairs)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a preference run folder"):
        prefer(sft_run, tmp_path / "mine", pairs_file=pairs)


# ---------------------------------------------------------------------------------------------
# The GPU path, with a stand-in unsloth module


def test_the_unsloth_path_follows_its_dpo_recipe(sft_run, tmp_path, monkeypatch):
    import builder.training.models
    from builder.training.prefer import load_policy_hf

    calls = []

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            calls.append(("from_pretrained", kwargs))
            meta = json.loads((sft_run / "meta.json").read_text())
            return load_policy_hf(meta, Path(kwargs["model_name"]), kwargs["dtype"])

        @staticmethod
        def for_training(model):
            calls.append(("for_training",))

    fake = types.ModuleType("unsloth")
    fake.FastLanguageModel = FastLanguageModel
    fake.PatchDPOTrainer = lambda: calls.append(("PatchDPOTrainer",))
    monkeypatch.setitem(sys.modules, "unsloth", fake)
    monkeypatch.setattr(builder.training.models, "pick_backend", lambda cfg: "unsloth")
    out = prefer(sft_run, tmp_path / "gpu", pairs_file=pairs_csv(tmp_path / "pairs.csv"),
                 overrides=["prefer.max_steps=1", "prefer.max_length=300"], log=lambda *_: None)
    assert [c[0] for c in calls] == ["PatchDPOTrainer", "from_pretrained", "for_training"]
    assert calls[1][1]["model_name"] == str(sft_run / "adapter")
    assert calls[1][1]["max_seq_length"] == 300 and calls[1][1]["load_in_4bit"] is False
    assert json.loads((out / "meta.json").read_text())["backend"] == "unsloth"
