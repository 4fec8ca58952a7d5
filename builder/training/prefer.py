"""The preference stage: DPO or ORPO on top of a finished SFT run, against invented answers.

    builder prefer runs/demo --out runs/demo-dpo                  # builds the pairs itself
    builder prefer runs/demo --out runs/demo-dpo --pairs runs/demo-dpo/pairs.jsonl  # edited ones
    builder prefer runs/demo --out runs/demo-orpo --method orpo --set prefer.beta=0.1

Pairs (prompt, chosen, rejected): without `--pairs`, the SFT run's own chatbot (same retrieval,
template and decline gate as `builder chat`, but sampled) answers every FAQ question of its
training split `prefer.samples` times, plus `prefer.off_topic` off-topic questions. An answer
that misses a key fact of the reference, states a number found in none of the retrieved
entries, answers an off-topic question or declines although its entry was retrieved is
`rejected`; the reference answer (or the decline message) is `chosen`. The prompt is the
exact text the model saw: the template with the retrieved FAQ block. They are written to
RUN2/pairs.jsonl for the owner to read and edit.

The new adapter starts from the SFT adapter's weights and the reference model is the SFT model
(TRL's standard recipe). The run folder is the SFT run's contract (adapter/, config.yaml,
meta.json with `parent_run`, metrics.json, loss.png with reward margin and preference accuracy,
template.yaml, knowledge/), so merge, chat, eval, serve and push work on it unchanged.
"""

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from collections import Counter
from pathlib import Path

from builder.config import Config, config_from_dict, merge_into, parse_set
from builder.errors import UserError
from builder.run import write_atomic
from builder.training.pairs import (
    PAIR_COLUMNS,
    build_pairs,
    held_out_summary,
    preference_figures,
    read_pairs,
    render_pairs,
    run_grounder,
    split_pairs,
    write_pairs,
)

# what a preference run writes (cleared when the same --out is tuned again)
OUTPUTS = ("adapter", "checkpoints", "merged", "eval", "knowledge", "metrics.json", "loss.png",
           "template.yaml", "config.yaml")


# ---------------------------------------------------------------------------------------------
# Pairs: judged answers of the SFT model, or a file


# ---------------------------------------------------------------------------------------------
# Measuring: the policy's log-probability of chosen vs rejected answers


# ---------------------------------------------------------------------------------------------
# Trainers: TRL on CPU, Unsloth's patched TRL on CUDA


def load_policy_hf(meta: dict, adapter_dir: Path, dtype):
    """The SFT model (base + SFT adapter) with that adapter trainable.

    The new adapter starts from the SFT weights. TRL's DPOTrainer, given a PeftModel that already
    holds an adapter and no ref_model, copies it into a frozen "ref" adapter and computes the
    reference log-probs through it (DPOTrainer.__init__, "Re-training an existing adapter"):
    the reference is exactly the SFT model, without a second copy of the base in memory and
    without merging the SFT adapter first (which would make the saved adapter a delta on a
    merged base that merge/chat do not know)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from builder.training.models import load_tokenizer

    base = AutoModelForCausalLM.from_pretrained(meta["base_model_path"], dtype=dtype)
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    return model, load_tokenizer(adapter_dir)


def load_policy_unsloth(cfg: Config, adapter_dir: Path, dtype):
    """Unsloth's DPO/ORPO recipe: PatchDPOTrainer() before TRL's trainer is built, the SFT
    adapter loaded (trainable) by FastLanguageModel.from_pretrained, ref_model=None."""
    import unsloth  # noqa: F401  (patches transformers/trl; must come first)
    from unsloth import FastLanguageModel, PatchDPOTrainer

    PatchDPOTrainer()  # also what Unsloth's ORPO notebook calls
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(adapter_dir),
        max_seq_length=cfg.prefer.max_length,
        dtype=dtype,
        load_in_4bit=cfg.model.load_in_4bit,
    )
    FastLanguageModel.for_training(model)
    return model, tokenizer


@contextlib.contextmanager
def random_dataset_fingerprints():
    """TRL tokenizes the pairs with Dataset.map, and map fingerprints its function by pickling
    it with its arguments: the 262k-token gemma tokenizer (~12 s each time) and, for ORPO's
    bound `tokenize_row`, the whole trainer with its model. These datasets live in memory and
    are never cached, so a random fingerprint (what datasets itself falls back to when a
    function cannot be pickled) loses nothing."""
    from datasets import arrow_dataset, fingerprint

    saved = fingerprint.update_fingerprint, arrow_dataset.update_fingerprint

    def any_fingerprint(*args, **kwargs):
        return fingerprint.generate_random_fingerprint()

    fingerprint.update_fingerprint = arrow_dataset.update_fingerprint = any_fingerprint
    try:
        yield
    finally:
        fingerprint.update_fingerprint, arrow_dataset.update_fingerprint = saved


def trainer_classes(method: str):
    """(Trainer, Config) of TRL for the method; ORPO lives in trl.experimental since trl 1.0."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    try:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    except ImportError:  # older trl (the Unsloth pins)
        from trl import ORPOConfig, ORPOTrainer
    return ORPOTrainer, ORPOConfig


def trainer_args(config_class, cfg: Config, run_dir: Path, prec: str, on_cuda: bool,
                 n_train: int, has_eval: bool):
    p = cfg.prefer
    # DPO: the reference (SFT) log-probs once before training, not a second forward every step
    extra = {"precompute_ref_log_probs": True} if p.method == "dpo" else {}
    # pairs -> optimizer steps: batch_size pairs per batch, grad_accum batches per step
    steps_per_epoch = max(1, math.ceil(math.ceil(n_train / p.batch_size) / p.grad_accum))
    total = p.max_steps if p.max_steps > 0 else math.ceil(steps_per_epoch * p.epochs)
    return config_class(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=p.epochs,
        max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        gradient_accumulation_steps=p.grad_accum,
        learning_rate=p.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=p.beta,
        max_length=p.max_length,
        bf16=prec == "bf16",  # ORPOConfig defaults to bf16: fp32 on CPU must be asked for
        fp16=prec == "fp16",
        gradient_checkpointing=cfg.train.gradient_checkpointing == "true",
        eval_strategy="steps" if has_eval else "no",
        eval_steps=max(1, total // 4),  # four points on the held-out curve
        save_strategy="no",  # a short run: the end is what is kept
        logging_steps=1,
        seed=p.seed,
        data_seed=p.seed,
        report_to="none",
        use_cpu=not on_cuda,
        dataset_num_proc=None,
        **extra,
    )


def plot_preference(log_history: list[dict], path: Path, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", f"{method.upper()} loss"), ("rewards/margins", "reward margin"),
              ("rewards/accuracies", "preference accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=110)
    for ax, (key, title) in zip(axes, panels):
        train = [(h["step"], h[key]) for h in log_history if key in h]
        held = [(h["step"], h[f"eval_{key}"]) for h in log_history if f"eval_{key}" in h]
        if train:
            ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
        if held:
            ax.plot(*zip(*held), "o-", label="held out", color="tab:orange")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The stage


def prefer_config(parent_meta: dict, config_path=None, overrides=None) -> Config:
    """The parent run's config, then the YAML file, then --set flags."""
    cfg = config_from_dict(parent_meta.get("config") or {})
    if config_path is not None:
        import yaml

        path = Path(config_path)
        if not path.is_file():
            raise UserError(f"{path}: no such config file (see configs/ for the shipped ones)")
        merge_into(cfg, yaml.safe_load(path.read_text(encoding="utf-8")) or {}, path.name)
    if overrides:
        merge_into(cfg, parse_set(overrides), "--set")
    return config_from_dict(cfg.to_dict())  # checked


def check_out(parent: Path, out: Path) -> None:
    if out.resolve() == parent.resolve():
        raise UserError(f"--out {out} is the SFT run itself; give a new folder, e.g. {out}-dpo")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        meta = out / "meta.json"
        if not meta.is_file() or "parent_run" not in json.loads(meta.read_text()):
            raise UserError(f"{out} exists and is not a preference run folder; choose another --out")


def prefer(run_dir, out, *, pairs_file=None, method: str | None = None, config_path=None,
           overrides=None, log=print) -> Path:
    """Preference-tune RUN_DIR's SFT adapter into OUT; returns OUT."""
    from builder.training.merge import read_run, run_template
    from builder.training.models import cuda_available, pick_backend, precision, torch_dtype
    from builder.training.sft import library_versions, save_adapter
    from builder.training.rows import load_prepared, split_validation

    run_dir, out = Path(run_dir), Path(out)
    parent = read_run(run_dir)
    check_out(run_dir, out)
    cfg = prefer_config(parent, config_path, overrides)
    if method is not None:
        cfg.prefer.method = method
        cfg = config_from_dict(cfg.to_dict())
    p = cfg.prefer
    template = run_template(run_dir)

    # Pairs: a file (read before OUT is cleared: it may be OUT/pairs.jsonl) or built here
    counts: dict = {}
    started = time.perf_counter()
    if pairs_file is not None:
        pairs = render_pairs(read_pairs(Path(pairs_file)), template, run_grounder(run_dir))
        counts = dict(Counter(pair["reason"] or "from file" for pair in pairs))
    else:
        from builder.answering.chatbot import load_chatbot
        from builder.answering.gate import off_topic_questions

        log(f"building pairs: {p.samples} sampled answers per question of {run_dir} ...")
        import torch

        torch.manual_seed(p.seed)
        bot = load_chatbot(run_dir)
        trained, _ = split_validation(load_prepared(parent["data_dir"])["train"], cfg)
        trained = [dict(r) for r in trained]
        if 0 < p.questions < len(trained):
            trained = random.Random(p.seed).sample(trained, p.questions)
        off_topic = off_topic_questions()
        off_topic = random.Random(p.seed).sample(off_topic, min(p.off_topic, len(off_topic)))
        if bot.knowledge is None:
            off_topic = []  # a run without retrieval was never taught to decline
        pairs, counts = build_pairs(bot, trained, off_topic, cfg, log=log)
        del bot
    pairs_s = time.perf_counter() - started
    log("pairs: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if not pairs:
        raise UserError(f"no preference pairs: every sampled answer of {run_dir} passed the "
                        "checks. Raise prefer.samples or prefer.temperature, or give --pairs FILE")
    if out.is_dir():
        for name in OUTPUTS:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(pairs, out / "pairs.jsonl")
    train_pairs, held_pairs = split_pairs(pairs, p.val_fraction, p.seed)
    if not train_pairs:
        raise UserError(f"all {len(pairs)} pairs are held out; lower prefer.val_fraction")

    # Load the SFT model with its adapter trainable (Unsloth's import must precede trl's)
    backend = pick_backend(cfg)
    on_cuda = cuda_available()
    prec = precision(cfg, on_cuda)
    adapter_dir = run_dir / "adapter"
    log(f"loading {run_dir} (base + SFT adapter) with the {backend} backend ...")
    if backend == "unsloth":
        model, tokenizer = load_policy_unsloth(cfg, adapter_dir, torch_dtype(prec))
    else:
        model, tokenizer = load_policy_hf(parent, adapter_dir, torch_dtype(prec))
    trainer_class, config_class = trainer_classes(p.method)
    from datasets import Dataset

    def dataset(rows):
        return Dataset.from_dict({k: [r[k] for r in rows] for k in PAIR_COLUMNS})

    before = preference_figures(model, tokenizer, held_pairs, p.max_length)

    # Record the run before training, as `builder train` does
    shutil.copy(run_dir / "template.yaml", out / "template.yaml")
    if (run_dir / "knowledge").is_dir():
        shutil.copytree(run_dir / "knowledge", out / "knowledge")
    write_atomic(out / "config.yaml", cfg.to_yaml())
    pairs_sha = hashlib.sha256((out / "pairs.jsonl").read_bytes()).hexdigest()
    meta = {**parent,
            "parent_run": str(run_dir.resolve()),
            "stage": "prefer",
            "method": p.method,
            "backend": backend,
            "precision": prec,
            "pairs": {"source": str(pairs_file) if pairs_file else "built from sampled answers",
                      "sha256": pairs_sha, "train": len(train_pairs), "held_out": len(held_pairs),
                      "reasons": counts},
            "seed": parent.get("seed", cfg.train.seed),
            "versions": library_versions(),
            "config": cfg.to_dict()}
    write_atomic(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2))

    # Train
    args = trainer_args(config_class, cfg, out, prec, on_cuda, len(train_pairs), bool(held_pairs))
    with random_dataset_fingerprints():
        trainer = trainer_class(model=model, args=args, train_dataset=dataset(train_pairs),
                                eval_dataset=dataset(held_pairs) if held_pairs else None,
                                processing_class=tokenizer)
    if held_pairs:
        trainer.evaluate()  # step 0 on the curves: the SFT model
    train_started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - train_started
    final_eval = trainer.evaluate() if held_pairs else {}
    after = preference_figures(trainer.model, tokenizer, held_pairs, p.max_length)

    # Save the trained adapter only (not TRL's frozen "ref" copy) and the record of the run
    save_adapter(trainer.model, tokenizer, out, selected_adapters=["default"])
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    history = trainer.state.log_history
    metrics = {
        "method": p.method,
        "beta": p.beta,
        "global_step": trainer.state.global_step,
        "train_pairs": len(train_pairs),
        "pair_reasons": counts,
        "held_out": held_out_summary(before, after, p.beta, p.method),
        "final_eval": {k: v for k, v in final_eval.items() if k.startswith("eval_")},
        "train_loss": result.training_loss,
        "pairs_wall_time_s": round(pairs_s, 1),
        "wall_time_s": round(wall, 1),
        "log_history": history,
    }
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    plot_preference(history, out / "loss.png", p.method)
    held = metrics["held_out"]
    log(f"done in {wall:.0f} s: {trainer.state.global_step} {p.method.upper()} steps on "
        f"{len(train_pairs)} pairs; held-out ({held['pairs']} pairs) preference accuracy "
        f"{held['before']['accuracy']} -> {held['after']['accuracy']}, log-prob margin "
        f"{held['before']['logp_margin']} -> {held['after']['logp_margin']} -> {out / 'adapter'}")
    return out
