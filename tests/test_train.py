"""Guards the training stage: loss mask, padding-free and answer-only loss, run folder, early stop, resume, merge."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from builder.doors.cli import main
from builder.config import load_config
from builder.errors import UserError
from builder.prompts import load_template
from builder.training.sft import make_trainer_class, train
from builder.training.rows import IGNORE, tokenize_row
from fixtures import make_prepared, make_tiny_gemma, sample_rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from builder.embedded import ensure_embedded_model

    return AutoTokenizer.from_pretrained(ensure_embedded_model())


def tiny_config(model_dir, **train):
    sets = [f"model.name={model_dir}", "train.batch_size=4", "train.grad_accum=1", "train.eval_steps=2",
            "train.min_val_rows=4", "train.logging_steps=1", "train.warmup_steps=0"]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


# ---------------------------------------------------------------------------------------------
# Loss mask


@pytest.mark.parametrize("template_name", ["korean", "alpaca"])
def test_only_answer_tokens_carry_labels(tokenizer, template_name):
    template = load_template(template_name)
    for row in sample_rows(30):
        example = tokenize_row(tokenizer, template, row, 512, tokenizer.eos_token_id)
        ids, mask = example["input_ids"], example["completion_mask"]
        prompt = template.render(row["instruction"], row["input"])
        n_prompt = len(tokenizer(prompt)["input_ids"])
        assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        answer = tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
        assert answer == row["output"]
        assert "### " not in answer


def test_long_rows_are_cut_keeping_answer_and_bos(tokenizer):
    template = load_template("korean")
    row = {"instruction": "질문 " * 300, "input": "", "output": "답변 " * 300}
    example = tokenize_row(tokenizer, template, row, 64, tokenizer.eos_token_id)
    assert len(example["input_ids"]) == 64
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert sum(example["completion_mask"]) == 32
    # the answer is cut, not its end token: a long answer still teaches the model to stop
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    answer = tokenizer.decode(example["input_ids"][-32:-1], skip_special_tokens=True)
    assert answer.startswith("답변") and tokenizer.eos_token_id not in example["input_ids"][:-1]


def test_cli_inspect_shows_masked_and_trained(tmp_path, capsys):
    prepared = make_prepared(tmp_path, 20)
    assert main(["inspect", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert "MASKED prompt tokens" in out and "TRAINED answer tokens" in out
    assert "<<<eos>>>" in out and "[<bos>]" in out


# ---------------------------------------------------------------------------------------------
# Loss computation on a tiny model of the same family


def batch_for(tokenizer, rows, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    template = load_template("korean")
    examples = []
    for row in rows:
        ex = tokenize_row(tokenizer, template, row, 512, tokenizer.eos_token_id)
        ex["labels"] = [i if m else IGNORE for i, m in zip(ex["input_ids"], ex["completion_mask"])]
        examples.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)
    return collator(examples)


def full_logits_loss(model, batch):
    # use_cache=False as in training: with a cache, transformers does not detect packed
    # sequences from position_ids and packed rows would attend to each other
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    out = model(**inputs, use_cache=False)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=IGNORE)


def test_padding_free_and_answer_only_loss_equal_the_padded_full_loss(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = sample_rows(5)
    padded, packed = batch_for(tokenizer, rows, False), batch_for(tokenizer, rows, True)
    assert packed["input_ids"].shape[0] == 1 and padded["input_ids"].shape[0] == 5
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # no pad tokens
    trainer = make_trainer_class(object, answer_only_logits=True)
    with torch.no_grad():
        reference = full_logits_loss(model, padded)
        packed_full = full_logits_loss(model, packed)
        answer_only = trainer.compute_loss(trainer(), model, dict(packed))
    # packed examples must not attend to each other: same loss as separate padded rows
    assert torch.allclose(packed_full, reference, atol=1e-5), (packed_full, reference)
    assert torch.allclose(answer_only, reference, atol=1e-5), (answer_only, reference)


def test_answer_only_loss_has_the_same_gradients(tiny_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    packed = batch_for(tokenizer, sample_rows(3), True)
    trainer = make_trainer_class(object, answer_only_logits=True)
    full_logits_loss(model, packed).backward()
    expected = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    trainer.compute_loss(trainer(), model, dict(packed)).backward()
    assert torch.allclose(model.model.layers[0].mlp.up_proj.weight.grad, expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The stage on a tiny model: fast


def test_train_writes_the_run_folder(tiny_model, tmp_path, monkeypatch):
    import builder.training.raft
    from builder.answering.knowledge import Knowledge

    made = []  # what builder.training.raft made for each split: train first, then validation

    real = builder.training.raft.grounded_rows

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(builder.training.raft, "grounded_rows", spy)
    prepared = make_prepared(tmp_path, 30)
    run = train(prepared, tmp_path / "run", tiny_config(tiny_model, max_steps=4), log=lambda *_: None)
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "loss.png",
                 "metrics.json", "config.yaml", "meta.json", "template.yaml",
                 "knowledge/index.json", "knowledge/entries.jsonl"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "meta.json").read_text())
    assert metrics["global_step"] == 4 and metrics["answer_tokens_trained"] > 0
    assert metrics["adapter_evaluated"] is True and metrics["best_eval_loss"] is not None
    # 30 rows: 3 test, 27 train of which max(4, round(27 * 0.2)) = 5 validation, 22 training;
    # raft makes one row per FAQ row plus max(1, round(n * rag.off_topic_share)) off-topic ones
    train_rows, val_rows = made[:2]
    kinds = meta["knowledge"]["row_kinds"]
    for split, rows, faq_rows in (("train", train_rows, 22), ("validation", val_rows, 5)):
        counted = {kind: sum(r["kind"] == kind for r in rows) for kind in {r["kind"] for r in rows}}
        assert kinds[split] == counted, split
        assert counted["answer"] + counted.get("near_miss", 0) == faq_rows, split
        assert counted["off_topic"] == max(1, round(faq_rows * 0.1)), split
        assert all(r["faq"].count("질문: ") == 3 for r in rows), split
    assert metrics["train_rows"] == len(train_rows) == 24
    assert metrics["val_rows"] == len(val_rows) == 6
    assert meta["rows"] == {"train": 24, "validation": 6, "test": 3}
    # the knowledge holds every kept row, train and test, and is recorded in meta.json
    knowledge = Knowledge.load(run / "knowledge")
    assert len(knowledge.entries) == 30 and meta["knowledge"]["entries"] == 30
    assert meta["knowledge"]["k"] == 3 and meta["knowledge"]["embedder"] == knowledge.settings["embedder"]
    assert meta["knowledge"]["gate"] == knowledge.settings["gate"]
    assert meta["knowledge"]["gate"]["dense_threshold"] is not None
    assert [h["step"] for h in metrics["log_history"] if "eval_loss" in h] == [2, 4]
    assert meta["backend"] == "hf" and meta["template"] == "korean" and len(meta["template_sha256"]) == 64
    assert meta["end_token_ids"][:2] == [1, 106] and "torch" in meta["versions"]
    assert load_config(run / "config.yaml").train.max_steps == 4
    # training the same folder again leaves nothing of the old run behind
    (run / "merged").mkdir()
    (run / "eval").mkdir()
    train(prepared, run, tiny_config(tiny_model, max_steps=2), log=lambda *_: None)
    assert not (run / "merged").exists() and not (run / "eval").exists()
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]


def test_the_adapter_is_saved_whole_or_not_at_all(tiny_model, tmp_path):
    """save_adapter writes adapter/ in a staging folder and renames it into place: a save that
    fails leaves the adapter saved before as it was; staging folders a killed save left go."""
    from fixtures import left_staging
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.run import adapter_problem
    from builder.training.sft import save_adapter

    run = tmp_path / "run"
    stale, live = left_staging(run, ".adapter-")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    adapter = save_adapter(model, AutoTokenizer.from_pretrained(tiny_model), run)
    assert adapter == run / "adapter" and adapter_problem(adapter) is None
    assert (adapter / "tokenizer.json").is_file()
    assert not any(p.exists() for p in stale) and live.is_dir()
    saved = {p.name: p.read_bytes() for p in adapter.iterdir()}

    class FullDisk:  # its save fails after the weights are written
        def save_pretrained(self, folder):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_adapter(model, FullDisk(), run)
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == saved
    assert sorted(p.name for p in run.iterdir()) == sorted(["adapter", live.name])


def test_train_refuses_a_bad_prepared_dir_and_a_foreign_out(tiny_model, tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "builder prepare" in capsys.readouterr().err
    prepared = make_prepared(tmp_path, 20)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a run folder"):
        train(prepared, tmp_path / "mine", tiny_config(tiny_model, max_steps=1))
    with pytest.raises(UserError, match="unknown model"):
        train(prepared, tmp_path / "r", load_config(None, ["model.name=no-such-model"]))
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["train", str(prepared), "--out", str(tmp_path / "notes.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_run_that_died_before_its_first_checkpoint_starts_over(tiny_model, tmp_path, capsys):
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("out of memory")

    prepared, run = make_prepared(tmp_path, 30), tmp_path / "run"
    cfg = tiny_config(tiny_model, max_steps=2)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(prepared, run, cfg, log=lambda *_: None, callbacks=[Crash()])
    assert (run / "config.yaml").is_file() and (run / "meta.json").is_file()
    assert not list(run.glob("checkpoints/checkpoint-*")) and not (run / "adapter").exists()

    assert main(["train", str(prepared), "--out", str(run), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    lines = []
    train(prepared, run, cfg, log=lines.append)
    assert any("before its first checkpoint: starting it over" in line for line in lines), lines
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2

    # a run with a checkpoint is worth resuming: starting it over needs --resume or a new folder
    (run / "adapter").rename(tmp_path / "adapter")
    with pytest.raises(UserError, match="--resume"):
        train(prepared, run, cfg, log=lambda *_: None)


def test_stop_before_the_first_evaluation_says_the_adapter_was_not_evaluated(tiny_model, tmp_path):
    from transformers import TrainerCallback

    run = tmp_path / "run"

    class PressStop(TrainerCallback):  # the app's stop button, before step 1 ends
        def on_train_begin(self, args, state, control, **kwargs):
            (run / "STOP").touch()

    lines = []
    train(make_prepared(tmp_path, 30), run, tiny_config(tiny_model, max_steps=4),
          log=lines.append, callbacks=[PressStop()])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["stopped_by_user"] is True
    assert metrics["adapter_evaluated"] is False
    assert metrics["best_eval_loss"] is None and metrics["best_step"] is None
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert "stopped before the first evaluation" in lines[-1], lines[-1]


def test_early_stopping_stops_a_run_that_stops_improving(tiny_model, tmp_path):
    prepared = make_prepared(tmp_path, 30)
    # lr 1e-30 (0 is refused): every update rounds away, the weights stay as they are
    cfg = tiny_config(tiny_model, max_steps=40, lr=1e-30, early_stopping_patience=2)
    run = train(prepared, tmp_path / "run", cfg, log=lambda *_: None)
    metrics = json.loads((run / "metrics.json").read_text())
    # eval loss never improves after the first eval -> stop after 1 + patience evals
    assert metrics["stopped_early"] is True
    assert metrics["global_step"] == 6 and metrics["best_step"] == 2


# ---------------------------------------------------------------------------------------------
# The real embedded model over a handful of rows (the session's `embedded_run`): slow


@pytest.mark.slow
def test_embedded_training_changes_lora_weights_and_lowers_val_loss(embedded_run):
    from safetensors.torch import load_file

    weights = load_file(embedded_run / "adapter" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert len(lora_b) == 18 * 7  # every targeted layer got an adapter
    assert all(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: non-zero means trained
    metrics = json.loads((embedded_run / "metrics.json").read_text())
    evals = [h["eval_loss"] for h in metrics["log_history"] if "eval_loss" in h]
    # validation rows are other FAQ entries answered from retrieved context: the skill the bot
    # needs, so the loss the plot shows must fall below its first value
    assert len(evals) == 4 and evals[-1] < evals[0], evals
    assert metrics["best_eval_loss"] == min(evals) < metrics["first_eval_loss"] == evals[0]


@pytest.mark.slow
def test_merged_logits_equal_base_plus_adapter(embedded_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from builder.training.merge import merge

    merged_dir = embedded_run / "merged"  # merged by the fixture
    assert merge(embedded_run, log=lambda *_: None) == merged_dir  # re-run: no-op
    gen = json.loads((merged_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 106]
    meta = json.loads((embedded_run / "meta.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer("### 질문:\n배송비는 얼마인가요?\n\n### 답변:\n", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=torch.float32)
    base_bf16 = AutoModelForCausalLM.from_pretrained(meta["base_model_path"],
                                                     dtype=torch.bfloat16).float().eval()
    with torch.no_grad():  # what 16-bit rounding costs the base model itself
        rounding = (base_bf16(ids).logits - base.eval()(ids).logits).abs().max()
    with_adapter = PeftModel.from_pretrained(base, embedded_run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = with_adapter(ids).logits
        got = merged(ids).logits
        exact = with_adapter.merge_and_unload()(ids).logits
    assert torch.allclose(exact, expected, atol=1e-3)  # the merge itself, in fp32
    # the saved 16-bit weights: off by no more than a few times what rounding costs the base
    # (logits reach ~30: bf16 keeps 8 bits, and 18 layers add up), and the same next tokens
    assert (got - expected).abs().max() < max(0.5, 4 * rounding), ((got - expected).abs().max(),
                                                                    rounding)
    # the same next token wherever the fp32 model is clear about it (top two logits further
    # apart than twice the largest error: no rounding can swap them); a near tie may flip
    same = got.argmax(-1) == expected.argmax(-1)
    top2 = expected.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * (got - expected).abs().max()
    assert same[clear].all() and same.float().mean() > 0.9, (same, clear)


@pytest.mark.slow
def test_resume_after_a_killed_run_finishes(tmp_path):
    prepared = make_prepared(tmp_path, 24)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "builder", "train", str(prepared), "--out", str(run),
               "--config", "configs/embedded-cpu.yaml", "--set", "train.max_steps=4",
               "--set", "train.eval_steps=2", "--set", "train.batch_size=1"]
    root = Path(__file__).parents[1]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before a checkpoint"
        time.sleep(0.5)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "adapter").exists()
    assert main(["train", str(prepared), "--out", str(run)]) == 2  # unfinished: asks for --resume
    assert main(["train", str(prepared), "--out", str(run), "--resume"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["resumed"] is True
    # the resumed run carried the history from before the kill
    assert [h["step"] for h in metrics["log_history"] if "eval_loss" in h] == [2, 4]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()



# The trained run answering from its knowledge


@pytest.mark.slow
def test_a_row_added_with_index_is_answered_without_retraining(embedded_run, tmp_path):
    import shutil

    from builder.answering.chatbot import load_chatbot
    from builder.facts import states
    from builder.answering.indexing import index_run

    # a copy: the session's run stays as trained for the other tests
    embedded_run = Path(shutil.copytree(embedded_run, tmp_path / "run",
                                        ignore=shutil.ignore_patterns("merged", "checkpoints")))

    faq = tmp_path / "updated.csv"
    rows = sample_rows(24) + [{"instruction": "하루커피 에코백은 얼마인가요?", "input": "",
                               "output": "하루커피 에코백은 12,000원이며 매장과 온라인에서 판매합니다."}]
    with faq.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
    adapter = (embedded_run / "adapter" / "adapter_model.safetensors").read_bytes()
    index_run(embedded_run, faq, log=lambda *_: None)
    assert (embedded_run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter

    bot = load_chatbot(embedded_run, use="adapter")
    reply = bot.reply("에코백 가격이 얼마예요?", max_new_tokens=64)
    assert not reply.declined and states(reply.text, "12,000원"), reply
    assert reply.sources and reply.sources[0].entry.line == 26  # header + 24 rows, then the new one


@pytest.mark.slow
def test_an_off_topic_question_gets_the_decline_message(embedded_run):
    from builder.answering.chatbot import load_chatbot

    bot = load_chatbot(embedded_run, use="adapter")
    reply = bot.reply("파이썬으로 리스트 정렬하는 코드 짜줘", max_new_tokens=64)
    assert reply.declined and reply.text == bot.rag.decline_message and not reply.sources


def test_a_run_answers_from_its_faq_before_its_model_has_loaded(tiny_model, tmp_path, monkeypatch):
    import builder.training.models
    from builder.answering.chatbot import load_chatbot

    def no_model(name, log=print):  # the base model is still being fetched or converted
        raise UserError(f"{name}: not there yet")

    monkeypatch.setattr(builder.training.models, "resolve_base_model", no_model)
    prepared = make_prepared(tmp_path, 30)
    with pytest.raises(UserError, match="not there yet"):
        train(prepared, tmp_path / "run", tiny_config(tiny_model), log=lambda *_: None)
    bot = load_chatbot(tmp_path / "run", faq_first=True)  # what was written before the model
    question = sample_rows(30)[0]["instruction"]
    assert not bot.trained and bot.reply(question).text == sample_rows(30)[0]["output"]
